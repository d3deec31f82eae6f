"""Fused recurrent groups as torch custom ops, so ``torch.compile`` and ``torch.export`` trace them.

Why: :class:`~snncc.backends.cpu.recurrent.FusedRecurrentFunction` calls its kernel
through ctypes (cpu) or CuPy (cuda), which torch's tracers cannot see into. Without
these ops a fused group broke the compiled graph (``fullgraph=True`` refused the
model) and ``torch.export`` failed on it; with them the group is one node per
direction, for any T and batch size. The layer kernels' ops
(:mod:`snncc.backends.cpu.custom_ops`) are the model: a string key names the kernel
(the JSON of what it is rendered from: target, neuron spec, port), so a program
loaded in another process builds the kernel into the user's own cache from data,
never code; eager calls stay on the Function (a custom op's dispatch costs more).

The ops and the Function call the same host functions
(:func:`~snncc.backends.cpu.recurrent.group_forward`, ``group_backward``,
``weight_grad``), so a traced group gives the eager group's bits; the recurrent
weight's and the bias's gradients are torch ops around the backward op, which
inductor may sum in another order (as it may a layer's bias gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from snncc.backends.cpu.autograd import _reduce_grad
from snncc.backends.cpu.custom_ops import _spread, lookup, pack, register, unpack
from snncc.backends.cpu.recurrent import (
    group_backward,
    group_forward,
    group_quantities,
    input_grad,
    weight_grad,
)
from snncc.errors import UnsupportedError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor


def recurrent_key(kernel: Any) -> str:
    """The op key of a fused group's kernel (registered so ops with it run this object)."""
    key = getattr(kernel, "_snncc_op_key", None)
    if key is None:
        key = register(
            kernel,
            {
                "kind": "recurrent",
                "target": kernel.target,
                "spec": kernel.spec.to_dict(),
                "port": int(kernel.info.port),
            },
        )
    return key


def recurrent_kernel_of(key: str) -> Any:
    """The fused group's kernel an op key names: this process's object, or one built from
    the key (an exported program loaded in a fresh process)."""
    return lookup(key, _build, "recurrent")


def _build(body: dict[str, Any]) -> Any:
    if body["kind"] != "recurrent":
        raise UnsupportedError(f"snncc recurrent op: a key of kind {body['kind']!r}")
    spec, port, target = NeuronSpec.from_dict(body["spec"]), int(body["port"]), body["target"]
    if target == "cpu":
        from snncc.backends.cpu.recurrent import RecurrentKernel

        return RecurrentKernel(spec, port)
    if target == "cuda":
        from snncc.backends.cuda.recurrent import CudaRecurrentKernel

        return CudaRecurrentKernel(spec, port)
    raise UnsupportedError(f"snncc recurrent op: unknown kernel target {target!r}")


# ------------------------------------------------------------------ forward
def _forward_inputs(tensors, counts):
    """(w, fed, initial states with None where not given, quantities) of a packed forward
    call: tensors [w, *fed, *qs, *given states], counts [1, n_fed, n_qs, then 1 or 0 per
    state variable: given or not]; packed so that no list is empty (see
    :mod:`snncc.backends.cpu.custom_ops`). ``c`` and ``s0``, which may be None, are
    arguments of their own: a list holding None would be opaque to autograd."""
    given = [bool(g) for g in counts[3:]]
    (w,), fed, qs, s0_list = unpack(tensors, [*counts[:3], sum(given)])
    return w, fed, _spread(s0_list, given), qs


@torch.library.custom_op("snncc::recurrent_forward", mutates_args=())
def recurrent_forward(
    key: str,
    c: Tensor | None,
    s0: Tensor | None,
    tensors: list[Tensor],
    counts: list[int],
    T: int,
    B: int,
    H: int,
    store: bool,
) -> list[Tensor]:
    """One fused forward call: [out, *final states, and with ``store``: r_seq, *saved
    sequences]. ``tensors``/``counts``: see :func:`_forward_inputs`."""
    kernel = recurrent_kernel_of(key)
    w, fed, s0s, qs = _forward_inputs(tensors, counts)
    out, lasts, r_seq, saved = group_forward(
        kernel, (T, B, H), fed, c, w, s0, s0s, group_quantities(kernel, qs, B, H), store
    )
    return [out, *lasts, *([r_seq, *saved.values()] if store else [])]


@recurrent_forward.register_fake
def _recurrent_forward_fake(key, c, s0, tensors, counts, T, B, H, store):
    info = recurrent_kernel_of(key).info
    w = tensors[0]
    seqs = 1 + len(info.seq_names) if store else 0
    return [
        w.new_empty((T, B, H), dtype=torch.float32),
        *(w.new_empty((B, H), dtype=torch.float32) for _ in info.state_vars),
        *(w.new_empty((T, B, H), dtype=torch.float32) for _ in range(seqs)),
    ]


# ------------------------------------------------------------------ backward
@torch.library.custom_op("snncc::recurrent_backward", mutates_args=())
def recurrent_backward(
    key: str,
    tensors: list[Tensor | None],
    counts: list[int],
    T: int,
    B: int,
    H: int,
    want: list[bool],
) -> list[Tensor]:
    """One fused backward call: [gr, gs0, *g<port>, *g<var>0, *gp_<q>]; ``want`` (one flag
    per entry after gr) says which the caller needs, the others are empty tensors.
    ``tensors``: [g_out, w, r_seq, *g_lasts, *fed, *seqs, *qs], ``counts`` their groups'
    lengths."""
    kernel = recurrent_kernel_of(key)
    info = kernel.info
    (g_out,), (w,), (r_seq,), g_lasts, fed, seqs, qs = unpack(tensors, counts)
    n_fed, n_vars = len(info.fed_ports), len(info.state_vars)
    grads = group_backward(
        kernel,
        (T, B, H),
        g_out,
        g_lasts,
        fed,
        w,
        r_seq,
        dict(zip(info.seq_names, seqs)),
        group_quantities(kernel, qs, B, H),
        want[0],
        want[1 : 1 + n_fed],
        want[1 + n_fed : 1 + n_fed + n_vars],
        want[1 + n_fed + n_vars :],
    )
    # an empty tensor of its own for each gradient not asked for (outputs may not alias)
    return [
        torch.empty((0,), device=w.device) if g is None else g
        for g in (grads[n] for n in _grad_names(info))
    ]


def _grad_names(info: Any) -> list[str]:
    """The backward op's outputs in order (after gr, one per ``want`` flag)."""
    return [
        "gr",
        "gs0",
        *(f"g{f}" for f in info.fed_ports),
        *(f"g{v}0" for v in info.state_vars),
        *(f"gp_{q}" for q in info.param_args),
    ]


@recurrent_backward.register_fake
def _recurrent_backward_fake(key, tensors, counts, T, B, H, want):
    info = recurrent_kernel_of(key).info
    w = tensors[1]
    n_fed, n_vars = len(info.fed_ports), len(info.state_vars)
    out = [w.new_empty((T, B, H), dtype=torch.float32)]
    for i, wanted in enumerate(want):
        if not wanted:
            out.append(w.new_empty((0,), dtype=torch.float32))
        elif 1 <= i <= n_fed:
            out.append(w.new_empty((T, B, H), dtype=torch.float32))
        elif i > n_fed + n_vars:
            out.append(w.new_empty((B * H,), dtype=torch.float64))
        else:
            out.append(w.new_empty((B, H), dtype=torch.float32))
    return out


# ------------------------------------------------------------------ autograd
def _setup_context(ctx, inputs, output) -> None:
    key, c, s0, tensors, counts, T, B, H, store = inputs
    w, fed, s0s, qs = _forward_inputs(tensors, counts)
    info = recurrent_kernel_of(key).info
    ctx.set_materialize_grads(False)
    ctx.key = key
    ctx.shape = (T, B, H)
    ctx.counts = list(counts)
    ctx.n_fed = len(fed)
    ctx.c_kind = None if c is None else ("bias" if c.dim() == 1 else "seq")
    ctx.s0_given = [s is not None for s in s0s]
    ctx.has_s0 = s0 is not None
    ctx.q_meta = [(p.shape, p.dtype) for p in qs]
    n_vars = len(info.state_vars)
    out, rest = output[0], output[1 + n_vars :]  # rest: r_seq, *seqs (store) or nothing
    ctx.n_rest = len(rest)
    ctx.save_for_backward(*fed, w, *([s0] if s0 is not None else []), out, *rest, *qs)


def _backward(ctx, grads):
    info = recurrent_kernel_of(ctx.key).info
    if ctx.n_rest == 0:
        raise UnsupportedError(
            "snncc recurrent op: the forward ran without saving for a backward (no input "
            "needed a gradient when it ran)"
        )
    T, B, H = ctx.shape
    saved = list(ctx.saved_tensors)
    fed = [saved.pop(0) for _ in range(ctx.n_fed)]
    w = saved.pop(0)
    s0 = saved.pop(0) if ctx.has_s0 else None
    out = saved.pop(0)
    r_seq, seqs = saved[0], saved[1 : ctx.n_rest]
    qs = saved[ctx.n_rest :]
    n_vars = len(info.state_vars)
    g_out, g_lasts = grads[0], list(grads[1 : 1 + n_vars])
    # one flag per packed input (custom ops unflatten needs_input_grad to the inputs' shape)
    _, need_c, need_s0, need_list = ctx.needs_input_grad[:4]
    (need_w,), need_fed, need_qs, need_given = unpack(
        need_list, [*ctx.counts[:3], sum(ctx.s0_given)]
    )
    need_vars = [bool(n) for n in _spread(need_given, ctx.s0_given)]
    want = [need_s0 and ctx.has_s0, *need_fed, *need_vars, *need_qs]
    packed, counts = pack([g_out], [w], [r_seq], g_lasts, fed, seqs, qs)
    outs = torch.ops.snncc.recurrent_backward(ctx.key, packed, counts, T, B, H, want)
    by = dict(zip(_grad_names(info), outs))
    gr = by["gr"]
    g_c = input_grad(gr, ctx.c_kind) if need_c else None
    g_w = weight_grad(gr, out, s0) if need_w else None
    g_fed = [by[f"g{f}"] if n else None for f, n in zip(info.fed_ports, need_fed)]
    g_qs = [
        _reduce_grad(by[f"gp_{q}"], (B, H), *meta) if n else None
        for q, meta, n in zip(info.param_args, ctx.q_meta, need_qs)
    ]
    g_s0s = [
        by[f"g{v}0"] if n else None
        for v, n, given in zip(info.state_vars, need_vars, ctx.s0_given)
        if given
    ]
    g_s0 = by["gs0"] if want[0] else None
    # c, s0, then the packed list in its order: w, fed, quantities, states
    return None, g_c, g_s0, [g_w, *g_fed, *g_qs, *g_s0s], None, None, None, None, None


recurrent_forward.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ entry
def run(
    kernel: Any,
    shape: tuple[int, int, int],
    fed: Sequence[Tensor],
    c: Tensor | None,
    w: Tensor,
    s0: Tensor | None,
    s0s: Sequence[Tensor | None],
    qs: Sequence[Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """One fused group through the custom ops: (out [T, B, H], final states [B, H])."""
    T, B, H = shape
    store = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (*fed, c, w, s0, *s0s, *qs)
    )
    tensors, counts = pack([w], fed, qs, [s for s in s0s if s is not None])
    counts = [*counts[:3], *(int(s is not None) for s in s0s)]
    outs = torch.ops.snncc.recurrent_forward(
        recurrent_key(kernel), c, s0, tensors, counts, T, B, H, store
    )
    n_vars = len(kernel.info.state_vars)
    return outs[0], list(outs[1 : 1 + n_vars])
