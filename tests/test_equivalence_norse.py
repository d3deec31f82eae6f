"""Acceptance: Norse models compiled for the reference backend give EXACTLY Norse's outputs.

Each test builds a Norse 1.1 model, runs it eagerly on the CPU the way Norse
users do (a ``SequentialState`` of cells called once per step with the state
threaded, a ``SequentialState`` of sequence modules fed ``[T, B, ...]``, or a
module whose ``forward`` holds the time loop), runs ``snncc.compile(model,
x)`` on the same input, and requires bit-identical outputs (0 mismatching
elements, non-degenerate spikes) and the gradients of one scalar loss wrt
the input, the weights and learnable Norse parameters within 1e-4 relative.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snncc

norse = pytest.importorskip("norse.torch")
from checks import assert_fires  # noqa: E402
from norse.torch.functional.leaky_integrator import LIParameters  # noqa: E402
from peer_models import (  # noqa: E402
    NorseBoxLearnable,
    norse_cell_stack,
    norse_lif_params,
    norse_per_step,
    norse_sequence,
    norse_sequence_stack,
)
from peer_models import randomise as _randomise  # noqa: E402
from tolerances import grad_atol  # noqa: E402

B = 3

#: parameters that make the default-initialised layers fire at moderate rates
P = norse_lif_params()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call(model: nn.Module, x: torch.Tensor):
    return model(x)


def _as_tuple(y) -> tuple[torch.Tensor, ...]:
    return tuple(v for v in y if isinstance(v, torch.Tensor)) if isinstance(y, tuple) else (y,)


def _loss(ys: tuple[torch.Tensor, ...], seed: int) -> torch.Tensor:
    gen = _gen(seed)
    return sum((y * torch.randn(y.shape, generator=gen)).sum() for y in ys)


def _check(model: nn.Module, x: torch.Tensor, run, spikes_at: int = 0, masks=None) -> None:
    cm = snncc.compile(model, x)
    xr = x.clone().requires_grad_()
    ref = _as_tuple(run(model, xr))
    xs = x.clone().requires_grad_()
    got = _as_tuple(cm(xs))
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert torch.equal(g, r), f"{int((g != r).sum())} of {r.numel()} elements differ"
    assert_fires(cm.ir, x)
    model.zero_grad()
    _loss(ref, 2).backward()
    _loss(got, 2).backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=grad_atol(xr.grad))
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.grad is not None]
    assert names
    for name in names:
        got_grad = cm.program.params[name].grad
        want = params[name].grad
        if masks and name in masks:  # Norse's autapse hook zeroes the diagonal's gradient
            got_grad = got_grad * masks[name]
        torch.testing.assert_close(got_grad, want, rtol=1e-4, atol=grad_atol(want), msg=name)
    return cm


def _spiking(model: nn.Module, x: torch.Tensor, layer: int) -> None:
    """The layer's spikes in Norse's own run are non-degenerate."""
    state, zs = None, []
    with torch.no_grad():
        for xt in x:
            h = xt
            state = [None] * len(model) if state is None else state
            for i, m in enumerate(model):
                if model.stateful_layers[i]:
                    h, state[i] = m(h, state[i])
                else:
                    h = m(h)
                if i == layer:
                    zs.append(h)
    z = torch.stack(zs)
    assert 0 < int(z.sum()) < z.numel(), "degenerate case: all or no spikes"


# --------------------------------------------------------------------------- SequentialState


@pytest.mark.parametrize("T", [1, 8, 32])
def test_sequential_state_of_cells(T: int) -> None:
    model = norse_cell_stack()
    _randomise(model, T)
    x = torch.randn(T, B, 6, generator=_gen(T)) * 2 + 1.0
    _check(model, x, norse_per_step)
    _spiking(model, x, 1)


def test_sequential_state_with_recurrent_cell() -> None:
    model = norse.SequentialState(
        nn.Linear(6, 8), norse.LIFRecurrentCell(8, 7, P), nn.Linear(7, 3), norse.LICell()
    )
    _randomise(model, 13, gain=2.5)
    x = torch.randn(12, B, 6, generator=_gen(13)) * 2 + 1.0
    diag = torch.ones(7, 7) - torch.eye(7)
    cm = _check(model, x, norse_per_step, masks={"1.recurrent_weights": diag})
    assert "recurrent" in [g["kind"] for g in cm.ir.meta["groups"]]
    _spiking(model, x, 1)


@pytest.mark.parametrize("T", [1, 8, 32])
def test_sequential_state_of_sequence_modules(T: int) -> None:
    """LIF / LI are multi-step modules: the model is fed [T, B, ...] at once."""
    model = norse_sequence_stack()
    _randomise(model, 20 + T)
    x = torch.randn(T, B, 6, generator=_gen(T)) * 2 + 1.0
    cm = _check(model, x, norse_sequence)
    assert cm.ir.meta["step_mode"] == "m"
    z = model[1](model[0](x))[0]
    assert 0 < int(z.sum()) < z.numel()


def test_lifbox_and_learnable_parameters() -> None:
    """LIFBoxCell (reset_subtract, own dt) and an LIFCell whose tau_mem_inv is an nn.Parameter."""

    model = NorseBoxLearnable()
    _randomise(model, 4)
    x = torch.randn(12, B, 6, generator=_gen(4)) * 2 + 1.0
    cm = _check(model, x, norse_per_step)
    assert "tau" in cm.program.params and cm.program.params["tau"].grad is not None
    _spiking(model.seq, x, 1)


# --------------------------------------------------------------------------- explicit loops


class LoopNet(nn.Module):
    """The Norse tutorial style: the loop in forward, states threaded by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.lif = norse.LIFCell(P)
        self.rec = norse.LIFRecurrentCell(8, 6, P)
        self.out = norse.LICell(LIParameters(tau_mem_inv=torch.as_tensor(150.0)))

    def forward(self, x: torch.Tensor):
        seq_length, _, _ = x.shape
        s1 = s2 = so = None
        voltages, spikes = [], []
        for ts in range(seq_length):
            z, s1 = self.lif(self.fc(x[ts]), s1)
            z, s2 = self.rec(z, s2)
            vo, so = self.out(z, so)
            voltages += [vo]
            spikes.append(z)
        return torch.stack(voltages), torch.stack(spikes), so


@pytest.mark.parametrize("T", [1, 8, 32])
def test_loop_with_recurrent_cell(T: int) -> None:
    model = LoopNet()
    _randomise(model, 30 + T, gain=2.5)
    x = torch.randn(T, B, 6, generator=_gen(T)) * 2 + 1.0
    diag = torch.ones(6, 6) - torch.eye(6)
    cm = _check(model, x, _call, masks={"rec.recurrent_weights": diag})
    assert [g["kind"] for g in cm.ir.meta["groups"]].count("recurrent") == 1
    with torch.no_grad():
        spikes = model(x)[1]
    if T > 1:
        assert 0 < int(spikes.sum()) < spikes.numel()


def test_loop_over_sequential_state_and_state_fields() -> None:
    """``out, s = self.seq(x[t], s)`` and a state field (``s1.v``) used as an output."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = norse.SequentialState(nn.Linear(6, 8), norse.LIFCell(P))
            self.lif = norse.LIFCell(P)

        def forward(self, x: torch.Tensor):
            s = s1 = None
            zs, vs, is_ = [], [], []
            for xt in x:
                h, s = self.seq(xt, s)
                z, s1 = self.lif(h * 2.0, s1)
                zs.append(z)
                vs.append(s1.v)
                is_.append(s1.i)
            return torch.stack(zs), torch.stack(vs), torch.stack(is_)

    model = Net()
    _randomise(model, 9)
    x = torch.randn(10, B, 6, generator=_gen(9)) * 2 + 1.0
    _check(model, x, _call)


# --------------------------------------------------------------------------- streaming


def test_streaming_recurrent_model() -> None:
    model = LoopNet()
    _randomise(model, 11, gain=2.5)
    x = torch.randn(16, B, 6, generator=_gen(11)) * 2 + 1.0
    cm = snncc.compile(model, x)
    with torch.no_grad():
        full, _ = cm.run(x)
        ref = model(x)
        assert torch.equal(full[0], ref[0]) and torch.equal(full[1], ref[1])
        for k in (1, 9):
            a, state = cm.run(x[:k])
            b, _ = cm.run(x[k:], state)
            for i in range(2):
                assert torch.equal(torch.cat([a[i], b[i]]), full[i])
