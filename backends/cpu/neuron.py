"""One neuron layer's compiled C++ kernels, called by argument name.

The forward and backward kernels come from the shared CUDA templates rendered
for the ``cpu`` target (:mod:`snncc.backends.kernels`); this module only
compiles them and passes torch tensors in (contiguous CPU memory, by
pointer). The autograd wrapper is device-independent and shared with the
cuda backend (:mod:`snncc.backends.cpu.autograd`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from snncc.backends.cpu import compiler
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


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NeuronKernel:
    """The compiled forward/backward pair of one neuron form (+ its fused steps)."""

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
        self.source = render_neuron_kernels(self.spec, prologue, epilogue, "cpu", options)
        names = (self.info.forward_name, self.info.backward_name)
        lib = compiler.load(self.source, cache_dir, symbols=names)
        self._fwd = getattr(lib, self.info.forward_name)
        self._fwd.argtypes = [_CTYPES[c] for _, c in self.info.forward_args]
        self._fwd.restype = None
        self._bwd = getattr(lib, self.info.backward_name)
        self._bwd.argtypes = [_CTYPES[c] for _, c in self.info.backward_args]
        self._bwd.restype = None

    def call(self, which: str, values: Mapping[str, Any], device: Any = None) -> None:
        """Run the forward ("fwd") or backward ("bwd") kernel with arguments by name.

        ``values`` maps every name of ``info.forward_args`` / ``backward_args``
        to a CPU tensor (None: NULL) or a number; tensors are contiguous except
        a strided ``gy`` the kernel reads by ``gy_ts`` / ``gy_ns``; both autograd
        wrappers (:mod:`snncc.backends.cpu.autograd`, :mod:`snncc.backends.cpu.forms`)
        call the kernels this way. ``device`` is where the layer's tensors live:
        anything but the CPU is refused (the kernels would read device memory).
        """
        if device is not None and torch.device(device).type != "cpu":
            raise ShapeError(
                f"the cpu backend's neuron kernels take CPU tensors (the layer runs on {device})"
            )
        fn, signature = (
            (self._fwd, self.info.forward_args)
            if which == "fwd"
            else (self._bwd, self.info.backward_args)
        )
        fn(*(_ptr(values[n]) if c.endswith("*") else values[n] for n, c in signature))
