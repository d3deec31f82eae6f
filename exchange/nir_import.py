"""Import NIR graphs (HDF5 files or ``nir.NIRGraph`` objects) into the snncc IR.

    from snncc.exchange.nir_import import from_nir
    graph = from_nir("model.nir", dt=1e-4)          # then snncc.compile_graph(graph)

NIR neurons are continuous-time; ``dt`` (required) is the time one snncc step
stands for, in the file's time unit. The discretisation is the convention
written out in :mod:`snncc.exchange.nir_export` (forward Euler, with the exact
floating-point form of each node type), the same one :func:`snncc.exchange.nir_export.to_nir`
writes, so snncc -> NIR -> snncc reproduces outputs exactly.

Options (all explicit, with the defaults NIR itself defines):

``fire``
    ``None`` or ``">"`` (default): a neuron spikes when ``v > v_threshold``,
    as NIR specifies. ``">="``: when ``v >= v_threshold`` (SpikingJelly's rule;
    SpikingJelly's own exporter writes its thresholds unchanged, so its files
    need ``fire=">="`` to give SpikingJelly's spikes where a membrane lands
    exactly on the threshold).
``reset``
    ``None`` or ``"hard"`` (default): ``v = v_reset`` after a spike, as NIR
    specifies. ``"subtract"``: ``v = v - v_threshold`` (for files whose
    exporter dropped a subtractive reset, e.g. snnTorch's default Leaky;
    requires ``v_reset == 0``).
``accept``
    keys of :data:`IMPORT_ACCEPT` (or a comma-separated string) for
    approximations to allow instead of refusing the file.

Shapes come from the file's types: the ``Input`` nodes' shapes are required,
every other shape is inferred from them and must agree with the types the
nodes declare (the batch dimension that some exporters write into the Input
and Output types, e.g. Norse's, which writes the example input's shape, is
dropped when the Input's consumers show it is one dimension too many). Imported neurons get the surrogate gradient ``atan``
(alpha 2), NIR having none, unless the file is snncc's own export. What is
not supported (``Delay``, a ``Scale`` with per-element values on a multi-
dimensional layer, nested graphs with several inputs, ...) is refused with an
UnsupportedError naming the NIR node and the reason; a missing or unreadable
file is a CheckpointError.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snncc.errors import CheckpointError, IRError, UnsupportedError
from snncc.exchange.nir_export import (
    META_KEY,
    NIRWarning,
    check_dt,
    f32_is_one,
    neuron_fields,
    parse_accept,
    place_delays,
)
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.safe_files import MAX_ELEMENTS, check_elements, parse_json

__all__ = ["IMPORT_ACCEPT", "NIRWarning", "from_nir"]

#: accept key -> the approximation it allows when importing
IMPORT_ACCEPT = {
    "float32": "round float64 weights that float32 cannot hold exactly (snncc runs float32)",
    "unstable": "import neurons whose Euler step dt/tau exceeds 1 (the membrane overshoots; "
    "usually dt is in another time unit than the file's time constants)",
}

#: the surrogate gradient imported neurons get (NIR does not describe one)
SURROGATE = ("atan", 2.0)

_NEURONS = {"IF", "I", "LIF", "LI", "CubaLIF", "CubaLI", "Threshold"}
_STATELESS = {"Affine", "Linear", "Scale", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d", "Flatten"}
_PASS = "_pass"  # a nested graph's Input/Output: identity
_STEP_LIMIT = 1.0 + 1e-6  # dt/tau above this overshoots (rounding of exporters allowed)


@dataclass
class _Options:
    dt: float
    fire: str | None
    reset: str | None
    accept: set


@dataclass
class _Plan:
    """One NIR neuron as IR nodes: input scaling, then the neuron."""

    spec: NeuronSpec
    params: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # role -> param name
    pre: list[tuple[str, Any]] = field(default_factory=list)  # ("scale", v) | ("diag", array)
    ports: list[str] | None = None  # NIR source per input port (multi-port forms)


# --------------------------------------------------------------------------- loading


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensors (Norse's exporter stores them)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


#: the deepest group nesting read from a NIR file (NIR's own files nest a few levels per graph)
MAX_HDF_DEPTH = 32
#: the most groups and datasets read from one file (hard links can make a DAG explode)
MAX_HDF_OBJECTS = 100_000


def _read_file(path: Path) -> Any:
    """Read a NIR HDF5 file node by node, so a bad node is named in the error."""
    import h5py
    import nir

    where = f"NIR file {str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{where} does not exist (or is not a file)")
    try:
        with h5py.File(path, "r") as f:
            if "node" not in f:
                raise KeyError("no 'node' group")
            doc = _hdf_to_dict(f, "node", where, h5py, [0, 0, set()])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where} is not a NIR file (HDF5 with a 'node' group): {e}") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where} is not a NIR file: 'node' is not a group")
    return _build(doc, where, nir, "")


def _hdf_to_dict(parent: Any, key: str, where: str, h5py: Any, count: list[Any]) -> Any:
    """The value under ``parent[key]``: a dict for a group, the data for a dataset.

    Data is read only from the file itself: HDF5 soft and external links,
    datasets stored in other files and virtual datasets are refused (they
    would make another file's bytes the weights); a NIR file is a tree, so an
    object reached twice through hard links (a cycle, or a DAG that would
    multiply what is read) is refused; nesting, the number of objects and
    each dataset's size are checked before anything is read. ``count``:
    [values read, objects seen, ids of the objects seen].
    """
    name = f"{parent.name.rstrip('/')}/{key}"
    link = parent.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise CheckpointError(
            f"{where}: {name} is an HDF5 external link to {link.filename}:{link.path}; snncc "
            "reads only data stored in the NIR file itself"
        )
    if isinstance(link, h5py.SoftLink):
        raise CheckpointError(
            f"{where}: {name} is an HDF5 soft link to {link.path}; snncc reads only data "
            "stored in the NIR file itself, each value once"
        )
    count[1] += 1
    if count[1] > MAX_HDF_OBJECTS:
        raise CheckpointError(f"{where} holds more than {MAX_HDF_OBJECTS} groups and datasets")
    item = parent[key]
    if item.id in count[2]:
        raise CheckpointError(
            f"{where}: {name} is a second hard link to an object already read; a NIR file is "
            "a tree (each value stored once)"
        )
    count[2].add(item.id)
    if isinstance(item, h5py.Group):
        depth = name.count("/")
        if depth > MAX_HDF_DEPTH:
            raise CheckpointError(f"{where}: groups nest deeper than {MAX_HDF_DEPTH} levels")
        return {
            k: _hdf_to_dict(item, k, where, h5py, count)
            for k in item  # noqa: SIM118 - h5py groups iterate names
        }
    if not isinstance(item, h5py.Dataset):
        raise CheckpointError(f"{where}: {name} is neither a group nor a dataset")
    if item.external:
        raise CheckpointError(
            f"{where}: dataset {name} keeps its data in other files ({item.external[0][0]!r}); "
            "snncc reads only data stored in the NIR file itself"
        )
    if item.is_virtual:
        raise CheckpointError(
            f"{where}: dataset {name} is a virtual dataset (it maps other files' data); snncc "
            "reads only data stored in the NIR file itself"
        )
    count[0] += check_elements(item.shape or (), f"{where}: dataset {name}", CheckpointError)
    if count[0] > MAX_ELEMENTS:
        raise CheckpointError(f"{where} declares more than {MAX_ELEMENTS} values in all")
    value = item[()]
    return value.decode("utf8") if isinstance(value, bytes) else value


def _build(doc: dict[str, Any], where: str, nir: Any, prefix: str) -> Any:
    if doc.get("type") != "NIRGraph" or "nodes" not in doc or "edges" not in doc:
        raise CheckpointError(f"{where}: {prefix or 'the root'} is not a NIR graph")
    nodes = {}
    for name, nd in doc["nodes"].items():
        kind = nd.get("type") if isinstance(nd, dict) else None
        if kind == "NIRGraph":
            nodes[name] = _build(nd, where, nir, f"{prefix}{name}.")
            continue
        try:
            nodes[name] = nir.dict2NIRNode(dict(nd))
        except AssertionError as e:
            raise UnsupportedError(
                f"{where}: NIR node {prefix}{name!r} has type {kind!r}, which NIR does not "
                f"define ({e or 'unknown type'})"
                if kind not in _NEURONS | _STATELESS | {"Input", "Output", "Delay"}
                else f"{where}: NIR node {prefix}{name!r} ({kind}) is malformed: {e}"
            ) from e
        except (KeyError, TypeError, ValueError) as e:
            raise UnsupportedError(
                f"{where}: NIR node {prefix}{name!r} ({kind}) is malformed: {e!r}"
            ) from e
    try:
        edges = [(_str(a), _str(b)) for a, b in doc["edges"]]
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{where}: the edge list of {prefix or 'the graph'} is malformed"
        ) from e
    meta = doc.get("metadata") or {}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(meta), type_check=False)


def _str(a: Any) -> str:
    return a.decode("utf8") if isinstance(a, bytes) else str(a)


def _load(source: Any) -> tuple[Any, str]:
    import nir

    if isinstance(source, nir.NIRGraph):
        return source, "the NIR graph"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"from_nir takes a path or a nir.NIRGraph, not {type(source).__name__}")
    return _read_file(Path(source)), f"NIR file {str(source)!r}"


def _meta(node: Any) -> dict[str, Any]:
    """The snncc metadata of a node or graph (empty when absent or unreadable)."""
    raw = (getattr(node, "metadata", None) or {}).get(META_KEY)
    if raw is None:
        return {}
    try:
        doc = parse_json(_str(raw) if isinstance(raw, (bytes, str)) else str(raw), "", IRError)
    except IRError:
        return {}
    return doc if isinstance(doc, dict) and doc.get("version") == 1 else {}


def _flatten(graph: Any, where: str, prefix: str = "") -> tuple[dict[str, Any], list]:
    """Nodes and edges with nested graphs inlined (their Input/Output become identities)."""
    import nir

    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    entry: dict[str, str] = {}
    exit_: dict[str, str] = {}
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _flatten(node, where, full + ".")
            ins = [n for n, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [n for n, v in node.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise UnsupportedError(
                    f"{where}: nested NIR graph {full!r} has {len(ins)} inputs and {len(outs)} "
                    "outputs; snncc inlines nested graphs with exactly one of each"
                )
            for n in (ins[0], outs[0]):
                sub_nodes[f"{full}.{n}"] = _PASS
            nodes.update(sub_nodes)
            edges += sub_edges
            entry[full], exit_[full] = f"{full}.{ins[0]}", f"{full}.{outs[0]}"
        elif node is None:
            raise UnsupportedError(
                f"{where}: NIR node {full!r} is empty (None): its exporter could not convert "
                "that module (Norse's to_nir drops modules it does not know, e.g. Flatten)"
            )
        else:
            nodes[full] = node
    for a, b in graph.edges:
        for end in (a, b):
            if end not in graph.nodes:
                raise UnsupportedError(
                    f"{where}: edge ({a!r}, {b!r}) names node {prefix + end!r}, which the graph "
                    "does not have"
                )
        edges.append((exit_.get(prefix + a, prefix + a), entry.get(prefix + b, prefix + b)))
    if len(set(edges)) != len(edges):
        dup = next(e for e in edges if edges.count(e) > 1)
        raise UnsupportedError(f"{where}: edge {dup} appears twice")
    return nodes, edges


# --------------------------------------------------------------------------- shapes


def _type(node: Any, key: str) -> tuple[int, ...] | None:
    """A node's declared input/output type, or None when undeclared ([] counts as undeclared:
    NIR gives scalar-parameter neurons the type [])."""
    types = getattr(node, f"{key}_type", None) or {}
    value = types.get(key) if isinstance(types, dict) else None
    if value is None:
        return None
    arr = _array(value).reshape(-1)
    if arr.size == 0:
        return None
    return tuple(int(v) for v in arr)


def _pool_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class _Shapes:
    """Per-step shapes (batch excluded) of every NIR node, inferred from the inputs."""

    def __init__(self, nodes: dict[str, Any], edges: list, delayed: set, where: str) -> None:
        self.nodes, self.where = nodes, where
        self.preds: dict[str, list[str]] = {n: [] for n in nodes}
        self.succs: dict[str, list[str]] = {n: [] for n in nodes}
        for a, b in edges:
            self.preds[b].append(a)
            self.succs[a].append(b)
        self.delayed = delayed
        self.edges = edges
        self.out: dict[str, tuple[int, ...]] = {}
        self.inp: dict[str, tuple[int, ...]] = {}

    def fail(self, name: str, why: str) -> UnsupportedError:
        kind = "pass-through" if self.nodes[name] is _PASS else type(self.nodes[name]).__name__
        return UnsupportedError(f"{self.where}: NIR node {name!r} ({kind}): {why}")

    def run(self, order: list[str]) -> dict[str, tuple[int, ...]]:
        """Shapes in same-step order (a node in a loop takes the shape of its first known
        input; every edge is checked at the end)."""
        pending = list(order)
        while pending:
            progress = False
            for name in list(pending):
                if type(self.nodes[name]).__name__ == "Input":
                    self.out[name] = self.input_shape(name)
                else:
                    known = [self.out[p] for p in self.preds[name] if p in self.out]
                    if not known:
                        continue
                    self.inp[name] = known[0]
                    self.out[name] = self.infer(name, known[0])
                pending.remove(name)
                progress = True
            if not progress:
                raise self.fail(
                    pending[0],
                    "it is not fed by any Input node, so its shape is unknown (NIR graphs take "
                    "data through Input nodes)",
                )
        for a, b in self.edges:
            if self.out[a] != self.inp[b]:
                raise self.fail(
                    b,
                    f"its inputs have different shapes: {list(self.out[a])} from {a!r}, "
                    f"{list(self.inp[b])}",
                )
        return self.out

    def input_shape(self, name: str) -> tuple[int, ...]:
        node = self.nodes[name]
        if self.preds[name]:
            raise self.fail(name, "an Input node has incoming edges")
        shape = _type(node, "input")
        if shape is None:
            raise self.fail(
                name,
                "it declares no shape; snncc needs the Input nodes' shapes (per step, without "
                "the batch) to infer every other shape",
            )
        wants = [self._rank_of(s) for s in self.succs[name]]
        wants = [w for w in wants if w is not None]
        if wants and all(len(shape) == w + 1 for w in wants):
            shape = shape[1:]  # the exporter wrote the batch (Norse's to_nir does)
        return shape

    def _rank_of(self, name: str) -> int | None:
        node = self.nodes[name]
        kind = type(node).__name__
        if kind in ("Conv1d", "Conv2d"):
            return 2 if kind == "Conv1d" else 3
        if kind in ("SumPool2d", "AvgPool2d"):
            return 3
        declared = _type(node, "input") if node is not _PASS else None
        return len(declared) if declared is not None else None

    def infer(self, name: str, x: tuple[int, ...]) -> tuple[int, ...]:
        node = self.nodes[name]
        if node is _PASS:
            return x
        kind = type(node).__name__
        out = getattr(self, f"shape_{kind}", self.shape_elementwise)(name, node, x)
        for key, want in (("input", x), ("output", out)):
            declared = _type(node, key)
            batch = kind == "Output" and declared is not None and declared[1:] == want
            if declared is not None and declared != want and not batch:
                raise self.fail(
                    name, f"it declares {key} type {list(declared)} but gets {list(want)}"
                )
        return out

    def shape_Output(self, name: str, node: Any, x: tuple) -> tuple:
        if self.succs[name]:
            raise self.fail(name, "an Output node has outgoing edges")
        return x

    def shape_Affine(self, name: str, node: Any, x: tuple) -> tuple:
        w = _array(node.weight)
        if w.ndim != 2:
            raise self.fail(name, f"its weight is {w.ndim}-D; snncc maps 2-D weights (out, in)")
        if not x or x[-1] != w.shape[1]:
            raise self.fail(name, f"its weight {list(w.shape)} does not fit its input {list(x)}")
        return (*x[:-1], int(w.shape[0]))

    shape_Linear = shape_Affine

    def shape_Conv1d(self, name: str, node: Any, x: tuple) -> tuple:
        return self._conv(name, node, x, 1)

    def shape_Conv2d(self, name: str, node: Any, x: tuple) -> tuple:
        return self._conv(name, node, x, 2)

    def _conv(self, name: str, node: Any, x: tuple, nd: int) -> tuple:
        w = _array(node.weight)
        groups = int(_array(node.groups))
        if len(x) != nd + 1 or x[0] != w.shape[1] * groups:
            raise self.fail(name, f"its weight {list(w.shape)} does not fit its input {list(x)}")
        stride, pad, dil = _conv_args(node, nd, w.shape[2:], lambda why: self.fail(name, why))
        out = [
            (x[1 + i] + 2 * pad[i] - dil[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1
            for i in range(nd)
        ]
        return (int(w.shape[0]), *out)

    def shape_AvgPool2d(self, name: str, node: Any, x: tuple) -> tuple:
        if len(x) != 3:
            raise self.fail(name, f"2-D pooling needs a [C, H, W] input, got {list(x)}")
        k, s, p = _pool_args(node)
        return (x[0], *(_pool_out(x[1 + i], k[i], s[i], p[i]) for i in range(2)))

    shape_SumPool2d = shape_AvgPool2d

    def shape_Flatten(self, name: str, node: Any, x: tuple) -> tuple:
        start, end = _flatten_dims(node, len(x), lambda why: self.fail(name, why))
        return (*x[:start], int(np.prod(x[start : end + 1])), *x[end + 1 :])

    def shape_elementwise(self, name: str, node: Any, x: tuple) -> tuple:
        for fname, value in _fields(node).items():
            shape = _array(value).shape
            try:
                ok = np.broadcast_shapes(shape, x) == x
            except ValueError:
                ok = False
            if not ok:
                raise self.fail(name, f"its {fname} has shape {list(shape)}, its input {list(x)}")
        return x


def _conv_args(node: Any, nd: int, kernel: tuple, fail: Any) -> tuple[list, list, list]:
    def n_of(value: Any) -> list[int]:
        arr = _array(value).reshape(-1)
        vals = [int(v) for v in arr]
        return vals * nd if len(vals) == 1 else vals

    stride, dil = n_of(node.stride), n_of(node.dilation)
    pad_raw = node.padding
    if isinstance(pad_raw, (str, bytes)):
        pad_s = _str(pad_raw)
        if pad_s == "valid":
            pad = [0] * nd
        elif pad_s == "same":
            if any(s != 1 for s in stride) or any((d * (k - 1)) % 2 for d, k in zip(dil, kernel)):
                raise fail("padding 'same' with stride > 1 or an even kernel is asymmetric")
            pad = [d * (k - 1) // 2 for d, k in zip(dil, kernel)]
        else:
            raise fail(f"padding {pad_s!r}")
    else:
        pad = n_of(pad_raw)
    return stride, pad, dil


def _pool_args(node: Any) -> tuple[list, list, list]:
    def two(value: Any) -> list[int]:
        vals = [int(v) for v in _array(value).reshape(-1)]
        return vals * 2 if len(vals) == 1 else vals

    return two(node.kernel_size), two(node.stride), two(node.padding)


def _flatten_dims(node: Any, rank: int, fail: Any) -> tuple[int, int]:
    start, end = int(_array(node.start_dim)), int(_array(node.end_dim))
    start = start + rank if start < 0 else start
    end = end + rank if end < 0 else end
    if not 0 <= start <= end < rank:
        raise fail(f"start_dim/end_dim do not fit its {rank}-D input")
    return start, end


_FIELDS = {
    "IF": ("r", "v_threshold", "v_reset"),
    "I": ("r",),
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "LI": ("tau", "r", "v_leak"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "Threshold": ("threshold",),
    "Scale": ("scale",),
}


def _fields(node: Any) -> dict[str, Any]:
    names = _FIELDS.get(type(node).__name__, ())
    return {n: getattr(node, n) for n in names if getattr(node, n, None) is not None}


# --------------------------------------------------------------------------- neurons


def _uniform(a: np.ndarray) -> float | None:
    flat = a.reshape(-1)
    if flat.size == 0:
        return None
    first = flat[0]
    if np.all(flat == first) or (np.isnan(first) and np.all(np.isnan(flat))):
        return float(first)
    return None


class _Neurons:
    """The generic discretisation of each NIR neuron type (the convention in snncc.exchange.nir_export)."""

    def __init__(self, opts: _Options, where: str) -> None:
        self.o, self.where = opts, where

    def fail(self, name: str, node: Any, why: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where}: NIR node {name!r} ({type(node).__name__}): {why}")

    def plan(self, name: str, node: Any, shape: tuple) -> _Plan:
        f = {
            k: np.broadcast_to(_array(v).astype(np.float64), shape)
            for k, v in _fields(node).items()
        }
        bad = sorted(k for k, v in f.items() if not np.all(np.isfinite(v)))
        if bad:
            raise self.fail(
                name,
                node,
                f"its {', '.join(bad)} hold NaN or infinity; neuron constants must be finite "
                "(a NaN threshold or tau would run and silently give wrong spikes)",
            )
        kind = type(node).__name__
        try:
            return getattr(self, f"plan_{kind}")(name, node, shape, f)
        except IRError as e:
            raise self.fail(name, node, str(e)) from None

    # --- helpers
    def common(self, **kw: Any) -> dict[str, Any]:
        surrogate, alpha = SURROGATE
        return {"fire_cmp": self.o.fire or ">", "surrogate": surrogate, "alpha": alpha, **kw}

    def scalar(self, name: str, node: Any, f: dict, key: str) -> float:
        value = _uniform(f[key])
        if value is None:
            raise self.fail(
                name,
                node,
                f"its {key} differs between neurons; snncc's form for it takes one value",
            )
        return value

    def gain(self, name: str, node: Any, g: np.ndarray, shape: tuple) -> list[tuple[str, Any]]:
        """The IR steps computing ``g * x``: nothing, a scale, or an exact diagonal linear."""
        u = _uniform(g)
        if u is not None:
            return [] if f32_is_one(u) else [("scale", u)]
        if len(shape) == 1:
            return [("diag", np.ascontiguousarray(g, dtype=np.float64))]
        raise self.fail(
            name,
            node,
            f"its input gain differs between neurons on a {len(shape)}-D layer; the IR multiplies "
            "by one constant (per-neuron gains work on 1-D layers, as an exact diagonal linear)",
        )

    def step_ok(self, name: str, node: Any, what: str, coef: np.ndarray) -> None:
        worst = float(np.max(coef)) if coef.size else 0.0
        if worst > _STEP_LIMIT and "unstable" not in self.o.accept:
            raise self.fail(
                name,
                node,
                f"dt/{what} = {worst:.6g} > 1 with dt={self.o.dt:g}: each Euler step overshoots "
                "the membrane's target, so the result would not describe the neuron. Is dt in the "
                "file's time unit? (Norse 1.1's to_nir writes tau = dt * (1/tau_inv): import its "
                "files with dt = norse_dt**2.) Pass accept=('unstable',) to import anyway",
            )

    def reset_kw(self, name: str, node: Any, f: dict) -> dict[str, Any]:
        """Spec fields of the reset (hard to v_reset, or subtract with the option)."""
        if self.o.reset == "subtract":
            if _uniform(f["v_reset"]) != 0.0:
                raise self.fail(
                    name, node, "reset='subtract' needs v_reset == 0 (a dropped soft reset)"
                )
            return {"reset": "subtract", "v_reset": None}
        return {"reset": "hard"}

    def threshold(self, f: dict, params: dict, spec_kw: dict) -> None:
        th = _uniform(f["v_threshold"])
        if th is None:
            params["threshold"] = f["v_threshold"].astype(np.float32)
            spec_kw["v_threshold"] = math.nan
        else:
            spec_kw["v_threshold"] = th

    def norse_coeffs(self, f: dict, params: dict, extra: dict, **coefs: np.ndarray) -> None:
        """Norse-form constants; per-neuron ones as params with extra dt = 1 (exact f32(dt/tau))."""
        keys = {"tau_mem_inv": "dt_tau_mem_inv", "tau_syn_inv": "neg_dt_tau_syn_inv"}
        per_neuron = any(_uniform(c) is None for c in coefs.values())
        extra["dt"] = 1.0 if per_neuron else self.o.dt
        if per_neuron:
            extra["nir_dt"] = self.o.dt
        for role, coef in coefs.items():
            sign = -1.0 if role == "tau_syn_inv" else 1.0
            if per_neuron:
                params[role] = np.ascontiguousarray(coef, dtype=np.float32)
            else:
                extra[keys[role]] = sign * float(coef.reshape(-1)[0])

    # --- node types
    def plan_IF(self, name: str, node: Any, shape: tuple, f: dict) -> _Plan:
        th = self.scalar(name, node, f, "v_threshold")
        vr = self.scalar(name, node, f, "v_reset")
        reset = self.reset_kw(name, node, f)
        spec = NeuronSpec(
            model="if",
            charge="sj_if",
            v_threshold=th,
            v_reset=reset.get("v_reset", vr),
            reset=reset["reset"],
            v_init=vr if reset["reset"] == "hard" else 0.0,
            **self.common(),
        )
        return _Plan(spec, pre=self.gain(name, node, f["r"] * self.o.dt, shape))

    def plan_I(self, name: str, node: Any, shape: tuple, f: dict) -> _Plan:
        spec = NeuronSpec(
            model="if",
            charge="sj_if",
            v_threshold=math.nan,
            v_reset=None,
            reset="none",
            output="membrane",
            v_init=0.0,
            **self.common(surrogate="no_grad", alpha=1.0),
        )
        return _Plan(spec, pre=self.gain(name, node, f["r"] * self.o.dt, shape))

    def plan_Threshold(self, name: str, node: Any, shape: tuple, f: dict) -> _Plan:
        params: dict[str, np.ndarray] = {}
        kw: dict[str, Any] = {}
        self.threshold({"v_threshold": f["threshold"]}, params, kw)
        spec = NeuronSpec(
            model="leaky",
            charge="snntorch_leaky",
            v_reset=0.0,
            reset="none",
            v_init=0.0,
            extra={"beta": 0.0, "graded_spikes_factor": 1.0},
            param_roles=tuple(params),
            **kw,
            **self.common(),
        )
        return _Plan(spec, params)

    def plan_LIF(self, name: str, node: Any, shape: tuple, f: dict) -> _Plan:
        coef = self.o.dt / f["tau"]
        self.step_ok(name, node, "tau", coef)
        reset = self.reset_kw(name, node, f)
        v_leak = self.scalar(name, node, f, "v_leak")
        tau, th, vr = (_uniform(f[k]) for k in ("tau", "v_threshold", "v_reset"))
        target = 0.0 if reset["reset"] == "subtract" else vr
        if None not in (tau, th, vr) and v_leak == target:
            r = _uniform(f["r"])
            pre: list = []
            if r is not None and f32_is_one(r):
                charge = "sj_lif_decay_input"
            elif r is not None and f32_is_one(r * self.o.dt / tau):
                charge = "sj_lif"
            else:
                charge, pre = "sj_lif_decay_input", self.gain(name, node, f["r"], shape)
            spec = NeuronSpec(
                model="lif",
                charge=charge,
                tau=tau / self.o.dt,
                decay_input=charge == "sj_lif_decay_input",
                v_threshold=th,
                v_reset=reset.get("v_reset", vr),
                reset=reset["reset"],
                v_init=v_leak,
                **self.common(),
            )
            return _Plan(spec, pre=pre)
        params: dict[str, np.ndarray] = {}
        extra: dict[str, Any] = {"v_leak": v_leak}
        self.norse_coeffs(f, params, extra, tau_mem_inv=coef)
        spec = self._norse_firing("norse_lifbox", f, reset, vr, v_leak, extra, params)
        return _Plan(spec, params, pre=self.gain(name, node, f["r"], shape))

    def plan_LI(self, name: str, node: Any, shape: tuple, f: dict) -> _Plan:
        coef = self.o.dt / f["tau"]
        self.step_ok(name, node, "tau", coef)
        v_leak = self.scalar(name, node, f, "v_leak")
        tau = _uniform(f["tau"])
        common = self.common(surrogate="no_grad", alpha=1.0)
        pre = self.gain(name, node, f["r"], shape)
        if v_leak == 0.0 and tau is not None:
            spec = NeuronSpec(
                model="li",
                charge="snncc_li",
                tau=tau / self.o.dt,
                v_threshold=math.nan,
                v_reset=None,
                reset="none",
                output="membrane",
                v_init=0.0,
                **common,
            )
            return _Plan(spec, pre=pre)
        params: dict[str, np.ndarray] = {}
        extra: dict[str, Any] = {"v_leak": v_leak}
        self.norse_coeffs(f, params, extra, tau_mem_inv=coef, tau_syn_inv=np.ones_like(coef))
        return _Plan(self._norse_li(v_leak, extra, params, common), params, pre=pre)

    def _norse_li(self, v_leak: float, extra: dict, params: dict, common: dict) -> NeuronSpec:
        return NeuronSpec(
            model="norse_li",
            charge="norse_li",
            v_threshold=math.nan,
            v_reset=None,
            reset="none",
            output="membrane",
            v_init=v_leak,
            extra=extra,
            param_roles=tuple(params),
            **common,
        )

    def _cuba(self, name: str, node: Any, shape: tuple, f: dict) -> tuple:
        c_m = self.o.dt / f["tau_mem"]
        c_s = self.o.dt / f["tau_syn"]
        self.step_ok(name, node, "tau_mem", c_m)
        self.step_ok(name, node, "tau_syn", c_s)
        v_leak = self.scalar(name, node, f, "v_leak")
        k = f["r"] * f["w_in"] * self.o.dt / f["tau_syn"]
        params: dict[str, np.ndarray] = {}
        extra: dict[str, Any] = {"v_leak": v_leak}
        self.norse_coeffs(f, params, extra, tau_mem_inv=c_m, tau_syn_inv=c_s)
        return v_leak, params, extra, self.gain(name, node, k, shape)

    def plan_CubaLI(self, name: str, node: Any, shape: tuple, f: dict) -> _Plan:
        v_leak, params, extra, pre = self._cuba(name, node, shape, f)
        common = self.common(surrogate="no_grad", alpha=1.0)
        return _Plan(self._norse_li(v_leak, extra, params, common), params, pre=pre)

    def plan_CubaLIF(self, name: str, node: Any, shape: tuple, f: dict) -> _Plan:
        v_leak, params, extra, pre = self._cuba(name, node, shape, f)
        reset = self.reset_kw(name, node, f)
        vr = _uniform(f["v_reset"])
        spec = self._norse_firing("norse_lif", f, reset, vr, v_leak, extra, params)
        return _Plan(spec, params, pre=pre)

    def _norse_firing(
        self,
        charge: str,
        f: dict,
        reset: dict[str, Any],
        vr: float | None,
        v_leak: float,
        extra: dict[str, Any],
        params: dict[str, np.ndarray],
    ) -> NeuronSpec:
        """A spiking Norse-form spec: the threshold (a param where it varies) and the reset
        value (a param where a hard reset's varies; ``vr`` its uniform value) added to
        ``params``."""
        kw: dict[str, Any] = {}
        self.threshold(f, params, kw)
        if reset["reset"] == "hard" and vr is None:
            params["v_reset"] = f["v_reset"].astype(np.float32)
            vr = math.nan
        return NeuronSpec(
            model=charge,
            charge=charge,
            v_reset=0.0 if reset["reset"] == "subtract" else vr,  # Norse reads it either way
            reset=reset["reset"],
            v_init=v_leak,
            extra=extra,
            param_roles=tuple(params),
            **kw,
            **self.common(),
        )


def _from_metadata(name: str, node: Any, shape: tuple, opts: _Options, preds: list) -> _Plan | None:
    """The exact NeuronSpec snncc's exporter recorded, if it still describes the node's fields."""
    doc = _meta(node)
    if "spec" not in doc:
        return None
    try:
        spec = NeuronSpec.from_dict(doc["spec"])
        dtype = doc.get("dtype", "float32")
        np_dtype = np.float64 if dtype == "float64" else np.float32
        params = {
            role: np.asarray(doc["values"][role], dtype=np_dtype).reshape(doc["values_shape"][role])
            for role in doc.get("values", {})
        }
        exp = neuron_fields(spec, params, shape, opts.dt, dtype)
    except (IRError, UnsupportedError, KeyError, TypeError, ValueError):
        return None
    if opts.fire is not None and opts.fire != spec.fire_cmp:
        return None
    if opts.reset is not None and opts.reset != spec.reset:
        return None
    if exp.lossy or exp.kind != type(node).__name__:
        return None
    have = _fields(node)
    for key, want in exp.fields.items():
        got = have.get(key)
        if got is None or not np.array_equal(
            np.broadcast_to(_array(got).astype(np.float64), shape), want, equal_nan=True
        ):
            warnings.warn(
                f"NIR node {name!r}: snncc's metadata does not match its field {key!r} (edited "
                "after export?); using the generic discretisation",
                NIRWarning,
                stacklevel=4,
            )
            return None
    ports = doc.get("ports")
    if ports is not None and sorted(ports) != sorted(preds):
        return None
    names = {role: str(n) for role, n in (doc.get("params") or {}).items()}
    return _Plan(spec, params, names={r: names.get(r, "") for r in params}, ports=ports)


# --------------------------------------------------------------------------- building the IR


class _Builder:
    def __init__(
        self, nodes: dict[str, Any], edges: list, shapes: dict, opts: _Options, where: str
    ) -> None:
        self.nodes, self.edges, self.shapes, self.o, self.where = nodes, edges, shapes, opts, where
        self.g = Graph()
        self.head: dict[str, int] = {}  # NIR node -> IR node taking its (summed) input
        self.tail: dict[str, int] = {}
        self.port_of: dict[str, dict[str, int]] = {}
        self.preds: dict[str, list[str]] = {n: [] for n in nodes}
        for a, b in edges:
            self.preds[b].append(a)
        self.neurons = _Neurons(opts, where)

    def fail(self, name: str, why: str) -> UnsupportedError:
        return UnsupportedError(
            f"{self.where}: NIR node {name!r} ({type(self.nodes[name]).__name__}): {why}"
        )

    def shape(self, name: str) -> list:
        return ["B", *self.shapes[name]]

    def param(self, base: str, value: np.ndarray) -> str:
        name, i = base, 1
        while name in self.g.params:
            name, i = f"{base}_{i}", i + 1
        arr = _array(value)
        if arr.dtype != np.float32:
            f32 = arr.astype(np.float32)
            if not np.array_equal(f32.astype(arr.dtype), arr) and "float32" not in self.o.accept:
                raise UnsupportedError(
                    f"{self.where}: parameter {base!r} is {arr.dtype} and float32 cannot hold it "
                    "exactly (snncc runs float32); pass accept=('float32',) to round it"
                )
            arr = f32
        self.g.add_param(name, np.array(arr, order="C"))
        return name

    def add(self, op: str, name: str, inputs: list, shape: list, **kw: Any) -> int:
        return self.g.add_node(op, inputs, shape=shape, name=name, **kw)

    def entry(self, name: str, first: int) -> int:
        """Put an add node before ``first`` when the NIR node sums several inputs."""
        if len(self.preds[name]) > 1:
            add = self.add("add", f"{name}.sum", [], self.shape(name))
            self.g.add_edge(add, first, 0, 0)
            return add
        return first

    def build(self, order: list[str], inputs: list[str], outputs: list[str]) -> Graph:
        for name in order:
            node = self.nodes[name]
            kind = "pass" if node is _PASS else type(node).__name__
            getattr(self, f"node_{kind}", self.node_unsupported)(name, node)
        for i, name in enumerate(inputs):
            self.g.attrs(self.head[name])["index"] = i
        for i, name in enumerate(outputs):
            self.g.attrs(self.head[name])["index"] = i
        self.g.meta["inputs"] = [self.head[n] for n in inputs]
        self.g.meta["outputs"] = [self.head[n] for n in outputs]
        return self.g

    def wire(self, delayed: set) -> None:
        count: dict[str, int] = {}
        for a, b in self.edges:
            delay = 1 if (a, b) in delayed else 0
            if b in self.port_of:
                port = self.port_of[b][a]
            else:
                port = count.get(b, 0)
                count[b] = port + 1
            self.g.add_edge(self.tail[a], self.head[b], port, delay)

    def ir_name(self, name: str, node: Any) -> str:
        return _meta(node).get("name") or name

    # ---- node kinds
    def node_unsupported(self, name: str, node: Any) -> None:
        kind = type(node).__name__
        why = (
            "snncc delays values only by the one step that closes a loop through a neuron"
            if kind == "Delay"
            else "snncc has no IR op for it"
        )
        raise self.fail(
            name,
            f"{why}; supported: Input, Output, Affine, Linear, Scale, Conv1d, Conv2d, SumPool2d, "
            "AvgPool2d, Flatten, IF, I, LIF, LI, CubaLIF, CubaLI, Threshold, nested NIRGraph",
        )

    def node_Input(self, name: str, node: Any) -> None:
        nid = self.add("input", self.ir_name(name, node), [], self.shape(name), attrs={"index": 0})
        self.head[name] = self.tail[name] = nid

    def node_Output(self, name: str, node: Any) -> None:
        nid = self.add("output", self.ir_name(name, node), [], self.shape(name), attrs={"index": 0})
        self.head[name] = self.entry(name, nid)
        self.tail[name] = nid

    def node_pass(self, name: str, node: Any) -> None:
        nid = self.add("identity", name, [], self.shape(name))
        self.head[name] = self.entry(name, nid)
        self.tail[name] = nid

    def _simple(self, name: str, node: Any, op: str, attrs: dict, params: dict) -> None:
        names = _meta(node).get("params") or {}
        roles = {
            role: self.param(names.get(role) or f"{name}.{role}", v) for role, v in params.items()
        }
        nid = self.add(
            op, self.ir_name(name, node), [], self.shape(name), attrs=attrs, params=roles
        )
        self.head[name] = self.entry(name, nid)
        self.tail[name] = nid

    def node_Affine(self, name: str, node: Any) -> None:
        self._simple(name, node, "linear", {}, {"weight": node.weight, "bias": node.bias})

    def node_Linear(self, name: str, node: Any) -> None:
        self._simple(name, node, "linear", {}, {"weight": node.weight})

    def _conv(self, name: str, node: Any, nd: int) -> None:
        w = _array(node.weight)
        stride, pad, dil = _conv_args(node, nd, w.shape[2:], lambda why: self.fail(name, why))
        attrs = {
            "stride": stride,
            "padding": pad,
            "dilation": dil,
            "groups": int(_array(node.groups)),
        }
        params = {"weight": w}
        if node.bias is not None:
            params["bias"] = _array(node.bias)
        self._simple(name, node, f"conv{nd}d", attrs, params)

    def node_Conv1d(self, name: str, node: Any) -> None:
        self._conv(name, node, 1)

    def node_Conv2d(self, name: str, node: Any) -> None:
        self._conv(name, node, 2)

    def _pool(self, name: str, node: Any, divisor: int | None) -> None:
        k, s, p = _pool_args(node)
        attrs = {
            "kernel_size": k,
            "stride": s,
            "padding": p,
            "ceil_mode": False,
            "count_include_pad": True,
            "divisor_override": divisor,
        }
        self._simple(name, node, "avgpool2d", attrs, {})

    def node_AvgPool2d(self, name: str, node: Any) -> None:
        self._pool(name, node, None)

    def node_SumPool2d(self, name: str, node: Any) -> None:
        self._pool(name, node, 1)

    def node_Flatten(self, name: str, node: Any) -> None:
        rank = len(self.shapes[self.preds[name][0]])
        start, end = _flatten_dims(node, rank, lambda why: self.fail(name, why))
        self._simple(name, node, "flatten", {"start_dim": start + 1, "end_dim": end + 1}, {})

    def node_Scale(self, name: str, node: Any) -> None:
        shape = self.shapes[name]
        s = np.broadcast_to(_array(node.scale).astype(np.float64), shape)
        steps = self.neurons.gain(name, node, s, shape) or [("scale", 1.0)]
        first = last = None
        for step in steps:
            nid = self._gain_node(name, step, last)
            first = nid if first is None else first
            last = nid
        self.head[name] = self.entry(name, first)
        self.tail[name] = last

    def _gain_node(self, name: str, step: tuple, prev: int | None) -> int:
        kind, value = step
        inputs = [] if prev is None else [prev]
        if kind == "scale":
            return self.add(
                "scale",
                f"{name}.gain",
                inputs,
                self.shape(name),
                attrs={"op": "mul", "value": value},
            )
        n = value.shape[0]
        weight = np.zeros((n, n), dtype=np.float64)
        weight[np.arange(n), np.arange(n)] = value
        pname = self.param(f"{name}.gain_diag", weight.astype(np.float32))
        return self.add(
            "linear", f"{name}.gain", inputs, self.shape(name), params={"weight": pname}
        )

    def _neuron(self, name: str, node: Any) -> None:
        shape = self.shapes[name]
        plan = _from_metadata(name, node, shape, self.o, self.preds[name])
        if plan is None:
            plan = self.neurons.plan(name, node, shape)
        roles = {
            role: self.param(plan.names.get(role) or f"{name}.{role}", value)
            for role, value in plan.params.items()
        }
        spec = plan.spec
        if roles and not spec.param_roles:
            spec = spec.replace(param_roles=tuple(roles))
        nid = self.add(
            "neuron",
            self.ir_name(name, node),
            [],
            self.shape(name),
            attrs={"neuron": spec.to_dict()},
            params=roles,
        )
        first, prev = None, None
        for step in plan.pre:
            prev = self._gain_node(name, step, prev)
            first = prev if first is None else first
        if prev is not None:
            self.g.add_edge(prev, nid, 0, 0)
        if plan.ports is not None:
            self.port_of[name] = {src: i for i, src in enumerate(plan.ports)}
            self.head[name] = nid
        else:
            self.head[name] = self.entry(name, first if first is not None else nid)
        self.tail[name] = nid

    node_IF = node_I = node_LIF = node_LI = node_CubaLIF = node_CubaLI = _neuron
    node_Threshold = _neuron


# --------------------------------------------------------------------------- entry point


def _order(nodes: dict[str, Any], edges: list, delayed: set, where: str) -> list[str]:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(e for e in edges if e not in delayed)
    pos = {n: i for i, n in enumerate(nodes)}
    try:
        return list(nx.lexicographical_topological_sort(g, key=lambda n: pos[n]))
    except nx.NetworkXUnfeasible:  # pragma: no cover - place_delays breaks every cycle
        raise UnsupportedError(f"{where}: a loop of the graph has no delay") from None


def _io(nodes: dict[str, Any], kind: str) -> list[str]:
    names = [n for n, v in nodes.items() if v is not _PASS and type(v).__name__ == kind]

    def key(n: str) -> tuple:
        idx = _meta(nodes[n]).get("index")
        return (0, idx, "") if isinstance(idx, int) else (1, 0, n)

    return sorted(names, key=key) if all("index" in _meta(nodes[n]) for n in names) else names


def from_nir(
    source: str | os.PathLike[str] | Any,
    dt: float | None = None,
    reset: str | None = None,
    accept: str | Iterable[str] = (),
    fire: str | None = None,
) -> Graph:
    """Import a NIR file (HDF5) or ``nir.NIRGraph`` as an snncc IR graph (see the module docstring).

    ``dt`` is required. Returns an unscheduled graph for
    :func:`snncc.compile_graph`; it takes ``[T, B, *input_shape]``.
    """
    graph, where = _load(source)
    recorded = _meta(graph).get("dt")
    hint = f" (this file was written by snncc with dt={recorded!r})" if recorded else ""
    dt = check_dt(dt, f"NIR import of {where}", hint)
    if reset not in (None, "hard", "subtract"):
        raise UnsupportedError(f"NIR import: reset={reset!r}; use 'hard' (NIR's) or 'subtract'")
    if fire not in (None, ">", ">="):
        raise UnsupportedError(f"NIR import: fire={fire!r}; use '>' (NIR's) or '>='")
    opts = _Options(dt, fire, reset, parse_accept(accept, IMPORT_ACCEPT, "NIR import"))
    nodes, edges = _flatten(graph, where)
    for name, node in nodes.items():
        if node is not _PASS and type(node).__name__ not in _NEURONS | _STATELESS | {
            "Input",
            "Output",
        }:
            _Builder(nodes, edges, {}, opts, where).node_unsupported(name, node)
    neurons = {
        n: node is not _PASS and type(node).__name__ in _NEURONS for n, node in nodes.items()
    }
    inputs, outputs = _io(nodes, "Input"), _io(nodes, "Output")
    if not inputs or not outputs:
        raise UnsupportedError(f"{where} has {len(inputs)} Input and {len(outputs)} Output nodes")
    delayed = place_delays(neurons, edges, inputs)
    order = _order(nodes, edges, delayed, where)
    shapes = _Shapes(nodes, edges, delayed, where).run(order)
    builder = _Builder(nodes, edges, shapes, opts, where)
    g = builder.build(order, inputs, outputs)
    builder.wire(delayed)
    doc = _meta(graph)
    g.meta["source"] = "nir"
    g.meta["step_mode"] = doc.get("step_mode") if doc.get("step_mode") in ("s", "m") else "s"
    g.meta["nir"] = {"dt": dt, "fire": fire or ">", "reset": reset or "hard"}
    from snncc.ir.verify import verify

    try:
        verify(g)
    except IRError as e:
        raise UnsupportedError(f"{where}: the imported graph is not a valid snncc IR: {e}") from e
    return g
