"""Fold eval-mode BatchNorm into the linear/conv that feeds it.

Why: an eval-mode BatchNorm is a per-channel affine map, so it can ride on
the producer's weight and bias and cost nothing at run time. The fold is
recorded, not computed: the producer gains params ``bn_weight``, ``bn_bias``,
``bn_mean``, ``bn_var`` (the BN's own state_dict names) and attr ``bn_eps``,
and each backend folds them into W and b (formula in :mod:`snncc.ir.ops`).
Parameters thus stay keyed by the source model's state_dict and gradients
reach the originals. Folding changes rounding, so the bit-exact reference
pipeline does not run this pass.

A BatchNorm is folded only when all of these hold (otherwise it stays):

- ``attrs.training`` is False (batch statistics cannot be folded);
- it is affine (has ``weight`` and ``bias`` params);
- its input is a delay-0 edge from a ``linear``, ``conv1d`` or ``conv2d``
  that has no other consumer and carries no fold yet;
- the BN normalises the producer's output channels: conv outputs always
  (channel dim 1); a linear only when its per-step shape is known to be
  ``[B, C]`` (BatchNorm1d on ``[B, L, C]`` would normalise L, not C);
- the BN's per-channel params have as many entries as the producer's weight
  has output channels.
"""

from __future__ import annotations

from snncc.ir.graph import Graph
from snncc.ir.passes.temporal_fusion import clear_schedule

_PRODUCERS = ("linear", "conv1d", "conv2d")
_ROLES = {
    "bn_weight": "weight",
    "bn_bias": "bias",
    "bn_mean": "running_mean",
    "bn_var": "running_var",
}


def _producer(graph: Graph, bn: int) -> int | None:
    """The node ``bn`` can be folded into, or None when any condition above fails."""
    node = graph.node(bn)
    if node["attrs"].get("training") is not False:
        return None
    if not all(r in node["params"] for r in _ROLES.values()):
        return None
    (edge,) = graph.in_edges(bn)
    p = edge.src
    pnode = graph.node(p)
    if edge.delay or pnode["op"] not in _PRODUCERS or p == bn:
        return None
    if len(graph.users(p)) != 1 or any(r in pnode["params"] for r in _ROLES):
        return None
    if pnode["op"] == "linear" and (pnode["shape"] is None or len(pnode["shape"]) != 2):
        return None
    channels = graph.param(p, "weight").shape[0]
    if any(graph.param(bn, r).shape != (channels,) for r in _ROLES.values()):
        return None
    return p


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every foldable eval-mode BatchNorm into its producer (see the module docstring)."""
    changed = False
    for bn in list(graph.iter_ops("batchnorm")):
        p = _producer(graph, bn)
        if p is None:
            continue
        bnode, pnode = graph.node(bn), graph.node(p)
        for role, bn_role in _ROLES.items():
            pnode["params"][role] = bnode["params"][bn_role]
        pnode["attrs"]["bn_eps"] = float(bnode["attrs"]["eps"])
        graph.bypass(bn)
        changed = True
    if changed:
        clear_schedule(graph)
    return graph
