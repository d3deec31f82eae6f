"""Shared pieces of the hostile-input campaign (tests/test_hostile_*.py).

The campaign feeds snncc what an attacker, a damaged disk, a race or a
mistaken user would: planted binaries, links, torn writes, NaN constants,
foreign states, nesting and size bombs. Each case asserts the exact outcome:
one clear error naming the problem, or the correct result; and, where code
could run or files could leak, that it did not (a payload library whose
constructor writes a marker file; the files written and opened while snncc
works).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from spikingjelly.activation_based import layer, neuron

from snncc.cli import main

N_IN, N_OUT = 8, 4


def tiny_model(seed: int = 0) -> torch.nn.Sequential:
    """Linear 8-4 + LIF (SpikingJelly, multi-step), weights strong enough to fire."""
    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        layer.Linear(N_IN, N_OUT, step_mode="m"), neuron.LIFNode(step_mode="m")
    ).eval()
    with torch.no_grad():
        m[0].weight.mul_(4.0)
    return m


def tiny_input(t: int = 5, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(t, b, N_IN, generator=torch.Generator().manual_seed(seed)) * 2


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in-process: (status, stdout, stderr); never a traceback on stderr."""
    rc = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return rc, cap.out, cap.err


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI, assert status 2 and exactly one ``snncc: error:`` line; return it."""
    rc, _, err = cli(capsys, argv)
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("snncc: error: "), err
    return lines[0]


# ------------------------------------------------------------------ payloads
PAYLOAD = r"""
#include <stdio.h>
__attribute__((constructor)) static void snncc_payload(void) {
    FILE* f = fopen("%(marker)s", "w");
    if (f) { fputs("payload ran", f); fclose(f); }
}
%(symbols)s
"""


def build_payload(path: Path, marker: Path, symbols: tuple[str, ...] = ()) -> Path:
    """A shared library whose constructor writes ``marker`` (and defines ``symbols`` as no-ops,
    so a loader that checks symbols would accept it)."""
    defs = "\n".join(f'extern "C" void {s}(void) {{}}' for s in symbols)
    src = PAYLOAD % {"marker": str(marker), "symbols": defs}
    res = subprocess.run(
        ["g++", "-shared", "-fPIC", "-x", "c++", "-", "-o", str(path)],
        input=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return path


def record_for(so: Path) -> dict:
    """A kernel-cache record that matches ``so`` exactly (what a forger would write)."""
    import hashlib

    data = so.read_bytes()
    return {
        "format": "snncc-kernel-cache",
        "version": 1,
        "file": so.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def plant_verified(where: Path, name: str, payload: Path) -> Path:
    """Plant ``payload`` in cache folder ``where`` as entry ``name``, with a matching record."""
    import hashlib

    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    so = where / f"{name}.{digest[:16]}.so"
    so.write_bytes(payload.read_bytes())
    (where / f"{name}.json").write_text(json.dumps(record_for(so)))
    return so


# ------------------------------------------------------------------ file-system audit
@contextlib.contextmanager
def fs_audit(monkeypatch, watched: Path) -> Iterator[list[tuple[str, str]]]:
    """Record every file snncc's Python code opens, creates, renames or removes under
    ``watched`` (the test's folder): [(operation, path)]."""
    seen: list[tuple[str, str]] = []
    root = str(watched)

    def note(op: str, path: object) -> None:
        try:
            p = os.path.abspath(os.fsdecode(path))  # type: ignore[arg-type]
        except TypeError:
            return
        if p.startswith(root):
            seen.append((op, p))

    real_open, real_os_open, real_replace = builtins.open, os.open, os.replace
    real_rename, real_unlink, real_mkdir = os.rename, os.unlink, os.mkdir

    def audited_open(file, *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)):
            note("open", file)
        return real_open(file, *a, **k)

    def audited_os_open(path, *a, **k):
        note("open", path)
        return real_os_open(path, *a, **k)

    def two(op, real):
        def wrapped(src, dst, *a, **k):
            note(op, src)
            note(op, dst)
            return real(src, dst, *a, **k)

        return wrapped

    def one(op, real):
        def wrapped(path, *a, **k):
            note(op, path)
            return real(path, *a, **k)

        return wrapped

    monkeypatch.setattr(builtins, "open", audited_open)
    monkeypatch.setattr(io, "open", audited_open)
    monkeypatch.setattr(os, "open", audited_os_open)
    monkeypatch.setattr(os, "replace", two("replace", real_replace))
    monkeypatch.setattr(os, "rename", two("rename", real_rename))
    monkeypatch.setattr(os, "unlink", one("unlink", real_unlink))
    monkeypatch.setattr(os, "mkdir", one("mkdir", real_mkdir))
    yield seen


def outside(seen: list[tuple[str, str]], *allowed: Path) -> list[tuple[str, str]]:
    """The audited operations on paths not inside any of ``allowed``."""
    roots = [os.path.abspath(a) for a in allowed]
    return [(op, p) for op, p in seen if not any(p == r or p.startswith(r + os.sep) for r in roots)]


def tree(path: Path) -> dict[str, bytes | str]:
    """Every entry under ``path`` (links as 'link -> target', files as bytes)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "dir"
    return out


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 240):
    """Run ``code`` in a fresh interpreter (bounded); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "<f4") -> Path:
    """A .npy file whose header declares ``shape`` but which holds no data."""
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": dtype, "fortran_order": False, "shape": shape}
        )
    return path
