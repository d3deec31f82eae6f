"""snncc.nn modules against SpikingJelly 2.0's matching neurons (multi-step, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate

import snncc.nn as snn
from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.neuron import NeuronSpec

T, B, F = 16, 4, 32


def _x(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, F, generator=g) * 2.0 + 0.8


PAIRS = [
    (lambda: snn.IF(), lambda: neuron.IFNode(step_mode="m")),
    (
        lambda: snn.IF(v_reset=None, surrogate="atan", alpha=2.0, detach_reset=True),
        lambda: neuron.IFNode(
            v_reset=None, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m"
        ),
    ),
    (lambda: snn.LIF(tau=2.0), lambda: neuron.LIFNode(tau=2.0, step_mode="m")),
    (
        lambda: snn.LIF(tau=3.0, decay_input=False, v_threshold=0.5, v_reset=None),
        lambda: neuron.LIFNode(
            tau=3.0, decay_input=False, v_threshold=0.5, v_reset=None, step_mode="m"
        ),
    ),
    (lambda: snn.ParametricLIF(), lambda: neuron.ParametricLIFNode(step_mode="m")),
    (
        lambda: snn.ParametricLIF(init_tau=4.0, decay_input=False, surrogate="atan", alpha=2.0),
        lambda: neuron.ParametricLIFNode(
            init_tau=4.0, decay_input=False, surrogate_function=surrogate.ATan(), step_mode="m"
        ),
    ),
]


@pytest.mark.parametrize(("make", "make_ref"), PAIRS)
def test_module_matches_spikingjelly(make, make_ref) -> None:
    m, ref = make(), make_ref()
    x = _x().requires_grad_()
    r = torch.randn(T, B, F)
    y_ref = ref(x)
    (y_ref * r).sum().backward()
    gx_ref = x.grad.clone()
    x.grad = None
    y = m(x)
    (y * r).sum().backward()
    assert torch.equal(y, y_ref)
    assert 0 < y.sum() < y.numel()
    torch.testing.assert_close(x.grad, gx_ref, rtol=1e-5, atol=1e-6)
    if isinstance(m, snn.ParametricLIF):
        assert torch.equal(m.w.detach(), ref.w.detach())
        torch.testing.assert_close(m.w.grad, ref.w.grad, rtol=1e-5, atol=1e-6)


def test_li_matches_nonspiking_lif() -> None:
    x = _x(1)
    ref = torch.stack(neuron.NonSpikingLIFNode(tau=2.0)(x))
    assert torch.equal(snn.LI(tau=2.0)(x), ref)


def test_fresh_state_every_forward() -> None:
    m = snn.LIF()
    x = _x(2)
    assert torch.equal(m(x), m(x))


def test_network_training_step_matches_spikingjelly() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        layer.Linear(F, 10, step_mode="m"), neuron.ParametricLIFNode(step_mode="m")
    )
    net = torch.nn.Sequential(torch.nn.Linear(F, 10), snn.ParametricLIF())
    net.load_state_dict(ref.state_dict())
    x = _x(3)
    out_ref = ref(x)
    out_ref.mean(0).sum().backward()
    out = net(x)
    out.mean(0).sum().backward()
    functional.reset_net(ref)
    assert torch.equal(out, out_ref)
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_specs() -> None:
    assert snn.IF().spec() == NeuronSpec(model="if", charge="sj_if")
    s = snn.LIF(tau=3.0, decay_input=False, v_reset=None).spec()
    assert (s.charge, s.tau, s.reset, s.v_reset, s.v_init) == ("sj_lif", 3.0, "subtract", None, 0.0)
    p = snn.ParametricLIF(init_tau=2.0)
    assert p.spec().charge == "sj_plif_decay_input" and p.spec().learnable == ("w",)
    assert p.w.item() == pytest.approx(-math.log(1.0)) and p.w.dtype == torch.float32
    li = snn.LI(tau=5.0).spec()
    assert (li.charge, li.output, li.reset, li.tau) == ("snncc_li", "membrane", "none", 5.0)
    assert snn.IF(surrogate="atan", alpha=None).alpha == 2.0
    assert "sj_lif_decay_input" in repr(snn.LIF())


def test_errors() -> None:
    with pytest.raises(ShapeError, match=r"\[T, B, \.\.\.\]"):
        snn.LIF()(torch.zeros(5))
    with pytest.raises(UnsupportedError, match="tau must be > 1"):
        snn.LIF(tau=1.0)
    with pytest.raises(UnsupportedError, match="surrogate 'nope'"):
        snn.IF(surrogate="nope")
