"""Norse 1.1 ``LIFRefracCell`` and ``LIFRefracRecurrentCell`` (and ``LIFRefracRecurrent``):
LIF with an absolute refractory period, read from ``norse/torch/functional/lif_refrac.py``
(``lif_refrac_feed_forward_step``, ``lif_refrac_step``, ``compute_refractory_update``).

Norse runs the plain LIF step (``lif_feed_forward_step``; the recurrent cell ``lif_step``,
whose reset detaches the spike) and then the refractory update on its result: a neuron
whose counter ``rho`` is above zero keeps its membrane from before the step and does not
spike, and a spike sets the counter to ``rho_reset``::

    mask = H(rho)                      (Norse's threshold(rho): the spec's surrogate)
    v = (1 - mask) * v_lif + mask * v_before
    z = (1 - mask) * z_lif
    rho = (1 - z) * relu(rho - mask) + z * rho_reset

So ``rho`` counts the steps left, and its surrogate gradient flows as Norse's does. The
counter starts at 0, the membrane at ``v_leak``. The recurrent cell feeds back the masked
spike (its state's ``z``). Framework label ``norse_families``: see
:mod:`snncc.ir.neurons.norse_iaf`.
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.neurons import norse
from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.norse import _current, _fire_and_reset
from snncc.ir.neurons.norse_common import scalar

FRAMEWORK = "norse_families"
_ROLES = (*norse._ROLES, "rho_reset")
_CONSTANTS = {
    **norse._CONSTANTS,
    "rho_reset": "extra['rho_reset'] (the refractory steps after a spike)",
}
_EXTRA = ("dt", "v_leak", "dt_tau_mem_inv", "neg_dt_tau_syn_inv", "rho_reset")


def _refractory(n: NeuronBuilder, recurrent: bool) -> None:
    v, rho = n.state("v"), n.state("rho")
    _fire_and_reset(n, _current(n, recurrent))
    z, v2 = n.outputs["spike"], n.next_state["v"]
    rho_reset = n.quantity("rr", scalar(n, "rho_reset", "rho_reset"))
    mask = n.name("refractory", n.spike(rho))
    v3 = (1 - mask) * v2 + mask * v
    z2 = n.name("z_refrac", (1 - mask) * z)
    n.set_state("v", v3)
    n.set_state("rho", (1 - z2) * E.relu(rho - mask) + z2 * rho_reset)
    n.output("spike", z2)
    n.output("membrane", v3)


@form(
    "norse_lif_refrac",
    state=("v", "i", "rho"),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="norse_lif, then mask = H(rho): v kept and no spike while refractory; rho counts",
    source="Norse 1.1 lif_refrac_feed_forward_step (LIFRefracCell)",
    framework=FRAMEWORK,
)
def lif_refrac(n: NeuronBuilder) -> None:
    """norse_lif's step (z1, v2, i2), then mask = H(rho); v3 = ((1 - mask) * v2) + (mask * v)
    z2 = (1 - mask) * z1; rho2 = ((1 - z2) * relu(rho - mask)) + (z2 * rho_reset)
    state v = v3, i = i2, rho = rho2; output z2, v3 (membrane) or i2 (current)"""
    _refractory(n, recurrent=False)


@form(
    "norse_lif_refrac_recurrent",
    state=("v", "i", "rho"),
    ports=("x", "rec"),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="norse_lif_recurrent (reset detached), then the refractory update",
    source="Norse 1.1 lif_refrac_step (LIFRefracRecurrentCell, LIFRefracRecurrent)",
    framework=FRAMEWORK,
)
def lif_refrac_recurrent(n: NeuronBuilder) -> None:
    """x = port 0: F.linear(input, input_weights); rec = port 1: F.linear(z2[t-1],
    recurrent_weights); norse_lif_recurrent's step, then as norse_lif_refrac"""
    _refractory(n, recurrent=True)
