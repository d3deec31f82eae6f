"""The cpu kernels' thread counts (backends/cpu/threads.py): no parallel region for small
calls, never more threads than torch's setting or the free cores, results independent of
the count; and torch's row ops between them (backends/cpu/op_threads.py): fewer threads on
a busy machine only where a bit-for-bit check agrees, with the idle bits.

Timing is never asserted (DEVGUIDE): benchmarks/run.py --compete measures it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snncc
from snncc.backends.cpu import op_threads, threads

#: the run in which a busy row op's signature is first checked (and fitted)
CHECKED_IN = op_threads.CHECK_AFTER_RUNS + 1


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _mlp(outputs: int = 8, seed: int = 0) -> nn.Module:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    torch.manual_seed(seed)
    net = nn.Sequential(
        layer.Linear(20, 64),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        layer.Linear(64, outputs),
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


def test_layers_sharing_one_library_each_run_at_their_own_count(
    two_threads, monkeypatch, tmp_path
) -> None:
    """Layers of one form load one library, which holds one thread count: each call runs at
    the count asked for it, whatever the layer before it asked (a wide hidden layer after a
    narrow readout of the same form kept the readout's one thread)."""
    from snncc.backends.cpu import compiler
    from snncc.backends.cpu import neuron as cpu_neuron

    told: dict[int, int] = {}  # a library's setter -> the count the library holds

    def spied(lib):
        real = lib.snncc_set_threads
        if not getattr(real, "spy", False):

            def spy(n: int, real=real) -> None:
                told[id(spy)] = n
                real(n)

            spy.spy = True
            lib.__dict__["snncc_set_threads"] = spy  # what getattr(lib, ...) finds
        return lib

    load = compiler.load
    monkeypatch.setattr(compiler, "load", lambda *a, **k: spied(load(*a, **k)))
    # wide layers get both threads, the 8-wide readout one (as kernel_threads would on an
    # idle machine), whatever the machine is doing now
    monkeypatch.setattr(cpu_neuron, "kernel_threads", lambda work: 2 if work >= 1000 else 1)
    net, x = _mlp(outputs=8), torch.rand(4, 16, 20)
    cm = snncc.compile(net, x, backend="cpu", cache_dir=str(tmp_path))
    kernels = cm.program.kernels.values()
    assert len({id(k.library._set_threads) for k in kernels}) == 1  # one library, both layers
    calls = []
    call = cpu_neuron.KernelLibrary.call

    def checked(self, which, values, threads_):
        call(self, which, values, threads_)
        calls.append((threads_, told.get(id(self._set_threads))))

    monkeypatch.setattr(cpu_neuron.KernelLibrary, "call", checked)
    for _ in range(3):
        cm.run(x)
    assert {asked for asked, _ in calls} == {1, 2}
    assert all(asked == held for asked, held in calls), calls


def test_torchs_ops_get_a_power_of_two_of_the_free_cores(monkeypatch) -> None:
    for free, n, expected in [(0.2, 2, 1), (1.7, 2, 2), (5.4, 8, 4), (7.6, 8, 8), (3.0, 1, 1)]:
        monkeypatch.setattr(threads.CORES, "free", lambda free=free: free)
        assert threads.torch_threads(n) == expected, (free, n)
    monkeypatch.setattr(threads.CORES, "free", lambda: None)  # unknown: torch's count
    assert threads.torch_threads(8) == 8


def test_core_share_reads_this_machine() -> None:
    share = threads.CoreShare()
    share.free()
    threads.time.sleep(threads.SAMPLE_S + 0.05)
    free = share.free()
    assert free is None or 0.0 <= free <= len(threads._allowed_cpus() or [0] * 64)


def test_kernel_results_do_not_depend_on_the_thread_count(two_threads, monkeypatch) -> None:
    """Layers large enough for two threads give the same bits with the cores free (2
    threads) and busy (1): each neuron is one thread's, gradient sums are the host's.
    (torch's row ops: the tests below, and backends/cpu/op_threads.py.)"""
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


def test_parameter_gradient_sums_do_not_depend_on_torchs_thread_count(two_threads) -> None:
    """A learnable quantity's gradient (PLIF's time constant: one value, or one per channel)
    sums the neurons' double sums on one thread, whatever torch's count; torch's own sum of
    as many doubles splits over its threads and rounds by the count (the control)."""
    from snncc.backends.cpu.autograd import _reduce_grad

    step_shape = (8, 64, 32, 32)  # 524,288 neurons: above torch's grain of 32,768
    control_differs = False
    for seed in range(8):
        g = torch.randn(
            step_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
        )
        for shape in (torch.Size([]), torch.Size([64, 1, 1])):
            sums = []
            for n in (1, 2):
                torch.set_num_threads(n)
                sums.append(_reduce_grad(g, step_shape, shape, torch.float64))
                assert torch.get_num_threads() == n
            assert sums[0].shape == shape and torch.equal(sums[0], sums[1]), (seed, shape)
        torch.set_num_threads(1)
        one = g.sum()
        torch.set_num_threads(2)
        control_differs = control_differs or not torch.equal(one, g.sum())
    assert control_differs, "torch's sum gave the same double at 1 and 2 threads on every draw"


def test_outputs_can_be_modified_in_place() -> None:
    """A layer's output is a tensor of its own, not a view the autograd Function made
    (views a Function returns cannot be modified in place)."""
    x = torch.rand((4, 3, 20), generator=torch.Generator().manual_seed(1))
    module = snncc.compile(_mlp(), x, backend="cpu").to_torch()
    y = module(x)
    y.mul_(2.0)
    y.sum().backward()
    assert all(p.grad is not None for p in module.parameters())


# ------------------------------------------------ torch's GEMMs (backends/cpu/op_threads.py)
@pytest.fixture
def thread_counts_set(monkeypatch) -> list[int]:
    """Every torch.set_num_threads call, in order (the calls still happen)."""
    calls: list[int] = []
    real = torch.set_num_threads

    def spy(count: int) -> None:
        calls.append(count)
        real(count)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    return calls


def _unpacked(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """The program's module with its saved spikes kept as fp32: the row ops' own thread
    counts are all a spy on ``torch.set_num_threads`` sees (packing them as uint8 casts at
    the fitted count: the test after these)."""
    return snncc.compile(net, x, backend="cpu", saved_spike_dtype="float32").to_torch()


def _train_once(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in module.parameters():
        p.grad = None
    y = module(x)
    y.sum().backward()
    return y.detach(), [p.grad.clone() for p in module.parameters()]


def _same_step(a: tuple, b: tuple) -> None:
    """Two training steps' outputs and gradients (:func:`_train_once`) are equal bit for bit."""
    assert len(a[1]) == len(b[1])
    for x, y in zip((a[0], *a[1]), (b[0], *b[1])):
        assert torch.equal(x, y)


def test_idle_gemms_keep_torchs_count_and_check_nothing(
    two_threads, monkeypatch, thread_counts_set
) -> None:
    monkeypatch.setattr(threads.CORES, "free", lambda: 2.0)
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(0))
    cm = snncc.compile(_mlp(), x, backend="cpu")
    _train_once(cm.to_torch(), x)
    assert thread_counts_set == []
    assert cm.program.row_ops.checks == 0


def test_busy_gemms_run_with_one_thread_where_the_bits_allow(
    two_threads, monkeypatch, thread_counts_set
) -> None:
    """Beside other processes (free cores 0.2 of 2) each linear whose bits a thread count
    does not change runs its forward and backward with 1 thread; the results are the idle
    run's, bit for bit, and the reference backend's. (Which linears qualify is MKL's
    answer on this machine; the tests below fix it.)"""
    x = torch.rand((4, 64, 20), generator=torch.Generator().manual_seed(0))
    net = _mlp()
    cm = snncc.compile(net, x, backend="cpu", saved_spike_dtype="float32")
    module = cm.to_torch()
    monkeypatch.setattr(threads.CORES, "free", lambda: 2.0)
    idle = _train_once(module, x)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    for _ in range(CHECKED_IN):  # a signature is checked when it comes back
        busy = _train_once(module, x)
    verdicts = list(cm.program.row_ops._same.values())
    assert cm.program.row_ops.checks == 2 and len(verdicts) == 2
    # a linear's backward is two autograd nodes (addmm's, its weight's transpose), each
    # lowered and put back
    fitted = sum(f for f, _ in verdicts) + 2 * sum(b for _, b in verdicts)
    assert 0 < float(idle[0].sum()) < idle[0].numel()
    _same_step(idle, busy)
    reference = snncc.compile(net, x, backend="reference").to_torch()
    expected = _train_once(reference, x)
    _same_step(expected, busy)
    # a second busy step checks nothing new; each fitted call (forward, then each node of its
    # backward) lowers the count to 1 and puts it back
    thread_counts_set.clear()
    again = _train_once(module, x)
    assert cm.program.row_ops.checks == 2
    assert thread_counts_set == [1, 2] * fitted
    assert torch.equal(again[0], busy[0])


class _CountScaled(torch.autograd.Function):
    """x * 1 forward; the backward scales by torch's thread count (a stand-in for a
    gradient whose summation order depends on the count)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x * 1.0

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g * torch.get_num_threads()


def test_the_bit_check_answers_forward_and_backward_apart(two_threads) -> None:
    from snncc.backends.cpu.op_threads import same_bits

    x = torch.ones(8, 4, requires_grad=True)

    def plain(ins, params):
        return ins[0] * params["w"]

    def counted(ins, params):
        return ins[0] * torch.get_num_threads()

    def backward_counted(ins, params):
        return _CountScaled.apply(ins[0])

    w = {"w": torch.ones(4, requires_grad=True)}
    assert same_bits(plain, [x], w, True, (2, 1)) == (True, True)
    assert same_bits(plain, [x], w, False, (2, 1)) == (True, False)  # no gradients compared
    assert same_bits(counted, [x], {}, True, (2, 1)) == (False, False)
    assert same_bits(backward_counted, [x], {}, True, (2, 1)) == (True, False)


@pytest.mark.parametrize("verdict", [(True, True), (False, False)])
def test_busy_gemms_follow_the_bit_check(
    two_threads, monkeypatch, thread_counts_set, verdict
) -> None:
    monkeypatch.setattr(op_threads, "same_bits", lambda *args: verdict)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(0))
    module = _unpacked(_mlp(), x)
    for _ in range(CHECKED_IN - 1):  # not checked yet: torch's count
        _train_once(module, x)
    assert thread_counts_set == []
    _train_once(module, x)
    # two linears, forward then backward (in reverse order; two autograd nodes each), each
    # lowered and put back
    assert thread_counts_set == ([1, 2] * 6 if verdict[0] else [])
    with torch.no_grad():  # another signature (no gradients), checked in its own third run
        for _ in range(CHECKED_IN):
            thread_counts_set.clear()
            module(x)
    assert thread_counts_set == ([1, 2] * 2 if verdict[0] else [])


def test_a_gemm_whose_gradient_depends_on_the_count_keeps_it_in_the_backward(
    two_threads, monkeypatch, thread_counts_set
) -> None:
    """A forward that a thread count leaves alone runs with 1 thread; a backward it would
    change runs at torch's count (the program's own linears, with the check's answer, where no
    split backward gives autograd's bits)."""
    monkeypatch.setattr(op_threads, "same_bits", lambda *args: (True, False))
    monkeypatch.setattr(op_threads, "same_as_autograd", lambda *args: False)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(0))
    module = _unpacked(_mlp(), x)
    for _ in range(CHECKED_IN):
        thread_counts_set.clear()
        _train_once(module, x)
    assert thread_counts_set == [1, 2, 1, 2]  # the two forwards only


def _readout_mlp() -> nn.Module:
    """An MLP that ends in a row op: a loss's broadcast gradient reaches that linear."""
    net = _mlp()
    del net[3]
    return net


@pytest.mark.parametrize("layout_same", [True, False])
def test_a_broadcast_loss_gradient_is_checked_in_its_own_layout(
    two_threads, monkeypatch, layout_same
) -> None:
    """``y.sum()`` hands the last linear a gradient with strides of 0: its backward runs at
    the fitted count only where a check with a gradient laid out so agrees, run once, in the
    backward; the linear before it (a contiguous gradient) follows the first check."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list = []

    def verdict(fn, ins, params, grads, counts, grad_like=None):
        calls.append(None if grad_like is None else grad_like.stride())
        return (True, True) if grad_like is None else (True, layout_same)

    monkeypatch.setattr(op_threads, "same_bits", verdict)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(0))
    module = _unpacked(_readout_mlp(), x)
    for _ in range(CHECKED_IN):
        _train_once(module, x)
    assert calls[:2] == [None, None] and len(calls) == 3 and set(calls[2]) == {0}, calls

    used: dict[tuple, set] = {}

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                used.setdefault(tuple(out.shape), set()).add(torch.get_num_threads())
            return out

    for p in module.parameters():
        p.grad = None
    y = module(x)
    with Spy():
        y.sum().backward()
    assert len(calls) == 3  # nothing checked again
    readout = 1 if layout_same else 2
    assert used == {(64, 64): {readout}, (8, 64): {readout}, (64, 20): {1}}, used


def test_every_autograd_node_of_a_fitted_op_runs_at_the_fitted_count(
    two_threads, monkeypatch
) -> None:
    """A voting layer's row function is a pooling between two views: its backward is three
    autograd nodes, and the pooling's runs at the fitted count too (only the outermost
    view's did); outputs and gradients are the idle run's."""
    from spikingjelly.activation_based import functional, layer
    from torch.utils._python_dispatch import TorchDispatchMode

    monkeypatch.setattr(op_threads, "same_bits", lambda *args: (True, True))
    net = _mlp()
    net[2] = layer.Linear(64, 40)
    net.append(layer.VotingLayer(4))
    functional.set_step_mode(net, "m")
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(0))
    module = _unpacked(net, x)
    monkeypatch.setattr(threads.CORES, "free", lambda: 2.0)
    idle = _train_once(module, x)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    for _ in range(CHECKED_IN):
        busy = _train_once(module, x)
    pooled: list[int] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "avg_pool" in str(func) and "backward" in str(func):
                pooled.append(torch.get_num_threads())
            return func(*args, **(kwargs or {}))

    for p in module.parameters():
        p.grad = None
    y = module(x)
    with Spy():
        y.sum().backward()
    assert pooled == [1]
    assert torch.get_num_threads() == 2
    _same_step(idle, busy)


def test_an_ops_autograd_nodes_end_at_its_inputs() -> None:
    """The nodes a fitted op lowers are its own: from its output to its inputs' nodes (a
    previous op's) or accumulators (a parameter's), never past them."""
    import gc

    import torch.nn.functional as F

    w = torch.rand(4, 3, requires_grad=True)
    x = (torch.rand(5, 3, requires_grad=True) * 2).relu()  # made by another op
    y = F.linear(x, w)
    gc.collect()  # no Python object of x's node is alive but x.grad_fn's own
    assert [type(n).__name__ for n in op_threads._op_nodes(y, [x, w])] == [
        "MmBackward0",
        "TBackward0",
    ]
    voted = F.avg_pool1d(y.unsqueeze(1), 2).squeeze(1)
    names = [type(n).__name__ for n in op_threads._op_nodes(voted, [y])]
    # avg_pool1d is itself a 2-d pooling between views
    assert names[0] == "SqueezeBackward1"
    assert sorted(names) == [
        "AvgPool2DBackward0",
        "SqueezeBackward1",
        "SqueezeBackward1",
        "UnsqueezeBackward0",
        "UnsqueezeBackward0",
    ]


def test_busy_training_through_a_broadcast_loss_gradient_gives_the_idle_bits(
    two_threads, monkeypatch
) -> None:
    """The layout check for real: outputs and gradients busy equal idle, bit for bit."""
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(0))
    cm = snncc.compile(_readout_mlp(), x, backend="cpu", saved_spike_dtype="float32")
    module = cm.to_torch()
    monkeypatch.setattr(threads.CORES, "free", lambda: 2.0)
    idle = _train_once(module, x)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    for _ in range(CHECKED_IN + 1):
        busy = _train_once(module, x)
    assert len(cm.program.row_ops._same_layout) == 1
    _same_step(idle, busy)


def test_saved_spikes_are_cast_at_the_fitted_count(
    two_threads, monkeypatch, thread_counts_set
) -> None:
    """The second linear saves its input spikes as uint8: the cast in the forward and the
    one back in the backward run at the fitted count on a busy machine (element-wise, the
    same bits), before any row op is checked; idle at torch's count. Outputs and gradients
    are the idle run's."""
    x = torch.rand((4, 64, 20), generator=torch.Generator().manual_seed(0))
    module = snncc.compile(_mlp(), x, backend="cpu").to_torch()
    steps = []
    for free, expected in ((2.0, []), (0.2, [1, 2, 1, 2])):
        monkeypatch.setattr(threads.CORES, "free", lambda free=free: free)
        thread_counts_set.clear()
        steps.append(_train_once(module, x))  # the first busy run: no row op checked yet
        assert thread_counts_set == expected
    assert 0 < float(steps[0][0].sum()) < steps[0][0].numel()
    _same_step(*steps)


def _conv_net() -> nn.Module:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    torch.manual_seed(1)
    net = nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1, bias=False),
        layer.BatchNorm2d(8),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        layer.MaxPool2d(2),
        layer.Conv2d(8, 8, 3, padding=1),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(8 * 4 * 4, 10),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
    )
    with torch.no_grad():
        net[4].weight.mul_(3.0)
        net[7].weight.mul_(6.0)
    functional.set_step_mode(net, "m")
    return net.train()


def test_busy_row_ops_give_the_idle_bits_conv_batchnorm_pooling(two_threads, monkeypatch) -> None:
    """Convolutions, training-mode BatchNorm (running statistics updated in place) and
    pooling, busy and idle: outputs, gradients and running statistics alike bit for bit,
    and the reference backend's."""
    import copy

    x = torch.rand((2, 8, 2, 16, 16), generator=torch.Generator().manual_seed(3))
    net = _conv_net()
    runs = []
    for backend, free in (("cpu", 2.0), ("cpu", 0.2), ("reference", 2.0)):
        monkeypatch.setattr(threads.CORES, "free", lambda free=free: free)
        copied = copy.deepcopy(net)
        cm = snncc.compile(copied, x, backend=backend)
        module = cm.to_torch()
        for _ in range(CHECKED_IN):  # each run updates the running statistics
            y, grads = _train_once(module, x)
        stats = [b.clone() for b in copied.buffers() if b.is_floating_point()]
        runs.append((y, grads, stats))
        if backend == "cpu" and free < 1:
            checked = cm.program.row_ops
            # 2 convolutions, BatchNorm, 2 poolings, linear; and each split backward's plans
            # until one gave autograd's bits (chunks first: one thread is left)
            plans = checked._split.values()
            assert checked.checks == 6 + sum(1 if p and p[2] else 2 for p in plans)
            assert any(forward for forward, _ in checked._same.values()), checked._same
    idle, busy, reference = runs
    assert 0 < float(idle[0].sum()) < idle[0].numel()
    for other in (busy, reference):
        assert torch.equal(idle[0], other[0])
        for a, b in zip(idle[1] + idle[2], other[1] + other[2]):
            assert torch.equal(a, b)


def test_the_bit_check_draws_small_outputs_again(two_threads) -> None:
    """A count that rounds one output element differently on 5% of the values is caught:
    a 4-element output is compared on many draws, not one (MKL's small linears differ at 1
    and 2 threads in a few outputs only, and in none on some draws)."""
    from snncc.backends.cpu.op_threads import COMPARED, same_bits

    def rarely_different(ins, params):
        y = ins[0] * 1.0
        if torch.get_num_threads() == 1 and float(ins[0][0, 0]) > 1.45:
            y[0, 0] += 1.0
        return y

    x = torch.ones(1, 4)
    assert COMPARED // x.numel() > 100
    assert same_bits(rarely_different, [x], {}, False, (2, 1)) == (False, False)


def test_the_bit_check_is_hidden_from_the_callers_saved_tensor_hooks(
    two_threads, monkeypatch
) -> None:
    """A caller counting what autograd saves (memory accounting, ``save_on_cpu``) sees the
    same tensors busy as idle: the check's own graph passes none of its hooks."""
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(0))
    counts = []
    for free in (2.0, 0.2):
        monkeypatch.setattr(threads.CORES, "free", lambda free=free: free)
        cm = snncc.compile(_mlp(), x, backend="cpu")
        module = cm.to_torch()
        saved: list[int] = []

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(1)
            return t

        for _ in range(CHECKED_IN - 1):
            module(x).sum().backward()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum().backward()
        counts.append(len(saved))
    assert cm.program.row_ops.checks == 2  # the busy run's third call checked both linears
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize(
    "op, shape, attrs",
    [
        ("conv2d", (4, 6, 9, 9), {"stride": (2, 1), "padding": (1, 0), "dilation": 1, "groups": 2}),
        ("conv1d", (4, 6, 17), {"stride": 1, "padding": 2, "dilation": 2, "groups": 1}),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunks", [0, 2, 3])
def test_a_split_convolution_backward_is_autograds(
    two_threads, op, shape, attrs, bias, chunks
) -> None:
    """Input gradient at one count, weight and bias gradients at the other (``chunks`` 0):
    the bits of autograd's one convolution_backward call, second derivatives included. Summed
    over batch chunks at one thread instead, they are autograd's up to rounding (their bits
    are compared where they are used: FittedOps checks each signature first)."""
    import torch.nn.functional as F

    split = op_threads.split_convolution(op, attrs)
    plain = {"conv1d": F.conv1d, "conv2d": F.conv2d}[op]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g, requires_grad=True)
    w = torch.randn((4, 6 // attrs["groups"], *[3] * (len(shape) - 2)), generator=g)
    w.requires_grad_(True)
    b = torch.randn(4, generator=g, requires_grad=True) if bias else None
    wrt = [x, w] + ([b] if bias else [])
    y = split.run([x], {"weight": w, **({"bias": b} if bias else {})}, (2, 1, chunks))
    y_plain = plain(x, w, b, **attrs)
    assert torch.equal(y, y_plain)
    first = torch.autograd.grad(y.square().sum(), wrt, create_graph=True)
    first_plain = torch.autograd.grad(y_plain.square().sum(), wrt, create_graph=True)
    second = torch.autograd.grad(first[0].sum(), w)[0]
    second_plain = torch.autograd.grad(first_plain[0].sum(), w)[0]
    same = torch.equal if chunks == 0 else lambda a, c: torch.allclose(a, c, rtol=1e-5, atol=1e-5)
    for a, c in zip([*first, second], [*first_plain, second_plain]):
        assert same(a, c)
    if chunks:  # a gradient not asked for stays None
        (only_x,) = torch.autograd.grad(
            split.run([x], {"weight": w.detach()}, (2, 1, chunks)).sum(), [x]
        )
        assert torch.equal(only_x, torch.autograd.grad(plain(x, w.detach(), **attrs).sum(), x)[0])


@pytest.mark.parametrize("verdicts", ["checked", "chunks refused"])
def test_a_convolution_whose_weight_gradient_depends_on_the_count_splits_its_backward(
    two_threads, monkeypatch, thread_counts_set, verdicts
) -> None:
    """oneDNN's case: forward and input gradient agree at both counts, the weight gradient
    does not. Then the forward and the input gradient run with 1 thread, and the weight
    gradient as the check found it gives the idle bits: summed over two batch halves at 1
    thread, or (that refused) at torch's 2; and the step gives the idle bits."""
    import copy

    monkeypatch.setattr(op_threads, "same_bits", lambda *args: (True, False))
    monkeypatch.setattr(op_threads, "split_linear", lambda op, attrs: None)  # convolutions only
    if verdicts == "chunks refused":  # per convolution: the chunks first, then the plain split
        answers = iter([False, True] * 2)
        monkeypatch.setattr(op_threads, "same_as_autograd", lambda *args: next(answers))
    x = torch.rand((2, 8, 2, 16, 16), generator=torch.Generator().manual_seed(3))
    net = _conv_net()
    monkeypatch.setattr(threads.CORES, "free", lambda: 2.0)
    idle = _train_once(snncc.compile(copy.deepcopy(net), x, backend="cpu").to_torch(), x)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    cm = snncc.compile(copy.deepcopy(net), x, backend="cpu")
    module = cm.to_torch()
    for _ in range(CHECKED_IN - 1):
        _train_once(module, x)
    busy = _train_once(module, x)
    plans = list(cm.program.row_ops._split.values())
    assert len(plans) == 2 and None not in plans  # the two convolutions
    if verdicts == "chunks refused":
        assert plans == [(2, 1, 0)] * 2
    used = []
    real = torch.ops.aten.convolution_backward

    class Spy:
        def __call__(self, *args):
            used.append((tuple(args[-1]), torch.get_num_threads(), args[1].shape[0]))
            return real(*args)

    monkeypatch.setattr(torch.ops.aten, "convolution_backward", Spy())
    for p in module.parameters():
        p.grad = None
    module(x).sum().backward()

    def weight_calls(plan, mask):
        rows = x.shape[0] * x.shape[1]
        if plan[2]:
            return [(mask, 1, part.shape[0]) for part in torch.empty(rows).tensor_split(plan[2])]
        return [(mask, 2, rows)]

    # backward runs the second convolution first: input gradient at 1 thread, then weight and
    # bias; the first's input is the model's, so it has a weight gradient only
    expected = [
        ((True, False, False), 1, 16),
        *weight_calls(plans[1], (False, True, True)),
        *weight_calls(plans[0], (False, True, False)),
    ]
    assert used == expected
    _same_step(idle, busy)


def test_weight_gradients_summed_over_chunks_are_used_only_where_the_check_agrees(
    two_threads, monkeypatch
) -> None:
    """The chunked weight gradient is the check's answer to whether it gives autograd's bits
    at torch's count: its verdict equals a direct comparison, for a batch oneDNN splits in
    halves and one it may not, with and without bias."""
    import torch.nn.functional as F

    attrs = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
    split = op_threads.split_convolution("conv2d", attrs)

    def plain(ins, ps):
        return F.conv2d(ins[0], ps["weight"], ps.get("bias"), **attrs)

    verdicts = []
    for rows, bias in ((8, False), (8, True), (2, False), (5, True)):
        x = torch.rand(rows, 16, 16, 16)
        params = {"weight": torch.rand(16, 16, 3, 3, requires_grad=True)}
        if bias:
            params["bias"] = torch.rand(16, requires_grad=True)
        run = lambda ins, ps: split.run(ins, ps, (2, 1, 2))  # noqa: E731
        verdicts.append(_verdict_is_direct(plain, run, x, params, (rows, 16, 16, 16)))
    print("chunked weight gradient gives autograd's bits:", verdicts)


def _verdict_is_direct(plain, split, x, params, grad_shape) -> bool:
    """The check's verdict on ``split`` against ``plain`` (autograd at 2 threads), asserted to
    equal a direct comparison of their parameter gradients on other values; it is returned.
    Either way the two agree up to rounding."""
    verdict = op_threads.same_as_autograd(plain, split, [x], params, 2)
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(x.shape, generator=g) + 0.5
    ps = {k: (torch.rand(v.shape, generator=g) + 0.5).requires_grad_() for k, v in params.items()}
    gy = torch.randn(grad_shape, generator=g)
    direct = [torch.autograd.grad(fn([xs], ps), list(ps.values()), gy) for fn in (plain, split)]
    if verdict:
        assert all(map(torch.equal, *direct)), (tuple(x.shape), grad_shape)
    for a, c in zip(*direct):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    return verdict


def test_no_split_convolution_under_autocast(two_threads, monkeypatch) -> None:
    """Under CPU autocast autograd saves the bf16 copies a convolution made, which the split
    backward would not: it is not used there (outside autocast it is)."""
    import torch.nn.functional as F

    monkeypatch.setattr(op_threads, "same_bits", lambda *args: (True, False))
    monkeypatch.setattr(op_threads, "same_as_autograd", lambda *args: True)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    x = torch.rand(2, 3, 8, 8)
    params = {"weight": torch.rand(4, 3, 3, 3, requires_grad=True)}
    called: list[int] = []

    def conv(ins, ps, plan):
        called.append(1)
        return F.conv2d(ins[0], ps["weight"])

    split = op_threads.Split(conv, lambda n, ins, ps: [n])

    for autocast, expected in ((True, []), (False, [1])):
        ops = op_threads.FittedOps()
        for _ in range(CHECKED_IN):
            ops.new_run()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                ops.run(0, lambda ins, ps: F.conv2d(ins[0], ps["weight"]), [x], params, split)
        assert called == expected
        called.clear()


@pytest.mark.parametrize("shape", [(64, 24), (4, 16, 24)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cut", [0, 8])
def test_a_split_linear_backward_is_autograds(two_threads, shape, bias, cut) -> None:
    """Input and bias gradients at one count, the weight gradient at the other (``cut`` 0):
    the bits of autograd's own calls, for a contiguous gradient and for the broadcast one of
    ``y.sum()`` (which always takes torch's count), second derivatives included. In two
    blocks of output rows at one thread instead, autograd's up to rounding (their bits are
    compared where they are used: FittedOps checks each signature first)."""
    import torch.nn.functional as F

    split = op_threads.split_linear("linear", {})
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g, requires_grad=True)
    w = torch.randn((10, shape[-1]), generator=g, requires_grad=True)
    b = torch.randn(10, generator=g, requires_grad=True) if bias else None
    wrt = [x, w] + ([b] if bias else [])
    params = {"weight": w, **({"bias": b} if bias else {})}
    y = split.run([x], params, (2, 1, cut))
    y_plain = F.linear(x, w, b)
    assert torch.equal(y, y_plain)
    for loss, loss_plain, exact in (
        (y.square().sum(), y_plain.square().sum(), cut == 0),
        (y.sum(), y_plain.sum(), True),  # strides of 0: autograd's calls at torch's count
    ):
        first = torch.autograd.grad(loss, wrt, create_graph=True)
        first_plain = torch.autograd.grad(loss_plain, wrt, create_graph=True)
        same = torch.equal if exact else lambda a, c: torch.allclose(a, c, rtol=1e-5, atol=1e-5)
        for a, c in zip(first, first_plain):
            assert same(a, c)
    second = torch.autograd.grad(first[0].sum(), w, allow_unused=True)[0]
    second_plain = torch.autograd.grad(first_plain[0].sum(), w, allow_unused=True)[0]
    assert (second is None) == (second_plain is None)
    first = torch.autograd.grad(y.square().sum(), wrt, create_graph=True)
    first_plain = torch.autograd.grad(y_plain.square().sum(), wrt, create_graph=True)
    second = torch.autograd.grad(first[1].sum(), x)[0]  # through the weight gradient
    second_plain = torch.autograd.grad(first_plain[1].sum(), x)[0]
    torch.testing.assert_close(second, second_plain, rtol=1e-5, atol=1e-5)
    (only_x,) = torch.autograd.grad(split.run([x], {"weight": w.detach()}, (2, 1, cut)).sum(), [x])
    assert torch.equal(only_x, torch.autograd.grad(F.linear(x, w.detach()).sum(), x)[0])


def test_a_linears_split_is_tried_at_the_blocks_mkl_divides() -> None:
    """The cuts tried with one thread left: the largest multiples of 4 below the outputs,
    the largest first (8 for 9-11 outputs, 4 for 5-7; none for 4 or fewer); only for the
    inputs whose rows ``F.linear`` folds into one GEMM (contiguous, 2-D or 3-D), whose
    autograd calls the split backward makes."""
    split = op_threads.split_linear("linear", {})
    assert op_threads.split_linear("conv2d", {}) is None
    assert split.applies([torch.empty(3, 5)]) and split.applies([torch.empty(2, 3, 5)])
    assert not split.applies([torch.empty(2, 2, 3, 5)])
    assert not split.applies([torch.empty(3, 2, 5).transpose(0, 1)])
    cuts = {
        outputs: split.parts(2, [torch.empty(3, 5)], {"weight": torch.empty(outputs, 5)})
        for outputs in (1, 4, 5, 7, 8, 9, 10, 11, 12, 13, 64)
    }
    assert cuts == {
        1: [], 4: [], 5: [4], 7: [4], 8: [4], 9: [8, 4], 10: [8, 4], 11: [8, 4],
        12: [8, 4], 13: [12, 8], 64: [60, 56],
    }  # fmt: skip


@pytest.mark.parametrize("verdicts", ["checked", "blocks refused"])
def test_a_linear_whose_weight_gradient_depends_on_the_count_splits_its_backward(
    two_threads, monkeypatch, verdicts
) -> None:
    """MKL's case without strict CNR (forced here: the tests run under it): forward, input
    and bias gradients agree at both counts, the weight gradient does not. Then the forward
    and those gradients run with 1 thread, and the weight gradient as the check found it: in
    two blocks of output rows at 1 thread, or (that refused) at torch's 2; the step gives the
    idle bits either way."""
    import copy

    monkeypatch.setattr(op_threads, "same_bits", lambda *args: (True, False))
    if verdicts == "blocks refused":
        monkeypatch.setattr(op_threads.SplitLinear, "backward", _refuse_blocks)
    x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(4))
    net = _mlp(10, seed=2)
    monkeypatch.setattr(threads.CORES, "free", lambda: 2.0)
    idle = _train_once(_unpacked(copy.deepcopy(net), x), x)
    monkeypatch.setattr(threads.CORES, "free", lambda: 0.2)
    cm = snncc.compile(copy.deepcopy(net), x, backend="cpu", saved_spike_dtype="float32")
    module = cm.to_torch()
    for _ in range(CHECKED_IN):
        busy = _train_once(module, x)
    # each linear's plan, by its number of outputs: the first cut the check accepted (which
    # one is MKL's answer under strict CNR), or none where the blocks are refused
    plans = {
        dict((name, shape) for name, shape, *_ in key[0][2])["weight"][0]: plan
        for key, plan in cm.program.row_ops._split.items()
    }
    split = op_threads.split_linear("linear", {})
    for outputs, plan in plans.items():
        cuts = split.parts(2, [x], {"weight": torch.empty(outputs, 1)})
        assert plan[:2] == (2, 1) and plan[2] in [*cuts, 0]
        assert (plan[2] == 0) == (verdicts == "blocks refused")
    used: list[tuple] = []
    real = torch.Tensor.mm

    def spy(a, b):
        out = real(a, b)
        used.append((torch.get_num_threads(), tuple(out.shape)))
        return out

    monkeypatch.setattr(torch.Tensor, "mm", spy)
    again = _train_once(module, x)
    monkeypatch.setattr(torch.Tensor, "mm", real)

    def weight_calls(outputs: int, inputs: int) -> list[tuple]:
        cut = plans[outputs][2]
        if cut:
            return [(1, (cut, inputs)), (1, (outputs - cut, inputs))]
        return [(2, (outputs, inputs))]

    # the readout's backward runs first: its input gradient at 1 thread, then its weight
    # gradient; then the first linear's weight gradient (its input is the model's)
    assert used == [(1, (64, 64)), *weight_calls(10, 64), *weight_calls(64, 20)]
    _same_step(idle, busy)
    _same_step(idle, again)


def _refuse_blocks(ctx, grad):
    """A SplitLinear backward whose weight gradient in blocks is off by one ulp somewhere: the
    check before use must refuse the blocks and keep torch's count."""
    grads = list(_REAL_SPLIT_LINEAR_BACKWARD(ctx, grad))
    if ctx.plan[2] and grads[1] is not None:
        grads[1] = grads[1].clone()
        grads[1].view(-1)[0] = torch.nextafter(grads[1].view(-1)[0], torch.tensor(float("inf")))
    return tuple(grads)


_REAL_SPLIT_LINEAR_BACKWARD = op_threads.SplitLinear.backward


def test_a_linears_blocks_are_used_only_where_the_check_agrees(two_threads) -> None:
    """The blocked weight gradient is the check's answer to whether it gives autograd's bits at
    torch's count: its verdict equals a direct comparison, for each cut of 10 and 6 outputs,
    2-D and 3-D inputs, with and without bias."""
    import torch.nn.functional as F

    split = op_threads.split_linear("linear", {})

    def plain(ins, ps):
        return F.linear(ins[0], ps["weight"], ps.get("bias"))

    verdicts = []
    for shape, outputs, bias in (
        ((64, 256), 10, True),
        ((4, 16, 100), 10, False),
        ((64, 100), 6, True),
    ):
        x = torch.rand(shape)
        params = {"weight": torch.rand(outputs, shape[-1], requires_grad=True)}
        if bias:
            params["bias"] = torch.rand(outputs, requires_grad=True)
        for cut in split.parts(2, [x], params):
            run = lambda ins, ps, cut=cut: split.run(ins, ps, (2, 1, cut))  # noqa: E731
            verdicts.append(_verdict_is_direct(plain, run, x, params, (*shape[:-1], outputs)))
    print("blocked weight gradient gives autograd's bits:", verdicts)


_WITHOUT_STRICT_CNR = """
import json, sys
import torch
import snncc
from snncc.backends.cpu import op_threads, threads
sys.path.insert(0, sys.argv[1])
from test_cpu_threads import CHECKED_IN, _mlp, _train_once

torch.set_num_threads(2)
x = torch.rand((4, 16, 20), generator=torch.Generator().manual_seed(4))
cm = snncc.compile(_mlp(10, seed=2), x, backend="cpu", saved_spike_dtype="float32")
module = cm.to_torch()
threads.CORES.free = lambda: 2.0
idle = _train_once(module, x)
threads.CORES.free = lambda: 0.2
for _ in range(CHECKED_IN):
    busy = _train_once(module, x)
same = all(torch.equal(a, b) for a, b in zip((idle[0], *idle[1]), (busy[0], *busy[1])))
plans = sorted(cm.program.row_ops._split.values())
print(json.dumps({"same": same, "plans": plans, "checks": cm.program.row_ops.checks}))
"""


def test_busy_training_gives_the_idle_bits_without_strict_cnr(tmp_path) -> None:
    """In a process without ``MKL_CBWR`` (a user's own Python, where MKL's weight gradient into
    10 outputs differs at 1 and 2 threads), a busy training step still gives the idle bits:
    whatever the checks decide there (on this machine, the readout's weight gradient in two
    blocks at one thread), nothing a thread count changes is used."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    res = subprocess.run(
        [sys.executable, "-c", _WITHOUT_STRICT_CNR, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    print("without strict CNR:", found)
    assert found["same"]
    assert found["checks"] > 0, "the busy step checked nothing"
