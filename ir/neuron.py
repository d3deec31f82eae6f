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
    ``"norse_lifbox"``, ``"norse_li"`` (Norse). Informational: the arithmetic
    is named by ``charge``.
charge
    The form: the whole per-step arithmetic, named after its source so that
    each backend renders the same operation order. :data:`FORMS` defines
    every form exactly (state variables, input ports, parameter roles and the
    step, operation by operation); :data:`CHARGE_FORMS` is its one-line summary.
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
    ``"spike"``, ``"membrane"`` (state ``v`` after the step) or ``"current"``
    (state ``i`` after the step, for forms that have one). A source module
    that returns several of them becomes one node per returned value, each
    with its own copy of the state (same inputs, identical arithmetic).
surrogate, alpha
    The surrogate gradient's name and sharpness (see :data:`SURROGATES`).
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
)


@dataclass(frozen=True)
class FormDef:
    """One charge form: what a node of it holds and computes, exactly.

    ``state``: state variables (``v`` starts at ``spec.v_init``, the rest at
    0). ``ports``: input ports (port 0 is always the input current ``x``;
    fused prologue/epilogue ``add`` ports come after these). ``roles``: the
    param roles it may read, each with the constant it falls back to
    (``constants``: role -> spec field or ``extra[...]`` key and default).
    ``step``: the exact per-step arithmetic; ``H(u)`` is the spike function
    (``u >= 0`` or ``u > 0`` per ``fire_cmp``, surrogate gradient), every
    binary operation is one float operation in the tensor dtype, evaluated in
    the order the parentheses show.
    """

    summary: str
    state: tuple[str, ...]
    ports: tuple[str, ...]
    roles: tuple[str, ...]
    constants: dict[str, str]
    step: str
    source: str


_SJ_STEP = """
fire:  s = H(h - v_threshold)
reset (s detached first when detach_reset):
  hard:     v = s * v_reset + (1.0 - s) * h
  subtract: v = h - s * v_threshold
  none:     v = h
output: s (spike) or v (membrane); li with reset none outputs h
"""

_SNNTORCH_COMMON = """
  b = beta.clamp(0, 1); th = threshold; g = graded_spikes_factor
  r = (m - th > 0) as float32, detached        # from the PREVIOUS membrane m
  ...charge and reset as below...
  s = H(m1 - th) * g                           # H: '>' with the surrogate
  if not reset_delay:                          # snnTorch's immediate correction
      d = s / g - r                            # NOT detached
      subtract: m1 = m1 - d * th
      hard (snnTorch 'zero'): m1 = m1 - d * m1
      none: unchanged
  state v = m1; output s, or m1 (membrane)
"""

FORMS: dict[str, FormDef] = {
    "sj_if": FormDef(
        "h = v + x", ("v",), ("x",), (), {}, "h = v + x" + _SJ_STEP, "SpikingJelly 2.0 IFNode"
    ),
    "sj_lif_decay_input": FormDef(
        "h = v + (x - (v - vr)) / tau",
        ("v",),
        ("x",),
        (),
        {},
        "vr = v_reset or 0.0; h = v + (x - (v - vr)) / tau" + _SJ_STEP,
        "SpikingJelly 2.0 LIFNode(decay_input=True)",
    ),
    "sj_lif": FormDef(
        "h = v - (v - vr) / tau + x",
        ("v",),
        ("x",),
        (),
        {},
        "vr = v_reset or 0.0; h = (v - (v - vr) / tau) + x" + _SJ_STEP,
        "SpikingJelly 2.0 LIFNode(decay_input=False)",
    ),
    "sj_plif_decay_input": FormDef(
        "h = v + (x - (v - vr)) * k",
        ("v",),
        ("x",),
        ("w",),
        {},
        "k = sigmoid(w) once per sequence; h = v + (x - (v - vr)) * k" + _SJ_STEP,
        "SpikingJelly 2.0 ParametricLIFNode(decay_input=True)",
    ),
    "sj_plif": FormDef(
        "h = v - (v - vr) * k + x",
        ("v",),
        ("x",),
        ("w",),
        {},
        "k = sigmoid(w) once per sequence; h = (v - (v - vr) * k) + x" + _SJ_STEP,
        "SpikingJelly 2.0 ParametricLIFNode(decay_input=False)",
    ),
    "snncc_li": FormDef(
        "h = v + (x - v) / tau",
        ("v",),
        ("x",),
        (),
        {},
        "h = v + (x - v) / tau" + _SJ_STEP,
        "SpikingJelly 2.0 NonSpikingLIFNode / snncc.nn.LI",
    ),
    "snntorch_leaky": FormDef(
        "m1 = b*m + x - r*th | b*((1-r)*m) + x | b*m + x; r = H(m_prev - th) detached",
        ("v",),
        ("x",),
        ("beta", "threshold", "graded_spikes_factor"),
        {
            "beta": "extra['beta']",
            "threshold": "v_threshold",
            "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
        },
        """
  subtract: m1 = ((b * m) + x) - (r * th)
  hard:     m1 = (b * ((1 - r) * m)) + x    # snnTorch 'zero': old mem zeroed BEFORE the decay
  none:     m1 = (b * m) + x"""
        + _SNNTORCH_COMMON,
        "snnTorch 1.0 Leaky",
    ),
    "snntorch_synaptic": FormDef(
        "i1 = a*i + x; m1 = b*m + i1 - reset; r = H(m_prev - th) detached",
        ("v", "i"),
        ("x",),
        ("alpha", "beta", "threshold", "graded_spikes_factor"),
        {
            "alpha": "extra['alpha'] (the synaptic decay; spec.alpha is the surrogate's)",
            "beta": "extra['beta']",
            "threshold": "v_threshold",
            "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
        },
        """
  a = alpha.clamp(0, 1)
  i1 = (a * i) + x                      # the NEW current feeds the membrane
  m1 = (b * m) + i1
  subtract: m1 = m1 - (r * th)
  hard:     m1 = m1 - (m1 * r)          # snnTorch 'zero': the whole new value; i is not reset
  none:     (nothing)"""
        + _SNNTORCH_COMMON
        + "  state i = i1; output 'current' is i1\n",
        "snnTorch 1.0 Synaptic",
    ),
    "snntorch_rleaky": FormDef(
        "m1 = (b*m + x) + rec - reset; rec = recurrent(S[t-1]) at port 1",
        ("v",),
        ("x", "rec"),
        ("beta", "threshold", "graded_spikes_factor"),
        {
            "beta": "extra['beta']",
            "threshold": "v_threshold",
            "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
        },
        """
  rec = port 1: recurrent(s[t-1]) computed by the graph (a Linear/Conv2d node fed
        by this neuron's spike through a delay-1 edge: zeros at t = 0, so a bias
        still arrives at t = 0)
  base = ((b * m) + x) + rec
  subtract: m1 = base - (r * th)
  hard:     m1 = base - (r * base)      # snnTorch 'zero': the whole new value
  none:     m1 = base"""
        + _SNNTORCH_COMMON,
        "snnTorch 1.0 RLeaky(all_to_all=True)",
    ),
    "snntorch_rleaky_v": FormDef(
        "m1 = (b*m + x) + s_prev*V - reset",
        ("v", "s"),
        ("x",),
        ("beta", "threshold", "graded_spikes_factor", "V"),
        {
            "beta": "extra['beta']",
            "threshold": "v_threshold",
            "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
            "V": "extra['V']",
        },
        """
  s_prev = state s (the spike this neuron returned at t-1; 0 at t = 0)
  base = ((b * m) + x) + (s_prev * V)
  subtract / hard / none: as snntorch_rleaky"""
        + _SNNTORCH_COMMON
        + "  state s = the returned spike s\n",
        "snnTorch 1.0 RLeaky(all_to_all=False): one-to-one weight V",
    ),
    "norse_lif": FormDef(
        "i1 = i + x; v1 = v + c_m*((v_leak - v) + i1); i = i1 + c_s*i1",
        ("v", "i"),
        ("x",),
        ("tau_mem_inv", "tau_syn_inv", "threshold", "v_reset"),
        {
            "tau_mem_inv": "c_m = extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)",
            "tau_syn_inv": "c_s = extra['neg_dt_tau_syn_inv'] (param: (-dt) * tau_syn_inv)",
            "threshold": "v_threshold",
            "v_reset": "v_reset",
        },
        """
  i1 = i + x                                   # the input jumps into the current first
  v1 = v + (c_m * ((v_leak - v) + i1))         # v_leak = extra['v_leak']
  i2 = i1 + (c_s * i1)
  z  = H(v1 - th)
  v2 = ((1 - z) * v1) + (z * v_reset)          # z detached first when detach_reset
  state v = v2, i = i2; output z, v2 (membrane) or i2 (current)""",
        "Norse 1.1 lif_feed_forward_step (LIFCell, LIF)",
    ),
    "norse_lif_recurrent": FormDef(
        "i1 = (i + x) + rec; then as norse_lif (reset detached)",
        ("v", "i"),
        ("x", "rec"),
        ("tau_mem_inv", "tau_syn_inv", "threshold", "v_reset"),
        {
            "tau_mem_inv": "c_m = extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)",
            "tau_syn_inv": "c_s = extra['neg_dt_tau_syn_inv'] (param: (-dt) * tau_syn_inv)",
            "threshold": "v_threshold",
            "v_reset": "v_reset",
        },
        """
  x   = port 0: F.linear(input, input_weights) (a linear node without bias)
  rec = port 1: F.linear(z[t-1], recurrent_weights) (a linear node fed by this
        neuron's spike through a delay-1 edge)
  i1 = (i + x) + rec
  then exactly norse_lif from v1 on (Norse detaches z in this reset: detach_reset=True)""",
        "Norse 1.1 lif_step (LIFRecurrentCell)",
    ),
    "norse_lifbox": FormDef(
        "v1 = v + c_m*((x + v_leak) - v); reset",
        ("v",),
        ("x",),
        ("tau_mem_inv", "threshold", "v_reset"),
        {
            "tau_mem_inv": "c_m = extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)",
            "threshold": "v_threshold",
            "v_reset": "v_reset",
        },
        """
  v1 = v + (c_m * ((x + v_leak) - v))          # note the order: (x + v_leak) - v
  z  = H(v1 - th)
  hard (reset_value):        v2 = ((1 - z) * v1) + (z * v_reset)
  subtract (reset_subtract): v2 = ((1 - z) * v1) + (z * (v1 - th))
  state v = v2; output z or v2""",
        "Norse 1.1 lif_box_feed_forward_step (LIFBoxCell)",
    ),
    "norse_li": FormDef(
        "i1 = i + x; v1 = v + c_m*((v_leak - v) + i1); i = i1 + c_s*i1; out v1",
        ("v", "i"),
        ("x",),
        ("tau_mem_inv", "tau_syn_inv"),
        {
            "tau_mem_inv": "c_m = extra['dt_tau_mem_inv'] (param: dt * tau_mem_inv)",
            "tau_syn_inv": "c_s = extra['neg_dt_tau_syn_inv'] (param: (-dt) * tau_syn_inv)",
        },
        """
  i1 = i + x
  v1 = v + (c_m * ((v_leak - v) + i1))
  i2 = i1 + (c_s * i1)
  state v = v1, i = i2; output v1 (membrane; reset 'none', no spikes) or i2 (current)""",
        "Norse 1.1 li_feed_forward_step (LICell, LI)",
    ),
}

#: charge form -> its one-line summary (operation order is part of the form; the
#: exact step is FORMS[name].step)
CHARGE_FORMS: dict[str, str] = {name: f.summary for name, f in FORMS.items()}

SPIKINGJELLY_FORMS = (
    "sj_if",
    "sj_lif_decay_input",
    "sj_lif",
    "sj_plif_decay_input",
    "sj_plif",
    "snncc_li",
)
SNNTORCH_FORMS = ("snntorch_leaky", "snntorch_synaptic", "snntorch_rleaky", "snntorch_rleaky_v")
NORSE_FORMS = ("norse_lif", "norse_lif_recurrent", "norse_lifbox", "norse_li")

#: surrogate name -> default alpha, for every surrogate snncc.surrogate implements
#: (tests check the two agree). Forward is always the Heaviside step.
SURROGATES = {
    "sigmoid": 4.0,  # g'(x) = alpha * sig(alpha x) * (1 - sig(alpha x))  (SpikingJelly)
    "atan": 2.0,  # g'(x) = alpha / 2 / (1 + (pi/2 * alpha * x)^2)  (SpikingJelly = snnTorch)
    "piecewise_quadratic": 1.0,
    "piecewise_exp": 1.0,
    "soft_sign": 2.0,
    "sj_superspike": 1.0,
    "erf": 2.0,
    "rect": 1.0,
    "fast_sigmoid": 25.0,  # snnTorch fast_sigmoid(slope)
    "snntorch_sigmoid": 25.0,  # snnTorch sigmoid(slope)
    "straight_through": 1.0,  # snnTorch straight_through_estimator (alpha unused)
    "snntorch_heaviside": 1.0,  # snnTorch heaviside(): g * spike (alpha unused)
    "snntorch_triangular": 1.0,  # snnTorch triangular(threshold)
    "superspike": 100.0,  # Norse SuperSpike (alpha unused by Norse 1.1)
    "triangle": 0.3,  # Norse triangle
    "norse_tanh": 100.0,  # Norse HeaviTanh
    "no_grad": 1.0,  # no gradient (snnTorch surrogate_disable, Norse method='heaviside')
}

RESETS = ("hard", "subtract", "none")
OUTPUTS = ("spike", "membrane", "current")


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
        if "threshold" not in roles and fires_or_resets and self.charge != "norse_li":
            numbers["v_threshold"] = self.v_threshold
        if self.v_reset is not None and "v_reset" not in roles:
            numbers["v_reset"] = self.v_reset
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
        """The :class:`FormDef` of ``charge`` (None for an unknown form)."""
        return FORMS.get(self.charge)

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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeuronSpec:
        d = dict(d)
        d["learnable"] = tuple(d.get("learnable", ()))
        d["param_roles"] = tuple(d.get("param_roles", ()))
        d["extra"] = dict(d.get("extra", {}))
        return cls(**d)

    def replace(self, **changes: Any) -> NeuronSpec:
        return replace(self, **changes)

    def summary(self) -> str:
        """The short form the printer shows, e.g. ``lif sj_lif_decay_input tau=2 th=1 hard(0)``."""
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
            parts.append("out=v" if self.output == "membrane" else "out=i")
        parts.append(f"{self.surrogate}({self.alpha:g})")
        parts.extend(f"{k}={v}" for k, v in sorted(self.extra.items()))
        return " ".join(parts)
