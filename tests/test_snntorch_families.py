"""snnTorch 1.0's Alpha, Lapicque and RSynaptic, and its surrogates, against snnTorch itself.

Acceptance (issue 12 item 4), each family on the models snnTorch users write (a per-step
``nn.Sequential`` of ``init_hidden=True`` neurons driven after ``utils.reset``, and a
``forward`` holding the time loop with the state threaded by hand):

- reference and cpu backends: every output (spikes, currents, membranes) bit for bit with
  snnTorch eager on the CPU (float32); gradients of one scalar loss wrt the input, the
  weights and every learnable neuron parameter (``learn_beta``, ``learn_threshold``,
  ``learn_alpha``, ``V``, the recurrent weights) within 1e-4 relative
  (``assert_close(rtol=1e-4, atol=64 ulps of the largest value)``, tests/tolerances.py);
- jax: spikes within 1e-4 mismatch (none at these sizes), continuous values within
  1e-5, gradients within 1e-4 relative L2 (tests/test_jax_snntorch_norse.py's ``compare``);
- ONNX: the exported model runs in onnxruntime at other T and B than traced and equals the
  reference backend bit for bit on models with dyadic weights and inputs (every node
  probed), and its import rebuilds the same IR;
- the kernels compile with nvcc for sm_80 / sm_90: tests/test_kernels.py's matrix.

snnTorch facts the tests pin down: Alpha's ``learn_alpha=True`` raises in snnTorch 1.0;
RSynaptic's ``reset_delay=False`` gives exactly the outputs of ``reset_delay=True``;
Lapicque's ``learn_beta`` gradient reaches ``beta`` through the ``C`` (or ``R``) snnTorch
derived from it, and snnTorch can run that backward once per model, so each test runs
snnTorch's backward before compiling (compiling restores the model's buffers in place).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import snncc
from snncc.errors import UnsupportedError
from snncc.ir.neuron import NeuronSpec

snn = pytest.importorskip("snntorch")
from measured import Measured, grad_rel  # noqa: E402
from peer_models import snntorch_step_run  # noqa: E402
from snntorch import surrogate  # noqa: E402
from tolerances import grad_atol  # noqa: E402

B = 3
BACKENDS = ["reference", "cpu"]
#: per family and backend, the figures the README's Sources table quotes (printed with -s)
FIGURES = Measured("snnTorch families vs snnTorch")


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    print(FIGURES.report())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(model: nn.Module, seed: int, gain: float = 2.0) -> nn.Module:
    gen = _gen(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * gain / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
    return model


def _call(model: nn.Module, x: torch.Tensor):
    return model(x)


def _as_tuple(y) -> tuple[torch.Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


def check(
    model: nn.Module,
    x: torch.Tensor,
    run: Callable,
    backend: str,
    cache_dir: str,
    learnable: tuple[str, ...] = (),
) -> Any:
    """snnTorch eager (forward, then one backward), then the compiled model: outputs bit for
    bit, the gradients wrt x, weights and ``learnable`` within 1e-4 relative."""
    xr = x.clone().requires_grad_()
    ref = _as_tuple(run(model, xr))
    gen = _gen(1)
    weights = [torch.randn(r.shape, generator=gen) for r in ref]
    model.zero_grad()
    sum((r * w).sum() for r, w in zip(ref, weights)).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    options = {"cache_dir": cache_dir} if backend == "cpu" else {}
    cm = snncc.compile(model, x, backend=backend, **options)
    if backend == "cpu":
        kernels = cm.program.kernels.values()
        assert kernels and all(k.info.family == "expr" for k in kernels)
    xs = x.clone().requires_grad_()
    got = _as_tuple(cm(xs))
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert g.shape == r.shape
        assert torch.equal(g, r), f"output {i}: {int((g != r).sum())} of {r.numel()} differ"
    spikes = ref[0].detach()
    assert 0 < int((spikes != 0).sum()) < spikes.numel(), "degenerate case: all or no spikes"
    family = ", ".join(sorted(_charges(cm)))
    FIGURES.note_outputs(family, backend, got, ref)
    sum((g * w).sum() for g, w in zip(got, weights)).backward()
    FIGURES.note(family, backend, "grad rel (L2)", grad_rel(xs.grad, xr.grad))
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=grad_atol(xr.grad))
    assert want, "no parameter gradient to compare"
    for name, w in want.items():
        g = cm.program.params[name].grad
        assert g is not None, f"no gradient for {name}"
        FIGURES.note(family, backend, "grad rel (L2)", grad_rel(g, w))
        torch.testing.assert_close(g, w, rtol=1e-4, atol=grad_atol(w), msg=name)
    for name in learnable:
        assert name in want and float(want[name].abs().sum()) > 0, f"{name}: nothing tested"
    return cm


def _charges(cm) -> set[str]:
    g = cm.ir
    return {NeuronSpec.from_dict(g.attrs(n)["neuron"]).charge for n in g.iter_ops("neuron")}


# --------------------------------------------------------------------------- Alpha


def _alpha_step_net(mech: str) -> nn.Sequential:
    """Per-neuron alpha > beta, learnable beta and threshold; the last returns every state."""
    return nn.Sequential(
        nn.Linear(6, 10),
        snn.Alpha(
            alpha=torch.linspace(0.85, 0.95, 10),
            beta=torch.linspace(0.5, 0.8, 10),
            init_hidden=True,
            reset_mechanism=mech,
            learn_beta=True,
            learn_threshold=True,
        ),
        nn.Linear(10, 4),
        snn.Alpha(alpha=0.9, beta=0.7, init_hidden=True, output=True, reset_mechanism=mech),
    )


class LoopAlpha(nn.Module):
    """The tutorial loop: (spk, syn_exc, syn_inh, mem) threaded by hand, all four recorded."""

    def __init__(self, mech: str) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.lif = snn.Alpha(
            alpha=0.9,
            beta=0.8,
            threshold=0.5,
            reset_mechanism=mech,
            learn_threshold=True,
            spike_grad=surrogate.fast_sigmoid(slope=10),
        )

    def forward(self, x: torch.Tensor):
        syn_exc, syn_inh, mem = self.lif.reset_mem()
        recs: list[list[torch.Tensor]] = [[], [], [], []]
        for xt in x:
            spk, syn_exc, syn_inh, mem = self.lif(self.fc(xt), syn_exc, syn_inh, mem)
            for rec, v in zip(recs, (spk, syn_exc, syn_inh, mem)):
                rec.append(v)
        return tuple(torch.stack(r) for r in recs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mech", ["subtract", "zero", "none"])
def test_alpha_per_step(mech: str, backend: str, cache_dir: str) -> None:
    net = _randomise(_alpha_step_net(mech), 3, gain=4.0)
    x = torch.randn(10, B, 6, generator=_gen(3)) * 2.0 + 1.0
    cm = check(net, x, snntorch_step_run, backend, cache_dir, learnable=("1.beta", "1.threshold"))
    assert _charges(cm) == {"snntorch_alpha"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mech", ["subtract", "zero"])
def test_alpha_loop_every_state(mech: str, backend: str, cache_dir: str) -> None:
    """syn_inh is the 'current' output with extra current_inh=1; syn_exc the plain one."""
    net = _randomise(LoopAlpha(mech), 4, gain=3.0)
    x = torch.randn(12, B, 6, generator=_gen(4)) + 0.5
    cm = check(net, x, _call, backend, cache_dir, learnable=("lif.threshold",))
    specs = [NeuronSpec.from_dict(cm.ir.attrs(n)["neuron"]) for n in cm.ir.iter_ops("neuron")]
    currents = sorted(s.extra.get("current_inh", 0.0) for s in specs if s.output == "current")
    assert currents == [0.0, 1.0]


def test_alpha_learn_alpha_raises_in_snntorch_itself() -> None:
    """Why Alpha's alpha is always a buffer here: snnTorch 1.0 cannot build learn_alpha=True."""
    with pytest.raises(TypeError, match="parameter 'alpha'"):
        snn.Alpha(alpha=0.9, beta=0.8, learn_alpha=True)


# --------------------------------------------------------------------------- Lapicque


def _lapicque(kind: str, mech: str, n: int = 8, **kw) -> nn.Module:
    common = {"reset_mechanism": mech, "learn_threshold": True, **kw}
    if kind == "beta":  # R = 1 (an int64 buffer), C derived from the learnable beta
        return snn.Lapicque(beta=0.9, learn_beta=True, **common)
    # snnTorch 1.0 cannot build learn_beta=True with R or C given (it registers beta twice)
    if kind == "beta_R":  # C derived from beta at construction, a plain buffer
        return snn.Lapicque(beta=0.85, R=2.0, time_step=0.5, **common)
    if kind == "beta_C":  # R derived from beta at construction, a plain buffer
        return snn.Lapicque(beta=0.88, C=0.3, **common)
    lif = snn.Lapicque(R=5.0, C=0.02, time_step=0.01, **common)
    lif.C = torch.linspace(0.01, 0.03, n)  # one C per neuron (a buffer set after construction)
    return lif


class LoopLapicque(nn.Module):
    def __init__(self, kind: str, mech: str) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.lif = _lapicque(kind, mech)

    def forward(self, x: torch.Tensor):
        mem = self.lif.reset_mem()
        spk_rec, mem_rec = [], []
        for xt in x:
            spk, mem = self.lif(self.fc(xt), mem)
            spk_rec.append(spk)
            mem_rec.append(mem)
        return torch.stack(spk_rec), torch.stack(mem_rec)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind, mech", [("beta", "subtract"), ("beta_R", "zero"), ("beta_C", "none"), ("RC", "zero")]
)
def test_lapicque_loop(kind: str, mech: str, backend: str, cache_dir: str) -> None:
    net = _randomise(LoopLapicque(kind, mech), 5, gain=4.0)
    x = torch.randn(12, B, 6, generator=_gen(5)) * 2.0 + 1.0
    learnable = ("lif.threshold",) + (("lif.beta",) if kind == "beta" else ())
    cm = check(net, x, _call, backend, cache_dir, learnable=learnable)
    node = next(iter(cm.ir.iter_ops("neuron")))
    roles = NeuronSpec.from_dict(cm.ir.attrs(node)["neuron"]).roles
    assert ("beta" in roles) == (kind == "beta") and ("C" in roles) == (kind != "beta")


@pytest.mark.parametrize("backend", BACKENDS)
def test_lapicque_per_step(backend: str, cache_dir: str) -> None:
    net = nn.Sequential(
        nn.Linear(6, 10),
        _lapicque("beta", "subtract", init_hidden=True),
        nn.Linear(10, 4),
        _lapicque("RC", "zero", 4, init_hidden=True, output=True),
    )
    _randomise(net, 6, gain=4.0)
    x = torch.randn(10, B, 6, generator=_gen(6)) * 2.0 + 1.0
    check(net, x, snntorch_step_run, backend, cache_dir, learnable=("1.beta", "1.threshold"))


# --------------------------------------------------------------------------- RSynaptic


def _rsynaptic(kind: str, mech: str, reset_delay: bool = True, **kw) -> nn.Module:
    common = {
        "alpha": 0.8,
        "beta": 0.9,
        "reset_mechanism": mech,
        "reset_delay": reset_delay,
        "learn_alpha": True,
        "learn_beta": True,
        **kw,
    }
    if kind == "linear":
        return snn.RSynaptic(linear_features=8, **common)
    if kind == "V":
        return snn.RSynaptic(all_to_all=False, V=torch.linspace(-0.5, 0.8, 8), **common)
    return snn.RSynaptic(conv2d_channels=2, kernel_size=3, **common)


class LoopRSynaptic(nn.Module):
    def __init__(self, kind: str, mech: str, reset_delay: bool) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, 2, 3, padding=1) if kind == "conv" else nn.Linear(6, 8)
        self.rsyn = _rsynaptic(kind, mech, reset_delay)
        self.shape = (B, 2, 5, 5) if kind == "conv" else (B, 8)

    def forward(self, x: torch.Tensor):
        # shaped zeros, not init_rsynaptic()'s empty tensors: snnTorch's reset_delay=False
        # path divides the spk argument, which must broadcast against the input
        spk, syn, mem = (torch.zeros(self.shape) for _ in range(3))
        recs: list[list[torch.Tensor]] = [[], [], []]
        for xt in x:
            spk, syn, mem = self.rsyn(self.inp(xt), spk, syn, mem)
            for rec, v in zip(recs, (spk, syn, mem)):
                rec.append(v)
        return tuple(torch.stack(r) for r in recs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind, mech",
    [("linear", "subtract"), ("linear", "zero"), ("V", "zero"), ("V", "none"), ("conv", "zero")],
)
def test_rsynaptic_loop(kind: str, mech: str, backend: str, cache_dir) -> None:
    net = _randomise(LoopRSynaptic(kind, mech, True), 7, gain=1.5)
    shape = (10, B, 1, 5, 5) if kind == "conv" else (10, B, 6)
    x = torch.randn(shape, generator=_gen(7)) + 0.3
    rec = "rsyn.V" if kind == "V" else "rsyn.recurrent.weight"
    cm = check(net, x, _call, backend, cache_dir, learnable=("rsyn.alpha", "rsyn.beta", rec))
    charge = "snntorch_rsynaptic_v" if kind == "V" else "snntorch_rsynaptic"
    assert _charges(cm) == {charge}
    assert all(
        not NeuronSpec.from_dict(cm.ir.attrs(n)["neuron"]).reset_delay
        for n in cm.ir.iter_ops("neuron")
    )
    if kind != "V":
        assert "recurrent" in [g["kind"] for g in cm.ir.meta["groups"]]


def test_rsynaptic_reset_delay_false_is_refused_with_snntorchs_reason() -> None:
    """snnTorch 1.0's RSynaptic returns the same values with reset_delay False and True (its
    correction goes to a local variable) and raises when its spk argument is None (how
    snncc runs a module whose state it keeps): refused, saying to use reset_delay=True."""
    x = torch.randn(10, B, 6, generator=_gen(8)) + 0.3
    outs = []
    for reset_delay in (True, False):
        torch.manual_seed(0)
        net = _randomise(LoopRSynaptic("linear", "subtract", reset_delay), 8, gain=1.5)
        with torch.no_grad():
            outs.append(net(x))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert 0 < int(outs[0][0].sum()) < outs[0][0].numel()
    with pytest.raises(UnsupportedError, match="reset_delay=False.*construct it with reset_delay"):
        snncc.compile(net, x)
    per_step = nn.Sequential(nn.Linear(6, 8), _rsynaptic("linear", "zero", False, init_hidden=True))
    with pytest.raises(UnsupportedError, match="it raises when spk is None"):
        snncc.compile(per_step, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rsynaptic_per_step_and_streaming(backend: str, cache_dir: str) -> None:
    net = nn.Sequential(
        nn.Linear(6, 8),
        _rsynaptic("linear", "subtract", init_hidden=True),
        nn.Linear(8, 5),
        snn.RSynaptic(alpha=0.7, beta=0.8, all_to_all=False, V=0.4, init_hidden=True, output=True),
    )
    _randomise(net, 9, gain=2.0)
    x = torch.randn(12, B, 6, generator=_gen(9)) + 0.5
    cm = check(net, x, snntorch_step_run, backend, cache_dir, learnable=("1.alpha", "3.V"))
    with torch.no_grad():
        full, _ = cm.run(x)
        for k in (1, 5):
            a, state = cm.run(x[:k])
            b, _ = cm.run(x[k:], state)
            assert all(torch.equal(torch.cat([u, v]), w) for u, v, w in zip(a, b, full))


# --------------------------------------------------------------------------- surrogates


class SurrogateLoop(nn.Module):
    """One Leaky per new surrogate, at snnTorch's defaults and with the second parameter set
    (values float32 cannot hold exactly), fed the same current (large, so SFS's x > B is
    reached)."""

    GRADS = (
        surrogate.spike_rate_escape(slope=5),
        surrogate.SFS(slope=10),
        surrogate.spike_rate_escape(beta=0.7, slope=5),
        surrogate.SFS(slope=10, B=0.3),
    )

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.lifs = nn.ModuleList(
            snn.Leaky(beta=0.8, spike_grad=g, learn_threshold=True) for g in self.GRADS
        )

    def forward(self, x: torch.Tensor):
        mems = [lif.init_leaky() for lif in self.lifs]
        recs: list[list[torch.Tensor]] = [[] for _ in range(2 * len(self.lifs))]
        for xt in x:
            cur = self.fc(xt)
            for k, lif in enumerate(self.lifs):
                spk, mems[k] = lif(cur, mems[k])
                recs[2 * k].append(spk)
                recs[2 * k + 1].append(mems[k])
        return tuple(torch.stack(r) for r in recs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_surrogates_match_snntorch_gradients(backend: str, cache_dir: str) -> None:
    net = _randomise(SurrogateLoop(), 10, gain=6.0)
    x = torch.randn(8, B, 6, generator=_gen(10)) * 2.0 + 1.0
    xr = x.clone()
    with torch.no_grad():
        ref = net(xr)
    mem_shift = []  # the surrogates' argument reaches x > 1 (SFS's support): a real test
    with torch.no_grad():
        m = net.lifs[1].init_leaky()
        for xt in x:
            _, m = net.lifs[1](net.fc(xt), m)
            mem_shift.append(m - net.lifs[1].threshold)
    assert float(torch.stack(mem_shift).max()) > 1.0
    cm = check(
        net, x, _call, backend, cache_dir, learnable=tuple(f"lifs.{i}.threshold" for i in range(4))
    )
    specs = [NeuronSpec.from_dict(cm.ir.attrs(n)["neuron"]) for n in cm.ir.iter_ops("neuron")]
    assert {(s.surrogate, *s.surrogate_params.items()) for s in specs} == {
        ("spike_rate_escape", ("beta", 1.0)),
        ("sparse_fast_sigmoid", ("B", 1.0)),
        ("spike_rate_escape", ("beta", 0.7)),
        ("sparse_fast_sigmoid", ("B", 0.3)),
    }
    assert all(torch.equal(a, b) for a, b in zip(ref, cm(x)))


@pytest.mark.parametrize(
    "factory, name, alpha, params",
    [
        (lambda: surrogate.spike_rate_escape(), "spike_rate_escape", 25.0, {"beta": 1.0}),
        (lambda: surrogate.spike_rate_escape(beta=1, slope=3), "spike_rate_escape", 3.0, None),
        (lambda: surrogate.spike_rate_escape(beta=0.7, slope=3), "spike_rate_escape", 3.0, 0.7),
        (lambda: surrogate.spike_rate_escape(beta=2), "spike_rate_escape", 25.0, 2.0),
        (lambda: surrogate.SFS(), "sparse_fast_sigmoid", 25.0, {"B": 1.0}),
        (lambda: surrogate.SFS(slope=0.5, B=1), "sparse_fast_sigmoid", 0.5, None),
        (lambda: surrogate.SFS(slope=0.5, B=0.3), "sparse_fast_sigmoid", 0.5, 0.3),
        (lambda: surrogate.SFS(B=-0.2), "sparse_fast_sigmoid", 25.0, -0.2),
    ],
)
def test_new_surrogates_are_snntorchs_bit_for_bit(factory, name: str, alpha: float, params):
    """The surrogate alone: snncc's spike (torch lowering) against snnTorch's autograd
    Function, forward and gradient bit for bit, around 0 and around SFS's B, at snnTorch's
    default second parameter and others; ``from_snntorch`` (name, alpha only) converts the
    defaults and refuses the others rather than drop them."""
    from snncc.frontend.surrogates import from_snntorch, snntorch_surrogate
    from snncc.surrogate import spike_gt

    key = "beta" if name == "spike_rate_escape" else "B"
    if params is None:
        params = {key: 1.0}
    elif not isinstance(params, dict):
        params = {key: params}
    assert snntorch_surrogate(factory()) == (name, alpha, params)
    if params[key] == 1.0:
        assert from_snntorch(factory()) == (name, alpha)
    else:
        with pytest.raises(UnsupportedError, match="use snncc.frontend.surrogates.snntorch_sur"):
            from_snntorch(factory())
    gen = _gen(12)
    x = torch.randn(300, generator=gen) * 1.5
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1.0, 1e-8, 0.3, -0.2, 0.7])])
    x = torch.cat([x, torch.tensor([0.3, -0.2]).nextafter(torch.tensor(9.0))])
    g = torch.rand(x.shape, generator=gen) + 0.5
    grads = []
    for fn in (factory(), lambda t: spike_gt(t, name, alpha, params)):
        xi = x.clone().requires_grad_()
        y = fn(xi)
        y.backward(g)
        grads.append((y.detach(), xi.grad))
    (y_ref, g_ref), (y, got) = grads
    assert torch.equal(y, y_ref) and torch.equal(got, g_ref)
    assert float(got.abs().sum()) > 0


@pytest.mark.parametrize(
    "spike_grad, match",
    [
        (lambda: surrogate.SSO(), "SSO is not supported: its backward is stochastic"),
        (lambda: surrogate.LSO(), "LSO is not supported: it calls snnTorch's stochastic"),
        (lambda: surrogate.custom_surrogate(lambda i, g, o: g), "arbitrary Python function"),
        (lambda: surrogate.SFS(B=float("nan")), r"SFS B=nan; snncc needs a number|finite"),
    ],
    ids=["SSO", "LSO", "custom", "SFS_B_nan"],
)
def test_unreproducible_surrogates_are_refused_by_name(spike_grad, match: str) -> None:
    net = nn.Sequential(
        nn.Linear(6, 4), snn.Leaky(beta=0.9, init_hidden=True, spike_grad=spike_grad())
    )
    with pytest.raises(UnsupportedError, match=match):
        snncc.compile(net, torch.randn(4, B, 6))


def test_lso_raises_in_snntorch_itself() -> None:
    """The reason LSO's message gives: snnTorch 1.0's LSO passes two arguments to a
    three-argument autograd Function."""
    with pytest.raises(TypeError, match="variance"):
        surrogate.LSO()(torch.randn(3))


# --------------------------------------------------------------------------- jax and ONNX


@pytest.mark.parametrize("which", ["alpha", "lapicque", "rsynaptic_linear", "rsynaptic_V"])
def test_jax_backend(which: str, cache_dir: str) -> None:
    x = torch.randn(10, B, 6, generator=_gen(11)) + 0.5
    if which == "alpha":
        net, learnable = _randomise(LoopAlpha("subtract"), 4, gain=3.0), ("lif.threshold",)
    elif which == "lapicque":
        net = _randomise(LoopLapicque("beta", "zero"), 5, gain=4.0)
        learnable, x = ("lif.beta", "lif.threshold"), x * 2
    else:
        kind = which.split("_")[1]
        net = _randomise(LoopRSynaptic(kind, "subtract", True), 7, gain=1.5)
        learnable = ("rsyn.alpha", "rsyn.V" if kind == "V" else "rsyn.recurrent.weight")
    FIGURES.jax_compare(net, x, cache_dir, learnable=learnable)


def _dyadic(model: nn.Module, seed: int) -> nn.Module:
    """Weights k/8 and biases k/16: sums of spikes (or dyadic inputs) times them are exact."""
    gen = _gen(seed)
    for name, p in model.named_parameters():
        if name.endswith("weight") or name.endswith("bias"):
            scale = 8.0 if name.endswith("weight") else 16.0
            with torch.no_grad():
                p.copy_(torch.randint(-3, 6, p.shape, generator=gen) / scale)
    return model


ONNX_MODELS = {
    "alpha": lambda: nn.Sequential(
        nn.Linear(6, 8), snn.Alpha(alpha=0.9, beta=0.8, init_hidden=True, output=True)
    ),
    "lapicque_beta": lambda: nn.Sequential(
        nn.Linear(6, 8), _lapicque("beta", "subtract", init_hidden=True, output=True)
    ),
    "lapicque_rc": lambda: nn.Sequential(
        nn.Linear(6, 8), _lapicque("RC", "zero", init_hidden=True, output=True)
    ),
    "rsynaptic": lambda: nn.Sequential(
        nn.Linear(6, 8), _rsynaptic("linear", "zero", init_hidden=True, output=True)
    ),
    "rsynaptic_v": lambda: nn.Sequential(
        nn.Linear(6, 8), _rsynaptic("V", "subtract", init_hidden=True, output=True)
    ),
}


def _dyadic_input(t: int, b: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((t, b, 6)) * 1.5 + 0.8
    return (np.round(x * 8) / 8).astype(np.float32)


@pytest.mark.parametrize("name", list(ONNX_MODELS))
def test_onnx_export_runs_and_equals_the_reference(name: str) -> None:
    pytest.importorskip("onnxruntime")
    from test_onnx import assert_exact, probe_all, run_onnx, run_ref

    from snncc.exchange.onnx_export import to_onnx
    from snncc.exchange.onnx_import import from_onnx
    from snncc.ir.printer import format_graph

    model = _dyadic(ONNX_MODELS[name](), len(name))
    graph = snncc.compile(model, torch.from_numpy(_dyadic_input(8, B, 1)), backend="reference").ir
    g, probes = probe_all(graph)
    onnx_model = to_onnx(g)
    rates = []
    for t, b in [(1, 2), (13, 5)]:
        x = _dyadic_input(t, b, 10 + t)
        ys, rs = run_onnx(onnx_model, x), run_ref(g, x)
        assert_exact(ys, rs)
        for n, r in zip(probes, rs[len(graph.meta["outputs"]) :]):
            if g.op(n) == "neuron" and NeuronSpec.from_dict(g.attrs(n)["neuron"]).spiking:
                rates.append(float((r != 0).mean()))
    assert rates and any(0.0 < q < 1.0 for q in rates), f"degenerate spikes {rates}"
    assert format_graph(from_onnx(to_onnx(graph))) == format_graph(graph)


# --------------------------------------------------------------------------- NIR


def test_nir_export_rsynaptic_lapicque_lossy_and_alpha_refused(tmp_path) -> None:
    """RSynaptic is NIR's CubaLIF and Lapicque its LIF (tau = R*C, r = R), but both reset
    from the previous membrane: refused unless accept='reset_delay'; Alpha has no NIR node."""
    import nir

    from snncc.exchange.nir_export import to_nir

    x = torch.randn(6, B, 6, generator=_gen(13))
    common = {"init_hidden": True, "reset_mechanism": "zero"}
    rsyn = snn.RSynaptic(alpha=0.8, beta=0.9, linear_features=8, **common)
    ir = snncc.compile(nn.Sequential(nn.Linear(6, 8), rsyn), x).ir
    with pytest.raises(UnsupportedError, match=r"previous membrane.*accept=\('reset_delay',\)"):
        to_nir(ir, dt=1e-3)
    graph = to_nir(ir, tmp_path / "rsyn.nir", dt=1e-3, accept="reset_delay")
    (cuba,) = [v for v in graph.nodes.values() if type(v).__name__ == "CubaLIF"]
    np.testing.assert_allclose(cuba.tau_syn, 1e-3 / (1 - 0.8), rtol=1e-6)
    np.testing.assert_allclose(cuba.tau_mem, 1e-3 / (1 - 0.9), rtol=1e-6)
    assert any(type(v).__name__ == "Affine" for v in graph.nodes.values())  # the recurrence

    lap = snn.Lapicque(R=5, C=0.02, time_step=0.01, **common)
    ir = snncc.compile(nn.Sequential(nn.Linear(6, 8), lap), x).ir
    with pytest.raises(UnsupportedError, match="export with dt equal to its time_step"):
        to_nir(ir, dt=1e-3, accept="reset_delay")
    to_nir(ir, tmp_path / "lap.nir", dt=0.01, accept="reset_delay")
    (lif,) = [
        v for v in nir.read(str(tmp_path / "lap.nir")).nodes.values() if type(v).__name__ == "LIF"
    ]
    np.testing.assert_allclose(lif.tau, 5 * 0.02, rtol=1e-6)
    np.testing.assert_allclose(lif.r, 5.0)

    alpha = snn.Alpha(alpha=0.9, beta=0.8, init_hidden=True)
    ir = snncc.compile(nn.Sequential(nn.Linear(6, 8), alpha), x).ir
    with pytest.raises(UnsupportedError, match="has no NIR node"):
        to_nir(ir, dt=1e-3, accept="reset_delay")
