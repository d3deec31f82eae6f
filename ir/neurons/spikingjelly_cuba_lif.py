"""SpikingJelly 2.0 ``CUBALIFNode``: a current-based LIF (a synaptic current ``i``, SJ's ``c``).

Read from ``functional.cuba_lif_step`` (what ``CUBALIFNode`` runs at every step,
in both step modes, through torch autograd): the decays are the module's
Python floats ``c_decay`` and ``v_decay`` (spec ``extra``, or node params with
those roles). The current starts at 0, the membrane at ``v_reset`` (0 for a
soft reset).
"""

from __future__ import annotations

from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.spikingjelly import fire_and_reset

FRAMEWORK = "spikingjelly_families"
ROLES = ("c_decay", "v_decay")


@form(
    "sj_cuba_lif",
    state=("v", "i"),
    roles=ROLES,
    constants={r: f"extra[{r!r}]" for r in ROLES},
    extra=ROLES,
    summary="i1 = i * c_decay + x; h = v * v_decay + i1",
    source="SpikingJelly 2.0 CUBALIFNode",
    framework=FRAMEWORK,
)
def cuba_lif(n: NeuronBuilder) -> None:
    """i1 = (i * c_decay) + x; h = (v * v_decay) + i1; fire, reset (the current is not reset)."""
    c_decay, v_decay = (n.quantity(r, n.param(r, n.extra(r))) for r in ROLES)
    v, i, x = n.state("v"), n.state("i"), n.port("x")
    i1 = n.name("cur", i * c_decay + x)
    fire_and_reset(n, n.name("h", v * v_decay + i1))
    n.set_state("i", i1)
    n.output("current", i1)
