"""The cpu backend's thread counts (backends/cpu/threads.py): fitted to the free cores, the
user's setting restored, results independent of the count.

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
    assert threads.fitted_torch_threads(2) == 1
    monkeypatch.setattr(threads.CORES, "free", lambda: None)  # unknown: the user's count
    assert threads.fitted_torch_threads(2) == 2


def test_core_share_reads_this_machine() -> None:
    share = threads.CoreShare()
    share.free()
    threads.time.sleep(threads.SAMPLE_S + 0.05)
    free = share.free()
    assert free is None or 0.0 <= free <= len(threads._allowed_cpus() or [0] * 64)


def test_program_runs_with_fitted_threads_and_restores_them(two_threads, monkeypatch) -> None:
    """Forward and backward run with torch's threads fitted (1 on busy cores) and the
    user's 2 come back after each; the spikes and gradients are the same bits as with
    the cores free."""
    seen: list[int] = []
    real_call = snncc.backends.cpu.neuron.NeuronKernel.call

    def spy(self, which, values, device=None):
        seen.append((which, torch.get_num_threads()))
        return real_call(self, which, values, device)

    monkeypatch.setattr(snncc.backends.cpu.neuron.NeuronKernel, "call", spy)
    x = torch.rand((6, 5, 20), generator=torch.Generator().manual_seed(0))
    net = _mlp()
    results = {}
    for free in (2.0, 0.1):
        monkeypatch.setattr(threads.CORES, "free", lambda free=free: free)
        cm = snncc.compile(net, x, backend="cpu")
        module = cm.to_torch()
        seen.clear()
        y = module(x)
        assert torch.get_num_threads() == 2
        y.sum().backward()
        assert torch.get_num_threads() == 2
        want = 2 if free > 1 else 1
        assert seen and all(n == want for _, n in seen), seen
        assert {w for w, _ in seen} == {"fwd", "bwd"}
        results[free] = (y.detach(), [p.grad.clone() for p in module.parameters()])
    (y_a, g_a), (y_b, g_b) = results.values()
    assert 0 < float(y_a.sum()) < y_a.numel()
    assert torch.equal(y_a, y_b)
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # torch's GEMMs: thread order


def test_nested_scopes_restore_the_outermost_setting(two_threads, monkeypatch) -> None:
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.0)
    with threads.program_threads():
        assert torch.get_num_threads() == 1
        with threads.program_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_outputs_stay_the_programs_own_tensors(two_threads, monkeypatch) -> None:
    """The backward's thread fitting is a hook, not a view: in-place ops on an output work,
    and a backward that does not start at the output leaves the user's setting alone."""
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.0)
    x = torch.rand((4, 3, 20), generator=torch.Generator().manual_seed(1))
    module = snncc.compile(_mlp(), x, backend="cpu").to_torch()
    y = module(x)
    y.mul_(2.0)
    y.sum().backward()
    assert torch.get_num_threads() == 2
    assert all(p.grad is not None for p in module.parameters())
