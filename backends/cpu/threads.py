"""How many threads one cpu kernel call gets: enough work per thread, and only free cores.

Why the kernels do not simply open an OpenMP region on every call: measured on
a 2-core machine, a parallel region costs more than small layers' whole work.
After a region libgomp's worker threads spin waiting for the next one (about
300 us of CPU time per call at its default spin count, on a kernel whose work
took 2 us), and when another process holds a core, every region waits at its
barrier for a thread the scheduler has parked behind that process. Beside a
test campaign the M1 forward took 93 ms instead of 4.2. torch's own
element-wise ops avoid both by staying serial below 32768 elements; the
kernels now do the same, and more:

- a call whose work (neuron-steps) is under :data:`MIN_WORK_PER_THREAD` per
  thread runs on the calling thread, with no parallel region at all;
- never more threads than torch's intra-op setting (``torch.set_num_threads``
  governs the kernels too; on Linux the kernels' ``libgomp.so.1`` is the one
  torch loaded, found by its soname, so there is one OpenMP runtime and one
  thread pool in the process);
- never more threads than the cores other processes leave free, measured from
  ``/proc/stat`` (busy time of the CPUs this process may run on, less this
  process's own CPU time) over the last :data:`SAMPLE_S` seconds or more.

The thread count never changes a result: each neuron is computed by one thread
and the per-neuron gradient sums are reduced on the host, on one thread
(``autograd._reduce_grad``).

torch's row ops between the kernels (GEMMs, convolutions, BatchNorm, pooling)
stall the same way on busy cores (one ``F.linear`` [64x784]x[784x256] took 55 ms
with 2 threads beside other engineers' test runs, the small M1 forward 0.69 ms
with 1), but their count may change their bits (MKL and oneDNN split some
reductions over threads: a cpu-backend snnTorch convnet run with torch's count
fitted to the load differed from the reference backend in 91 of 120 outputs),
and results must not depend on what else the machine runs. They get
:func:`torch_threads` only where a comparison shows it gives the same bits
(:mod:`snncc.backends.cpu.op_threads`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import torch

#: neuron-steps (T * N) below which a thread is not worth waking (torch's grain is
#: 32768 elements per element-wise op; a neuron step is several such operations)
MIN_WORK_PER_THREAD = 32768
#: how often the machine's load is re-read (a read costs about 20 us)
SAMPLE_S = 0.25
#: ``/proc/stat`` fields that are not busy time: idle, iowait
_IDLE_FIELDS = (3, 4)


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


class CoreShare:
    """The cores other processes leave free, sampled from ``/proc/stat`` (Linux)."""

    def __init__(self, stat_path: str = "/proc/stat") -> None:
        self.stat_path = stat_path
        self.cpus = _allowed_cpus()
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = None  # (wall, busy s, own s)
        self._free: float | None = None
        try:
            self._tick = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            self._tick = 100.0

    def _busy_seconds(self) -> float | None:
        """Busy CPU seconds (all processes) of the CPUs this process may use, or None."""
        try:
            with open(self.stat_path, "rb") as f:
                lines = f.read().decode("ascii", "replace").splitlines()
        except OSError:
            return None
        busy = 0
        seen = False
        for line in lines:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            parts = line.split()
            try:
                cpu = int(parts[0][3:])
                ticks = [int(v) for v in parts[1:]]
            except ValueError:
                continue
            if self.cpus is not None and cpu not in self.cpus:
                continue
            seen = True
            busy += sum(ticks[:8]) - sum(ticks[i] for i in _IDLE_FIELDS if i < len(ticks))
        return busy / self._tick if seen else None

    def free(self) -> float | None:
        """Cores not used by other processes over the last sample (None: unknown)."""
        now = time.monotonic()
        last = self._last
        if last is not None and now - last[0] < SAMPLE_S:
            return self._free
        with self._lock:
            if self._last is not last:  # another thread sampled meanwhile
                return self._free
            busy = self._busy_seconds()
            own = time.process_time()
            if busy is None:
                self._last = (now, 0.0, own)
                self._free = None
                return None
            if last is not None and now > last[0]:
                others = (busy - last[1]) - (own - last[2])
                n = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
                self._free = max(0.0, n - max(0.0, others) / (now - last[0]))
            self._last = (now, busy, own)
            return self._free


#: the process's one sampler
CORES = CoreShare()


def _fitted(n: int) -> int:
    """``n``, or the cores other processes leave free if fewer (at least 1)."""
    free = CORES.free()
    return n if free is None else min(n, max(1, int(free + 0.5)))


def kernel_threads(work: int) -> int:
    """Threads for a kernel call over ``work`` neuron-steps (1: no parallel region)."""
    n = min(torch.get_num_threads(), work // MIN_WORK_PER_THREAD)
    return 1 if n <= 1 else _fitted(n)


def torch_threads(n: int) -> int:
    """Threads for one of torch's ops in a cpu program where torch's count is ``n``: ``n``,
    or fewer (a power of two, so that few pairs of counts are ever compared:
    :mod:`snncc.backends.cpu.op_threads`) where other processes hold cores."""
    k = _fitted(n) if n > 1 else n
    return n if k >= n else 1 << (k.bit_length() - 1)


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count is ``count`` while the block runs (this thread)."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def elementwise_threads() -> contextlib.AbstractContextManager:
    """torch's count fitted to the free cores (:func:`torch_threads`) while the block runs,
    for element-wise ops only: each element is computed on its own, so no count changes
    their bits (a cast of saved spikes beside other processes otherwise waits at its
    parallel region's barrier for a parked thread: 4-6 ms for C1's 131,072 spikes)."""
    return intra_op_threads(torch_threads(torch.get_num_threads()))
