"""Deploy a compiled SNN as a standalone C/C++ (and CUDA) source tree with a C interface.

``snncc.deploy(model, "out/digits-c", target="cpu")`` (``snncc deploy`` on the
command line) writes a tree that builds with CMake into a shared library
(``include/snncc_model.h``: create from the weights file, query sizes, run
``[T, B, ...]`` with an optional state in and out, destroy, last error), a
``.npy`` runner, ``weights.safetensors`` and a README with the exact build
commands. The library needs neither Python nor torch.

Why a source tree and not a binary: the user builds it for their machine
(``-march=native``, their CUDA architectures, their BLAS), reads and diffs it,
and snncc stays out of the business of shipping toolchains. What it runs is
what the backends run: the neuron kernels are rendered from the same
templates (:mod:`snncc.backends.kernels`, forward only, one per form), the
schedule is the IR's (:mod:`snncc.deploy.lower`), and every weight is
computed by the backends' own torch code.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snncc.errors import CheckpointError, UnsupportedError
from snncc.ir.safe_files import make_dirs, os_error_hint, refuse_link, write_file

from .lower import Lowered, lower
from .tree import WEIGHTS_FILE, manifest, render, weights_bytes

__all__ = ["TARGETS", "DeployResult", "deploy", "lower_graph"]

TARGETS = ("cpu", "cuda")
MANIFEST = "snncc_deploy.json"


@dataclass(frozen=True)
class DeployResult:
    """What ``deploy`` wrote: the folder, the files, and the lowered model (state layout...)."""

    path: Path
    target: str
    files: tuple[str, ...]
    lowered: Lowered

    @property
    def model_id(self) -> str:
        return self.lowered.model_id


def _graph_of(model: Any, example_input: Any, target: str) -> Any:
    """The scheduled IR of an artifact folder, a CompiledModel, a Graph or a torch module."""
    from snncc.ir.graph import Graph

    if isinstance(model, (str, os.PathLike)):
        import snncc

        return snncc.load(model).ir
    ir = getattr(model, "ir", None)
    if isinstance(ir, Graph):
        return ir
    backend = "cuda" if target == "cuda" else "cpu"
    if isinstance(model, Graph):
        if model.meta.get("groups"):
            return model
        from snncc import backends
        from snncc.ir.passes import run_pipeline

        return run_pipeline(model, backends.get(backend).pipeline)
    if example_input is None:
        raise UnsupportedError(
            "snncc deploy of a torch module needs example_input [T, B, ...] to trace it with"
        )
    return _trace(model, example_input, backend)


def _trace(model: Any, example_input: Any, backend: str) -> Any:
    """Trace a torch module and run the target backend's passes (snncc.compile's checks)."""
    from snncc import backends
    from snncc.api import _check_example_input, _check_model_dtype
    from snncc.backends.base import pipeline_for
    from snncc.frontend import trace
    from snncc.ir.passes import run_pipeline

    example = _check_example_input(example_input)
    _check_model_dtype(model, example)
    return run_pipeline(trace(model, example), pipeline_for(backends.get(backend), {}))


def lower_graph(graph: Any) -> Lowered:
    """The deployed model of a scheduled IR (no files written)."""
    return lower(graph)


def deploy(
    model: Any,
    output: str | os.PathLike[str],
    target: str = "cpu",
    example_input: Any = None,
) -> DeployResult:
    """Write the C/C++ source tree of ``model`` into ``output``; see the module docstring.

    ``model``: an artifact folder (``snncc compile -o``), a :class:`~snncc.CompiledModel`,
    a scheduled :class:`~snncc.ir.Graph`, or a torch module with ``example_input``.
    ``target``: ``"cpu"`` or ``"cuda"``, the default of the tree's ``SNNCC_CUDA``
    switch (both targets' sources are written). Files are written atomically, never
    through links; files of the user's own in ``output`` are left alone.
    """
    if target not in TARGETS:
        raise UnsupportedError(f"deploy target {target!r}; supported: {', '.join(TARGETS)}")
    graph = _graph_of(model, example_input, target)
    low = lower(graph)
    texts = render(low, target)
    out = Path(output)
    try:
        refuse_link(out, "deploy folder", CheckpointError)
        if os.path.lexists(out) and not out.is_dir():
            raise CheckpointError(f"cannot deploy to {out}: it exists and is not a folder")
        make_dirs(out)
        for sub in sorted({str(Path(p).parent) for p in texts if "/" in p}):
            refuse_link(out / sub, "deploy folder", CheckpointError)
            make_dirs(out / sub)
        for rel, text in texts.items():
            write_file(out / rel, text)
        write_file(out / WEIGHTS_FILE, weights_bytes(low))
        write_file(out / MANIFEST, manifest(low, target))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise CheckpointError(
            f"cannot write the deployed model to {out}: {exc.strerror or exc}{where}; "
            f"{os_error_hint(exc)}"
        ) from None
    files = (*sorted(texts), WEIGHTS_FILE, MANIFEST)
    return DeployResult(out, target, files, low)


class _CallableModule(types.ModuleType):
    """``snncc.deploy`` is both this package and the API function: ``snncc.deploy(model, dir)``.

    Why: the public name of the function is ``snncc.deploy`` (like ``snncc.compile``), and
    the package must be importable under the same name; once ``snncc.deploy`` is imported
    Python binds the package to that attribute, so the package itself forwards calls.
    """

    def __call__(
        self,
        model: Any,
        output: str | os.PathLike[str],
        target: str = "cpu",
        example_input: Any = None,
    ) -> DeployResult:
        return deploy(model, output, target=target, example_input=example_input)


sys.modules[__name__].__class__ = _CallableModule
