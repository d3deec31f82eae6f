"""One neuron layer's generated CUDA kernels, launched by argument name.

:class:`CudaNeuronKernel` is the forward/backward pair of one neuron form,
rendered by :mod:`snncc.backends.kernels` for the ``cuda`` target (the same
template text the cpu backend compiles for the host), compiled lazily by NVRTC
on first use and launched on torch's current stream. The autograd wrapper is
the cpu backend's, which is device-independent (:mod:`snncc.backends.cpu.autograd`):
it allocates on the input's device and calls :meth:`CudaNeuronKernel.call`.
Every quantity (PLIF's ``k = sigmoid(w)`` too) is a device pointer, so nothing
is read back to the host between launches (CUDA graphs capture them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from snncc.backends.cuda import runtime
from snncc.backends.kernels import (
    NeuronKernelInfo,
    neuron_kernel_info,
    render_neuron_kernels,
)
from snncc.errors import ShapeError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor


class CudaNeuronKernel:
    """The CUDA forward/backward kernels of one neuron form (+ its fused element-wise steps).

    Rendering happens here, on any machine; compiling and loading happen on
    the first launch per device (needs CuPy and a GPU).
    """

    target = "cuda"

    def __init__(
        self,
        spec: NeuronSpec | Mapping[str, Any],
        prologue: Sequence[Mapping[str, Any]] = (),
        epilogue: Sequence[Mapping[str, Any]] = (),
        options: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        *,
        backward: bool = True,
        block: int | None = None,
    ) -> None:
        self.spec = spec if isinstance(spec, NeuronSpec) else NeuronSpec.from_dict(dict(spec))
        self.info: NeuronKernelInfo = neuron_kernel_info(self.spec, prologue, epilogue, options)
        self.has_backward = backward
        #: what rendered ``source`` (tests re-render it for the host to emulate a GPU)
        self.render_args = (tuple(prologue), tuple(epilogue), dict(options or {}))
        self.source = render_neuron_kernels(
            self.spec, prologue, epilogue, "cuda", options, backward=backward
        )
        self.cache_dir = cache_dir
        self.block = runtime.check_block(block, "cuda neuron kernel block")
        self._functions = runtime.KernelFunctions(self.source, cache_dir)
        from snncc.backends.cpu.custom_ops import prime_for_tracing

        prime_for_tracing(self)

    def call(self, which: str, values: Mapping[str, Any], device: torch.device) -> None:
        """Launch the forward ("fwd") or backward ("bwd") kernel with arguments by name.

        The device-generic autograd wrapper (:mod:`snncc.backends.cpu.autograd`) drives the
        kernels through this; ``values`` holds every
        name of ``info.forward_args`` / ``backward_args`` (tensors on ``device``,
        None for NULL, or numbers).
        """
        if which == "bwd" and not self.has_backward:
            raise ShapeError("this neuron kernel was rendered forward-only (inference)")
        signature = self.info.forward_args if which == "fwd" else self.info.backward_args
        args = runtime.pack_args(signature, values)
        runtime.launch(self._fn(which, device), int(values["N"]), args, device, self.block)

    def _fn(self, which: str, device: torch.device) -> Any:
        name = self.info.forward_name if which == "fwd" else self.info.backward_name
        return self._functions.get(name, device)
