"""Norse 1.1 ``LSNNCell`` / ``LSNN`` and ``LSNNRecurrentCell``: LIF with an adaptive
threshold ``b`` (Bellec et al. 2018), read from ``norse/torch/functional/lsnn.py``
(``lsnn_feed_forward_step``, ``lsnn_step``).

Note Norse's order: the membrane integrates the current *before* the step's input joins it
(``i_new = i_decayed + input``), and the spike compares the membrane with the decayed
adaptive threshold. The threshold starts at ``v_th`` (``initial_state``: ``b =
p.v_th.detach()``), read through the ``started`` flag (:func:`.norse_common.started_or`); the
membrane starts at ``v_leak`` (``spec.v_init``). ``LSNNRecurrentCell`` detaches the spike in
its reset and in the threshold's increment (``detach_reset``) and adds
``F.linear(z[t-1], recurrent_weights)`` (port ``rec``, a Linear node behind a delay-1 edge)
after ``F.linear(input, input_weights)`` (a Linear node into port ``x``). Framework label
``norse_families``: see :mod:`snncc.ir.neurons.norse_iaf`.
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.norse_common import (
    STARTED,
    dt_product,
    required,
    reset_value,
    scalar,
    started_or,
)

FRAMEWORK = "norse_families"
_ROLES = ("tau_mem_inv", "tau_syn_inv", "tau_adapt_inv", "threshold", "v_reset", "beta")
_CONSTANTS = {
    "tau_mem_inv": "extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)",
    "tau_syn_inv": "extra['neg_dt_tau_syn_inv'] (param: (-dt) * tau_syn_inv)",
    "tau_adapt_inv": "extra['dt_tau_adapt_inv'] (param: dt * tau_adapt_inv)",
    "threshold": "v_threshold (also the adaptive threshold's initial value)",
    "v_reset": "v_reset",
    "beta": "extra['beta'] (the threshold's increment per spike)",
}
_EXTRA = ("dt", "v_leak", "dt_tau_mem_inv", "neg_dt_tau_syn_inv", "dt_tau_adapt_inv", "beta")


def _lsnn(n: NeuronBuilder, recurrent: bool) -> None:
    v_leak = required(n, "v_leak")
    c_m = dt_product(n, "cm", "tau_mem_inv", "dt_tau_mem_inv")
    c_s = dt_product(n, "cs", "tau_syn_inv", "neg_dt_tau_syn_inv", sign=-1.0)
    c_b = dt_product(n, "cb", "tau_adapt_inv", "dt_tau_adapt_inv")
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    vr = n.quantity("vr", n.param("v_reset", n.spec.v_reset))
    beta = n.quantity("beta", scalar(n, "beta", "beta"))
    v, i, x = n.state("v"), n.state("i"), n.port("x")
    b = n.name("b", started_or(n, "b", E.detach(th)))
    v1 = n.name("v_decayed", v + c_m * ((v_leak - v) + i))
    i1 = n.name("i_decayed", i + c_s * i)
    b1 = n.name("b_decayed", b + c_b * (th - b))
    z = n.name("z", n.spike(v1 - b1))
    zr = E.detach(z) if n.spec.detach_reset else z
    v2 = reset_value(zr, v1, vr)
    i2 = i1 + x
    if recurrent:
        i2 = i2 + n.port("rec")
    n.set_state("v", v2)
    n.set_state("i", i2)
    n.set_state("b", b1 + zr * beta)
    n.output("spike", z)
    n.output("membrane", v2)
    n.output("current", i2)


@form(
    "norse_lsnn",
    state=("v", "i", "b", STARTED),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="v1 = v + c_m*((v_leak - v) + i); b1 = b + c_b*(th - b); z = H(v1 - b1); i += x",
    source="Norse 1.1 lsnn_feed_forward_step (LSNNCell, LSNN)",
    framework=FRAMEWORK,
)
def lsnn(n: NeuronBuilder) -> None:
    """b = v_th at the first step (flag 'started'), else state b
    v1 = v + (c_m * ((v_leak - v) + i)); i1 = i + (c_s * i); b1 = b + (c_b * (th - b))
    z = H(v1 - b1); v2 = ((1 - z) * v1) + (z * v_reset); b2 = b1 + (z * beta); i2 = i1 + x
    (z detached in v2 and b2 when detach_reset); state v, i, b = v2, i2, b2; output z, v2, i2"""
    _lsnn(n, recurrent=False)


@form(
    "norse_lsnn_recurrent",
    state=("v", "i", "b", STARTED),
    ports=("x", "rec"),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="as norse_lsnn with i2 = (i1 + x) + rec, the spike detached in the resets",
    source="Norse 1.1 lsnn_step (LSNNRecurrentCell)",
    framework=FRAMEWORK,
)
def lsnn_recurrent(n: NeuronBuilder) -> None:
    """x = port 0: F.linear(input, input_weights); rec = port 1: F.linear(z[t-1],
    recurrent_weights); as norse_lsnn, then i2 = (i1 + x) + rec"""
    _lsnn(n, recurrent=True)
