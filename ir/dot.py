"""Graphviz DOT text for an IR graph (``snncc ir MODEL --format dot``).

Why text and not the graphviz package: the DOT text is all snncc needs to
produce; rendering it (``dot -Tsvg``) is the user's choice of tool, so
nothing here needs the graphviz binary.

Nodes are labelled like the printer (:func:`snncc.ir.printer.format_node`),
temporal-fusion groups become clusters -- inside one cluster per stage once
the partition pass split the schedule --, transfer edges between stages are
bold, and delay edges (the previous step's value) are dashed and do not
constrain the layout's ranking.
"""

from __future__ import annotations

from typing import Any

from snncc.ir.graph import Graph
from snncc.ir.printer import format_node, format_type, format_value, node_order

_SHAPES = {"input": "invhouse", "output": "house", "neuron": "box"}
_GROUP_COLORS = {"layer": "gray60", "neuron": "steelblue", "recurrent": "firebrick"}


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as ``\\n``."""
    body = text.replace("\\", "\\\\").replace('"', '\\"')
    body = body.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{body}"'


def _label(graph: Graph, nid: int) -> str:
    """The printer's line for the node, split as ``%id = op[...]`` / type / name."""
    node = graph.node(nid)
    head = format_node(graph, nid, annotations=False)
    head = head.rsplit(" : ", 1)[0]
    lines = [head, format_type(node)]
    if node.get("name"):
        lines.append(str(node["name"]))
    return "\n".join(lines)


def _node_stmt(graph: Graph, nid: int) -> str:
    op = graph.node(nid).get("op", "?")
    style = ', style="rounded,filled", fillcolor="lightblue"' if op == "neuron" else ""
    return f"n{nid} [label={quote(_label(graph, nid))}, shape={_SHAPES.get(op, 'box')}{style}];"


def _edge_stmt(graph: Graph, u: int, v: int, d: dict[str, Any]) -> str:
    attrs = []
    if graph.nx.in_degree(v) > 1:
        attrs.append(f"label={quote(str(d.get('port', '?')))}")
    if graph.node(v).get("op") == "transfer":
        wire = graph.node(v).get("attrs", {}).get("wire", "?")
        attrs.append(f"style=bold, color=darkgreen, xlabel={quote(str(wire))}")
    delay = d.get("delay", 0)
    if delay:
        attrs.append(f"style=dashed, constraint=false, xlabel={quote(f't-{delay}')}")
    return f"n{u} -> n{v}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";"


def to_dot(graph: Graph, name: str = "snncc") -> str:
    """The graph as Graphviz DOT source text (deterministic)."""
    lines = [
        f"digraph {quote(name)} {{",
        "  rankdir=TB;",
        '  node [fontname="monospace", fontsize=10];',
        '  edge [fontname="monospace", fontsize=9];',
    ]
    order = node_order(graph)
    grouped: set[Any] = set()
    groups = graph.meta.get("groups")
    groups = [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []
    staged = isinstance(graph.meta.get("stages"), list) or any(g.get("stage", 0) for g in groups)
    open_stage: Any = None
    for g in groups:
        if staged and g.get("stage", 0) != open_stage:
            if open_stage is not None:
                lines.append("  }")
            open_stage = g.get("stage", 0)
            label = f"stage {format_value(open_stage)}"
            lines.append(f"  subgraph {quote('cluster_stage_' + str(open_stage))} {{")
            lines.append(f"    label={quote(label)}; color=darkgreen; penwidth=2;")
        indent = "    " if staged else "  "
        members = [n for n in g.get("nodes", []) if n in graph.nx and n not in grouped]
        grouped.update(members)
        label = f"group {format_value(g.get('id'))} {format_value(g.get('kind'))}"
        color = _GROUP_COLORS.get(g.get("kind"), "black")
        lines.append(f"{indent}subgraph {quote('cluster_' + str(g.get('id')))} {{")
        lines.append(f"{indent}  label={quote(label)}; color={color}; style=dashed;")
        lines.extend(f"{indent}  {_node_stmt(graph, n)}" for n in members)
        lines.append(f"{indent}}}")
    if open_stage is not None:
        lines.append("  }")
    lines.extend(f"  {_node_stmt(graph, n)}" for n in order if n not in grouped)
    pos = {n: i for i, n in enumerate(order)}
    edges = sorted(
        graph.nx.edges(data=True),
        key=lambda e: (pos.get(e[1], 0), str(e[2].get("port")), pos.get(e[0], 0)),
    )
    lines.extend(f"  {_edge_stmt(graph, u, v, d)}" for u, v, d in edges)
    lines.append("}")
    return "\n".join(lines) + "\n"
