"""snncc.surrogate against the installed frameworks' own surrogate code, bit for bit."""

from __future__ import annotations

import pytest
import torch
from spikingjelly._ops.surrogate import _SURROGATE_IDS, _surrogate_gradient
from spikingjelly.activation_based import neuron as sj_neuron
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


def _sj_neuron(cls: str):
    """A SpikingJelly IFNode firing at 0: its spike's gradient wrt x is the surrogate's at
    the membrane it charges, ``h = 0.0 + x`` (so -0.0 arrives as +0.0: :func:`_seen`).

    snncc's alpha is the class's ``alpha`` argument, or the attribute the frontend reads it
    from (PiecewiseLeakyReLU's ``w``, LeakyKReLU's ``k``...); a parameterless class
    (DeterministicPass) is built without one. Other parameters keep their defaults.
    """
    from snncc.frontend.surrogates import SPIKINGJELLY_SURROGATE_ATTRS

    key = SPIKINGJELLY_SURROGATE_ATTRS.get(cls, ("alpha", {}))[0]

    def fn(a: float):
        sg = getattr(sj, cls)(**({} if key is None else {key: a}))
        node = sj_neuron.IFNode(v_threshold=0.0, surrogate_function=sg, step_mode="m")
        return lambda t: node(t[None])[0]  # h = 0 + x, spike = surrogate(h - 0)

    return fn


def _seen(label: str, x: torch.Tensor) -> torch.Tensor:
    """The value the source's spike function gets for ``x``: a SpikingJelly IFNode's
    membrane is ``0.0 + x`` (-0.0 becomes +0.0, where FakeNumericalGradient's 1 / x
    changes sign); the frameworks' surrogate functions get ``x`` itself."""
    return x + 0.0 if label.startswith("SpikingJelly IFNode") else x


def _snntorch(factory: str, key: str | None):
    def fn(a: float):
        from snntorch import surrogate as snn

        make = getattr(snn, factory)
        return make() if key is None else make(**{key: a})

    return fn


def _snntorch_disabled(a: float):
    import snntorch

    return snntorch.Leaky(beta=0.5, surrogate_disable=True).spike_grad


def _norse(method: str):
    def fn(a: float):
        from norse.torch.functional.threshold import threshold

        return lambda t: threshold(t, method, torch.as_tensor(a))

    return fn


#: every snncc surrogate -> the source frameworks' own autograd functions it must equal,
#: (label, alpha -> spike function, alphas to try)
SOURCE_AUTOGRAD = {
    **{
        name: [(f"SpikingJelly IFNode({cls})", _sj_neuron(cls), (0.7, 3.0))]
        for cls, name in SPIKINGJELLY_SURROGATES.items()
    },
    "fast_sigmoid": [("snnTorch fast_sigmoid", _snntorch("fast_sigmoid", "slope"), (5.0, 25.0))],
    "snntorch_sigmoid": [("snnTorch sigmoid", _snntorch("sigmoid", "slope"), (5.0, 25.0))],
    "straight_through": [
        (
            "snnTorch straight_through_estimator",
            _snntorch("straight_through_estimator", None),
            (1.0,),
        )
    ],
    "snntorch_heaviside": [("snnTorch heaviside", _snntorch("heaviside", None), (1.0,))],
    "snntorch_triangular": [
        ("snnTorch triangular", _snntorch("triangular", "threshold"), (0.5, 1.0))
    ],
    "spike_rate_escape": [
        ("snnTorch spike_rate_escape", _snntorch("spike_rate_escape", "slope"), (5.0, 25.0))
    ],
    "sparse_fast_sigmoid": [("snnTorch SFS", _snntorch("SFS", "slope"), (5.0, 25.0))],
    "superspike": [("Norse threshold 'super'", _norse("super"), (100.0, 3.0))],
    "triangle": [("Norse threshold 'triangle'", _norse("triangle"), (0.3, 2.0))],
    "norse_tanh": [("Norse threshold 'tanh'", _norse("tanh"), (100.0, 3.0))],
    "no_grad": [
        ("snnTorch surrogate_disable", _snntorch_disabled, (1.0,)),
        ("Norse threshold 'heaviside'", _norse("heaviside"), (1.0,)),
    ],
}
SOURCE_AUTOGRAD["atan"].append(("snnTorch atan", _snntorch("atan", "alpha"), (0.7, 3.0)))


def test_every_surrogate_has_a_source_autograd_to_match() -> None:
    assert set(SOURCE_AUTOGRAD) == set(SURROGATE_DEFAULTS)


@pytest.mark.parametrize("name", sorted(SURROGATE_DEFAULTS))
def test_surrogate_grad_equals_the_source_frameworks_autograd(name: str) -> None:
    """``surrogate_grad`` (the jax and kernel tests' yardstick) is d spike / dx as the source
    framework's own autograd computes it, bit for bit (NaN where snnTorch's exp overflows)."""
    x = _big_x(7)
    for label, make, alphas in SOURCE_AUTOGRAD[name]:
        for a in alphas:
            xx = x.clone().requires_grad_()
            y = make(a)(xx)
            if y.requires_grad:  # a plain comparison (no_grad) leaves autograd nothing to run
                y.backward(torch.ones_like(x))
            want = torch.zeros_like(x) if xx.grad is None else xx.grad
            got = surrogate_grad(_seen(label, x), name, a)
            assert 0 < float((want != 0).sum()) or name == "no_grad", (label, "no gradient")
            torch.testing.assert_close(
                got, want, rtol=0, atol=0, equal_nan=True, msg=f"{label}, alpha={a}"
            )


@pytest.mark.parametrize("cls", ["Sigmoid", "ATan", "PiecewiseQuadratic", "PiecewiseExp", "Erf"])
def test_spikingjelly_surrogate_modules_autograd(cls: str) -> None:
    """A SpikingJelly surrogate module called directly (its own autograd.Function): bit for bit.

    SoftSign and SuperSpike modules round their backward differently (up to 2 ulp)
    from the formulas SpikingJelly's neurons use, which snncc copies
    (test above); Rect is checked below.
    """
    x = _big_x(8)
    for a in (0.7, 3.0):
        xx = x.clone().requires_grad_()
        getattr(sj, cls)(alpha=a)(xx).backward(torch.ones_like(x))
        assert torch.equal(surrogate_grad(x, SPIKINGJELLY_SURROGATES[cls], a), xx.grad)


def test_defaults_match_spikingjelly() -> None:
    """A surrogate named without its parameters (snncc.nn, a spec) gets SpikingJelly's class
    defaults: alpha and every parameter beyond it (PiecewiseLeakyReLU's c, S2NN's beta...)."""
    from snncc.frontend.surrogates import spikingjelly_surrogate
    from snncc.ir.surrogates import resolve_params

    for cls, name in SPIKINGJELLY_SURROGATES.items():
        assert from_spikingjelly(getattr(sj, cls)()) == (name, SURROGATE_DEFAULTS[name])
        got = spikingjelly_surrogate(getattr(sj, cls)())
        assert got == (name, SURROGATE_DEFAULTS[name], dict(resolve_params(name))), cls


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
