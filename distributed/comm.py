"""Processes and messages: torch.distributed set up from torchrun's environment, point-to-point
sends of lists of tensors, the all-gather of a neuron split, and errors that name the rank.

Why nothing of our own underneath: transport is torch.distributed's (gloo on
CPUs, NCCL on GPUs), launched by ``torchrun`` on one node or several; this
module only agrees on *what* goes over it -- which tensors, in which order,
in which dtype (exact 0/1 spikes as uint8, a quarter of the bytes).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from snncc.errors import SnnccError, UnsupportedError

Tensor = torch.Tensor

_TORCH = {"float32": torch.float32, "uint8": torch.uint8, "float64": torch.float64}


class DistributedError(SnnccError, RuntimeError):
    """A failure in a run over several processes, naming the rank and stage where it happened."""


def init(
    backend: str | None = None, device: str | None = None, timeout_s: float = 300.0
) -> tuple[int, int]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``); return (rank, world size). Already joined: nothing to do.

    ``backend``: "gloo" or "nccl"; default NCCL when ``device`` is a CUDA device, else gloo.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise UnsupportedError(
            f"no process group: {', '.join(missing)} not set; launch with torchrun, e.g. "
            "torchrun --nproc-per-node 2 -m snncc run DIR --parallel pipeline ..."
        )
    if backend is None:
        backend = "nccl" if device is not None and str(device).startswith("cuda") else "gloo"
    if backend not in ("gloo", "nccl"):
        raise UnsupportedError(
            f"process group backend {backend!r}; use 'gloo' (CPU) or 'nccl' (GPU)"
        )
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(**kwargs)
    return dist.get_rank(), dist.get_world_size()


def finalize() -> None:
    """Leave the process group together: a barrier, then its teardown, before the process exits.

    Why: a rank that exits while its peer still talks to it, or leaves its group to the
    interpreter's teardown, can abort in gloo's threads ("terminate called without an
    active exception"). Every rank reaching the barrier first makes the exit orderly, and
    the group must really go: its gloo threads and rank 0's store server end here, not at
    exit (:func:`_release_group_defaults`).
    """
    if dist.is_initialized():
        dist.barrier()
        world = dist.group.WORLD
        dist.destroy_process_group()
        _release_group_defaults(world)


def _release_group_defaults(group: Any) -> None:
    """Drop the references torch.distributed's own function defaults hold to ``group``.

    Why: ``torch.distributed.nn.functional`` declares its collectives with
    ``group=group.WORLD``, a default read when the module is imported. ``torch._dynamo``
    imports it, and snncc's tracer (fake tensors) imports ``torch._dynamo``. Compiling
    after joining the group therefore left ten references to it that
    ``destroy_process_group`` does not clear: gloo's threads and the store server lived on
    into the interpreter's teardown. Each such default becomes ``None``, which those
    functions read as the default group; imported before any group, that is their value
    anyway.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("torch.distributed"):
            continue
        for value in list(vars(module).values()):
            for fn in _functions_of(value):
                if fn.__defaults__ and any(d is group for d in fn.__defaults__):
                    fn.__defaults__ = tuple(None if d is group else d for d in fn.__defaults__)
                kw = fn.__kwdefaults__
                if kw and any(d is group for d in kw.values()):
                    fn.__kwdefaults__ = {k: None if d is group else d for k, d in kw.items()}


def _functions_of(value: Any) -> list[types.FunctionType]:
    """``value`` if it is a plain function; a class's own methods; else none.

    Asked of ``type(value)``, not ``isinstance``: that reads ``value.__class__``, which some
    of torch.distributed's deprecated names answer with a warning.
    """
    if type(value) is types.FunctionType:
        return [value]
    if not issubclass(type(value), type):
        return []
    found = [getattr(v, "__func__", v) for v in vars(value).values()]  # static, class methods
    return [f for f in found if type(f) is types.FunctionType]


@contextlib.contextmanager
def on_rank(rank: int, what: str) -> Iterator[None]:
    """Errors raised inside name the rank and its part (``rank 2, stage 2``) in one line."""
    try:
        yield
    except DistributedError:
        raise
    except SnnccError as e:
        raise type(e)(f"rank {rank} ({what}): {e}") from e
    except Exception as e:  # noqa: BLE001 - a peer's failure surfaces here as a gloo/nccl error
        raise DistributedError(f"rank {rank} ({what}): {type(e).__name__}: {e}") from e


def wire(t: Tensor, dtype: str) -> Tensor:
    """``t`` as it travels: exact 0/1 spikes as uint8, everything else as it is."""
    if dtype == "uint8" and t.dtype != torch.uint8:
        return t.detach().to(torch.uint8).contiguous()
    return t.detach().contiguous()


class Messages:
    """Sends and receives between ranks, each list of tensors one batched point-to-point op.

    A send returns at once (its buffers are kept until :meth:`wait`); a receive
    blocks until its tensors arrived and hands them back widened to ``dtype``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: list[tuple[Any, list[Tensor]]] = []

    def send(self, tensors: Sequence[Tensor], wires: Sequence[str], dst: int) -> None:
        bufs = [wire(t, w).to(self.device) for t, w in zip(tensors, wires)]
        if not bufs:
            return
        reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, b, dst) for b in bufs])
        self._pending.append((reqs, bufs))

    def recv(
        self, shapes: Sequence[Sequence[int]], wires: Sequence[str], src: int, dtype: torch.dtype
    ) -> list[Tensor]:
        bufs = [
            torch.empty(tuple(s), dtype=_TORCH.get(w, dtype), device=self.device)
            for s, w in zip(shapes, wires)
        ]
        if not bufs:
            return []
        for req in dist.batch_isend_irecv([dist.P2POp(dist.irecv, b, src) for b in bufs]):
            req.wait()
        return [b if b.dtype == dtype else b.to(dtype) for b in bufs]

    def wait(self) -> None:
        for reqs, _ in self._pending:
            for req in reqs:
                req.wait()
        self._pending.clear()


# ---------------------------------------------------------------- all-gather
def _pad_to(t: Tensor, dim: int, size: int) -> Tensor:
    if t.shape[dim] == size:
        return t.contiguous()
    pad = list(t.shape)
    pad[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(pad)], dim=dim).contiguous()


def _gather(piece: Tensor, dim: int, sizes: Sequence[int]) -> Tensor:
    width = max(sizes)
    padded = _pad_to(piece, dim, width)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)


class Gather(torch.autograd.Function):
    """All-gather the ranks' pieces along ``dim``: every rank gets the whole value.

    Its readers compute the same thing on every rank, or reach a GEMM through
    :class:`CopyToSplit`, so the gradient arriving here is the same whole
    gradient on every rank: the backward keeps this rank's piece, no message.
    """

    @staticmethod
    def forward(ctx, piece: Tensor, dim: int, sizes: tuple[int, ...], rank: int) -> Tensor:  # type: ignore[override]
        ctx.dim, ctx.sizes, ctx.rank = dim, sizes, rank
        return _gather(piece, dim, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        lo = sum(ctx.sizes[: ctx.rank])
        return grad.narrow(ctx.dim, lo, ctx.sizes[ctx.rank]).contiguous(), None, None, None


class CopyToSplit(torch.autograd.Function):
    """A whole value entering a GEMM that computes only this rank's output features: the
    identity forward; the backward sums the ranks' partial input gradients (Megatron's f),
    so everything before it gets the whole gradient on every rank."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_grads(params: Sequence[Tensor], average: bool = False) -> None:
    """Sum (or average) the ``.grad`` of ``params`` over every rank, in place."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        if average:
            p.grad /= world
