"""ONNX export and import of snnTorch and Norse models, against the reference backend.

Every snnTorch and Norse charge form (``snncc.ir.neuron.FORMS``) is exported
with the time loop inside (one ``Scan`` per neuron, one per recurrent
component: RLeaky's and LIFRecurrentCell's recurrent Linear/Conv steps inside
the neuron's Scan), checked with ``onnx.checker.check_model(full_check=True)``
(inside :func:`to_onnx`), run in onnxruntime at other ``T`` and ``B`` than the
model was compiled with, and compared with the reference backend on the same
IR (the reference backend itself equals snnTorch/Norse bit for bit, see
``test_equivalence_snntorch.py`` / ``test_equivalence_norse.py``).

Exactness (onnxruntime CPU, float32):

- *exact models*: every neuron Scan is element-wise IEEE arithmetic in
  :mod:`snncc.neurons`' order, the params' per-sequence constants (the beta
  and alpha clamps, Norse's ``dt * tau_mem_inv``) are single exact ops, and
  the Linear/Conv layers between neurons get dyadic weights (k/8) fed spikes
  (or dyadic values), so their sums are exact in any order. Every output
  (spikes, membranes, currents) and every final state must then be bit-equal.
- *float models*: random float weights; Gemm/Conv accumulate in another order
  than torch's kernels (a few ulps, as in ``test_onnx.py``). Spike outputs
  may then differ in at most ``SPIKE_TOL`` = 1e-4 of the values (0 measured)
  and membranes/currents within ``allclose(rtol=1e-5, atol=1e-5)`` (measured
  max 3.8e-6); the worst values are printed with ``pytest -s``.

Round trip: ``from_onnx`` rebuilds the identical IR (same printed IR, node
data, edges, params), whose reference outputs equal the original's exactly,
and its re-export is byte-identical to the file.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
snn = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")

from norse.torch.functional.leaky_integrator import LIParameters  # noqa: E402
from norse.torch.functional.lif_box import LIFBoxParameters  # noqa: E402
from norse.torch.functional.reset import reset_subtract  # noqa: E402

import snncc  # noqa: E402
from snncc.backends.reference import ReferenceProgram  # noqa: E402
from snncc.errors import IRError, UnsupportedError  # noqa: E402
from snncc.exchange.onnx_export import (  # noqa: E402
    CHARGE_FORMS,
    MAX_OPSET,
    MIN_OPSET,
    ONNX_OPS,
    encode,
    to_onnx,
)
from snncc.exchange.onnx_import import from_onnx  # noqa: E402
from snncc.frontend import trace  # noqa: E402
from snncc.ir.graph import Graph  # noqa: E402
from snncc.ir.neuron import FORMS, NORSE_FORMS, SNNTORCH_FORMS, NeuronSpec  # noqa: E402
from snncc.ir.passes import run_pipeline  # noqa: E402
from snncc.ir.printer import format_graph  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from peer_models import norse_sequence_stack, snntorch_convnet  # noqa: E402
from test_equivalence_norse import LoopNet as NorseLoopNet  # noqa: E402
from test_equivalence_norse import P  # noqa: E402
from test_equivalence_norse import _randomise as norse_randomise  # noqa: E402
from test_equivalence_snntorch import LoopRLeaky, LoopSynaptic  # noqa: E402
from test_equivalence_snntorch import _randomise as st_randomise  # noqa: E402
from test_onnx import (  # noqa: E402
    JAX,
    assert_exact,
    probe_all,
    run_onnx,
    run_ref,
    session,
)

SPIKE_TOL = 1e-4
#: (T, B) the models are compiled with; the ONNX runs use others
TRACE_TB = (8, 3)
RUN_TB = [(1, 2), (13, 5)]
#: worst values measured on the float models (printed with -s, for the report)
MEASURED = {"spike_mismatch": 0.0, "max_abs": 0.0}


@pytest.fixture(scope="module", autouse=True)
def report_measured():
    yield
    print(f"\nONNX vs reference on snnTorch/Norse float models, worst measured: {MEASURED}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dyadic(model: nn.Module, seed: int) -> None:
    """Linear/Conv weights k/8 and biases k/16: sums of spikes times them are exact in any order."""
    gen = _gen(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            with torch.no_grad():
                m.weight.copy_(torch.randint(-3, 6, m.weight.shape, generator=gen) / 8.0)
                if m.bias is not None:
                    m.bias.copy_(torch.randint(-4, 5, m.bias.shape, generator=gen) / 16.0)
    for name, p in model.named_parameters():
        if name.endswith("input_weights") or name.endswith("recurrent_weights"):
            with torch.no_grad():
                p.copy_(torch.randint(-3, 6, p.shape, generator=gen) / 8.0)


# --------------------------------------------------------------------------- snnTorch models


class StLeakySynaptic(nn.Module):
    """x -> Leaky (per-neuron beta, 1.2 clamped to 1; learnable threshold) -> Linear -> Synaptic.

    The Leaky has learnable graded spikes (0.5), the Synaptic a learnable
    alpha; every variable is returned: spikes, membranes and the current.
    """

    def __init__(self, mech: str, reset_delay: bool) -> None:
        super().__init__()
        common = {"reset_mechanism": mech, "reset_delay": reset_delay}
        self.lif = snn.Leaky(
            beta=torch.linspace(0.5, 1.2, 6),
            learn_beta=True,
            learn_threshold=True,
            graded_spikes_factor=0.5,
            learn_graded_spikes_factor=True,
            **common,
        )
        self.fc = nn.Linear(6, 5)
        self.syn = snn.Synaptic(alpha=0.7, beta=0.85, learn_alpha=True, **common)

    def forward(self, x: torch.Tensor):
        mem = self.lif.init_leaky()
        syn, mem2 = self.syn.init_synaptic()
        recs: list[list[torch.Tensor]] = [[] for _ in range(5)]
        for xt in x:
            spk, mem = self.lif(xt, mem)
            spk2, syn, mem2 = self.syn(self.fc(spk), syn, mem2)
            for r, v in zip(recs, (spk, mem, spk2, syn, mem2)):
                r.append(v)
        return tuple(torch.stack(r) for r in recs)


class StRLeaky(nn.Module):
    """x -> RLeaky: all-to-all Linear / Conv2d (port 'rec', one Scan) or one-to-one V (state 's')."""

    def __init__(self, kind: str, mech: str, reset_delay: bool) -> None:
        super().__init__()
        common = {"beta": 0.9, "reset_mechanism": mech, "reset_delay": reset_delay}
        if kind == "linear":
            self.rlif = snn.RLeaky(linear_features=6, **common)
        elif kind == "V":
            self.rlif = snn.RLeaky(all_to_all=False, V=torch.linspace(-0.5, 0.8, 6), **common)
        else:
            self.rlif = snn.RLeaky(conv2d_channels=2, kernel_size=3, **common)

    def forward(self, x: torch.Tensor):
        spk, mem = self.rlif.init_rleaky()
        spks, mems = [], []
        for xt in x:
            spk, mem = self.rlif(xt, spk, mem)
            spks.append(spk)
            mems.append(mem)
        return torch.stack(spks), torch.stack(mems)


def st_per_step() -> nn.Module:
    """A per-step init_hidden Sequential (step_mode 's'): Leaky -> Linear -> RLeaky (SCC)."""
    return nn.Sequential(
        snn.Leaky(beta=0.9, init_hidden=True, reset_delay=False),
        nn.Linear(6, 4),
        snn.RLeaky(beta=0.8, linear_features=4, init_hidden=True, output=True),
    )


# --------------------------------------------------------------------------- Norse models


class NorseCells(nn.Module):
    """LIFCell on x -> LIFRecurrentCell -> Linear -> two LIFBoxCells (own dt; hard reset with a
    Python-float tau_mem_inv, subtract reset) -> LICell; states' v and i returned too."""

    def __init__(self) -> None:
        super().__init__()
        self.lif = norse.LIFCell(P)
        self.rec = norse.LIFRecurrentCell(6, 5, P)
        self.fc = nn.Linear(5, 4)
        self.box = norse.LIFBoxCell(
            LIFBoxParameters(
                tau_mem_inv=433.0,  # a Python float: dt * tau_mem_inv is a double
                v_leak=torch.as_tensor(0.02),
                v_th=torch.as_tensor(0.3),
                v_reset=torch.as_tensor(-0.05),
            ),
            dt=0.0013,
        )
        self.box_sub = norse.LIFBoxCell(
            LIFBoxParameters(
                tau_mem_inv=torch.as_tensor(400.0),
                v_th=torch.as_tensor(0.3),
                reset_method=reset_subtract,
            ),
            dt=0.0011,
        )
        self.li = norse.LICell(LIParameters(tau_mem_inv=torch.as_tensor(150.0)), dt=0.002)

    def forward(self, x: torch.Tensor):
        s1 = s2 = sb = sc = so = None
        recs: list[list[torch.Tensor]] = [[] for _ in range(8)]
        for xt in x:
            z1, s1 = self.lif(xt, s1)
            z2, s2 = self.rec(z1, s2)
            cur = self.fc(z2)
            zb, sb = self.box(cur, sb)
            zc, sc = self.box_sub(cur, sc)
            vo, so = self.li(zb + zc, so)
            for r, v in zip(recs, (z1, s1.v, s1.i, z2, zb, zc, vo, so.i)):
                r.append(v)
        return tuple(torch.stack(r) for r in recs)


class NorseLearnable(nn.Module):
    """An LIFCell on x whose tau_mem_inv (per neuron), tau_syn_inv, v_th, v_reset are Parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.tau_mem = nn.Parameter(torch.linspace(180.0, 320.0, 6))
        self.tau_syn = nn.Parameter(torch.tensor(280.0))
        self.v_th = nn.Parameter(torch.tensor(0.35))
        self.v_reset = nn.Parameter(torch.full((6,), -0.05))
        self.lif = norse.LIFCell(
            P._replace(
                tau_mem_inv=self.tau_mem,
                tau_syn_inv=self.tau_syn,
                v_th=self.v_th,
                v_reset=self.v_reset,
            ),
            dt=0.0007,
        )

    def forward(self, x: torch.Tensor):
        s = None
        zs, vs, cs = [], [], []
        for xt in x:
            z, s = self.lif(xt, s)
            zs.append(z)
            vs.append(s.v)
            cs.append(s.i)
        return torch.stack(zs), torch.stack(vs), torch.stack(cs)


def norse_sequence() -> nn.Module:
    """Sequence modules (step_mode 'm', fed [T, B, ...]): LIF -> Linear -> LI.

    It returns ``(y, state)``; snncc compiles ``y`` (as test_equivalence_norse does)."""
    return norse.SequentialState(norse.LIF(P), nn.Linear(6, 4), norse.LI(dt=0.002))


# --------------------------------------------------------------------------- model table

#: name -> (builder, per-step input shape, input scale, input offset)
EXACT: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], float, float]] = {
    "leaky_syn_subtract": (lambda: StLeakySynaptic("subtract", True), (6,), 2.0, 1.0),
    "leaky_syn_subtract_now": (lambda: StLeakySynaptic("subtract", False), (6,), 2.0, 1.0),
    "leaky_syn_zero": (lambda: StLeakySynaptic("zero", True), (6,), 2.0, 1.0),
    "leaky_syn_zero_now": (lambda: StLeakySynaptic("zero", False), (6,), 2.0, 1.0),
    "leaky_syn_none": (lambda: StLeakySynaptic("none", False), (6,), 1.0, 0.2),
    "rleaky_linear_subtract_now": (lambda: StRLeaky("linear", "subtract", False), (6,), 1.0, 0.3),
    "rleaky_linear_zero": (lambda: StRLeaky("linear", "zero", True), (6,), 1.0, 0.3),
    "rleaky_V_zero_now": (lambda: StRLeaky("V", "zero", False), (6,), 1.0, 0.3),
    "rleaky_V_none": (lambda: StRLeaky("V", "none", True), (6,), 0.5, 0.1),
    "rleaky_conv_subtract": (lambda: StRLeaky("conv", "subtract", True), (2, 5, 5), 1.0, 0.3),
    "rleaky_conv_zero_now": (lambda: StRLeaky("conv", "zero", False), (2, 5, 5), 1.0, 0.3),
    "st_per_step": (st_per_step, (6,), 2.0, 1.0),
    "norse_cells": (NorseCells, (6,), 2.0, 1.0),
    "norse_learnable": (NorseLearnable, (6,), 2.0, 1.0),
    "norse_sequence": (norse_sequence, (6,), 2.0, 1.0),
}


def _input(name: str, t: int, b: int, seed: int) -> np.ndarray:
    _, shape, scale, offset = EXACT[name]
    x = torch.randn(t, b, *shape, generator=_gen(seed)) * scale + offset
    return x.numpy()


@functools.cache
def exact_ir(name: str) -> Graph:
    """The reference-compiled IR of an exact model (compiled once per module run)."""
    torch.manual_seed(0)
    model = EXACT[name][0]()
    _dyadic(model, seed=len(name))
    x = torch.from_numpy(_input(name, *TRACE_TB, seed=1))
    return snncc.compile(model, x, backend="reference").ir


def _forms(graph: Graph) -> set[str]:
    return {NeuronSpec.from_dict(graph.attrs(n)["neuron"]).charge for n in graph.iter_ops("neuron")}


# --------------------------------------------------------------------------- tests


def test_every_form_is_exported_and_covered_here() -> None:
    """The exporter lists every form of FORMS, and the models here use every snnTorch/Norse one."""
    assert set(CHARGE_FORMS) == set(FORMS)
    assert "Clip" in ONNX_OPS  # snnTorch's beta/alpha clamp
    used = set().union(*(_forms(exact_ir(name)) for name in EXACT))
    assert set(SNNTORCH_FORMS) | set(NORSE_FORMS) <= used


def _scan_count(g: Graph) -> int:
    """One Scan per neuron outside recurrent components, one per recurrent component."""
    groups = g.meta["groups"]
    rec = [grp["nodes"] for grp in groups if grp["kind"] == "recurrent"]
    inside = {n for nodes in rec for n in nodes}
    return len([n for n in g.iter_ops("neuron") if n not in inside]) + len(rec)


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_models_bit_for_bit(name: str) -> None:
    """Every value (each node probed: spikes, v, i, recurrent terms) equals the reference
    backend bit for bit, at other T and B than the model was compiled with."""
    g, probes = probe_all(exact_ir(name))
    model = to_onnx(g)
    scans = [n for n in model.graph.node if n.op_type == "Scan"]
    assert len(scans) == _scan_count(g)
    if any(grp["kind"] == "recurrent" for grp in g.meta["groups"]):
        # the recurrent Linear/Conv steps inside the neuron's Scan
        body_ops = {n.op_type for s in scans for n in s.attribute[0].g.node}
        assert body_ops & {"Gemm", "Conv"}
    n_out = len(exact_ir(name).meta["outputs"])
    rates = {}
    for t, b in RUN_TB:
        x = _input(name, t, b, seed=10 + t)
        ys, rs = run_onnx(model, x), run_ref(g, x)
        assert_exact(ys, rs)
        for n, r in zip(probes, rs[n_out:]):
            spec = NeuronSpec.from_dict(g.attrs(n)["neuron"]) if g.op(n) == "neuron" else None
            if spec is not None and spec.output == "spike":
                rates[n] = max(rates.get(n, 0.0), float((r != 0).mean()))
    assert rates and all(0.0 < q < 1.0 for q in rates.values()), f"degenerate spikes {rates}"


def test_params_are_initializers_under_state_dict_names() -> None:
    g = exact_ir("leaky_syn_subtract")
    model = to_onnx(g)
    inits = {t.name for t in model.graph.initializer}
    assert inits == set(g.params)
    assert {"lif.beta", "lif.threshold", "lif.graded_spikes_factor", "syn.alpha"} <= inits
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert sorted(n.input[0] for n in clips) == ["lif.beta", "syn.alpha", "syn.beta"]
    g = exact_ir("norse_learnable")
    model = to_onnx(g)
    assert {"tau_mem", "tau_syn", "v_th", "v_reset"} <= {t.name for t in model.graph.initializer}


def _fresh(g: Graph, name: str, batch: int) -> np.ndarray:
    _, nid, var = name.split(".")
    shape = (batch, *g.node(int(nid))["shape"][1:])
    fill = NeuronSpec.from_dict(g.attrs(int(nid))["neuron"]).v_init if var == "v" else 0.0
    return np.full(shape, fill, np.float32)


@pytest.mark.parametrize(
    "name", ["leaky_syn_zero_now", "rleaky_V_zero_now", "st_per_step", "norse_cells"]
)
def test_state_io_streams_every_state_variable(name: str) -> None:
    """state.<nid>.<var> for v, i, s and delay: chunks equal one call, equal the reference."""
    g = exact_ir(name)
    model = to_onnx(g, state_io=True)
    sess = session(model)
    n_out = len(g.meta["outputs"])
    state_names = [i.name for i in sess.get_inputs()][1:]
    x = _input(name, 12, 3, seed=7)
    prog = ReferenceProgram(g, requires_grad=False)
    ref, ref_state = prog.run(torch.from_numpy(x))
    want_keys = {f"state.{n}.{v}" for n, vs in ref_state.items() for v in vs}
    assert set(state_names) == want_keys
    variables = {k.split(".")[2] for k in state_names}
    assert variables >= {"v"} and variables - {"v"}, variables

    def call(xs: np.ndarray, state: dict[str, np.ndarray]) -> tuple[list, dict]:
        outs = sess.run(None, {"input0": xs, **state})
        names = [o.name for o in sess.get_outputs()][n_out:]
        nxt = {n.replace("next_state.", "state."): v for n, v in zip(names, outs[n_out:])}
        return outs[:n_out], nxt

    whole, end = call(x, {n: _fresh(g, n, 3) for n in state_names})
    first, mid = call(x[:5], {n: _fresh(g, n, 3) for n in state_names})
    second, end2 = call(x[5:], mid)
    assert_exact([np.concatenate(p) for p in zip(first, second)], whole)
    assert_exact([end2[k] for k in state_names], [end[k] for k in state_names])
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert_exact(whole, [r.numpy() for r in ref])
    assert_exact(
        [end[k] for k in state_names],
        [ref_state[int(k.split(".")[1])][k.split(".")[2]].numpy() for k in state_names],
    )
    # a reference state hands off to the ONNX model
    _, ref_mid = prog.run(torch.from_numpy(x[:5]))
    handed = {f"state.{n}.{v}": t.numpy() for n, vs in ref_mid.items() for v, t in vs.items()}
    second_ref, _ = call(x[5:], handed)
    assert_exact(second_ref, [w[5:] for w in whole])
    assert format_graph(from_onnx(model)) == format_graph(g)


def _assert_same_ir(a: Graph, b: Graph) -> None:
    """Same printed IR, node data, edges, meta and params (NaN constants, e.g. Norse LI's
    threshold, compare equal through their JSON encoding)."""

    def canon(value: object) -> str:
        return json.dumps(encode(value), allow_nan=True)

    assert format_graph(a) == format_graph(b)
    assert canon(dict(a.nx.nodes(data=True))) == canon(dict(b.nx.nodes(data=True)))
    assert canon(sorted(a.nx.edges(data=True), key=repr)) == canon(
        sorted(b.nx.edges(data=True), key=repr)
    )
    assert canon(a.meta) == canon(b.meta) and a._next_id == b._next_id
    assert list(a.params) == list(b.params)
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype and np.array_equal(a.params[k], b.params[k])


@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
@pytest.mark.parametrize("name", ["leaky_syn_zero_now", "norse_cells"])
def test_other_opsets(name: str, opset: int) -> None:
    g = exact_ir(name)
    model = to_onnx(g, opset=opset)
    assert model.opset_import[0].version == opset
    x = _input(name, 5, 2, seed=4)
    assert_exact(run_onnx(model, x), run_ref(g, x))
    assert format_graph(from_onnx(model)) == format_graph(g)


@pytest.mark.parametrize("name", list(EXACT))
def test_round_trip_reproduces_ir_and_outputs(name: str, tmp_path) -> None:
    g = exact_ir(name)
    path = tmp_path / "model.onnx"
    to_onnx(g, path)
    back = from_onnx(path)
    _assert_same_ir(g, back)
    x = _input(name, 9, 2, seed=3)
    assert_exact(run_ref(back, x), run_ref(g, x))
    assert to_onnx(back).SerializeToString() == onnx.load(str(path)).SerializeToString()


# --------------------------------------------------------------------------- float weights


FLOAT = {
    "st_convnet": (
        functools.partial(snntorch_convnet, clamp_edges=True),
        lambda m: st_randomise(m, 3, gain=3.0),
        (1, 8, 8),
        1.0,
        1.0,
    ),
    "st_synaptic": (
        lambda: LoopSynaptic("zero", False),
        lambda m: st_randomise(m, 4),
        (6,),
        1.0,
        0.3,
    ),
    "st_rleaky_conv": (
        lambda: LoopRLeaky("conv", "zero", False),
        lambda m: st_randomise(m, 5, gain=1.5),
        (1, 5, 5),
        1.0,
        0.3,
    ),
    "norse_loop": (NorseLoopNet, lambda m: norse_randomise(m, 11, gain=2.5), (6,), 2.0, 1.0),
    "norse_sequence": (norse_sequence_stack, lambda m: norse_randomise(m, 20), (6,), 2.0, 1.0),
}


def _is_spike_node(g: Graph, nid: int) -> bool:
    if g.op(nid) != "neuron":
        return False
    return NeuronSpec.from_dict(g.attrs(nid)["neuron"]).output == "spike"


@pytest.mark.parametrize("name", list(FLOAT))
def test_float_models_within_tolerance(name: str) -> None:
    """Every value probed: spikes (graded too) within SPIKE_TOL, the rest allclose."""
    build, init, shape, scale, offset = FLOAT[name]
    torch.manual_seed(0)
    model = build()
    init(model)
    x = torch.randn(*TRACE_TB, *shape, generator=_gen(1)) * scale + offset
    ir = snncc.compile(model, x, backend="reference").ir
    g, probes = probe_all(ir)
    onnx_model = to_onnx(g)
    outs = sorted(g.meta["outputs"], key=lambda n: g.attrs(n)["index"])
    spiking = [_is_spike_node(g, g.inputs(o)[0]) for o in outs]
    rates: dict[int, float] = {}
    for t, b in RUN_TB:
        x = (torch.randn(t, b, *shape, generator=_gen(t)) * scale + offset).numpy()
        ys, rs = run_onnx(onnx_model, x), run_ref(g, x)
        assert len(ys) == len(rs) == len(outs)
        for i, (y, r, spikes) in enumerate(zip(ys, rs, spiking)):
            assert y.shape == r.shape
            if spikes:
                frac = float((y != r).mean())
                MEASURED["spike_mismatch"] = max(MEASURED["spike_mismatch"], frac)
                assert frac <= SPIKE_TOL, f"output {i}: {frac:.2e} of spikes differ"
                src = g.inputs(outs[i])[0]
                rates[src] = max(rates.get(src, 0.0), float((r != 0).mean()))
            else:
                MEASURED["max_abs"] = max(MEASURED["max_abs"], float(np.abs(y - r).max()))
                np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5, err_msg=f"output {i}")
    assert rates and all(0.0 < q < 1.0 for q in rates.values()), f"degenerate spikes {rates}"
    assert format_graph(from_onnx(to_onnx(ir))) == format_graph(ir)


class StFusedPrologue(nn.Module):
    """RLeaky fed ``fc1(x) + fc1b(x)``: the jax pipeline fuses the add into the neuron as a
    prologue reading port 2, after the form's own 'rec' port."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc1b = nn.Linear(6, 8)
        self.rlif = snn.RLeaky(beta=0.9, linear_features=8, reset_delay=False)
        self.syn = snn.Synaptic(alpha=0.6, beta=0.9)

    def forward(self, x: torch.Tensor):
        spk1, mem1 = self.rlif.init_rleaky()
        syn, mem2 = self.syn.init_synaptic()
        out = []
        for xt in x:
            spk1, mem1 = self.rlif(self.fc1(xt) + self.fc1b(xt), spk1, mem1)
            spk2, syn, mem2 = self.syn(spk1 * 2.0, syn, mem2)
            out.append(spk2)
        return torch.stack(out)


def test_jax_pipeline_prologue_after_the_rec_port() -> None:
    model = StFusedPrologue()
    st_randomise(model, 8)
    x = torch.randn(*TRACE_TB, 6, generator=_gen(8)) + 0.5
    g = run_pipeline(trace(model, x), JAX)
    prologues = [g.attrs(n).get("prologue") for n in g.iter_ops("neuron")]
    assert [{"kind": "add", "port": 2}] in prologues
    onnx_model = to_onnx(g)
    for t, b in RUN_TB:
        xs = (torch.randn(t, b, 6, generator=_gen(t)) + 0.5).numpy()
        (y,), (r,) = run_onnx(onnx_model, xs), run_ref(g, xs)
        frac = float((y != r).mean())
        MEASURED["spike_mismatch"] = max(MEASURED["spike_mismatch"], frac)
        assert frac <= SPIKE_TOL
    assert 0.0 < float(r.mean()) < 1.0
    assert format_graph(from_onnx(onnx_model)) == format_graph(g)


# --------------------------------------------------------------------------- refusals


def test_missing_constant_is_refused_naming_the_node() -> None:
    """An snnTorch neuron with neither a beta param nor extra['beta'] cannot be exported."""
    g = exact_ir("rleaky_V_zero_now").copy()
    nid = next(iter(g.iter_ops("neuron")))
    d = g.attrs(nid)["neuron"]
    assert "beta" not in d["extra"]
    del g.node(nid)["params"]["beta"]
    d["param_roles"] = [r for r in d["param_roles"] if r != "beta"]
    d["learnable"] = [r for r in d["learnable"] if r != "beta"]
    # the verifier builds each neuron's definition: an invalid graph, naming the node
    with pytest.raises((IRError, UnsupportedError), match=rf"%{nid} \(neuron 'rlif'\).*'beta'"):
        to_onnx(g)


def test_norse_without_dt_is_refused_naming_the_node() -> None:
    g = exact_ir("norse_learnable").copy()
    nid = next(iter(g.iter_ops("neuron")))
    del g.attrs(nid)["neuron"]["extra"]["dt"]
    with pytest.raises((IRError, UnsupportedError), match=rf"%{nid} \(neuron 'lif'\).*\['dt'\]"):
        to_onnx(g)


def test_norse_v_reset_is_read_by_a_hard_reset_only() -> None:
    """A Norse form reads v_reset where its reset uses it (reset_value), as its definition
    says, on every target: a subtracting reset without one exports; a hard one is refused."""
    g = exact_ir("norse_cells").copy()
    nid = next(
        n
        for n in g.iter_ops("neuron")
        if NeuronSpec.from_dict(g.attrs(n)["neuron"]).charge == "norse_lifbox"
    )
    g.attrs(nid)["neuron"]["v_reset"] = None
    g.attrs(nid)["neuron"]["reset"] = "subtract"
    to_onnx(g)
    g.attrs(nid)["neuron"]["reset"] = "hard"
    g.attrs(nid)["neuron"]["v_reset"] = float("nan")
    with pytest.raises((IRError, UnsupportedError), match=r"v_reset"):
        to_onnx(g)
