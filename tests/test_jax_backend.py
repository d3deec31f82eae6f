"""The jax backend against SpikingJelly, torch and the reference backend.

Tolerances (the jax backend is not bit-exact: XLA sums dot products and
convolutions in its own order; it runs BatchNorm unfolded, as the source does):

- spikes: at most ``SPIKE_MISMATCH_TOL`` = 1e-4 of all spike values may differ;
- membranes and continuous outputs: within ``FP32_ULPS`` = 8 fp32 ulps
  (``eps = 2**-23``) of the compared tensor's largest magnitude
  (tests/tolerances.py; at most 2 measured);
- gradients of a scalar loss w.r.t. every parameter and the input: relative
  error ``|g_jax - g_ref| / |g_ref|`` (L2 norms) at most ``GRAD_REL_TOL`` = 1e-4.

Hand-built graphs (``SeqBuilder``: a SpikingJelly ``nn.Sequential`` written
out node by node) run without the frontend; traced models run once
``snncc.frontend.trace`` exists; every comparison with the reference backend
runs once that backend is importable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from checks import assert_fires  # noqa: E402
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402
from tolerances import FP32_ULPS, assert_fp32_close  # noqa: E402
from tolerances import MEASURED as FP32_MEASURED  # noqa: E402

import snncc.backends as backends  # noqa: E402
from snncc.errors import BackendError, UnsupportedError  # noqa: E402
from snncc.ir.graph import Graph  # noqa: E402
from snncc.ir.neuron import NeuronSpec  # noqa: E402

SPIKE_MISMATCH_TOL = 1e-4
GRAD_REL_TOL = 1e-4

#: worst values seen in this session (printed with -s, for the report)
MEASURED = {"spike_mismatch": 0.0, "grad_rel": 0.0, "membrane_abs": 0.0}


# --------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def report_measured():
    """Print the worst spike mismatch / gradient error this module saw (visible with -s)."""
    yield
    print(f"\njax backend, worst measured: {MEASURED}, fp32 {FP32_MEASURED}")


def jax_backend():
    return backends.get("jax")


def lower(graph: Graph, cache_dir: str, passes: bool = True, **options: Any):
    """Run the jax pipeline (unless ``passes`` is False) and lower the graph."""
    be = jax_backend()
    if passes:
        from snncc.ir.passes import run_pipeline

        graph = run_pipeline(graph, be.pipeline)
    return be.lower(graph, cache_dir=cache_dir, **options)


def reference_backend():
    return backends.get("reference")


def np_(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_spikes(got: Any, want: Any) -> float:
    got, want = np_(got), np_(want)
    assert got.shape == want.shape
    frac = float(np.mean(got != want))
    MEASURED["spike_mismatch"] = max(MEASURED["spike_mismatch"], frac)
    assert frac <= SPIKE_MISMATCH_TOL, (
        f"{frac:.2e} of spikes differ (tolerance {SPIKE_MISMATCH_TOL})"
    )
    return frac


def assert_close(got: Any, want: Any, ulps: float = FP32_ULPS) -> None:
    """Within ``ulps`` fp32 ulps of the compared tensor's scale (tests/tolerances.py)."""
    got, want = np_(got), np_(want)
    if got.size:
        MEASURED["membrane_abs"] = max(MEASURED["membrane_abs"], float(np.abs(got - want).max()))
    assert_fp32_close(got, want, ulps=ulps)


def grad_rel(got: Any, want: Any) -> float:
    got, want = np_(got).astype(np.float64), np_(want).astype(np.float64)
    assert got.shape == want.shape
    denom = np.linalg.norm(want)
    err = np.linalg.norm(got - want)
    rel = float(err / denom) if denom > 0 else float(err)
    MEASURED["grad_rel"] = max(MEASURED["grad_rel"], rel)
    return rel


def sj_spec(node: Any) -> NeuronSpec:
    """The NeuronSpec of a SpikingJelly IF/LIF/PLIF node (what the frontend will produce)."""
    sg = type(node.surrogate_function).__name__
    name = {"Sigmoid": "sigmoid", "ATan": "atan"}[sg]
    common = dict(
        v_threshold=float(node.v_threshold),
        v_reset=None if node.v_reset is None else float(node.v_reset),
        reset="subtract" if node.v_reset is None else "hard",
        detach_reset=bool(node.detach_reset),
        surrogate=name,
        alpha=float(node.surrogate_function.alpha),
        v_init=0.0 if node.v_reset is None else float(node.v_reset),
    )
    if isinstance(node, neuron.ParametricLIFNode):
        charge = "sj_plif_decay_input" if node.decay_input else "sj_plif"
        return NeuronSpec(model="plif", charge=charge, learnable=("w",), **common)
    if isinstance(node, neuron.LIFNode):
        charge = "sj_lif_decay_input" if node.decay_input else "sj_lif"
        return NeuronSpec(
            model="lif", charge=charge, tau=float(node.tau), decay_input=node.decay_input, **common
        )
    if isinstance(node, neuron.IFNode):
        return NeuronSpec(model="if", charge="sj_if", **common)
    raise TypeError(type(node))


class SeqBuilder:
    """Writes a multi-step SpikingJelly ``nn.Sequential`` out as an IR graph by hand.

    Per-step shapes come from forward hooks on one run of the model, parameter
    names from its state_dict, so the graph is what a frontend should produce.
    """

    def __init__(self, net: torch.nn.Sequential, x: torch.Tensor) -> None:
        self.net = net
        self.g = Graph()
        self.g.meta.update(source="spikingjelly", step_mode="m")
        self.neurons: dict[int, Any] = {}
        shapes: dict[str, list] = {}
        hooks = [
            m.register_forward_hook(
                lambda mod, inp, out, name=name: shapes.__setitem__(name, list(out.shape[2:]))
            )
            for name, m in net.named_children()
        ]
        with torch.no_grad():
            functional.reset_net(net)
            net(x)
            functional.reset_net(net)
        for h in hooks:
            h.remove()
        self.shapes = shapes
        cur = self.g.add_node("input", attrs={"index": 0}, shape=["B", *x.shape[2:]])
        for name, m in net.named_children():
            cur = self.add(name, m, cur)
        self.out = self.g.add_node("output", [cur], attrs={"index": 0})

    def param(self, prefix: str, attr: str) -> str | None:
        key = f"{prefix}.{attr}"
        t = self.net.state_dict().get(key)
        if t is None:
            return None
        return self.g.add_param(key, t.detach().numpy().copy())

    def roles(self, prefix: str, **roles: str) -> dict[str, str]:
        out = {}
        for role, attr in roles.items():
            name = self.param(prefix, attr)
            if name is not None:
                out[role] = name
        return out

    def add(self, name: str, m: torch.nn.Module, src: int) -> int:
        shape = ["B", *self.shapes[name]]
        add = self.g.add_node
        if isinstance(m, neuron.BaseNode):
            params = self.roles(name, w="w") if isinstance(m, neuron.ParametricLIFNode) else {}
            nid = add(
                "neuron",
                [src],
                attrs={"neuron": sj_spec(m).to_dict()},
                params=params,
                shape=shape,
                name=name,
            )
            self.neurons[nid] = m
            return nid
        if isinstance(m, torch.nn.Linear):
            p = self.roles(name, weight="weight", bias="bias")
            return add("linear", [src], params=p, shape=shape, name=name)
        if isinstance(m, torch.nn.Conv2d):
            p = self.roles(name, weight="weight", bias="bias")
            attrs = dict(
                stride=list(m.stride),
                padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                dilation=list(m.dilation),
                groups=m.groups,
            )
            return add("conv2d", [src], attrs=attrs, params=p, shape=shape, name=name)
        if isinstance(m, torch.nn.BatchNorm2d):
            p = self.roles(
                name,
                weight="weight",
                bias="bias",
                running_mean="running_mean",
                running_var="running_var",
            )
            attrs = dict(eps=m.eps, momentum=m.momentum, training=m.training, stats="sequence")
            return add("batchnorm", [src], attrs=attrs, params=p, shape=shape, name=name)
        if isinstance(m, torch.nn.MaxPool2d):
            attrs = dict(
                kernel_size=m.kernel_size,
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                ceil_mode=m.ceil_mode,
            )
            return add("maxpool2d", [src], attrs=attrs, shape=shape, name=name)
        if isinstance(m, torch.nn.AvgPool2d):
            attrs = dict(
                kernel_size=m.kernel_size,
                stride=m.stride,
                padding=m.padding,
                ceil_mode=m.ceil_mode,
                count_include_pad=m.count_include_pad,
                divisor_override=m.divisor_override,
            )
            return add("avgpool2d", [src], attrs=attrs, shape=shape, name=name)
        if isinstance(m, torch.nn.AdaptiveAvgPool2d):
            return add(
                "adaptive_avgpool2d",
                [src],
                attrs={"output_size": m.output_size},
                shape=shape,
                name=name,
            )
        if isinstance(m, torch.nn.Flatten):
            return add(
                "flatten",
                [src],
                attrs={"start_dim": m.start_dim, "end_dim": m.end_dim},
                shape=shape,
                name=name,
            )
        if isinstance(m, layer.VotingLayer):
            return add(
                "voting", [src], attrs={"voting_size": m.voting_size}, shape=shape, name=name
            )
        if isinstance(m, (torch.nn.Dropout, layer.Dropout)):
            return add(
                "dropout", [src], attrs={"p": m.p, "training": m.training}, shape=shape, name=name
            )
        raise TypeError(f"SeqBuilder does not know {type(m).__name__}")


def sj_run(net: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor | None = None):
    """SpikingJelly forward (fresh state) and, with ``weights``, autograd of sum(y * weights)."""
    functional.reset_net(net)
    xt = x.clone().requires_grad_(weights is not None)
    net.zero_grad(set_to_none=True)
    y = net(xt)
    grads = None
    if weights is not None:
        (y * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        grads["<input>"] = xt.grad.clone()
    return y.detach(), grads


def jax_grads(prog, x: torch.Tensor, weights: torch.Tensor) -> dict[str, np.ndarray]:
    w = jnp.asarray(np_(weights))

    def loss(params, xx):
        return jnp.sum(prog.jax_fn(params, xx) * w)

    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(prog.params, jnp.asarray(np_(x)))
    out = {k: np.asarray(v) for k, v in gp.items()}
    out["<input>"] = np.asarray(gx)
    return out


def check_vs_spikingjelly(
    net: torch.nn.Sequential, x: torch.Tensor, prog, neurons: dict[int, Any], grads: bool = True
) -> None:
    """Spikes, final membranes and gradients of ``prog`` against SpikingJelly itself."""
    assert_fires(net, x)
    y, state = prog.run(x)
    weights = torch.randn(tuple(y.shape)) if grads else None
    y_sj, g_sj = sj_run(net, x, weights)
    assert_spikes(y, y_sj)
    assert 0.0 < float(y_sj.mean()) < 1.0, "the test model should spike, but not everywhere"
    for nid, node in neurons.items():
        assert_close(state[nid]["v"], node.v)
    if grads:
        g_jx = jax_grads(prog, x, weights)
        for name, g in g_sj.items():
            rel = grad_rel(g_jx[name], g)
            assert rel <= GRAD_REL_TOL, f"grad of {name}: rel error {rel:.2e}"


def check_vs_reference(graph: Graph, x: torch.Tensor, prog) -> None:
    """Outputs and final state of ``prog`` against the reference backend."""
    assert_fires(graph, x)
    ref = reference_backend()
    from snncc.ir.passes import run_pipeline

    rprog = ref.lower(run_pipeline(graph, ref.pipeline))
    yr, sr = rprog.run(ref.to_native(x))
    y, s = prog.run(x)
    if np.isin(np_(yr), (0.0, 1.0)).all():
        assert_spikes(y, yr)
    else:  # a membrane readout
        assert_close(y, yr)
    for nid, st in sr.items():
        for var, val in st.items():
            if var in ("v", "delay") and nid in s:
                assert_close(s[nid][var], val)


def energise(net: torch.nn.Module, gain: float = 3.0) -> None:
    """Scale weights by ``gain`` and draw positive biases, so every layer of a test model spikes."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(gain)
                if m.bias is not None:
                    m.bias.uniform_(0.0, 1.2)


def net_m(*mods: torch.nn.Module) -> torch.nn.Sequential:
    """A multi-step, eval-mode, energised Sequential."""
    net = torch.nn.Sequential(*mods)
    functional.set_step_mode(net, "m")
    energise(net)
    return net.eval()


def randomise_bn(bn: torch.nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)


# ------------------------------------------------------------ hand-built vs SJ
NEURONS = {
    "if": lambda: neuron.IFNode(),
    "if_atan_soft": lambda: neuron.IFNode(v_reset=None, surrogate_function=surrogate.ATan()),
    "lif_decay_hard": lambda: neuron.LIFNode(tau=2.0),
    "lif_decay_soft_detach": lambda: neuron.LIFNode(tau=3.0, v_reset=None, detach_reset=True),
    "lif_nodecay_hard_atan": lambda: neuron.LIFNode(
        tau=1.7, decay_input=False, surrogate_function=surrogate.ATan(alpha=3.0)
    ),
    "lif_nodecay_soft_detach": lambda: neuron.LIFNode(
        tau=2.5, decay_input=False, v_reset=None, detach_reset=True, v_threshold=0.7
    ),
    "plif_decay": lambda: neuron.ParametricLIFNode(init_tau=2.0),
    "plif_nodecay_soft": lambda: neuron.ParametricLIFNode(
        init_tau=3.0, decay_input=False, v_reset=None, surrogate_function=surrogate.ATan()
    ),
    "lif_vreset_nonzero": lambda: neuron.LIFNode(tau=2.0, v_reset=-0.2, detach_reset=True),
}


@pytest.mark.parametrize("kind", sorted(NEURONS))
def test_mlp_neuron_forms_vs_spikingjelly(kind: str, cache_dir: str) -> None:
    torch.manual_seed(1)
    net = net_m(layer.Linear(12, 24), NEURONS[kind](), layer.Linear(24, 6), NEURONS[kind]())
    x = torch.rand(8, 3, 12) * 1.5
    b = SeqBuilder(net, x)
    prog = lower(b.g, cache_dir)
    check_vs_spikingjelly(net, x, prog, b.neurons)
    check_vs_reference(b.g, x, prog)


@pytest.mark.parametrize("T", [1, 8, 64])
def test_mlp_sequence_lengths(T: int, cache_dir: str) -> None:
    torch.manual_seed(2)
    net = net_m(
        layer.Linear(20, 32),
        neuron.LIFNode(tau=2.0),
        layer.Linear(32, 10),
        neuron.IFNode(v_reset=None),
    )
    x = torch.rand(T, 4, 20) * 3
    b = SeqBuilder(net, x)
    prog = lower(b.g, cache_dir)
    check_vs_spikingjelly(net, x, prog, b.neurons)
    check_vs_reference(b.g, x, prog)


@pytest.mark.parametrize("T", [1, 8, 64])
def test_conv_bn_pool_vs_spikingjelly(T: int, cache_dir: str) -> None:
    """Conv + BatchNorm, max/avg/adaptive pooling, flatten, linear, voting."""
    torch.manual_seed(3)
    net = net_m(
        layer.Conv2d(2, 6, 3, padding=1, bias=False),
        layer.BatchNorm2d(6),
        neuron.LIFNode(tau=2.0, detach_reset=True),
        layer.MaxPool2d(2),
        layer.Conv2d(6, 8, 3, padding=1),
        layer.BatchNorm2d(8),
        neuron.ParametricLIFNode(init_tau=2.0, v_reset=None),
        layer.AvgPool2d(2),
        layer.AdaptiveAvgPool2d((2, 2)),
        layer.Flatten(),
        layer.Linear(32, 20),
        neuron.IFNode(surrogate_function=surrogate.ATan()),
        layer.VotingLayer(2),
    )
    randomise_bn(net[1])
    randomise_bn(net[5])
    x = torch.rand(T, 2, 2, 8, 8) * 2.0
    b = SeqBuilder(net, x)
    prog = lower(b.g, cache_dir)
    # BatchNorm runs as the source runs it, never folded into the conv (that rounds differently)
    assert "rt.fold_bn(" not in prog.source and prog.source.count("rt.batch_norm(") == 2
    check_vs_spikingjelly(net, x, prog, b.neurons)
    check_vs_reference(b.g, x, prog)


def test_a_graph_folded_elsewhere_runs_its_fold(cache_dir: str) -> None:
    """A graph whose BatchNorm another pipeline folded (cuda under tf32, an artifact) runs
    the fold as the reference folds it: ops.fold_bn's formula, eps included."""
    from snncc.ir.passes import run_pipeline

    torch.manual_seed(3)
    net = net_m(
        layer.Conv2d(2, 6, 3, padding=1, bias=False),
        layer.BatchNorm2d(6),
        neuron.LIFNode(tau=2.0),
        layer.Flatten(),
        layer.Linear(6 * 8 * 8, 10),
        neuron.IFNode(),
    )
    randomise_bn(net[1])
    x = torch.rand(8, 2, 2, 8, 8) * 2.0
    folded = run_pipeline(SeqBuilder(net, x).g, ["canonicalize", "fold_batchnorm"])
    prog = lower(folded, cache_dir)
    assert "rt.fold_bn(" in prog.source
    check_vs_reference(folded, x, prog)


def test_unfolded_batchnorm_and_dropout_eval(cache_dir: str) -> None:
    """A BatchNorm after a pool (not foldable) runs as batch_norm; eval dropout is a no-op."""
    torch.manual_seed(4)
    net = net_m(
        layer.Conv2d(1, 4, 3, stride=2, padding="valid"),
        layer.MaxPool2d(2, stride=1, padding=1),
        layer.BatchNorm2d(4),
        neuron.IFNode(),
        layer.Flatten(),
        layer.Dropout(0.5),
        layer.Linear(4 * 5 * 5, 5),
        neuron.LIFNode(),
    )
    randomise_bn(net[2])
    x = torch.rand(8, 2, 1, 9, 9) * 3
    b = SeqBuilder(net, x)
    prog = lower(b.g, cache_dir, passes=False)
    assert "rt.batch_norm(" in prog.source
    check_vs_spikingjelly(net, x, prog, b.neurons)


# -------------------------------------------------- residual (fused epilogue)
class Residual(torch.nn.Module):
    """SEW-style block: sn2(conv2(sn1(conv1(x)))) + sn1(conv1(x)), then a linear readout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = layer.Conv2d(2, 4, 3, padding=1)
        self.sn1 = neuron.LIFNode(tau=2.0)
        self.conv2 = layer.Conv2d(4, 4, 3, padding=1)
        self.sn2 = neuron.IFNode(surrogate_function=surrogate.ATan())
        self.flat = layer.Flatten()
        self.fc = layer.Linear(4 * 6 * 6, 3)
        self.sn3 = neuron.LIFNode(tau=2.0, v_reset=None)
        functional.set_step_mode(self, "m")
        energise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.sn1(self.conv1(x))
        y = self.sn2(self.conv2(a)) + a
        return self.sn3(self.fc(self.flat(y)))


def residual_graph(net: Residual) -> tuple[Graph, dict[int, Any]]:
    g = Graph()
    g.meta.update(source="spikingjelly", step_mode="m")
    sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    for k, v in sd.items():
        g.add_param(k, v)
    conv = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2, 6, 6])
    c1 = g.add_node(
        "conv2d",
        [x],
        attrs=conv,
        params={"weight": "conv1.weight", "bias": "conv1.bias"},
        shape=["B", 4, 6, 6],
        name="conv1",
    )
    s1 = g.add_node(
        "neuron",
        [c1],
        attrs={"neuron": sj_spec(net.sn1).to_dict()},
        shape=["B", 4, 6, 6],
        name="sn1",
    )
    c2 = g.add_node(
        "conv2d",
        [s1],
        attrs=conv,
        params={"weight": "conv2.weight", "bias": "conv2.bias"},
        shape=["B", 4, 6, 6],
        name="conv2",
    )
    s2 = g.add_node(
        "neuron",
        [c2],
        attrs={"neuron": sj_spec(net.sn2).to_dict()},
        shape=["B", 4, 6, 6],
        name="sn2",
    )
    a = g.add_node("add", [s2, s1], shape=["B", 4, 6, 6], name="add")
    f = g.add_node("flatten", [a], attrs={"start_dim": 1, "end_dim": -1}, shape=["B", 144])
    fc = g.add_node(
        "linear", [f], params={"weight": "fc.weight", "bias": "fc.bias"}, shape=["B", 3], name="fc"
    )
    s3 = g.add_node(
        "neuron", [fc], attrs={"neuron": sj_spec(net.sn3).to_dict()}, shape=["B", 3], name="sn3"
    )
    g.add_node("output", [s3], attrs={"index": 0})
    return g, {s1: net.sn1, s2: net.sn2, s3: net.sn3}


def test_residual_add_fused_epilogue(cache_dir: str) -> None:
    torch.manual_seed(5)
    net = Residual().eval()
    g, neurons = residual_graph(net)
    prog = lower(g, cache_dir)
    add_node = [n for n in prog.graph.nx.nodes if prog.graph.op(n) == "add"]
    assert not add_node, "fuse_elementwise should have fused the residual add"
    x = torch.rand(8, 3, 2, 6, 6) * 2
    check_vs_spikingjelly(net, x, prog, neurons)
    check_vs_reference(g, x, prog)


# ------------------------------------------------------ single ops vs torch
def one_op_graph(
    op: str,
    in_shapes: list[list[int]],
    out_shape: list[int],
    attrs=None,
    params: dict[str, np.ndarray] | None = None,
) -> Graph:
    g = Graph()
    ins = [
        g.add_node("input", attrs={"index": i}, shape=["B", *s]) for i, s in enumerate(in_shapes)
    ]
    roles = {}
    for role, arr in (params or {}).items():
        roles[role] = g.add_param(f"m.{role}", arr)
    n = g.add_node(op, ins, attrs=attrs or {}, params=roles, shape=["B", *out_shape], name="m")
    g.add_node("output", [n], attrs={"index": 0})
    return g


def run_rows(fn, *xs: torch.Tensor) -> torch.Tensor:
    """Apply a per-step torch function to [T, B, ...] inputs as [T*B, ...] rows."""
    T = xs[0].shape[0]
    y = fn(*[x.flatten(0, 1) for x in xs])
    return y.reshape(T, -1, *y.shape[1:])


POOLS = [
    (
        "maxpool2d",
        dict(kernel_size=[3, 3], stride=[2, 2], padding=[1, 1], dilation=[1, 1], ceil_mode=False),
        lambda a: torch.nn.functional.max_pool2d(a, 3, 2, 1),
    ),
    (
        "maxpool2d",
        dict(kernel_size=[3, 3], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=True),
        lambda a: torch.nn.functional.max_pool2d(a, 3, 2, 0, ceil_mode=True),
    ),
    (
        "maxpool2d",
        dict(kernel_size=[2, 3], stride=[1, 2], padding=[1, 1], dilation=[2, 1], ceil_mode=True),
        lambda a: torch.nn.functional.max_pool2d(
            a, (2, 3), (1, 2), 1, dilation=(2, 1), ceil_mode=True
        ),
    ),
    (
        "avgpool2d",
        dict(
            kernel_size=[3, 3],
            stride=[2, 2],
            padding=[1, 1],
            ceil_mode=True,
            count_include_pad=True,
            divisor_override=None,
        ),
        lambda a: torch.nn.functional.avg_pool2d(a, 3, 2, 1, ceil_mode=True),
    ),
    (
        "avgpool2d",
        dict(
            kernel_size=[3, 3],
            stride=[2, 2],
            padding=[1, 1],
            ceil_mode=True,
            count_include_pad=False,
            divisor_override=None,
        ),
        lambda a: torch.nn.functional.avg_pool2d(
            a, 3, 2, 1, ceil_mode=True, count_include_pad=False
        ),
    ),
    (
        "avgpool2d",
        dict(
            kernel_size=[2, 2],
            stride=[2, 2],
            padding=[1, 1],
            ceil_mode=False,
            count_include_pad=False,
            divisor_override=3,
        ),
        lambda a: torch.nn.functional.avg_pool2d(a, 2, 2, 1, divisor_override=3),
    ),
    (
        "adaptive_avgpool2d",
        dict(output_size=[3, 4]),
        lambda a: torch.nn.functional.adaptive_avg_pool2d(a, (3, 4)),
    ),
    (
        "adaptive_avgpool2d",
        dict(output_size=[None, 2]),
        lambda a: torch.nn.functional.adaptive_avg_pool2d(a, (None, 2)),
    ),
]


@pytest.mark.parametrize("case", range(len(POOLS)))
def test_pooling_matches_torch_values_and_grads(case: int, cache_dir: str) -> None:
    op, attrs, fn = POOLS[case]
    torch.manual_seed(6)
    x = torch.randn(3, 2, 3, 7, 9)
    x[0] = (x[0] > 0).float()  # ties, as spikes have: gradient goes to the first max
    want = run_rows(fn, x)
    g = one_op_graph(op, [[3, 7, 9]], list(want.shape[2:]), attrs)
    prog = lower(g, cache_dir, passes=False)
    y, _ = prog.run(x)
    assert_close(y, want)
    w = torch.randn_like(want)
    xt = x.clone().requires_grad_(True)
    (run_rows(fn, xt) * w).sum().backward()
    gx = jax.grad(lambda a: jnp.sum(prog.jax_fn(prog.params, a) * np_(w)))(jnp.asarray(np_(x)))
    assert_close(gx, xt.grad)


CONVS = [
    dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1),
    dict(stride=[2, 1], padding=[0, 2], dilation=[1, 2], groups=2),
    dict(stride=[1, 1], padding="same", dilation=[2, 1], groups=1),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv2d_layouts_match_torch(case: int, cache_dir: str) -> None:
    attrs = CONVS[case]
    torch.manual_seed(7)
    w = torch.randn(4, 4 // attrs["groups"], 3, 2)
    bias = torch.randn(4)
    x = torch.randn(2, 3, 4, 8, 7)

    def fn(a: torch.Tensor) -> torch.Tensor:
        st, pad, dil, grp = attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"]
        return torch.nn.functional.conv2d(a, w, bias, st, pad, dil, grp)

    want = run_rows(fn, x)
    g = one_op_graph(
        "conv2d",
        [[4, 8, 7]],
        list(want.shape[2:]),
        attrs,
        {"weight": w.numpy(), "bias": bias.numpy()},
    )
    y, _ = lower(g, cache_dir, passes=False).run(x)
    assert_close(y, want)


def test_conv1d_matches_torch(cache_dir: str) -> None:
    torch.manual_seed(8)
    w = torch.randn(5, 3, 3)
    x = torch.randn(2, 3, 3, 10)
    want = run_rows(lambda a: torch.nn.functional.conv1d(a, w, None, 2, 1), x)
    g = one_op_graph(
        "conv1d",
        [[3, 10]],
        list(want.shape[2:]),
        dict(stride=[2], padding=[1], dilation=[1], groups=1),
        {"weight": w.numpy()},
    )
    y, _ = lower(g, cache_dir, passes=False).run(x)
    assert_close(y, want)


SHAPE_OPS = [
    ("flatten", [[2, 3, 4]], dict(start_dim=2, end_dim=-1), lambda a: a.flatten(3)),
    ("reshape", [[2, 3, 4]], dict(shape=[-1, 4, 6]), lambda a: a.reshape(*a.shape[:2], 4, 6)),
    ("cat", [[2, 3], [5, 3]], dict(dim=1), lambda a, b: torch.cat([a, b], 2)),
    ("cat", [[2, 3], [2, 3]], dict(dim=-1), lambda a, b: torch.cat([a, b], -1)),
    ("cat", [[2, 3], [2, 3]], dict(dim=0), lambda a, b: torch.cat([a, b], 1)),
    (
        "voting",
        [[10]],
        dict(voting_size=3),
        lambda a: (
            torch.nn.functional.avg_pool1d(a.flatten(0, 1).unsqueeze(1), 3, 3)
            .squeeze(1)
            .reshape(*a.shape[:2], -1)
        ),
    ),
    ("scale", [[4]], dict(op="div", value=3.0), lambda a: a / 3.0),
    ("mul", [[4], [4]], {}, lambda a, b: a * b),
    ("identity", [[4]], {}, lambda a: a),
    ("dropout", [[4]], {"p": 0.5, "training": False}, lambda a: a),
    ("add", [[4], [4], [4]], {}, lambda a, b, c: a + b + c),
]


@pytest.mark.parametrize("case", range(len(SHAPE_OPS)))
def test_shape_and_elementwise_ops(case: int, cache_dir: str) -> None:
    op, in_shapes, attrs, fn = SHAPE_OPS[case]
    torch.manual_seed(9)
    xs = [torch.randn(3, 2, *s) for s in in_shapes]
    want = fn(*xs)
    g = one_op_graph(op, in_shapes, list(want.shape[2:]), attrs)
    prog = lower(g, cache_dir, passes=False)
    y, _ = prog.run(tuple(xs) if len(xs) > 1 else xs[0])
    assert_close(y, want)


@pytest.mark.parametrize("stats", ["sequence", "step"])
def test_batchnorm_training_statistics(stats: str, cache_dir: str) -> None:
    torch.manual_seed(10)
    x = torch.randn(4, 3, 5, 2, 2) * 2 + 1
    wt, bs = torch.rand(5) + 0.5, torch.randn(5)
    rm, rv = torch.zeros(5), torch.ones(5)

    def bn(a):
        return torch.nn.functional.batch_norm(a, rm.clone(), rv.clone(), wt, bs, True, 0.1, 1e-5)

    want = run_rows(bn, x) if stats == "sequence" else torch.stack([bn(a) for a in x])
    g = one_op_graph(
        "batchnorm",
        [[5, 2, 2]],
        [5, 2, 2],
        dict(eps=1e-5, momentum=0.1, training=True, stats=stats),
        {
            "weight": wt.numpy(),
            "bias": bs.numpy(),
            "running_mean": rm.numpy(),
            "running_var": rv.numpy(),
        },
    )
    y, _ = lower(g, cache_dir, passes=False).run(x)
    assert_close(y, want)


def test_clamp_gradient_is_the_installed_torchs() -> None:
    """snnTorch's ``beta.clamp(0, 1)``: values and gradients equal torch's at every point.

    torch 2.13 passes the gradient at a bound and torch 2.14 gives 0 there, so
    the expected values come from the torch that runs, never from a constant.
    """
    from snncc.backends.jax import runtime as rt

    pts = [-0.5, -0.0, 0.0, 1e-8, 0.3, 1.0 - 2**-24, 1.0, 1.5]
    xt = torch.tensor(pts, requires_grad=True)
    want = xt.clamp(0, 1)
    want.backward(torch.arange(1.0, 9.0))
    value, vjp = jax.vjp(lambda a: rt.clamp(a, 0.0, 1.0), jnp.asarray(pts, jnp.float32))
    (gx,) = vjp(jnp.arange(1.0, 9.0, dtype=jnp.float32))
    assert np.array_equal(np.asarray(value), want.detach().numpy())
    assert np.array_equal(np.asarray(gx), xt.grad.numpy()), (np.asarray(gx), xt.grad)
    jitted = jax.jit(jax.grad(lambda a: jnp.sum(rt.clamp(a, 0.0, 1.0) * jnp.arange(1.0, 9.0))))
    assert np.array_equal(np.asarray(jitted(jnp.asarray(pts, jnp.float32))), xt.grad.numpy())


# ------------------------------------------------ the threshold itself
def test_membrane_exactly_on_the_threshold(cache_dir: str) -> None:
    """Charged exactly onto the threshold a neuron fires under ``>=`` and not under ``>``;
    one ulp below never fires, one above always does: jax == reference == that rule for
    every firing form under both comparisons (one graph, one input per form: one jit)."""
    from checks import assert_fires_at_threshold, threshold_graph

    g, xs, cases = threshold_graph()
    y_ref, _ = reference_backend().lower(g).run(xs)
    y_jx, _ = lower(g, cache_dir).run(xs)
    for (spec, h), yr, yj in zip(cases, y_ref, y_jx):
        yj = torch.tensor(np.array(yj))
        assert torch.equal(yj, yr), f"{spec.summary()}: jax differs from the reference"
        assert_fires_at_threshold(spec, yj, h)
        assert_fires_at_threshold(spec, yr, h)


# ------------------------------------------------ recurrence, LI, streaming
def recurrent_graph(seed: int = 11) -> Graph:
    """x -> fc_in -> add(+ fc_rec(spike[t-1])) -> LIF -> (delay 1) fc_rec; LI readout."""
    rng = np.random.default_rng(seed)
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    g.add_param("fc_in.weight", rng.standard_normal((16, 6)).astype(np.float32))
    g.add_param("fc_rec.weight", (rng.standard_normal((16, 16)) * 0.5).astype(np.float32))
    g.add_param("fc_out.weight", rng.standard_normal((3, 16)).astype(np.float32))
    g.add_param("sn.w", np.array(-0.3, np.float32))
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 6])
    a = g.add_node("linear", [x], params={"weight": "fc_in.weight"}, shape=["B", 16], name="fc_in")
    add = g.add_node("add", [a], shape=["B", 16], name="add")
    plif = NeuronSpec(
        model="plif", charge="sj_plif_decay_input", v_reset=None, reset="subtract", learnable=("w",)
    )
    s = g.add_node(
        "neuron",
        [add],
        attrs={"neuron": plif.to_dict()},
        params={"w": "sn.w"},
        shape=["B", 16],
        name="sn",
    )
    r = g.add_node(
        "linear", [(s, 1)], params={"weight": "fc_rec.weight"}, shape=["B", 16], name="fc_rec"
    )
    g.add_edge(r, add, 1)
    o = g.add_node("linear", [s], params={"weight": "fc_out.weight"}, shape=["B", 3], name="fc_out")
    li = NeuronSpec(model="li", charge="snncc_li", tau=2.0, reset="none", output="membrane")
    v = g.add_node("neuron", [o], attrs={"neuron": li.to_dict()}, shape=["B", 3], name="readout")
    g.add_node("output", [v], attrs={"index": 0})
    return g


def recurrent_torch(g: Graph, x: torch.Tensor, params: dict[str, torch.Tensor]):
    """The recurrent graph written as an explicit torch loop over snncc.neurons.step."""
    from snncc import neurons

    plif = NeuronSpec.from_dict(g.attrs(3)["neuron"])
    li = NeuronSpec.from_dict(g.attrs(6)["neuron"])
    k = {"k": params["sn.w"].sigmoid()}
    st_s = neurons.init_state(plif, (x.shape[1], 16))
    st_v = neurons.init_state(li, (x.shape[1], 3))
    prev = torch.zeros(x.shape[1], 16)
    outs = []
    for t in range(x.shape[0]):
        cur = x[t] @ params["fc_in.weight"].T + prev @ params["fc_rec.weight"].T
        s, st_s = neurons.step(plif, k, cur, st_s)
        y, st_v = neurons.step(li, {}, s @ params["fc_out.weight"].T, st_v)
        prev = s
        outs.append(y)
    return torch.stack(outs), {3: st_s, 4: {"delay": prev}, 6: st_v}


def test_recurrent_group_is_one_scan_and_matches_torch(cache_dir: str) -> None:
    g = recurrent_graph()
    prog = lower(g, cache_dir, neuron_kernels="scan")  # the readout a scan on a GPU too
    kinds = [grp["kind"] for grp in prog.graph.meta["groups"]]
    assert "recurrent" in kinds
    assert prog.source.count("lax.scan(") == 2  # the recurrent SCC, then the LI readout
    torch.manual_seed(12)
    x = torch.rand(16, 4, 6) * 2
    params = {k: torch.tensor(v, requires_grad=True) for k, v in g.params.items()}
    want, wstate = recurrent_torch(g, x, params)
    y, state = prog.run(x)
    assert_close(y, want.detach())
    assert_close(state[3]["v"], wstate[3]["v"].detach())
    assert_close(state[6]["v"], wstate[6]["v"].detach())
    # gradients through the recurrence (BPTT) against torch autograd of the same loop
    w = torch.randn_like(want)
    (want * w).sum().backward()
    gj = jax_grads(prog, x, w)
    for name, p in params.items():
        rel = grad_rel(gj[name], p.grad)
        assert rel <= GRAD_REL_TOL, f"grad of {name}: rel error {rel:.2e}"
    check_vs_reference(g, x, prog)


@pytest.mark.parametrize("which", ["feedforward", "recurrent"])
def test_streaming_equals_one_run(which: str, cache_dir: str) -> None:
    torch.manual_seed(13)
    if which == "recurrent":
        g, x = recurrent_graph(), torch.rand(12, 3, 6) * 2
    else:
        net = net_m(
            layer.Linear(5, 8),
            neuron.LIFNode(tau=2.0, v_reset=None),
            layer.Linear(8, 4),
            neuron.ParametricLIFNode(),
        )
        x = torch.rand(12, 3, 5) * 2
        g = SeqBuilder(net, x).g
    prog = lower(g, cache_dir)
    y_all, s_all = prog.run(x)
    y1, s1 = prog.run(x[:5])
    y2, s2 = prog.run(x[5:], s1)
    np.testing.assert_array_equal(np.concatenate([np_(y1), np_(y2)]), np_(y_all))
    for nid in s_all:
        for var in s_all[nid]:
            np.testing.assert_array_equal(np_(s2[nid][var]), np_(s_all[nid][var]))


def test_state_from_reference_backend_continues_in_jax(cache_dir: str) -> None:
    """State is {node_id: {var: array}} on every backend: reference state resumes in jax."""
    ref = reference_backend()
    from snncc.ir.passes import run_pipeline

    g = recurrent_graph()
    x = torch.rand(10, 2, 6) * 2
    prog = lower(g, cache_dir)
    rprog = ref.lower(run_pipeline(g, ref.pipeline))
    _, rstate = rprog.run(ref.to_native(x[:4]))
    y2, _ = prog.run(x[4:], rstate)
    y_all, _ = prog.run(x)
    assert_close(y2, np_(y_all)[4:])


def test_multiple_outputs_and_unroll(cache_dir: str) -> None:
    """Two outputs (spikes and an LI readout of them) come back as a tuple; unroll changes nothing."""
    rng = np.random.default_rng(16)
    g = Graph()
    g.add_param("fc.weight", (rng.standard_normal((4, 3)) * 2).astype(np.float32))
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 3])
    lin = g.add_node("linear", [x], params={"weight": "fc.weight"}, shape=["B", 4])
    lif = NeuronSpec(model="lif", charge="sj_lif", tau=2.0, decay_input=False)
    s = g.add_node("neuron", [lin], attrs={"neuron": lif.to_dict()}, shape=["B", 4])
    li = NeuronSpec(model="li", charge="snncc_li", tau=3.0, reset="none", output="membrane")
    v = g.add_node("neuron", [s], attrs={"neuron": li.to_dict()}, shape=["B", 4])
    g.add_node("output", [s], attrs={"index": 0})
    g.add_node("output", [v], attrs={"index": 1})
    xs = torch.rand(9, 2, 3) * 2
    (sp, mem), _ = lower(g, cache_dir).run(xs)
    (sp4, mem4), _ = lower(g, cache_dir, unroll=4).run(xs)
    np.testing.assert_array_equal(np_(sp), np_(sp4))
    assert_close(mem4, mem)
    want_v, v_prev = [], torch.zeros(2, 4)
    for t in range(9):  # LI of the spikes, by hand: v + (x - v) / tau
        v_prev = v_prev + (torch.tensor(np_(sp)[t]) - v_prev) / 3.0
        want_v.append(v_prev)
    assert_close(mem, torch.stack(want_v))
    with pytest.raises(BackendError, match="unroll"):
        lower(g, cache_dir, unroll=0)


def test_delay_edge_outside_a_cycle(cache_dir: str) -> None:
    """A feed-forward delay (no cycle): y[t] = x[t] + x[t-1], streaming carries x[T-1].

    The verifier rejects such graphs today (a delay must close a cycle), so no
    pass pipeline runs here; the backend still gives them their one meaning.
    """
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 3])
    a = g.add_node("add", [x, (x, 1)], shape=["B", 3])
    g.add_node("output", [a], attrs={"index": 0})
    prog = lower(g, cache_dir, passes=False)
    xs = torch.randn(6, 2, 3)
    y, st = prog.run(xs)
    want = xs.clone()
    want[1:] += xs[:-1]
    assert_close(y, want)
    assert_close(st[x]["delay"], xs[-1])
    y2, _ = prog.run(xs[:2], st)
    assert_close(y2[0], xs[0] + xs[-1])


def test_prologue_scale_and_add(cache_dir: str) -> None:
    """scale and add before a neuron fuse into its prologue; results equal the unfused graph."""
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 5])
    y = g.add_node("input", attrs={"index": 1}, shape=["B", 5])
    s = g.add_node("scale", [x], attrs={"op": "mul", "value": 0.75}, shape=["B", 5])
    a = g.add_node("add", [s, y], shape=["B", 5])
    spec = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0)
    n = g.add_node("neuron", [a], attrs={"neuron": spec.to_dict()}, shape=["B", 5])
    g.add_node("output", [n], attrs={"index": 0})
    fused = lower(g, cache_dir)
    plain = lower(g, cache_dir, passes=False)
    assert fused.graph.attrs(n).get("prologue"), "fuse_elementwise should fill the prologue"
    xs = (torch.rand(10, 4, 5) * 2, torch.rand(10, 4, 5))
    np.testing.assert_array_equal(np_(fused.run(xs)[0]), np_(plain.run(xs)[0]))


# ------------------------------------------------------- program and errors
def test_program_files_cache_and_jit(cache_dir: str, tmp_path) -> None:
    torch.manual_seed(14)
    net = net_m(layer.Linear(4, 4), neuron.IFNode())
    x = torch.rand(3, 2, 4)
    g = SeqBuilder(net, x).g
    prog = lower(g, str(tmp_path))
    files = list(tmp_path.glob("model_*.py"))
    assert len(files) == 1 and files[0].read_text() == prog.source
    assert prog.files() == {"model.py": prog.source}
    assert set(prog.params) == {"0.weight", "0.bias"}
    compile(prog.source, "model.py", "exec")
    y1 = jax.jit(prog.jax_fn)(prog.params, jnp.asarray(np_(x)))
    np.testing.assert_array_equal(np.asarray(y1), np_(prog.run(x)[0]))
    assert jax_backend().to_native(x.double()).dtype == jnp.float32
    with pytest.raises(UnsupportedError, match="unknown jax backend option.*unroll"):
        jax_backend().lower(g, cache_dir=cache_dir, no_such_option=1)  # as every backend


def test_user_strings_never_reach_code_unsanitised(cache_dir: str) -> None:
    evil = "x')\nimport os; os.system('echo pwned')  #"
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2], name=evil)
    g.add_param(evil + ".weight", np.eye(2, dtype=np.float32))
    lin = g.add_node("linear", [x], params={"weight": evil + ".weight"}, shape=["B", 2], name=evil)
    g.add_node("output", [lin], attrs={"index": 0})
    prog = lower(g, cache_dir, passes=False)
    tree = ast.parse(prog.source)
    imported = {
        a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert imported == {"jax", "jax.numpy", "lax", "runtime"}
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not any("system" in c for c in calls)
    assert repr(evil + ".weight") in prog.source  # the state_dict key only as a literal
    y, _ = prog.run(np.ones((2, 1, 2), np.float32))
    np.testing.assert_array_equal(np_(y), np.ones((2, 1, 2)))


def test_training_dropout_inside_a_recurrence_is_unsupported(cache_dir: str) -> None:
    """Training-mode dropout runs in layer groups (tests/test_dropout.py); inside a scan it
    would need a key per step, and is refused by name instead of dropped."""
    g = recurrent_graph()
    (rec,) = [n for n in g.nx.nodes if g.node(n).get("name") == "fc_rec"]
    (e,) = g.in_edges(rec)
    g.remove_edge(e)
    d = g.add_node("dropout", [(e.src, 1)], attrs={"p": 0.5, "training": True}, name="drop")
    g.add_edge(d, rec, 0)
    with pytest.raises(UnsupportedError, match=r"drop\).*training-mode dropout.*recurrent"):
        lower(g, cache_dir)


def test_unknown_charge_form_is_unsupported(cache_dir: str) -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2])
    spec = NeuronSpec(model="if", charge="sj_if").to_dict()
    spec["charge"] = "made_up"
    n = g.add_node("neuron", [x], attrs={"neuron": spec}, shape=["B", 2])
    g.add_node("output", [n], attrs={"index": 0})
    with pytest.raises(UnsupportedError, match="made_up"):
        lower(g, cache_dir, passes=False)


def test_missing_jax_raises_backend_error() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["jax"] = None
        import snncc.backends as b
        from snncc.errors import BackendError
        try:
            b.get("jax")
        except BackendError as e:
            assert "pip install jax" in str(e), e
            print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "OK", out.stderr


# ------------------------------------------------ traced models (frontend)
def traced_models() -> dict[str, Any]:
    def mlp():
        return net_m(
            layer.Flatten(),
            layer.Linear(36, 32),
            neuron.LIFNode(tau=2.0),
            layer.Linear(32, 10),
            neuron.IFNode(),
        ), torch.rand(8, 2, 1, 6, 6)

    def conv():
        n = net_m(
            layer.Conv2d(1, 4, 3, padding=1, bias=False),
            layer.BatchNorm2d(4),
            neuron.ParametricLIFNode(),
            layer.MaxPool2d(2),
            layer.Flatten(),
            layer.Linear(36, 20),
            neuron.LIFNode(v_reset=None, detach_reset=True),
            layer.VotingLayer(2),
        )
        randomise_bn(n[1])
        return n, torch.rand(8, 2, 1, 6, 6) * 2

    return {
        "mlp": mlp,
        "conv_bn_plif": conv,
        "residual": lambda: (Residual().eval(), torch.rand(8, 2, 2, 6, 6) * 2),
    }


@pytest.mark.parametrize("name", sorted(traced_models()))
def test_traced_spikingjelly_models(name: str, cache_dir: str) -> None:
    from snncc.frontend import trace

    torch.manual_seed(15)
    net, x = traced_models()[name]()
    g = trace(net, x)
    prog = lower(g, cache_dir)
    y_sj, g_sj = sj_run(net, x, weights=None)
    y, _ = prog.run(x)
    assert_spikes(y, y_sj)
    assert 0.0 < float(y_sj.mean()) < 1.0, "the test model should spike, but not everywhere"
    w = torch.randn_like(y_sj)
    _, g_sj = sj_run(net, x, w)
    g_jx = jax_grads(prog, x, w)
    for pname, gval in g_sj.items():
        rel = grad_rel(g_jx[pname], gval)
        assert rel <= GRAD_REL_TOL, f"grad of {pname}: rel error {rel:.2e}"
    check_vs_reference(g, x, prog)


def test_every_stateless_ir_op_has_a_jax_statement() -> None:
    """The ops template names each op it renders; an op added to the IR without a statement
    would fail at its last branch, which must say so in one line."""
    from snncc.backends.jax.render import environment
    from snncc.ir.ops import OPS

    source = environment().loader.get_source(environment(), "ops.py.j2")[0]
    handled_elsewhere = {"input", "neuron"}  # graph inputs, and the neuron templates
    missing = [op for op in OPS if op not in handled_elsewhere and f'"{op}"' not in source]
    assert missing == []
    macro = environment().get_template("ops.py.j2").module.node
    with pytest.raises(UnsupportedError, match="op 'lstm' has no jax statement"):
        macro({"op": "lstm", "out": "y", "ins": ["x"], "id": 0, "label": "", "a": {}})
