"""Eager torch neuron maths: the one source of truth for every torch-side neuron in snncc.

The reference backend and the :mod:`snncc.nn` modules both call :func:`step`,
so an snncc model and its compiled reference program agree bit for bit, and
both agree bit for bit with the source framework because each charge form
below repeats the source's operations in the source's order.

SpikingJelly 2.0.0 on CPU (float32, built-in surrogate) runs
``torch.ops.sj_{if,lif,plif}.forward``, whose CPU *and* AutogradCPU kernel is
``spikingjelly/_ops/<neuron>/reference.py::_forward_impl``: a Python loop over
t of ``charge -> spike = surrogate(h - v_threshold) -> reset`` with autograd
recording the ordinary torch ops. Step mode 's' (``functional.lif_step`` ...)
calls the same multi-step op with T = 1, so 's' and 'm' give identical values.
The only 's'/'m' difference is PLIF's ``k = w.sigmoid()``: once per call, so
once per sequence in 'm' and once per step in 's' (same value, gradients equal
up to rounding). :func:`derived_constants` computes k once per sequence.

Per step, with ``vr = v_reset`` (0.0 for a soft reset) and Python-float constants:

- charge (see :data:`snncc.ir.neuron.CHARGE_FORMS`)
    - sj_if:               ``h = v + x``
    - sj_lif_decay_input:  ``h = v + (x - (v - vr)) / tau``
    - sj_lif:              ``h = v - (v - vr) / tau + x``
    - sj_plif_decay_input: ``h = v + (x - (v - vr)) * k``,  ``k = w.sigmoid()``
    - sj_plif:             ``h = v - (v - vr) * k + x``
    - snncc_li:            ``h = v + (x - v) / tau`` (SpikingJelly NonSpikingLIFNode)
- fire: ``s = spike(h - v_threshold)`` (``>= 0``; ``spike_gt`` for ``>``)
- reset (``s`` detached first when detach_reset):
    - hard:     ``v = s * v_reset + (1.0 - s) * h``
    - subtract: ``v = h - s * v_threshold``
    - none:     ``v = h``
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snncc.errors import UnsupportedError
from snncc.ir.neuron import CHARGE_FORMS, NeuronSpec
from snncc.surrogate import spike, spike_gt

State = dict[str, torch.Tensor]


def _check(spec: NeuronSpec) -> None:
    if spec.charge not in CHARGE_FORMS:
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r} has no torch implementation; "
            f"supported: {', '.join(CHARGE_FORMS)}"
        )
    if spec.fire_from != "updated":
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r} fires from the updated membrane; "
            f"fire_from={spec.fire_from!r} is not supported for it"
        )
    if spec.charge in ("sj_lif_decay_input", "sj_lif", "snncc_li") and spec.tau is None:
        raise UnsupportedError(f"neuron charge form {spec.charge!r} needs tau (got None)")


def init_state(
    spec: NeuronSpec,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> State:
    """A fresh state for one neuron layer over a per-step ``shape`` ([B, ...]).

    The membrane starts at ``spec.v_init`` like SpikingJelly's
    ``full_like(x, v_reset or 0.0)``; it never requires grad.
    """
    _check(spec)
    return {"v": torch.full(tuple(shape), float(spec.v_init), dtype=dtype, device=device)}


def derived_constants(spec: NeuronSpec, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sequence constants computed from learnable params (PLIF: ``k = w.sigmoid()``).

    Computing k once per sequence is what SpikingJelly's multi-step PLIF does;
    pass the result merged into ``params`` to :func:`step` so the loop does not
    recompute it.
    """
    if spec.charge in ("sj_plif_decay_input", "sj_plif"):
        w = params.get("w")
        if w is None:
            raise UnsupportedError(f"neuron charge form {spec.charge!r} needs the param 'w'")
        return {"k": w.sigmoid()}
    return {}


def charge(
    spec: NeuronSpec, params: dict[str, torch.Tensor], x: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """The charged membrane ``h`` of one step, in the source framework's operation order."""
    form = spec.charge
    vr = 0.0 if spec.v_reset is None else float(spec.v_reset)
    if form == "sj_if":
        return v + x
    if form == "sj_lif_decay_input":
        return v + (x - (v - vr)) / spec.tau
    if form == "sj_lif":
        return v - (v - vr) / spec.tau + x
    if form in ("sj_plif_decay_input", "sj_plif"):
        k = params["k"] if "k" in params else derived_constants(spec, params)["k"]
        if form == "sj_plif_decay_input":
            return v + (x - (v - vr)) * k
        return v - (v - vr) * k + x
    if form == "snncc_li":
        return v + (x - v) / spec.tau
    _check(spec)
    raise AssertionError(form)  # unreachable: _check raised


def fire(spec: NeuronSpec, h: torch.Tensor) -> torch.Tensor:
    """Spikes of the charged membrane: Heaviside of ``h - v_threshold`` with a surrogate gradient."""
    fn = spike if spec.fire_cmp == ">=" else spike_gt
    return fn(h - spec.v_threshold, spec.surrogate, spec.alpha)


def reset(spec: NeuronSpec, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The membrane after the reset (SpikingJelly ``_ops/reset.py::voltage`` order)."""
    if spec.reset == "none":
        return h
    if spec.detach_reset:
        s = s.detach()
    if spec.reset == "subtract":
        return h - s * spec.v_threshold
    return s * float(spec.v_reset) + (1.0 - s) * h


def step(
    spec: NeuronSpec, params: dict[str, torch.Tensor], x: torch.Tensor, state: State
) -> tuple[torch.Tensor, State]:
    """One time step: ``(output, new_state)``; output is spikes or the membrane per ``spec.output``."""
    _check(spec)
    h = charge(spec, params, x, state["v"])
    if spec.reset == "none" and not spec.spiking:
        return h, {"v": h}
    s = fire(spec, h)
    v = reset(spec, h, s)
    return (s if spec.spiking else v), {"v": v}


def run_sequence(
    spec: NeuronSpec,
    params: dict[str, torch.Tensor],
    x_seq: torch.Tensor,
    state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """Loop :func:`step` over ``x_seq`` [T, B, ...]; a None state starts fresh.

    Derived constants (PLIF's k) are computed once for the whole sequence, as
    SpikingJelly's multi-step neurons do.
    """
    _check(spec)
    if state is None:
        state = init_state(spec, x_seq.shape[1:], x_seq.dtype, x_seq.device)
    p = {**params, **derived_constants(spec, params)}
    outs = []
    for x in x_seq:
        out, state = step(spec, p, x, state)
        outs.append(out)
    return torch.stack(outs), state
