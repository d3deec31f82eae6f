"""The op table: every op the IR may hold, with its arity, attributes and parameter roles.

The verifier checks nodes against this table; frontends produce only these
ops; every backend implements all of them (the reference backend is the
executable definition of their per-step meaning, in torch eager ops).

Per-step meaning (x is the value at port 0, shapes exclude T, batch first):

=================== =============================================================
op                  meaning
=================== =============================================================
input               program input ``attrs.index``
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
batchnorm           torch batch_norm; attrs eps, momentum, training
                    (training=True normalises with batch statistics over T*B
                    for a multi-step source, over B for a single-step source:
                    attrs.stats = "sequence" | "step")
avgpool2d           attrs kernel_size, stride, padding, ceil_mode,
                    count_include_pad, divisor_override
maxpool2d           attrs kernel_size, stride, padding, dilation, ceil_mode
adaptive_avgpool2d  attrs output_size
flatten             attrs start_dim, end_dim (per-step dims: 0 is batch)
reshape             attrs shape (per-step, batch written as -1)
dropout             attrs p, shared_over_time, training (eval: identity, drop_noops removes it)
identity            copy
add                 sum of all inputs, left to right in port order
                    (((p0 + p1) + p2) ...; broadcasting as torch)
mul                 product of two inputs (broadcasting as torch)
scale               ``x * value`` or ``x / value``: attrs op ("mul"|"div"), value
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

Fused element-wise steps (added by ``fuse_elementwise``): a neuron's
``attrs["prologue"]`` is a list applied to x before the charge, its
``attrs["epilogue"]`` a list applied to the neuron's output, each step one of
``{"kind": "scale", "op": "mul"|"div", "value": float}`` or
``{"kind": "add", "port": k}`` (add the node's input at port k, k at least the
number of the form's own ports).
"""

from __future__ import annotations

from dataclasses import dataclass


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
_BN_FOLD = ("bn_weight", "bn_bias", "bn_mean", "bn_var")

OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("input", 0, 0, ("index",)),
        OpDef("output", 1, 1, ("index",)),
        OpDef("linear", 1, 1, (), ("weight",), ("bias", *_BN_FOLD)),
        OpDef("conv1d", 1, 1, _CONV_ATTRS, ("weight",), ("bias", *_BN_FOLD)),
        OpDef("conv2d", 1, 1, _CONV_ATTRS, ("weight",), ("bias", *_BN_FOLD)),
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
        OpDef("mul", 2, 2, elementwise=True),
        OpDef("scale", 1, 1, ("op", "value"), elementwise=True),
        OpDef("cat", 1, None, ("dim",)),
        OpDef("voting", 1, 1, ("voting_size",)),
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
