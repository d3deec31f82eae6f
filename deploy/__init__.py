"""Deploy a compiled SNN as a standalone C/C++ (and CUDA) source tree with a C interface.

``snncc.deploy(cm, "out/digits-c", target="cpu")`` (``snncc deploy`` on the
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


def _graph_of(model: Any, target: str) -> Any:
    """The scheduled IR of a CompiledModel or a Graph (scheduled here if it is not yet).

    Why nothing else: this floor sits below the API and the frontends (tests/test_layers.py),
    so an artifact folder is read by ``snncc.load_ir`` and a torch module traced by
    ``snncc.trace`` before it comes here; the message says so.
    """
    from snncc.ir.graph import Graph

    ir = getattr(model, "ir", None)
    if isinstance(ir, Graph):
        return ir
    if isinstance(model, Graph):
        if model.meta.get("groups"):
            return model
        from snncc import backends
        from snncc.backends.base import pipeline_for
        from snncc.ir.passes import run_pipeline

        backend = "cuda" if target == "cuda" else "cpu"
        return run_pipeline(model, pipeline_for(backends.get(backend), {}))
    if isinstance(model, (str, os.PathLike)):
        hint = f"an artifact folder: snncc.deploy(snncc.load_ir({str(model)!r}), ...)"
    else:
        hint = (
            "a torch module: snncc.deploy(snncc.trace(model, example_input), ...) "
            "(example_input [T, B, ...])"
        )
    raise UnsupportedError(
        f"snncc.deploy takes a compiled model or an IR graph, not a {type(model).__name__}; "
        f"for {hint}"
    )


def lower_graph(graph: Any) -> Lowered:
    """The deployed model of a scheduled IR (no files written)."""
    return lower(graph)


def deploy(
    model: Any,
    output: str | os.PathLike[str],
    target: str = "cpu",
) -> DeployResult:
    """Write the C/C++ source tree of ``model`` into ``output``; see the module docstring.

    ``model``: a :class:`~snncc.CompiledModel`, or a :class:`~snncc.ir.Graph`, scheduled
    or not: ``snncc.load_ir(folder)`` for an artifact (not lowered for its backend, so a
    cuda artifact deploys on a machine without a GPU), ``snncc.trace(model,
    example_input)`` for a torch module (nothing is compiled for a backend).
    ``target``: ``"cpu"`` or ``"cuda"``, the default of the tree's ``SNNCC_CUDA``
    switch (both targets' sources are written). Files are written atomically, never
    through links; files of the user's own in ``output`` are left alone.
    """
    if target not in TARGETS:
        raise UnsupportedError(f"deploy target {target!r}; supported: {', '.join(TARGETS)}")
    graph = _graph_of(model, target)
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
    ) -> DeployResult:
        return deploy(model, output, target=target)


sys.modules[__name__].__class__ = _CallableModule
