"""IR tooling: the Graph API, the verifier's messages, the printer, DOT output and serde."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from snncc.errors import CheckpointError, IRError
from snncc.ir import Graph, NeuronSpec, serde
from snncc.ir.dot import quote, to_dot
from snncc.ir.graph import Edge
from snncc.ir.passes import run_pipeline
from snncc.ir.printer import format_graph, format_node
from snncc.ir.verify import verify

LIF = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0).to_dict()


def build() -> Graph:
    """x -> fc -> add(+ fc_rec(sn@t-1)) -> sn -> drop -> out, realistic random params."""
    r = np.random.default_rng(0)
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4], name="x")
    w = g.add_param("fc.weight", r.standard_normal((8, 4)).astype(np.float32))
    b = g.add_param("fc.bias", r.standard_normal(8).astype(np.float32))
    fc = g.add_node("linear", [x], params={"weight": w, "bias": b}, shape=["B", 8], name="fc")
    add = g.add_node("add", [fc], shape=["B", 8], name="add")
    sn = g.add_node("neuron", [add], attrs={"neuron": LIF}, shape=["B", 8], name="sn1")
    wr = g.add_param("fc_rec.weight", r.standard_normal((8, 8)).astype(np.float32))
    rec = g.add_node("linear", [(sn, 1)], params={"weight": wr}, shape=["B", 8], name="fc_rec")
    g.add_edge(rec, add, 1)
    drop = g.add_node(
        "dropout", [sn], attrs={"p": 0.5, "training": False}, shape=["B", 8], name="drop"
    )
    g.add_node("output", [drop], attrs={"index": 0}, shape=["B", 8], name="out")
    return g


# ------------------------------------------------------------------ graph API
def test_graph_api() -> None:
    g = build()
    assert len(g) == 7 and 3 in g and 99 not in g
    assert g.meta["inputs"] == [0] and g.meta["outputs"] == [6]
    assert g.inputs(2) == [1, 4]
    assert g.in_edges(4) == [Edge(3, 4, 0, 1)]
    assert g.users(3) == [Edge(3, 4, 0, 1), Edge(3, 5, 0, 0)]
    assert g.topo_order() == [0, 1, 4, 2, 3, 5, 6], "delay edges do not constrain the order"
    assert g.recurrent_components() == [{2, 3, 4}]
    assert list(g.iter_ops("linear")) == [1, 4]
    assert g.param(1, "bias").shape == (8,) and g.param(4, "bias") is None
    c = g.copy()
    c.node(1)["attrs"]["x"] = 1
    assert "x" not in g.attrs(1), "copy is deep for structure"
    g.bypass(5)
    assert g.inputs(6) == [3] and 5 not in g
    g.remove_node(4)
    assert "fc_rec.weight" not in g.params, "unreferenced params are pruned"


# ------------------------------------------------------------------- verifier
def test_verify_accepts_valid_graph() -> None:
    verify(build())
    verify(
        run_pipeline(build(), ["canonicalize", "drop_noops", "fuse_elementwise", "temporal_fusion"])
    )


def _break(case: str) -> Graph:
    g = build()
    if case == "unknown_op":
        g.node(5)["op"] = "lstm_cell"
    elif case == "arity":
        g.add_edge(0, 1, 1)
    elif case == "port_gap":
        (e,) = [e for e in g.in_edges(2) if e.port == 1]
        g.remove_edge(e)
        g.add_edge(e.src, 2, 2)
    elif case == "port_dup":
        (e,) = [e for e in g.in_edges(2) if e.port == 1]
        g.remove_edge(e)
        g.add_edge(e.src, 2, 0)
    elif case == "missing_attr":
        del g.attrs(5)["p"]
    elif case == "missing_param":
        del g.node(1)["params"]["weight"]
    elif case == "unknown_role":
        g.node(1)["params"]["gain"] = "fc.bias"
    elif case == "param_not_stored":
        g.node(1)["params"]["bias"] = "fc.bias_typo"
    elif case == "bad_spec":
        g.attrs(3)["neuron"] = {**LIF, "reset": "zero"}
    elif case == "spec_field":
        g.attrs(3)["neuron"] = {**LIF, "leak": 0.1}
    elif case == "learnable_missing":
        g.attrs(3)["neuron"] = {**LIF, "learnable": ["w"]}
    elif case == "unused_port":
        g.add_edge(0, 3, 1)
    elif case == "bad_step":
        g.attrs(3)["prologue"] = [{"kind": "scale", "op": "pow", "value": 2.0}]
    elif case == "step_port":
        g.attrs(3)["epilogue"] = [{"kind": "add", "port": 1}]
    elif case == "cycle":
        e = g.in_edges(4)[0]
        g.remove_edge(e)
        g.add_edge(3, 4, 0, 0)
    elif case == "delay2":
        e = g.in_edges(4)[0]
        g.remove_edge(e)
        g.add_edge(3, 4, 0, 2)
    elif case == "delay_outside_scc":
        e = g.in_edges(5)[0]
        g.remove_edge(e)
        g.add_edge(3, 5, 0, 1)
    elif case == "input_not_input":
        g.meta["inputs"] = [1]
    elif case == "index":
        g.attrs(6)["index"] = 1
    elif case == "unlisted_output":
        g.meta["outputs"] = []
    elif case == "output_used":
        g.add_node("identity", [6], shape=["B", 8], name="after_out")
    elif case == "shape":
        g.node(1)["shape"] = [8, "B"]
    elif case == "bn_partial":
        g.add_param("bn.weight", np.ones(8, np.float32))
        g.node(1)["params"]["bn_weight"] = "bn.weight"
    elif case == "json":
        g.attrs(5)["p"] = np.float32(0.5)
    elif case.startswith("group"):
        g = run_pipeline(g, ["temporal_fusion"])
        groups = g.meta["groups"]
        if case == "group_missing":
            groups[-1]["nodes"].remove(6)
        elif case == "group_order":
            groups[0], groups[1] = groups[1], groups[0]
        elif case == "group_attr":
            g.node(1)["group"] = 7
        elif case == "group_schedule":
            g.node(3)["schedule"] = "layer"
        elif case == "group_kind":
            groups[0]["kind"] = "neuron"
        elif case == "group_split_scc":
            rec = next(gr for gr in groups if gr["kind"] == "recurrent")
            rec["nodes"].remove(4)
            groups[0]["nodes"].append(4)
            g.node(4)["group"] = groups[0]["id"]
    else:
        raise AssertionError(case)
    return g


CASES = {
    "unknown_op": r"node %5 \(lstm_cell 'drop'\): unknown op 'lstm_cell'; known ops: .*neuron",
    "arity": r"node %1 \(linear 'fc'\): has 2 inputs; op 'linear' takes exactly 1",
    "port_gap": r"node %2 \(add 'add'\): input ports \[0, 2\] are not contiguous 0..1",
    "port_dup": r"node %2 \(add 'add'\): input ports \[0\] are fed more than once",
    "missing_attr": r"node %5 \(dropout 'drop'\): missing required attrs \['p'\]",
    "missing_param": r"node %1 \(linear 'fc'\): missing required params \['weight'\]",
    "unknown_role": r"node %1 \(linear 'fc'\): unknown param roles \['gain'\]",
    "param_not_stored": r"node %1 \(linear 'fc'\): param bias='fc.bias_typo' is not in graph.params",
    "bad_spec": r"node %3 \(neuron 'sn1'\): attrs.neuron does not parse as a NeuronSpec: neuron reset 'zero'",
    "spec_field": r"node %3 \(neuron 'sn1'\): attrs.neuron does not parse as a NeuronSpec: .*leak",
    "learnable_missing": r"node %3 \(neuron 'sn1'\): learnable role 'w' has no param",
    "unused_port": r"node %3 \(neuron 'sn1'\): input ports \[1\] are not used by any prologue/epilogue add step",
    "bad_step": r"node %3 \(neuron 'sn1'\): attrs.prologue\[0\] .*'pow' is not 'mul' or 'div'",
    "step_port": r"node %3 \(neuron 'sn1'\): attrs.epilogue\[0\] .*port must be an input port 1..0",
    "cycle": r"cycle of delay-0 edges %\d -> .*: a cycle needs a delay-1 edge",
    "delay2": r"edge %3 -> %4 port 0: delay 2 is not 0 or 1",
    "delay_outside_scc": r"edge %3 -> %5 port 0: delay edge is not inside a strongly connected component",
    "input_not_input": r"meta\['inputs'\]\[0\]: node %1 \(linear 'fc'\) is not an input op",
    "index": r"meta\['outputs'\]\[0\]: node %6 \(output 'out'\) has attrs.index 1, expected 0",
    "unlisted_output": r"node %6 \(output 'out'\): not listed in meta\['outputs'\]",
    "output_used": r"node %6 \(output 'out'\): an output node feeds other nodes",
    "shape": r"node %1 \(linear 'fc'\): shape \[8, 'B'\] is not None or a list \['B', int, ...\]",
    "bn_partial": r"node %1 \(linear 'fc'\): a folded BatchNorm needs all of .* has \['bn_weight'\]",
    "json": r"node %5 \(dropout 'drop'\): attrs are not JSON-serialisable",
    "group_missing": r"node %6 \(output 'out'\): in no group",
    "group_order": r"groups run node %2 \(add 'add'\) \(group 1\) before its input node %1 \(linear 'fc'\) \(group 0\): not a topological order",
    "group_attr": r"node %1 \(linear 'fc'\): node group 7 but meta lists it in group 0",
    "group_schedule": r"node %3 \(neuron 'sn1'\): schedule 'layer' in a recurrent group \(expected 'step'\)",
    "group_kind": r"group 0 \(neuron\) must hold exactly one non-recurrent neuron node",
    "group_split_scc": r"group 1 \(recurrent\) nodes \[2, 3\] are not exactly one recurrent component",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_verify_names_each_broken_invariant(case: str) -> None:
    g = _break(case)
    with pytest.raises(IRError, match=CASES[case]) as info:
        verify(g)
    assert str(info.value).startswith("invalid IR graph")


def test_verify_lists_every_problem() -> None:
    g = build()
    g.node(5)["op"] = "lstm_cell"
    g.node(1)["shape"] = None
    g.node(1)["params"]["bias"] = "nope"
    g.meta["outputs"] = []
    with pytest.raises(IRError) as info:
        verify(g)
    msg = str(info.value)
    assert msg.startswith("invalid IR graph (4 problems):")
    for part in (
        "unknown op 'lstm_cell'",
        "'nope' is not in graph.params",
        "not listed",
        "no outputs",
    ):
        assert part in msg


# -------------------------------------------------------------------- printer
GOLDEN = """\
# snncc IR: 7 nodes, inputs: %0, outputs: %6, params: 3 (104 values)
# source=snncc step_mode=m
%0 = input[index=0] : f32[B,4]  # x
%1 = linear[weight=fc.weight[8,4] bias=fc.bias[8]](%0) : f32[B,8]  # fc
%4 = linear[weight=fc_rec.weight[8,8]](%3@t-1) : f32[B,8]  # fc_rec
%2 = add(%1, %4) : f32[B,8]  # add
%3 = neuron[lif sj_lif_decay_input tau=2 th=1 hard(0) sigmoid(4)](%2) : f32[B,8]  # sn1
%5 = dropout[p=0.5 training=False](%3) : f32[B,8]  # drop
%6 = output[index=0](%5) : f32[B,8]  # out
"""


def test_printer_golden() -> None:
    assert format_graph(build()) == GOLDEN


def test_printer_after_passes() -> None:
    g = run_pipeline(build(), ["canonicalize", "drop_noops", "fuse_elementwise", "temporal_fusion"])
    text = format_graph(g)
    assert text == format_graph(g), "deterministic"
    lines = text.splitlines()
    assert (
        "# source=snncc step_mode=m passes=[canonicalize,drop_noops,fuse_elementwise,temporal_fusion]"
        in lines
    )
    assert "# group 0 layer: %0 %1" in lines
    # the recurrent group's fused plan (snncc.ir.recurrent): x + linear(s[t-1]), the add
    # fused into the neuron's prologue
    assert "# group 1 recurrent: %4 %3  (fusable: add linear=%4 -> neuron=%3 port 0)" in lines
    assert "# group 2 layer: %6" in lines
    assert (
        "%3 = neuron[lif sj_lif_decay_input tau=2 th=1 hard(0) sigmoid(4) prologue=[+%4]]"
        "(%1, %4) : f32[B,8] group=1  # sn1"
    ) in lines
    assert "%6 = output[index=0](%3) : f32[B,8] group=2  # out" in lines
    scale = Graph()
    x = scale.add_node("input", attrs={"index": 0}, shape=None, dtype="float64")
    s = scale.add_node("scale", [x], attrs={"op": "div", "value": 0.1}, shape=["B", 3])
    assert format_node(scale, s) == "%1 = scale[op=div value=0.1](%0) : f32[B,3]"
    assert format_node(scale, x) == "%0 = input[index=0] : f64[?]"


def test_printer_survives_broken_graph() -> None:
    g = build()
    g.add_edge(3, 1, 1)  # same-step cycle fc -> add -> sn -> fc
    g.attrs(3)["neuron"] = {"model": "nonsense"}
    g.node(1)["params"]["bias"] = "missing"
    text = format_graph(g)
    assert "neuron[spec=?]" in text and "bias=missing[?]" in text
    assert len(text.splitlines()) == 2 + 7


# ------------------------------------------------------------------------ DOT
def _balanced_quotes(line: str) -> bool:
    return len(re.findall(r'(?<!\\)(?:\\\\)*"', line)) % 2 == 0


def test_dot_output() -> None:
    g = run_pipeline(build(), ["temporal_fusion"])
    g.node(1)["name"] = 'fc "main"\\path'
    dot = to_dot(g)
    assert dot.startswith('digraph "snncc" {') and dot.rstrip().endswith("}")
    assert dot.count("subgraph") == len(g.meta["groups"])
    assert 'subgraph "cluster_1" {' in dot and 'label="group 1 recurrent"' in dot
    assert 'n3 -> n4 [style=dashed, constraint=false, xlabel="t-1"];' in dot
    assert 'n4 -> n2 [label="1"];' in dot
    assert r"fc \"main\"\\path" in dot
    for line in dot.splitlines():
        assert _balanced_quotes(line), line
    assert all(f"n{n} [label=" in dot for n in g.nx.nodes)
    assert to_dot(build()).count("subgraph") == 0


def test_dot_quote() -> None:
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


# ---------------------------------------------------------------------- serde
def _assert_identical(a: Graph, b: Graph) -> None:
    assert list(a.nx.nodes(data=True)) == list(b.nx.nodes(data=True))
    assert list(a.nx.edges(keys=True, data=True)) == list(b.nx.edges(keys=True, data=True))
    assert a.meta == b.meta and a._next_id == b._next_id
    assert list(a.params) == list(b.params)
    for name in a.params:
        x, y = a.params[name], b.params[name]
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def rich_graph() -> Graph:
    """A scheduled graph with odd params: float64, int64, a 0-d array, NaN, -0.0 and denormals."""
    g = run_pipeline(build(), ["canonicalize", "fuse_elementwise", "temporal_fusion"])
    g.params["fc.bias"] = np.array([np.nan, -0.0, 1e-45, np.inf, -1, 2, 3, 4], np.float32)
    nid = g.add_node(
        "input",
        attrs={"index": 1, "note": 'ünïcode "q"'},
        shape=["B", 2],
        dtype="float64",
        name="aux",
    )
    g.node(nid).update(group=0, schedule="layer")
    g.meta["groups"][0]["nodes"].insert(0, nid)
    g.meta["extra"] = {"nested": [1, 2.5, None, True]}
    g.add_param("scalar", np.float64(3.25))
    g.add_param("counts", np.arange(6, dtype=np.int64).reshape(2, 3))
    g.add_param("mask", np.array([True, False]))
    return g


def test_json_round_trip_structure() -> None:
    g = rich_graph()
    text = serde.to_json(g)
    doc = json.loads(text)
    assert doc["format"] == "snncc-ir" and doc["params"]["counts"] == {
        "shape": [2, 3],
        "dtype": "int64",
    }
    assert "edges" in doc["graph"] and "nodes" in doc["graph"]
    back = serde.from_json(text)
    assert back.params == {}
    assert serde.to_json(serde.from_json(text, dict(g.params))) == text
    _assert_identical(g, serde.from_json(text, g.params))


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_save_load_round_trip(tmp_path, fmt: str) -> None:
    g = rich_graph()
    verify(g)
    serde.save(g, tmp_path / "ckpt", fmt=fmt)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["ir.json", "weights.npz" if fmt == "npz" else "weights.safetensors"]
    back = serde.load(tmp_path / "ckpt")
    _assert_identical(g, back)
    assert format_graph(back) == format_graph(g)


def test_save_replaces_stale_weights(tmp_path) -> None:
    g = build()
    serde.save(g, tmp_path, fmt="npz")
    g.params["fc.bias"] = g.params["fc.bias"] + 1
    serde.save(g, tmp_path)
    assert not (tmp_path / "weights.npz").exists()
    assert np.array_equal(serde.load(tmp_path).params["fc.bias"], g.params["fc.bias"])


def test_to_json_names_unserialisable_node() -> None:
    g = build()
    g.attrs(1)["gain"] = np.float32(2.0)
    with pytest.raises(IRError, match=r"node %1 \(linear 'fc'\)"):
        serde.to_json(g)


def _write(path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_load_errors(tmp_path) -> None:
    g = build()
    with pytest.raises(CheckpointError, match="is not a directory"):
        serde.load(tmp_path / "nope")
    d = tmp_path / "ck"
    d.mkdir()
    with pytest.raises(CheckpointError, match=r"ir.json is missing"):
        serde.load(d)
    serde.save(g, d)
    good = (d / "ir.json").read_text()

    _write(d / "ir.json", good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"ir.json: IR JSON is corrupt: .*line \d+"):
        serde.load(d)
    _write(d / "ir.json", json.dumps({**json.loads(good), "version": 9}))
    with pytest.raises(CheckpointError, match="version 9 is not supported"):
        serde.load(d)
    _write(d / "ir.json", b"\xff\xfe{")
    with pytest.raises(CheckpointError, match="cannot read"):
        serde.load(d)
    _write(d / "ir.json", good)

    weights = (d / "weights.safetensors").read_bytes()
    _write(d / "weights.safetensors", weights[:40])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        serde.load(d)
    (d / "weights.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match="has no weights.safetensors or weights.npz, but .* declares 3 params"
    ):
        serde.load(d)

    from safetensors.numpy import save_file

    partial = {k: v for k, v in g.params.items() if k != "fc.bias"}
    save_file({**partial, "stray": np.zeros(2, np.float32)}, str(d / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \['fc.bias'\]; unexpected \['stray'\]"):
        serde.load(d)
    save_file({**partial, "fc.bias": np.zeros(9, np.float32)}, str(d / "weights.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"param 'fc.bias' is float32\[9\], the IR expects float32\[8\]"
    ):
        serde.load(d)
    save_file({**partial, "fc.bias": np.zeros(8, np.float64)}, str(d / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"float64\[8\], the IR expects float32\[8\]"):
        serde.load(d)


def test_load_refuses_pickles_and_invalid_graphs(tmp_path) -> None:
    g = build()
    serde.save(g, tmp_path, fmt="npz")
    with zipfile.ZipFile(tmp_path / "weights.npz", "w") as zf:  # an object array needs pickle
        for name, arr in {**g.params, "fc.bias": np.array([object()] * 8)}.items():
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=True)
    with pytest.raises(CheckpointError, match="pickles are refused"):
        serde.load(tmp_path)
    _write(tmp_path / "weights.npz", b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="not a readable npz"):
        serde.load(tmp_path)

    serde.save(g, tmp_path)
    doc = json.loads((tmp_path / "ir.json").read_text())
    doc["graph"]["nodes"][1]["op"] = "lstm_cell"
    _write(tmp_path / "ir.json", json.dumps(doc))
    with pytest.raises(
        IRError, match=r"ir.json describes an invalid graph: .*unknown op 'lstm_cell'"
    ):
        serde.load(tmp_path)
    with pytest.raises(IRError, match="not an snncc IR document"):
        serde.from_json("[1, 2]")
    with pytest.raises(CheckpointError, match="unknown weights format 'pt'"):
        serde.save(g, tmp_path, fmt="pt")


@pytest.mark.parametrize(
    ("attrs", "ok"),
    [
        ({"op": "sum", "order": "steps"}, True),
        ({"op": "mean", "order": "steps"}, False),
        ({"op": "sum", "order": "pairwise"}, False),
    ],
)
def test_time_reduce_order_is_the_loops_sum_only(attrs: dict, ok: bool) -> None:
    g = Graph()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4])
    r = g.add_node("time_reduce", [x], attrs=attrs, shape=["B", 4])
    g.add_node("output", [r], attrs={"index": 0}, shape=["B", 4])
    g.meta.update(inputs=[x], outputs=[r + 1])
    if ok:
        verify(g)
    else:
        with pytest.raises(IRError, match="attrs.order .* only as 'steps' with op 'sum'"):
            verify(g)
