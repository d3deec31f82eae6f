"""Converters for Norse 1.1 modules: ``LIFCell``, ``LIF``, ``LIFBoxCell``, ``LICell``,
``LI``, ``LIBoxCell``, ``LIFRecurrentCell``, ``LIFAdExCell``, ``LIFAdEx``, ``LIFExCell``,
``LIFEx``, the recurrent ``LIFAdEx*`` and ``LIFEx*`` cells and layers, the ``LIFRefrac*``
cells and layer, ``IzhikevichCell``, ``Izhikevich``, ``IzhikevichRecurrentCell``,
``IzhikevichRecurrent``, ``IAFCell``, ``IAF``, ``LSNNCell``, ``LSNN``,
``LSNNRecurrentCell``, ``LILinearCell``, the sequence modules ``LIFRecurrent`` and
``LSNNRecurrent`` (their cells' converters over the sequence) and the ``SequentialState``
and ``Lift`` containers.

Read from the installed sources (``norse/torch/functional/{lif,lif_box,
leaky_integrator,threshold,reset}.py``, ``norse/torch/module/*.py``); the exact
per-step arithmetic is :data:`snncc.ir.neuron.FORMS` (``norse_lif``,
``norse_lif_recurrent``, ``norse_lifbox``, ``norse_li``).

Norse modules keep no hidden state: each returns ``(output, state)`` and a
model threads the state by hand. snncc compiles that threading into the
neuron's internal state:

- cells (``*Cell``) are single-step: a model of cells (``SequentialState`` of
  cells, or a module calling them) compiles as a per-step program that runs
  ``state = None; for t: y[t], state = model(x[t], state)``; a ``forward``
  that holds that loop itself (``z, s1 = self.lif1(x[ts], s1)``) is folded
  into one step by :mod:`snncc.frontend.loops`;
- sequence modules (``LIF``, ``LI``) run the whole time-major ``[T, B, ...]``
  sequence: a multi-step model;
- a returned state (``(y, state)``) is dropped from the outputs;
  ``state.v`` / ``state.i`` used by the model become the membrane / current.

Parameters live in ``module.p`` (a NamedTuple, not in the state_dict). Each
field becomes an exact constant of the spec (``extra``: ``dt``, ``v_leak``,
``dt_tau_mem_inv = dt * tau_mem_inv`` and ``neg_dt_tau_syn_inv = -dt *
tau_syn_inv`` computed exactly as Norse computes them), or a node param when
it is an ``nn.Parameter`` (learnable; named by the model's own name for it
when the model registered it, else ``<module>.p.<field>``) or a per-neuron
tensor. ``v_leak`` must be a scalar constant (it is also the initial
membrane). Norse's threshold methods ``super`` (the default), ``triangle``,
``tanh`` and ``heaviside`` map to surrogates; ``adjoint`` and the rest are
refused. ``LIFRecurrentCell(autapses=False)`` zeroes the recurrent weights'
diagonal at construction and then only through a gradient hook on that
Parameter: snncc runs the weights as stored (forward identical) and its
gradient wrt the diagonal is the plain one (the hook is a training rule,
not part of the model's function; keep the diagonal at zero when training).

The families (``norse_lif_adex``, ``norse_lif_ex``, ``norse_izhikevich``, ``norse_iaf``,
``norse_lsnn``, their recurrent forms; :mod:`snncc.ir.neurons`) take their ``p`` fields the
same way: a field that is an ``nn.Parameter`` or holds one value per neuron is a node param
(its role), any other is an exact constant in ``extra``, with each product of constants
(``dt * p.tau_ada_inv``, Izhikevich's ``p.tau_inv * dt * p.a``) evaluated as Norse
evaluates it. The initial state is Norse's ``initial_state``: LIFAdEx, LIFEx and LSNN start
the membrane at ``v_leak`` (a scalar constant) and LSNN's threshold at ``v_th``; IAF at
``v_reset`` (a scalar constant: Norse starts from that tensor itself); Izhikevich at its
behaviour's ``s.v`` and ``s.u`` (one value each). ``LILinearCell`` is a bias-free ``Linear``
node (``input_weights``) feeding an ``LICell`` node. The recurrent cells of LSNN, LIFEx,
LIFAdEx and Izhikevich are built like ``LIFRecurrentCell`` (the same autapse note).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from snncc.frontend import torch_nn as tnn
from snncc.frontend.tracer import (
    Call,
    Chain,
    Framework,
    Multi,
    StateArgs,
    StateValue,
    Value,
    register_container,
    register_framework,
    register_module,
)
from snncc.ir.neuron import NeuronSpec

try:  # Norse is optional: without it these converters are simply not registered
    from norse.torch.functional.iaf import iaf_feed_forward_step
    from norse.torch.functional.izhikevich import (
        izhikevich_feed_forward_step,
        izhikevich_recurrent_step,
    )
    from norse.torch.functional.leaky_integrator import li_feed_forward_step
    from norse.torch.functional.leaky_integrator_box import li_box_feed_forward_step
    from norse.torch.functional.lif import lif_feed_forward_step, lif_step
    from norse.torch.functional.lif_adex import lif_adex_feed_forward_step, lif_adex_step
    from norse.torch.functional.lif_box import lif_box_feed_forward_step
    from norse.torch.functional.lif_ex import lif_ex_feed_forward_step, lif_ex_step
    from norse.torch.functional.lif_refrac import lif_refrac_feed_forward_step, lif_refrac_step
    from norse.torch.functional.lsnn import lsnn_feed_forward_step, lsnn_step
    from norse.torch.functional.reset import reset_subtract, reset_value
    from norse.torch.module.iaf import IAF, IAFCell
    from norse.torch.module.izhikevich import (
        Izhikevich,
        IzhikevichCell,
        IzhikevichRecurrent,
        IzhikevichRecurrentCell,
    )
    from norse.torch.module.leaky_integrator import LI, LICell, LILinearCell
    from norse.torch.module.leaky_integrator_box import LIBoxCell
    from norse.torch.module.lif import LIF, LIFCell, LIFRecurrent, LIFRecurrentCell
    from norse.torch.module.lif_adex import (
        LIFAdEx,
        LIFAdExCell,
        LIFAdExRecurrent,
        LIFAdExRecurrentCell,
    )
    from norse.torch.module.lif_box import LIFBoxCell
    from norse.torch.module.lif_ex import LIFEx, LIFExCell, LIFExRecurrent, LIFExRecurrentCell
    from norse.torch.module.lif_refrac import (
        LIFRefracCell,
        LIFRefracRecurrent,
        LIFRefracRecurrentCell,
    )
    from norse.torch.module.lift import Lift
    from norse.torch.module.lsnn import LSNN, LSNNCell, LSNNRecurrent, LSNNRecurrentCell
    from norse.torch.module.sequential import SequentialState
except ImportError:  # pragma: no cover - exercised only without norse
    SequentialState = None

_CELLS: tuple[type, ...] = ()
_SEQUENCES: tuple[type, ...] = ()
_REFRACTORY: tuple[type, ...] = ()
if SequentialState is not None:
    _CELLS = (
        LIFCell,
        LIFBoxCell,
        LICell,
        LIBoxCell,
        LIFRecurrentCell,
        LIFAdExCell,
        LIFAdExRecurrentCell,
        LIFExCell,
        LIFExRecurrentCell,
        LIFRefracCell,
        LIFRefracRecurrentCell,
        IzhikevichCell,
        IzhikevichRecurrentCell,
        IAFCell,
        LSNNCell,
        LSNNRecurrentCell,
        LILinearCell,
    )
    _REFRACTORY = (LIFRefracCell, LIFRefracRecurrentCell, LIFRefracRecurrent)
    _SEQUENCES = (
        LIF,
        LI,
        LIFAdEx,
        LIFAdExRecurrent,
        LIFEx,
        LIFExRecurrent,
        LIFRefracRecurrent,
        Izhikevich,
        IzhikevichRecurrent,
        IAF,
        LSNN,
        LIFRecurrent,
        LSNNRecurrent,
    )


def _owns(m: nn.Module) -> bool:
    return type(m).__module__.split(".")[0] == "norse"


def _step_mode(m: nn.Module) -> str | None:
    if type(m) in _CELLS:
        return "s"
    if type(m) in _SEQUENCES or type(m) is Lift:
        return "m"
    return None


def _stateful(m: nn.Module) -> bool:
    return type(m) in _CELLS or type(m) in _SEQUENCES or type(m) is SequentialState


def _state_args(m: nn.Module) -> StateArgs | None:
    if not _stateful(m):
        return None
    return StateArgs(("state",), (1,), lambda v: v is None, internal_ok=False, opaque=True)


def _chain(m: nn.Module) -> Chain | None:
    if type(m) is Lift:  # the lifted module called once per step of the [T, B, ...] sequence
        children = (("lifted_module", m.lifted_module),)
        if m.is_stateful:
            return Chain(view="step", children=children, result="tensor_state")
        # Lift(x) of a stateless module runs on x[0] of a tuple x (a LIF's (z, state))
        return Chain(view="step", children=children, result="tensor", drops_input_state=True)
    if type(m) is not SequentialState:
        return None
    if m.return_hidden:
        from snncc.errors import UnsupportedError

        raise UnsupportedError(
            "norse SequentialState(return_hidden=True) is not supported; snncc compiles the "
            "container's output (return_hidden=False)"
        )
    return Chain(view="inherit", children=tuple(m.named_children()), result="tensor_state")


# --------------------------------------------------------------------------- checks

_ACTIVATIONS: dict[type, Callable] = {}
if SequentialState is not None:
    _ACTIVATIONS = {
        LIFCell: lif_feed_forward_step,
        LIF: lif_feed_forward_step,
        LIFRecurrentCell: lif_step,
        LIFRecurrent: lif_step,
        LIFBoxCell: lif_box_feed_forward_step,
        LICell: li_feed_forward_step,
        LIBoxCell: li_box_feed_forward_step,
        LI: li_feed_forward_step,
        LIFAdExCell: lif_adex_feed_forward_step,
        LIFAdEx: lif_adex_feed_forward_step,
        LIFAdExRecurrentCell: lif_adex_step,
        LIFAdExRecurrent: lif_adex_step,
        LIFExCell: lif_ex_feed_forward_step,
        LIFEx: lif_ex_feed_forward_step,
        LIFExRecurrentCell: lif_ex_step,
        LIFExRecurrent: lif_ex_step,
        LIFRefracCell: lif_refrac_feed_forward_step,
        LIFRefracRecurrentCell: lif_refrac_step,
        LIFRefracRecurrent: lif_refrac_step,
        IzhikevichCell: izhikevich_feed_forward_step,
        Izhikevich: izhikevich_feed_forward_step,
        IzhikevichRecurrentCell: izhikevich_recurrent_step,
        IzhikevichRecurrent: izhikevich_recurrent_step,
        IAFCell: iaf_feed_forward_step,
        IAF: iaf_feed_forward_step,
        LSNNCell: lsnn_feed_forward_step,
        LSNN: lsnn_feed_forward_step,
        LSNNRecurrentCell: lsnn_step,
        LSNNRecurrent: lsnn_step,
    }

_SPIKING = (
    "LIFCell",
    "LIF",
    "LIFRecurrentCell",
    "LIFRecurrent",
    "LIFBoxCell",
    "LIFAdExCell",
    "LIFAdEx",
    "LIFAdExRecurrentCell",
    "LIFAdExRecurrent",
    "LIFExCell",
    "LIFEx",
    "LIFExRecurrentCell",
    "LIFExRecurrent",
    "LIFRefracCell",
    "LIFRefracRecurrentCell",
    "LIFRefracRecurrent",
    "IzhikevichCell",
    "Izhikevich",
    "IzhikevichRecurrentCell",
    "IAFCell",
    "IAF",
    "LSNNCell",
    "LSNN",
    "LSNNRecurrentCell",
    "LSNNRecurrent",
)


def _neuron_problem(m: nn.Module, view: str) -> str | None:
    """Why snncc cannot reproduce this module (checked before the model runs), or None."""
    from snncc.errors import UnsupportedError
    from snncc.frontend.surrogates import from_norse

    cell = type(m) in _CELLS
    if cell and view != "step":
        return (
            "Norse cells run one time step per call on [B, ...]; here it would get "
            f"{'the whole [T, B, ...] sequence' if view == 'sequence' else 'the T*B-folded sequence'}"
            " as one step. Use the sequence module (norse LIF, LI) or call the cell once per step"
        )
    if not cell and view != "sequence":
        return (
            "Norse sequence modules (LIF, LI) run the whole time-major [T, B, ...] sequence; "
            "inside a per-step model use the cell (LIFCell, LICell)"
        )
    p = _lif_p(m)
    if type(m) in _ACTIVATIONS and getattr(m, "activation", None) is not _ACTIVATIONS[type(m)]:
        method = getattr(p, "method", "?")
        return (
            f"its step function is {getattr(m.activation, '__name__', m.activation)!r} "
            f"(p.method={method!r}); supported: the default explicit step (not 'adjoint')"
        )
    if getattr(m, "record_states", False):
        return "record_states=True is not supported (the compiled program keeps its state)"
    if not isinstance(m.dt, (int, float)) or isinstance(m.dt, bool):
        return f"dt={m.dt!r}; supported: a Python float"
    if type(m).__name__ in _SPIKING:
        try:
            from_norse(p.method, p.alpha)
        except UnsupportedError as e:
            return str(e)
    if type(m) is LIFBoxCell and m.p.reset_method not in (reset_value, reset_subtract):
        return f"p.reset_method={m.p.reset_method!r}; supported: norse reset_value, reset_subtract"
    v_leak = getattr(p, "v_leak", None)
    if _not_a_constant(v_leak):
        return (
            "p.v_leak must be a scalar constant (it is also the initial membrane); a learnable "
            "or per-neuron v_leak is not supported"
        )
    return _family_problem(m)


def _lif_p(m: nn.Module) -> Any:
    """The LIF parameters a module's step reads: ``p``, or a refractory cell's ``p.lif``."""
    return m.p.lif if type(m) in _REFRACTORY else m.p


def _not_a_constant(value: Any) -> bool:
    """A learnable or per-neuron tensor (a value that cannot be a fixed initial state)."""
    return isinstance(value, nn.Parameter) or (
        isinstance(value, torch.Tensor) and value.numel() != 1
    )


def _family_problem(m: nn.Module) -> str | None:
    """What the families' converters cannot reproduce (their parameters, initial states)."""
    fields = _FAMILY_FIELDS.get(type(m))
    if fields is None:
        return None
    for name in fields:
        value = getattr(m.p, name)
        if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
            return f"p.{name}={value!r}; supported: a number or a real tensor"
        if isinstance(value, torch.Tensor) and (value.is_complex() or value.numel() == 0):
            return f"p.{name} is a {value.dtype} tensor of {value.numel()} values"
    if type(m) in (IAFCell, IAF) and _not_a_constant(m.p.v_reset):
        return (
            "p.v_reset must be a scalar constant for IAF: Norse starts the membrane from that "
            "very tensor (not detached), so a learnable or per-neuron v_reset is not supported"
        )
    if type(m) in (IzhikevichCell, Izhikevich, IzhikevichRecurrentCell, IzhikevichRecurrent):
        s = m.spiking_method.s
        for name in ("v", "u"):
            value = getattr(s, name)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                return (
                    f"its spiking_method.s.{name} must be one value (a one-element tensor); "
                    "a per-neuron initial state is not supported"
                )
    lsnn = (LSNNCell, LSNN, LSNNRecurrentCell, LSNNRecurrent)
    if type(m) in lsnn and not isinstance(m.p.v_th, torch.Tensor):
        return "p.v_th must be a tensor (Norse's LSNN initial state detaches it)"
    return None


# --------------------------------------------------------------------------- parameters


def _param_name(call: Call, m: nn.Module, field: str, value: torch.Tensor) -> str:
    """The model's own name for a Parameter used in ``m.p``, else ``<path>.p.<field>``."""
    for name, p in call.ctx.model.named_parameters():
        if p is value:
            return call.ctx.add_param(name, value)
    path = f"{call.path}.p.{field}" if call.path else f"p.{field}"
    return call.ctx.add_param(path, value)


class _Params:
    """Collects the node params and the spec constants of one Norse module."""

    def __init__(self, call: Call, m: nn.Module) -> None:
        self.call, self.m = call, m
        self.params: dict[str, str] = {}
        self.learnable: list[str] = []

    def tensor_role(self, field: str, role: str) -> bool:
        """Make ``p.<field>`` the node param ``role`` if it must be one (learnable or per neuron)."""
        value = getattr(self.m.p, field)
        is_param = isinstance(value, nn.Parameter)
        if not is_param and not (isinstance(value, torch.Tensor) and value.numel() != 1):
            return False
        self.params[role] = _param_name(self.call, self.m, field, value)
        if is_param and value.requires_grad:
            self.learnable.append(role)
        return True

    def scalar(self, field: str) -> float:
        value = getattr(self.m.p, field)
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            return math.nan  # a per-neuron tensor: the node param is authoritative
        return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _coefficient(m: nn.Module, field: str, sign: float) -> float:
    """``dt * p.<field>`` (or ``-dt * ...``) evaluated exactly as Norse does (tensor or double)."""
    value = (-m.dt if sign < 0 else m.dt) * getattr(m.p, field)
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _spec(call: Call, m: nn.Module, model: str, charge: str) -> tuple[NeuronSpec, _Params]:
    from snncc.frontend.surrogates import from_norse

    ps = _Params(call, m)
    extra: dict[str, Any] = {"dt": float(m.dt), "v_leak": float(m.p.v_leak)}
    if not ps.tensor_role("tau_mem_inv", "tau_mem_inv"):
        extra["dt_tau_mem_inv"] = _coefficient(m, "tau_mem_inv", 1.0)
    has_syn = charge not in ("norse_lifbox", "norse_li_box")
    if has_syn and not ps.tensor_role("tau_syn_inv", "tau_syn_inv"):
        extra["neg_dt_tau_syn_inv"] = _coefficient(m, "tau_syn_inv", -1.0)
    common: dict[str, Any] = {}
    if charge in ("norse_li", "norse_li_box"):
        common = {"reset": "none", "v_reset": None, "output": "membrane", "surrogate": "no_grad"}
        common["alpha"] = 1.0
        common["v_threshold"] = math.nan
    else:
        ps.tensor_role("v_th", "threshold")
        ps.tensor_role("v_reset", "v_reset")
        surrogate, alpha = from_norse(m.p.method, m.p.alpha)
        subtract = charge == "norse_lifbox" and m.p.reset_method is reset_subtract
        common = {
            "v_threshold": ps.scalar("v_th"),
            "v_reset": ps.scalar("v_reset"),
            "reset": "subtract" if subtract else "hard",
            "detach_reset": charge in ("norse_lif_recurrent", "norse_lif_refrac_recurrent"),
            "surrogate": surrogate,
            "alpha": alpha,
        }
    spec = NeuronSpec(
        model=model,
        charge=charge,
        fire_cmp=">",
        v_init=extra["v_leak"],
        extra=extra,
        param_roles=tuple(ps.params),
        learnable=tuple(ps.learnable),
        **common,
    )
    return spec, ps


# --------------------------------------------------------------------------- converters


def _check_one_input(call: Call) -> None:
    extra = [a for a in call.args[1:] if a is not None]
    if len(call.inputs) != 1 or extra:
        raise call.unsupported(
            "Norse modules are supported called with their input and state=None (or the "
            "state they returned at the previous step, in a loop over time steps); the state "
            "is kept inside the compiled program"
        )


def _value(call: Call, nid: int) -> Value:
    return Value(nid, call.out_fx_shape, call.out_shape, call.out_dtype)


def _state(call: Call, vars: dict[str, Callable[[], int]]) -> StateValue:
    """The module's returned state; its fields are per-step values only for a cell (a
    sequence module returns its final state, which a per-step program cannot express)."""
    if call.view == "sequence":
        return StateValue(f"{call.what} (the final state of the sequence)")
    return StateValue(call.what, {k: (lambda f=f: _value(call, f())) for k, f in vars.items()})


def _neuron(call: Call, spec: NeuronSpec, ps: _Params, inputs: list) -> Callable[[str], int]:
    """A function emitting this module's neuron node with the given output."""

    def emit(output: str) -> int:
        return call.emit(
            "neuron",
            inputs,
            attrs={"neuron": spec.replace(output=output).to_dict()},
            params=dict(ps.params),
        )

    return emit


def _lif(call: Call, m: nn.Module) -> Multi:
    _check_one_input(call)
    spec, ps = _spec(call, m, "norse_lif", "norse_lif")
    emit = _neuron(call, spec, ps, [tnn.one_input(call)])
    z = emit("spike")
    return Multi((z, _state(call, {"v": lambda: emit("membrane"), "i": lambda: emit("current")})))


def _lifbox(call: Call, m: nn.Module) -> Multi:
    _check_one_input(call)
    spec, ps = _spec(call, m, "norse_lifbox", "norse_lifbox")
    emit = _neuron(call, spec, ps, [tnn.one_input(call)])
    z = emit("spike")
    return Multi((z, _state(call, {"v": lambda: emit("membrane")})))


def _li(call: Call, m: nn.Module) -> Multi:
    _check_one_input(call)
    spec, ps = _spec(call, m, "norse_li", "norse_li")
    emit = _neuron(call, spec, ps, [tnn.one_input(call)])
    v = emit("membrane")
    return Multi((v, _state(call, {"v": lambda: v, "i": lambda: emit("current")})))


def _li_box(call: Call, m: nn.Module) -> Multi:
    """``LIBoxCell``: the membrane, driven by the input itself (no synaptic current)."""
    _check_one_input(call)
    spec, ps = _spec(call, m, "norse_li_box", "norse_li_box")
    v = _neuron(call, spec, ps, [tnn.one_input(call)])("membrane")
    return Multi((v, _state(call, {"v": lambda: v})))


def _input_weights(call: Call, m: nn.Module) -> int:
    """``F.linear(input, input_weights)``: a bias-free linear node."""
    return call.ctx.graph.add_node(
        "linear",
        [tnn.one_input(call).id],
        params={"weight": call.param(m, "input_weights")},
        shape=call.out_shape,
        dtype=call.out_dtype,
        name=f"{call.path}.input_weights",
    )


def _recurrent(
    call: Call, m: nn.Module, spec: NeuronSpec, ps: _Params, outputs: dict[str, str]
) -> Multi:
    """A recurrent cell: ``W_in x`` into port 0 and ``W_rec z[t-1]`` into port 1 (two
    bias-free linear nodes, the second one step late). ``outputs``: state field -> the
    neuron output that is its value after the step (besides ``z``)."""
    _check_one_input(call)
    graph = call.ctx.graph
    w_in = _input_weights(call, m)
    z = call.emit("neuron", [w_in], attrs={"neuron": spec.to_dict()}, params=dict(ps.params))
    rec = graph.add_node(
        "linear",
        [(z, 1)],
        params={"weight": call.param(m, "recurrent_weights")},
        shape=call.out_shape,
        dtype=call.out_dtype,
        name=f"{call.path}.recurrent_weights",
    )
    graph.add_edge(rec, z, 1, 0)
    emit = _neuron(call, spec, ps, [w_in, rec])
    fields: dict[str, Callable[[], int]] = {"z": lambda: z}
    fields.update({k: (lambda o=o: emit(o)) for k, o in outputs.items()})
    return Multi((z, _state(call, fields)))


def _lif_recurrent(call: Call, m: nn.Module) -> Multi:
    """``i += W_in x + W_rec z[t-1]``: two bias-free linear nodes, the second one step late."""
    spec, ps = _spec(call, m, "norse_lif", "norse_lif_recurrent")
    return _recurrent(call, m, spec, ps, {"v": "membrane", "i": "current"})


# --------------------------------------------------------------------------- the families

#: p field -> (node param role, extra key, how the step uses it): "dt" (``dt * p.field``),
#: "neg_dt" (``-dt * p.field``), "value" (as is), "threshold" / "v_reset" (spec fields)
Field = tuple[str, str, str]
_ADEX: dict[str, Field] = {
    "tau_mem_inv": ("tau_mem_inv", "dt_tau_mem_inv", "dt"),
    "tau_syn_inv": ("tau_syn_inv", "neg_dt_tau_syn_inv", "neg_dt"),
    "tau_ada_inv": ("tau_ada_inv", "dt_tau_ada_inv", "dt"),
    "delta_T": ("delta_T", "delta_T", "value"),
    "adaptation_current": ("adaptation_current", "adaptation_current", "value"),
    "adaptation_spike": ("adaptation_spike", "adaptation_spike", "value"),
    "v_th": ("threshold", "", "threshold"),
    "v_reset": ("v_reset", "", "v_reset"),
}
_EX: dict[str, Field] = {k: f for k, f in _ADEX.items() if "ada" not in k}
_LSNN: dict[str, Field] = {
    "tau_mem_inv": ("tau_mem_inv", "dt_tau_mem_inv", "dt"),
    "tau_syn_inv": ("tau_syn_inv", "neg_dt_tau_syn_inv", "neg_dt"),
    "tau_adapt_inv": ("tau_adapt_inv", "dt_tau_adapt_inv", "dt"),
    "beta": ("beta", "beta", "value"),
    "v_th": ("threshold", "", "threshold"),
    "v_reset": ("v_reset", "", "v_reset"),
}
_IAF: dict[str, Field] = {
    "v_th": ("threshold", "", "threshold"),
    "v_reset": ("v_reset", "", "v_reset"),
}
_IZHIKEVICH: dict[str, Field] = {
    **{k: (k, k, "value") for k in ("b", "c", "d", "sq", "mn", "bias")},
    "v_th": ("threshold", "", "threshold"),
}
_FAMILY_FIELDS: dict[type, dict[str, Field]] = {}
if SequentialState is not None:
    _FAMILY_FIELDS = {
        **dict.fromkeys((LIFAdExCell, LIFAdEx, LIFAdExRecurrentCell, LIFAdExRecurrent), _ADEX),
        **dict.fromkeys((LIFExCell, LIFEx, LIFExRecurrentCell, LIFExRecurrent), _EX),
        LSNNCell: _LSNN,
        LSNN: _LSNN,
        LSNNRecurrentCell: _LSNN,
        LSNNRecurrent: _LSNN,
        IAFCell: _IAF,
        IAF: _IAF,
        **{
            cls: {**_IZHIKEVICH, "tau_inv": ("tau_inv", "", "izh"), "a": ("a", "", "izh")}
            for cls in (IzhikevichCell, Izhikevich, IzhikevichRecurrentCell, IzhikevichRecurrent)
        },
    }


def _constant(value: Any) -> float:
    """A Python number or a one-element tensor as the float Norse computes with."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _family_spec(
    call: Call,
    m: nn.Module,
    charge: str,
    *,
    v_init: float,
    extra: dict[str, Any] | None = None,
    detach_reset: bool = False,
) -> tuple[NeuronSpec, _Params]:
    """The spec of a family module from its ``p`` (:data:`_FAMILY_FIELDS`)."""
    from snncc.frontend.surrogates import from_norse

    ps = _Params(call, m)
    ext: dict[str, Any] = {"dt": float(m.dt), **(extra or {})}
    consts = {"threshold": math.nan, "v_reset": 0.0}
    for field, (role, key, use) in _FAMILY_FIELDS[type(m)].items():
        if use == "izh":
            continue  # Izhikevich's tau_inv and a: see _izhikevich_spec
        is_role = ps.tensor_role(field, role)
        if use in ("threshold", "v_reset"):
            consts[use] = ps.scalar(field)
        elif not is_role and use == "value":
            ext[key] = _constant(getattr(m.p, field))
        elif not is_role:
            ext[key] = _coefficient(m, field, -1.0 if use == "neg_dt" else 1.0)
    surrogate, alpha = from_norse(m.p.method, m.p.alpha)
    spec = NeuronSpec(
        model=charge,
        charge=charge,
        v_threshold=consts["threshold"],
        v_reset=consts["v_reset"],
        reset="hard",
        detach_reset=detach_reset,
        fire_cmp=">",
        surrogate=surrogate,
        alpha=alpha,
        v_init=v_init,
        extra=ext,
        param_roles=tuple(ps.params),
        learnable=tuple(ps.learnable),
    )
    return spec, ps


def _emit_family(call: Call, spec: NeuronSpec, ps: _Params, fields: dict[str, str]) -> Multi:
    """A feed-forward family module: the spike node, and one node per state field used."""
    _check_one_input(call)
    emit = _neuron(call, spec, ps, [tnn.one_input(call)])
    z = emit("spike")
    return Multi((z, _state(call, {k: (lambda o=o: emit(o)) for k, o in fields.items()})))


def _refractory(call: Call, m: nn.Module) -> Multi:
    """``LIFRefrac*``: the LIF fields from ``p.lif`` (a view of them with ``p.rho_reset``
    beside, so the LIF spec reads them as for ``LIFCell``), ``rho_reset`` a constant or a
    node param. Its state is Norse's ``(lif=(v, i[, z]), rho)``: ``state.lif.v`` and
    ``state.lif.i`` are the membrane and the current."""
    recurrent = type(m) is not LIFRefracCell
    charge = "norse_lif_refrac_recurrent" if recurrent else "norse_lif_refrac"
    view = SimpleNamespace(p=SimpleNamespace(**m.p.lif._asdict(), rho_reset=m.p.rho_reset), dt=m.dt)
    spec, ps = _spec(call, view, charge, charge)  # type: ignore[arg-type]
    if not ps.tensor_role("rho_reset", "rho_reset"):
        spec = spec.replace(extra={**spec.extra, "rho_reset": _constant(m.p.rho_reset)})
    spec = spec.replace(param_roles=tuple(ps.params), learnable=tuple(ps.learnable))
    fields = {"v": "membrane", "i": "current"}
    if recurrent:
        z, inner = _recurrent(call, m, spec, ps, fields).items
    else:
        _check_one_input(call)
        emit = _neuron(call, spec, ps, [tnn.one_input(call)])
        z = emit("spike")
        inner = _state(call, {k: (lambda o=o: emit(o)) for k, o in fields.items()})
    if not inner.vars:  # a sequence module's final state
        return Multi((z, inner))
    inner.what = f"{call.what} (its state.lif)"
    return Multi((z, StateValue(call.what, {"lif": lambda: inner})))


def _exponential(charge: str) -> Callable[[Call, nn.Module], Multi]:
    """The converter of one exponential LIF form (``norse_lif_ex``, ``norse_lif_adex`` and
    their ``_recurrent`` forms): the membrane starts at ``v_leak`` (a scalar constant)."""

    def convert(call: Call, m: nn.Module) -> Multi:
        v_leak = _constant(m.p.v_leak)
        spec, ps = _family_spec(call, m, charge, v_init=v_leak, extra={"v_leak": v_leak})
        fields = {"v": "membrane", "i": "current"}
        if charge.endswith("_recurrent"):
            return _recurrent(call, m, spec, ps, fields)
        return _emit_family(call, spec, ps, fields)

    return convert


def _lsnn_spec(call: Call, m: nn.Module, charge: str) -> tuple[NeuronSpec, _Params]:
    v_leak = _constant(m.p.v_leak)
    recurrent = charge == "norse_lsnn_recurrent"
    return _family_spec(
        call, m, charge, v_init=v_leak, extra={"v_leak": v_leak}, detach_reset=recurrent
    )


def _lsnn(call: Call, m: nn.Module) -> Multi:
    spec, ps = _lsnn_spec(call, m, "norse_lsnn")
    return _emit_family(call, spec, ps, {"v": "membrane", "i": "current"})


def _lsnn_recurrent(call: Call, m: nn.Module) -> Multi:
    spec, ps = _lsnn_spec(call, m, "norse_lsnn_recurrent")
    return _recurrent(call, m, spec, ps, {"v": "membrane", "i": "current"})


def _iaf(call: Call, m: nn.Module) -> Multi:
    spec, ps = _family_spec(call, m, "norse_iaf", v_init=_constant(m.p.v_reset))
    return _emit_family(call, spec, ps, {"v": "membrane"})


def _izhikevich_spec(call: Call, m: nn.Module, charge: str) -> tuple[NeuronSpec, _Params]:
    """``p.tau_inv * dt`` and ``p.tau_inv * dt * p.a`` as Norse evaluates them (constants), or
    node params ``tau_inv`` and ``a`` (``a`` then always one: ``k_u`` is derived from both)."""
    p, dt = m.p, m.dt
    s = m.spiking_method.s
    extra: dict[str, Any] = {"u_init": _constant(s.u)}
    spec, ps = _family_spec(call, m, charge, v_init=_constant(s.v), extra=extra)
    tau_role = ps.tensor_role("tau_inv", "tau_inv")
    a_role = ps.tensor_role("a", "a")
    if tau_role and not a_role:
        ps.params["a"] = call.ctx.add_param(
            f"{call.path}.p.a" if call.path else "p.a", torch.tensor(float(p.a))
        )
    with torch.no_grad():
        if not tau_role:
            extra["tau_inv_dt"] = _constant(p.tau_inv * dt)
            if not a_role:
                extra["tau_inv_dt_a"] = _constant(p.tau_inv * dt * p.a)
    spec = spec.replace(
        v_reset=_constant(p.c) if not isinstance(p.c, torch.Tensor) or p.c.numel() == 1 else 0.0,
        extra={**spec.extra, **extra},
        param_roles=tuple(ps.params),
        learnable=tuple(ps.learnable),
    )
    return spec, ps


def _izhikevich(call: Call, m: nn.Module) -> Multi:
    spec, ps = _izhikevich_spec(call, m, "norse_izhikevich")
    return _emit_family(call, spec, ps, {"v": "membrane"})


def _izhikevich_recurrent(call: Call, m: nn.Module) -> Multi:
    spec, ps = _izhikevich_spec(call, m, "norse_izhikevich_recurrent")
    return _recurrent(call, m, spec, ps, {"v": "membrane"})


def _li_linear(call: Call, m: nn.Module) -> Multi:
    """``LILinearCell``: ``F.linear(input, input_weights)`` (a bias-free linear node) into an
    LI neuron (``li_step`` is ``li_feed_forward_step`` on that current)."""
    _check_one_input(call)
    w_in = _input_weights(call, m)
    spec, ps = _spec(call, m, "norse_li", "norse_li")
    emit = _neuron(call, spec, ps, [w_in])
    v = emit("membrane")
    return Multi((v, _state(call, {"v": lambda: v, "i": lambda: emit("current")})))


if SequentialState is not None:
    register_framework(
        Framework(
            name="norse",
            owns=_owns,
            step_mode=_step_mode,
            chain=_chain,
            stateful=_stateful,
            source="norse",
            priority=2,
            loops=lambda m: True,
            state_args=_state_args,
        )
    )
    for _cls, _fn in [
        (LIFCell, _lif),
        (LIF, _lif),
        (LIFBoxCell, _lifbox),
        (LICell, _li),
        (LI, _li),
        (LIFRecurrentCell, _lif_recurrent),
        (LIFRecurrent, _lif_recurrent),
        (LSNNRecurrent, _lsnn_recurrent),
        (LIFAdExCell, _exponential("norse_lif_adex")),
        (LIFAdEx, _exponential("norse_lif_adex")),
        (LIFAdExRecurrentCell, _exponential("norse_lif_adex_recurrent")),
        (LIFAdExRecurrent, _exponential("norse_lif_adex_recurrent")),
        (LIFExCell, _exponential("norse_lif_ex")),
        (LIFEx, _exponential("norse_lif_ex")),
        (LIFExRecurrentCell, _exponential("norse_lif_ex_recurrent")),
        (LIFExRecurrent, _exponential("norse_lif_ex_recurrent")),
        (LIFRefracCell, _refractory),
        (LIFRefracRecurrentCell, _refractory),
        (LIFRefracRecurrent, _refractory),
        (LSNNCell, _lsnn),
        (LSNN, _lsnn),
        (LSNNRecurrentCell, _lsnn_recurrent),
        (IAFCell, _iaf),
        (IAF, _iaf),
        (IzhikevichCell, _izhikevich),
        (Izhikevich, _izhikevich),
        (IzhikevichRecurrentCell, _izhikevich_recurrent),
        (IzhikevichRecurrent, _izhikevich_recurrent),
        (LIBoxCell, _li_box),
        (LILinearCell, _li_linear),
    ]:
        register_module(_cls, f"norse.torch.{_cls.__name__}", check=_neuron_problem)(_fn)
    register_container(SequentialState, "norse.torch.SequentialState")
    register_container(Lift, "norse.torch.Lift")
