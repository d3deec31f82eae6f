"""Canonicalize: one spelling for every attr, and no dead nodes.

Why: frontends write what the source module holds (``kernel_size=3``,
``stride=None``, tuples, a reshape's batch as ``"B"``), and every later pass,
backend template and golden dump would otherwise have to accept each
spelling. After this pass:

- neuron ``attrs["neuron"]`` is a full :meth:`NeuronSpec.to_dict` (defaults
  filled, numbers as floats). A missing ``v_init`` is derived the way
  SpikingJelly initialises the membrane (``v_reset``, or 0 when ``v_reset`` is
  None); a missing ``alpha`` takes the surrogate's default. Values
  that are present are never changed: that would change the maths;
- conv/pool window attrs are lists of ints of the op's rank
  (``kernel_size=3`` -> ``[3, 3]``; a pool's ``stride=None`` means the kernel
  size, as in torch), ``adaptive_avgpool2d.output_size`` likewise
  (``None`` entries kept: they mean "keep that size");
- ``reshape.shape`` writes the batch as ``-1`` and, when the node's per-step
  shape is known, every other dimension explicitly;
- tuples anywhere in attrs become lists and numpy scalars Python numbers, so
  the graph round-trips through JSON unchanged;
- nodes whose value no output depends on (through any edge, delayed or not)
  are removed; input nodes always stay (they are the program's signature);
- a ``repeat_time`` sits after the stateless row-wise layers it fed, so a
  static prefix (a repeated image's stem) is computed once
  (:mod:`snncc.ir.passes.hoist_static`).

Node ids are never renumbered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from snncc.errors import IRError
from snncc.ir.graph import Graph
from snncc.ir.neuron import SURROGATES, NeuronSpec
from snncc.ir.passes.hoist_static import hoist_static
from snncc.ir.passes.temporal_fusion import clear_schedule

#: op -> (rank, attrs that are per-dimension windows)
_WINDOW_ATTRS = {
    "conv1d": (1, ("stride", "padding", "dilation")),
    "conv2d": (2, ("stride", "padding", "dilation")),
    "conv_transpose1d": (1, ("stride", "padding", "output_padding", "dilation")),
    "conv_transpose2d": (2, ("stride", "padding", "output_padding", "dilation")),
    "avgpool2d": (2, ("kernel_size", "stride", "padding")),
    "maxpool2d": (2, ("kernel_size", "stride", "padding", "dilation")),
}
_FLOAT_FIELDS = ("tau", "v_threshold", "v_reset", "alpha", "v_init")


def _plain(v: Any) -> Any:
    """Tuples -> lists, numpy scalars/arrays -> Python values, recursively."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    return v


def _where(graph: Graph, nid: int) -> str:
    node = graph.node(nid)
    return f"node %{nid} ({node['op']} {node.get('name', '')!r})"


def canonical_neuron(d: dict[str, Any]) -> dict[str, Any]:
    """The full, normalised spec dict for a (possibly partial) neuron spec dict."""
    d = _plain(dict(d))
    if "v_init" not in d:
        v_reset = d.get("v_reset", 0.0)
        d["v_init"] = float(v_reset) if v_reset is not None else 0.0
    if "alpha" not in d and d.get("surrogate", "sigmoid") in SURROGATES:
        d["alpha"] = SURROGATES[d.get("surrogate", "sigmoid")]
    for key in _FLOAT_FIELDS:
        if isinstance(d.get(key), (int, float)) and not isinstance(d[key], bool):
            d[key] = float(d[key])
    return NeuronSpec.from_dict(d).to_dict()


def _int_list(value: Any, rank: int, what: str) -> Any:
    """3 -> [3, 3]; (1, 2) -> [1, 2]; strings (conv padding 'same'/'valid') stay."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)] * rank
    if isinstance(value, (list, tuple)) and len(value) == rank:
        return [int(v) for v in value]
    raise IRError(f"{what} is {value!r}; expected an int or {rank} ints")


def _canonical_windows(graph: Graph, nid: int) -> None:
    op, attrs = graph.op(nid), graph.attrs(nid)
    rank, keys = _WINDOW_ATTRS[op]
    if op in ("avgpool2d", "maxpool2d") and attrs.get("stride") is None:
        attrs["stride"] = attrs["kernel_size"]
    for key in keys:
        if key in attrs:
            attrs[key] = _int_list(attrs[key], rank, f"{_where(graph, nid)} attrs.{key}")


def _canonical_reshape(graph: Graph, nid: int) -> None:
    attrs = graph.attrs(nid)
    target = [-1 if d == "B" else d for d in _plain(attrs["shape"])]
    shape = graph.node(nid).get("shape")
    if shape is not None and all(isinstance(d, int) for d in shape[1:]):
        target = [-1, *shape[1:]]
    elif target and target[0] != -1:
        raise IRError(
            f"{_where(graph, nid)} attrs.shape {attrs['shape']!r} does not keep the batch "
            "first (write it as -1 or 'B')"
        )
    attrs["shape"] = target


def _live_nodes(graph: Graph) -> set[int]:
    """Every node some output depends on (any edge, delays included), plus the inputs."""
    live = set(graph.meta["outputs"]) | set(graph.meta["inputs"])
    stack = list(graph.meta["outputs"])
    while stack:
        for src in graph.nx.predecessors(stack.pop()):
            if src not in live:
                live.add(src)
                stack.append(src)
    return live


def canonicalize(graph: Graph) -> Graph:
    """Normalise attrs and drop dead nodes (see the module docstring)."""
    for nid in sorted(graph.nx.nodes):
        node = graph.node(nid)
        node["attrs"] = _plain(node["attrs"])
        if node["shape"] is not None:
            node["shape"] = _plain(node["shape"])
        op = node["op"]
        if op == "neuron":
            try:
                node["attrs"]["neuron"] = canonical_neuron(node["attrs"]["neuron"])
            except (TypeError, ValueError, IRError) as e:
                raise IRError(f"{_where(graph, nid)}: invalid neuron spec: {e}") from e
        elif op in _WINDOW_ATTRS:
            _canonical_windows(graph, nid)
        elif op == "adaptive_avgpool2d":
            size = node["attrs"]["output_size"]
            node["attrs"]["output_size"] = [size, size] if not isinstance(size, list) else size
        elif op == "reshape":
            _canonical_reshape(graph, nid)
    dead = set(graph.nx.nodes) - _live_nodes(graph)
    if dead:
        clear_schedule(graph)
        for nid in sorted(dead):
            graph.remove_node(nid)
    return hoist_static(graph)
