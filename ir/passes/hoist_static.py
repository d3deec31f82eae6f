"""Compute a static prefix once: move ``repeat_time`` past the stateless layers after it.

Why: zoo models repeat a static image over T themselves and only then run their stem
(Spikformer's ``x.unsqueeze(0).repeat(T, ...)`` before the patch-embedding convs,
MS-ResNet's likewise), so the stem's convolutions and BatchNorms would run T times on the
same rows. Every op moved here maps each ``[B, ...]`` row by itself, the same way at every
step, so ``op(repeat(x)) == repeat(op(x))`` row for row; the stem then runs once on
``[B, ...]`` (a static value, :mod:`snncc.ir.static`) and is repeated where its result meets
the first neuron (or another per-step value).

Moved past: single-input stateless ops whose result for a row depends on that row only.
Not moved: neurons (state), ops with several inputs, a delayed use (step -1 is not the
repeated value), BatchNorm and Dropout in training mode (batch statistics over all T*B rows,
a random mask per step), and a ``repeat_time`` that is itself an output.
"""

from __future__ import annotations

from snncc.ir.graph import Graph
from snncc.ir.passes.temporal_fusion import clear_schedule

#: ops that map every row alone and the same way at every step (when not training)
_ROW_WISE = frozenset(
    {
        "activation",
        "adaptive_avgpool2d",
        "add_scalar",
        "avgpool2d",
        "batchnorm",
        "conv1d",
        "conv2d",
        "conv_transpose1d",
        "conv_transpose2d",
        "upsample_nearest",
        "pad",
        "groupnorm",
        "dropout",
        "flatten",
        "identity",
        "layernorm",
        "linear",
        "maxpool2d",
        "neg",
        "permute",
        "reshape",
        "scale",
        "slice",
        "softmax",
    }
)


def _movable_past(graph: Graph, nid: int) -> bool:
    if graph.op(nid) not in _ROW_WISE or len(graph.in_edges(nid)) != 1:
        return False
    return not (
        graph.op(nid) in ("batchnorm", "dropout") and graph.attrs(nid).get("training", False)
    )


def hoist_static(graph: Graph) -> Graph:
    """Move every ``repeat_time`` down past the row-wise ops it feeds alone (see above)."""
    changed, moved = False, True
    while moved:
        moved = False
        for r in list(graph.iter_ops("repeat_time")):
            users = graph.users(r)
            if len(users) != 1 or r in graph.meta["outputs"]:
                continue
            (use,) = users
            if use.delay != 0 or not _movable_past(graph, use.dst):
                continue
            (src,) = graph.in_edges(r)
            node = graph.node(use.dst)
            repeat = graph.add_node(
                "repeat_time",
                attrs=dict(graph.attrs(r)),
                shape=node["shape"],
                dtype=node["dtype"],
                name=graph.node(r)["name"],
            )
            graph.replace_uses(use.dst, repeat)
            graph.add_edge(use.dst, repeat, 0)
            graph.remove_edge(use)
            graph.add_edge(src.src, use.dst, 0, src.delay)
            graph.remove_node(r)
            moved = changed = True
    if changed:
        clear_schedule(graph)
    return graph
