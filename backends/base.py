"""What every backend provides: lower a scheduled graph to a Program, and run it.

The public API (:mod:`snncc.api`) only talks to these two protocols, so a new
backend is one subpackage that registers a factory returning a
:class:`Backend`.

Arrays at this boundary are the backend's *native* kind (torch.Tensor for
reference/cpu/cuda, jax.Array for jax); :class:`snncc.api.CompiledModel`
converts user inputs (torch, numpy, jax) to it and converts outputs back.

State is a dict ``{node_id: {var: array}}`` holding every stateful node's
variables after the last step (``v``, and e.g. ``i`` for synaptic models) plus,
for recurrent edges, the delayed producer values under ``{"delay": array}``.
``None`` means a fresh state (each neuron at its ``v_init``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from snncc.errors import UnsupportedError
from snncc.ir.graph import Graph


class Program(Protocol):
    """A lowered, runnable model."""

    #: the scheduled graph this program was lowered from
    graph: Graph
    #: parameters as native arrays, keyed by the source model's state_dict names
    params: dict[str, Any]

    @property
    def source(self) -> str:
        """The generated source (the main file), or a readable listing for interpreters."""

    def files(self) -> dict[str, str]:
        """Every generated file, name -> text, as written into an artifact directory."""

    def run(self, x: Any, state: dict | None = None) -> tuple[Any, dict]:
        """Run ``x`` of shape [T, B, ...] from ``state``; return (outputs, final state).

        Outputs are one array [T, B, ...], or a tuple when the model has several.
        """


class Backend(Protocol):
    name: str
    #: pass names run before lowering, in order (see snncc.ir.passes.PASSES)
    pipeline: tuple[str, ...]

    def lower(self, graph: Graph, **options: Any) -> Program:
        """Render/prepare a Program for an already scheduled graph."""

    def to_native(self, x: Any) -> Any:
        """Convert a torch tensor / numpy array / jax array to this backend's array kind."""


def pipeline_for(backend: Backend, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The passes to run before ``backend.lower(graph, **options)``.

    A backend whose passes depend on its options (the cuda backend folds
    BatchNorm only where a precision option has already given up bit-exact
    results) defines ``pipeline_for(options)``; the others have one fixed
    ``pipeline``.
    """
    chooser = getattr(backend, "pipeline_for", None)
    return tuple(chooser(options)) if chooser is not None else tuple(backend.pipeline)


#: the value types of options several backends share (others are checked by their backend):
#: a wrong type is refused by name here, before it can act as "truthy" (``recompute="no"``)
OPTION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "cache_dir": ((str, os.PathLike, type(None)), "a directory path"),
    "recompute": ((bool,), "true or false"),
    "requires_grad": ((bool,), "true or false"),
    "stateless_per_step": ((bool,), "true or false"),
    "training": ((bool, type(None)), "true, false or none"),
    "cuda_graph": ((bool,), "true or false"),
    "autocast_io": ((bool,), "true or false"),
}


def check_options(backend: str, options: Mapping[str, Any], supported: Iterable[str]) -> None:
    """Refuse unknown option names and wrongly typed shared options, naming what is allowed."""
    supported = tuple(supported)
    unknown = sorted(set(options) - set(supported))
    if unknown:
        raise UnsupportedError(
            f"unknown {backend} backend option(s) {unknown}; supported: {', '.join(supported)}"
        )
    for name, value in options.items():
        if name in OPTION_TYPES:
            types, what = OPTION_TYPES[name]
            if not isinstance(value, types):
                raise UnsupportedError(
                    f"{backend} backend option {name}={value!r}: expected {what}"
                )
