"""Before/after tests for each pass: the op list after it, and the numbers before and after.

Each numerical check runs the graph before and after the pass with two
evaluators: a small step-by-step torch interpreter defined here (independent
of any backend, so a pass bug cannot hide behind a matching backend bug) and,
when it can run the graph, the reference backend. Exact passes must give
bit-identical outputs; fold_batchnorm (which changes rounding) is compared
with a tolerance before the neuron, where one ulp cannot flip a spike.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snncc import neurons
from snncc.errors import IRError
from snncc.ir import Graph, NeuronSpec
from snncc.ir.passes import PASSES, run_pipeline
from snncc.ir.passes.canonicalize import canonicalize
from snncc.ir.passes.drop_noops import drop_noops
from snncc.ir.passes.fold_batchnorm import fold_batchnorm
from snncc.ir.passes.fuse_elementwise import fuse_elementwise
from snncc.ir.passes.temporal_fusion import temporal_fusion
from snncc.ir.printer import format_graph
from snncc.ir.verify import verify

T, B = 6, 3
LIF = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0).to_dict()
IF_SOFT = NeuronSpec(model="if", charge="sj_if", v_reset=None, reset="subtract").to_dict()


# ----------------------------------------------------------------- evaluators
def _bn_folded(graph: Graph, nid: int, w: torch.Tensor, b: torch.Tensor | None):
    """The producer's W, b with a folded BN applied (formula of ir/ops.py)."""
    if graph.node(nid)["params"].get("bn_weight") is None:
        return w, b
    p = {
        r: torch.from_numpy(graph.param(nid, r))
        for r in ("bn_weight", "bn_bias", "bn_mean", "bn_var")
    }
    s = p["bn_weight"] / torch.sqrt(p["bn_var"] + graph.attrs(nid)["bn_eps"])
    b0 = b if b is not None else torch.zeros_like(s)
    return w * s.reshape(-1, *([1] * (w.dim() - 1))), (b0 - p["bn_mean"]) * s + p["bn_bias"]


def _steps(steps: list[dict], x: torch.Tensor, ins: list[torch.Tensor]) -> torch.Tensor:
    for st in steps:
        if st["kind"] == "scale":
            x = x * st["value"] if st["op"] == "mul" else x / st["value"]
        else:
            x = x + ins[st["port"]]
    return x


def _op(graph: Graph, nid: int, ins: list[torch.Tensor], state: dict) -> torch.Tensor:
    """One node's value at one step (ins by port)."""
    node = graph.node(nid)
    op, a = node["op"], node["attrs"]

    def prm(role: str) -> torch.Tensor | None:
        arr = graph.param(nid, role)
        return None if arr is None else torch.from_numpy(arr)

    if op in ("output", "identity"):
        return ins[0]
    if op == "dropout":
        assert not a.get("training", False) or a["p"] == 0, "test graphs use eval dropout"
        return ins[0]
    if op == "linear":
        w, b = _bn_folded(graph, nid, prm("weight"), prm("bias"))
        return F.linear(ins[0], w, b)
    if op == "conv2d":
        w, b = _bn_folded(graph, nid, prm("weight"), prm("bias"))
        return F.conv2d(ins[0], w, b, a["stride"], a["padding"], a["dilation"], a["groups"])
    if op == "batchnorm":
        return F.batch_norm(
            ins[0],
            prm("running_mean"),
            prm("running_var"),
            prm("weight"),
            prm("bias"),
            False,
            0.0,
            a["eps"],
        )
    if op == "maxpool2d":
        return F.max_pool2d(ins[0], a["kernel_size"], a["stride"], a["padding"])
    if op == "flatten":
        return torch.flatten(ins[0], a["start_dim"], a["end_dim"])
    if op == "reshape":
        return ins[0].reshape(
            [ins[0].shape[0] if d in (-1, "B") and i == 0 else d for i, d in enumerate(a["shape"])]
        )
    if op == "add":
        out = ins[0]
        for x in ins[1:]:
            out = out + x
        return out
    if op == "mul":
        return ins[0] * ins[1]
    if op == "scale":
        return ins[0] * a["value"] if a["op"] == "mul" else ins[0] / a["value"]
    if op == "neuron":
        spec = NeuronSpec.from_dict(a["neuron"])
        params = {r: prm(r) for r in node["params"]}
        x = _steps(a.get("prologue", []), ins[0], ins)
        if nid not in state:
            state[nid] = neurons.init_state(spec, x.shape)
        out, state[nid] = neurons.step(
            spec, neurons.derived_constants(spec, params) | params, x, state[nid]
        )
        return _steps(a.get("epilogue", []), out, ins)
    raise NotImplementedError(op)


def _zeros(graph: Graph, nid: int) -> torch.Tensor:
    return torch.zeros([B if d == "B" else d for d in graph.node(nid)["shape"]])


def run_local(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Step-by-step interpretation in same-step topological order; delay edges read t-1 (zeros at 0)."""
    order = graph.topo_order()
    (inp,), (out,) = graph.meta["inputs"], graph.meta["outputs"]
    state: dict = {}
    prev: dict[int, torch.Tensor] = {}
    ys = []
    for t in range(x.shape[0]):
        vals: dict[int, torch.Tensor] = {}
        for n in order:
            ins = [
                prev.get(e.src, _zeros(graph, e.src)) if e.delay else vals[e.src]
                for e in graph.in_edges(n)
            ]
            vals[n] = x[t] if n == inp else _op(graph, n, ins, state)
        prev = vals
        ys.append(vals[out])
    return torch.stack(ys)


def run_grouped(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Layer-first execution of meta["groups"]: each group over all T before the next.

    Layer and neuron groups read only values of earlier groups (all T steps of
    them already computed); a recurrent group loops t over all its nodes.
    """
    (inp,), (out,) = graph.meta["inputs"], graph.meta["outputs"]
    seq: dict[int, list[torch.Tensor]] = {}
    state: dict = {}
    for g in graph.meta["groups"]:
        nodes = g["nodes"]
        if g["kind"] == "recurrent":
            for n in nodes:
                seq[n] = []
            for t in range(x.shape[0]):
                for n in nodes:
                    ins = [
                        (seq[e.src][t - 1] if t else _zeros(graph, e.src))
                        if e.delay
                        else seq[e.src][t]
                        for e in graph.in_edges(n)
                    ]
                    seq[n].append(_op(graph, n, ins, state))
        else:
            for n in nodes:  # all T of n before the next node of the group
                if n == inp:
                    seq[n] = list(x)
                    continue
                seq[n] = [
                    _op(graph, n, [seq[e.src][t] for e in graph.in_edges(n)], state)
                    for t in range(x.shape[0])
                ]
    return torch.stack(seq[out])


def run_reference(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The reference backend's output after its own pipeline.

    The backend runs row ops over all T*B rows at once, so its GEMMs may round
    differently from this file's per-step evaluator: the two are compared
    with a tolerance, each one's before/after exactly.
    """
    from snncc.backends import get

    backend = get("reference")
    y, _ = backend.lower(run_pipeline(graph, backend.pipeline)).run(x)
    return y.detach()


def assert_same(before: Graph, after: Graph, x: torch.Tensor) -> torch.Tensor:
    """Bit-identical outputs before and after a pass (local evaluator and reference)."""
    y0, y1 = run_local(before, x), run_local(after, x)
    assert y0.dtype == y1.dtype and y0.shape == y1.shape
    assert torch.equal(y0, y1), f"max diff {float((y0 - y1).abs().max())}"
    r0, r1 = run_reference(before, x), run_reference(after, x)
    assert torch.equal(r0, r1), f"reference: max diff {float((r0 - r1).abs().max())}"
    torch.testing.assert_close(r0, y0, rtol=1e-5, atol=1e-5)
    return y0


def ops(graph: Graph) -> list[str]:
    return [graph.op(n) for n in graph.topo_order()]


# ----------------------------------------------------------------- builders
def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def linear(
    g: Graph, src, n_in: int, n_out: int, name: str, r: np.random.Generator, bias: bool = True
):
    params = {
        "weight": g.add_param(
            f"{name}.weight",
            (r.standard_normal((n_out, n_in)) * 2.5 / math.sqrt(n_in)).astype(np.float32),
        )
    }
    if bias:
        params["bias"] = g.add_param(f"{name}.bias", r.uniform(0.0, 1.0, n_out).astype(np.float32))
    return g.add_node("linear", [src], params=params, shape=["B", n_out], name=name)


def batchnorm(
    g: Graph,
    src,
    c: int,
    shape: list,
    name: str,
    r: np.random.Generator,
    training=False,
    affine=True,
):
    params = {
        "running_mean": g.add_param(
            f"{name}.running_mean", r.uniform(-0.5, 0.5, c).astype(np.float32)
        ),
        "running_var": g.add_param(
            f"{name}.running_var", r.uniform(0.5, 2.0, c).astype(np.float32)
        ),
    }
    if affine:
        params["weight"] = g.add_param(f"{name}.weight", r.uniform(0.5, 1.5, c).astype(np.float32))
        params["bias"] = g.add_param(f"{name}.bias", r.uniform(-0.5, 0.5, c).astype(np.float32))
    attrs = {"eps": 1e-5, "momentum": 0.1, "training": training}
    return g.add_node("batchnorm", [src], attrs=attrs, params=params, shape=shape, name=name)


def neuron(g: Graph, src, shape: list, name: str, spec: dict | None = None) -> int:
    return g.add_node("neuron", [src], attrs={"neuron": dict(spec or LIF)}, shape=shape, name=name)


def output(g: Graph, src, shape: list) -> int:
    return g.add_node("output", [src], attrs={"index": 0}, shape=shape, name="out")


def mlp() -> Graph:
    """input -> fc1 -> sn1 -> fc2 -> sn2 -> output."""
    r, g = rng(1), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 8], name="x")
    s1 = neuron(g, linear(g, x, 8, 16, "fc1", r), ["B", 16], "sn1")
    s2 = neuron(g, linear(g, s1, 16, 4, "fc2", r), ["B", 4], "sn2")
    output(g, s2, ["B", 4])
    return g


def recurrent() -> Graph:
    """x -> fc_in --+--> add -> sn -> fc_out -> output, with sn@t-1 -> fc_rec -> add."""
    r, g = rng(2), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 8], name="x")
    fin = linear(g, x, 8, 12, "fc_in", r)
    add = g.add_node("add", [fin], shape=["B", 12], name="add")
    sn = neuron(g, add, ["B", 12], "sn")
    frec = linear(g, (sn, 1), 12, 12, "fc_rec", r, bias=False)
    g.add_edge(frec, add, 1)
    fout = linear(g, sn, 12, 4, "fc_out", r)
    output(g, fout, ["B", 4])
    return g


def xin(*shape: int, seed: int = 3) -> torch.Tensor:
    """Input currents strong enough that neurons fire often but not always."""
    return torch.from_numpy(
        np.random.default_rng(seed).uniform(-1, 3, (T, B, *shape)).astype(np.float32)
    )


# ----------------------------------------------------------------- pipeline
def test_pass_table_names() -> None:
    assert list(PASSES) == [
        "canonicalize",
        "fold_batchnorm",
        "drop_noops",
        "fuse_elementwise",
        "temporal_fusion",
        "partition",
    ]


def test_unknown_pass_lists_choices() -> None:
    with pytest.raises(IRError, match=r"unknown pass 'fuse'.*canonicalize.*temporal_fusion"):
        run_pipeline(mlp(), ["canonicalize", "fuse"])
    with pytest.raises(IRError, match="list of names"):
        run_pipeline(mlp(), "canonicalize")


def test_pipeline_copies_dumps_and_records(tmp_path) -> None:
    g = mlp()
    before = format_graph(g)
    out = run_pipeline(g, list(PASSES), dump_dir=tmp_path / "dump")
    assert format_graph(g) == before, "the input graph must not be modified"
    assert out.meta["passes"] == list(PASSES)
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert files == [
        "00_input.txt",
        "01_canonicalize.txt",
        "02_fold_batchnorm.txt",
        "03_drop_noops.txt",
        "04_fuse_elementwise.txt",
        "05_temporal_fusion.txt",
        "06_partition.txt",
    ]
    assert (tmp_path / "dump" / "00_input.txt").read_text() == before
    assert (tmp_path / "dump" / "06_partition.txt").read_text() == format_graph(out)


def test_pipeline_names_failing_pass(monkeypatch) -> None:
    def breaks_ports(graph: Graph) -> Graph:
        (e,) = graph.in_edges(graph.meta["outputs"][0])
        graph.remove_edge(e)
        graph.add_edge(e.src, e.dst, 3)
        return graph

    monkeypatch.setitem(PASSES, "breaks_ports", breaks_ports)
    with pytest.raises(IRError) as info:
        run_pipeline(mlp(), ["canonicalize", "drop_noops", "breaks_ports", "temporal_fusion"])
    msg = str(info.value)
    assert "pass 'breaks_ports' (after canonicalize, drop_noops) produced an invalid graph" in msg
    assert "input ports [3] are not contiguous" in msg

    monkeypatch.setitem(PASSES, "crashes", lambda graph: {}["boom"])
    with pytest.raises(IRError, match=r"pass 'crashes' \(after no other pass\) crashed: KeyError"):
        run_pipeline(mlp(), ["crashes"])

    monkeypatch.setitem(PASSES, "returns_none", lambda graph: None)
    with pytest.raises(IRError, match="returned NoneType, not a Graph"):
        run_pipeline(mlp(), ["returns_none"])


def test_pipeline_rejects_invalid_input() -> None:
    g = mlp()
    g.node(1)["op"] = "lstm_cell"
    with pytest.raises(IRError, match=r"input graph \(before any pass\).*unknown op 'lstm_cell'"):
        run_pipeline(g, ["canonicalize"])


def test_full_pipelines_keep_outputs() -> None:
    for build, n_in in ((mlp, 8), (recurrent, 8)):
        g = build()
        x = xin(n_in)
        ref = run_pipeline(g, ["canonicalize", "drop_noops", "temporal_fusion"])
        jax_like = run_pipeline(g, list(PASSES))
        y = assert_same(g, ref, x)
        assert torch.equal(run_local(jax_like, x), y)
        assert torch.equal(run_grouped(ref, x), y)
        assert torch.equal(run_grouped(jax_like, x), y)
        assert 0 < float(y.ne(0).float().mean()) < 1 or build is recurrent


# ------------------------------------------------------------- canonicalize
def test_canonicalize_neuron_defaults() -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4])
    partial = [
        {"model": "lif", "charge": "sj_lif_decay_input", "tau": 2},
        {"model": "lif", "charge": "sj_lif", "tau": 3, "v_reset": -0.5},
        {"model": "if", "charge": "sj_if", "v_reset": None, "reset": "subtract"},
        {"model": "if", "charge": "sj_if", "surrogate": "atan"},
        {"model": "if", "charge": "sj_if", "v_reset": -0.5, "v_init": 0.25},
    ]
    ids = []
    src = x
    for i, d in enumerate(partial):
        src = g.add_node("neuron", [src], attrs={"neuron": d}, shape=["B", 4], name=f"sn{i}")
        ids.append(src)
    output(g, src, ["B", 4])
    g = canonicalize(g)
    specs = [g.attrs(n)["neuron"] for n in ids]
    assert specs[0] == NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0).to_dict()
    assert isinstance(specs[0]["tau"], float)
    assert specs[1]["v_init"] == -0.5 and specs[1]["tau"] == 3.0
    assert specs[2]["v_init"] == 0.0 and specs[2]["v_reset"] is None
    assert specs[3]["alpha"] == 2.0
    assert specs[4]["v_init"] == 0.25, "an explicit v_init is the source's choice and is kept"
    verify(g)


def test_canonicalize_rejects_bad_spec() -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4])
    s = g.add_node(
        "neuron",
        [x],
        attrs={"neuron": {"model": "if", "charge": "sj_if", "colour": 1}},
        shape=["B", 4],
        name="sn",
    )
    output(g, s, ["B", 4])
    with pytest.raises(IRError, match=r"node %1 \(neuron 'sn'\): invalid neuron spec"):
        canonicalize(g)


def conv_net(kernel_attrs: dict, pool_attrs: dict) -> Graph:
    r, g = rng(4), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2, 8, 8], name="x")
    w = g.add_param("conv.weight", r.standard_normal((4, 2, 3, 3)).astype(np.float32) / 3)
    c = g.add_node(
        "conv2d",
        [x],
        attrs={"dilation": 1, "groups": 1, **kernel_attrs},
        params={"weight": w},
        shape=["B", 4, 8, 8],
        name="conv",
    )
    p = g.add_node("maxpool2d", [c], attrs=pool_attrs, shape=["B", 4, 4, 4], name="pool")
    s = neuron(g, p, ["B", 4, 4, 4], "sn")
    rs = g.add_node("reshape", [s], attrs={"shape": ["B", -1]}, shape=["B", 64], name="view")
    output(g, rs, ["B", 64])
    return g


def test_canonicalize_windows_and_reshape() -> None:
    g = conv_net({"stride": 1, "padding": (1, 1)}, {"kernel_size": 2, "stride": None, "padding": 0})
    after = canonicalize(g.copy())
    conv, pool, view = (after.attrs(n) for n in (1, 2, 4))
    assert conv == {"dilation": [1, 1], "groups": 1, "stride": [1, 1], "padding": [1, 1]}
    assert pool == {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0]}
    assert view == {"shape": [-1, 64]}
    assert ops(after) == ops(g)
    assert_same(g, after, xin(2, 8, 8))
    again = canonicalize(after.copy())
    assert format_graph(again) == format_graph(after), "canonicalize is idempotent"


def test_canonicalize_keeps_padding_mode_and_rejects_bad_window() -> None:
    g = conv_net(
        {"stride": [1, 1], "padding": "same"},
        {"kernel_size": [2, 2], "stride": [2, 2], "padding": 0},
    )
    assert canonicalize(g).attrs(1)["padding"] == "same"
    g = conv_net(
        {"stride": 1, "padding": 1}, {"kernel_size": [2, 2, 2], "stride": None, "padding": 0}
    )
    with pytest.raises(
        IRError,
        match=r"node %2 \(maxpool2d 'pool'\) attrs.kernel_size .* expected an int or 2 ints",
    ):
        canonicalize(g)


def test_canonicalize_removes_dead_code() -> None:
    g = recurrent()
    r = rng(5)
    x = g.meta["inputs"][0]
    unused_input = g.add_node("input", attrs={"index": 1}, shape=["B", 3], name="aux")
    dead_fc = linear(g, x, 8, 5, "dead_fc", r)
    dead_sn = neuron(g, dead_fc, ["B", 5], "dead_sn")
    g.add_node(
        "scale", [dead_sn], attrs={"op": "mul", "value": 2.0}, shape=["B", 5], name="dead_scale"
    )
    verify(g)
    after = canonicalize(g.copy())
    assert set(after.nx.nodes) == set(g.nx.nodes) - {dead_fc, dead_sn, dead_sn + 1}
    assert unused_input in after, "inputs are the program signature and stay"
    assert "dead_fc.weight" not in after.params and "fc_rec.weight" in after.params
    verify(after)
    ys = []
    for graph in (g, after):  # drop the second input for the evaluator
        graph = graph.copy()
        graph.remove_node(unused_input)
        graph.meta["inputs"] = [x]
        ys.append(run_local(graph, xin(8)))
    assert torch.equal(ys[0], ys[1])


# ----------------------------------------------------------- fold_batchnorm
def bn_mlp(**bn_kwargs) -> tuple[Graph, int, int]:
    r, g = rng(6), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 8], name="x")
    fc = linear(g, x, 8, 16, "fc", r)
    bn = batchnorm(g, fc, 16, ["B", 16], "bn", r, **bn_kwargs)
    output(g, bn, ["B", 16])
    return g, fc, bn


def test_fold_batchnorm_linear() -> None:
    g, fc, bn = bn_mlp()
    after = fold_batchnorm(g.copy())
    assert ops(after) == ["input", "linear", "output"]
    assert after.node(fc)["params"] == {
        "weight": "fc.weight",
        "bias": "fc.bias",
        "bn_weight": "bn.weight",
        "bn_bias": "bn.bias",
        "bn_mean": "bn.running_mean",
        "bn_var": "bn.running_var",
    }
    assert after.attrs(fc)["bn_eps"] == 1e-5
    assert set(after.params) == set(g.params), "params keep their state_dict names"
    verify(after)
    x = xin(8)
    y0, y1 = run_local(g, x), run_local(after, x)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    r0, r1 = run_reference(g, x), run_reference(after, x)
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-5)


def conv_bn(with_neuron: bool) -> tuple[Graph, int]:
    r, g = rng(7), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2, 6, 6], name="x")
    w = g.add_param("conv.weight", r.standard_normal((4, 2, 3, 3)).astype(np.float32) / 3)
    attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    c = g.add_node(
        "conv2d", [x], attrs=attrs, params={"weight": w}, shape=["B", 4, 6, 6], name="conv"
    )
    y = batchnorm(g, c, 4, ["B", 4, 6, 6], "bn", r)
    if with_neuron:
        y = neuron(g, y, ["B", 4, 6, 6], "sn")
    output(g, y, ["B", 4, 6, 6])
    return g, c


def test_fold_batchnorm_conv_without_bias() -> None:
    g, c = conv_bn(with_neuron=True)
    after = fold_batchnorm(g.copy())
    assert ops(after) == ["input", "conv2d", "neuron", "output"]
    assert (
        "bias" not in after.node(c)["params"]
        and after.node(c)["params"]["bn_var"] == "bn.running_var"
    )
    verify(after)
    # numbers before the neuron: folding moves values by a few ulp, which could flip a spike
    g, c = conv_bn(with_neuron=False)
    after = fold_batchnorm(g.copy())
    assert ops(after) == ["input", "conv2d", "output"]
    x = xin(2, 6, 6)
    torch.testing.assert_close(run_local(after, x), run_local(g, x), rtol=1e-5, atol=1e-5)
    r0, r1 = run_reference(g, x), run_reference(after, x)
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    [
        "training",
        "not_affine",
        "shared_producer",
        "already_folded",
        "linear_3d",
        "not_linear",
        "delayed",
    ],
)
def test_fold_batchnorm_leaves_unfoldable(case: str) -> None:
    r = rng(8)
    if case in ("training", "not_affine"):
        g, _, _ = bn_mlp(training=case == "training", affine=case != "not_affine")
    elif case == "shared_producer":
        g, fc, bn = bn_mlp()
        o = g.meta["outputs"][0]
        g.remove_node(o)
        add = g.add_node("add", [bn, fc], shape=["B", 16], name="sum")
        output(g, add, ["B", 16])
    elif case == "already_folded":
        g, fc, bn = bn_mlp()
        o = g.meta["outputs"][0]
        g.remove_node(o)
        output(g, batchnorm(g, bn, 16, ["B", 16], "bn2", r), ["B", 16])
        g = fold_batchnorm(g)
        assert ops(g) == ["input", "linear", "batchnorm", "output"]
    elif case == "linear_3d":
        g = Graph()
        x = g.add_node("input", attrs={"index": 0}, shape=["B", 5, 8], name="x")
        fc = linear(g, x, 8, 5, "fc", r)
        g.node(fc)["shape"] = ["B", 5, 5]
        output(g, batchnorm(g, fc, 5, ["B", 5, 5], "bn", r), ["B", 5, 5])
    elif case == "not_linear":
        g = Graph()
        x = g.add_node("input", attrs={"index": 0}, shape=["B", 16], name="x")
        i = g.add_node("identity", [x], shape=["B", 16])
        output(g, batchnorm(g, i, 16, ["B", 16], "bn", r), ["B", 16])
    else:  # delayed: the BN reads the linear's previous step inside a loop
        g = Graph()
        x = g.add_node("input", attrs={"index": 0}, shape=["B", 8], name="x")
        add = g.add_node("add", [linear(g, x, 8, 6, "fc_in", r)], shape=["B", 6])
        sn = neuron(g, add, ["B", 6], "sn")
        bn = batchnorm(g, (linear(g, sn, 6, 6, "fc_rec", r), 1), 6, ["B", 6], "bn", r)
        g.add_edge(bn, add, 1)
        output(g, sn, ["B", 6])
    verify(g)
    before = ops(g)
    after = fold_batchnorm(g.copy())
    assert ops(after) == before and "batchnorm" in before
    verify(after)


# ---------------------------------------------------------------- drop_noops
def noop_chain() -> tuple[Graph, dict[str, int]]:
    r, g = rng(9), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 2, 4], name="x")
    n: dict[str, int] = {}
    n["identity"] = g.add_node("identity", [x], shape=["B", 2, 4], name="id")
    n["dropout_eval"] = g.add_node(
        "dropout", [n["identity"]], attrs={"p": 0.5, "training": False}, shape=["B", 2, 4]
    )
    n["dropout_noattr"] = g.add_node(
        "dropout", [n["dropout_eval"]], attrs={"p": 0.3}, shape=["B", 2, 4]
    )
    n["dropout_p0"] = g.add_node(
        "dropout", [n["dropout_noattr"]], attrs={"p": 0.0, "training": True}, shape=["B", 2, 4]
    )
    n["mul1"] = g.add_node(
        "scale", [n["dropout_p0"]], attrs={"op": "mul", "value": 1.0}, shape=["B", 2, 4]
    )
    n["div1"] = g.add_node("scale", [n["mul1"]], attrs={"op": "div", "value": 1}, shape=["B", 2, 4])
    n["mul2"] = g.add_node(
        "scale", [n["div1"]], attrs={"op": "mul", "value": 2.0}, shape=["B", 2, 4]
    )
    n["flat11"] = g.add_node(
        "flatten", [n["mul2"]], attrs={"start_dim": 1, "end_dim": 1}, shape=["B", 2, 4]
    )
    n["reshape_same"] = g.add_node(
        "reshape", [n["flat11"]], attrs={"shape": [-1, 2, 4]}, shape=["B", 2, 4]
    )
    n["flatten"] = g.add_node(
        "flatten", [n["reshape_same"]], attrs={"start_dim": 1, "end_dim": -1}, shape=["B", 8]
    )
    n["flatten_same"] = g.add_node(
        "flatten", [n["flatten"]], attrs={"start_dim": 1, "end_dim": -1}, shape=["B", 8]
    )
    n["fc"] = linear(g, n["flatten_same"], 8, 6, "fc", r)
    n["sn"] = neuron(g, n["fc"], ["B", 6], "sn")
    n["reshape"] = g.add_node("reshape", [n["sn"]], attrs={"shape": [-1, 3, 2]}, shape=["B", 3, 2])
    output(g, n["reshape"], ["B", 3, 2])
    return g, n


def test_drop_noops_removes_exact_noops() -> None:
    g, n = noop_chain()
    verify(g)
    after = drop_noops(g.copy())
    gone = {
        "identity",
        "dropout_eval",
        "dropout_noattr",
        "dropout_p0",
        "mul1",
        "div1",
        "flat11",
        "reshape_same",
        "flatten_same",
    }
    assert {k for k, nid in n.items() if nid not in after} == gone
    assert ops(after) == ["input", "scale", "flatten", "linear", "neuron", "reshape", "output"]
    verify(after)
    assert_same(g, after, xin(2, 4))


def test_drop_noops_keeps_what_changes_values() -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4], name="x")
    d = g.add_node("dropout", [x], attrs={"p": 0.5, "training": True}, shape=["B", 4])
    s = g.add_node("scale", [d], attrs={"op": "mul", "value": 1.0}, shape=["B", 4], dtype="float64")
    output(g, s, ["B", 4])
    assert ops(drop_noops(g.copy())) == ops(g)


def test_drop_noops_keeps_double_delay() -> None:
    """identity reads sn@t-1 and feeds the loop at t-1: bypassing it would need a delay of 2."""
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4], name="x")
    add = g.add_node("add", [x], shape=["B", 4])
    sn = neuron(g, add, ["B", 4], "sn")
    ident = g.add_node("identity", [(sn, 1)], shape=["B", 4], name="hold")
    g.add_edge(ident, add, 1, 1)
    output(g, sn, ["B", 4])
    verify(g)
    after = drop_noops(g.copy())
    assert ident in after, "a delay-1 input with a delay-1 use must stay"
    verify(after)
    assert_same(g, after, xin(4))


def test_drop_noops_single_delay_bypass() -> None:
    g = recurrent()
    add = next(g.iter_ops("add"))
    (rec,) = [e for e in g.in_edges(add) if e.port == 1]
    g.remove_edge(rec)
    ident = g.add_node("identity", [rec.src], shape=["B", 12], name="hold")
    g.add_edge(ident, add, 1)
    verify(g)
    after = drop_noops(g.copy())
    assert ident not in after
    verify(after)
    assert_same(g, after, xin(8))


# ---------------------------------------------------------- fuse_elementwise
def test_fuse_prologue_scale_and_add_chain() -> None:
    r, g = rng(11), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 8], name="x")
    a = linear(g, x, 8, 6, "fa", r)
    b = linear(g, x, 8, 6, "fb", r)
    c = linear(g, x, 8, 6, "fc", r)
    s = g.add_node("scale", [a], attrs={"op": "div", "value": 3.0}, shape=["B", 6], name="div3")
    add = g.add_node("add", [s, b, c], shape=["B", 6], name="sum")
    sn = neuron(g, add, ["B", 6], "sn")
    output(g, sn, ["B", 6])
    after = fuse_elementwise(g.copy())
    assert ops(after) == ["input", "linear", "linear", "linear", "neuron", "output"]
    assert after.inputs(sn) == [a, b, c]
    assert after.attrs(sn)["prologue"] == [
        {"kind": "scale", "op": "div", "value": 3.0},
        {"kind": "add", "port": 1},
        {"kind": "add", "port": 2},
    ]
    verify(after)
    assert_same(g, after, xin(8))


def sew_block(neuron_port: int, n_operands: int = 2) -> tuple[Graph, int, int]:
    """x -> fc -> sn; add(..., sn at neuron_port, ...) with identity x -> fc2 -> output."""
    r, g = rng(12), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 6], name="x")
    sn = neuron(g, linear(g, x, 6, 6, "fc", r), ["B", 6], "sn")
    others = [linear(g, x, 6, 6, f"skip{i}", r) for i in range(n_operands - 1)]
    operands = others[:neuron_port] + [sn] + others[neuron_port:]
    add = g.add_node("add", operands, shape=["B", 6], name="residual")
    output(g, linear(g, add, 6, 3, "head", r), ["B", 3])
    return g, sn, add


@pytest.mark.parametrize("port", [0, 1])
def test_fuse_epilogue_residual(port: int) -> None:
    g, sn, add = sew_block(port, 3)
    after = fuse_elementwise(g.copy())
    assert add not in after
    assert ops(after) == ["input", "linear", "linear", "linear", "neuron", "linear", "output"]
    assert after.attrs(sn)["epilogue"] == [{"kind": "add", "port": 1}, {"kind": "add", "port": 2}]
    verify(after)
    assert_same(g, after, xin(6))


def test_fuse_epilogue_refuses_reordering() -> None:
    g, sn, add = sew_block(2, 3)
    after = fuse_elementwise(g.copy())
    assert add in after and "epilogue" not in after.attrs(sn)


def test_fuse_epilogue_scale_then_prologue() -> None:
    r, g = rng(13), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 5], name="x")
    s1 = neuron(g, linear(g, x, 5, 5, "fc", r), ["B", 5], "sn1")
    sc = g.add_node("scale", [s1], attrs={"op": "mul", "value": 0.5}, shape=["B", 5])
    fc2 = linear(g, sc, 5, 5, "fc2", r)
    sc2 = g.add_node("scale", [fc2], attrs={"op": "mul", "value": 2.0}, shape=["B", 5])
    s2 = neuron(g, sc2, ["B", 5], "sn2")
    output(g, s2, ["B", 5])
    after = fuse_elementwise(g.copy())
    assert ops(after) == ["input", "linear", "neuron", "linear", "neuron", "output"]
    assert after.attrs(s1)["epilogue"] == [{"kind": "scale", "op": "mul", "value": 0.5}]
    assert after.attrs(s2)["prologue"] == [{"kind": "scale", "op": "mul", "value": 2.0}]
    verify(after)
    assert_same(g, after, xin(5))


def test_fuse_skips_broadcast_and_shared_values() -> None:
    r, g = rng(14), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4], name="x")
    fc = linear(g, x, 4, 4, "fc", r)
    bias_row = linear(g, x, 4, 1, "row", r)
    add = g.add_node("add", [fc, bias_row], shape=["B", 4], name="broadcast")
    sn = neuron(g, add, ["B", 4], "sn")
    sc = g.add_node("scale", [sn], attrs={"op": "mul", "value": 3.0}, shape=["B", 4])
    both = g.add_node("add", [sc, sn], shape=["B", 4], name="uses_sn_twice")
    output(g, both, ["B", 4])
    after = fuse_elementwise(g.copy())
    assert ops(after) == ops(g)
    assert_same(g, after, xin(4))


def test_fuse_recurrent_prologue() -> None:
    g = recurrent()
    sn = next(g.iter_ops("neuron"))
    after = fuse_elementwise(g.copy())
    assert ops(after) == ["input", "linear", "linear", "neuron", "linear", "output"]
    assert after.attrs(sn)["prologue"] == [{"kind": "add", "port": 1}]
    assert [e.delay for e in after.in_edges(sn)] == [0, 0]
    assert after.recurrent_components() == [
        {sn, next(n for n in after.nx.nodes if after.node(n)["name"] == "fc_rec")}
    ]
    verify(after)
    assert_same(g, after, xin(8))


# ---------------------------------------------------------- temporal_fusion
def groups(graph: Graph) -> list[tuple[str, list[int]]]:
    return [(g["kind"], g["nodes"]) for g in graph.meta["groups"]]


def test_temporal_fusion_mlp() -> None:
    g = temporal_fusion(mlp())
    assert groups(g) == [
        ("layer", [0, 1]),
        ("neuron", [2]),
        ("layer", [3]),
        ("neuron", [4]),
        ("layer", [5]),
    ]
    assert [g.node(n)["group"] for n in range(6)] == [0, 0, 1, 2, 3, 4]
    assert [g.node(n)["schedule"] for n in range(6)] == [
        "layer",
        "layer",
        "scan",
        "layer",
        "scan",
        "layer",
    ]
    assert [gr["id"] for gr in g.meta["groups"]] == [0, 1, 2, 3, 4]
    verify(g)
    x = xin(8)
    assert torch.equal(run_grouped(g, x), run_local(mlp(), x))


def test_temporal_fusion_batches_parallel_layers() -> None:
    r, g = rng(15), Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 8], name="x")
    sa = neuron(g, linear(g, x, 8, 4, "fa", r), ["B", 4], "sa")
    sb = neuron(g, linear(g, x, 8, 4, "fb", r), ["B", 4], "sb")
    add = g.add_node("add", [sa, sb], shape=["B", 4])
    output(g, linear(g, add, 4, 2, "head", r), ["B", 2])
    after = temporal_fusion(g.copy())
    assert groups(after) == [
        ("layer", [0, 1, 3]),
        ("neuron", [sa]),
        ("neuron", [sb]),
        ("layer", [add, add + 1, add + 2]),
    ]
    verify(after)
    assert torch.equal(run_grouped(after, xin(8)), run_local(g, xin(8)))


def test_temporal_fusion_recurrent_component() -> None:
    g = recurrent()
    after = temporal_fusion(g.copy())
    names = {after.node(n)["name"]: n for n in after.nx.nodes}
    loop = sorted(names[k] for k in ("add", "sn", "fc_rec"))
    assert groups(after) == [
        ("layer", [names["x"], names["fc_in"]]),
        ("recurrent", [names["fc_rec"], names["add"], names["sn"]]),
        ("layer", [names["fc_out"], names["out"]]),
    ]
    assert sorted(after.meta["groups"][1]["nodes"]) == loop
    assert {after.node(n)["schedule"] for n in loop} == {"step"}
    verify(after)
    assert torch.equal(run_grouped(after, xin(8)), run_local(g, xin(8)))


def test_temporal_fusion_self_loop_and_rerun() -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4], name="x")
    add = g.add_node("add", [x], shape=["B", 4], name="acc")
    g.add_edge(add, add, 1, 1)  # acc[t] = x[t] + acc[t-1]
    sn = neuron(g, add, ["B", 4], "sn", IF_SOFT)
    output(g, sn, ["B", 4])
    verify(g)
    once = temporal_fusion(g.copy())
    assert groups(once) == [
        ("layer", [x]),
        ("recurrent", [add]),
        ("neuron", [sn]),
        ("layer", [sn + 1]),
    ]
    twice = temporal_fusion(once.copy())
    assert format_graph(twice) == format_graph(once)
    assert torch.equal(run_grouped(once, xin(4)), run_local(g, xin(4)))


def test_rewrite_after_fusion_clears_groups() -> None:
    g = temporal_fusion(noop_chain()[0])
    after = drop_noops(g)
    assert "groups" not in after.meta and all("group" not in after.node(n) for n in after.nx.nodes)
    verify(after)


# ------------------------------------------------------- reference backend
def test_reference_backend_runs_pass_output() -> None:
    """The reference backend's results agree with this file's evaluator."""
    g = run_pipeline(recurrent(), list(PASSES))
    ref = run_reference(g, xin(8))
    assert torch.equal(ref, run_local(g, xin(8)))
