"""The pass pipeline: named graph -> graph functions, run in order and verified after each.

Why one driver: every pass gets the same guarantees for free (it works on a
copy, the result is verified, a failure names the pass and the ones that ran
before it, ``dump_dir`` shows the graph after each step), so passes stay
small functions that only rewrite.

Pass names (ARCHITECTURE.md, "Passes"): ``canonicalize``, ``fold_batchnorm``,
``drop_noops``, ``fuse_elementwise``, ``temporal_fusion``, ``partition``.
Rewriting passes drop any existing groups (``meta["groups"]``), so
``temporal_fusion`` runs after them; ``partition`` (stages for several
devices, as ``meta["partition"]`` asks) runs on its schedule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from snncc.errors import IRError, SnnccError
from snncc.ir.graph import Graph
from snncc.ir.passes.canonicalize import canonicalize
from snncc.ir.passes.drop_noops import drop_noops
from snncc.ir.passes.fold_batchnorm import fold_batchnorm
from snncc.ir.passes.fuse_elementwise import fuse_elementwise
from snncc.ir.passes.partition import partition
from snncc.ir.passes.temporal_fusion import temporal_fusion
from snncc.ir.printer import format_graph
from snncc.ir.verify import verify

PASSES: dict[str, Callable[[Graph], Graph]] = {
    "canonicalize": canonicalize,
    "fold_batchnorm": fold_batchnorm,
    "drop_noops": drop_noops,
    "fuse_elementwise": fuse_elementwise,
    "temporal_fusion": temporal_fusion,
    "partition": partition,
}


def _check_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise IRError(f"pass names must be a list of names, not the string {names!r}")
    names = list(names)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise IRError(f"unknown pass {unknown[0]!r}; choose from: {', '.join(PASSES)}")
    return names


def _context(name: str, before: list[str]) -> str:
    return f"pass {name!r} (after {', '.join(before) if before else 'no other pass'})"


def run_pipeline(
    graph: Graph, names: Sequence[str], dump_dir: str | os.PathLike[str] | None = None
) -> Graph:
    """Run the named passes on a copy of ``graph``; verify the input and each result.

    With ``dump_dir`` the printed graph is written to ``00_input.txt`` and
    ``NN_<pass>.txt`` after each pass (also when that pass's result fails
    verification, so the broken graph can be read). The names run are appended
    to ``meta["passes"]``.
    """
    names = _check_names(names)
    dump = Path(dump_dir) if dump_dir is not None else None
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
    g = graph.copy()
    if dump is not None:
        (dump / "00_input.txt").write_text(format_graph(g), encoding="utf-8")
    try:
        verify(g)
    except IRError as e:
        raise IRError(f"the input graph (before any pass) is invalid: {e}") from e
    for i, name in enumerate(names):
        where = _context(name, names[:i])
        try:
            out = PASSES[name](g)
        except SnnccError as e:
            raise type(e)(f"{where} failed: {e}") from e
        except Exception as e:
            raise IRError(f"{where} crashed: {type(e).__name__}: {e}") from e
        if not isinstance(out, Graph):
            raise IRError(f"{where} returned {type(out).__name__}, not a Graph")
        g = out
        g.meta["passes"] = [*g.meta.get("passes", []), name]
        if dump is not None:
            (dump / f"{i + 1:02d}_{name}.txt").write_text(format_graph(g), encoding="utf-8")
        try:
            verify(g)
        except IRError as e:
            raise IRError(f"{where} produced an invalid graph: {e}") from e
    return g


__all__ = ["PASSES", "run_pipeline"]
