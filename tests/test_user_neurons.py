"""Neurons snncc has never seen, compiled from their own step code (issue 12 item 5).

Each case runs the user's own neuron eagerly (SpikingJelly or a plain loop, the
way its users run it) and compiled: outputs and membranes bit for bit on the
reference and cpu backends, jax within 1e-4, and gradients of the input and
of the neuron's own learnable parameters within 1e-4 of torch's autograd
through the eager module. What cannot be traced is refused naming the module
and the line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snncc
from snncc.errors import UnsupportedError

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402

st_surrogate = pytest.importorskip("snntorch.surrogate")


# --------------------------------------------------------------------------- the neurons
class QuadraticIF(sj_neuron.SimpleBaseNode):
    """A user's quadratic integrate-and-fire: only its charge is its own."""

    def __init__(self, tau: float = 2.0, v_c: float = 0.3, a0: float = 0.7, **kw) -> None:
        super().__init__(**kw)
        self.tau, self.v_c, self.a0 = tau, v_c, a0

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + (x + self.a0 * (self.v - 0.0) * (self.v - self.v_c)) / self.tau


class LearnedLeak(sj_neuron.SimpleBaseNode):
    """A learnable decay per neuron, and a soft reset of its own."""

    def __init__(self, n: int, **kw) -> None:
        super().__init__(v_reset=None, **kw)
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, n))

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + (x - self.v) * self.w.sigmoid()


class AdaptiveThreshold(sj_neuron.BaseNode):
    """SpikingJelly 2.0's functional step, with a second memory: an adaptive threshold."""

    def __init__(self, tau: float = 2.0, beta: float = 0.2, **kw) -> None:
        super().__init__(**kw)
        self.tau, self.beta = tau, beta
        self.register_memory("a", 0.0)

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        v, a = states
        h = v + (x - v) / self.tau
        spike = self.surrogate_function(h - self.v_threshold - a)
        v = self.apply_hard_reset(h, spike, self.v_reset)
        a = a * 0.9 + self.beta * spike
        return (spike,), (v, a)


class StepLeaky(torch.nn.Module):
    """The snnTorch tutorials' shape: forward(x, mem) -> (spk, mem), threaded by hand."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.beta = torch.nn.Parameter(torch.linspace(0.6, 0.95, n))
        self.spike_grad = st_surrogate.fast_sigmoid(slope=10)

    def forward(self, x: torch.Tensor, mem: torch.Tensor):
        mem = self.beta * mem + x
        spk = self.spike_grad(mem - 1.0)
        mem = mem - spk * 1.0
        return spk, mem


class LoopNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(5, 7)
        self.lif = StepLeaky(7)

    def forward(self, x: torch.Tensor):
        mem = torch.zeros(x.shape[1], 7)
        spk_rec, mem_rec = [], []
        for t in range(x.shape[0]):
            spk, mem = self.lif(self.fc(x[t]), mem)
            spk_rec.append(spk)
            mem_rec.append(mem)
        return torch.stack(spk_rec), torch.stack(mem_rec)


def _sj_net(node: torch.nn.Module, mode: str) -> torch.nn.Sequential:
    torch.manual_seed(3)
    node.step_mode = mode
    return torch.nn.Sequential(layer.Linear(5, 7, step_mode=mode), node)


def _sj_eager(net: torch.nn.Sequential, mode: str):
    def run(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(net)
        out = net(x) if mode == "m" else torch.stack([net(xt) for xt in x])
        functional.reset_net(net)
        return out

    return run


CASES = {
    "quadratic_if": lambda mode: _sj_net(QuadraticIF(surrogate_function=surrogate.ATan()), mode),
    "learned_leak": lambda mode: _sj_net(
        LearnedLeak(7, surrogate_function=surrogate.Sigmoid()), mode
    ),
    "adaptive_threshold": lambda mode: _sj_net(
        AdaptiveThreshold(surrogate_function=surrogate.Sigmoid(), detach_reset=True), mode
    ),
}


def _x(seed: int = 0) -> torch.Tensor:
    return torch.rand(9, 3, 5, generator=torch.Generator().manual_seed(seed)) * 3.0


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


# --------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("mode", ["s", "m"])
@pytest.mark.parametrize("name", list(CASES))
def test_spikingjelly_subclasses_compile_from_their_own_step(name, mode, cache_dir) -> None:
    net = CASES[name](mode)
    eager = _sj_eager(net, mode)
    x = _x(1)
    want = eager(x)
    assert 0 < int(want.sum()) < want.numel(), "degenerate case: all or no spikes"
    for backend in ("reference", "cpu"):
        cm = snncc.compile(
            net, x, backend=backend, **({"cache_dir": cache_dir} if backend == "cpu" else {})
        )
        spec = cm.ir.attrs(2)["neuron"]
        assert spec["charge"] == "traced" and spec["model"] == type(net[1]).__name__
        assert torch.equal(cm(x), want), backend
    jx = snncc.compile(net, x, backend="jax")
    got = np.asarray(jx(x.numpy()))
    assert np.abs(got - want.detach().numpy()).max() == 0.0  # 0/1 spikes: none may flip


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_follow_the_eager_module(name, cache_dir) -> None:
    """d loss / d x and the neuron's own learnable params through the fused kernels."""
    net = CASES[name]("m")
    eager = _sj_eager(net, "m")
    x = _x(2)
    weights = torch.randn(x.shape[0], x.shape[1], 7, generator=torch.Generator().manual_seed(5))
    xr = x.clone().requires_grad_()
    net.zero_grad()
    (eager(xr) * weights).sum().backward()
    want = {n: p.grad.clone() for n, p in net.named_parameters()}
    cm = snncc.compile(net, x, backend="cpu", cache_dir=cache_dir)
    tm = cm.to_torch()
    xs = x.clone().requires_grad_()
    (tm(xs) * weights).sum().backward()
    assert _rel(xs.grad, xr.grad) <= 1e-4
    got = dict(tm.named_parameters())
    for n, g in want.items():
        assert _rel(got[n].grad, g) <= 1e-4, n
    if name == "learned_leak":
        assert float(want["1.w"].abs().sum()) > 0  # the learnable decay is really trained


def test_a_step_module_threaded_through_a_loop(cache_dir) -> None:
    """forward(x, mem) -> (spk, mem) in an snnTorch-style loop: spikes and membranes, and the
    per-neuron learnable beta's gradient."""
    torch.manual_seed(0)
    net = LoopNet()
    x = _x(3)
    spk_ref, mem_ref = net(x)
    assert 0 < int(spk_ref.sum()) < spk_ref.numel()
    for backend in ("reference", "cpu"):
        kw = {"cache_dir": cache_dir} if backend == "cpu" else {}
        spk, mem = snncc.compile(net, x, backend=backend, **kw)(x)
        assert torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref), backend
    spk, mem = snncc.compile(net, x, backend="jax")(x.numpy())
    assert np.array_equal(np.asarray(spk), spk_ref.detach().numpy())
    assert np.abs(np.asarray(mem) - mem_ref.detach().numpy()).max() <= 1e-4
    tm = snncc.compile(net, x, backend="cpu", cache_dir=cache_dir).to_torch()
    out = tm(x)
    (out[0].sum() + (out[1] * 0.5).sum()).backward()
    net.zero_grad()
    ref = net(x)
    (ref[0].sum() + (ref[1] * 0.5).sum()).backward()
    assert _rel(dict(tm.named_parameters())["lif.beta"].grad, net.lif.beta.grad) <= 1e-4


def test_a_traced_neuron_with_two_memories_streams(cache_dir) -> None:
    """cm.run(x, state) takes back the state run() returned, every memory of it (the
    adaptive threshold's ``a`` too): two calls of T=4 and 5 equal one of T=9."""
    net = CASES["adaptive_threshold"]("m")
    x = _x(4)
    for backend in ("reference", "cpu"):
        kw = {"cache_dir": cache_dir} if backend == "cpu" else {}
        cm = snncc.compile(net, x, backend=backend, **kw)
        with torch.no_grad():
            y_a, state = cm.run(x[:4])
            assert sorted(next(iter(state.values()))) == ["a", "v"], backend
            y_b, state = cm.run(x[4:], state)
            y, whole = cm.run(x)
        assert torch.equal(torch.cat([y_a, y_b]), y), backend
        for node, variables in whole.items():
            for var, value in variables.items():
                assert torch.equal(state[node][var], value), (backend, var)


def test_a_traced_neuron_survives_save_load_and_onnx(tmp_path, cache_dir) -> None:
    net = CASES["learned_leak"]("m")
    x = _x(4)
    cm = snncc.compile(net, x, backend="cpu", cache_dir=cache_dir)
    cm.save(tmp_path / "art")
    again = snncc.load(tmp_path / "art", cache_dir=cache_dir)
    assert torch.equal(again(x), cm(x))
    ort = pytest.importorskip("onnxruntime")
    from snncc.exchange import to_onnx

    model = to_onnx(cm.ir)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.array_equal(got, cm(x).numpy())


# --------------------------------------------------------------------------- refusals
class Branchy(sj_neuron.SimpleBaseNode):
    def neuronal_charge(self, x):
        if (self.v + x > 0).any():
            self.v = self.v + x
        else:
            self.v = x


class Sinusoid(sj_neuron.SimpleBaseNode):
    def neuronal_charge(self, x):
        self.v = self.v + torch.sin(x)


class _Own(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        return (u > 0).float()

    @staticmethod
    def backward(ctx, g):
        return g * 0.5


class OwnSurrogate(sj_neuron.SimpleBaseNode):
    def neuronal_fire(self):
        return _Own.apply(self.v - self.v_threshold)

    def neuronal_charge(self, x):
        self.v = self.v + x


@pytest.mark.parametrize(
    "node, match",
    [
        (
            Branchy(),
            r"Branchy.*Python control flow.*test_user_neurons.py:\d+: if \(self.v \+ x > 0\)",
        ),
        (Sinusoid(), r"Sinusoid.*sin.*test_user_neurons.py:\d+: self.v = self.v \+ torch.sin"),
        (OwnSurrogate(), r"OwnSurrogate.*autograd Function .*_Own.*test_user_neurons.py"),
    ],
    ids=["branch", "sin", "own-function"],
)
def test_what_cannot_be_traced_is_refused_naming_the_line(node, match) -> None:
    net = _sj_net(node, "m")
    with pytest.raises(UnsupportedError, match=match):
        snncc.compile(net, _x(5))
