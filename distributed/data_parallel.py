"""Data parallel: the batch split across ranks; training through torch's
``DistributedDataParallel`` over ``cm.to_torch()``.

Why nothing more: samples are independent, so each rank runs the whole
schedule on its share of the batch, bit for bit what one device computes for
those samples (the GEMMs see fewer rows: the tests check the shapes). DDP
all-reduces the gradients -- it *averages* them, so a loss that is a mean over
each rank's equal share gives the whole batch's gradient; the sum reorders
floating-point additions, hence gradients within rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from snncc.errors import ShapeError
from snncc.ir.graph import Graph

from . import comm
from .runner import State, as_list, as_value, chunk_bounds, gather_to, lower, own_state, placement

Tensor = torch.Tensor


class DataParallel:
    """Rank ``rank`` runs samples ``B * rank / world`` .. of every batch."""

    schedule = "data_parallel"

    def __init__(
        self,
        graph: Graph,
        backend: str,
        options: Mapping[str, Any],
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        self.rank, self.world = placement(rank, world)
        self.where = f"batch share {self.rank} of {self.world}"
        with comm.on_rank(self.rank, self.where):
            from snncc.ir.passes.partition import refuse_inexact

            refuse_inexact(graph, "data_parallel")
            self.graph = graph
            self.program = lower(graph, backend, options)
        self.device = next((p.device for p in self.program.params.values()), torch.device("cpu"))
        self._ddp: Any = None

    def _share(self, batch: int) -> tuple[int, int]:
        if batch < self.world:
            raise ShapeError(f"a batch of {batch} cannot be split over {self.world} ranks")
        return chunk_bounds(batch, self.world)[self.rank]

    def run(self, x: Any, state: Mapping[int, Any] | None = None) -> tuple[Any, State]:
        """(the whole outputs on the last rank, else None; this rank's share of the state).

        ``state``: a whole batch's state (cut to this rank's share) or this rank's own."""
        xs = as_list(x)
        B = int(xs[0].shape[1])
        b0, b1 = self._share(B)
        with comm.on_rank(self.rank, self.where), torch.no_grad():
            st = own_state(self.graph, state)
            if st and next(iter(next(iter(st.values())).values())).shape[0] == B != b1 - b0:
                st = {n: {k: v[b0:b1] for k, v in d.items()} for n, d in st.items()}
            y, new_state = self.program.run(as_value([xi[:, b0:b1] for xi in xs]), st)
            ys = as_list(y)
            shapes = [
                [(t.shape[0], b - a, *t.shape[2:]) for t in ys]
                for a, b in chunk_bounds(B, self.world)
            ]
            whole = gather_to(
                comm.Messages(self.device), self.rank, self.world, self.world - 1, ys, shapes, 1
            )
        return (None if whole is None else as_value(whole)), new_state

    @property
    def module(self) -> Any:
        """``cm.to_torch()`` of this rank's program wrapped in DistributedDataParallel."""
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            from snncc.backends.torch_module import to_torch

            inner = to_torch(self.program)
            self._ddp = DistributedDataParallel(
                inner, device_ids=None if self.device.type == "cpu" else [self.device]
            )
        return self._ddp

    @property
    def params(self) -> dict[str, Tensor]:
        """The trained tensors by state_dict name (their ``.grad`` after :meth:`train_step`)."""
        return dict(self.module.module.named_parameters())

    def train_step(self, x: Any, loss_fn: Callable[[Any], Tensor]) -> float:
        """DDP forward of this rank's share, ``loss_fn`` on its outputs, backward (DDP
        averages the gradients over ranks). Returns the mean of the ranks' losses."""
        xs = as_list(x)
        b0, b1 = self._share(int(xs[0].shape[1]))
        with comm.on_rank(self.rank, self.where):
            y = self.module(as_value([xi[:, b0:b1] for xi in xs]))
            value = loss_fn(y)
            if value.dim() != 0:
                raise ShapeError(f"loss_fn must return a scalar; got shape {tuple(value.shape)}")
            value.backward()
            loss = value.detach().to(torch.float64).clone()
            dist.all_reduce(loss)
        return float(loss) / self.world
