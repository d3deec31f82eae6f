"""The jax backend on snnTorch and Norse models, against the reference backend.

Each model is traced once (``snncc.frontend.trace``) and lowered twice: for
the reference backend (bit-exact with snnTorch/Norse, checked in
``test_equivalence_snntorch.py`` / ``test_equivalence_norse.py``) and for jax.
Tolerances (jax is not bit-exact: XLA may fuse or reorder float operations,
and gradients accumulate in another order):

- spike outputs: at most ``SPIKE_MISMATCH_TOL`` = 1e-4 of the values differ
  (at these sizes that means none may differ);
- membranes, currents and other continuous outputs: within 8 fp32 ulps of the
  compared tensor's largest magnitude (tests/tolerances.py);
- gradients of one scalar loss (every output times fixed random weights)
  wrt the input and every parameter the reference backend trains (weights,
  and the learnable neuron roles: snnTorch beta through its clamp,
  threshold, graded_spikes_factor, alpha, V; Norse tau_mem_inv,
  tau_syn_inv, v_th, v_reset): relative L2 error at most ``GRAD_REL_TOL`` = 1e-4;
- streaming: ``run(x[:k])`` then ``run(x[k:], state)`` equals ``run(x)``
  within the same tolerances (state carries every variable: v, i, s, delay).

The worst values seen are printed at the end of the module (``pytest -s``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
snn = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")

from norse.torch.functional.lif_box import LIFBoxParameters  # noqa: E402
from norse.torch.functional.reset import reset_subtract  # noqa: E402
from snntorch import surrogate as st_surrogate  # noqa: E402

import snncc  # noqa: E402
from snncc.backends.jax import runtime  # noqa: E402
from snncc.errors import ShapeError, UnsupportedError  # noqa: E402
from snncc.frontend import trace  # noqa: E402
from snncc.ir.graph import Graph  # noqa: E402
from snncc.ir.neuron import SURROGATES, NeuronSpec  # noqa: E402
from snncc.surrogate import surrogate_grad  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from checks import assert_fires  # noqa: E402
from peer_models import norse_cell_stack, snntorch_convnet  # noqa: E402
from test_equivalence_norse import LoopNet as NorseLoopNet  # noqa: E402
from test_equivalence_norse import P  # noqa: E402
from test_equivalence_norse import _randomise as _norse_randomise  # noqa: E402
from test_equivalence_snntorch import (  # noqa: E402
    LoopLeaky,
    LoopRLeaky,
    LoopSynaptic,
    _per_step_mlp,
)
from test_equivalence_snntorch import _randomise as _st_randomise  # noqa: E402
from tolerances import MEASURED as FP32_MEASURED  # noqa: E402
from tolerances import assert_fp32_close  # noqa: E402

#: the renderer module (``snncc.backends.jax.render`` the attribute is its render function)
render = importlib.import_module("snncc.backends.jax.render")

SPIKE_MISMATCH_TOL = 1e-4
GRAD_REL_TOL = 1e-4
B = 3

#: worst values seen in this module (printed with -s, for the report)
MEASURED = {"spike_mismatch": 0.0, "membrane_abs": 0.0, "grad_rel": 0.0}


@pytest.fixture(scope="module", autouse=True)
def report_measured():
    yield
    print(f"\njax vs reference on snnTorch/Norse, worst measured: {MEASURED}, {FP32_MEASURED}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _tuple(y: Any) -> tuple:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


# --------------------------------------------------------------------------- comparison


def _spike_outputs(graph: Graph) -> list[bool]:
    """Per graph output (in order): whether it is a neuron's spike output."""
    flags = []
    outs = sorted(graph.meta["outputs"], key=lambda n: graph.attrs(n).get("index", 0))
    for o in outs:
        (e,) = graph.in_edges(o)
        spiking = graph.op(e.src) == "neuron" and (
            NeuronSpec.from_dict(graph.attrs(e.src)["neuron"]).output == "spike"
        )
        flags.append(spiking)
    return flags


def _assert_same(got: Any, want: Any, spikes: bool, what: str) -> None:
    got, want = _np(got), _np(want)
    assert got.shape == want.shape, what
    if spikes:
        frac = float(np.mean(got != want))
        MEASURED["spike_mismatch"] = max(MEASURED["spike_mismatch"], frac)
        assert frac <= SPIKE_MISMATCH_TOL, f"{what}: {frac:.2e} of spikes differ"
    else:
        if got.size:
            err = float(np.abs(got - want).max())
            MEASURED["membrane_abs"] = max(MEASURED["membrane_abs"], err)
        assert_fp32_close(got, want, what)


def _grad_rel(got: Any, want: Any) -> float:
    got, want = _np(got).astype(np.float64), _np(want).astype(np.float64)
    assert got.shape == want.shape
    denom = np.linalg.norm(want)
    err = np.linalg.norm(got - want)
    rel = float(err / denom) if denom > 0 else float(err)
    MEASURED["grad_rel"] = max(MEASURED["grad_rel"], rel)
    return rel


def compare(
    model: nn.Module, x: torch.Tensor, cache_dir: str, learnable: tuple[str, ...] = ()
) -> tuple[Any, Any]:
    """Trace once, lower for reference and jax; compare outputs, final state and gradients.

    ``learnable``: param names whose gradient must exist and be non-zero
    (the neuron params under test), beyond the weights.
    """
    graph = trace(model, x)
    assert_fires(graph, x)
    ref = snncc.compile_graph(graph, "reference")
    jx = snncc.compile_graph(graph, "jax", cache_dir=cache_dir)
    spikes = _spike_outputs(ref.ir)

    # forward values and every state variable
    xr = x.clone().requires_grad_()
    y_ref, st_ref = ref.run(xr)
    y_ref = _tuple(y_ref)
    y_jx, st_jx = jx.program.run(x)
    y_jx = _tuple(y_jx)
    assert len(y_jx) == len(y_ref) == len(spikes)
    for k, (g, r, s) in enumerate(zip(y_jx, y_ref, spikes)):
        _assert_same(g, r, s, f"output {k}")
    rates = [float((_np(r) != 0).mean()) for r, s in zip(y_ref, spikes) if s]
    assert not rates or any(0.0 < q < 1.0 for q in rates), f"degenerate spikes: rates {rates}"
    assert set(st_jx) == set(st_ref)
    for nid, vars_ in st_ref.items():
        assert set(st_jx[nid]) == set(vars_), f"state of %{nid}"
        for var, val in vars_.items():  # (a spike state compares exactly at these sizes)
            _assert_same(st_jx[nid][var], val, False, f"state %{nid}.{var}")

    # gradients of one loss through every output
    gen = _gen(99)
    weights = [torch.randn(r.shape, generator=gen) for r in y_ref]
    loss = sum((r * w).sum() for r, w in zip(y_ref, weights))
    loss.backward()
    ref_grads = {n: p.grad for n, p in ref.program.params.items() if p.grad is not None}
    ref_grads["<input>"] = xr.grad
    ws = [jnp.asarray(_np(w)) for w in weights]

    def jloss(params, xx):
        ys = _tuple(jx.jax_fn(params, xx))
        return sum(jnp.sum(y * w) for y, w in zip(ys, ws))

    gp, gx = jax.jit(jax.grad(jloss, argnums=(0, 1)))(jx.program.params, jnp.asarray(_np(x)))
    jx_grads = {**gp, "<input>": gx}
    for name in learnable:
        assert name in ref_grads, f"{name} is not trained by the reference backend"
        assert float(ref_grads[name].abs().sum()) > 0, f"{name}: zero gradient, nothing tested"
    for name, want in ref_grads.items():
        assert bool(torch.isfinite(want).all()), f"reference gradient of {name} is not finite"
        rel = _grad_rel(jx_grads[name], want)
        assert rel <= GRAD_REL_TOL, f"gradient of {name}: relative error {rel:.2e}"
    return ref, jx


def check_streaming(ref: Any, jx: Any, x: torch.Tensor, ks: tuple[int, ...]) -> None:
    """run(x[:k]) + run(x[k:], state) == run(x) in jax, also from the reference backend's state."""
    spikes = _spike_outputs(ref.ir)
    full, _ = jx.program.run(x)
    full = _tuple(full)
    with torch.no_grad():
        want = _tuple(ref.run(x)[0])
    for k in ks:
        a, state = jx.program.run(x[:k])
        b, _ = jx.program.run(x[k:], state)
        for i, (ai, bi, fi, wi) in enumerate(zip(_tuple(a), _tuple(b), full, want)):
            joined = np.concatenate([_np(ai), _np(bi)])
            _assert_same(joined, _np(fi), spikes[i], f"k={k} output {i} vs one jax run")
            _assert_same(joined, wi, spikes[i], f"k={k} output {i} vs reference")
        # state is {node_id: {var: array}} on every backend: a reference state resumes in jax
        with torch.no_grad():
            ra, rstate = ref.run(x[:k])
        rb, _ = jx.program.run(x[k:], rstate)
        for i, (ai, bi, wi) in enumerate(zip(_tuple(ra), _tuple(rb), want)):
            joined = np.concatenate([_np(ai), _np(bi)])
            _assert_same(joined, wi, spikes[i], f"k={k} output {i}, reference state into jax")


# --------------------------------------------------------------------------- snnTorch models


@pytest.mark.parametrize(
    "mech, reset_delay", [("subtract", False), ("zero", True), ("zero", False), ("none", True)]
)
def test_snntorch_per_step_leaky(mech: str, reset_delay: bool, cache_dir: str) -> None:
    net = _per_step_mlp(mech, reset_delay)
    _st_randomise(net, 8, gain=4.0)
    x = torch.randn(10, B, 6, generator=_gen(8)) * 2.0 + 1.5
    compare(net, x, cache_dir)


def test_snntorch_convnet_per_channel_learnable(cache_dir: str) -> None:
    """Per-channel learnable beta and threshold (broadcast over H, W), learnable graded factor.

    One beta sits exactly on the clamp's bound 1.0: torch 2.13 passes the gradient
    there and torch 2.14 gives 0, and jax must follow the torch that runs.
    """
    net = snntorch_convnet(clamp_edges=True)  # clamp edges too
    _st_randomise(net, 3, gain=3.0)
    x = torch.rand(8, B, 1, 8, 8, generator=_gen(3)) * 2
    compare(net, x, cache_dir, learnable=("2.beta", "2.threshold", "5.graded_spikes_factor"))


@pytest.mark.parametrize("mech, reset_delay", [("subtract", True), ("zero", False)])
def test_snntorch_loop_leaky_per_neuron_beta(mech: str, reset_delay: bool, cache_dir: str) -> None:
    """Per-neuron learnable beta from 0.5 to 1.2: the clamp's gradient is 0 above 1."""
    net = LoopLeaky(mech, reset_delay, learn=True)
    _st_randomise(net, 18, gain=4.0)
    x = torch.randn(10, B, 6, generator=_gen(8)) * 2.0 + 1.5
    compare(net, x, cache_dir, learnable=("lif1.beta", "lif1.threshold"))


@pytest.mark.parametrize(
    "mech, reset_delay", [("subtract", False), ("zero", True), ("none", False)]
)
def test_snntorch_synaptic_current_output(mech: str, reset_delay: bool, cache_dir: str) -> None:
    """Synaptic returns spikes, the current and the membrane; alpha is learnable."""
    net = LoopSynaptic(mech, reset_delay)
    _st_randomise(net, 4)
    x = torch.randn(12, B, 6, generator=_gen(4)) + 0.3
    compare(net, x, cache_dir, learnable=("syn.alpha",))


@pytest.mark.parametrize(
    "kind, mech, reset_delay",
    [("linear", "subtract", False), ("V", "zero", False), ("conv", "zero", True)],
)
def test_snntorch_rleaky(kind: str, mech: str, reset_delay: bool, cache_dir: str) -> None:
    """RLeaky: all-to-all (a linear/conv recurrent node, port 'rec') and one-to-one V (state 's')."""
    net = LoopRLeaky(kind, mech, reset_delay)
    _st_randomise(net, 5, gain=1.5)
    shape = (10, B, 1, 5, 5) if kind == "conv" else (10, B, 6)
    x = torch.randn(shape, generator=_gen(5)) + 0.3
    learnable = ("rlif.V",) if kind == "V" else ("rlif.recurrent.weight",)
    compare(net, x, cache_dir, learnable=learnable)


class SurrogateBranches(nn.Module):
    """One Leaky per snnTorch surrogate, all fed the same current; every spike train returned."""

    GRADS = (
        st_surrogate.atan(alpha=2.0),
        st_surrogate.fast_sigmoid(slope=10),
        st_surrogate.sigmoid(
            slope=2
        ),  # exp(-slope x) overflows to NaN (as in snnTorch) for x < -88/slope
        st_surrogate.straight_through_estimator(),
        st_surrogate.heaviside(),
        st_surrogate.triangular(threshold=0.5),
        None,  # surrogate_disable=True
    )

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.lifs = nn.ModuleList(
            snn.Leaky(beta=0.8, spike_grad=g, surrogate_disable=g is None, reset_delay=False)
            for g in self.GRADS
        )
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor):
        mems = [lif.init_leaky() for lif in self.lifs]
        recs: list[list[torch.Tensor]] = [[] for _ in self.lifs]
        for xt in x:
            cur = self.fc(xt)
            for k, lif in enumerate(self.lifs):
                spk, mems[k] = lif(cur, mems[k])
                recs[k].append(self.out(spk))
        return tuple(torch.stack(r) for r in recs)


def test_snntorch_every_surrogate(cache_dir: str) -> None:
    net = SurrogateBranches()
    _st_randomise(net, 21, gain=4.0)
    x = torch.randn(8, B, 6, generator=_gen(21)) * 2.0 + 1.0
    ref, _ = compare(net, x, cache_dir)
    names = {
        NeuronSpec.from_dict(ref.ir.attrs(n)["neuron"]).surrogate for n in ref.ir.iter_ops("neuron")
    }
    assert {"atan", "fast_sigmoid", "snntorch_sigmoid", "straight_through"} <= names
    assert {"snntorch_heaviside", "snntorch_triangular", "no_grad"} <= names


def test_snntorch_streaming_rleaky_synaptic(cache_dir: str) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 8)
            self.fc1b = nn.Linear(6, 8)
            self.rlif = snn.RLeaky(beta=0.9, linear_features=8)
            self.fc2 = nn.Linear(8, 4)
            self.syn = snn.Synaptic(alpha=0.6, beta=0.9)
            self.rv = snn.RLeaky(beta=0.8, all_to_all=False, V=torch.linspace(-0.5, 0.8, 4))

        def forward(self, x: torch.Tensor):
            spk1, mem1 = self.rlif.init_rleaky()
            syn, mem2 = self.syn.init_synaptic()
            spk3, mem3 = self.rv.init_rleaky()
            out = []
            for xt in x:
                # fused into the neuron as a prologue add at port 2, after 'rec' (port 1)
                spk1, mem1 = self.rlif(self.fc1(xt) + self.fc1b(xt), spk1, mem1)
                spk2, syn, mem2 = self.syn(self.fc2(spk1), syn, mem2)
                spk3, mem3 = self.rv(mem2, spk3, mem3)
                out.append(spk3)
            return torch.stack(out)

    net = Net()
    _st_randomise(net, 8)
    x = torch.randn(16, B, 6, generator=_gen(8)) + 0.5
    ref, jx = compare(net, x, cache_dir)
    prologues = [jx.ir.attrs(n).get("prologue") for n in jx.ir.iter_ops("neuron")]
    assert [{"kind": "add", "port": 2}] in prologues
    _, state = jx.program.run(x[:3])
    assert {"v", "i"} <= {var for s in state.values() for var in s}
    assert "s" in {var for s in state.values() for var in s}
    assert "delay" in {var for s in state.values() for var in s}
    check_streaming(ref, jx, x, (1, 7))


# --------------------------------------------------------------------------- Norse models


def test_norse_sequential_state_of_cells(cache_dir: str) -> None:
    model = norse_cell_stack()
    _norse_randomise(model, 8)
    x = torch.randn(10, B, 6, generator=_gen(8)) * 2 + 1.0
    compare(model, x, cache_dir)


def test_norse_recurrent_loop_and_streaming(cache_dir: str) -> None:
    """LIFCell -> LIFRecurrentCell (port 'rec', detached reset) -> LICell; then streaming."""
    model = NorseLoopNet()
    _norse_randomise(model, 11, gain=2.5)
    x = torch.randn(16, B, 6, generator=_gen(11)) * 2 + 1.0
    ref, jx = compare(model, x, cache_dir)
    assert "recurrent" in [g["kind"] for g in jx.ir.meta["groups"]]
    check_streaming(ref, jx, x, (1, 9))


class NorseLearnable(nn.Module):
    """Learnable Norse parameters: per-neuron tau_mem_inv, tau_syn_inv, v_th, v_reset; LIFBox."""

    def __init__(self) -> None:
        super().__init__()
        self.tau_mem = nn.Parameter(torch.linspace(180.0, 320.0, 8))
        self.tau_syn = nn.Parameter(torch.tensor(280.0))
        self.v_th = nn.Parameter(torch.tensor(0.35))
        self.v_reset = nn.Parameter(torch.full((8,), -0.05))
        self.fc = nn.Linear(6, 8)
        self.lif = norse.LIFCell(
            P._replace(
                tau_mem_inv=self.tau_mem,
                tau_syn_inv=self.tau_syn,
                v_th=self.v_th,
                v_reset=self.v_reset,
            )
        )
        self.fc2 = nn.Linear(8, 5)
        self.box = norse.LIFBoxCell(
            LIFBoxParameters(
                tau_mem_inv=torch.as_tensor(400.0),
                v_th=torch.as_tensor(0.3),
                reset_method=reset_subtract,
            ),
            dt=0.0013,
        )

    def forward(self, x: torch.Tensor):
        s1 = s2 = None
        zs, vs, cs, bs = [], [], [], []
        for xt in x:
            z, s1 = self.lif(self.fc(xt), s1)
            b, s2 = self.box(self.fc2(z), s2)
            zs.append(z)
            vs.append(s1.v)
            cs.append(s1.i)
            bs.append(b)
        return torch.stack(zs), torch.stack(vs), torch.stack(cs), torch.stack(bs)


def test_norse_learnable_parameters_and_lifbox(cache_dir: str) -> None:
    model = NorseLearnable()
    _norse_randomise(model, 4)
    x = torch.randn(12, B, 6, generator=_gen(4)) * 2 + 1.0
    compare(model, x, cache_dir, learnable=("tau_mem", "tau_syn", "v_th", "v_reset"))


class NorseSurrogates(nn.Module):
    """One LIFCell per Norse threshold method, fed the same current; an LICell reads their sum.

    Also a LIFBoxCell with its default hard reset (reset_value), whose
    current output is returned as well.
    """

    METHODS = (("super", 100.0), ("triangle", 0.5), ("tanh", 5.0), ("heaviside", 1.0))

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.c0, self.c1, self.c2, self.c3 = (
            norse.LIFCell(P._replace(method=m, alpha=torch.as_tensor(a))) for m, a in self.METHODS
        )
        self.li = norse.LICell(dt=0.002)
        self.box = norse.LIFBoxCell(LIFBoxParameters(v_th=torch.as_tensor(0.5)))

    def forward(self, x: torch.Tensor):
        s0 = s1 = s2 = s3 = so = sb = None
        z0s, z1s, z2s, z3s, vs, bs, lis = [], [], [], [], [], [], []
        for ts in range(x.shape[0]):
            cur = self.fc(x[ts])
            z0, s0 = self.c0(cur, s0)
            z1, s1 = self.c1(cur, s1)
            z2, s2 = self.c2(cur, s2)
            z3, s3 = self.c3(cur, s3)
            vo, so = self.li(z0 + z1 + z2 + z3, so)
            zb, sb = self.box(cur, sb)
            bs.append(zb)
            lis.append(so.i)
            z0s.append(z0)
            z1s.append(z1)
            z2s.append(z2)
            z3s.append(z3)
            vs.append(vo)
        return (
            torch.stack(z0s),
            torch.stack(z1s),
            torch.stack(z2s),
            torch.stack(z3s),
            torch.stack(vs),
            torch.stack(bs),
            torch.stack(lis),
        )


def test_norse_every_surrogate(cache_dir: str) -> None:
    model = NorseSurrogates()
    _norse_randomise(model, 6)
    x = torch.randn(10, B, 6, generator=_gen(6)) * 2 + 1.0
    ref, _ = compare(model, x, cache_dir)
    names = {
        NeuronSpec.from_dict(ref.ir.attrs(n)["neuron"]).surrogate for n in ref.ir.iter_ops("neuron")
    }
    assert {"superspike", "triangle", "norse_tanh", "no_grad"} <= names


# --------------------------------------------------------------------------- coverage, errors


def test_every_surrogate_is_lowered_once() -> None:
    """The jax surrogates are functions the module emits from snncc.ir.surrogates, not a
    second table: every surrogate of the IR has one."""
    from snncc.backends.jax.lower import surrogate_function

    for name, alpha in SURROGATES.items():
        src = "\n".join(surrogate_function(name, alpha, "grad_fn"))
        assert src.startswith("def grad_fn(g, x):"), src


def _jax_surrogate(name: str, alpha: float):
    from snncc.backends.jax.lower import surrogate_function

    scope = {"jax": jax, "jnp": jnp, "rt": runtime}
    exec("\n".join(surrogate_function(name, alpha, "grad_fn")), scope)  # generated code
    return scope["grad_fn"]


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_gradients_match_torch(name: str) -> None:
    """Each jax surrogate backward equals snncc.surrogate's (the frameworks' own formulas)."""
    alpha = SURROGATES[name]
    xs = np.linspace(-1.5, 1.5, 61, dtype=np.float32)
    xs = np.concatenate([xs, np.float32([0.0, 1e-3, -1e-3])])
    want = surrogate_grad(torch.from_numpy(xs), name, alpha).numpy()
    fn = _jax_surrogate(name, alpha)
    got = jax.vmap(jax.grad(lambda v: runtime.spike_gt(v, fn)))(jnp.asarray(xs))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def _one_neuron_graph(spec: NeuronSpec) -> Graph:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2])
    n = g.add_node("neuron", [x], attrs={"neuron": spec.to_dict()}, shape=["B", 2], name="lif")
    g.add_node("output", [n], attrs={"index": 0})
    return g


def _synaptic_spec(**kw: Any) -> NeuronSpec:
    base = dict(
        model="synaptic",
        charge="snntorch_synaptic",
        reset="subtract",
        v_reset=0.0,
        fire_cmp=">",
        surrogate="atan",
        alpha=2.0,
        extra={"alpha": 0.5, "beta": 0.9},
    )
    return NeuronSpec(**{**base, **kw})


def test_unknown_form_is_refused_naming_the_node(cache_dir: str) -> None:
    """Every defined form lowers to jax; one without a definition is refused by name."""
    be = snncc.backends.get("jax")
    g = _one_neuron_graph(_synaptic_spec())
    spec = _synaptic_spec().to_dict()
    spec["charge"] = "made_up_form"
    g.attrs(1)["neuron"] = spec
    with pytest.raises(UnsupportedError, match=r"lif.*made_up_form.*not defined"):
        be.lower(g, cache_dir=cache_dir)


def test_unknown_surrogate_and_missing_constant_are_refused(cache_dir: str) -> None:
    be = snncc.backends.get("jax")
    spec = _synaptic_spec().to_dict()
    spec["surrogate"] = "made_up_grad"
    g = _one_neuron_graph(_synaptic_spec())
    g.attrs(1)["neuron"] = spec
    with pytest.raises(UnsupportedError, match="made_up_grad"):
        be.lower(g, cache_dir=cache_dir)
    g = _one_neuron_graph(_synaptic_spec(extra={"beta": 0.9}))  # no alpha, no param
    with pytest.raises(UnsupportedError, match=r"'alpha'"):
        be.lower(g, cache_dir=cache_dir)


def test_partial_state_is_refused(cache_dir: str) -> None:
    """A state with v but not i would silently restart the current: refused."""
    be = snncc.backends.get("jax")
    prog = be.lower(_one_neuron_graph(_synaptic_spec()), cache_dir=cache_dir)
    x = np.ones((3, 2, 2), np.float32)
    _, state = prog.run(x)
    assert set(state[1]) == {"v", "i"}
    with pytest.raises(ShapeError, match="lacks 'i'"):
        prog.run(x, {1: {"v": state[1]["v"]}})
    with pytest.raises(ShapeError, match="shape"):
        prog.run(x, {1: {"v": np.zeros((5, 2), np.float32), "i": np.zeros((5, 2), np.float32)}})
