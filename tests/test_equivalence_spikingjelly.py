"""Acceptance: SpikingJelly models compiled for the reference backend give EXACTLY SpikingJelly's spikes.

Each test builds a SpikingJelly 2.0 model with random weights (and, for
BatchNorm, random non-trivial running statistics, in eval mode), runs it with
SpikingJelly on a random input on the CPU, runs ``snncc.compile(model, x,
backend="reference")`` on the same input, and requires 0 mismatching
elements. Multi-step ('m') models are fed [T, B, ...] at once; single-step
('s') models are run by SpikingJelly one step at a time and compiled as
applied at every step. Every check also requires the reference output to be
non-trivial (some spikes, not all) and every neuron layer to fire
(tests/checks.py), so a model that never fires cannot pass, and the gradients
of one loss wrt the input and every parameter to match SpikingJelly's own
autograd within ``GRAD_RTOL`` plus 64 fp32 ulps of each tensor's largest entry.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snncc

sj = pytest.importorskip("spikingjelly.activation_based")
from checks import assert_fires  # noqa: E402
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402
from spikingjelly.activation_based.model import parametric_lif_net  # noqa: E402
from tolerances import grad_atol  # noqa: E402

# --------------------------------------------------------------------------- helpers

_REPORT: list | None = None


def _sj_run(model: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """SpikingJelly's own output on x [T, B, ...] from a fresh state."""
    functional.reset_net(model)
    with torch.no_grad():
        y = model(x) if mode == "m" else torch.stack([model(xt) for xt in x])
    functional.reset_net(model)
    return y


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.2)


def _randomise(model: nn.Module, seed: int, gain: float = 2.5) -> None:
    """Weights large enough that neurons fire at moderate rates (default inits barely fire)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * gain / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    _randomise_bn(model, gen)


def _build(factory, mode: str, seed: int = 0, gain: float = 2.5) -> nn.Module:
    torch.manual_seed(seed)
    model = factory()
    _randomise(model, seed + 1, gain)
    functional.set_step_mode(model, mode)
    return model.eval()


def _input(shape: tuple[int, ...], seed: int = 1, scale: float = 2.0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _assert_exact(model: nn.Module, x: torch.Tensor, mode: str, *, binary: bool = True) -> None:
    ref = _sj_run(model, x, mode)
    if _REPORT is not None:
        _REPORT.append(float(ref.mean()))
    cm = snncc.compile(model, x, backend="reference")
    y = cm(x)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == ref.dtype
    mismatches = int((y != ref).sum())
    assert mismatches == 0, f"{mismatches} of {ref.numel()} outputs differ from SpikingJelly"
    assert ref.abs().sum() > 0, "the reference output is all zero: the test would be vacuous"
    if binary:
        assert ref.mean() < 1, "every neuron fires every step: the test would be vacuous"
    # compiling must not have disturbed the model: SpikingJelly still gives the same output
    assert torch.equal(_sj_run(model, x, mode), ref)
    assert_fires(cm.ir, x)  # every neuron layer, not only the last, takes part
    _assert_grads_match(model, x, mode, cm)


#: gradients within GRAD_RTOL of each value plus 64 fp32 ulps of the tensor's largest
#: (tests/tolerances.py): the reference backend runs SpikingJelly's own operations layer by
#: layer, and autograd sums some terms in another order
GRAD_RTOL = 1e-5


def _grads(module: nn.Module, x: torch.Tensor, mode: str, weights: torch.Tensor | None):
    """Gradients of sum(y * weights) wrt the input and every parameter, by name."""
    module.zero_grad(set_to_none=True)
    xs = x.clone().requires_grad_()
    y = module(xs) if mode == "m" else torch.stack([module(xt) for xt in xs])
    w = (
        torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
        if weights is None
        else weights
    )
    (y * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    grads["<input>"] = xs.grad.clone()
    return grads, w


def _assert_grads_match(model: nn.Module, x: torch.Tensor, mode: str, cm) -> None:
    """SpikingJelly's own autograd against the compiled program's (``to_torch``), every tensor."""
    functional.reset_net(model)
    want, w = _grads(model, x, mode, None)
    functional.reset_net(model)
    got, _ = _grads(cm.to_torch(), x, "m", w)
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=GRAD_RTOL, atol=grad_atol(g), msg=name)
    assert any(float(g.abs().max()) > 0 for n, g in want.items() if n != "<input>")


# --------------------------------------------------------------------------- neurons in MLPs

NEURONS = {
    "if_hard": lambda: neuron.IFNode(),
    "if_soft": lambda: neuron.IFNode(v_reset=None),
    "if_thr": lambda: neuron.IFNode(v_threshold=0.5, v_reset=-0.1, detach_reset=True),
    "lif_decay_hard": lambda: neuron.LIFNode(tau=2.0, decay_input=True),
    "lif_decay_soft": lambda: neuron.LIFNode(tau=3.0, decay_input=True, v_reset=None),
    "lif_nodecay_hard": lambda: neuron.LIFNode(tau=2.0, decay_input=False),
    "lif_nodecay_soft": lambda: neuron.LIFNode(
        tau=1.5, decay_input=False, v_reset=None, surrogate_function=surrogate.ATan()
    ),
    "lif_reset_value": lambda: neuron.LIFNode(tau=4.0, v_threshold=0.8, v_reset=0.2),
    "plif_decay_hard": lambda: neuron.ParametricLIFNode(init_tau=2.0),
    "plif_decay_soft": lambda: neuron.ParametricLIFNode(init_tau=3.0, v_reset=None),
    "plif_nodecay": lambda: neuron.ParametricLIFNode(init_tau=2.5, decay_input=False),
}


def _mlp(make_neuron):
    return lambda: nn.Sequential(
        layer.Linear(12, 32), make_neuron(), layer.Linear(32, 10), make_neuron()
    )


@pytest.mark.parametrize("mode", ["m", "s"])
@pytest.mark.parametrize("kind", sorted(NEURONS))
def test_mlp_neurons(kind: str, mode: str) -> None:
    model = _build(_mlp(NEURONS[kind]), mode)
    _assert_exact(model, _input((8, 3, 12)), mode)


@pytest.mark.parametrize("T", [1, 4, 64])
@pytest.mark.parametrize("mode", ["m", "s"])
def test_mlp_time_lengths(T: int, mode: str) -> None:
    model = _build(_mlp(NEURONS["lif_decay_hard"]), mode)
    x = _input((T, 2, 12), scale=3.0)
    if T == 1:  # one step: only the first layer's drive decides; make it fire surely
        x = x + 1.0
    _assert_exact(model, x, mode)


def test_plif_trained_w() -> None:
    """A PLIF whose w moved away from its init (as after training) uses the stored w."""
    model = _build(_mlp(NEURONS["plif_decay_hard"]), "m")
    with torch.no_grad():
        model[1].w.fill_(0.7)
        model[3].w.fill_(-1.3)
    _assert_exact(model, _input((6, 2, 12)), "m")


# --------------------------------------------------------------------------- conv nets


def _convnet():
    return nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1, bias=False),
        layer.BatchNorm2d(6),
        neuron.LIFNode(tau=2.0),
        layer.MaxPool2d(2, 2),
        layer.Conv2d(6, 8, 3, padding=1),
        layer.BatchNorm2d(8),
        neuron.IFNode(v_reset=None),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Dropout(0.5),
        layer.Linear(8 * 2 * 2, 20),
        neuron.ParametricLIFNode(init_tau=2.0, surrogate_function=surrogate.ATan()),
        layer.VotingLayer(10),
    )


@pytest.mark.parametrize("T", [1, 4, 64])
@pytest.mark.parametrize("mode", ["m", "s"])
def test_convnet(mode: str, T: int) -> None:
    # one step through three neuron layers (two of them halving their input) needs a stronger drive
    model = _build(_convnet, mode, seed=3, gain=2.5 if T > 1 else 8.0)
    B = 2 if T < 64 else 1
    _assert_exact(model, _input((T, B, 2, 8, 8), scale=3.0), mode, binary=False)


def _adaptive_net():
    return nn.Sequential(
        layer.Conv2d(1, 4, 3, stride=2),
        neuron.LIFNode(decay_input=False),
        layer.AdaptiveAvgPool2d((2, 2)),
        layer.Flatten(),
        layer.Linear(16, 6),
        neuron.IFNode(),
    )


@pytest.mark.parametrize("mode", ["m", "s"])
def test_adaptive_avgpool(mode: str) -> None:
    model = _build(_adaptive_net, mode, seed=5)
    _assert_exact(model, _input((5, 2, 1, 9, 9), scale=3.0), mode)


def _conv1d_bn1d_net():
    return nn.Sequential(
        layer.Conv1d(3, 5, 3, padding=1),
        layer.BatchNorm1d(5),
        neuron.LIFNode(),
        layer.Flatten(),
        layer.Linear(5 * 7, 8),
        layer.BatchNorm1d(8),
        neuron.IFNode(v_reset=None),
    )


@pytest.mark.parametrize("mode", ["m", "s"])
def test_conv1d_batchnorm1d(mode: str) -> None:
    model = _build(_conv1d_bn1d_net, mode, seed=7)
    _assert_exact(model, _input((6, 3, 3, 7), scale=3.0), mode)


def _assert_onnx_round_trip(graph, x: torch.Tensor, ref: torch.Tensor, atol: float = 0.0) -> None:
    """ONNX Runtime within ``atol`` of SpikingJelly (0: bit for bit), and the file imported
    back compiles to SpikingJelly's bits."""
    ort = pytest.importorskip("onnxruntime")
    from snncc.exchange import from_onnx, to_onnx

    onnx_model = to_onnx(graph)
    sess = ort.InferenceSession(onnx_model.SerializeToString())
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=atol)
    assert torch.equal(snncc.compile_graph(from_onnx(onnx_model))(x), ref)


def _assert_on_every_backend(
    model: nn.Module, x: torch.Tensor, mode: str, *, approx: float = 0.0, binary: bool = False
) -> torch.Tensor:
    """Reference and cpu bit for bit (the reference's gradients too); jax and ONNX Runtime
    within ``approx`` (0: bit for bit); the ONNX round trip bit for bit. SpikingJelly's own
    output is returned."""
    _assert_exact(model, x, mode, binary=binary)
    ref = _sj_run(model, x, mode)
    assert torch.equal(snncc.compile(model, x, backend="cpu")(x), ref)
    y = snncc.compile(model, x, backend="jax")(x)
    y = y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=approx)
    _assert_onnx_round_trip(snncc.trace(model, x), x, ref, atol=approx)
    return ref


def _tdbn_net():
    """tdBN (Zheng et al., "Going Deeper With Directly-Trained Larger SNNs"), 2-D and 1-D."""
    return nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1),
        layer.ThresholdDependentBatchNorm2d(1.0, 0.5, 4),
        neuron.LIFNode(v_threshold=0.5),
        layer.Flatten(),
        layer.Linear(4 * 6 * 6, 6),
        layer.ThresholdDependentBatchNorm1d(1.0, 1.0, 6),
        neuron.IFNode(),
    )


@pytest.mark.parametrize("training", [False, True])
def test_threshold_dependent_batchnorm(training: bool) -> None:
    """A BatchNorm over T*B (multi-step only): eval with its running statistics, training
    with the batch's, statistics over the whole sequence as SpikingJelly takes them."""
    model = _build(_tdbn_net, "m", seed=14)
    x = _input((4, 2, 2, 6, 6), scale=3.0)
    if not training:
        _assert_exact(model, x, "m")
        return
    model.train()
    cm = snncc.compile(model, x, backend="cpu")
    assert [cm.ir.attrs(n)["stats"] for n in cm.ir.iter_ops("batchnorm")] == ["sequence"] * 2
    functional.reset_net(model)
    ref = model(x)
    assert torch.equal(cm(x), ref) and 0 < float(ref.mean()) < 1


def _pool1d_net():
    return nn.Sequential(
        layer.Conv1d(3, 6, 5, padding=2),
        neuron.LIFNode(),
        layer.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True),
        layer.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        layer.AdaptiveAvgPool1d(3),
        layer.Flatten(),
        layer.Linear(6 * 3, 8),
        neuron.IFNode(),
    )


@pytest.mark.parametrize("mode", ["m", "s"])
def test_pool1d(mode: str) -> None:
    """1-D pooling (audio nets) compiles as the 2-D op over a height of 1, which is how torch
    computes avg_pool1d itself: the source's bits, on the cpu backend too."""
    model = _build(_pool1d_net, mode, seed=7)
    x = _input((6, 3, 3, 17), scale=3.0)
    _assert_exact(model, x, mode)
    assert torch.equal(snncc.compile(model, x, backend="cpu")(x), _sj_run(model, x, mode))


class FunctionalPool1dNet(nn.Module):
    """torch's own 1-D pooling modules and functions in a single-step network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 5, padding=2)
        self.sn = neuron.LIFNode()
        self.pools = nn.Sequential(
            nn.MaxPool1d(2, 1), nn.AvgPool1d(4, 3, 2), nn.AdaptiveAvgPool1d(4)
        )
        self.fc = nn.Linear(6 * 4 * 3, 8)
        self.out = neuron.IFNode()

    def forward(self, x):
        s = self.sn(self.conv(x))
        a = F.avg_pool1d(s, 3, 2, 1, True, False)
        b = F.max_pool1d(s, 3, 2, 1, 1, True)
        c = F.adaptive_avg_pool1d(s, 4)
        y = torch.cat([self.pools(s), F.adaptive_avg_pool1d(a * b, 4), c], dim=2)
        return self.out(self.fc(y.flatten(1)))


def test_pool1d_functions() -> None:
    model = _build(FunctionalPool1dNet, "s", seed=8)
    _assert_exact(model, _input((6, 3, 3, 17), scale=3.0), "s")


def _decoder_net():
    """A spiking decoder: transposed convolutions upsample (stride, output_padding, groups,
    dilation, a rectangular kernel), an ``nn.Unflatten`` in front."""
    return nn.Sequential(
        layer.Linear(8, 4 * 3 * 3),
        neuron.LIFNode(),
        nn.Unflatten(1, (4, 3, 3)),
        layer.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
        layer.BatchNorm2d(6),
        neuron.LIFNode(tau=3.0),
        layer.ConvTranspose2d(
            6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2
        ),
        neuron.IFNode(),
    )


@pytest.mark.parametrize("mode", ["s", "m"])
def test_transposed_convolution_decoder(mode: str) -> None:
    """Reference and cpu bit for bit (gradients too), jax and ONNX Runtime within 1e-5, the
    ONNX round trip bit for bit."""
    model = _build(_decoder_net, mode, seed=11, gain=3.0)
    if mode == "m":  # torch's Unflatten sees [T, B, 36] in a multi-step model
        model[2] = nn.Unflatten(2, (4, 3, 3))
    gen = torch.Generator().manual_seed(12)
    for m in (model[3], model[6]):  # _randomise leaves transposed convolutions as made
        with torch.no_grad():
            fan_in = m.weight[:, 0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 4.0 / fan_in**0.5)
    x = _input((5, 2, 8), scale=3.0)
    ref = _assert_on_every_backend(model, x, mode, approx=1e-5, binary=True)
    assert ref.shape == (5, 2, 4, 11, 8)


class Upsampling(nn.Module):
    """Nearest upsampling every way a model asks for it: nn.Upsample (integer scale),
    UpsamplingNearest2d (a size), F.interpolate with a fractional scale_factor (torch's kernel
    divides by it) or recompute_scale_factor, and in 1-D; one output of every element."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.sn = neuron.LIFNode()
        self.up = nn.Upsample(scale_factor=2)
        self.up_size = nn.UpsamplingNearest2d(size=(9, 13))
        self.conv1d = nn.Conv1d(4, 3, 3)
        self.sn1d = neuron.IFNode()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sn(self.conv(x))
        ups = [
            self.up(y),
            self.up_size(y),
            F.interpolate(y, scale_factor=(1.3333, 2.5)),
            F.interpolate(y, scale_factor=1.7, recompute_scale_factor=True),
            F.interpolate(self.sn1d(self.conv1d(y.mean(2))), size=11),
        ]
        return torch.cat([u.flatten(1) for u in ups], dim=1)


def test_nearest_upsampling() -> None:
    """Reference and cpu bit for bit with gradients; jax and ONNX gather the elements torch
    reads (ir.resample, from torch itself): bit for bit too, and the ONNX round trip."""
    _assert_on_every_backend(_build(Upsampling, "s", seed=13), _input((4, 2, 2, 6, 6), 1, 3.0), "s")


class Padded(nn.Module):
    """Constant padding: ZeroPad2d before a valid convolution, ConstantPad1d, ZeroPad1d and
    ConstantPad2d stacked, and F.pad of a channel dim with a value."""

    def __init__(self, bad: str = "") -> None:
        super().__init__()
        self.bad = bad
        self.pad = nn.ZeroPad2d((1, 2, 0, 1))
        self.conv = nn.Conv2d(2, 4, 3)
        self.sn = neuron.LIFNode()
        self.pad1d = nn.ConstantPad1d((2, 1), -0.5)
        self.zero1d = nn.ZeroPad1d(1)
        self.const2d = nn.ConstantPad2d(1, 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sn(self.conv(self.pad(x)))
        if self.bad == "mode":
            y = F.pad(y, (1, 1, 1, 1), mode="replicate")
        elif self.bad == "negative":
            y = F.pad(y, (-1, 0))
        elif self.bad == "batch":
            y = F.pad(y, (1, 1) * 4)
        parts = [
            self.pad1d(y.mean(2)),
            F.pad(y, (0, 0, 2, 0, 1, 1), value=1.5),
            self.const2d(self.zero1d(y.mean(3))),
        ]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


def test_constant_padding() -> None:
    """jax and ONNX Runtime within 1e-5 (their convolutions), the rest bit for bit; other
    modes, cropping and the batch dim refused."""
    x = _input((4, 2, 2, 6, 6), scale=3.0)
    _assert_on_every_backend(_build(Padded, "s", seed=15), x, "s", approx=1e-5)
    for bad, words in [
        ("mode", "mode='replicate' is not supported"),
        ("negative", "negative pads [-1, 0] (cropping)"),
        ("batch", "reach the batch dim"),
    ]:
        with pytest.raises(snncc.UnsupportedError, match=re.escape(words)):
            snncc.trace(Padded(bad), x)


class GroupNormed(nn.Module):
    """GroupNorm with and without its affine, on spikes and on a mix, and F.group_norm of a
    1-D value with the model's own weight and bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.gn = nn.GroupNorm(3, 6)
        self.sn = neuron.LIFNode()
        self.plain = nn.GroupNorm(2, 6, affine=False)
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.b = nn.Parameter(torch.linspace(-0.3, 0.3, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sn(self.gn(self.conv(x)))
        mixed = self.plain(y * 2.0 + x.mean(1, keepdim=True))
        one_d = F.group_norm(y.mean(3), 3, self.w, self.b, 1e-3)
        return torch.cat([mixed.flatten(1), one_d.flatten(1)], dim=1)


def test_group_norm() -> None:
    """Reference and cpu bit for bit (gradients too); jax and ONNX Runtime (instance
    normalisation of the grouped view) within 1e-5, the ONNX round trip bit for bit."""
    x = _input((4, 2, 2, 6, 6), scale=3.0)
    _assert_on_every_backend(_build(GroupNormed, "s", seed=16), x, "s", approx=1e-5)


@pytest.mark.parametrize("nd", [1, 2])
def test_nearest_indices_are_torchs(nd: int) -> None:
    """ir.resample's indices read the elements torch's own upsampling reads, sizes 1-17 to
    1-40 and scale factors from 0.5 to 25 (2-D: the other dim held at 5)."""
    from snncc.ir.resample import nearest_indices

    for n_in in range(1, 18):
        shape = (n_in,) if nd == 1 else (n_in, 5)
        x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, *([n_in] + [1] * (nd - 1)))
        x = x.expand(1, 1, *shape)
        calls = [({"size": (o,) * 1 + (7,) * (nd - 1)}, None) for o in range(1, 41)]
        calls += [
            ({"scale_factor": (f,) + (1.5,) * (nd - 1)}, f) for f in (0.5, 1.3333, 1.7, 3, 25)
        ]
        for kw, _ in calls:
            if "scale_factor" in kw and int(n_in * kw["scale_factor"][0]) < 1:
                continue
            want = F.interpolate(x, mode="nearest", **kw)[0, 0]
            want = want[(slice(None),) + (0,) * (nd - 1)].long().tolist()
            size = list(F.interpolate(x, mode="nearest", **kw).shape[2:])
            got = nearest_indices(shape, size, kw.get("scale_factor"))[0]
            assert got == want, (n_in, kw)


class LoopOverSteps(nn.Module):
    """Single-step neurons driven by the model's own loop: over x[t] (stacked), or over a
    static image T times with the firing rate summed (``out_fr += ...``, SpikingJelly's
    training loop written inside forward, as SNASNet does)."""

    def __init__(self, static: bool) -> None:
        super().__init__()
        self.static = static
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.sn1 = neuron.LIFNode(tau=2.0)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.sn2 = neuron.IFNode(surrogate_function=surrogate.ATan())
        self.T = 5

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn2(self.fc(self.sn1(self.conv(x)).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static:
            return torch.stack([self.step(x[t]) for t in range(x.shape[0])])
        out_fr = 0.0
        for _ in range(self.T):
            out_fr += self.fc(self.sn1(self.conv(x)).flatten(1)) * 0.5
        return out_fr / self.T


@pytest.mark.parametrize("static", [False, True])
def test_single_step_neurons_in_the_models_loop(static: bool) -> None:
    model = _build(lambda: LoopOverSteps(static), "s", seed=9)
    x = _input((2, 2, 6, 6) if static else (5, 2, 2, 6, 6), scale=3.0)
    _assert_exact(model, x, "m", binary=not static)
    g = snncc.trace(model, x)
    assert g.meta["time_loop"] == "folded"
    assert len(list(g.iter_ops("neuron"))) == (1 if static else 2)
    assert torch.equal(snncc.compile(model, x, backend="cpu")(x), _sj_run(model, x, "m"))


# --------------------------------------------------------------------------- residual, functions


class ResidualNet(nn.Module):
    """A spiking residual block (SEW-style ADD) plus scale/mul/cat/flatten/view in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = layer.Conv2d(2, 4, 3, padding=1)
        self.sn0 = neuron.IFNode()
        self.conv = layer.Conv2d(4, 4, 3, padding=1)
        self.bn = layer.BatchNorm2d(4)
        self.sn1 = neuron.LIFNode(v_reset=None)
        self.fc = layer.Linear(4 * 6 * 6 * 2, 10)
        self.sn2 = neuron.LIFNode(decay_input=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sn0(self.stem(x))
        r = self.sn1(self.bn(self.conv(s)))
        y = s + r  # residual add of spike maps
        y = torch.cat([y * 0.5, s * r], dim=-3)  # scale, mul, cat over channels
        if self.sn0.step_mode == "m":
            y = y.flatten(2)
        else:
            y = torch.flatten(y, 1)
        return self.sn2(self.fc(y) / 0.75)


@pytest.mark.parametrize("mode", ["m", "s"])
def test_residual_and_functions(mode: str) -> None:
    model = _build(ResidualNet, mode, seed=11)
    _assert_exact(model, _input((6, 2, 2, 6, 6), scale=2.5), mode)


class ViewNet(nn.Module):
    """Multi-step model that reshapes with view/reshape keeping [T, B] in front."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = layer.Linear(12, 24, step_mode="m")
        self.sn1 = neuron.LIFNode(step_mode="m")
        self.fc2 = layer.Linear(24, 6, step_mode="m")
        self.sn2 = neuron.IFNode(step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[0], x.shape[1]
        h = self.sn1(self.fc1(x.reshape(T, B, -1)))
        h = h.view(T, B, 4, 6).view(T, B, 24)
        return self.sn2(self.fc2(h))


def test_view_reshape_multistep() -> None:
    torch.manual_seed(13)
    model = ViewNet().eval()
    _randomise(model, 14)
    _assert_exact(model, _input((7, 3, 3, 4), scale=2.0), "m")


# --------------------------------------------------------------------------- containers


def _container_net():
    return nn.Sequential(
        layer.SeqToANNContainer(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.MaxPool2d(2)
        ),
        neuron.LIFNode(step_mode="m"),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 4 * 4, 12)),
        layer.MultiStepContainer(neuron.IFNode(v_reset=None)),
        layer.SeqToANNContainer(nn.Linear(12, 20)),
        neuron.ParametricLIFNode(step_mode="m"),
        layer.VotingLayer(10, step_mode="m"),
    )


def test_containers() -> None:
    torch.manual_seed(17)
    model = _container_net()
    _randomise(model, 18)
    model.eval()
    _assert_exact(model, _input((6, 2, 1, 8, 8), scale=3.0), "m", binary=False)


def test_step_mode_container() -> None:
    torch.manual_seed(19)
    model = nn.Sequential(
        layer.StepModeContainer(False, "m", nn.Linear(10, 16), nn.BatchNorm1d(16)),
        layer.StepModeContainer(True, "m", neuron.LIFNode()),
        layer.StepModeContainer(False, "m", nn.Linear(16, 4)),
        neuron.IFNode(step_mode="m"),
    )
    _randomise(model, 20)
    model.eval()
    _assert_exact(model, _input((5, 3, 10), scale=3.0), "m")


# --------------------------------------------------------------------------- model zoo


@pytest.mark.parametrize("mode", ["m", "s"])
def test_parametric_lif_mnistnet(mode: str) -> None:
    """SpikingJelly's own MNISTNet (PLIF paper), at 4 channels."""

    def factory():
        return parametric_lif_net.MNISTNet(
            channels=4, spiking_neuron=neuron.ParametricLIFNode, surrogate_function=surrogate.ATan()
        )

    model = _build(factory, mode, seed=23)
    _assert_exact(model, _input((4, 2, 1, 28, 28), scale=3.0), mode, binary=False)


# --------------------------------------------------------------------------- training-mode BatchNorm


def _bn_net():
    return nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1),
        layer.BatchNorm2d(4),
        neuron.LIFNode(),
        layer.Flatten(),
        layer.Linear(4 * 6 * 6, 10),
        layer.BatchNorm1d(10),
        neuron.IFNode(),
    )


@pytest.mark.parametrize("mode", ["m", "s"])
def test_batchnorm_training_mode(mode: str) -> None:
    """Batch statistics over T*B ('m': SpikingJelly folds T into the batch) or over B per step ('s')."""
    model = _build(_bn_net, mode, seed=29).train()
    _assert_exact(model, _input((5, 3, 2, 6, 6), scale=3.0), mode)


def test_batchnorm_training_per_step_container() -> None:
    """Inside MultiStepContainer a BatchNorm normalises each step on its own."""
    torch.manual_seed(31)
    model = nn.Sequential(
        layer.SeqToANNContainer(nn.Linear(6, 5)),
        layer.MultiStepContainer(nn.BatchNorm1d(5), neuron.IFNode()),
    )
    _randomise(model, 32)
    _assert_exact(model.train(), _input((5, 4, 6), scale=3.0), "m")
