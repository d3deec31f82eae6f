"""What every multi-process schedule shares: lowering a piece of the graph with the model's
own backend, chunking a sequence, and states as leaves of autograd.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from snncc.backends.base import state_layout
from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.graph import Graph

Tensor = torch.Tensor
State = dict[int, dict[str, Tensor]]


def placement(rank: int | None, world: int | None) -> tuple[int, int]:
    """(rank, world size): the given ones (tests place a runner by hand), else the process
    group's."""
    return (
        dist.get_rank() if rank is None else rank,
        dist.get_world_size() if world is None else world,
    )


def lower(graph: Graph, backend: str, options: Mapping[str, Any]) -> Any:
    """``graph`` as a Program of ``backend`` with the model's options; torch backends only."""
    from snncc import backends
    from snncc.backends.base import has_feature

    be = backends.get(backend)
    if not has_feature(be, "torch_module"):
        raise UnsupportedError(
            f"the torch.distributed runtimes run backends whose programs are torch modules "
            f"(reference, cpu, cuda); {backend!r} is not one: use snncc.distributed.jax_parallel"
        )
    return be.lower(graph, **dict(options))


def chunk_bounds(steps: int, chunks: int) -> list[tuple[int, int]]:
    """``steps`` cut into ``chunks`` contiguous pieces (the first ones one step longer)."""
    if chunks < 1 or chunks > steps:
        raise ShapeError(f"cannot cut {steps} steps into {chunks} chunks (need 1 <= chunks <= T)")
    edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(steps), chunks)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def as_list(y: Any) -> list[Tensor]:
    return list(y) if isinstance(y, (tuple, list)) else [y]


def as_value(ys: Sequence[Tensor]) -> Any:
    return ys[0] if len(ys) == 1 else tuple(ys)


def own_state(graph: Graph, state: Mapping[int, Any] | None) -> State | None:
    """The part of a (whole model's, or this piece's) state that ``graph`` holds."""
    if not state:
        return None
    layout = state_layout(graph)
    return {n: dict(v) for n, v in state.items() if n in layout}


def leaf_state(state: State | None) -> State | None:
    """A state cut from the graph that made it, each float tensor a leaf that collects the
    gradient of what is computed from it (the state adjoint handed back between chunks)."""
    if state is None:
        return None
    return {
        n: {
            k: v.detach().requires_grad_(v.is_floating_point()) if isinstance(v, Tensor) else v
            for k, v in d.items()
        }
        for n, d in state.items()
    }


def detached(state: State | None) -> State | None:
    if state is None:
        return None
    return {n: {k: v.detach() for k, v in d.items()} for n, d in state.items()}


def state_pairs(state: State | None) -> list[tuple[int, str]]:
    """A state's (node, variable) entries in a fixed order: what travels between ranks."""
    if not state:
        return []
    return [(n, k) for n in sorted(state) for k in sorted(state[n])]


def step_shape(graph: Graph, n: int, steps: int, batch: int) -> tuple[int, ...]:
    """The [steps, batch, ...] shape of node ``n``'s value."""
    shape = graph.node(n)["shape"]
    return (steps, batch, *(int(d) for d in shape[1:]))


def gather_to(
    msgs: Any,
    rank: int,
    world: int,
    dst: int,
    local: Sequence[Tensor],
    shapes: Sequence[Sequence[tuple]],
    dim: int,
) -> list[Tensor] | None:
    """Every rank's pieces of the outputs, concatenated along ``dim`` on rank ``dst``.

    ``local``: this rank's piece of each output; ``shapes[p]``: rank p's piece shapes
    (known to every rank, so nothing but the values travels). None on other ranks.
    """
    local = [t.detach().float() for t in local]
    if rank != dst:
        msgs.send(list(local), ["float32"] * len(local), dst)
        msgs.wait()
        return None
    parts: list[list[Tensor]] = []
    for p in range(world):
        if p == dst:
            parts.append(list(local))
        else:
            parts.append(msgs.recv(shapes[p], ["float32"] * len(shapes[p]), p, torch.float32))
    return [torch.cat([parts[p][i] for p in range(world)], dim=dim) for i in range(len(local))]
