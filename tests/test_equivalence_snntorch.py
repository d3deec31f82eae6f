"""Acceptance: snnTorch models compiled for the reference backend give EXACTLY snnTorch's outputs.

Each test builds an snnTorch 1.0 model, runs it eagerly on the CPU the way
snnTorch users do (a per-step ``nn.Sequential`` of ``init_hidden=True``
neurons driven by a time loop after ``snntorch.utils.reset``, or a module
whose ``forward`` holds the time loop), runs ``snncc.compile(model, x)`` on
the same input, and requires spikes and membranes to be bit-identical (0
mismatching elements, some spikes but not all) and the gradients of one
scalar loss (through spikes and membranes) wrt the input, the weights and
the learnable neuron parameters to agree within 1e-4 relative.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snncc

snn = pytest.importorskip("snntorch")
from checks import assert_fires  # noqa: E402
from peer_models import snntorch_convnet, snntorch_step_run  # noqa: E402
from snntorch import surrogate, utils  # noqa: E402
from tolerances import grad_atol  # noqa: E402

B = 3


# --------------------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(model: nn.Module, seed: int, gain: float = 2.0) -> None:
    """Weights large enough that neurons fire at moderate rates."""
    gen = _gen(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * gain / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)


def _as_tuple(y) -> tuple[torch.Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


def _loss(ys: tuple[torch.Tensor, ...], seed: int) -> torch.Tensor:
    gen = _gen(seed)
    return sum((y * torch.randn(y.shape, generator=gen)).sum() for y in ys)


def _check(model: nn.Module, x: torch.Tensor, run, learnable: tuple[str, ...] = ()) -> None:
    """Compile, compare every output exactly, then gradients wrt x, weights and ``learnable``."""
    cm = snncc.compile(model, x)
    xr = x.clone().requires_grad_()
    ref = _as_tuple(run(model, xr))
    xs = x.clone().requires_grad_()
    got = _as_tuple(cm(xs))
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert torch.equal(g, r), f"{int((g != r).sum())} of {r.numel()} elements differ"
    spikes = ref[0]
    assert 0 < int(spikes.detach().sum()) < spikes.numel(), "degenerate case: all or no spikes"
    assert_fires(cm.ir, x)

    model.zero_grad()
    _loss(ref, 1).backward()
    _loss(got, 1).backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=grad_atol(xr.grad))
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.grad is not None and n in cm.program.params]
    assert names, "no parameter gradient to compare"
    for name in names:
        got_grad = cm.program.params[name].grad
        assert got_grad is not None, f"no gradient for {name}"
        torch.testing.assert_close(
            got_grad, params[name].grad, rtol=1e-4, atol=grad_atol(params[name].grad), msg=name
        )
    for name in learnable:
        assert name in names, f"learnable {name} has no gradient"


# --------------------------------------------------------------------------- style (a): per-step


def _per_step_mlp(mech: str, reset_delay: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 10),
        snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism=mech, reset_delay=reset_delay),
        nn.Linear(10, 4),
        snn.Leaky(
            beta=0.8,
            init_hidden=True,
            output=True,
            reset_mechanism=mech,
            reset_delay=reset_delay,
            spike_grad=surrogate.fast_sigmoid(slope=10),
        ),
    )


@pytest.mark.parametrize("mech", ["subtract", "zero", "none"])
@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("T", [1, 8, 32])
def test_per_step_sequential(mech: str, reset_delay: bool, T: int) -> None:
    net = _per_step_mlp(mech, reset_delay)
    _randomise(net, T, gain=4.0)
    x = torch.randn(T, B, 6, generator=_gen(T)) * 2.0 + 1.5
    _check(net, x, snntorch_step_run)


def test_per_step_convnet_learnable_beta_threshold_graded() -> None:
    """The snnTorch tutorial CSNN, with learnable per-channel beta and threshold, graded spikes."""
    net = snntorch_convnet()
    _randomise(net, 3, gain=3.0)
    x = torch.rand(8, B, 1, 8, 8, generator=_gen(3)) * 2
    _check(net, x, snntorch_step_run, learnable=("2.beta", "2.threshold", "5.graded_spikes_factor"))


# --------------------------------------------------------------------------- style (b): loops


class LoopLeaky(nn.Module):
    """The snnTorch tutorial network: the time loop inside forward, mem threaded by hand."""

    def __init__(self, mech: str, reset_delay: bool, learn: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.lif1 = snn.Leaky(
            beta=torch.linspace(0.5, 1.2, 10),  # per-neuron, clamped to [0, 1] each step
            reset_mechanism=mech,
            reset_delay=reset_delay,
            learn_beta=learn,
            learn_threshold=learn,
        )
        self.fc2 = nn.Linear(10, 4)
        self.lif2 = snn.Leaky(beta=0.8, reset_mechanism=mech, reset_delay=reset_delay)

    def forward(self, x: torch.Tensor):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.reset_mem()
        spk_rec, mem_rec = [], []
        for step in range(x.size(0)):
            cur1 = self.fc1(x[step])
            spk1, mem1 = self.lif1(cur1, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem=mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec, dim=0), torch.stack(mem_rec)


def _call(model: nn.Module, x: torch.Tensor):
    return model(x)


@pytest.mark.parametrize("mech", ["subtract", "zero", "none"])
@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("T", [1, 8, 32])
def test_loop_leaky(mech: str, reset_delay: bool, T: int) -> None:
    net = LoopLeaky(mech, reset_delay, learn=True)
    _randomise(net, 10 + T, gain=4.0)
    x = torch.randn(T, B, 6, generator=_gen(T)) * 2.0 + 1.5
    _check(net, x, _call, learnable=("lif1.beta", "lif1.threshold"))


class LoopSums(nn.Module):
    """Sums accumulated over the loop's steps (``acc = acc + mem`` from 0, ``acc2 += ...`` from
    zeros), read after the loop (a mean's softmax): folded to ``time_reduce`` in step order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.lif = snn.Leaky(beta=0.9, learn_beta=True)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor):
        mem = self.lif.init_leaky()
        acc, acc2 = 0, torch.zeros(x.size(1), 4)
        spk_rec = []
        for step in range(x.size(0)):
            spk, mem = self.lif(self.fc1(x[step]), mem)
            acc = acc + mem
            acc2 += self.fc2(spk)
            spk_rec.append(spk)
        return torch.stack(spk_rec), torch.softmax(acc / x.size(0), dim=-1), acc2 * 0.5


def test_loop_sums_over_steps() -> None:
    net = LoopSums()
    _randomise(net, 6, gain=4.0)
    x = torch.randn(12, B, 6, generator=_gen(6)) + 1.0
    _check(net, x, _call, learnable=("lif.beta",))
    cm = snncc.compile(net, x, backend="cpu")
    with torch.no_grad():
        ref = net(x)
        assert all(torch.equal(g, r) for g, r in zip(cm(x), ref))
    sums = [n for n in cm.ir.iter_ops("time_reduce")]
    assert [cm.ir.attrs(n) for n in sums] == [{"op": "sum", "order": "steps"}] * 2
    # not vacuous: torch's own x.sum(0) adds these membranes in another order
    for n in sums:
        del cm.ir.attrs(n)["order"]
    with torch.no_grad():
        torch_order = snncc.compile_graph(cm.ir, backend="reference")(x)
    assert not torch.equal(torch_order[1], ref[1])


class LoopSynaptic(nn.Module):
    def __init__(self, mech: str, reset_delay: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.syn = snn.Synaptic(
            alpha=0.7, beta=0.85, reset_mechanism=mech, reset_delay=reset_delay, learn_alpha=True
        )

    def forward(self, x: torch.Tensor):
        syn, mem = self.syn.init_synaptic()
        spk_rec, syn_rec, mem_rec = [], [], []
        for xt in x:  # iterating the input
            spk, syn, mem = self.syn(self.fc(xt), syn, mem)
            spk_rec.append(spk)
            syn_rec.append(syn)
            mem_rec.append(mem)
        return torch.stack(spk_rec), torch.stack(syn_rec), torch.stack(mem_rec)


@pytest.mark.parametrize("mech", ["subtract", "zero", "none"])
@pytest.mark.parametrize("reset_delay", [True, False])
def test_loop_synaptic(mech: str, reset_delay: bool) -> None:
    net = LoopSynaptic(mech, reset_delay)
    _randomise(net, 4)
    x = torch.randn(12, B, 6, generator=_gen(4)) + 0.3
    _check(net, x, _call, learnable=("syn.alpha",))


def _rleaky(kind: str, mech: str, reset_delay: bool, **kw) -> nn.Module:
    common = {"beta": 0.9, "reset_mechanism": mech, "reset_delay": reset_delay, **kw}
    if kind == "linear":
        return snn.RLeaky(linear_features=8, **common)
    if kind == "V":
        return snn.RLeaky(all_to_all=False, V=torch.linspace(-0.5, 0.8, 8), **common)
    if kind == "V_scalar_buffer":
        return snn.RLeaky(all_to_all=False, V=0.4, learn_recurrent=False, **common)
    return snn.RLeaky(conv2d_channels=2, kernel_size=3, **common)


class LoopRLeaky(nn.Module):
    def __init__(self, kind: str, mech: str, reset_delay: bool) -> None:
        super().__init__()
        conv = kind == "conv"
        self.inp = nn.Conv2d(1, 2, 3, padding=1) if conv else nn.Linear(6, 8)
        self.rlif = _rleaky(kind, mech, reset_delay)

    def forward(self, x: torch.Tensor):
        spk, mem = self.rlif.init_rleaky()
        spk_rec, mem_rec = [], []
        for step in range(x.shape[0]):
            spk, mem = self.rlif(self.inp(x[step]), spk, mem)
            spk_rec.append(spk)
            mem_rec.append(mem)
        return torch.stack(spk_rec), torch.stack(mem_rec)


@pytest.mark.parametrize("kind", ["linear", "V", "V_scalar_buffer", "conv"])
@pytest.mark.parametrize("mech", ["subtract", "zero"])
@pytest.mark.parametrize("reset_delay", [True, False])
def test_loop_rleaky(kind: str, mech: str, reset_delay: bool) -> None:
    net = LoopRLeaky(kind, mech, reset_delay)
    _randomise(net, 5, gain=1.5)
    shape = (10, B, 1, 5, 5) if kind == "conv" else (10, B, 6)
    x = torch.randn(shape, generator=_gen(5)) + 0.3
    _check(net, x, _call)


@pytest.mark.parametrize("kind", ["linear", "V", "conv"])
def test_per_step_rleaky(kind: str) -> None:
    """RLeaky(init_hidden=True) in a per-step Sequential: the recurrence is a graph SCC."""
    conv = kind == "conv"
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1) if conv else nn.Linear(6, 8),
        _rleaky(kind, "subtract", True, init_hidden=True, output=True),
    )
    _randomise(net, 6, gain=1.5)
    shape = (8, B, 1, 5, 5) if conv else (8, B, 6)
    x = torch.randn(shape, generator=_gen(6)) + 0.3
    _check(net, x, snntorch_step_run)
    if kind != "V":
        cm = snncc.compile(net, x)
        kinds = [g["kind"] for g in cm.ir.meta["groups"]]
        assert "recurrent" in kinds


@pytest.mark.parametrize("T", [1, 8, 32])
def test_loop_over_fixed_num_steps(T: int) -> None:
    """``range(num_steps)`` with a constant (the snnTorch tutorials) works when it equals T."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 5)
            self.lif = snn.Leaky(beta=0.95)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mem = self.lif.init_leaky()
            out = []
            for step in range(T):
                spk, mem = self.lif(self.fc(x[step]), mem)
                out.append(spk)
            return torch.stack(out)

    net = Net()
    _randomise(net, 7, gain=4.0)
    x = torch.randn(T, B, 6, generator=_gen(7)) * 2.0 + 1.5
    _check(net, x, _call)


class LoopOverSequential(nn.Module):
    """The tutorials' ``forward_pass``: reset, then call an init_hidden network per step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 10),
            snn.Leaky(beta=0.9, init_hidden=True),
            nn.Linear(10, 4),
            snn.Synaptic(alpha=0.5, beta=0.8, init_hidden=True, output=True),
        )

    def forward(self, x: torch.Tensor):
        utils.reset(self.net)
        spk_rec, mem_rec = [], []
        for step in range(x.size(0)):
            spk, syn, mem = self.net(x[step])
            spk_rec.append(spk)
            mem_rec.append(mem)
        return torch.stack(spk_rec), torch.stack(mem_rec)


@pytest.mark.parametrize("T", [1, 8])
def test_loop_over_init_hidden_network(T: int) -> None:
    net = LoopOverSequential()
    _randomise(net, 12, gain=4.0)
    x = torch.randn(T, B, 6, generator=_gen(12)) * 2.0 + 1.5
    _check(net, x, _call)


# --------------------------------------------------------------------------- streaming


def test_streaming_recurrent_model() -> None:
    """run(x[:k]) then run(x[k:], state) == run(x), for an RLeaky (SCC) + Synaptic model."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 8)
            self.rlif = snn.RLeaky(beta=0.9, linear_features=8)
            self.fc2 = nn.Linear(8, 4)
            self.syn = snn.Synaptic(alpha=0.6, beta=0.9)

        def forward(self, x: torch.Tensor):
            spk1, mem1 = self.rlif.init_rleaky()
            syn, mem2 = self.syn.init_synaptic()
            out = []
            for xt in x:
                spk1, mem1 = self.rlif(self.fc1(xt), spk1, mem1)
                spk2, syn, mem2 = self.syn(self.fc2(spk1), syn, mem2)
                out.append(spk2)
            return torch.stack(out)

    net = Net()
    _randomise(net, 8)
    x = torch.randn(16, B, 6, generator=_gen(8)) + 0.5
    cm = snncc.compile(net, x)
    with torch.no_grad():
        full, _ = cm.run(x)
        ref = net(x)
        for k in (1, 7):
            a, state = cm.run(x[:k])
            b, _ = cm.run(x[k:], state)
            assert torch.equal(torch.cat([a, b]), full)
    assert torch.equal(full, ref) and 0 < ref.sum() < ref.numel()
