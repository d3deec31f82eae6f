"""Batch-1 streaming latency per step of the digits model: deployed C vs snncc's Python path vs
SpikingJelly eager, measured in one run on this machine's CPU.

One step = one 8x8 digit (64 inputs) through Linear-LIF-Linear-LIF with the state carried
from the step before, batch 1 (what a sensor loop does). Each contender streams the same
``--samples`` test digits, T = 8 steps each, state reset between digits, after a warm-up;
the figure is the median time per step over ``--rounds`` rounds (and the quartiles):

- **deployed C**: ``snncc_run --stream`` of the tree ``snncc deploy`` writes (one
  ``snncc_model_run(T=1, B=1)`` per step, state in -> state out, one thread), timed inside
  the process around the calls; its outputs are checked against the cpu backend's;
- **snncc Python path**: what ``snncc run`` executes, ``CompiledModel.run(x_t, state)``
  per step under ``torch.no_grad()``, for the cpu and reference backends;
- **SpikingJelly eager**: the source model in single-step mode, one call per step.

    python benchmarks/deploy_latency.py --samples 50 --rounds 5

prints a markdown table with the load average at the start and the end (the machine is
shared: read the figures with it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def per_step(fn, xs: np.ndarray, rounds: int) -> list[float]:
    """Median seconds per step of fn(x_sample [T, 1, 64]) over each round."""
    out = []
    for _ in range(rounds):
        times = []
        for x in xs:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) / x.shape[0])
        out.append(statistics.median(times))
    return out


def quartiles(values: list[float]) -> str:
    q = np.percentile(np.array(values) * 1e6, [25, 50, 75])
    return f"{q[1]:.1f} [{q[0]:.1f}-{q[2]:.1f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=50, help="test digits streamed per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="deploy and build into DIR (default: a temp dir)")
    args = ap.parse_args(argv)

    import scipy_openblas32

    import snncc
    from snncc.examples import digits

    torch.set_num_threads(1)
    load0 = os.getloadavg()
    images, _ = digits.test_split()
    x = digits.encode(images).numpy()[:, : args.samples]  # [T, N, 64]
    samples = [np.ascontiguousarray(x[:, i : i + 1]) for i in range(x.shape[1])]
    model = digits.load_pretrained()
    cms = {
        b: snncc.compile(model, torch.from_numpy(x[:, :1]), backend=b) for b in ("cpu", "reference")
    }

    # ---- deployed C
    work = Path(args.keep or tempfile.mkdtemp(prefix="snncc-deploy-latency-"))
    tree = work / "tree"
    snncc.deploy(cms["cpu"], tree, target="cpu")
    build = tree / "build"
    cmake = shutil.which("cmake")
    blas = Path(scipy_openblas32.get_lib_dir()) / "cmake" / "openblas"
    subprocess.run([cmake, "-S", tree, "-B", build, "-G", "Ninja", f"-DOpenBLAS_DIR={blas}"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([cmake, "--build", build], check=True, capture_output=True)
    c_rounds = []
    xin = work / "x.npy"
    for _ in range(args.rounds):
        times = []
        for s in samples:
            np.save(xin, s)
            out = subprocess.run(
                [build / "snncc_run", tree / "weights.safetensors", "-i", xin, "-o", work / "y.npy",
                 "--stream", "--threads", "1", "--repeat", "20"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            times.append(float(out.split(":")[-1].split("us per step")[0]) * 1e-6)
            with torch.no_grad():
                ref = cms["cpu"](torch.from_numpy(s)).numpy()
            if not np.array_equal(np.load(work / "y.npy"), ref):
                raise SystemExit("the deployed model's spikes differ from the cpu backend's")
        c_rounds.append(statistics.median(times))

    # ---- snncc's Python path (CompiledModel.run per step, the state carried)
    def stream(cm):
        def fn(xs: np.ndarray) -> None:
            state = None
            with torch.no_grad():
                for t in range(xs.shape[0]):
                    _, state = cm.run(xs[t : t + 1], state)

        return fn

    py_rounds = {}
    for b, cm in cms.items():
        stream(cm)(samples[0])  # warm-up (kernels compiled and loaded)
        py_rounds[b] = per_step(stream(cm), samples, args.rounds)

    # ---- SpikingJelly eager, single-step mode
    from spikingjelly.activation_based import functional

    sj = digits.load_pretrained()
    functional.set_step_mode(sj, "s")

    def sj_fn(xs: np.ndarray) -> None:
        functional.reset_net(sj)
        with torch.no_grad():
            for t in range(xs.shape[0]):
                sj(torch.from_numpy(xs[t]))

    sj_fn(samples[0])
    sj_rounds = per_step(sj_fn, samples, args.rounds)
    load1 = os.getloadavg()

    print(f"digits model, batch 1, one step per call, {len(samples)} digits x 8 steps, "
          f"{args.rounds} rounds, 1 thread; load average {load0[0]:.2f} at start, "
          f"{load1[0]:.2f} at end on {os.cpu_count()} CPUs")  # fmt: skip
    print("| contender | us per step, median [quartiles of the rounds] |")
    print("|---|---|")
    print(f"| deployed C (`snncc_run --stream`, snncc_model_run T=1 B=1) | {quartiles(c_rounds)} |")
    print(
        f"| snncc Python path, cpu backend (`CompiledModel.run` per step) | {quartiles(py_rounds['cpu'])} |"
    )
    print(f"| snncc Python path, reference backend | {quartiles(py_rounds['reference'])} |")
    print(f"| SpikingJelly eager (step mode 's') | {quartiles(sj_rounds)} |")
    print(f"(python {sys.version.split()[0]}, torch {torch.__version__})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
