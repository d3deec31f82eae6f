"""The IR printer: one deterministic, numbered line per node.

Why a text form at all: every pass dump (``--dump-ir DIR``), every verifier
message and every golden test reads it, so it must be stable (same graph,
same text, byte for byte) and short enough that a person can diff two dumps.

Line format (ARCHITECTURE.md, "The IR")::

    %4 = neuron[lif sj_lif_decay_input tau=2 th=1 hard(0) sigmoid(4)](%3) : f32[B,128] group=2  # sn1

- ``%N`` is the node id; nodes appear in :meth:`Graph.topo_order` (ids break ties).
- ``op[...]`` shows the attrs (sorted by key, ``k=v``) and then the params as
  ``role=state_dict_name[shape]`` (in the op table's role order); a neuron shows :meth:`NeuronSpec.summary`
  instead of its raw spec dict.
- ``(%3, %7@t-1)`` are the inputs in port order; ``@t-1`` marks a delay edge.
- ``: f32[B,128]`` is dtype and per-step shape; ``group=`` / ``stage=`` /
  ``dev=`` appear once passes set them; ``# name`` is the source module path.
- The header lists the schedule: each group in execution order (with its
  ``stage=`` once the partition pass split the schedule) and, after that
  pass, one line per stage with its groups and modelled costs.

The printer never raises on a broken graph (it is what you look at when the
verifier complains): unknown values print as ``?``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import networkx as nx

from snncc.ir.graph import Edge, Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.ops import OPS

_DTYPES = {
    "float16": "f16",
    "bfloat16": "bf16",
    "float32": "f32",
    "float64": "f64",
    "int8": "i8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "uint8": "u8",
    "bool": "bool",
}

#: meta keys the header shows in their own lines; the rest print as ``meta:``.
_HEADER_META = (
    "inputs",
    "outputs",
    "groups",
    "source",
    "step_mode",
    "passes",
    "partition",
    "stages",
    "parallel",
)


def format_value(v: Any) -> str:
    """A compact, deterministic text for an attr value (floats in shortest round-trip form)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e16:
            return str(int(v)) if v != 0 or math.copysign(1.0, v) > 0 else "-0"
        return repr(v)
    if isinstance(v, str):
        if v and all(c.isalnum() or c in "_.-+<>=" for c in v):
            return v
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{" + ",".join(f"{format_value(str(k))}:{format_value(x)}" for k, x in v.items()) + "}"
        )
    return "?" + type(v).__name__


def format_name(name: Any) -> str:
    """A module or parameter name as printed: as is when it is plain printable text, else
    JSON-quoted, so a name from a file (with a newline, say) can never forge a line."""
    text = str(name)
    if text and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return json.dumps(text)


def format_type(node: dict[str, Any]) -> str:
    """``f32[B,128]``: dtype abbreviation plus per-step shape (``?`` when unknown)."""
    dtype = node.get("dtype")
    short = _DTYPES.get(dtype, format_name(dtype)) if dtype is not None else "?"
    shape = node.get("shape")
    if shape is None:
        return f"{short}[?]"
    try:
        return f"{short}[" + ",".join(format_value(d) for d in shape) + "]"
    except TypeError:
        return f"{short}[?]"


def _format_steps(steps: Any, graph: Graph, nid: int) -> str:
    """Prologue/epilogue steps: ``*2``, ``/4``, ``+%7`` (the value at that port)."""
    if not isinstance(steps, list):
        return format_value(steps)
    by_port = {e.port: e for e in _in_edges(graph, nid)}
    out = []
    for step in steps:
        if not isinstance(step, dict):
            out.append(format_value(step))
        elif step.get("kind") == "scale":
            sym = {"mul": "*", "div": "/"}.get(step.get("op"), "?")
            out.append(f"{sym}{format_value(step.get('value'))}")
        elif step.get("kind") == "add":
            e = by_port.get(step.get("port"))
            out.append("+" + (_format_arg(e) if e is not None else f"port{step.get('port')}"))
        else:
            out.append(format_value(step))
    return "[" + ",".join(out) + "]"


def _in_edges(graph: Graph, nid: int) -> list[Edge]:
    """Like :meth:`Graph.in_edges`, but tolerant of edges missing port/delay (shown as ?)."""
    edges = []
    for src, _, d in graph.nx.in_edges(nid, data=True):
        port, delay = d.get("port", -1), d.get("delay", 0)
        edges.append(Edge(src, nid, port if isinstance(port, int) else -1, delay))
    return sorted(edges, key=lambda e: (e.port, repr(e.src)))


def _format_arg(e: Any) -> str:
    return f"%{format_value(e.src)}" + (f"@t-{e.delay}" if e.delay else "")


def _role_order(op: Any, params: dict[str, Any]) -> list[str]:
    """Roles in the op table's order (weight before bias before bn_*), unknown ones last."""
    opd = OPS.get(op)
    table = [*opd.required_params, *opd.optional_params] if opd else []
    return [r for r in table if r in params] + sorted(r for r in params if r not in table)


def _format_params(graph: Graph, op: Any, params: Any) -> list[str]:
    if not isinstance(params, dict):
        return [f"params={format_value(params)}"]
    parts = []
    for role in _role_order(op, params):
        name = params[role]
        arr = graph.params.get(name) if isinstance(name, str) else None
        shape = ",".join(str(d) for d in arr.shape) if arr is not None else "?"
        parts.append(f"{format_name(role)}={format_name(name)}[{shape}]")
    return parts


def format_inner(graph: Graph, nid: int) -> str:
    """What goes inside ``op[...]``: attrs then params (neurons: the spec summary first)."""
    node = graph.node(nid)
    attrs = node.get("attrs")
    parts: list[str] = []
    if isinstance(attrs, dict):
        attrs = dict(attrs)
        if node.get("op") == "neuron" and "neuron" in attrs:
            try:
                summary = NeuronSpec.from_dict(attrs.pop("neuron")).summary()
                parts.append(summary if summary.isprintable() else json.dumps(summary))
            except Exception:  # noqa: BLE001 - a broken spec still prints
                parts.append("spec=?")
        for key in sorted(attrs):
            if key in ("prologue", "epilogue"):
                parts.append(f"{key}={_format_steps(attrs[key], graph, nid)}")
            else:
                parts.append(f"{format_name(key)}={format_value(attrs[key])}")
    elif attrs is not None:
        parts.append(f"attrs={format_value(attrs)}")
    parts.extend(_format_params(graph, node.get("op"), node.get("params", {})))
    return " ".join(parts)


def format_node(graph: Graph, nid: int, *, annotations: bool = True) -> str:
    """One node's line; ``annotations=False`` leaves out ``group=``/``dev=`` and the name."""
    node = graph.node(nid)
    op = format_name(node.get("op", "?"))
    inner = format_inner(graph, nid)
    text = f"%{format_value(nid)} = {op}" + (f"[{inner}]" if inner else "")
    edges = _in_edges(graph, nid)
    if edges or op != "input":
        text += "(" + ", ".join(_format_arg(e) for e in edges) + ")"
    text += " : " + format_type(node)
    if annotations:
        if "group" in node:
            text += f" group={format_value(node['group'])}"
        if "stage" in node:
            text += f" stage={format_value(node['stage'])}"
        if "device" in node:
            text += f" dev={format_value(node['device'])}"
        if node.get("name"):
            text += f"  # {format_name(node['name'])}"
    return text


def node_order(graph: Graph) -> list[int]:
    """Topological order, or plain id order when a same-step cycle makes that impossible."""
    try:
        return graph.topo_order()
    except (nx.NetworkXUnfeasible, nx.NetworkXError, TypeError):
        return sorted(graph.nx.nodes, key=repr)


def _ids(ids: Any) -> str:
    if not isinstance(ids, (list, tuple)):
        return format_value(ids)
    return " ".join(f"%{format_value(i)}" for i in ids) if ids else "-"


def format_header(graph: Graph) -> list[str]:
    """Header lines: I/O, parameter count, source facts, passes run and the groups."""
    meta = graph.meta
    n_values = sum(int(getattr(a, "size", 0)) for a in graph.params.values())
    lines = [
        f"# snncc IR: {len(graph)} nodes, inputs: {_ids(meta.get('inputs', []))}, "
        f"outputs: {_ids(meta.get('outputs', []))}, "
        f"params: {len(graph.params)} ({n_values} values)"
    ]
    facts = [f"{k}={format_value(meta[k])}" for k in ("source", "step_mode") if k in meta]
    if "passes" in meta:
        facts.append(f"passes={format_value(meta['passes'])}")
    if facts:
        lines.append("# " + " ".join(facts))
    rest = {k: meta[k] for k in sorted(meta) if k not in _HEADER_META}
    if rest:
        lines.append(
            "# meta: " + " ".join(f"{format_name(k)}={format_value(v)}" for k, v in rest.items())
        )
    groups = meta.get("groups")
    if isinstance(groups, list):
        staged = isinstance(meta.get("stages"), list) or any(
            isinstance(g, dict) and g.get("stage", 0) != 0 for g in groups
        )
        for g in groups:
            if isinstance(g, dict):
                stage = f" stage={format_value(g.get('stage', 0))}" if staged else ""
                lines.append(
                    f"# group {format_value(g.get('id'))} {format_value(g.get('kind'))}{stage}: "
                    f"{_ids(g.get('nodes', []))}{_recurrent_note(g)}"
                )
    lines.extend(_stage_lines(meta))
    return lines


def _recurrent_note(group: dict[str, Any]) -> str:
    """A recurrent group's fused plan (snncc.ir.recurrent) or why it runs step by step."""
    plan = group.get("fusable")
    if isinstance(plan, dict):
        extra = f" cat=%{format_value(plan.get('cat'))}" if plan.get("cat") is not None else ""
        return (
            f"  (fusable: {format_value(plan.get('pattern'))} linear=%"
            f"{format_value(plan.get('linear'))} -> neuron=%{format_value(plan.get('neuron'))}"
            f" port {format_value(plan.get('port'))}{extra})"
        )
    if "step_reason" in group:
        return f"  (step only: {format_value(group['step_reason'])})"
    return ""


def _ms(seconds: Any) -> str:
    return f"{seconds * 1e3:.4g} ms" if isinstance(seconds, (int, float)) else "?"


def _mb(n: Any) -> str:
    return f"{n / 1e6:.4g} MB" if isinstance(n, (int, float)) else "?"


def _stage_lines(meta: dict[str, Any]) -> list[str]:
    """The partition pass's request, each stage's modelled cost, and the schedule choice."""
    lines = []
    request = meta.get("partition")
    if isinstance(request, dict):
        lines.append(
            "# partition: "
            + " ".join(f"{format_name(k)}={format_value(v)}" for k, v in request.items())
        )
    stages = meta.get("stages")
    for st in stages if isinstance(stages, list) else []:
        if not isinstance(st, dict):
            continue
        lines.append(
            f"# stage {format_value(st.get('id'))}: groups {_ids_plain(st.get('groups', []))}; "
            f"cost {_ms(st.get('cost'))} = compute {_ms(st.get('compute'))} + receive "
            f"{_ms(st.get('receive'))} per chunk; memory {_mb(st.get('memory'))}"
        )
    parallel = meta.get("parallel")
    if isinstance(parallel, dict):
        predicted = parallel.get("predicted", {})
        shown = []
        for name, p in predicted.items() if isinstance(predicted, dict) else []:
            if isinstance(p, dict) and p.get("feasible"):
                speedup = p.get("speedup")
                x = f" {speedup:.2f}x" if isinstance(speedup, (int, float)) else ""
                shown.append(f"{format_name(name)} {_ms(p.get('seconds'))}{x}")
            elif isinstance(p, dict):
                shown.append(f"{format_name(name)} n/a")
        lines.append(
            f"# parallel: {format_value(parallel.get('schedule'))} on "
            f"{format_value(parallel.get('devices'))} devices (modelled: {', '.join(shown)})"
        )
    return lines


def _ids_plain(ids: Any) -> str:
    if not isinstance(ids, (list, tuple)):
        return format_value(ids)
    return ",".join(format_value(i) for i in ids) if ids else "-"


def format_graph(graph: Graph) -> str:
    """The whole graph as text: the header, then one line per node in topological order."""
    lines = format_header(graph)
    lines.extend(format_node(graph, nid) for nid in node_order(graph))
    return "\n".join(lines) + "\n"
