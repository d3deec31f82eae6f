"""snnTorch 1.0 ``Lapicque``: an RC membrane, read from ``snntorch/_neurons/lapicque.py``.

Its step does not use ``beta``: ``beta`` only derives ``C`` (or ``R``) at construction
(``C = time_step / (R * log(1 / beta))``), and the step reads the ``R``, ``C`` and
``time_step`` buffers. With ``learn_beta=True`` (which snnTorch 1.0 can build only as
``Lapicque(beta=...)``, R = 1) the ``C`` buffer keeps its autograd graph back to ``beta``
(snnTorch's only path for a ``beta`` gradient): the node then has the ``beta`` role instead
of ``C``'s, and ``C`` is derived here, per sequence, with the same fp32 ops (so the forward
is the buffer's value and the gradient reaches ``beta``; snnTorch itself can backward
through its construction-time graph only once).

Like every snnTorch neuron the reset ``r = (mem - threshold > 0)`` comes from the PREVIOUS
membrane, detached, and the spike is ``H(mem - threshold) * g``; Lapicque has no
``reset_delay`` option (the reset is always the delayed one). Framework label
``snntorch_families``: see :mod:`snncc.ir.neurons.snntorch_alpha`.
"""

from __future__ import annotations

from snncc.ir import expr as E
from snncc.ir.neurons.base import NeuronBuilder, form

FRAMEWORK = "snntorch_families"


def _rc_ts(n: NeuronBuilder) -> tuple[E.Operand, E.Operand, E.Operand]:
    """(R, C, time_step): the buffers, or C derived from ``beta`` as snnTorch derives it."""
    ts = n.param("time_step", n.extra("time_step", 1.0))
    big_r = n.param("R", n.extra("R", 1.0))
    if "beta" in n.spec.roles:  # Lapicque(beta, learn_beta=True): C = ts / (R * log(1 / beta))
        return big_r, ts / (big_r * E.log(1 / n.param("beta", None))), ts
    return big_r, n.param("C", n.extra("C")), ts


@form(
    "snntorch_lapicque",
    roles=("R", "C", "time_step", "beta", "threshold", "graded_spikes_factor"),
    constants={
        "R": "extra.get('R', 1.0)",
        "C": "extra['C'] (derived from the beta param when the node has one)",
        "time_step": "extra.get('time_step', 1.0)",
        "beta": "none: a param only, from which C derives (learn_beta=True)",
        "threshold": "v_threshold",
        "graded_spikes_factor": "extra.get('graded_spikes_factor', 1.0)",
    },
    extra=("R", "C", "time_step", "graded_spikes_factor"),
    summary="m1 = ((x*R)*(1/(R*C)))*ts + (1 - ts/(R*C))*m - reset; r from m_prev",
    source="snnTorch 1.0 Lapicque",
    framework=FRAMEWORK,
)
def lapicque(n: NeuronBuilder) -> None:
    """per sequence: rc = R * C; inv = 1 / rc (reciprocal(rc) * 1); k = 1 - (ts / rc)
    r = (m - th > 0), detached, from the previous membrane m
    base = (((x * R) * inv) * ts) + (k * m)
    subtract: base - (r * th); zero: base - (r * base); none: base
    s = H(m1 - th) * g; state v = m1"""
    big_r, big_c, ts_p = _rc_ts(n)
    rc = big_r * big_c
    q_r = n.quantity("R", big_r)
    inv = n.quantity("inv_rc", 1 / rc)
    ts = n.quantity("ts", ts_p)
    k = n.quantity("k", 1 - ts_p / rc)
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    g = n.quantity("g", n.param("graded_spikes_factor", n.extra("graded_spikes_factor", 1.0)))
    m, x = n.state("v"), n.port("x")
    r = n.name("r", m - th > 0.0)
    base = n.name("base", x * q_r * inv * ts + k * m)
    if n.spec.reset == "subtract":
        m1 = base - r * th
    elif n.spec.reset == "hard":
        m1 = base - r * base
    else:
        m1 = base
    s = n.name("s", n.spike(m1 - th) * g)
    n.name("mem", m1)
    n.set_state("v", m1)
    n.output("spike", s)
    n.output("membrane", m1)
