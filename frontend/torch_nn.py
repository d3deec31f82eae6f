"""Converters for torch.nn modules and the torch functions/Tensor methods snncc supports.

Each converter emits per-step IR ops (see :mod:`snncc.ir.ops`). The subtle
part is *dims*: in a multi-step model a function or plain torch module sees
the whole ``[T, B, ...]`` sequence, so its dim ``d`` is per-step dim ``d - 1``
and dim 0 is time, which a per-step program cannot touch (``Call.step_dim``
refuses it with a clear message). Modules that interpret dims themselves
(conv, BatchNorm, pooling) are only accepted where they see one step or the
``[T*B, ...]``-folded sequence (SpikingJelly wrappers, SeqToANNContainer).

The module converters here are also used by the SpikingJelly ``layer.*``
wrappers (:mod:`snncc.frontend.spikingjelly`), which only change the view.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from snncc.frontend.tracer import (
    Call,
    ShapeValue,
    Value,
    register_function,
    register_method,
    register_module,
)

# --------------------------------------------------------------------------- helpers


def one_input(call: Call) -> Value:
    """The single tensor input of a module call."""
    if len(call.inputs) != 1:
        raise call.unsupported(f"expected one tensor input, got {len(call.inputs)}")
    return call.inputs[0]


def _ntuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (tuple, list)):
        if len(v) != n:
            raise ValueError(f"expected {n} values, got {v!r}")
        return [int(x) for x in v]
    return [int(v)] * n


def _per_step_rank(call: Call, x: Value, ranks: tuple[int, ...], layout: str) -> None:
    if len(x.shape) not in ranks:
        raise call.unsupported(f"expects a per-step input {layout}, got per-step shape {x.shape}")


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- linear / conv


def convert_linear(call: Call, m: nn.Linear) -> int:
    x = one_input(call)
    params = {"weight": call.param(m, "weight")}
    if m.bias is not None:
        params["bias"] = call.param(m, "bias")
    return call.emit("linear", [x], params=params)


def _conv_padding(call: Call, m: nn.Module, nd: int) -> list[int]:
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return [0] * nd
        # "same": torch pads (total // 2) before and the rest after; symmetric only when even
        pads = []
        for k, d in zip(m.kernel_size, m.dilation):
            total = d * (k - 1)
            if total % 2:
                raise call.unsupported(
                    f"padding='same' with kernel_size={tuple(m.kernel_size)} and "
                    f"dilation={tuple(m.dilation)} pads asymmetrically; supported: explicit "
                    "symmetric padding, 'valid', or 'same' with odd effective kernel sizes"
                )
            pads.append(total // 2)
        return pads
    return _ntuple(m.padding, nd)


def convert_conv(call: Call, m: nn.Module, nd: int) -> int:
    x = one_input(call)
    if m.padding_mode != "zeros":
        raise call.unsupported(
            f"padding_mode={m.padding_mode!r} is not supported; supported: 'zeros'"
        )
    layout = "[B, C, L]" if nd == 1 else "[B, C, H, W]"
    _per_step_rank(call, x, (nd + 2,), layout)
    attrs = {
        "stride": _ntuple(m.stride, nd),
        "padding": _conv_padding(call, m, nd),
        "dilation": _ntuple(m.dilation, nd),
        "groups": int(m.groups),
    }
    params = {"weight": call.param(m, "weight")}
    if m.bias is not None:
        params["bias"] = call.param(m, "bias")
    return call.emit(f"conv{nd}d", [x], attrs=attrs, params=params)


# --------------------------------------------------------------------------- normalisation


def convert_batchnorm(call: Call, m: nn.modules.batchnorm._BatchNorm, nd: int) -> int:
    """BatchNorm as one op; ``stats`` records over what training-mode statistics run."""
    x = one_input(call)
    if nd == 1:
        _per_step_rank(call, x, (2, 3), "[B, C] or [B, C, L]")
    else:
        _per_step_rank(call, x, (4,), "[B, C, H, W]")
    if not m.track_running_stats or m.running_mean is None or m.running_var is None:
        raise call.unsupported(
            "track_running_stats=False (batch statistics at inference) is not supported; "
            "supported: BatchNorm with running statistics"
        )
    params = {
        "running_mean": call.param(m, "running_mean"),
        "running_var": call.param(m, "running_var"),
    }
    if m.affine:
        params["weight"] = call.param(m, "weight")
        params["bias"] = call.param(m, "bias")
    attrs = {
        "eps": float(m.eps),
        "momentum": None if m.momentum is None else float(m.momentum),
        "training": bool(m.training),
        "stats": call.bn_stats,
    }
    return call.emit("batchnorm", [x], attrs=attrs, params=params)


# --------------------------------------------------------------------------- pooling


def convert_avgpool2d(call: Call, m: nn.AvgPool2d) -> int:
    x = one_input(call)
    _per_step_rank(call, x, (3, 4), "[B, C, H, W]")
    attrs = {
        "kernel_size": _ntuple(m.kernel_size, 2),
        "stride": _ntuple(m.stride if m.stride is not None else m.kernel_size, 2),
        "padding": _ntuple(m.padding, 2),
        "ceil_mode": bool(m.ceil_mode),
        "count_include_pad": bool(m.count_include_pad),
        "divisor_override": None if m.divisor_override is None else int(m.divisor_override),
    }
    return call.emit("avgpool2d", [x], attrs=attrs)


def convert_maxpool2d(call: Call, m: nn.MaxPool2d) -> int:
    x = one_input(call)
    if m.return_indices:
        raise call.unsupported("return_indices=True is not supported")
    _per_step_rank(call, x, (3, 4), "[B, C, H, W]")
    attrs = {
        "kernel_size": _ntuple(m.kernel_size, 2),
        "stride": _ntuple(m.stride if m.stride is not None else m.kernel_size, 2),
        "padding": _ntuple(m.padding, 2),
        "dilation": _ntuple(m.dilation, 2),
        "ceil_mode": bool(m.ceil_mode),
    }
    return call.emit("maxpool2d", [x], attrs=attrs)


def convert_adaptive_avgpool2d(call: Call, m: nn.AdaptiveAvgPool2d) -> int:
    x = one_input(call)
    _per_step_rank(call, x, (3, 4), "[B, C, H, W]")
    # output_size may hold None ("keep the input size"): the recorded shape resolves it
    out = call.out_shape
    return call.emit("adaptive_avgpool2d", [x], attrs={"output_size": [int(out[-2]), int(out[-1])]})


# --------------------------------------------------------------------------- shape ops


def flatten(call: Call, x: Value, start_dim: int, end_dim: int) -> int:
    """``flatten(start_dim, end_dim)`` as the callee sees dims, emitted with per-step dims."""
    rank = len(x.fx_shape)
    start = call.step_dim(start_dim, rank)
    end = call.step_dim(end_dim, rank, allow_batch=True)
    if end < start:
        raise call.unsupported(f"end_dim {end_dim} comes before start_dim {start_dim}")
    return call.emit("flatten", [x], attrs={"start_dim": start, "end_dim": end})


def convert_flatten(call: Call, m: nn.Flatten) -> int:
    return flatten(call, one_input(call), int(m.start_dim), int(m.end_dim))


def convert_dropout(call: Call, m: nn.Module, shared_over_time: bool) -> int:
    """Dropout with the module's mode: in training mode it runs (drop_noops drops eval ones)."""
    return call.emit(
        "dropout",
        [one_input(call)],
        attrs={
            "p": float(m.p),
            "shared_over_time": bool(shared_over_time),
            "training": bool(m.training),
        },
    )


# --------------------------------------------------------------------------- modules


@register_module(nn.Linear, "torch.nn.Linear")
def _linear(call: Call, m: nn.Module) -> int:
    return convert_linear(call, m)


@register_module(nn.Conv1d, "torch.nn.Conv1d", per_step_only=True)
def _conv1d(call: Call, m: nn.Module) -> int:
    return convert_conv(call, m, 1)


@register_module(nn.Conv2d, "torch.nn.Conv2d", per_step_only=True)
def _conv2d(call: Call, m: nn.Module) -> int:
    return convert_conv(call, m, 2)


@register_module(nn.BatchNorm1d, "torch.nn.BatchNorm1d", per_step_only=True)
def _bn1d(call: Call, m: nn.Module) -> int:
    return convert_batchnorm(call, m, 1)


@register_module(nn.BatchNorm2d, "torch.nn.BatchNorm2d", per_step_only=True)
def _bn2d(call: Call, m: nn.Module) -> int:
    return convert_batchnorm(call, m, 2)


@register_module(nn.AvgPool2d, "torch.nn.AvgPool2d", per_step_only=True)
def _avgpool2d(call: Call, m: nn.Module) -> int:
    return convert_avgpool2d(call, m)


@register_module(nn.MaxPool2d, "torch.nn.MaxPool2d", per_step_only=True)
def _maxpool2d(call: Call, m: nn.Module) -> int:
    return convert_maxpool2d(call, m)


@register_module(nn.AdaptiveAvgPool2d, "torch.nn.AdaptiveAvgPool2d", per_step_only=True)
def _adaptive_avgpool2d(call: Call, m: nn.Module) -> int:
    return convert_adaptive_avgpool2d(call, m)


@register_module(nn.Flatten, "torch.nn.Flatten")
def _flatten_module(call: Call, m: nn.Module) -> int:
    return convert_flatten(call, m)


@register_module(nn.Dropout, "torch.nn.Dropout")
def _dropout(call: Call, m: nn.Module) -> int:
    # torch draws a fresh mask on every call and element: never shared over time
    return convert_dropout(call, m, shared_over_time=False)


@register_module(nn.Identity, "torch.nn.Identity")
def _identity(call: Call, m: nn.Module) -> int:
    return call.emit("identity", [one_input(call)])


# --------------------------------------------------------------------------- functions


def _same_rank(call: Call, values: list[Value]) -> None:
    """Element-wise ops on a [T, B, ...] sequence broadcast like per-step ops only at equal rank."""
    if call.time_dims and len({len(v.fx_shape) for v in values}) > 1:
        raise call.unsupported(
            f"operands of ranks {[len(v.fx_shape) for v in values]} broadcast differently over "
            "the [T, B, ...] sequence than per step; give them the same rank"
        )


@register_function(
    (operator.add, "operator.add (+)"),
    (operator.iadd, "operator.iadd (+=)"),
    (torch.add, "torch.add"),
)
@register_method("add")
def _add(call: Call) -> int:
    a, b = call.arg(0, "input"), call.arg(1, "other")
    if call.kwargs.get("alpha", 1) != 1:
        raise call.unsupported("alpha != 1 is not supported")
    if not (isinstance(a, Value) and isinstance(b, Value)):
        raise call.unsupported(
            "adding a constant is not supported; supported: the sum of two tensors (residual add)"
        )
    _same_rank(call, [a, b])
    return call.emit("add", [a, b])


def _scale(call: Call, x: Value, op: str, value: Any) -> int:
    if isinstance(value, ShapeValue):
        raise call.unsupported(
            f"scaling by a value computed from a tensor's shape ({value.value}) is not supported"
        )
    return call.emit("scale", [x], attrs={"op": op, "value": float(value)})


@register_function((operator.mul, "operator.mul (*)"), (torch.mul, "torch.mul"))
@register_method("mul")
def _mul(call: Call) -> int:
    a, b = call.arg(0, "input"), call.arg(1, "other")
    if isinstance(a, Value) and isinstance(b, Value):
        _same_rank(call, [a, b])
        return call.emit("mul", [a, b])
    if isinstance(a, Value) and (_is_scalar(b) or isinstance(b, ShapeValue)):
        return _scale(call, a, "mul", b)
    if isinstance(b, Value) and (_is_scalar(a) or isinstance(a, ShapeValue)):
        return _scale(call, b, "mul", a)
    raise call.unsupported(
        "supported: the product of two tensors, or a tensor times a Python number"
    )


@register_function((operator.truediv, "operator.truediv (/)"), (torch.div, "torch.div"))
@register_method("div")
def _div(call: Call) -> int:
    a, b = call.arg(0, "input"), call.arg(1, "other")
    if call.kwargs.get("rounding_mode") is not None:
        raise call.unsupported("rounding_mode is not supported")
    if isinstance(a, Value) and (_is_scalar(b) or isinstance(b, ShapeValue)):
        return _scale(call, a, "div", b)
    raise call.unsupported("supported: a tensor divided by a Python number")


@register_function((torch.flatten, "torch.flatten"))
@register_method("flatten")
def _flatten_fn(call: Call) -> int:
    x = call.arg(0, "input")
    return flatten(call, x, int(call.arg(1, "start_dim", 0)), int(call.arg(2, "end_dim", -1)))


@register_function((torch.reshape, "torch.reshape"))
@register_method("view", "reshape")
def _reshape(call: Call) -> int:
    """reshape/view, read from the recorded shapes: time and batch must stay in front, unchanged."""
    x = call.inputs[0] if call.inputs else None
    if x is None or len(call.inputs) != 1:
        raise call.unsupported("expected one tensor input")
    if any(isinstance(a, torch.dtype) for a in call.args[1:]):
        raise call.unsupported("view(dtype) is not supported")
    lead = call.time_dims + 1
    out = tuple(call.out_fx_shape)
    if tuple(x.fx_shape[:lead]) != out[:lead]:
        what = "[T, B]" if lead == 2 else "[B]"
        raise call.unsupported(
            f"reshapes {list(x.fx_shape)} to {list(out)}; snncc keeps the leading {what} dims "
            "unchanged (reshape only the per-sample dims, e.g. x.view(T, B, -1))"
        )
    return call.emit("reshape", [x], attrs={"shape": [-1, *[int(d) for d in out[lead:]]]})


@register_function(
    (torch.cat, "torch.cat"),
    (torch.concat, "torch.concat"),
    (torch.concatenate, "torch.concatenate"),
)
def _cat(call: Call) -> int:
    tensors = call.arg(0, "tensors")
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Value) for t in tensors):
        raise call.unsupported("expected a list of tensors")
    dim = call.arg(1, "dim", 0)
    _same_rank(call, list(tensors))
    d = call.step_dim(int(dim), len(tensors[0].fx_shape))
    return call.emit("cat", list(tensors), attrs={"dim": d})
