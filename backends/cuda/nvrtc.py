"""NVRTC through ctypes: CUDA C source -> cubin (or PTX) bytes, with no GPU and no CuPy needed.

Why our own thin binding instead of letting CuPy compile: compiling needs
only ``libnvrtc`` (a pip wheel, ``nvidia-cuda-nvrtc``, or a CUDA toolkit), not a
GPU, so the cuda backend can build -- and CI can check -- the exact binaries
it will load (same flags, same compiler) on a machine without a GPU, and the
on-disk cache of :mod:`snncc.backends.cuda.cache` holds files a user can read
(the ``.cu``) next to the binary that runs (the ``.cubin``). CuPy then only
*loads* the cubin (``cupy.RawModule(path=...)``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from snncc.errors import BackendError

_SONAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
_lock = threading.Lock()


@dataclass(frozen=True)
class CompileResult:
    """What one NVRTC compilation produced."""

    #: the binary: a cubin (ELF) when ``kind == "cubin"``, else NUL-free PTX text as bytes
    binary: bytes
    #: "cubin" (machine code for exactly ``arch``) or "ptx" (JIT-compiled by the driver)
    kind: str
    #: the ``--gpu-architecture`` value used, e.g. "sm_90" or "compute_90"
    arch: str
    #: NVRTC's log (warnings), possibly empty
    log: str


def _candidates() -> list[str]:
    """Where libnvrtc may live, most specific first."""
    paths: list[str] = []
    env = os.environ.get("SNNCC_NVRTC")
    if env:
        paths.append(env)
    try:  # the NVIDIA wheels (nvidia-cuda-nvrtc), as torch and CuPy install them
        from cuda.pathfinder import load_nvidia_dynamic_lib

        paths.append(load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception:  # cuda-pathfinder missing or no wheel: try the system next
        pass
    found = ctypes.util.find_library("nvrtc")
    if found:
        paths.append(found)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            paths.extend(str(Path(root) / "lib64" / name) for name in _SONAMES)
    paths.extend(_SONAMES)
    return paths


@cache
def library() -> ctypes.CDLL:
    """The loaded libnvrtc, or BackendError saying how to get one."""
    tried = []
    for path in _candidates():
        if path in tried:
            continue
        tried.append(path)
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise BackendError(
        "the cuda backend compiles kernels with NVRTC and found no libnvrtc (tried "
        f"{', '.join(tried)}); install it with `pip install nvidia-cuda-nvrtc` (CuPy's "
        'extras do: pip install "snncc[cuda12]" or "snncc[cuda13]"), install a CUDA '
        "toolkit, or point SNNCC_NVRTC at libnvrtc.so"
    )


def _declare(lib: ctypes.CDLL) -> None:
    c_int_p = ctypes.POINTER(ctypes.c_int)
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcVersion.argtypes = [c_int_p, c_int_p]
    lib.nvrtcCreateProgram.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.nvrtcCompileProgram.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p),
    ]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    for name in ("nvrtcGetProgramLogSize", "nvrtcGetPTXSize", "nvrtcGetCUBINSize"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, size_p]
    for name in ("nvrtcGetProgramLog", "nvrtcGetPTX", "nvrtcGetCUBIN"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nvrtcGetNumSupportedArchs.argtypes = [c_int_p]
    lib.nvrtcGetSupportedArchs.argtypes = [c_int_p]


def _check(lib: ctypes.CDLL, rc: int, what: str) -> None:
    if rc != 0:
        msg = lib.nvrtcGetErrorString(rc).decode(errors="replace")
        raise BackendError(f"NVRTC {what} failed: {msg} (code {rc})")


@cache
def version() -> tuple[int, int]:
    """NVRTC's (major, minor) version: part of every cache key."""
    lib = library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


@cache
def supported_archs() -> tuple[int, ...]:
    """Compute capabilities NVRTC can emit machine code for, e.g. (75, 80, ..., 90, ...)."""
    lib = library()
    n = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    arr = (ctypes.c_int * n.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(arr), "nvrtcGetSupportedArchs")
    return tuple(int(a) for a in arr)


def target_arch(capability: int) -> tuple[str, str]:
    """(``--gpu-architecture`` value, binary kind) for a device of compute capability e.g. 90.

    A cubin when NVRTC knows the architecture; otherwise PTX for the newest
    architecture it knows that is not newer than the device, which the driver
    JIT-compiles (a GPU newer than the installed NVRTC still runs).
    """
    archs = supported_archs()
    if capability in archs:
        return f"sm_{capability}", "cubin"
    older = [a for a in archs if a <= capability]
    if not older:
        raise BackendError(
            f"NVRTC {'.'.join(map(str, version()))} cannot target compute capability "
            f"{capability // 10}.{capability % 10} (it supports {', '.join(map(str, archs))}); "
            "install an NVRTC that supports this GPU"
        )
    return f"compute_{max(older)}", "ptx"


def compile_source(
    source: str, arch: str, options: tuple[str, ...], name: str = "snncc.cu"
) -> CompileResult:
    """Compile ``source`` for ``arch`` ("sm_90" -> cubin, "compute_90" -> PTX) with ``options``.

    Raises BackendError with NVRTC's log on a compile error (the generated
    source is then a bug in snncc: the message says so).
    """
    lib = library()
    kind = "cubin" if arch.startswith("sm_") else "ptx"
    opts = [f"--gpu-architecture={arch}", *options]
    prog = ctypes.c_void_p()
    with _lock:  # NVRTC is thread-safe per program; the lock only keeps logs readable
        _check(
            lib,
            lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), name.encode(), 0, None, None
            ),
            "nvrtcCreateProgram",
        )
        try:
            c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            rc = lib.nvrtcCompileProgram(prog, len(opts), c_opts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(max(size.value, 1))
            lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace").strip()
            if rc != 0:
                err = lib.nvrtcGetErrorString(rc).decode(errors="replace")
                raise BackendError(
                    f"NVRTC failed to compile generated kernel {name} for {arch} ({err}; "
                    f"options {' '.join(opts)}); this is a bug in snncc's code generation. "
                    f"Log:\n{log[-4000:]}"
                )
            get_size, get = (
                (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN)
                if kind == "cubin"
                else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX)
            )
            _check(lib, get_size(prog, ctypes.byref(size)), "getting the binary size")
            out = ctypes.create_string_buffer(size.value)
            _check(lib, get(prog, out), "getting the binary")
            binary = out.raw[: size.value]
            if kind == "ptx":
                binary = binary.rstrip(b"\0")
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return CompileResult(binary=binary, kind=kind, arch=arch, log=log)
