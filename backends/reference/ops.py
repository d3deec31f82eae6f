"""Torch eager implementations of the stateless IR ops (the op table's executable meaning).

Two kinds of op, because SpikingJelly's multi-step wrappers treat them two ways:

- *row ops* (linear, conv, pooling, batchnorm, voting) see a batch of rows
  ``[N, ...]``: one step's ``[B, ...]``, or the whole sequence flattened to
  ``[T*B, ...]`` exactly like ``functional.seq_to_ann_forward``;
- *lead ops* (flatten, reshape, cat, permute, slice, element-wise, matmul,
  reductions over per-step dims, layernorm, softmax) treat the leading dims as
  batch dims, so they run on ``[*lead, B, ...]`` directly -- exactly as the
  source model applied them to its ``[T, B, ...]`` tensors --, with per-step
  dims shifted by the number of leading dims (0 for one step or a static
  value, 1 for ``[T, B, ...]``).

Each function takes ``(attrs, params, inputs)``; params are torch tensors by
role, already resolved from the parameter store (and, for a linear/conv that
carries a folded BatchNorm, already folded by :func:`fold_bn`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from snncc.errors import IRError, UnsupportedError

Tensor = torch.Tensor
Params = dict[str, Tensor]
RowFn = Callable[[dict[str, Any], Params, list[Tensor]], Tensor]
LeadFn = Callable[[dict[str, Any], Params, list[Tensor], int], Tensor]

BN_FOLD_ROLES = ("bn_weight", "bn_bias", "bn_mean", "bn_var")


def fold_bn(attrs: dict[str, Any], params: Params) -> Params:
    """Fold a linear/conv's eval-mode BatchNorm params into weight and bias (ops.py's formula).

    ``s = bn_weight / sqrt(bn_var + bn_eps)``, ``W' = W * s`` per output
    channel, ``b' = (b - bn_mean) * s + bn_bias``. Computed with torch ops from
    the original tensors, so gradients reach the source model's parameters.
    """
    if not any(r in params for r in BN_FOLD_ROLES):
        return params
    missing = [r for r in ("bn_mean", "bn_var") if r not in params]
    if missing or "bn_eps" not in attrs:
        raise IRError(
            f"folded BatchNorm needs params bn_mean, bn_var and attr bn_eps; missing {missing or ['bn_eps']}"
        )
    w = params["weight"]
    mean, var = params["bn_mean"], params["bn_var"]
    gamma = params.get("bn_weight", torch.ones_like(var))
    beta = params.get("bn_bias", torch.zeros_like(mean))
    s = gamma / torch.sqrt(var + float(attrs["bn_eps"]))
    bias = params.get("bias", torch.zeros_like(mean))
    folded = {k: v for k, v in params.items() if k not in BN_FOLD_ROLES}
    folded["weight"] = w * s.reshape(-1, *([1] * (w.dim() - 1)))
    folded["bias"] = (bias - mean) * s + beta
    return folded


# ------------------------------------------------------------------ row ops
def _linear(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.linear(ins[0], p["weight"], p.get("bias"))


def _conv_args(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "stride": attrs["stride"],
        "padding": attrs["padding"],
        "dilation": attrs["dilation"],
        "groups": attrs["groups"],
    }


def _conv1d(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.conv1d(ins[0], p["weight"], p.get("bias"), **_conv_args(attrs))


def _conv2d(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.conv2d(ins[0], p["weight"], p.get("bias"), **_conv_args(attrs))


def _conv_transpose_args(attrs: dict[str, Any]) -> dict[str, Any]:
    return {**_conv_args(attrs), "output_padding": attrs["output_padding"]}


def _conv_transpose1d(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.conv_transpose1d(ins[0], p["weight"], p.get("bias"), **_conv_transpose_args(attrs))


def _conv_transpose2d(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.conv_transpose2d(ins[0], p["weight"], p.get("bias"), **_conv_transpose_args(attrs))


def _upsample_nearest(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    """As the model called it: with its scale_factor, torch's kernel divides by that."""
    sf = attrs.get("scale_factor")
    if sf is not None:
        return F.interpolate(ins[0], scale_factor=list(sf), mode="nearest")
    return F.interpolate(ins[0], size=list(attrs["size"]), mode="nearest")


def _groupnorm(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    g, eps = int(attrs["num_groups"]), float(attrs["eps"])
    return F.group_norm(ins[0], g, p.get("weight"), p.get("bias"), eps)


def _pad(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.pad(ins[0], list(attrs["pads"]), value=float(attrs["value"]))


def batchnorm(attrs: dict[str, Any], p: Params, ins: list[Tensor], training: bool) -> Tensor:
    """torch batch_norm; in training mode statistics are over the rows given, running stats updated in place."""
    momentum = attrs["momentum"]
    if training and momentum is None:
        raise UnsupportedError(
            "batchnorm with momentum=None (cumulative moving average) is not supported in "
            "training mode; set a float momentum on the source BatchNorm"
        )
    return F.batch_norm(
        ins[0],
        p["running_mean"],
        p["running_var"],
        p.get("weight"),
        p.get("bias"),
        training=training,
        momentum=0.0 if momentum is None else float(momentum),
        eps=float(attrs["eps"]),
    )


def _avgpool2d(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.avg_pool2d(
        ins[0],
        attrs["kernel_size"],
        attrs.get("stride"),
        attrs["padding"],
        ceil_mode=attrs.get("ceil_mode", False),
        count_include_pad=attrs.get("count_include_pad", True),
        divisor_override=attrs.get("divisor_override"),
    )


def _maxpool2d(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.max_pool2d(
        ins[0],
        attrs["kernel_size"],
        attrs.get("stride"),
        attrs["padding"],
        dilation=attrs.get("dilation", 1),
        ceil_mode=attrs.get("ceil_mode", False),
    )


def _adaptive_avgpool2d(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    return F.adaptive_avg_pool2d(ins[0], attrs["output_size"])


def _voting(attrs: dict[str, Any], p: Params, ins: list[Tensor]) -> Tensor:
    # SpikingJelly VotingLayer: avg_pool1d(x.unsqueeze(1), k, k).squeeze(1) on [N, C*k].
    x = ins[0]
    k = int(attrs["voting_size"])
    if x.dim() == 2:
        return F.avg_pool1d(x.unsqueeze(1), k, k).squeeze(1)
    lead = x.shape[:-1]
    y = F.avg_pool1d(x.reshape(-1, 1, x.shape[-1]), k, k)
    return y.reshape(*lead, y.shape[-1])


ROW_OPS: dict[str, RowFn] = {
    "linear": _linear,
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "conv_transpose1d": _conv_transpose1d,
    "conv_transpose2d": _conv_transpose2d,
    "upsample_nearest": _upsample_nearest,
    "pad": _pad,
    "groupnorm": _groupnorm,
    "avgpool2d": _avgpool2d,
    "maxpool2d": _maxpool2d,
    "adaptive_avgpool2d": _adaptive_avgpool2d,
    "voting": _voting,
}


# ------------------------------------------------------------------ lead ops
def _shift(dim: int, lead: int) -> int:
    """A per-step dim (0 = batch) as a dim of a tensor with ``lead`` extra leading dims."""
    return dim + lead if dim >= 0 else dim


def _flatten(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    start, end = int(attrs["start_dim"]), int(attrs["end_dim"])
    return torch.flatten(ins[0], _shift(start, lead), _shift(end, lead))


def _reshape(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    x = ins[0]
    return x.reshape(*x.shape[:lead], *attrs["shape"])


def _cat(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    return torch.cat(ins, dim=_shift(int(attrs["dim"]), lead))


def _identity(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    return ins[0]


def _add(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    out = ins[0]
    for x in ins[1:]:  # left to right, as ``a + b + c`` in the source
        out = out + x
    return out


def _mul(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    return ins[0] * ins[1]


def _sub(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    return ins[0] - ins[1]


def _neg(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    return -ins[0]


def _add_scalar(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    return ins[0] + float(attrs["value"])


def _matmul(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    # the leading time (and batch) dims are batch dims of the matmul: one batched GEMM
    return torch.matmul(ins[0], ins[1])


def _permute(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    perm = [int(d) + lead for d in attrs["perm"]]
    return ins[0].permute(*range(lead), *perm)


def _slice(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    index = (slice(None),) * (int(attrs["dim"]) + lead)
    step = slice(int(attrs["start"]), int(attrs["stop"]), int(attrs["step"]))
    return ins[0][(*index, step)]


def reduce(x: Tensor, op: str, dims: tuple[int, ...], keepdim: bool = False) -> Tensor:
    """torch's reduction ``op`` over ``dims`` (the op table's ``reduce`` and ``time_reduce``)."""
    fn = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin}.get(op)
    if fn is None:
        raise IRError(f"reduction {op!r} is not one of sum, mean, amax, amin")
    return fn(x, dim=dims, keepdim=keepdim)


def reduce_time(x: Tensor, attrs: dict[str, Any]) -> Tensor:
    """``time_reduce`` over dim 0 of [T, B, ...]; ``order: "steps"`` adds left to right, as
    the model's loop did (torch's ``x.sum(0)`` adds in another order: other bits from T=5)."""
    if attrs.get("order") != "steps":
        return reduce(x, attrs["op"], (0,))
    steps = x.unbind(0)
    acc = steps[0] + 0.0  # the loop's 0 + x_0 (which makes a -0.0 a 0.0, as it does)
    for xt in steps[1:]:
        acc = acc + xt
    return acc


def _reduce(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    dims = tuple(int(d) + lead for d in attrs["dims"])
    return reduce(ins[0], attrs["op"], dims, bool(attrs["keepdim"]))


def _layernorm(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    shape = [int(d) for d in attrs["normalized_shape"]]
    return F.layer_norm(ins[0], shape, p.get("weight"), p.get("bias"), float(attrs["eps"]))


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


def _activation(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    fn = _ACTIVATIONS.get(attrs["fn"])
    if fn is None:
        raise IRError(f"activation {attrs['fn']!r} is not one of {sorted(_ACTIVATIONS)}")
    return fn(ins[0])


def _softmax(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    fn = F.log_softmax if attrs.get("log") else F.softmax
    return fn(ins[0], dim=int(attrs["dim"]) + lead)


def scale(x: Tensor, op: str, value: float) -> Tensor:
    """``x * value`` or ``x / value`` (division kept as division: it rounds differently)."""
    if op == "mul":
        return x * value
    if op == "div":
        return x / value
    raise IRError(f"scale op {op!r} is not 'mul' or 'div'")


def _scale(attrs: dict[str, Any], p: Params, ins: list[Tensor], lead: int) -> Tensor:
    return scale(ins[0], attrs["op"], float(attrs["value"]))


LEAD_OPS: dict[str, LeadFn] = {
    "flatten": _flatten,
    "reshape": _reshape,
    "cat": _cat,
    "identity": _identity,
    "output": _identity,
    # a value moving to the next stage's device: one process holds every stage, so it stays
    "transfer": _identity,
    "add": _add,
    "sub": _sub,
    "neg": _neg,
    "mul": _mul,
    "scale": _scale,
    "add_scalar": _add_scalar,
    "matmul": _matmul,
    "permute": _permute,
    "slice": _slice,
    "reduce": _reduce,
    "layernorm": _layernorm,
    "activation": _activation,
    "softmax": _softmax,
}


def apply_steps(steps: list[dict[str, Any]], x: Tensor, ins: list[Tensor], where: str) -> Tensor:
    """Apply a neuron's fused prologue/epilogue (``ins``: the node's inputs by port)."""
    for st in steps:
        kind = st.get("kind")
        if kind == "scale":
            x = scale(x, st["op"], float(st["value"]))
        elif kind == "add":
            port = int(st["port"])
            if not 1 <= port < len(ins):
                raise IRError(f"{where}: add step reads port {port}, node has {len(ins)} inputs")
            x = x + ins[port]
        else:
            raise IRError(f"{where}: unknown step kind {kind!r}; known: 'scale', 'add'")
    return x
