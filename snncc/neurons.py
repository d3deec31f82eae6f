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

snnTorch 1.0 and Norse 1.1 forms are whole steps (their charge, firing and
reset interleave differently), one function each below; the exact operation
order of each is :data:`snncc.ir.neuron.FORMS` ``[name].step``, read from the
installed sources and checked bit for bit against the modules (see
``tests/test_neurons.py``). Their constants come from node params when the
node has the role (learnable, buffers, per-neuron tensors), else from the
spec, following the rule in :mod:`snncc.ir.neuron`.

Forms with a second input port (``snntorch_rleaky``, ``norse_lif_recurrent``:
``rec``, the recurrent term computed by the graph from the previous step's
spike) take that port's value as the extra positional argument of
:func:`step`. Forms with several state variables (``v`` and ``i``, or ``v``
and ``s``) keep all of them in the state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snncc.errors import UnsupportedError
from snncc.ir.neuron import CHARGE_FORMS, NORSE_FORMS, SNNTORCH_FORMS, NeuronSpec
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
    if spec.charge in NORSE_FORMS:
        missing = [k for k in ("dt", "v_leak") if k not in spec.extra]
        missing += [
            k
            for k, role in (
                ("dt_tau_mem_inv", "tau_mem_inv"),
                ("neg_dt_tau_syn_inv", "tau_syn_inv"),
            )
            if role in _form_roles(spec) and k not in spec.extra and role not in spec.roles
        ]
        if missing:
            raise UnsupportedError(
                f"neuron charge form {spec.charge!r} needs the constants {missing} in extra"
            )


def _form_roles(spec: NeuronSpec) -> tuple[str, ...]:
    form = spec.form
    return form.roles if form is not None else ()


def init_state(
    spec: NeuronSpec,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> State:
    """A fresh state for one neuron layer over a per-step ``shape`` ([B, ...]).

    The membrane starts at ``spec.v_init`` like SpikingJelly's
    ``full_like(x, v_reset or 0.0)`` (snnTorch: 0, Norse: v_leak); every other
    state variable of the form (synaptic current ``i``, previous spike ``s``)
    at 0. Nothing requires grad.
    """
    _check(spec)
    state = {"v": torch.full(tuple(shape), float(spec.v_init), dtype=dtype, device=device)}
    for var in spec.state_vars:
        if var != "v":
            state[var] = torch.zeros(tuple(shape), dtype=dtype, device=device)
    return state


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
    spec: NeuronSpec,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    state: State,
    *ports: torch.Tensor,
) -> tuple[torch.Tensor, State]:
    """One time step: ``(output, new_state)``; output per ``spec.output`` (spikes, v or i).

    ``ports`` are the values of the form's input ports after port 0 (``rec``
    for ``snntorch_rleaky`` / ``norse_lif_recurrent``), in port order.
    """
    _check(spec)
    want = len(spec.input_ports) - 1
    if len(ports) != want:
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r} takes {want} input(s) besides x "
            f"({', '.join(spec.input_ports[1:]) or 'none'}); got {len(ports)}"
        )
    if spec.charge in SNNTORCH_FORMS:
        return _snntorch_step(spec, params, x, state, ports)
    if spec.charge in NORSE_FORMS:
        return _norse_step(spec, params, x, state, ports)
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
    *port_seqs: torch.Tensor,
) -> tuple[torch.Tensor, State]:
    """Loop :func:`step` over ``x_seq`` [T, B, ...]; a None state starts fresh.

    ``port_seqs``: the sequences of the form's other input ports, [T, B, ...]
    each. Derived constants (PLIF's k) are computed once for the whole
    sequence, as SpikingJelly's multi-step neurons do.
    """
    _check(spec)
    if state is None:
        state = init_state(spec, x_seq.shape[1:], x_seq.dtype, x_seq.device)
    p = {**params, **derived_constants(spec, params)}
    outs = []
    for t, x in enumerate(x_seq):
        out, state = step(spec, p, x, state, *(ps[t] for ps in port_seqs))
        outs.append(out)
    return torch.stack(outs), state


# --------------------------------------------------------------------------- snnTorch / Norse

Scalar = torch.Tensor | float


def _value(spec: NeuronSpec, params: dict[str, torch.Tensor], role: str, fallback: Scalar | None):
    """The param with ``role`` if the node has it, else the spec constant ``fallback``."""
    t = params.get(role)
    if t is not None:
        return t
    if fallback is None:
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r} needs the param {role!r} or the constant "
            f"extra[{role!r}]"
        )
    return fallback


def _clamp01(v: Scalar) -> Scalar:
    """snnTorch's ``beta.clamp(0, 1)`` (a Python constant clamps exactly the same)."""
    if isinstance(v, torch.Tensor):
        return v.clamp(0, 1)
    return min(max(float(v), 0.0), 1.0)


def _fire(spec: NeuronSpec, u: torch.Tensor) -> torch.Tensor:
    fn = spike if spec.fire_cmp == ">=" else spike_gt
    return fn(u, spec.surrogate, spec.alpha)


def _out(spec: NeuronSpec, s: torch.Tensor | None, state: State) -> torch.Tensor:
    if spec.output == "membrane":
        return state["v"]
    if spec.output == "current":
        return state["i"]
    if s is None:
        raise UnsupportedError(f"neuron charge form {spec.charge!r} does not spike")
    return s


def _snntorch_step(
    spec: NeuronSpec,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    state: State,
    ports: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, State]:
    """snnTorch 1.0 Leaky / Synaptic / RLeaky ``forward`` (FORMS[...].step), operation by operation."""
    form, mech = spec.charge, spec.reset
    m = state["v"]
    th = _value(spec, params, "threshold", spec.v_threshold)
    g = _value(spec, params, "graded_spikes_factor", spec.extra.get("graded_spikes_factor", 1.0))
    b = _clamp01(_value(spec, params, "beta", spec.extra.get("beta")))
    # mem_reset: spike_grad(mem - threshold).clone().detach() -> (mem - th > 0).float()
    r = (m - th > 0).float()
    new: State = {}
    if form == "snntorch_leaky":
        if mech == "subtract":
            m1 = b * m + x - r * th
        elif mech == "hard":  # 'zero': the old mem is zeroed before the decay
            m1 = b * ((1 - r) * m) + x
        else:
            m1 = b * m + x
    elif form == "snntorch_synaptic":
        a = _clamp01(_value(spec, params, "alpha", spec.extra.get("alpha")))
        i1 = a * state["i"] + x
        m1 = b * m + i1
        if mech == "subtract":
            m1 = m1 - r * th
        elif mech == "hard":  # 'zero': syn -= 0 * reset (unchanged); mem -= mem * reset
            m1 = m1 - m1 * r
        new["i"] = i1
    else:
        if form == "snntorch_rleaky":
            rec = ports[0]
        else:  # snntorch_rleaky_v: RecurrentOneToOne, spk * V
            rec = state["s"] * _value(spec, params, "V", spec.extra.get("V"))
        base = b * m + x + rec
        if mech == "subtract":
            m1 = base - r * th
        elif mech == "hard":  # 'zero': the whole new value (input and recurrent term too)
            m1 = base - r * base
        else:
            m1 = base
    s = _fire(spec, m1 - th) * g
    if not spec.reset_delay:
        d = s / g - r  # not detached: the gradient flows through s
        if mech == "subtract":
            m1 = m1 - d * th
        elif mech == "hard":
            m1 = m1 - d * m1
    new["v"] = m1
    if form == "snntorch_rleaky_v":
        new["s"] = s
    return _out(spec, s, new), new


def _norse_coeffs(spec: NeuronSpec, params: dict[str, torch.Tensor]) -> tuple[Scalar, Scalar]:
    """``(dt * tau_mem_inv, (-dt) * tau_syn_inv)`` as Norse computes them."""
    dt = float(spec.extra["dt"])
    tm = params.get("tau_mem_inv")
    c_m = dt * tm if tm is not None else spec.extra.get("dt_tau_mem_inv")
    ts = params.get("tau_syn_inv")
    c_s = -dt * ts if ts is not None else spec.extra.get("neg_dt_tau_syn_inv")
    return c_m, c_s


def _norse_step(
    spec: NeuronSpec,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    state: State,
    ports: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, State]:
    """Norse 1.1 lif_feed_forward_step / lif_step / lif_box / li steps (FORMS[...].step)."""
    form = spec.charge
    v = state["v"]
    v_leak = float(spec.extra["v_leak"])
    c_m, c_s = _norse_coeffs(spec, params)
    if form == "norse_lifbox":
        v1 = v + c_m * ((x + v_leak) - v)
        new: State = {}
    else:
        i1 = state["i"] + x
        if form == "norse_lif_recurrent":
            i1 = i1 + ports[0]
        v1 = v + c_m * ((v_leak - v) + i1)
        new = {"i": i1 + c_s * i1}
    if form == "norse_li":
        new["v"] = v1
        return _out(spec, None, new), new
    th = _value(spec, params, "threshold", spec.v_threshold)
    vr = _value(spec, params, "v_reset", spec.v_reset)
    z = _fire(spec, v1 - th)
    zr = z.detach() if spec.detach_reset else z
    if spec.reset == "subtract":  # Norse reset_subtract
        new["v"] = (1 - zr) * v1 + zr * (v1 - th)
    elif spec.reset == "hard":  # Norse reset_value
        new["v"] = (1 - zr) * v1 + zr * vr
    else:
        new["v"] = v1
    return _out(spec, z, new), new
