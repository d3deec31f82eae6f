"""Drop nodes that compute their input unchanged.

Why: every node is a kernel launch, a buffer and a line in every dump; a
node that returns its input exactly costs all that for nothing. Each node
removed here returns its input bit for bit (forward and backward), so the
reference pipeline runs this pass without losing exactness.

Removed (the producer is wired straight to the consumers, ports and delays kept):

- ``identity``;
- ``dropout`` in eval mode (``attrs.training`` False or missing, as the
  frontend sets it from the module's mode), or with ``p == 0`` (torch's
  training-mode dropout then multiplies by 1);
- ``scale`` by exactly 1 (``mul`` or ``div``) when its dtype equals its
  input's, so no type promotion is lost;
- ``reshape`` / ``flatten`` whose per-step shape equals its input's (both
  known), and ``flatten`` with ``start_dim == end_dim`` (torch returns the input).

Kept: any node whose removal would need a delay of 2 (a delay-1 input feeding
a delay-1 use), and a node that feeds itself.

An eval-mode dropout with ``p > 0`` that is removed is listed by name in
``meta["dropped_dropout"]``: a program that is later switched to training
mode (``to_torch().train()``, the ``training=True`` option) has no dropout
left to apply, and refuses instead of training without it
(:func:`dropped_dropout`).
"""

from __future__ import annotations

from snncc.ir.graph import Graph
from snncc.ir.passes.temporal_fusion import clear_schedule


def _same_shape(graph: Graph, nid: int, src: int) -> bool:
    a, b = graph.node(nid)["shape"], graph.node(src)["shape"]
    return a is not None and b is not None and list(a) == list(b)


def is_noop(graph: Graph, nid: int) -> bool:
    """Whether ``nid`` returns its only input unchanged (see the module docstring)."""
    node = graph.node(nid)
    op, attrs = node["op"], node["attrs"]
    if op == "identity":
        return True
    if op == "dropout":
        return attrs.get("training", False) is False or attrs.get("p") == 0
    (edge,) = graph.in_edges(nid)
    if op == "scale":
        return (
            attrs.get("op") in ("mul", "div")
            and attrs.get("value") == 1
            and node["dtype"] == graph.node(edge.src)["dtype"]
        )
    if op == "flatten":
        return attrs.get("start_dim") == attrs.get("end_dim") or _same_shape(graph, nid, edge.src)
    if op == "reshape":
        return _same_shape(graph, nid, edge.src)
    return False


def _bypassable(graph: Graph, nid: int) -> bool:
    (edge,) = graph.in_edges(nid)
    if edge.src == nid:
        return False
    return all(edge.delay + use.delay <= 1 for use in graph.users(nid))


def dropped_dropout(graph: Graph) -> list[str]:
    """Names of the eval-mode dropouts (p > 0) this pass removed from ``graph``."""
    return list(graph.meta.get("dropped_dropout", []))


def drop_noops(graph: Graph) -> Graph:
    """Remove every no-op node that can be bypassed (see the module docstring)."""
    candidates = ("identity", "dropout", "scale", "flatten", "reshape")
    changed = False
    for nid in graph.topo_order():
        if graph.op(nid) in candidates and is_noop(graph, nid) and _bypassable(graph, nid):
            if graph.op(nid) == "dropout" and float(graph.attrs(nid).get("p", 0)) > 0:
                name = graph.node(nid).get("name") or f"%{nid}"
                graph.meta["dropped_dropout"] = [*dropped_dropout(graph), name]
            graph.bypass(nid)
            changed = True
    if changed:
        clear_schedule(graph)
    return graph
