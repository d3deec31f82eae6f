"""Neuron semantics as data.

Every neuron in the IR is one op, ``neuron``, whose ``attrs["neuron"]`` is a
:class:`NeuronSpec` serialised with :meth:`NeuronSpec.to_dict`. The spec says
exactly which arithmetic to run, because details that look cosmetic (``>=``
vs ``>``, the order of the charge's operations, whether reset uses the
updated or the previous membrane) decide whether spikes match the source
framework bit for bit. ``shared/reference/neuron-semantics.md`` lists each
framework's rules; the equivalence tests against the real packages decide.

Fields
------
model
    The dynamics family: ``"if"``, ``"lif"``, ``"plif"`` (LIF with a learnable
    decay ``sigmoid(w)``), ``"li"`` (non-spiking leaky integrator readout).
    Later frontends add ``"leaky"``, ``"synaptic"`` (snnTorch) and
    ``"norse_lif"``, ``"norse_lifbox"``, ``"norse_li"`` (Norse).
charge
    The arithmetic form of the charge, named after its source so that each
    backend renders the same operation order (see :data:`CHARGE_FORMS`).
tau, decay_input, v_threshold, v_reset
    SpikingJelly-style constants (tau in steps). ``v_reset`` is the hard-reset
    value, or None for a soft reset; ``v_reset`` None still charges toward 0.
reset
    ``"hard"`` (to ``v_reset``), ``"subtract"`` (minus the threshold) or ``"none"``.
detach_reset
    The spike used by the reset is detached from autograd (backward only).
fire_cmp
    ``">="`` (SpikingJelly: ``h - th >= 0``) or ``">"`` (snnTorch, Norse).
fire_from
    ``"updated"`` (spike from this step's charged membrane) or ``"previous"``.
output
    ``"spike"`` or ``"membrane"`` (non-spiking readouts).
surrogate, alpha
    The surrogate gradient's name and sharpness (see :data:`SURROGATES`).
v_init
    The membrane at t = -1 (SpikingJelly: v_reset, or 0 for a soft reset).
learnable
    Param roles of the node that are trained (e.g. ``("w",)`` for PLIF).
extra
    Framework-specific constants (snnTorch beta, graded spike factor; Norse
    dt, tau_mem_inv, tau_syn_inv, v_leak; ...). JSON-serialisable scalars.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from snncc.errors import IRError

MODELS = ("if", "lif", "plif", "li")

#: charge forms and the per-step update each names (x: input, v: membrane at t-1,
#: vr: v_reset or 0, k = sigmoid(w) for plif). Operation order is part of the form.
CHARGE_FORMS = {
    "sj_if": "h = v + x",
    "sj_lif_decay_input": "h = v + (x - (v - vr)) / tau",
    "sj_lif": "h = v - (v - vr) / tau + x",
    "sj_plif_decay_input": "h = v + (x - (v - vr)) * k",
    "sj_plif": "h = v - (v - vr) * k + x",
    "snncc_li": "h = v + (x - v) / tau",
}

#: surrogate name -> default alpha. Forward is always the Heaviside step.
SURROGATES = {
    "sigmoid": 4.0,  # g'(x) = alpha * sig(alpha x) * (1 - sig(alpha x))
    "atan": 2.0,  # g'(x) = alpha / 2 / (1 + (pi/2 * alpha * x)^2)
}

RESETS = ("hard", "subtract", "none")


@dataclass(frozen=True)
class NeuronSpec:
    """The complete, backend-independent description of one neuron layer's maths."""

    model: str
    charge: str
    tau: float | None = None
    decay_input: bool = True
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    reset: str = "hard"
    detach_reset: bool = False
    fire_cmp: str = ">="
    fire_from: str = "updated"
    output: str = "spike"
    surrogate: str = "sigmoid"
    alpha: float = 4.0
    v_init: float = 0.0
    learnable: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise IRError naming the field when the spec is not one snncc can run."""
        if self.reset not in RESETS:
            raise IRError(f"neuron reset {self.reset!r} is not one of {RESETS}")
        if self.fire_cmp not in (">=", ">"):
            raise IRError(f"neuron fire_cmp {self.fire_cmp!r} is not '>=' or '>'")
        if self.fire_from not in ("updated", "previous"):
            raise IRError(f"neuron fire_from {self.fire_from!r} is not 'updated' or 'previous'")
        if self.output not in ("spike", "membrane"):
            raise IRError(f"neuron output {self.output!r} is not 'spike' or 'membrane'")
        if self.reset == "hard" and self.v_reset is None:
            raise IRError("a hard reset needs v_reset")

    @property
    def spiking(self) -> bool:
        return self.output == "spike"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["learnable"] = list(self.learnable)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeuronSpec:
        d = dict(d)
        d["learnable"] = tuple(d.get("learnable", ()))
        d["extra"] = dict(d.get("extra", {}))
        return cls(**d)

    def replace(self, **changes: Any) -> NeuronSpec:
        return replace(self, **changes)

    def summary(self) -> str:
        """The short form the printer shows, e.g. ``lif sj_lif_decay_input tau=2 th=1 hard(0)``."""
        parts = [self.model, self.charge]
        if self.tau is not None:
            parts.append(f"tau={self.tau:g}")
        parts.append(f"th={self.v_threshold:g}")
        if self.reset == "hard":
            parts.append(f"hard({self.v_reset:g})")
        else:
            parts.append(self.reset)
        if self.detach_reset:
            parts.append("detach")
        if self.fire_cmp != ">=":
            parts.append(f"fire{self.fire_cmp}")
        if self.fire_from != "updated":
            parts.append("fire_prev")
        if not self.spiking:
            parts.append("out=v")
        parts.append(f"{self.surrogate}({self.alpha:g})")
        parts.extend(f"{k}={v}" for k, v in sorted(self.extra.items()))
        return " ".join(parts)
