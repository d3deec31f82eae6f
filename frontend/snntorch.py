"""Converters for snnTorch 1.0 neurons: ``Leaky``, ``Synaptic``, ``RLeaky``, ``Alpha``,
``Lapicque``, ``RSynaptic``.

Read from the installed sources (``snntorch/_neurons/{neurons,leaky,synaptic,
rleaky,alpha,lapicque,rsynaptic}.py``); the exact per-step arithmetic of each is
:data:`snncc.ir.neuron.FORMS` (``snntorch_leaky``, ``snntorch_synaptic``,
``snntorch_rleaky``, ``snntorch_rleaky_v``, ``snntorch_alpha``, ``snntorch_lapicque``,
``snntorch_rsynaptic``, ``snntorch_rsynaptic_v``).

snnTorch neurons are single-step modules (one call per time step on
``[B, ...]``), so a model using them compiles as a per-step program fed
``[T, B, ...]``. Both ways people drive them work:

- a per-step network (``nn.Sequential`` of layers and ``init_hidden=True``
  neurons, the last often with ``output=True``) that the user calls once per
  step: compiled as applied at every step, the neurons' hidden state carried
  from step to step (from a fresh state, as after ``snntorch.utils.reset``);
- a module whose ``forward`` loops over the steps itself, threading
  ``mem`` (``spk, mem = self.lif1(cur, mem)``, ``init_leaky()`` before the
  loop): the loop is folded into one step by :mod:`snncc.frontend.loops`.

Per neuron:

- ``beta``, ``threshold``, ``graded_spikes_factor`` (and Synaptic's
  ``alpha``, RLeaky's one-to-one ``V``) become node params under their
  state_dict names (``lif1.beta``), learnable exactly when they are
  ``nn.Parameter`` (``learn_beta=True``...); per-neuron tensors broadcast as
  in snnTorch. The hidden state (``mem``, ``syn``, ``spk``) is not in the
  state_dict and starts at 0.
- ``reset_mechanism`` comes from the bound ``state_function`` (snnTorch binds
  it once in ``__init__``); if ``reset_mechanism_val`` disagrees (the
  ``reset_mechanism`` setter or a loaded state_dict changed it later), the
  module mixes two mechanisms and is refused.
- A call that returns ``(spk, mem)`` (``init_hidden=False`` or
  ``output=True``) or ``(spk, syn, mem)`` gives one node per value used.
- ``RLeaky(all_to_all=True)``: the recurrent ``Linear`` / ``Conv2d`` is a node
  fed by the neuron's spike through a delay-1 edge (zeros at t = 0, so its
  bias arrives at t = 0 too) into the neuron's port 1: a recurrent component.
  ``all_to_all=False``: ``V`` is applied inside the neuron to its previous
  spike (state ``s``). ``RSynaptic`` likewise (the recurrent term joins the
  synaptic current).
- ``Alpha`` returns ``(spk, syn_exc, syn_inh, mem)``: ``syn_inh`` is the
  ``current`` output with ``extra["current_inh"] = 1``. ``learn_alpha=True``
  raises in snnTorch 1.0 itself, so ``alpha`` is a buffer.
- ``Lapicque``: ``R``, ``C`` and ``time_step`` are node params (as fp32: the
  step multiplies them with fp32 tensors, which is where snnTorch converts its
  int64 buffers); with ``learn_beta=True`` the ``C`` snnTorch derived from
  ``beta`` is derived in the IR instead, so ``beta`` trains.
- Alpha, Lapicque and RSynaptic have no immediate reset correction (Alpha and
  Lapicque have no ``reset_delay``; RSynaptic's ``reset_delay=False`` path
  never changes its outputs in snnTorch 1.0 and raises when its ``spk``
  argument is None, so it is refused with that explanation): their specs keep
  ``reset_delay`` False.

Refused: ``inhibition=True``, ``state_quant``, surrogates other than
:data:`snncc.frontend.surrogates.SNNTORCH_SURROGATES` (or ``surrogate_disable``), other
snnTorch neurons.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from snncc.frontend import torch_nn as tnn
from snncc.frontend.tracer import (
    Call,
    Framework,
    Multi,
    StateArgs,
    register_framework,
    register_module,
)
from snncc.ir.neuron import SNNTORCH_FORMS, NeuronSpec

try:  # snnTorch is optional: without it these converters are simply not registered
    import snntorch as snt
    from snntorch._neurons.rleaky import RecurrentOneToOne
    from snntorch._neurons.rsynaptic import RecurrentOneToOne as RSynapticOneToOne
except ImportError:  # pragma: no cover - exercised only without snntorch
    snt = None

#: bound state_function name -> snncc reset (snnTorch "zero" is a hard reset to 0)
_STATE_FUNCTIONS = {"_base_sub": "subtract", "_base_zero": "hard", "_base_int": "none"}
#: reset_mechanism_val buffer -> snncc reset
_MECHANISM_VALS = {0: "subtract", 1: "hard", 2: "none"}
_MECHANISM_NAMES = {"subtract": "subtract", "hard": "zero", "none": "none"}


def _owns(m: nn.Module) -> bool:
    return type(m).__module__.split(".")[0] == "snntorch"


def _is_neuron(m: nn.Module) -> bool:
    return isinstance(m, snt.SpikingNeuron)


def _reset(model: nn.Module) -> None:
    """Zero the hidden state of every snnTorch neuron in ``model`` (only these; not the
    class-wide ``reset_hidden``, which touches every instance in the process)."""
    for m in model.modules():
        if _is_neuron(m) and hasattr(m, "reset_mem"):
            m.reset_mem()


def _zeros(value: Any) -> bool:
    return value is None or (isinstance(value, torch.Tensor) and not bool(value.any()))


def _state_args(m: nn.Module) -> StateArgs | None:
    t = type(m)
    if t is snt.Leaky:
        return StateArgs(("mem",), (1,), _zeros, internal_ok=True)
    if t is snt.Synaptic:
        return StateArgs(("syn", "mem"), (1, 2), _zeros, internal_ok=True)
    if t is snt.RLeaky:
        return StateArgs(("spk", "mem"), (0, 1), _zeros, internal_ok=True)
    if t is snt.Alpha:
        return StateArgs(("syn_exc", "syn_inh", "mem"), (1, 2, 3), _zeros, internal_ok=True)
    if t is snt.Lapicque:
        return StateArgs(("mem",), (1,), _zeros, internal_ok=True)
    if t is snt.RSynaptic:
        return StateArgs(("spk", "syn", "mem"), (0, 1, 2), _zeros, internal_ok=True)
    return None


# --------------------------------------------------------------------------- checks


def _mechanism(m: nn.Module) -> tuple[str | None, str | None]:
    """(snncc reset, None) or (None, why the module's reset cannot be reproduced)."""
    fn = getattr(getattr(m, "state_function", None), "__func__", None)
    bound = _STATE_FUNCTIONS.get(getattr(fn, "__name__", ""))
    val = _MECHANISM_VALS.get(int(m.reset_mechanism_val))
    if bound is None or val is None:
        return None, "its state_function / reset_mechanism_val is not one snnTorch defines"
    if bound != val:
        return None, (
            f"its state_function resets with {_MECHANISM_NAMES[bound]!r} (bound in __init__) "
            f"but reset_mechanism_val says {_MECHANISM_NAMES[val]!r} (changed after "
            "construction, e.g. by the reset_mechanism setter or load_state_dict), so snnTorch "
            "mixes both; construct the neuron with the reset_mechanism you want"
        )
    return bound, None


def _recurrent_problem(m: nn.Module) -> str | None:
    rec = m.recurrent
    if not m.all_to_all:
        if type(rec) not in (RecurrentOneToOne, RSynapticOneToOne):
            return f"its recurrent module is {type(rec).__name__}, not RecurrentOneToOne"
        return None
    if type(rec) is nn.Linear:
        return None
    if type(rec) is nn.Conv2d:
        if (
            tuple(rec.stride) != (1, 1)
            or tuple(rec.dilation) != (1, 1)
            or rec.groups != 1
            or rec.padding_mode != "zeros"
            or isinstance(rec.padding, str)
        ):
            return (
                f"its recurrent Conv2d is not the one {type(m).__name__} builds (stride 1, "
                "zero padding)"
            )
        return None
    return f"its recurrent module is {type(rec).__name__}; supported: nn.Linear, nn.Conv2d"


def _neuron_problem(m: nn.Module, view: str) -> str | None:
    """Why snncc cannot reproduce this neuron (checked before the model runs), or None."""
    from snncc.errors import UnsupportedError
    from snncc.frontend.surrogates import snntorch_surrogate

    if view != "step":
        return (
            "snnTorch neurons run one time step per call on [B, ...]; here it would get "
            f"{'the whole [T, B, ...] sequence' if view == 'sequence' else 'the T*B-folded sequence'}"
            " as one step. Call it once per step (a per-step model, or a loop over x[step])"
        )
    if getattr(m, "inhibition", False):
        return "inhibition=True is not supported"
    if getattr(m, "state_quant", False):
        return "state_quant is not supported"
    try:
        snntorch_surrogate(m.spike_grad)
    except UnsupportedError as e:
        return str(e)
    _, why = _mechanism(m)
    if why:
        return why
    if type(m) is snt.RSynaptic and not m.reset_delay:
        return (
            "reset_delay=False: snnTorch 1.0's RSynaptic computes that correction from its spk "
            "argument (it raises when spk is None, as with init_hidden=True or a state kept "
            "inside the module) and discards the result, so its outputs are those of "
            "reset_delay=True; construct it with reset_delay=True (the default)"
        )
    if type(m) in (snt.RLeaky, snt.RSynaptic):
        return _recurrent_problem(m)
    if type(m) is snt.Lapicque:
        return _lapicque_problem(m)
    return None


def _lapicque_problem(m: nn.Module) -> str | None:
    """Lapicque's R / C / time_step must be real tensors; the only one that may carry an
    autograd graph is the C snnTorch derived from a learnable beta."""
    for name in ("R", "C", "time_step"):
        value = getattr(m, name)
        if not isinstance(value, torch.Tensor) or value.is_complex():
            return f"its {name} is {type(value).__name__}; supported: a real tensor"
        from_beta = name == "C" and isinstance(m.beta, nn.Parameter) and m.beta.requires_grad
        if value.requires_grad and not from_beta:
            return f"its {name} requires grad but is not the C derived from a learnable beta"
    return None


# --------------------------------------------------------------------------- converters


def _float_param(call: Call, m: nn.Module, role: str) -> str:
    """``m.<role>`` as a node param; an integer buffer (Lapicque's default ``R`` and
    ``time_step``) is stored as fp32, the value snnTorch's step converts it to."""
    value = getattr(m, role)
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        name = f"{call.path}.{role}" if call.path else role
        return call.ctx.add_param(name, value.detach().to(torch.float32))
    return call.param(m, role)


def _spec_and_params(
    call: Call,
    m: nn.Module,
    model: str,
    charge: str,
    roles: tuple[str, ...],
    extra: dict[str, Any] | None = None,
) -> tuple[NeuronSpec, dict[str, str]]:
    from snncc.frontend.surrogates import snntorch_surrogate

    params = {role: _float_param(call, m, role) for role in roles}
    learnable = tuple(
        r for r in roles if isinstance(getattr(m, r), nn.Parameter) and getattr(m, r).requires_grad
    )
    th = torch.as_tensor(m.threshold).detach()
    surrogate, alpha, surrogate_params = snntorch_surrogate(m.spike_grad)
    reset, _ = _mechanism(m)
    spec = NeuronSpec(
        model=model,
        charge=charge,
        v_threshold=float(th) if th.numel() == 1 else math.nan,
        v_reset=0.0,
        reset=reset,
        fire_cmp=">",
        surrogate=surrogate,
        alpha=alpha,
        surrogate_params=surrogate_params,
        v_init=0.0,
        # Alpha, Lapicque and RSynaptic never apply the immediate correction (module docstring)
        reset_delay=bool(m.reset_delay) if charge in SNNTORCH_FORMS else False,
        param_roles=roles,
        learnable=learnable,
        extra=dict(extra or {}),
    )
    return spec, params


def _emit(call: Call, spec: NeuronSpec, inputs: list, params: dict[str, str]) -> int:
    return call.emit("neuron", inputs, attrs={"neuron": spec.to_dict()}, params=params)


def _returns_tuple(m: nn.Module) -> bool:
    """snnTorch returns (spk, state...) unless init_hidden=True and output=False."""
    return bool(m.output) or not bool(m.init_hidden)


def _check_one_input(call: Call, m: nn.Module) -> None:
    if len(call.args) != 1 or len(call.inputs) != 1:
        raise call.unsupported(
            "snnTorch neurons are supported called with their input only; their state is "
            "kept inside the compiled program (thread mem through a loop over time steps, or "
            "use init_hidden=True)"
        )
    if call.inputs[0].dtype != "float32":
        raise call.unsupported(
            f"its input is {call.inputs[0].dtype}; snnTorch's spikes are float32 whatever the "
            "input dtype, so snncc compiles snnTorch neurons for float32 inputs only"
        )


_BASE = ("beta", "threshold", "graded_spikes_factor")


def _leaky(call: Call, m: nn.Module) -> int | Multi:
    _check_one_input(call, m)
    x = tnn.one_input(call)
    spec, params = _spec_and_params(call, m, "leaky", "snntorch_leaky", _BASE)
    spk = _emit(call, spec, [x], params)
    if not _returns_tuple(m):
        return spk
    return Multi((spk, lambda: _emit(call, spec.replace(output="membrane"), [x], params)))


def _synaptic(call: Call, m: nn.Module) -> int | Multi:
    _check_one_input(call, m)
    x = tnn.one_input(call)
    spec, params = _spec_and_params(call, m, "synaptic", "snntorch_synaptic", ("alpha", *_BASE))
    spk = _emit(call, spec, [x], params)
    if not _returns_tuple(m):
        return spk
    return Multi(
        (
            spk,
            lambda: _emit(call, spec.replace(output="current"), [x], params),
            lambda: _emit(call, spec.replace(output="membrane"), [x], params),
        )
    )


def _recurrent_node(call: Call, m: nn.Module, neuron: int) -> int:
    """The recurrent Linear / Conv2d, fed by the neuron's spike one step late."""
    rec = m.recurrent
    path = f"{call.path}.recurrent" if call.path else "recurrent"
    params = {"weight": call.ctx.add_param(f"{path}.weight", rec.weight)}
    if rec.bias is not None:
        params["bias"] = call.ctx.add_param(f"{path}.bias", rec.bias)
    if type(rec) is nn.Linear:
        op, attrs = "linear", {}
    else:
        op = "conv2d"
        attrs = {
            "stride": [1, 1],
            "padding": [int(p) for p in rec.padding],
            "dilation": [1, 1],
            "groups": 1,
        }
    return call.ctx.graph.add_node(
        op,
        [(neuron, 1)],
        attrs=attrs,
        params=params,
        shape=call.out_shape,
        dtype=call.out_dtype,
        name=path,
    )


def _rleaky(call: Call, m: nn.Module) -> int | Multi:
    _check_one_input(call, m)
    x = tnn.one_input(call)
    if not m.all_to_all:
        spec, params = _spec_and_params(call, m, "rleaky", "snntorch_rleaky_v", (*_BASE, "V"))
        spk = _emit(call, spec, [x], params)
        membrane = lambda: _emit(call, spec.replace(output="membrane"), [x], params)  # noqa: E731
    else:
        spec, params = _spec_and_params(call, m, "rleaky", "snntorch_rleaky", _BASE)
        spk = _emit(call, spec, [x], params)
        rec = _recurrent_node(call, m, spk)
        call.ctx.graph.add_edge(rec, spk, 1, 0)
        membrane = lambda: _emit(call, spec.replace(output="membrane"), [x, rec], params)  # noqa: E731
    if not _returns_tuple(m):
        return spk
    return Multi((spk, membrane))


def _alpha(call: Call, m: nn.Module) -> int | Multi:
    _check_one_input(call, m)
    x = tnn.one_input(call)
    spec, params = _spec_and_params(call, m, "alpha", "snntorch_alpha", ("alpha", *_BASE))
    spk = _emit(call, spec, [x], params)
    if not _returns_tuple(m):
        return spk
    inh = spec.replace(output="current", extra={"current_inh": 1.0})
    return Multi(
        (
            spk,
            lambda: _emit(call, spec.replace(output="current"), [x], params),
            lambda: _emit(call, inh, [x], params),
            lambda: _emit(call, spec.replace(output="membrane"), [x], params),
        )
    )


def _lapicque_roles(m: nn.Module) -> tuple[str, ...]:
    """R, C and time_step as node params; with a learnable beta, beta instead of the C
    snnTorch derived from it (the IR derives C per sequence, so beta trains)."""
    c = ("beta",) if m.C.requires_grad else ("C",)
    return ("R", *c, "time_step", "threshold", "graded_spikes_factor")


def _lapicque(call: Call, m: nn.Module) -> int | Multi:
    _check_one_input(call, m)
    x = tnn.one_input(call)
    spec, params = _spec_and_params(call, m, "lapicque", "snntorch_lapicque", _lapicque_roles(m))
    spk = _emit(call, spec, [x], params)
    if not _returns_tuple(m):
        return spk
    return Multi((spk, lambda: _emit(call, spec.replace(output="membrane"), [x], params)))


def _rsynaptic(call: Call, m: nn.Module) -> int | Multi:
    _check_one_input(call, m)
    x = tnn.one_input(call)
    roles = ("alpha", *_BASE)
    if not m.all_to_all:
        spec, params = _spec_and_params(call, m, "rsynaptic", "snntorch_rsynaptic_v", (*roles, "V"))
        inputs = [x]
        spk = _emit(call, spec, inputs, params)
    else:
        spec, params = _spec_and_params(call, m, "rsynaptic", "snntorch_rsynaptic", roles)
        spk = _emit(call, spec, [x], params)
        rec = _recurrent_node(call, m, spk)
        call.ctx.graph.add_edge(rec, spk, 1, 0)
        inputs = [x, rec]
    if not _returns_tuple(m):
        return spk
    return Multi(
        (
            spk,
            lambda: _emit(call, spec.replace(output="current"), inputs, params),
            lambda: _emit(call, spec.replace(output="membrane"), inputs, params),
        )
    )


if snt is not None:
    register_framework(
        Framework(
            name="snntorch",
            owns=_owns,
            step_mode=lambda m: "s" if _is_neuron(m) else None,
            reset=_reset,
            stateful=_is_neuron,
            source="snntorch",
            priority=2,
            loops=lambda m: True,
            state_args=_state_args,
        )
    )
    for _cls, _fn in [
        (snt.Leaky, _leaky),
        (snt.Synaptic, _synaptic),
        (snt.RLeaky, _rleaky),
        (snt.Alpha, _alpha),
        (snt.Lapicque, _lapicque),
        (snt.RSynaptic, _rsynaptic),
    ]:
        register_module(_cls, f"snntorch.{_cls.__name__}", check=_neuron_problem)(_fn)
