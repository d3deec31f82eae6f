"""snnTorch 1.0's surrogates (``snntorch.surrogate``), and the no-gradient spike of
``surrogate_disable`` / Norse's ``method='heaviside'``."""

from __future__ import annotations

from snncc.ir.expr import Operand, Val, abs_, exp, where
from snncc.ir.surrogates import surrogate


@surrogate("fast_sigmoid", 25.0, "snnTorch 1.0 surrogate.fast_sigmoid(slope)")
def _fast_sigmoid(g: Val, x: Val, alpha: float) -> Operand:
    return g / (alpha * abs_(x) + 1.0) ** 2


@surrogate("snntorch_sigmoid", 25.0, "snnTorch 1.0 surrogate.sigmoid(slope)")
def _snntorch_sigmoid(g: Val, x: Val, alpha: float) -> Operand:
    # grad * slope * exp(-slope x) / ((exp(-slope x) + 1) ** 2)
    return g * alpha * exp(-alpha * x) / ((exp(-alpha * x) + 1) ** 2)


@surrogate("straight_through", 1.0, "snnTorch 1.0 surrogate.straight_through_estimator")
def _straight_through(g: Val, x: Val, alpha: float) -> Operand:
    return g


@surrogate("snntorch_heaviside", 1.0, "snnTorch 1.0 surrogate.heaviside")
def _snntorch_heaviside(g: Val, x: Val, alpha: float) -> Operand:
    return g * (x > 0.0)


@surrogate("snntorch_triangular", 1.0, "snnTorch 1.0 surrogate.triangular(threshold)")
def _snntorch_triangular(g: Val, x: Val, alpha: float) -> Operand:
    grad = g * alpha
    return where(x >= 0.0, -grad, grad)


@surrogate("no_grad", 1.0, "snnTorch surrogate_disable, Norse method='heaviside'")
def _no_grad(g: Val, x: Val, alpha: float) -> Operand:
    return 0.0
