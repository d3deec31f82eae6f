"""Norse 1.1's exponential LIF neurons: ``LIFAdExCell`` / ``LIFAdEx`` (adaptive),
``LIFExCell`` / ``LIFEx``, and their recurrent cells and layers (``LIFAdExRecurrentCell``,
``LIFAdExRecurrent``, ``LIFExRecurrentCell``, ``LIFExRecurrent``), read from
``norse/torch/functional/lif_adex.py`` and ``lif_ex.py`` (``lif_adex_feed_forward_step``,
``lif_adex_step``, ``lif_ex_feed_forward_step``, ``lif_ex_step``).

One step, four forms: LIFEx is LIFAdEx without the adaptation current ``a`` (Norse's two
files write the same arithmetic, less ``- state.a`` and the ``a`` update), and a recurrent
form adds ``F.linear(z[t-1], recurrent_weights)`` to the input current after
``F.linear(input, input_weights)`` (``i_jump = state.i + W_in x + W_rec z``; Norse detaches
nothing in these resets, unlike ``lif_step``).

The step calls ``torch.exp`` on the membrane. The reference backend runs torch's own exp,
so it equals Norse bit for bit; the generated C/CUDA kernels use their own ``expf`` (the
correctly rounded ``snncc_expf`` on the CPU), which differs from torch's CPU exp (MKL VML's
``vsExp`` in this build of torch) in the last bit on about 1% of the arguments: the cpu
backend's membranes then drift from Norse's by a few ulps and a spike flips only where the
membrane lands within those ulps of the threshold (tests/test_norse_families.py states and
tests the tolerance). The adaptation current, Norse's ``state.a``, is the state variable
``w`` here (the kernels name a state's initial value ``<var>0``, which for ``a`` would be the
name of a fused add step's input, ``a0``). Framework label ``norse_families``: see
:mod:`snncc.ir.neurons.norse_iaf`.
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.norse import _fire_and_reset
from snncc.ir.neurons.norse_common import dt_product, required, scalar

FRAMEWORK = "norse_families"

_EX_ROLES = ("tau_mem_inv", "tau_syn_inv", "delta_T", "threshold", "v_reset")
_ADA_ROLES = ("tau_ada_inv", "adaptation_current", "adaptation_spike")
_EX_CONSTANTS = {
    "tau_mem_inv": "extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)",
    "tau_syn_inv": "extra['neg_dt_tau_syn_inv'] (param: (-dt) * tau_syn_inv)",
    "delta_T": "extra['delta_T']",
    "threshold": "v_threshold",
    "v_reset": "v_reset",
}
_ADA_CONSTANTS = {
    "tau_ada_inv": "extra['dt_tau_ada_inv'] (param: dt * tau_ada_inv)",
    "adaptation_current": "extra['adaptation_current']",
    "adaptation_spike": "extra['adaptation_spike']",
}
_EX_EXTRA = ("dt", "v_leak", "dt_tau_mem_inv", "neg_dt_tau_syn_inv", "delta_T")
_ADA_EXTRA = ("dt_tau_ada_inv", "adaptation_current", "adaptation_spike")


def _exponential(n: NeuronBuilder, *, adaptive: bool, recurrent: bool) -> None:
    """The shared step (see :func:`lif_adex`'s docstring for the arithmetic)."""
    v_leak = required(n, "v_leak")
    c_m = dt_product(n, "cm", "tau_mem_inv", "dt_tau_mem_inv")
    c_s = dt_product(n, "cs", "tau_syn_inv", "neg_dt_tau_syn_inv", sign=-1.0)
    if adaptive:
        c_a = dt_product(n, "ca", "tau_ada_inv", "dt_tau_ada_inv")
    d_t = n.quantity("dT", scalar(n, "delta_T", "delta_T"))
    if adaptive:
        ac = n.quantity("ac", scalar(n, "adaptation_current", "adaptation_current"))
        asp = n.quantity("as", scalar(n, "adaptation_spike", "adaptation_spike"))
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    v, i, x = n.state("v"), n.state("i"), n.port("x")
    a = n.state("w") if adaptive else None
    i1 = i + x
    if recurrent:
        i1 = i1 + n.port("rec")
    i1 = n.name("i_jump", i1)
    dv_exp = n.name("dv_exp", d_t * E.exp((v - th) / d_t))
    drive = (v_leak - v) + dv_exp + i1
    v1 = n.name("v_decayed", v + c_m * (drive - a if adaptive else drive))
    i2 = i1 + c_s * i1
    if adaptive:
        a1 = n.name("a_decayed", a + c_a * (ac * (v - v_leak) - a))
    _fire_and_reset(n, v1)
    n.set_state("i", i2)
    if adaptive:
        n.set_state("w", a1 + n.outputs["spike"] * asp)
    n.output("current", i2)


@form(
    "norse_lif_adex",
    state=("v", "i", "w"),
    roles=(*_EX_ROLES, *_ADA_ROLES),
    constants={**_EX_CONSTANTS, **_ADA_CONSTANTS},
    extra=(*_EX_EXTRA, *_ADA_EXTRA),
    summary="v1 = v + c_m*(((v_leak - v) + dT*exp((v - th)/dT) + i1) - a); a += c_a*(...)",
    source="Norse 1.1 lif_adex_feed_forward_step (LIFAdExCell, LIFAdEx)",
    framework=FRAMEWORK,
)
def lif_adex(n: NeuronBuilder) -> None:
    """i1 = i + x; dv_exp = dT * exp((v - th) / dT)
    v1 = v + (c_m * ((((v_leak - v) + dv_exp) + i1) - a))        (c_m = dt * tau_mem_inv)
    i2 = i1 + (c_s * i1)                                            (c_s = -dt * tau_syn_inv)
    a1 = a + (c_a * ((adaptation_current * (v - v_leak)) - a))      (c_a = dt * tau_ada_inv)
    z = H(v1 - th); v2 = ((1 - z) * v1) + (z * v_reset); a2 = a1 + (z * adaptation_spike)
    state v = v2, i = i2, w = a2 (Norse's state.a); output z, v2 (membrane) or i2 (current)"""
    _exponential(n, adaptive=True, recurrent=False)


@form(
    "norse_lif_adex_recurrent",
    state=("v", "i", "w"),
    ports=("x", "rec"),
    roles=(*_EX_ROLES, *_ADA_ROLES),
    constants={**_EX_CONSTANTS, **_ADA_CONSTANTS},
    extra=(*_EX_EXTRA, *_ADA_EXTRA),
    summary="as norse_lif_adex with i1 = (i + x) + rec",
    source="Norse 1.1 lif_adex_step (LIFAdExRecurrentCell, LIFAdExRecurrent)",
    framework=FRAMEWORK,
)
def lif_adex_recurrent(n: NeuronBuilder) -> None:
    """x = port 0: F.linear(input, input_weights); rec = port 1: F.linear(z[t-1],
    recurrent_weights); i1 = (i + x) + rec; then exactly norse_lif_adex from i1 on"""
    _exponential(n, adaptive=True, recurrent=True)


@form(
    "norse_lif_ex",
    state=("v", "i"),
    roles=_EX_ROLES,
    constants=_EX_CONSTANTS,
    extra=_EX_EXTRA,
    summary="v1 = v + c_m*((v_leak - v) + dT*exp((v - th)/dT) + i1); i = i1 + c_s*i1",
    source="Norse 1.1 lif_ex_feed_forward_step (LIFExCell, LIFEx)",
    framework=FRAMEWORK,
)
def lif_ex(n: NeuronBuilder) -> None:
    """i1 = i + x; dv_exp = dT * exp((v - th) / dT)
    v1 = v + (c_m * (((v_leak - v) + dv_exp) + i1)); i2 = i1 + (c_s * i1)
    z = H(v1 - th); v2 = ((1 - z) * v1) + (z * v_reset)
    state v = v2, i = i2; output z, v2 (membrane) or i2 (current)"""
    _exponential(n, adaptive=False, recurrent=False)


@form(
    "norse_lif_ex_recurrent",
    state=("v", "i"),
    ports=("x", "rec"),
    roles=_EX_ROLES,
    constants=_EX_CONSTANTS,
    extra=_EX_EXTRA,
    summary="as norse_lif_ex with i1 = (i + x) + rec",
    source="Norse 1.1 lif_ex_step (LIFExRecurrentCell, LIFExRecurrent)",
    framework=FRAMEWORK,
)
def lif_ex_recurrent(n: NeuronBuilder) -> None:
    """x = port 0: F.linear(input, input_weights); rec = port 1: F.linear(z[t-1],
    recurrent_weights); i1 = (i + x) + rec; then exactly norse_lif_ex from i1 on"""
    _exponential(n, adaptive=False, recurrent=True)
