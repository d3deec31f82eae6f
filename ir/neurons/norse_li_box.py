"""Norse 1.1 ``LIBoxCell``: a leaky integrator without a synaptic current, read from
``norse/torch/functional/leaky_integrator_box.py`` (``li_box_feed_forward_step``).

The input drives the membrane directly, ``v1 = v + (dt * tau_mem_inv) * ((v_leak - v) +
x)``, and the cell returns the membrane (no spikes; the readout ``LICell`` is with a
current). The membrane starts at ``v_leak``. Framework label ``norse_families``: see
:mod:`snncc.ir.neurons.norse_iaf`.
"""

from __future__ import annotations

from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.norse_common import dt_product, required

FRAMEWORK = "norse_families"


@form(
    "norse_li_box",
    roles=("tau_mem_inv",),
    constants={"tau_mem_inv": "c_m = extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)"},
    extra=("dt", "v_leak", "dt_tau_mem_inv"),
    summary="v1 = v + c_m*((v_leak - v) + x); out v1",
    source="Norse 1.1 li_box_feed_forward_step (LIBoxCell)",
    framework=FRAMEWORK,
)
def li_box(n: NeuronBuilder) -> None:
    """v1 = v + (c_m * ((v_leak - v) + x))   (c_m = dt * tau_mem_inv)
    state v = v1; output v1 (membrane; no spikes)"""
    v_leak = required(n, "v_leak")
    c_m = dt_product(n, "cm", "tau_mem_inv", "dt_tau_mem_inv")
    v, x = n.state("v"), n.port("x")
    v1 = n.name("v_decayed", v + c_m * ((v_leak - v) + x))
    n.set_state("v", v1)
    n.output("membrane", v1)
