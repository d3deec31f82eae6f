"""Where one snncc step spends its time on a GPU: torch.profiler over a few benchmark cases.

    python benchmarks/profile_step.py [--out profile.txt]

For each (peer, workload, case, mode) below: the runner the suite times
(benchmarks/peers.py), timed by the suite's protocol (warm-up until stable), then
five profiled runs. Prints the
operators sorted by GPU time and by host time, so a step that is far above its
floor shows whether the GPU is busy (kernels) or waiting on the host (Python,
launches, allocations). Diagnostic only: the suite's figures come from run.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import PEERS, Protocol, bench_input, measure  # noqa: E402
from workloads import cases  # noqa: E402

#: (peer, workload, case label, mode): the cases whose gaps the README explains
PROFILED = (
    ("snncc-cuda", "L1", "T=4", "fwd"),
    ("snncc-cuda", "L1", "T=4", "fwd+bwd"),
    ("snncc-cuda", "C1", "T=4 B=64 ch=128", "fwd"),
    ("snncc-cuda-tf32", "C1", "T=4 B=64 ch=128", "fwd"),
    ("snncc-cuda", "M1", "T=16 B=256", "fwd+bwd"),
)


def profile(
    peer: str, workload: str, label: str, mode: str, out, device: str = "cuda", small: bool = False
) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    case = next(c for c in cases(workload, small=small) if c.label == label)
    bench = PEERS[peer].make(case, mode, device)
    timed = measure(bench, case, mode, device, Protocol())
    x = bench_input(bench, case, mode, seed=0, device=device)
    gpu = device == "cuda"
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    with tprofile(activities=acts) as prof:
        for _ in range(5):
            bench.before()
            if isinstance(x, torch.Tensor):
                x.grad = None
            y = bench.fn(x)
        bench.sync(y)
    avg = prof.key_averages()
    print(f"\n===== {peer} {workload} {label} {mode}: median {timed['median_ms']:.3f} ms", file=out)
    if gpu:
        print(
            avg.table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60), file=out
        )
    print(avg.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60), file=out)
    out.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="-", help="file for the tables (default stdout)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("profile_step.py needs a CUDA GPU", file=sys.stderr)
        return 2
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
    for peer, workload, label, mode in PROFILED:
        try:
            profile(peer, workload, label, mode, out)
        except Exception as exc:  # one case's failure must not lose the others
            print(
                f"\n===== {peer} {workload} {label} {mode}: {type(exc).__name__}: {exc}", file=out
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
