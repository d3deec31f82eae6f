"""Import ONNX files written by snncc's exporter back into the IR.

Why only snncc's own files: a generic ONNX graph says nothing about neuron
semantics (a Scan body is just arithmetic), so there is no faithful way to
recover ``>=`` vs ``>``, the charge form or the reset rule from it. snncc's
exporter (:mod:`snncc.exchange.onnx_export`) writes the IR structure into
``metadata_props`` and each neuron's NeuronSpec into its Scan's
``doc_string``; this module rebuilds the exact IR from them, with the
parameters read from the initializers (so weights edited in the file are
honoured).

The file's graph stays the truth: after rebuilding, the IR is exported again
and must give the file's graph node for node (doc strings aside). A file
whose graph was edited after export, or that carries ops snncc never writes,
is refused with an UnsupportedError naming the ONNX node (name, op_type) and
the reason, so the imported IR always computes exactly what the file does.

    from snncc.exchange.onnx_import import from_onnx
    graph = from_onnx("model.onnx")   # the scheduled IR that was exported
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from snncc.errors import CheckpointError, IRError, SnnccError, UnsupportedError
from snncc.exchange.onnx_export import (
    DOC_NEURONS,
    IR_FORMAT_VERSION,
    MAX_OPSET,
    META_GRAPH,
    META_OPTIONS,
    META_VERSION,
    MIN_OPSET,
    ONNX_OPS,
    SPEC_ON_SCAN,
    decode,
    reexport,
)
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.safe_files import parse_json

__all__ = ["from_onnx"]


def _node_label(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} ({node.op_type})"


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (Scan bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            for sub in attr.graphs:
                yield from _walk(sub)


# ------------------------------------------------------------------ loading
def _load(path_or_model: Any) -> tuple[onnx.ModelProto, str]:
    """The model and a label for messages; CheckpointError for a missing or corrupt file."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, where = path_or_model, "the ONNX model"
    else:
        if not isinstance(path_or_model, (str, os.PathLike)):
            raise TypeError(
                f"from_onnx takes a path or an onnx.ModelProto, not {type(path_or_model).__name__}"
            )
        path = Path(path_or_model)
        where = f"ONNX file {str(path)!r}"
        if not path.is_file():
            raise CheckpointError(f"{where} does not exist (or is not a file)")
        try:
            # never another file's bytes: external tensor data is refused below, not read
            model = onnx.load_model(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf raises several unrelated types
            raise CheckpointError(f"{where} is corrupt or not an ONNX model: {e}") from e
    external = [
        t.name
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data
    ]
    if external:
        raise CheckpointError(
            f"{where} keeps tensor data in other files (external data: {external[:3]}); "
            "snncc reads only self-contained ONNX files, as 'snncc export' writes them"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where} is corrupt or not a valid ONNX model: {first}") from e
    return model, where


def _check_metadata(model: onnx.ModelProto, where: str) -> dict[str, str]:
    props = {p.key: p.value for p in model.metadata_props}
    if META_VERSION not in props or META_GRAPH not in props:
        first = next(iter(model.graph.node), None)
        at = f"; cannot map {_node_label(first)} back to the IR without it" if first else ""
        raise UnsupportedError(
            f"{where} has no snncc metadata (metadata_props {META_VERSION!r} and {META_GRAPH!r}): "
            "snncc imports ONNX files written by its own exporter (snncc.exchange.to_onnx), "
            f"whose metadata carries the neuron semantics a plain ONNX graph lacks{at}"
        )
    try:
        version = int(props[META_VERSION])
    except ValueError:
        raise CheckpointError(
            f"{where}: {META_VERSION}={props[META_VERSION][:40]!r} is not a version number"
        ) from None
    if version > IR_FORMAT_VERSION:
        raise UnsupportedError(
            f"{where} was written with snncc IR metadata version {version}; this snncc reads "
            f"versions up to {IR_FORMAT_VERSION} (upgrade snncc)"
        )
    return props


def _check_ops(model: onnx.ModelProto, where: str) -> int:
    """The default-domain opset; UnsupportedError for foreign domains, opsets and op types."""
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
        else:
            raise UnsupportedError(
                f"{where} imports the operator domain {imp.domain!r}; snncc's files use only "
                "the default ONNX domain"
            )
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedError(
            f"{where} uses ONNX opset {opset}; snncc reads {MIN_OPSET}..{MAX_OPSET}"
        )
    for node in _walk(model.graph):
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(
                f"{where}: {_node_label(node)} is in domain {node.domain!r}; snncc reads the "
                "default ONNX domain only"
            )
        if node.op_type not in ONNX_OPS:
            raise UnsupportedError(
                f"{where}: {_node_label(node)}: op {node.op_type} is not one snncc's exporter "
                f"writes, so it has no IR meaning here; supported: {', '.join(sorted(ONNX_OPS))}"
            )
    return opset


# ------------------------------------------------------------------ rebuilding
def _structure(text: str, where: str) -> dict[str, Any]:
    doc = parse_json(text, f"{where}: metadata {META_GRAPH!r}", CheckpointError)
    if not isinstance(doc, dict) or doc.get("format") != "snncc-ir":
        raise CheckpointError(f"{where}: metadata {META_GRAPH!r} is not an snncc IR description")
    for key in ("next_id", "meta", "nodes", "edges", "params"):
        if key not in doc:
            raise CheckpointError(f"{where}: metadata {META_GRAPH!r} lacks {key!r}")
    return doc


def _scan_specs(model: onnx.ModelProto, where: str) -> dict[int, dict[str, Any]]:
    """Neuron node id -> spec dict, read from the Scan nodes' doc strings."""
    specs: dict[int, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type != "Scan":
            continue
        try:
            doc = parse_json(node.doc_string, "doc_string", CheckpointError)
            entries = doc[DOC_NEURONS]
            version = int(doc["snncc_ir_version"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            raise UnsupportedError(
                f"{where}: {_node_label(node)} has no snncc neuron spec in its doc_string; "
                "snncc needs it to know the neuron semantics of the loop body"
            ) from None
        if version > IR_FORMAT_VERSION:
            raise UnsupportedError(
                f"{where}: {_node_label(node)} carries snncc IR version {version}; this snncc "
                f"reads up to {IR_FORMAT_VERSION}"
            )
        for key, spec in entries.items():
            try:
                spec = decode(spec)
                NeuronSpec.from_dict(spec)
            except (IRError, TypeError, ValueError) as e:
                raise UnsupportedError(
                    f"{where}: {_node_label(node)}: neuron spec of IR node %{key} is invalid: {e}"
                ) from e
            specs[int(key)] = spec
    return specs


def _params(model: onnx.ModelProto, doc: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    inits = {t.name: t for t in model.graph.initializer}
    params: dict[str, np.ndarray] = {}
    for name, shape in doc["params"].items():
        if name not in inits:
            raise CheckpointError(f"{where}: initializer {name!r} (an IR parameter) is missing")
        arr = numpy_helper.to_array(inits[name])
        if arr.dtype != np.float32 or list(arr.shape) != list(shape):
            raise CheckpointError(
                f"{where}: initializer {name!r} is {arr.dtype}{list(arr.shape)}; the IR "
                f"expects float32{list(shape)}"
            )
        params[name] = arr
    return params


def _rebuild(model: onnx.ModelProto, doc: dict[str, Any], where: str) -> Graph:
    specs = _scan_specs(model, where)
    g = Graph()
    try:
        for rec in doc["nodes"]:
            nid, data = int(rec["id"]), decode(rec["data"])
            attrs = data.get("attrs", {})
            if data.get("op") == "neuron" and attrs.get("neuron") == SPEC_ON_SCAN:
                if nid not in specs:
                    raise UnsupportedError(
                        f"{where}: IR node %{nid} (neuron {data.get('name', '')!r}) has no spec: "
                        "no Scan node's doc_string lists it"
                    )
                attrs["neuron"] = specs[nid]
            g.nx.add_node(nid, **data)
        for u, v, d in doc["edges"]:
            g.nx.add_edge(int(u), int(v), **decode(d))
        g.meta = decode(doc["meta"])
        g._next_id = int(doc["next_id"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}: metadata {META_GRAPH!r} is malformed ({e!r})") from e
    g.params = _params(model, doc, where)
    try:
        from snncc.ir.verify import verify
    except ImportError:  # pragma: no cover - the verifier ships with snncc.ir
        return g
    try:
        verify(g)
    except IRError as e:
        raise CheckpointError(f"{where}: metadata describes an invalid IR graph: {e}") from e
    return g


# ------------------------------------------------------------------ checking the graph
def _strip(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy without doc strings (metadata, not computation), subgraphs included."""
    node = onnx.NodeProto.FromString(node.SerializeToString())
    node.doc_string = ""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            _strip_graph(attr.g)
    return node


def _strip_graph(graph: onnx.GraphProto) -> None:
    graph.doc_string = ""
    for node in graph.node:
        node.doc_string = ""
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip_graph(attr.g)


def _first_difference(
    got: onnx.GraphProto, want: onnx.GraphProto
) -> tuple[onnx.NodeProto | None, str] | None:
    """The first node of ``got`` that is not what snncc writes, and why; None when equal."""
    for i, (a, b) in enumerate(zip(got.node, want.node)):
        if a.op_type != b.op_type:
            return a, f"is a {a.op_type} where snncc writes a {b.op_type} (node #{i})"
        if list(a.input) != list(b.input) or list(a.output) != list(b.output):
            return a, (
                f"reads {list(a.input)} and writes {list(a.output)} where snncc's export reads "
                f"{list(b.input)} and writes {list(b.output)}"
            )
        sa, sb = _strip(a), _strip(b)
        if sa != sb:
            for x, y in zip(sa.attribute, sb.attribute):
                if x.type == onnx.AttributeProto.GRAPH and x.name == y.name and x != y:
                    inner = _first_difference(x.g, y.g)
                    if inner is not None:
                        return inner
            return a, "has attributes that differ from snncc's export of the same IR"
    if len(got.node) != len(want.node):
        extra = got.node[len(want.node)] if len(got.node) > len(want.node) else None
        return (
            extra,
            f"the graph has {len(got.node)} nodes where snncc's export has {len(want.node)}",
        )
    if [v.name for v in got.input] != [v.name for v in want.input]:
        return (
            None,
            f"graph inputs {[v.name for v in got.input]} differ from {[v.name for v in want.input]}",
        )
    if [v.name for v in got.output] != [v.name for v in want.output]:
        return (
            None,
            f"graph outputs {[v.name for v in got.output]} differ from {[v.name for v in want.output]}",
        )
    if sorted(t.name for t in got.initializer) != sorted(t.name for t in want.initializer):
        return None, "the initializers are not exactly the IR's parameters"
    return None


def _options(props: dict[str, str], where: str) -> dict[str, Any]:
    """The export options recorded in the file (absent: the defaults)."""
    options = parse_json(
        props.get(META_OPTIONS, "{}"), f"{where}: metadata {META_OPTIONS!r}", CheckpointError
    )
    if not isinstance(options, dict) or set(options) - {"state_io"}:
        raise UnsupportedError(
            f"{where}: export options {options!r} are not ones this snncc knows ('state_io')"
        )
    return {"state_io": bool(options.get("state_io", False))}


def _check_same(
    model: onnx.ModelProto, graph: Graph, opset: int, options: dict[str, Any], where: str
) -> None:
    try:
        want = reexport(graph, opset, **options)
    except SnnccError as e:
        raise UnsupportedError(
            f"{where}: the IR in its metadata cannot be exported again: {e}"
        ) from e
    diff = _first_difference(model.graph, want.graph)
    if diff is None:
        return
    node, why = diff
    at = f"{_node_label(node)} " if node is not None else ""
    raise UnsupportedError(
        f"{where}: {at}{why}. The file was changed after snncc exported it; snncc imports "
        "its own exports with the graph unchanged (initializer values may change)"
    )


def from_onnx(path_or_model: str | os.PathLike[str] | onnx.ModelProto) -> Graph:
    """Rebuild the IR graph that :func:`snncc.exchange.onnx_export.to_onnx` exported.

    Returns the same graph (node ids, attrs, neuron specs, edges, groups,
    meta) with parameters read from the file's initializers; it runs on any
    backend. Raises CheckpointError for a missing or corrupt file and
    UnsupportedError (naming the ONNX node and the reason) for a file snncc
    did not write, or one whose graph was edited after export.
    """
    model, where = _load(path_or_model)
    props = _check_metadata(model, where)
    opset = _check_ops(model, where)
    doc = _structure(props[META_GRAPH], where)
    graph = _rebuild(model, doc, where)
    _check_same(model, graph, opset, _options(props, where), where)
    return graph
