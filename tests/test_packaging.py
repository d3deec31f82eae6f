"""The installed package must hold every source package: pyproject lists them by hand
(the top-level folders install as subpackages of snncc), so a new folder left out of the
list would work in an editable checkout and vanish from a wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _config() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folder(name: str, package_dir: dict[str, str]) -> Path:
    """The folder a dotted package name installs from, through the longest package-dir prefix."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def test_every_source_package_is_listed():
    config = _config()
    package_dir, listed = config["package-dir"], set(config["packages"])
    folders = {_package_folder(name, package_dir).resolve() for name in listed}
    for name in listed:
        assert (_package_folder(name, package_dir) / "__init__.py").is_file(), name
    roots = {ROOT / d for d in package_dir.values()}
    missing = []
    for root in roots:
        for init in root.rglob("__init__.py"):
            if ".venv" in init.parts or "__pycache__" in init.parts:
                continue
            if init.parent.resolve() not in folders:
                missing.append(str(init.parent.relative_to(ROOT)))
    assert not missing, f"package folders missing from pyproject's packages: {sorted(missing)}"
