"""The IR verifier: every invariant passes and backends rely on, checked in one place.

Why collect every problem instead of stopping at the first: a pass that breaks
the graph usually breaks it in several places at once, and seeing them all
together points at the cause. Each problem names the node (``%id``, op, source
name) and the invariant, e.g.::

    node %4 (neuron 'sn1'): input ports [0, 2] are not contiguous 0..1

The pass driver (:func:`snncc.ir.passes.run_pipeline`) runs this after every
pass; :func:`snncc.ir.serde.load` runs it on every loaded graph.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import networkx as nx
import numpy as np

from snncc.errors import IRError, SnnccError
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.neurons import build
from snncc.ir.ops import ACTIVATIONS, OPS, REDUCTIONS
from snncc.ir.safe_files import MAX_ELEMENTS

#: group kind -> the node schedule temporal fusion gives its members
GROUP_SCHEDULES = {"layer": "layer", "neuron": "scan", "recurrent": "step"}

_NODE_KEYS = ("op", "attrs", "params", "shape", "dtype", "name")
_BN_PARAMS = ("bn_weight", "bn_bias", "bn_mean", "bn_var")


def node_ref(graph: Graph, nid: Any) -> str:
    """``node %4 (neuron 'sn1')``: how every message names a node."""
    if nid not in graph.nx:
        return f"node %{nid} (not in the graph)"
    data = graph.nx.nodes[nid]
    name = data.get("name")
    return f"node %{nid} ({data.get('op', '?')}" + (f" {name!r})" if name else ")")


def verify(graph: Graph) -> None:
    """Raise :class:`IRError` listing every broken invariant of ``graph``; return None if sound."""
    problems: list[str] = []
    for nid in sorted(graph.nx.nodes, key=repr):
        problems.extend(f"{node_ref(graph, nid)}: {p}" for p in _check_node(graph, nid))
    problems.extend(_check_edges(graph))
    problems.extend(_check_io(graph))
    problems.extend(_check_params(graph))
    cycle = _same_step_cycle(graph)
    if cycle:
        problems.append(cycle)
    else:
        problems.extend(_check_static(graph))
        if "groups" in graph.meta or any("group" in d for _, d in graph.nx.nodes(data=True)):
            problems.extend(_check_groups(graph))
    if problems:
        if len(problems) == 1:
            raise IRError(f"invalid IR graph: {problems[0]}")
        raise IRError(f"invalid IR graph ({len(problems)} problems):\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------- nodes
def _check_node(graph: Graph, nid: Any) -> list[str]:
    if not isinstance(nid, int) or isinstance(nid, bool):
        return [f"node id {nid!r} is not an int"]
    data = graph.nx.nodes[nid]
    missing = [k for k in _NODE_KEYS if k not in data]
    if missing:
        return [f"missing node fields {missing} (every node has {list(_NODE_KEYS)})"]
    op = data["op"]
    if op not in OPS:
        return [f"unknown op {op!r}; known ops: {', '.join(sorted(OPS))}"]
    if not isinstance(data["attrs"], dict) or not isinstance(data["params"], dict):
        return ["attrs and params must be dicts"]
    problems = _check_ports(graph, nid)
    problems += _check_attrs(data)
    problems += _check_param_roles(graph, data)
    problems += _check_shape(data)
    if op == "neuron":
        problems += _check_neuron(graph, nid)
    elif op in ("input", "output"):
        index = data["attrs"].get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            problems.append(f"attrs.index {index!r} is not an int")
    elif op == "scale":
        problems += _check_scale(data["attrs"])
    elif op in _ATTR_CHECKS:
        problems += _ATTR_CHECKS[op](data["attrs"], data["shape"])
    elif op == "batchnorm" and not isinstance(data["attrs"].get("training"), bool):
        problems.append(f"attrs.training {data['attrs'].get('training')!r} is not a bool")
    return problems


def _check_ports(graph: Graph, nid: int) -> list[str]:
    opd = OPS[graph.nx.nodes[nid]["op"]]
    ports = [d.get("port") for _, _, d in graph.nx.in_edges(nid, data=True)]
    n = len(ports)
    problems = []
    if n < opd.min_inputs or (opd.max_inputs is not None and n > opd.max_inputs):
        bound = (
            f"exactly {opd.min_inputs}"
            if opd.min_inputs == opd.max_inputs
            else f"{opd.min_inputs}..{opd.max_inputs if opd.max_inputs is not None else 'any'}"
        )
        problems.append(f"has {n} inputs; op {opd.name!r} takes {bound}")
    if any(not isinstance(p, int) or isinstance(p, bool) for p in ports):
        return problems + [f"input ports {ports!r} are not all ints"]
    dup = sorted(p for p, c in Counter(ports).items() if c > 1)
    if dup:
        problems.append(f"input ports {dup} are fed more than once")
    elif sorted(ports) != list(range(n)):
        problems.append(f"input ports {sorted(ports)} are not contiguous 0..{n - 1}")
    return problems


def _check_attrs(data: dict[str, Any]) -> list[str]:
    opd = OPS[data["op"]]
    problems = []
    missing = [a for a in opd.required_attrs if a not in data["attrs"]]
    if missing:
        problems.append(f"missing required attrs {missing}")
    try:
        json.dumps(data["attrs"], allow_nan=True)
    except (TypeError, ValueError) as e:
        problems.append(f"attrs are not JSON-serialisable ({e})")
    return problems


def _check_param_roles(graph: Graph, data: dict[str, Any]) -> list[str]:
    opd = OPS[data["op"]]
    params = data["params"]
    problems = []
    missing = [r for r in opd.required_params if r not in params]
    if missing:
        problems.append(f"missing required params {missing}")
    known = set(opd.required_params) | set(opd.optional_params)
    if data["op"] == "neuron":
        known |= set(_learnable(data)) | set(_spec_roles(data))
    unknown = sorted(r for r in params if r not in known)
    if unknown:
        problems.append(
            f"unknown param roles {unknown}; op {opd.name!r} takes {sorted(known) or 'none'}"
        )
    for role, name in params.items():
        if not isinstance(name, str):
            problems.append(f"param role {role!r} maps to {name!r}, not a state_dict name")
        elif name not in graph.params:
            problems.append(f"param {role}={name!r} is not in graph.params")
    folded = [r for r in _BN_PARAMS if r in params]
    if folded and (len(folded) != len(_BN_PARAMS) or "bn_eps" not in data["attrs"]):
        problems.append(
            f"a folded BatchNorm needs all of {list(_BN_PARAMS)} and attrs.bn_eps; has {folded}"
        )
    return problems


def _spec_roles(data: dict[str, Any]) -> tuple[str, ...]:
    """The param roles a neuron spec declares (``param_roles``: learnable or not)."""
    spec = data["attrs"].get("neuron")
    roles = spec.get("param_roles", ()) if isinstance(spec, dict) else ()
    return tuple(r for r in roles if isinstance(r, str))


def _own_ports(spec: Any) -> int:
    """How many input ports a neuron's form has itself (x, and e.g. rec); fused ports follow."""
    try:
        return len(NeuronSpec.from_dict(spec).input_ports)
    except (IRError, TypeError, ValueError):
        return 1


def _learnable(data: dict[str, Any]) -> tuple[str, ...]:
    spec = data["attrs"].get("neuron")
    learnable = spec.get("learnable", ()) if isinstance(spec, dict) else ()
    return tuple(r for r in learnable if isinstance(r, str))


def _check_shape(data: dict[str, Any]) -> list[str]:
    shape = data["shape"]
    problems = []
    if not isinstance(data["dtype"], str):
        problems.append(f"dtype {data['dtype']!r} is not a string")
    if shape is None:
        return problems
    ok = (
        isinstance(shape, list)
        and len(shape) >= 1
        and shape[0] == "B"
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape[1:])
    )
    if not ok:
        problems.append(f"shape {shape!r} is not None or a list ['B', int, ...] (batch first)")
    elif math.prod(shape[1:]) > MAX_ELEMENTS:
        problems.append(
            f"shape {shape!r} has {math.prod(shape[1:])} elements per sample, more than the "
            f"{MAX_ELEMENTS} snncc allocates for one array"
        )
    return problems


def _non_finite(arr: Any) -> bool:
    """Whether a floating array holds NaN or infinity (False for anything else)."""
    try:
        a = np.asarray(arr)
    except Exception:  # noqa: BLE001 - not an array: other checks name it
        return False
    return a.dtype.kind == "f" and a.size > 0 and not bool(np.isfinite(a).all())


def _check_scale(attrs: dict[str, Any]) -> list[str]:
    problems = []
    if attrs.get("op") not in ("mul", "div"):
        problems.append(f"attrs.op {attrs.get('op')!r} is not 'mul' or 'div'")
    value = attrs.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        problems.append(f"attrs.value {value!r} is not a number")
    elif not math.isfinite(value):
        problems.append(f"attrs.value {value!r} is not finite")
    return problems


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _rank(shape: Any) -> int | None:
    return len(shape) if isinstance(shape, list) else None


def _check_add_scalar(a: dict[str, Any], shape: Any) -> list[str]:
    v = a.get("value")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return [] if ok else [f"attrs.value {v!r} is not a finite number"]


def _check_permute(a: dict[str, Any], shape: Any) -> list[str]:
    perm = a.get("perm")
    if not isinstance(perm, list) or not all(_is_int(p) for p in perm):
        return [f"attrs.perm {perm!r} is not a list of dims"]
    if sorted(perm) != list(range(len(perm))) or not perm or perm[0] != 0:
        return [f"attrs.perm {perm!r} is not a permutation of the per-step dims with 0 first"]
    if _rank(shape) not in (None, len(perm)):
        return [f"attrs.perm {perm!r} does not match the per-step rank {_rank(shape)}"]
    return []


def _check_slice(a: dict[str, Any], shape: Any) -> list[str]:
    problems = []
    if not _is_int(a.get("dim"), 1):
        problems.append(f"attrs.dim {a.get('dim')!r} is not a per-step dim >= 1")
    if not (_is_int(a.get("start")) and _is_int(a.get("stop")) and _is_int(a.get("step"), 1)):
        problems.append(
            f"attrs start={a.get('start')!r} stop={a.get('stop')!r} step={a.get('step')!r} "
            "are not ints >= 0 (step >= 1)"
        )
    return problems


def _check_reduce(a: dict[str, Any], shape: Any) -> list[str]:
    problems = []
    if a.get("op") not in REDUCTIONS:
        problems.append(f"attrs.op {a.get('op')!r} is not one of {list(REDUCTIONS)}")
    dims = a.get("dims")
    if not isinstance(dims, list) or not dims or not all(_is_int(d, 1) for d in dims):
        problems.append(f"attrs.dims {dims!r} is not a list of per-step dims >= 1")
    elif dims != sorted(set(dims)):
        problems.append(f"attrs.dims {dims!r} are not sorted and distinct")
    if not isinstance(a.get("keepdim"), bool):
        problems.append(f"attrs.keepdim {a.get('keepdim')!r} is not a bool")
    return problems


def _check_layernorm(a: dict[str, Any], shape: Any) -> list[str]:
    ns = a.get("normalized_shape")
    problems = []
    if not isinstance(ns, list) or not ns or not all(_is_int(d, 1) for d in ns):
        problems.append(f"attrs.normalized_shape {ns!r} is not a list of sizes")
    elif isinstance(shape, list) and (len(ns) >= len(shape) or list(shape[-len(ns) :]) != ns):
        problems.append(
            f"attrs.normalized_shape {ns!r} is not the trailing per-step dims of {shape!r}"
        )
    eps = a.get("eps")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        problems.append(f"attrs.eps {eps!r} is not a number >= 0")
    return problems


def _check_activation(a: dict[str, Any], shape: Any) -> list[str]:
    fn = a.get("fn")
    return [] if fn in ACTIVATIONS else [f"attrs.fn {fn!r} is not one of {list(ACTIVATIONS)}"]


def _check_softmax(a: dict[str, Any], shape: Any) -> list[str]:
    problems = []
    if not _is_int(a.get("dim"), 1):
        problems.append(f"attrs.dim {a.get('dim')!r} is not a per-step dim >= 1")
    if not isinstance(a.get("log"), bool):
        problems.append(f"attrs.log {a.get('log')!r} is not a bool")
    return problems


def _check_repeat_time(a: dict[str, Any], shape: Any) -> list[str]:
    return [] if _is_int(a.get("times"), 1) else [f"attrs.times {a.get('times')!r} is not >= 1"]


def _check_time_reduce(a: dict[str, Any], shape: Any) -> list[str]:
    op = a.get("op")
    if op not in REDUCTIONS:
        return [f"attrs.op {op!r} is not one of {list(REDUCTIONS)}"]
    if "order" in a and (a["order"] != "steps" or op != "sum"):
        return [f"attrs.order {a['order']!r} is supported only as 'steps' with op 'sum'"]
    return []


_ATTR_CHECKS = {
    "add_scalar": _check_add_scalar,
    "permute": _check_permute,
    "slice": _check_slice,
    "reduce": _check_reduce,
    "layernorm": _check_layernorm,
    "activation": _check_activation,
    "softmax": _check_softmax,
    "repeat_time": _check_repeat_time,
    "time_reduce": _check_time_reduce,
}


def _check_static(graph: Graph) -> list[str]:
    """Static values (no time axis, :mod:`snncc.ir.static`) meet per-step ones only where
    ``repeat_time`` makes them per step; neurons, recurrences and reductions over time see
    per-step values."""
    from snncc.ir.static import static_nodes

    static = static_nodes(graph)
    problems = []
    in_comp = {n for c in graph.recurrent_components() for n in c}
    for n in graph.nx.nodes:
        op = graph.op(n)
        srcs = {e.src in static for e in graph.in_edges(n)}
        where = node_ref(graph, n)
        if op == "repeat_time" and srcs != {True}:
            problems.append(f"{where}: repeats a value that is not static (it has a time axis)")
        elif op in ("time_reduce", "neuron") and True in srcs:
            problems.append(f"{where}: reads a static value (no time axis); it needs per-step ones")
        elif op not in ("repeat_time",) and len(srcs) > 1:
            problems.append(
                f"{where}: mixes static inputs (no time axis) with per-step ones; repeat the "
                "static ones over time (repeat_time) first"
            )
        if n in in_comp and n in static:
            problems.append(f"{where}: a static value inside a recurrent component")
    counts = {graph.attrs(n).get("times") for n in graph.iter_ops("repeat_time")}
    if len(counts) > 1:
        problems.append(f"repeat_time nodes disagree on the number of time steps: {sorted(counts)}")
    return problems


def _check_neuron(graph: Graph, nid: int) -> list[str]:
    data = graph.nx.nodes[nid]
    attrs = data["attrs"]
    problems = []
    spec = attrs.get("neuron")
    if not isinstance(spec, dict):
        problems.append("attrs.neuron is not a NeuronSpec dict")
    else:
        try:
            parsed = NeuronSpec.from_dict(spec)
        except (IRError, TypeError, ValueError) as e:
            problems.append(f"attrs.neuron does not parse as a NeuronSpec: {e}")
        else:
            try:  # the form's definition accepts it: every constant it reads is there and finite
                build(parsed)
            except SnnccError as e:
                problems.append(f"attrs.neuron: {e}")
        for role in _learnable(data):
            if role not in data["params"]:
                problems.append(f"learnable role {role!r} has no param")
        for role, name in sorted(data["params"].items()):
            arr = graph.params.get(name) if isinstance(name, str) else None
            if _non_finite(arr):
                problems.append(
                    f"param {role}={name!r} holds non-finite values (NaN or infinity); "
                    "neuron parameters must be finite"
                )
    n_inputs = graph.nx.in_degree(nid)
    own = _own_ports(spec)
    if n_inputs < own:
        problems.append(
            f"has {n_inputs} inputs; its charge form takes {own} (x and the form's own ports)"
        )
    add_ports: list[int] = []
    for key in ("prologue", "epilogue"):
        if key not in attrs:
            continue
        steps = attrs[key]
        if not isinstance(steps, list):
            problems.append(f"attrs.{key} is not a list of steps")
            continue
        for i, step in enumerate(steps):
            err = _check_step(step, n_inputs, own)
            if err:
                problems.append(f"attrs.{key}[{i}] {step!r}: {err}")
            elif step["kind"] == "add":
                add_ports.append(step["port"])
    dup = sorted(p for p, c in Counter(add_ports).items() if c > 1)
    if dup:
        problems.append(f"input ports {dup} are added by more than one fused step")
    unused = sorted(set(range(own, n_inputs)) - set(add_ports))
    if unused:
        problems.append(f"input ports {unused} are not used by any prologue/epilogue add step")
    return problems


def _check_step(step: Any, n_inputs: int, own: int = 1) -> str | None:
    """Why a fused element-wise step is malformed (format in ir/ops.py), or None."""
    if not isinstance(step, dict):
        return "not a dict"
    kind = step.get("kind")
    if kind == "scale":
        if set(step) != {"kind", "op", "value"}:
            return "a scale step has exactly the keys kind, op, value"
        return _check_scale(step)[0] if _check_scale(step) else None
    if kind == "add":
        if set(step) != {"kind", "port"}:
            return "an add step has exactly the keys kind, port"
        port = step["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not own <= port < n_inputs:
            return f"port must be an input port {own}..{n_inputs - 1}"
        return None
    return f"kind {kind!r} is not 'scale' or 'add'"


# ---------------------------------------------------------------------- edges
def _check_edges(graph: Graph) -> list[str]:
    problems = []
    comp: dict[Any, int] = {}
    for i, c in enumerate(nx.strongly_connected_components(graph.nx)):
        comp.update(dict.fromkeys(c, i))
    for u, v, d in graph.nx.edges(data=True):
        delay = d.get("delay", 0)
        where = f"edge %{u} -> %{v} port {d.get('port')!r}"
        if "port" not in d:
            problems.append(f"{where}: has no port")
        if delay not in (0, 1) or isinstance(delay, bool):
            problems.append(f"{where}: delay {delay!r} is not 0 or 1")
        elif delay == 1 and comp[u] != comp[v]:
            problems.append(
                f"{where}: delay edge is not inside a strongly connected component "
                "(a delayed value must feed back into its own producer's cycle)"
            )
    return problems


def _same_step_cycle(graph: Graph) -> str | None:
    try:
        cycle = nx.find_cycle(graph.same_step_view())
    except nx.NetworkXNoCycle:
        return None
    path = " -> ".join(f"%{u}" for u, _ in cycle) + f" -> %{cycle[0][0]}"
    return (
        f"cycle of delay-0 edges {path} ({node_ref(graph, cycle[0][0])}): "
        "a cycle needs a delay-1 edge"
    )


# ------------------------------------------------------------------------ I/O
def _check_io(graph: Graph) -> list[str]:
    problems = []
    for key, op in (("inputs", "input"), ("outputs", "output")):
        ids = graph.meta.get(key)
        if not isinstance(ids, list):
            problems.append(f"meta[{key!r}] is not a list of node ids")
            continue
        for i, nid in enumerate(ids):
            if nid not in graph.nx:
                problems.append(f"meta[{key!r}][{i}] = %{nid} is not a node")
            elif graph.nx.nodes[nid].get("op") != op:
                problems.append(f"meta[{key!r}][{i}]: {node_ref(graph, nid)} is not an {op} op")
            elif graph.nx.nodes[nid].get("attrs", {}).get("index") != i:
                problems.append(
                    f"meta[{key!r}][{i}]: {node_ref(graph, nid)} has attrs.index "
                    f"{graph.nx.nodes[nid].get('attrs', {}).get('index')!r}, expected {i}"
                )
        listed = set(ids)
        for nid, d in graph.nx.nodes(data=True):
            if d.get("op") == op and nid not in listed:
                problems.append(f"{node_ref(graph, nid)}: not listed in meta[{key!r}]")
        if len(listed) != len(ids):
            problems.append(f"meta[{key!r}] lists a node twice: {ids}")
    if isinstance(graph.meta.get("outputs"), list) and not graph.meta["outputs"]:
        problems.append("the graph has no outputs (meta['outputs'] is empty)")
    for nid, d in graph.nx.nodes(data=True):
        if d.get("op") == "output" and graph.nx.out_degree(nid):
            problems.append(f"{node_ref(graph, nid)}: an output node feeds other nodes")
    return problems


def _check_params(graph: Graph) -> list[str]:
    problems = []
    for name, arr in graph.params.items():
        if not isinstance(name, str):
            problems.append(f"graph.params key {name!r} is not a string")
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            problems.append(f"graph.params[{name!r}] is not an array ({type(arr).__name__})")
    return problems


# --------------------------------------------------------------------- groups
def _check_groups(graph: Graph) -> list[str]:
    groups = graph.meta.get("groups")
    if not isinstance(groups, list):
        return ["nodes carry 'group' but meta['groups'] is missing or not a list"]
    problems: list[str] = []
    comps = graph.recurrent_components()
    owner: dict[Any, Any] = {}
    order: list[Any] = []
    ids: set[Any] = set()
    for gi, g in enumerate(groups):
        if not isinstance(g, dict) or not {"id", "kind", "nodes"} <= set(g):
            problems.append(f"meta['groups'][{gi}] is not a dict with id, kind, nodes")
            continue
        gid, kind = g["id"], g["kind"]
        if gid in ids:
            problems.append(f"group id {gid!r} is used twice")
        ids.add(gid)
        if kind not in GROUP_SCHEDULES:
            problems.append(f"group {gid!r}: kind {kind!r} is not one of {list(GROUP_SCHEDULES)}")
        if not g["nodes"]:
            problems.append(f"group {gid!r} is empty")
        for nid in g["nodes"]:
            if nid not in graph.nx:
                problems.append(f"group {gid!r} lists %{nid}, which is not a node")
            elif nid in owner:
                problems.append(f"{node_ref(graph, nid)}: in groups {owner[nid]!r} and {gid!r}")
            else:
                owner[nid] = gid
                order.append(nid)
        problems += _check_group_kind(graph, g, comps)
    if problems:
        return problems
    kinds = {g["id"]: g["kind"] for g in groups}
    for nid, d in graph.nx.nodes(data=True):
        if nid not in owner:
            problems.append(f"{node_ref(graph, nid)}: in no group")
            continue
        if d.get("group") != owner[nid]:
            problems.append(
                f"{node_ref(graph, nid)}: node group {d.get('group')!r} but meta lists it "
                f"in group {owner[nid]!r}"
            )
        want = GROUP_SCHEDULES[kinds[owner[nid]]]
        if "schedule" in d and d["schedule"] != want:
            problems.append(
                f"{node_ref(graph, nid)}: schedule {d['schedule']!r} in a "
                f"{kinds[owner[nid]]} group (expected {want!r})"
            )
    pos = {nid: i for i, nid in enumerate(order)}
    for u, v, d in graph.nx.edges(data=True):
        if d.get("delay", 0) == 0 and u in pos and v in pos and pos[u] >= pos[v]:
            problems.append(
                f"groups run {node_ref(graph, v)} (group {owner[v]!r}) before its input "
                f"{node_ref(graph, u)} (group {owner[u]!r}): not a topological order"
            )
    return problems or _check_stages(graph, groups, owner)


def _check_stages(graph: Graph, groups: list[dict[str, Any]], owner: dict[Any, Any]) -> list[str]:
    """Stages are contiguous runs of groups numbered 0, 1, ...; a value crosses from one
    stage to the next only through a ``transfer`` node of the receiving stage."""
    problems: list[str] = []
    stage_of_group: dict[Any, int] = {}
    last = 0
    for g in groups:
        stage = g.get("stage", 0)
        if not isinstance(stage, int) or isinstance(stage, bool) or stage < 0:
            problems.append(f"group {g['id']!r}: stage {stage!r} is not an int >= 0")
            continue
        if stage < last or stage > last + 1 or (not stage_of_group and stage != 0):
            problems.append(
                f"group {g['id']!r}: stage {stage} after stage {last}; stages are contiguous "
                "runs of groups numbered 0, 1, ... in execution order"
            )
        last = max(last, stage)
        stage_of_group[g["id"]] = stage
    if problems:
        return problems
    stage = {nid: stage_of_group[gid] for nid, gid in owner.items()}
    for nid, d in graph.nx.nodes(data=True):
        if "stage" in d and d["stage"] != stage[nid]:
            problems.append(
                f"{node_ref(graph, nid)}: node stage {d['stage']!r} but its group runs on "
                f"stage {stage[nid]}"
            )
        if d.get("op") == "transfer":
            a = d.get("attrs", {})
            (src,) = graph.inputs(nid) or [None]
            if a.get("dst_stage") != stage[nid] or a.get("src_stage") != stage[nid] - 1:
                problems.append(
                    f"{node_ref(graph, nid)}: moves stage {a.get('src_stage')!r} -> "
                    f"{a.get('dst_stage')!r} but runs on stage {stage[nid]} (a transfer runs on "
                    "the stage it moves a value to, from the one before)"
                )
            elif src is not None and stage[src] != stage[nid] - 1:
                problems.append(
                    f"{node_ref(graph, nid)}: reads {node_ref(graph, src)} on stage "
                    f"{stage[src]}, not on stage {stage[nid] - 1}"
                )
            if a.get("wire") not in ("uint8", d.get("dtype")):
                problems.append(
                    f"{node_ref(graph, nid)}: wire {a.get('wire')!r} is neither uint8 nor the "
                    f"value's dtype {d.get('dtype')!r}"
                )
    for u, v in graph.nx.edges():
        if stage[u] != stage[v] and graph.nx.nodes[v].get("op") != "transfer":
            problems.append(
                f"{node_ref(graph, v)} on stage {stage[v]} reads {node_ref(graph, u)} on stage "
                f"{stage[u]} without a transfer node"
            )
    return problems


def _check_group_kind(graph: Graph, g: dict[str, Any], comps: list[set[int]]) -> list[str]:
    """Layer groups are stateless, neuron groups one neuron, recurrent groups one whole SCC."""
    nodes = [n for n in g["nodes"] if n in graph.nx]
    in_comp = {n for c in comps for n in c}
    kind, gid = g["kind"], g["id"]
    if kind == "layer":
        bad = [n for n in nodes if OPS.get(graph.nx.nodes[n].get("op"), OPS["identity"]).stateful]
        bad += [n for n in nodes if n in in_comp]
        return [
            f"group {gid!r} (layer): {node_ref(graph, n)} is stateful or recurrent" for n in bad
        ]
    if kind == "neuron":
        if len(nodes) != 1 or graph.nx.nodes[nodes[0]].get("op") != "neuron" or nodes[0] in in_comp:
            return [f"group {gid!r} (neuron) must hold exactly one non-recurrent neuron node"]
        return []
    if kind == "recurrent" and set(nodes) not in comps:
        return [
            f"group {gid!r} (recurrent) nodes {sorted(nodes)} are not exactly one recurrent "
            f"component; components: {[sorted(c) for c in comps]}"
        ]
    if kind == "recurrent" and "fusable" in g:
        from snncc.ir.recurrent import fused_plan

        if g["fusable"] != fused_plan(graph, nodes)[0]:
            return [
                f"group {gid!r} (recurrent): its recorded fused plan {g['fusable']!r} is not "
                "the plan of its nodes (snncc.ir.recurrent.fused_plan)"
            ]
    return []
