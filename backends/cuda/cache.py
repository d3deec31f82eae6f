"""The cuda backend's on-disk kernel cache: readable ``.cu`` sources next to the binaries that run.

Layout (default ``~/.cache/snncc/cuda``, or ``$SNNCC_CACHE_DIR/cuda``, or the
backend option ``cache_dir``)::

    snncc_<src>.cu                       the generated source, as compiled
    snncc_<src>_<arch>_<key>.cubin       NVRTC's machine code for one architecture
    snncc_<src>_<arch>_<key>.ptx         (instead, for a GPU newer than NVRTC)
    snncc_<src>_<arch>_<key>.log         NVRTC's warnings, when it printed any

``<src>`` hashes the source; ``<key>`` hashes everything else that could change
the binary: the architecture, every compiler flag (``-fmad=false`` keeps spikes
bit-exact), the NVRTC version and the kernel ABI version. Files are written to
a temporary name and renamed, so concurrent processes never load half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from snncc.backends.cuda import nvrtc
from snncc.backends.kernels import KERNEL_ABI_VERSION, NVCC_EXACT_FLAGS

#: NVRTC options of every snncc kernel (the architecture is added per device)
NVRTC_FLAGS: tuple[str, ...] = ("--std=c++17", *NVCC_EXACT_FLAGS)


def default_cache_dir() -> Path:
    """``$SNNCC_CACHE_DIR/cuda`` or ``~/.cache/snncc/cuda`` (XDG_CACHE_HOME respected)."""
    root = os.environ.get("SNNCC_CACHE_DIR")
    if root:
        return Path(root) / "cuda"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "snncc" / "cuda"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def source_path(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write ``source`` into the cache (once) and return its path."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    cu = root / f"snncc_{_digest(source)[:16]}.cu"
    if not cu.exists() or cu.read_text() != source:
        _write_atomic(cu, source.encode())
    return cu


def build(
    source: str,
    capability: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
) -> Path:
    """The cached binary of ``source`` for a device of ``capability`` (e.g. 90), compiling if needed.

    ``arch`` ("sm_80", "compute_90") overrides the choice made from
    ``capability``: that is how the binaries are built ahead of time, or
    checked in CI, on a machine without a GPU.
    """
    if arch is None:
        if capability is None:
            raise ValueError("build() needs a device capability or an explicit arch")
        arch, kind = nvrtc.target_arch(capability)
    else:
        kind = "cubin" if arch.startswith("sm_") else "ptx"
    cu = source_path(source, cache_dir)
    src = cu.stem.removeprefix("snncc_")
    key = _digest(
        src, arch, *NVRTC_FLAGS, "nvrtc={}.{}".format(*nvrtc.version()), f"abi={KERNEL_ABI_VERSION}"
    )[:12]
    out = cu.with_name(f"snncc_{src}_{arch}_{key}.{kind}")
    if out.exists():
        return out
    res = nvrtc.compile_source(source, arch, NVRTC_FLAGS, name=str(cu))
    if res.log:
        _write_atomic(out.with_suffix(".log"), res.log.encode())
    _write_atomic(out, res.binary)
    return out
