"""Converter for snncc's own neuron modules (:mod:`snncc.nn`).

They describe themselves (``.spec()`` returns the NeuronSpec), are time-major
(a model using them is multi-step, fed [T, B, ...]) and start from a fresh
state on every forward, so there is nothing to reset and nothing to guess.
``SeqToANN`` is a chain container whose children see the T*B-folded sequence.
"""

from __future__ import annotations

from torch import nn

from snncc.frontend.torch_nn import one_input
from snncc.frontend.tracer import (
    Call,
    Chain,
    Framework,
    register_container,
    register_framework,
    register_module,
)

try:
    from snncc import nn as snn
except ImportError:  # pragma: no cover - snncc.nn is part of the package
    snn = None


def _owns(m: nn.Module) -> bool:
    return type(m).__module__ == "snncc.nn"


def _chain(m: nn.Module) -> Chain | None:
    """``SeqToANN`` runs its children on the T*B-folded sequence (SpikingJelly's SeqToANNContainer)."""
    if type(m) is snn.SeqToANN:
        return Chain(view="flat", children=tuple(m.named_children()))
    return None


def _problem(m: nn.Module, view: str) -> str | None:
    if view != "sequence":
        return (
            "snncc.nn modules run the whole [T, B, ...] sequence themselves; they cannot sit "
            "inside a per-step or SeqToANN container or in a single-step model"
        )
    return None


def _neuron(call: Call, m: nn.Module) -> int:
    spec = m.spec()
    params = {role: call.param(m, role) for role in spec.learnable}
    return call.emit("neuron", [one_input(call)], attrs={"neuron": spec.to_dict()}, params=params)


if snn is not None:
    register_framework(
        Framework(
            name="snncc",
            owns=_owns,
            step_mode=lambda m: "m",
            chain=_chain,
            source="snncc",
            priority=1,
        )
    )
    for _cls in (snn.IF, snn.LIF, snn.ParametricLIF, snn.LI):
        register_module(_cls, f"snncc.nn.{_cls.__name__}", check=_problem)(_neuron)
    register_container(snn.SeqToANN, "snncc.nn.SeqToANN")
