"""Converters for SpikingJelly 2.0 ``activation_based`` modules.

Read from the installed sources (``spikingjelly/activation_based``):

- Neurons (``IFNode``, ``LIFNode``, ``ParametricLIFNode``) become one
  ``neuron`` op each; their arithmetic is named by the NeuronSpec charge form.
  ``v_reset=None`` is a soft reset and the membrane starts at 0, otherwise it
  starts at ``v_reset``. A non-default neuron precision (``_neuron_precision``)
  or a surrogate snncc cannot reproduce is refused.
- ``layer.*`` wrappers are their torch.nn parents plus ``step_mode``. In 'm'
  mode most fold the sequence into the batch (``seq_to_ann_forward``: the
  wrapped module sees [T*B, ...], dims are per-step dims, training-mode
  BatchNorm statistics run over T*B); ``layer.Linear`` has no forward of its
  own (it sees [T, B, F]; only the last dim matters).
- ``layer.Dropout`` is a MemoryModule: its mask is drawn once (from the first
  step in 'm' mode, on the first call in 's' mode) and kept until
  ``reset_net``, so within one sequence it is *shared over time* in both modes.
- ``SeqToANNContainer`` runs its children on the folded [T*B, ...] sequence;
  ``MultiStepContainer`` runs them once per step; ``StepModeContainer`` does
  either (stateful -> per step). Their children convert as a chain.
- ``VotingLayer``: ``avg_pool1d`` over the last dim with kernel = stride =
  voting_size, per step.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from snncc.frontend import torch_nn as tnn
from snncc.frontend.tracer import (
    Call,
    Chain,
    Framework,
    StateArgs,
    Value,
    register_container,
    register_framework,
    register_module,
)
from snncc.ir.neuron import NeuronSpec

try:  # SpikingJelly is optional: without it these converters are simply not registered
    from spikingjelly.activation_based import base as sj_base
    from spikingjelly.activation_based import functional as sj_functional
    from spikingjelly.activation_based import layer as sj_layer
    from spikingjelly.activation_based import neuron as sj_neuron
except ImportError:  # pragma: no cover - exercised only without spikingjelly
    sj_base = None

_PREFIX = "spikingjelly.activation_based"


def _owns(m: nn.Module) -> bool:
    """Every SpikingJelly step module is a leaf; model-zoo networks and SpikingJelly's plain
    composite modules (``layer.SpikingSelfAttention``: layers and neurons wired in its own
    ``forward``) are traced through."""
    if isinstance(m, sj_base.StepModule):
        return True
    mod = type(m).__module__
    if not mod.startswith("spikingjelly") or mod.startswith(f"{_PREFIX}.model"):
        return False
    return next(m.children(), None) is None


def _fake_call(m: nn.Module, args: tuple, kwargs: dict) -> object:
    """A neuron's output has its input's shape: no need to run its loop over T on fake values."""
    import torch

    nodes = (sj_neuron.BaseNode, sj_neuron.SimpleBaseNode)
    if isinstance(m, nodes) and len(args) == 1 and not kwargs:
        if isinstance(args[0], torch.Tensor) and not getattr(m, "store_v_seq", False):
            return torch.empty_like(args[0])
    return NotImplemented


def _step_mode(m: nn.Module) -> str | None:
    # layer.Linear has no forward of its own: identical in 's' and 'm', so it does not vote
    if type(m) is sj_layer.Linear:
        return None
    if isinstance(m, sj_base.StepModule):
        modes = m.supported_step_mode()
        if len(modes) == 1:  # MultiStepModule (containers) never set step_mode: 'm' by class
            return modes[0]
    return getattr(m, "step_mode", None)


def _in_time_loop(m: nn.Module) -> bool:
    """A single-step module keeping state between calls (a neuron with step_mode='s'): a
    model's own ``for t in range(T)`` loop calls it once per step, so the loop is folded."""
    return isinstance(m, sj_base.MemoryModule) and _step_mode(m) == "s"


def _loop_state_args(m: nn.Module) -> StateArgs | None:
    """Its state is its own (no state argument): each call continues from the last."""
    if not _in_time_loop(m):
        return None
    return StateArgs((), (), lambda v: True, internal_ok=True)


def _chain(m: nn.Module) -> Chain | None:
    t = type(m)
    if t is sj_layer.SeqToANNContainer:
        view = "flat"
    elif t is sj_layer.MultiStepContainer:
        view = "step"
    elif t is sj_layer.StepModeContainer:
        view = "step" if (m.step_mode == "s" or m.stateful) else "flat"
    else:
        return None
    return Chain(view=view, children=tuple(m.named_children()))


def _reset(model: nn.Module) -> None:
    if any(isinstance(m, sj_base.MemoryModule) for m in model.modules()):
        sj_functional.reset_net(model)


def _name(cls: type) -> str:
    """Public name, e.g. ``spikingjelly.activation_based.layer.Conv2d``."""
    pkg = cls.__module__.removeprefix(f"{_PREFIX}.").split(".")[0]
    return f"{_PREFIX}.{pkg}.{cls.__name__}"


def _wrapper_view(call: Call, m: nn.Module) -> Call:
    """The view a ``layer.*`` wrapper's torch parent sees: 'm' mode folds T into the batch."""
    if m.step_mode == "m":
        if call.view != "sequence":
            raise call.unsupported(
                f"step_mode='m' inside a container that feeds it {call.view!r} inputs; "
                "modules inside SpikingJelly containers must be step_mode='s'"
            )
        return _with_view(call, "flat")
    if call.view == "sequence":  # only reachable for a lone 's' wrapper in an 'm' model
        raise call.unsupported("step_mode='s' in a multi-step model; use step_mode='m'")
    return call


def _with_view(call: Call, view: str) -> Call:
    x = call.inputs[0]
    t = call.time_dims
    # what the module sees once T is folded into the batch: [T*B, ...] (dims as per step)
    fx = (x.fx_shape[0] * x.fx_shape[1], *x.fx_shape[2:]) if t else x.fx_shape
    out = call.out_fx_shape
    out_fx = (out[0] * out[1], *out[2:]) if t and out is not None else out
    return call.sub(
        path=call.path,
        what=call.what,
        inputs=[Value(x.id, tuple(fx), x.shape, x.dtype)],
        out_fx_shape=out_fx,
        view=view,
    )


# --------------------------------------------------------------------------- neurons


def _neuron_problem(m: nn.Module, view: str) -> str | None:
    """Why snncc cannot reproduce this neuron (checked before the model runs), or None."""
    from snncc.errors import UnsupportedError
    from snncc.frontend.surrogates import spikingjelly_surrogate

    if view == "flat":
        return (
            "a neuron inside SeqToANNContainer sees the whole [T*B, ...] sequence as one step; "
            "put neurons outside it (or in a MultiStepContainer)"
        )
    if getattr(m, "_neuron_precision", None) is not None:
        return (
            f"neuron precision {m._neuron_precision!r} is not supported; supported: the "
            "default (state and compute in the input dtype)"
        )
    if not isinstance(m.v_threshold, (int, float)) or isinstance(m.v_threshold, bool):
        return f"v_threshold={m.v_threshold!r}; supported: a Python float"
    if m.v_reset is not None and not isinstance(m.v_reset, (int, float)):
        return f"v_reset={m.v_reset!r}; supported: a Python float or None"
    if hasattr(m, "tau") and not isinstance(m.tau, (int, float)):
        return f"tau={m.tau!r}; supported: a Python float"
    learnable = _LEARNABLE.get(type(m))
    if learnable is not None and getattr(m, learnable).numel() != 1:
        shape = list(getattr(m, learnable).shape)
        return f"{learnable} of shape {shape}; supported: a scalar {learnable}"
    for attr in _FAMILY_FORMS.get(type(m), ("", "", ()))[2]:
        value = getattr(m, attr)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{attr}={value!r}; supported: a Python float"
    try:
        spikingjelly_surrogate(m.surrogate_function)
    except UnsupportedError as e:
        return str(e)
    return _family_problem(m)


def _common(call: Call, m: nn.Module) -> dict:
    from snncc.frontend.surrogates import spikingjelly_surrogate

    # _neuron_problem already ran (as the registered check) before this converter
    name, alpha, params = spikingjelly_surrogate(m.surrogate_function)
    v_reset = None if m.v_reset is None else float(m.v_reset)
    return {
        "v_threshold": float(m.v_threshold),
        "v_reset": v_reset,
        "reset": "subtract" if v_reset is None else "hard",
        "detach_reset": bool(m.detach_reset),
        "fire_cmp": ">=",
        "fire_from": "updated",
        "output": "spike",
        "surrogate": name,
        "alpha": alpha,
        "surrogate_params": params,
        # BaseNode registers memory v = v_reset, or 0.0 for a soft reset
        "v_init": 0.0 if v_reset is None else v_reset,
    }


def _emit_neuron(call: Call, spec: NeuronSpec, params: dict[str, str] | None = None) -> int:
    return call.emit(
        "neuron", [tnn.one_input(call)], attrs={"neuron": spec.to_dict()}, params=params
    )


def _if(call: Call, m: nn.Module) -> int:
    return _emit_neuron(call, NeuronSpec(model="if", charge="sj_if", **_common(call, m)))


def _lif(call: Call, m: nn.Module) -> int:
    c = _common(call, m)
    charge = "sj_lif_decay_input" if m.decay_input else "sj_lif"
    spec = NeuronSpec(
        model="lif", charge=charge, tau=float(m.tau), decay_input=bool(m.decay_input), **c
    )
    return _emit_neuron(call, spec)


def _plif(call: Call, m: nn.Module) -> int:
    c = _common(call, m)
    charge = "sj_plif_decay_input" if m.decay_input else "sj_plif"
    spec = NeuronSpec(
        model="plif", charge=charge, decay_input=bool(m.decay_input), learnable=("w",), **c
    )
    return _emit_neuron(call, spec, {"w": call.param(m, "w")})


# The other neuron families of SpikingJelly 2.0 (issue 12): one form each (ir/neurons/
# spikingjelly_<family>.py); their constants are the module's Python floats.

#: neuron class -> (model, charge form, the attributes that are its constants: spec extra)
_FAMILY_FORMS: dict[type, tuple[str, str, tuple[str, ...]]] = {}
#: neuron class -> its learnable scalar parameter (PLIF's w, KLIF's k)
_LEARNABLE: dict[type, str] = {}


def _constants_family(call: Call, m: nn.Module) -> int:
    """QIF, EIF, Izhikevich, CUBA-LIF: a form whose constants are the module's floats."""
    model, charge, attrs = _FAMILY_FORMS[type(m)]
    spec = NeuronSpec(
        model=model,
        charge=charge,
        tau=float(m.tau) if hasattr(m, "tau") else None,
        extra={a: float(getattr(m, a)) for a in attrs},
        **_common(call, m),
    )
    return _emit_neuron(call, spec)


def _klif(call: Call, m: nn.Module) -> int:
    spec = NeuronSpec(
        model="klif",
        charge="sj_klif",
        tau=float(m.tau),
        decay_input=bool(m.decay_input),
        learnable=("k",),
        extra={"scale_reset": 1.0 if m.scale_reset else 0.0},
        **_common(call, m),
    )
    return _emit_neuron(call, spec, {"k": call.param(m, "k")})


def _liaf_activation(m: nn.Module) -> str | None:
    """The snncc name of LIAF's ``act``, or None when snncc cannot reproduce it."""
    import torch
    import torch.nn.functional as F

    act = m.act
    by_type = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "identity"}
    if type(act) in by_type:
        return by_type[type(act)]
    by_fn = {torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
    by_fn |= {torch.tanh: "tanh", F.tanh: "tanh"}
    for fn, name in by_fn.items():
        if act is fn:
            return name
    return None


def _liaf_runs_lif(m: nn.Module) -> bool:
    """SpikingJelly 2.0's LIAFNode in step mode 'm' (without store_v_seq) runs LIFNode's
    multi-step kernel: it returns the LIF's spikes, not ``act``'s values."""
    return m.step_mode == "m" and not m.store_v_seq


def _liaf(call: Call, m: nn.Module) -> int:
    if _liaf_runs_lif(m):
        import warnings

        warnings.warn(
            f"{call.what}: SpikingJelly 2.0's LIAFNode in step_mode='m' returns LIFNode's "
            "spikes, not its activation (its multi-step path runs the LIF kernel); snncc "
            "compiles what SpikingJelly runs. Use step_mode='s' (or store_v_seq=True) for the "
            "LIAF output.",
            stacklevel=2,
        )
        return _lif(call, m)
    act = _liaf_activation(m)
    spec = NeuronSpec(
        model="liaf",
        charge=f"sj_liaf_{act}",
        tau=float(m.tau),
        decay_input=bool(m.decay_input),
        extra={"threshold_related": 1.0 if m.threshold_related else 0.0},
        **{**_common(call, m), "output": "activation"},
    )
    return _emit_neuron(call, spec)


def _family_problem(m: nn.Module) -> str | None:
    """What the families above cannot reproduce (beyond the common neuron checks)."""
    if type(m) is sj_neuron.LIAFNode and not _liaf_runs_lif(m):
        act = _liaf_activation(m)
        if act is None:
            return (
                f"LIAF act={m.act!r} is not supported; supported: nn.ReLU, nn.Sigmoid, "
                "nn.Tanh, nn.Identity and torch.relu / sigmoid / tanh (and F.*)"
            )
        if getattr(m.act, "inplace", False) and not m.threshold_related:
            return (
                "LIAF act=nn.ReLU(inplace=True) with threshold_related=False rectifies the "
                "membrane itself before it fires; supported: inplace=False"
            )
    return None


# --------------------------------------------------------------------------- wrappers


def _linear(call: Call, m: nn.Module) -> int:
    return tnn.convert_linear(call, m)  # sees [T, B, F] or [B, F]: last dim only


def _wrapped(convert: Callable[..., int], *args: Any) -> Callable[[Call, nn.Module], int]:
    """The converter of a ``layer.*`` wrapper: its torch parent's, on the view it sees."""

    def converter(call: Call, m: nn.Module) -> int:
        return convert(_wrapper_view(call, m), m, *args)

    return converter


def _dropout(call: Call, m: nn.Module) -> int:
    call = _wrapper_view(call, m)
    # the mask is a memory kept until reset_net: one mask for every step of a sequence,
    # except inside SeqToANNContainer, where a single call covers all T*B rows
    return tnn.convert_dropout(call, m, shared_over_time=call.view != "flat" or m.step_mode == "m")


def _voting(call: Call, m: nn.Module) -> int:
    call = _wrapper_view(call, m)
    x = tnn.one_input(call)
    if len(x.shape) != 2:
        raise call.unsupported(f"expects a per-step input [B, N], got per-step shape {x.shape}")
    return call.emit("voting", [x], attrs={"voting_size": int(m.voting_size)})


# Recurrent containers (issue 15): the sub-module's neuron fed by its own output one step late


_RECURRENT_NEURONS: dict[type, object] = {}


def _sub_neuron(call: Call, m: nn.Module, x: Value, what: str) -> int:
    """The container's sub-module (a supported SpikingJelly neuron) on ``x``, checked and
    named as the module it is (``<path>.sub_module``)."""
    sub = m.sub_module
    convert = _RECURRENT_NEURONS.get(type(sub))
    if convert is None:
        raise call.unsupported(
            f"its sub_module is {type(sub).__module__}.{type(sub).__qualname__}; supported: "
            f"{what} around one SpikingJelly neuron "
            f"({', '.join(sorted(c.__name__ for c in _RECURRENT_NEURONS))})"
        )
    problem = _neuron_problem(sub, "step")
    if problem is not None:
        raise call.unsupported(f"its sub_module: {problem}")
    sub_call = dataclasses.replace(
        call, path=f"{call.path}.sub_module" if call.path else "sub_module", inputs=[x]
    )
    return convert(sub_call, sub)


def _linear_recurrent(call: Call, m: nn.Module) -> int:
    """``y[t] = sub_module(rc(cat(x[t], y[t-1])))`` (SpikingJelly's LinearRecurrentContainer):
    a cat of the input and the neuron's own output one step late, one linear, the neuron; a
    recurrent group (one fused kernel on cpu/cuda, one scan on jax). y[-1] is zero, as the
    container's fresh state."""
    x = tnn.one_input(call)
    graph = call.ctx.graph
    lead, n_in = list(x.shape[:-1]), int(x.shape[-1])
    n_out = int(m.sub_module_out_features)
    if n_out != m.rc.out_features:
        raise call.unsupported(
            f"its sub_module maps {m.rc.out_features} to {n_out} features; supported: a neuron "
            "(out_features == in_features)"
        )
    cat = graph.add_node(
        "cat", [x.id], attrs={"dim": len(lead)}, shape=[*lead, n_in + n_out],
        dtype=x.dtype, name=f"{call.path}.cat",
    )  # fmt: skip
    params = {"weight": f"{call.path}.rc.weight" if call.path else "rc.weight"}
    call.ctx.add_param(params["weight"], m.rc.weight)
    if m.rc.bias is not None:
        params["bias"] = f"{call.path}.rc.bias" if call.path else "rc.bias"
        call.ctx.add_param(params["bias"], m.rc.bias)
    rc = graph.add_node(
        "linear", [cat], params=params, shape=[*lead, n_out], dtype=x.dtype,
        name=f"{call.path}.rc",
    )  # fmt: skip
    y = _sub_neuron(
        call,
        m,
        Value(rc, x.fx_shape[:-1] + (n_out,), [*lead, n_out], x.dtype),
        "a LinearRecurrentContainer",
    )
    graph.add_edge(y, cat, 1, 1)
    return y


#: element_wise_function bodies an ElementWiseRecurrentContainer may have: one of these ops
_ELEMENT_WISE = {
    operator.add: "add",
    torch.add: "add",
    operator.mul: "mul",
    torch.mul: "mul",
    operator.sub: "sub",
    torch.sub: "sub",
}


def _element_wise_op(call: Call, fn: object) -> tuple[str, tuple[int, int]]:
    """The op of ``element_wise_function(y, x)`` and which argument feeds each of its two
    ports, read from the function's own fx trace (no sample evaluation)."""
    why = (
        "supported element_wise_function: one +, * or - of its two arguments "
        "(e.g. lambda y, x: y + x)"
    )
    try:
        gm = torch.fx.symbolic_trace(fn)
    except Exception as e:  # noqa: BLE001 - any trace failure means: not one plain op
        raise call.unsupported(f"its element_wise_function cannot be traced ({e}); {why}") from e
    nodes = list(gm.graph.nodes)
    args = [n for n in nodes if n.op == "placeholder"]
    ops = [n for n in nodes if n.op not in ("placeholder", "output")]
    if len(args) != 2 or len(ops) != 1 or ops[0].op != "call_function" or ops[0].kwargs:
        raise call.unsupported(f"its element_wise_function is {fn!r}; {why}")
    (node,) = ops
    name = _ELEMENT_WISE.get(node.target)
    if name is None or len(node.args) != 2 or set(node.args) != set(args):
        raise call.unsupported(f"its element_wise_function computes {node.format_node()}; {why}")
    return name, (args.index(node.args[0]), args.index(node.args[1]))


def _element_wise_recurrent(call: Call, m: nn.Module) -> int:
    """``y[t] = sub_module(f(y[t-1], x[t]))`` (SpikingJelly's ElementWiseRecurrentContainer,
    f an add, mul or sub): the neuron's own output one step late combined with the input;
    y[-1] is zero, as the container's fresh state."""
    x = tnn.one_input(call)
    op, order = _element_wise_op(call, m.element_wise_function)
    graph = call.ctx.graph
    f = graph.add_node(
        op, [], shape=list(x.shape), dtype=x.dtype, name=f"{call.path}.element_wise_function"
    )
    y = _sub_neuron(
        call, m, Value(f, x.fx_shape, list(x.shape), x.dtype), "an ElementWiseRecurrentContainer"
    )
    for port, which in enumerate(order):  # argument 0 is y (the state), 1 is x
        if which == 0:
            graph.add_edge(y, f, port, 1)
        else:
            graph.add_edge(x.id, f, port, 0)
    return y


if sj_base is not None:
    register_framework(
        Framework(
            name="spikingjelly",
            owns=_owns,
            step_mode=_step_mode,
            reset=_reset,
            chain=_chain,
            stateful=lambda m: isinstance(m, sj_base.MemoryModule),
            source="spikingjelly",
            priority=2,
            fake_call=_fake_call,
            loops=_in_time_loop,
            state_args=_loop_state_args,
        )
    )
    _FAMILY_FORMS.update(
        {
            sj_neuron.QIFNode: ("qif", "sj_qif", ("a0", "v_rest", "v_c")),
            sj_neuron.EIFNode: ("eif", "sj_eif", ("delta_T", "theta_rh", "v_rest")),
            sj_neuron.IzhikevichNode: (
                "izhikevich",
                "sj_izhikevich",
                ("a0", "v_rest", "v_c", "a", "b", "tau_w", "w_rest"),
            ),
            sj_neuron.CUBALIFNode: ("cuba_lif", "sj_cuba_lif", ("c_decay", "v_decay")),
        }
    )
    _LEARNABLE.update({sj_neuron.ParametricLIFNode: "w", sj_neuron.KLIFNode: "k"})
    for _cls, _fn in [
        (sj_neuron.IFNode, _if),
        (sj_neuron.LIFNode, _lif),
        (sj_neuron.ParametricLIFNode, _plif),
        (sj_neuron.QIFNode, _constants_family),
        (sj_neuron.EIFNode, _constants_family),
        (sj_neuron.IzhikevichNode, _constants_family),
        (sj_neuron.KLIFNode, _klif),
        (sj_neuron.CUBALIFNode, _constants_family),
        (sj_neuron.LIAFNode, _liaf),
    ]:
        register_module(_cls, _name(_cls), check=_neuron_problem)(_fn)
        _RECURRENT_NEURONS[_cls] = _fn
    register_module(sj_layer.LinearRecurrentContainer, _name(sj_layer.LinearRecurrentContainer))(
        _linear_recurrent
    )
    register_module(
        sj_layer.ElementWiseRecurrentContainer, _name(sj_layer.ElementWiseRecurrentContainer)
    )(_element_wise_recurrent)
    for _cls, _fn in [
        (sj_layer.Linear, _linear),
        (sj_layer.Conv1d, _wrapped(tnn.convert_conv, 1)),
        (sj_layer.Conv2d, _wrapped(tnn.convert_conv, 2)),
        (sj_layer.ConvTranspose1d, _wrapped(tnn.convert_conv_transpose, 1)),
        (sj_layer.ConvTranspose2d, _wrapped(tnn.convert_conv_transpose, 2)),
        (sj_layer.Upsample, _wrapped(tnn.convert_upsample)),
        (sj_layer.GroupNorm, _wrapped(tnn.convert_groupnorm)),
        (sj_layer.BatchNorm1d, _wrapped(tnn.convert_batchnorm, 1)),
        (sj_layer.BatchNorm2d, _wrapped(tnn.convert_batchnorm, 2)),
        # tdBN: a BatchNorm over the folded T*B rows whose weight starts at alpha * v_th
        (sj_layer.ThresholdDependentBatchNorm1d, _wrapped(tnn.convert_batchnorm, 1)),
        (sj_layer.ThresholdDependentBatchNorm2d, _wrapped(tnn.convert_batchnorm, 2)),
        (sj_layer.AvgPool2d, _wrapped(tnn.convert_avgpool2d)),
        (sj_layer.MaxPool2d, _wrapped(tnn.convert_maxpool2d)),
        (sj_layer.AdaptiveAvgPool2d, _wrapped(tnn.convert_adaptive_avgpool2d)),
        (sj_layer.AvgPool1d, _wrapped(tnn.convert_avgpool1d)),
        (sj_layer.MaxPool1d, _wrapped(tnn.convert_maxpool1d)),
        (sj_layer.AdaptiveAvgPool1d, _wrapped(tnn.convert_adaptive_avgpool1d)),
        (sj_layer.Flatten, _wrapped(tnn.convert_flatten)),
        (sj_layer.Dropout, _dropout),
        (sj_layer.VotingLayer, _voting),
    ]:
        register_module(_cls, _name(_cls))(_fn)
    for _cls in (
        sj_layer.SeqToANNContainer,
        sj_layer.MultiStepContainer,
        sj_layer.StepModeContainer,
    ):
        register_container(_cls, _name(_cls))
