"""Surrogate gradients as expressions: each framework's backward of the spike, once.

The spike is Heaviside forward; its backward is ``grad * f(x)`` for some smooth
``f`` (x = membrane - threshold). One module per framework defines its
surrogates with :func:`surrogate`; importing this package registers them all. Two algebraically equal formulas round
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

import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snncc.errors import UnsupportedError
from snncc.ir.expr import Operand, Val

#: ``fn(g, x, alpha, **params)`` -> the gradient reaching ``x``
Backward = Callable[..., Operand]
#: a surrogate's parameters beyond alpha, as the heaviside node carries them: sorted pairs
Params = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Surrogate:
    """One surrogate: its default sharpness, its gradient and where it comes from."""

    name: str
    alpha: float
    backward: Backward
    source: str
    #: the formula divides by alpha (alpha must be > 0; others take any finite alpha)
    divides_by_alpha: bool = False
    #: parameters beyond alpha and their defaults (most surrogates have none): a
    #: SpikingJelly surrogate with two knobs (PiecewiseLeakyReLU's w and c) keeps its first
    #: in alpha and the others here, by their SpikingJelly names
    params: dict[str, float] = field(default_factory=dict)
    #: ``check(alpha, params)`` -> why these values cannot be used, or None
    check: Callable[[float, Mapping[str, float]], str | None] | None = None


SURROGATES: dict[str, Surrogate] = {}


def surrogate(
    name: str,
    alpha: float,
    source: str,
    divides_by_alpha: bool = False,
    params: Mapping[str, float] | None = None,
    check: Callable[[float, Mapping[str, float]], str | None] | None = None,
) -> Callable[[Backward], Backward]:
    """Register ``fn(g, x, alpha, **params)`` -> the gradient of the spike at ``x`` times ``g``."""

    def deco(fn: Backward) -> Backward:
        if name in SURROGATES:
            raise UnsupportedError(f"surrogate {name!r} is registered twice")
        SURROGATES[name] = Surrogate(
            name, alpha, fn, source, divides_by_alpha, dict(params or {}), check
        )
        return fn

    return deco


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


def resolve_params(name: str, params: Mapping[str, Any] | Params | None = None) -> Params:
    """Surrogate ``name``'s parameters beyond alpha: ``params`` over its defaults, as sorted
    (name, float) pairs (empty for a surrogate that has none). Unknown names and values
    that are not finite numbers are refused."""
    s = get(name)
    given = dict(params or {})
    unknown = sorted(set(given) - set(s.params))
    if unknown:
        raise UnsupportedError(
            f"surrogate {name!r} has no parameter {', '.join(map(repr, unknown))} "
            f"(its parameters beyond alpha: {', '.join(s.params) or 'none'})"
        )
    out = {**s.params, **given}
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UnsupportedError(f"surrogate {name!r} parameter {k}={v!r} is not a finite number")
    return tuple(sorted((k, float(v)) for k, v in out.items()))


def check_alpha(name: str, alpha: float, params: Mapping[str, Any] | Params | None = None) -> None:
    """Refuse a sharpness (or another parameter) the formula cannot use: not finite, <= 0
    where it divides by alpha, or what the surrogate's own check refuses."""
    s = get(name)
    if not math.isfinite(alpha) or (s.divides_by_alpha and not alpha > 0):
        raise UnsupportedError(
            f"surrogate {name!r} alpha must be finite{' and > 0' if s.divides_by_alpha else ''}, "
            f"got {alpha!r}"
        )
    resolved = dict(resolve_params(name, params))
    problem = s.check(float(alpha), resolved) if s.check is not None else None
    if problem:
        raise UnsupportedError(f"surrogate {name!r}: {problem}")


def surrogate_backward(
    name: str, g: Val, x: Val, alpha: float, params: Mapping[str, Any] | Params | None = None
) -> Operand:
    """The gradient reaching ``x`` through a spike at ``x`` when ``g`` arrives at the spike."""
    return get(name).backward(g, x, float(alpha), **dict(resolve_params(name, params)))


def _register_all() -> None:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__))
    first = ("spikingjelly", "snntorch", "norse")
    for name in [*first, *(n for n in found if n not in first)]:
        importlib.import_module(f"{__name__}.{name}")


_register_all()

#: surrogate name -> default alpha
DEFAULT_ALPHA: dict[str, float] = {name: s.alpha for name, s in SURROGATES.items()}
