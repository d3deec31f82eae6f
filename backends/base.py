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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.verify import node_ref


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


#: what a backend's programs can do beyond ``run`` (declared by each backend, asked by the API):
#: "torch_module" -- ``to_torch()`` wraps the program as a trainable torch module;
#: "jax_fn" -- ``jax_fn(params, x)`` is a pure jax function; "jax_arrays" -- runs on jax arrays
FEATURES = ("torch_module", "jax_fn", "jax_arrays")


class Backend(Protocol):
    name: str
    #: pass names run before lowering, in order (see snncc.ir.passes.PASSES)
    pipeline: tuple[str, ...]
    #: what its programs can do (see :data:`FEATURES`)
    features: frozenset[str]

    def lower(self, graph: Graph, **options: Any) -> Program:
        """Render/prepare a Program for an already scheduled graph."""

    def to_native(self, x: Any) -> Any:
        """Convert a torch tensor / numpy array / jax array to this backend's array kind."""


def has_feature(backend: Backend, feature: str) -> bool:
    """Whether ``backend`` declares ``feature`` (one of :data:`FEATURES`)."""
    return feature in getattr(backend, "features", frozenset())


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


# ---------------------------------------------------------------------- state
def state_layout(graph: Graph) -> dict[int, tuple[tuple[str, ...], tuple[str, ...]]]:
    """node id -> (variables a carried state must hold, variables it may hold).

    Neurons keep their form's state variables, producers of delay edges their
    last value (``"delay"``), a training-mode dropout shared over time its mask
    (``"mask"``, present only after a training run).
    """
    layout: dict[int, tuple[list[str], list[str]]] = {}
    for n in graph.iter_ops("neuron"):
        spec = NeuronSpec.from_dict(graph.attrs(n)["neuron"])
        layout.setdefault(n, ([], []))[0].extend(spec.state_vars)
    for u, _, d in graph.nx.edges(data=True):
        if d.get("delay", 0) and "delay" not in layout.setdefault(u, ([], []))[0]:
            layout[u][0].append("delay")
    for n in graph.iter_ops("dropout"):
        if graph.attrs(n).get("shared_over_time"):
            layout.setdefault(n, ([], []))[1].append("mask")
    return {n: (tuple(req), tuple(opt)) for n, (req, opt) in layout.items()}


#: node id -> (required variables, optional variables, the node's shape, its dtype, how
#: messages name it)
StateSpec = dict[int, tuple[tuple[str, ...], tuple[str, ...], Any, str, str]]


def state_spec(graph: Graph) -> StateSpec:
    """:func:`state_layout` with each stateful node's shape and dtype: everything
    :func:`check_state` reads of the graph, worked out once per program (a run traced by
    torch.compile cannot walk the networkx graph)."""
    spec: StateSpec = {}
    for n, (req, opt) in state_layout(graph).items():
        node = graph.node(n)
        spec[n] = (req, opt, node.get("shape"), node.get("dtype", "float32"), node_ref(graph, n))
    return spec


def check_state(
    spec: StateSpec, state: Any, batch: int, check_leaf: Callable[[str, Any, str | None], None]
) -> None:
    """Refuse a ``state`` that is not one this program's ``run`` returned, naming the mismatch.

    ``None`` and ``{}`` start fresh. Otherwise every stateful node must be
    there with exactly its variables, each an array of shape ``[batch, ...]``
    as the node's; ``check_leaf(where, value, dtype)`` checks the backend's
    own rules (array kind, dtype -- None: any float --, device). Why so strict: a state that does not
    fit used to be dropped silently, and the run started fresh. ``spec``: the program's
    :func:`state_spec`, worked out when it was lowered.
    """
    if state is None or (isinstance(state, Mapping) and not state):
        return
    hint = "pass the state this model's run() returned, or None to start fresh"
    if not isinstance(state, Mapping):
        raise ShapeError(
            f"state must be the dict run() returned ({{node id: {{variable: array}}}}); got "
            f"{type(state).__name__}; {hint}"
        )
    ids = " ".join(f"%{n}" for n in sorted(spec)) or "none"
    unknown = [k for k in state if isinstance(k, bool) or k not in spec]
    if unknown:
        raise ShapeError(
            f"state has entries for {', '.join(repr(k) for k in unknown[:5])}, which hold no "
            f"state in this model (its stateful nodes: {ids}); {hint}"
        )
    missing = [n for n in spec if n not in state and spec[n][0]]
    if missing:
        raise ShapeError(
            f"state lacks {', '.join(spec[n][4] for n in missing[:5])} (this model's "
            f"stateful nodes: {ids}); {hint}"
        )
    for n, variables in state.items():
        required, optional, shape, dtype, ref = spec[n]
        if not isinstance(variables, Mapping):
            raise ShapeError(
                f"state of {ref} must be a dict of variables {list(required)}; got "
                f"{type(variables).__name__}"
            )
        lacking = [v for v in required if v not in variables]
        if lacking:
            raise ShapeError(
                f"state of {ref} lacks {', '.join(map(repr, lacking))}; this node keeps "
                f"{list(required)} (pass the whole state a previous run returned)"
            )
        extra = [v for v in variables if v not in required and v not in optional]
        if extra:
            raise ShapeError(
                f"state of {ref} has unknown variables {extra}; this node keeps {list(required)}"
            )
        for var, value in variables.items():
            where = f"state[{n}][{var!r}] of {ref}"
            if var == "mask":  # dropout's mask: any float dtype; a wrong shape is redrawn
                check_leaf(where, value, None)
                continue
            check_leaf(where, value, dtype)
            got = tuple(getattr(value, "shape", ()))
            want = (batch, *shape[1:]) if isinstance(shape, list) else None
            if (want is not None and got != tuple(want)) or (want is None and got[:1] != (batch,)):
                shown = list(want) if want is not None else [batch, "..."]
                raise ShapeError(
                    f"{where} has shape {list(got)}; this input needs {shown} (batch {batch})"
                )
