"""The cuda backend's on-disk kernel cache: readable ``.cu`` sources next to the binaries that run.

Layout (default ``~/.cache/snncc/cuda``, or ``$SNNCC_CACHE_DIR/cuda``, or the
backend option ``cache_dir``)::

    snncc_<src>.cu                              the generated source, as compiled
    snncc_<src>_<arch>_<key>.<sha>.cubin        NVRTC's machine code for one architecture
    snncc_<src>_<arch>_<key>.<sha>.ptx          (instead, for a GPU newer than NVRTC)
    snncc_<src>_<arch>_<key>.json               its record: the binary's SHA-256 and size
    snncc_<src>_<arch>_<key>.log                NVRTC's warnings, when it printed any

``<src>`` hashes the source; ``<key>`` hashes everything else that could change
the binary: the architecture, every compiler flag (``-fmad=false`` keeps spikes
bit-exact), the NVRTC version and the kernel ABI version. A binary is handed
to the GPU only after its hash matches its record, and is built once per
entry under a lock (:mod:`snncc.backends.kernel_cache`: the same protocol as the cpu
backend's libraries); files are written to a temporary name and renamed, so
concurrent processes never load half a file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from snncc.backends import kernel_cache
from snncc.backends.cuda import nvrtc
from snncc.backends.kernels import KERNEL_ABI_VERSION, NVCC_EXACT_FLAGS
from snncc.errors import BackendError
from snncc.ir import safe_files

#: NVRTC options of every snncc kernel (the architecture is added per device)
NVRTC_FLAGS: tuple[str, ...] = ("--std=c++17", *NVCC_EXACT_FLAGS)


def default_cache_dir() -> Path:
    """``$SNNCC_CACHE_DIR/cuda`` or ``~/.cache/snncc/cuda`` (XDG_CACHE_HOME respected)."""
    return kernel_cache.default_dir("cuda")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _os_error(where: Path, exc: OSError) -> BackendError:
    return BackendError(
        f"the cuda kernel cache {where} cannot be used: {exc.strerror or exc}"
        f"{f' ({exc.filename})' if exc.filename else ''}; {safe_files.os_error_hint(exc)} "
        "(SNNCC_CACHE_DIR or the cache_dir option)"
    )


def source_path(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write ``source`` into the cache (once) and return its path."""
    root = kernel_cache.folder("cuda", cache_dir)
    cu = root / f"snncc_{_digest(source)[:16]}.cu"
    try:
        current = safe_files.read_file(cu, "source", BackendError, len(source.encode()) + 1)
    except BackendError:
        current = None
    try:
        if current != source.encode():
            safe_files.write_file(cu, source)
    except OSError as exc:
        raise _os_error(root, exc) from None
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
    name = f"snncc_{src}_{arch}_{key}"
    root = cu.parent

    def compile_to(out: Path) -> None:
        res = nvrtc.compile_source(source, arch, NVRTC_FLAGS, name=str(cu))
        if res.log:
            safe_files.write_file(root / f"{name}.log", res.log)
        out.write_bytes(res.binary)

    try:
        return kernel_cache.get_or_build(root, name, f".{kind}", compile_to)
    except OSError as exc:
        raise _os_error(root, exc) from None
