"""SpikingJelly 2.0 ``IzhikevichNode``: a QIF membrane with a recovery variable ``w``.

Read from ``spikingjelly/_ops/izhikevich/cpu.py`` and ``_ops/izhikevich/reference.py``.
Two state variables: ``v`` (starts at ``v_reset``, or 0 for a soft reset) and
``w`` (starts at the module's ``w_rest``, spec ``extra['w_rest']``). The
recovery is updated from the *charged* membrane ``h`` and the spike, which it
takes undetached whatever ``detach_reset`` says (that flag is the voltage
reset's only).
"""

from __future__ import annotations

from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.spikingjelly import fire_and_reset

FRAMEWORK = "spikingjelly_families"
ROLES = ("a0", "v_rest", "v_c", "a", "b", "tau_w")


@form(
    "sj_izhikevich",
    state=("v", "w"),
    roles=ROLES,
    constants={r: f"extra[{r!r}]" for r in ROLES},
    extra=(*ROLES, "w_rest"),
    summary="h = v + (x + a0 (v - v_rest)(v - v_c) - w) / tau; "
    "w1 = w + (a (h - v_rest) - w) / tau_w + b s",
    source="SpikingJelly 2.0 IzhikevichNode",
    framework=FRAMEWORK,
)
def izhikevich(n: NeuronBuilder) -> None:
    """h = v + ((x + (a0 * (v - v_rest)) * (v - v_c)) - w) / tau
    s = H(h - v_threshold); v1 = SpikingJelly's reset of h
    w1 = (w + ((a * (h - v_rest)) - w) / tau_w) + (b * s)   (s not detached)"""
    a0, rest, vc, a, b, tau_w = (n.quantity(r, n.param(r, n.extra(r))) for r in ROLES)
    n.init("w", n.extra("w_rest", 0.0))
    v, w, x = n.state("v"), n.state("w"), n.port("x")
    h = n.name("h", v + (x + a0 * (v - rest) * (v - vc) - w) / n.require("tau"))
    fire_and_reset(n, h)
    s = n.spike(h - n.require("v_threshold"))  # the reset's spike (one node: hash-consed)
    n.set_state("w", n.name("w1", w + (a * (h - rest) - w) / tau_w + b * s))
