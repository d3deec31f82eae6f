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
and the per-neuron gradient sums are reduced on the host.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


def kernel_threads(work: int) -> int:
    """Threads for a kernel call over ``work`` neuron-steps (1: no parallel region)."""
    n = min(torch.get_num_threads(), work // MIN_WORK_PER_THREAD)
    if n <= 1:
        return 1
    free = CORES.free()
    if free is not None:
        n = min(n, max(1, int(free + 0.5)))
    return n


# ------------------------------------------------------------ torch's own ops in a program
def fitted_torch_threads(user: int) -> int:
    """torch's intra-op threads for a program run: ``user``'s count, less the cores that
    other processes hold (1 on a machine whose cores are all busy)."""
    if user <= 1:
        return user
    free = CORES.free()
    if free is None:
        return user
    return max(1, min(user, int(free + 0.5)))


_scope_lock = threading.Lock()
_scope_depth = 0
_scope_user = 0


def _enter() -> None:
    global _scope_depth, _scope_user
    with _scope_lock:
        if _scope_depth == 0:
            _scope_user = torch.get_num_threads()
            n = fitted_torch_threads(_scope_user)
            if n != _scope_user:
                torch.set_num_threads(n)
        _scope_depth += 1


def _leave() -> None:
    global _scope_depth
    with _scope_lock:
        _scope_depth -= 1
        if _scope_depth == 0 and torch.get_num_threads() != _scope_user:
            torch.set_num_threads(_scope_user)


@contextmanager
def program_threads() -> Iterator[None]:
    """torch's intra-op thread count fitted to the free cores while a program runs.

    Why: the GEMMs and convolutions of a cpu program are torch's, parallel over
    ``torch.get_num_threads()`` OpenMP threads that meet at a barrier after each op.
    When other processes hold the cores, every op waits for a thread the scheduler
    parked behind them: measured beside other engineers' test runs (load average 11
    on 2 cores), one ``F.linear`` [64x784]x[784x256] took 55 ms with 2 threads and
    0.7 ms for the whole small M1 forward with 1. The user's setting is restored on
    leaving (nested and concurrent runs: by the outermost); never more threads than
    the user set. Not used while torch.compile traces (it would break the graph).
    """
    if torch.compiler.is_compiling():
        yield
        return
    _enter()
    try:
        yield
    finally:
        _leave()


def fit_backward_threads(y: torch.Tensor) -> None:
    """Fit torch's threads for the backward pass that starts at ``y`` (a program's output):
    a hook on ``y`` (autograd runs it first, with y's own gradient) fits them, and the
    engine's end-of-pass callback restores the user's setting. A hook, not an identity
    node: ``y`` stays the tensor the program made (no view, so in-place ops on it work)."""

    def hook(g: torch.Tensor) -> None:
        _enter()
        try:
            torch.autograd.Variable._execution_engine.queue_callback(_leave)
        except RuntimeError:  # not inside an engine pass: nothing to restore at its end
            _leave()

    y.register_hook(hook)
