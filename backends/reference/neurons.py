"""Neuron layers in torch eager ops: each node's definition (:mod:`snncc.ir.neurons`) lowered.

The reference backend and the :mod:`snncc.nn` modules both run neurons through
:func:`step`, so an snncc model and its compiled reference program agree bit
for bit, and both agree bit for bit with the source framework because each
form's definition repeats the source's operations in the source's order.

SpikingJelly 2.0.0 on CPU (float32, built-in surrogate) runs
``torch.ops.sj_{if,lif,plif}.forward``, whose CPU *and* AutogradCPU kernel is
``spikingjelly/_ops/<neuron>/reference.py::_forward_impl``: a Python loop over
t of ``charge -> spike = surrogate(h - v_threshold) -> reset`` with autograd
recording the ordinary torch ops; step mode 's' calls the same op with T = 1.
PLIF's ``k = w.sigmoid()`` is once per call, so once per sequence in 'm' and
once per step in 's' (same value, gradients equal up to rounding):
:func:`derived_constants` computes such per-sequence quantities once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from snncc.backends.reference.lowering import Plan, Value
from snncc.errors import UnsupportedError
from snncc.ir.expr import Val
from snncc.ir.neuron import NeuronSpec
from snncc.ir.neurons import NeuronGraph, build
from snncc.ir.neurons.base import get_form

State = dict[str, torch.Tensor]

_PLANS: dict[int, tuple[NeuronGraph, Plan, Plan]] = {}


def _plans(g: NeuronGraph) -> tuple[Plan, Plan]:
    """The derive and step evaluation plans of ``g`` (cached: built once per form and spec)."""
    hit = _PLANS.get(id(g))
    if hit is None or hit[0] is not g:
        step_roots = [v.i for v in (*g.next_state.values(), g.outputs[g.out]) if isinstance(v, Val)]
        hit = (g, Plan(g.derive, g.quantities.values()), Plan(g.step, step_roots))
        _PLANS[id(g)] = hit
    return hit[1], hit[2]


def prepare(spec: NeuronSpec) -> None:
    """Build ``spec``'s form and its evaluation plans now, at lowering.

    Why now: a plan built on first use is a cache miss the first call sees. Under
    torch.compile that miss becomes a guard, and the cache filled by any later call
    fails it and recompiles the module. Building the form also refuses a spec no form
    can run, naming the problem."""
    _plans(build(spec))


def init_state(
    spec: NeuronSpec,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> State:
    """A fresh state for one neuron layer over a per-step ``shape`` ([B, ...]).

    Every state variable of the form at its initial value: the membrane at
    ``spec.v_init`` (SpikingJelly ``full_like(x, v_reset or 0.0)``, snnTorch 0,
    Norse v_leak), the others at the form's initial value (0). Nothing requires grad.
    """
    g = build(spec)
    return {
        var: torch.full(tuple(shape), g.inits[var], dtype=dtype, device=device) for var in g.states
    }


def derived_constants(spec: NeuronSpec, params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The per-sequence quantities computed from the node's params (PLIF ``k = w.sigmoid()``,
    snnTorch ``beta.clamp(0, 1)``, Norse ``dt * tau_mem_inv``), by quantity name.

    Pass the result merged into ``params`` to :func:`step` so the loop does not
    recompute them (computing them once per sequence is what SpikingJelly's
    multi-step PLIF does).
    """
    g = build(spec)
    if not g.quantities:
        return {}
    derive, _ = _plans(g)
    env = {}
    for role in spec.roles:
        if role in params:
            env[f"p:{role}"] = params[role]
    for role in sorted({r for roles in g.quantity_roles.values() for r in roles}):
        if f"p:{role}" not in env:
            raise UnsupportedError(
                f"neuron charge form {spec.charge!r} needs the param {role!r}; the node has "
                f"{sorted(params)}"
            )
    vals = derive.run(env)
    return {q: vals[i] for q, i in g.quantities.items()}


def _env(
    g: NeuronGraph,
    spec: NeuronSpec,
    params: Mapping[str, Any],
    x: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    ports: Sequence[torch.Tensor],
) -> dict[str, Value]:
    env: dict[str, Value] = {"x:x": x}
    env.update({f"x:{name}": p for name, p in zip(g.ports[1:], ports)})
    for var in g.states:
        if var not in state:
            raise UnsupportedError(
                f"state of a {spec.charge!r} neuron lacks {var!r}; it keeps {list(g.states)}"
            )
        env[f"s:{var}"] = state[var]
    missing = [q for q in g.quantities if q not in params]
    derived = derived_constants(spec, params) if missing else {}
    for q in g.quantities:
        env[f"q:{q}"] = params[q] if q in params else derived[q]
    return env


def step(
    spec: NeuronSpec,
    params: Mapping[str, Any],
    x: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    *ports: torch.Tensor,
) -> tuple[torch.Tensor, State]:
    """One time step: ``(output, new_state)``; output per ``spec.output`` (spikes, v or i).

    ``params``: the node's params by role, optionally with the quantities of
    :func:`derived_constants` merged in. ``ports`` are the values of the
    form's input ports after port 0 (``rec`` for ``snntorch_rleaky`` /
    ``norse_lif_recurrent``), in port order.
    """
    form_ports = get_form(spec.charge).info.ports
    if len(ports) != len(form_ports) - 1:
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r} takes {len(form_ports) - 1} input(s) besides x "
            f"({', '.join(form_ports[1:]) or 'none'}); got {len(ports)}"
        )
    g = build(spec)
    _, plan = _plans(g)
    vals = plan.run(_env(g, spec, params, x, state, ports))

    def value(v: Any) -> torch.Tensor:
        if isinstance(v, Val):
            return vals[v.i]  # type: ignore[return-value]
        return torch.full_like(x, float(v))

    new = {var: value(g.next_state[var]) for var in g.states}
    return value(g.outputs[g.out]), new


def run_sequence(
    spec: NeuronSpec,
    params: Mapping[str, Any],
    x_seq: torch.Tensor,
    state: State | None = None,
    *port_seqs: torch.Tensor,
) -> tuple[torch.Tensor, State]:
    """Loop :func:`step` over ``x_seq`` [T, B, ...]; a None state starts fresh.

    ``port_seqs``: the sequences of the form's other input ports, [T, B, ...]
    each. Derived quantities are computed once for the whole sequence.
    """
    if state is None:
        state = init_state(spec, x_seq.shape[1:], x_seq.dtype, x_seq.device)
    p = {**params, **derived_constants(spec, params)}
    outs = []
    for t, x in enumerate(x_seq):
        out, state = step(spec, p, x, state, *(ps[t] for ps in port_seqs))
        outs.append(out)
    return torch.stack(outs), state
