"""benchmarks/run.py's --threads: every peer held to the cores the table says.

The CPU tables compare peers on one core each; they mean that only if no peer's
library spreads over more (jax 0.10's XLA ignores its own thread flags, which once
gave it both cores of the dev VM while the torch peers had one). These tests check
the pin and what the report says about it; the figures come from the runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

run = pytest.importorskip("run")

#: how many of the process's threads ran at least 5% of a 1 s loop of jitted matmuls
#: (per-thread CPU ticks from /proc: robust to other load, which a CPU/wall ratio is not)
_BUSY_THREADS = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from run import pin_worker
pin_worker(sys.argv[2] or None)
import jax, jax.numpy as jnp

def ticks():
    out = {}
    for t in os.listdir("/proc/self/task"):
        try:
            f = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[t] = int(f[11]) + int(f[12])
    return out

a = jnp.ones((1024, 1024), jnp.float32)
f = jax.jit(lambda a: a @ a)
f(a).block_until_ready()
before, start = ticks(), time.perf_counter()
while time.perf_counter() - start < 1.0:
    f(a).block_until_ready()
after, hz = ticks(), os.sysconf("SC_CLK_TCK")
print(sum(after[t] - before.get(t, 0) >= 0.05 * hz for t in after))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell 1 from 2")
def test_threads_1_holds_jax_to_one_core() -> None:
    """``--threads 1`` must hold every peer to one core. XLA ignores its own thread flags
    (jax 0.10), so the worker is pinned; unpinned, the same jitted matmul runs on more
    than one thread at once, which is what made jax look 1.8x faster on M1 once."""
    pytest.importorskip("jax")
    env = run._worker_env("snncc-jax", 1)

    def busy_threads(cpus: str) -> int:
        cmd = [sys.executable, "-c", _BUSY_THREADS, str(BENCH), cpus]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    assert run.worker_cpus(1) == [min(os.sched_getaffinity(0))] and run.worker_cpus(None) is None
    assert busy_threads(",".join(map(str, run.worker_cpus(1)))) == 1
    assert busy_threads("") >= 2  # the control: without the pin XLA spreads over the cores


def test_threads_line_reports_the_pin_and_the_cores_used() -> None:
    recs = [
        {
            "status": "ok",
            "peer": "a",
            "workload": "M1",
            "case": "T=4",
            "mode": "fwd",
            "cpu_per_wall": 0.99,
        },
        {
            "status": "ok",
            "peer": "b",
            "workload": "L1",
            "case": "T=4",
            "mode": "fwd",
            "cpu_per_wall": 1.01,
        },
    ]
    line = run._threads_line({"threads": 1, "cpus": [0]}, recs)
    assert "pinned to CPU 0" in line and "at most 1.01 (b, L1 T=4 fwd)" in line
    assert "ignores" in run._threads_line({"threads": 1}, recs)  # a run from before the pin
