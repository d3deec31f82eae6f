"""A fused recurrent group (snncc.ir.recurrent) through one forward and one backward kernel.

Why: step by step, a recurrent group costs T one-step kernel calls and T small
GEMMs; fused, the time loop and the recurrent product (over the neurons that
fired, in ascending order) run inside one kernel per direction
(templates/cuda/recurrent_*.cu.j2, :mod:`snncc.backends.kernels.recurrent`).
The weight gradient is one GEMM over all T*B rows after the backward kernel,
from the saved outputs (uint8 where the output is exactly 0/1) and the
gradients of the recurrent input.

Device-independent like :mod:`snncc.backends.cpu.autograd`: the host code
allocates torch tensors and calls ``kernel.call(which, values, device)``; the
cpu backend's :class:`RecurrentKernel` compiles the host target. The sum's
order differs from torch's GEMM, so the fused group is not bit for bit the
reference (its tolerance: README, "Recurrent groups").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from snncc.backends.cpu import host_pages
from snncc.backends.cpu.autograd import (
    _reduce_grad,
    flat_quantity,
    quantity_args,
    seq_like,
    state_args,
)
from snncc.backends.cpu.neuron import KernelLibrary
from snncc.backends.cpu.threads import kernel_threads
from snncc.backends.kernels.recurrent import (
    RecurrentKernelInfo,
    recurrent_kernel_info,
    render_recurrent_kernels,
)
from snncc.errors import ShapeError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor


class RecurrentKernel:
    """The compiled fused forward/backward pair of one recurrent group (host target)."""

    target = "cpu"

    def __init__(self, spec: NeuronSpec, port: int, cache_dir: str | None = None) -> None:
        self.spec = spec
        self.info: RecurrentKernelInfo = recurrent_kernel_info(spec, port)
        self.source = render_recurrent_kernels(spec, port, "cpu")
        self.library = KernelLibrary(
            self.source,
            cache_dir,
            {
                "fwd": (self.info.forward_name, self.info.forward_args),
                "bwd": (self.info.backward_name, self.info.backward_args),
            },
        )
        from snncc.backends.cpu.recurrent_ops import recurrent_key

        recurrent_key(self)  # now, not at a traced first call (see custom_ops.prime_for_tracing)

    def call(self, which: str, values: Mapping[str, Any], device: Any = None) -> None:
        """Run the forward ("fwd") or backward ("bwd") kernel with arguments by name."""
        if device is not None and getattr(device, "type", device) != "cpu":
            raise ShapeError(f"the cpu backend's recurrent kernels take CPU tensors, not {device}")
        n = kernel_threads(values["T"] * values["B"] * values["H"])
        n = max(1, min(n, int(values["B"]))) if n > 0 else n  # parallel over samples
        self.library.call(which, values, n)


def group_quantities(kernel: Any, qs: Sequence[Tensor], B: int, H: int) -> list[tuple[Tensor, int]]:
    """The form's quantities flattened for a group of [B, H] neurons (:func:`flat_quantity`)."""
    return [flat_quantity(p, (B, H), q) for q, p in zip(kernel.info.param_args, qs)]


def group_forward(
    kernel: Any,
    shape: tuple[int, int, int],
    fed: Sequence[Tensor],
    c: Tensor | None,
    w: Tensor,
    s0: Tensor | None,
    s0s: Sequence[Tensor | None],
    quantities: Sequence[tuple[Tensor, int]],
    store: bool,
) -> tuple[Tensor, list[Tensor], Tensor | None, dict[str, Tensor | None]]:
    """One forward kernel call: (out [T, B, H], final states [B, H], r_seq, the saved
    sequences by name); ``quantities`` flattened (:func:`flat_quantity`). With ``store``
    false (inference) the kernel saves nothing: r_seq and the sequences are None.

    Shared by :class:`FusedRecurrentFunction` and the custom ops
    (:mod:`snncc.backends.cpu.recurrent_ops`), so both give the same bits."""
    info: RecurrentKernelInfo = kernel.info
    T, B, H = shape
    dev = w.device
    seq = (T, B, H)
    out = host_pages.empty(seq, torch.float32, dev)
    saved = {
        n: host_pages.empty(seq, torch.float32, dev) if store else None for n in info.seq_names
    }
    r_seq = host_pages.empty(seq, torch.float32, dev) if store else None
    lasts = [torch.empty((B, H), dtype=torch.float32, device=dev) for _ in info.state_vars]
    c_ts, c_bs = (0, 0) if c is None or c.dim() == 1 else (B * H, H)
    values: dict[str, Any] = {
        "c": c,
        "c_ts": c_ts,
        "c_bs": c_bs,
        "wt": w.detach().t().contiguous(),
        "s0": s0,
        "out": out,
        "r_seq": r_seq,
        "T": T,
        "B": B,
        "H": H,
        **saved,
    }
    values.update(zip(info.fed_ports, fed))
    values.update(state_args(info.state_vars, s0s, lasts))
    values.update(quantity_args(info.param_args, quantities))
    kernel.call("fwd", values, dev)
    return out, lasts, r_seq, saved


def group_backward(
    kernel: Any,
    shape: tuple[int, int, int],
    g_out: Tensor | None,
    g_lasts: Sequence[Tensor | None],
    fed: Sequence[Tensor],
    w: Tensor,
    r_seq: Tensor,
    saved: Mapping[str, Tensor | None],
    quantities: Sequence[tuple[Tensor, int]],
    need_s0: bool,
    need_fed: Sequence[bool],
    need_vars: Sequence[bool],
    need_q: Sequence[bool],
) -> dict[str, Tensor | None]:
    """One backward kernel call: the gradients by name (``gr``, the recurrent input's, always;
    ``gs0``, ``g<port>``, ``g<var>0``, ``gp_<q>`` as per-neuron double sums), None where
    the caller needs none (the kernel gets NULL)."""
    info: RecurrentKernelInfo = kernel.info
    T, B, H = shape
    dev = w.device
    f32 = {"dtype": torch.float32, "device": dev}
    grads: dict[str, Any] = {
        "gr": host_pages.empty((T, B, H), torch.float32, dev),
        "gs0": torch.empty((B, H), **f32) if need_s0 else None,
    }
    for f, want in zip(info.fed_ports, need_fed):
        grads[f"g{f}"] = host_pages.empty((T, B, H), torch.float32, dev) if want else None
    for v, want in zip(info.state_vars, need_vars):
        grads[f"g{v}0"] = torch.empty((B, H), **f32) if want else None
    for q, want in zip(info.param_args, need_q):
        grads[f"gp_{q}"] = torch.empty((B * H,), dtype=torch.float64, device=dev) if want else None
    values: dict[str, Any] = {
        "gy": None if g_out is None else g_out.float().contiguous(),
        "r_seq": r_seq,
        "w": w.detach().contiguous(),
        "T": T,
        "B": B,
        "H": H,
        **saved,
        **grads,
    }
    values.update(zip(info.fed_ports, fed))
    for v, g in zip(info.state_vars, g_lasts):
        values[f"g{v}_last"] = None if g is None else g.float().contiguous()
    values.update(quantity_args(info.param_args, quantities))
    kernel.call("bwd", values, dev)
    return grads


def weight_grad(gr: Tensor, spikes: Tensor, s0: Tensor | None) -> Tensor:
    """The recurrent weight's gradient, one GEMM over all T*B rows:
    gW[i, j] = sum over t, b of gr[t, b, i] * s[t-1, b, j] (s[-1] = ``s0``, or zeros)."""
    T, B, H = gr.shape
    first = gr.new_zeros((1, B, H)) if s0 is None else s0.unsqueeze(0)
    prev = torch.cat([first, spikes[:-1]]).reshape(T * B, H)
    return gr.reshape(T * B, H).t().mm(prev)


def input_grad(gr: Tensor, c_kind: str | None) -> Tensor | None:
    """The gradient of ``c``: the bias's (summed over t and b) or the sequence's (``gr``)."""
    if c_kind is None:
        return None
    return gr.sum((0, 1)) if c_kind == "bias" else gr


class FusedRecurrentFunction(torch.autograd.Function):
    """(fed ports..., c, W, s0, state0s..., quantities...) -> (out, final states...)."""

    @staticmethod
    def forward(
        ctx, kernel: Any, shape: tuple[int, int, int], n_fed: int, n_vars: int, *inputs: Any
    ):  # type: ignore[override]
        info: RecurrentKernelInfo = kernel.info
        fed = list(inputs[:n_fed])
        c, w, s0 = inputs[n_fed : n_fed + 3]
        s0s = list(inputs[n_fed + 3 : n_fed + 3 + n_vars])
        raw_q = list(inputs[n_fed + 3 + n_vars :])
        _, B, H = shape
        quantities = group_quantities(kernel, raw_q, B, H)
        # inference (nothing needs a gradient): the kernel saves nothing for a backward
        store = any(ctx.needs_input_grad)
        out, lasts, r_seq, saved = group_forward(
            kernel, shape, fed, c, w, s0, s0s, quantities, store
        )
        if not store:
            return (out, *lasts)
        spikes = out.to(torch.uint8) if info.out_binary else out
        ctx.kernel, ctx.n_fed, ctx.n_vars = kernel, n_fed, n_vars
        ctx.c_kind = None if c is None else ("bias" if c.dim() == 1 else "seq")
        ctx.q_meta = [(p.shape, p.dtype) for p in raw_q]
        ctx.quantities = quantities
        ctx.shape = shape
        ctx.binary = info.out_binary
        ctx.saved_names = tuple(saved)
        ctx.save_for_backward(*fed, w, s0, spikes, r_seq, *saved.values())
        return (out, *lasts)

    @staticmethod
    def backward(ctx, g_out, *g_lasts):  # type: ignore[override]
        kernel = ctx.kernel
        info: RecurrentKernelInfo = kernel.info
        _, B, H = ctx.shape
        tensors = ctx.saved_tensors
        fed = list(tensors[: ctx.n_fed])
        w, s0, spikes, r_seq = tensors[ctx.n_fed : ctx.n_fed + 4]
        saved = dict(zip(ctx.saved_names, tensors[ctx.n_fed + 4 :]))
        need = ctx.needs_input_grad[4:]  # after kernel, shape, n_fed, n_vars
        need_fed = need[: ctx.n_fed]
        need_c, need_w, need_s0 = need[ctx.n_fed : ctx.n_fed + 3]
        need_v = need[ctx.n_fed + 3 : ctx.n_fed + 3 + ctx.n_vars]
        need_q = need[ctx.n_fed + 3 + ctx.n_vars :]
        grads = group_backward(
            kernel,
            ctx.shape,
            g_out,
            g_lasts,
            fed,
            w,
            r_seq,
            saved,
            ctx.quantities,
            need_s0,
            need_fed,
            need_v,
            need_q,
        )
        gr = grads["gr"]
        g_c = input_grad(gr, ctx.c_kind) if need_c else None
        g_w = None
        if need_w:
            g_w = weight_grad(gr, spikes.to(torch.float32) if ctx.binary else spikes, s0)
        g_q = [
            None if g is None else _reduce_grad(g, (B, H), shape, dtype)
            for g, (shape, dtype) in zip((grads[f"gp_{q}"] for q in info.param_args), ctx.q_meta)
        ]
        return (
            None,
            None,
            None,
            None,
            *(grads[f"g{f}"] for f in info.fed_ports),
            g_c,
            g_w,
            grads["gs0"],
            *(grads[f"g{v}0"] for v in info.state_vars),
            *g_q,
        )


def fused_recurrent(
    kernel: Any,
    fed: Sequence[Tensor],
    c: Tensor | None,
    w: Tensor,
    s0: Tensor | None,
    s0s: Sequence[Tensor | None],
    quantities: Sequence[Tensor],
    shape: tuple[int, int, int],
    widen: bool = False,
) -> tuple[Tensor, list[Tensor]]:
    """Run one fused recurrent group: (output [T, B, H], each final state [B, H]).

    ``fed``: the neuron's ports the recurrent sum does not feed ([T, B, H]); ``c``: the
    bias [H], the precomputed feed-forward input [T, B, H] or None; ``w``: the recurrent
    weight [H, H]; ``s0``: the output at t = -1 (None: zeros); ``s0s``: each state
    variable at t = -1 (None: its initial value); ``quantities``: the form's, in
    ``kernel.info.param_args`` order (differentiable: their gradients flow back);
    ``widen``: 16-bit inputs (autocast) are widened to fp32 (else refused).
    """
    T, B, H = shape
    like = torch.empty((T, B, H), dtype=torch.float32, device=w.device)
    fed = [seq_like(f, f"port {p}", like, widen) for f, p in zip(fed, kernel.info.fed_ports)]
    if c is not None:
        c = c.float().contiguous() if c.dim() == 1 else seq_like(c, "input", like, widen)
    s0 = None if s0 is None else s0.float().contiguous()
    s0s = [None if s is None else s.float().contiguous() for s in s0s]
    if torch.compiler.is_compiling():  # torch.compile / torch.export: the custom ops
        from snncc.backends.cpu import recurrent_ops

        return recurrent_ops.run(kernel, shape, fed, c, w.float(), s0, s0s, quantities)
    outs = FusedRecurrentFunction.apply(
        kernel, shape, len(fed), len(s0s), *fed, c, w.float(), s0, *s0s, *quantities
    )
    return outs[0], list(outs[1:])
