"""Norse 1.1 ``IzhikevichCell`` / ``Izhikevich`` / ``IzhikevichRecurrentCell``, read from
``norse/torch/functional/izhikevich.py`` (``izhikevich_feed_forward_step``,
``izhikevich_recurrent_step``).

``p.tau_inv * dt`` and ``p.tau_inv * dt * p.a`` are products of constants the frontend
evaluates as Norse does (``extra['tau_inv_dt']``, ``extra['tau_inv_dt_a']``); a parameter
that is a node param (an ``nn.Parameter``) is a role and the products are computed here.
``v ** 2`` is torch's ``v * v``. The membrane starts at the behaviour's ``s.v``
(``spec.v_init``) and the recovery variable at its ``s.u`` (``extra['u_init']``, read
through the ``started`` flag, :func:`.norse_common.started_or`). Framework label
``norse_families``: see :mod:`snncc.ir.neurons.norse_iaf`.
"""

from __future__ import annotations

from snncc.errors import UnsupportedError
from snncc.ir.neurons.base import NeuronBuilder, form
from snncc.ir.neurons.norse_common import STARTED, dt_of, required, reset_value, scalar, started_or

FRAMEWORK = "norse_families"
_ROLES = ("tau_inv", "a", "b", "c", "d", "sq", "mn", "bias", "threshold")
_CONSTANTS = {
    "tau_inv": "extra['tau_inv_dt'] (param: tau_inv * dt)",
    "a": "extra['tau_inv_dt_a'] (param: (tau_inv * dt) * a)",
    **{k: f"extra[{k!r}]" for k in ("b", "c", "d", "sq", "mn", "bias")},
    "threshold": "v_threshold (p.v_th)",
}
_EXTRA = ("dt", "tau_inv_dt", "tau_inv_dt_a", "b", "c", "d", "sq", "mn", "bias", "u_init")


def _izhikevich(n: NeuronBuilder, recurrent: bool) -> None:
    roles = n.spec.roles
    if "tau_inv" in roles:
        k_v = n.param("tau_inv", None) * dt_of(n)
    else:
        k_v = required(n, "tau_inv_dt")
    if "a" in roles:
        k_u = k_v * n.param("a", None)
    elif "tau_inv" in roles:
        raise UnsupportedError(
            "neuron charge form 'norse_izhikevich' with the param 'tau_inv' needs 'a' as a "
            "param too (k_u = (tau_inv * dt) * a is computed per sequence from both)"
        )
    else:
        k_u = required(n, "tau_inv_dt_a")
    k_v, k_u = n.quantity("kv", k_v), n.quantity("ku", k_u)
    sq, mn = n.quantity("sq", scalar(n, "sq", "sq")), n.quantity("mn", scalar(n, "mn", "mn"))
    bias, b = n.quantity("bias", scalar(n, "bias", "bias")), n.quantity("b", scalar(n, "b", "b"))
    c, d = n.quantity("c", scalar(n, "c", "c")), n.quantity("d", scalar(n, "d", "d"))
    th = n.quantity("th", n.param("threshold", n.spec.v_threshold))
    v, x = n.state("v"), n.port("x")
    u = n.name("u", started_or(n, "u", required(n, "u_init")))
    drive = sq * v**2 + mn * v + bias - u + x
    if recurrent:
        drive = drive + n.port("rec")
    v1 = n.name("v_new", v + k_v * drive)
    u1 = n.name("u_new", u + k_u * (b * v - u))
    z = n.name("z", n.spike(v1 - th))
    v2 = reset_value(z, v1, c)
    u2 = (1 - z) * u1 + z * (u1 + d)
    n.set_state("v", v2)
    n.set_state("u", u2)
    n.output("spike", z)
    n.output("membrane", v2)


@form(
    "norse_izhikevich",
    state=("v", "u", STARTED),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="v1 = v + k_v*((((sq*v*v + mn*v) + bias) - u) + x); u1 = u + k_u*(b*v - u)",
    source="Norse 1.1 izhikevich_feed_forward_step (IzhikevichCell, Izhikevich)",
    framework=FRAMEWORK,
)
def izhikevich(n: NeuronBuilder) -> None:
    """u = u_init at the first step (flag 'started'), else state u
    v1 = v + (k_v * (((((sq * (v * v)) + (mn * v)) + bias) - u) + x))     (k_v = tau_inv * dt)
    u1 = u + (k_u * ((b * v) - u))                                   (k_u = (tau_inv * dt) * a)
    z = H(v1 - th); v2 = ((1 - z) * v1) + (z * c); u2 = ((1 - z) * u1) + (z * (u1 + d))
    state v = v2, u = u2; output z or v2"""
    _izhikevich(n, recurrent=False)


@form(
    "norse_izhikevich_recurrent",
    state=("v", "u", STARTED),
    ports=("x", "rec"),
    roles=_ROLES,
    constants=_CONSTANTS,
    extra=_EXTRA,
    summary="as norse_izhikevich with (... + x) + rec inside k_v's bracket",
    source="Norse 1.1 izhikevich_recurrent_step (IzhikevichRecurrentCell)",
    framework=FRAMEWORK,
)
def izhikevich_recurrent(n: NeuronBuilder) -> None:
    """x = port 0: F.linear(input, input_weights); rec = port 1: F.linear(z[t-1],
    recurrent_weights); as norse_izhikevich with the drive ((... - u) + x) + rec"""
    _izhikevich(n, recurrent=True)
