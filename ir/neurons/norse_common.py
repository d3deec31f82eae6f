"""Helpers the Norse 1.1 family definitions share (no form of its own).

Norse keeps its parameters in a NamedTuple ``p`` of Python numbers or tensors and multiplies
them with ``dt`` inside each step function. The frontend evaluates every product of
constants exactly as Norse does (a double for Python numbers, an fp32 tensor op for tensors)
and puts the result in ``spec.extra``; a parameter that is a node param (an
``nn.Parameter``, or one value per neuron) is a role instead, and its products are computed
here, per sequence, in Norse's operation order.

Norse's families whose state starts away from zero in a variable other than the membrane
(LSNN's adaptive threshold starts at ``v_th``, Izhikevich's recovery variable at the
behaviour's ``u``) read that variable through :func:`started_or`: a state flag ``started``
(0 in a fresh state, 1 after the first step) selects the initial value at the first step,
so every target keeps the exact initial value without a per-spec initial state.
"""

from __future__ import annotations

from snncc.errors import UnsupportedError
from snncc.ir import expr as E
from snncc.ir.expr import Operand, Val
from snncc.ir.neurons.base import NeuronBuilder

#: the state flag of :func:`started_or` (0.0 before the first step, 1.0 after)
STARTED = "started"


def required(n: NeuronBuilder, key: str) -> float:
    """``extra[key]``, which the form cannot run without."""
    value = n.extra(key)
    if value is None:
        raise UnsupportedError(f"neuron charge form {n.form.name!r} needs extra[{key!r}]")
    return float(value)


def dt_of(n: NeuronBuilder) -> float:
    """``extra['dt']``, required."""
    return required(n, "dt")


def scalar(n: NeuronBuilder, role: str, key: str) -> Operand:
    """A parameter used as is: the node param ``role``, else the constant ``extra[key]``."""
    return n.param(role, n.extra(key))


def dt_product(n: NeuronBuilder, name: str, role: str, key: str, sign: float = 1.0) -> Operand:
    """The quantity ``name`` = ``dt * p.<role>`` (``sign=-1``: ``-dt * p.<role>``), in Norse's
    order: from the node param ``role`` when the node has it, else the constant ``extra[key]``
    the frontend evaluated as Norse does."""
    if role in n.spec.roles:
        return n.quantity(name, (sign * dt_of(n)) * n.param(role, None))
    return n.quantity(name, n.param(role, n.extra(key)))


def started_or(n: NeuronBuilder, var: str, init: Operand) -> Val:
    """State ``var`` before the step, or ``init`` at the very first step (see the module
    docstring); marks the flag for the next step."""
    started = n.state(STARTED)
    n.set_state(STARTED, 1.0)
    return E.where(started > 0.0, n.state(var), init)


def reset_value(z: Operand, v: Operand, v_reset: Operand) -> Operand:
    """Norse's ``(1 - z) * v + z * v_reset``."""
    return (1 - z) * v + z * v_reset
