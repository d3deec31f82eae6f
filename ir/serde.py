"""Save and load IR graphs: JSON structure plus a separate weights file.

Why two files: the structure is small, human-readable and diffable
(``ir.json``: networkx node-link data, ``Graph.meta`` and each parameter's
name, shape and dtype), while the weights are large binary arrays
(``weights.safetensors``, or ``weights.npz``). Neither format can execute
code on load: safetensors is plain bytes plus a JSON header, and npz files
are read with ``allow_pickle=False``. Nothing here ever unpickles.

A round trip is exact for graphs whose attrs and meta are JSON-native (lists,
not tuples; canonicalize produces those): same node ids, node data, edges
(with their MultiDiGraph keys), meta (groups included), parameter order, and
parameter arrays bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from snncc.errors import CheckpointError, IRError
from snncc.ir.graph import Graph
from snncc.ir.safe_files import (
    MAX_JSON_BYTES,
    check_elements,
    make_dirs,
    parse_json,
    read_file,
    refuse_link,
    umask,
    write_file,
)

FORMAT = "snncc-ir"
VERSION = 1
IR_FILE = "ir.json"
SAFETENSORS_FILE = "weights.safetensors"
NPZ_FILE = "weights.npz"
WEIGHT_FORMATS = ("safetensors", "npz")


# ----------------------------------------------------------------------- JSON
def _param_specs(graph: Graph) -> dict[str, dict[str, Any]]:
    return {
        name: {"shape": [int(d) for d in np.shape(a)], "dtype": np.asarray(a).dtype.name}
        for name, a in graph.params.items()
    }


def _unserialisable(graph: Graph) -> str:
    """Name the first node or meta key json cannot encode (for the error message)."""
    for nid, data in graph.nx.nodes(data=True):
        try:
            json.dumps(data)
        except (TypeError, ValueError) as e:
            return f"node %{nid} ({data.get('op', '?')} {data.get('name', '')!r}): {e}"
    for key, value in graph.meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            return f"meta[{key!r}]: {e}"
    return "an edge attribute"


def to_json(graph: Graph) -> str:
    """The graph's structure, meta and parameter names/shapes/dtypes as JSON (no arrays)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "next_id": graph._next_id,
        "meta": graph.meta,
        "params": _param_specs(graph),
        "graph": nx.node_link_data(graph.nx, edges="edges"),
    }
    try:
        return json.dumps(doc, indent=1)
    except (TypeError, ValueError) as e:
        raise IRError(f"graph is not JSON-serialisable at {_unserialisable(graph)}") from e


def _parse(text: str | bytes) -> tuple[Graph, dict[str, dict[str, Any]]]:
    """Rebuild the structure from JSON text; IRError says what is wrong with it."""
    doc = parse_json(text, "IR JSON", IRError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IRError(f"not an snncc IR document (expected a JSON object with format={FORMAT!r})")
    if doc.get("version") != VERSION:
        raise IRError(f"IR format version {doc.get('version')!r} is not supported (only {VERSION})")
    missing = [k for k in ("next_id", "meta", "params", "graph") if k not in doc]
    if missing:
        raise IRError(f"IR JSON lacks the keys {missing}")
    g = Graph()
    try:
        g.nx = nx.node_link_graph(doc["graph"], directed=True, multigraph=True, edges="edges")
    except (KeyError, TypeError, AttributeError, nx.NetworkXError) as e:
        raise IRError(f"IR JSON 'graph' is not networkx node-link data: {e!r}") from e
    if not isinstance(doc["meta"], dict) or not isinstance(doc["params"], dict):
        raise IRError("IR JSON 'meta' and 'params' must be objects")
    g.meta = doc["meta"]
    next_id = doc["next_id"]
    ids = [n for n in g.nx.nodes if isinstance(n, int)]
    if not isinstance(next_id, int) or (ids and next_id <= max(ids)):
        raise IRError(f"IR JSON next_id {next_id!r} must be an int above every node id")
    g._next_id = next_id
    specs = doc["params"]
    for name, spec in specs.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise IRError(f"IR JSON param {name!r} has no valid shape/dtype: {spec!r}")
        try:
            dtype = np.dtype(spec["dtype"])
        except (KeyError, TypeError, ValueError) as e:
            raise IRError(f"IR JSON param {name!r} has no valid shape/dtype: {spec!r}") from e
        if dtype.kind not in "biuf":
            raise IRError(f"IR JSON param {name!r} has dtype {dtype}; only numeric arrays")
        check_elements(spec["shape"], f"IR JSON param {name!r}", IRError)
    return g, specs


def _attach(
    graph: Graph, specs: dict[str, dict[str, Any]], weights: Mapping[str, Any], where: str
) -> None:
    """Check ``weights`` against the declared params exactly, then store them in order."""
    missing = [n for n in specs if n not in weights]
    extra = sorted(n for n in weights if n not in specs)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise CheckpointError(f"{where} does not match the IR's parameters: " + "; ".join(parts))
    for name, spec in specs.items():
        arr = np.asarray(weights[name])
        shape, dtype = [int(d) for d in spec["shape"]], np.dtype(spec["dtype"])
        if list(arr.shape) != shape or arr.dtype != dtype:
            raise CheckpointError(
                f"{where}: param {name!r} is {arr.dtype.name}{list(arr.shape)}, "
                f"the IR expects {dtype.name}{shape}"
            )
        graph.params[name] = arr


def from_json(text: str, weights: Mapping[str, Any] | None = None) -> Graph:
    """Rebuild a graph from :func:`to_json` text.

    Without ``weights`` the graph has the structure only (``graph.params`` is
    empty); with them, they must match the declared names, shapes and dtypes
    exactly (CheckpointError otherwise). Use :func:`load` for a saved folder.
    """
    graph, specs = _parse(text)
    if weights is not None:
        _attach(graph, specs, weights, "weights")
    return graph


# ---------------------------------------------------------------------- files
def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An npz np.load reads with allow_pickle=False (written by hand: any param name works)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def _write_weights(path: Path, arrays: dict[str, np.ndarray], fmt: str) -> None:
    for name, arr in arrays.items():
        if arr.dtype.hasobject or arr.dtype.kind in "USV":
            raise CheckpointError(
                f"param {name!r} has dtype {arr.dtype}; only numeric arrays can be saved"
            )
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        try:
            save_file(arrays, str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot write {path}: {e}") from e
    else:
        _write_npz(path, arrays)


def save(graph: Graph, directory: str | os.PathLike[str], *, fmt: str = "safetensors") -> Path:
    """Write ``ir.json`` and ``weights.safetensors`` (or ``weights.npz``) into ``directory``.

    Each file is written under a fresh temporary name and renamed, so an
    interrupted save never leaves a half-written file behind a good name, and
    a link planted at a file's name is replaced, never written through (a
    linked ``directory`` itself is refused). A weights file of the other
    format left from an earlier save is removed, so :func:`load` cannot pick
    up stale weights. (:meth:`snncc.CompiledModel.save` writes a whole
    artifact into a fresh folder and swaps it in, for all-or-nothing saves.)
    """
    if fmt not in WEIGHT_FORMATS:
        raise CheckpointError(f"unknown weights format {fmt!r}; choose one of {WEIGHT_FORMATS}")
    path = Path(directory)
    refuse_link(path, "IR folder", CheckpointError)
    make_dirs(path)
    text = to_json(graph)
    # np.asarray(order="C"), not ascontiguousarray: that one turns 0-d arrays into 1-d
    arrays = {k: np.asarray(v, order="C") for k, v in graph.params.items()}
    weights = path / (SAFETENSORS_FILE if fmt == "safetensors" else NPZ_FILE)
    fd, tmp = tempfile.mkstemp(prefix=f".{weights.name}.", suffix=".tmp", dir=path)
    os.close(fd)
    try:
        _write_weights(Path(tmp), arrays, fmt)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, weights)
    finally:
        Path(tmp).unlink(missing_ok=True)
    stale = path / (NPZ_FILE if fmt == "safetensors" else SAFETENSORS_FILE)
    if os.path.lexists(stale):
        stale.unlink()
    write_file(path / IR_FILE, text)
    return path


def _read_weights(path: Path, specs: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """The arrays of a weights file (not a link), each checked against ``specs`` before it is
    read, so a file that declares a huge array is refused without allocating it."""
    refuse_link(path, "weights file", CheckpointError)
    if path.name == SAFETENSORS_FILE:
        from safetensors import safe_open

        try:
            out = {}
            with safe_open(str(path), framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    _check_declared(path, name, f.get_slice(name).get_shape(), None, specs)
                    out[name] = f.get_tensor(name)
            return out
        except CheckpointError:
            raise
        except Exception as e:  # SafetensorError, OSError, ...
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        out = {}
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(fh)
                _check_declared(path, name, shape, dtype, specs)
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                out[name] = npz[name]
        return out
    except CheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(
            f"{path} is not a readable npz of numeric arrays (pickles are refused): {e}"
        ) from e


def _check_declared(
    path: Path, name: str, shape: Any, dtype: Any, specs: dict[str, dict[str, Any]]
) -> None:
    """An array's declared shape (and dtype, where the header says it) checked before reading:
    within :data:`~snncc.ir.safe_files.MAX_ELEMENTS` and, for a declared param, what the IR says
    (a compressed npz can declare far more than it holds)."""
    check_elements(list(shape), f"{path}: array {name!r}", CheckpointError)
    if dtype is not None and np.dtype(dtype).hasobject:
        raise CheckpointError(
            f"{path} is not a readable npz of numeric arrays (pickles are refused): "
            f"array {name!r} holds Python objects"
        )
    spec = specs.get(name)
    if spec is None or dtype is None:
        return
    want = (np.dtype(spec["dtype"]), [int(d) for d in spec["shape"]])
    if (np.dtype(dtype), [int(d) for d in shape]) != want:
        raise CheckpointError(
            f"{path}: param {name!r} is {np.dtype(dtype).name}{list(shape)}, "
            f"the IR expects {want[0].name}{want[1]}"
        )


def load(directory: str | os.PathLike[str]) -> Graph:
    """Read a folder written by :func:`save`, check the weights fit, and verify the graph."""
    from snncc.ir.verify import verify

    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected one holding {IR_FILE})")
    ir_path = path / IR_FILE
    if not os.path.lexists(ir_path):
        raise CheckpointError(f"{ir_path} is missing (not an snncc IR checkpoint folder)")
    try:
        text = read_file(ir_path, "IR file", CheckpointError, MAX_JSON_BYTES).decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"cannot read {ir_path}: it is not UTF-8 text ({e})") from None
    try:
        graph, specs = _parse(text)
    except IRError as e:
        raise CheckpointError(f"{ir_path}: {e}") from e
    for name in (SAFETENSORS_FILE, NPZ_FILE):
        if os.path.lexists(path / name):
            weights = _read_weights(path / name, specs)
            _attach(graph, specs, weights, str(path / name))
            break
    else:
        if specs:
            raise CheckpointError(
                f"{path} has no {SAFETENSORS_FILE} or {NPZ_FILE}, "
                f"but {ir_path} declares {len(specs)} params"
            )
    try:
        verify(graph)
    except IRError as e:
        raise IRError(f"{ir_path} describes an invalid graph: {e}") from e
    return graph
