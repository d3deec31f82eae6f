"""The jax backend on several devices: ``jax.sharding`` for the data-parallel and neuron splits,
``shard_map`` + ``ppermute`` for the temporal split, one program per device for the
time-chunk pipeline.

Why these engines: the generated module's ``forward(params, inputs, state)`` is a
pure jax function, so XLA partitions it from the shardings of its arguments
(data parallel: the batch axis of the input; neuron split: the output-feature
axis of each GEMM's and convolution's weights), and a temporal split is the
same function on every device with the state passed device to device by
``ppermute`` once per tick. The time-chunk pipeline runs a different program on
each device (its stage of the partitioned schedule, rendered by the jax
backend like any graph) and moves chunks with ``jax.device_put``; jax's
asynchronous dispatch lets stage s compute chunk k while stage s+1 computes
chunk k-1. Every function here is differentiable: ``jax.grad`` of a loss on
its outputs runs the backward in reverse, the ``ppermute``s and transfers
transposed (the state adjoint handed back).

Several hosts: :func:`init` calls ``jax.distributed.initialize`` (from
torchrun-style variables), after which ``jax.devices()`` lists every host's
devices and the same functions run over all of them (inputs as global arrays,
e.g. from ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.passes.partition import SHARD_MAKING, refuse_inexact

from .graphs import partitioned, stage_graph
from .runner import chunk_bounds


def init() -> tuple[int, int]:
    """``jax.distributed.initialize`` from ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``
    (one process per host or per device); CPU collectives through gloo. Returns (rank, world)."""
    need = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
    missing = [k for k in need if k not in os.environ]
    if missing:
        raise UnsupportedError(f"jax multi-process needs {', '.join(missing)} (set by torchrun)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    jax.distributed.initialize(
        coordinator_address=f"{os.environ['MASTER_ADDR']}:{int(os.environ['MASTER_PORT']) + 1}",
        num_processes=world,
        process_id=rank,
    )
    return rank, world


def _devices(devices: int | Sequence[Any] | None) -> list[Any]:
    have = jax.devices()
    if devices is None:
        return list(have)
    if isinstance(devices, int):
        if devices > len(have):
            raise UnsupportedError(
                f"{devices} devices asked for, jax has {len(have)} ({have[0].platform}); on a CPU "
                f"set XLA_FLAGS=--xla_force_host_platform_device_count={devices} before jax starts"
            )
        return list(have[:devices])
    return list(devices)


def _program(cm: Any) -> Any:
    if not hasattr(cm.program, "module"):
        raise UnsupportedError(
            f"snncc.distributed.jax_parallel runs the jax backend; this model was compiled for "
            f"{cm.backend!r} (use the torch.distributed runtimes, snncc.distributed.make)"
        )
    return cm.program


def _inputs(x: Any) -> tuple[jax.Array, ...]:
    from snncc.backends.jax.program import to_jax

    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return tuple(to_jax(a) for a in xs)


def _one(ys: Sequence[Any]) -> Any:
    return ys[0] if len(ys) == 1 else tuple(ys)


# ---------------------------------------------------------------- data parallel
def data_parallel(cm: Any, devices: int | Sequence[Any] | None = None) -> Callable:
    """``f(params, x) -> outputs`` with the batch (axis 1 of x) split over ``devices``."""
    prog = _program(cm)
    refuse_inexact(cm.ir, "data_parallel")
    mesh = jax.sharding.Mesh(np.array(_devices(devices)), ("batch",))
    forward = prog.module.forward

    @jax.jit
    def run(params: dict, xs: tuple) -> Any:
        ys, _ = forward(params, xs, {})
        return _one(ys)

    def f(params: dict, x: Any) -> Any:
        xs = _inputs(x)
        if xs[0].shape[1] % mesh.size:
            raise ShapeError(
                f"batch {xs[0].shape[1]} does not split evenly over {mesh.size} devices"
            )
        xs = tuple(jax.device_put(a, NamedSharding(mesh, P(None, "batch"))) for a in xs)
        params = jax.device_put(params, NamedSharding(mesh, P()))
        return run(params, xs)

    return f


# ---------------------------------------------------------------- neuron split
def neuron_split(cm: Any, devices: int | Sequence[Any] | None = None) -> Callable:
    """``f(params, x) -> outputs`` with every GEMM's and convolution's output features (and
    so the neurons they feed) split over ``devices``; XLA inserts the all-gathers."""
    prog = _program(cm)
    graph: Graph = cm.ir
    refuse_inexact(graph, "neuron_split")
    mesh = jax.sharding.Mesh(np.array(_devices(devices)), ("model",))
    split: set[str] = set()
    for n in graph.nx.nodes:
        if graph.op(n) in SHARD_MAKING:
            split.update(graph.node(n)["params"].values())
    forward = prog.module.forward

    def sharding(name: str, value: Any) -> NamedSharding:
        if name in split and value.ndim >= 1 and value.shape[0] % mesh.size == 0:
            return NamedSharding(mesh, P("model", *([None] * (value.ndim - 1))))
        return NamedSharding(mesh, P())

    @jax.jit
    def run(params: dict, xs: tuple) -> Any:
        ys, _ = forward(params, xs, {})
        return _one(ys)

    def f(params: dict, x: Any) -> Any:
        params = {k: jax.device_put(v, sharding(k, v)) for k, v in params.items()}
        xs = tuple(jax.device_put(a, NamedSharding(mesh, P())) for a in _inputs(x))
        return run(params, xs)

    return f


# ---------------------------------------------------------------- temporal split
def fresh_state(graph: Graph, batch: int) -> dict[int, dict[str, jax.Array]]:
    """Every state variable at t = -1 (a neuron's initial values; 0 for a delayed value)."""
    from snncc.backends.base import state_layout
    from snncc.ir.neuron import NeuronSpec
    from snncc.ir.neurons import build

    out: dict[int, dict[str, jax.Array]] = {}
    for n, (required, _) in state_layout(graph).items():
        shape = (batch, *(int(d) for d in graph.node(n)["shape"][1:]))
        inits = {}
        if graph.op(n) == "neuron":
            inits = build(NeuronSpec.from_dict(graph.attrs(n)["neuron"])).inits
        out[n] = {v: jnp.full(shape, inits.get(v, 0.0), jnp.float32) for v in required}
    return out


def temporal(
    cm: Any, devices: int | Sequence[Any] | None = None, micro_batches: int = 1
) -> Callable:
    """``f(params, x) -> outputs``: device p runs time segment p of every micro-batch, the state
    going device to device by ``ppermute``; T must split evenly over the devices and B over
    the micro-batches."""
    prog = _program(cm)
    graph: Graph = cm.ir
    refuse_inexact(graph, "temporal")
    devs = _devices(devices)
    Pn, M = len(devs), micro_batches
    mesh = jax.sharding.Mesh(np.array(devs), ("time",))
    forward = prog.module.forward
    if len(graph.meta["inputs"]) != 1 or len(graph.meta["outputs"]) != 1:
        raise UnsupportedError("the jax temporal split runs models with one input and one output")

    def local(params: dict, xl: jax.Array) -> jax.Array:
        # xl: [1, M, seg, mb, ...] on this device
        p = jax.lax.axis_index("time")
        mb = xl.shape[3]
        fresh = jax.tree.map(lambda a: a + 0.0 * xl[0, 0, 0, 0].sum(), fresh_state(graph, mb))
        carry = fresh
        outs = None
        for tick in range(M + Pn - 1):
            m = tick - p
            mc = jnp.clip(m, 0, M - 1)
            xm = jax.lax.dynamic_index_in_dim(xl[0], mc, 0, keepdims=False)
            st_in = jax.tree.map(lambda f0, c: jnp.where(p == 0, f0, c), fresh, carry)
            ys, st_out = forward(params, (xm,), st_in)
            y = ys[0]
            if outs is None:
                outs = jnp.zeros((M, *y.shape), y.dtype)
            valid = (m >= 0) & (m < M)
            current = jax.lax.dynamic_index_in_dim(outs, mc, 0, keepdims=False)
            outs = jax.lax.dynamic_update_index_in_dim(outs, jnp.where(valid, y, current), mc, 0)
            st_out = {n: {v: st_out[n][v] for v in fresh[n]} for n in fresh}
            carry = jax.lax.ppermute(st_out, "time", [(i, i + 1) for i in range(Pn - 1)])
        return outs[None]

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("time")), out_specs=P("time"))

    @jax.jit
    def run(params: dict, x: jax.Array) -> jax.Array:
        T, B = x.shape[:2]
        seg, mb = T // Pn, B // M
        xr = x.reshape(Pn, seg, M, mb, *x.shape[2:]).swapaxes(1, 2)
        y = mapped(params, xr)  # [P, M, seg, mb, ...]
        return y.swapaxes(1, 2).reshape(T, B, *y.shape[4:])

    def f(params: dict, x: Any) -> Any:
        (xa,) = _inputs(x)
        T, B = xa.shape[:2]
        if T % Pn or B % M:
            raise ShapeError(
                f"the jax temporal split needs T ({T}) divisible by {Pn} devices and B ({B}) by "
                f"{M} micro-batches"
            )
        return run(params, xa)

    return f


# ---------------------------------------------------------------- pipeline
def pipeline(
    cm: Any,
    devices: int | Sequence[Any] | None = None,
    chunks: int = 4,
    request: dict[str, Any] | None = None,
) -> Callable:
    """``f(params, x) -> outputs``: stage s of the partitioned schedule (one per device) runs
    on device s, chunk after chunk of the time axis; each stage's state stays on its device."""
    from snncc.backends.jax import JaxBackend

    _program(cm)
    devs = _devices(devices)
    graph = partitioned(cm.ir, len(devs), request)
    refuse_inexact(graph, "pipeline")
    S = len(devs)
    backend = JaxBackend()
    options = {k: v for k, v in cm.options.items() if k in ("cache_dir", "unroll")}
    stages = [backend.lower(stage_graph(graph, s), **options) for s in range(S)]
    fns = [jax.jit(st.module.forward) for st in stages]
    names = [sorted(st.params) for st in stages]

    def f(params: dict, x: Any) -> Any:
        xs = _inputs(x)
        T = xs[0].shape[0]
        local = [jax.device_put({k: params[k] for k in names[s]}, devs[s]) for s in range(S)]
        states: list[dict] = [{} for _ in range(S)]
        outs: list[list[jax.Array]] = []
        for t0, t1 in chunk_bounds(T, chunks):
            ins = tuple(a[t0:t1] for a in xs)
            for s in range(S):
                ins = tuple(jax.device_put(a, devs[s]) for a in ins)
                ys, states[s] = fns[s](local[s], ins, states[s])
                ins = tuple(ys)
            outs.append(list(ins))
        return _one([jnp.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))])

    return f
