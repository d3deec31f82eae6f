"""One neuron layer's compiled C++ kernels, called by argument name.

The forward and backward kernels come from the shared CUDA templates rendered
for the ``cpu`` target (:mod:`snncc.backends.kernels`); this module only
compiles them and passes torch tensors in (contiguous CPU memory, by
pointer). The autograd wrapper is device-independent and shared with the
cuda backend (:mod:`snncc.backends.cpu.autograd`).
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from snncc.backends.cpu import compiler
from snncc.backends.cpu.threads import kernel_threads
from snncc.backends.kernel_cache import LoadedCode
from snncc.backends.kernels import (
    NeuronKernelInfo,
    neuron_kernel_info,
    render_neuron_kernels,
)
from snncc.errors import ShapeError
from snncc.ir.neuron import NeuronSpec

_CTYPES = {
    "const float*": ctypes.c_void_p,
    "float*": ctypes.c_void_p,
    "uint8*": ctypes.c_void_p,
    "const snncc_bf16*": ctypes.c_void_p,
    "snncc_bf16*": ctypes.c_void_p,
    "const snncc_f16*": ctypes.c_void_p,
    "snncc_f16*": ctypes.c_void_p,
    "double*": ctypes.c_void_p,
    "float": ctypes.c_float,
    "int": ctypes.c_int,
    "int64": ctypes.c_longlong,
}


class NeuronKernel:
    """The compiled forward/backward pair of one neuron form (+ its fused steps)."""

    target = "cpu"

    def __init__(
        self,
        spec: NeuronSpec | Mapping[str, Any],
        prologue: Sequence[Mapping[str, Any]] = (),
        epilogue: Sequence[Mapping[str, Any]] = (),
        options: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.spec = spec if isinstance(spec, NeuronSpec) else NeuronSpec.from_dict(dict(spec))
        self.info: NeuronKernelInfo = neuron_kernel_info(self.spec, prologue, epilogue, options)
        #: what rendered ``source`` (the custom ops' kernel key, backends/cpu/custom_ops.py)
        self.render_args = (tuple(prologue), tuple(epilogue), dict(options or {}))
        self.source = render_neuron_kernels(self.spec, prologue, epilogue, "cpu", options)
        self.library = KernelLibrary(
            self.source,
            cache_dir,
            {
                "fwd": (self.info.forward_name, self.info.forward_args),
                "bwd": (self.info.backward_name, self.info.backward_args),
            },
        )
        from snncc.backends.cpu.custom_ops import prime_for_tracing

        prime_for_tracing(self)

    def call(self, which: str, values: Mapping[str, Any], device: Any = None) -> None:
        """Run the forward ("fwd") or backward ("bwd") kernel with arguments by name.

        ``values`` maps every name of ``info.forward_args`` / ``backward_args``
        to a CPU tensor (None: NULL) or a number; tensors are contiguous except
        a strided ``gy`` the kernel reads by ``gy_ts`` / ``gy_ns``; both autograd
        wrappers (:mod:`snncc.backends.cpu.autograd`, :mod:`snncc.backends.cpu.forms`)
        call the kernels this way. ``device`` is where the layer's tensors live:
        anything but the CPU is refused (the kernels would read device memory).
        """
        if device is not None and getattr(device, "type", device) != "cpu":
            raise ShapeError(
                f"the cpu backend's neuron kernels take CPU tensors (the layer runs on {device})"
            )
        self.library.call(which, values, kernel_threads(values["T"] * values["N"]))


#: loaded library -> [the thread count it was last told]. Why per library, not per caller:
#: layers of one form load one library (the compiler's cache hands out one handle per file),
#: and its count is one static variable. Remembered per layer, a wide hidden layer that ran
#: after a narrow readout of the same form kept the readout's one thread.
_TOLD: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
_told_lock = threading.Lock()  # programs may be built in several threads at once


class KernelLibrary(LoadedCode):
    """A compiled kernel library's entry points, called with their arguments by name.

    Shared by the layer kernels (:class:`NeuronKernel`) and the fused recurrent groups
    (:mod:`snncc.backends.cpu.recurrent`): loading through the verified cache, the ctypes
    signatures, tensors passed by pointer, and the library's OpenMP thread count, set
    only when it changes.
    """

    def __init__(
        self,
        source: str,
        cache_dir: str | None,
        entries: Mapping[str, tuple[str, Sequence[tuple[str, str]]]],
    ) -> None:
        lib = compiler.load(source, cache_dir, symbols=[name for name, _ in entries.values()])
        #: which -> (function, ((argument name, is a pointer), ...)), looked up once
        self._calls: dict[str, tuple[Any, tuple[tuple[str, bool], ...]]] = {}
        for which, (name, args) in entries.items():
            fn = getattr(lib, name)
            fn.argtypes = [_CTYPES[c] for _, c in args]
            fn.restype = None
            self._calls[which] = (fn, tuple((n, c.endswith("*")) for n, c in args))
        self._set_threads = getattr(lib, "snncc_set_threads", None)
        #: what the library was last told (threads.kernel_threads), shared by every
        #: KernelLibrary of one loaded library
        with _told_lock:
            self._told = _TOLD.setdefault(lib, [-1])

    def call(self, which: str, values: Mapping[str, Any], threads: int) -> None:
        """Run entry ``which`` on ``values`` (tensors by pointer, None as NULL, numbers)."""
        fn, signature = self._calls[which]
        if threads != self._told[0] and self._set_threads is not None:
            self._set_threads(threads)
            self._told[0] = threads
        fn(
            *[
                (None if (v := values[name]) is None else v.data_ptr()) if pointer else values[name]
                for name, pointer in signature
            ]
        )
