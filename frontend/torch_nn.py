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
import torch.nn.functional as F
from torch import nn

from snncc.frontend.loops import repeat_over_time, sum_over_time
from snncc.frontend.tracer import (
    Call,
    Multi,
    NewTimeAxis,
    ParamRef,
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


def _module_weight_and_bias(call: Call, m: nn.Module) -> dict[str, str]:
    """A layer module's weight and, where it has one, its bias, by state_dict name."""
    params = {"weight": call.param(m, "weight")}
    if m.bias is not None:
        params["bias"] = call.param(m, "bias")
    return params


def _conv_input(call: Call, nd: int, m: nn.Module | None = None) -> Value:
    """The [B, C, L] / [B, C, H, W] input of a convolution (a module's: zero padding only)."""
    x = one_input(call) if m is not None else _row_view(call, f"F.{call.target.__name__}")
    if m is not None and m.padding_mode != "zeros":
        raise call.unsupported(
            f"padding_mode={m.padding_mode!r} is not supported; supported: 'zeros'"
        )
    _per_step_rank(call, x, (nd + 2,), "[B, C, L]" if nd == 1 else "[B, C, H, W]")
    return x


def convert_linear(call: Call, m: nn.Linear) -> int:
    return call.emit("linear", [one_input(call)], params=_module_weight_and_bias(call, m))


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
    x = _conv_input(call, nd, m)
    attrs = {
        "stride": _ntuple(m.stride, nd),
        "padding": _conv_padding(call, m, nd),
        "dilation": _ntuple(m.dilation, nd),
        "groups": int(m.groups),
    }
    return call.emit(f"conv{nd}d", [x], attrs=attrs, params=_module_weight_and_bias(call, m))


def convert_conv_transpose(call: Call, m: nn.Module, nd: int) -> int:
    """``ConvTranspose1d/2d``. Its ``output_size`` argument (a forward argument, not the
    module's) is refused by the module-call check: the module alone fixes its output."""
    x = _conv_input(call, nd, m)
    attrs = {
        "stride": _ntuple(m.stride, nd),
        "padding": _ntuple(m.padding, nd),
        "output_padding": _ntuple(m.output_padding, nd),
        "dilation": _ntuple(m.dilation, nd),
        "groups": int(m.groups),
    }
    params = _module_weight_and_bias(call, m)
    return call.emit(f"conv_transpose{nd}d", [x], attrs=attrs, params=params)


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


def pool1d_as_2d(call: Call, x: Value, op: str, attrs: dict[str, Any]) -> int:
    """A 1-D pooling of [B, C, L] as its 2-D op over a height of 1, between two reshapes.

    Why no op of its own: torch computes ``avg_pool1d`` and ``adaptive_avg_pool1d`` exactly
    so (the 2-D op on ``x.unsqueeze(-2)``), and a max is the same whichever way it is
    taken, so every backend's 2-D op gives the source's bits. ``attrs`` are the 2-D op's.
    """
    _per_step_rank(call, x, (3,), "[B, C, L]")
    b, c, length = x.shape
    out = call.out_shape
    tall = call.emit("reshape", [x], attrs={"shape": [-1, c, 1, length]}, shape=[b, c, 1, length])
    pooled = call.emit(op, [tall], attrs=attrs, shape=[out[0], out[1], 1, out[2]])
    return call.emit("reshape", [pooled], attrs={"shape": [-1, out[1], out[2]]}, shape=list(out))


def avgpool1d_attrs(kernel: Any, stride: Any, padding: Any, ceil_mode: Any, count_pad: Any) -> dict:
    """``avgpool2d`` attrs of a 1-D average pooling (height 1)."""
    (k,), (p,) = _ntuple(kernel, 1), _ntuple(padding, 1)
    (s,) = _ntuple(stride if stride not in (None, [], ()) else kernel, 1)
    return {
        "kernel_size": [1, k],
        "stride": [1, s],
        "padding": [0, p],
        "ceil_mode": bool(ceil_mode),
        "count_include_pad": bool(count_pad),
        "divisor_override": None,
    }


def maxpool1d_attrs(kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any) -> dict:
    """``maxpool2d`` attrs of a 1-D max pooling (height 1)."""
    (k,), (p,), (d,) = _ntuple(kernel, 1), _ntuple(padding, 1), _ntuple(dilation, 1)
    (s,) = _ntuple(stride if stride not in (None, [], ()) else kernel, 1)
    return {
        "kernel_size": [1, k],
        "stride": [1, s],
        "padding": [0, p],
        "dilation": [1, d],
        "ceil_mode": bool(ceil_mode),
    }


def convert_avgpool1d(call: Call, m: nn.AvgPool1d) -> int:
    attrs = avgpool1d_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
    return pool1d_as_2d(call, one_input(call), "avgpool2d", attrs)


def convert_maxpool1d(call: Call, m: nn.MaxPool1d) -> int:
    if m.return_indices:
        raise call.unsupported("return_indices=True is not supported")
    attrs = maxpool1d_attrs(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    return pool1d_as_2d(call, one_input(call), "maxpool2d", attrs)


def convert_adaptive_avgpool1d(call: Call, m: nn.AdaptiveAvgPool1d) -> int:
    out = call.out_shape  # output_size may be None ("keep the input size")
    attrs = {"output_size": [1, int(out[-1])]}
    return pool1d_as_2d(call, one_input(call), "adaptive_avgpool2d", attrs)


def upsample_nearest(
    call: Call, x: Value, size: Any, scale_factor: Any, mode: str, recompute: Any
) -> int:
    """``F.interpolate`` / ``nn.Upsample`` in mode "nearest" over [B, C, L] or [B, C, H, W].

    The scale_factor is kept where torch's kernel divides by it (it picks other source
    elements than in / out would); ``recompute_scale_factor=True`` makes it use in / out."""
    if mode != "nearest":
        raise call.unsupported(f"mode={mode!r} is not supported; supported: 'nearest'")
    _per_step_rank(call, x, (3, 4), "[B, C, L] or [B, C, H, W]")
    nd = len(x.shape) - 2
    out = [int(d) for d in call.out_shape[2:]]
    sf = None
    if scale_factor is not None and not recompute:
        sf = [
            float(s)
            for s in (
                scale_factor if isinstance(scale_factor, (tuple, list)) else [scale_factor] * nd
            )
        ]
    return call.emit("upsample_nearest", [x], attrs={"size": out, "scale_factor": sf})


def convert_groupnorm(call: Call, m: nn.GroupNorm) -> int:
    x = one_input(call)
    if len(x.shape) < 2:
        raise call.unsupported(f"expects a per-step input [B, C, ...], got {x.shape}")
    params = {}
    if m.affine:
        params = {"weight": call.param(m, "weight"), "bias": call.param(m, "bias")}
    attrs = {"num_groups": int(m.num_groups), "eps": float(m.eps)}
    return call.emit("groupnorm", [x], attrs=attrs, params=params)


def constant_pad(call: Call, x: Value, pads: Any, value: Any, mode: str = "constant") -> int:
    """``F.pad`` in mode "constant" (ZeroPad / ConstantPad): pairs from the last dim back."""
    if mode != "constant":
        raise call.unsupported(f"mode={mode!r} is not supported; supported: 'constant'")
    pads = [int(p) for p in pads]
    if len(pads) % 2 or len(pads) // 2 > len(x.shape) - 1:
        raise call.unsupported(
            f"pads {pads} reach the batch dim of a per-step [B, ...] value; snncc pads only "
            "the per-sample dims"
        )
    if any(p < 0 for p in pads):
        raise call.unsupported(f"negative pads {pads} (cropping) are not supported")
    value = 0.0 if value is None else float(value)
    return call.emit("pad", [x], attrs={"pads": pads, "value": value})


def convert_upsample(call: Call, m: nn.Upsample) -> int:
    if m.align_corners:
        raise call.unsupported("align_corners=True is not supported (mode 'nearest' only)")
    x = one_input(call)
    return upsample_nearest(call, x, m.size, m.scale_factor, m.mode, m.recompute_scale_factor)


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


@register_module(nn.ConvTranspose1d, "torch.nn.ConvTranspose1d", per_step_only=True)
def _conv_transpose1d(call: Call, m: nn.Module) -> int:
    return convert_conv_transpose(call, m, 1)


@register_module(nn.ConvTranspose2d, "torch.nn.ConvTranspose2d", per_step_only=True)
def _conv_transpose2d(call: Call, m: nn.Module) -> int:
    return convert_conv_transpose(call, m, 2)


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


@register_module(nn.AvgPool1d, "torch.nn.AvgPool1d", per_step_only=True)
def _avgpool1d(call: Call, m: nn.Module) -> int:
    return convert_avgpool1d(call, m)


@register_module(nn.MaxPool1d, "torch.nn.MaxPool1d", per_step_only=True)
def _maxpool1d(call: Call, m: nn.Module) -> int:
    return convert_maxpool1d(call, m)


@register_module(nn.AdaptiveAvgPool1d, "torch.nn.AdaptiveAvgPool1d", per_step_only=True)
def _adaptive_avgpool1d(call: Call, m: nn.Module) -> int:
    return convert_adaptive_avgpool1d(call, m)


@register_module(nn.Flatten, "torch.nn.Flatten")
def _flatten_module(call: Call, m: nn.Module) -> int:
    return convert_flatten(call, m)


@register_module(nn.Upsample, "torch.nn.Upsample", per_step_only=True)
def _upsample(call: Call, m: nn.Module) -> int:
    return convert_upsample(call, m)


@register_module(nn.UpsamplingNearest2d, "torch.nn.UpsamplingNearest2d", per_step_only=True)
def _upsampling_nearest2d(call: Call, m: nn.Module) -> int:
    return convert_upsample(call, m)


@register_module(nn.GroupNorm, "torch.nn.GroupNorm", per_step_only=True)
def _groupnorm_module(call: Call, m: nn.Module) -> int:
    return convert_groupnorm(call, m)


def _pad_module(call: Call, m: nn.Module) -> int:
    return constant_pad(call, one_input(call), m.padding, m.value)


for _pad_cls in (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d):
    register_module(_pad_cls, f"torch.nn.{_pad_cls.__name__}", per_step_only=True)(_pad_module)


@register_module(nn.Unflatten, "torch.nn.Unflatten")
def _unflatten_module(call: Call, m: nn.Module) -> int:
    return _reshape(call)  # the recorded shapes say what it made (time and batch kept)


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
    elementwise=True,
)
@register_method("add", elementwise=True)
def _add(call: Call) -> int:
    a, b = call.arg(0, "input"), call.arg(1, "other")
    if call.kwargs.get("alpha", 1) != 1:
        raise call.unsupported("alpha != 1 is not supported")
    if isinstance(a, Value) and isinstance(b, Value):
        _same_rank(call, [a, b])
        return call.emit("add", [a, b])
    x, c = (a, b) if isinstance(a, Value) else (b, a)
    if isinstance(x, Value) and _is_scalar(c):  # x + c == c + x exactly
        return call.emit("add_scalar", [x], attrs={"value": float(c)})
    raise call.unsupported("supported: the sum of two tensors, or a tensor plus a Python number")


@register_function(
    (operator.sub, "operator.sub (-)"),
    (operator.isub, "operator.isub (-=)"),
    (torch.sub, "torch.sub"),
    (torch.subtract, "torch.subtract"),
    elementwise=True,
)
@register_method("sub", "subtract", elementwise=True)
def _sub(call: Call) -> int:
    """``a - b``; with a number ``x - c`` is ``x + (-c)`` and ``c - x`` is ``(-x) + c`` (IEEE
    subtraction is the addition of the negation: the same bits)."""
    a, b = call.arg(0, "input"), call.arg(1, "other")
    if call.kwargs.get("alpha", 1) != 1:
        raise call.unsupported("alpha != 1 is not supported")
    if isinstance(a, Value) and isinstance(b, Value):
        _same_rank(call, [a, b])
        return call.emit("sub", [a, b])
    if isinstance(a, Value) and _is_scalar(b):
        return call.emit("add_scalar", [a], attrs={"value": -float(b)})
    if isinstance(b, Value) and _is_scalar(a):
        neg = call.emit("neg", [b])
        return call.emit("add_scalar", [neg], attrs={"value": float(a)})
    raise call.unsupported("supported: the difference of two tensors, or with a Python number")


@register_function((operator.neg, "operator.neg (unary -)"), (torch.neg, "torch.neg"))
@register_method("neg", "negative")
def _neg(call: Call) -> int:
    return call.emit("neg", [_one(call)])


def _one(call: Call) -> Value:
    x = call.arg(0, "input")
    if not isinstance(x, Value):
        raise call.unsupported("expected a tensor")
    return x


def _scale(call: Call, x: Value, op: str, value: Any) -> int:
    if isinstance(value, ShapeValue):
        raise call.unsupported(
            f"scaling by a value computed from a tensor's shape ({value.value}) is not supported"
        )
    return call.emit("scale", [x], attrs={"op": op, "value": float(value)})


@register_function(
    (operator.mul, "operator.mul (*)"),
    (operator.imul, "operator.imul (*=)"),
    (torch.mul, "torch.mul"),
    elementwise=True,
)
@register_method("mul", elementwise=True)
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


@register_function(
    (operator.truediv, "operator.truediv (/)"), (torch.div, "torch.div"), elementwise=True
)
@register_method("div", elementwise=True)
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


@register_function(
    (torch.reshape, "torch.reshape"),
    (torch.squeeze, "torch.squeeze"),
    (torch.unflatten, "torch.unflatten"),
)
@register_method("view", "reshape", "squeeze", "unflatten")
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
            f"of every {'[T, B, ...]' if lead == 2 else '[B, ...]'} value unchanged (reshape "
            "only the per-sample dims, e.g. x.view(T, B, -1))"
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


# --------------------------------------------------------------------------- shapes and time


@register_function((torch.unsqueeze, "torch.unsqueeze"))
@register_method("unsqueeze")
def _unsqueeze(call: Call) -> int | NewTimeAxis:
    """A new per-step dim (a reshape); on a static value of a multi-step model, dim 0 is the
    start of a time axis (``x.unsqueeze(0).repeat(T, 1, ...)``)."""
    x = _one(call)
    dim = int(call.arg(1, "dim"))
    if call.static and call.ctx.step_mode == "m" and dim in (0, -len(x.fx_shape) - 1):
        return NewTimeAxis(x)
    return _reshape(call)


def _time_count(call: Call, sizes: tuple, what: str) -> int:
    """The T of ``repeat(T, 1, ...)`` / ``expand(T, -1, ...)`` on a new time axis."""
    if not sizes or not all(isinstance(v, int) for v in sizes):
        raise call.unsupported(f"{what} with sizes {sizes!r}; supported: Python ints")
    T = sizes[0]
    ok_rest = (1,) if what == "repeat" else (1, -1)
    shape = call.args[0].value.fx_shape
    rest_ok = all(v in ok_rest or (what == "expand" and v == d) for v, d in zip(sizes[1:], shape))
    if len(sizes) != len(shape) + 1 or not rest_ok or T < 1:
        raise call.unsupported(
            f"{what}{tuple(sizes)} of x.unsqueeze(0): supported: repeating the value over "
            f"time only ({what}(T, {', '.join(['1'] * len(shape))}))"
        )
    return int(T)


@register_method("repeat", "expand")
def _repeat(call: Call) -> Any:
    """``x.unsqueeze(0).repeat(T, 1, ...)`` / ``.expand(T, ...)``: a static value at every one
    of T steps (``repeat_time``); repeats of 1 everywhere are the value itself."""
    base = call.args[0] if call.args else None
    sizes = tuple(call.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = tuple(sizes[0])
    what = str(call.target)
    if isinstance(base, NewTimeAxis):
        T = _time_count(call, sizes, what)
        call.ctx.set_time_steps(T, call)
        return call.ctx.repeat_over_time(base.value, call)
    if isinstance(base, Value) and tuple(call.out_fx_shape) == tuple(base.fx_shape):
        return call.emit("identity", [base])
    raise call.unsupported(
        f"{what} of a tensor is supported only to repeat a value without a time axis over "
        "the time steps: x.unsqueeze(0).repeat(T, 1, ...)"
    )


@register_function((repeat_over_time, "a static value fed to every step of a loop"))
def _repeat_over_time(call: Call) -> Value:
    x = _one(call)
    call.ctx.set_time_steps(int(call.arg(1, "steps")), call)
    return call.ctx.repeat_over_time(x, call)


@register_function((sum_over_time, "a sum a loop accumulates over its steps (acc = acc + v)"))
def _sum_over_time(call: Call) -> Value:
    x = _one(call)
    if x.static:
        raise call.unsupported(
            "adds the same value at every step of the loop; supported: a sum of per-step values"
        )
    call.ctx.set_time_steps(int(call.arg(1, "steps")), call)
    shape = list(x.shape)
    nid = call.emit("time_reduce", [x], attrs={"op": "sum", "order": "steps"}, shape=shape)
    return call.ctx.value(nid, call.out_fx_shape, shape, call.out_dtype, True, what=call.what)


@register_method("contiguous", "clone")
def _copy(call: Call) -> int:
    """Same values, fresh memory: nothing for a dataflow graph (the node is dropped)."""
    if call.kwargs.get("memory_format") not in (None, torch.contiguous_format):
        raise call.unsupported("memory_format is not supported")
    return call.emit("identity", [_one(call)])


@register_method("float", "to", "type_as")
def _to(call: Call) -> int:
    """A cast to the value's own dtype (``x.float()`` of float32) is the value itself."""
    x = _one(call)
    if call.out_dtype != x.dtype or any(
        isinstance(a, torch.device) or (isinstance(a, str) and a != "cpu") for a in call.args[1:]
    ):
        raise call.unsupported(
            f"converts {x.dtype} to {call.out_dtype} (or moves devices); supported: a "
            "conversion to the dtype the value already has"
        )
    return call.emit("identity", [x])


def _permuted(call: Call, x: Value, perm: list[int]) -> int:
    """``x.permute(perm)`` with ``perm`` in the callee's dims: time and batch stay in front."""
    lead = call.time_dims + 1
    rank = len(x.fx_shape)
    perm = [p % rank for p in perm]
    if sorted(perm) != list(range(rank)):
        raise call.unsupported(f"{perm} is not a permutation of {rank} dims")
    if perm[:lead] != list(range(lead)):
        raise call.unsupported(
            f"permutes dims {perm}, moving the {'time or ' if lead == 2 else ''}batch dim; "
            "snncc keeps them in front (permute the per-sample dims only)"
        )
    step = [p - call.time_dims for p in perm[call.time_dims :]]
    if step == list(range(len(step))):
        return call.emit("identity", [x])
    return call.emit("permute", [x], attrs={"perm": step})


@register_function((torch.transpose, "torch.transpose"), (torch.swapaxes, "torch.swapaxes"))
@register_method("transpose", "swapaxes", "swapdims")
def _transpose(call: Call) -> int:
    x = _one(call)
    rank = len(x.fx_shape)
    a, b = int(call.arg(1, "dim0")) % rank, int(call.arg(2, "dim1")) % rank
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return _permuted(call, x, perm)


@register_function((torch.permute, "torch.permute"))
@register_method("permute")
def _permute(call: Call) -> int:
    x = _one(call)
    dims = list(call.args[1:]) if call.target == "permute" else call.arg(1, "dims")
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = list(dims[0])
    return _permuted(call, x, [int(d) for d in dims])


@register_function((getattr, "getattr (x.mT)"))
def _attribute(call: Call) -> int:
    x, name = call.arg(0, "input"), call.arg(1, "name")
    if isinstance(x, Value) and name == "mT":
        perm = list(range(len(x.fx_shape)))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return _permuted(call, x, perm)
    raise call.unsupported(f"attribute {name!r} of a tensor is not supported; supported: x.mT")


def _step_slices(
    call: Call, x: Value, cuts: list[tuple[int, int, int, int]], shape: list
) -> tuple[int, list]:
    """Emit one ``slice`` node per ``(step dim, start, stop, step)``; (last node, its shape)."""
    nid, cur = x.id, list(x.shape)
    for d, start, stop, step in cuts:
        cur = list(cur)
        cur[d] = len(range(start, stop, step))
        nid = call.emit(
            "slice",
            [nid],
            attrs={"dim": d, "start": start, "stop": stop, "step": step},
            shape=cur,
        )
    if cur != list(shape):
        nid = call.emit("reshape", [nid], attrs={"shape": [-1, *shape[1:]]}, shape=shape)
    return nid, cur


@register_function((operator.getitem, "operator.getitem (x[...])"))
def _getitem(call: Call) -> int:
    """``x[..., a:b, i]`` on the per-sample dims: slices (and a reshape for ints and None)."""
    x, index = call.args[0], call.args[1]
    if not isinstance(x, Value):
        raise call.unsupported("indexing is supported on tensors")
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (Value, list, torch.Tensor)) for i in items):
        raise call.unsupported("indexing with tensors or lists is not supported; use slices")
    n_dims = sum(1 for i in items if i is not None and i is not Ellipsis)
    if items.count(Ellipsis) > 1:
        raise call.unsupported("more than one ... in an index")
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items[k : k + 1] = [slice(None)] * (len(x.fx_shape) - n_dims)
    items += [slice(None)] * (len(x.fx_shape) - sum(1 for i in items if i is not None))
    cuts: list[tuple[int, int, int, int]] = []
    d = 0  # the dim of x the next index item applies to
    for item in items:
        if item is None:
            continue
        size = x.fx_shape[d]
        if d <= call.time_dims and item != slice(None):
            what = "time" if d < call.time_dims else "batch"
            raise call.unsupported(
                f"indexes the {what} dim ({item!r}); snncc keeps the time and batch dims whole "
                "(index the per-sample dims only)"
            )
        if isinstance(item, int) and not isinstance(item, bool):
            i = item % size
            cuts.append((d - call.time_dims, i, i + 1, 1))
        elif isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step < 1:
                raise call.unsupported("a negative slice step is not supported")
            if (start, stop, step) != (0, size, 1):
                cuts.append((d - call.time_dims, start, max(start, stop), step))
        else:
            raise call.unsupported(f"index {item!r} is not supported")
        d += 1
    nid, _ = _step_slices(call, x, cuts, call.out_shape)
    return nid


def _split_dim(call: Call, x: Value, dim: int) -> int:
    d = call.step_dim(int(dim), len(x.fx_shape))
    return d


@register_function((torch.chunk, "torch.chunk"), (torch.split, "torch.split"),
                   (torch.unbind, "torch.unbind"))  # fmt: skip
@register_method("chunk", "split", "unbind")
def _split(call: Call) -> Multi:
    """chunk / split / unbind along a per-sample dim: one slice per item (made when used)."""
    x = _one(call)
    name = getattr(call.target, "__name__", call.target)
    default = 0
    dim_arg = call.arg(1, "dim", default) if name == "unbind" else call.arg(2, "dim", default)
    d = _split_dim(call, x, int(dim_arg))
    metas = call.items or []
    sizes = [m.shape[d + call.time_dims] if name != "unbind" else 1 for m in metas]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]

    def item(k: int, meta: Any) -> Any:
        def make() -> int:
            shape = call.ctx.step_shape(meta.shape, call.time_dims, call)
            cut = [(d, starts[k], starts[k] + sizes[k], 1)]
            return _step_slices(call, x, cut, shape)[0]

        return make

    return Multi(tuple(item(k, m) for k, m in enumerate(metas)))


@register_method("narrow")
@register_function((torch.narrow, "torch.narrow"))
def _narrow(call: Call) -> int:
    x = _one(call)
    d = _split_dim(call, x, int(call.arg(1, "dim")))
    start, length = int(call.arg(2, "start")), int(call.arg(3, "length"))
    size = x.fx_shape[d + call.time_dims]
    start %= size
    return _step_slices(call, x, [(d, start, start + length, 1)], call.out_shape)[0]


# --------------------------------------------------------------------------- matmul


@register_function(
    (operator.matmul, "operator.matmul (@)"), (torch.matmul, "torch.matmul"),
    (torch.bmm, "torch.bmm"),
)  # fmt: skip
@register_method("matmul", "bmm")
def _matmul(call: Call) -> int:
    """Batched matmul of two per-step values: one GEMM per (t, b, ...) matrix pair."""
    a, b = call.arg(0, "input"), call.arg(1, "other" if call.target != torch.bmm else "mat2")
    if not (isinstance(a, Value) and isinstance(b, Value)):
        raise call.unsupported(
            "supported: the product of two tensors of the model (for a weight, use nn.Linear)"
        )
    if len(a.shape) < 3 or len(a.fx_shape) != len(b.fx_shape):
        raise call.unsupported(
            f"multiplies per-step shapes {a.shape} and {b.shape}; supported: two values of the "
            "same rank [B, ..., M, K] @ [B, ..., K, N]"
        )
    if tuple(a.fx_shape[:-2]) != tuple(b.fx_shape[:-2]):
        raise call.unsupported(
            f"the batch dims {list(a.fx_shape[:-2])} and {list(b.fx_shape[:-2])} differ; "
            "broadcasting matmul is not supported"
        )
    return call.emit("matmul", [a, b])


# --------------------------------------------------------------------------- reductions

_REDUCE = {"sum": "sum", "mean": "mean", "amax": "amax", "amin": "amin"}


def _reduction(call: Call, op: str) -> Any:
    """Over per-sample dims: ``reduce``; over time (dim 0 of a [T, B, ...] sequence):
    ``time_reduce``, a value without a time axis (``x.mean(0)``: a firing rate)."""
    x = _one(call)
    dim = call.arg(1, "dim", None)
    keepdim = bool(call.arg(2, "keepdim", False))
    if call.kwargs.get("dtype") is not None:
        raise call.unsupported("dtype= is not supported")
    if dim is None:
        raise call.unsupported(
            "reduces over every dim, the batch included; snncc keeps the batch dim: "
            "reduce over the per-sample dims (dim=...)"
        )
    rank = len(x.fx_shape)
    dims = sorted({int(d) % rank for d in (dim if isinstance(dim, (tuple, list)) else [dim])})
    if call.time_dims and 0 in dims:
        if dims != [0] or keepdim:
            raise call.unsupported(
                f"reduces over dims {dims} of a [T, B, ...] sequence; supported over time: "
                "dim 0 alone, keepdim=False (e.g. x.mean(0))"
            )
        shape = call.ctx.step_shape(call.out_fx_shape, 0, call)
        nid = call.emit("time_reduce", [x], attrs={"op": op}, shape=shape)
        return call.ctx.value(nid, call.out_fx_shape, shape, call.out_dtype, True, what=call.what)
    step = [call.step_dim(d, rank) for d in dims]
    return call.emit("reduce", [x], attrs={"op": op, "dims": step, "keepdim": keepdim})


for _name in _REDUCE:

    def _reduce(call: Call, _op: str = _REDUCE[_name]) -> Any:
        return _reduction(call, _op)

    register_function((getattr(torch, _name), f"torch.{_name}"))(register_method(_name)(_reduce))


# --------------------------------------------------------------------------- activations


def _activation(call: Call, fn: str) -> int:
    return call.emit("activation", [_one(call)], attrs={"fn": fn})


def _gelu_fn(approximate: Any) -> str:
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise ValueError(f"approximate={approximate!r}")


for _targets, _methods, _fn_name in [
    ([(F.relu, "F.relu"), (torch.relu, "torch.relu")], ["relu"], "relu"),
    ([(torch.sigmoid, "torch.sigmoid"), (F.sigmoid, "F.sigmoid")], ["sigmoid"], "sigmoid"),
    ([(torch.tanh, "torch.tanh"), (F.tanh, "F.tanh")], ["tanh"], "tanh"),
]:

    def _act(call: Call, _f: str = _fn_name) -> int:
        return _activation(call, _f)

    register_function(*_targets, elementwise=True)(register_method(*_methods)(_act))


@register_function((F.gelu, "F.gelu"), elementwise=True)
def _gelu(call: Call) -> int:
    try:
        return _activation(call, _gelu_fn(call.arg(1, "approximate", "none")))
    except ValueError as e:
        raise call.unsupported(f"{e}; supported: 'none', 'tanh'") from None


@register_function(
    (F.softmax, "F.softmax"), (torch.softmax, "torch.softmax"),
    (F.log_softmax, "F.log_softmax"), (torch.log_softmax, "torch.log_softmax"),
)  # fmt: skip
@register_method("softmax", "log_softmax")
def _softmax(call: Call) -> int:
    x = _one(call)
    name = getattr(call.target, "__name__", call.target)
    dim = call.arg(1, "dim", None)
    if dim is None:
        raise call.unsupported("softmax without dim= is not supported")
    if call.kwargs.get("dtype") is not None or (len(call.args) > 2 and call.args[2] is not None):
        raise call.unsupported("dtype= is not supported")
    d = call.step_dim(int(dim), len(x.fx_shape))
    return call.emit("softmax", [x], attrs={"dim": d, "log": "log" in str(name)})


def _softmax_module(call: Call, m: nn.Module, log: bool) -> int:
    x = one_input(call)
    if m.dim is None:
        raise call.unsupported("dim=None is not supported; give the dim")
    d = call.step_dim(int(m.dim), len(x.fx_shape))
    return call.emit("softmax", [x], attrs={"dim": d, "log": log})


@register_module(nn.ReLU, "torch.nn.ReLU")
def _relu_module(call: Call, m: nn.Module) -> int:
    return call.emit("activation", [one_input(call)], attrs={"fn": "relu"})


@register_module(nn.GELU, "torch.nn.GELU")
def _gelu_module(call: Call, m: nn.Module) -> int:
    try:
        fn = _gelu_fn(m.approximate)
    except ValueError as e:
        raise call.unsupported(f"{e}; supported: 'none', 'tanh'") from None
    return call.emit("activation", [one_input(call)], attrs={"fn": fn})


@register_module(nn.Sigmoid, "torch.nn.Sigmoid")
def _sigmoid_module(call: Call, m: nn.Module) -> int:
    return call.emit("activation", [one_input(call)], attrs={"fn": "sigmoid"})


@register_module(nn.Tanh, "torch.nn.Tanh")
def _tanh_module(call: Call, m: nn.Module) -> int:
    return call.emit("activation", [one_input(call)], attrs={"fn": "tanh"})


@register_module(nn.Softmax, "torch.nn.Softmax")
def _softmax_mod(call: Call, m: nn.Module) -> int:
    return _softmax_module(call, m, False)


@register_module(nn.LogSoftmax, "torch.nn.LogSoftmax")
def _log_softmax_mod(call: Call, m: nn.Module) -> int:
    return _softmax_module(call, m, True)


# --------------------------------------------------------------------------- layer norm


def _layernorm(call: Call, x: Value, shape: Any, params: dict[str, str], eps: float) -> int:
    shape = [int(d) for d in (shape if isinstance(shape, (tuple, list)) else [shape])]
    if len(shape) >= len(x.shape) or list(x.shape[-len(shape) :]) != shape:
        raise call.unsupported(
            f"normalizes over {shape}, which are not trailing per-sample dims of {x.shape}; "
            "the batch and time dims stay out of the normalization"
        )
    return call.emit(
        "layernorm", [x], attrs={"normalized_shape": shape, "eps": float(eps)}, params=params
    )


@register_module(nn.LayerNorm, "torch.nn.LayerNorm")
def _layernorm_module(call: Call, m: nn.Module) -> int:
    params = {}
    if m.weight is not None:
        params["weight"] = call.param(m, "weight")
    if m.bias is not None:
        params["bias"] = call.param(m, "bias")
    return _layernorm(call, one_input(call), m.normalized_shape, params, m.eps)


def _param(call: Call, value: Any, what: str) -> str | None:
    """A parameter given to a functional layer: the model's own (by state_dict name)."""
    if value is None:
        return None
    if not isinstance(value, ParamRef):
        raise call.unsupported(
            f"its {what} is {type(value).__name__}; supported: a parameter or buffer of the "
            "model (self.weight)"
        )
    return call.ctx.add_param(value.name, value.tensor)


#: F.layer_norm's and F.group_norm's optional weight and bias (arguments 2 and 3)
_NORM_PARAMS = {"weight": 2, "bias": 3}


@register_function((F.layer_norm, "F.layer_norm"), params=True)
def _layernorm_fn(call: Call) -> int:
    params = _functional_params(call, _NORM_PARAMS)
    return _layernorm(
        call, _one(call), call.arg(1, "normalized_shape"), params, call.arg(4, "eps", 1e-5)
    )


# --------------------------------------------------------------------------- functional layers


@register_function((F.linear, "F.linear"), params=True)
def _linear_fn(call: Call) -> int:
    return call.emit("linear", [_one(call)], params=_weight_and_bias(call))


def _row_view(call: Call, what: str) -> Value:
    """A functional row op (conv, pooling) reads dims itself: one step or a static value."""
    x = _one(call)
    if call.view == "sequence":
        raise call.unsupported(
            f"{what} interprets tensor dims itself and here gets the whole [T, B, ...] "
            "sequence (T would be read as the batch); apply it inside a SpikingJelly "
            "layer.SeqToANNContainer, or per step"
        )
    return x


def _functional_params(
    call: Call, positions: dict[str, int], required: tuple[str, ...] = ()
) -> dict[str, str]:
    """The parameters a functional layer call passes (role -> argument position), the
    model's own by state_dict name; an optional one not given is left out."""
    params = {}
    for role, k in positions.items():
        name = _param(call, call.arg(k, role, ... if role in required else None), role)
        if name is not None:
            params[role] = name
    return params


def _weight_and_bias(call: Call) -> dict[str, str]:
    """F.linear's and F.conv's weight (argument 1) and optional bias (argument 2)."""
    return _functional_params(call, {"weight": 1, "bias": 2}, required=("weight",))


def _conv_fn(call: Call, nd: int) -> int:
    x = _conv_input(call, nd)
    padding = call.arg(4, "padding", 0)
    if isinstance(padding, str):
        raise call.unsupported("string padding in F.conv is not supported; give ints")
    attrs = {
        "stride": _ntuple(call.arg(3, "stride", 1), nd),
        "padding": _ntuple(padding, nd),
        "dilation": _ntuple(call.arg(5, "dilation", 1), nd),
        "groups": int(call.arg(6, "groups", 1)),
    }
    return call.emit(f"conv{nd}d", [x], attrs=attrs, params=_weight_and_bias(call))


@register_function((F.conv1d, "F.conv1d"), params=True)
def _conv1d_fn(call: Call) -> int:
    return _conv_fn(call, 1)


@register_function((F.conv2d, "F.conv2d"), params=True)
def _conv2d_fn(call: Call) -> int:
    return _conv_fn(call, 2)


def _conv_transpose_fn(call: Call, nd: int) -> int:
    """F.conv_transpose{nd}d(input, weight, bias, stride, padding, output_padding, groups,
    dilation): torch's argument order, which differs from F.conv's."""
    x = _conv_input(call, nd)
    attrs = {
        "stride": _ntuple(call.arg(3, "stride", 1), nd),
        "padding": _ntuple(call.arg(4, "padding", 0), nd),
        "output_padding": _ntuple(call.arg(5, "output_padding", 0), nd),
        "dilation": _ntuple(call.arg(7, "dilation", 1), nd),
        "groups": int(call.arg(6, "groups", 1)),
    }
    return call.emit(f"conv_transpose{nd}d", [x], attrs=attrs, params=_weight_and_bias(call))


@register_function((F.conv_transpose1d, "F.conv_transpose1d"), params=True)
def _conv_transpose1d_fn(call: Call) -> int:
    return _conv_transpose_fn(call, 1)


@register_function((F.conv_transpose2d, "F.conv_transpose2d"), params=True)
def _conv_transpose2d_fn(call: Call) -> int:
    return _conv_transpose_fn(call, 2)


@register_function((F.group_norm, "F.group_norm"), params=True)
def _group_norm_fn(call: Call) -> int:
    x = _row_view(call, "F.group_norm")
    params = _functional_params(call, _NORM_PARAMS)
    attrs = {"num_groups": int(call.arg(1, "num_groups")), "eps": float(call.arg(4, "eps", 1e-5))}
    return call.emit("groupnorm", [x], attrs=attrs, params=params)  # type: ignore[arg-type]


@register_function((F.pad, "F.pad"))
def _pad_fn(call: Call) -> int:
    x = _row_view(call, "F.pad")
    return constant_pad(
        call, x, call.arg(1, "pad"), call.arg(3, "value", None), call.arg(2, "mode", "constant")
    )


@register_function((F.interpolate, "F.interpolate"))
def _interpolate_fn(call: Call) -> int:
    x = _row_view(call, "F.interpolate")
    if call.arg(4, "align_corners", None) or call.arg(6, "antialias", False):
        raise call.unsupported("align_corners and antialias are not supported (mode 'nearest')")
    return upsample_nearest(
        call,
        x,
        call.arg(1, "size", None),
        call.arg(2, "scale_factor", None),
        call.arg(3, "mode", "nearest"),
        call.arg(5, "recompute_scale_factor", None),
    )


@register_function((F.max_pool2d, "F.max_pool2d"))
def _max_pool2d_fn(call: Call) -> int:
    x = _row_view(call, "F.max_pool2d")
    _per_step_rank(call, x, (3, 4), "[B, C, H, W]")
    if call.arg(6, "return_indices", False):
        raise call.unsupported("return_indices=True is not supported")
    kernel = call.arg(1, "kernel_size")
    stride = call.arg(2, "stride", None)
    attrs = {
        "kernel_size": _ntuple(kernel, 2),
        "stride": _ntuple(stride if stride not in (None, []) else kernel, 2),
        "padding": _ntuple(call.arg(3, "padding", 0), 2),
        "dilation": _ntuple(call.arg(4, "dilation", 1), 2),
        "ceil_mode": bool(call.arg(5, "ceil_mode", False)),
    }
    return call.emit("maxpool2d", [x], attrs=attrs)


@register_function((F.avg_pool2d, "F.avg_pool2d"))
def _avg_pool2d_fn(call: Call) -> int:
    x = _row_view(call, "F.avg_pool2d")
    _per_step_rank(call, x, (3, 4), "[B, C, H, W]")
    kernel = call.arg(1, "kernel_size")
    stride = call.arg(2, "stride", None)
    divisor = call.arg(6, "divisor_override", None)
    attrs = {
        "kernel_size": _ntuple(kernel, 2),
        "stride": _ntuple(stride if stride not in (None, []) else kernel, 2),
        "padding": _ntuple(call.arg(3, "padding", 0), 2),
        "ceil_mode": bool(call.arg(4, "ceil_mode", False)),
        "count_include_pad": bool(call.arg(5, "count_include_pad", True)),
        "divisor_override": None if divisor is None else int(divisor),
    }
    return call.emit("avgpool2d", [x], attrs=attrs)


@register_function((F.adaptive_avg_pool2d, "F.adaptive_avg_pool2d"))
def _adaptive_avg_pool2d_fn(call: Call) -> int:
    x = _row_view(call, "F.adaptive_avg_pool2d")
    _per_step_rank(call, x, (3, 4), "[B, C, H, W]")
    out = call.out_shape
    return call.emit("adaptive_avgpool2d", [x], attrs={"output_size": [int(out[-2]), int(out[-1])]})


@register_function((F.avg_pool1d, "F.avg_pool1d"))
def _avg_pool1d_fn(call: Call) -> int:
    x = _row_view(call, "F.avg_pool1d")
    kernel = call.arg(1, "kernel_size")
    attrs = avgpool1d_attrs(
        kernel,
        call.arg(2, "stride", None),
        call.arg(3, "padding", 0),
        call.arg(4, "ceil_mode", False),
        call.arg(5, "count_include_pad", True),
    )
    return pool1d_as_2d(call, x, "avgpool2d", attrs)


@register_function((F.max_pool1d, "F.max_pool1d"))
def _max_pool1d_fn(call: Call) -> int:
    x = _row_view(call, "F.max_pool1d")
    if call.arg(6, "return_indices", False):
        raise call.unsupported("return_indices=True is not supported")
    attrs = maxpool1d_attrs(
        call.arg(1, "kernel_size"),
        call.arg(2, "stride", None),
        call.arg(3, "padding", 0),
        call.arg(4, "dilation", 1),
        call.arg(5, "ceil_mode", False),
    )
    return pool1d_as_2d(call, x, "maxpool2d", attrs)


@register_function((F.adaptive_avg_pool1d, "F.adaptive_avg_pool1d"))
def _adaptive_avg_pool1d_fn(call: Call) -> int:
    x = _row_view(call, "F.adaptive_avg_pool1d")
    attrs = {"output_size": [1, int(call.out_shape[-1])]}
    return pool1d_as_2d(call, x, "adaptive_avgpool2d", attrs)


@register_function((F.dropout, "F.dropout"))
def _dropout_fn(call: Call) -> int:
    x = _one(call)
    if call.arg(3, "inplace", False):
        raise call.unsupported("inplace=True is not supported")
    if not call.arg(2, "training", True):
        return call.emit("identity", [x])
    return call.emit(
        "dropout", [x], attrs={"p": float(call.arg(1, "p", 0.5)), "shared_over_time": False}
    )
