"""SpikingJelly 2.0 ``LIAFNode``: a LIF whose output is an analog activation, not the spike.

Read from ``functional.liaf_step`` (``LIAFNode.single_step_functional_forward``):
the LIF charge (``_ops/lif/reference.charge``), the output
``act(h - v_threshold)`` (``threshold_related``) or ``act(h)``, and the LIF's
own spike and reset, which only drive the membrane. One form per activation
SpikingJelly users pass (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``,
``nn.Identity`` and their functions); ``extra['threshold_related']`` is 1.0
or 0.0 and ``spec.decay_input`` picks the charge. The output kind is
``"activation"`` (real-valued: never packed as 0/1 spikes).

Note: in step mode 'm' SpikingJelly 2.0's ``LIAFNode`` does not run this step
(``LIFNode``'s multi-step path returns the LIF's spikes); the frontend maps that
case to the LIF form.
"""

from __future__ import annotations

from collections.abc import Callable

from snncc.errors import UnsupportedError
from snncc.ir import expr as E
from snncc.ir.expr import Operand, Val
from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.spikingjelly import fire_and_reset, reset_potential

FRAMEWORK = "spikingjelly_families"

#: LIAF activation -> its expression (the output is act(u))
ACTIVATIONS: dict[str, Callable[[Val], Operand]] = {
    "relu": E.relu,
    "sigmoid": E.sigmoid,
    "tanh": E.tanh,
    "identity": lambda u: u,
}


def lif_charge(n: NeuronBuilder) -> Val:
    """SpikingJelly's LIF charge with ``spec.decay_input`` (``_ops/lif/reference.charge``):
    ``v + (x - (v - vr)) / tau`` or ``v - (v - vr) / tau + x``."""
    v, x, tau, vr = n.state("v"), n.port("x"), n.require("tau"), reset_potential(n)
    h = v + (x - (v - vr)) / tau if n.spec.decay_input else v - (v - vr) / tau + x
    return n.name("h", h)


def _liaf(act: str) -> Callable[[NeuronBuilder], None]:
    def liaf(n: NeuronBuilder) -> None:
        h = lif_charge(n)
        related = n.extra("threshold_related")
        if related not in (0.0, 1.0):
            raise UnsupportedError(
                f"neuron charge form {n.form.name!r} needs extra['threshold_related'] "
                f"1.0 or 0.0, got {related!r}"
            )
        u = h - n.require("v_threshold") if related else h
        n.output("activation", n.name("y", ACTIVATIONS[act](u)))
        fire_and_reset(n, h)

    liaf.__doc__ = (
        f"h = the LIF charge; y = {act}(h - v_threshold) (threshold_related) or {act}(h);\n"
        "the spike and reset of h update the membrane; the output is y"
    )
    return liaf


for _act in ACTIVATIONS:
    form(
        f"sj_liaf_{_act}",
        extra=("threshold_related",),
        summary=f"h = LIF charge; out = {_act}(h - v_threshold | h); v = reset(h)",
        source=f"SpikingJelly 2.0 LIAFNode(act={_act})",
        framework=FRAMEWORK,
    )(_liaf(_act))
