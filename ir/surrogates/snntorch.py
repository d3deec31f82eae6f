"""snnTorch 1.0's surrogates (``snntorch.surrogate``), and the no-gradient spike of
``surrogate_disable`` / Norse's ``method='heaviside'``.

Two of snnTorch's surrogates take two parameters: ``spike_rate_escape(beta, slope)`` and
``SFS(slope, B)``. Their ``slope`` is the spike's sharpness ``alpha``; ``beta`` and ``B``
are surrogate parameters beyond alpha (``NeuronSpec.surrogate_params``), by snnTorch's
names, defaulting to snnTorch's defaults (1 and 1). ``SSO`` and ``LSO`` are
stochastic (a random backward) and ``custom_surrogate`` is arbitrary Python: refused by the
frontend, nothing to define here.
"""

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


@surrogate(
    "spike_rate_escape",
    25.0,
    "snnTorch 1.0 surrogate.spike_rate_escape(beta, slope) (alpha = slope)",
    params={"beta": 1.0},
)
def _spike_rate_escape(g: Val, x: Val, alpha: float, beta: float) -> Operand:
    # grad_input * slope * exp(-beta * |input - 1|)
    return g * alpha * exp(-beta * abs_(x - 1))


@surrogate(
    "sparse_fast_sigmoid",
    25.0,
    "snnTorch 1.0 surrogate.SFS(slope, B) (alpha = slope)",
    params={"B": 1.0},
)
def _sparse_fast_sigmoid(g: Val, x: Val, alpha: float, B: float) -> Operand:  # noqa: N803
    # grad_input / (slope * |input| + 1.0) ** 2 * (input > B).float()
    return g / (alpha * abs_(x) + 1.0) ** 2 * (x > B)


@surrogate("no_grad", 1.0, "snnTorch surrogate_disable, Norse method='heaviside'")
def _no_grad(g: Val, x: Val, alpha: float) -> Operand:
    return 0.0
