"""The cpu kernels' thread counts (backends/cpu/threads.py): no parallel region for small
calls, never more threads than torch's setting or the free cores, results independent of
the count.

Timing is never asserted (DEVGUIDE): benchmarks/run.py --compete measures it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snncc
from snncc.backends.cpu import threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _mlp() -> nn.Module:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Linear(20, 64),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        layer.Linear(64, 8),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
    )
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[2].weight.mul_(4.0)
    functional.set_step_mode(net, "m")
    return net


def test_small_calls_open_no_parallel_region(two_threads, monkeypatch) -> None:
    monkeypatch.setattr(threads.CORES, "free", lambda: 2.0)
    assert threads.kernel_threads(1000) == 1
    assert threads.kernel_threads(4 * threads.MIN_WORK_PER_THREAD) == 2
    torch.set_num_threads(1)  # never more than torch's own setting
    assert threads.kernel_threads(4 * threads.MIN_WORK_PER_THREAD) == 1


def test_busy_cores_leave_one_thread(two_threads, monkeypatch) -> None:
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    assert threads.kernel_threads(4 * threads.MIN_WORK_PER_THREAD) == 1
    monkeypatch.setattr(threads.CORES, "free", lambda: None)  # unknown: torch's count
    assert threads.kernel_threads(4 * threads.MIN_WORK_PER_THREAD) == 2


def test_core_share_reads_this_machine() -> None:
    share = threads.CoreShare()
    share.free()
    threads.time.sleep(threads.SAMPLE_S + 0.05)
    free = share.free()
    assert free is None or 0.0 <= free <= len(threads._allowed_cpus() or [0] * 64)


def test_kernel_results_do_not_depend_on_the_thread_count(two_threads, monkeypatch) -> None:
    """Layers large enough for two threads give the same bits with the cores free (2
    threads) and busy (1): each neuron is one thread's, gradient sums are the host's.
    (torch's own ops keep the user's count: see backends/cpu/threads.py.)"""
    from snncc.backends.cpu import neuron as cpu_neuron

    used: list[int] = []
    real = cpu_neuron.kernel_threads

    def spy(work: int) -> int:
        used.append(real(work))
        return used[-1]

    monkeypatch.setattr(cpu_neuron, "kernel_threads", spy)
    x = torch.rand((4, 64, 20), generator=torch.Generator().manual_seed(0))
    module = snncc.compile(_mlp(), x, backend="cpu").to_torch()
    big = torch.rand((16, 512, 20), generator=torch.Generator().manual_seed(2))
    results = []
    for free in (2.0, 0.1):
        monkeypatch.setattr(threads.CORES, "free", lambda free=free: free)
        used.clear()
        for p in module.parameters():
            p.grad = None
        y = module(big)
        y.sum().backward()
        assert max(used) == (2 if free > 1 else 1), used
        results.append((y.detach(), [p.grad.clone() for p in module.parameters()]))
    (y_a, g_a), (y_b, g_b) = results
    assert 0 < float(y_a.sum()) < y_a.numel()
    assert torch.equal(y_a, y_b)
    for a, b in zip(g_a, g_b):
        assert torch.equal(a, b)


def test_outputs_can_be_modified_in_place() -> None:
    """A layer's output is a tensor of its own, not a view the autograd Function made
    (views a Function returns cannot be modified in place)."""
    x = torch.rand((4, 3, 20), generator=torch.Generator().manual_seed(1))
    module = snncc.compile(_mlp(), x, backend="cpu").to_torch()
    y = module(x)
    y.mul_(2.0)
    y.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
