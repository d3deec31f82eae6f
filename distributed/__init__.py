"""Running one compiled model on several devices: ``snncc.distributed``.

Four schedules, all on existing engines (torch.distributed with gloo on CPUs
and NCCL on GPUs, launched by ``torchrun`` on one node or several; jax with
``jax.sharding``, ``shard_map`` and ``ppermute``, see :mod:`.jax_parallel`):

=================  ==========================================================
``data_parallel``  the batch split across ranks; training through torch DDP
                   over ``cm.to_torch()``
``pipeline``       time-chunk pipeline: rank s runs stage s (the partition
                   pass's) on chunk k while rank s+1 runs chunk k-1; state
                   stays on its rank; training hands the membrane adjoint back
``temporal``       temporal split: rank p owns time segment p for all layers
                   and hands the state on; micro-batches of the batch pipelined
``neuron_split``   a layer's neurons and the features of the GEMM feeding them
                   divided among ranks; an all-gather joins them
=================  ==========================================================

Each is a class with ``run(x, state)`` (streaming: the state a call returns
continues the sequence on the same rank) and ``train_step(x, loss_fn)``; every
rank calls the same method with the same arguments. :func:`make` builds one
from a :class:`snncc.CompiledModel`. Errors name the rank and its part.
"""

from __future__ import annotations

from typing import Any

from .comm import DistributedError, finalize, init

SCHEDULES = ("data_parallel", "pipeline", "temporal", "neuron_split")


def make(cm: Any, schedule: str, **options: Any) -> Any:
    """The runner of ``schedule`` for compiled model ``cm`` on this process's rank.

    Options: ``chunks`` (pipeline), ``micro_batches`` (temporal), ``request``
    (partition settings, pipeline), ``rank`` / ``world`` (default: the process group's).
    """
    from snncc.errors import UnsupportedError

    if schedule not in SCHEDULES:
        raise UnsupportedError(
            f"unknown parallel schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}"
        )
    args = (cm.ir, cm.backend, cm.options)
    if schedule == "pipeline":
        from .pipeline import Pipeline

        return Pipeline(*args, **_only(options, ("chunks", "rank", "world", "request"), schedule))
    if schedule == "temporal":
        from .temporal import Temporal

        return Temporal(*args, **_only(options, ("micro_batches", "rank", "world"), schedule))
    if schedule == "neuron_split":
        from .neuron_split import NeuronSplit

        return NeuronSplit(*args, **_only(options, ("rank", "world"), schedule))
    from .data_parallel import DataParallel

    return DataParallel(*args, **_only(options, ("rank", "world"), schedule))


def _only(options: dict[str, Any], allowed: tuple[str, ...], schedule: str) -> dict[str, Any]:
    from snncc.errors import UnsupportedError

    extra = sorted(k for k, v in options.items() if k not in allowed and v is not None)
    if extra:
        raise UnsupportedError(
            f"option(s) {extra} do not apply to the {schedule} schedule; it takes {', '.join(allowed)}"
        )
    return {k: v for k, v in options.items() if k in allowed and v is not None}


__all__ = ["SCHEDULES", "DistributedError", "finalize", "init", "make"]
