"""Surrogate spike functions: Heaviside forward, a framework's exact surrogate backward.

Why each framework's formula is copied operation by operation: snncc promises
the same gradients as the source framework, and two algebraically equal
formulas (``g * (a / b)`` vs ``g / b * a``) round differently. Every backward
here is the installed package's own expression, in its own order:

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
same float operations as SpikingJelly's (``c / t`` with a Python ``c`` is
``t.reciprocal() * c`` in both, ``pow_(2)`` is ``t * t``), so one name serves
both; tests compare them bit for bit.

SpikingJelly neurons on CPU use the formulas of ``spikingjelly/_ops/surrogate.py``
(ids 0-6) for the built-in surrogate classes, not the module-level
``*_backward`` helpers, so those are the ones copied here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from snncc.errors import UnsupportedError

Backward = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _sigmoid(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    s = torch.sigmoid(alpha * x)
    return g * ((1 - s) * s * alpha)


def _atan(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    z = x * (math.pi / 2 * alpha)
    return g * ((alpha / 2) / (1 + z * z))


def _piecewise_quadratic(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return g * (alpha - alpha * alpha * x.abs()).clamp_min(0)


def _piecewise_exp(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return g * ((alpha / 2) * torch.exp(-alpha * x.abs()))


def _soft_sign(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    z = 1 / alpha + x.abs()
    return g * (1 / (2 * alpha * z * z))


def _sj_superspike(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    z = 1 + x.abs()
    return g * (alpha / (z * z))


def _erf(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    z = alpha * x
    return g * ((alpha / math.sqrt(math.pi)) * torch.exp(-z * z))


def _rect(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha * (x.abs() < 0.5 / alpha).to(x) * g


def _fast_sigmoid(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return g / (alpha * torch.abs(x) + 1.0) ** 2


def _superspike(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    # Norse 1.1's SuperSpike.backward never reads alpha; copied as installed.
    return g / (torch.abs(x) + 1.0).pow(2)


def _triangle(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return g * alpha * torch.relu(1 - x.abs())


def _snntorch_sigmoid(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    # snnTorch 1.0 Sigmoid.backward: grad * slope * exp(-slope x) / ((exp(-slope x) + 1) ** 2)
    return g * alpha * torch.exp(-alpha * x) / ((torch.exp(-alpha * x) + 1) ** 2)


def _straight_through(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return g.clone()


def _snntorch_heaviside(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    # snnTorch 1.0 Heaviside.backward: grad_output * out, out = (x > 0).float()
    return g * (x > 0).float()


def _snntorch_triangular(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    grad = g * alpha
    neg = x >= 0
    grad[neg] = -grad[neg]
    return grad


def _norse_tanh(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    # Norse 1.1 HeaviTanh.backward: dy * (1 - (x * k).tanh().pow(2))
    return g * (1 - (x * alpha).tanh().pow(2))


def _no_grad(g: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.zeros_like(g)


#: name -> (backward(grad_output, x, alpha), default alpha)
_SURROGATES: dict[str, tuple[Backward, float]] = {
    "sigmoid": (_sigmoid, 4.0),
    "atan": (_atan, 2.0),
    "piecewise_quadratic": (_piecewise_quadratic, 1.0),
    "piecewise_exp": (_piecewise_exp, 1.0),
    "soft_sign": (_soft_sign, 2.0),
    "sj_superspike": (_sj_superspike, 1.0),
    "erf": (_erf, 2.0),
    "rect": (_rect, 1.0),
    "fast_sigmoid": (_fast_sigmoid, 25.0),
    "snntorch_sigmoid": (_snntorch_sigmoid, 25.0),
    "straight_through": (_straight_through, 1.0),
    "snntorch_heaviside": (_snntorch_heaviside, 1.0),
    "snntorch_triangular": (_snntorch_triangular, 1.0),
    "superspike": (_superspike, 100.0),
    "triangle": (_triangle, 0.3),
    "norse_tanh": (_norse_tanh, 100.0),
    "no_grad": (_no_grad, 1.0),
}

#: surrogate name -> default alpha, for every surrogate snncc can run.
SURROGATE_DEFAULTS: dict[str, float] = {name: a for name, (_, a) in _SURROGATES.items()}

#: SpikingJelly 2.0 surrogate class name (in spikingjelly.activation_based.surrogate)
#: -> snncc surrogate name.
SPIKINGJELLY_SURROGATES: dict[str, str] = {
    "Sigmoid": "sigmoid",
    "ATan": "atan",
    "PiecewiseQuadratic": "piecewise_quadratic",
    "PiecewiseExp": "piecewise_exp",
    "SoftSign": "soft_sign",
    "SuperSpike": "sj_superspike",
    "Erf": "erf",
    "Rect": "rect",
}


def _backward_of(name: str) -> Backward:
    try:
        return _SURROGATES[name][0]
    except KeyError:
        raise UnsupportedError(
            f"surrogate {name!r} is not supported; choose one of: {', '.join(sorted(_SURROGATES))}"
        ) from None


def default_alpha(name: str) -> float:
    """The default sharpness of surrogate ``name`` (as its source framework defines it)."""
    _backward_of(name)
    return _SURROGATES[name][1]


class _Spike(torch.autograd.Function):
    """Heaviside forward (``x >= 0`` or ``x > 0``), surrogate backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, name: str, alpha: float, strict: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.name = name
        ctx.alpha = alpha
        return (x > 0).to(x.dtype) if strict else (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return _backward_of(ctx.name)(grad_output, x, ctx.alpha), None, None, None


def spike(x: torch.Tensor, name: str = "sigmoid", alpha: float | None = None) -> torch.Tensor:
    """``(x >= 0)`` as x's dtype, with surrogate ``name``'s gradient (SpikingJelly's firing)."""
    _backward_of(name)
    return _Spike.apply(x, name, float(default_alpha(name) if alpha is None else alpha), False)


def spike_gt(
    x: torch.Tensor, name: str = "fast_sigmoid", alpha: float | None = None
) -> torch.Tensor:
    """``(x > 0)`` as x's dtype, with surrogate ``name``'s gradient (snnTorch's and Norse's firing)."""
    _backward_of(name)
    return _Spike.apply(x, name, float(default_alpha(name) if alpha is None else alpha), True)


def surrogate_grad(x: torch.Tensor, name: str, alpha: float | None = None) -> torch.Tensor:
    """The surrogate derivative d spike / d x at ``x`` (the backward with grad_output = 1)."""
    a = float(default_alpha(name) if alpha is None else alpha)
    return _backward_of(name)(torch.ones_like(x), x, a)


def from_spikingjelly(obj: Any) -> tuple[str, float]:
    """Convert a SpikingJelly surrogate module instance to snncc's ``(name, alpha)``.

    Only the exact built-in classes are accepted: a subclass may override the
    forward or backward, and SpikingJelly itself then runs it through a
    different code path, so converting it by its parent's name would silently
    change the gradient.
    """
    cls = type(obj)
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    supported = ", ".join(f"surrogate.{k}" for k in SPIKINGJELLY_SURROGATES)
    if (
        cls.__module__ != "spikingjelly.activation_based.surrogate"
        or cls.__name__ not in SPIKINGJELLY_SURROGATES
    ):
        raise UnsupportedError(
            f"SpikingJelly surrogate {qualname} is not supported; supported: {supported}"
        )
    if not getattr(obj, "spiking", True):
        raise UnsupportedError(
            f"SpikingJelly surrogate {qualname} has spiking=False (a smooth forward, "
            "not a spike); snncc supports only spiking surrogates"
        )
    alpha = getattr(obj, "alpha", None)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise UnsupportedError(
            f"SpikingJelly surrogate {qualname} has alpha={alpha!r}; snncc needs a Python "
            "int or float alpha (a tensor alpha is not supported)"
        )
    return SPIKINGJELLY_SURROGATES[cls.__name__], float(alpha)


#: snnTorch 1.0 surrogate factory (``snntorch.surrogate.<name>(...)`` returns a closure
#: ``inner``) -> (snncc name, the closure variable holding its sharpness, or None)
SNNTORCH_SURROGATES: dict[str, tuple[str, str | None]] = {
    "atan": ("atan", "alpha"),
    "fast_sigmoid": ("fast_sigmoid", "slope"),
    "sigmoid": ("snntorch_sigmoid", "slope"),
    "straight_through_estimator": ("straight_through", None),
    "heaviside": ("snntorch_heaviside", None),
    "triangular": ("snntorch_triangular", "threshold"),
}

#: Norse 1.1 ``threshold(x, method, alpha)`` method -> snncc surrogate name
NORSE_SURROGATES: dict[str, str] = {
    "super": "superspike",
    "triangle": "triangle",
    "tanh": "norse_tanh",
    "heaviside": "no_grad",
}


def _scalar(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnsupportedError(f"{what}={value!r}; snncc needs a number")
    return float(value)


def from_snntorch(spike_grad: Any) -> tuple[str, float]:
    """Convert an snnTorch neuron's ``spike_grad`` to snncc's ``(name, alpha)``.

    Accepted: the closures returned by ``snntorch.surrogate.atan(alpha)``,
    ``fast_sigmoid(slope)``, ``sigmoid(slope)``, ``straight_through_estimator()``,
    ``heaviside()``, ``triangular(threshold)``, and the neuron's own
    ``_surrogate_bypass`` (``surrogate_disable=True``: no gradient). Anything
    else (stochastic or two-parameter surrogates, custom functions) is
    refused: its gradient cannot be reproduced by name.
    """
    import inspect

    supported = ", ".join(f"surrogate.{k}" for k in SNNTORCH_SURROGATES)
    if getattr(spike_grad, "__name__", "") == "_surrogate_bypass" and (
        getattr(spike_grad, "__module__", "") or ""
    ).startswith("snntorch"):
        return "no_grad", SURROGATE_DEFAULTS["no_grad"]
    module = getattr(spike_grad, "__module__", None)
    qualname = getattr(spike_grad, "__qualname__", "") or ""
    factory = qualname.split(".<locals>.")[0]
    if (
        module != "snntorch.surrogate"
        or not qualname.endswith(".<locals>.inner")
        or factory not in SNNTORCH_SURROGATES
    ):
        raise UnsupportedError(
            f"snnTorch spike_grad {module}.{qualname or type(spike_grad).__name__} is not "
            f"supported; supported: {supported} (or surrogate_disable=True)"
        )
    name, var = SNNTORCH_SURROGATES[factory]
    if var is None:
        return name, SURROGATE_DEFAULTS[name]
    nonlocals = inspect.getclosurevars(spike_grad).nonlocals
    if var not in nonlocals:
        raise UnsupportedError(f"snnTorch surrogate.{factory}: cannot read its {var!r}")
    return name, _scalar(nonlocals[var], f"snnTorch surrogate.{factory} {var}")


def from_norse(method: str, alpha: Any) -> tuple[str, float]:
    """Convert Norse's ``p.method`` / ``p.alpha`` to snncc's ``(name, alpha)``."""
    if method not in NORSE_SURROGATES:
        raise UnsupportedError(
            f"Norse threshold method {method!r} is not supported; supported: "
            f"{', '.join(repr(m) for m in NORSE_SURROGATES)}"
        )
    return NORSE_SURROGATES[method], _scalar(alpha, f"Norse alpha for method {method!r}")
