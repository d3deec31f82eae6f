"""Each framework's surrogate objects, named as :mod:`snncc.ir.surrogates` names them.

A frontend meets a SpikingJelly surrogate module, an snnTorch ``spike_grad``
closure or Norse's ``method`` string; these functions turn each into snncc's
``(name, alpha)``, or refuse it by name when its gradient cannot be reproduced
(a subclass, a custom function, a stochastic surrogate).
"""

from __future__ import annotations

from typing import Any

import torch

from snncc.errors import UnsupportedError
from snncc.ir.surrogates import DEFAULT_ALPHA as SURROGATE_DEFAULTS
from snncc.ir.surrogates import check_alpha, resolve_params

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
    "PiecewiseLeakyReLU": "piecewise_leaky_relu",
    "NonzeroSignLogAbs": "nonzero_sign_log_abs",
    "SquarewaveFourierSeries": "squarewave_fourier_series",
    "S2NN": "s2nn",
    "QPseudoSpike": "q_pseudo_spike",
    "LeakyKReLU": "leaky_k_relu",
    "FakeNumericalGradient": "fake_numerical_gradient",
    "LogTailedReLU": "log_tailed_relu",
    "DeterministicPass": "straight_through",
}

#: where a SpikingJelly surrogate keeps snncc's alpha and its other parameters, for the
#: classes whose sharpness is not their ``alpha`` attribute: class -> (the attribute that
#: is alpha, or None for a parameterless one; snncc parameter -> attribute)
SPIKINGJELLY_SURROGATE_ATTRS: dict[str, tuple[str | None, dict[str, str]]] = {
    "PiecewiseLeakyReLU": ("w", {"c": "c"}),
    "SquarewaveFourierSeries": ("T_period", {"n": "n"}),
    "S2NN": ("alpha", {"beta": "beta"}),
    "LeakyKReLU": ("k", {"leak": "leak"}),
    "DeterministicPass": (None, {}),
}

#: SpikingJelly surrogate classes refused, and why (the message names the reason)
SPIKINGJELLY_REFUSED: dict[str, str] = {
    "PoissonPass": "its forward draws Bernoulli samples (a stochastic spike)",
    "MultiLevelSpikeCount": "its forward is a multi-level spike count, not a Heaviside spike",
}


def spikingjelly_surrogate(obj: Any) -> tuple[str, float, dict[str, float]]:
    """Convert a SpikingJelly surrogate module instance to snncc's ``(name, alpha, params)``;
    ``params``: its parameters beyond alpha (PiecewiseLeakyReLU's ``c``...), empty for most.

    Only the exact built-in classes are accepted: a subclass may override the
    forward or backward, and SpikingJelly itself then runs it through a
    different code path, so converting it by its parent's name would silently
    change the gradient. A surrogate whose forward is not a Heaviside spike
    (``spiking=False``, ``MultiLevelSpikeCount``) or is stochastic (``PoissonPass``)
    is refused.
    """
    cls = type(obj)
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    supported = ", ".join(f"surrogate.{k}" for k in SPIKINGJELLY_SURROGATES)
    if cls.__module__ == "spikingjelly.activation_based.surrogate" and (
        cls.__name__ in SPIKINGJELLY_REFUSED
    ):
        raise UnsupportedError(
            f"SpikingJelly surrogate {qualname} is not supported: "
            f"{SPIKINGJELLY_REFUSED[cls.__name__]}; supported: {supported}"
        )
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
    name = SPIKINGJELLY_SURROGATES[cls.__name__]
    alpha_attr, param_attrs = SPIKINGJELLY_SURROGATE_ATTRS.get(cls.__name__, ("alpha", {}))

    def number(attr: str) -> float:
        value = getattr(obj, attr, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UnsupportedError(
                f"SpikingJelly surrogate {qualname} has {attr}={value!r}; snncc needs a Python "
                f"int or float {attr} (a tensor {attr} is not supported)"
            )
        return float(value)

    alpha = SURROGATE_DEFAULTS[name] if alpha_attr is None else number(alpha_attr)
    params = {p: number(attr) for p, attr in param_attrs.items()}
    check_alpha(name, alpha, params)  # e.g. QPseudoSpike(alpha=1) divides by zero
    return name, alpha, params


def from_spikingjelly(obj: Any) -> tuple[str, float]:
    """Convert a SpikingJelly surrogate module instance to snncc's ``(name, alpha)``
    (:func:`spikingjelly_surrogate`, for the callers that carry alpha only).

    A surrogate with parameters beyond alpha is converted only while they hold their
    defaults; otherwise it is refused, naming :func:`spikingjelly_surrogate`, rather than
    dropping them (which would silently change the gradient).
    """
    name, alpha, params = spikingjelly_surrogate(obj)
    if params and params != dict(resolve_params(name)):
        raise UnsupportedError(
            f"SpikingJelly surrogate {type(obj).__name__} has parameters beyond alpha "
            f"({', '.join(f'{k}={v:g}' for k, v in params.items())}) that a (name, alpha) pair "
            "cannot carry; use snncc.frontend.surrogates.spikingjelly_surrogate"
        )
    return name, alpha


#: snnTorch 1.0 surrogate factory (``snntorch.surrogate.<name>(...)`` returns a closure
#: ``inner``) -> (snncc name, the closure variable holding its sharpness, or None)
SNNTORCH_SURROGATES: dict[str, tuple[str, str | None]] = {
    "atan": ("atan", "alpha"),
    "fast_sigmoid": ("fast_sigmoid", "slope"),
    "sigmoid": ("snntorch_sigmoid", "slope"),
    "straight_through_estimator": ("straight_through", None),
    "heaviside": ("snntorch_heaviside", None),
    "triangular": ("snntorch_triangular", "threshold"),
    "spike_rate_escape": ("spike_rate_escape", "slope"),
    "SFS": ("sparse_fast_sigmoid", "slope"),
}

#: snnTorch's two-parameter surrogates: factory -> {snncc surrogate parameter beyond alpha:
#: the closure variable holding it} (their sharpness, ``slope``, is alpha)
SNNTORCH_SURROGATE_PARAMS: dict[str, dict[str, str]] = {
    "spike_rate_escape": {"beta": "beta"},
    "SFS": {"B": "B"},
}

#: snnTorch 1.0 surrogate factories snncc refuses, and why
SNNTORCH_REFUSED: dict[str, str] = {
    "SSO": (
        "its backward is stochastic (torch.rand_like noise on the non-spiking neurons), so "
        "no compiled program can reproduce it"
    ),
    "LSO": (
        "it calls snnTorch's stochastic spike operator (a random backward), and in snnTorch "
        "1.0 with the wrong arguments, so it raises in snnTorch itself"
    ),
    "custom_surrogate": (
        "its gradient is an arbitrary Python function, which cannot be reproduced by name; "
        "use one of the built-in surrogates"
    ),
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


def snntorch_surrogate(spike_grad: Any) -> tuple[str, float, dict[str, float]]:
    """Convert an snnTorch neuron's ``spike_grad`` to snncc's ``(name, alpha, params)``;
    ``params``: its parameters beyond alpha (``spike_rate_escape``'s ``beta``, ``SFS``'s
    ``B``), empty for the others.

    Accepted: the closures returned by ``snntorch.surrogate.atan(alpha)``,
    ``fast_sigmoid(slope)``, ``sigmoid(slope)``, ``straight_through_estimator()``,
    ``heaviside()``, ``triangular(threshold)``, ``spike_rate_escape(beta, slope)``,
    ``SFS(slope, B)`` and the neuron's own ``_surrogate_bypass``
    (``surrogate_disable=True``: no gradient). Refused, each with its reason:
    ``SSO`` and ``LSO`` (stochastic), ``custom_surrogate`` (a Python function), and
    anything else.
    """
    import inspect

    supported = ", ".join(f"surrogate.{k}" for k in SNNTORCH_SURROGATES)
    if getattr(spike_grad, "__name__", "") == "_surrogate_bypass" and (
        getattr(spike_grad, "__module__", "") or ""
    ).startswith("snntorch"):
        return "no_grad", SURROGATE_DEFAULTS["no_grad"], {}
    module = getattr(spike_grad, "__module__", None)
    qualname = getattr(spike_grad, "__qualname__", "") or ""
    factory = qualname.split(".<locals>.")[0]
    ours = module == "snntorch.surrogate" and qualname.endswith(".<locals>.inner")
    if ours and factory in SNNTORCH_REFUSED:
        raise UnsupportedError(
            f"snnTorch spike_grad surrogate.{factory} is not supported: "
            f"{SNNTORCH_REFUSED[factory]}; supported: {supported} (or surrogate_disable=True)"
        )
    if not ours or factory not in SNNTORCH_SURROGATES:
        raise UnsupportedError(
            f"snnTorch spike_grad {module}.{qualname or type(spike_grad).__name__} is not "
            f"supported; supported: {supported} (or surrogate_disable=True)"
        )
    name, var = SNNTORCH_SURROGATES[factory]
    if var is None:
        return name, SURROGATE_DEFAULTS[name], {}
    nonlocals = inspect.getclosurevars(spike_grad).nonlocals

    def number(attr: str) -> float:
        if attr not in nonlocals:
            raise UnsupportedError(f"snnTorch surrogate.{factory}: cannot read its {attr!r}")
        return _scalar(nonlocals[attr], f"snnTorch surrogate.{factory} {attr}")

    alpha = number(var)
    params = {p: number(attr) for p, attr in SNNTORCH_SURROGATE_PARAMS.get(factory, {}).items()}
    check_alpha(name, alpha, params)
    return name, alpha, params


def from_snntorch(spike_grad: Any) -> tuple[str, float]:
    """Convert an snnTorch ``spike_grad`` to snncc's ``(name, alpha)``
    (:func:`snntorch_surrogate`, for the callers that carry alpha only).

    A two-parameter surrogate is converted only while its second parameter holds snnTorch's
    default; otherwise it is refused, naming :func:`snntorch_surrogate`, rather than dropped
    (which would silently change the gradient).
    """
    name, alpha, params = snntorch_surrogate(spike_grad)
    if params and params != dict(resolve_params(name)):
        raise UnsupportedError(
            f"snnTorch surrogate {name} has parameters beyond its slope "
            f"({', '.join(f'{k}={v:g}' for k, v in params.items())}) that a (name, alpha) pair "
            "cannot carry; use snncc.frontend.surrogates.snntorch_surrogate"
        )
    return name, alpha


def from_norse(method: str, alpha: Any) -> tuple[str, float]:
    """Convert Norse's ``p.method`` / ``p.alpha`` to snncc's ``(name, alpha)``."""
    if method not in NORSE_SURROGATES:
        raise UnsupportedError(
            f"Norse threshold method {method!r} is not supported; supported: "
            f"{', '.join(repr(m) for m in NORSE_SURROGATES)}"
        )
    return NORSE_SURROGATES[method], _scalar(alpha, f"Norse alpha for method {method!r}")
