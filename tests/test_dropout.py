"""Dropout as the source framework applies it: in training mode on every backend, never dropped.

- reference and cpu (torch ops, torch's global generator, as eager torch):
  bit for bit with eager SpikingJelly/torch under the same ``torch.manual_seed``
  (layer-first draws equal the eager draws for multi-step sources, and for a
  single-step source with one dropout layer; elsewhere equal in distribution);
- jax (its own generator, option ``seed``, ``jax_fn(..., key)``): equal in
  distribution, checked below: the kept fraction within 5 binomial standard
  deviations of 1 - p, kept values scaled exactly as torch scales them, one
  mask per sequence for SpikingJelly's ``layer.Dropout``, a fresh one per
  element for ``torch.nn.Dropout``;
- eval mode drops it (identity), and a program whose eval-mode dropout was
  removed refuses to be switched to training mode;
- exporters refuse a training-mode dropout (ONNX and NIR have none).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron

import snncc
from snncc.backends.reference import ReferenceProgram
from snncc.errors import UnsupportedError

P_SHARED, P_FLAT = 0.5, 0.3


def sj_net(training: bool) -> torch.nn.Sequential:
    """Multi-step SpikingJelly: a shared-over-time layer.Dropout and a per-element nn.Dropout."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Linear(10, 16),
        layer.Dropout(P_SHARED),  # one mask per sequence
        neuron.IFNode(),
        layer.SeqToANNContainer(torch.nn.Linear(16, 12), torch.nn.Dropout(P_FLAT)),  # per element
        neuron.IFNode(),
    )
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[0].bias.fill_(0.4)
    return net.train(training)


def x_in(T: int = 6, B: int = 4) -> torch.Tensor:
    return torch.rand(T, B, 10, generator=torch.Generator().manual_seed(1)) * 2


def eager(net: torch.nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    """SpikingJelly's output and gradients of sum(y * w) under ``torch.manual_seed(seed)``."""
    functional.reset_net(net)
    net.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    torch.manual_seed(seed)
    y = net(xx)
    w = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    (y * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    grads["<input>"] = xx.grad.clone()
    functional.reset_net(net)
    return y.detach(), grads


def compiled(module: torch.nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    xx = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    y = module(xx)
    w = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    (y * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    grads["<input>"] = xx.grad.clone()
    return y.detach(), grads


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_training_dropout_is_spikingjellys_bit_for_bit(backend: str) -> None:
    net, x = sj_net(training=True), x_in()
    cm = snncc.compile(net, x, backend=backend)
    assert [cm.ir.op(n) for n in cm.ir.iter_ops("dropout")] == ["dropout", "dropout"]
    module = cm.to_torch()
    assert module.training  # compiled in training mode: starts there, as the source model
    for seed in (3, 4):
        y_sj, g_sj = eager(net, x, seed)
        y, g = compiled(module, x, seed)
        assert torch.equal(y, y_sj), f"{(y != y_sj).sum().item()} outputs differ"
        assert 0 < y.sum() < y.numel()
        for name, want in g_sj.items():
            torch.testing.assert_close(g[name], want, rtol=1e-5, atol=1e-6, msg=name)
    # no seed: every call draws new masks, as eager torch does
    a, b = cm(x), cm(x)
    assert not torch.equal(a, b)
    # eval() switches dropout off, as in the source
    module.eval()
    net.eval()
    functional.reset_net(net)
    with torch.no_grad():
        assert torch.equal(module(x), net(x))


def test_single_step_source_draws_one_mask_per_step_like_eager() -> None:
    """A step-mode 's' model calls nn.Dropout once per step: the reference draws the same."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Linear(10, 16), torch.nn.Dropout(P_FLAT), neuron.LIFNode(tau=2.0)
    ).train()
    x = x_in()
    cm = snncc.compile(net, x, backend="reference")
    assert cm.ir.meta["step_mode"] == "s"
    functional.reset_net(net)
    torch.manual_seed(7)
    with torch.no_grad():
        want = torch.stack([net(xt) for xt in x])
    torch.manual_seed(7)
    assert torch.equal(cm(x).detach(), want)


def _kept_fraction_ok(kept: int, n: int, p: float) -> bool:
    """Within 5 binomial standard deviations of (1 - p) n."""
    mean, sd = (1 - p) * n, math.sqrt(n * p * (1 - p))
    return abs(kept - mean) <= 5 * sd


def _dropout_only(shared: bool) -> torch.nn.Module:
    if shared:
        return torch.nn.Sequential(layer.Dropout(P_SHARED, step_mode="m")).train()
    return torch.nn.Sequential(layer.SeqToANNContainer(torch.nn.Dropout(P_FLAT))).train()


@pytest.mark.parametrize("backend", ["reference", "jax"])
@pytest.mark.parametrize("shared", [True, False], ids=["layer.Dropout", "nn.Dropout"])
def test_dropout_distribution(backend: str, shared: bool, tmp_path) -> None:
    """Kept fraction, the kept values' exact scale, and which axes share a mask."""
    p = P_SHARED if shared else P_FLAT
    T, B, N = 5, 40, 50
    x = torch.rand(T, B, N, generator=torch.Generator().manual_seed(2)) + 0.5
    opts = {"cache_dir": str(tmp_path)} if backend == "jax" else {}
    cm = snncc.compile(_dropout_only(shared), x[:, :1], backend=backend, **opts)
    y, y2 = (np.asarray(cm(x)) for _ in range(2))
    xn = x.numpy()
    kept = y != 0
    scale = np.float32(1.0) / np.float32(1.0 - p)  # torch: noise.div_(1 - p); x * noise
    assert np.array_equal(y[kept], xn[kept] * scale)
    if shared:  # one mask [B, N] for the whole sequence
        assert (kept == kept[:1]).all()
        assert _kept_fraction_ok(int(kept[0].sum()), B * N, p)
    else:  # every element of [T, B, N] on its own
        assert _kept_fraction_ok(int(kept.sum()), T * B * N, p)
        # masks at different steps are independent: agreement near p^2 + (1-p)^2
        agree = float((kept[0] == kept[1]).mean())
        assert abs(agree - (p * p + (1 - p) ** 2)) < 0.05
    assert not np.array_equal(y, y2)  # a new mask every run


def test_jax_dropout_is_seeded_and_needs_a_key(tmp_path) -> None:
    import jax

    net, x = sj_net(training=True), x_in()
    a, b, c = (
        snncc.compile(net, x, backend="jax", cache_dir=str(tmp_path), seed=seed)
        for seed in (5, 5, 6)
    )
    ya, yb, yc = (np.asarray(m(x)) for m in (a, b, c))
    assert np.array_equal(ya, yb) and not np.array_equal(ya, yc)
    assert not np.array_equal(np.asarray(a(x)), ya)  # the key advances on every run
    assert 0 < ya.sum() < ya.size
    params = a.program.params
    with pytest.raises(UnsupportedError, match=r"needs a random key.*jax\.random\.key"):
        a.jax_fn(params, x.numpy())
    key = jax.random.key(0)
    y1 = np.asarray(a.jax_fn(params, x.numpy(), key))
    assert np.array_equal(y1, np.asarray(a.jax_fn(params, x.numpy(), key)))
    assert not np.array_equal(y1, np.asarray(a.jax_fn(params, x.numpy(), jax.random.key(1))))


def test_eval_mode_drops_dropout_and_refuses_to_train_without_it() -> None:
    net, x = sj_net(training=False), x_in()
    cm = snncc.compile(net, x, backend="reference")
    assert not list(cm.ir.iter_ops("dropout"))
    assert cm.ir.meta["dropped_dropout"] == ["1", "3.1"]
    functional.reset_net(net)
    with torch.no_grad():
        assert torch.equal(cm(x), net(x))
    module = cm.to_torch()
    assert not module.training
    with pytest.raises(UnsupportedError, match=r"train\(\): dropout 1, 3\.1 was removed"):
        module.train()
    with pytest.raises(UnsupportedError, match="option training=True: dropout 1, 3.1"):
        snncc.compile(net, x, backend="reference", training=True)
    ReferenceProgram(cm.ir, training=False)  # eval stays possible


def test_exporters_refuse_training_dropout() -> None:
    from snncc.exchange import to_nir, to_onnx

    cm = snncc.compile(sj_net(training=True), x_in(), backend="reference")
    with pytest.raises(UnsupportedError, match="dropout in training mode"):
        to_onnx(cm.ir)
    with pytest.raises(UnsupportedError, match="training-mode dropout is random"):
        to_nir(cm.ir, dt=1e-3)
