"""A competing load for the benchmark's workers: the CPU suite timed beside other work.

    python benchmarks/run.py --device cpu --small --compete campaign   # idle run, then loaded

Why: on a shared machine the cpu backend once lost its lead to SpikingJelly
(issue 16: 93 ms against 4.2 idle, beside a test campaign) while it held it
beside one busy process: what hurts multi-threaded kernels is not a busy core
but many short-lived processes that the scheduler interleaves with their
threads. So the loads here are:

- ``busy``: one process spinning on one core (a long-running job beside you);
- ``campaign``: what a test campaign does, on every core: back-to-back
  short-lived processes (a Python interpreter importing a few modules, a C++
  compile of a tiny file), none older than a second.

The load runs for as long as the ``with`` block (each worker of the run), in
processes of its own session, stopped (SIGTERM, then SIGKILL) when the block
ends. It reads and writes nothing of the user's but a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import TracebackType

KINDS = ("busy", "campaign")

#: the campaign's loop, run by one process per core: short-lived children, back to back.
#: Each loop ends by itself once the process that started it is gone (a benchmark killed
#: before its ``with`` block could stop the load must not leave it running: once, one kept a
#: 2-core machine busy for an hour).
_CAMPAIGN = r"""
import shutil, subprocess, sys, os
tmp = sys.argv[1]
parent = os.getppid()
src = os.path.join(tmp, "t.cpp")
with open(src, "w") as f:
    f.write("int f(int x) { return x * 3 + 1; }\n")
cxx = shutil.which("g++") or shutil.which("c++")
i = 0
while os.getppid() == parent:
    i += 1
    if cxx and i % 2:
        subprocess.run([cxx, "-O2", "-c", src, "-o", os.path.join(tmp, "t.o")])
    else:
        subprocess.run([sys.executable, "-c", "import json, decimal, fractions, email.parser"])
"""

_BUSY = r"""
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


class CompetingLoad:
    """The load of ``kind`` (one of :data:`KINDS`) while the block runs."""

    def __init__(self, kind: str, cores: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"competing load {kind!r}: choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.cores = cores or len(os.sched_getaffinity(0))
        self._procs: list[subprocess.Popen] = []
        self._tmp: str | None = None

    def __enter__(self) -> CompetingLoad:
        self._tmp = tempfile.mkdtemp(prefix="snncc-compete-")
        n = 1 if self.kind == "busy" else self.cores
        code = _BUSY if self.kind == "busy" else _CAMPAIGN
        for i in range(n):
            d = os.path.join(self._tmp, str(i))
            os.mkdir(d)
            self._procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, d],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # its children are stopped with it
                )
            )
        time.sleep(1.0)  # let it get going before anything is timed
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for p in self._procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self._procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
        self._procs.clear()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    """Signal the load process's own session (it and the children it started)."""
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
