"""SpikingJelly 2.0's surrogates: ``spikingjelly/_ops/surrogate.py`` (the CPU formulas of the
built-in surrogate classes its neurons have kernels for) and the backward of every other
spiking class of ``spikingjelly.activation_based.surrogate``.

``DeterministicPass`` is snnTorch's straight-through gradient (``straight_through``).
Not here, refused by the frontend: ``PoissonPass`` (a stochastic forward) and
``MultiLevelSpikeCount`` (a multi-level count, not a Heaviside spike).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from snncc.ir.expr import Operand, Val, abs_, clamp, cos, exp, pow_, where
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


# ---------------------------------------------------------------------------------------
# The other spiking surrogates of ``spikingjelly.activation_based.surrogate``. SpikingJelly's
# neurons have no registered kernel for these: their gradient is the class's own autograd
# Function, so each formula is that ``backward``'s, operation for operation.


def _nonzero(what: str) -> Callable[[float, Mapping[str, float]], str | None]:
    return lambda alpha, p: None if alpha != 0 else f"{what} must not be 0"


@surrogate(
    "piecewise_leaky_relu",
    1.0,
    "SpikingJelly 2.0 surrogate.PiecewiseLeakyReLU (alpha = w)",
    divides_by_alpha=True,
    params={"c": 0.01},
)
def _piecewise_leaky_relu(g: Val, x: Val, alpha: float, c: float) -> Operand:
    # grad * x.masked_fill(|x| < w, 1 / (2 w)).masked_fill(|x| >= w, c)
    return g * where(abs_(x) < alpha, 1 / (2 * alpha), c)


@surrogate(
    "nonzero_sign_log_abs",
    1.0,
    "SpikingJelly 2.0 surrogate.NonzeroSignLogAbs",
    check=_nonzero("alpha"),
)
def _nonzero_sign_log_abs(g: Val, x: Val, alpha: float) -> Operand:
    return g / (1 / alpha + abs_(x))


def _squarewave_check(alpha: float, p: Mapping[str, float]) -> str | None:
    n = p["n"]
    if n != int(n) or not 1 <= n <= MAX_FOURIER_TERMS:
        return f"n must be an integer in 1..{MAX_FOURIER_TERMS}, got {n!r}"
    return None


#: SquarewaveFourierSeries's n becomes n - 1 cosines in every gradient: a bound on its size
MAX_FOURIER_TERMS = 64


@surrogate(
    "squarewave_fourier_series",
    8.0,
    "SpikingJelly 2.0 surrogate.SquarewaveFourierSeries (alpha = T_period)",
    divides_by_alpha=True,
    params={"n": 2.0},
    check=_squarewave_check,
)
def _squarewave_fourier_series(g: Val, x: Val, alpha: float, n: float) -> Operand:
    # grad_x = 0.0; grad_x += cos((2 i - 1.0) w x) for i in 1..n-1; grad_x *= 4 / T; * grad
    w = math.pi * 2.0 / alpha
    acc: Operand = 0.0
    for i in range(1, int(n)):
        acc = acc + cos((2 * i - 1.0) * w * x)
    acc = acc * (4.0 / alpha)
    return acc * g


@surrogate("s2nn", 4.0, "SpikingJelly 2.0 surrogate.S2NN", params={"beta": 1.0})
def _s2nn(g: Val, x: Val, alpha: float, beta: float) -> Operand:
    s = sigmoid_(alpha * x)
    return where(x < 0.0, alpha * s * (1.0 - s), beta / (x + 1.0)) * g


@surrogate(
    "q_pseudo_spike",
    2.0,
    "SpikingJelly 2.0 surrogate.QPseudoSpike",
    check=lambda alpha, p: None if alpha != 1 else "alpha must not be 1 (it divides by alpha - 1)",
)
def _q_pseudo_spike(g: Val, x: Val, alpha: float) -> Operand:
    return pow_(1 + 2 / (alpha - 1) * abs_(x), -alpha) * g


@surrogate(
    "leaky_k_relu",
    1.0,
    "SpikingJelly 2.0 surrogate.LeakyKReLU (alpha = k)",
    params={"leak": 0.0},
)
def _leaky_k_relu(g: Val, x: Val, alpha: float, leak: float) -> Operand:
    mask = x >= 0.0
    return g * (mask * alpha + (1.0 - mask) * leak)


@surrogate("fake_numerical_gradient", 0.3, "SpikingJelly 2.0 surrogate.FakeNumericalGradient")
def _fake_numerical_gradient(g: Val, x: Val, alpha: float) -> Operand:
    return g * clamp(((x >= 0.0) * 2.0 - 1.0) / x, None, alpha)


@surrogate("log_tailed_relu", 0.0, "SpikingJelly 2.0 surrogate.LogTailedReLU")
def _log_tailed_relu(g: Val, x: Val, alpha: float) -> Operand:
    # ones; [x > 1] = 1.0 / x; [x <= 0] = alpha (disjoint)
    return g * where(x > 1.0, 1.0 / x, where(x <= 0.0, alpha, 1.0))
