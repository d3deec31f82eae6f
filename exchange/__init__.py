"""Interchange formats: ONNX and NIR, each format's exporter beside its importer.

``onnx_export`` / ``onnx_import``: snncc IR <-> ONNX (the time loop inside a
``Scan``; snncc re-imports its own exports exactly). ``nir_export`` /
``nir_import``: snncc IR <-> NIR (continuous-time neurons, discretised with an
explicit dt). A format's two directions share its conventions, so they live
side by side. Why a separate subpackage: they depend on heavy optional formats
(``onnx``, ``nir``/``h5py``), and nothing in the compile path imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx

    from snncc.ir.graph import Graph

__all__ = ["from_nir", "from_onnx", "to_nir", "to_onnx"]


def to_onnx(
    graph: Graph, path: Any = None, opset: int | None = None, *, state_io: bool = False
) -> onnx.ModelProto:
    """Export a scheduled IR graph to ONNX (see :func:`snncc.exchange.onnx_export.to_onnx`)."""
    from snncc.exchange.onnx_export import DEFAULT_OPSET
    from snncc.exchange.onnx_export import to_onnx as _to_onnx

    opset = DEFAULT_OPSET if opset is None else opset
    return _to_onnx(graph, path, opset=opset, state_io=state_io)


def to_nir(graph: Graph, path: Any = None, dt: float | None = None, *, accept: Any = ()) -> Any:
    """Export a scheduled IR graph to NIR (see :func:`snncc.exchange.nir_export.to_nir`)."""
    from snncc.exchange.nir_export import to_nir as _to_nir

    return _to_nir(graph, path, dt=dt, accept=accept)


def from_onnx(source: Any) -> Graph:
    """Rebuild the IR from an ONNX file snncc exported (see :mod:`.onnx_import`)."""
    from snncc.exchange.onnx_import import from_onnx as _from_onnx

    return _from_onnx(source)


def from_nir(source: Any, **options: Any) -> Graph:
    """Import a NIR graph into the IR (see :func:`snncc.exchange.nir_import.from_nir`)."""
    from snncc.exchange.nir_import import from_nir as _from_nir

    return _from_nir(source, **options)
