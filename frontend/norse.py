"""Converters for Norse 1.1 modules: ``LIFCell``, ``LIF``, ``LIFBoxCell``, ``LICell``,
``LI``, ``LIFRecurrentCell`` and the ``SequentialState`` container.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    from norse.torch.functional.leaky_integrator import li_feed_forward_step
    from norse.torch.functional.lif import lif_feed_forward_step, lif_step
    from norse.torch.functional.lif_box import lif_box_feed_forward_step
    from norse.torch.functional.reset import reset_subtract, reset_value
    from norse.torch.module.leaky_integrator import LI, LICell
    from norse.torch.module.lif import LIF, LIFCell, LIFRecurrentCell
    from norse.torch.module.lif_box import LIFBoxCell
    from norse.torch.module.sequential import SequentialState
except ImportError:  # pragma: no cover - exercised only without norse
    SequentialState = None

_CELLS: tuple[type, ...] = ()
_SEQUENCES: tuple[type, ...] = ()
if SequentialState is not None:
    _CELLS = (LIFCell, LIFBoxCell, LICell, LIFRecurrentCell)
    _SEQUENCES = (LIF, LI)


def _owns(m: nn.Module) -> bool:
    return type(m).__module__.split(".")[0] == "norse"


def _step_mode(m: nn.Module) -> str | None:
    if type(m) in _CELLS:
        return "s"
    if type(m) in _SEQUENCES:
        return "m"
    return None


def _stateful(m: nn.Module) -> bool:
    return type(m) in _CELLS or type(m) in _SEQUENCES or type(m) is SequentialState


def _state_args(m: nn.Module) -> StateArgs | None:
    if not _stateful(m):
        return None
    return StateArgs(("state",), (1,), lambda v: v is None, internal_ok=False, opaque=True)


def _chain(m: nn.Module) -> Chain | None:
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
        LIFBoxCell: lif_box_feed_forward_step,
        LICell: li_feed_forward_step,
        LI: li_feed_forward_step,
    }

_SPIKING = ("LIFCell", "LIF", "LIFRecurrentCell", "LIFBoxCell")


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
    if getattr(m, "activation", None) is not _ACTIVATIONS[type(m)]:
        method = getattr(m.p, "method", "?")
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
            from_norse(m.p.method, m.p.alpha)
        except UnsupportedError as e:
            return str(e)
    if type(m) is LIFBoxCell and m.p.reset_method not in (reset_value, reset_subtract):
        return f"p.reset_method={m.p.reset_method!r}; supported: norse reset_value, reset_subtract"
    v_leak = m.p.v_leak
    if isinstance(v_leak, nn.Parameter) or (
        isinstance(v_leak, torch.Tensor) and v_leak.numel() != 1
    ):
        return (
            "p.v_leak must be a scalar constant (it is also the initial membrane); a learnable "
            "or per-neuron v_leak is not supported"
        )
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
    has_syn = charge != "norse_lifbox"
    if has_syn and not ps.tensor_role("tau_syn_inv", "tau_syn_inv"):
        extra["neg_dt_tau_syn_inv"] = _coefficient(m, "tau_syn_inv", -1.0)
    common: dict[str, Any] = {}
    if charge == "norse_li":
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
            "detach_reset": charge == "norse_lif_recurrent",
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


def _lif_recurrent(call: Call, m: nn.Module) -> Multi:
    """``i += W_in x + W_rec z[t-1]``: two bias-free linear nodes, the second one step late."""
    _check_one_input(call)
    x = tnn.one_input(call)
    graph = call.ctx.graph
    w_in = graph.add_node(
        "linear",
        [x.id],
        params={"weight": call.param(m, "input_weights")},
        shape=call.out_shape,
        dtype=call.out_dtype,
        name=f"{call.path}.input_weights",
    )
    spec, ps = _spec(call, m, "norse_lif", "norse_lif_recurrent")
    spec_dict = spec.to_dict()
    z = call.emit("neuron", [w_in], attrs={"neuron": spec_dict}, params=dict(ps.params))
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
    state = _state(
        call, {"z": lambda: z, "v": lambda: emit("membrane"), "i": lambda: emit("current")}
    )
    return Multi((z, state))


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
            loops=True,
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
    ]:
        register_module(_cls, f"norse.torch.{_cls.__name__}", check=_neuron_problem)(_fn)
    register_container(SequentialState, "norse.torch.SequentialState")
