"""Surrogate gradients as expressions: each framework's backward of the spike, once.

The spike is Heaviside forward; its backward is ``grad * f(x)`` for some smooth
``f`` (x = membrane - threshold). Two algebraically equal formulas round
differently, so each entry is the installed package's own expression, in its
own operation order, written with :mod:`snncc.ir.expr` (``c / t`` is torch's
``t.reciprocal() * c``, ``t ** 2`` is ``t * t``). Every target lowers these
functions (torch autograd, the kernels' backward, jax's custom VJP), so a
surrogate exists in one place.

=====================  =================================================  =========
name                   gradient (x = membrane - threshold)                 source
=====================  =================================================  =========
sigmoid                ``s = sigmoid(alpha x); g * ((1 - s) * s * alpha)``  SpikingJelly 2.0 ``_ops/surrogate.py``
atan                   ``z = x * (pi/2 alpha); g * ((alpha/2) / (1 + z z))`` SpikingJelly 2.0 and snnTorch 1.0 atan
piecewise_quadratic    ``g * (alpha - alpha^2 |x|).clamp_min(0)``           SpikingJelly 2.0
piecewise_exp          ``g * ((alpha/2) exp(-alpha |x|))``                  SpikingJelly 2.0
soft_sign              ``z = 1/alpha + |x|; g * (1 / (2 alpha z z))``       SpikingJelly 2.0
sj_superspike          ``z = 1 + |x|; g * (alpha / (z z))``                 SpikingJelly 2.0 SuperSpike
erf                    ``z = alpha x; g * ((alpha/sqrt(pi)) exp(-z z))``    SpikingJelly 2.0
rect                   ``alpha * (|x| < 0.5/alpha) * g``                    SpikingJelly 2.0 Rect
fast_sigmoid           ``g / (alpha |x| + 1)^2`` (alpha = snnTorch slope)   snnTorch 1.0
snntorch_sigmoid       ``e = exp(-alpha x); g alpha e / (e + 1)^2``         snnTorch 1.0 sigmoid(slope)
straight_through       ``g`` (alpha unused)                                 snnTorch 1.0 straight_through_estimator
snntorch_heaviside     ``g * spike`` (alpha unused)                         snnTorch 1.0 heaviside()
snntorch_triangular    ``g * alpha``, negated where ``x >= 0``              snnTorch 1.0 triangular(threshold)
superspike             ``g / (|x| + 1)^2``; Norse 1.1 ignores alpha         Norse 1.1 SuperSpike
triangle               ``g * alpha * relu(1 - |x|)``                        Norse 1.1 Triangle
norse_tanh             ``g * (1 - tanh(x alpha)^2)``                        Norse 1.1 HeaviTanh ("tanh")
no_grad                ``0`` (the spike is a plain comparison)              snnTorch surrogate_disable,
                                                                            Norse method="heaviside"
=====================  =================================================  =========

snnTorch's atan backward, ``(alpha/2 / (1 + (pi/2 alpha x)^2)) * g``, is the
same float operations as SpikingJelly's, so one name serves both. SpikingJelly
neurons on CPU use the formulas of ``spikingjelly/_ops/surrogate.py`` for the
built-in surrogate classes, not the module-level ``*_backward`` helpers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from snncc.errors import UnsupportedError
from snncc.ir.expr import Operand, Val, abs_, clamp, exp, relu, tanh, where
from snncc.ir.expr import sigmoid as sigmoid_

Backward = Callable[[Val, Val, float], Operand]


@dataclass(frozen=True)
class Surrogate:
    """One surrogate: its default sharpness, its gradient and where it comes from."""

    name: str
    alpha: float
    backward: Backward
    source: str
    #: the formula divides by alpha (alpha must be > 0; others take any finite alpha)
    divides_by_alpha: bool = False


SURROGATES: dict[str, Surrogate] = {}


def surrogate(
    name: str, alpha: float, source: str, divides_by_alpha: bool = False
) -> Callable[[Backward], Backward]:
    """Register ``fn(g, x, alpha)`` -> the gradient of the spike at ``x`` times ``g``."""

    def deco(fn: Backward) -> Backward:
        if name in SURROGATES:
            raise UnsupportedError(f"surrogate {name!r} is registered twice")
        SURROGATES[name] = Surrogate(name, alpha, fn, source, divides_by_alpha)
        return fn

    return deco


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


@surrogate("superspike", 100.0, "Norse 1.1 SuperSpike (alpha unused by Norse 1.1)")
def _superspike(g: Val, x: Val, alpha: float) -> Operand:
    return g / (abs_(x) + 1.0) ** 2


@surrogate("triangle", 0.3, "Norse 1.1 Triangle")
def _triangle(g: Val, x: Val, alpha: float) -> Operand:
    return g * alpha * relu(1 - abs_(x))


@surrogate("norse_tanh", 100.0, "Norse 1.1 HeaviTanh")
def _norse_tanh(g: Val, x: Val, alpha: float) -> Operand:
    t = tanh(x * alpha)
    return g * (1 - t * t)


@surrogate("no_grad", 1.0, "snnTorch surrogate_disable, Norse method='heaviside'")
def _no_grad(g: Val, x: Val, alpha: float) -> Operand:
    return 0.0


def get(name: str) -> Surrogate:
    """The surrogate ``name``; an unknown name is refused with the list of choices."""
    try:
        return SURROGATES[name]
    except KeyError:
        raise UnsupportedError(
            f"surrogate {name!r} is not supported; choose one of: {', '.join(sorted(SURROGATES))}"
        ) from None


def default_alpha(name: str) -> float:
    """The default sharpness of surrogate ``name`` (as its source framework defines it)."""
    return get(name).alpha


def check_alpha(name: str, alpha: float) -> None:
    """Refuse a sharpness the formula cannot use (not finite, or <= 0 where it divides)."""
    s = get(name)
    if not math.isfinite(alpha) or (s.divides_by_alpha and not alpha > 0):
        raise UnsupportedError(
            f"surrogate {name!r} alpha must be finite{' and > 0' if s.divides_by_alpha else ''}, "
            f"got {alpha!r}"
        )


def surrogate_backward(name: str, g: Val, x: Val, alpha: float) -> Operand:
    """The gradient reaching ``x`` through a spike at ``x`` when ``g`` arrives at the spike."""
    return get(name).backward(g, x, float(alpha))


#: surrogate name -> default alpha
DEFAULT_ALPHA: dict[str, float] = {}


def _defaults() -> None:
    DEFAULT_ALPHA.update({name: s.alpha for name, s in SURROGATES.items()})


_defaults()
