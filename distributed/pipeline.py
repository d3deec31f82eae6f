"""The time-chunk pipeline: rank s runs stage s of the partitioned schedule on chunk k of the
sequence while rank s+1 runs chunk k-1; each stage's neuron state stays on its rank.

Why our own schedule on point-to-point ops: the forward is causal in time, so
feeding stage s+1 the chunks of stage s in order, each chunk continuing from
the state the last one left, gives the one-device result bit for bit -- as
long as every stateless op computes the same bits on a chunk's rows as on the
whole sequence's (the BLAS result of a GEMM can depend on its row count:
tests check each shape). Training runs the forward chunks 0..K-1, then the
backward K-1..0 through the stages in reverse, each chunk's backward handing
the gradient of its starting state (the membrane adjoint) to the chunk before
on the same rank, and the gradient of its inputs to the stage before.
``torch.distributed.pipelining``'s schedules cannot do that: they run the
backward of microbatches in forward order.

Every rank calls the same method with the same input (only stage 0 reads its
values; the others need its shape). The last rank holds the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from snncc.errors import ShapeError
from snncc.ir.graph import Graph

from . import comm
from .graphs import boundary, partitioned, stage_graph
from .runner import (
    State,
    as_list,
    as_value,
    chunk_bounds,
    detached,
    leaf_state,
    lower,
    own_state,
    placement,
    state_pairs,
    step_shape,
)

Tensor = torch.Tensor


class Pipeline:
    """Stage ``rank`` of ``graph`` (partitioned into ``world`` stages if it is not yet).

    Parameters
    ----------
    graph, backend, options
        The compiled model's scheduled IR, backend name and options
        (``snncc.distributed.pipeline(cm, ...)`` takes them from a CompiledModel).
    chunks
        How many pieces the time axis is cut into (K); more chunks, smaller bubble
        (S-1)/(K+S-1), but fewer rows per GEMM.
    request
        Settings for the partition pass when the graph has one stage (see
        :mod:`snncc.ir.passes.partition`).
    """

    schedule = "pipeline"

    def __init__(
        self,
        graph: Graph,
        backend: str,
        options: Mapping[str, Any],
        chunks: int,
        rank: int | None = None,
        world: int | None = None,
        request: dict[str, Any] | None = None,
    ) -> None:
        self.rank, self.world = placement(rank, world)
        self.chunks = chunks
        with comm.on_rank(self.rank, f"stage {self.rank} of {self.world}"):
            self.graph = partitioned(graph, self.world, request)
            from snncc.ir.passes.partition import refuse_inexact

            refuse_inexact(self.graph, "pipeline")
            self.piece = stage_graph(self.graph, self.rank)
            self.program = lower(self.piece, backend, options)
        self.last = self.rank == self.world - 1
        #: what this stage receives and sends: (value in the whole graph, wire dtype)
        self.inbound = boundary(self.graph, self.rank - 1) if self.rank else []
        self.outbound = [] if self.last else boundary(self.graph, self.rank)
        self.device = next((p.device for p in self.program.params.values()), torch.device("cpu"))
        self.where = f"stage {self.rank} of {self.world}"

    @property
    def params(self) -> dict[str, Tensor]:
        """This stage's weights (the program's tensors: train these on this rank)."""
        return self.program.params

    # ------------------------------------------------------------------ forward
    def _shapes(self, values: list[tuple[int, str]], steps: int, batch: int) -> list[tuple]:
        return [step_shape(self.graph, v, steps, batch) for v, _ in values]

    def _forward(self, x: Any, state: State | None, grad: bool) -> tuple[list, State | None]:
        xs = as_list(x)
        T, B = int(xs[0].shape[0]), int(xs[0].shape[1])
        msgs = comm.Messages(self.device)
        st = own_state(self.piece, state)
        saved = []
        for t0, t1 in chunk_bounds(T, self.chunks):
            if self.rank == 0:
                ins = [xi[t0:t1] for xi in xs]
            else:
                wires = [w for _, w in self.inbound]
                shapes = self._shapes(self.inbound, t1 - t0, B)
                ins = msgs.recv(shapes, wires, self.rank - 1, torch.float32)
                if grad:
                    ins = [i.requires_grad_() for i in ins]
            st_in = leaf_state(st) if grad else st
            y, st_out = self.program.run(as_value(ins), st_in)
            ys = as_list(y)
            if not self.last:
                msgs.send(ys, [w for _, w in self.outbound], self.rank + 1)
            saved.append((ins, st_in, ys, st_out))
            st = st_out if grad else detached(st_out)
        msgs.wait()
        return saved, st

    def run(self, x: Any, state: Mapping[int, Any] | None = None) -> tuple[Any, State | None]:
        """Outputs of ``x`` [T, B, ...] from ``state`` (None: fresh; a whole model's state or
        this stage's); returns (outputs on the last rank, else None; this stage's state)."""
        with comm.on_rank(self.rank, self.where), torch.no_grad():
            saved, st = self._forward(x, dict(state) if state else None, grad=False)
        if not self.last:
            return None, st
        n_out = len(saved[0][2])
        ys = [torch.cat([s[2][i] for s in saved]) for i in range(n_out)]
        return as_value(ys), st

    # ------------------------------------------------------------------ training
    def train_step(
        self, x: Any, loss_fn: Callable[[Any], Tensor], state: Mapping[int, Any] | None = None
    ) -> float:
        """One forward and backward over every chunk; gradients land in :attr:`params`'
        ``.grad`` (summed into what is there). ``loss_fn`` maps the whole outputs [T, B, ...]
        to a scalar on the last rank. Returns the loss (on every rank)."""
        with comm.on_rank(self.rank, self.where):
            saved, _ = self._forward(x, dict(state) if state else None, grad=True)
            msgs = comm.Messages(self.device)
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            grads_out: list[list[Tensor | None]] = []
            if self.last:
                n_out = len(saved[0][2])
                whole = [
                    torch.cat([s[2][i].detach() for s in saved]).requires_grad_()
                    for i in range(n_out)
                ]
                value = loss_fn(as_value(whole))
                if value.dim() != 0:
                    raise ShapeError(
                        f"loss_fn must return a scalar; got shape {tuple(value.shape)}"
                    )
                value.backward()
                loss = value.detach().to(torch.float64)
                bounds = chunk_bounds(int(whole[0].shape[0]), self.chunks)
                grads_out = [
                    [None if w.grad is None else w.grad[t0:t1] for w in whole] for t0, t1 in bounds
                ]
            g_state: dict[tuple[int, str], Tensor] = {}
            for k in reversed(range(len(saved))):
                ins, st_in, ys, st_out = saved[k]
                if self.last:
                    gys = grads_out[k]
                else:
                    shapes = [tuple(y.shape) for y in ys]
                    gys = msgs.recv(shapes, ["float32"] * len(ys), self.rank + 1, torch.float32)
                tensors, grads = [], []
                for y, g in zip(ys, gys):
                    if g is not None and y.requires_grad:
                        tensors.append(y)
                        grads.append(g)
                for n, var in state_pairs(st_out):
                    t = st_out[n][var]
                    if (n, var) in g_state and isinstance(t, Tensor) and t.requires_grad:
                        tensors.append(t)
                        grads.append(g_state[(n, var)])
                if tensors:
                    torch.autograd.backward(tensors, grads)
                if self.rank:
                    gin = [i.grad if i.grad is not None else torch.zeros_like(i) for i in ins]
                    msgs.send(gin, ["float32"] * len(gin), self.rank - 1)
                g_state = {
                    (n, var): st_in[n][var].grad
                    for n, var in state_pairs(st_in)
                    if isinstance(st_in[n][var], Tensor) and st_in[n][var].grad is not None
                }
            msgs.wait()
            dist.broadcast(loss, src=self.world - 1)
        return float(loss)
