"""The IR graph: a thin wrapper over ``networkx.MultiDiGraph``.

Why a wrapper and not a bare networkx graph: passes and backends all need the
same few questions answered the same way (inputs in port order, users, a
topological order that ignores recurrent edges, parameter lookup), and an
ordered edge list is easy to get subtly wrong by hand.

Conventions (ARCHITECTURE.md, "The IR"):

- A node id is an ``int``, allocated in insertion order and never reused.
- Node data: ``op`` (a name from :mod:`snncc.ir.ops`), ``attrs`` (static,
  JSON-serialisable), ``params`` (role -> state_dict name, the arrays live in
  :attr:`Graph.params` so tied weights stay tied and ``CompiledModel.params``
  is keyed exactly like the source model's ``state_dict``), ``shape`` (the
  per-step shape, batch as the string ``"B"``), ``dtype`` and ``name`` (the
  source module path, for error messages and the printer). Passes add
  ``group`` and ``schedule``.
- An edge carries ``port`` (the consumer's input index) and ``delay`` (0, or 1
  for a recurrent edge: the producer's value from step t-1).
- Every node computes one per-step value. A whole program maps inputs of shape
  ``[T, *shape]`` to outputs of shape ``[T, *shape]``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

Shape = list  # per-step shape, e.g. ["B", 128]; "B" is the symbolic batch


@dataclass(frozen=True)
class Edge:
    """One use of a value: ``src`` feeds input ``port`` of ``dst``, ``delay`` steps late."""

    src: int
    dst: int
    port: int
    delay: int = 0


class Graph:
    """A per-step dataflow graph of an SNN plus its parameter store."""

    def __init__(self) -> None:
        self.nx: nx.MultiDiGraph = nx.MultiDiGraph()
        self.params: dict[str, np.ndarray] = {}
        #: graph-level facts: "inputs"/"outputs" (ordered node ids), "source"
        #: (framework name), "groups" (set by temporal fusion), free-form notes.
        self.meta: dict[str, Any] = {"inputs": [], "outputs": []}
        self._next_id = 0

    # ------------------------------------------------------------------ build
    def add_node(
        self,
        op: str,
        inputs: Iterable[int | tuple[int, int]] = (),
        *,
        attrs: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        shape: Shape | None = None,
        dtype: str = "float32",
        name: str = "",
    ) -> int:
        """Add a node fed by ``inputs`` (ids, or ``(id, delay)`` pairs) in port order."""
        nid = self._next_id
        self._next_id += 1
        self.nx.add_node(
            nid,
            op=op,
            attrs=dict(attrs or {}),
            params=dict(params or {}),
            shape=list(shape) if shape is not None else None,
            dtype=dtype,
            name=name,
        )
        for port, src in enumerate(inputs):
            src_id, delay = (src, 0) if isinstance(src, int) else src
            self.add_edge(src_id, nid, port, delay)
        if op == "input":
            self.meta["inputs"].append(nid)
        elif op == "output":
            self.meta["outputs"].append(nid)
        return nid

    def add_edge(self, src: int, dst: int, port: int, delay: int = 0) -> None:
        self.nx.add_edge(src, dst, port=port, delay=delay)

    def add_param(self, name: str, value: Any) -> str:
        """Store an array under its state_dict name and return the name."""
        self.params[name] = np.asarray(value)
        return name

    # ------------------------------------------------------------------ query
    def __contains__(self, nid: int) -> bool:
        return nid in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def node(self, nid: int) -> dict[str, Any]:
        """The mutable data dict of a node.

        Read from networkx's node dict itself (``nx.nodes[nid]`` is the same dict through
        a view class that ``torch.compile``'s tracer refuses to enter: programs look nodes
        up while they run, and a compiled ``to_torch()`` module traces that).
        """
        return self.nx._node[nid]

    def nodes(self) -> list[int]:
        """All node ids in a deterministic topological order (see :meth:`topo_order`)."""
        return self.topo_order()

    def op(self, nid: int) -> str:
        return self.nx._node[nid]["op"]

    def attrs(self, nid: int) -> dict[str, Any]:
        return self.nx._node[nid]["attrs"]

    def param(self, nid: int, role: str) -> np.ndarray | None:
        """The array playing ``role`` (e.g. "weight") for node ``nid``, or None."""
        name = self.nx.nodes[nid]["params"].get(role)
        return None if name is None else self.params[name]

    def in_edges(self, nid: int) -> list[Edge]:
        """Edges into ``nid`` sorted by port."""
        edges = [
            Edge(src, nid, d["port"], d.get("delay", 0))
            for src, _, d in self.nx.in_edges(nid, data=True)
        ]
        return sorted(edges, key=lambda e: e.port)

    def inputs(self, nid: int) -> list[int]:
        """Producer ids of ``nid`` in port order."""
        return [e.src for e in self.in_edges(nid)]

    def users(self, nid: int) -> list[Edge]:
        """Edges out of ``nid``, sorted by (consumer, port)."""
        edges = [
            Edge(nid, dst, d["port"], d.get("delay", 0))
            for _, dst, d in self.nx.out_edges(nid, data=True)
        ]
        return sorted(edges, key=lambda e: (e.dst, e.port))

    def same_step_view(self) -> nx.DiGraph:
        """The graph without delay edges: what must be computed within one step."""
        g = nx.DiGraph()
        g.add_nodes_from(self.nx.nodes)
        g.add_edges_from((u, v) for u, v, d in self.nx.edges(data=True) if d.get("delay", 0) == 0)
        return g

    def topo_order(self) -> list[int]:
        """Nodes in topological order of the same-step edges, ties broken by id.

        Delay edges point backwards in time, so they never constrain the order
        within a step; a cycle of delay-0 edges is an error the verifier reports.
        """
        return list(nx.lexicographical_topological_sort(self.same_step_view()))

    def recurrent_components(self) -> list[set[int]]:
        """Strongly connected components (of more than one node, or self-looped) of the full graph.

        Each one contains at least one delay edge; it must run step by step.
        """
        comps = []
        for comp in nx.strongly_connected_components(self.nx):
            if len(comp) > 1 or any(self.nx.has_edge(n, n) for n in comp):
                comps.append(set(comp))
        return sorted(comps, key=min)

    def iter_ops(self, op: str) -> Iterator[int]:
        """Ids of nodes whose op is ``op``, in topological order."""
        return (n for n in self.topo_order() if self.op(n) == op)

    # ----------------------------------------------------------------- rewrite
    def replace_uses(self, old: int, new: int) -> None:
        """Make every consumer of ``old`` read ``new`` instead (ports and delays kept)."""
        for e in self.users(old):
            self.remove_edge(e)
            self.add_edge(new, e.dst, e.port, e.delay)
        self.meta["outputs"] = [new if o == old else o for o in self.meta["outputs"]]

    def remove_edge(self, e: Edge) -> None:
        for key, d in list(self.nx.get_edge_data(e.src, e.dst, default={}).items()):
            if d["port"] == e.port and d.get("delay", 0) == e.delay:
                self.nx.remove_edge(e.src, e.dst, key)
                return
        raise KeyError(f"no edge {e}")

    def remove_node(self, nid: int) -> None:
        """Remove a node and its edges; parameters no node references any more are dropped."""
        self.nx.remove_node(nid)
        for key in ("inputs", "outputs"):
            self.meta[key] = [n for n in self.meta[key] if n != nid]
        self.prune_params()

    def bypass(self, nid: int) -> None:
        """Remove a one-input node, wiring its producer straight to its consumers."""
        (src_edge,) = self.in_edges(nid)
        for e in self.users(nid):
            self.add_edge(src_edge.src, e.dst, e.port, e.delay + src_edge.delay)
        if nid in self.meta["outputs"]:
            self.meta["outputs"] = [src_edge.src if o == nid else o for o in self.meta["outputs"]]
        self.remove_node(nid)

    def prune_params(self) -> None:
        used = {name for n in self.nx.nodes for name in self.nx.nodes[n]["params"].values()}
        for name in list(self.params):
            if name not in used:
                del self.params[name]

    def copy(self) -> Graph:
        """A deep copy of structure and attributes; parameter arrays are shared (treat as read-only)."""
        g = Graph()
        g.nx = copy.deepcopy(self.nx)
        g.params = dict(self.params)
        g.meta = copy.deepcopy(self.meta)
        g._next_id = self._next_id
        return g

    def __repr__(self) -> str:
        return f"<snncc.ir.Graph {len(self)} nodes, {len(self.params)} params>"
