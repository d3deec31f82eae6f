"""Layers import one way (ARCHITECTURE.md): ir/ at the bottom, frontends and backends
above it and blind to each other, exchange formats, deploy and the multi-device runtimes
(distributed/, which runs backends' programs and never sees a frontend) above those, snncc/
(API, CLI) on top. An import against the grain is how a backend starts to know a frontend's
quirks, so it is checked here rather than left to review.

The exceptions are named: ``snncc.errors`` (the error vocabulary, a module with no
imports) and ``snncc.__version__`` may be read from any floor, and the snncc.nn frontend
maps the ``snncc.nn`` modules the way the SpikingJelly frontend maps SpikingJelly's.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# floor -> the floors its modules may import from (its own included)
ALLOWED = {
    "ir": {"ir"},
    "frontend": {"ir", "frontend"},
    "backends": {"ir", "backends"},
    "exchange": {"ir", "frontend", "exchange"},
    "deploy": {"ir", "backends", "exchange", "deploy"},
    "distributed": {"ir", "backends", "distributed"},
}
ANY_FLOOR = {"snncc.errors", "snncc.__version__"}
NAMED = {("frontend/snncc_nn.py", "snncc.nn")}


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ["snncc", *parts[:-1]] if parts[-1] == "__init__" else ["snncc", *parts]


def _imports(path: Path) -> list[str]:
    """Every snncc module the file imports, with relative imports resolved."""
    found = []
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found += [f"{base}.{a.name}" for a in node.names]
    return [name for name in found if name == "snncc" or name.startswith("snncc.")]


def _floor(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_layers_import_one_way():
    wrong = []
    for floor, allowed in ALLOWED.items():
        for path in sorted((ROOT / floor).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for name in _imports(path):
                target = _floor(name)
                if target in allowed or any(name.startswith(ok) for ok in ANY_FLOOR):
                    continue
                if any(rel == f and name.startswith(m) for f, m in NAMED):
                    continue
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_check_sees_imports():
    """The walk resolves relative imports (a check that finds nothing proves nothing)."""
    names = _imports(ROOT / "backends" / "cpu" / "program.py")
    assert any(n.startswith("snncc.ir.") for n in names), names
    assert any(n.startswith("snncc.backends.") for n in names), names
