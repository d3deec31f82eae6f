"""One neuron layer through the generated CUDA kernels, as a differentiable torch op.

Two parts:

- :class:`CudaNeuronKernel`: the forward/backward pair of one neuron form,
  rendered by :mod:`snncc.backends.kernels` for the ``cuda`` target (the same
  template text the cpu backend compiles for the host), compiled lazily by
  NVRTC on first use and launched on torch's current stream.
- :func:`run_neuron` / :class:`NeuronFunction`: the autograd wrapper, written
  against a small kernel protocol (``info``, ``forward``, ``backward``) and
  free of any device assumption, so it runs the cpu backend's
  :class:`~snncc.backends.cpu.neuron.NeuronKernel` as well (the tests do, on
  the CPU, to check this wrapper's gradient plumbing without a GPU).

PLIF's decay ``k = sigmoid(w)`` is a by-value kernel argument. Reading it from
the GPU is a device-to-host sync, which would stall the launch queue every
forward and forbid CUDA-graph capture, so the value is cached per ``w`` and
re-read only when ``w`` changes (its version counter moves on every in-place
update, e.g. ``optimizer.step()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.autograd.function import once_differentiable

from snncc.backends.cuda import runtime
from snncc.backends.kernels import (
    NeuronKernelInfo,
    neuron_kernel_info,
    render_neuron_kernels,
)
from snncc.errors import ShapeError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor


class KernelLike(Protocol):
    """What :func:`run_neuron` needs from a compiled kernel pair (cpu and cuda both fit)."""

    info: NeuronKernelInfo

    def forward(
        self, x: Tensor, adds: Sequence[Tensor], v0: Tensor | None, k: float, store_h: bool
    ) -> tuple[Tensor, Tensor | None, Tensor]: ...

    def backward(
        self,
        gy: Tensor,
        gv_last: Tensor | None,
        h_seq: Tensor | None,
        x: Tensor | None,
        adds: Sequence[Tensor | None],
        v0: Tensor | None,
        k: float,
        want_adds: Sequence[bool],
        want_v0: bool,
        want_k: bool,
    ) -> tuple[Tensor, list[Tensor | None], Tensor | None, Tensor | float | None]: ...


class CudaNeuronKernel:
    """The CUDA forward/backward kernels of one neuron form (+ its fused element-wise steps).

    Rendering happens here, on any machine; compiling and loading happen on
    the first launch per device (needs CuPy and a GPU).
    """

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
        self.block = block
        self._fns: dict[tuple[str, int], Any] = {}

    @property
    def n_adds(self) -> int:
        return len(self.info.add_ports)

    def call(self, which: str, values: Mapping[str, Any], device: torch.device) -> None:
        """Launch the forward ("fwd") or backward ("bwd") kernel with arguments by name.

        The snnTorch / Norse forms' host side (:mod:`snncc.backends.cpu.forms`,
        device-generic) drives its kernels through this; ``values`` holds every
        name of ``info.forward_args`` / ``backward_args`` (tensors on ``device``,
        None for NULL, or numbers).
        """
        if which == "bwd" and not self.has_backward:
            raise ShapeError("this neuron kernel was rendered forward-only (inference)")
        signature = self.info.forward_args if which == "fwd" else self.info.backward_args
        args = runtime.pack_args(signature, values)
        runtime.launch(self._fn(which, device), int(values["N"]), args, device, self.block)

    def _fn(self, which: str, device: torch.device) -> Any:
        key = (which, device.index)
        fn = self._fns.get(key)
        if fn is None:
            name = self.info.forward_name if which == "fwd" else self.info.backward_name
            fn = runtime.load_function(self.source, name, device, self.cache_dir)
            self._fns[key] = fn
        return fn

    def forward(
        self, x: Tensor, adds: Sequence[Tensor], v0: Tensor | None, k: float, store_h: bool
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Forward kernel on contiguous fp32 CUDA [T, N] tensors; returns (out, h_seq, v_last)."""
        T, N = x.shape
        dev = x.device
        out_dtype = torch.uint8 if self.info.out_dtype == "uint8" else torch.float32
        out = torch.empty((T, N), dtype=out_dtype, device=dev)
        h_seq = torch.empty((T, N), dtype=torch.float32, device=dev) if store_h else None
        v_last = torch.empty((N,), dtype=torch.float32, device=dev)
        values = {
            "x": x,
            **{f"a{j}": a for j, a in enumerate(adds)},
            "v0": v0,
            "k": k,
            "out": out,
            "h_seq": h_seq,
            "v_last": v_last,
            "T": T,
            "N": N,
        }
        args = runtime.pack_args(self.info.forward_args, values)
        runtime.launch(self._fn("fwd", dev), N, args, dev, self.block)
        return out, h_seq, v_last

    def backward(
        self,
        gy: Tensor,
        gv_last: Tensor | None,
        h_seq: Tensor | None,
        x: Tensor | None,
        adds: Sequence[Tensor | None],
        v0: Tensor | None,
        k: float,
        want_adds: Sequence[bool],
        want_v0: bool,
        want_k: bool,
    ) -> tuple[Tensor, list[Tensor | None], Tensor | None, Tensor | None]:
        """Backward kernel; returns (gx, g per add input, gv0, d loss / d k as a 1-element float64)."""
        if not self.has_backward:
            raise ShapeError("this neuron kernel was rendered forward-only (inference)")
        T, N = gy.shape
        dev = gy.device
        f32 = {"dtype": torch.float32, "device": dev}
        gx = torch.empty((T, N), **f32)
        gadds = [torch.empty((T, N), **f32) if w else None for w in want_adds]
        gv0 = torch.empty((N,), **f32) if want_v0 else None
        gk = (
            torch.zeros((1,), dtype=torch.float64, device=dev)
            if want_k and self.info.learns_k
            else None
        )
        values = {
            "gy": gy,
            "gv_last": gv_last,
            "h_seq": h_seq,
            "x": x,
            **{f"a{j}": a for j, a in enumerate(adds)},
            "v0": v0,
            "k": k,
            "gx": gx,
            **{f"ga{j}": g for j, g in enumerate(gadds)},
            "gv0": gv0,
            "gk": gk,
            "T": T,
            "N": N,
        }
        args = runtime.pack_args(self.info.backward_args, values)
        runtime.launch(self._fn("bwd", dev), N, args, dev, self.block)
        return gx, gadds, gv0, gk


# ----------------------------------------------------------------- autograd
class NeuronFunction(torch.autograd.Function):
    """Autograd over (v0, k, x, *adds) -> (out, v_last), flattened to [T, N] / [N], any device."""

    @staticmethod
    def forward(ctx, kernel: KernelLike, k_value: float, v0, k, x, *adds):  # type: ignore[override]
        info = kernel.info
        # grad mode is off inside Function.forward: ask the inputs instead
        training = any(t is not None and t.requires_grad for t in (v0, k, x, *adds))
        store_h = training and info.needs_h and not info.recompute
        out, h_seq, v_last = kernel.forward(x, adds, v0, k_value, store_h)
        ctx.kernel = kernel
        ctx.tn = tuple(x.shape)
        ctx.k_value = k_value
        ctx.k_shape = None if k is None else k.shape
        ctx.has_v0 = v0 is not None
        keep_x = info.backward_reads_x
        n_pro = info.n_prologue_adds
        saved = [
            h_seq if store_h else None,
            x if keep_x else None,
            v0,
            *(a if keep_x and j < n_pro else None for j, a in enumerate(adds)),
        ]
        ctx.save_for_backward(*saved)
        if info.out_dtype == "uint8":
            ctx.mark_non_differentiable(out)
        return out, v_last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_vlast):  # type: ignore[override]
        kernel: KernelLike = ctx.kernel
        h_seq, x, v0, *adds = ctx.saved_tensors
        need = ctx.needs_input_grad  # (kernel, k_value, v0, k, x, *adds)
        device = (g_out if g_out is not None else g_vlast).device
        gy = torch.zeros(ctx.tn, device=device) if g_out is None else g_out
        gy = gy.float().contiguous()
        gv_last = None if g_vlast is None else g_vlast.float().contiguous()
        gx, gadds, gv0, gk = kernel.backward(
            gy,
            gv_last,
            h_seq,
            x,
            adds,
            v0,
            ctx.k_value,
            want_adds=list(need[5:]),
            want_v0=bool(need[2]),
            want_k=bool(need[3]),
        )
        gk_t = None
        if need[3] and gk is not None:
            if isinstance(gk, Tensor):  # cuda: float64[1] on the device, no host sync
                gk_t = gk.sum().to(torch.float32).expand(ctx.k_shape).clone()
            else:  # cpu: already summed on the host
                gk_t = torch.full(ctx.k_shape, float(gk), dtype=torch.float32, device=device)
        return (None, None, gv0 if ctx.has_v0 else None, gk_t, gx, *gadds)


def _f32(t: Tensor, what: str, device: torch.device) -> Tensor:
    """fp32, contiguous, on ``device`` (bf16 activations from autocast are widened here)."""
    if t.device != device:
        raise ShapeError(f"neuron kernel {what} is on {t.device}; the layer runs on {device}")
    if t.dtype != torch.float32:
        if not t.is_floating_point():
            raise ShapeError(f"neuron kernels take floating-point {what}, got {t.dtype}")
        t = t.float()
    return t.contiguous()


class KCache:
    """Host copies of PLIF decays ``k = sigmoid(w)``, refreshed only when ``w`` changes."""

    def __init__(self) -> None:
        self._values: dict[Any, tuple[tuple[int, int], float]] = {}

    def value(self, key: Any, w: Tensor | None, k: Tensor) -> float:
        """float(k), read from the device only when ``w``'s storage or version moved."""
        if w is None:
            return float(k)
        stamp = (w.data_ptr(), w._version)
        hit = self._values.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = float(k.detach().reshape(-1)[0]) if k.numel() else 0.0
        self._values[key] = (stamp, value)
        return value


def run_neuron(
    kernel: KernelLike,
    x: Tensor,
    adds: Sequence[Tensor] = (),
    v0: Tensor | None = None,
    k: Tensor | None = None,
    k_value: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One neuron layer over a sequence: x [T, *shape] -> (out [T, *shape], v_last [*shape]).

    Same contract as the cpu backend's ``run_neuron`` (``adds`` in the
    kernel's a<j> order, broadcast to x's shape; ``v0`` None for the spec's
    v_init; ``k`` PLIF's ``sigmoid(w)``, possibly requiring grad), on any
    device the kernel runs on; ``k_value`` is ``float(k)`` when the caller
    already knows it (no device read). Without any input that requires grad,
    the forward kernel runs directly (no autograd node, no saved tensors).
    """
    n_adds = len(kernel.info.add_ports)
    if len(adds) != n_adds:
        raise ShapeError(f"neuron kernel expects {n_adds} add inputs, got {len(adds)}")
    if x.dim() < 1:
        raise ShapeError(f"neuron input must be time-major [T, ...], got shape {tuple(x.shape)}")
    device = x.device
    x = _f32(x, "input", device)
    T = x.shape[0]
    step_shape = tuple(x.shape[1:])
    N = math.prod(step_shape)
    flat_adds = []
    for j, a in enumerate(adds):
        a = _f32(a, f"add input {j}", device)
        if torch.broadcast_shapes(a.shape, x.shape) != x.shape:
            raise ShapeError(
                f"fused add input {j} of shape {tuple(a.shape)} does not broadcast to the "
                f"neuron input's shape {tuple(x.shape)}"
            )
        flat_adds.append(a.expand(x.shape).contiguous().reshape(T, N))
    v0_flat = None
    if v0 is not None:
        v0 = _f32(v0, "initial membrane", device)
        if tuple(v0.shape) != step_shape:
            v0 = v0.expand(step_shape)
        v0_flat = v0.contiguous().reshape(N)
    learns_k = kernel.info.learns_k
    if learns_k and k is None:
        raise ShapeError("a PLIF neuron kernel needs k = sigmoid(w)")
    k_arg = k.float() if (k is not None and learns_k) else None
    if k_value is None:
        k_value = float(k_arg.detach()) if k_arg is not None else 0.0
    x_flat = x.reshape(T, N)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (v0_flat, k_arg, x_flat, *flat_adds)
    )
    if grad:
        out, v_last = NeuronFunction.apply(kernel, k_value, v0_flat, k_arg, x_flat, *flat_adds)
    else:
        out, _, v_last = kernel.forward(x_flat, flat_adds, v0_flat, k_value, False)
    return out.reshape(x.shape), v_last.reshape(step_shape)
