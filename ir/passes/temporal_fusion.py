"""Temporal fusion: split the graph into layer-first execution groups.

Why: an SNN step is cheap and running T of them one after another is what
costs. Layer-first execution runs each group over all T steps before the
next group starts (ARCHITECTURE.md, "The one idea"):

- ``layer`` groups (schedule ``"layer"``) hold stateless nodes; they see the
  whole sequence at once as T*B rows (one GEMM instead of T);
- ``neuron`` groups (schedule ``"scan"``) hold one neuron node whose kernel
  loops over t with the state in registers;
- ``recurrent`` groups (schedule ``"step"``) hold one strongly connected
  component of the graph (a loop closed by a delay-1 edge, see
  :meth:`Graph.recurrent_components`), which alone must run step by step.

Grouping is a list schedule over the condensed DAG (each recurrent component
one unit): repeatedly take every stateless node that is ready, transitively,
into one layer group, then emit every ready stateful unit as its own group.
Delaying stateful units until no stateless work is left makes the layer
groups as large (and as few) as this greedy order can. The result is stored
as ``node["group"]`` (group id), ``node["schedule"]`` and
``graph.meta["groups"] = [{"id", "kind", "nodes", "stage"}, ...]`` in execution
order; a recurrent group also carries ``"fusable"`` (the plan of one kernel over
time, :mod:`snncc.ir.recurrent`) or ``"step_reason"`` (why it must run step by
step); group ids are 0.. in that order, each group's nodes are in topological
order, and every group runs on stage 0 until the partition pass splits the
schedule into stages (:mod:`snncc.ir.schedule` is how backends read it).
"""

from __future__ import annotations

from typing import Any

from snncc.ir.graph import Graph
from snncc.ir.ops import OPS
from snncc.ir.recurrent import annotate as annotate_recurrent

SCHEDULES = {"layer": "layer", "neuron": "scan", "recurrent": "step"}


def clear_schedule(graph: Graph) -> None:
    """Forget groups, schedules and stages (a rewrite after temporal fusion invalidates them)."""
    graph.meta.pop("groups", None)
    graph.meta.pop("stages", None)
    for nid in graph.nx.nodes:
        graph.node(nid).pop("group", None)
        graph.node(nid).pop("schedule", None)
        graph.node(nid).pop("stage", None)


def _units(graph: Graph) -> tuple[dict[int, int], dict[int, list[int]], dict[int, str]]:
    """Map nodes to units (a recurrent component, or a single node) and name each unit's kind."""
    unit_of: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    kind: dict[int, str] = {}
    for comp in graph.recurrent_components():
        uid = min(comp)
        members[uid] = sorted(comp)
        kind[uid] = "recurrent"
        unit_of.update(dict.fromkeys(comp, uid))
    for nid in graph.nx.nodes:
        if nid in unit_of:
            continue
        unit_of[nid] = nid
        members[nid] = [nid]
        kind[nid] = "neuron" if OPS[graph.op(nid)].stateful else "layer"
    return unit_of, members, kind


def _schedule(graph: Graph) -> list[tuple[str, list[int]]]:
    """The greedy layer-first list schedule: [(kind, unit ids), ...] in execution order."""
    unit_of, members, kind = _units(graph)
    succ: dict[int, set[int]] = {u: set() for u in members}
    indeg: dict[int, int] = dict.fromkeys(members, 0)
    for u, v in {(unit_of[a], unit_of[b]) for a, b in graph.nx.edges()}:
        if u != v and v not in succ[u]:
            succ[u].add(v)
            indeg[v] += 1
    ready = {u for u, d in indeg.items() if d == 0}
    out: list[tuple[str, list[int]]] = []

    def done(u: int) -> None:
        ready.discard(u)
        for v in succ[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.add(v)

    while ready:
        layer: list[int] = []
        while stateless := sorted(u for u in ready if kind[u] == "layer"):
            for u in stateless:
                layer.append(u)
                done(u)
        if layer:
            out.append(("layer", layer))
        for u in sorted(u for u in ready if kind[u] != "layer"):
            out.append((kind[u], [u]))
            done(u)
    if sum(len(units) for _, units in out) != len(members):
        raise AssertionError("temporal_fusion: the unit graph has a cycle (verifier missed it)")
    return [(k, [n for u in units for n in members[u]]) for k, units in out]


def temporal_fusion(graph: Graph) -> Graph:
    """Assign every node to a layer / neuron / recurrent group (see the module docstring)."""
    clear_schedule(graph)
    pos = {nid: i for i, nid in enumerate(graph.topo_order())}
    groups: list[dict[str, Any]] = []
    for gid, (kind, nodes) in enumerate(_schedule(graph)):
        nodes = sorted(nodes, key=pos.__getitem__)
        groups.append({"id": gid, "kind": kind, "nodes": nodes, "stage": 0})
        for nid in nodes:
            graph.node(nid)["group"] = gid
            graph.node(nid)["schedule"] = SCHEDULES[kind]
    graph.meta["groups"] = groups
    annotate_recurrent(graph)
    return graph
