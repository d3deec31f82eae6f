"""The schedule every backend executes, read from the IR in one place.

Why a module of its own: temporal fusion writes the schedule
(``graph.meta["groups"]``: groups in execution order, each with a ``kind``,
its ``nodes`` in topological order and the ``stage`` it runs on), the
partition pass changes it (stages, transfer nodes), and every backend runs
it. Reading it here means no backend derives an order of its own: a graph
that never went through the pass pipeline (built by hand, or lowered
directly) gets the schedule temporal fusion would give it, computed by that
pass on a copy -- the one rule, not a second one.
"""

from __future__ import annotations

from typing import Any

from snncc.errors import IRError
from snncc.ir.graph import Graph


def groups_of(graph: Graph) -> list[dict[str, Any]]:
    """The groups in execution order; every node of the graph is in exactly one.

    ``meta["groups"]`` when the graph is scheduled, else temporal fusion's
    groups for a copy of it (the graph itself is not changed).
    """
    groups = graph.meta.get("groups")
    if groups is None:
        from snncc.ir.passes.temporal_fusion import temporal_fusion

        groups = temporal_fusion(graph.copy()).meta["groups"]
    listed: list[Any] = [n for g in groups for n in g["nodes"]]
    missing = [n for n in graph.nx.nodes if n not in set(listed)]
    extra = [n for n in listed if n not in graph.nx]
    if missing or extra or len(listed) != len(set(listed)):
        raise IRError(
            "the schedule in meta['groups'] does not list every node exactly once "
            f"(missing {missing[:5]}, unknown {extra[:5]}); run the temporal_fusion pass again "
            "after changing the graph"
        )
    return groups


def stage_of(group: dict[str, Any]) -> int:
    """The stage a group runs on (0 when no partition assigned one)."""
    return int(group.get("stage", 0))


def n_stages(graph: Graph) -> int:
    """How many stages the schedule has (1 unless the partition pass split it)."""
    groups = graph.meta.get("groups") or []
    return 1 + max((stage_of(g) for g in groups), default=0)


def stage_nodes(graph: Graph) -> list[list[int]]:
    """The nodes of each stage, in execution order."""
    out: list[list[int]] = [[] for _ in range(n_stages(graph))]
    for g in groups_of(graph):
        out[stage_of(g)].extend(g["nodes"])
    return out
