"""Exporters: snncc IR -> interchange formats other tools run (ONNX; NIR lives in its own module).

Why a separate subpackage: exporters are leaves that depend on heavy optional
formats (``onnx``), and nothing in the compile path should import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

    from snncc.ir.graph import Graph

__all__ = ["to_onnx"]


def to_onnx(
    graph: Graph, path: Any = None, opset: int | None = None, *, state_io: bool = False
) -> onnx.ModelProto:
    """Export a scheduled IR graph to ONNX (see :func:`snncc.export.onnx.to_onnx`)."""
    from snncc.export.onnx import DEFAULT_OPSET
    from snncc.export.onnx import to_onnx as _to_onnx

    opset = DEFAULT_OPSET if opset is None else opset
    return _to_onnx(graph, path, opset=opset, state_io=state_io)
