"""The cuda backend's host runtime: what it needs (CuPy, a GPU), loading kernels, launching them.

Why CuPy only loads and launches: kernels are compiled to cubins by our NVRTC
binding into a readable on-disk cache (:mod:`snncc.backends.cuda.cache`);
CuPy's ``RawModule(path=...)`` loads them and its ``RawKernel`` launches them.
Tensors stay torch tensors: a kernel receives their raw device pointers (the
zero-copy sharing DLPack would give, without building CuPy arrays per launch)
and runs on torch's *current* stream, so it is ordered with the torch ops
around it and can be captured in a ``torch.cuda.CUDAGraph``.

Without CuPy or without a GPU every entry point that would run something
raises one :class:`~snncc.errors.BackendError` saying what to install;
rendering the CUDA sources never needs either.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snncc.backends.cuda import cache as kcache
from snncc.backends.kernel_cache import LoadedCode
from snncc.errors import BackendError, UnsupportedError

INSTALL_HINT = (
    'pip install "snncc[cuda12]" (CuPy for CUDA 12.x drivers) or '
    'pip install "snncc[cuda13]" (CuPy for CUDA 13.x drivers)'
)
_NEEDS = "the cuda backend runs its kernels through CuPy on a CUDA GPU"
_RENDER_NOTE = (
    "rendering the CUDA sources needs neither (snncc compile SPEC --backend cuda -o DIR "
    "writes them on any machine)"
)

_lock = threading.Lock()
_modules: dict[tuple[str, int], Any] = {}
_streams: dict[tuple[int, int], Any] = {}


def import_cupy() -> Any:
    """The cupy module, or BackendError naming what to install."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            f"{_NEEDS}, and CuPy is not installed ({exc}); install it with {INSTALL_HINT}. "
            f"A CUDA GPU is required to run; {_RENDER_NOTE}."
        ) from None
    return cupy


_checked: set[torch.device] = set()


def require(device: torch.device | str | int | None = None) -> torch.device:
    """Check that CuPy and a CUDA GPU are usable for ``device``; return it as a torch.device.

    Cheap after the first success for a device (it sits on every call's path).
    """
    if isinstance(device, torch.device) and device in _checked:
        return device
    import_cupy()
    if not torch.cuda.is_available():
        raise BackendError(
            f"{_NEEDS}, and no CUDA GPU is visible to torch (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none: a CPU-only build'}). "
            f"A CUDA GPU, its driver and a CUDA build of torch are required, with CuPy "
            f"({INSTALL_HINT}); {_RENDER_NOTE}."
        )
    dev = resolve_device(device)
    if dev.index >= torch.cuda.device_count():
        raise BackendError(
            f"cuda backend option device={str(dev)!r}: only {torch.cuda.device_count()} CUDA "
            f"device(s) are visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
        )
    _checked.add(dev)
    return dev


def resolve_device(device: torch.device | str | int | None) -> torch.device:
    """``None``/"cuda" -> the current CUDA device (cuda:N); anything not CUDA is an error."""
    if device is None:
        device = "cuda"
    dev = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    if dev.type != "cuda":
        raise BackendError(
            f"cuda backend option device={str(device)!r} is not a CUDA device; use 'cuda' or "
            "'cuda:N' (or the 'cpu' backend for the CPU)"
        )
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return dev


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    #: compute capability as an int, e.g. 90 for 9.0
    capability: int
    sm_count: int


@cache
def device_info(index: int) -> DeviceInfo:
    """The device's fixed properties, read once (every launch asks for the SM count)."""
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(
        index=index,
        name=props.name,
        capability=props.major * 10 + props.minor,
        sm_count=props.multi_processor_count,
    )


class KernelFunctions(LoadedCode):
    """The entry points of one kernel source, each compiled and loaded on its first use per
    device (:func:`load_function`) and kept: a layer's, a chunked layer's and a fused
    recurrent group's kernels are found this way on every launch."""

    def __init__(self, source: str, cache_dir: str | None) -> None:
        self.source = source
        self.cache_dir = cache_dir
        self._fns: dict[tuple[str, int | None], Any] = {}

    def get(self, name: str, device: torch.device) -> Any:
        key = (name, device.index)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = load_function(self.source, name, device, self.cache_dir)
        return fn


def load_function(source: str, name: str, device: torch.device, cache_dir: str | None) -> Any:
    """Kernel ``name`` of ``source``, compiled for ``device`` (cached on disk) and loaded by CuPy."""
    cupy = import_cupy()
    info = device_info(device.index)
    path: Path = kcache.build(source, info.capability, cache_dir)
    key = (str(path), device.index)
    with _lock:
        module = _modules.get(key)
        if module is None:
            with cupy.cuda.Device(device.index):
                module = cupy.RawModule(path=str(path))
            _modules[key] = module
    try:
        with cupy.cuda.Device(device.index):
            return module.get_function(name)  # loads the module on first use
    except Exception as exc:  # CuPy's CUDADriverError and friends: say which file and why
        from snncc.backends.cuda import nvrtc

        driver = cupy.cuda.runtime.driverGetVersion()
        raise BackendError(
            f"loading kernel {name} from {path} on {info.name} (cuda:{device.index}) failed: "
            f"{type(exc).__name__}: {exc}. It was compiled by NVRTC "
            f"{'.'.join(map(str, nvrtc.version()))} for the driver's CUDA "
            f"{driver // 1000}.{driver % 1000 // 10}; an NVRTC newer than the driver can "
            "produce binaries it cannot load: update the driver or use a matching NVRTC"
        ) from exc


def _external_stream(ptr: int, device_index: int) -> Any:
    """CuPy's handle of torch's stream ``ptr`` (0 is the legacy default stream)."""
    key = (ptr, device_index)
    stream = _streams.get(key)
    if stream is None:
        cupy = import_cupy()
        stream = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr, device_index)
        _streams[key] = stream
    return stream


#: CUDA's limit on threads per block, on every architecture snncc builds for (sm_80 and up)
MAX_BLOCK = 1024


def check_block(block: Any, what: str) -> int | None:
    """``block`` as threads per block: None (sized per launch) or a multiple of 32 from 32
    to :data:`MAX_BLOCK`. Why here, once: the ``block_size`` option and the key of an
    exported program's kernel (data from a file) both name it, and a value CUDA cannot
    launch failed only at the first launch, on a GPU, with a driver error."""
    if block is None:
        return None
    if (
        isinstance(block, bool)
        or not isinstance(block, int)
        or not 32 <= block <= MAX_BLOCK
        or block % 32
    ):
        raise UnsupportedError(
            f"{what}={block!r}: threads per block, a multiple of 32 from 32 to {MAX_BLOCK}"
        )
    return block


def launch_config(n: int, sm_count: int, block: int | None = None) -> tuple[int, int]:
    """(grid, block) for a one-thread-per-neuron kernel with a grid-stride loop.

    Large layers: 256-thread blocks, at most 32 blocks per SM (the loop strides
    over the rest). Small layers (fewer than two 256-thread blocks per SM):
    smaller blocks, a multiple of 32 and at least 64, so the same warps spread
    over every SM instead of crowding a few.
    """
    if block is None:
        block = 256
        if n < 2 * sm_count * block:
            block = max(64, 32 * math.ceil(n / (2 * sm_count * 32)))
            block = min(block, 256)
    else:
        check_block(block, "cuda kernel block size")
    grid = max(1, min(math.ceil(n / block), 32 * sm_count))
    return grid, block


_PACK = {
    "const float*": np.uint64,
    "float*": np.uint64,
    "uint8*": np.uint64,
    "const snncc_bf16*": np.uint64,
    "snncc_bf16*": np.uint64,
    "const snncc_f16*": np.uint64,
    "snncc_f16*": np.uint64,
    "double*": np.uint64,
    "const double*": np.uint64,
    "float": np.float32,
    "int": np.int32,
    "int64": np.int64,
}


def pack_args(signature: tuple[tuple[str, str], ...], values: dict[str, Any]) -> tuple:
    """Kernel arguments in signature order: tensors -> device pointers (None -> NULL), scalars typed."""
    out = []
    for name, ctype in signature:
        v = values[name]
        if ctype.endswith("*"):
            v = 0 if v is None else v.data_ptr()
        out.append(_PACK[ctype](v))
    return tuple(out)


def launch(fn: Any, n: int, args: tuple, device: torch.device, block: int | None = None) -> None:
    """Launch ``fn`` over ``n`` neurons on torch's current stream of ``device``."""
    if n == 0:
        return
    cupy = import_cupy()
    grid, blk = launch_config(n, device_info(device.index).sm_count, block)
    stream = _external_stream(torch.cuda.current_stream(device).cuda_stream, device.index)
    with cupy.cuda.Device(device.index), stream:
        fn((grid,), (blk,), args)
