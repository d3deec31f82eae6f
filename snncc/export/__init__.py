"""Exporters: snncc IR -> interchange formats other tools run (ONNX, NIR).

Why a separate subpackage: exporters are leaves that depend on heavy optional
formats (``onnx``), and nothing in the compile path should import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

    from snncc.ir.graph import Graph

__all__ = ["to_nir", "to_onnx"]


def to_onnx(
    graph: Graph, path: Any = None, opset: int | None = None, *, state_io: bool = False
) -> onnx.ModelProto:
    """Export a scheduled IR graph to ONNX (see :func:`snncc.export.onnx.to_onnx`)."""
    from snncc.export.onnx import DEFAULT_OPSET
    from snncc.export.onnx import to_onnx as _to_onnx

    opset = DEFAULT_OPSET if opset is None else opset
    return _to_onnx(graph, path, opset=opset, state_io=state_io)


def to_nir(graph: Graph, path: Any = None, dt: float | None = None, *, accept: Any = ()) -> Any:
    """Export a scheduled IR graph to NIR (see :func:`snncc.export.nir.to_nir`)."""
    from snncc.export.nir import to_nir as _to_nir

    return _to_nir(graph, path, dt=dt, accept=accept)
