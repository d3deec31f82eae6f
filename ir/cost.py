"""A cost model of a scheduled graph, and an event simulation of multi-device schedules.

Why one module: the partition pass balances stages with these costs and picks
the schedule whose simulated time is shortest, and ``benchmarks/scaling.py``
projects speed-ups with the very same numbers and simulation; two copies
would drift apart.

**Per group.** Every node is counted per *row* (one sample at one step):
FLOPs, bytes of activations read and written, bytes of weights read once per
call, state bytes per sample, and kernel launches. A group's time on a
:class:`Device` for ``steps`` x ``batch`` is the roofline of its nodes
(``launch + max(flops / F, bytes / BW)``) with one refinement that matters
for spiking layers: a neuron kernel runs one thread per neuron and sample and
loops over time, so only ``elements x batch`` loads are in flight, and below
``device.saturating`` elements the bandwidth it reaches falls in proportion
(Little's law). A recurrent group runs step by step, its launches paid every
step. Measured times replace the model where they exist
(:class:`Calibration`: seconds per group at a given number of steps and
batch), scaled by rows above the launch cost.

**Links** cost ``latency + bytes / bandwidth``. Spec-sheet figures are
labelled as such in :data:`LINKS`; latencies are assumptions (no spec sheet
states them), labelled too.

**Schedules** become task graphs (device compute and link transfers with
dependencies, each resource running its tasks in program order) and
:func:`simulate` replays them: the makespan, each resource's busy time, and
so the bubble.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snncc.ir.graph import Graph
from snncc.ir.schedule import groups_of

F32 = 4


# ---------------------------------------------------------------- hardware
@dataclass(frozen=True)
class Device:
    """What one device computes at: rates, a fixed cost per kernel call, memory."""

    name: str
    flops_per_s: float
    bytes_per_s: float
    launch_s: float
    memory_bytes: float | None = None
    #: elements in flight a neuron kernel needs to reach ``bytes_per_s`` (0: no such limit)
    saturating: float = 0.0
    #: host time to issue one group's work; launches are asynchronous, so the device works
    #: meanwhile and a run of groups takes the longer of the two sums (:func:`run_seconds`)
    host_s: float = 0.0
    #: where the figures come from ("spec sheet", "measured on ...", "fitted to ...")
    source: str = ""


@dataclass(frozen=True)
class Link:
    """A point-to-point link: ``latency + bytes / bandwidth`` (one direction)."""

    name: str
    latency_s: float
    bytes_per_s: float
    source: str = ""

    def seconds(self, nbytes: float) -> float:
        return 0.0 if nbytes <= 0 else self.latency_s + nbytes / self.bytes_per_s


#: NVIDIA data-sheet figures (fp32 without tensor cores, HBM bandwidth, memory). The launch
#: cost and the saturation point are not on a data sheet: 5 us per kernel call is typical of
#: CUDA launches through torch; 132 SMs x 2048 resident threads is where one load in flight
#: per thread stops limiting a streaming kernel.
DEVICES: dict[str, Device] = {
    "h100-sxm": Device(
        "H100 SXM 80GB",
        67e12,
        3.35e12,
        5e-6,
        80e9,
        132 * 2048,
        source="spec sheet (fp32 67 TFLOP/s, HBM3 3.35 TB/s, 80 GB); launch 5 us and saturation "
        "at 132 SMs x 2048 threads assumed",
    ),
    "h200": Device(
        "H200 SXM 141GB",
        67e12,
        4.8e12,
        5e-6,
        141e9,
        132 * 2048,
        source="spec sheet (fp32 67 TFLOP/s, HBM3e 4.8 TB/s, 141 GB); launch 5 us and saturation "
        "at 132 SMs x 2048 threads assumed",
    ),
}

#: per direction; the latencies are assumptions (order of NCCL point-to-point latencies)
LINKS: dict[str, Link] = {
    "nvlink4": Link(
        "NVLink 4 (H100/H200 SXM)",
        10e-6,
        450e9,
        "spec sheet: 900 GB/s per GPU both directions, so 450 GB/s one way; latency 10 us assumed",
    ),
    "pcie5": Link(
        "PCIe Gen5 x16",
        15e-6,
        64e9,
        "spec sheet: 64 GB/s per direction; latency 15 us assumed",
    ),
    "ib-ndr": Link(
        "InfiniBand NDR 400 Gb/s (between nodes)",
        20e-6,
        50e9,
        "spec sheet: 400 Gb/s = 50 GB/s per direction; latency 20 us assumed",
    ),
}


# ---------------------------------------------------------------- per node
@dataclass(frozen=True)
class NodeCost:
    """One node per row (a sample at one step), see the module docstring."""

    flops: float = 0.0
    bytes: float = 0.0
    weight_bytes: float = 0.0
    state_bytes: float = 0.0
    out_bytes: float = 0.0
    launches: int = 0
    #: elements of one step and sample that run in parallel only across the batch (a
    #: neuron's time loop); 0 for ops that see all rows at once
    elements: float = 0.0


#: ops that only relabel memory: no launch, no traffic
VIEWS = frozenset({"input", "output", "flatten", "reshape", "identity", "transfer", "dropout"})


def elements(graph: Graph, n: int) -> int:
    """Values per sample and step of node ``n`` (its per-step shape without the batch)."""
    shape = graph.node(n).get("shape")
    if not shape:
        ins = graph.inputs(n)
        return elements(graph, ins[0]) if ins else 0
    return math.prod(int(d) for d in shape[1:])


def _param_bytes(graph: Graph, n: int) -> float:
    return float(sum(graph.params[name].nbytes for name in graph.node(n)["params"].values()))


def node_cost(graph: Graph, n: int) -> NodeCost:
    """FLOPs, bytes and launches of node ``n`` per row (see :class:`NodeCost`)."""
    op = graph.op(n)
    out = elements(graph, n)
    ins = [elements(graph, s) for s in graph.inputs(n)]
    io = F32 * (sum(ins) + out)
    if op in VIEWS:
        return NodeCost(out_bytes=F32 * out)
    if op == "linear":
        w = graph.param(n, "weight")
        return NodeCost(2.0 * w.size + out, io, _param_bytes(graph, n), 0, F32 * out, 1)
    if op in ("conv1d", "conv2d"):
        w = graph.param(n, "weight")
        per_out = math.prod(w.shape[1:])
        return NodeCost(2.0 * out * per_out + out, io, _param_bytes(graph, n), 0, F32 * out, 1)
    if op in ("conv_transpose1d", "conv_transpose2d"):  # each input element meets C_out/g * k
        w = graph.param(n, "weight")
        per_in = math.prod(w.shape[1:])
        return NodeCost(2.0 * sum(ins) * per_in + out, io, _param_bytes(graph, n), 0, F32 * out, 1)
    if op == "neuron":
        from snncc.ir.neuron import NeuronSpec
        from snncc.ir.neurons import build

        ng = build(NeuronSpec.from_dict(graph.attrs(n)["neuron"]))
        state = F32 * len(ng.states) * out
        return NodeCost(float(len(ng.step.nodes)) * out, io, 0.0, state, F32 * out, 1, out)
    if op in ("avgpool2d", "maxpool2d", "adaptive_avgpool2d"):
        return NodeCost(float(sum(ins)), io, 0.0, 0, F32 * out, 1)
    if op == "batchnorm":
        return NodeCost(4.0 * out, io, _param_bytes(graph, n), 0, F32 * out, 1)
    return NodeCost(float(max(out, sum(ins))), io, 0.0, 0, F32 * out, 1)


# ---------------------------------------------------------------- per group
@dataclass(frozen=True)
class Calibration:
    """Measured seconds per group (keyed by the group's first node id) at steps x batch."""

    steps: int
    batch: int
    seconds: Mapping[int, float]
    #: what measured them ("this CPU, cpu backend, 1 thread", ...)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "batch": self.batch,
            "seconds": {str(k): v for k, v in self.seconds.items()},
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        secs = {int(k): float(v) for k, v in dict(d.get("seconds", {})).items()}
        return cls(int(d["steps"]), int(d["batch"]), secs, str(d.get("source", "")))


@dataclass(frozen=True)
class GroupCost:
    """One group's nodes and their costs; :meth:`seconds` is its time for a chunk."""

    key: int  # the group's first node id: stable while passes renumber groups
    kind: str
    nodes: tuple[int, ...]
    costs: tuple[NodeCost, ...]
    #: the group's work is divided over this many devices (a neuron split's piece)
    parts: int = 1

    @property
    def weight_bytes(self) -> float:
        return sum(c.weight_bytes for c in self.costs)

    @property
    def state_bytes(self) -> float:
        return sum(c.state_bytes for c in self.costs)

    @property
    def flops(self) -> float:
        return sum(c.flops for c in self.costs)

    @property
    def launches(self) -> int:
        return sum(c.launches for c in self.costs)

    def split(self, parts: int) -> GroupCost:
        """This group's piece on one of ``parts`` devices of a neuron split: each node's work,
        traffic, weights and parallel elements divided; its launches not."""

        def piece(c: NodeCost) -> NodeCost:
            return NodeCost(
                c.flops / parts,
                c.bytes / parts,
                c.weight_bytes / parts,
                c.state_bytes / parts,
                c.out_bytes / parts,
                c.launches,
                c.elements / parts,
            )

        costs = tuple(piece(c) for c in self.costs)
        return GroupCost(self.key, self.kind, self.nodes, costs, self.parts * parts)

    def modelled(self, device: Device, steps: int, batch: int) -> float:
        """Roofline time of ``steps`` x ``batch`` (step by step for a recurrent group)."""
        if self.kind == "recurrent":
            return steps * self._rows(device, 1, batch)
        return self._rows(device, steps, batch)

    def _rows(self, device: Device, steps: int, batch: int) -> float:
        rows = steps * batch
        total = 0.0
        for c in self.costs:
            if not c.launches:
                continue
            bw = device.bytes_per_s
            if c.elements and device.saturating:
                bw *= min(1.0, c.elements * batch / device.saturating)
            move = (c.bytes * rows + c.weight_bytes) / bw
            total += c.launches * device.launch_s + max(c.flops * rows / device.flops_per_s, move)
        return total

    def seconds(
        self, device: Device, steps: int, batch: int, calibration: Calibration | None = None
    ) -> float:
        """Measured time scaled to ``steps`` x ``batch`` where calibrated, else modelled."""
        measured = None if calibration is None else calibration.seconds.get(self.key)
        if measured is None:
            return self.modelled(device, steps, batch)
        fixed = self.launches * device.launch_s * (steps if self.kind == "recurrent" else 1)
        fixed = min(fixed, measured)
        scale = (steps * batch) / (calibration.steps * calibration.batch) / self.parts
        return fixed + (measured - fixed) * scale


def run_seconds(
    groups: Sequence[GroupCost],
    device: Device,
    steps: int,
    batch: int,
    calibration: Calibration | None = None,
) -> float:
    """A run of ``groups`` one after another on one device: the device's time, or the host's
    time to issue them when that is longer (a calibrated group's time includes its host's)."""
    work = sum(g.seconds(device, steps, batch, calibration) for g in groups)
    issued = sum(
        device.host_s * (steps if g.kind == "recurrent" else 1)
        for g in groups
        if g.launches and (calibration is None or g.key not in calibration.seconds)
    )
    return max(work, issued)


def group_costs(graph: Graph) -> list[GroupCost]:
    """Every group of the schedule with its nodes' costs, in execution order."""
    return [
        GroupCost(
            g["nodes"][0],
            g["kind"],
            tuple(g["nodes"]),
            tuple(node_cost(graph, n) for n in g["nodes"]),
        )
        for g in groups_of(graph)
    ]


def wire_bytes(graph: Graph, n: int) -> int:
    """Bytes per value of node ``n`` on a link: 1 for exact 0/1 spikes, else its dtype's size."""
    return 1 if spikes_are_binary(graph, n) else F32


def spikes_are_binary(graph: Graph, n: int) -> bool:
    """Whether node ``n``'s values are exactly 0 or 1: a neuron whose output comes straight
    from the spike comparison (``NeuronGraph.binary_output``) with no epilogue, or a
    transfer of such a value."""
    op = graph.op(n)
    if op == "transfer":
        return graph.attrs(n).get("wire") == "uint8"
    if op != "neuron" or graph.attrs(n).get("epilogue"):
        return False
    from snncc.ir.neuron import NeuronSpec
    from snncc.ir.neurons import build

    return build(NeuronSpec.from_dict(graph.attrs(n)["neuron"])).binary_output


def sequence_state_bytes(graph: Graph) -> float:
    """Bytes per sample of everything a run hands on to continue a sequence (neuron states
    and the last value of each delay edge's producer): what a temporal split moves."""
    total = 0.0
    delayed = {u for u, _, d in graph.nx.edges(data=True) if d.get("delay", 0)}
    for n in graph.nx.nodes:
        total += node_cost(graph, n).state_bytes
        if n in delayed:
            total += F32 * elements(graph, n)
    return total


# ---------------------------------------------------------------- simulation
@dataclass(frozen=True)
class Task:
    """A piece of work on one resource (``dev0``, ``link0>1``, ...) after its dependencies."""

    name: str
    resource: str
    seconds: float
    deps: tuple[str, ...] = ()
    kind: str = "compute"  # "compute" or "transfer"


@dataclass
class Simulation:
    makespan: float
    finish: dict[str, float]
    busy: dict[str, float]
    #: per device: compute time, and the idle time inside the makespan (the bubble)
    compute: dict[str, float] = field(default_factory=dict)
    transfer: float = 0.0

    def bubble(self, resource: str) -> float:
        return self.makespan - self.busy.get(resource, 0.0)


def simulate(tasks: Sequence[Task]) -> Simulation:
    """Replay ``tasks``: each starts when its resource is free and its dependencies are done.

    ``tasks`` must be listed so that every dependency comes first; each resource
    runs its tasks in the listed order (the schedule's program order).
    """
    finish: dict[str, float] = {}
    free: dict[str, float] = defaultdict(float)
    busy: dict[str, float] = defaultdict(float)
    transfer = 0.0
    for t in tasks:
        start = max([free[t.resource], *(finish[d] for d in t.deps)])
        finish[t.name] = start + t.seconds
        free[t.resource] = finish[t.name]
        busy[t.resource] += t.seconds
        if t.kind == "transfer":
            transfer += t.seconds
    makespan = max(finish.values(), default=0.0)
    compute = {r: b for r, b in busy.items() if r.startswith("dev")}
    return Simulation(makespan, finish, dict(busy), compute, transfer)


def pipeline_tasks(
    stage_seconds: Callable[[int, int], float],
    send_seconds: Callable[[int, int], float],
    stages: int,
    chunks: int,
    backward: Callable[[int, int], float] | None = None,
    grad_seconds: Callable[[int, int], float] | None = None,
) -> list[Task]:
    """The time-chunk pipeline: stage s runs chunk k after chunk k-1 and after stage s-1's
    chunk k arrived; with ``backward``, chunks K-1..0 run back through the stages, each
    after the next chunk's state adjoint (same device) and the next stage's gradient."""
    tasks: list[Task] = []
    for k in range(chunks):
        for s in range(stages):
            deps = (f"x{s - 1}.{k}",) if s else ()
            tasks.append(Task(f"f{s}.{k}", f"dev{s}", stage_seconds(s, k), deps))
            if s + 1 < stages:
                tasks.append(
                    Task(
                        f"x{s}.{k}",
                        f"link{s}>{s + 1}",
                        send_seconds(s, k),
                        (f"f{s}.{k}",),
                        "transfer",
                    )
                )
    if backward is None:
        return tasks
    for k in reversed(range(chunks)):
        for s in reversed(range(stages)):
            deps = [f"f{stages - 1}.{chunks - 1}"]
            if s + 1 < stages:
                deps.append(f"g{s + 1}.{k}")
            tasks.append(Task(f"b{s}.{k}", f"dev{s}", backward(s, k), tuple(deps)))
            if s:
                secs = (grad_seconds or send_seconds)(s - 1, k)
                tasks.append(
                    Task(f"g{s}.{k}", f"link{s}>{s - 1}", secs, (f"b{s}.{k}",), "transfer")
                )
    return tasks


def temporal_tasks(
    segment_seconds: Callable[[int, int], float],
    handoff_seconds: float,
    devices: int,
    batches: int,
) -> list[Task]:
    """The temporal split: device p owns time segment p of every micro-batch of trials and
    hands the state on; micro-batch n runs on p after it ran on p-1 (and after n-1 on p)."""
    tasks: list[Task] = []
    for n in range(batches):
        for p in range(devices):
            deps = (f"h{p - 1}.{n}",) if p else ()
            tasks.append(Task(f"c{p}.{n}", f"dev{p}", segment_seconds(p, n), deps))
            if p + 1 < devices:
                tasks.append(
                    Task(
                        f"h{p}.{n}", f"link{p}>{p + 1}", handoff_seconds, (f"c{p}.{n}",), "transfer"
                    )
                )
    return tasks


def ring_allreduce_seconds(nbytes: float, devices: int, link: Link) -> float:
    """A ring all-reduce: 2 (P-1) steps, each moving 1/P of the bytes over one link."""
    if devices <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (devices - 1) * link.seconds(nbytes / devices)


def ring_allgather_seconds(nbytes: float, devices: int, link: Link) -> float:
    """A ring all-gather of ``nbytes`` in total: P-1 steps of 1/P of the bytes."""
    if devices <= 1 or nbytes <= 0:
        return 0.0
    return (devices - 1) * link.seconds(nbytes / devices)
