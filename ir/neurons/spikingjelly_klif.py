"""SpikingJelly 2.0 ``KLIFNode``: a LIF whose charge is scaled by a learnable ``k`` and rectified.

Read from ``functional.klif_step`` (what ``KLIFNode`` runs at every step, in
both step modes, through torch autograd): the LIF charge (``spec.decay_input``),
``hk = relu(k * h)``, the spike of ``hk``, and a reset of ``hk``; with
``scale_reset`` (``extra['scale_reset']`` 1.0) the reset is of ``hk / k``
with the threshold ``v_threshold / k`` (torch: ``k.reciprocal() * v_threshold``,
once per sequence). ``k`` is the node param of role ``k`` (a scalar
``nn.Parameter``, learnable).
"""

from __future__ import annotations

from snncc.errors import UnsupportedError
from snncc.ir import expr as E
from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.spikingjelly import fire_and_reset
from snncc.ir.neurons.spikingjelly_liaf import lif_charge

FRAMEWORK = "spikingjelly_families"


@form(
    "sj_klif",
    roles=("k",),
    constants={"k": "a node param: the learnable k"},
    extra=("scale_reset",),
    summary="h = LIF charge; hk = relu(k h); reset hk (or hk / k against v_threshold / k)",
    source="SpikingJelly 2.0 KLIFNode",
    framework=FRAMEWORK,
)
def klif(n: NeuronBuilder) -> None:
    """h = the LIF charge (decay_input or not); hk = relu(k * h); s = H(hk - v_threshold)
    scale_reset=0: SpikingJelly's reset of hk
    scale_reset=1: u = hk / k; hard: s * vr + (1.0 - s) * u; soft: u - s * (1/k * v_threshold)"""
    kp = n.param("k", None)
    k = n.quantity("k", kp)
    hk = n.name("hk", E.relu(k * lif_charge(n)))
    scale = n.extra("scale_reset", 0.0)
    if scale not in (0.0, 1.0):
        raise UnsupportedError(
            f"neuron charge form 'sj_klif' needs extra['scale_reset'] 1.0 or 0.0, got {scale!r}"
        )
    if not scale:
        fire_and_reset(n, hk)
        return
    spec = n.spec
    th = n.require("v_threshold")
    s = n.name("s", n.spike(hk - th))
    sr = E.detach(s) if spec.detach_reset else s
    u = n.name("u", hk / k)
    if spec.reset == "subtract":
        v = u - sr * n.quantity("thk", th / kp)
    elif spec.reset == "hard":
        v = sr * n.require("v_reset") + (1.0 - sr) * u
    else:
        v = u
    n.set_state("v", v)
    n.output("spike", s)
    n.output("membrane", v)
