"""Norse 1.1 ``IAFCell`` / ``IAF``: the non-leaky integrate-and-fire neuron, read from
``norse/torch/functional/iaf.py`` (``iaf_feed_forward_step``).

``v1 = v + x``; ``z = H(v1 - v_th)`` (``>``); ``v2 = (1 - z) * v1 + z * v_reset``. The
membrane starts at ``v_reset`` (``IAFCell.initial_state``), so ``spec.v_init`` is
``v_reset``. Framework label ``norse_families``: see :mod:`snncc.ir.neurons.snntorch_alpha`
(the generic Norse form matrices of the existing tests pass every ``norse`` form the
constants of LIF; the families are covered by tests/test_norse_families.py).
"""

from __future__ import annotations

from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.norse import _fire_and_reset

FRAMEWORK = "norse_families"


@form(
    "norse_iaf",
    roles=("threshold", "v_reset"),
    constants={"threshold": "v_threshold", "v_reset": "v_reset"},
    extra=("dt",),
    summary="v1 = v + x; z = H(v1 - th); v = (1 - z)*v1 + z*v_reset",
    source="Norse 1.1 iaf_feed_forward_step (IAFCell, IAF)",
    framework=FRAMEWORK,
)
def iaf(n: NeuronBuilder) -> None:
    """v1 = v + x; z = H(v1 - th); v2 = ((1 - z) * v1) + (z * v_reset)
    state v = v2; output z or v2 (dt is not used by the step; kept for the record)"""
    v, x = n.state("v"), n.port("x")
    _fire_and_reset(n, n.name("v_new", v + x))
