"""Every peer's runner for a workload case, the configurations compared, and the one timer.

A runner is ``make(case, mode, device) -> Bench``: the callable to time (one
forward, or one forward+backward), what a user's loop does before each step
(SpikingJelly's ``reset_net``, clearing ``.grad``), how to wait for the device,
and how to read the output's spike rate (so equal work is visible in the table).
A peer that cannot run a case raises :class:`NA` with the reason, which the
report prints as ``n/a: reason``.

Like for like (issue 17). Each peer has a *configuration* -- ``fp32`` (eager,
exact fp32: TF32 off for matmuls and cuDNN in its worker), ``graph`` (inference
replayed from a CUDA graph), ``bf16`` (bf16 autocast), ``tf32`` -- and the
report divides a SpikingJelly time by the snncc time of the *same*
configuration only (:data:`COMPARISONS`). Variants without a SpikingJelly
counterpart (uint8 spikes, no time chunks, ...) keep their own columns and no
ratio.

Timing, the same for every peer on every device (:func:`measure`): the host
clock (``time.perf_counter``) around blocks of back-to-back steps that start
and end with a device synchronisation (``torch.cuda.synchronize``; jax:
``block_until_ready`` on the block's last output, which XLA's in-order stream
finishes last). Each step includes the peer's ``before`` (state reset, grad
clearing): the per-step work a user's loop does. Warm-up runs until two
consecutive windows of steps agree within 5% (at least ``min_warmup_runs`` and
``min_warmup_s``; at most ``max_warmup_s``, else the record says "not stable").
The first step (compilation, autotuning, handle creation) is timed apart and
not counted in the warm-up's time. Then ``repeat`` samples, each the mean step
time of a block of ``k`` steps
(``k`` makes a block last >= ``block_s``), reported as median, quartiles, min
and max. Inputs rotate among several sets where one set would fit in a 50 MB
L2 cache.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from workloads import (
    Case,
    NorseLayer,
    R1Norse,
    R1SnnTorch,
    SnnTorchLayer,
    make_input,
    replace_neurons,
    sj_model,
    snncc_nn_layer,
)

MODES = ("fwd", "fwd+bwd")


class NA(Exception):
    """This peer cannot run this case; the message says why."""


def _torch_sync(device: str) -> Callable[[Any], None]:
    if device == "cuda":
        return lambda _y: torch.cuda.synchronize()
    return lambda _y: None


@dataclass
class Bench:
    #: runs one step on input x; returns its output (what the next sync waits for)
    fn: Callable[[Any], Any]
    #: what the user's loop does before each step (reset state, clear grads); timed with it
    before: Callable[[], None] = lambda: None
    #: converts an input tensor to what fn takes (jax arrays for jax)
    convert: Callable[[torch.Tensor], Any] = lambda x: x
    #: waits until the device has finished everything up to the step that returned y
    sync: Callable[[Any], None] = lambda _y: None
    #: reads peak device memory in MiB, or None (default: torch's allocator peak on a GPU)
    peak_mib: Callable[[], float | None] = lambda: None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Protocol:
    """How long to warm up and how many samples to take (see the module docstring)."""

    repeat: int = 20
    min_warmup_runs: int = 5
    min_warmup_s: float = 0.5
    max_warmup_s: float = 6.0
    tolerance: float = 0.05
    block_s: float = 0.005
    max_block: int = 50


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


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted list (numpy's default method)."""
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def spread(samples: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max of per-step times (ms)."""
    xs = sorted(samples)
    return {
        "median_ms": statistics.median(xs),
        "p25_ms": _quantile(xs, 0.25),
        "p75_ms": _quantile(xs, 0.75),
        "min_ms": xs[0],
        "max_ms": xs[-1],
    }


def measure(
    bench: Bench, case: Case, mode: str, device: str, protocol: Protocol | None = None
) -> dict:
    """Warm up until stable, then time ``protocol.repeat`` blocks; returns the record's numbers."""
    pr = protocol or Protocol()
    n_rot = _rotation(case, device)
    inputs = [bench_input(bench, case, mode, seed=i, device=device) for i in range(n_rot)]
    torch_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    user_before = bench.before
    count = 0

    def step() -> Any:
        nonlocal count
        for t in torch_inputs:  # input gradients must not accumulate across steps either
            t.grad = None
        user_before()
        y = bench.fn(inputs[count % n_rot])
        count += 1
        return y

    start = time.perf_counter()
    y = step()
    bench.sync(y)
    first_ms = (time.perf_counter() - start) * 1e3
    rate, spikes = _output_stats(y)
    y = None
    runs: list[float] = []
    stable = False
    warm_start = time.perf_counter()  # the caps count from here: compiling stays out of them
    while True:
        t0 = time.perf_counter()
        y = step()
        bench.sync(y)
        runs.append(time.perf_counter() - t0)
        y = None
        elapsed = time.perf_counter() - warm_start
        window = max(1, min(5, int(0.2 / max(statistics.median(runs[-3:]), 1e-9))))
        if len(runs) >= max(pr.min_warmup_runs, 2 * window) and elapsed >= pr.min_warmup_s:
            a = statistics.median(runs[-window:])
            b = statistics.median(runs[-2 * window : -window])
            if abs(a - b) <= pr.tolerance * b:
                stable = True
                break
        if elapsed >= pr.max_warmup_s and len(runs) >= pr.min_warmup_runs:
            break
    warmup_s = time.perf_counter() - start
    per_step = statistics.median(runs[-5:])
    k = max(1, min(pr.max_block, math.ceil(pr.block_s / max(per_step, 1e-9))))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    samples = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(pr.repeat):
        bench.sync(None)
        t0 = time.perf_counter()
        for _ in range(k):
            y = step()
        bench.sync(y)
        samples.append((time.perf_counter() - t0) / k * 1e3)
        y = None
    # every thread of the process: shows how many cores a peer really kept busy
    cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    peak = bench.peak_mib()
    if peak is None and device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    return {
        **spread(samples),
        "samples_ms": samples,
        "steps_per_sample": k,
        "cpu_per_wall": round(cpu_per_wall, 3),
        "peak_mib": peak,
        "first_step_ms": first_ms,
        "warmup_runs": len(runs) + 1,
        "warmup_s": round(warmup_s, 3),
        "warmup_stable": stable,
        "spike_rate": rate,
        "output_spikes": spikes,
        "inputs_rotated": n_rot,
        "notes": bench.notes,
    }


def _output_stats(y: Any) -> tuple[float | None, float | None]:
    """Mean and sum of the first step's output (a tuple's first element), or (None, None)."""
    if isinstance(y, tuple):
        y = y[0]
    try:
        if isinstance(y, torch.Tensor):
            t = y.detach().double()
            return float(t.mean()), float(t.sum())
        import numpy as np

        a = np.asarray(y, dtype=np.float64)
        return float(a.mean()), float(a.sum())
    except Exception:  # an output we cannot average: no rate
        return None, None


def device_warmup(device: str, seconds: float = 1.0) -> None:
    """Keep the GPU busy for ``seconds`` so its clocks are up before the first case."""
    if device != "cuda":
        return
    a = torch.rand(4096, 4096, device="cuda")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def cleanup() -> None:
    """Free the last case: snnTorch's class-level neuron list, Python garbage, cached GPU memory."""
    snntorch = sys.modules.get("snntorch")
    if snntorch is not None:
        snntorch.SpikingNeuron.init()  # snnTorch keeps every neuron ever built in a list
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


#: the configuration whose convolutions use cuDNN's measured algorithm choice (issue 16,
#: goal 5: in exact fp32 cuDNN's heuristic picked FFT convolutions for C1 that took 88% of
#: the forward's GPU time); torch offers no per-call choice, only this process-wide switch
CUDNN_MEASURED = "fp32, cuDNN measured"


def set_precision(config: str) -> None:
    """TF32 on for the ``tf32`` configuration only: fp32 peers run exact fp32 matmuls and convs.

    PyTorch's default lets cuDNN convolutions use TF32 (``cudnn.allow_tf32``), so
    without this an "fp32" SpikingJelly C1 would run TF32 convolutions against
    snncc's exact fp32.
    """
    tf32 = config == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    # CUDNN_MEASURED: cuDNN times every convolution shape's algorithms on first use and keeps
    # the fastest deterministic one, instead of its heuristic's pick
    measured = config == CUDNN_MEASURED
    torch.backends.cudnn.benchmark = measured
    torch.backends.cudnn.deterministic = measured


# ------------------------------------------------------------------ torch peers
def _grad_clear(params: list[torch.Tensor]) -> Callable[[], None]:
    def clear() -> None:
        for p in params:
            p.grad = None

    return clear


def _torch_bench(
    model: torch.nn.Module,
    mode: str,
    device: str,
    reset: Callable[[], None] | None = None,
    autocast: torch.dtype | None = None,
) -> Bench:
    """A torch module timed forward (no_grad, eval) or forward+backward (train, grads on)."""
    import contextlib

    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]

    def cast():
        if autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=autocast)

    if mode == "fwd":
        model.eval()

        def fwd(x):
            with torch.no_grad(), cast():
                return model(x)

        return Bench(fn=fwd, before=reset or (lambda: None), sync=_torch_sync(device))
    model.train()
    clear = _grad_clear(params)

    def before():
        clear()
        if reset is not None:
            reset()

    def step(x):
        with cast():
            y = model(x)
        y.sum().backward()
        return y

    return Bench(fn=step, before=before, sync=_torch_sync(device))


def _needs_gemms(case: Case, what: str) -> None:
    if case.workload not in ("M1", "C1"):
        raise NA(f"{what} matters only where there are GEMMs (M1, C1)")


def sj_runner(implementation: str, execution: str = "eager") -> Callable[[Case, str, str], Bench]:
    """SpikingJelly 2.0 with its CUDA neuron implementation forced by the environment.

    ``execution``: ``eager``; ``graph``: SpikingJelly's own ``StaticCudaGraph``
    (its examples' ``--execution-mode cuda_graph``) around the inference forward;
    ``bf16``: the model under ``torch.autocast(bfloat16)``.
    """

    def make(case: Case, mode: str, device: str) -> Bench:
        from spikingjelly.activation_based import functional

        if device != "cuda" and implementation != "torch":
            raise NA(f"SpikingJelly's {implementation} implementation needs CUDA")
        if device == "cuda":
            want = os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "auto")
            if want != implementation:
                raise NA(f"worker started with SJ_LIF_CUDA_IMPLEMENTATION={want}")
        if implementation == "cuda":
            import sj_native

            why = sj_native.not_loaded()
            if why:
                raise NA(f"not built: {why}")
        if execution == "bf16":
            _needs_gemms(case, "bf16 autocast")
        model = sj_model(case)

        def reset() -> None:
            functional.reset_net(model)

        if execution != "graph":
            autocast = torch.bfloat16 if execution == "bf16" else None
            return _torch_bench(model, mode, device, reset=reset, autocast=autocast)
        if device != "cuda" or mode != "fwd":
            raise NA("CUDA graphs are compared for inference on a GPU (snncc's are inference-only)")
        from spikingjelly.activation_based._cuda_graph import StaticCudaGraph

        model = model.to(device).eval()
        graph = StaticCudaGraph(model, warmup_steps=3)

        def fwd(x):
            with torch.no_grad():
                return graph(x)

        bench = Bench(fn=fwd, before=reset, sync=_torch_sync(device))
        bench.notes.append("SpikingJelly StaticCudaGraph: replay copies the input in, as snncc's")
        return bench

    return make


def snntorch_make(case: Case, mode: str, device: str) -> Bench:
    if case.workload == "R1":  # its own recurrent neuron (RLeaky), not a replaced LIF
        return _torch_bench(R1SnnTorch(case), mode, device)
    return _torch_bench(replace_neurons(sj_model(case), SnnTorchLayer), mode, device)


def norse_make(case: Case, mode: str, device: str) -> Bench:
    if case.workload == "R1":  # its own recurrent cell (LIFRecurrentCell)
        return _torch_bench(R1Norse(case), mode, device)
    return _torch_bench(replace_neurons(sj_model(case), NorseLayer), mode, device)


def torch_compile_make(case: Case, mode: str, device: str) -> Bench:
    """The network with snncc.nn's pure-torch neurons (SpikingJelly's maths) under torch.compile."""
    if case.workload == "R1":
        raise NA("snncc.nn has no pure-torch recurrent container for torch.compile")
    if case.T > 64:
        raise NA(f"torch.compile unrolls the T={case.T} time loop; compiling it exceeds the budget")
    model = replace_neurons(sj_model(case), snncc_nn_layer).to(device)
    compiled = torch.compile(model, dynamic=False)  # the suite's shapes are fixed
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
        if precision in ("tf32", "bf16", "fp16"):
            _needs_gemms(case, "GEMM precision")
        if options.get("time_chunks") == 0 and case.workload != "L2":
            raise NA("time chunks are compared on L2 only")
        if "recurrent" in options and case.workload != "R1":
            raise NA("the recurrent schedule is compared on R1 only")
        if options.get("neuron_kernels") == "pallas":
            if device != "cuda":
                raise NA(
                    "Pallas neuron kernels run on a GPU (on a CPU only interpreted, for tests)"
                )
            if case.workload not in ("L1", "L2"):
                raise NA("Pallas neuron kernels are compared on L1 and L2 (issue 16)")
        if options.get("saved_spike_dtype") == "float32" and (
            mode != "fwd+bwd" or case.workload not in ("M1", "C1")
        ):
            raise NA("saved spikes matter in training, where spikes feed a GEMM")
        # a training step traces the model in training mode: BatchNorm batch statistics
        # and dropout stay in the graph, as in every peer's training step
        model = sj_model(case).train(mode == "fwd+bwd")
        cm = snncc.compile(model, _example(case), backend=backend, **options)
        prog = cm.program
        notes = []
        if mode == "fwd+bwd":
            notes += _dropout_note(model, case, cm, device)
        if backend == "jax":
            bench = _jax_bench(cm, model, case, mode, device)
            bench.notes += notes
            return bench
        sync = _torch_sync(device)
        if precision in ("tf32", "bf16", "fp16") and mode == "fwd":
            notes.append(_spike_agreement(model, case, device, cm))
        if mode == "fwd":

            def fwd(x):
                with torch.no_grad():
                    return cm(x)

            return Bench(fn=fwd, sync=sync, notes=notes)
        params = [p for p in prog.params.values() if p.requires_grad]

        def step(x):
            y = cm(x)
            y.sum().backward()
            return y

        return Bench(fn=step, before=_grad_clear(params), sync=sync, notes=notes)

    return make


def cudnn_measured(make: Callable[[Case, str, str], Bench], snncc: bool) -> Callable:
    """``make`` on C1 only, in a worker that lets cuDNN measure its convolution algorithms
    (:data:`CUDNN_MEASURED`, set by :func:`set_precision`); snncc's forward also notes how
    the measured choice's spikes compare with the heuristic's (its sums may run in another
    order, so spikes near the threshold may flip)."""

    def wrapped(case: Case, mode: str, device: str) -> Bench:
        if case.workload != "C1":
            raise NA("cuDNN's algorithm choice matters only where there are convolutions (C1)")
        bench = make(case, mode, device)
        if snncc and mode == "fwd":
            bench.notes.append(_cudnn_choice_agreement(case, device))
        return bench

    return wrapped


def _cudnn_choice_agreement(case: Case, device: str) -> str:
    """The fp32 cuda program's outputs with cuDNN's heuristic and with its measured choice."""
    import snncc

    model = sj_model(case).eval()
    cm = snncc.compile(model, _example(case), backend="cuda")
    x = make_input(case, seed=0, device=device)
    outs = []
    worker_setting = torch.backends.cudnn.benchmark
    try:
        for measured in (False, True):
            torch.backends.cudnn.benchmark = measured
            with torch.no_grad():
                outs.append(cm.program.run(x)[0])
    finally:
        torch.backends.cudnn.benchmark = worker_setting
    y0, y1 = outs
    return (
        f"measured vs heuristic cuDNN algorithms: {int((y0 != y1).sum())} of {y0.numel()} "
        f"outputs differ ({int(y0.sum())} output spikes)"
    )


def snncc_module_runner(
    backend: str, compiled: bool, compile_mode: str | None = None
) -> Callable[[Case, str, str], Bench]:
    """``cm.to_torch()`` timed as a torch module, plain or under ``torch.compile``.

    Compiled, the neuron kernels are ``snncc::`` custom ops in inductor's graph (one graph,
    no break); what inductor can fuse is what surrounds them (bias adds, reshapes, the
    loss). Compile time is excluded (warm-up), as for the ``torch-compile`` peer.
    ``compile_mode="reduce-overhead"`` (cuda): inductor replays the compiled forward and
    backward from CUDA graphs, so a whole training step is captured (issue 16, goal 1).
    """

    def make(case: Case, mode: str, device: str) -> Bench:
        import snncc

        if backend == "cpu" and device == "cuda":
            raise NA("the cpu backend runs on the CPU")
        if backend == "cuda" and device != "cuda":
            raise NA("the cuda backend needs a GPU")
        if compile_mode == "reduce-overhead" and case.workload not in ("L1", "M1"):
            raise NA("the CUDA-graphed training step is timed on L1 and M1 (issue 16, goal 1)")
        model = sj_model(case).train(mode == "fwd+bwd")
        cm = snncc.compile(model, _example(case), backend=backend)
        module = cm.to_torch()
        bench = _torch_bench(module, mode, device)
        if compiled:
            # every ProgramModule shares one forward code object: dynamo counts each case's
            # compile against that code's recompile limit (8), so each case starts afresh
            torch._dynamo.reset()
            run = torch.compile(module, fullgraph=True, dynamic=False, mode=compile_mode)
            if mode == "fwd":

                def fwd(x):
                    with torch.no_grad():
                        return run(x)

                bench.fn = fwd
            else:

                def step(x):
                    y = run(x)
                    y.sum().backward()
                    return y

                bench.fn = step
            bench.notes.append("compile time excluded (warm-up)")
        return bench

    return make


def _dropout_note(model: torch.nn.Module, case: Case, cm: Any, device: str) -> list[str]:
    """A note when a training-mode model has Dropout but two runs of the program agree.

    Every peer's training step applies dropout; a compiled step without it does
    less work. Outputs can be silent, so the final membranes of every neuron
    layer are compared (two batch items of the first input).
    """
    if not any("Dropout" in type(m).__name__ for m in model.modules()):  # SJ's is no nn.Dropout
        return []
    try:
        x = make_input(case, seed=0, device=device if cm.backend == "cuda" else "cpu")[:, :2]
        if cm.backend == "jax":
            x = x.numpy()
        with torch.no_grad():
            runs = [cm.program.run(x) for _ in range(2)]
    except Exception as exc:  # e.g. a GPU-only program: say so instead of guessing
        return [f"dropout not checked ({type(exc).__name__})"]
    (y0, s0), (y1, s1) = runs
    import numpy as np

    def host(a: Any) -> np.ndarray:
        return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

    same = all(
        np.array_equal(host(s0[n]["v"]), host(s1[n]["v"]))
        for n in s0.keys() & s1.keys()
        if "v" in s0[n] and "v" in s1[n]
    ) and np.array_equal(host(y0), host(y1))
    if same:
        return ["two training-mode runs gave identical membranes: dropout was not applied"]
    return []


def _spike_agreement(model: torch.nn.Module, case: Case, device: str, cm: Any) -> str:
    """Output spikes and final membranes against the fp32 program, on the first input (measured).

    M1 and C1 are calibrated so that every neuron layer fires about 10% of its steps
    (``workloads.calibrated_gains``); the note also counts the fp32 output spikes (zero
    would make the comparison empty) and how many neurons' final membranes (every neuron
    layer) moved by more than 1e-2.
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


def _jax_bench(cm: Any, model: torch.nn.Module, case: Case, mode: str, device: str) -> Bench:
    """One jitted step: the forward, or forward + VJP returning the output *and* the gradients.

    The training step differentiates what the torch peers' ``y.sum().backward()``
    does: the input for the bare layers (L1, L2), the learnable parameters for
    the networks (BatchNorm running statistics stay constants).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    platform = jax.default_backend()
    if device == "cuda" and platform != "gpu":
        raise NA(f"jax runs on {platform}, not on a GPU (install jax[cuda12] or jax[cuda13])")
    params = cm.program.params
    f = cm.jax_fn

    def convert(x):
        return jax.device_put(np.asarray(x.detach().cpu()))

    if mode == "fwd":
        jitted = jax.jit(f)

        def fwd(x):
            return jitted(params, x)

        fn = fwd
    elif case.workload in ("L1", "L2"):

        def train_x(p, x):
            y, vjp = jax.vjp(lambda x_: f(p, x_), x)
            return y, vjp(jnp.ones_like(y))[0]

        jitted = jax.jit(train_x)

        def step_x(x):
            return jitted(params, x)

        fn = step_x
    else:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        learn = {k: v for k, v in params.items() if k in names}
        fixed = {k: v for k, v in params.items() if k not in names}

        # a training-mode model with dropout draws a fresh mask every step, as torch's does
        dropout = model.training and any("Dropout" in type(m).__name__ for m in model.modules())
        keys = {"next": jax.random.key(0)}

        def train_p(lp, fp, x, key):
            extra = {"key": key} if dropout else {}
            y, vjp = jax.vjp(lambda lp_: f({**fp, **lp_}, x, **extra), lp)
            return y, vjp(jnp.ones_like(y))[0]

        jitted = jax.jit(train_p)

        def step_p(x):
            keys["next"], key = jax.random.split(keys["next"])
            return jitted(learn, fixed, x, key)

        fn = step_p

    def peak() -> float | None:
        try:
            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**20 or None
        except Exception:  # backends without memory stats
            return None

    return Bench(fn=fn, convert=convert, sync=jax.block_until_ready, peak_mib=peak)


# ------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Peer:
    make: Callable[[Case, str, str], Bench]
    description: str
    #: the configuration compared like for like: fp32, graph, bf16, tf32; anything else has no
    #: SpikingJelly counterpart and gets no ratio
    config: str = "fp32"
    #: environment of its worker process (SpikingJelly picks its implementation at import)
    env: dict[str, str] = field(default_factory=dict)
    #: on a GPU, one worker process per case (a peak memory counter that cannot be reset)
    process_per_case: bool = False
    #: its worker imports the natively built SpikingJelly (benchmarks/sj_native.py)
    sj_native: bool = False


def _sj_env(implementation: str) -> dict[str, str]:
    return {
        "SJ_LIF_CUDA_IMPLEMENTATION": implementation,
        "SJ_PLIF_CUDA_IMPLEMENTATION": implementation,
    }


#: peer name -> Peer
PEERS: dict[str, Peer] = {
    "snncc-cuda": Peer(snncc_runner("cuda"), "snncc cuda backend, fp32 (exact spikes)"),
    "snncc-cuda-graph": Peer(
        snncc_runner("cuda", cuda_graph=True),
        "snncc cuda, inference replayed from a CUDA graph",
        config="graph",
    ),
    "snncc-cuda-module-graphed": Peer(
        snncc_module_runner("cuda", compiled=True, compile_mode="reduce-overhead"),
        "torch.compile(cm.to_torch(), mode='reduce-overhead'): the kernels as custom ops, the "
        "forward and the training step replayed from CUDA graphs",
        config="graph, training too",
    ),
    "snncc-cuda-bf16": Peer(
        snncc_runner("cuda", precision="bf16"),
        "snncc cuda, bf16 autocast GEMMs/convolutions; neuron kernels read/write bf16",
        config="bf16",
    ),
    "snncc-cuda-tf32": Peer(
        snncc_runner("cuda", precision="tf32"),
        "snncc cuda, TF32 GEMMs/convolutions",
        config="tf32",
    ),
    "snncc-cuda-cudnn": Peer(
        cudnn_measured(snncc_runner("cuda"), snncc=True),
        "snncc cuda, fp32, cuDNN's measured convolution algorithms",
        config=CUDNN_MEASURED,
    ),
    "snncc-cuda-u8": Peer(
        snncc_runner("cuda", cuda_graph=True, spike_dtype="uint8"),
        "snncc cuda, CUDA graph + uint8 output spikes",
        config="graph+uint8",
    ),
    "snncc-cuda-u8-eager": Peer(
        snncc_runner("cuda", spike_dtype="uint8"),
        "snncc cuda, uint8 output spikes without a CUDA graph (no input copy)",
        config="uint8",
    ),
    "snncc-cuda-nochunk": Peer(
        snncc_runner("cuda", time_chunks=0),
        "snncc cuda without time chunks (one thread per neuron over all T, forward and backward)",
        config="no time chunks",
    ),
    "snncc-cuda-fp32saved": Peer(
        snncc_runner("cuda", saved_spike_dtype="float32"),
        "snncc cuda keeping fp32 spikes for the GEMMs' backward (default: uint8, less memory)",
        config="fp32 saved spikes",
    ),
    "snncc-cuda-fp16": Peer(
        snncc_runner("cuda", precision="fp16"),
        "snncc cuda, fp16 autocast GEMMs/convolutions; neuron kernels read/write fp16",
        config="fp16",
    ),
    "snncc-cuda-bf16-widen": Peer(
        snncc_runner("cuda", precision="bf16", autocast_io=False),
        "snncc cuda, bf16 autocast, neuron kernels behind fp32 casts (autocast_io=False)",
        config="bf16 widened",
    ),
    "snncc-cuda-step": Peer(
        snncc_runner("cuda", recurrent="step"),
        "snncc cuda, recurrent groups step by step (default: fused, one launch per group)",
        config="recurrent step",
    ),
    "snncc-cpu-fused": Peer(
        snncc_runner("cpu", recurrent="fused"),
        "snncc cpu, recurrent groups fused over time (default: step by step, bit-exact)",
        config="recurrent fused",
    ),
    "snncc-jax": Peer(
        snncc_runner("jax", neuron_kernels="scan"),
        "snncc jax backend (one jitted step), neuron groups as lax.scan",
        env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        process_per_case=True,
    ),
    "snncc-jax-pallas": Peer(
        snncc_runner("jax", neuron_kernels="pallas"),
        "snncc jax backend (one jitted step), neuron groups as Pallas (Triton) kernels; "
        "goal: within 1.3x of snncc-cuda on L1/L2",
        env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        process_per_case=True,
    ),
    "snncc-cpu": Peer(snncc_runner("cpu"), "snncc cpu backend (same kernels, host compiler)"),
    "snncc-cpu-module": Peer(
        snncc_module_runner("cpu", compiled=False), "snncc cpu backend as cm.to_torch()"
    ),
    "snncc-cpu-module-compiled": Peer(
        snncc_module_runner("cpu", compiled=True),
        "torch.compile(cm.to_torch()), cpu backend (kernels as custom ops)",
    ),
    "snncc-reference": Peer(snncc_runner("reference"), "snncc reference (torch eager oracle)"),
    "sj-native": Peer(
        sj_runner("cuda"),
        "SpikingJelly 2.0, native CUDA neurons (built from its sdist by benchmarks/sj_native.py)",
        env=_sj_env("cuda"),
        sj_native=True,
    ),
    "sj-triton": Peer(
        sj_runner("triton"), "SpikingJelly 2.0, triton neurons", env=_sj_env("triton")
    ),
    "sj-torch": Peer(sj_runner("torch"), "SpikingJelly 2.0, torch neurons", env=_sj_env("torch")),
    "sj-triton-graph": Peer(
        sj_runner("triton", "graph"),
        "SpikingJelly 2.0 triton, inference in its StaticCudaGraph",
        config="graph",
        env=_sj_env("triton"),
    ),
    "sj-triton-bf16": Peer(
        sj_runner("triton", "bf16"),
        "SpikingJelly 2.0 triton under bf16 autocast",
        config="bf16",
        env=_sj_env("triton"),
    ),
    "sj-triton-tf32": Peer(
        sj_runner("triton"),
        "SpikingJelly 2.0 triton, TF32 matmuls and convolutions",
        config="tf32",
        env=_sj_env("triton"),
    ),
    "sj-triton-cudnn": Peer(
        cudnn_measured(sj_runner("triton"), snncc=False),
        "SpikingJelly 2.0 triton, fp32, cuDNN's measured convolution algorithms",
        config=CUDNN_MEASURED,
        env=_sj_env("triton"),
    ),
    "snntorch": Peer(snntorch_make, "snnTorch Leaky, stepped over T per layer"),
    "norse": Peer(norse_make, "Norse LIFBoxCell, stepped over T per layer"),
    "torch-compile": Peer(torch_compile_make, "torch.compile of the pure-torch model"),
}

#: like-for-like ratio columns: (label, the snncc peer, the SpikingJelly peers of the same
#: configuration; the fastest of those that ran is the one divided, and named)
COMPARISONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fp32 eager", "snncc-cuda", ("sj-native", "sj-triton", "sj-torch")),
    ("CUDA graph", "snncc-cuda-graph", ("sj-triton-graph",)),
    ("bf16 autocast", "snncc-cuda-bf16", ("sj-triton-bf16",)),
    ("tf32", "snncc-cuda-tf32", ("sj-triton-tf32",)),
    (CUDNN_MEASURED, "snncc-cuda-cudnn", ("sj-triton-cudnn",)),
    ("fp32", "snncc-cpu", ("sj-torch",)),
)

#: run order on a GPU: what the like-for-like columns need first (snncc and SpikingJelly in
#: each configuration), then the other peers, and last the variants that only explain a
#: difference, so a spent time budget skips those
GPU_PEERS = (
    "snncc-cuda",
    "sj-triton",
    "sj-native",
    "snncc-cuda-graph",
    "sj-triton-graph",
    "snncc-cuda-module-graphed",
    "snncc-cuda-bf16",
    "sj-triton-bf16",
    "snncc-cuda-tf32",
    "sj-triton-tf32",
    "snncc-cuda-cudnn",
    "sj-triton-cudnn",
    "snncc-jax",
    "snncc-jax-pallas",
    "snntorch",
    "norse",
    "sj-torch",
    "torch-compile",
    "snncc-cuda-u8",
    "snncc-cuda-u8-eager",
    "snncc-cuda-nochunk",
    "snncc-cuda-fp16",
    "snncc-cuda-bf16-widen",
    "snncc-cuda-fp32saved",
    "snncc-cuda-step",
)
CPU_PEERS = (
    "snncc-cpu",
    "snncc-cpu-fused",
    "snncc-cpu-module",
    "snncc-cpu-module-compiled",
    "sj-torch",
    "snncc-reference",
    "snncc-jax",
    "snntorch",
    "norse",
    "torch-compile",
)
