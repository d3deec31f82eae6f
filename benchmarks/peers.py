"""Every peer's runner for a workload case, and the timer they all share.

A runner is ``make(case, mode, device) -> Bench``: the callable to time (one
forward, or one forward+backward), what to do between repetitions that is not
part of the timed work (SpikingJelly's ``reset_net``, clearing ``.grad``), and
how to read the output's spike rate (so equal work is visible in the table).
A peer that cannot run a case raises :class:`NA` with the reason, which the
report prints as ``n/a: reason``.

Timing (shared/.library METHOD): warm-up first (compilation, autotuning,
cuDNN/cuBLAS handles stay out of the numbers), then ``repeat`` runs each
bracketed by CUDA events on the current stream (``time.perf_counter`` on the
CPU; a host clock around ``block_until_ready`` for jax), median reported;
inputs rotate among several sets when one would fit in the GPU's L2 cache.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from workloads import (
    Case,
    NorseLayer,
    SnnTorchLayer,
    make_input,
    replace_neurons,
    sj_model,
    snncc_nn_layer,
)

MODES = ("fwd", "fwd+bwd")


class NA(Exception):
    """This peer cannot run this case; the message says why."""


@dataclass
class Bench:
    #: runs one timed iteration on input x; returns the output (fwd) or None
    fn: Callable[[Any], Any]
    #: untimed work before each iteration (reset state, clear grads)
    before: Callable[[], None] = lambda: None
    #: converts an input tensor to what fn takes (jax arrays for jax)
    convert: Callable[[torch.Tensor], Any] = lambda x: x
    #: "events" (CUDA), "host" (perf_counter), "host-jax" (block_until_ready inside fn)
    clock: str = "events"
    #: reads peak device memory in MiB, or None
    peak_mib: Callable[[], float | None] = lambda: None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ timing
def _rotation(case: Case, device: str) -> int:
    """How many input sets to rotate: enough that they do not all sit in a 50 MB L2 cache."""
    if device != "cuda":
        return 1
    nbytes = 4 * math.prod(case.input_shape)
    return max(1, min(4, math.ceil(128e6 / max(nbytes, 1))))


def bench_input(bench: Bench, case: Case, mode: str, seed: int, device: str) -> Any:
    """One seeded input as ``bench.fn`` takes it; a bare layer's training step wants grad x."""
    x = make_input(case, seed=seed, device=device)
    if mode == "fwd+bwd" and case.workload in ("L1", "L2"):
        x.requires_grad_(True)
    return bench.convert(x)


def measure(bench: Bench, case: Case, mode: str, device: str, warmup: int, repeat: int) -> dict:
    """Warm up, then time ``repeat`` iterations; returns median/min/max ms, peak MiB, spike rate."""
    n_rot = _rotation(case, device)
    inputs = [bench_input(bench, case, mode, seed=i, device=device) for i in range(n_rot)]
    torch_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    user_before = bench.before

    def before() -> None:  # input gradients must not accumulate across repetitions either
        for t in torch_inputs:
            t.grad = None
        user_before()

    bench.before = before
    rate = None
    for i in range(max(warmup, 1)):
        bench.before()
        y = bench.fn(inputs[i % n_rot])
        if i == 0 and y is not None:
            rate = _mean(y)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    if bench.clock == "events":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeat)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeat)]
        for i in range(repeat):
            bench.before()
            starts[i].record()
            bench.fn(inputs[i % n_rot])
            ends[i].record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for i in range(repeat):
            bench.before()
            _sync(device)
            t0 = time.perf_counter()
            bench.fn(inputs[i % n_rot])
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    peak = bench.peak_mib()
    if peak is None and device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "repeats": len(times),
        "peak_mib": peak,
        "spike_rate": rate,
        "inputs_rotated": n_rot,
        "clock": bench.clock,
        "notes": bench.notes,
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _mean(y: Any) -> float | None:
    try:
        if isinstance(y, torch.Tensor):
            return float(y.detach().float().mean())
        import numpy as np

        return float(np.asarray(y, dtype=np.float32).mean())
    except Exception:  # an output we cannot average (tuples): no rate
        return None


def cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ torch peers
def _grad_clear(params: list[torch.Tensor]) -> Callable[[], None]:
    def clear() -> None:
        for p in params:
            p.grad = None

    return clear


def _torch_bench(model: torch.nn.Module, mode: str, device: str, reset=None) -> Bench:
    """A torch module timed forward (no_grad, eval) or forward+backward (train, grads on)."""
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    clock = "events" if device == "cuda" else "host"

    if mode == "fwd":
        model.eval()

        def fwd(x):
            with torch.no_grad():
                return model(x)

        return Bench(fn=fwd, before=reset or (lambda: None), clock=clock)
    model.train()
    clear = _grad_clear(params)

    def before():
        clear()
        if reset is not None:
            reset()

    def step(x):
        y = model(x)
        y.sum().backward()
        return y

    return Bench(fn=step, before=before, clock=clock)


def sj_runner(implementation: str) -> Callable[[Case, str, str], Bench]:
    """SpikingJelly 2.0 with its CUDA neuron implementation forced by the environment."""

    def make(case: Case, mode: str, device: str) -> Bench:
        import os

        from spikingjelly.activation_based import functional

        if device != "cuda" and implementation != "torch":
            raise NA(f"SpikingJelly's {implementation} implementation needs CUDA")
        want = os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "auto")
        if device == "cuda" and want != implementation:
            raise NA(f"worker started with SJ_LIF_CUDA_IMPLEMENTATION={want}")
        model = sj_model(case)
        return _torch_bench(model, mode, device, reset=lambda: functional.reset_net(model))

    return make


def snntorch_make(case: Case, mode: str, device: str) -> Bench:
    return _torch_bench(replace_neurons(sj_model(case), SnnTorchLayer), mode, device)


def norse_make(case: Case, mode: str, device: str) -> Bench:
    return _torch_bench(replace_neurons(sj_model(case), NorseLayer), mode, device)


def torch_compile_make(case: Case, mode: str, device: str) -> Bench:
    """The network with snncc.nn's pure-torch neurons (SpikingJelly's maths) under torch.compile."""
    if case.T > 64:
        raise NA(f"torch.compile unrolls the T={case.T} time loop; compiling it exceeds the budget")
    model = replace_neurons(sj_model(case), snncc_nn_layer).to(device)
    compiled = torch.compile(model)
    bench = _torch_bench(model, mode, device)  # train/eval mode and grad clearing

    def run(x):
        if mode == "fwd":
            with torch.no_grad():
                return compiled(x)
        y = compiled(x)
        y.sum().backward()
        return y

    bench.fn = run
    bench.notes.append("compile time excluded (warm-up)")
    return bench


# ------------------------------------------------------------------ snncc
def _example(case: Case) -> torch.Tensor:
    """A small tracing input of the case's per-step shape (T and B may differ at run time)."""
    return torch.rand((2, 2, *case.shape))


def snncc_runner(backend: str, **options: Any) -> Callable[[Case, str, str], Bench]:
    """snncc compiling the SpikingJelly model for ``backend`` with ``options``; timed via ``cm(x)``."""

    def make(case: Case, mode: str, device: str) -> Bench:
        import snncc

        if backend == "cuda" and device != "cuda":
            raise NA("the cuda backend needs a GPU")
        if backend in ("cpu", "reference") and device == "cuda":
            raise NA(f"the {backend} backend runs on the CPU")
        if options.get("cuda_graph") and mode != "fwd":
            raise NA("CUDA graphs are used for inference only")
        if options.get("spike_dtype") == "uint8" and (
            mode != "fwd" or case.workload not in ("L1", "L2")
        ):
            raise NA("uint8 spikes: inference of layers whose spikes are the output")
        precision = options.get("precision")
        if precision in ("tf32", "bf16", "fp16") and case.workload not in ("M1", "C1"):
            raise NA("GEMM precision matters only where there are GEMMs")
        if options.get("time_chunks") == 0 and case.workload != "L2":
            raise NA("time chunks are compared on L2 only")
        if options.get("saved_spike_dtype") == "float32" and (
            mode != "fwd+bwd" or case.workload not in ("M1", "C1")
        ):
            raise NA("saved spikes matter in training, where spikes feed a GEMM")
        # a training step traces the model in training mode: BatchNorm batch statistics
        # and dropout stay in the graph, as in every peer's training step
        model = sj_model(case).train(mode == "fwd+bwd")
        cm = snncc.compile(model, _example(case), backend=backend, **options)
        prog = cm.program
        if backend == "jax":
            return _jax_bench(cm, case, mode, device)
        clock = "events" if device == "cuda" else "host"
        notes = []
        if precision in ("tf32", "bf16", "fp16") and mode == "fwd":
            notes.append(_spike_agreement(model, case, device, cm))
        if mode == "fwd":

            def fwd(x):
                with torch.no_grad():
                    return cm(x)

            return Bench(fn=fwd, clock=clock, notes=notes)
        params = [p for p in prog.params.values() if p.requires_grad]

        def step(x):
            y = cm(x)
            y.sum().backward()
            return y

        return Bench(fn=step, before=_grad_clear(params), clock=clock)

    return make


def _spike_agreement(model: torch.nn.Module, case: Case, device: str, cm: Any) -> str:
    """Output spikes and final membranes against the fp32 program, on the first input (measured).

    The suite's M1 and C1 output layers are nearly silent with these weights, so equal
    outputs alone would compare zeros: the note also counts the fp32 output spikes and how
    many neurons' final membranes (every neuron layer) moved by more than 1e-2.
    """
    import snncc

    exact = snncc.compile(model, _example(case), backend="cuda")
    x = make_input(case, seed=0, device=device)
    with torch.no_grad():
        (y0, s0), (y1, s1) = exact.program.run(x), cm.program.run(x)
    moved = total = 0
    for n in s0.keys() & s1.keys():
        if "v" in s0[n] and "v" in s1[n]:
            moved += int(((s0[n]["v"] - s1[n]["v"]).abs() > 1e-2).sum())
            total += s0[n]["v"].numel()
    return (
        f"vs fp32: {int((y0 != y1).sum())} of {y0.numel()} outputs differ "
        f"({int(y0.sum())} output spikes in fp32); final membranes off by > 1e-2: "
        f"{moved} of {total}"
    )


def _jax_bench(cm: Any, case: Case, mode: str, device: str) -> Bench:
    import jax
    import numpy as np

    platform = jax.default_backend()
    if device == "cuda" and platform != "gpu":
        raise NA(f"jax runs on {platform}, not on a GPU (install jax[cuda12] or jax[cuda13])")
    params = cm.program.params
    convert = lambda x: jax.device_put(np.asarray(x.detach().cpu()))  # noqa: E731
    if mode == "fwd":
        f = jax.jit(cm.jax_fn)

        def fwd(x):
            return f(params, x).block_until_ready()

        fn = fwd
    else:
        if case.workload in ("L1", "L2"):
            g = jax.jit(jax.grad(lambda x: cm.jax_fn(params, x).sum()))

            def step(x):
                jax.block_until_ready(g(x))

        else:
            g = jax.jit(jax.grad(lambda p, x: cm.jax_fn(p, x).sum()))

            def step(x):
                jax.block_until_ready(g(params, x))

        fn = step

    def peak() -> float | None:
        try:
            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**20 or None
        except Exception:  # backends without memory stats
            return None

    return Bench(fn=fn, convert=convert, clock="host-jax", peak_mib=peak)


# ------------------------------------------------------------------ registry
#: peer name -> (runner, environment for its worker process, description)
PEERS: dict[str, tuple[Callable[[Case, str, str], Bench], dict[str, str], str]] = {
    "snncc-cuda": (snncc_runner("cuda"), {}, "snncc cuda backend, fp32 (exact spikes)"),
    "snncc-cuda-graph": (
        snncc_runner("cuda", cuda_graph=True),
        {},
        "snncc cuda, inference replayed from a CUDA graph",
    ),
    "snncc-cuda-u8": (
        snncc_runner("cuda", cuda_graph=True, spike_dtype="uint8"),
        {},
        "snncc cuda, CUDA graph + uint8 output spikes",
    ),
    "snncc-cuda-u8-eager": (
        snncc_runner("cuda", spike_dtype="uint8"),
        {},
        "snncc cuda, uint8 output spikes without a CUDA graph (no input copy)",
    ),
    "snncc-cuda-nochunk": (
        snncc_runner("cuda", time_chunks=0),
        {},
        "snncc cuda without time chunks (one thread per neuron over all T, forward and backward)",
    ),
    "snncc-cuda-fp32saved": (
        snncc_runner("cuda", saved_spike_dtype="float32"),
        {},
        "snncc cuda keeping fp32 spikes for the GEMMs' backward (default: uint8, less memory)",
    ),
    "snncc-cuda-tf32": (
        snncc_runner("cuda", precision="tf32"),
        {},
        "snncc cuda, TF32 GEMMs/convolutions",
    ),
    "snncc-cuda-bf16": (
        snncc_runner("cuda", precision="bf16"),
        {},
        "snncc cuda, bf16 autocast GEMMs/convolutions; neuron kernels read/write bf16",
    ),
    "snncc-cuda-fp16": (
        snncc_runner("cuda", precision="fp16"),
        {},
        "snncc cuda, fp16 autocast GEMMs/convolutions; neuron kernels read/write fp16",
    ),
    "snncc-cuda-bf16-widen": (
        snncc_runner("cuda", precision="bf16", autocast_io=False),
        {},
        "snncc cuda, bf16 autocast, neuron kernels behind fp32 casts (autocast_io=False)",
    ),
    "snncc-jax": (
        snncc_runner("jax"),
        {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        "snncc jax backend",
    ),
    "snncc-cpu": (snncc_runner("cpu"), {}, "snncc cpu backend (same kernels, host compiler)"),
    "snncc-reference": (snncc_runner("reference"), {}, "snncc reference (torch eager oracle)"),
    "sj-triton": (
        sj_runner("triton"),
        {"SJ_LIF_CUDA_IMPLEMENTATION": "triton", "SJ_PLIF_CUDA_IMPLEMENTATION": "triton"},
        "SpikingJelly 2.0, triton neurons",
    ),
    "sj-torch": (
        sj_runner("torch"),
        {"SJ_LIF_CUDA_IMPLEMENTATION": "torch", "SJ_PLIF_CUDA_IMPLEMENTATION": "torch"},
        "SpikingJelly 2.0, torch neurons",
    ),
    "snntorch": (snntorch_make, {}, "snnTorch Leaky, stepped over T per layer"),
    "norse": (norse_make, {}, "Norse LIFBoxCell, stepped over T per layer"),
    "torch-compile": (torch_compile_make, {}, "torch.compile of the pure-torch model"),
}

#: run order on a GPU: snncc's main variants (one worker), SpikingJelly triton and torch, then
#: the other peers, and last the variants that only explain a difference, so a spent time
#: budget skips those (order of the H200 run, 2026-11-27, plus -u8-eager)
GPU_PEERS = (
    "snncc-cuda",
    "snncc-cuda-graph",
    "snncc-cuda-u8",
    "snncc-cuda-u8-eager",
    "snncc-cuda-tf32",
    "snncc-cuda-bf16",
    "sj-triton",
    "sj-torch",
    "snncc-jax",
    "snntorch",
    "norse",
    "torch-compile",
    "snncc-cuda-nochunk",
    "snncc-cuda-fp16",
    "snncc-cuda-bf16-widen",
    "snncc-cuda-fp32saved",
)
CPU_PEERS = (
    "snncc-cpu",
    "snncc-reference",
    "snncc-jax",
    "sj-torch",
    "snntorch",
    "norse",
    "torch-compile",
)
