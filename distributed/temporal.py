"""The temporal split (the seed paper's method): rank p owns time segment p of the sequence for
every layer, and hands the state on to rank p+1; micro-batches of the batch are pipelined.

Exact by construction: a segment continuing from the state the previous one
left computes what one device streaming the same segments would (``run(x[a:b],
state)``), and so, where the GEMMs give the same bits on a segment's rows as
on the whole sequence's, what one device computes in one call. Training runs
the backward from the last segment to the first, each handing the gradient
of the state it started from (the membrane adjoint) back; the weight
gradients of the segments are then summed over the ranks.

Every rank calls the same method with the same input; only rank p reads its
segment. The last rank gathers the outputs and holds the final state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from snncc.backends.base import state_layout
from snncc.errors import ShapeError
from snncc.ir.graph import Graph

from . import comm
from .runner import (
    State,
    as_list,
    as_value,
    chunk_bounds,
    detached,
    gather_to,
    leaf_state,
    lower,
    own_state,
    placement,
)

Tensor = torch.Tensor


class Temporal:
    """Rank ``rank`` runs time segment ``rank`` of every micro-batch of the batch."""

    schedule = "temporal"

    def __init__(
        self,
        graph: Graph,
        backend: str,
        options: Mapping[str, Any],
        micro_batches: int = 1,
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        self.rank, self.world = placement(rank, world)
        self.micro_batches = micro_batches
        self.where = f"time segment {self.rank} of {self.world}"
        with comm.on_rank(self.rank, self.where):
            from snncc.ir.passes.partition import refuse_inexact

            refuse_inexact(graph, "temporal")
            self.graph = graph
            self.program = lower(graph, backend, options)
        self.last = self.rank == self.world - 1
        layout = state_layout(graph)
        #: what a segment hands on: every required state variable, in a fixed order
        self.pairs = [(n, v) for n in sorted(layout) for v in layout[n][0]]
        self.device = next((p.device for p in self.program.params.values()), torch.device("cpu"))

    @property
    def params(self) -> dict[str, Tensor]:
        return self.program.params

    def _state_shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, *(int(d) for d in self.graph.node(n)["shape"][1:])) for n, _ in self.pairs]

    def _pack(self, state: State) -> list[Tensor]:
        try:
            return [state[n][v] for n, v in self.pairs]
        except KeyError as e:
            raise ShapeError(f"the state a segment hands on lacks {e}") from None

    def _unpack(self, tensors: list[Tensor]) -> State:
        out: State = {}
        for (n, v), t in zip(self.pairs, tensors):
            out.setdefault(n, {})[v] = t
        return out

    def _forward(self, x: Any, state: Mapping[int, Any] | None, grad: bool) -> tuple[list, Any]:
        xs = as_list(x)
        T, B = int(xs[0].shape[0]), int(xs[0].shape[1])
        if T < self.world:
            raise ShapeError(f"{T} steps cannot make {self.world} time segments")
        t0, t1 = chunk_bounds(T, self.world)[self.rank]
        msgs = comm.Messages(self.device)
        saved = []
        given = own_state(self.graph, state)
        for b0, b1 in chunk_bounds(B, self.micro_batches):
            if self.rank == 0:
                st = (
                    None
                    if given is None
                    else {n: {k: v[b0:b1] for k, v in d.items()} for n, d in given.items()}
                )
            else:
                got = msgs.recv(
                    self._state_shapes(b1 - b0),
                    ["float32"] * len(self.pairs),
                    self.rank - 1,
                    torch.float32,
                )
                st = self._unpack(got)
            st_in = leaf_state(st) if grad else st
            y, st_out = self.program.run(as_value([xi[t0:t1, b0:b1] for xi in xs]), st_in)
            if not self.last:
                msgs.send(self._pack(st_out), ["float32"] * len(self.pairs), self.rank + 1)
            saved.append((st_in, as_list(y), st_out if grad else detached(st_out)))
        msgs.wait()
        return saved, (T, B)

    def _gather(self, saved: list, T: int, B: int) -> list[Tensor] | None:
        """The whole outputs [T, B, ...] on the last rank (None elsewhere)."""
        local = [torch.cat([s[1][i] for s in saved], dim=1) for i in range(len(saved[0][1]))]
        shapes = [
            [(b - a, *tuple(t.shape[1:])) for t in local] for a, b in chunk_bounds(T, self.world)
        ]
        return gather_to(
            comm.Messages(self.device), self.rank, self.world, self.world - 1, local, shapes, 0
        )

    def run(self, x: Any, state: Mapping[int, Any] | None = None) -> tuple[Any, State | None]:
        """Outputs of ``x`` [T, B, ...] from ``state`` (used by the first segment); returns
        (the whole outputs on the last rank, else None; the final state on the last rank and
        on rank 0, else None).

        Streaming: the last segment's final state is handed round to rank 0, whose segment
        the next call begins with, so ``run(x2, state)`` with the state each rank got back
        continues the sequence (one state's worth of bytes more per call)."""
        with comm.on_rank(self.rank, self.where), torch.no_grad():
            saved, (T, B) = self._forward(x, state, grad=False)
            ys = self._gather(saved, T, B)
            final: State | None = None
            if self.last:
                final = {}
                for node, var in sorted({(n, v) for s in saved for n in s[2] for v in s[2][n]}):
                    final.setdefault(node, {})[var] = torch.cat([s[2][node][var] for s in saved])
            if self.world > 1 and self.pairs and (self.last or self.rank == 0):
                msgs = comm.Messages(self.device)
                dtypes = ["float32"] * len(self.pairs)
                if self.last:
                    msgs.send(self._pack(final), dtypes, 0)
                    msgs.wait()
                else:
                    got = msgs.recv(self._state_shapes(B), dtypes, self.world - 1, torch.float32)
                    final = self._unpack(got)
        return (as_value(ys) if self.last else None), final

    def train_step(
        self, x: Any, loss_fn: Callable[[Any], Tensor], state: Mapping[int, Any] | None = None
    ) -> float:
        """Forward every segment, the loss of the whole outputs on the last rank, the backward
        back through the segments, and the weight gradients summed over ranks into
        :attr:`params`' ``.grad``. Returns the loss (on every rank)."""
        with comm.on_rank(self.rank, self.where):
            saved, (T, B) = self._forward(x, state, grad=True)
            msgs = comm.Messages(self.device)
            n_out = len(saved[0][1])
            local = [torch.cat([s[1][i] for s in saved], dim=1) for i in range(n_out)]
            whole = self._gather(saved, T, B)
            bounds = chunk_bounds(T, self.world)
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            if self.last:
                leaves = [w.requires_grad_() for w in whole]
                value = loss_fn(as_value(leaves))
                if value.dim() != 0:
                    raise ShapeError(
                        f"loss_fn must return a scalar; got shape {tuple(value.shape)}"
                    )
                value.backward()
                loss = value.detach().to(torch.float64)
                grads = [[w.grad[a:b] for w in leaves] for a, b in bounds]
                for p in range(self.world - 1):
                    msgs.send(grads[p], ["float32"] * n_out, p)
                mine = grads[self.rank]
            else:
                mine = msgs.recv(
                    [tuple(t.shape) for t in local],
                    ["float32"] * n_out,
                    self.world - 1,
                    torch.float32,
                )
            mb = chunk_bounds(B, self.micro_batches)
            for m in reversed(range(len(saved))):
                st_in, ys, st_out = saved[m]
                b0, b1 = mb[m]
                tensors = [y for y in ys if y.requires_grad]
                grads = [g[:, b0:b1] for y, g in zip(ys, mine) if y.requires_grad]
                if not self.last:
                    g_st = msgs.recv(
                        self._state_shapes(b1 - b0),
                        ["float32"] * len(self.pairs),
                        self.rank + 1,
                        torch.float32,
                    )
                    for (n, v), g in zip(self.pairs, g_st):
                        if st_out[n][v].requires_grad:
                            tensors.append(st_out[n][v])
                            grads.append(g)
                if tensors:
                    torch.autograd.backward(tensors, grads)
                if self.rank:
                    g_in = [
                        st_in[n][v].grad
                        if st_in[n][v].grad is not None
                        else torch.zeros_like(st_in[n][v])
                        for n, v in self.pairs
                    ]
                    msgs.send(g_in, ["float32"] * len(g_in), self.rank - 1)
            msgs.wait()
            trained = [t for t in self.program.params.values() if t.requires_grad]
            comm.all_reduce_grads(trained)
            dist.broadcast(loss, src=self.world - 1)
        return float(loss)
