"""snnTorch 1.0 neurons: Leaky, Synaptic, RLeaky (``snntorch._neurons``), read from their forward.

Every snnTorch form computes its reset ``r`` from the PREVIOUS membrane,
detached (``mem_reset``: ``(mem - threshold > 0).float()``), fires with ``>``
from the charged membrane, scales the spike by ``graded_spikes_factor``, and
with ``reset_delay=False`` applies snnTorch's immediate correction
``d = s / g - r`` (not detached). ``reset_mechanism="zero"`` is ``reset =
"hard"`` here (its own arithmetic below). Constants come from node params when
the node has the role (learnable, a buffer, or one value per neuron), else from
``spec.extra`` / ``spec.v_threshold``.
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.expr import Operand, Val
from snncc.ir.neurons.base import NeuronBuilder, form

FRAMEWORK = "snntorch"
_EXTRA = ("beta", "alpha", "graded_spikes_factor", "V")
_CONSTANTS = {
    "beta": "extra['beta']",
    "threshold": "v_threshold",
    "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
}


def _common(n: NeuronBuilder) -> tuple[Operand, Operand, Operand, Val]:
    """(b, th, g, r): ``beta.clamp(0, 1)``, the threshold, the graded factor, the reset."""
    b = n.quantity("b", E.clamp(n.param("beta", n.extra("beta")), 0.0, 1.0))
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    g = n.quantity("g", n.param("graded_spikes_factor", n.extra("graded_spikes_factor", 1.0)))
    m = n.state("v")
    r = n.name("r", m - th > 0.0)  # from the previous membrane; a comparison: no gradient
    return b, th, g, r


def _fire_and_correct(n: NeuronBuilder, m1: Operand, th: Operand, g: Operand, r: Val) -> Val:
    """``s = H(m1 - th) * g``; without reset_delay, ``m1 -= (s / g - r) * (th | m1)``.

    Sets the state ``v`` and the outputs ``spike`` / ``membrane``; returns the spike.
    """
    spec = n.spec
    s = n.name("s", n.spike(m1 - th) * g)
    if not spec.reset_delay:
        d = n.name("d", s / g - r)  # not detached: the gradient flows through s
        if spec.reset == "subtract":
            m1 = m1 - d * th
        elif spec.reset == "hard":
            m1 = m1 - d * m1
    n.name("mem", m1)
    n.set_state("v", m1)
    n.output("spike", s)
    n.output("membrane", m1)
    return s


def _reset_term(n: NeuronBuilder, base: Operand, th: Operand, r: Val, zero_first: bool) -> Operand:
    """The reset applied to the charged value ``base`` (subtract, 'zero', or none)."""
    if n.spec.reset == "subtract":
        return base - r * th
    if n.spec.reset == "hard":
        return base - (base * r if zero_first else r * base)
    return base


@form(
    "snntorch_leaky",
    roles=("beta", "threshold", "graded_spikes_factor"),
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="m1 = b*m + x - r*th | b*((1-r)*m) + x | b*m + x; r = H(m_prev - th) detached",
    source="snnTorch 1.0 Leaky",
    framework=FRAMEWORK,
)
def leaky(n: NeuronBuilder) -> None:
    """b = beta.clamp(0, 1); r = (m - th > 0), detached, from the previous membrane m
    subtract: m1 = ((b * m) + x) - (r * th)
    zero:     m1 = (b * ((1 - r) * m)) + x     (the old membrane zeroed BEFORE the decay)
    none:     m1 = (b * m) + x
    s = H(m1 - th) * g; reset_delay=False: m1 = m1 - (s / g - r) * (th | m1)"""
    b, th, g, r = _common(n)
    m, x = n.state("v"), n.port("x")
    if n.spec.reset == "subtract":
        m1 = b * m + x - r * th
    elif n.spec.reset == "hard":
        m1 = b * ((1 - r) * m) + x
    else:
        m1 = b * m + x
    _fire_and_correct(n, m1, th, g, r)


@form(
    "snntorch_synaptic",
    state=("v", "i"),
    roles=("alpha", "beta", "threshold", "graded_spikes_factor"),
    constants={"alpha": "extra['alpha'] (the synaptic decay, not the surrogate's)", **_CONSTANTS},
    extra=_EXTRA,
    summary="i1 = a*i + x; m1 = b*m + i1 - reset; r = H(m_prev - th) detached",
    source="snnTorch 1.0 Synaptic",
    framework=FRAMEWORK,
)
def synaptic(n: NeuronBuilder) -> None:
    """a = alpha.clamp(0, 1); i1 = (a * i) + x (the NEW current feeds the membrane)
    m1 = (b * m) + i1; subtract: m1 - (r * th); zero: m1 - (m1 * r) (i is not reset)
    then fire and correct as Leaky; the state i is i1, output 'current' is i1"""
    b, th, g, r = _common(n)
    a = n.quantity("a", E.clamp(n.param("alpha", n.extra("alpha")), 0.0, 1.0))
    m, i, x = n.state("v"), n.state("i"), n.port("x")
    i1 = n.name("syn", a * i + x)
    m1 = _reset_term(n, b * m + i1, th, r, zero_first=True)
    _fire_and_correct(n, m1, th, g, r)
    n.set_state("i", i1)
    n.output("current", i1)


@form(
    "snntorch_rleaky",
    ports=("x", "rec"),
    roles=("beta", "threshold", "graded_spikes_factor"),
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="m1 = (b*m + x) + rec - reset; rec = recurrent(S[t-1]) at port 1",
    source="snnTorch 1.0 RLeaky(all_to_all=True)",
    framework=FRAMEWORK,
)
def rleaky(n: NeuronBuilder) -> None:
    """rec = port 1: recurrent(s[t-1]), computed by the graph (a Linear/Conv2d node fed by
    this neuron's spike through a delay-1 edge: zeros at t = 0, so a bias still arrives)
    base = ((b * m) + x) + rec; subtract: base - (r * th); zero: base - (r * base)
    then fire and correct as Leaky"""
    b, th, g, r = _common(n)
    m, x, rec = n.state("v"), n.port("x"), n.port("rec")
    m1 = _reset_term(n, b * m + x + rec, th, r, zero_first=False)
    _fire_and_correct(n, m1, th, g, r)


@form(
    "snntorch_rleaky_v",
    state=("v", "s"),
    roles=("beta", "threshold", "graded_spikes_factor", "V"),
    constants={**_CONSTANTS, "V": "extra['V']"},
    extra=_EXTRA,
    summary="m1 = (b*m + x) + s_prev*V - reset",
    source="snnTorch 1.0 RLeaky(all_to_all=False): one-to-one weight V",
    framework=FRAMEWORK,
)
def rleaky_one_to_one(n: NeuronBuilder) -> None:
    """s_prev = state s (the spike this neuron returned at t-1; 0 at t = 0)
    base = ((b * m) + x) + (s_prev * V); reset and fire as RLeaky; state s = the spike"""
    b, th, g, r = _common(n)
    big_v = n.quantity("V", n.param("V", n.extra("V")))
    m, x, s_prev = n.state("v"), n.port("x"), n.state("s")
    m1 = _reset_term(n, b * m + x + s_prev * big_v, th, r, zero_first=False)
    s = _fire_and_correct(n, m1, th, g, r)
    n.set_state("s", s)
