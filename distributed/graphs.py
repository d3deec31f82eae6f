"""The pieces of a scheduled graph each device runs: stage graphs and neuron-split shards.

Why graphs, not a separate executor: each piece is an ordinary IR graph that
the model's own backend lowers to an ordinary Program (reference, cpu, cuda,
jax), so a device runs exactly the kernels, row layouts and autograd paths
one device would, and a carried state ``{node id: {var: array}}`` keeps its
node ids: the state of a piece is the part of the whole model's state that
the piece holds, and merging the pieces' states gives the whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from snncc.errors import UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.passes.partition import SHARD_MAKING, sharded_nodes
from snncc.ir.schedule import groups_of, n_stages, stage_of
from snncc.ir.verify import verify

_SCHEDULES = {"layer": "layer", "neuron": "scan", "recurrent": "step"}


def extract(
    graph: Graph,
    keep: Sequence[int],
    inputs: Sequence[int | tuple],
    outputs: Sequence[int],
) -> Graph:
    """The nodes ``keep`` as a runnable graph with program inputs ``inputs`` and outputs ``outputs``.

    ``inputs``: values in order; one of the kept input nodes is reused, any other value
    (computed outside ``keep``) becomes a new input node that its kept readers read --
    or only the readers named, for an item ``(value, readers)``, with another per-step
    shape for ``(value, readers, shape)`` (a gathered piece arrives whole).
    ``outputs``: values in order; a kept output node is reused, any other kept value
    gets a new output node. The schedule is the graph's, restricted to ``keep`` (one
    stage); node ids are kept, so states and values keep their keys.
    """
    keep_set = set(keep)
    g = graph.copy()
    for key in ("stages", "partition", "parallel"):
        g.meta.pop(key, None)
    new_inputs: list[int] = []
    for i, item in enumerate(inputs):
        v, readers, shape = (*item, None)[:3] if isinstance(item, tuple) else (item, None, None)
        if v in keep_set and graph.op(v) == "input":
            g.node(v)["attrs"] = {**g.attrs(v), "index": i}
            new_inputs.append(v)
            continue
        data = graph.node(v)
        nid = g.add_node(
            "input",
            attrs={"index": i},
            shape=data.get("shape") if shape is None else list(shape),
            dtype=data.get("dtype", "float32"),
            name=f"{data.get('name') or f'%{v}'}@in",
        )
        for e in graph.users(v):
            if e.dst in keep_set and (readers is None or e.dst in readers):
                g.remove_edge(e)
                g.add_edge(nid, e.dst, e.port, e.delay)
        new_inputs.append(nid)
    new_outputs: list[int] = []
    for v in outputs:
        if graph.op(v) == "output":
            new_outputs.append(v)
            continue
        data = graph.node(v)
        new_outputs.append(
            g.add_node(
                "output",
                [v],
                attrs={"index": 0},
                shape=data.get("shape"),
                dtype=data.get("dtype", "float32"),
                name=f"{data.get('name') or f'%{v}'}@out",
            )
        )
    for n in keep_set:  # the runtime moves the value; on one device a transfer is an identity
        if g.op(n) == "transfer":
            g.node(n).update(op="identity", attrs={})
    added_in = [n for n in new_inputs if n not in keep_set]
    added_out = [n for n in new_outputs if n not in keep_set]
    for n in list(g.nx.nodes):
        if n not in keep_set and n not in added_in and n not in added_out:
            g.nx.remove_node(n)
    g.prune_params()
    g.meta["inputs"] = new_inputs
    g.meta["outputs"] = new_outputs
    for i, n in enumerate(new_outputs):
        g.node(n)["attrs"] = {**g.attrs(n), "index": i}
    groups = []
    for grp in groups_of(graph):
        nodes = [n for n in grp["nodes"] if n in keep_set]
        if nodes:
            groups.append({"id": None, "kind": grp["kind"], "nodes": nodes, "stage": 0})
    if added_in:
        if groups and groups[0]["kind"] == "layer":
            groups[0]["nodes"] = added_in + groups[0]["nodes"]
        else:
            groups.insert(0, {"id": None, "kind": "layer", "nodes": added_in, "stage": 0})
    if added_out:
        if groups and groups[-1]["kind"] == "layer":
            groups[-1]["nodes"] = groups[-1]["nodes"] + added_out
        else:
            groups.append({"id": None, "kind": "layer", "nodes": added_out, "stage": 0})
    for gid, grp in enumerate(groups):
        grp["id"] = gid
        for n in grp["nodes"]:
            g.node(n).update(group=gid, schedule=_SCHEDULES[grp["kind"]])
            g.node(n).pop("stage", None)
    g.meta["groups"] = groups
    verify(g)
    return g


# ---------------------------------------------------------------- stages
def transfers_into(graph: Graph, stage: int) -> list[int]:
    """The transfer nodes that bring values into ``stage``, in a fixed order (their ids)."""
    return sorted(
        n
        for n in graph.nx.nodes
        if graph.op(n) == "transfer" and graph.attrs(n)["dst_stage"] == stage
    )


def boundary(graph: Graph, stage: int) -> list[tuple[int, str]]:
    """What stage ``stage`` sends to the next one, in order: (value node, wire dtype)."""
    return [(graph.inputs(t)[0], graph.attrs(t)["wire"]) for t in transfers_into(graph, stage + 1)]


def stage_graph(graph: Graph, stage: int) -> Graph:
    """Stage ``stage`` of a partitioned graph as a graph of its own: its inputs are the
    program inputs (stage 0) or what the stage before sends, in :func:`boundary` order; its
    outputs what it sends on, or the program outputs (last stage)."""
    stages = n_stages(graph)
    keep = [n for g in groups_of(graph) if stage_of(g) == stage for n in g["nodes"]]
    if stage == 0:
        inputs = list(graph.meta["inputs"])
    else:
        inputs = [v for v, _ in boundary(graph, stage - 1)]
    if stage == stages - 1:
        outputs = list(graph.meta["outputs"])
    else:
        outputs = [v for v, _ in boundary(graph, stage)]
    return extract(graph, keep, inputs, outputs)


def partitioned(graph: Graph, stages: int, request: dict[str, Any] | None = None) -> Graph:
    """``graph`` split into ``stages`` stages: as it is when it has that many, else the
    partition pass run on its one-stage schedule (``request``: the pass's settings)."""
    have = n_stages(graph)
    if have == stages:
        return graph
    if have != 1:
        raise UnsupportedError(
            f"this model was partitioned into {have} stages; run it on {have} processes "
            f"(got {stages}), or compile it again with stages={stages}"
        )
    from snncc.ir.passes import run_pipeline

    g = graph.copy()
    g.meta["partition"] = {**(request or {}), "stages": stages}
    g.meta.pop("stages", None)
    g.meta.pop("parallel", None)
    return run_pipeline(g, ["partition"])


# ---------------------------------------------------------------- neuron split
def shard_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``size`` features in ``parts`` contiguous pieces (the first ones one larger)."""
    base, extra = divmod(size, parts)
    out, lo = [], 0
    for p in range(parts):
        hi = lo + base + (1 if p < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def split_dims(graph: Graph) -> dict[int, int]:
    """Node -> the per-step dim (1 = the first after the batch) a neuron split cuts it along:
    a GEMM's output features, a convolution's channels, kept by what follows."""
    dims: dict[int, int] = {}
    split = sharded_nodes(graph)
    for n in graph.topo_order():
        if n not in split:
            continue
        op = graph.op(n)
        if op in ("conv1d", "conv2d", "input"):
            dims[n] = 1
        elif op == "linear":
            shape = graph.node(n)["shape"]
            if len(shape) != 2:
                continue
            dims[n] = 1
        else:
            ins = {dims.get(i) for i in graph.inputs(n)}
            if len(ins) == 1 and None not in ins:
                dims[n] = ins.pop()
    return dims


def shard_plan(graph: Graph) -> tuple[dict[int, int], list[int]]:
    """(the split nodes with their dims, the values to all-gather) for a neuron split.

    A node joins the split only if every input is split along the same dim and that
    dim has the same size everywhere (element-wise and per-channel ops); a value a
    node outside the split (or a GEMM) reads whole is gathered.
    """
    cand = split_dims(graph)
    dims: dict[int, int] = {}
    for n in graph.topo_order():
        if n not in cand:
            continue
        op = graph.op(n)
        if op in SHARD_MAKING:
            dims[n] = cand[n]
            continue
        ins = graph.inputs(n)
        size = graph.node(n)["shape"][cand[n]]
        if all(i in dims and graph.node(i)["shape"][dims[i]] == size for i in ins):
            dims[n] = cand[n]
    gathers = [
        n
        for n in sorted(dims)
        if any(e.dst not in dims or graph.op(e.dst) in SHARD_MAKING for e in graph.users(n))
    ]
    return dims, gathers


def _slice_param(arr: np.ndarray, dim_from_end: int, full: int, lo: int, hi: int) -> np.ndarray:
    """The [lo, hi) piece of a parameter along the split dim when it has that dim (counted
    from the end, as broadcasting aligns), else the parameter whole (a scalar, say)."""
    if arr.ndim >= dim_from_end and arr.shape[arr.ndim - dim_from_end] == full:
        index = [slice(None)] * arr.ndim
        index[arr.ndim - dim_from_end] = slice(lo, hi)
        return np.ascontiguousarray(arr[tuple(index)])
    return arr


def shard_graph(
    graph: Graph, rank: int, world: int
) -> tuple[Graph, dict[int, tuple[int, int, int]]]:
    """Rank ``rank``'s piece of a neuron split: every split node keeps its own features (the
    GEMM or convolution feeding a layer computes only those output features), the rest is
    whole. Returns the graph and, for every split node, (dim, lo, hi) of its piece."""
    dims, _ = shard_plan(graph)
    g = graph.copy()
    g.params = dict(graph.params)
    pieces: dict[int, tuple[int, int, int]] = {}
    users: dict[str, set[int]] = {}
    for n in g.nx.nodes:
        for name in g.node(n)["params"].values():
            users.setdefault(name, set()).add(n)
    for n, dim in dims.items():
        shape = list(g.node(n)["shape"])
        full = int(shape[dim])
        if full < world:
            raise UnsupportedError(
                f"cannot split {g.node(n).get('name') or f'%{n}'} ({full} features) over "
                f"{world} devices"
            )
        lo, hi = shard_ranges(full, world)[rank]
        pieces[n] = (dim, lo, hi)
        shape[dim] = hi - lo
        g.node(n)["shape"] = shape
        op = g.op(n)
        per_step_rank = len(shape) - 1  # dims after the batch
        for role, name in list(g.node(n)["params"].items()):
            arr = graph.params[name]
            if op in SHARD_MAKING:
                sliced = arr[lo:hi] if arr.ndim >= 1 and arr.shape[0] == full else arr
            elif op == "batchnorm":
                sliced = arr[lo:hi] if arr.ndim == 1 and arr.shape[0] == full else arr
            else:  # neuron: per-neuron params broadcast against [B, *shape]
                sliced = _slice_param(arr, per_step_rank - dim + 1, full, lo, hi)
            if sliced is arr:
                continue
            if len(users[name]) > 1:
                raise UnsupportedError(
                    f"cannot split {g.node(n).get('name') or f'%{n}'}: its {role} {name!r} is "
                    "shared with other nodes (tied weights)"
                )
            g.params[name] = np.ascontiguousarray(sliced)
    g.prune_params()
    verify(g)
    return g, pieces


def gather_size(graph: Graph, n: int, world: int) -> int:
    """The padded piece size an all-gather of node ``n``'s split dim moves per rank."""
    dims, _ = shard_plan(graph)
    return math.ceil(int(graph.node(n)["shape"][dims[n]]) / world)
