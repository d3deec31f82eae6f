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
    decay ``sigmoid(w)``), ``"li"`` (non-spiking leaky integrator readout),
    ``"leaky"``, ``"synaptic"``, ``"rleaky"`` (snnTorch), ``"norse_lif"``,
    ``"norse_lifbox"``, ``"norse_li"`` (Norse), ``"qif"``, ``"eif"``,
    ``"izhikevich"``, ``"klif"``, ``"cuba_lif"``, ``"liaf"`` (SpikingJelly 2.0's
    other families). Informational: the arithmetic is named by ``charge``.
charge
    The form: the whole per-step arithmetic, named after its source. Each form
    is defined once in :mod:`snncc.ir.neurons` (state variables, input ports,
    parameter roles, constants, and the step as an expression graph in the
    source's operation order); every backend lowers that definition.
    :data:`FORMS` lists their interfaces, :data:`CHARGE_FORMS` one-line summaries.
tau, decay_input, v_threshold, v_reset
    SpikingJelly-style constants (tau in steps). ``v_reset`` is the hard-reset
    value, or None for a soft reset; ``v_reset`` None still charges toward 0.
    A form that reads the threshold (or v_reset) from a node param
    (role ``"threshold"`` / ``"v_reset"``) uses the param when the node has
    it; ``v_threshold`` then only records the value at trace time (NaN for a
    per-neuron tensor) for the printer.
reset
    ``"hard"`` (to ``v_reset``), ``"subtract"`` (minus the threshold) or ``"none"``.
    snnTorch's ``reset_mechanism="zero"`` is ``"hard"`` with ``v_reset=0``
    (its own arithmetic, see :data:`FORMS`).
detach_reset
    The spike used by the reset is detached from autograd (backward only).
reset_delay
    snnTorch forms only: ``reset_delay=True`` (the default there) applies the
    reset at the next step; False adds snnTorch's immediate correction
    ``d = s / g - r``. Every snnTorch form computes its reset ``r`` from the
    *previous* membrane. Must be False for every other form.
fire_cmp
    ``">="`` (SpikingJelly: ``h - th >= 0``) or ``">"`` (snnTorch, Norse).
fire_from
    ``"updated"`` (spike from this step's charged membrane) or ``"previous"``.
    Every form here fires from the updated membrane (snnTorch's *reset*
    reads the previous one; that is part of the snnTorch forms).
output
    ``"spike"``, ``"membrane"`` (state ``v`` after the step), ``"current"``
    (state ``i`` after the step, for forms that have one) or ``"activation"``
    (an analog value computed from the charged membrane, for forms that define
    one: SpikingJelly's LIAF). Only ``"spike"`` is binary: no backend packs or
    stores the others as 0/1 (uint8 kernels refuse them). A source module
    that returns several of them becomes one node per returned value, each
    with its own copy of the state (same inputs, identical arithmetic).
surrogate, alpha
    The surrogate gradient's name and sharpness (see :data:`SURROGATES`).
surrogate_params
    The surrogate's parameters beyond alpha, by name (SpikingJelly's
    PiecewiseLeakyReLU ``c``, S2NN ``beta``...); empty for the surrogates that
    have none, and defaults fill what is not given. Omitted from
    :meth:`NeuronSpec.to_dict` when empty.
v_init
    The membrane at t = -1 (SpikingJelly: v_reset, or 0 for a soft reset;
    snnTorch: 0; Norse: v_leak). Every other state variable starts at 0.
learnable
    Param roles of the node that are trained (e.g. ``("w",)`` for PLIF).
param_roles
    Every param role the node has (learnable or not, e.g. snnTorch's
    ``beta`` buffer); a learnable role is listed in both. Empty in specs
    written before this field existed (SpikingJelly PLIF lists ``"w"`` in
    ``learnable`` only): :attr:`NeuronSpec.roles` is the union.
extra
    Framework-specific constants (Norse ``dt``, ``dt_tau_mem_inv``, ...; see
    :data:`FORMS`). JSON-serialisable scalars.

Constants and params
--------------------
A form constant with a param role (snnTorch ``beta``, ``threshold``,
Norse ``tau_mem_inv``, ...) is read from the node's param with that role when
the node has it (``params[role]``: learnable, a buffer, or per neuron, shape
broadcasting against ``[B, ...]``), else from the spec constant named in
:data:`FORMS`. Python-float constants are the exact values the source used:
a float32 value widened to a double, or (Norse with Python-float parameters)
a double that torch rounds to float32 when it meets a float32 tensor. Both
behave like torch's ``python_scalar * tensor`` (the scalar is cast to the
tensor's dtype, then one multiplication), which is the rule every backend
must follow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from snncc.errors import IRError
from snncc.ir.neurons.base import OUTPUT_KINDS, FormDef
from snncc.ir.neurons.base import REGISTRY as _REGISTRY
from snncc.ir.neurons.base import get_form as _get_form
from snncc.ir.surrogates import DEFAULT_ALPHA

MODELS = (
    "if",
    "lif",
    "plif",
    "li",
    "leaky",
    "synaptic",
    "rleaky",
    "norse_lif",
    "norse_lifbox",
    "norse_li",
    "qif",
    "eif",
    "izhikevich",
    "klif",
    "cuba_lif",
    "liaf",
)


# Every form is defined once, in snncc.ir.neurons (one module per framework / family):
# its state variables, ports, param roles, constants and the step as an expression graph.
# These tables are views of that registry.
_get_form("sj_if")  # imports snncc.ir.neurons: every form registers itself

#: charge form -> its :class:`FormDef` (interface, equations, source)
FORMS: dict[str, FormDef] = {name: f.info for name, f in _REGISTRY.items()}
#: charge form -> its one-line summary (the exact step is its definition)
CHARGE_FORMS: dict[str, str] = {name: f.summary for name, f in FORMS.items()}


def _framework(name: str) -> tuple[str, ...]:
    return tuple(n for n, f in FORMS.items() if f.framework == name)


SPIKINGJELLY_FORMS = _framework("spikingjelly")
SNNTORCH_FORMS = _framework("snntorch")
NORSE_FORMS = _framework("norse")

#: surrogate name -> default alpha (the definitions: snncc.ir.surrogates)
SURROGATES: dict[str, float] = dict(DEFAULT_ALPHA)

RESETS = ("hard", "subtract", "none")
OUTPUTS = OUTPUT_KINDS


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
    reset_delay: bool = False
    param_roles: tuple[str, ...] = ()
    #: the step of a neuron traced from its own code (charge ``"traced"``): its states,
    #: parameters and expression graph (:mod:`snncc.ir.neurons.traced`); None otherwise
    program: dict[str, Any] | None = None
    surrogate_params: dict[str, float] = field(default_factory=dict)

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
        if self.output not in OUTPUTS:
            raise IRError(f"neuron output {self.output!r} is not one of {OUTPUTS}")
        if self.reset == "hard" and self.v_reset is None:
            raise IRError("a hard reset needs v_reset")
        if (self.charge == "traced") != (self.program is not None):
            raise IRError(
                "a traced neuron (charge 'traced') needs its program, and only it has one"
            )
        if self.program is not None and not isinstance(self.program, dict):
            raise IRError(
                f"neuron program must be a JSON object, got {type(self.program).__name__}"
            )
        form = FORMS.get(self.charge)
        if self.reset_delay and self.charge not in SNNTORCH_FORMS:
            raise IRError(
                f"neuron reset_delay=True is an snnTorch option; charge form {self.charge!r} "
                f"does not have it (snnTorch forms: {', '.join(SNNTORCH_FORMS)})"
            )
        if self.output == "current" and (form is None or "i" not in form.state):
            raise IRError(
                f"neuron output 'current' needs a form with a synaptic current state 'i'; "
                f"{self.charge!r} has none"
            )
        missing = [r for r in self.learnable if r not in self.param_roles]
        if self.param_roles and missing:
            raise IRError(f"learnable roles {missing} are not listed in param_roles")
        self._check_finite()

    def _check_finite(self) -> None:
        """Every constant the arithmetic reads is a finite number (a NaN threshold never fires:
        it would run and give all-zero spikes). A constant that a node param replaces, or
        that nothing reads, may hold NaN as a placeholder (the frontends write NaN for a
        per-neuron threshold)."""
        roles = set(self.roles)
        numbers: dict[str, Any] = {"alpha": self.alpha, "v_init": self.v_init}
        if self.tau is not None:
            numbers["tau"] = self.tau
        fires_or_resets = self.output == "spike" or self.reset != "none"
        if "threshold" not in roles and fires_or_resets:
            numbers["v_threshold"] = self.v_threshold
        if self.v_reset is not None and "v_reset" not in roles:
            numbers["v_reset"] = self.v_reset
        for key, value in sorted(self.surrogate_params.items()):
            numbers[f"surrogate_params[{key!r}]"] = value
        for key, value in sorted(self.extra.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[f"extra[{key!r}]"] = value
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise IRError(f"neuron {name} is {value!r}, not a number")
            if not math.isfinite(value):
                raise IRError(
                    f"neuron {name} is {value!r}; neuron constants must be finite numbers "
                    "(a NaN or infinite constant would run and silently give wrong spikes)"
                )

    @property
    def spiking(self) -> bool:
        return self.output == "spike"

    @property
    def form(self) -> FormDef | None:
        """The :class:`FormDef` of ``charge`` for this spec (None for an unknown form).

        A traced neuron's interface is its own (its program's states and params), so it
        comes from the spec, as the kernels read it: a carried state of a traced neuron
        with two memories holds both, and ``cm.run(x, state)`` takes back what it returned.
        """
        f = _REGISTRY.get(self.charge)
        return f.info_for(self) if f is not None else None

    @property
    def state_vars(self) -> tuple[str, ...]:
        """The state variables of one node (``("v",)`` for an unknown form)."""
        f = self.form
        return f.state if f is not None else ("v",)

    @property
    def input_ports(self) -> tuple[str, ...]:
        """The form's own input ports; fused prologue/epilogue ports come after these."""
        f = self.form
        return f.ports if f is not None else ("x",)

    @property
    def roles(self) -> tuple[str, ...]:
        """Every param role the node reads: ``param_roles`` plus ``learnable``, in order."""
        return tuple(dict.fromkeys((*self.param_roles, *self.learnable)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["learnable"] = list(self.learnable)
        d["param_roles"] = list(self.param_roles)
        if d["program"] is None:
            del d["program"]  # only traced neurons carry one
        if not self.surrogate_params:
            del d["surrogate_params"]  # specs without them read as before
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeuronSpec:
        d = dict(d)
        d["learnable"] = tuple(d.get("learnable", ()))
        d["param_roles"] = tuple(d.get("param_roles", ()))
        d["extra"] = dict(d.get("extra", {}))
        d["surrogate_params"] = dict(d.get("surrogate_params", {}))
        return cls(**d)

    def replace(self, **changes: Any) -> NeuronSpec:
        return replace(self, **changes)

    def summary(self) -> str:
        """The short form the printer shows, e.g. ``lif sj_lif_decay_input tau=2 th=1 hard(0)``."""
        if self.program is not None:
            states = ",".join(str(v) for v in self.program.get("states", []))
            return f"{self.model} traced states=({states}) out={self.output}"
        parts = [self.model, self.charge]
        if self.tau is not None:
            parts.append(f"tau={self.tau:g}")
        if "threshold" in self.param_roles:
            parts.append("th=@threshold")
        elif not math.isnan(self.v_threshold):
            parts.append(f"th={self.v_threshold:g}")
        if self.reset == "hard":
            parts.append(f"hard({self.v_reset:g})")
        else:
            parts.append(self.reset)
        if self.detach_reset:
            parts.append("detach")
        if self.reset_delay:
            parts.append("reset_delay")
        if self.fire_cmp != ">=":
            parts.append(f"fire{self.fire_cmp}")
        if self.fire_from != "updated":
            parts.append("fire_prev")
        if self.output != "spike":
            parts.append({"membrane": "out=v", "current": "out=i"}.get(self.output, "out=act"))
        sp = "".join(f", {k}={v:g}" for k, v in sorted(self.surrogate_params.items()))
        parts.append(f"{self.surrogate}({self.alpha:g}{sp})")
        parts.extend(f"{k}={v}" for k, v in sorted(self.extra.items()))
        return " ".join(parts)
