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

import snncc  # noqa: E402
from snncc.backends.jax import neuron_kernels  # noqa: E402
from snncc.backends.jax.program import load_module  # noqa: E402
from snncc.errors import BackendError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_equivalence_snntorch import LoopLeaky, LoopSynaptic  # noqa: E402

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


MODELS = {
    "spikingjelly": (sj_net, 5, 2.0),
    "snntorch_leaky": (lambda: LoopLeaky("subtract", True, learn=True), 6, 1.5),
    "snntorch_synaptic": (lambda: LoopSynaptic("zero", False), 6, 1.5),
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
    """A scalar of every output, weighted by fixed random values (every element matters)."""

    def loss(params, xx):
        ys = _tuple(program.jax_fn(params, xx))
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
    name, pal, scan, x = pair
    xj = jnp.asarray(x.numpy())
    params = scan.program.params
    gp = jax.jit(jax.grad(_loss(pal.program), argnums=(0, 1)))(params, xj)
    gs = jax.jit(jax.grad(_loss(scan.program), argnums=(0, 1)))(params, xj)
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
    MEASURED["grad_rel"] = max(MEASURED["grad_rel"], worst, rel)


def test_streaming_state_in_and_out(pair) -> None:
    name, pal, _, x = pair
    whole, _ = pal.program.run(x)
    first, state = pal.program.run(x[:3])
    rest, _ = pal.program.run(x[3:], state)
    for w, a, b in zip(_tuple(whole), _tuple(first), _tuple(rest), strict=True):
        np.testing.assert_array_equal(np.asarray(w), np.concatenate([a, b]))


def test_gradient_reaches_the_initial_state() -> None:
    """d loss / d state0 through the backward kernel equals the scan's (streamed training)."""
    x = _input("snntorch_synaptic")
    pal, scan = (_compiled("snntorch_synaptic", k, x) for k in ("pallas", "scan"))
    _, state = scan.program.run(x[:2])
    state = {k: {v: jnp.asarray(a) for v, a in s.items()} for k, s in state.items()}
    xs = (jnp.asarray(x[2:].numpy()),)

    def loss(program):
        def f(st):
            ys, _ = program.module.forward(program.params, xs, st)
            return sum(jnp.sum(y * (k + 1.0)) for k, y in enumerate(ys))

        return f

    gp, gs = jax.grad(loss(pal.program))(state), jax.grad(loss(scan.program))(state)
    for nid in gs:
        for var in gs[nid]:
            assert _rel(gp[nid][var], gs[nid][var]) <= GRAD_REL_TOL, (nid, var)


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
    way and may contract a*b+c: spikes may differ in at most 1e-4 of the values (none at
    these sizes), continuous values within 1e-5 relative, gradients within 1e-4."""
    if jax.default_backend() != "gpu":
        pytest.skip("needs jax with a CUDA GPU (jax[cuda12] or jax[cuda13])")
    worst = {"spike_mismatch": 0.0, "value_rel": 0.0, "grad_rel": 0.0}
    for name in sorted(MODELS):
        x = _input(name, steps=37)
        pal, scan = _compiled(name, "pallas", x), _compiled(name, "scan", x)
        assert "Pallas kernel pair (Triton)" in pal.program.source
        for a, b in zip(_tuple(pal.program(x)), _tuple(scan.program(x)), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if name != "norse" and set(np.unique(b)) <= {0.0, 1.0}:
                mismatch = float(np.mean(a != b))
                worst["spike_mismatch"] = max(worst["spike_mismatch"], mismatch)
                assert mismatch <= 1e-4, f"{name}: {mismatch:.2e} of the spikes differ"
            else:
                rel = _rel(a, b)
                worst["value_rel"] = max(worst["value_rel"], rel)
                assert rel <= 1e-5, f"{name}: outputs differ by {rel:.2e}"
        xj = jnp.asarray(x.numpy())
        gp = jax.jit(jax.grad(_loss(pal.program), argnums=(0, 1)))(scan.program.params, xj)
        gs = jax.jit(jax.grad(_loss(scan.program), argnums=(0, 1)))(scan.program.params, xj)
        for got, want in zip(jax.tree.leaves(gp), jax.tree.leaves(gs), strict=True):
            rel = _rel(got, want)
            worst["grad_rel"] = max(worst["grad_rel"], rel)
            assert rel <= GRAD_REL_TOL, f"{name}: gradient differs by {rel:.2e}"
    print(f"\njax pallas (Triton) vs scan on {jax.devices()[0].device_kind}: worst {worst}")
