"""SpikingJelly 2.0 ``QIFNode``: the quadratic integrate-and-fire neuron.

Read from ``spikingjelly/_ops/qif/cpu.py`` (the CPU kernel of ``torch.ops.sj_qif``,
which ``QIFNode`` runs in both step modes) and ``_ops/qif/reference.py`` (the
autograd path of surrogates without a registered id): the same charge, then
SpikingJelly's fire and reset (:func:`~snncc.ir.neurons.spikingjelly.fire_and_reset`).
The constants are the module's Python floats ``a0``, ``v_rest``, ``v_c`` (spec
``extra``), or node params with those roles.
"""

from __future__ import annotations

from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.spikingjelly import fire_and_reset

FRAMEWORK = "spikingjelly_families"
ROLES = ("a0", "v_rest", "v_c")


@form(
    "sj_qif",
    roles=ROLES,
    constants={r: f"extra[{r!r}]" for r in ROLES},
    extra=ROLES,
    summary="h = v + (x + a0 (v - v_rest)(v - v_c)) / tau",
    source="SpikingJelly 2.0 QIFNode",
    framework=FRAMEWORK,
)
def qif(n: NeuronBuilder) -> None:
    """h = v + (x + ((a0 * (v - v_rest)) * (v - v_c))) / tau; fire, reset."""
    a0, rest, vc = (n.quantity(r, n.param(r, n.extra(r))) for r in ROLES)
    v, x = n.state("v"), n.port("x")
    h = v + (x + a0 * (v - rest) * (v - vc)) / n.require("tau")
    fire_and_reset(n, n.name("h", h))
