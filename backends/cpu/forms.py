"""A neuron node's kernel inputs from its params: the quantities, derived with torch.

The kernels take each *quantity* of a form (snnTorch's ``beta.clamp(0, 1)``,
Norse's ``dt * tau_mem_inv``, PLIF's ``sigmoid(w)``: the form definition's
derive graph, :mod:`snncc.ir.neurons`) as an argument. They are computed here
by the reference backend's torch lowering of that graph, so autograd
differentiates the derivation exactly as the reference backend does, and the
kernels the rest (:mod:`snncc.backends.cpu.autograd`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from snncc.backends.cpu.autograd import KernelPair, run_layer
from snncc.backends.kernels import NeuronKernelInfo, connected
from snncc.backends.reference.neurons import derived_constants
from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor

__all__ = ["check_node_params", "connected", "derive_params", "run_form"]


def check_node_params(spec: NeuronSpec, node_roles: Sequence[str], where: str) -> None:
    """The spec's param roles must be exactly the node's (for the form's roles).

    The kernels take a quantity as an argument when the spec lists its role and
    as a literal otherwise; the reference reads whatever param the node has.
    A disagreement would run different values, so it is refused.
    """
    form = spec.form
    roles = set(form.roles) if form is not None else set()
    have = set(node_roles) & roles
    listed = set(spec.roles) & roles
    if have != listed:
        raise UnsupportedError(
            f"{where}: the node's params {sorted(have)} and its spec's param roles "
            f"{sorted(listed)} disagree; the fused kernel needs them to match"
        )


def derive_params(
    spec: NeuronSpec, info: NeuronKernelInfo, params: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The kernel's quantities from the node's params (by role), derived with torch."""
    got = derived_constants(spec, params)
    missing = [q for q in info.param_args if q not in got]
    if missing:
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r}: the kernel's quantities {missing} are not "
            "derived from the node's params"
        )
    return {q: got[q] for q in info.param_args}


def run_form(
    kernel: KernelPair,
    x: Tensor,
    rec: Tensor | None = None,
    adds: Sequence[Tensor] = (),
    state: Mapping[str, Tensor] | None = None,
    params: Mapping[str, Tensor] | None = None,
    widen: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One layer with its recurrent port: x [T, *shape] -> (out, final state).

    ``rec``: port 1 of the recurrent forms, [T, *shape]; ``params``: the
    kernel's quantities (:func:`derive_params`); see
    :func:`snncc.backends.cpu.autograd.run_layer`.
    """
    info = kernel.info
    if (rec is not None) != info.has_rec:
        raise ShapeError(
            f"neuron charge form {kernel.spec.charge!r} "
            + ("needs its recurrent input (port 1)" if info.has_rec else "has no port 1 input")
        )
    if state is not None:
        missing = [v for v in info.state_vars if v not in state]
        if missing:
            raise ShapeError(
                f"state of a {kernel.spec.charge!r} neuron lacks {missing[0]!r}; it keeps "
                f"{list(info.state_vars)}"
            )
    ports = () if rec is None else (rec,)
    return run_layer(kernel, x, ports, adds, state, params, widen)
