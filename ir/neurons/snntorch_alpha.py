"""snnTorch 1.0 ``Alpha``: an excitatory and an inhibitory synaptic current, read from
``snntorch/_neurons/alpha.py`` (``_base_state_function`` and its three state functions).

Like every snnTorch neuron, the reset ``r = (mem - threshold > 0)`` comes from the PREVIOUS
membrane, detached (``mem_reset``), and the spike is ``H(mem - threshold) * g`` (``fire``,
``>``; Alpha has no ``graded_spikes_factor`` argument, but the buffer is in its state_dict).
Alpha has no ``reset_delay`` option: the reset is always the delayed one (no immediate
correction), and ``learn_alpha=True`` raises in snnTorch 1.0 itself (it assigns the clamped
tensor over the Parameter), so ``alpha`` is always a buffer. The per-sequence ``tau_alpha =
log(a) / (log(b) - log(a)) + 1`` is a quantity computed from the ``alpha`` and ``beta`` params
with torch's fp32 ``log`` (the frontend always passes them as params, never constants).

``output="current"`` is the excitatory current ``syn_exc``; with ``extra["current_inh"] = 1``
it is the inhibitory one, ``syn_inh`` (a spec has one current output; snnTorch returns both).

Framework label: ``snntorch_families``, not ``snntorch``: the generic snnTorch form matrices
of the existing tests (tests/test_cpu_snntorch_norse.py, test_kernels.py,
test_onnx_snntorch_norse.py) enumerate every form labelled ``snntorch`` with the constants
only Leaky/Synaptic/RLeaky understand; the families are covered by
tests/test_snntorch_families.py. The label also keeps ``reset_delay=True`` refused for them
(they have no such option).
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.neurons.base import NeuronBuilder, form

FRAMEWORK = "snntorch_families"
_CONSTANTS = {
    "alpha": "extra['alpha'] (the synaptic decay, not the surrogate's)",
    "beta": "extra['beta']",
    "threshold": "v_threshold",
    "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
}


@form(
    "snntorch_alpha",
    state=("v", "i", "inh"),
    roles=("alpha", "beta", "threshold", "graded_spikes_factor"),
    constants=_CONSTANTS,
    extra=("alpha", "beta", "graded_spikes_factor", "current_inh"),
    summary="e1 = a*e + x; h1 = b*h - x; m1 = tau_alpha*(e1 + h1) - reset; r from m_prev",
    source="snnTorch 1.0 Alpha",
    framework=FRAMEWORK,
)
def alpha(n: NeuronBuilder) -> None:
    """a = alpha.clamp(0, 1); b = beta.clamp(0, 1); tau = log(a) / (log(b) - log(a)) + 1
    r = (m - th > 0), detached, from the previous membrane m (state v)
    e1 = (a * e) + x; h1 = (b * h) - x; m1 = tau * (e1 + h1)     (e: state i, h: state inh)
    subtract: e1 - (th * r), h1 - (h1 * r), m1 - ((-h) * r)   (h: the OLD inhibitory current)
    zero:     e1 - (e1 * r), h1 - (h1 * r), m1 - (m1 * r)
    s = H(m1 - th) * g; state v = m1, i = e1, inh = h1"""
    a_p = E.clamp(n.param("alpha", n.extra("alpha")), 0.0, 1.0)  # per sequence (derive graph)
    b_p = E.clamp(n.param("beta", n.extra("beta")), 0.0, 1.0)
    a, b = n.quantity("a", a_p), n.quantity("b", b_p)
    tau = n.quantity("tau", E.log(a_p) / (E.log(b_p) - E.log(a_p)) + 1)
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    g = n.quantity("g", n.param("graded_spikes_factor", n.extra("graded_spikes_factor", 1.0)))
    m, e, h, x = n.state("v"), n.state("i"), n.state("inh"), n.port("x")
    r = n.name("r", m - th > 0.0)  # snnTorch's mem_reset: a comparison, no gradient
    e1 = n.name("syn_exc", a * e + x)
    h1 = n.name("syn_inh", b * h - x)
    m1 = n.name("mem", tau * (e1 + h1))
    if n.spec.reset == "subtract":
        e1, h1, m1 = e1 - th * r, h1 - h1 * r, m1 - (-h) * r
    elif n.spec.reset == "hard":
        e1, h1, m1 = e1 - e1 * r, h1 - h1 * r, m1 - m1 * r
    s = n.name("s", n.spike(m1 - th) * g)
    n.set_state("v", m1)
    n.set_state("i", e1)
    n.set_state("inh", h1)
    n.output("spike", s)
    n.output("membrane", m1)
    n.output("current", h1 if n.extra("current_inh", 0.0) else e1)
