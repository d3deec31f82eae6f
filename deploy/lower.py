"""A scheduled IR lowered to the straight-line C++ of a deployed model (``src/model.cpp``).

What this module decides, once, in Python, so that the generated C++ only
follows it:

- **The schedule** is the IR's own: ``graph.meta["groups"]`` as temporal
  fusion wrote it. A ``layer`` group runs each stateless node over all T*B
  rows (or step by step for a single-step source, as the reference backend
  does); a ``neuron`` group is one call of the node's fused forward kernel
  over all T steps; a ``recurrent`` group runs its members step by step, its
  neurons calling the same kernel with T = 1 and the state carried.
- **The buffers** are planned ahead of time: every value a node produces gets
  a slot of an arena, reused once the value is dead (liveness over the
  schedule); a slot of ``e`` floats per sample sits at ``T*B*offset``, so the
  whole plan is a handful of constants and the arena's size is
  ``T*B*kArenaSeq + B*kArenaBatch`` floats. Views (flatten, reshape,
  identity, output, eval dropout) share their input's memory.
- **The weights** are what the program reads, computed here with the
  backends' own torch code so the bits are the backends' bits: a linear or
  convolution's folded BatchNorm (``fold_bn``), a neuron's quantities
  (``derived_constants`` over the form's derive graph: PLIF's ``k =
  sigmoid(w)``, snnTorch's ``beta.clamp(0, 1)``), an eval BatchNorm's
  per-channel scale and shift. They are *precomputed*, not re-derived in C:
  a C ``sigmoid`` or ``sqrt`` need not round as torch's does, and the
  kernels' contract is torch's bits. (So a changed source parameter means
  running ``snncc deploy`` again; the tree's README says so.)
- **Shapes** come from one run of the reference interpreter on a tiny input,
  so every node's per-sample shape is the one torch computes, batch
  independence is checked (two batch sizes), and nothing is re-derived here.

Every name pasted into the C++ is generated (``v12``, ``n3.weight``); the
user's module names appear only in comments passed through :func:`comment`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snncc.backends.kernels import NeuronKernelInfo, neuron_kernel_info
from snncc.errors import SnnccError, UnsupportedError
from snncc.ir.graph import Edge, Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.schedule import groups_of

#: the ops a deployed model runs (everything the reference backend runs in eval mode)
DEPLOY_OPS = (
    "input",
    "output",
    "linear",
    "conv1d",
    "conv2d",
    "batchnorm",
    "avgpool2d",
    "maxpool2d",
    "adaptive_avgpool2d",
    "voting",
    "flatten",
    "reshape",
    "identity",
    "dropout",
    "transfer",
    "add",
    "mul",
    "scale",
    "cat",
    "neuron",
)
#: ops whose output is their input's memory, unchanged (contiguous data); a partitioned
#: schedule's ``transfer`` too: a deployed model runs every stage in one process
VIEW_OPS = ("flatten", "reshape", "identity", "output", "dropout", "transfer")
#: the most per-sample dimensions a broadcast or a tensor in the weights file may have
MAX_RANK = 8
#: slot sizes are rounded up to this many floats (64-byte alignment of every buffer)
ALIGN = 16


@dataclass
class Tensor:
    """One array of the weights file: a generated name, fp32 data, and where it came from."""

    name: str
    array: np.ndarray
    #: what it is, for the tree's README (may quote the source's names)
    what: str


@dataclass
class StateEntry:
    """One carried array per sample: a neuron's state variable or a delay edge's last value."""

    name: str
    offset: int
    count: int
    what: str


@dataclass
class KernelUse:
    """A neuron kernel the model calls (rendered once per tag)."""

    spec: NeuronSpec
    prologue: list
    epilogue: list
    info: NeuronKernelInfo


@dataclass
class GroupCode:
    """One schedule group's C++ statements, with a comment saying what it is."""

    title: str
    lines: list[str]


@dataclass
class Lowered:
    """Everything the templates render a deployed model from."""

    model_id: str
    input_shape: tuple[int, ...]
    output_shapes: list[tuple[int, ...]]
    tensors: list[Tensor]
    state: list[StateEntry]
    state_per_sample: int
    arena_seq: int
    arena_batch: int
    groups: list[GroupCode]
    kernels: dict[str, KernelUse]
    #: the IR as printed (for the tree's README and model.cpp's header comment)
    ir_text: str
    step_mode: str
    notes: list[str] = field(default_factory=list)


def comment(text: str) -> str:
    """Text safe inside a C++ ``//`` comment: one line, printable ASCII, no trigraph or splice."""
    out = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))
    return out.replace("\\", "/").replace("??", "?_?")


def _refuse(graph: Graph, n: int, why: str) -> UnsupportedError:
    name = graph.node(n).get("name") or "?"
    return UnsupportedError(f"snncc deploy: node %{n} ({name!r}, op {graph.op(n)}): {why}")


# ------------------------------------------------------------------ shapes
def infer(graph: Graph) -> tuple[dict[int, tuple[int, ...]], Any, Any]:
    """Per-sample shapes of every node (from the reference interpreter), and its run context.

    Runs [T=2, B=1] and [T=2, B=2]: a node whose per-sample shape changes with
    B (an op that mixes the batch into other dims) cannot be deployed with a
    free batch size and is refused.
    """
    import torch

    from snncc.backends.reference.program import ReferenceProgram

    class Recorder(ReferenceProgram):
        """The reference interpreter, keeping its run context (values, resolved params)."""

        ctx: Any = None

        def _run_layer(self, ctx: Any, n: int, inputs: list) -> None:
            super()._run_layer(ctx, n, inputs)
            self.ctx = ctx

        def _run_recurrent(self, ctx: Any, unit: list[int]) -> None:
            super()._run_recurrent(ctx, unit)
            self.ctx = ctx

    (inp,) = graph.meta["inputs"]
    sample = tuple(int(d) for d in graph.node(inp)["shape"][1:])
    shapes: list[dict[int, tuple[int, ...]]] = []
    prog = None
    for B in (1, 2):
        prog = Recorder(graph, requires_grad=False, training=False)
        x = torch.rand((2, B, *sample), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            prog.run(x)
        found = {}
        for n, v in prog.ctx.values.items():
            if tuple(v.shape[:2]) != (2, B):
                raise _refuse(graph, n, f"its value has shape {tuple(v.shape)}, not [T, B, ...]")
            if v.dtype != torch.float32:
                raise _refuse(graph, n, f"its value is {v.dtype}; deployed models are float32")
            found[n] = tuple(int(d) for d in v.shape[2:])
        shapes.append(found)
    for n in shapes[0]:
        if shapes[0][n] != shapes[1][n]:
            raise _refuse(
                graph,
                n,
                f"its per-sample shape depends on the batch size ({shapes[0][n]} at "
                f"B=1, {shapes[1][n]} at B=2)",
            )
    return shapes[1], prog, prog.ctx


def _prod(dims: Sequence[int]) -> int:
    return int(math.prod(dims))


def _bcast_strides(shape: Sequence[int], target: Sequence[int]) -> list[int] | None:
    """Strides (in floats) to read ``shape`` as ``target`` by torch's broadcasting (0: repeated),
    or None when it does not broadcast."""
    if len(shape) > len(target):
        return None
    shape = [1] * (len(target) - len(shape)) + list(shape)
    strides, acc = [0] * len(target), 1
    for i in range(len(target) - 1, -1, -1):
        if shape[i] == target[i]:
            strides[i] = acc if shape[i] != 1 else 0
        elif shape[i] == 1:
            strides[i] = 0
        else:
            return None
        acc *= shape[i]
    return strides


# ----------------------------------------------------------------- lowering
class _Lowering:
    """One graph's lowering: checks, shapes, weights, the buffer plan, the C++ statements."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        if not graph.meta.get("groups"):
            raise UnsupportedError(
                "snncc deploy needs a scheduled IR (graph.meta['groups'], written by the "
                "temporal_fusion pass); compile the model first"
            )
        self.groups_meta = groups_of(graph)  # the one reading of the schedule, checked
        self._check_ops()
        self.shapes, self.prog, self.ctx = infer(graph)
        self.per_step = bool(self.prog.stateless_per_step)
        self.tensors: list[Tensor] = []
        self._tensor_index: dict[str, int] = {}
        self.kernels: dict[str, KernelUse] = {}
        self.notes: list[str] = []
        #: node -> the node whose memory holds its value (itself, or a view's source)
        self.root: dict[int, int] = {}
        self.batch_bufs: list[tuple[str, int, str]] = []  # (C name, floats per sample, what)
        self.state: list[StateEntry] = []
        self._state_off = 0
        self.state_of: dict[tuple[int, str], int] = {}
        #: per-neuron quantities repeated for every sample at the start of a call
        self._qexp: list[tuple[str, str, int]] = []
        #: the widest t = 0 value of a delay edge read without a carried state (zeros)
        self._zeros = 0

    # ------------------------------------------------------------ checks
    def _check_ops(self) -> None:
        g = self.g
        ins = g.meta.get("inputs", [])
        if len(ins) != 1:
            raise UnsupportedError(
                f"snncc deploy: the model has {len(ins)} inputs; a deployed model takes one"
            )
        for n in g.nx.nodes:
            op = g.op(n)
            if op not in DEPLOY_OPS:
                raise _refuse(
                    g,
                    n,
                    f"op {op!r} has no deployed implementation; supported: "
                    + ", ".join(DEPLOY_OPS),
                )
            attrs = g.attrs(n)
            if op in ("batchnorm", "dropout") and attrs.get("training", False):
                raise _refuse(
                    g,
                    n,
                    "it is in training mode (batch statistics / random masks); deploy a "
                    "model traced in eval mode (model.eval())",
                )
            if g.node(n).get("dtype", "float32") != "float32":
                raise _refuse(g, n, f"dtype {g.node(n).get('dtype')}; deployed models are float32")
        for u, v, d in g.nx.edges(data=True):
            if d.get("delay", 0) not in (0, 1):
                raise UnsupportedError(
                    f"snncc deploy: edge %{u} -> %{v} has delay {d.get('delay')}; delays 0 and 1"
                )

    # ------------------------------------------------------------ weights
    def tensor(self, name: str, array: Any, what: str) -> str:
        """Add an fp32 array to the weights file; returns its C expression ``w[i]``."""
        if name in self._tensor_index:
            return f"w[{self._tensor_index[name]}]"
        arr = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim > MAX_RANK:
            raise UnsupportedError(f"snncc deploy: tensor {name} has rank {arr.ndim} > {MAX_RANK}")
        self._tensor_index[name] = len(self.tensors)
        self.tensors.append(Tensor(name, arr, what))
        return f"w[{self._tensor_index[name]}]"

    def params(self, n: int) -> dict[str, Any]:
        """Node n's params as the reference run resolved them (BatchNorm folded by fold_bn)."""
        return {k: v.detach() for k, v in self.ctx.params(n).items()}

    def source_names(self, n: int) -> dict[str, str]:
        return dict(self.g.node(n)["params"])

    def f32(self, n: int, role: str, t: Any) -> Any:
        import torch

        if t.dtype != torch.float32:
            raise _refuse(self.g, n, f"param {role!r} is {t.dtype}; deployed models are float32")
        return t.numpy()

    # ------------------------------------------------------------ storage
    def shape(self, n: int) -> tuple[int, ...]:
        return self.shapes[n]

    def elems(self, n: int) -> int:
        return _prod(self.shapes[n])

    def in_edges(self, n: int) -> list[Edge]:
        return self.g.in_edges(n)

    def var(self, n: int) -> str:
        return f"v{n}"

    def at(self, n: int, step: str | None) -> str:
        """C expression of node n's value: the whole sequence, or one step ``step``."""
        if step is None:
            return self.var(n)
        return f"({self.var(n)} + {step} * B * {self.elems(n)})"

    # ---------------------------------------------------------- emission
    def run(self) -> Lowered:
        g = self.g
        self._plan_storage()
        groups: list[GroupCode] = []
        self.delay_reads: list[str] = []
        for grp in self.groups_meta:
            kind, nodes = grp["kind"], list(grp["nodes"])
            ids = " ".join(f"%{n}" for n in nodes)
            if kind == "recurrent":
                title = f"group {grp['id']} (recurrent, step by step): {ids}"
                lines = self._recurrent(nodes)
            elif kind == "neuron":
                title = f"group {grp['id']} (neuron, one kernel over all T steps): {ids}"
                lines = []
                for n in nodes:
                    lines += self._declare(n)
                    lines += self._neuron(n, step=None)
            else:
                mode = "step by step (single-step source)" if self.per_step else "T*B rows"
                if not self.per_step and any(self.prog.runs_per_step(n) for n in nodes):
                    mode = "T*B rows; GEMMs the source ran per step, step by step"
                title = f"group {grp['id']} (layer, {mode}): {ids}"
                lines = []
                for n in nodes:
                    lines += self._declare(n)
                    lines += self._layer_node(n)
            groups.append(GroupCode(comment(title), lines))
        tail = self._finish()
        groups.append(GroupCode("outputs and the state after the last step", tail))
        (inp,) = g.meta["inputs"]
        from snncc.ir.printer import format_graph

        lowered = Lowered(
            model_id="",
            input_shape=self.shape(inp),
            output_shapes=[self.shape(o) for o in g.meta["outputs"]],
            tensors=self.tensors,
            state=self.state,
            state_per_sample=self._state_off,
            arena_seq=self.arena_seq,
            arena_batch=self.arena_batch,
            groups=groups,
            kernels=self.kernels,
            ir_text=format_graph(g),
            step_mode="s" if self.per_step else "m",
            notes=self.notes,
        )
        lowered.model_id = model_id(lowered)
        return lowered

    # -------------------------------------------------------- the planner
    def _order(self) -> list[list[int]]:
        """Execution steps for liveness: one per node of layer/neuron groups, one per
        recurrent group (its members all live while it runs)."""
        steps: list[list[int]] = []
        for grp in self.groups_meta:
            if grp["kind"] == "recurrent":
                steps.append(list(grp["nodes"]))
            else:
                steps.extend([n] for n in grp["nodes"])
        return steps

    def _plan_storage(self) -> None:
        g = self.g
        (inp,) = g.meta["inputs"]
        steps = self._order()
        at_step = {n: i for i, ns in enumerate(steps) for n in ns}
        for ns in steps:
            for n in ns:
                op = g.op(n)
                if op in VIEW_OPS:
                    src = self.in_edges(n)[0]
                    if src.delay:
                        self.root[n] = n  # a delayed view is a real buffer (shifted by a step)
                    else:
                        self.root[n] = self.root[src.src]
                else:
                    self.root[n] = n
        self.root[inp] = inp
        end = len(steps)
        last: dict[int, int] = {}
        for n in g.nx.nodes:
            r = self.root[n]
            last[r] = max(last.get(r, -1), at_step[n])
            for e in self.in_edges(n):
                rs = self.root[e.src]
                last[rs] = max(last.get(rs, -1), at_step[n])
        # an output's value is computed straight into the caller's y (each output [T, B, ...]
        # one after another) unless it is the input's memory or another output's
        self.in_y: dict[int, int] = {}
        off = 0
        for o in g.meta["outputs"]:
            r = self.root[o]
            if r != inp and r not in self.in_y:
                self.in_y[r] = off
            else:
                last[r] = end
            off += self.elems(o)
        self.delay_srcs = sorted({e.src for n in g.nx.nodes for e in self.in_edges(n) if e.delay})
        for s in self.delay_srcs:
            last[self.root[s]] = end
        # broadcast copies a neuron's extra inputs may need: one slot per (node, port)
        slots: list[int] = []  # slot sizes; offsets assigned after
        assign: dict[Any, int] = {}
        live: list[tuple[int, Any]] = []  # (last step, key)

        def need_temp(n: int) -> list[int]:
            if g.op(n) != "neuron":
                return []
            return [e.port for e in self.in_edges(n)[1:] if self._neuron_port_needs_copy(n, e)]

        def take(size: int) -> int:
            best = None
            for i, s in enumerate(slots):
                if i in busy:
                    continue
                if s >= size and (best is None or s < slots[best]):
                    best = i
            if best is None:
                for i, s in enumerate(slots):
                    if i not in busy and (best is None or s > slots[best]):
                        best = i
                if best is None:
                    slots.append(size)
                    return len(slots) - 1
                slots[best] = max(slots[best], size)
            return best

        busy: set[int] = set()
        for i, ns in enumerate(steps):
            for lst, key in list(live):
                if lst < i:
                    busy.discard(assign[key])
                    live.remove((lst, key))
            for n in ns:
                if self.root[n] == n and n != inp and n not in self.in_y:
                    size = _round(self.elems(n))
                    s = take(size)
                    busy.add(s)
                    assign[n] = s
                    live.append((last.get(n, i), n))
                for port in need_temp(n):
                    key = ("tmp", n, port)
                    s = take(_round(self.elems(n)))
                    busy.add(s)
                    assign[key] = s
                    live.append((i, key))
        offsets, acc = [], 0
        for s in slots:
            offsets.append(acc)
            acc += s
        self.arena_seq = acc
        self.slot_of = {k: offsets[s] for k, s in assign.items()}
        self._declared: set[int] = set()
        self.arena_batch = 0

    def batch_buffer(self, name: str, per_sample: int, what: str) -> str:
        """A per-call buffer of B * per_sample floats after the sequence slots."""
        off = self.arena_batch
        self.arena_batch += _round(per_sample)
        self.batch_bufs.append((name, per_sample, what))
        return f"(arena + TB * kArenaSeq + B * {off})"

    def state_entry(self, key: tuple[int, str], count: int, what: str) -> int:
        if key not in self.state_of:
            name = f"n{key[0]}.{key[1]}"
            self.state.append(StateEntry(name, self._state_off, count, comment(what)))
            self.state_of[key] = self._state_off
            self._state_off += count
        return self.state_of[key]

    def _declare(self, n: int) -> list[str]:
        """The pointer variable of node n's value (a slot, the input, or a view's source)."""
        if n in self._declared:
            return []
        self._declared.add(n)
        g = self.g
        name = comment(g.node(n).get("name") or "")
        shape = ", ".join(map(str, self.shape(n)))
        what = f"%{n} {g.op(n)} [T, B, {shape}]" + (f"  ({name})" if name else "")
        if g.op(n) == "input":
            return [f"const float* const {self.var(n)} = x;  // {what}"]
        r = self.root[n]
        if r != n:
            return [f"const auto {self.var(n)} = {self.var(r)};  // {what}: same memory"]
        if n in self.in_y:
            return [f"float* const {self.var(n)} = y + TB * {self.in_y[n]};  // {what}: an output"]
        return [f"float* const {self.var(n)} = arena + TB * {self.slot_of[n]};  // {what}"]

    # ----------------------------------------------------------- layers
    def _layer_node(self, n: int) -> list[str]:
        op = self.g.op(n)
        if op == "input":
            return []
        edges = self.in_edges(n)
        if op in VIEW_OPS and not edges[0].delay:
            return []
        if any(e.delay for e in edges):  # the verifier keeps delay edges inside loops
            raise _refuse(self.g, n, "a delay edge outside a recurrent group")
        if op in ("linear", "conv1d", "conv2d", "batchnorm", "avgpool2d", "maxpool2d",
                  "adaptive_avgpool2d", "voting"):  # fmt: skip
            if self.prog.runs_per_step(n):
                body = self._row_op(n, [self.at(e.src, "t") for e in edges], self.at(n, "t"), "B")
                return ["for (int64_t t = 0; t < T; ++t) {", *("    " + b for b in body), "}"]
            return self._row_op(n, [self.var(e.src) for e in edges], self.var(n), "TB")
        return self._lead_op(n, [self.var(e.src) for e in edges], self.var(n), "TB")

    def _extra_slot(self, per: int) -> int:
        off = self.arena_seq
        self.arena_seq += _round(per)
        return off

    def _delay_first(self, src: int) -> str:
        """The value a delay edge from ``src`` delivers at t = 0: the carried state, or zeros."""
        per = self.elems(src)
        off = self.state_entry((src, "delay"), per, f"last step of %{src}, read by a delay edge")
        self._zeros = max(self._zeros, per)
        return f"(s_in ? s_in + B * {off} : zeros)"

    def _row_op(self, n: int, ins: list[str], out: str, rows: str) -> list[str]:
        g = self.g
        op, attrs = g.op(n), g.attrs(n)
        src = self.in_edges(n)[0].src
        ish, osh = self.shape(src), self.shape(n)
        p = self.params(n) if op != "voting" and op not in ("avgpool2d", "maxpool2d",
                                                              "adaptive_avgpool2d") else {}  # fmt: skip
        names = self.source_names(n)
        x = ins[0]
        if op == "linear":
            k, m = ish[-1], osh[-1]
            outer = _prod(ish[:-1])
            how = "folded with its BatchNorm (fold_bn)" if "bn_mean" in names else ""
            w = self.tensor(f"n{n}.weight", self.f32(n, "weight", p["weight"]),
                            self._what(n, "weight", names, how))  # fmt: skip
            b = "nullptr"
            if "bias" in p:
                b = self.tensor(f"n{n}.bias", self.f32(n, "bias", p["bias"]),
                                self._what(n, "bias", names, how))  # fmt: skip
            # torch's F.linear adds the bias inside the GEMM (addmm) for 2-d and 3-d inputs,
            # after it (matmul, then add) for more dimensions
            after = "1" if len(ish) + 1 > 3 else "0"
            return [
                f"SNNCC_CHECK(rt_linear(rt, {x}, {rows} * {outer}, {k}, {w}, {b}, {m}, {after}, {out}));"
            ]
        if op in ("conv1d", "conv2d"):
            return self._conv(n, x, out, rows, ish, osh, p, names, attrs)
        if op == "batchnorm":
            return self._batchnorm(n, x, out, rows, ish, p, names, attrs)
        if op in ("avgpool2d", "maxpool2d", "adaptive_avgpool2d"):
            return self._pool(n, x, out, rows, ish, osh, attrs)
        if op == "voting":
            k = int(attrs["voting_size"])
            outer = _prod(ish[:-1])
            return [
                f"SNNCC_CHECK(rt_voting(rt, {x}, {rows} * {outer}, {ish[-1]}, {k}, {osh[-1]}, {out}));"
            ]
        raise _refuse(g, n, "no row implementation")  # pragma: no cover - DEPLOY_OPS covers it

    def _what(self, n: int, role: str, names: dict[str, str], how: str = "") -> str:
        src = names.get(role, role)
        node = self.g.node(n).get("name") or ""
        return (
            f"%{n} {self.g.op(n)} {role}"
            + (f" ({node})" if node else "")
            + (f" = {src!r}" + (f" {how}" if how else ""))
        )

    def _conv(self, n, x, out, rows, ish, osh, p, names, attrs) -> list[str]:
        g = self.g
        two = g.op(n) == "conv2d"

        def pair(v: Any) -> tuple[int, int]:
            if isinstance(v, str):
                raise _refuse(g, n, f"padding={v!r}: give explicit sizes")
            v = list(v) if isinstance(v, (list, tuple)) else [v]
            if two:
                return (int(v[0]), int(v[-1])) if len(v) in (1, 2) else (int(v[0]), int(v[1]))
            return 1, int(v[0])

        if two:
            cin, h, wd = ish
            cout, oh, ow = osh
        else:
            (cin, wd), h = ish, 1
            (cout, ow), oh = osh, 1
        wt = p["weight"]
        kh, kw = (int(wt.shape[2]), int(wt.shape[3])) if two else (1, int(wt.shape[2]))
        sh, sw = pair(attrs["stride"])
        ph, pw = pair(attrs["padding"])
        dh, dw = pair(attrs["dilation"])
        if not two:
            sh, ph, dh = 1, 0, 1
        groups = int(attrs["groups"])
        how = "folded with its BatchNorm (fold_bn)" if "bn_mean" in names else ""
        w = self.tensor(
            f"n{n}.weight", self.f32(n, "weight", wt), self._what(n, "weight", names, how)
        )
        b = "nullptr"
        if "bias" in p:
            b = self.tensor(f"n{n}.bias", self.f32(n, "bias", p["bias"]),
                            self._what(n, "bias", names, how))  # fmt: skip
        geo = (
            f"{{{cin}, {h}, {wd}, {cout}, {oh}, {ow}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}, "
            f"{dh}, {dw}, {groups}}}"
        )
        return [
            "{  // cin, h, w, cout, oh, ow, kh, kw, stride, padding, dilation, groups",
            f"    static const snncc::ConvGeometry geo = {geo};",
            f"    SNNCC_CHECK(rt_conv2d(rt, {x}, {rows}, geo, {w}, {b}, {out}));",
            "}",
        ]

    def _batchnorm(self, n, x, out, rows, ish, p, names, attrs) -> list[str]:
        """Eval BatchNorm as torch's CPU kernel computes it: y = fma(x, alpha, beta) per channel,
        alpha = (1 / sqrt(var + eps)) * weight (fp32, each op rounding once), beta taken from
        torch itself (the same function on zeros: fma(0, alpha, beta) = beta exactly)."""
        import torch
        import torch.nn.functional as F

        c, inner = ish[0], _prod(ish[1:])
        eps = float(attrs["eps"])
        mean, var = p["running_mean"].float(), p["running_var"].float()
        weight = p.get("weight")
        f = np.float32
        inv = f(1.0) / np.sqrt(var.numpy() + f(eps))
        alpha = inv * (weight.numpy() if weight is not None else f(1.0))
        zeros = torch.zeros((1, c, *([1] * (len(ish) - 1))))
        beta = F.batch_norm(zeros, mean, var, weight, p.get("bias"), False, 0.0, eps)
        a = self.tensor(f"n{n}.scale", alpha, self._what(n, "running_var", names,
                        "as 1/sqrt(var + eps) * weight"))  # fmt: skip
        bt = self.tensor(f"n{n}.shift", beta.reshape(c).numpy(),
                         self._what(n, "running_mean", names, "as torch's shift"))  # fmt: skip
        return [f"SNNCC_CHECK(rt_batchnorm(rt, {x}, {rows}, {c}, {inner}, {a}, {bt}, {out}));"]

    def _pool(self, n, x, out, rows, ish, osh, attrs) -> list[str]:
        g = self.g
        if len(ish) not in (2, 3):
            raise _refuse(g, n, f"pooling over a per-sample shape {ish}; [C, H, W] or [H, W]")
        c, h, w = ish if len(ish) == 3 else (1, *ish)
        oh, ow = osh[-2:]
        op = g.op(n)
        if op == "adaptive_avgpool2d":
            if (oh, ow) == (1, 1):
                self.notes.append(
                    f"%{n} adaptive_avgpool2d to 1x1: torch computes a mean (its own summation "
                    "order); the deployed model sums row by row: results within rounding"
                )
            return [
                f"SNNCC_CHECK(rt_adaptive_avgpool2d(rt, {x}, {rows} * {c}, {h}, {w}, {oh}, {ow}, {out}));"
            ]

        def pair(v: Any) -> tuple[int, int]:
            v = list(v) if isinstance(v, (list, tuple)) else [v]
            return (int(v[0]), int(v[-1]))

        kh, kw = pair(attrs["kernel_size"])
        stride = attrs.get("stride")
        sh, sw = pair(stride) if stride not in (None, [], ()) else (kh, kw)
        ph, pw = pair(attrs["padding"])
        if op == "maxpool2d":
            dh, dw = pair(attrs.get("dilation", 1))
            geo = f"{{{h}, {w}, {oh}, {ow}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}, {dh}, {dw}, 1, 0}}"
            fn = "rt_maxpool2d"
        else:
            div = attrs.get("divisor_override")
            inc = 1 if attrs.get("count_include_pad", True) else 0
            geo = (
                f"{{{h}, {w}, {oh}, {ow}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}, 1, 1, {inc}, "
                f"{int(div) if div else 0}}}"
            )
            fn = "rt_avgpool2d"
        return [
            "{  // h, w, oh, ow, kernel, stride, padding, dilation, count_include_pad, divisor",
            f"    static const snncc::PoolGeometry geo = {geo};",
            f"    SNNCC_CHECK({fn}(rt, {x}, {rows} * {c}, geo, {out}));",
            "}",
        ]

    def _lead_op(self, n: int, ins: list[str], out: str, rows: str) -> list[str]:
        """Element-wise and data-movement ops over ``rows`` samples."""
        g = self.g
        op, attrs = g.op(n), g.attrs(n)
        osh = self.shape(n)
        total = self.elems(n)
        edges = self.in_edges(n)
        if op in VIEW_OPS:
            return [f"SNNCC_CHECK(rt_copy(rt, {out}, {ins[0]}, {rows} * {total}));"]
        if op == "scale":
            kind = {"mul": 0, "div": 1}[attrs["op"]]
            lit = _f32_literal(float(attrs["value"]))
            return [f"SNNCC_CHECK(rt_scale(rt, {ins[0]}, {rows} * {total}, {kind}, {lit}, {out}));"]
        if op in ("add", "mul"):
            code = 0 if op == "add" else 1
            lines = []
            acc = ins[0]
            for j in range(1, len(ins)):
                a_shape = osh if j > 1 else self.shape(edges[0].src)
                lines += self._binary(n, code, acc, a_shape, ins[j], self.shape(edges[j].src),
                                      out, osh, rows)  # fmt: skip
                acc = out
            return lines
        if op == "cat":
            rank = len(osh) + 1
            d = int(attrs["dim"])
            d = d + rank if d < 0 else d
            if d == 0:
                raise _refuse(g, n, "cat along the batch dimension")
            outer = _prod(osh[: d - 1])
            lines, off = [], 0
            width = _prod(osh[d - 1 :])
            for e, a in zip(edges, ins):
                inner = _prod(self.shape(e.src)[d - 1 :])
                lines.append(
                    f"SNNCC_CHECK(rt_copy_blocks(rt, {out} + {off}, {width}, {a}, {inner}, "
                    f"{rows} * {outer}, {inner}));"
                )
                off += inner
            return lines
        raise _refuse(g, n, "no element-wise implementation")  # pragma: no cover

    def _binary(self, n, code, a, a_shape, b, b_shape, out, osh, rows) -> list[str]:
        if tuple(a_shape) == tuple(osh) and tuple(b_shape) == tuple(osh):
            return [f"SNNCC_CHECK(rt_binary(rt, {code}, {a}, {b}, {rows} * {_prod(osh)}, {out}));"]
        sa, sb = _bcast_strides(a_shape, osh), _bcast_strides(b_shape, osh)
        if sa is None or sb is None or len(osh) > MAX_RANK:
            raise _refuse(self.g, n, f"inputs {a_shape} and {b_shape} do not broadcast to {osh}")
        dims = ", ".join(map(str, osh))
        return [
            "{",
            f"    static const snncc::Broadcast bc = {{{len(osh)}, {{{dims}}}, "
            f"{{{', '.join(map(str, sa))}}}, {{{', '.join(map(str, sb))}}}, "
            f"{_prod(a_shape)}, {_prod(b_shape)}}};",
            f"    SNNCC_CHECK(rt_binary_broadcast(rt, {code}, {a}, {b}, {rows}, bc, {out}));",
            "}",
        ]

    # ----------------------------------------------------------- neurons
    def _neuron_port_needs_copy(self, n: int, e: Edge) -> bool:
        return tuple(self.shape(e.src)) != tuple(self.shape(n))

    def _kernel(self, n: int) -> KernelUse:
        spec = NeuronSpec.from_dict(self.g.attrs(n)["neuron"])
        attrs = self.g.attrs(n)
        pro, epi = attrs.get("prologue") or [], attrs.get("epilogue") or []
        from snncc.backends.cpu.forms import check_node_params

        check_node_params(spec, list(self.g.node(n)["params"]), f"neuron %{n}")
        info = neuron_kernel_info(spec, pro, epi)
        use = self.kernels.setdefault(info.tag, KernelUse(spec, pro, epi, info))
        return use

    def _quantities(self, n: int, info: NeuronKernelInfo) -> dict[str, tuple[str, int]]:
        """Each quantity's C pointer and stride, precomputed with the backends' torch code."""
        from snncc.backends.cpu.autograd import flat_quantity

        p = self.ctx.neuron_params(n)
        sample = self.shape(n)
        names = self.source_names(n)
        out = {}
        for q, role in zip(info.param_args, info.param_roles):
            try:  # one value, or one per neuron of a sample (never one per batch row)
                flat, stride = flat_quantity(p[q], (1, *sample), q)
            except SnnccError as exc:
                raise _refuse(self.g, n, str(exc)) from None
            src = names.get(role, role)
            what = f"%{n} neuron quantity {q} (derived from {src!r} by the form's derive graph)"
            ptr = self.tensor(f"n{n}.q.{q}", flat.numpy(), what)
            if stride:
                per = _prod(sample)
                buf = f"q{n}_{q}"
                self.batch_buffer(buf, per, f"%{n} quantity {q} for every sample")
                out[q] = (buf, per)
                self._qexp.append((buf, ptr, per))
            else:
                out[q] = (ptr, 0)
        return out

    def _neuron(self, n: int, step: str | None, state_ptrs: dict | None = None) -> list[str]:
        """One call of node n's forward kernel: all T steps (step None) or step ``step``."""
        use = self._kernel(n)
        info = use.info
        qs = self._quantities(n, info)
        sample = self.elems(n)
        edges = self.in_edges(n)
        by_port = {e.port: e for e in edges}
        lines: list[str] = []
        vals: dict[str, str] = {}
        seq = step is None

        def port_ptr(port: int) -> str:
            e = by_port[port]
            if not seq and tuple(self.shape(e.src)) != tuple(self.shape(n)):
                raise _refuse(
                    self.g,
                    n,
                    f"input {port} of shape {self.shape(e.src)} would be broadcast "
                    f"to {self.shape(n)} inside a recurrent loop; not supported",
                )
            if seq:
                if self._neuron_port_needs_copy(n, e):
                    return self._expand_port(n, e, lines)
                return self.var(e.src)
            return self._step_value(e, step)

        vals["x"] = port_ptr(0)
        if tuple(self.shape(by_port[0].src)) != tuple(self.shape(n)):
            raise _refuse(self.g, n, f"input shape {self.shape(by_port[0].src)} != output shape")
        for j, p in enumerate(info.ports[1:], start=1):
            vals[p] = port_ptr(j)
        for j, port in enumerate(info.add_ports):
            vals[f"a{j}"] = port_ptr(port)
        for var in info.state_vars:
            off = self.state_entry((n, var), sample, f"%{n} neuron state {var}")
            if state_ptrs is None:
                vals[f"{var}0"] = f"(s_in ? s_in + B * {off} : nullptr)"
                vals[f"{var}_last"] = f"(s_next + B * {off})"
            else:
                vals[f"{var}0"], vals[f"{var}_last"] = state_ptrs[var]
        for q in info.param_args:
            vals[f"p_{q}"], stride = qs[q]
            vals[f"st_{q}"] = "1" if stride else "0"
        vals["out"] = self.var(n) if seq else self.at(n, step)
        for name in ("h_seq", *(f"{v}_seq" for v in info.state_vars)):
            vals[name] = "nullptr"  # inference: nothing saved for a backward
        vals["T"] = "(int)T" if seq else "1"
        vals["N"] = f"B * {sample}"
        args = ", ".join(vals[a] for a, _ in info.forward_args)
        spec_line = comment(f"{use.spec.charge} {use.spec.reset} -> {info.forward_name}")
        lines.append(f"// %{n}: {spec_line}")
        lines.append(f"SNNCC_CHECK(snncc_fwd_{info.tag}_launch(rt, {args}));")
        return lines

    def _expand_port(self, n: int, e: Edge, lines: list[str]) -> str:
        """A neuron's extra input broadcast to its shape (a layer outside loops: no delay)."""
        key = ("tmp", n, e.port)
        if key not in self.slot_of:
            self.slot_of[key] = self._extra_slot(self.elems(n))
        tmp = f"b{n}_{e.port}"
        lines.append(f"float* const {tmp} = arena + TB * {self.slot_of[key]};")
        src = self.var(e.src)
        strides = _bcast_strides(self.shape(e.src), self.shape(n))
        if strides is None:
            raise _refuse(
                self.g,
                n,
                f"input {e.port} of shape {self.shape(e.src)} does not broadcast to "
                f"{self.shape(n)}",
            )
        osh = self.shape(n)
        zero = ", ".join("0" for _ in osh)
        lines += [
            "{",
            f"    static const snncc::Broadcast bc = {{{len(osh)}, {{{', '.join(map(str, osh))}}}, "
            f"{{{', '.join(map(str, strides))}}}, {{{zero}}}, {self.elems(e.src)}, 0}};",
            f"    SNNCC_CHECK(rt_expand(rt, {src}, TB, bc, {tmp}));",
            "}",
        ]
        return tmp

    def _step_value(self, e: Edge, step: str) -> str:
        """Inside a recurrent group: what edge e delivers at step ``step``."""
        if not e.delay:
            return self.at(e.src, step)
        per = self.elems(e.src)
        prev = f"({self.var(e.src)} + ({step} - 1) * B * {per})"
        return f"({step} > 0 ? {prev} : {self._delay_first(e.src)})"

    # --------------------------------------------------------- recurrent
    def _recurrent(self, nodes: list[int]) -> list[str]:
        g = self.g
        lines: list[str] = []
        for n in nodes:
            lines += self._declare(n)
        neurons = [n for n in nodes if g.op(n) == "neuron"]
        ptrs: dict[int, dict[str, tuple[str, str]]] = {}
        for n in neurons:
            info = self._kernel(n).info
            sample = self.elems(n)
            ptrs[n] = {}
            for var in info.state_vars:
                off = self.state_entry((n, var), sample, f"%{n} neuron state {var}")
                a = self.batch_buffer(f"r{n}_{var}_a", sample, f"%{n} {var} (even steps)")
                b = self.batch_buffer(f"r{n}_{var}_b", sample, f"%{n} {var} (odd steps)")
                cur = f"s{n}_{var}"
                lines.append(f"const float* {cur} = s_in ? s_in + B * {off} : nullptr;")
                lines.append(f"float* const {cur}_a = {a};")
                lines.append(f"float* const {cur}_b = {b};")
                ptrs[n][var] = (cur, f"((t & 1) ? {cur}_b : {cur}_a)")
        body: list[str] = []
        for n in nodes:
            op = g.op(n)
            edges = self.in_edges(n)
            if op == "neuron":
                body += self._neuron(n, "t", ptrs[n])
                for cur, nxt in ptrs[n].values():
                    body.append(f"{cur} = {nxt};")
                continue
            if op in VIEW_OPS and not edges[0].delay:
                continue  # the same memory as its input
            ins = [self._step_value(e, "t") for e in edges]
            out = self.at(n, "t")
            if op in ("add", "mul", "scale", "cat", *VIEW_OPS):
                body += self._lead_op(n, ins, out, "B")
            else:
                body += self._row_op(n, ins, out, "B")
        lines.append("for (int64_t t = 0; t < T; ++t) {")
        lines += ["    " + b for b in body]
        lines.append("}")
        for n in neurons:
            for var, (cur, _) in ptrs[n].items():
                off = self.state_of[(n, var)]
                lines.append(
                    f"SNNCC_CHECK(rt_copy(rt, s_next + B * {off}, {cur}, B * {self.elems(n)}));"
                )
        return lines

    # ------------------------------------------------------------ finish
    def _finish(self) -> list[str]:
        g = self.g
        lines = []
        off = 0
        for o in g.meta["outputs"]:
            per = self.elems(o)
            if self.in_y.get(self.root[o]) != off:  # the input's memory, or another output's
                lines.append(
                    f"SNNCC_CHECK(rt_copy(rt, y + TB * {off}, {self.var(o)}, TB * {per}));"
                )
            off += per
        for s in self.delay_srcs:
            per = self.elems(s)
            so = self.state_of.get((s, "delay"))
            if so is None:
                so = self.state_entry((s, "delay"), per, f"last step of %{s}, read by a delay edge")
            lines.append(
                f"SNNCC_CHECK(rt_copy(rt, s_next + B * {so}, {self.var(s)} + (T - 1) * B * "
                f"{per}, B * {per}));"
            )
        return lines

    def prelude(self) -> list[str]:
        """Statements before the first group: per-call buffers (quantities, zeros)."""
        lines = []
        for buf, ptr, per in self._qexp:
            lines.insert(0, f"float* const {buf} = {self._batch_ptr(buf)};")
            lines.append(f"SNNCC_CHECK(rt_repeat(rt, {buf}, {ptr}, {per}, B));")
        z = self._zeros
        if z:
            lines.append(f"float* const zeros = {self.batch_buffer('zeros', z, 'zeros')};")
            lines.append(f"SNNCC_CHECK(rt_zero(rt, zeros, B * {z}));")
        return lines

    def _batch_ptr(self, name: str) -> str:
        off = 0
        for nm, per, _ in self.batch_bufs:
            if nm == name:
                return f"arena + TB * kArenaSeq + B * {off}"
            off += _round(per)
        raise KeyError(name)


def _round(n: int) -> int:
    return max(ALIGN, -(-n // ALIGN) * ALIGN)


def _f32_literal(v: float) -> str:
    from snncc.backends.kernels import f32_literal

    return f32_literal(v)


def model_id(lowered: Lowered) -> str:
    """A hash of everything the generated code and the weights' layout depend on."""
    body = {
        "groups": [(g.title, g.lines) for g in lowered.groups],
        "tensors": [(t.name, list(t.array.shape)) for t in lowered.tensors],
        "kernels": sorted(lowered.kernels),
        "state": [(s.name, s.offset, s.count) for s in lowered.state],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


def lower(graph: Graph) -> Lowered:
    """The deployed model of a scheduled graph (see the module docstring)."""
    low = _Lowering(graph)
    lowered = low.run()
    pre = low.prelude()
    if pre:
        lowered.groups.insert(0, GroupCode("per-call buffers", pre))
    # the prelude may add batch buffers (zeros): sizes are final only now
    lowered.arena_seq, lowered.arena_batch = low.arena_seq, low.arena_batch
    lowered.state_per_sample = low._state_off
    lowered.model_id = model_id(lowered)
    return lowered
