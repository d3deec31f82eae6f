"""The reference backend on hand-built graphs, against the same computation in SpikingJelly/torch.

Graphs are built directly with snncc.ir.Graph (no frontend, no passes), so
these tests pin the interpreter itself: every op's meaning, the layer-first
schedule, recurrent components, state carry-over and gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checks import assert_fires
from spikingjelly.activation_based import layer, neuron, surrogate

from snncc import backends
from snncc.backends.reference import ReferenceBackend, ReferenceProgram
from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec

T, B = 8, 3


# ------------------------------------------------------------------ helpers
def _x(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * scale


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _params(g: Graph, module: torch.nn.Module, prefix: str) -> dict[str, str]:
    """Register a module's state_dict entries under ``prefix.name``; role = entry name."""
    roles = {}
    for k, v in module.state_dict().items():
        if k == "num_batches_tracked":
            continue
        roles[k] = g.add_param(f"{prefix}.{k}", _np(v))
    return roles


def _lif_spec(**kw) -> dict:
    return NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0, **kw).to_dict()


def _if_spec(**kw) -> dict:
    return NeuronSpec(model="if", charge="sj_if", **kw).to_dict()


def _program(g: Graph, **opts) -> ReferenceProgram:
    return backends.get("reference").lower(g, **opts)


def _mlp_graph(ref: torch.nn.Sequential) -> Graph:
    g = Graph()
    g.meta.update(source="spikingjelly", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 20])
    h = g.add_node("linear", [x], params=_params(g, ref[0], "0"), shape=["B", 32], name="0")
    h = g.add_node("neuron", [h], attrs={"neuron": _lif_spec()}, shape=["B", 32], name="1")
    h = g.add_node("linear", [h], params=_params(g, ref[2], "2"), shape=["B", 10], name="2")
    plif = NeuronSpec(
        model="plif",
        charge="sj_plif_decay_input",
        surrogate="atan",
        alpha=2.0,
        v_reset=None,
        reset="subtract",
        learnable=("w",),
    )
    h = g.add_node(
        "neuron",
        [h],
        attrs={"neuron": plif.to_dict()},
        params={"w": g.add_param("3.w", _np(ref[3].w))},
        shape=["B", 10],
        name="3",
    )
    g.add_node("output", [h], attrs={"index": 0}, shape=["B", 10])
    return g


def _sj_mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Linear(20, 32, step_mode="m"),
        neuron.LIFNode(tau=2.0, step_mode="m"),
        layer.Linear(32, 10, step_mode="m"),
        neuron.ParametricLIFNode(v_reset=None, surrogate_function=surrogate.ATan(), step_mode="m"),
    )
    with torch.no_grad():  # large enough weights that both layers spike
        net[0].weight.mul_(2.0)
        net[2].weight.mul_(4.0)
        net[2].bias.add_(0.5)
    return net


# ------------------------------------------------------------------ tests
def test_registry_and_protocol() -> None:
    be = backends.get("reference")
    assert isinstance(be, ReferenceBackend)
    assert be.name == "reference"
    assert be.pipeline == ("canonicalize", "drop_noops", "temporal_fusion")
    t = be.to_native(np.arange(6).reshape(2, 3))
    assert t.dtype == torch.float32 and t.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert be.to_native(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    import jax.numpy as jnp

    assert torch.equal(be.to_native(jnp.ones((2, 2))), torch.ones(2, 2))
    with pytest.raises(UnsupportedError, match="unknown reference backend option"):
        be.lower(Graph(), fast=True)


def test_mlp_matches_spikingjelly_values_and_gradients() -> None:
    ref = _sj_mlp()
    prog = _program(_mlp_graph(ref))
    x = _x(T, B, 20, scale=3.0).requires_grad_()
    assert_fires(prog.graph, x.detach())
    y_ref = ref(x)
    r = torch.randn(T, B, 10)
    (y_ref * r).sum().backward()
    gx_ref = x.grad.clone()
    x.grad = None
    y, state = prog.run(x)
    (y * r).sum().backward()
    assert torch.equal(y, y_ref) and 0 < y.sum() < y.numel()
    assert torch.equal(state[2]["v"], ref[1].v) and torch.equal(state[4]["v"], ref[3].v)
    torch.testing.assert_close(x.grad, gx_ref, rtol=1e-5, atol=1e-6)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(prog.params[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert prog.params["0.weight"].is_leaf and prog.params["3.w"].requires_grad


def test_streaming_equals_one_run() -> None:
    prog = _program(_mlp_graph(_sj_mlp()), requires_grad=False)
    x = _x(T, B, 20, scale=3.0)
    full, st_full = prog.run(x)
    a, st = prog.run(x[:3])
    b, st = prog.run(x[3:], st)
    assert torch.equal(torch.cat([a, b]), full)
    assert all(torch.equal(st[k]["v"], st_full[k]["v"]) for k in st_full)
    assert not full.requires_grad


def _conv_graph(ref: torch.nn.Sequential, *, bn_training: bool, stats: str = "sequence") -> Graph:
    g = Graph()
    g.meta.update(source="spikingjelly", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2, 8, 8])
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    h = g.add_node("conv2d", [x], attrs=conv, params=_params(g, ref[0], "0"), shape=["B", 4, 8, 8])
    bn = {"eps": 1e-5, "momentum": 0.1, "training": bn_training, "stats": stats}
    h = g.add_node("batchnorm", [h], attrs=bn, params=_params(g, ref[1], "1"))
    h = g.add_node("neuron", [h], attrs={"neuron": _if_spec()})
    pool = {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0], "dilation": [1, 1]}
    h = g.add_node("maxpool2d", [h], attrs=pool)
    h = g.add_node("flatten", [h], attrs={"start_dim": 1, "end_dim": -1})
    h = g.add_node("linear", [h], params=_params(g, ref[5], "5"))
    g.add_node("output", [h], attrs={"index": 0})
    return g


def _sj_conv() -> torch.nn.Sequential:
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1, step_mode="m"),
        layer.BatchNorm2d(4, step_mode="m"),
        neuron.IFNode(step_mode="m"),
        layer.MaxPool2d(2, 2, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(64, 5, step_mode="m"),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
    return net


def test_conv_bn_if_pool_flatten_linear_eval() -> None:
    ref = _sj_conv().eval()
    prog = _program(_conv_graph(ref, bn_training=False))
    x = _x(T, B, 2, 8, 8, seed=2, scale=2.0)
    assert_fires(prog.graph, x)
    y, _ = prog.run(x)
    assert torch.equal(y, ref(x))


@pytest.mark.parametrize("stats", ["sequence", "step"])
def test_batchnorm_training_statistics(stats: str) -> None:
    ref = _sj_conv().train()
    prog = _program(_conv_graph(ref, bn_training=True, stats=stats))
    x = _x(T, B, 2, 8, 8, seed=3, scale=2.0)
    assert_fires(prog.graph, x)
    if stats == "sequence":
        y_ref = ref(x)
    else:  # a single-step source: BN sees one step's batch at a time
        for m in ref:
            m.step_mode = "s"
        y_ref = torch.stack([ref(xt) for xt in x])
        # ...and so does every row op: a convolution over T*B rows may round differently
        # from T convolutions over B (oneDNN picks its kernel by shape)
        prog = ReferenceProgram(prog.graph, stateless_per_step=True)
    y, _ = prog.run(x)
    assert torch.equal(y, y_ref)
    assert torch.equal(prog.params["1.running_mean"], ref[1].running_mean)
    assert torch.equal(prog.params["1.running_var"], ref[1].running_var)
    assert not prog.params["1.running_mean"].requires_grad


def test_single_step_source_runs_rows_per_step() -> None:
    ref = _sj_conv().eval()
    for m in ref:
        m.step_mode = "s"
    g = _conv_graph(ref, bn_training=False)
    g.meta["step_mode"] = "s"
    prog = _program(g)
    assert prog.stateless_per_step
    x = _x(T, B, 2, 8, 8, seed=4, scale=2.0)
    y_ref = torch.stack([ref(xt) for xt in x])
    assert torch.equal(prog.run(x)[0], y_ref)


def test_folded_batchnorm_params() -> None:
    ref = _sj_conv().eval()
    g = Graph()
    x = g.add_node("input", attrs={"index": 0})
    roles = _params(g, ref[0], "0")
    bn = _params(g, ref[1], "1")
    roles.update(
        bn_weight=bn["weight"],
        bn_bias=bn["bias"],
        bn_mean=bn["running_mean"],
        bn_var=bn["running_var"],
    )
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "bn_eps": 1e-5}
    h = g.add_node("conv2d", [x], attrs=conv, params=roles)
    g.add_node("output", [h], attrs={"index": 0})
    prog = _program(g)
    xin = _x(T, B, 2, 8, 8, seed=5)
    y, _ = prog.run(xin)
    y_ref = ref[1](ref[0](xin))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert prog.params["1.weight"].grad is not None and prog.params["0.weight"].grad is not None
    assert not prog.params["1.running_var"].requires_grad


def test_residual_add_voting_and_cat() -> None:
    torch.manual_seed(2)
    l1, l2 = torch.nn.Linear(12, 20), torch.nn.Linear(20, 20)
    g = Graph()
    x = g.add_node("input", attrs={"index": 0})
    a = g.add_node("linear", [x], params=_params(g, l1, "l1"))
    a = g.add_node("neuron", [a], attrs={"neuron": _lif_spec()})
    b = g.add_node("linear", [a], params=_params(g, l2, "l2"))
    b = g.add_node("neuron", [b], attrs={"neuron": _lif_spec(v_reset=None, reset="subtract")})
    s = g.add_node("add", [a, b])
    v = g.add_node("voting", [s], attrs={"voting_size": 5})
    c = g.add_node("cat", [a, v], attrs={"dim": 1})
    g.add_node("output", [v], attrs={"index": 0})
    g.add_node("output", [c], attrs={"index": 1})
    xin = _x(T, B, 12, seed=6, scale=3.0)

    n1 = neuron.LIFNode(step_mode="m")
    n2 = neuron.LIFNode(v_reset=None, step_mode="m")
    sa = n1(l1(xin))
    sb = n2(l2(sa))
    vote = layer.VotingLayer(5, step_mode="m")(sa + sb)
    (y_vote, y_cat), _ = _program(g).run(xin)
    assert torch.equal(y_vote, vote)
    assert torch.equal(y_cat, torch.cat([sa, vote], dim=2))
    assert y_vote.shape == (T, B, 4)


def test_misc_ops_against_torch() -> None:
    torch.manual_seed(3)
    c1 = torch.nn.Conv1d(2, 3, 3, padding=1)
    g = Graph()
    x = g.add_node("input", attrs={"index": 0})
    c = g.add_node(
        "conv1d",
        [x],
        attrs={"stride": 1, "padding": 1, "dilation": 1, "groups": 1},
        params=_params(g, c1, "c1"),
    )  # [B, 3, 16]
    r = g.add_node("reshape", [c], attrs={"shape": [-1, 3, 4, 4]})
    ap = g.add_node(
        "avgpool2d", [r], attrs={"kernel_size": 2, "stride": 2, "padding": 0}
    )  # [B,3,2,2]
    ad = g.add_node("adaptive_avgpool2d", [r], attrs={"output_size": [2, 2]})
    m = g.add_node("mul", [ap, ad])
    sc = g.add_node("scale", [m], attrs={"op": "div", "value": 3.0})
    i = g.add_node("identity", [sc])
    f = g.add_node("flatten", [i], attrs={"start_dim": 2, "end_dim": 3})  # [B, 3, 4]
    d = g.add_node("dropout", [f], attrs={"p": 0.5})  # eval: identity
    g.add_node("output", [d], attrs={"index": 0})
    xin = _x(T, B, 2, 16, seed=7)

    xf = xin.flatten(0, 1)
    cf = c1(xf).reshape(-1, 3, 4, 4)
    ref = (F.avg_pool2d(cf, 2, 2) * F.adaptive_avg_pool2d(cf, (2, 2))) / 3.0
    ref = ref.flatten(2, 3).unflatten(0, (T, B))
    assert torch.equal(_program(g).run(xin)[0], ref)


def _recurrent_graph(rec: torch.nn.Linear | None, lin: torch.nn.Linear) -> Graph:
    """x -> linear -> add(., rec(s[t-1])) -> LIF -> out; rec None: the spikes themselves."""
    g = Graph()
    g.meta.update(step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 6])
    h = g.add_node("linear", [x], params=_params(g, lin, "fc"), shape=["B", 8])
    add = g.add_node("add", [h], shape=["B", 8])
    n = g.add_node("neuron", [add], attrs={"neuron": _lif_spec()}, shape=["B", 8])
    if rec is None:
        g.add_edge(n, add, port=1, delay=1)
    else:
        r = g.add_node("linear", [(n, 1)], params=_params(g, rec, "rc"), shape=["B", 8])
        g.add_edge(r, add, port=1, delay=0)
    g.add_node("output", [n], attrs={"index": 0})
    return g


@pytest.mark.parametrize("with_linear", [True, False])
def test_recurrent_component_matches_step_loop(with_linear: bool) -> None:
    torch.manual_seed(4)
    lin, rec = torch.nn.Linear(6, 8), torch.nn.Linear(8, 8)
    g = _recurrent_graph(rec if with_linear else None, lin)
    assert len(g.recurrent_components()) == 1
    prog = _program(g)
    xin = _x(T, B, 6, seed=8, scale=3.0).requires_grad_()
    assert_fires(g, xin.detach())
    y, state = prog.run(xin)

    node = neuron.LIFNode(step_mode="s")
    s_prev = torch.zeros(B, 8)
    outs = []
    for xt in xin:
        fb = rec(s_prev) if with_linear else s_prev
        s_prev = node(lin(xt) + fb)
        outs.append(s_prev)
    y_ref = torch.stack(outs)
    assert torch.equal(y, y_ref) and y.sum() > 0

    r = torch.randn(T, B, 8)
    (y * r).sum().backward()
    g_prog = {k: v.grad.clone() for k, v in prog.params.items()}
    gx = xin.grad.clone()
    xin.grad = None
    (y_ref * r).sum().backward()
    torch.testing.assert_close(gx, xin.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_prog["fc.weight"], lin.weight.grad, rtol=1e-5, atol=1e-6)
    if with_linear:
        torch.testing.assert_close(g_prog["rc.weight"], rec.weight.grad, rtol=1e-5, atol=1e-6)

    # streaming through the recurrent state (membrane + delayed value)
    prog2 = _program(g, requires_grad=False)
    full, _ = prog2.run(xin.detach())
    a, st = prog2.run(xin.detach()[:5])
    b, _ = prog2.run(xin.detach()[5:], st)
    assert torch.equal(torch.cat([a, b]), full)
    assert "delay" in st[3] and "v" in st[3]


def test_pure_delay_edge_outside_a_cycle() -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0})
    s = g.add_node("add", [x, (x, 1)])
    g.add_node("output", [s], attrs={"index": 0})
    prog = _program(g)
    xin = _x(T, B, 4, seed=9)
    y, st = prog.run(xin)
    assert torch.equal(y[0], xin[0]) and torch.equal(y[1:], xin[1:] + xin[:-1])
    a, st = prog.run(xin[:3])
    b, _ = prog.run(xin[3:], st)
    assert torch.equal(torch.cat([a, b]), y)


def test_neuron_prologue_epilogue() -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0})
    x2 = g.add_node("input", attrs={"index": 1})
    attrs = {
        "neuron": _lif_spec(),
        "prologue": [{"kind": "scale", "op": "div", "value": 2.0}, {"kind": "add", "port": 1}],
        "epilogue": [{"kind": "scale", "op": "mul", "value": 3.0}],
    }
    n = g.add_node("neuron", [x, x2], attrs=attrs)
    g.add_node("output", [n], attrs={"index": 0})
    a, b = _x(T, B, 5, seed=10, scale=3.0), _x(T, B, 5, seed=11)
    y, _ = _program(g).run((a, b))
    ref = neuron.LIFNode(step_mode="m")(a / 2.0 + b) * 3.0
    assert torch.equal(y, ref)


def test_dropout_shared_over_time_training() -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0})
    d = g.add_node("dropout", [x], attrs={"p": 0.5, "shared_over_time": True, "training": True})
    g.add_node("output", [d], attrs={"index": 0})
    prog = _program(g)
    xin = torch.ones(T, B, 16)
    torch.manual_seed(5)
    y, st = prog.run(xin)
    assert torch.equal(y, y[:1].expand_as(y))  # same mask every step
    assert set(y.unique().tolist()) == {0.0, 2.0}
    torch.manual_seed(5)
    ref = layer.Dropout(0.5, step_mode="m").train()(xin)
    assert torch.equal(y, ref)
    a, st2 = prog.run(xin[:2])
    b, _ = prog.run(xin[2:], st2)
    assert torch.equal(a[0], b[0])  # the mask carries over in the state
    assert torch.equal(_program(g, training=False).run(xin)[0], xin)


def test_source_and_errors() -> None:
    prog = _program(_mlp_graph(_sj_mlp()))
    src = prog.source
    assert "%1" in src and "neuron" in src and "schedule" in src
    assert prog.files() == {"program.txt": src}
    with pytest.raises(ShapeError, match="time-major"):
        prog.run(torch.zeros(20))
    with pytest.raises(ShapeError, match="expects"):
        prog.run(torch.zeros(T, B, 21))


def test_recurrent_component_builds_its_t0_zeros_on_the_inputs_device() -> None:
    """A delay edge's t = 0 value is made by the run itself; it must land where the input is.

    Found on a GPU (every other tensor on cuda:0, the zeros on the CPU); the meta device
    shows the same mistake without one.
    """
    from kernel_specs import recurrent_lif_graph

    prog = ReferenceProgram(recurrent_lif_graph())
    prog.params = {k: v.detach().to("meta") for k, v in prog.params.items()}
    y, state = prog.run(torch.empty(4, 3, 6, device="meta"))
    assert y.device.type == "meta"
    assert all(v.device.type == "meta" for st in state.values() for v in st.values())
