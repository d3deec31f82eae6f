"""The jax backend's Pallas neuron kernels (``neuron_kernels="pallas"``) against its scan path.

Pallas runs here in interpret mode (a CPU): the same kernel bodies the GPU
runs through Triton, evaluated by Pallas' interpreter. Tolerances, against the
``lax.scan`` path of the same compiled model (itself tested against the source
frameworks in tests/test_jax_backend.py and tests/test_jax_snntorch_norse.py):

- forward outputs (spikes, membranes, currents, activations) and the final
  state: **bit for bit** (the kernels compute the form's step with the same
  lowering and the same operation order; measured: 0 differences);
- gradients of a scalar loss wrt the input and every parameter (weights, and
  learnable neuron params through their per-call quantities): relative L2 error
  at most ``GRAD_REL_TOL`` = 1e-4 (the backward kernel applies the step's VJP from
  ``snncc.ir.expr.vjp``, jax's scan differentiates the same step; sums run in
  another order);
- streaming: ``run(x[:k])`` then ``run(x[k:], state)`` equals ``run(x)`` bit for bit.

Sizes are odd on purpose (B*N not a multiple of the 128-lane block: padded
lanes), and T is prime. Every model's forward and training step is also lowered
for the cuda platform (Pallas' Triton backend), which needs no GPU: what runs
on a GPU is checked to lower, its speed is measured by the benchmark suite
(``jax-pallas``, benchmarks/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
pytest.importorskip("jax.experimental.pallas")
snn = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")

from spikingjelly.activation_based import layer, neuron, surrogate  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

import snncc  # noqa: E402
from snncc.backends.jax import neuron_kernels  # noqa: E402
from snncc.backends.jax.program import load_module  # noqa: E402
from snncc.errors import BackendError  # noqa: E402

GRAD_REL_TOL = 1e-4
T = 7  # prime: no block of time steps divides it
B = 3
#: worst gradient error seen (printed with -s)
MEASURED = {"grad_rel": 0.0}


@pytest.fixture(scope="module", autouse=True)
def report_measured():
    yield
    print(f"\njax pallas vs scan, worst measured: {MEASURED}")


def sj_net() -> nn.Module:
    """SpikingJelly LIF (decay_input), IF, PLIF (learnable tau: a quantity) and LIAF (analog)."""
    atan = surrogate.ATan()
    return nn.Sequential(
        layer.Linear(5, 50),  # B*N = 150: two 128-lane blocks, the second padded
        neuron.LIFNode(tau=2.0, surrogate_function=atan, step_mode="m"),
        layer.Linear(50, 7),
        neuron.IFNode(v_reset=None, surrogate_function=atan, step_mode="m"),
        layer.Linear(7, 9),
        neuron.ParametricLIFNode(init_tau=2.5, surrogate_function=atan, step_mode="m"),
        layer.Linear(9, 6),
        neuron.LIAFNode(
            act=nn.Sigmoid(), threshold_related=False, tau=2.0, step_mode="m", store_v_seq=True
        ),
    )


class NorseNet(nn.Module):
    """Norse LIFCell and LICell (a two-state integrator), per step."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 11), nn.Linear(11, 5)
        self.lif = norse.LIFCell(norse.LIFParameters(tau_mem_inv=torch.as_tensor(150.0)))
        self.li = norse.LICell()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = s2 = None
        out = []
        for xt in x:
            z, s1 = self.lif(self.fc1(xt), s1)
            y, s2 = self.li(self.fc2(z), s2)
            out.append(y)
        return torch.stack(out)


class SnnTorchNet(nn.Module):
    """snnTorch Leaky (per-neuron beta, learnable beta and threshold: quantities with
    gradients) into Synaptic (two states, learnable alpha); spikes, current and membrane out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 10), nn.Linear(10, 8)
        self.lif = snn.Leaky(
            beta=torch.linspace(0.5, 1.2, 10),
            reset_delay=True,
            learn_beta=True,
            learn_threshold=True,
        )
        self.syn = snn.Synaptic(alpha=0.7, beta=0.85, reset_mechanism="zero", learn_alpha=True)

    def forward(self, x: torch.Tensor):
        mem1 = self.lif.init_leaky()
        syn, mem2 = self.syn.init_synaptic()
        spk_rec, syn_rec, mem_rec = [], [], []
        for xt in x:
            spk1, mem1 = self.lif(self.fc1(xt), mem1)
            spk, syn, mem2 = self.syn(self.fc2(spk1), syn, mem2)
            spk_rec.append(spk)
            syn_rec.append(syn)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(syn_rec), torch.stack(mem_rec)


MODELS = {
    "spikingjelly": (sj_net, 5, 2.0),
    "snntorch": (SnnTorchNet, 6, 1.5),
    "norse": (NorseNet, 6, 3.0),
}


def _compiled(name: str, kernels: str, x: torch.Tensor) -> Any:
    make, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():  # weights large enough that every layer fires
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
    return snncc.compile(model, x, backend="jax", neuron_kernels=kernels)


def _input(name: str, steps: int = T) -> torch.Tensor:
    _, features, gain = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    return torch.rand(steps, B, features, generator=gen) * gain


def _tuple(y: Any) -> tuple:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request) -> tuple[str, Any, Any, torch.Tensor]:
    if jax.default_backend() != "cpu":
        pytest.skip("interpret-mode checks run where jax's default device is a CPU")
    name = request.param
    x = _input(name)
    return name, _compiled(name, "pallas", x), _compiled(name, "scan", x), x


def _loss(program: Any, seed: int = 3):
    """A scalar of every output from a given state, weighted by fixed random values (every
    element matters): differentiable in the params, the input and the state."""

    def loss(params, xx, state):
        ys, _ = program.module.forward(params, (xx,), state)
        total = 0.0
        for k, y in enumerate(ys):
            w = jax.random.normal(jax.random.key(seed + k), y.shape)
            total = total + jnp.sum(y * w)
        return total

    return loss


def _rel(got: Any, want: Any) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def test_every_neuron_group_is_a_pallas_kernel(pair) -> None:
    name, pal, scan, _ = pair
    assert "Pallas kernel pair (Pallas interpreter)" in pal.program.source
    assert "lax.scan" not in pal.program.source.split("def forward", 1)[1]
    assert "pallas_call" not in pal.program.source  # the driver lives in backends/jax/pallas.py
    assert "neuron_kernels='scan'" in scan.program.source
    assert "pk." not in scan.program.source


def test_forward_and_state_equal_the_scan_bit_for_bit(pair) -> None:
    name, pal, scan, x = pair
    ys_p, st_p = pal.program.run(x)
    ys_s, st_s = scan.program.run(x)
    for a, b in zip(_tuple(ys_p), _tuple(ys_s), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert st_p.keys() == st_s.keys()
    for nid in st_s:
        assert st_p[nid].keys() == st_s[nid].keys()
        for var in st_s[nid]:
            np.testing.assert_array_equal(np.asarray(st_p[nid][var]), np.asarray(st_s[nid][var]))
    if name != "norse":  # the Norse net's output is the LI membrane (continuous)
        spikes = np.asarray(_tuple(ys_p)[0])
        assert 0.0 < spikes.mean() < 1.0, f"{name}: the test input must make the output fire"


def test_gradients_match_the_scan(pair) -> None:
    """d loss / d (params, input, state at the start) from the backward kernel: a model trained
    on a stream (the state a previous run returned) gets the state's gradient too."""
    name, pal, scan, x = pair
    _, state = scan.program.run(x[:2])
    state = {k: {v: jnp.asarray(a) for v, a in s.items()} for k, s in state.items()}
    xj, params = jnp.asarray(x[2:].numpy()), scan.program.params
    gp = jax.jit(jax.grad(_loss(pal.program), argnums=(0, 1, 2)))(params, xj, state)
    gs = jax.jit(jax.grad(_loss(scan.program), argnums=(0, 1, 2)))(params, xj, state)
    worst = 0.0
    for key in gs[0]:
        if not np.issubdtype(np.asarray(gs[0][key]).dtype, np.floating):
            continue
        assert np.linalg.norm(np.asarray(gs[0][key])) > 0 or "bias" in key, f"{name} {key} zero"
        rel = _rel(gp[0][key], gs[0][key])
        assert rel <= GRAD_REL_TOL, f"{name}: d/d{key} relative error {rel:.2e}"
        worst = max(worst, rel)
    rel = _rel(gp[1], gs[1])
    assert rel <= GRAD_REL_TOL, f"{name}: d/dx relative error {rel:.2e}"
    assert gs[2].keys() == state.keys()
    for nid in gs[2]:
        for var in gs[2][nid]:
            r = _rel(gp[2][nid][var], gs[2][nid][var])
            assert r <= GRAD_REL_TOL, f"{name}: d/d state %{nid} {var} relative error {r:.2e}"
            worst = max(worst, r)
    MEASURED["grad_rel"] = max(MEASURED["grad_rel"], worst, rel)


def test_streaming_state_in_and_out(pair) -> None:
    name, pal, _, x = pair
    whole, _ = pal.program.run(x)
    first, state = pal.program.run(x[:3])
    rest, _ = pal.program.run(x[3:], state)
    for w, a, b in zip(_tuple(whole), _tuple(first), _tuple(rest), strict=True):
        np.testing.assert_array_equal(np.asarray(w), np.concatenate([a, b]))


def test_every_firing_form_at_its_threshold_and_its_gradients() -> None:
    """Every firing form (SpikingJelly, snnTorch, Norse; ``>=`` and ``>``; one graph from
    tests/checks.py) charged exactly onto its threshold and one ulp either side: the Pallas
    kernels' spikes equal the scan's bit for bit and the firing rule, and the backward
    kernels' input gradients are within 1e-4 of the scan's (one jit each)."""
    from checks import assert_fires_at_threshold, threshold_graph

    from snncc.backends import get
    from snncc.ir.passes import run_pipeline

    g, xs, cases = threshold_graph()
    be = get("jax")
    graph = run_pipeline(g, be.pipeline)
    pal, scan = (be.lower(graph, neuron_kernels=k) for k in ("pallas", "scan"))
    assert pal.source.count("pk.neuron_group(") == len(cases) - sum(
        len(spec.input_ports) > 1 for spec, _ in cases
    )
    xj = tuple(jnp.asarray(x.numpy()) for x in xs)

    def loss(program):
        def f(xx):
            ys, _ = program.module.forward(program.params, xx, {})
            weights = (jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape) for y in ys)
            return sum(jnp.sum(y * w) for y, w in zip(ys, weights)), ys

        return jax.jit(jax.value_and_grad(f, has_aux=True))

    (_, ys_p), gx_p = loss(pal)(xj)
    (_, ys_s), gx_s = loss(scan)(xj)
    for (spec, h), yp, ys in zip(cases, ys_p, ys_s, strict=True):
        np.testing.assert_array_equal(np.asarray(yp), np.asarray(ys), spec.summary())
        assert_fires_at_threshold(spec, torch.tensor(np.array(yp)), h)
    for (spec, _), gp, gs in zip(cases, gx_p, gx_s, strict=True):
        rel = _rel(gp, gs)
        assert rel <= GRAD_REL_TOL, f"{spec.summary()}: input gradient differs by {rel:.2e}"
        MEASURED["grad_rel"] = max(MEASURED["grad_rel"], rel)


def test_kernels_lower_for_cuda_through_triton(pair) -> None:
    """The GPU's kernels (interpret off) lower for the cuda platform: forward and jax.grad."""
    name, pal, _, x = pair
    source = pal.program.source.replace("interpret=True", "interpret=False")
    module, _ = load_module(source, pal.program.options.get("cache_dir"))
    params, xs = pal.program.params, (jnp.asarray(x.numpy()),)

    def loss(p):
        ys, _ = module.forward(p, xs, {})
        return sum(jnp.sum(y) for y in ys)

    triton = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    exported = jax.export.export(
        jax.jit(jax.value_and_grad(loss)), platforms=["cuda"], disabled_checks=triton
    )(params)
    text = exported.mlir_module()
    n_groups = source.count("pk.neuron_group(")
    assert text.count("__gpu$xla.gpu.triton") == 2 * n_groups  # a forward and a backward each


def test_option_is_checked_and_defaults_by_platform(monkeypatch) -> None:
    assert neuron_kernels(None)["neuron_kernels"] == "scan"  # this machine: a CPU
    assert neuron_kernels("pallas")["pallas_interpret"] is True
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert neuron_kernels(None) == {
        "neuron_kernels": "pallas",
        "neuron_kernels_explicit": False,
        "pallas_interpret": False,
    }
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert neuron_kernels(None)["neuron_kernels"] == "scan"
    with pytest.raises(BackendError, match="not on 'tpu'"):
        neuron_kernels("pallas")
    with pytest.raises(BackendError, match="must be 'scan' or 'pallas'"):
        neuron_kernels("triton")


class RLeakyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.rlif = snn.RLeaky(beta=0.9, linear_features=8)
        self.lif = snn.Leaky(beta=0.8)

    def forward(self, x: torch.Tensor):
        spk, mem = self.rlif.init_rleaky()
        mem2 = self.lif.init_leaky()
        out = []
        for xt in x:
            spk, mem = self.rlif(self.fc(xt), spk, mem)
            s2, mem2 = self.lif(spk, mem2)
            out.append(s2)
        return torch.stack(out)


def test_a_recurrent_group_stays_a_scan_and_says_so() -> None:
    """A recurrent group (its product inside the time loop) is a lax.scan under either choice;
    the neuron group beside it is a Pallas kernel, and both agree with the scan path."""
    torch.manual_seed(0)
    net = RLeakyNet()
    x = torch.rand(5, B, 6) * 2.0
    pal = snncc.compile(net, x, backend="jax", neuron_kernels="pallas")
    scan = snncc.compile(net, x, backend="jax", neuron_kernels="scan")
    src = pal.program.source
    assert "lax.scan over t (a recurrent group of" in src
    assert src.count("pk.neuron_group(") == 1
    np.testing.assert_array_equal(np.asarray(pal.program(x)), np.asarray(scan.program(x)))


@pytest.mark.gpu
def test_triton_kernels_on_a_gpu_match_the_scan() -> None:
    """On a GPU the kernels run through Triton, which rounds transcendental functions its own
    way and may contract a*b+c into one rounding. So each firing form runs as one layer on
    its own input (no spike flipped upstream can move what follows), and a wide LIF layer
    (odd B*N, many blocks) after a GEMM: spikes may differ in at most 1e-4 of the values,
    final states within 1e-5 relative, gradients (input, PLIF's w, the GEMM) within 1e-4."""
    from checks import threshold_graph

    from snncc.backends import get
    from snncc.ir.passes import run_pipeline

    if jax.default_backend() != "gpu":
        pytest.skip("needs jax with a CUDA GPU (jax[cuda12] or jax[cuda13])")
    be = get("jax")
    g, xs, _ = threshold_graph()
    graph = run_pipeline(g, be.pipeline)
    gen = torch.Generator().manual_seed(5)
    forms_x = tuple(torch.rand((37, *x.shape[1:]), generator=gen) * 2.0 for x in xs)
    torch.manual_seed(0)
    wide = nn.Sequential(layer.Linear(5, 1001), neuron.LIFNode(tau=2.0, step_mode="m"))
    wide_x = torch.rand(37, 3, 5, generator=gen) * 2.0
    cases = [
        (be.lower(graph, neuron_kernels=k) for k in ("pallas", "scan")),
        (
            snncc.compile(wide, wide_x, backend="jax", neuron_kernels=k).program
            for k in ("pallas", "scan")
        ),
    ]
    worst = {"spike_mismatch": 0.0, "state_rel": 0.0, "grad_rel": 0.0}
    for (pal, scan), x in zip(cases, (forms_x, (wide_x,)), strict=True):
        assert "Pallas kernel pair (Triton)" in pal.source
        xj = tuple(jnp.asarray(a.numpy()) for a in x)

        def step(program):
            def f(params, xx):
                ys, state = program.module.forward(params, xx, {})
                w = (jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape) for y in ys)
                return sum(jnp.sum(y * c) for y, c in zip(ys, w)), (ys, state)

            return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

        (_, (ys_p, st_p)), g_p = step(pal)(pal.params, xj)
        (_, (ys_s, st_s)), g_s = step(scan)(scan.params, xj)
        for a, b in zip(ys_p, ys_s, strict=True):
            mismatch = float(np.mean(np.asarray(a) != np.asarray(b)))
            worst["spike_mismatch"] = max(worst["spike_mismatch"], mismatch)
            assert mismatch <= 1e-4, f"{mismatch:.2e} of the spikes differ"
        for a, b in zip(jax.tree.leaves(st_p), jax.tree.leaves(st_s), strict=True):
            worst["state_rel"] = max(worst["state_rel"], _rel(a, b))
            assert _rel(a, b) <= 1e-5, f"final states differ by {_rel(a, b):.2e}"
        for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_s), strict=True):
            worst["grad_rel"] = max(worst["grad_rel"], _rel(a, b))
            assert _rel(a, b) <= GRAD_REL_TOL, f"gradients differ by {_rel(a, b):.2e}"
    print(f"\njax pallas (Triton) vs scan on {jax.devices()[0].device_kind}: worst {worst}")


def test_a_group_pallas_cannot_run_is_a_scan_by_default_and_an_error_when_asked() -> None:
    """The refusal (here: a neuron group made to read a value without a time axis) is a scan
    with its reason in the source under the default, one error line when asked for."""
    from snncc.backends.jax.render import Renderer, segments_of
    from snncc.errors import UnsupportedError

    x = _input("norse")
    graph = _compiled("norse", "scan", x).program.graph
    neuron = next(s for s in segments_of(graph) if s.group_kind == "neuron")
    (nid,) = neuron.nodes
    src = graph.in_edges(nid)[0].src
    options = {"neuron_kernels": "pallas", "pallas_interpret": True}
    default = Renderer(graph, options)
    default.static.add(src)
    assert "reads a value without a time axis" in default.pallas_refusal(neuron)
    asked = Renderer(graph, {**options, "neuron_kernels_explicit": True})
    asked.static.add(src)
    with pytest.raises(UnsupportedError) as err:
        asked.pallas_refusal(neuron)
    msg = str(err.value)
    assert "\n" not in msg and "neuron_kernels='pallas' cannot run group" in msg
    assert "use neuron_kernels='scan'" in msg
