"""Partition: split the schedule into contiguous stages, one per device, and choose a schedule.

Why a pass: the stage each group runs on is part of the schedule every
backend executes (``meta["groups"][i]["stage"]``), so splitting a model
across devices is a rewrite of the IR that shows in ``snncc ir`` and
``--dump-ir`` -- not a decision a runtime makes on the side.

What it reads: ``graph.meta["partition"]``, the request (the API and the CLI
write it from ``stages=`` / ``devices=``): ``stages`` (how many), ``devices``
(how many there are: the pass then predicts every schedule's time and picks
the fastest), the workload it is costed for (``steps`` T, ``batch`` B,
``chunks`` K of the time-chunk pipeline, ``micro_batches`` of the temporal
split, ``training``), the hardware (``device``, ``link``: names in
:data:`snncc.ir.cost.DEVICES` / :data:`~snncc.ir.cost.LINKS`), a
``memory_cap`` in bytes per device, and a ``calibration`` of measured
seconds per group (:class:`snncc.ir.cost.Calibration`).

What it does, for S stages:

1. Costs each group for one chunk (``T/K`` steps of ``B`` samples) with
   :mod:`snncc.ir.cost` and finds the contiguous split of the groups into S
   stages that minimises the largest stage's cost -- its compute plus
   receiving its inputs -- under the memory cap (exact dynamic programming;
   a recurrent group is one unit, so it stays whole).
2. Writes the stage of every group and node; output nodes move to the last
   stage (the pipeline's result lands there).
3. Replaces every edge that crosses stages by ``transfer`` nodes, one per
   stage boundary: a value needed several stages on (a skip connection) is
   forwarded stage by stage; exact 0/1 spikes travel as uint8.
4. Records each stage's modelled costs in ``meta["stages"]``, printed in the
   text IR's header.

With ``devices`` (and no ``stages``) it first predicts, by the event
simulation of :mod:`snncc.ir.cost`, the time of each way to run on that many
devices -- data parallel, time-chunk pipeline, temporal split, neuron split
-- records them in ``meta["parallel"]`` and applies the fastest (stages only
for the pipeline; the others run the whole schedule on every device).

What cannot be split exactly is refused by name (:func:`refuse_inexact`):
training-mode BatchNorm whose statistics span the sequence or the batch,
and training-mode dropout, whose masks are not keyed by sample and step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from snncc.errors import UnsupportedError
from snncc.ir import cost as C
from snncc.ir.graph import Graph
from snncc.ir.schedule import groups_of
from snncc.ir.verify import node_ref

#: the ways to run on several devices, in the order a tie is broken
SCHEDULES = ("data_parallel", "pipeline", "temporal", "neuron_split")

#: the request's keys and their defaults
DEFAULTS: dict[str, Any] = {
    "stages": None,
    "devices": None,
    "steps": 16,
    "batch": 1,
    "chunks": None,
    "micro_batches": None,
    "training": False,
    "device": "h100-sxm",
    "link": "nvlink4",
    "memory_cap": None,
    "calibration": None,
}

#: how much more a backward step costs than its forward, where nothing measured it
BACKWARD_FACTOR = 2.0


# ---------------------------------------------------------------- refusals
def inexact_nodes(graph: Graph, schedule: str, training: bool | None = None) -> list[str]:
    """Why ``schedule`` cannot reproduce the one-device result on this graph (one line per
    node; empty when it can). ``training`` overrides the nodes' own mode like
    ``module.train()`` does."""

    def on(attrs: Mapping[str, Any]) -> bool:
        return bool(attrs.get("training", False)) if training is None else bool(training)

    why = []
    per_step = graph.meta.get("step_mode") == "s"
    for n in graph.nx.nodes:
        op, attrs = graph.op(n), graph.attrs(n)
        if op == "batchnorm" and on(attrs):
            stats = "step" if per_step else attrs.get("stats", "sequence")
            if schedule in ("pipeline", "temporal") and stats != "step":
                why.append(
                    f"{node_ref(graph, n)}: training-mode BatchNorm normalises with statistics "
                    "over the whole sequence, which a run split in time never sees at once"
                )
            elif schedule == "data_parallel":
                why.append(
                    f"{node_ref(graph, n)}: training-mode BatchNorm normalises with statistics "
                    "over the batch, which a batch split across devices never sees at once"
                )
        if op == "dropout" and on(attrs) and float(attrs.get("p", 0)) > 0:
            why.append(
                f"{node_ref(graph, n)}: training-mode dropout draws its mask from the random "
                "generator of the process, not from a key of sample and step, so a split run "
                "cannot draw the same one (compile in eval mode, or train on one device)"
            )
    return why


def refuse_inexact(graph: Graph, schedule: str, training: bool | None = None) -> None:
    """Raise :class:`UnsupportedError` naming every node ``schedule`` cannot run exactly."""
    why = inexact_nodes(graph, schedule, training)
    if why:
        raise UnsupportedError(
            f"cannot run this model as {schedule.replace('_', ' ')} exactly: " + "; ".join(why)
        )


# ---------------------------------------------------------------- the request
@dataclass(frozen=True)
class Request:
    stages: int | None
    devices: int | None
    steps: int
    batch: int
    chunks: int
    micro_batches: int
    training: bool
    device: C.Device
    link: C.Link
    memory_cap: float | None
    calibration: C.Calibration | None
    #: whether chunks / micro_batches were asked for (else the planner tries several)
    chunks_given: bool = False
    micro_batches_given: bool = False

    @property
    def chunk_steps(self) -> int:
        return math.ceil(self.steps / self.chunks)


def _positive(req: Mapping[str, Any], key: str) -> int | None:
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedError(f"partition {key}={value!r}: expected an int >= 1")
    return value


def _hardware(value: Any, presets: Mapping[str, Any], cls: Any, what: str) -> Any:
    """A preset by name, or the figures themselves as a dict (a measured device)."""
    if isinstance(value, Mapping):
        try:
            return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})
        except TypeError as e:
            raise UnsupportedError(f"partition {what} {dict(value)!r}: {e}") from None
    if value not in presets:
        raise UnsupportedError(f"partition {what} {value!r}; known: {', '.join(presets)}")
    return presets[value]


def parse_request(raw: Any) -> Request:
    """Check ``meta["partition"]`` and fill in the defaults; unknown keys are refused."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UnsupportedError(f"meta['partition'] must be a dict of settings, not {raw!r}")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise UnsupportedError(
            f"unknown partition setting(s) {unknown}; known: {', '.join(DEFAULTS)}"
        )
    req = {**DEFAULTS, **raw}
    for key in ("stages", "devices", "steps", "batch", "chunks", "micro_batches"):
        req[key] = _positive(req, key)
    device = _hardware(req["device"], C.DEVICES, C.Device, "device")
    link = _hardware(req["link"], C.LINKS, C.Link, "link")
    cap = req["memory_cap"]
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
        raise UnsupportedError(f"partition memory_cap={cap!r}: expected a number of bytes > 0")
    stages = req["stages"]
    chunks = req["chunks"] or min(req["steps"], 4 * max(stages or 1, req["devices"] or 1))
    if chunks > req["steps"]:
        raise UnsupportedError(
            f"partition chunks={chunks} is more than the {req['steps']} steps to split"
        )
    cal = req["calibration"]
    return Request(
        stages=stages,
        devices=req["devices"],
        steps=req["steps"],
        batch=req["batch"],
        chunks=chunks,
        micro_batches=req["micro_batches"] or req["batch"],
        training=bool(req["training"]),
        device=device,
        link=link,
        memory_cap=float(cap) if cap is not None else device.memory_bytes,
        calibration=None if cal is None else C.Calibration.from_dict(cal),
        chunks_given=req["chunks"] is not None,
        micro_batches_given=req["micro_batches"] is not None,
    )


# ---------------------------------------------------------------- stage costs
@dataclass(frozen=True)
class Split:
    """A split of the units (groups without output nodes) into contiguous stages."""

    bounds: tuple[int, ...]  # stage s holds units bounds[s] .. bounds[s+1]-1
    compute: tuple[float, ...]
    receive: tuple[float, ...]
    memory: tuple[float, ...]

    @property
    def cost(self) -> tuple[float, ...]:
        return tuple(c + r for c, r in zip(self.compute, self.receive))


class StageModel:
    """Costs of every contiguous run of units for one chunk, as the split search needs them."""

    def __init__(self, graph: Graph, units: list[list[int]], req: Request) -> None:
        self.graph, self.units, self.req = graph, units, req
        costs = {gc.key: gc for gc in C.group_costs(graph)}
        self.unit_cost = [[costs[n] for n in nodes if n in costs] for nodes in units]
        self.unit_of = {n: i for i, nodes in enumerate(units) for n in nodes}
        rows = req.chunk_steps * req.batch
        self.rows = rows
        outputs = set(graph.meta["outputs"])
        last = len(units)  # outputs sit after every unit (in the last stage)
        #: value -> (its unit, the last unit that reads it, bytes per chunk on the wire)
        self.values: dict[int, tuple[int, int, float]] = {}
        for n in self.unit_of:
            users = [e.dst for e in graph.users(n)]
            if not users:
                continue
            reach = max(last if u in outputs else self.unit_of[u] for u in users)
            if reach > self.unit_of[n]:
                nbytes = C.elements(graph, n) * C.wire_bytes(graph, n) * rows
                self.values[n] = (self.unit_of[n], reach, nbytes)

    def receive(self, i: int) -> float:
        """Receiving every value made before unit i and read at or after it (forwarded ones
        included: a stage passes on what later stages need)."""
        if i == 0:
            return 0.0
        return sum(
            self.req.link.seconds(b) for u, reach, b in self.values.values() if u < i <= reach
        )

    def memory(self, i: int, j: int) -> float:
        """Weights, state, one chunk's activations (all K chunks' when training) and the
        received values of units i..j-1."""
        g, req = self.graph, self.req
        names: set[str] = set()
        state = acts = 0.0
        for nodes in self.units[i:j]:
            for n in nodes:
                names.update(g.node(n)["params"].values())
                c = C.node_cost(g, n)
                state += c.state_bytes * req.batch
                acts += c.out_bytes * self.rows
        weights = sum(g.params[name].nbytes for name in names)
        if req.training:
            acts *= req.chunks
        recv = sum(b for u, reach, b in self.values.values() if u < i <= reach)
        return float(weights + state + acts + recv)

    def compute(self, i: int, j: int) -> float:
        req = self.req
        groups = [gc for unit in self.unit_cost[i:j] for gc in unit]
        return C.run_seconds(groups, req.device, req.chunk_steps, req.batch, req.calibration)

    def best_split(self, stages: int) -> Split:
        """The contiguous split into ``stages`` minimising the largest stage cost under the cap."""
        n = len(self.units)
        if stages > n:
            raise UnsupportedError(
                f"cannot make {stages} stages: the schedule has {n} group(s) to place (a "
                f"recurrent group stays whole), so at most {n} stages"
            )
        cap = self.req.memory_cap
        inf = (math.inf, math.inf)
        # best[s][j]: (largest stage cost, total cost) of units 0..j-1 in s stages
        best = [[inf] * (n + 1) for _ in range(stages + 1)]
        cut: dict[tuple[int, int], int] = {}
        best[0][0] = (0.0, 0.0)
        for s in range(1, stages + 1):
            for j in range(s, n - (stages - s) + 1):
                for i in range(s - 1, j):
                    if best[s - 1][i] == inf:
                        continue
                    if cap is not None and self.memory(i, j) > cap:
                        continue
                    c = self.compute(i, j) + self.receive(i)
                    cand = (max(best[s - 1][i][0], c), best[s - 1][i][1] + c)
                    if cand < best[s][j]:
                        best[s][j] = cand
                        cut[(s, j)] = i
        if best[stages][n] == inf:
            need = min(max(self.memory(i, i + 1) for i in range(n)), math.inf)
            raise UnsupportedError(
                f"no split into {stages} stages fits the memory cap of {cap / 1e6:.4g} MB per "
                f"device (the largest single group needs {need / 1e6:.4g} MB); raise "
                "memory_cap, use more stages or shorter chunks"
            )
        bounds = [n]
        for s in range(stages, 0, -1):
            bounds.append(cut[(s, bounds[-1])])
        bounds.reverse()
        pairs = list(zip(bounds, bounds[1:]))
        return Split(
            tuple(bounds),
            tuple(self.compute(i, j) for i, j in pairs),
            tuple(self.receive(i) for i, _ in pairs),
            tuple(self.memory(i, j) for i, j in pairs),
        )

    def send(self, split: Split, s: int) -> float:
        """What stage s sends to stage s+1 for one chunk (the next stage's receive)."""
        return split.receive[s + 1] if s + 1 < len(split.compute) else 0.0


def _units(graph: Graph) -> list[list[int]]:
    """Groups as units of placement, output nodes left out (they join the last stage); a
    group of nothing but input nodes joins the next group (a stage that only forwards the
    input would be no stage)."""
    outputs = set(graph.meta["outputs"])
    units: list[list[int]] = []
    pending: list[int] = []
    for g in groups_of(graph):
        nodes = [n for n in g["nodes"] if n not in outputs]
        if nodes and all(graph.op(n) == "input" for n in nodes):
            pending += nodes
        elif nodes:
            units.append(pending + nodes)
            pending = []
    if pending:
        units.append(pending)
    return units


# ---------------------------------------------------------------- rewrite
def _apply(graph: Graph, units: list[list[int]], split: Split) -> None:
    """Stages on groups and nodes, outputs on the last stage, transfers on crossing edges."""
    stage_of_unit = {}
    for s, (i, j) in enumerate(zip(split.bounds, split.bounds[1:])):
        stage_of_unit.update(dict.fromkeys(range(i, j), s))
    unit_of = {n: u for u, nodes in enumerate(units) for n in nodes}
    outputs = list(graph.meta["outputs"])
    last = len(split.compute) - 1
    groups: list[dict[str, Any]] = []
    for g in groups_of(graph):
        nodes = [n for n in g["nodes"] if n not in outputs]
        if nodes:
            groups.append({**g, "nodes": nodes, "stage": stage_of_unit[unit_of[nodes[0]]]})
    if groups[-1]["kind"] == "layer" and groups[-1]["stage"] == last:
        groups[-1]["nodes"] = groups[-1]["nodes"] + outputs
    else:
        groups.append({"id": None, "kind": "layer", "nodes": outputs, "stage": last})
    stage = {n: g["stage"] for g in groups for n in g["nodes"]}
    incoming: dict[int, list[int]] = {}  # stage -> transfer nodes it receives
    for n in sorted(stage, key=lambda m: (stage[m], m)):
        if graph.op(n) == "transfer":
            continue
        late = [e for e in graph.users(n) if stage[e.dst] > stage[n]]
        if not late:
            continue
        prev = n
        hops: dict[int, int] = {}
        for t in range(stage[n] + 1, max(stage[e.dst] for e in late) + 1):
            data = graph.node(n)
            label = data.get("name") or f"%{n}"
            wire = "uint8" if C.spikes_are_binary(graph, n) else data.get("dtype", "float32")
            prev = graph.add_node(
                "transfer",
                [prev],
                attrs={"src_stage": t - 1, "dst_stage": t, "wire": wire},
                shape=data.get("shape"),
                dtype=data.get("dtype", "float32"),
                name=f"{label}@stage{t}",
            )
            stage[prev] = t
            hops[t] = prev
            incoming.setdefault(t, []).append(prev)
        for e in late:
            graph.remove_edge(e)
            graph.add_edge(hops[stage[e.dst]], e.dst, e.port, e.delay)
    for t, transfers in incoming.items():
        first = next(g for g in groups if g["stage"] == t)
        if first["kind"] == "layer":
            first["nodes"] = transfers + first["nodes"]
        else:
            groups.insert(
                groups.index(first), {"id": None, "kind": "layer", "nodes": transfers, "stage": t}
            )
    for gid, g in enumerate(groups):
        g["id"] = gid
        for n in g["nodes"]:
            graph.node(n).update(group=gid, stage=g["stage"])
            graph.node(n)["schedule"] = {"layer": "layer", "neuron": "scan", "recurrent": "step"}[
                g["kind"]
            ]
    graph.meta["groups"] = groups


def _stage_records(split: Split, graph: Graph) -> list[dict[str, Any]]:
    out = []
    for s in range(len(split.compute)):
        gids = [g["id"] for g in groups_of(graph) if g.get("stage", 0) == s]
        out.append(
            {
                "id": s,
                "groups": gids,
                "compute": split.compute[s],
                "receive": split.receive[s],
                "cost": split.cost[s],
                "memory": split.memory[s],
            }
        )
    return out


# ---------------------------------------------------------------- planning
def _prediction(seconds: float, single: float, devices: int, sim: C.Simulation | None) -> dict:
    busy = sum(sim.compute.values()) / devices if sim is not None and sim.compute else seconds
    return {
        "feasible": True,
        "seconds": seconds,
        "speedup": single / seconds if seconds > 0 else math.inf,
        "efficiency": single / seconds / devices if seconds > 0 else 1.0,
        "bubble": max(0.0, seconds - busy) if sim is not None else 0.0,
        "transfer": sim.transfer if sim is not None else 0.0,
    }


def plan(graph: Graph, req: Request, devices: int) -> dict[str, dict[str, Any]]:
    """Each schedule's modelled time on ``devices`` devices for the request's workload.

    Every entry holds ``seconds``, ``speedup`` and ``efficiency`` against one device,
    the ``bubble`` (mean idle time of a device inside the makespan) and the
    ``transfer`` time on links, or ``feasible: False`` and ``why``. Outputs stay on
    the device that computed them in every schedule (none is charged a final gather).
    Where the request does not fix them, the pipeline's chunk count and the temporal
    split's micro-batch count are chosen here too (the fastest of a few), and recorded.
    Memory is checked for the pipeline only (its stages under ``memory_cap``, as the pass
    applies them, so a chunk count whose stages do not fit is never chosen); the other
    schedules' memory is not modelled.
    """
    gcs = C.group_costs(graph)
    dev, link, cal = req.device, req.link, req.calibration
    T, B = req.steps, req.batch
    bwd = BACKWARD_FACTOR if req.training else 0.0

    def run(steps: int, batch: int, groups: Any = gcs) -> float:
        return C.run_seconds(groups, dev, steps, batch, cal)

    single = run(T, B) * (1 + bwd)
    weights = float(sum(a.nbytes for a in graph.params.values()))
    allreduce = C.ring_allreduce_seconds(weights, devices, link) if req.training else 0.0
    out: dict[str, dict[str, Any]] = {}

    def refuse(name: str, why: str) -> None:
        out[name] = {"feasible": False, "why": why}

    # data parallel: the batch split; training adds an all-reduce of the weight gradients
    why = inexact_nodes(graph, "data_parallel")
    if B < devices:
        refuse("data_parallel", f"batch {B} < {devices} devices")
    elif why:
        refuse("data_parallel", why[0])
    else:
        t = run(T, math.ceil(B / devices)) * (1 + bwd)
        tasks = [C.Task(f"c{p}", f"dev{p}", t) for p in range(devices)]
        every = tuple(f"c{p}" for p in range(devices))
        tasks.append(C.Task("allreduce", "ring", allreduce, every, "transfer"))
        sim = C.simulate(tasks)
        out["data_parallel"] = _prediction(sim.makespan, single, devices, sim)

    # time-chunk pipeline over `devices` stages, K chunks (the request's, or the best of a few)
    why = inexact_nodes(graph, "pipeline")
    units = _units(graph)
    if why:
        refuse("pipeline", why[0])
    elif len(units) < devices:
        refuse("pipeline", f"{len(units)} group(s) to place, fewer than {devices} stages")
    else:
        options = [req.chunks] if req.chunks_given else _candidates(devices, T)
        best: dict[str, Any] | None = None
        for K in options:
            r = replace(req, chunks=K)
            model = StageModel(graph, units, r)
            try:
                split = model.best_split(devices)
            except UnsupportedError as e:
                best = best or {"feasible": False, "why": str(e)}
                continue
            tasks = C.pipeline_tasks(
                lambda s, k, split=split: split.compute[s],
                lambda s, k, split=split, model=model: model.send(split, s),
                devices,
                K,
                (lambda s, k, split=split: split.compute[s] * bwd) if req.training else None,
            )
            sim = C.simulate(tasks)
            pred = {
                **_prediction(sim.makespan, single, devices, sim),
                "chunks": K,
                "stages": list(split.bounds),
            }
            if best is None or not best.get("feasible") or pred["seconds"] < best["seconds"]:
                best = pred
        out["pipeline"] = best

    # temporal split: device p owns steps [p T/P, (p+1) T/P) of every micro-batch
    why = inexact_nodes(graph, "temporal")
    if why:
        refuse("temporal", why[0])
    elif T < devices:
        refuse("temporal", f"{T} steps, fewer than {devices} segments")
    else:
        seg = math.ceil(T / devices)
        options = [min(req.micro_batches, B)] if req.micro_batches_given else _candidates(1, B)
        best = None
        for M in options:
            mb = math.ceil(B / M)
            t = run(seg, mb)
            hand = link.seconds(C.sequence_state_bytes(graph) * mb)
            tasks = C.pipeline_tasks(
                lambda p, n, t=t: t,
                lambda p, n, hand=hand: hand,
                devices,
                M,
                (lambda p, n, t=t: t * bwd) if bwd else None,
            )
            if req.training:
                ends = tuple(f"b{p}.0" for p in range(devices))
                tasks.append(C.Task("allreduce", "ring", allreduce, ends, "transfer"))
            sim = C.simulate(tasks)
            pred = {**_prediction(sim.makespan, single, devices, sim), "micro_batches": M}
            if best is None or pred["seconds"] < best["seconds"]:
                best = pred
        out["temporal"] = best

    # neuron split: every layer's neurons (and the GEMM features feeding them) over devices
    why = inexact_nodes(graph, "neuron_split")
    if why:
        refuse("neuron_split", why[0])
    else:
        pieces = [gc if gc.kind == "recurrent" else gc.split(devices) for gc in gcs]
        compute = run(T, B, pieces) * (1 + bwd)
        gather = 0.0
        outputs = set(graph.meta["outputs"])
        for n in gather_points(graph):
            if all(e.dst in outputs for e in graph.users(n)):
                continue  # outputs stay where they are computed
            nbytes = C.elements(graph, n) * C.wire_bytes(graph, n) * T * B
            gather += C.ring_allgather_seconds(nbytes, devices, link)
        gather *= 2 if req.training else 1  # the backward sums the input gradients
        seconds = compute + gather
        out["neuron_split"] = {**_prediction(seconds, single, devices, None), "transfer": gather}
    return out


def _candidates(lo: int, hi: int) -> list[int]:
    """A few counts from ``lo`` up to ``hi`` (doubling), for the planner to choose from."""
    out, k = [], max(1, lo)
    while k <= hi:
        out.append(k)
        k *= 2
    return out or [hi]


#: ops that keep a split over neurons (features / channels) as it is
SHARD_KEEPING = frozenset(
    {
        "neuron",
        "batchnorm",
        "avgpool2d",
        "maxpool2d",
        "adaptive_avgpool2d",
        "dropout",
        "identity",
        "scale",
        "transfer",
    }
)
#: ops that make a split over their output features from a whole input (column parallel)
SHARD_MAKING = frozenset({"linear", "conv1d", "conv2d"})


def gather_points(graph: Graph) -> list[int]:
    """Nodes whose value a neuron split must all-gather: a split value read by an op that
    needs it whole (the next GEMM, a flatten, an output). Recurrent groups run whole."""
    split = sharded_nodes(graph)
    points = []
    for n in sorted(split):
        if any(e.dst not in split or graph.op(e.dst) in SHARD_MAKING for e in graph.users(n)):
            points.append(n)
    return points


def sharded_nodes(graph: Graph) -> set[int]:
    """Nodes a neuron split computes in pieces: outputs of a GEMM or convolution over their
    features, a program input that only element-wise ops read (each device takes its piece),
    and what keeps that split (neurons, per-channel ops) while every input is split."""
    recurrent = {n for g in groups_of(graph) if g["kind"] == "recurrent" for n in g["nodes"]}
    split: set[int] = set()
    for n in graph.topo_order():
        op = graph.op(n)
        if n in recurrent:
            continue
        ins = graph.inputs(n)
        if op == "input":  # read only element-wise (a layer of neurons fed by the input): cut it
            users = graph.users(n)
            shape = graph.node(n).get("shape") or []
            if (
                users
                and len(shape) >= 2
                and all(graph.op(e.dst) in SHARD_KEEPING and e.dst not in recurrent for e in users)
            ):
                split.add(n)
        elif op in SHARD_MAKING:
            split.add(n)
        elif op in SHARD_KEEPING and ins and all(i in split for i in ins):
            split.add(n)
    return split


# ---------------------------------------------------------------- the pass
def partition(graph: Graph) -> Graph:
    """Split the schedule into stages as ``meta["partition"]`` asks (see the module docstring)."""
    req = parse_request(graph.meta.get("partition"))
    if any(graph.op(n) == "transfer" for n in graph.nx.nodes):
        raise UnsupportedError(
            "this graph is partitioned already (it holds transfer nodes); partition the graph "
            "that temporal fusion scheduled instead"
        )
    if "groups" not in graph.meta:
        from snncc.ir.passes.temporal_fusion import temporal_fusion

        graph = temporal_fusion(graph)
    stages = req.stages
    if req.devices is not None:
        predicted = plan(graph, req, req.devices)
        feasible = {k: v for k, v in predicted.items() if v.get("feasible")}
        if stages is not None:
            chosen = (
                "pipeline"
                if stages > 1
                else min(
                    feasible,
                    key=lambda k: (feasible[k]["seconds"], SCHEDULES.index(k)),
                    default=None,
                )
            )
        else:
            chosen = min(
                feasible, key=lambda k: (feasible[k]["seconds"], SCHEDULES.index(k)), default=None
            )
            stages = req.devices if chosen == "pipeline" else 1
        graph.meta["parallel"] = {
            "schedule": chosen,
            "devices": req.devices,
            "predicted": predicted,
        }
    stages = stages or 1
    if stages > 1:
        refuse_inexact(graph, "pipeline")
    units = _units(graph)
    model = StageModel(graph, units, req)
    split = (
        model.best_split(stages)
        if stages > 1
        else Split(
            (0, len(units)), (model.compute(0, len(units)),), (0.0,), (model.memory(0, len(units)),)
        )
    )
    if stages > 1:
        _apply(graph, units, split)
    else:
        for g in groups_of(graph):
            g["stage"] = 0
            for n in g["nodes"]:
                graph.node(n)["stage"] = 0
    graph.meta["stages"] = _stage_records(split, graph)
    return graph
