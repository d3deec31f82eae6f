"""snncc.surrogate against the installed frameworks' own surrogate code, bit for bit."""

from __future__ import annotations

import pytest
import torch
from spikingjelly._ops.surrogate import _SURROGATE_IDS, _surrogate_gradient
from spikingjelly.activation_based import surrogate as sj

from snncc.errors import UnsupportedError
from snncc.surrogate import (
    SPIKINGJELLY_SURROGATES,
    SURROGATE_DEFAULTS,
    from_norse,
    from_snntorch,
    from_spikingjelly,
    spike,
    spike_gt,
    surrogate_grad,
)


def _x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(257, generator=g) * 1.5
    x[:3] = torch.tensor([0.0, -0.0, 1e-8])
    return x


def _grad(fn, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("name", sorted(SURROGATE_DEFAULTS))
def test_forward_is_heaviside(name: str) -> None:
    x = _x()
    assert torch.equal(spike(x, name), (x >= 0).float())
    assert torch.equal(spike_gt(x, name), (x > 0).float())
    assert spike(x, name)[0] == 1.0 and spike_gt(x, name)[0] == 0.0


@pytest.mark.parametrize(
    "cls",
    ["Sigmoid", "ATan", "PiecewiseQuadratic", "PiecewiseExp", "SoftSign", "SuperSpike", "Erf"],
)
@pytest.mark.parametrize("alpha", [None, 0.7, 3.0])
def test_spikingjelly_neuron_surrogates_exact(cls: str, alpha: float | None) -> None:
    """The backward SpikingJelly neurons run on CPU: _ops/surrogate.py, by class id."""
    obj = getattr(sj, cls)() if alpha is None else getattr(sj, cls)(alpha=alpha)
    name, a = from_spikingjelly(obj)
    x, g = _x(), torch.rand(257) + 0.5
    y, gx = _grad(lambda t: spike(t, name, a), x, g)
    ref = g * _surrogate_gradient(x, a, _SURROGATE_IDS[cls])
    assert torch.equal(y, (x >= 0).float())
    assert torch.equal(gx, ref)


def test_rect_matches_spikingjelly_module() -> None:
    x, g = _x(), torch.rand(257) + 0.5
    _, ref = _grad(sj.Rect(alpha=0.8), x, g)
    _, got = _grad(lambda t: spike(t, "rect", 0.8), x, g)
    assert torch.equal(got, ref)


def test_snntorch_fast_sigmoid_and_atan() -> None:
    from snntorch import surrogate as snn

    x, g = _x(), torch.rand(257) + 0.5
    y_ref, ref = _grad(snn.fast_sigmoid(slope=25), x, g)
    y, got = _grad(lambda t: spike_gt(t, "fast_sigmoid", 25.0), x, g)
    assert torch.equal(y, y_ref) and torch.equal(got, ref)
    _, ref = _grad(snn.atan(alpha=2.0), x, g)
    _, got = _grad(lambda t: spike_gt(t, "atan", 2.0), x, g)
    assert torch.equal(got, ref)  # snnTorch's atan is SpikingJelly's, operation for operation


def test_norse_superspike_and_triangle() -> None:
    from norse.torch.functional.threshold import superspike_fn, triangle_fn

    x, g = _x(), torch.rand(257) + 0.5
    y_ref, ref = _grad(lambda t: superspike_fn(t, torch.as_tensor(100.0)), x, g)
    y, got = _grad(lambda t: spike_gt(t, "superspike", 100.0), x, g)
    assert torch.equal(y, y_ref) and torch.equal(got, ref)
    y_ref, ref = _grad(lambda t: triangle_fn(t, 0.3), x, g)
    y, got = _grad(lambda t: spike_gt(t, "triangle", 0.3), x, g)
    assert torch.equal(y, y_ref) and torch.equal(got, ref)


@pytest.mark.parametrize("name", sorted(SURROGATE_DEFAULTS))
def test_surrogate_grad_is_the_backward(name: str) -> None:
    x = _x()
    _, gx = _grad(lambda t: spike(t, name), x, torch.ones_like(x))
    # equal_nan: snnTorch's sigmoid backward is NaN where its exp overflows, by design
    torch.testing.assert_close(surrogate_grad(x, name), gx, rtol=0, atol=0, equal_nan=True)


def test_default_alphas_match_spikingjelly() -> None:
    for cls, name in SPIKINGJELLY_SURROGATES.items():
        assert from_spikingjelly(getattr(sj, cls)()) == (name, SURROGATE_DEFAULTS[name])


def test_from_spikingjelly_rejects_with_a_clear_message() -> None:
    with pytest.raises(UnsupportedError, match=r"PoissonPass.*stochastic.*surrogate\.Sigmoid"):
        from_spikingjelly(sj.PoissonPass())
    with pytest.raises(UnsupportedError, match="spiking=False"):
        from_spikingjelly(sj.Sigmoid(spiking=False))

    class MySigmoid(sj.Sigmoid):
        pass

    with pytest.raises(UnsupportedError, match="MySigmoid"):
        from_spikingjelly(MySigmoid())
    with pytest.raises(UnsupportedError, match="alpha"):
        from_spikingjelly(sj.Sigmoid(alpha=torch.tensor(4.0)))


def test_unknown_surrogate_name() -> None:
    with pytest.raises(UnsupportedError, match="choose one of: .*sigmoid"):
        spike(torch.zeros(2), "nope")


# --------------------------------------------------------------------------- snnTorch / Norse


def _big_x(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4000, generator=g) * 2.0
    x[:3] = torch.tensor([0.0, -0.0, 1e-8])
    return x


def _snntorch_factories():
    from snntorch import surrogate as snn

    return [
        ("atan", lambda: snn.atan(alpha=2.0)),
        ("atan", lambda: snn.atan(alpha=3.0)),
        ("atan", lambda: snn.atan(alpha=0.7)),
        ("fast_sigmoid", lambda: snn.fast_sigmoid(slope=25)),
        ("fast_sigmoid", lambda: snn.fast_sigmoid(slope=5)),
        ("snntorch_sigmoid", lambda: snn.sigmoid(slope=25)),
        ("snntorch_sigmoid", lambda: snn.sigmoid(slope=5)),
        ("straight_through", lambda: snn.straight_through_estimator()),
        ("snntorch_heaviside", lambda: snn.heaviside()),
        ("snntorch_triangular", lambda: snn.triangular(threshold=1)),
        ("snntorch_triangular", lambda: snn.triangular(threshold=0.5)),
    ]


@pytest.mark.parametrize("case", range(11))
def test_snntorch_surrogates_exact(case: int) -> None:
    """from_snntorch reads the closure's sharpness; forward and backward bit for bit (NaN too)."""
    pytest.importorskip("snntorch")
    name, make = _snntorch_factories()[case]
    fn = make()
    got_name, alpha = from_snntorch(fn)
    assert got_name == name
    x, g = _big_x(case), torch.rand(4000) + 0.5
    y_ref, ref = _grad(fn, x, g)
    y, got = _grad(lambda t: spike_gt(t, name, alpha), x, g)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)


def test_snntorch_surrogate_disable_and_refusals() -> None:
    snntorch = pytest.importorskip("snntorch")
    from snntorch import surrogate as snn

    assert (
        from_snntorch(snntorch.Leaky(beta=0.5, surrogate_disable=True).spike_grad)[0] == "no_grad"
    )
    x = _big_x(1)
    _, gx = _grad(lambda t: spike_gt(t, "no_grad"), x, torch.ones_like(x))
    assert torch.equal(gx, torch.zeros_like(x))
    for bad in (snn.SSO(), snn.LSO(), torch.sigmoid):
        with pytest.raises(UnsupportedError, match="surrogate.atan"):
            from_snntorch(bad)
    for two_knobs in (snn.spike_rate_escape(beta=2), snn.SFS(B=0.5)):  # need their params
        with pytest.raises(UnsupportedError, match="snntorch_surrogate"):
            from_snntorch(two_knobs)


def test_norse_threshold_methods_exact() -> None:
    pytest.importorskip("norse")
    from norse.torch.functional.threshold import threshold

    x, g = _big_x(2), torch.rand(4000) + 0.5
    for method, alpha in [("super", 100.0), ("triangle", 0.3), ("tanh", 3.0), ("tanh", 100.0)]:
        k = torch.as_tensor(alpha)
        name, a = from_norse(method, k)
        y_ref, ref = _grad(lambda t, m=method, k=k: threshold(t, m, k), x, g)
        y, got = _grad(lambda t, n=name, a=a: spike_gt(t, n, a), x, g)
        assert torch.equal(y, y_ref) and torch.equal(got, ref), method
    assert from_norse("heaviside", 1.0)[0] == "no_grad"
    with pytest.raises(UnsupportedError, match="'adjoint'.*supported"):
        from_norse("adjoint", 1.0)


def test_ir_surrogate_table_matches_the_implementations() -> None:
    from snncc.ir.neuron import SURROGATES

    assert SURROGATES == SURROGATE_DEFAULTS
