"""SpikingJelly 2.0 neurons (``spikingjelly.activation_based.neuron``), and snncc.nn's LI.

Read from ``spikingjelly/_ops/<neuron>/reference.py`` (the CPU and AutogradCPU
kernels of ``torch.ops.sj_{if,lif,plif}.forward``): per step, charge ``h``,
then ``spike = surrogate(h - v_threshold)`` (``>= 0``), then the reset of
``_ops/reset.py::voltage``. ``v_reset=None`` is a soft reset and the charge
still decays toward 0.
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.expr import Operand, Val
from snncc.ir.neurons.base import NeuronBuilder, form

FRAMEWORK = "spikingjelly"


def reset_potential(n: NeuronBuilder) -> float:
    """The potential the charge decays toward: ``v_reset``, or 0.0 for a soft reset."""
    return 0.0 if n.spec.v_reset is None else n.require("v_reset")


def fire_and_reset(n: NeuronBuilder, h: Operand) -> None:
    """SpikingJelly's fire and reset after the charge ``h`` (every SJ-style form shares them).

    - fire: ``s = heaviside(h - v_threshold)``
    - reset (``s`` detached first when detach_reset): hard
      ``v = s * v_reset + (1.0 - s) * h``; subtract ``v = h - s * v_threshold``;
      none ``v = h``
    - outputs: the spike ``s``, the membrane ``v`` (a non-spiking, non-resetting
      node never computes ``s``)
    """
    spec = n.spec
    if spec.reset == "none" and spec.output != "spike":
        n.set_state("v", h)
        n.output("membrane", h)
        return
    th = n.require("v_threshold")
    s = n.name("s", n.spike(h - th))
    if spec.reset == "none":
        v = h
    else:
        sr = E.detach(s) if spec.detach_reset else s
        if spec.reset == "subtract":
            v = h - sr * th
        else:
            v = sr * n.require("v_reset") + (1.0 - sr) * h
    n.set_state("v", v)
    n.output("spike", s)
    n.output("membrane", v)


@form(
    "sj_if",
    summary="h = v + x",
    source="SpikingJelly 2.0 IFNode",
    framework=FRAMEWORK,
    time_parallel="hard",
)
def integrate_and_fire(n: NeuronBuilder) -> None:
    """h = v + x; then fire and reset."""
    v, x = n.state("v"), n.port("x")
    fire_and_reset(n, n.name("h", v + x))


@form(
    "sj_lif_decay_input",
    summary="h = v + (x - (v - vr)) / tau",
    source="SpikingJelly 2.0 LIFNode(decay_input=True)",
    framework=FRAMEWORK,
    time_parallel="hard_or_leak",
)
def lif_decay_input(n: NeuronBuilder) -> None:
    """h = v + (x - (v - vr)) / tau  (vr = v_reset, or 0 for a soft reset); fire, reset."""
    v, x = n.state("v"), n.port("x")
    h = v + (x - (v - reset_potential(n))) / n.require("tau")
    fire_and_reset(n, n.name("h", h))


@form(
    "sj_lif",
    summary="h = v - (v - vr) / tau + x",
    source="SpikingJelly 2.0 LIFNode(decay_input=False)",
    framework=FRAMEWORK,
    time_parallel="hard_or_leak",
)
def lif(n: NeuronBuilder) -> None:
    """h = (v - (v - vr) / tau) + x; fire, reset."""
    v, x = n.state("v"), n.port("x")
    h = v - (v - reset_potential(n)) / n.require("tau") + x
    fire_and_reset(n, n.name("h", h))


def _plif_decay(n: NeuronBuilder) -> Val:
    """k = sigmoid(w), once per sequence (SpikingJelly's multi-step PLIF)."""
    w = n.param("w", None)
    return n.quantity("k", E.sigmoid(w))


@form(
    "sj_plif_decay_input",
    roles=("w",),
    constants={"w": "a node param: the learnable w, k = sigmoid(w)"},
    summary="h = v + (x - (v - vr)) * k",
    source="SpikingJelly 2.0 ParametricLIFNode(decay_input=True)",
    framework=FRAMEWORK,
    time_parallel="hard_or_leak",
)
def plif_decay_input(n: NeuronBuilder) -> None:
    """k = sigmoid(w) once per sequence; h = v + (x - (v - vr)) * k; fire, reset."""
    k = _plif_decay(n)
    v, x = n.state("v"), n.port("x")
    fire_and_reset(n, n.name("h", v + (x - (v - reset_potential(n))) * k))


@form(
    "sj_plif",
    roles=("w",),
    constants={"w": "a node param: the learnable w, k = sigmoid(w)"},
    summary="h = v - (v - vr) * k + x",
    source="SpikingJelly 2.0 ParametricLIFNode(decay_input=False)",
    framework=FRAMEWORK,
    time_parallel="hard_or_leak",
)
def plif(n: NeuronBuilder) -> None:
    """k = sigmoid(w) once per sequence; h = (v - (v - vr) * k) + x; fire, reset."""
    k = _plif_decay(n)
    v, x = n.state("v"), n.port("x")
    fire_and_reset(n, n.name("h", v - (v - reset_potential(n)) * k + x))


@form(
    "snncc_li",
    summary="h = v + (x - v) / tau",
    source="SpikingJelly 2.0 NonSpikingLIFNode / snncc.nn.LI",
    framework=FRAMEWORK,
    time_parallel="hard_or_leak",
)
def leaky_integrator(n: NeuronBuilder) -> None:
    """h = v + (x - v) / tau (a leaky integrator readout; with a reset it can fire too)."""
    v, x = n.state("v"), n.port("x")
    fire_and_reset(n, n.name("h", v + (x - v) / n.require("tau")))
