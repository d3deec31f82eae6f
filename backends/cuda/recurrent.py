"""A fused recurrent group's generated CUDA kernels, launched one thread block per sample.

The kernels are :mod:`snncc.backends.kernels.recurrent`'s, rendered for the
``cuda`` target (the text the cpu backend compiles for the host, so the two
give the same bits); the autograd wrapper is the cpu backend's
(:mod:`snncc.backends.cpu.recurrent`, device-independent). The launch is the
part that differs: one block per sample (grid B), one thread per neuron
(a multiple of 32, at least H, so H <= ``MAX_FUSED_HIDDEN``), and dynamic shared
memory for the previous step's outputs and the fired list (forward, 3*H floats)
or gr(t+1) (backward, H floats). Compiled by NVRTC on first launch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from snncc.backends.cuda import runtime
from snncc.backends.kernels.recurrent import (
    MAX_FUSED_HIDDEN,
    RecurrentKernelInfo,
    recurrent_kernel_info,
    render_recurrent_kernels,
)
from snncc.errors import ShapeError
from snncc.ir.neuron import NeuronSpec


def block_threads(hidden: int) -> int:
    """Threads per block: one per neuron, rounded up to whole warps."""
    if not 0 < hidden <= MAX_FUSED_HIDDEN:
        raise ShapeError(
            f"a fused recurrent group on cuda holds 1..{MAX_FUSED_HIDDEN} neurons, got {hidden}"
        )
    return 32 * ((hidden + 31) // 32)


def shared_bytes(which: str, hidden: int) -> int:
    """Dynamic shared memory of one block: forward 3*H floats, backward H floats."""
    return 4 * hidden * (3 if which == "fwd" else 1)


class CudaRecurrentKernel:
    """The CUDA forward/backward kernels of one fused recurrent group (rendered now,
    compiled on the first launch per device)."""

    target = "cuda"

    def __init__(self, spec: NeuronSpec, port: int, cache_dir: str | None = None) -> None:
        self.spec = spec
        self.port = port
        self.info: RecurrentKernelInfo = recurrent_kernel_info(spec, port)
        self.source = render_recurrent_kernels(spec, port, "cuda")
        self.cache_dir = cache_dir
        self._functions = runtime.KernelFunctions(self.source, cache_dir)
        from snncc.backends.cpu.recurrent_ops import recurrent_key

        recurrent_key(self)  # the custom ops' key, worked out before any traced call

    def call(self, which: str, values: Mapping[str, Any], device: torch.device) -> None:
        """Launch the forward ("fwd") or backward ("bwd") kernel with arguments by name."""
        signature = self.info.forward_args if which == "fwd" else self.info.backward_args
        args = runtime.pack_args(signature, dict(values))
        B, H = int(values["B"]), int(values["H"])
        if B == 0 or int(values["T"]) == 0:
            return
        cupy = runtime.import_cupy()
        stream = runtime._external_stream(
            torch.cuda.current_stream(device).cuda_stream, device.index
        )
        fn = self._fn(which, device)
        with cupy.cuda.Device(device.index), stream:
            fn((B,), (block_threads(H),), args, shared_mem=shared_bytes(which, H))

    def _fn(self, which: str, device: torch.device) -> Any:
        name = self.info.forward_name if which == "fwd" else self.info.backward_name
        return self._functions.get(name, device)
