"""snnTorch 1.0 ``RSynaptic``: Synaptic with a recurrent term in the synaptic current, read
from ``snntorch/_neurons/rsynaptic.py``.

``all_to_all=True``: the recurrent ``Linear`` / ``Conv2d`` is a graph node fed by this
neuron's spike through a delay-1 edge (zeros at t = 0, so its bias arrives at t = 0 too)
into port ``rec``, as for RLeaky. ``all_to_all=False``: ``V`` scales this neuron's own
previous spike (state ``s``).

The reset ``r = (mem - threshold > 0)`` comes from the PREVIOUS membrane, detached, and the
spike is ``H(mem - threshold) * g``. ``reset_delay=False`` changes nothing in snnTorch 1.0's
RSynaptic: its correction is computed from the ``spk`` *argument* into a local ``mem`` that
is never returned (and raises when that argument is None or not yet shaped), so every
RSynaptic runs the delayed reset; the spec's ``reset_delay`` stays False. The reset-to-zero
path subtracts ``0 * r`` from the current, which leaves every value (and gradient) as it is,
so it is not written here. Framework label ``snntorch_families``: see
:mod:`snncc.ir.neurons.snntorch_alpha`.
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.expr import Operand
from snncc.ir.neurons.base import NeuronBuilder, form

FRAMEWORK = "snntorch_families"
_ROLES = ("alpha", "beta", "threshold", "graded_spikes_factor")
_EXTRA = ("alpha", "beta", "graded_spikes_factor", "V")
_CONSTANTS = {
    "alpha": "extra['alpha'] (the synaptic decay, not the surrogate's)",
    "beta": "extra['beta']",
    "threshold": "v_threshold",
    "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
}


def _step(n: NeuronBuilder, rec: Operand) -> E.Val:
    """The RSynaptic step given the recurrent term ``rec``; sets v, i and the outputs."""
    a = n.quantity("a", E.clamp(n.param("alpha", n.extra("alpha")), 0.0, 1.0))
    b = n.quantity("b", E.clamp(n.param("beta", n.extra("beta")), 0.0, 1.0))
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    g = n.quantity("g", n.param("graded_spikes_factor", n.extra("graded_spikes_factor", 1.0)))
    m, i, x = n.state("v"), n.state("i"), n.port("x")
    r = n.name("r", m - th > 0.0)  # snnTorch's mem_reset: a comparison, no gradient
    syn = n.name("syn", a * i + x + rec)
    m1 = n.name("base", b * m + syn)
    if n.spec.reset == "subtract":
        m1 = m1 - r * th
    elif n.spec.reset == "hard":
        m1 = m1 - m1 * r  # _base_zero: mem2 *= reset; mem -= mem2
    s = n.name("s", n.spike(m1 - th) * g)
    n.name("mem", m1)
    n.set_state("v", m1)
    n.set_state("i", syn)
    n.output("spike", s)
    n.output("membrane", m1)
    n.output("current", syn)
    return s


@form(
    "snntorch_rsynaptic",
    state=("v", "i"),
    ports=("x", "rec"),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="i1 = (a*i + x) + rec; m1 = b*m + i1 - reset; rec = recurrent(S[t-1]) at port 1",
    source="snnTorch 1.0 RSynaptic(all_to_all=True)",
    framework=FRAMEWORK,
)
def rsynaptic(n: NeuronBuilder) -> None:
    """a = alpha.clamp(0, 1); b = beta.clamp(0, 1); r = (m - th > 0) from the previous m
    rec = port 1: recurrent(s[t-1]) (a Linear/Conv2d node behind a delay-1 edge)
    i1 = ((a * i) + x) + rec; m1 = (b * m) + i1
    subtract: m1 - (r * th); zero: m1 - (m1 * r) (i1 is not reset); none: m1
    s = H(m1 - th) * g; state v = m1, i = i1; output 'current' is i1"""
    _step(n, n.port("rec"))


@form(
    "snntorch_rsynaptic_v",
    state=("v", "i", "s"),
    roles=(*_ROLES, "V"),
    constants={**_CONSTANTS, "V": "extra['V']"},
    extra=_EXTRA,
    summary="i1 = (a*i + x) + s_prev*V; m1 = b*m + i1 - reset",
    source="snnTorch 1.0 RSynaptic(all_to_all=False): one-to-one weight V",
    framework=FRAMEWORK,
)
def rsynaptic_one_to_one(n: NeuronBuilder) -> None:
    """s_prev = state s (the spike this neuron returned at t-1; 0 at t = 0)
    i1 = ((a * i) + x) + (s_prev * V); then as snntorch_rsynaptic; state s = the spike"""
    big_v = n.quantity("V", n.param("V", n.extra("V")))
    s = _step(n, n.state("s") * big_v)
    n.set_state("s", s)
