"""One neuron layer through the compiled C++ kernels, as a differentiable torch op.

The forward and backward kernels come from the shared CUDA templates rendered
for the ``cpu`` target (:mod:`snncc.backends.kernels`); this module only moves
torch tensors in and out (contiguous fp32 CPU memory, passed by pointer) and
wraps the pair in a ``torch.autograd.Function`` so gradients reach the input,
the add-step inputs, the initial membrane and PLIF's ``w`` (through torch's own
``k = sigmoid(w)``). snnTorch / Norse forms use the same :class:`NeuronKernel`
through :meth:`NeuronKernel.call` and :mod:`snncc.backends.cpu.forms`.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from snncc.backends.cpu import compiler
from snncc.backends.cpu.forms import broadcasts_to
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
        lib = compiler.load(self.source, cache_dir)
        self._fwd = getattr(lib, self.info.forward_name)
        self._fwd.argtypes = [_CTYPES[c] for _, c in self.info.forward_args]
        self._fwd.restype = None
        self._bwd = getattr(lib, self.info.backward_name)
        self._bwd.argtypes = [_CTYPES[c] for _, c in self.info.backward_args]
        self._bwd.restype = None

    @property
    def n_adds(self) -> int:
        return len(self.info.add_ports)

    def call(self, which: str, values: Mapping[str, Any], device: Any = None) -> None:
        """Run the forward ("fwd") or backward ("bwd") kernel with arguments by name.

        ``values`` maps every name of ``info.forward_args`` / ``backward_args``
        to a contiguous CPU tensor (None: NULL) or a number. The form family's
        host side (:mod:`snncc.backends.cpu.forms`) calls its kernels this way.
        """
        fn, signature = (
            (self._fwd, self.info.forward_args)
            if which == "fwd"
            else (self._bwd, self.info.backward_args)
        )
        fn(*(_ptr(values[n]) if c.endswith("*") else values[n] for n, c in signature))

    # ------------------------------------------------------------ raw calls
    def forward(
        self,
        x: torch.Tensor,
        adds: Sequence[torch.Tensor],
        v0: torch.Tensor | None,
        k: float,
        store_h: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Run the forward kernel on contiguous fp32 [T, N] tensors; returns (out, h_seq, v_last)."""
        T, N = x.shape
        out_dtype = torch.uint8 if self.info.out_dtype == "uint8" else torch.float32
        out = torch.empty((T, N), dtype=out_dtype)
        h_seq = torch.empty((T, N), dtype=torch.float32) if store_h else None
        v_last = torch.empty((N,), dtype=torch.float32)
        self._fwd(
            _ptr(x),
            *(_ptr(a) for a in adds),
            _ptr(v0),
            k,
            _ptr(out),
            _ptr(h_seq),
            _ptr(v_last),
            T,
            N,
        )
        return out, h_seq, v_last

    def backward(
        self,
        gy: torch.Tensor,
        gv_last: torch.Tensor | None,
        h_seq: torch.Tensor | None,
        x: torch.Tensor | None,
        adds: Sequence[torch.Tensor | None],
        v0: torch.Tensor | None,
        k: float,
        want_adds: Sequence[bool],
        want_v0: bool,
        want_k: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor | None, float | None]:
        """Run the backward kernel; returns (gx, g per add input, gv0, d loss / d k)."""
        T, N = gy.shape
        gx = torch.empty((T, N), dtype=torch.float32)
        gadds = [torch.empty((T, N), dtype=torch.float32) if w else None for w in want_adds]
        gv0 = torch.empty((N,), dtype=torch.float32) if want_v0 else None
        gk = torch.empty((N,), dtype=torch.float64) if want_k and self.info.learns_k else None
        self._bwd(
            _ptr(gy),
            _ptr(gv_last),
            _ptr(h_seq),
            _ptr(x),
            *(_ptr(a) for a in adds),
            _ptr(v0),
            k,
            _ptr(gx),
            *(_ptr(g) for g in gadds),
            _ptr(gv0),
            _ptr(gk),
            T,
            N,
        )
        gk_sum = float(gk.sum()) if gk is not None else None
        return gx, gadds, gv0, gk_sum


def _f32(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dtype != torch.float32:
        raise ShapeError(f"the cpu backend's neuron kernels take float32 {what}, got {t.dtype}")
    if t.device.type != "cpu":
        raise ShapeError(
            f"the cpu backend's neuron kernels take CPU tensors ({what} is on {t.device})"
        )
    return t.contiguous()


class _NeuronFunction(torch.autograd.Function):
    """Autograd over (v0, k, x, *adds) -> (out, v_last), all flattened to [T, N] / [N]."""

    @staticmethod
    def forward(ctx, kernel: NeuronKernel, v0, k, x, *adds):  # type: ignore[override]
        info = kernel.info
        kv = float(k) if k is not None else 0.0
        # grad mode is off inside Function.forward: ask the inputs instead
        training = any(t is not None and t.requires_grad for t in (v0, k, x, *adds))
        store_h = training and info.needs_h and not info.recompute
        out, h_seq, v_last = kernel.forward(x, adds, v0, kv, store_h)
        ctx.kernel = kernel
        ctx.tn = tuple(x.shape)
        ctx.k_value = kv
        ctx.k_shape = None if k is None else k.shape
        ctx.has_v0 = v0 is not None
        n_pro = info.n_prologue_adds
        keep_x = info.backward_reads_x
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
        kernel: NeuronKernel = ctx.kernel
        h_seq, x, v0, *adds = ctx.saved_tensors
        need = ctx.needs_input_grad  # (kernel, v0, k, x, *adds)
        gy = torch.zeros(ctx.tn) if g_out is None else g_out
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
            want_adds=list(need[4:]),
            want_v0=bool(need[1]),
            want_k=bool(need[2]),
        )
        gk_t = None
        if need[2] and gk is not None:
            gk_t = torch.full(ctx.k_shape, gk, dtype=torch.float32)
        return (None, gv0 if ctx.has_v0 else None, gk_t, gx, *gadds)


def run_neuron(
    kernel: NeuronKernel,
    x: torch.Tensor,
    adds: Sequence[torch.Tensor] = (),
    v0: torch.Tensor | None = None,
    k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One neuron layer over a whole sequence: x [T, *shape] -> (out [T, *shape], v_last [*shape]).

    ``adds`` are the add steps' inputs in the kernel's a<j> order; each is
    broadcast to x's shape by torch first (so its gradient is reduced back by
    autograd). ``v0`` is the membrane before step 0 (None: the spec's v_init),
    ``k`` PLIF's decay ``sigmoid(w)`` as a tensor that may require grad.
    """
    if len(adds) != kernel.n_adds:
        raise ShapeError(f"neuron kernel expects {kernel.n_adds} add inputs, got {len(adds)}")
    if x.dim() < 1:
        raise ShapeError(f"neuron input must be time-major [T, ...], got shape {tuple(x.shape)}")
    x = _f32(x, "input")
    T = x.shape[0]
    step_shape = tuple(x.shape[1:])
    N = math.prod(step_shape)
    flat_adds = []
    for j, a in enumerate(adds):
        a = _f32(a, f"add input {j}")
        if not broadcasts_to(a.shape, x.shape):
            raise ShapeError(
                f"fused add input {j} of shape {tuple(a.shape)} does not broadcast to the "
                f"neuron input's shape {tuple(x.shape)}"
            )
        flat_adds.append(a.expand(x.shape).contiguous().reshape(T, N))
    v0_flat = None
    if v0 is not None:
        v0 = _f32(v0, "initial membrane")
        if tuple(v0.shape) != step_shape:
            v0 = v0.expand(step_shape)
        v0_flat = v0.contiguous().reshape(N)
    if kernel.info.learns_k and k is None:
        raise ShapeError("a PLIF neuron kernel needs k = sigmoid(w)")
    k_arg = k.float() if (k is not None and kernel.info.learns_k) else None
    out, v_last = _NeuronFunction.apply(kernel, v0_flat, k_arg, x.reshape(T, N), *flat_adds)
    return out.reshape(x.shape), v_last.reshape(step_shape)
