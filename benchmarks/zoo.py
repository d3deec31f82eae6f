"""Compile time of SpikingJelly's spiking_resnet18 (issue 15): trace, passes, a cold cpu
compile (fresh kernel cache) and a recompile whose kernels are cached.

Why these phases: tracing and the passes are what every backend pays (the target: under 1 s
on a 2-core CPU); a cold cpu compile adds g++; a recompile of an unchanged model finds its
kernels in the on-disk cache (the target: under 0.3 s for the backend's part, reported with
and without the trace). The machine is shared, so the load average is reported beside the
times, and each phase's process CPU time beside its wall time; each phase is the median of
``--rounds`` runs.

    python benchmarks/zoo.py --rounds 5 --out benchmarks/results/zoo_compile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: process CPU seconds of each timed phase (median): on a loaded machine the wall clock
#: counts the waits for a core too; CPU time is what the phase itself costs
CPU_TIMES: dict[str, float] = {}


def _median_time(fn, rounds: int, name: str = "") -> tuple[float, object]:
    times, cpu, out = [], [], None
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if name:
        CPU_TIMES[name] = round(statistics.median(cpu), 4)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=32, help="image height and width")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

    import torch
    from spikingjelly.activation_based import functional, neuron, surrogate
    from spikingjelly.activation_based.model import spiking_resnet

    import snncc
    from snncc import backends
    from snncc.backends.base import pipeline_for
    from snncc.frontend import trace
    from snncc.ir.passes import run_pipeline

    torch.manual_seed(0)
    model = spiking_resnet.spiking_resnet18(
        spiking_neuron=neuron.IFNode, surrogate_function=surrogate.ATan(), num_classes=10
    ).eval()
    functional.set_step_mode(model, "m")
    x = torch.rand(args.T, args.batch, 3, args.size, args.size)
    load = os.getloadavg()

    snncc.compile(model, x, backend="reference")  # warm imports, not timed
    cpu = backends.get("cpu")
    t_trace, graph = _median_time(lambda: trace(model, x), args.rounds, "trace")
    names = pipeline_for(cpu, {})
    t_passes, lowered = _median_time(lambda: run_pipeline(graph, names), args.rounds, "passes")
    with tempfile.TemporaryDirectory(prefix="snncc-zoo-bench-") as cache:
        t0 = time.perf_counter()
        snncc.compile(model, x, backend="cpu", cache_dir=cache)
        t_cold = time.perf_counter() - t0
        t_lower_cached, _ = _median_time(
            lambda: cpu.lower(lowered, cache_dir=cache), args.rounds, "cpu_lower_cached"
        )
        t_recompile, _ = _median_time(
            lambda: snncc.compile(model, x, backend="cpu", cache_dir=cache),
            args.rounds,
            "cpu_recompile_cached",
        )
    result = {
        "model": "spikingjelly spiking_resnet18 (IFNode, ATan), num_classes=10",
        "input": list(x.shape),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in load],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "trace_s": round(t_trace, 4),
        "passes_s": round(t_passes, 4),
        "trace_plus_passes_s": round(t_trace + t_passes, 4),
        "cpu_cold_compile_s": round(t_cold, 3),
        "cpu_lower_cached_s": round(t_lower_cached, 4),
        "cpu_recompile_cached_s": round(t_recompile, 4),
        "process_cpu_s": CPU_TIMES,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
