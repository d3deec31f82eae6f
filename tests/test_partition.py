"""Before/after tests of the partition pass, and the one schedule every backend executes.

Each test prints the partitioned IR (``pytest -s`` shows it): the stage lines
of its header carry the modelled cost of every stage.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import snncc
from snncc.errors import UnsupportedError
from snncc.ir.cost import Calibration, group_costs
from snncc.ir.dot import to_dot
from snncc.ir.passes import run_pipeline
from snncc.ir.passes.partition import StageModel, _units, parse_request
from snncc.ir.printer import format_graph
from snncc.ir.schedule import groups_of, n_stages
from snncc.ir.verify import verify
from snncc.nn import LIF

T, B = 8, 4
PIPELINE = ["canonicalize", "drop_noops", "fuse_elementwise", "temporal_fusion"]


class Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.lif1, self.lif2, self.lif3 = LIF(), LIF(), LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.lif1(self.fc1(x))
        return self.lif3(self.fc3(self.lif2(self.fc2(s1))) + s1)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), LIF(), nn.Linear(16, 16), LIF(), nn.Linear(16, 4), LIF())


def scheduled(model: nn.Module, shape=(T, B, 6)):
    torch.manual_seed(1)
    x = torch.rand(shape) * 3
    return run_pipeline(snncc.trace(model, x), PIPELINE), x


def partition(graph, **request):
    g = graph.copy()
    g.meta["partition"] = {"steps": T, "batch": B, **request}
    return run_pipeline(g, ["partition"])


def calibration(graph, seconds):
    units = _units(graph)
    assert len(units) == len(seconds), [u for u in units]
    return Calibration(T, B, {u[0]: s for u, s in zip(units, seconds)}, "test").to_dict()


def run(graph, x):
    from snncc.backends.reference import ReferenceProgram

    with torch.no_grad():
        return ReferenceProgram(graph).run(x)[0]


def test_partition_before_after_three_stages() -> None:
    before, x = scheduled(mlp())
    after = partition(before, stages=3)
    print(format_graph(after))
    assert n_stages(before) == 1 and n_stages(after) == 3
    stages = [g["stage"] for g in after.meta["groups"]]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}
    # every crossing edge goes through a transfer of the receiving stage
    for u, v in after.nx.edges():
        su, sv = after.node(u)["stage"], after.node(v)["stage"]
        assert su == sv or (after.op(v) == "transfer" and sv == su + 1)
    transfers = [n for n in after.nx.nodes if after.op(n) == "transfer"]
    assert len(transfers) == 2
    for t in transfers:  # the spikes of a LIF are exact 0/1: they travel as uint8
        src = after.inputs(t)[0]
        want = "uint8" if after.op(src) == "neuron" else "float32"
        assert after.attrs(t)["wire"] == want
    lines = format_graph(after).splitlines()
    stage_lines = [ln for ln in lines if ln.startswith("# stage ")]
    assert len(stage_lines) == 3 and all("cost" in ln and "memory" in ln for ln in stage_lines)
    assert any(ln.startswith("# group ") and "stage=2" in ln for ln in lines)
    assert all(" stage=" in ln for ln in lines if ln.startswith("%"))
    assert torch.equal(run(before, x), run(after, x)), "transfers are identities on one device"


def test_split_is_the_best_contiguous_split() -> None:
    """The dynamic programme against every contiguous split of the groups (brute force)."""
    graph, _ = scheduled(mlp())
    seconds = [3.0, 1.0, 2.0, 2.5, 0.5, 1.5]
    req = parse_request(
        {"steps": T, "batch": B, "calibration": calibration(graph, seconds), "link": "pcie5"}
    )
    units = _units(graph)
    model = StageModel(graph, units, req)
    for stages in (2, 3, 4):
        split = model.best_split(stages)
        best = min(
            max(
                model.compute(i, j) + model.receive(i)
                for i, j in zip((0, *cuts), (*cuts, len(units)))
            )
            for cuts in itertools.combinations(range(1, len(units)), stages - 1)
        )
        print(f"{stages} stages: bounds {split.bounds}, costs {[f'{c:.4g}' for c in split.cost]}")
        assert max(split.cost) == pytest.approx(best)


def test_calibration_moves_the_cuts() -> None:
    graph, _ = scheduled(mlp())
    cal = {"stages": 2, "chunks": 2}  # a chunk of T/2 steps: half the calibrated seconds
    heavy_first = partition(graph, **cal, calibration=calibration(graph, [5, 1, 1, 1, 1, 1]))
    heavy_last = partition(graph, **cal, calibration=calibration(graph, [1, 1, 1, 1, 1, 5]))
    print(format_graph(heavy_first))
    first = [g["stage"] for g in heavy_first.meta["groups"]]
    last = [g["stage"] for g in heavy_last.meta["groups"]]
    assert first.count(0) < last.count(0)
    assert heavy_first.meta["stages"][0]["compute"] == pytest.approx(2.5)


def test_memory_cap_is_respected_or_named() -> None:
    graph, _ = scheduled(mlp())
    total = partition(graph, stages=1).meta["stages"][0]["memory"]
    capped = partition(graph, stages=2, memory_cap=total * 0.8)
    print(format_graph(capped))
    assert all(st["memory"] <= total * 0.8 for st in capped.meta["stages"])
    with pytest.raises(UnsupportedError, match=r"no split into 2 stages fits the memory cap"):
        partition(graph, stages=2, memory_cap=100)


def test_skip_connection_is_forwarded_across_cuts() -> None:
    graph, x = scheduled(Skip())
    after = partition(graph, stages=3, calibration=calibration(graph, [1, 1, 1, 1, 0.5, 0.5]))
    print(format_graph(after))
    lif1 = next(n for n in after.nx.nodes if after.node(n).get("name") == "lif1")
    hop1 = next(e.dst for e in after.users(lif1) if after.op(e.dst) == "transfer")
    hop2 = next(e.dst for e in after.users(hop1) if after.op(e.dst) == "transfer")
    assert after.attrs(hop1)["dst_stage"] == 1 and after.attrs(hop2)["dst_stage"] == 2
    assert after.attrs(hop2)["wire"] == "uint8"
    assert torch.equal(run(graph, x), run(after, x))


def recurrent_graph():
    """fc -> add(+ fc_rec(spike @ t-1)) -> LIF: a recurrent group, then a readout."""
    from snncc.ir import Graph, NeuronSpec

    g = Graph()
    lif = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0).to_dict()
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4])
    g.add_param("fc.weight", torch.randn(8, 4).numpy())
    g.add_param("rec.weight", torch.randn(8, 8).numpy())
    g.add_param("out.weight", torch.randn(3, 8).numpy())
    fc = g.add_node("linear", [x], params={"weight": "fc.weight"}, shape=["B", 8])
    add = g.add_node("add", [fc], shape=["B", 8])
    sn = g.add_node("neuron", [add], attrs={"neuron": lif}, shape=["B", 8])
    rec = g.add_node("linear", [(sn, 1)], params={"weight": "rec.weight"}, shape=["B", 8])
    g.add_edge(rec, add, 1)
    out = g.add_node("linear", [sn], params={"weight": "out.weight"}, shape=["B", 3])
    sn2 = g.add_node("neuron", [out], attrs={"neuron": lif}, shape=["B", 3])
    g.add_node("output", [sn2], attrs={"index": 0}, shape=["B", 3])
    return run_pipeline(g, PIPELINE)


def test_recurrent_group_stays_whole() -> None:
    graph = recurrent_graph()
    rec = next(g for g in groups_of(graph) if g["kind"] == "recurrent")
    for stages in (2, 3, 4):
        after = partition(graph, stages=stages)
        print(format_graph(after))
        assert len({after.node(n)["stage"] for n in rec["nodes"]}) == 1
        verify(after)
    units = len(_units(graph))
    with pytest.raises(UnsupportedError, match=rf"at most {units} stages"):
        partition(graph, stages=units + 1)


def training_dropout_graph():
    """A traced MLP whose dropout runs in training mode (``attrs.training``: how the IR says
    it; the torch frontend records dropout as traced in eval mode)."""
    net = nn.Sequential(nn.Linear(6, 8), LIF(), nn.Dropout(0.3), nn.Linear(8, 8), LIF())
    g = snncc.trace(net, torch.rand(T, B, 6))
    drop = next(n for n in g.nx.nodes if g.op(n) == "dropout")
    g.attrs(drop)["training"] = True
    return run_pipeline(g, PIPELINE)


def test_inexact_models_are_refused_by_name() -> None:
    graph = training_dropout_graph()
    with pytest.raises(UnsupportedError, match=r"node %\d+ \(dropout '2'\): training-mode dropout"):
        partition(graph, stages=2)
    net = nn.Sequential(nn.Linear(6, 8), snncc.nn.SeqToANN(nn.BatchNorm1d(8)), LIF()).train()
    graph, _ = scheduled(net)
    with pytest.raises(UnsupportedError, match=r"batchnorm .*training-mode BatchNorm normalises"):
        partition(graph, stages=2)


def test_planner_applies_the_schedule_it_models_fastest() -> None:
    graph, _ = scheduled(mlp())
    for steps, batch in ((4096, 64), (4096, 1)):
        after = partition(graph, devices=4, steps=steps, batch=batch)
        text = format_graph(after)
        print(text.split("\n%")[0])
        par = after.meta["parallel"]
        feasible = {k: v["seconds"] for k, v in par["predicted"].items() if v["feasible"]}
        assert par["schedule"] == min(feasible, key=feasible.get)
        assert n_stages(after) == (4 if par["schedule"] == "pipeline" else 1)
        assert "# parallel: " in text
    one = partition(graph, devices=4, steps=16, batch=1)
    assert one.meta["parallel"]["predicted"]["data_parallel"]["why"] == "batch 1 < 4 devices"


def test_dot_draws_stages_as_clusters() -> None:
    graph, _ = scheduled(mlp())
    dot = to_dot(partition(graph, stages=2))
    assert dot.count('subgraph "cluster_stage_') == 2
    assert "style=bold, color=darkgreen" in dot  # the transfer edges
    assert to_dot(graph).count("cluster_stage") == 0


def test_compile_stages_dump_ir_and_artifact(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.rand(T, B, 6)
    cm = snncc.compile(mlp(), x, stages=2, dump_ir=tmp_path / "dump")
    dumped = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumped[-1].endswith("_partition.txt")
    assert "stage=1" in (tmp_path / "dump" / dumped[-1]).read_text()
    assert n_stages(cm.ir) == 2
    cm.save(tmp_path / "art")
    again = snncc.load(tmp_path / "art")
    assert n_stages(again.ir) == 2
    with torch.no_grad():
        assert torch.equal(again(x), snncc.compile(mlp(), x)(x))


def test_backends_run_the_groups_in_the_irs_order() -> None:
    """Two independent branches: swapping their groups in meta['groups'] changes what the
    reference program runs first (its listing) and the jax module's segment order."""
    from snncc.backends.jax.render import segments_of
    from snncc.backends.reference import ReferenceProgram

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.la, self.lb = nn.Linear(6, 8), nn.Linear(6, 8), LIF(), LIF()

        def forward(self, x):
            return torch.cat([self.la(self.a(x)), self.lb(self.b(x))], dim=-1)

    graph, x = scheduled(Two())
    neurons = [i for i, g in enumerate(graph.meta["groups"]) if g["kind"] == "neuron"]
    assert len(neurons) == 2
    swapped = graph.copy()
    i, j = neurons
    groups = swapped.meta["groups"]
    groups[i], groups[j] = groups[j], groups[i]
    for gid, g in enumerate(groups):
        g["id"] = gid
        for n in g["nodes"]:
            swapped.node(n)["group"] = gid
    verify(swapped)
    first = [graph.meta["groups"][i]["nodes"][0], graph.meta["groups"][j]["nodes"][0]]
    for g, order in ((graph, first), (swapped, first[::-1])):
        listing = ReferenceProgram(g).source
        pos = [listing.index(f": %{n}  (neuron") for n in order]
        assert pos == sorted(pos)
        scans = [s.nodes[0] for s in segments_of(g) if s.kind == "scan"]
        assert scans == order
    assert torch.equal(run(graph, x), run(swapped, x))


def test_group_costs_count_gemm_flops() -> None:
    graph, _ = scheduled(mlp())
    costs = group_costs(graph)
    first = costs[0]  # input + Linear(6, 16)
    assert first.flops == pytest.approx(2 * 6 * 16 + 16)
    assert first.weight_bytes == (16 * 6 + 16) * 4


def test_a_lone_neuron_layer_is_placed_and_split_with_its_input() -> None:
    """The paper's workload (one LIF layer on the input): the input-only group joins the
    layer's unit (a stage that only forwards the input is no stage), a neuron split cuts
    the input itself (each device reads its columns), and nothing is gathered but the
    output, which the planner leaves where it is computed."""
    from snncc.ir.passes.partition import gather_points, plan, sharded_nodes

    graph, _ = scheduled(nn.Sequential(LIF()), (T, B, 6))
    inputs = graph.meta["inputs"]
    units = _units(graph)
    assert len(units) == 1 and set(inputs) <= set(units[0]), units
    split = sharded_nodes(graph)
    assert set(inputs) <= split
    assert all(e.dst in graph.meta["outputs"] for n in gather_points(graph) for e in graph.users(n))
    req = parse_request({"devices": 2, "steps": T, "batch": B})
    predicted = plan(graph, req, 2)
    assert predicted["neuron_split"]["feasible"] and predicted["neuron_split"]["transfer"] == 0.0
    assert predicted["pipeline"]["feasible"] is False  # one unit: nothing to pipeline
    assert "1 group(s) to place" in predicted["pipeline"]["why"]
