"""Lower a scheduled graph to the text of a standalone jax module.

The split of work (ARCHITECTURE.md, "habits"): this file decides *what* code
each node needs (variable names, normalised attribute literals, which values
cross a segment boundary, what a scan carries); the Jinja2 templates in
``snncc.templates/jax`` decide *how* that code reads. Templates call no
Python beyond the data handed to them.

Execution model of the generated ``forward(params, inputs, state, key=None)``:

- Every value crossing a segment boundary is time-major ``x<id>``: [T, B, ...],
  except a *static* value (no time axis: a static input, what depends only on
  it, a reduction over time; :mod:`snncc.ir.static`), which is ``[B, ...]``
  everywhere and computed once; ``repeat_time`` tiles it over the T steps.
- A *flat* segment (a ``layer`` group) merges its inputs to [T*B, ...]
  (``f<id>``), runs each op once over the whole sequence (one GEMM / conv
  instead of T), and splits the values others need back to [T, B, ...].
- A *scan* segment (a ``neuron`` or ``recurrent`` group) is one ``lax.scan``
  over t whose step function runs every node of the group on [B, ...]
  values (``s<id>``); it carries every state variable of each neuron's form
  (membrane ``v<id>``, synaptic current ``syn<id>``, previous spike
  ``sprev<id>``) and the delayed values of recurrent edges (``d<id>``).
- A form's second input port (``rec`` of ``snntorch_rleaky`` /
  ``norse_lif_recurrent``) is the node's port-1 value, computed inside the
  same scan by the recurrent linear/conv node from the delayed spike.
- Neuron constants that come from params (snnTorch ``beta.clamp(0, 1)``,
  Norse ``dt * tau_mem_inv``, thresholds, ...) are prepared once per call,
  outside the scans, from the source params, so ``jax.grad`` reaches them.

Naming: user-controlled strings (module paths, state_dict keys) reach the
generated code only as ``repr()``'d string literals or sanitised comments.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jinja2
import numpy as np

from snncc.backends.kernels import template_environment
from snncc.errors import IRError, SnnccError, UnsupportedError
from snncc.ir import expr as E
from snncc.ir.expr import Namer
from snncc.ir.graph import Edge, Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.neurons import NeuronGraph, build
from snncc.ir.ops import ACTIVATIONS, OPS, REDUCTIONS
from snncc.ir.resample import nearest_indices
from snncc.ir.schedule import groups_of
from snncc.ir.static import static_nodes, time_steps

from . import runtime
from .lower import PY_RESERVED, SurrogateKey, emit, surrogate_function, surrogates_of

_SANITISE = re.compile(r"[^A-Za-z0-9_.\-\[\]/:()=,<>+* ]")


def sanitise(text: Any, limit: int = 80) -> str:
    """A string safe inside a ``#`` comment: no newlines, quotes or odd characters."""
    out = _SANITISE.sub("_", str(text))
    return out if len(out) <= limit else out[: limit - 3] + "..."


def flt(value: Any) -> str:
    """An exact Python literal for a float constant (``repr`` round-trips doubles)."""
    v = float(value)
    if math.isfinite(v):
        return repr(v)
    return f"float({str(v)!r})"


def lit(value: Any) -> str:
    """A Python literal for a normalised attribute (ints, bools, None, tuples thereof)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return flt(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(lit(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise IRError(f"attribute value {value!r} has no literal form in generated code")


def tup(items: Any) -> str:
    """A Python tuple display of already-rendered expressions: ``()``, ``(a,)``, ``(a, b)``."""
    items = [str(i) for i in items]
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


#: generated variable name prefix of some neuron state variables (``v`` keeps the
#: historical ``v<id>``; ``s<id>`` and ``i<id>`` are taken by node values and prologues);
#: any other state variable ``w`` of a form is ``st_w<id>``
STATE_PREFIX = {"v": "v", "i": "syn", "s": "sprev"}


def state_var(n: int, var: str) -> str:
    """The generated name of neuron ``n``'s state variable ``var`` inside a scan."""
    return f"{STATE_PREFIX.get(var, f'st_{var}')}{n}"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The template environment: StrictUndefined, templates loaded from the installed package."""
    env = template_environment("jax").overlay()
    env.filters["pyrepr"] = repr
    env.filters["tup"] = tup
    env.globals["raise_unknown_op"] = _no_template_for
    return env


def _no_template_for(op: str) -> None:
    """ops.py.j2's last branch: an IR op the template has no statement for."""
    raise UnsupportedError(f"op {op!r} has no jax statement in templates/jax/ops.py.j2")


# ------------------------------------------------------------------- schedule
@dataclass
class Segment:
    """A run of nodes compiled together: ``flat`` (whole sequence) or ``scan`` (over t)."""

    kind: str
    group: Any
    group_kind: str
    nodes: list[int] = field(default_factory=list)


def segments_of(graph: Graph) -> list[Segment]:
    """The IR's schedule (:func:`snncc.ir.schedule.groups_of`) as segments, one per group:
    a ``layer`` group is a flat segment, a ``neuron`` or ``recurrent`` group a scan;
    input and output nodes need no code, so a group of nothing else has no segment."""
    order = {n: i for i, n in enumerate(graph.topo_order())}
    segs: list[Segment] = []
    for g in groups_of(graph):
        kind = g.get("kind", "layer")
        members = sorted(
            (n for n in g["nodes"] if graph.op(n) not in ("input", "output")),
            key=order.__getitem__,
        )
        if kind not in ("layer", "neuron", "recurrent"):
            raise IRError(f"group {g.get('id')!r} has unknown kind {kind!r}")
        if kind == "layer" and any(graph.op(n) == "neuron" for n in members):
            raise IRError(f"layer group {g.get('id')!r} holds a neuron; neurons run in scans")
        if members:
            segs.append(Segment("flat" if kind == "layer" else "scan", g.get("id"), kind, members))
    return segs


# -------------------------------------------------------------------- render
class Renderer:
    """Builds the template context for one graph and renders the module text."""

    def __init__(self, graph: Graph, options: dict[str, Any]) -> None:
        self.g = graph
        self.options = options
        self.segs = segments_of(graph)
        self.seg_of = {n: i for i, s in enumerate(self.segs) for n in s.nodes}
        self.inputs = sorted(graph.meta["inputs"], key=lambda n: graph.attrs(n).get("index", 0))
        self.outputs = sorted(graph.meta["outputs"], key=lambda n: graph.attrs(n).get("index", 0))
        if not self.inputs:
            raise IRError("the graph has no input node (graph.meta['inputs'] is empty)")
        if not self.outputs:
            raise IRError("the graph has no output node (graph.meta['outputs'] is empty)")
        for n in self.inputs:
            self.seg_of[n] = -1
        self.static = static_nodes(graph)
        self.steps = time_steps(graph)
        # producers some consumer reads one step late: they keep a "delay" state
        self.delayed: set[int] = set()
        for n in graph.nx.nodes:
            for e in graph.in_edges(n):
                if e.delay not in (0, 1):
                    raise UnsupportedError(
                        f"edge %{e.src} -> %{e.dst} has delay {e.delay}; the jax backend "
                        "supports delays of 0 and 1 steps"
                    )
                if e.delay == 1:
                    self.delayed.add(e.src)
        self.new_state: list[str] = []
        #: (surrogate, alpha, params) -> the module function computing its gradient
        self.surrogates: dict[SurrogateKey, str] = {}
        #: every name the generated module defines at module or function level
        self.names = Namer(PY_RESERVED)
        #: whether the module draws random numbers (training-mode dropout) and so needs a key
        self.uses_key = False
        #: how neuron groups run: "scan" (lax.scan) or "pallas" (a Pallas kernel pair;
        #: ``pallas_interpret``: through Pallas' interpreter, on a CPU)
        self.kernels = options.get("neuron_kernels", "scan")
        self.interpret = bool(options.get("pallas_interpret", False))
        #: whether neuron_kernels was the user's explicit choice (then a group Pallas
        #: cannot run is an error, not a scan)
        self.explicit = bool(options.get("neuron_kernels_explicit", False))
        #: the Pallas kernels the module defines at module level (rendered before forward)
        self.kernel_defs: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- helpers
    def label(self, n: int) -> str:
        d = self.g.node(n)
        shape = d.get("shape")
        shape_s = "" if shape is None else " : [" + ",".join(str(s) for s in shape) + "]"
        name = f" {sanitise(d.get('name'))!s}" if d.get("name") else ""
        return f"%{n} {d['op']}{name}{shape_s}"

    def shape_expr(self, n: int) -> str | None:
        """The per-step shape of node ``n`` as code (batch -> ``B``), or None if unknown."""
        shape = self.g.node(n).get("shape")
        if not shape:
            return None
        dims = []
        for s in shape:
            if s == "B":
                dims.append("B")
            elif isinstance(s, (int, np.integer)):
                dims.append(str(int(s)))
            else:
                return None
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    def need_shape(self, n: int, why: str) -> str:
        expr = self.shape_expr(n)
        if expr is None:
            raise IRError(
                f"node %{n} ({sanitise(self.g.node(n).get('name'))}) has no per-step shape; "
                f"the jax backend needs it to {why}"
            )
        return expr

    def prev_expr(self, p: int, like: str | None) -> str:
        """The producer's value at t = -1: from ``state`` or zeros."""
        if like is not None:
            return f'rt.fresh(state, {p}, "delay", {like}, 0.0)'
        return f'rt.fresh_shape(state, {p}, "delay", {self.need_shape(p, "start its delay")}, 0.0)'

    def users_outside(self, n: int, seg: int) -> bool:
        """Whether ``n``'s value is read outside segment ``seg`` (or by an output)."""
        for e in self.g.users(n):
            if self.g.op(e.dst) == "output" or self.seg_of.get(e.dst) != seg:
                return True
        return False

    # ------------------------------------------------------------ parameters
    def param_ref(self, n: int, role: str) -> str | None:
        name = self.g.node(n)["params"].get(role)
        if name is None:
            return None
        if name not in self.g.params:
            raise IRError(f"node %{n} param {role!r} names {name!r}, which is not in graph.params")
        return f"params[{name!r}]"

    def prepare(self, n: int) -> dict[str, Any] | None:
        """How node ``n``'s parameters are prepared once per call (BN fold, PLIF k)."""
        op = self.g.op(n)
        refs = {r: self.param_ref(n, r) for r in self.g.node(n)["params"]}
        if op in ("linear", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"):
            fold = all(refs.get(r) for r in ("bn_mean", "bn_var"))
            if any(r.startswith("bn_") for r in refs) and not fold:
                raise IRError(
                    f"node %{n} has a partial folded BatchNorm (needs bn_mean and bn_var)"
                )
            return {
                "kind": "fold" if fold else "plain",
                "id": n,
                "label": self.label(n),
                "w": refs["weight"],
                "b": refs.get("bias") or "None",
                "bn_weight": refs.get("bn_weight") or "None",
                "bn_bias": refs.get("bn_bias") or "None",
                "bn_mean": refs.get("bn_mean") or "None",
                "bn_var": refs.get("bn_var") or "None",
                "eps": flt(self.g.attrs(n).get("bn_eps", 1e-5)),
            }
        if op in ("layernorm", "groupnorm"):
            return {
                "kind": "plain",
                "id": n,
                "label": self.label(n),
                "w": refs.get("weight") or "None",
                "b": refs.get("bias") or "None",
            }
        if op == "batchnorm":
            return {
                "kind": "batchnorm",
                "id": n,
                "label": self.label(n),
                "mean": refs["running_mean"],
                "var": refs["running_var"],
                "weight": refs.get("weight") or "None",
                "bias": refs.get("bias") or "None",
            }
        if op != "neuron":
            return None
        g = self.check_neuron(n)
        if not g.quantities:
            return None
        refs = {f"p:{r}": self.param_ref(n, r) for r in self.g.node(n)["params"]}
        inputs = {k: v for k, v in refs.items() if v is not None}
        try:
            out = emit(
                g.derive, g.quantities.values(), inputs, self.names, self.surrogates, f"_{n}"
            )
        except IRError as e:
            raise IRError(f"{self.where(n)}: {e}") from None
        lines = [
            {"var": var, "expr": expr, "what": ""}
            for var, expr in (ln.split(" = ", 1) for ln in out.lines)
        ]
        for q, i in g.quantities.items():
            lines.append({"var": self.quantity(n, q), "expr": out.refs[i], "what": f"quantity {q}"})
        return {"kind": "neuron", "id": n, "label": self.label(n), "lines": lines}

    def quantity(self, n: int, q: str) -> str:
        """The generated name of neuron ``n``'s per-call quantity ``q`` (``q4_b``)."""
        return f"q{n}_{q}"

    # ----------------------------------------------------------------- nodes
    def spec(self, n: int) -> NeuronSpec:
        return NeuronSpec.from_dict(self.g.attrs(n)["neuron"])

    def node_code(self, n: int, ins: list[str], out: str, mode: str) -> dict[str, Any]:
        """The template data for one non-neuron node; ``mode`` is "flat" or "step"."""
        op = self.g.op(n)
        if op not in OPS:
            raise IRError(f"node %{n} has unknown op {op!r}")
        a = self.g.attrs(n)
        d: dict[str, Any] = {"id": n, "op": op, "ins": ins, "out": out, "label": self.label(n)}
        d["a"] = self._attrs(n, op, a, mode)
        return d

    def _attrs(self, n: int, op: str, a: dict[str, Any], mode: str) -> dict[str, str]:
        where = f"node %{n} ({sanitise(self.g.node(n).get('name'))})"
        if op in ("conv1d", "conv2d"):
            nd = 1 if op == "conv1d" else 2
            if a.get("padding_mode", "zeros") != "zeros":
                raise UnsupportedError(
                    f"{where}: conv padding_mode {a['padding_mode']!r} is not supported "
                    "by the jax backend (only 'zeros')"
                )
            w = self.g.param(n, "weight")
            kernel = tuple(int(k) for k in w.shape[2:])
            dil = runtime._tuple(a["dilation"], nd)
            return {
                "stride": lit(runtime._tuple(a["stride"], nd)),
                "padding": lit(tuple(runtime.conv_padding(a["padding"], kernel, dil))),
                "dilation": lit(dil),
                "groups": lit(int(a["groups"])),
            }
        if op == "groupnorm":
            return {"groups": lit(int(a["num_groups"])), "eps": flt(a["eps"])}
        if op == "pad":
            return {"pads": lit(tuple(int(p) for p in a["pads"])), "value": flt(a["value"])}
        if op == "upsample_nearest":
            shape = self.g.node(self.g.inputs(n)[0])["shape"]
            maps = nearest_indices(shape[2:], a["size"], a.get("scale_factor"))
            return {"maps": lit(tuple(tuple(m) for m in maps))}
        if op in ("conv_transpose1d", "conv_transpose2d"):
            nd = 1 if op == "conv_transpose1d" else 2
            return {
                k: lit(runtime._tuple(a[k], nd))
                for k in ("stride", "padding", "output_padding", "dilation")
            } | {"groups": lit(int(a["groups"]))}
        if op == "batchnorm":
            training = bool(a.get("training", False))
            stats = a.get("stats", "sequence")
            if stats not in ("sequence", "step"):
                raise IRError(f"{where}: batchnorm stats {stats!r} is not 'sequence' or 'step'")
            if training and stats == "sequence" and mode == "step":
                raise UnsupportedError(
                    f"{where}: a training-mode BatchNorm with statistics over the whole "
                    "sequence cannot run inside a recurrent scan (one step at a time)"
                )
            flat = mode == "flat" and n not in self.static
            groups = "T" if (training and stats == "step" and flat) else "1"
            return {"eps": flt(a["eps"]), "training": lit(training), "groups": groups}
        if op == "avgpool2d":
            return {
                "kernel": lit(runtime._tuple(a["kernel_size"], 2)),
                "stride": lit(runtime._tuple(a.get("stride") or a["kernel_size"], 2)),
                "padding": lit(runtime._tuple(a["padding"], 2)),
                "ceil_mode": lit(bool(a.get("ceil_mode", False))),
                "count_include_pad": lit(bool(a.get("count_include_pad", True))),
                "divisor_override": lit(
                    None if a.get("divisor_override") is None else int(a["divisor_override"])
                ),
            }
        if op == "maxpool2d":
            if a.get("return_indices"):
                raise UnsupportedError(f"{where}: maxpool2d return_indices=True is not supported")
            return {
                "kernel": lit(runtime._tuple(a["kernel_size"], 2)),
                "stride": lit(runtime._tuple(a.get("stride") or a["kernel_size"], 2)),
                "padding": lit(runtime._tuple(a["padding"], 2)),
                "dilation": lit(runtime._tuple(a.get("dilation", 1), 2)),
                "ceil_mode": lit(bool(a.get("ceil_mode", False))),
            }
        if op == "adaptive_avgpool2d":
            size = a["output_size"]
            size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
            return {"output_size": lit(tuple(None if s is None else int(s) for s in size))}
        if op == "flatten":
            start, end = int(a["start_dim"]), int(a["end_dim"])
            if start == 0:
                raise UnsupportedError(
                    f"{where}: flatten(start_dim=0) folds the batch into the features; the "
                    "jax backend keeps the batch dim (use start_dim >= 1)"
                )
            return {"start": lit(start), "end": lit(end)}
        if op == "reshape":
            shape = list(a["shape"])
            if not shape or shape[0] not in (-1, "B"):
                raise UnsupportedError(
                    f"{where}: reshape to {shape!r} does not keep the batch as its first dim "
                    "(written -1); the jax backend cannot run it"
                )
            return {"rest": lit(tuple(int(s) for s in shape[1:]))}
        if op == "dropout":
            p = float(a["p"])
            if not (a.get("training", False) and p > 0):
                return {"train": lit(False)}
            if mode == "step":
                raise UnsupportedError(
                    f"{where}: training-mode dropout (p={p:g}) inside a recurrent component "
                    "is not supported by the jax backend (it runs outside recurrences, or in "
                    "eval mode: call model.eval() before compiling)"
                )
            if not 0 <= p < 1:
                raise UnsupportedError(
                    f"{where}: dropout p={p:g}; the jax backend needs 0 <= p < 1"
                )
            self.uses_key = True
            shared = bool(a.get("shared_over_time", False))
            return {"train": lit(True), "p": flt(p), "shared": lit(shared)}
        if op == "scale":
            if a["op"] not in ("mul", "div"):
                raise IRError(f"{where}: scale op {a['op']!r} is not 'mul' or 'div'")
            return {"sym": "*" if a["op"] == "mul" else "/", "value": flt(a["value"])}
        if op == "cat":
            dim = int(a["dim"])
            if dim == 0:
                steps = "T" if mode == "flat" and n not in self.static else "1"
                return {"dim": "0", "batch": lit(True), "steps": steps}
            return {"dim": lit(dim), "batch": lit(False), "steps": "1"}
        if op == "add_scalar":
            return {"value": flt(a["value"])}
        if op == "permute":
            return {"perm": lit(tuple(int(d) for d in a["perm"]))}
        if op == "slice":
            index = ", ".join(
                [":"] * int(a["dim"]) + [f"{int(a['start'])}:{int(a['stop'])}:{int(a['step'])}"]
            )
            return {"index": index}
        if op in ("reduce", "time_reduce"):
            if a["op"] not in REDUCTIONS:
                raise IRError(f"{where}: reduction {a['op']!r} is not one of {list(REDUCTIONS)}")
            fn = {"sum": "jnp.sum", "mean": "jnp.mean", "amax": "jnp.max", "amin": "jnp.min"}
            out = {"fn": fn[a["op"]]}
            if op == "reduce":
                out["axes"] = lit(tuple(int(d) for d in a["dims"]))
                out["keepdims"] = lit(bool(a["keepdim"]))
            return out
        if op == "layernorm":
            return {
                "shape": lit(tuple(int(d) for d in a["normalized_shape"])),
                "eps": flt(a["eps"]),
            }
        if op == "activation":
            if a["fn"] not in ACTIVATIONS:
                raise IRError(f"{where}: activation {a['fn']!r} is not one of {list(ACTIVATIONS)}")
            return {"fn": a["fn"]}
        if op == "softmax":
            return {
                "fn": "jax.nn.log_softmax" if a.get("log") else "jax.nn.softmax",
                "dim": lit(int(a["dim"])),
            }
        if op == "repeat_time" and mode != "flat":
            raise IRError(f"{where}: repeat_time runs in a layer group (whole sequence)")
        if op == "voting":
            return {"size": lit(int(a["voting_size"]))}
        return {}

    def check_neuron(self, n: int) -> NeuronGraph:
        """The node's neuron graph, or the error naming what cannot be built, with the node."""
        try:
            g = build(self.spec(n))
        except SnnccError as e:
            raise type(e)(f"{self.where(n)}: {e}") from None
        for key in surrogates_of(g.step):
            if key not in self.surrogates:
                self.surrogates[key] = self.names.fresh(f"surrogate_{key[0]}")
        return g

    def where(self, n: int) -> str:
        return f"neuron %{n} ({sanitise(self.g.node(n).get('name'))})"

    def state_names(self, n: int) -> dict[str, str]:
        """State variable -> its generated name inside the scan (``v<id>``, ``syn<id>``, ...)."""
        return {var: state_var(n, var) for var in self.check_neuron(n).states}

    def neuron_code(self, n: int, ins: list[str], out: str) -> dict[str, Any]:
        """The template data for one neuron step: prologue, the form's step, state, epilogue."""
        g = self.check_neuron(n)
        where = self.where(n)
        _check_ports(g, ins, where)
        a = self.g.attrs(n)
        prologue = [self._fused(n, s, ins, where) for s in a.get("prologue", [])]
        x = f"i{n}" if prologue else ins[0]
        inputs = {f"s:{v}": state_var(n, v) for v in g.states}
        inputs.update({f"x:{p}": ins[j] for j, p in enumerate(g.ports)})
        inputs["x:x"] = x
        inputs.update({f"q:{q}": self.quantity(n, q) for q in g.quantities})
        results = {"out": g.outputs[g.out], **{f"state {v}": g.next_state[v] for v in g.states}}
        roots = [v.i for v in results.values() if isinstance(v, E.Val)]
        step = emit(g.step, roots, inputs, self.names, self.surrogates, f"_{n}")

        def ref(v: Any) -> str:
            return step.refs[v.i] if isinstance(v, E.Val) else f"jnp.full_like({x}, {flt(v)})"

        return {
            "id": n,
            "op": "neuron",
            "label": self.label(n),
            "summary": sanitise(self.spec(n).summary(), 120),
            "x": ins[0],
            "i": f"i{n}",
            "prologue": prologue,
            "epilogue": [self._fused(n, s, ins, where) for s in a.get("epilogue", [])],
            "lines": list(step.lines),
            "state_vars": [state_var(n, v) for v in g.states],
            "state_exprs": [ref(g.next_state[v]) for v in g.states],
            "out": out,
            "out_expr": ref(g.outputs[g.out]),
        }

    def _fused(self, n: int, step: dict[str, Any], ins: list[str], where: str) -> dict[str, str]:
        kind = step.get("kind")
        if kind == "scale":
            if step.get("op") not in ("mul", "div"):
                raise IRError(f"{where}: fused scale op {step.get('op')!r} is not 'mul' or 'div'")
            return {"sym": "*" if step["op"] == "mul" else "/", "operand": flt(step["value"])}
        if kind == "add":
            port = int(step["port"])
            if not 1 <= port < len(ins):
                raise IRError(
                    f"{where}: fused add reads port {port}, the node has {len(ins)} inputs"
                )
            return {"sym": "+", "operand": ins[port]}
        raise IRError(f"{where}: fused step kind {kind!r} is not 'scale' or 'add'")

    # -------------------------------------------------------------- segments
    def flat_segment(self, i: int, seg: Segment) -> dict[str, Any]:
        pre: list[str] = []
        merged: dict[tuple[int, int], str] = {}
        nodes = []
        inside = set(seg.nodes)
        for n in seg.nodes:
            node_pre: list[str] = []
            ins = []
            for e in self.g.in_edges(n):
                key = (e.src, e.delay)
                if key in merged:
                    ins.append(merged[key])
                    continue
                if e.src in inside:
                    if e.delay == 0:
                        ins.append(f"f{e.src}")
                        continue
                    var = f"f{e.src}_d"
                    node_pre.append(
                        f"{var} = rt.merge_time(rt.delayed(rt.split_time(f{e.src}, T), "
                        f"{self.prev_expr(e.src, f'f{e.src}[:B]')}))"
                    )
                else:
                    self._check_available(e, i)
                    if e.delay == 0 and e.src in self.static:  # [B, ...]: already rows
                        var = f"f{e.src}"
                        pre.append(f"{var} = x{e.src}")
                    elif e.delay == 0:
                        var = f"f{e.src}"
                        pre.append(f"{var} = rt.merge_time(x{e.src})")
                    else:
                        var = f"f{e.src}_d"
                        prev = self.prev_expr(e.src, f"x{e.src}[0]")
                        pre.append(f"{var} = rt.merge_time(rt.delayed(x{e.src}, {prev}))")
                merged[key] = var
                ins.append(var)
            if self.g.op(n) == "neuron":
                raise IRError(f"neuron %{n} cannot run in a flat segment")
            code = self.node_code(n, ins, f"f{n}", "flat")
            code["pre"] = node_pre
            nodes.append(code)
        post = []
        for n in seg.nodes:
            if (self.users_outside(n, i) or n in self.delayed) and n in self.static:
                post.append(f"x{n} = f{n}")  # no time axis
            elif self.users_outside(n, i) or n in self.delayed:
                post.append(f"x{n} = rt.split_time(f{n}, T)")
                if n in self.delayed:
                    self.new_state.append(f'new_state.setdefault({n}, {{}})["delay"] = x{n}[-1]')
        return {
            "kind": "flat",
            "title": self._title(seg),
            "pre": pre,
            "nodes": nodes,
            "post": post,
        }

    def scan_segment(self, i: int, seg: Segment) -> dict[str, Any]:
        inside = set(seg.nodes)
        xs: list[tuple[str, str]] = []  # (name inside the step, sequence outside)
        carry: list[tuple[str, str, str]] = []  # (name read, init expr, name written)
        state_out: list[tuple[int, str]] = []  # (node id, var) per carry slot
        seen_xs: dict[tuple[int, int], str] = {}
        nodes = []
        for n in seg.nodes:
            ins = []
            for e in self.g.in_edges(n):
                key = (e.src, e.delay)
                if key in seen_xs:
                    ins.append(seen_xs[key])
                    continue
                if e.src in inside:
                    if e.delay == 0:
                        ins.append(f"s{e.src}")
                        continue
                    name = f"d{e.src}"
                    init = self.prev_expr(e.src, None)
                    carry.append((name, init, f"s{e.src}"))
                    state_out.append((e.src, "delay"))
                else:
                    self._check_available(e, i)
                    if e.delay == 0:
                        name = f"s{e.src}"
                        xs.append((name, f"x{e.src}"))
                    else:
                        name = f"d{e.src}"
                        prev = self.prev_expr(e.src, f"x{e.src}[0]")
                        xs.append((name, f"rt.delayed(x{e.src}, {prev})"))
                seen_xs[key] = name
                ins.append(name)
            if self.g.op(n) == "neuron":
                code = self.neuron_code(n, ins, f"s{n}")
                for var, name in self.state_names(n).items():
                    carry.append((name, self.state_init(n, var, xs), name))
                    state_out.append((n, var))
            else:
                code = self.node_code(n, ins, f"s{n}", "step")
            nodes.append(code)
        ys = [n for n in seg.nodes if self.users_outside(n, i)]
        # delayed producers whose consumers sit outside this scan need their last value too
        for n in seg.nodes:
            if n in self.delayed and not any(s == (n, "delay") for s in state_out):
                if n not in ys:
                    ys.append(n)
                self.new_state.append(f'new_state.setdefault({n}, {{}})["delay"] = x{n}[-1]')
        return {
            "kind": "scan",
            "title": self._title(seg),
            "fn": f"step_{i}",
            "carry_var": f"carry_{i}",
            "xs_inner": [a for a, _ in xs],
            "xs_outer": [b for _, b in xs],
            "carry_read": [c[0] for c in carry],
            "carry_init": [c[1] for c in carry],
            "carry_write": [c[2] for c in carry],
            "ys_inner": [f"s{n}" for n in ys],
            "ys_outer": [f"x{n}" for n in ys],
            "state_out": [(k, nid, var) for k, (nid, var) in enumerate(state_out)],
            "nodes": nodes,
            "unroll": lit(int(self.options.get("unroll", 1))),
        }

    # ---------------------------------------------------------------- pallas
    def pallas_refusal(self, seg: Segment) -> str | None:
        """Why this scan segment cannot be a Pallas kernel pair (None: it can).

        A Pallas neuron kernel runs one neuron node whose inputs all come from
        before the group: a recurrent group (a product inside the time loop) stays
        a ``lax.scan``. Refused explicitly asked-for Pallas raises the one-line error.
        """
        why = None
        if seg.group_kind != "neuron" or len(seg.nodes) != 1:
            why = f"a {seg.group_kind} group of {len(seg.nodes)} nodes runs as a lax.scan"
        else:
            (n,) = seg.nodes
            if self.g.op(n) != "neuron":
                why = f"node %{n} ({self.g.op(n)}) is not a neuron"
            elif any(e.src == n for e in self.g.in_edges(n)):
                why = f"neuron %{n} reads its own output (a recurrence)"
            elif any(e.src in self.static for e in self.g.in_edges(n)):
                why = f"neuron %{n} reads a value without a time axis"
        if why is not None and self.explicit and seg.group_kind == "neuron":
            raise UnsupportedError(
                f"neuron_kernels='pallas' cannot run group {sanitise(seg.group)}: {why}; "
                "use neuron_kernels='scan'"
            )
        return why

    def pallas_segment(self, i: int, seg: Segment) -> dict[str, Any]:
        """One neuron group as a Pallas kernel pair (templates/jax/pallas_segment.py.j2).

        The forward kernel runs the form's step (the same lowering as the scan's,
        with spikes as plain comparisons); the backward kernel runs the step's
        vector-Jacobian product from :func:`snncc.ir.expr.vjp`, lowered with the same
        jax op table. A fused prologue/epilogue (scale, residual add) runs on the whole
        sequences outside the kernels, in the same operation order, so jax
        differentiates it.
        """
        (n,) = seg.nodes
        g = self.check_neuron(n)
        where = self.where(n)
        pre: list[str] = []
        ins: list[str] = []
        for e in self.g.in_edges(n):
            self._check_available(e, i)
            if e.delay == 0:
                ins.append(f"x{e.src}")
            else:
                name = self.names.fresh(f"x{e.src}_d")
                pre.append(
                    f"{name} = rt.delayed(x{e.src}, {self.prev_expr(e.src, f'x{e.src}[0]')})"
                )
                ins.append(name)
        _check_ports(g, ins, where)
        a = self.g.attrs(n)
        prologue = [self._fused(n, st, ins, where) for st in a.get("prologue", [])]
        x0 = ins[0]
        if prologue:
            x0 = f"i{n}"
            pre.append(f"{x0} = {ins[0]}")
            pre.extend(f"{x0} = {x0} {p['sym']} {p['operand']}" for p in prologue)
        ports = [x0, *ins[1 : len(g.ports)]]
        post = [
            f"x{n} = x{n} {p['sym']} {p['operand']}"
            for p in (self._fused(n, st, ins, where) for st in a.get("epilogue", []))
        ]
        # ---- the kernels' names: every one fresh in the module's namespace
        fresh = self.names.fresh
        port_vars = [fresh(f"{p}{n}_t") for p in g.ports]
        qs = list(g.quantities)
        q_vars = [self.quantity(n, q) for q in qs]
        s_vars = [state_var(n, v) for v in g.states]
        lanes, step, carry, t, k = (fresh(b) for b in ("lanes", "step", "carry", "t", "k"))
        # ---- forward: the step, as the scan runs it
        inputs = {f"s:{v}": s_vars[j] for j, v in enumerate(g.states)}
        inputs.update({f"x:{p}": port_vars[j] for j, p in enumerate(g.ports)})
        inputs.update({f"q:{q}": q_vars[j] for j, q in enumerate(qs)})
        results = {"out": g.outputs[g.out], **{f"state_{v}": g.next_state[v] for v in g.states}}
        roots = [v.i for v in results.values() if isinstance(v, E.Val)]
        fw = emit(g.step, roots, inputs, self.names, self.surrogates, f"_{n}", kernel=True)

        def ref(em: Any, v: Any, like: str) -> str:
            if isinstance(v, E.Val):
                return em.refs[v.i]
            return f"jnp.full_like({like}, {flt(v)})"

        # ---- backward: the step's VJP (adjoints g:out, g:state_<v>) -> d port, state, quantity
        bg, _, adj = E.vjp(g.step, g.result_nodes(), g.step.inputs().values())
        step_in = g.step.inputs()
        g_out = fresh(f"g_out{n}")
        g_s = [fresh(f"g_{sv}") for sv in s_vars]
        acc_q = [fresh(f"acc_{qv}") for qv in q_vars]
        b_inputs = dict(inputs)
        b_inputs["g:out"] = g_out
        b_inputs.update({f"g:state_{v}": g_s[j] for j, v in enumerate(g.states)})

        def adjoint(name: str) -> Any:
            i = step_in.get(name)
            return None if i is None else adj[i]

        wanted = [f"x:{p}" for p in g.ports] + [f"s:{v}" for v in g.states]
        wanted += [f"q:{q}" for q in qs]
        adjs = {w: adjoint(w) for w in wanted}
        b_roots = [v.i for v in adjs.values() if isinstance(v, E.Val)]
        bw = emit(bg, b_roots, b_inputs, self.names, self.surrogates, f"_{n}", kernel=True)
        reads = {bg.nodes[j].name for j in bg.ancestors(b_roots) if bg.nodes[j].op == "input"}

        def d(w: str) -> str:
            v = adjs[w]
            return ref(bw, v, g_out) if v is not None else f"jnp.zeros_like({g_out})"

        saves = any(r.startswith("s:") for r in reads)
        kfwd, kbwd, kset = fresh(f"fwd_kernel_{i}"), fresh(f"bwd_kernel_{i}"), fresh(f"kernels_{i}")
        self.kernel_defs.append(
            {
                "label": self.label(n),
                "summary": sanitise(self.spec(n).summary(), 120),
                "fwd": kfwd,
                "bwd": kbwd,
                "kset": kset,
                "lanes": lanes,
                "step": step,
                "carry": carry,
                "t": t,
                "k": k,
                "ports": port_vars,
                "port_reads": [pv for pv, p in zip(port_vars, g.ports) if f"x:{p}" in reads],
                "quantities": q_vars,
                "states": s_vars,
                "saves": saves,
                "fwd_lines": list(fw.lines),
                "out_expr": ref(fw, g.outputs[g.out], port_vars[0]),
                "state_exprs": [ref(fw, g.next_state[v], port_vars[0]) for v in g.states],
                "g_out": g_out,
                "g_states": g_s,
                "acc_q": acc_q,
                "bwd_lines": list(bw.lines),
                "d_ports": [d(f"x:{p}") for p in g.ports],
                "d_states": [d(f"s:{v}") for v in g.states],
                "d_quantities": [d(f"q:{q}") for q in qs],
                "interpret": self.interpret,
            }
        )
        xs: list[tuple[str, str]] = [
            (f"s{e.src}", ins[j]) for j, e in enumerate(self.g.in_edges(n))
        ]
        state_init = [self.state_init(n, v, xs) for v in g.states]
        if n in self.delayed:
            self.new_state.append(f'new_state.setdefault({n}, {{}})["delay"] = x{n}[-1]')
        return {
            "kind": "pallas",
            "title": self._title(seg),
            "pre": pre,
            "post": post,
            "kset": kset,
            "out": f"x{n}",
            "ports": ports,
            "quantities": q_vars,
            "state_init": state_init,
            "last": fresh(f"last_{i}"),
            "state_out": [(j, n, v) for j, v in enumerate(g.states)],
        }

    def state_init(self, n: int, var: str, xs: list[tuple[str, str]]) -> str:
        """Neuron ``n``'s state ``var`` at t = -1: the caller's state or the form's start value.

        ``v`` starts at ``spec.v_init``, every other variable at the form's initial value;
        a multi-variable form passes its variables as a group so a partial
        state is refused instead of silently restarting the missing ones.
        """
        g = self.check_neuron(n)
        fill = flt(g.inits[var])
        group = f", {tuple(g.states)!r}" if len(g.states) > 1 else ""
        like = self._outer_like(n, xs)
        if like is None:
            shape = self.need_shape(n, "start its state")
            return f"rt.fresh_shape(state, {n}, {var!r}, {shape}, {fill}{group})"
        return f"rt.fresh(state, {n}, {var!r}, {like}, {fill}{group})"

    def _outer_like(self, n: int, xs: list[tuple[str, str]]) -> str | None:
        """An outer sequence whose step shape equals neuron ``n``'s (its port-0 input), if any."""
        if self.shape_expr(n) is not None:
            return None
        e0 = self.g.in_edges(n)[0]
        for name, outer in xs:
            if name == f"s{e0.src}" and e0.delay == 0:
                return f"{outer}[0]"
        return None

    def _check_available(self, e: Edge, seg: int) -> None:
        src_seg = self.seg_of.get(e.src)
        if src_seg is None:
            raise IRError(f"node %{e.dst} reads %{e.src}, which is in no group")
        if src_seg >= seg:
            raise IRError(
                f"node %{e.dst} (segment {seg}) reads %{e.src} (delay {e.delay}), which is "
                f"scheduled later (segment {src_seg}); the schedule in graph.meta['groups'] "
                "must put producers first"
            )

    def _title(self, seg: Segment) -> str:
        how = "whole sequence as [T*B, ...]" if seg.kind == "flat" else "lax.scan over t"
        if seg.kind == "scan" and self.kernels == "pallas":
            why = self.pallas_refusal(seg)
            where = "Pallas interpreter" if self.interpret else "Triton"
            how = (
                f"Pallas kernel pair ({where}) over blocks of the B*N neurons, t inside"
                if why is None
                else f"lax.scan over t ({sanitise(why, 120)})"
            )
        count = f"{len(seg.nodes)} node" + ("s" if len(seg.nodes) != 1 else "")
        return f"group {sanitise(seg.group)} ({seg.group_kind}, {count}): {how}"

    # ------------------------------------------------------------------ main
    def context(self) -> dict[str, Any]:
        prepare = []
        for seg in self.segs:
            for n in seg.nodes:
                p = self.prepare(n)
                if p is not None:
                    prepare.append(p)
        segments = []
        for i, seg in enumerate(self.segs):
            if seg.kind == "flat":
                segments.append(self.flat_segment(i, seg))
            elif self.kernels == "pallas" and self.pallas_refusal(seg) is None:
                segments.append(self.pallas_segment(i, seg))
            else:
                segments.append(self.scan_segment(i, seg))
        outputs = []
        for n in self.outputs:
            (e,) = self.g.in_edges(n)
            if e.src in self.inputs or e.src in self.seg_of:
                src = f"x{e.src}"
            else:
                raise IRError(f"output %{n} reads %{e.src}, which is in no group")
            if e.delay:
                src = f"rt.delayed({src}, {self.prev_expr(e.src, f'x{e.src}[0]')})"
            outputs.append({"id": n, "var": f"x{n}", "expr": src, "label": self.label(n)})
        for n in self.inputs:
            if n in self.delayed:
                self.new_state.append(f'new_state.setdefault({n}, {{}})["delay"] = x{n}[-1]')
        first = self.inputs[0]
        timed = [n for n in self.inputs if n not in self.static]
        if timed:
            time_expr, batch_expr = f"x{timed[0]}.shape[0]", f"x{timed[0]}.shape[1]"
        else:
            time_expr, batch_expr = str(int(self.steps or 1)), f"x{first}.shape[0]"
        return {
            "time_expr": time_expr,
            "batch_expr": batch_expr,
            "source": sanitise(self.g.meta.get("source", "unknown")),
            "step_mode": sanitise(self.g.meta.get("step_mode", "m")),
            "n_nodes": len(self.g),
            "inputs": [{"id": n, "var": f"x{n}", "label": self.label(n)} for n in self.inputs],
            "prepare": prepare,
            "segments": segments,
            "outputs": outputs,
            "new_state": self.new_state,
            "param_names": sorted(self.g.params),
            "surrogates": [
                surrogate_function(name, alpha, fn, params)
                for (name, alpha, params), fn in self.surrogates.items()
            ],
            "uses_key": self.uses_key,
            "kernel_defs": self.kernel_defs,
            "neuron_kernels": self.kernels,
            "pallas_interpret": self.kernels == "pallas" and self.interpret,
        }


def render(graph: Graph, **options: Any) -> str:
    """The generated module's source for a scheduled graph."""
    ctx = Renderer(graph, options).context()
    return environment().get_template("module.py.j2").render(**ctx)


def _check_ports(g: Any, ins: list[str], where: str) -> None:
    """A neuron node has an input for every port its charge form reads (scan and Pallas)."""
    if len(ins) < len(g.ports):
        raise IRError(
            f"{where}: charge form {g.form!r} reads the input ports {list(g.ports)}; "
            f"the node has {len(ins)} input(s)"
        )
