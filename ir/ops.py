"""The op table: every op the IR may hold, with its arity, attributes and parameter roles.

The verifier checks nodes against this table; frontends produce only these
ops; every backend implements all of them (the reference backend is the
executable definition of their per-step meaning, in torch eager ops).

Per-step meaning (x is the value at port 0, shapes exclude T, batch first):

=================== =============================================================
op                  meaning
=================== =============================================================
input               program input ``attrs.index``; ``attrs.static`` True: an input
                    without a time axis (see "Static values" below)
output              program output ``attrs.index`` (identity on port 0)
linear              ``x @ weight.T + bias`` over the last dim (torch.nn.Linear)
conv1d, conv2d      torch conv; attrs stride, padding, dilation, groups
                    linear/conv may carry a folded eval-mode BatchNorm (set by
                    ``fold_batchnorm``): optional params bn_weight, bn_bias,
                    bn_mean, bn_var and attr bn_eps. Backends fold them into
                    weight/bias themselves (``s = bn_weight / sqrt(bn_var +
                    bn_eps)``, ``W' = W * s`` per output channel, ``b' = (b -
                    bn_mean) * s + bn_bias``) so parameters stay keyed by the
                    source state_dict names and gradients reach the originals.
conv_transpose1d,   torch conv_transpose (a convolution's adjoint: decoders,
conv_transpose2d    upsampling); attrs stride, padding, output_padding, dilation,
                    groups; weight [C_in, C_out / groups, k...]
batchnorm           torch batch_norm; attrs eps, momentum, training
                    (training=True normalises with batch statistics over T*B
                    for a multi-step source, over B for a single-step source:
                    attrs.stats = "sequence" | "step")
avgpool2d           attrs kernel_size, stride, padding, ceil_mode,
                    count_include_pad, divisor_override
maxpool2d           attrs kernel_size, stride, padding, dilation, ceil_mode
adaptive_avgpool2d  attrs output_size
groupnorm           torch group_norm of [B, C, ...]: attrs num_groups, eps; params
                    weight, bias (optional, per channel)
pad                 torch ``F.pad(x, pads, value=value)`` in mode "constant": pads
                    pairs (low, high) from the last dim backwards, never the batch
upsample_nearest    torch ``F.interpolate(mode="nearest")`` over the last len(size)
                    (1 or 2) dims: attrs size (the output's), scale_factor (the
                    model's, which torch's kernel divides by, or None: in / out);
                    which element each output reads: ``ir.resample``
flatten             attrs start_dim, end_dim (per-step dims: 0 is batch)
reshape             attrs shape (per-step, batch written as -1)
dropout             attrs p, shared_over_time, training (eval: identity, drop_noops removes it)
identity            copy
add                 sum of all inputs, left to right in port order
                    (((p0 + p1) + p2) ...; broadcasting as torch)
sub                 ``p0 - p1`` (broadcasting as torch)
neg                 ``-x``
mul                 product of two inputs (broadcasting as torch)
scale               ``x * value`` or ``x / value``: attrs op ("mul"|"div"), value
add_scalar          ``x + value`` (attrs value, a float). ``x - c`` is ``x + (-c)``
                    and ``c - x`` is ``neg`` then ``+ c``: IEEE subtraction is the
                    addition of the negation, so both are exact
matmul              torch.matmul of two per-step values of equal rank >= 3:
                    [B, ..., M, K] @ [B, ..., K, N] (one batched GEMM over every
                    leading dim, T*B*... matrices for a whole sequence)
permute             attrs perm: a permutation of the per-step dims, perm[0] == 0
                    (the batch stays first); transpose is a permute
slice               ``x[..., start:stop:step, ...]`` along per-step dim attrs.dim
                    (>= 1); start, stop, step non-negative ints (chunk, split,
                    narrow, indexing)
reduce              attrs op ("sum"|"mean"|"amax"|"amin") over per-step dims
                    attrs.dims (>= 1, sorted), keepdim (torch's reduction)
layernorm           torch layer_norm over the last len(attrs.normalized_shape)
                    dims; attrs eps; params weight, bias (optional)
activation          attrs fn: "relu", "gelu" (erf), "gelu_tanh", "sigmoid", "tanh"
softmax             softmax along per-step dim attrs.dim (>= 1); attrs log: True
                    for log_softmax
repeat_time         a static value at every time step: attrs times (the number
                    of steps the model repeats it over, e.g. ``x.unsqueeze(0)
                    .repeat(T, 1, 1, 1, 1)``; every repeat_time of a graph has the
                    same times)
time_reduce         attrs op ("mean"|"sum"|"amax"|"amin") over the T steps of its
                    input (``x.mean(0)`` of a sequence); the result is static.
                    attrs.order "steps" (op "sum" only): added in step order,
                    ((0 + x_0) + x_1) + ..., as a model's own loop accumulates
                    (``acc += v``); without it, in torch's order (``x.sum(0)``)
cat                 torch.cat along attrs dim (per-step)
voting              SpikingJelly VotingLayer: avg_pool1d over the last dim,
                    kernel = stride = attrs voting_size
transfer            identity; added by the ``partition`` pass where a value
                    crosses from stage ``attrs.src_stage`` to ``attrs.dst_stage``
                    (the next one: a value needed several stages on is
                    forwarded stage by stage); ``attrs.wire`` is the dtype it
                    travels in ("uint8" for exact 0/1 spikes, else its own)
neuron              stateful; attrs neuron (NeuronSpec.to_dict()); params by
                    role: the spec's ``param_roles`` and ``learnable`` (plif:
                    "w"; snnTorch: beta, threshold, ...). Ports 0..k-1 are the
                    form's own inputs (``NeuronSpec.input_ports``: port 0 the
                    input current x; snntorch_rleaky / norse_lif_recurrent:
                    port 1 ``rec``, the recurrent term fed through a delay-1
                    edge). Passes may add attrs prologue / epilogue (see
                    below); their ``add`` ports come after the form's own.
=================== =============================================================

Rows as the source computed them: a ``linear`` or a convolution may carry
``attrs.source_rows = "step"``: the source ran it on one step's B rows per call (a
Norse ``Lift`` or a SpikingJelly ``MultiStepContainer`` inside a multi-step model), and
a GEMM's last bits can depend on how many rows it sees. Backends that promise the
source's bits run such a node one step at a time, as they run every row op of a graph
from a single-step source (``meta.step_mode == "s"``).

Static values (no time axis): an ``input`` with ``attrs.static``, a
``time_reduce``, and every stateless node all of whose inputs are static,
hold one value ``[B, ...]`` for the whole sequence (computed once; a graph
with only static inputs runs ``repeat_time``'s number of steps). Everything
else is per step (``[T, B, ...]`` for a whole sequence). A node never mixes
the two (a static operand of an element-wise op is repeated first); neurons
and recurrent components are per step (:mod:`snncc.ir.static`).

Fused element-wise steps (added by ``fuse_elementwise``): a neuron's
``attrs["prologue"]`` is a list applied to x before the charge, its
``attrs["epilogue"]`` a list applied to the neuron's output, each step one of
``{"kind": "scale", "op": "mul"|"div", "value": float}`` or
``{"kind": "add", "port": k}`` (add the node's input at port k, k at least the
number of the form's own ports).
"""

from __future__ import annotations

from dataclasses import dataclass

#: ops whose bits can depend on the rows per call (see "Rows as the source computed them")
SOURCE_ROWS_OPS = frozenset({"linear", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"})
#: what ``reduce`` / ``time_reduce`` compute (torch's names)
REDUCTIONS = ("sum", "mean", "amax", "amin")
#: the functions of ``activation``
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "sigmoid", "tanh")


@dataclass(frozen=True)
class OpDef:
    name: str
    min_inputs: int
    max_inputs: int | None  # None: any number
    required_attrs: tuple[str, ...] = ()
    required_params: tuple[str, ...] = ()
    optional_params: tuple[str, ...] = ()
    stateful: bool = False
    elementwise: bool = False


_CONV_ATTRS = ("stride", "padding", "dilation", "groups")
_CONVT_ATTRS = ("stride", "padding", "output_padding", "dilation", "groups")
_BN_FOLD = ("bn_weight", "bn_bias", "bn_mean", "bn_var")

OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("input", 0, 0, ("index",)),
        OpDef("output", 1, 1, ("index",)),
        OpDef("linear", 1, 1, (), ("weight",), ("bias", *_BN_FOLD)),
        OpDef("conv1d", 1, 1, _CONV_ATTRS, ("weight",), ("bias", *_BN_FOLD)),
        OpDef("conv2d", 1, 1, _CONV_ATTRS, ("weight",), ("bias", *_BN_FOLD)),
        OpDef("conv_transpose1d", 1, 1, _CONVT_ATTRS, ("weight",), ("bias",)),
        OpDef("upsample_nearest", 1, 1, ("size",)),
        OpDef("pad", 1, 1, ("pads", "value")),
        OpDef("groupnorm", 1, 1, ("num_groups", "eps"), (), ("weight", "bias")),
        OpDef("conv_transpose2d", 1, 1, _CONVT_ATTRS, ("weight",), ("bias",)),
        OpDef(
            "batchnorm",
            1,
            1,
            ("eps", "momentum", "training"),
            ("running_mean", "running_var"),
            ("weight", "bias"),
        ),
        OpDef("avgpool2d", 1, 1, ("kernel_size", "stride", "padding")),
        OpDef("maxpool2d", 1, 1, ("kernel_size", "stride", "padding")),
        OpDef("adaptive_avgpool2d", 1, 1, ("output_size",)),
        OpDef("flatten", 1, 1, ("start_dim", "end_dim")),
        OpDef("reshape", 1, 1, ("shape",)),
        OpDef("dropout", 1, 1, ("p",), elementwise=True),
        OpDef("identity", 1, 1, elementwise=True),
        OpDef("add", 2, None, elementwise=True),
        OpDef("sub", 2, 2, elementwise=True),
        OpDef("neg", 1, 1, elementwise=True),
        OpDef("mul", 2, 2, elementwise=True),
        OpDef("scale", 1, 1, ("op", "value"), elementwise=True),
        OpDef("add_scalar", 1, 1, ("value",), elementwise=True),
        OpDef("cat", 1, None, ("dim",)),
        OpDef("voting", 1, 1, ("voting_size",)),
        OpDef("matmul", 2, 2),
        OpDef("permute", 1, 1, ("perm",)),
        OpDef("slice", 1, 1, ("dim", "start", "stop", "step")),
        OpDef("reduce", 1, 1, ("op", "dims", "keepdim")),
        OpDef("layernorm", 1, 1, ("normalized_shape", "eps"), (), ("weight", "bias")),
        OpDef("activation", 1, 1, ("fn",), elementwise=True),
        OpDef("softmax", 1, 1, ("dim", "log")),
        OpDef("repeat_time", 1, 1, ("times",)),
        OpDef("time_reduce", 1, 1, ("op",)),
        OpDef("transfer", 1, 1, ("src_stage", "dst_stage", "wire")),
        OpDef("neuron", 1, None, ("neuron",), (), ("w",), stateful=True),
    ]
}


def opdef(name: str) -> OpDef:
    """The definition of op ``name``; KeyError lists the known ops."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown IR op {name!r}; known ops: {', '.join(sorted(OPS))}") from None
