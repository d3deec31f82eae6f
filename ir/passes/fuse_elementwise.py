"""Fuse element-wise ``scale`` and ``add`` nodes into the neighbouring neuron kernel.

Why: a neuron kernel already reads its input and writes its output once per
element and step; a scale or add next to it is one more full pass over
memory for a single flop. Folding it into the kernel as a *prologue* (applied
to the input current before the charge) or an *epilogue* (applied to the
neuron's output) removes that pass. Step format (see :mod:`snncc.ir.ops`)::

    {"kind": "scale", "op": "mul" | "div", "value": float}
    {"kind": "add", "port": k}      # add the neuron's input at port k >= 1

Rules (each keeps results bit-identical: the fused steps apply the same
operations to the same operands in the same order as the original nodes):

- prologue: a ``scale``/``add`` whose only use is port 0 (delay 0) of a
  neuron. ``add(a0, a1, ..., an)`` (torch sums in port order,
  ``((a0 + a1) + ...) + an``) becomes: ``a0`` at port 0, each of ``a1..an`` a
  new input port k with step ``{"kind": "add", "port": k}``, in order; the new
  steps go *before* any existing prologue.
- epilogue: a ``scale``, or an ``add`` whose port 0 or port 1 is a neuron
  (delay 0) that has no other use. The neuron's value is replaced by the
  node's; the other operands become new input ports, added in port order
  after the neuron's output. Only ports 0 and 1 qualify: ``a0 + s`` equals
  ``s + a0`` bit for bit (IEEE addition commutes), but for ``(a0 + a1) + s``
  moving ``s`` first would change the rounding.
- an ``add`` fuses only when every operand has the add's known shape and
  dtype (no broadcasting inside a neuron kernel); a ``scale`` only when its
  dtype equals its input's.

Repeats until nothing fuses, so chains (``scale -> add -> neuron``) fuse whole.
Prologue fusion is tried before epilogue fusion for each node.
"""

from __future__ import annotations

from typing import Any

from snncc.ir.graph import Edge, Graph
from snncc.ir.passes.temporal_fusion import clear_schedule


def _fusable(graph: Graph, nid: int) -> bool:
    """Operands match the node's dtype (and, for add, its known shape): no broadcasting."""
    node = graph.node(nid)
    ins = graph.in_edges(nid)
    if any(graph.node(e.src)["dtype"] != node["dtype"] for e in ins):
        return False
    if node["op"] == "add":
        shape = node["shape"]
        return shape is not None and all(graph.node(e.src)["shape"] == shape for e in ins)
    return True


def _scale_step(graph: Graph, nid: int) -> dict[str, Any]:
    attrs = graph.attrs(nid)
    return {"kind": "scale", "op": attrs["op"], "value": attrs["value"]}


def _add_ports(graph: Graph, neuron: int, operands: list[Edge]) -> list[dict[str, Any]]:
    """Wire each operand to a new input port of ``neuron``; return the add steps."""
    steps = []
    for e in operands:
        port = graph.nx.in_degree(neuron)
        graph.add_edge(e.src, neuron, port, e.delay)
        steps.append({"kind": "add", "port": port})
    return steps


def _fuse_prologue(graph: Graph, nid: int) -> bool:
    uses = graph.users(nid)
    if len(uses) != 1 or not _fusable(graph, nid):
        return False
    (use,) = uses
    neuron = use.dst
    if graph.op(neuron) != "neuron" or use.port != 0 or use.delay != 0 or neuron == nid:
        return False
    ins = graph.in_edges(nid)
    graph.remove_edge(use)
    graph.add_edge(ins[0].src, neuron, 0, ins[0].delay)
    if graph.op(nid) == "scale":
        steps = [_scale_step(graph, nid)]
    else:
        steps = _add_ports(graph, neuron, ins[1:])
    attrs = graph.attrs(neuron)
    attrs["prologue"] = steps + attrs.get("prologue", [])
    graph.remove_node(nid)
    return True


def _epilogue_source(graph: Graph, nid: int) -> int | None:
    """Index into the node's inputs of the neuron it can be fused into, or None."""
    ins = graph.in_edges(nid)
    for i, e in enumerate(ins[:2] if graph.op(nid) == "add" else ins[:1]):
        if e.delay == 0 and graph.op(e.src) == "neuron" and len(graph.users(e.src)) == 1:
            return i
    return None


def _fuse_epilogue(graph: Graph, nid: int) -> bool:
    if not _fusable(graph, nid):
        return False
    i = _epilogue_source(graph, nid)
    if i is None:
        return False
    ins = graph.in_edges(nid)
    neuron = ins[i].src
    if graph.op(nid) == "scale":
        steps = [_scale_step(graph, nid)]
    else:
        steps = _add_ports(graph, neuron, ins[:i] + ins[i + 1 :])
    attrs = graph.attrs(neuron)
    attrs["epilogue"] = attrs.get("epilogue", []) + steps
    graph.node(neuron)["shape"] = graph.node(nid)["shape"]
    graph.replace_uses(nid, neuron)
    graph.remove_node(nid)
    return True


def fuse_elementwise(graph: Graph) -> Graph:
    """Fuse scale/add nodes into neuron prologues and epilogues (see the module docstring)."""
    changed, progress = False, True
    while progress:
        progress = False
        for nid in graph.topo_order():
            if nid in graph and graph.op(nid) in ("scale", "add"):
                if _fuse_prologue(graph, nid) or _fuse_epilogue(graph, nid):
                    progress = changed = True
    if changed:
        clear_schedule(graph)
    return graph
