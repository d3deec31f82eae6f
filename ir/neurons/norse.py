"""Norse 1.1 neurons (``norse.torch.functional``): LIF, LIFRecurrent, LIFBox, LI steps.

Read from ``lif_feed_forward_step``, ``lif_step``, ``lif_box_feed_forward_step``
and ``li_feed_forward_step``. Norse fires with ``>`` (``heaviside(x) = x > 0``)
and resets with ``reset_value`` (hard) or ``reset_subtract``. Its constants are
Python floats in ``p`` (LIFParameters) or tensors: ``dt * tau_mem_inv`` is
computed by Norse each step, here once per sequence (the same value), from a
node param when the node has the role, else from ``spec.extra``.
"""

from __future__ import annotations

from snncc.errors import UnsupportedError
from snncc.ir import expr as E
from snncc.ir.expr import Operand
from snncc.ir.neurons.base import NeuronBuilder, form

FRAMEWORK = "norse"
#: the constants a Norse form understands; ``nir_dt`` is the time step a NIR file was
#: discretised with (kept for re-export to NIR, never read by the step)
_EXTRA = ("dt", "v_leak", "dt_tau_mem_inv", "neg_dt_tau_syn_inv", "nir_dt")
_CONSTANTS = {
    "tau_mem_inv": "c_m = extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)",
    "tau_syn_inv": "c_s = extra['neg_dt_tau_syn_inv'] (param: (-dt) * tau_syn_inv)",
    "threshold": "v_threshold",
    "v_reset": "v_reset",
}
_ROLES = ("tau_mem_inv", "tau_syn_inv", "threshold", "v_reset")


def _dt(n: NeuronBuilder) -> float:
    dt = n.extra("dt")
    v_leak = n.extra("v_leak")
    missing = [k for k, v in (("dt", dt), ("v_leak", v_leak)) if v is None]
    if missing:
        raise UnsupportedError(
            f"neuron charge form {n.form.name!r} needs the constants {missing} in extra"
        )
    return float(dt)


def _c_mem(n: NeuronBuilder) -> Operand:
    """``dt * tau_mem_inv``."""
    dt = _dt(n)
    if "tau_mem_inv" in n.spec.roles:
        return n.quantity("cm", dt * n.param("tau_mem_inv", None))
    return n.quantity("cm", n.param("tau_mem_inv", n.extra("dt_tau_mem_inv")))


def _c_syn(n: NeuronBuilder) -> Operand:
    """``(-dt) * tau_syn_inv``."""
    dt = _dt(n)
    if "tau_syn_inv" in n.spec.roles:
        return n.quantity("cs", -dt * n.param("tau_syn_inv", None))
    return n.quantity("cs", n.param("tau_syn_inv", n.extra("neg_dt_tau_syn_inv")))


def _fire_and_reset(n: NeuronBuilder, v1: Operand) -> None:
    """``z = H(v1 - th)``; reset_value ``((1 - z) * v1) + (z * v_reset)`` or reset_subtract
    ``((1 - z) * v1) + (z * (v1 - th))``; z detached first when detach_reset."""
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    z = n.name("z", n.spike(v1 - th))
    zr = E.detach(z) if n.spec.detach_reset else z
    if n.spec.reset == "subtract":
        v2 = (1 - zr) * v1 + zr * (v1 - th)
    elif n.spec.reset == "hard":
        vr = n.quantity("vr", n.param("v_reset", n.spec.v_reset))
        v2 = (1 - zr) * v1 + zr * vr
    else:
        v2 = v1
    n.set_state("v", v2)
    n.output("spike", z)
    n.output("membrane", v2)


def _current(n: NeuronBuilder, recurrent: bool) -> Operand:
    """The current-based step shared by LIF, LIFRecurrent and LI (up to the firing)."""
    v, i, x = n.state("v"), n.state("i"), n.port("x")
    v_leak = n.extra("v_leak")
    c_m, c_s = _c_mem(n), _c_syn(n)
    i1 = i + x  # the input jumps into the current first
    if recurrent:
        i1 = i1 + n.port("rec")
    n.name("i_jump", i1)
    v1 = n.name("v_decayed", v + c_m * ((v_leak - v) + i1))
    i2 = i1 + c_s * i1
    n.set_state("i", i2)
    n.output("current", i2)
    return v1


@form(
    "norse_lif",
    state=("v", "i"),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="i1 = i + x; v1 = v + c_m*((v_leak - v) + i1); i = i1 + c_s*i1",
    source="Norse 1.1 lif_feed_forward_step (LIFCell, LIF)",
    framework=FRAMEWORK,
)
def lif(n: NeuronBuilder) -> None:
    """i1 = i + x; v1 = v + (c_m * ((v_leak - v) + i1)); i2 = i1 + (c_s * i1)
    z = H(v1 - th); v2 = ((1 - z) * v1) + (z * v_reset)  (z detached first when detach_reset)
    state v = v2, i = i2; output z, v2 (membrane) or i2 (current)"""
    _fire_and_reset(n, _current(n, recurrent=False))


@form(
    "norse_lif_recurrent",
    state=("v", "i"),
    ports=("x", "rec"),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="i1 = (i + x) + rec; then as norse_lif (reset detached)",
    source="Norse 1.1 lif_step (LIFRecurrentCell)",
    framework=FRAMEWORK,
)
def lif_recurrent(n: NeuronBuilder) -> None:
    """x = port 0: F.linear(input, input_weights); rec = port 1: F.linear(z[t-1],
    recurrent_weights); i1 = (i + x) + rec; then exactly norse_lif from v1 on"""
    _fire_and_reset(n, _current(n, recurrent=True))


@form(
    "norse_lifbox",
    roles=("tau_mem_inv", "threshold", "v_reset"),
    constants={k: v for k, v in _CONSTANTS.items() if k != "tau_syn_inv"},
    extra=_EXTRA,
    summary="v1 = v + c_m*((x + v_leak) - v); reset",
    source="Norse 1.1 lif_box_feed_forward_step (LIFBoxCell)",
    framework=FRAMEWORK,
)
def lif_box(n: NeuronBuilder) -> None:
    """v1 = v + (c_m * ((x + v_leak) - v))   (note the order: (x + v_leak) - v)
    z = H(v1 - th); reset_value or reset_subtract; state v = v2; output z or v2"""
    v, x = n.state("v"), n.port("x")
    c_m = _c_mem(n)
    v_leak = n.extra("v_leak")
    v1 = n.name("v_decayed", v + c_m * ((x + v_leak) - v))
    _fire_and_reset(n, v1)


@form(
    "norse_li",
    state=("v", "i"),
    roles=("tau_mem_inv", "tau_syn_inv"),
    constants={k: v for k, v in _CONSTANTS.items() if k.startswith("tau")},
    extra=_EXTRA,
    summary="i1 = i + x; v1 = v + c_m*((v_leak - v) + i1); i = i1 + c_s*i1; out v1",
    source="Norse 1.1 li_feed_forward_step (LICell, LI)",
    framework=FRAMEWORK,
)
def leaky_integrator(n: NeuronBuilder) -> None:
    """i1 = i + x; v1 = v + (c_m * ((v_leak - v) + i1)); i2 = i1 + (c_s * i1)
    state v = v1, i = i2; output v1 (membrane; no spikes) or i2 (current)"""
    v1 = _current(n, recurrent=False)
    n.set_state("v", v1)
    n.output("membrane", v1)
