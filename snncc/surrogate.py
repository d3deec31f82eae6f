"""Surrogate spike functions for users of the API: Heaviside forward, a surrogate backward.

The surrogates themselves are defined once, as expressions, in
:mod:`snncc.ir.surrogates` (the table of every name, its formula and its
source); the reference backend lowers them to torch
(:mod:`snncc.backends.reference.lowering`). The conversions from each
framework's surrogate objects live with the frontends
(:mod:`snncc.frontend.surrogates`); they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from snncc.backends.reference.lowering import SpikeFunction, surrogate_grad_of
from snncc.frontend.surrogates import (
    NORSE_SURROGATES,
    SNNTORCH_SURROGATES,
    SPIKINGJELLY_SURROGATES,
    from_norse,
    from_snntorch,
    from_spikingjelly,
)
from snncc.ir.surrogates import DEFAULT_ALPHA as SURROGATE_DEFAULTS
from snncc.ir.surrogates import default_alpha, get, resolve_params

__all__ = [
    "NORSE_SURROGATES",
    "SNNTORCH_SURROGATES",
    "SPIKINGJELLY_SURROGATES",
    "SURROGATE_DEFAULTS",
    "default_alpha",
    "from_norse",
    "from_snntorch",
    "from_spikingjelly",
    "spike",
    "spike_gt",
    "surrogate_grad",
]


def _alpha(name: str, alpha: float | None) -> float:
    return float(get(name).alpha if alpha is None else alpha)


def spike(
    x: torch.Tensor,
    name: str = "sigmoid",
    alpha: float | None = None,
    params: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """``(x >= 0)`` as x's dtype, with surrogate ``name``'s gradient (SpikingJelly's firing).

    ``params``: the surrogate's parameters beyond alpha, for the few that have some
    (``sj_piecewise_leaky_relu``'s ``c``...); their defaults fill the rest.
    """
    traced = getattr(x, "snncc_spike", None)  # a neuron step being traced into the IR
    if traced is not None:
        return traced(">=", name, _alpha(name, alpha), params)
    return SpikeFunction.apply(x, name, _alpha(name, alpha), False, resolve_params(name, params))


def spike_gt(
    x: torch.Tensor,
    name: str = "fast_sigmoid",
    alpha: float | None = None,
    params: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """``(x > 0)`` as x's dtype, with surrogate ``name``'s gradient (snnTorch's and Norse's firing)."""
    traced = getattr(x, "snncc_spike", None)  # a neuron step being traced into the IR
    if traced is not None:
        return traced(">", name, _alpha(name, alpha), params)
    return SpikeFunction.apply(x, name, _alpha(name, alpha), True, resolve_params(name, params))


def surrogate_grad(
    x: torch.Tensor,
    name: str,
    alpha: float | None = None,
    params: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """The surrogate derivative d spike / d x at ``x`` (the backward with grad_output = 1)."""
    a = _alpha(name, alpha)
    return surrogate_grad_of(name, a, torch.ones_like(x), x, resolve_params(name, params))
