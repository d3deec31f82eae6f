"""ONNX export with the time loop inside the graph.

The exported model takes the whole input sequence ``x [T, B, ...]`` (``T`` and
``B`` symbolic) and returns ``[T, B, ...]``, like every snncc Program. It is
the layer-first schedule of temporal fusion written in standard ONNX:

- stateless nodes run on the sequence reshaped to ``[T*B, ...]`` (one Gemm or
  Conv for all steps, exactly the rows the reference backend feeds its row
  ops), reshaped back to ``[T, B, ...]`` only where a Scan or an output needs
  the time axis;
- every neuron node is one ``Scan`` over axis 0 whose body is the neuron's
  per-step update lowered from its form's definition (:mod:`snncc.ir.neurons`,
  one ONNX op per expression node, in the source framework's operation order:
  :func:`lower_to_onnx`) for every form, traced user neurons included, so an ONNX runtime
  computes the same float32 spikes, membranes and currents as the reference
  backend (see :meth:`_Exporter.neuron_step`). Every state variable of the
  form (``v``, and ``i`` or ``s``) is Scan state. Constants derived from a
  node param are computed once, outside the Scan, exactly as torch computes
  them each step: PLIF's ``k = sigmoid(w)``, snnTorch's ``beta.clamp(0, 1)``
  (``Clip``), Norse's ``dt * tau_mem_inv`` (float32 ``dt`` times the param);
  a form constant without a param is the spec's Python float rounded to
  float32, as torch's ``python_scalar * tensor`` rounds it;
- a recurrent group (a strongly connected component closed by delay-1 edges)
  is one Scan over all its nodes: the delayed values are Scan state. An
  snnTorch RLeaky / Norse LIFRecurrentCell is such a group: its recurrent
  Linear/Conv (port ``rec``) steps inside the neuron's Scan.

With ``state_io=True`` every Scan state is also a model input
``state.<nid>.<var>`` (``v``: membrane, ``i``: synaptic current, ``s``: the
previous spike of snnTorch's one-to-one RLeaky, ``delay``: a delayed value)
and output ``next_state.<nid>.<var>``, the reference backend's state dict
flattened, so a runtime can stream a sequence in chunks.

Two kinds of readers, two kinds of content. A plain ONNX runtime needs
nothing but the graph. snncc's importer (:mod:`snncc.exchange.onnx_import`)
restores the exact IR from metadata: ``metadata_props`` hold the IR format
version (``snncc.ir_version``) and the IR structure without parameter arrays
(``snncc.graph``), each neuron Scan's ``doc_string`` holds the NeuronSpec of
the neurons it runs, and the initializers, named by the source model's
``state_dict`` names, hold the parameters. The importer then re-exports the
restored IR and requires the identical ONNX graph, so what it returns always
computes exactly what the file computes.

Exactness (measured in tests/test_onnx.py and tests/test_onnx_snntorch_norse.py,
onnxruntime 1.32 CPU, fp32): the Scan bodies are bit-exact with the reference
backend (element-wise IEEE ops in the same order), as are reshapes, max
pooling, adaptive pooling (built from Slice/Add/Div in torch's summation
order) and any pooling of spikes.
Gemm/MatMul, Conv, BatchNormalization (torch fuses it into FMAs) and
AveragePool/GlobalAveragePool on real values accumulate differently from
torch's kernels and differ by a few ulps; a spike flips only when a membrane
lands within those ulps of the threshold (0 flips in the tests).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from snncc.errors import IRError, UnsupportedError
from snncc.ir import expr as E
from snncc.ir.graph import Edge, Graph
from snncc.ir.neuron import FORMS, NeuronSpec
from snncc.ir.neurons import NeuronGraph, build
from snncc.ir.resample import nearest_indices
from snncc.ir.safe_files import replaced_on_success
from snncc.ir.static import static_nodes, time_steps

#: version of the metadata layout below; the importer refuses newer ones
IR_FORMAT_VERSION = 1
META_VERSION = "snncc.ir_version"
META_GRAPH = "snncc.graph"
#: export options the importer needs to re-export identically (JSON)
META_OPTIONS = "snncc.export_options"
#: key in a Scan's doc_string JSON that lists its neurons' specs
DOC_NEURONS = "snncc_neurons"
#: what ``snncc.graph`` holds in place of a neuron's spec (which lives on its Scan)
SPEC_ON_SCAN = "@scan"

DEFAULT_OPSET = 17
#: Squeeze/Unsqueeze/Slice take tensors from 13 on; onnxruntime 1.17+ runs up to 21
MIN_OPSET, MAX_OPSET = 13, 21

#: charge forms the Scan body implements: every defined form (its definition is lowered)
CHARGE_FORMS = tuple(FORMS)

#: every ONNX op type to_onnx emits; the importer refuses any other
ONNX_OPS = frozenset(
    {
        "Abs",
        "Add",
        "And",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Gather",
        "InstanceNormalization",
        "Pad",
        "Div",
        "Equal",
        "Erf",
        "Exp",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "Greater",
        "GreaterOrEqual",
        "Identity",
        "LayerNormalization",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "MatMul",
        "MaxPool",
        "Mul",
        "Neg",
        "Reciprocal",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Scan",
        "Shape",
        "Sigmoid",
        "Sign",
        "Slice",
        "Softmax",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Tanh",
        "Tile",
        "Transpose",
        "Unsqueeze",
        "Where",
    }
)

_INT64_MAX = int(np.iinfo(np.int64).max)
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


# ------------------------------------------------------------------ metadata codec
def encode(value: Any) -> Any:
    """A JSON-able form of an IR attr/meta value that :func:`decode` restores exactly.

    Plain JSON would turn tuples into lists, numpy scalars into Python ones and
    int dict keys into strings, and the restored IR would then print and
    compare differently; those are tagged instead.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return {"__np__": value.dtype.str, "v": value.item()}
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"__set__": [encode(v) for v in sorted(value, key=repr)]}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape), "v": value.tolist()}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise UnsupportedError(
        f"an IR value of type {type(value).__name__} ({value!r:.60}) cannot be stored in "
        "ONNX metadata; supported: None, bool, int, float, str, list, tuple, dict, numpy"
    )


def decode(value: Any) -> Any:
    """Invert :func:`encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__set__" in value:
        return {decode(v) for v in value["__set__"]}
    if "__items__" in value:
        return {_hashable(decode(k)): decode(v) for k, v in value["__items__"]}
    if "__np__" in value:
        return _numeric(value["__np__"]).type(value["v"])
    if "__ndarray__" in value:
        arr = np.asarray(value["v"], dtype=_numeric(value["__ndarray__"]))
        return arr.reshape(value["shape"])
    return {k: decode(v) for k, v in value.items()}


def _numeric(dtype: str) -> np.dtype:
    """Only plain numeric/bool dtypes come back from metadata (never object arrays)."""
    dt = np.dtype(dtype)
    if dt.kind not in "biufc":
        raise ValueError(f"metadata holds a value of dtype {dt}, not a numeric one")
    return dt


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def graph_metadata(graph: Graph) -> str:
    """The IR's structure as JSON: nodes (neuron specs left out: they live on the Scans), edges, meta."""
    nodes = []
    for nid, data in graph.nx.nodes(data=True):
        data = dict(data)
        if data.get("op") == "neuron" and "neuron" in data.get("attrs", {}):
            # a placeholder keeps the attr's position; the spec itself is on the Scan
            data["attrs"] = {
                k: (SPEC_ON_SCAN if k == "neuron" else v) for k, v in data["attrs"].items()
            }
        nodes.append({"id": nid, "data": encode(data)})
    edges = [[u, v, encode(d)] for u, v, d in graph.nx.edges(data=True)]
    doc = {
        "format": "snncc-ir",
        "version": IR_FORMAT_VERSION,
        "next_id": graph._next_id,
        "meta": encode(graph.meta),
        "nodes": nodes,
        "edges": edges,
        "params": {name: list(np.shape(a)) for name, a in graph.params.items()},
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=True)


# ------------------------------------------------------------------ helpers
def _safe(text: str) -> str:
    return _SAFE.sub("_", text)


def _as_pair(value: Any) -> list[int]:
    """torch's int-or-pair convention for 2-d pooling/conv attrs."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return [int(value[0])] * 2
        return [int(v) for v in value]
    return [int(value)] * 2


def _as_n(value: Any, n: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        vals = [int(v) for v in value]
        return vals * n if len(vals) == 1 else vals
    return [int(value)] * n


def _vinfo(name: str, shape: list | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


class _Names:
    """Model-wide unique names: ONNX wants every value name unique, subgraphs included."""

    def __init__(self) -> None:
        self.count = 0

    def fresh(self, prefix: str, base: str) -> str:
        self.count += 1
        return f"{prefix}/{base}_{self.count}"


class _Scope:
    """Collects the nodes of one ONNX graph (the main graph or a Scan body)."""

    def __init__(self, names: _Names) -> None:
        self.names = names
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = ""
        self.consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        out_names: list[str] | None = None,
        doc: str = "",
        **attrs: Any,
    ) -> Any:
        """Append one node; returns its output name (or the list of names when n_out > 1)."""
        base = self.names.fresh(self.prefix, op_type)
        outs = out_names or ([base] if n_out == 1 else [f"{base}:{i}" for i in range(n_out)])
        node = helper.make_node(op_type, list(inputs), outs, name=base, **attrs)
        if doc:
            node.doc_string = doc
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A Constant node, shared by every use of the same value in this graph."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            self.consts[key] = self.op("Constant", [], value=numpy_helper.from_array(arr))
        return self.consts[key]

    def ints(self, values: list[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64), np.int64)

    def scalar(self, value: float) -> str:
        return self.const(np.float32(value))


def _node_ref(graph: Graph, nid: int) -> str:
    data = graph.node(nid)
    name = data.get("name") or ""
    return f"node %{nid} ({data.get('op')}{' ' + repr(name) if name else ''})"


def _unsupported(graph: Graph, nid: int, why: str) -> UnsupportedError:
    return UnsupportedError(f"ONNX export: {_node_ref(graph, nid)}: {why}")


# ------------------------------------------------------------------ exporter
class _Exporter:
    """One export: walks the execution units in schedule order and emits ONNX nodes."""

    def __init__(self, graph: Graph, opset: int, state_io: bool = False) -> None:
        self.g = graph
        self.opset = opset
        self.state_io = state_io
        #: with state_io: graph inputs/outputs carrying the Scan states (after the model's own)
        self.state_inputs: list[onnx.ValueInfoProto] = []
        self.state_outputs: list[onnx.ValueInfoProto] = []
        self.names = _Names()
        self.main = _Scope(self.names)
        #: (nid, delay) -> name of the value as [T, B, ...] / as [T*B, ...] in the main graph
        self.seq: dict[tuple[int, int], str] = {}
        self.flat: dict[tuple[int, int], str] = {}
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.tb = ""  # int64 [2]: (T, B) of the run
        #: values without a time axis ([B, ...]: snncc.ir.static), computed once
        self.static = static_nodes(graph)
        #: neuron nid -> outer-scope names of per-sequence constants (PLIF: "k")
        self.derived: dict[int, dict[str, str]] = {}
        #: (kind, param name) -> the derived value, shared by the nodes reading that param
        #: (a module returning spikes and membrane is two nodes with the same params)
        self.shared: dict[Any, str] = {}

    # ---------------------------------------------------------------- shapes
    def shape(self, nid: int) -> list | None:
        return self.g.node(nid).get("shape")

    def rest(self, nid: int) -> list[int] | None:
        """The static per-step dims after the batch, or None when unknown."""
        shape = self.shape(nid)
        if not shape or shape[0] not in ("B", -1):
            return None
        rest = shape[1:]
        if all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in rest):
            return [int(d) for d in rest]
        return None

    def step_shape(self, nid: int) -> list | None:
        """The per-step ONNX shape (``["B", ...]``) for value infos, or None."""
        rest = self.rest(nid)
        return None if rest is None else ["B", *rest]

    def in_edges(self, nid: int) -> list[Edge]:
        edges = self.g.in_edges(nid)
        for e in edges:
            if e.delay not in (0, 1):
                raise _unsupported(self.g, nid, f"edge delay {e.delay} (supported: 0 or 1)")
        return edges

    # ---------------------------------------------------------------- params
    def param(self, nid: int, role: str) -> str | None:
        """The initializer name (the state_dict name) playing ``role`` for ``nid``."""
        name = self.g.node(nid)["params"].get(role)
        if name is None:
            return None
        if name not in self.initializers:
            if name not in self.g.params:
                raise IRError(
                    f"{_node_ref(self.g, nid)}: param {role}={name!r} is not in graph.params"
                )
            arr = np.asarray(self.g.params[name])
            if arr.dtype != np.float32:
                raise _unsupported(
                    self.g, nid, f"param {name!r} has dtype {arr.dtype}; the export is float32 only"
                )
            self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    def param_shape(self, nid: int, role: str) -> tuple[int, ...]:
        return tuple(np.shape(self.g.params[self.g.node(nid)["params"][role]]))

    # ---------------------------------------------------------------- layouts
    def seq_of(self, src: int, delay: int = 0) -> str:
        """``src``'s value as a [T, B, ...] tensor of the main graph (delay 0 only here)."""
        key = (src, delay)
        if key in self.seq:
            return self.seq[key]
        m = self.main
        m.prefix = f"/n{src}"
        if delay:
            # verify() allows delay edges only inside recurrent components (one Scan each)
            raise IRError(
                f"{_node_ref(self.g, src)}: a delay edge from it leaves its recurrent component"
            )
        flat = self.flat[key]
        rest = self.rest(src)
        if rest is not None:
            tail = m.ints(rest)
        else:
            tail = m.op("Slice", [m.op("Shape", [flat]), m.ints([1]), m.ints([_INT64_MAX])])
        self.seq[key] = m.op("Reshape", [flat, m.op("Concat", [self.tb, tail], axis=0)])
        return self.seq[key]

    def flat_of(self, src: int, delay: int = 0) -> str:
        """``src``'s value (``delay`` steps late) as [T*B, ...] (the rows of the layer ops)."""
        key = (src, delay)
        if key in self.flat:
            return self.flat[key]
        s = self.seq_of(src, delay)
        m = self.main
        m.prefix = f"/n{src}"
        rest = self.rest(src)
        if rest is not None:
            shape = m.ints([-1, *rest])
        else:
            tail = m.op("Slice", [m.op("Shape", [s]), m.ints([2]), m.ints([_INT64_MAX])])
            shape = m.op("Concat", [m.ints([-1]), tail], axis=0)
        self.flat[key] = m.op("Reshape", [s, shape])
        return self.flat[key]

    def batch_shape(self, nid: int, fallback_seq: str | None = None) -> str:
        """int64 shape [B, ...] of node ``nid``'s per-step value (for initial states)."""
        m = self.main
        rest = self.rest(nid)
        if rest is not None:
            b = m.op("Slice", [self.tb, m.ints([1]), m.ints([2])])
            return m.op("Concat", [b, m.ints(rest)], axis=0)
        if fallback_seq is None:
            raise _unsupported(
                self.g, nid, f"needs a static per-step shape ['B', ints...], got {self.shape(nid)}"
            )
        return m.op("Slice", [m.op("Shape", [fallback_seq]), m.ints([1]), m.ints([_INT64_MAX])])

    # ---------------------------------------------------------------- units
    def units(self) -> Iterator[tuple[str, list[int]]]:
        """(kind, nodes) in execution order: "scan" units (neurons, recurrent groups) or "node"."""
        groups = self.g.meta.get("groups")
        if groups:
            seen: set[int] = set()
            for grp in groups:
                nodes = list(grp["nodes"])
                seen.update(nodes)
                if grp.get("kind") == "recurrent":
                    yield "scan", nodes
                    continue
                for nid in nodes:
                    yield ("scan" if self.g.op(nid) == "neuron" else "node"), [nid]
            missing = set(self.g.nx.nodes) - seen
            if missing:
                raise IRError(f"meta['groups'] leaves out nodes {sorted(missing)}")
            return
        # No schedule yet: the same units temporal fusion would make, in a topological order.
        cond = nx.condensation(self.g.nx)
        order = nx.lexicographical_topological_sort(
            cond, key=lambda c: min(cond.nodes[c]["members"])
        )
        for c in order:
            members = sorted(cond.nodes[c]["members"])
            nid = members[0]
            if len(members) > 1 or self.g.nx.has_edge(nid, nid):
                yield "scan", members
            else:
                yield ("scan" if self.g.op(nid) == "neuron" else "node"), members

    # ---------------------------------------------------------------- driver
    def run(self) -> onnx.ModelProto:
        g = self.g
        for nid in g.nx.nodes:
            dtype = g.node(nid).get("dtype", "float32")
            if dtype != "float32":
                raise _unsupported(g, nid, f"dtype {dtype}; the ONNX export is float32 only")
        ins = sorted(g.meta.get("inputs", []), key=lambda n: int(g.attrs(n).get("index", 0)))
        if not ins:
            raise IRError("the graph has no input node (meta['inputs'] is empty)")
        for nid in ins:
            name = f"input{int(g.attrs(nid).get('index', 0))}"
            rest = self.rest(nid)
            lead = ["B"] if nid in self.static else ["T", "B"]
            self.inputs.append(_vinfo(name, None if rest is None else [*lead, *rest]))
            self.seq[(nid, 0)] = name
            if nid in self.static:  # [B, ...]: its rows as they are
                self.flat[(nid, 0)] = name
        self.main.prefix = "/time_batch"
        m = self.main
        timed = [n for n in ins if n not in self.static]
        if timed:
            shape = m.op("Shape", [self.seq[(timed[0], 0)]])
            self.tb = m.op("Slice", [shape, m.ints([0]), m.ints([2])])
        else:  # every input static: the model's own number of steps
            b = m.op("Slice", [m.op("Shape", [self.seq[(ins[0], 0)]]), m.ints([0]), m.ints([1])])
            self.tb = m.op("Concat", [m.ints([int(time_steps(g) or 1)]), b], axis=0)
        for kind, nodes in self.units():
            if kind == "scan":
                self.emit_scan(nodes)
            else:
                self.emit_node(nodes[0])
        if len(self.outputs) != len(g.meta.get("outputs", [])):
            raise IRError("the output nodes and meta['outputs'] disagree")
        self.outputs.sort(key=lambda v: int(v.name[len("output") :]))
        io = {v.name for v in self.inputs + self.state_inputs + self.outputs + self.state_outputs}
        clash = sorted(io & set(self.initializers))
        if clash:
            raise UnsupportedError(
                f"ONNX export: parameter {clash[0]!r} has the name of a model input/output "
                "(input<i>, output<i>, state.*, next_state.*); rename it in the source model"
            )
        graph = helper.make_graph(
            self.main.nodes,
            "snncc",
            self.inputs + self.state_inputs,
            self.outputs + self.state_outputs,
            initializer=[self.initializers[k] for k in sorted(self.initializers)],
            doc_string="snncc export: inputs and outputs are time-major [T, B, ...]",
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            ir_version=helper.find_min_ir_version_for(opsets),
            producer_name="snncc",
            producer_version=_snncc_version(),
            doc_string="Spiking neural network exported by snncc; the time loop is inside (Scan).",
        )
        props = {META_VERSION: str(IR_FORMAT_VERSION), META_GRAPH: graph_metadata(g)}
        props[META_OPTIONS] = json.dumps({"state_io": self.state_io})
        helper.set_model_props(model, props)
        return model

    # ---------------------------------------------------------------- stateless nodes
    def emit_node(self, nid: int) -> None:
        op = self.g.op(nid)
        if op == "input":
            return
        edges = self.in_edges(nid)
        if op == "output":
            (e,) = edges
            src = self.seq_of(e.src, e.delay)
            self.main.prefix = f"/n{nid}"
            name = f"output{int(self.g.attrs(nid).get('index', 0))}"
            self.main.op("Identity", [src], out_names=[name])
            rest = self.rest(nid)
            lead = ["B"] if nid in self.static else ["T", "B"]
            self.outputs.append(_vinfo(name, None if rest is None else [*lead, *rest]))
            return
        self.main.prefix = f"/n{nid}" + (
            f".{_safe(self.g.node(nid)['name'])}" if self.g.node(nid).get("name") else ""
        )
        if op == "time_reduce":  # over the T steps of a sequence: a static [B, ...] value
            (e,) = edges
            x = self.seq_of(e.src, e.delay)
            self.main.prefix = f"/n{nid}"
            y = self._reduce(self.main, nid, str(self.g.attrs(nid)["op"]), x, [0], False)
            self.flat[(nid, 0)] = self.seq[(nid, 0)] = y
            return
        ins = [self.flat_of(e.src, e.delay) for e in edges]
        self.flat[(nid, 0)] = self.stateless(self.main, nid, ins)
        if nid in self.static:  # no time axis: the rows are the value
            self.seq[(nid, 0)] = self.flat[(nid, 0)]

    def stateless(self, sc: _Scope, nid: int, ins: list[str]) -> str:
        """One stateless op on batch-first rows ([T*B, ...] outside a Scan, [B, ...] inside)."""
        op = self.g.op(nid)
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise _unsupported(self.g, nid, f"op {op!r} has no ONNX lowering")
        return fn(sc, nid, self.g.attrs(nid), ins)

    # Each op_* mirrors backends/reference/ops.py for the same op.
    def _weight_bias(self, sc: _Scope, nid: int, attrs: dict[str, Any]) -> tuple[str, str | None]:
        """weight/bias names, with a folded BatchNorm applied in-graph (reference fold_bn formula)."""
        w = self.param(nid, "weight")
        b = self.param(nid, "bias")
        roles = self.g.node(nid)["params"]
        if not any(r in roles for r in ("bn_weight", "bn_bias", "bn_mean", "bn_var")):
            return w, b
        mean, var = self.param(nid, "bn_mean"), self.param(nid, "bn_var")
        if mean is None or var is None or "bn_eps" not in attrs:
            raise IRError(
                f"{_node_ref(self.g, nid)}: folded BatchNorm needs bn_mean, bn_var and bn_eps"
            )
        gamma = self.param(nid, "bn_weight")
        beta = self.param(nid, "bn_bias")
        (c,) = self.param_shape(nid, "bn_var")
        if gamma is None:
            gamma = sc.const(np.ones(c, np.float32))
        if beta is None:
            beta = sc.const(np.zeros(c, np.float32))
        if b is None:
            b = sc.const(np.zeros(c, np.float32))
        s = sc.op(
            "Div", [gamma, sc.op("Sqrt", [sc.op("Add", [var, sc.scalar(float(attrs["bn_eps"]))])])]
        )
        w_rank = len(self.param_shape(nid, "weight"))
        s_col = sc.op("Reshape", [s, sc.ints([-1] + [1] * (w_rank - 1))])
        w2 = sc.op("Mul", [w, s_col])
        b2 = sc.op("Add", [sc.op("Mul", [sc.op("Sub", [b, mean]), s]), beta])
        return w2, b2

    def op_linear(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        w, b = self._weight_bias(sc, nid, attrs)
        shape = self.shape(nid)
        if shape is not None and len(shape) == 2:
            # torch: addmm for 2-d input, the same contraction Gemm does
            return sc.op("Gemm", [ins[0], w] + ([b] if b else []), transB=1)
        y = sc.op("MatMul", [ins[0], sc.op("Transpose", [w], perm=[1, 0])])
        return sc.op("Add", [y, b]) if b else y

    def _conv(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str], n: int) -> str:
        if attrs.get("padding_mode", "zeros") != "zeros":
            raise _unsupported(
                self.g, nid, f"padding_mode {attrs['padding_mode']!r} (supported: 'zeros')"
            )
        w, b = self._weight_bias(sc, nid, attrs)
        kernel = list(self.param_shape(nid, "weight")[2:])
        stride = _as_n(attrs["stride"], n)
        dilation = _as_n(attrs["dilation"], n)
        padding = attrs["padding"]
        if padding == "valid":
            pads = [0] * n
            ends = [0] * n
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pads = [t // 2 for t in total]
            ends = [t - t // 2 for t in total]
        else:
            pads = _as_n(padding, n)
            ends = list(pads)
        return sc.op(
            "Conv",
            [ins[0], w] + ([b] if b else []),
            kernel_shape=kernel,
            strides=stride,
            dilations=dilation,
            pads=pads + ends,
            group=int(attrs["groups"]),
        )

    def op_conv1d(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return self._conv(sc, nid, attrs, ins, 1)

    def op_conv2d(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return self._conv(sc, nid, attrs, ins, 2)

    def _conv_transpose(
        self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str], n: int
    ) -> str:
        w, b = self._weight_bias(sc, nid, attrs)
        pads = _as_n(attrs["padding"], n)
        return sc.op(
            "ConvTranspose",
            [ins[0], w] + ([b] if b else []),
            kernel_shape=list(self.param_shape(nid, "weight")[2:]),
            strides=_as_n(attrs["stride"], n),
            dilations=_as_n(attrs["dilation"], n),
            output_padding=_as_n(attrs["output_padding"], n),
            pads=pads + pads,
            group=int(attrs["groups"]),
        )

    def op_conv_transpose1d(
        self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]
    ) -> str:
        return self._conv_transpose(sc, nid, attrs, ins, 1)

    def op_conv_transpose2d(
        self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]
    ) -> str:
        return self._conv_transpose(sc, nid, attrs, ins, 2)

    def op_pad(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        """ONNX Pad: every dim's begins, then every dim's ends (batch-first rows)."""
        rank = len(self.shape(self.g.inputs(nid)[0]))
        begin, end = [0] * rank, [0] * rank
        pads = [int(p) for p in attrs["pads"]]
        for k in range(len(pads) // 2):
            begin[rank - 1 - k], end[rank - 1 - k] = pads[2 * k], pads[2 * k + 1]
        value = sc.scalar(float(attrs["value"]))
        return sc.op("Pad", [ins[0], sc.ints(begin + end), value], mode="constant")

    def op_upsample_nearest(
        self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]
    ) -> str:
        """Gathers along each spatial dim, from the indices torch reads (ir.resample)."""
        shape = self.shape(self.g.inputs(nid)[0])
        y = ins[0]
        for d, m in enumerate(nearest_indices(shape[2:], attrs["size"], attrs.get("scale_factor"))):
            y = sc.op("Gather", [y, sc.ints(m)], axis=2 + d)
        return y

    def op_batchnorm(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        if attrs.get("training"):
            raise _unsupported(
                self.g,
                nid,
                "batchnorm in training mode (batch statistics); export an eval-mode "
                "model (model.eval()) so it uses its running statistics",
            )
        mean, var = self.param(nid, "running_mean"), self.param(nid, "running_var")
        (c,) = self.param_shape(nid, "running_var")
        w = self.param(nid, "weight") or sc.const(np.ones(c, np.float32))
        b = self.param(nid, "bias") or sc.const(np.zeros(c, np.float32))
        return sc.op("BatchNormalization", [ins[0], w, b, mean, var], epsilon=float(attrs["eps"]))

    def _pool_geometry(
        self, nid: int, attrs: dict[str, Any], dilation: list[int]
    ) -> dict[str, Any]:
        kernel = _as_pair(attrs["kernel_size"])
        stride = attrs.get("stride")
        stride = kernel if stride in (None, [], ()) else _as_pair(stride)
        pad = _as_pair(attrs["padding"])
        if attrs.get("ceil_mode"):
            # torch and ONNX disagree on windows that start in the right padding; refuse
            # unless ceil and floor give the same output size (then ceil_mode is moot).
            src = self.g.inputs(nid)[0]
            shape = self.shape(src)
            hw = shape[-2:] if shape and len(shape) >= 3 else None
            if hw is None or not all(isinstance(d, int) for d in hw):
                raise _unsupported(self.g, nid, "ceil_mode=True needs a static input height/width")
            for size, k, s, p, d in zip(hw, kernel, stride, pad, dilation):
                if (size + 2 * p - d * (k - 1) - 1) % s:
                    raise _unsupported(
                        self.g,
                        nid,
                        "ceil_mode=True with a partial last window (torch and ONNX "
                        "size it differently); use ceil_mode=False or an input size that fits",
                    )
        return {"kernel_shape": kernel, "strides": stride, "pads": pad + pad}

    def op_avgpool2d(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        if attrs.get("divisor_override") is not None:
            raise _unsupported(
                self.g, nid, "avgpool2d divisor_override (ONNX AveragePool has none)"
            )
        geo = self._pool_geometry(nid, attrs, [1, 1])
        return sc.op(
            "AveragePool",
            [ins[0]],
            count_include_pad=int(bool(attrs.get("count_include_pad", True))),
            **geo,
        )

    def op_maxpool2d(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        dilation = _as_pair(attrs.get("dilation", 1))
        geo = self._pool_geometry(nid, attrs, dilation)
        return sc.op("MaxPool", [ins[0]], dilations=dilation, **geo)

    def op_adaptive_avgpool2d(
        self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]
    ) -> str:
        """torch's adaptive average pooling, reproduced operation for operation.

        For output 1x1 torch takes ``mean`` over H, W: GlobalAveragePool (the
        same on spikes, whose sums are exact; a few ulps on real values). Any
        other size runs torch's kernel: each bin ``[floor(i*H/o),
        ceil((i+1)*H/o))`` summed in row-major order, then ``/ kh / kw``.
        ONNX AveragePool divides once by ``kh*kw``, which rounds differently
        even on spikes, so the bins are built from Slice/Add/Div instead.
        """
        src = self.g.inputs(nid)[0]
        shape = self.shape(src)
        out = attrs["output_size"]
        out = list(out) if isinstance(out, (list, tuple)) else [out, out]
        if len(out) == 1:
            out = out * 2
        if out == [1, 1]:
            return sc.op("GlobalAveragePool", [ins[0]])
        hw = shape[-2:] if shape and len(shape) >= 3 else None
        if hw is None or not all(isinstance(d, int) for d in hw):
            raise _unsupported(
                self.g, nid, f"adaptive pooling to {out} needs a static input height/width"
            )
        out = [h if o is None else int(o) for o, h in zip(out, hw)]
        x = ins[0]
        if all(h % o == 0 for h, o in zip(hw, out)):
            # equal bins: element (a, b) of every bin at once, as one strided slice
            kh, kw = (h // o for h, o in zip(hw, out))
            big = sc.ints([_INT64_MAX, _INT64_MAX])
            axes, steps = sc.ints([-2, -1]), sc.ints([kh, kw])
            total = ""
            for a in range(kh):
                for b in range(kw):
                    term = sc.op("Slice", [x, sc.ints([a, b]), big, axes, steps])
                    total = sc.op("Add", [total, term]) if total else term
            return sc.op("Div", [sc.op("Div", [total, sc.scalar(kh)]), sc.scalar(kw)])
        axes = sc.ints([-2, -1])
        rows = []
        for i in range(out[0]):
            r0, r1 = (i * hw[0]) // out[0], -((-(i + 1) * hw[0]) // out[0])
            cells = []
            for j in range(out[1]):
                c0, c1 = (j * hw[1]) // out[1], -((-(j + 1) * hw[1]) // out[1])
                total = ""
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        term = sc.op("Slice", [x, sc.ints([r, c]), sc.ints([r + 1, c + 1]), axes])
                        total = sc.op("Add", [total, term]) if total else term
                div = sc.op("Div", [total, sc.scalar(r1 - r0)])
                cells.append(sc.op("Div", [div, sc.scalar(c1 - c0)]))
            rows.append(sc.op("Concat", cells, axis=-1))
        return sc.op("Concat", rows, axis=-2)

    def op_flatten(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        src_shape = self.shape(self.g.inputs(nid)[0])
        rank = len(src_shape) if src_shape else None
        start, end = int(attrs["start_dim"]), int(attrs["end_dim"])
        if rank is not None:
            start, end = start % rank, end % rank
        if start == 0:
            raise _unsupported(
                self.g, nid, "flatten over the batch dim (start_dim=0) mixes samples"
            )
        if start == 1 and rank is not None and end == rank - 1:
            return sc.op("Flatten", [ins[0]], axis=1)
        rest = self.rest(nid)
        if rest is None:
            raise _unsupported(
                self.g, nid, f"flatten needs a static output shape, got {self.shape(nid)}"
            )
        return sc.op("Reshape", [ins[0], sc.ints([-1, *rest])])

    def op_reshape(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        rest = self.rest(nid)
        if rest is None:
            target = list(attrs["shape"])
            if not target or target[0] != -1 or -1 in target[1:]:
                raise _unsupported(self.g, nid, f"reshape to {target} needs a static output shape")
            rest = [int(d) for d in target[1:]]
        return sc.op("Reshape", [ins[0], sc.ints([-1, *rest])])

    def op_dropout(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        if attrs.get("training"):
            raise _unsupported(self.g, nid, "dropout in training mode; export an eval-mode model")
        return sc.op("Identity", [ins[0]])

    def op_identity(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return sc.op("Identity", [ins[0]])

    def op_add(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        out = ins[0]
        for x in ins[1:]:  # left to right, as the reference backend
            out = sc.op("Add", [out, x])
        return out

    def op_mul(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return sc.op("Mul", [ins[0], ins[1]])

    def op_scale(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return self._scale(sc, nid, attrs["op"], attrs["value"], ins[0])

    def _scale(self, sc: _Scope, nid: int, op: str, value: Any, x: str) -> str:
        if op not in ("mul", "div"):
            raise IRError(f"{_node_ref(self.g, nid)}: scale op {op!r} is not 'mul' or 'div'")
        # torch casts the Python float to float32 and keeps division as division
        return sc.op("Mul" if op == "mul" else "Div", [x, sc.scalar(float(value))])

    def op_cat(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        dim = int(attrs["dim"])
        if dim == 0:
            raise _unsupported(self.g, nid, "cat along the batch dim (dim=0) mixes samples")
        return sc.op("Concat", ins, axis=dim)

    def op_sub(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return sc.op("Sub", [ins[0], ins[1]])

    def op_neg(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return sc.op("Neg", [ins[0]])

    def op_add_scalar(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return sc.op("Add", [ins[0], sc.scalar(float(attrs["value"]))])

    def op_matmul(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return sc.op("MatMul", [ins[0], ins[1]])

    def op_permute(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        return sc.op("Transpose", [ins[0]], perm=[int(d) for d in attrs["perm"]])

    def op_slice(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        start, stop, step = int(attrs["start"]), int(attrs["stop"]), int(attrs["step"])
        return sc.op(
            "Slice",
            [
                ins[0],
                sc.ints([start]),
                sc.ints([stop]),
                sc.ints([int(attrs["dim"])]),
                sc.ints([step]),
            ],
        )

    def _reduce(self, sc: _Scope, nid: int, op: str, x: str, axes: list[int], keepdim: bool) -> str:
        onnx_op = {
            "sum": "ReduceSum",
            "mean": "ReduceMean",
            "amax": "ReduceMax",
            "amin": "ReduceMin",
        }
        if op not in onnx_op:
            raise _unsupported(self.g, nid, f"reduction {op!r}")
        kind = onnx_op[op]
        # ReduceSum takes its axes as an input from opset 13, the others from opset 18
        if kind == "ReduceSum" or self.opset >= 18:
            return sc.op(kind, [x, sc.ints(axes)], keepdims=int(keepdim))
        return sc.op(kind, [x], axes=axes, keepdims=int(keepdim))

    def op_reduce(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        axes = [int(d) for d in attrs["dims"]]
        return self._reduce(sc, nid, attrs["op"], ins[0], axes, bool(attrs["keepdim"]))

    def op_layernorm(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        shape = [int(d) for d in attrs["normalized_shape"]]
        w = self.param(nid, "weight") or sc.const(np.ones(shape, np.float32))
        b = self.param(nid, "bias") or sc.const(np.zeros(shape, np.float32))
        if self.opset < 17:
            raise _unsupported(self.g, nid, f"LayerNormalization needs opset 17 (got {self.opset})")
        return sc.op(
            "LayerNormalization", [ins[0], w, b], axis=-len(shape), epsilon=float(attrs["eps"])
        )

    def op_groupnorm(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        """InstanceNormalization of the [N, G, -1] view, then the per-channel affine (ONNX's
        GroupNormalization changed its scale's meaning at opset 21)."""
        shape = self.shape(self.g.inputs(nid)[0])
        g, c = int(attrs["num_groups"]), int(shape[1])
        grouped = sc.op("Reshape", [ins[0], sc.ints([0, g, -1])])
        ones, zeros = sc.const(np.ones(g, np.float32)), sc.const(np.zeros(g, np.float32))
        normed = sc.op("InstanceNormalization", [grouped, ones, zeros], epsilon=float(attrs["eps"]))
        y = sc.op("Reshape", [normed, sc.op("Shape", [ins[0]])])
        per_channel = [c] + [1] * (len(shape) - 2)
        for role, op in (("weight", "Mul"), ("bias", "Add")):
            p = self.param(nid, role)
            if p is not None:
                y = sc.op(op, [y, sc.op("Reshape", [p, sc.ints(per_channel)])])
        return y

    def op_activation(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        fn, x = attrs["fn"], ins[0]
        if fn in ("relu", "sigmoid", "tanh"):
            return sc.op({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[fn], [x])
        if fn == "gelu":  # 0.5 x (1 + erf(x / sqrt(2))), torch's exact GELU
            erf = sc.op("Erf", [sc.op("Div", [x, sc.scalar(math.sqrt(2.0))])])
            return sc.op(
                "Mul", [sc.op("Mul", [x, sc.scalar(0.5)]), sc.op("Add", [erf, sc.scalar(1.0)])]
            )
        if fn == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = sc.op("Mul", [sc.op("Mul", [x, x]), x])
            inner = sc.op("Add", [x, sc.op("Mul", [cube, sc.scalar(0.044715)])])
            t = sc.op("Tanh", [sc.op("Mul", [inner, sc.scalar(math.sqrt(2.0 / math.pi))])])
            return sc.op(
                "Mul", [sc.op("Mul", [x, sc.scalar(0.5)]), sc.op("Add", [t, sc.scalar(1.0)])]
            )
        raise _unsupported(self.g, nid, f"activation {fn!r}")

    def op_softmax(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        kind = "LogSoftmax" if attrs.get("log") else "Softmax"
        return sc.op(kind, [ins[0]], axis=int(attrs["dim"]))

    def op_repeat_time(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        """A static value's [B, ...] rows at every step: [T*B, ...] (t-major rows)."""
        shape = self.shape(nid)
        if not shape:
            raise _unsupported(self.g, nid, "repeat_time needs a known per-step rank")
        t = sc.op("Slice", [self.tb, sc.ints([0]), sc.ints([1])])
        repeats = sc.op("Concat", [t, sc.ints([1] * (len(shape) - 1))], axis=0)
        return sc.op("Tile", [ins[0], repeats])

    def op_voting(self, sc: _Scope, nid: int, attrs: dict[str, Any], ins: list[str]) -> str:
        k = int(attrs["voting_size"])
        src_shape = self.shape(self.g.inputs(nid)[0])
        if src_shape is not None and len(src_shape) == 2:
            axis = sc.ints([1])
            pooled = sc.op(
                "AveragePool", [sc.op("Unsqueeze", [ins[0], axis])], kernel_shape=[k], strides=[k]
            )
            return sc.op("Squeeze", [pooled, axis])
        rest = self.rest(nid)
        src_rest = self.rest(self.g.inputs(nid)[0])
        if rest is None or src_rest is None:
            raise _unsupported(self.g, nid, "voting over a rank > 2 input needs static shapes")
        x3 = sc.op("Reshape", [ins[0], sc.ints([-1, 1, src_rest[-1]])])
        pooled = sc.op("AveragePool", [x3], kernel_shape=[k], strides=[k])
        return sc.op("Reshape", [pooled, sc.ints([-1, *rest])])

    # ---------------------------------------------------------------- neurons and scans
    def spec(self, nid: int) -> NeuronSpec:
        return NeuronSpec.from_dict(self.g.attrs(nid)["neuron"])

    def neuron(self, nid: int) -> NeuronGraph:
        """The node's neuron graph (its form's definition for its spec), errors naming the node."""
        try:
            ng = build(self.spec(nid))
        except UnsupportedError as e:
            raise _unsupported(self.g, nid, str(e)) from None
        if len(self.g.in_edges(nid)) < len(ng.ports):
            raise IRError(
                f"{_node_ref(self.g, nid)}: charge form {ng.form!r} reads the ports "
                f"{list(ng.ports)}; the node has {len(self.g.in_edges(nid))} input(s)"
            )
        return ng

    def derive(self, nid: int, ng: NeuronGraph) -> dict[str, str]:
        """The neuron's quantities from its params, in the main graph, once before the Scan.

        Each is a value the reference backend computes once per run from a node
        param (PLIF's ``k = sigmoid(w)``, snnTorch's ``beta.clamp(0, 1)`` (Clip,
        exact), Norse's ``dt * tau_mem_inv``: the Python float rounded to float32,
        then one float32 ``Mul``, as torch's ``python_scalar * tensor`` does),
        lowered from the form's derive graph (:func:`lower_to_onnx`). The same
        quantity of the same params (a module that returns several values becomes
        several nodes) is computed once.
        """
        m = self.main
        m.prefix = f"/n{nid}"
        inputs = {}
        for role in self.g.node(nid)["params"]:
            name = self.param(nid, role)
            if name is not None:
                inputs[f"p:{role}"] = name
        out: dict[str, str] = {}
        for q, i in ng.quantities.items():
            key = (json.dumps(ng.derive.to_json()), q, tuple(sorted(inputs.items())))
            if key not in self.shared:
                refs = lower_to_onnx(m, ng.derive, [i], inputs)
                self.shared[key] = refs[i]
            out[q] = self.shared[key]
        return out

    def apply_steps(self, sc: _Scope, nid: int, key: str, x: str, ins: list[str]) -> str:
        """A fused prologue/epilogue (reference apply_steps order)."""
        for st in self.g.attrs(nid).get(key, []) or []:
            kind = st.get("kind")
            if kind == "scale":
                x = self._scale(sc, nid, st["op"], st["value"], x)
            elif kind == "add":
                port = int(st["port"])
                if not 1 <= port < len(ins):
                    raise IRError(f"{_node_ref(self.g, nid)}: {key} add step reads port {port}")
                x = sc.op("Add", [x, ins[port]])
            else:
                raise IRError(f"{_node_ref(self.g, nid)}: unknown {key} step kind {kind!r}")
        return x

    def neuron_step(
        self, sc: _Scope, nid: int, ins: list[str], state: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """One step of the neuron's form, lowered op for op: (output, new state by var).

        ``ins``: the node's inputs in port order (``x``, the form's other ports
        such as ``rec``, then fused prologue/epilogue ports); ``state``: the
        value of each of the form's state variables at t-1.
        """
        ng = self.neuron(nid)
        x = self.apply_steps(sc, nid, "prologue", ins[0], ins)
        inputs = {f"s:{v}": state[v] for v in ng.states}
        inputs.update({f"x:{p}": ins[j] for j, p in enumerate(ng.ports)})
        inputs["x:x"] = x
        inputs.update({f"q:{q}": name for q, name in self.derived[nid].items()})
        results = {"out": ng.outputs[ng.out], **{v: ng.next_state[v] for v in ng.states}}
        roots = [v.i for v in results.values() if isinstance(v, E.Val)]
        refs = lower_to_onnx(sc, ng.step, roots, inputs)

        def ref(v: Any) -> str:
            if isinstance(v, E.Val):
                return refs[v.i]
            return sc.op("Add", [sc.op("Mul", [x, sc.scalar(0.0)]), sc.scalar(float(v))])

        new = {var: ref(ng.next_state[var]) for var in ng.states}
        out = ref(ng.outputs[ng.out])
        return self.apply_steps(sc, nid, "epilogue", out, ins), new

    def initial_state(self, nid: int, var: str, fill: float, outer_x: str | None = None) -> str:
        """The state ``var`` of ``nid`` at t=-1: ``fill`` everywhere, or with state_io the
        graph input ``state.<nid>.<var>`` (and ``outer_x``, the neuron's input sequence,
        gives the shape when the IR has no static one)."""
        m = self.main
        m.prefix = f"/n{nid}"
        if not self.state_io:
            value = numpy_helper.from_array(np.full(1, fill, np.float32))
            return m.op("ConstantOfShape", [self.batch_shape(nid, outer_x)], value=value)
        name = f"state.{nid}.{var}"
        info = _vinfo(name, self.step_shape(nid))
        info.doc_string = (
            f"{var} of IR node %{nid} at t=-1, [B, ...] (fresh: filled with {fill!r}); "
            f"output next_state.{nid}.{var} is its value after the last step"
        )
        self.state_inputs.append(info)
        return name

    def emit_scan(self, nodes: list[int]) -> None:
        """One Scan over ``nodes`` (a neuron, or a recurrent group) stepping along axis 0."""
        g, m = self.g, self.main
        members = set(nodes)
        order = [n for n in g.topo_order() if n in members]
        head = order[0]
        body = _Scope(self.names)
        neurons = [n for n in order if g.op(n) == "neuron"]
        graphs = {n: self.neuron(n) for n in neurons}
        for n in neurons:
            self.derived[n] = self.derive(n, graphs[n])
        local: dict[tuple[int, int], str] = {}
        state_in: list[onnx.ValueInfoProto] = []
        state_init: list[str] = []
        scan_in: list[onnx.ValueInfoProto] = []
        scan_outer: list[str] = []
        state: dict[int, dict[str, str]] = {}
        # states: every state variable of each neuron's form (v first, v_init; the rest
        # start at 0), then each value a delay edge reads inside the group
        for n in neurons:
            body.prefix = f"/n{n}"
            x_edge = self.in_edges(n)[0]
            outer_x = None if x_edge.src in members else self.seq_of(x_edge.src)
            state[n] = {}
            for var in graphs[n].states:
                state[n][var] = self.names.fresh(body.prefix, var)
                state_in.append(_vinfo(state[n][var], self.step_shape(n)))
                state_init.append(self.initial_state(n, var, graphs[n].inits[var], outer_x))
        delayed = sorted(
            {e.src for n in order for e in self.in_edges(n) if e.delay and e.src in members}
        )
        for p in delayed:
            body.prefix = f"/n{p}"
            local[(p, 1)] = self.names.fresh(body.prefix, "prev")
            state_in.append(_vinfo(local[(p, 1)], self.step_shape(p)))
            state_init.append(self.initial_state(p, "delay", 0.0))
        # scan inputs: every value produced outside the group, at the delay it is read
        for n in order:
            for e in self.in_edges(n):
                key = (e.src, e.delay)
                if e.src in members or key in local:
                    continue
                outer = self.seq_of(e.src, e.delay)
                body.prefix = f"/n{e.src}"
                name = self.names.fresh(body.prefix, "t" if e.delay == 0 else "t_prev")
                local[key] = name
                scan_in.append(_vinfo(name, self.step_shape(e.src)))
                scan_outer.append(outer)
        if not scan_in:  # Scan needs a scanned input to know T; the first model input serves
            first = self.inputs[0].name
            name = self.names.fresh(f"/n{head}", "clock")
            scan_in.append(_vinfo(name, None))
            scan_outer.append(first)
        # the step itself
        new_state: dict[int, dict[str, str]] = {}
        for n in order:
            body.prefix = f"/n{n}" + (
                f".{_safe(g.node(n)['name'])}" if g.node(n).get("name") else ""
            )
            ins = [local[(e.src, e.delay)] for e in self.in_edges(n)]
            if g.op(n) == "neuron":
                out, new_state[n] = self.neuron_step(body, n, ins, state[n])
            elif g.op(n) in ("input", "output"):
                raise _unsupported(g, n, "an input/output node inside a recurrent group")
            else:
                out = self.stateless(body, n, ins)
            local[(n, 0)] = out
        # body outputs: new states, then the per-step values used after the group
        exported = [n for n in order if any(u.dst not in members for u in g.users(n))]
        body_inputs = {v.name for v in state_in + scan_in}
        seen: set[str] = set()
        out_infos: list[onnx.ValueInfoProto] = []

        def body_output(value: str, nid: int) -> None:
            if value in seen or value in body_inputs:
                body.prefix = f"/n{nid}"
                value = body.op("Identity", [value])
            seen.add(value)
            out_infos.append(_vinfo(value, self.step_shape(nid)))

        for n in neurons:
            for var in graphs[n].states:
                body_output(new_state[n][var], n)
        for p in delayed:
            body_output(local[(p, 0)], p)
        for n in exported:
            body_output(local[(n, 0)], n)
        body_graph = helper.make_graph(body.nodes, f"scan_n{head}", state_in + scan_in, out_infos)
        m.prefix = f"/n{head}" + (
            f".{_safe(g.node(head)['name'])}" if g.node(head).get("name") else ""
        )
        n_state = len(state_in)
        doc = json.dumps(
            {
                "snncc_ir_version": IR_FORMAT_VERSION,
                "nodes": order,
                DOC_NEURONS: {str(n): encode(g.attrs(n)["neuron"]) for n in neurons},
            },
            separators=(",", ":"),
        )
        outs = m.op(
            "Scan",
            state_init + scan_outer,
            n_out=n_state + len(exported),
            doc=doc,
            body=body_graph,
            num_scan_inputs=len(scan_in),
        )
        if self.state_io:
            keys = [(n, var) for n in neurons for var in graphs[n].states]
            keys += [(p, "delay") for p in delayed]
            for (n, var), name in zip(keys, outs[:n_state]):
                m.prefix = f"/n{n}"
                out = f"next_state.{n}.{var}"
                m.op("Identity", [name], out_names=[out])
                self.state_outputs.append(_vinfo(out, self.step_shape(n)))
        for n, name in zip(exported, outs[n_state:]):
            self.seq[(n, 0)] = name


def lower_to_onnx(
    sc: _Scope, g: E.Graph, roots: list[int], inputs: dict[str, str]
) -> dict[int, str]:
    """The expression language lowered to ONNX nodes in ``sc``: node -> ONNX value name.

    One ONNX op per node (a Python constant is a float32 Constant, as torch casts
    a Python scalar). Two ops are computed through float64 because ONNX
    Runtime's float32 ``Exp`` (and ``Sigmoid``) are approximations that disagree
    with torch's in the last bit for most inputs, while ``exp`` in float64
    rounded to float32 is the correctly rounded value (measured on 40000 PLIF
    weights: all but ~3 in 10^4 equal torch's ``w.sigmoid()``): ``exp`` and
    ``sigmoid`` = ``1 / (1 + exp(-x))`` with that exp.
    """
    return E.lower_nodes(
        g,
        roots,
        inputs,
        sc.scalar,
        lambda i, n, args: _onnx_op(sc, n, args),
        target="the ONNX export",
    )


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}
_UNARY = {
    "neg": "Neg",
    "recip": "Reciprocal",
    "log": "Log",
    "tanh": "Tanh",
    "abs": "Abs",
    "sqrt": "Sqrt",
    "relu": "Relu",
    "sign": "Sign",
    "sin": "Sin",
    "cos": "Cos",
}
_COMPARE = {
    "gt": "Greater",
    "ge": "GreaterOrEqual",
    "lt": "Less",
    "le": "LessOrEqual",
    "eq": "Equal",
}


def _exp(sc: _Scope, x: str) -> str:
    """float32 ``exp`` through float64 (see :func:`lower_to_onnx`)."""
    e = sc.op("Exp", [sc.op("Cast", [x], to=TensorProto.DOUBLE)])
    return sc.op("Cast", [e], to=TensorProto.FLOAT)


def _onnx_op(sc: _Scope, n: E.ENode, a: list[str]) -> str:
    op = n.op
    if op in _BINARY:
        return sc.op(_BINARY[op], a)
    if op in _UNARY:
        return sc.op(_UNARY[op], a)
    if op == "exp":
        return _exp(sc, a[0])
    if op == "pow":
        return sc.op("Pow", [a[0], sc.scalar(n.attr("e"))])
    if op == "sigmoid":
        one = sc.scalar(1.0)
        return sc.op("Div", [one, sc.op("Add", [one, _exp(sc, sc.op("Neg", a))])])
    if op == "clamp":
        lo, hi = n.attr("lo"), n.attr("hi")
        bounds = [sc.scalar(lo) if lo is not None else "", sc.scalar(hi) if hi is not None else ""]
        while bounds and bounds[-1] == "":
            bounds.pop()
        return sc.op("Clip", [a[0], *bounds])
    if op in _COMPARE:
        return sc.op("Cast", [sc.op(_COMPARE[op], a)], to=TensorProto.FLOAT)
    if op == "and":
        return sc.op("Mul", a)
    if op == "where":
        cond = sc.op("Cast", [a[0]], to=TensorProto.BOOL)
        return sc.op("Where", [cond, a[1], a[2]])
    if op == "heaviside":
        cmp = "GreaterOrEqual" if n.attr("cmp") == ">=" else "Greater"
        return sc.op("Cast", [sc.op(cmp, [a[0], sc.scalar(0.0)])], to=TensorProto.FLOAT)
    if op == "detach":
        return a[0]
    raise IRError(f"the ONNX lowering has no rule for expression op {op!r}")


def _snncc_version() -> str:
    try:
        from snncc import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "0"


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedError(
            f"ONNX opset {opset!r} is not supported; choose {MIN_OPSET}..{MAX_OPSET}"
        )
    return opset


def to_onnx(
    graph: Graph,
    path: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    *,
    state_io: bool = False,
) -> onnx.ModelProto:
    """Export ``graph`` (after the reference pipeline, or the jax one) as an ONNX model.

    The model's inputs are ``input<i>`` of shape ``[T, B, ...]`` and its outputs
    ``output<i>`` of shape ``[T, B, ...]`` (``i``: the IR input/output index);
    ``T`` and ``B`` are symbolic. Parameters are initializers named by their
    state_dict names. The model passes ``onnx.checker.check_model(full_check=True)``;
    with ``path`` it is also written there. ``opset``: MIN_OPSET..MAX_OPSET.

    ``state_io=True`` adds, after those, one input ``state.<nid>.<var>`` per
    Scan state (``[B, ...]``; ``var`` is each state variable of the neuron's
    form, ``v``/``i``/``s``, or ``delay``; a fresh state is the neuron's
    ``v_init`` for ``v`` and 0 for the rest) and the matching output
    ``next_state.<nid>.<var>``, so the sequence can be streamed in chunks
    exactly like ``Program.run(x, state)``.

    Raises UnsupportedError (naming the IR node) for what ONNX cannot express
    with the same results: training-mode batchnorm/dropout, avgpool
    divisor_override, a partial last ceil_mode window, non-float32 graphs,
    neuron charge forms other than :data:`CHARGE_FORMS`, a form constant with
    neither a node param nor a spec value (as the reference backend does).
    """
    check_opset(opset)
    from snncc.ir.verify import verify

    verify(graph)
    model = _Exporter(graph, opset, state_io).run()
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        with replaced_on_success(path) as tmp:  # atomic, and never through a link at path
            onnx.save_model(model, str(tmp))
    return model


def reexport(graph: Graph, opset: int, state_io: bool = False) -> onnx.ModelProto:
    """Export without checking (the importer compares the result with the file it read)."""
    return _Exporter(graph, opset, state_io).run()
