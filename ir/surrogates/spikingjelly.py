"""SpikingJelly 2.0's surrogates (``spikingjelly/_ops/surrogate.py``, the CPU formulas of its
built-in surrogate classes)."""

from __future__ import annotations

import math

from snncc.ir.expr import Operand, Val, abs_, clamp, exp
from snncc.ir.expr import sigmoid as sigmoid_
from snncc.ir.surrogates import surrogate


@surrogate("sigmoid", 4.0, "SpikingJelly 2.0 surrogate.Sigmoid")
def _sigmoid(g: Val, x: Val, alpha: float) -> Operand:
    s = sigmoid_(alpha * x)
    return g * ((1 - s) * s * alpha)


@surrogate("atan", 2.0, "SpikingJelly 2.0 surrogate.ATan, snnTorch 1.0 atan")
def _atan(g: Val, x: Val, alpha: float) -> Operand:
    z = x * (math.pi / 2 * alpha)
    return g * ((alpha / 2) / (1 + z * z))


@surrogate("piecewise_quadratic", 1.0, "SpikingJelly 2.0 surrogate.PiecewiseQuadratic")
def _piecewise_quadratic(g: Val, x: Val, alpha: float) -> Operand:
    return g * clamp(alpha - alpha * alpha * abs_(x), 0.0, None)


@surrogate("piecewise_exp", 1.0, "SpikingJelly 2.0 surrogate.PiecewiseExp")
def _piecewise_exp(g: Val, x: Val, alpha: float) -> Operand:
    return g * ((alpha / 2) * exp(-alpha * abs_(x)))


@surrogate("soft_sign", 2.0, "SpikingJelly 2.0 surrogate.SoftSign", divides_by_alpha=True)
def _soft_sign(g: Val, x: Val, alpha: float) -> Operand:
    z = 1 / alpha + abs_(x)
    return g * (1 / (2 * alpha * z * z))


@surrogate("sj_superspike", 1.0, "SpikingJelly 2.0 surrogate.SuperSpike")
def _sj_superspike(g: Val, x: Val, alpha: float) -> Operand:
    z = 1 + abs_(x)
    return g * (alpha / (z * z))


@surrogate("erf", 2.0, "SpikingJelly 2.0 surrogate.Erf")
def _erf(g: Val, x: Val, alpha: float) -> Operand:
    z = alpha * x
    return g * ((alpha / math.sqrt(math.pi)) * exp(-z * z))


@surrogate("rect", 1.0, "SpikingJelly 2.0 surrogate.Rect", divides_by_alpha=True)
def _rect(g: Val, x: Val, alpha: float) -> Operand:
    return alpha * (abs_(x) < 0.5 / alpha) * g
