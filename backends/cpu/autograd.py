"""One SpikingJelly-style neuron layer through its fused kernels, as a differentiable torch op.

Device-independent: the host side here only allocates torch tensors on the
input's device, fills the kernels' arguments by name and calls
``kernel.call(which, values, device)``, so the same code drives the cpu
backend's compiled C++ (:class:`~snncc.backends.cpu.neuron.NeuronKernel`) and
the cuda backend's NVRTC kernels
(:class:`~snncc.backends.cuda.neuron.CudaNeuronKernel`). That is the same
two-method protocol the snnTorch / Norse form family uses
(:mod:`snncc.backends.cpu.forms`), which also shares this module's input
checks (:func:`as_f32`, :func:`broadcasts_to`).

The one per-target difference the host sees is where the kernel puts
``d loss / d k`` (PLIF's decay): the host target writes one double per neuron,
the CUDA target atomically adds into one double; both are summed here in
double before the cast to fp32, so the two give the same value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.autograd.function import once_differentiable

from snncc.backends.kernels import NeuronKernelInfo, gy_dtype
from snncc.errors import ShapeError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor

#: kernel I/O dtype names (NeuronKernelInfo.out_dtype / x_dtype) -> torch dtypes
TORCH_DTYPES = {
    "float32": torch.float32,
    "uint8": torch.uint8,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class KernelPair(Protocol):
    """A compiled forward/backward kernel pair, called by argument name (both families, both targets).

    cpu ``NeuronKernel`` and ``CudaNeuronKernel`` fit; ``values`` holds every
    name of ``info.forward_args`` / ``backward_args`` (tensors on ``device``,
    None for NULL, or numbers).
    """

    spec: NeuronSpec
    info: NeuronKernelInfo

    def call(self, which: str, values: Mapping[str, Any], device: torch.device) -> None: ...


class NeuronKernelLike(KernelPair, Protocol):
    """A SpikingJelly-style form's kernel pair: also says where d loss / d k goes."""

    #: the backward kernel writes d loss / d k per neuron (double[N]), else into one double[1]
    k_grad_per_neuron: bool


# ------------------------------------------------------------------- inputs
def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether ``shape`` broadcasts to exactly ``target`` (torch's rules: align from the
    right; each dim 1 or equal). Plain Python: ``torch.broadcast_shapes`` costs about
    35 us a call (symbolic-shape guards), paid per time step in a recurrent component."""
    shape, target = tuple(shape), tuple(target)
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def as_f32(t: Tensor, what: str, device: torch.device, widen: bool) -> Tensor:
    """fp32 and contiguous; other dtypes are refused (cpu) or widened (cuda: bf16 autocast)."""
    if t.device != device:
        raise ShapeError(f"neuron kernel {what} is on {t.device}; the layer runs on {device}")
    if t.dtype != torch.float32:
        if not (widen and t.is_floating_point()):
            raise ShapeError(f"the neuron kernels take float32 {what}, got {t.dtype}")
        t = t.float()
    return t.contiguous()


def time_major(
    x: Tensor, widen: bool, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, tuple[int, ...], int]:
    """A layer's input [T, *shape] as the kernel reads it: (x, per-step shape, N).

    ``dtype`` float32: see :func:`as_f32`; bfloat16 / float16 (a kernel rendered
    with that ``x_dtype``): x must already have it, it is never narrowed.
    """
    if x.dim() < 1:
        raise ShapeError(f"neuron input must be time-major [T, ...], got shape {tuple(x.shape)}")
    if dtype == torch.float32:
        x = as_f32(x, "input", x.device, widen)
    elif x.dtype != dtype:
        raise ShapeError(f"this neuron kernel takes {dtype} input, got {x.dtype}")
    else:
        x = x.contiguous()
    step_shape = tuple(x.shape[1:])
    return x, step_shape, math.prod(step_shape)


def flat_seq(t: Tensor, what: str, x: Tensor, widen: bool) -> Tensor:
    """A per-step input broadcast to x's [T, *shape] and flattened to [T, N] (torch broadcasts,
    so autograd reduces its gradient back to its own shape)."""
    t = as_f32(t, what, x.device, widen)
    if not broadcasts_to(t.shape, x.shape):
        raise ShapeError(
            f"{what} of shape {tuple(t.shape)} does not broadcast to the neuron input's "
            f"shape {tuple(x.shape)}"
        )
    return t.expand(x.shape).contiguous().reshape(x.shape[0], math.prod(x.shape[1:]))


# ------------------------------------------------------------------ kernels
def neuron_forward(
    kernel: NeuronKernelLike,
    x: Tensor,
    adds: Sequence[Tensor],
    v0: Tensor | None,
    k: float,
    store_h: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The forward kernel on contiguous [T, N] tensors (x in the kernel's ``x_dtype``, the
    rest fp32); returns (out in the kernel's ``out_dtype``, h_seq, v_last)."""
    T, N = x.shape
    dev = x.device
    out = torch.empty((T, N), dtype=TORCH_DTYPES[kernel.info.out_dtype], device=dev)
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
    kernel.call("fwd", values, dev)
    return out, h_seq, v_last


def neuron_backward(
    kernel: NeuronKernelLike,
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
    """The backward kernel; returns (gx, g per add input, gv0, d loss / d k as float64 partials).

    ``gy`` is in the kernel's output dtype (fp32, or 16 bits for 16-bit outputs) with any
    strides (the kernel reads it in place: autograd's broadcast gradient of a sum or a
    mean needs no materialising); ``gx`` comes back in its ``x_dtype``; everything else
    is fp32 and contiguous.
    """
    T, N = gy.shape
    dev = gy.device
    f32 = {"dtype": torch.float32, "device": dev}
    gx = torch.empty((T, N), dtype=TORCH_DTYPES[kernel.info.x_dtype], device=dev)
    gadds = [torch.empty((T, N), **f32) if w else None for w in want_adds]
    gv0 = torch.empty((N,), **f32) if want_v0 else None
    gk = None
    if want_k and kernel.info.learns_k:
        slots = N if kernel.k_grad_per_neuron else 1  # one double accumulated atomically
        gk = torch.zeros((slots,), dtype=torch.float64, device=dev)
    values = {
        "gy": gy,
        "gy_ts": gy.stride(0),
        "gy_ns": gy.stride(1),
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
    kernel.call("bwd", values, dev)
    return gx, gadds, gv0, gk


# ----------------------------------------------------------------- autograd
class NeuronFunction(torch.autograd.Function):
    """Autograd over (v0, k, x, *adds) -> (out, v_last), flattened to [T, N] / [N], any device."""

    @staticmethod
    def forward(ctx, kernel: NeuronKernelLike, k_value: float, v0, k, x, *adds):  # type: ignore[override]
        info = kernel.info
        ctx.set_materialize_grads(False)  # an output without a gradient arrives as None
        # grad mode is off inside Function.forward: ask the inputs instead
        training = any(t is not None and t.requires_grad for t in (v0, k, x, *adds))
        store_h = training and info.needs_h and not info.recompute
        out, h_seq, v_last = neuron_forward(kernel, x, adds, v0, k_value, store_h)
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
        h_seq, x, v0, *adds = ctx.saved_tensors
        need = ctx.needs_input_grad  # (kernel, k_value, v0, k, x, *adds)
        device = (g_out if g_out is not None else g_vlast).device
        # a 16-bit output's gradient arrives in 16 bits and the kernel reads it so
        dtype = TORCH_DTYPES[gy_dtype(ctx.kernel.info.out_dtype)]
        if g_out is None:  # one zero, broadcast: the kernel reads it with strides (0, 0)
            gy = torch.zeros((), dtype=dtype, device=device).expand(ctx.tn)
        else:  # in place, with its strides (a gradient of y.sum() is one broadcast value)
            gy = g_out.to(dtype)
        gv_last = None if g_vlast is None else g_vlast.float().contiguous()
        gx, gadds, gv0, gk = neuron_backward(
            ctx.kernel,
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
        if need[3] and gk is not None:  # summed in double, one rounding to fp32, no host sync
            gk_t = gk.sum().to(torch.float32).expand(ctx.k_shape).clone()
        return (None, None, gv0 if ctx.has_v0 else None, gk_t, gx, *gadds)


def run_neuron(
    kernel: NeuronKernelLike,
    x: Tensor,
    adds: Sequence[Tensor] = (),
    v0: Tensor | None = None,
    k: Tensor | None = None,
    k_value: float | None = None,
    widen: bool = False,
) -> tuple[Tensor, Tensor]:
    """One neuron layer over a sequence: x [T, *shape] -> (out [T, *shape], v_last [*shape]).

    ``adds`` are the add steps' inputs in the kernel's a<j> order; each is
    broadcast to x's shape by torch first (so its gradient is reduced back by
    autograd). ``v0`` is the membrane before step 0 (None: the spec's v_init),
    ``k`` PLIF's decay ``sigmoid(w)`` as a tensor that may require grad;
    ``k_value`` is ``float(k)`` when the caller already knows it (no device
    read). ``widen``: non-fp32 floating inputs are cast to fp32 (cuda's bf16
    autocast) instead of refused. Without any input that requires grad, the
    forward kernel runs directly (no autograd node, no saved tensors).
    """
    n_adds = len(kernel.info.add_ports)
    if len(adds) != n_adds:
        raise ShapeError(f"neuron kernel expects {n_adds} add inputs, got {len(adds)}")
    device = x.device
    x, step_shape, N = time_major(x, widen, TORCH_DTYPES[kernel.info.x_dtype])
    T = x.shape[0]
    flat_adds = [flat_seq(a, f"fused add input {j}", x, widen) for j, a in enumerate(adds)]
    v0_flat = None
    if v0 is not None:
        v0 = as_f32(v0, "initial membrane", device, widen)
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
        out, _, v_last = neuron_forward(kernel, x_flat, flat_adds, v0_flat, k_value, False)
    return out.reshape(x.shape), v_last.reshape(step_shape)
