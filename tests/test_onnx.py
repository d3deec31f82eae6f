"""ONNX export (time loop inside: Scan) and import, checked against the reference backend.

Every model here is exported with :func:`snncc.exchange.onnx_export.to_onnx` (which
runs ``onnx.checker.check_model(full_check=True)``), run whole-sequence in
onnxruntime on [T, B, ...] inputs and compared with the reference backend on
the same IR.

Exactness (fp32 on both sides): the neuron Scans (every charge form, the
snnTorch and Norse ones too from spec constants or per-neuron params, reset,
comparison, fused prologue/epilogue) are bit-exact, and so are element-wise
ops, reshapes, max pooling, adaptive pooling (explicit ops in torch's order)
and any pooling of spikes: graphs made only of those must match to the bit.
Gemm/MatMul, Conv, BatchNormalization and AveragePool/GlobalAveragePool on
real values accumulate in another order than torch's kernels (which one
depends on the shapes: even an 8-wide Gemm on 1-3 rows differs): measured
here, up to ~70% of such values differ by a few ulps (max 4e-6 absolute) and
0 spikes flipped. Graphs with those ops are held to a spike mismatch fraction
of 1e-4 and allclose(rtol=1e-5, atol=1e-5) for every other value.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import snncc
from snncc.backends.reference import ReferenceProgram
from snncc.errors import CheckpointError, UnsupportedError
from snncc.exchange.onnx_export import MAX_OPSET, MIN_OPSET, to_onnx
from snncc.exchange.onnx_import import from_onnx
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.passes import run_pipeline
from snncc.ir.passes.temporal_fusion import clear_schedule
from snncc.ir.printer import format_graph

ort = pytest.importorskip("onnxruntime")
from checks import assert_fires  # noqa: E402

REFERENCE = ("canonicalize", "drop_noops", "temporal_fusion")
JAX = ("canonicalize", "fold_batchnorm", "drop_noops", "fuse_elementwise", "temporal_fusion")
SPIKE_TOL = 1e-4  # spike mismatch fraction allowed where stateless ops are not exact in ORT
#: (T, B): T in {1, 8, 32}; B varies too, proving both dims symbolic
SIZES = [(1, 3), (8, 4), (32, 2)]


# --------------------------------------------------------------------------- helpers
def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_onnx(model: onnx.ModelProto, *xs: np.ndarray) -> list[np.ndarray]:
    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, xs)))


def run_ref(graph: Graph, *xs: np.ndarray) -> list[np.ndarray]:
    prog = ReferenceProgram(graph, requires_grad=False)
    ys, _ = prog.run(
        tuple(torch.from_numpy(x) for x in xs) if len(xs) > 1 else torch.from_numpy(xs[0])
    )
    ys = ys if isinstance(ys, tuple) else (ys,)
    return [y.detach().numpy() for y in ys]


def randn(shape: tuple[int, ...], seed: int, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def probe_all(graph: Graph) -> tuple[Graph, list[int]]:
    """A copy with one extra output per computing node, so every value is compared."""
    g = graph.copy()
    clear_schedule(g)
    probes = [n for n in g.topo_order() if g.op(n) not in ("input", "output")]
    base = len(g.meta["outputs"])
    for i, n in enumerate(probes):
        g.add_node("output", [n], attrs={"index": base + i}, shape=g.node(n)["shape"])
    return run_pipeline(g, ["temporal_fusion"]), probes


def assert_exact(ys: list[np.ndarray], rs: list[np.ndarray]) -> None:
    assert len(ys) == len(rs)
    for i, (y, r) in enumerate(zip(ys, rs)):
        assert y.shape == r.shape, f"output {i}: {y.shape} vs {r.shape}"
        bad = int((y != r).sum())
        assert bad == 0, f"output {i}: {bad} of {r.size} values differ (max {np.abs(y - r).max()})"


def is_spikes(a: np.ndarray) -> bool:
    return bool(np.isin(a, (0.0, 1.0)).all())


def assert_close(ys: list[np.ndarray], rs: list[np.ndarray]) -> dict[str, float]:
    """Spike outputs within SPIKE_TOL mismatch, real-valued ones allclose; returns the measures."""
    worst = {"spike_mismatch": 0.0, "max_abs": 0.0}
    for i, (y, r) in enumerate(zip(ys, rs)):
        assert y.shape == r.shape
        if is_spikes(r):
            frac = float((y != r).mean())
            worst["spike_mismatch"] = max(worst["spike_mismatch"], frac)
            assert frac <= SPIKE_TOL, f"output {i}: {frac:.2e} of spikes differ"
        else:
            worst["max_abs"] = max(worst["max_abs"], float(np.abs(y - r).max()))
            np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5, err_msg=f"output {i}")
    return worst


def spec(**kw) -> dict:
    return NeuronSpec(**kw).to_dict()


def add_linear(g: Graph, x: int, name: str, n_in: int, n_out: int, seed: int, bias=True) -> int:
    rng = np.random.default_rng(seed)
    g.add_param(
        f"{name}.weight", (rng.standard_normal((n_out, n_in)) * 1.5 / n_in**0.5).astype(np.float32)
    )
    params = {"weight": f"{name}.weight"}
    if bias:
        params["bias"] = g.add_param(
            f"{name}.bias", (rng.standard_normal(n_out) * 0.3).astype(np.float32)
        )
    return g.add_node("linear", [x], params=params, shape=["B", n_out], name=name)


def neurons_graph(hidden: dict, w: float | None = None) -> Graph:
    """x[B,16] -> hidden neuron -> output 0; x -> LI readout (tau 3) -> output 1 (membrane);
    a spiking hidden neuron's membrane -> output 2 (a twin node). No Gemm: every value,
    membranes included, must be bit for bit, so a tau that is not a power of two tells
    dividing by tau from multiplying by 1 / tau."""
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 16], name="x")
    params = {}
    if w is not None:
        params["w"] = g.add_param("sn1.w", np.array(w, np.float32))
    s = g.add_node(
        "neuron", [x], attrs={"neuron": hidden}, params=params, shape=["B", 16], name="sn1"
    )
    li = spec(model="li", charge="snncc_li", tau=3.0, reset="none", output="membrane")
    m = g.add_node("neuron", [x], attrs={"neuron": li}, shape=["B", 16], name="readout")
    g.add_node("output", [s], attrs={"index": 0}, shape=["B", 16])
    g.add_node("output", [m], attrs={"index": 1}, shape=["B", 16])
    if hidden["output"] == "spike":
        twin = {**hidden, "output": "membrane"}
        v = g.add_node(
            "neuron", [x], attrs={"neuron": twin}, params=params, shape=["B", 16], name="sn1_v"
        )
        g.add_node("output", [v], attrs={"index": 2}, shape=["B", 16])
    return run_pipeline(g, REFERENCE)


def mlp(hidden: dict, w: float | None = None) -> Graph:
    """x[B,12] -> linear -> hidden neuron -> linear -> LI readout; outputs: readout membrane, hidden spikes."""
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 12], name="x")
    h = add_linear(g, x, "fc1", 12, 16, seed=1)
    params = {}
    if w is not None:
        params["w"] = g.add_param("sn1.w", np.array(w, np.float32))
    s = g.add_node(
        "neuron", [h], attrs={"neuron": hidden}, params=params, shape=["B", 16], name="sn1"
    )
    o = add_linear(g, s, "fc2", 16, 6, seed=2, bias=False)
    li = spec(model="li", charge="snncc_li", tau=2.0, reset="none", output="membrane")
    m = g.add_node("neuron", [o], attrs={"neuron": li}, shape=["B", 6], name="readout")
    g.add_node("output", [m], attrs={"index": 0}, shape=["B", 6])
    g.add_node("output", [s], attrs={"index": 1}, shape=["B", 16])
    return run_pipeline(g, REFERENCE)


# Every charge form, reset, comparison, and constants that are not exact in binary.
HIDDEN = {
    "if_hard": (spec(model="if", charge="sj_if"), None),
    "if_soft": (spec(model="if", charge="sj_if", v_reset=None, reset="subtract"), None),
    "lif_decay_input": (spec(model="lif", charge="sj_lif_decay_input", tau=2.0), None),
    "lif_tau3_vreset": (
        spec(model="lif", charge="sj_lif", tau=3.0, decay_input=False, v_reset=-0.2, v_init=-0.2),
        None,
    ),
    "lif_soft_gt_th03": (
        spec(
            model="lif",
            charge="sj_lif_decay_input",
            tau=1.7,
            v_reset=None,
            reset="subtract",
            fire_cmp=">",
            v_threshold=0.3,
        ),
        None,
    ),
    "plif_decay_input": (spec(model="plif", charge="sj_plif_decay_input", learnable=("w",)), 0.0),
    "plif_tau3_soft": (
        spec(
            model="plif",
            charge="sj_plif",
            decay_input=False,
            v_reset=None,
            reset="subtract",
            learnable=("w",),
        ),
        -math.log(3.0 - 1.0),
    ),
    "plif_trained_w": (spec(model="plif", charge="sj_plif_decay_input", learnable=("w",)), 0.3),
    # k = sigmoid(0.05): ONNX Runtime's fp32 Exp(-0.05) is 1 ulp off torch's (the export's
    # exp through float64 is not), so the membranes tell the two apart
    "plif_w_fp32_exp_differs": (
        spec(model="plif", charge="sj_plif_decay_input", learnable=("w",)),
        0.05,
    ),
    "lif_membrane_out": (
        spec(model="lif", charge="sj_lif_decay_input", tau=2.0, output="membrane"),
        None,
    ),
    "lif_tau1_7_hard": (spec(model="lif", charge="sj_lif_decay_input", tau=1.7), None),
}


def recurrent_graph(with_linear: bool) -> Graph:
    """x -> linear -> add(., rec(s[t-1])) -> LIF -> out: one Scan over the whole component."""
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 6], name="x")
    h = add_linear(g, x, "fc", 6, 8, seed=3)
    add = g.add_node("add", [h], shape=["B", 8], name="sum")
    n = g.add_node(
        "neuron",
        [add],
        attrs={"neuron": spec(model="lif", charge="sj_lif_decay_input", tau=2.0)},
        shape=["B", 8],
        name="sn",
    )
    if with_linear:
        r = add_linear(g, n, "rec", 8, 8, seed=4)
        g.remove_edge(g.in_edges(r)[0])
        g.add_edge(n, r, 0, delay=1)
        g.add_edge(r, add, port=1)
    else:
        g.add_edge(n, add, port=1, delay=1)
    g.add_node("output", [n], attrs={"index": 0}, shape=["B", 8])
    return run_pipeline(g, REFERENCE)


def fused_graph() -> Graph:
    """BN folded into a linear; scale/add fused into a neuron as prologue/epilogue (jax pipeline)."""
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 10], name="x")
    h = add_linear(g, x, "fc", 10, 12, seed=5)
    rng = np.random.default_rng(6)
    bn = {
        "weight": g.add_param("bn.weight", (rng.random(12) + 0.5).astype(np.float32)),
        "bias": g.add_param("bn.bias", (rng.standard_normal(12) * 0.2).astype(np.float32)),
        "running_mean": g.add_param(
            "bn.running_mean", (rng.standard_normal(12) * 0.3).astype(np.float32)
        ),
        "running_var": g.add_param("bn.running_var", (rng.random(12) + 0.5).astype(np.float32)),
    }
    b = g.add_node(
        "batchnorm",
        [h],
        attrs={"eps": 1e-5, "momentum": 0.1, "training": False},
        params=bn,
        shape=["B", 12],
        name="bn",
    )
    sc = g.add_node("scale", [b], attrs={"op": "div", "value": 3.0}, shape=["B", 12], name="div")
    skip = add_linear(g, x, "skip", 10, 12, seed=7)
    a = g.add_node("add", [sc, skip], shape=["B", 12], name="sum")
    n = g.add_node(
        "neuron",
        [a],
        attrs={"neuron": spec(model="lif", charge="sj_lif_decay_input", tau=2.0)},
        shape=["B", 12],
        name="sn",
    )
    m = g.add_node("scale", [n], attrs={"op": "mul", "value": 0.7}, shape=["B", 12], name="mul")
    g.add_node("output", [m], attrs={"index": 0}, shape=["B", 12])
    return g


def ops_graph() -> Graph:
    """Three inputs and the remaining ops: conv1d, cat, mul, scale, reshape, partial flatten,
    identity, rank-3 linear (MatMul), voting, adaptive pooling (even, uneven, 1x1), avgpool with
    padding and count_include_pad=False, maxpool with ceil_mode on full windows."""
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    rng = np.random.default_rng(9)
    a = g.add_node("input", attrs={"index": 0}, shape=["B", 2, 8], name="a")
    b = g.add_node("input", attrs={"index": 1}, shape=["B", 2, 8], name="b")
    c = g.add_node("input", attrs={"index": 2}, shape=["B", 2, 6, 6], name="c")
    g.add_param("conv.weight", (rng.standard_normal((3, 2, 3)) * 0.5).astype(np.float32))
    conv_attrs = {"stride": [1], "padding": [1], "dilation": [1], "groups": 1}
    cv = g.add_node(
        "conv1d",
        [a],
        attrs=conv_attrs,
        params={"weight": "conv.weight"},
        shape=["B", 3, 8],
        name="conv",
    )
    cat = g.add_node("cat", [cv, b], attrs={"dim": 1}, shape=["B", 5, 8])
    mu = g.add_node("mul", [cat, cat], shape=["B", 5, 8])
    sc = g.add_node("scale", [mu], attrs={"op": "mul", "value": 0.5}, shape=["B", 5, 8])
    rs = g.add_node("reshape", [sc], attrs={"shape": [-1, 5, 2, 4]}, shape=["B", 5, 2, 4])
    fl = g.add_node("flatten", [rs], attrs={"start_dim": 2, "end_dim": 3}, shape=["B", 5, 8])
    n = g.add_node(
        "neuron",
        [fl],
        attrs={"neuron": spec(model="if", charge="sj_if", v_threshold=0.5)},
        shape=["B", 5, 8],
    )
    idn = g.add_node("identity", [n], shape=["B", 5, 8])
    f2 = g.add_node("flatten", [n], attrs={"start_dim": 1, "end_dim": -1}, shape=["B", 40])
    lin = add_linear(g, f2, "fc", 40, 6, seed=11)
    n2 = g.add_node(
        "neuron",
        [lin],
        attrs={"neuron": spec(model="lif", charge="sj_lif_decay_input", tau=2.0)},
        shape=["B", 6],
    )
    vote = g.add_node("voting", [n2], attrs={"voting_size": 3}, shape=["B", 2])
    g.add_param("fc3.weight", rng.standard_normal((4, 8)).astype(np.float32))
    l3 = g.add_node("linear", [n], params={"weight": "fc3.weight"}, shape=["B", 5, 4], name="fc3")
    pooled = [
        ("adaptive_avgpool2d", {"output_size": [3, 3]}, [3, 3]),
        ("adaptive_avgpool2d", {"output_size": [4, 5]}, [4, 5]),
        ("adaptive_avgpool2d", {"output_size": [1, 1]}, [1, 1]),
        (
            "avgpool2d",
            {
                "kernel_size": [3, 3],
                "stride": [2, 2],
                "padding": [1, 1],
                "ceil_mode": False,
                "count_include_pad": False,
                "divisor_override": None,
            },
            [3, 3],
        ),
        (
            "maxpool2d",
            {
                "kernel_size": [3, 3],
                "stride": [3, 3],
                "padding": [0, 0],
                "dilation": [1, 1],
                "ceil_mode": True,
            },
            [2, 2],
        ),
    ]
    outs = [idn, vote, l3]
    for op, attrs, hw in pooled:
        outs.append(g.add_node(op, [c], attrs=attrs, shape=["B", 2, *hw], name=op))
    for i, o in enumerate(outs):
        g.add_node("output", [o], attrs={"index": i}, shape=g.node(o)["shape"])
    return run_pipeline(g, REFERENCE)


def sj_conv_model() -> nn.Module:
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(0)
    model = nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1, step_mode="m"),
        layer.BatchNorm2d(8, step_mode="m"),
        neuron.LIFNode(tau=2.0, step_mode="m"),
        layer.MaxPool2d(2, 2, step_mode="m"),
        layer.Conv2d(8, 8, 3, padding=1, bias=False, step_mode="m"),
        neuron.ParametricLIFNode(init_tau=3.0, step_mode="m"),
        layer.AvgPool2d(2, 2, step_mode="m"),
        layer.AdaptiveAvgPool2d((3, 3), step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(72, 20, step_mode="m"),
        neuron.IFNode(v_reset=None, step_mode="m"),
        layer.VotingLayer(2, step_mode="m"),
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=gen) * 3 / m.weight[0].numel() ** 0.5
                )
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(8, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    return model.eval()


def sj_mlp_model() -> nn.Module:
    from spikingjelly.activation_based import layer, neuron, surrogate

    torch.manual_seed(2)
    model = nn.Sequential(
        layer.Flatten(step_mode="m"),
        layer.Linear(16, 24, step_mode="m"),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m"),
        layer.Linear(24, 10, step_mode="m"),
        neuron.ParametricLIFNode(init_tau=2.0, v_reset=None, step_mode="m"),
    ).eval()
    with torch.no_grad():
        model[1].weight.mul_(3.0)
        model[3].weight.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def sj_conv_ir() -> Graph:
    pytest.importorskip("spikingjelly")
    x = torch.rand(8, 4, 2, 16, 16) * 2
    return snncc.compile(sj_conv_model(), x, backend="reference").ir


def form_graph(hidden: dict, params: dict[str, np.ndarray]) -> Graph:
    """x[B,8] -> one neuron of ``hidden``'s form -> output, every op exact in ONNX.

    ``params``: role -> array (node params ``sn.<role>``). A form with a ``rec``
    port gets it from a Linear of the neuron's own output through a delay-1
    edge (one recurrent component, one Scan) whose dyadic weights (k/8) make
    its sums of spikes exact in any order.
    """
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 8], name="x")
    roles = {
        role: g.add_param(f"sn.{role}", np.asarray(a, np.float32)) for role, a in params.items()
    }
    n = g.add_node("neuron", [x], attrs={"neuron": hidden}, params=roles, shape=["B", 8], name="sn")
    if "rec" in NeuronSpec.from_dict(hidden).input_ports:
        rng = np.random.default_rng(12)
        g.add_param("rec.weight", (rng.integers(-3, 6, (8, 8)) / 8).astype(np.float32))
        r = g.add_node("linear", [n], params={"weight": "rec.weight"}, shape=["B", 8], name="rec")
        g.remove_edge(g.in_edges(r)[0])
        g.add_edge(n, r, 0, delay=1)
        g.add_edge(r, n, port=1)
    g.add_node("output", [n], attrs={"index": 0}, shape=["B", 8])
    return run_pipeline(g, REFERENCE)


_ST = {"fire_cmp": ">", "surrogate": "atan", "alpha": 2.0}
_NORSE = {"fire_cmp": ">", "surrogate": "superspike", "alpha": 100.0}
_NORSE_C = {"dt": 0.001, "v_leak": 0.05, "dt_tau_mem_inv": 0.2, "neg_dt_tau_syn_inv": -0.3}
_LIN = np.linspace(0.0, 1.0, 8, dtype=np.float32)

#: snnTorch and Norse forms from spec constants (Python floats that are not float32 values,
#: beta 1.3 clamped in Python) or from per-neuron params (beta below 0 and above 1 clamped)
FORM_CASES = {
    "st_leaky_subtract_now_graded": (
        spec(
            model="leaky",
            charge="snntorch_leaky",
            reset="subtract",
            v_threshold=0.7,
            **_ST,
            extra={"beta": 1.3, "graded_spikes_factor": 0.5},
        ),
        {},
    ),
    "st_leaky_zero_delay_membrane": (
        spec(
            model="leaky",
            charge="snntorch_leaky",
            reset_delay=True,
            output="membrane",
            **_ST,
            extra={"beta": 0.8},
        ),
        {},
    ),
    "st_leaky_per_neuron_params": (
        spec(
            model="leaky",
            charge="snntorch_leaky",
            reset="subtract",
            **_ST,
            param_roles=("beta", "threshold"),
            v_threshold=math.nan,
        ),
        {"beta": _LIN * 1.6 - 0.2, "threshold": np.float32(0.6)},
    ),
    "st_synaptic_zero_now_current": (
        spec(
            model="synaptic",
            charge="snntorch_synaptic",
            output="current",
            **_ST,
            extra={"alpha": 0.6, "beta": 0.9},
        ),
        {},
    ),
    "st_synaptic_alpha_param_none": (
        spec(
            model="synaptic",
            charge="snntorch_synaptic",
            reset="none",
            **_ST,
            param_roles=("alpha",),
            extra={"beta": 0.9},
        ),
        {"alpha": _LIN * 0.9 + 0.3},
    ),
    "st_rleaky_v_subtract_now": (
        spec(
            model="rleaky",
            charge="snntorch_rleaky_v",
            reset="subtract",
            **_ST,
            extra={"beta": 0.85, "V": 0.3},
        ),
        {},
    ),
    "st_rleaky_zero_rec": (
        spec(model="rleaky", charge="snntorch_rleaky", **_ST, extra={"beta": 0.9}),
        {},
    ),
    "norse_lif_double_constants": (
        spec(
            model="norse_lif",
            charge="norse_lif",
            v_threshold=0.4,
            v_reset=-0.1,
            v_init=0.05,
            **_NORSE,
            extra=_NORSE_C,
        ),
        {},
    ),
    "norse_lif_params_membrane": (
        spec(
            model="norse_lif",
            charge="norse_lif",
            v_threshold=0.3,
            output="membrane",
            **_NORSE,
            param_roles=("tau_mem_inv", "tau_syn_inv", "v_reset"),
            v_reset=math.nan,
            extra={"dt": 0.0007, "v_leak": 0.0},
        ),
        {
            "tau_mem_inv": _LIN * 140 + 180,
            "tau_syn_inv": np.float32(280.0),
            "v_reset": np.full(8, -0.05, np.float32),
        },
    ),
    "norse_lif_recurrent": (
        spec(
            model="norse_lif",
            charge="norse_lif_recurrent",
            v_threshold=0.4,
            v_reset=-0.1,
            v_init=0.05,
            detach_reset=True,
            **_NORSE,
            extra=_NORSE_C,
        ),
        {},
    ),
    "norse_lifbox_subtract": (
        spec(
            model="norse_lifbox",
            charge="norse_lifbox",
            reset="subtract",
            v_threshold=0.3,
            **_NORSE,
            extra={"dt": 0.0013, "v_leak": 0.0, "dt_tau_mem_inv": 0.0013 * 433.0},
        ),
        {},
    ),
    "norse_lifbox_hard_leak_membrane": (  # v_leak != 0: (x + v_leak) - v != x + (v_leak - v)
        spec(
            model="norse_lifbox",
            charge="norse_lifbox",
            v_threshold=0.3,
            output="membrane",
            **_NORSE,
            extra={"dt": 0.001, "v_leak": 0.05, "dt_tau_mem_inv": 0.25},
        ),
        {},
    ),
    "norse_li_current": (
        spec(
            model="norse_li",
            charge="norse_li",
            reset="none",
            v_reset=None,
            output="current",
            v_threshold=math.nan,
            surrogate="no_grad",
            alpha=1.0,
            extra=_NORSE_C,
        ),
        {},
    ),
}


# --------------------------------------------------------------------------- export: exactness
@pytest.mark.parametrize("name", list(HIDDEN))
def test_neuron_scans_are_bit_exact(name: str) -> None:
    hidden, w = HIDDEN[name]
    g = neurons_graph(hidden, w)
    model = to_onnx(g)
    fired = []
    for t, b in SIZES:
        x = randn((t, b, 16), seed=t + b)
        ys, rs = run_onnx(model, x), run_ref(g, x)
        assert_exact(ys, rs)
        fired.append(float(rs[0].mean()) if NeuronSpec.from_dict(hidden).spiking else 0.5)
    assert 0.0 < max(fired) < 1.0, "the neuron must fire sometimes (a silent one proves nothing)"


@pytest.mark.parametrize("name", list(FORM_CASES))
def test_snntorch_norse_form_scans_are_bit_exact(name: str) -> None:
    """Each snnTorch/Norse form, from spec constants or per-neuron params, op for op."""
    g = form_graph(*FORM_CASES[name])
    model = to_onnx(g)
    assert len([n for n in model.graph.node if n.op_type == "Scan"]) == 1
    fired = []
    for t, b in SIZES:
        x = randn((t, b, 8), seed=t + b)
        ys, rs = run_onnx(model, x), run_ref(g, x)
        assert_exact(ys, rs)
        fired.append(float((rs[0] != 0).mean()))
    if NeuronSpec.from_dict(FORM_CASES[name][0]).spiking:
        assert 0.0 < max(fired) < 1.0, (
            "the neuron must fire sometimes (a silent one proves nothing)"
        )
    else:
        assert len(np.unique(rs[0])) > 10
    back = from_onnx(model)
    assert format_graph(back) == format_graph(g)
    assert_exact(run_ref(back, x), rs)


def test_membrane_exactly_on_the_threshold() -> None:
    """Charged exactly onto the threshold a neuron fires under ``>=`` and not under ``>``
    (one ulp below never, one above always), and snnTorch's reset reads a membrane left on
    it as ``m - th > 0``: ONNX Runtime == reference == that rule, every firing form."""
    from checks import assert_fires_at_threshold, threshold_graph

    g, xs, cases = threshold_graph()
    g = run_pipeline(g, REFERENCE)
    model = to_onnx(g)
    ys = run_onnx(model, *(x.numpy() for x in xs))
    rs = run_ref(g, *(x.numpy() for x in xs))
    assert_exact(ys, rs)
    for (spec, h), y in zip(cases, ys):
        assert_fires_at_threshold(spec, torch.from_numpy(y), h)


@pytest.mark.parametrize("name", list(HIDDEN))
def test_mlp_with_gemms_within_tolerance(name: str) -> None:
    hidden, w = HIDDEN[name]
    g = mlp(hidden, w)
    model = to_onnx(g)
    for t, b in SIZES:
        x = randn((t, b, 12), seed=t + b)
        assert_close(run_onnx(model, x), run_ref(g, x))
    assert_fires(g, torch.from_numpy(x))


def test_model_io_are_time_major_with_symbolic_dims() -> None:
    model = to_onnx(mlp(HIDDEN["lif_decay_input"][0]))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == ("input0", ["T", "B", 12])
    outs = [
        (o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
        for o in model.graph.output
    ]
    assert outs == [("output0", ["T", "B", 6]), ("output1", ["T", "B", 16])]
    scans = [n for n in model.graph.node if n.op_type == "Scan"]
    assert len(scans) == 2 and all(NeuronSpec.from_dict(_scan_spec(s)) for s in scans)
    # parameters are initializers under their state_dict names
    assert sorted(t.name for t in model.graph.initializer) == [
        "fc1.bias",
        "fc1.weight",
        "fc2.weight",
    ]


def _scan_spec(node: onnx.NodeProto) -> dict:
    import json

    (spec_dict,) = json.loads(node.doc_string)["snncc_neurons"].values()
    return spec_dict


@pytest.mark.parametrize("with_linear", [True, False])
def test_recurrent_group_is_one_scan(with_linear: bool) -> None:
    g = recurrent_graph(with_linear)
    assert [grp["kind"] for grp in g.meta["groups"]].count("recurrent") == 1
    model = to_onnx(g)
    scans = [n for n in model.graph.node if n.op_type == "Scan"]
    assert len(scans) == 1  # linear + add + neuron all step inside one loop
    for t, b in SIZES:
        x = randn((t, b, 6), seed=10 + t, scale=3.0)
        rs = run_ref(g, x)
        # spikes fed straight back are exact; through a Linear, within tolerance
        (assert_close if with_linear else assert_exact)(run_onnx(model, x), rs)
    assert 0.0 < rs[0].mean() < 1.0


def test_fused_prologue_and_epilogue_are_exact() -> None:
    """x / 3 + y -> LIF -> * 0.7, fused into one neuron by the jax pipeline."""
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 10], name="x")
    y = g.add_node("input", attrs={"index": 1}, shape=["B", 10], name="y")
    d = g.add_node("scale", [x], attrs={"op": "div", "value": 3.0}, shape=["B", 10])
    a = g.add_node("add", [d, y], shape=["B", 10])
    lif = spec(model="lif", charge="sj_lif_decay_input", tau=2.0)
    n = g.add_node("neuron", [a], attrs={"neuron": lif}, shape=["B", 10], name="sn")
    m = g.add_node("scale", [n], attrs={"op": "mul", "value": 0.7}, shape=["B", 10])
    g.add_node("output", [m], attrs={"index": 0}, shape=["B", 10])
    g = run_pipeline(g, JAX)
    assert [g.op(i) for i in g.topo_order()] == ["input", "input", "neuron", "output"]
    assert g.attrs(n)["prologue"] and g.attrs(n)["epilogue"]  # node ids survive the passes
    model = to_onnx(g)
    for t, b in SIZES:
        xs = randn((t, b, 10), seed=30 + t), randn((t, b, 10), seed=31 + t)
        ys, rs = run_onnx(model, *xs), run_ref(g, *xs)
        assert_exact(ys, rs)
    assert 0.0 < rs[0].mean() < 0.7


def test_folded_batchnorm_and_fusion_within_tolerance() -> None:
    g = run_pipeline(fused_graph(), JAX)
    (n,) = [n for n in g.nx.nodes if g.op(n) == "neuron"]
    assert g.attrs(n).get("prologue") and g.attrs(n).get("epilogue")
    assert "bn_var" in g.node(g.inputs(n)[0])["params"]
    model = to_onnx(g)
    for t, b in SIZES:
        x = randn((t, b, 10), seed=30 + t)
        assert_close(run_onnx(model, x), run_ref(g, x))


def test_every_stateless_op_three_inputs() -> None:
    g = ops_graph()
    model = to_onnx(g)
    for t, b in SIZES:
        xs = [randn((t, b, 2, 8), 1), randn((t, b, 2, 8), 2), randn((t, b, 2, 6, 6), 3)]
        ys, rs = run_onnx(model, *xs), run_ref(g, *xs)
        assert_close(ys, rs)
        # adaptive pooling (explicit ops) and max pooling are exact on any values
        assert_exact([ys[3], ys[4], ys[7]], [rs[3], rs[4], rs[7]])
        spikes = (np.random.default_rng(t).random((t, b, 2, 6, 6)) < 0.4).astype(np.float32)
        ys, rs = run_onnx(model, xs[0], xs[1], spikes), run_ref(g, xs[0], xs[1], spikes)
        assert_exact(ys[3:], rs[3:])  # on spikes every pooling is exact (integer sums)
    assert 0.0 < rs[0].mean() < 1.0


@pytest.mark.parametrize("which", ["plif_mlp", "recurrent"])
def test_state_io_streams_in_chunks_like_the_reference(which: str) -> None:
    """state.<nid>.<var> in, next_state.<nid>.<var> out: two chunks equal one call."""
    if which == "plif_mlp":
        g, x = mlp(*HIDDEN["plif_tau3_soft"]), randn((12, 3, 12), seed=70)
    else:
        g, x = recurrent_graph(True), randn((12, 3, 6), seed=71, scale=3.0)
    model = to_onnx(g, state_io=True)
    sess = session(model)
    state_names = [i.name for i in sess.get_inputs()][1:]
    assert state_names and all(n.startswith("state.") for n in state_names)

    def fresh(name: str) -> np.ndarray:
        _, nid, var = name.split(".")
        shape = (x.shape[1], *g.node(int(nid))["shape"][1:])
        fill = NeuronSpec.from_dict(g.attrs(int(nid))["neuron"]).v_init if var == "v" else 0.0
        return np.full(shape, fill, np.float32)

    def call(xs: np.ndarray, state: dict[str, np.ndarray]) -> tuple[list, dict]:
        outs = sess.run(None, {"input0": xs, **state})
        n_out = len(g.meta["outputs"])
        names = [o.name for o in sess.get_outputs()][n_out:]
        return outs[:n_out], {
            n.replace("next_state.", "state."): v for n, v in zip(names, outs[n_out:])
        }

    whole, end_state = call(x, {n: fresh(n) for n in state_names})
    first, mid = call(x[:5], {n: fresh(n) for n in state_names})
    second, end2 = call(x[5:], mid)
    assert_exact([np.concatenate(p) for p in zip(first, second)], whole)
    assert_exact(list(end2.values()), list(end_state.values()))
    # the same values and final state as the reference backend (the graphs hold Gemms)
    prog = ReferenceProgram(g, requires_grad=False)
    ref, ref_state = prog.run(torch.from_numpy(x))
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert_close(whole, [r.numpy() for r in ref])
    names = list(end_state)
    keys = [(int(n.split(".")[1]), n.split(".")[2]) for n in names]
    assert_close([end_state[n] for n in names], [ref_state[k][v].numpy() for k, v in keys])
    assert format_graph(from_onnx(model)) == format_graph(g)


@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
def test_other_opsets(opset: int) -> None:
    g = recurrent_graph(False)
    model = to_onnx(g, opset=opset)
    assert model.opset_import[0].version == opset
    x = randn((8, 3, 6), seed=40, scale=3.0)
    assert_exact(run_onnx(model, x), run_ref(g, x))
    assert format_graph(from_onnx(model)) == format_graph(g)


def test_spikingjelly_mlp_at_other_sizes_than_traced() -> None:
    pytest.importorskip("spikingjelly")
    cm = snncc.compile(sj_mlp_model(), torch.rand(8, 4, 4, 4) * 3, backend="reference")
    model = to_onnx(cm.ir)
    for t, b in [(1, 1), (5, 2), (32, 3)]:
        x = (np.random.default_rng(t).random((t, b, 4, 4)) * 3).astype(np.float32)
        (y,) = run_onnx(model, x)
        r = cm(torch.from_numpy(x)).detach().numpy()
        assert_close([y], [r])
    assert 0.0 < r.mean() < 1.0


def test_spikingjelly_conv_net_within_tolerance_every_value(sj_conv_ir: Graph) -> None:
    """Conv, BN, max/avg/adaptive pooling, flatten, linear, voting, LIF/PLIF/IF, every value probed."""
    g, probes = probe_all(sj_conv_ir)
    model = to_onnx(g)
    rates: dict[int, float] = {}
    for t, b in [(1, 2), (8, 3)]:
        x = (np.random.default_rng(t).random((t, b, 2, 16, 16)) * 2).astype(np.float32)
        ys, rs = run_onnx(model, x), run_ref(g, x)
        assert_close(ys, rs)
        for n, r in zip(probes, rs[1:]):
            if g.op(n) == "neuron":
                assert is_spikes(r)
                rates[n] = max(rates.get(n, 0.0), float(r.mean()))
    # every neuron layer fires (a silent net would prove nothing), none saturates
    assert len(rates) == 3 and all(0.0 < r < 1.0 for r in rates.values()), rates


def test_spikingjelly_conv_net_jax_pipeline(sj_conv_ir: Graph) -> None:
    g = sj_conv_ir.copy()
    clear_schedule(g)
    g = run_pipeline(g, ["fold_batchnorm", "fuse_elementwise", "temporal_fusion"])
    assert "batchnorm" not in {g.op(n) for n in g.nx.nodes}
    model = to_onnx(g)
    x = (np.random.default_rng(3).random((8, 2, 2, 16, 16)) * 2).astype(np.float32)
    assert_close(run_onnx(model, x), run_ref(g, x))


# --------------------------------------------------------------------------- round trip
def _assert_same_ir(a: Graph, b: Graph) -> None:
    assert format_graph(a) == format_graph(b)
    assert dict(a.nx.nodes(data=True)) == dict(b.nx.nodes(data=True))
    assert sorted((u, v, d["port"], d["delay"]) for u, v, d in a.nx.edges(data=True)) == sorted(
        (u, v, d["port"], d["delay"]) for u, v, d in b.nx.edges(data=True)
    )
    assert a.meta == b.meta and a._next_id == b._next_id
    assert list(a.params) == list(b.params)
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype and np.array_equal(a.params[k], b.params[k])


@pytest.mark.parametrize("which", ["plif_mlp", "recurrent", "fused", "ops", "sj_conv"])
def test_round_trip_reproduces_ir_and_outputs(which: str, tmp_path, request) -> None:
    if which == "sj_conv":
        g = request.getfixturevalue("sj_conv_ir")
        xs = [(np.random.default_rng(0).random((8, 2, 2, 16, 16)) * 2).astype(np.float32)]
    elif which == "ops":
        g = ops_graph()
        xs = [randn((8, 3, 2, 8), 1), randn((8, 3, 2, 8), 2), randn((8, 3, 2, 6, 6), 3)]
    else:
        g, shape = {
            "plif_mlp": (mlp(*HIDDEN["plif_trained_w"]), (12,)),
            "recurrent": (recurrent_graph(True), (6,)),
            "fused": (run_pipeline(fused_graph(), JAX), (10,)),
        }[which]
        xs = [randn((8, 3, *shape), seed=50)]
    path = tmp_path / "model.onnx"
    to_onnx(g, path)
    back = from_onnx(path)
    _assert_same_ir(g, back)
    assert_exact(run_ref(back, *xs), run_ref(g, *xs))
    # and the re-export is the same file content, metadata included
    assert to_onnx(back).SerializeToString() == onnx.load(str(path)).SerializeToString()


def test_import_uses_edited_weights(tmp_path) -> None:
    g = mlp(*HIDDEN["lif_decay_input"])
    model = to_onnx(g)
    for t in model.graph.initializer:
        if t.name == "fc1.weight":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.5), t.name))
    back = from_onnx(model)
    assert np.array_equal(back.params["fc1.weight"], g.params["fc1.weight"] * np.float32(1.5))
    x = randn((8, 3, 12), seed=60)
    assert_close(run_onnx(model, x), run_ref(back, x))
    assert not np.array_equal(run_ref(back, x)[1], run_ref(g, x)[1])


# --------------------------------------------------------------------------- errors
def test_missing_file_is_a_checkpoint_error(tmp_path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(CheckpointError, match="nope.onnx.*does not exist"):
        from_onnx(path)


@pytest.mark.parametrize("content", [b"this is not an onnx file \x00\xff\xfe", b"", "truncated"])
def test_corrupt_file_is_a_checkpoint_error(tmp_path, content) -> None:
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        data = to_onnx(recurrent_graph(False)).SerializeToString()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.onnx"):
        from_onnx(path)


def _plain_relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu0")],
        "plain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_file_without_snncc_metadata_is_unsupported(tmp_path) -> None:
    path = tmp_path / "plain.onnx"
    onnx.save_model(_plain_relu_model(), str(path))
    with pytest.raises(UnsupportedError, match=r"plain.onnx.*no snncc metadata.*'relu0' \(Relu\)"):
        from_onnx(path)


def test_unsupported_op_is_named(tmp_path) -> None:
    model = to_onnx(recurrent_graph(False))
    out = model.graph.output[0].name
    last = model.graph.node[-1]
    last.output[0] = "pre_softplus"
    model.graph.node.append(helper.make_node("Softplus", ["pre_softplus"], [out], name="evil"))
    onnx.checker.check_model(model)
    with pytest.raises(
        UnsupportedError, match=r"'evil' \(Softplus\): op Softplus is not one snncc"
    ):
        from_onnx(model)


def test_edited_scan_body_is_refused_naming_the_node() -> None:
    model = to_onnx(mlp(HIDDEN["lif_decay_input"][0]))
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body = scan.attribute[0].g
    const = next(n for n in body.node if n.op_type == "Constant")
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(np.float32(0.5)))
    with pytest.raises(UnsupportedError, match=rf"'{const.name}' \(Constant\).*changed after"):
        from_onnx(model)


def test_scan_without_spec_is_refused_naming_the_scan() -> None:
    model = to_onnx(mlp(HIDDEN["if_hard"][0]))
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    scan.doc_string = ""
    with pytest.raises(UnsupportedError, match=rf"'{scan.name}' \(Scan\) has no snncc neuron spec"):
        from_onnx(model)


def test_export_refuses_what_onnx_cannot_express() -> None:
    g = fused_graph()
    bn = next(n for n in g.nx.nodes if g.op(n) == "batchnorm")
    g.attrs(bn)["training"] = True
    g = run_pipeline(g, REFERENCE)
    with pytest.raises(UnsupportedError, match=r"%\d+ \(batchnorm 'bn'\).*training mode"):
        to_onnx(g)
    with pytest.raises(UnsupportedError, match="opset 9"):
        to_onnx(recurrent_graph(False), opset=9)


@pytest.mark.parametrize(
    ("op", "change", "why"),
    [
        ("maxpool2d", {"stride": [2, 2]}, "ceil_mode=True with a partial last window"),
        ("avgpool2d", {"divisor_override": 2}, "divisor_override"),
    ],
)
def test_export_refuses_pooling_torch_and_onnx_size_differently(op, change, why) -> None:
    g = ops_graph()
    nid = next(n for n in g.nx.nodes if g.op(n) == op)
    g.attrs(nid).update(change)
    with pytest.raises(UnsupportedError, match=rf"%{nid} \({op} '{op}'\).*{why}"):
        to_onnx(g)


def test_export_refuses_a_parameter_named_like_a_model_output() -> None:
    g = recurrent_graph(False)
    lin = next(n for n in g.nx.nodes if g.op(n) == "linear")
    old = g.node(lin)["params"]["weight"]
    g.params["output0"] = g.params.pop(old)
    g.node(lin)["params"]["weight"] = "output0"
    with pytest.raises(UnsupportedError, match="parameter 'output0' has the name of a model"):
        to_onnx(g)
