"""SpikingJelly 2.0 ``EIFNode``: the exponential integrate-and-fire neuron.

Read from ``spikingjelly/_ops/eif/cpu.py`` and ``_ops/eif/reference.py``: the
charge below, then SpikingJelly's fire and reset. Its ``exp`` is torch's: on the
reference backend bit for bit; the kernel targets use their own exp (see the
tests for the measured agreement on the CPU).
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.spikingjelly import fire_and_reset

FRAMEWORK = "spikingjelly_families"
ROLES = ("delta_T", "theta_rh", "v_rest")


@form(
    "sj_eif",
    roles=ROLES,
    constants={r: f"extra[{r!r}]" for r in ROLES},
    extra=ROLES,
    summary="h = v + (x + v_rest - v + delta_T exp((v - theta_rh) / delta_T)) / tau",
    source="SpikingJelly 2.0 EIFNode",
    framework=FRAMEWORK,
)
def eif(n: NeuronBuilder) -> None:
    """h = v + ((((x + v_rest) - v) + delta_T * exp((v - theta_rh) / delta_T)) / tau);
    fire, reset."""
    delta, theta, rest = (n.quantity(r, n.param(r, n.extra(r))) for r in ROLES)
    v, x = n.state("v"), n.port("x")
    e = n.name("e", E.exp((v - theta) / delta))
    h = v + (x + rest - v + delta * e) / n.require("tau")
    fire_and_reset(n, n.name("h", h))
