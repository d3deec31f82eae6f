"""One neuron layer through its fused kernels, as a differentiable torch op (any form, any device).

Device-independent: the host side here only allocates torch tensors on the
input's device, fills the kernels' arguments by name and calls
``kernel.call(which, values, device)``, so the same code drives the cpu
backend's compiled C++ (:class:`~snncc.backends.cpu.neuron.NeuronKernel`) and
the cuda backend's NVRTC kernels (:class:`~snncc.backends.cuda.neuron.CudaNeuronKernel`).

Every form runs the same way (:mod:`snncc.backends.kernels.plan` says what
the kernels save and read): inputs are the layer's input ``x``, its other
ports (``rec``), the fused add steps' inputs, each state variable at t = -1
and the form's quantities (derived from node params by torch, so autograd
differentiates the derivation: ``clamp``'s gradient passes inside [0, 1]
exactly as torch's does). Quantity gradients come back from the kernel as
one double sum per neuron and are reduced to the quantity's shape in double
here. torch gives ``None`` (not zeros) to a leaf no path reaches, and so does
this op (:func:`snncc.backends.kernels.connected`), so ``.grad`` stays
``None`` exactly when the reference backend's would.

Recompute (option ``recompute``): the forward saves nothing; a "cut" plan's
backward kernel re-runs the forward itself (fp32 inputs), otherwise one more
forward launch here rebuilds what the backward reads.

Two entry points, one host code: eagerly, :class:`LayerFunction` (a plain
``torch.autograd.Function``, whose dispatch costs a fraction of a ``torch.library``
custom op's called eagerly: figures in :mod:`snncc.backends.cpu.custom_ops`); under
``torch.compile`` / ``torch.export``
the same kernels are the custom ops of :mod:`snncc.backends.cpu.custom_ops`,
which tracing sees as single graph nodes. Both call :func:`layer_forward` and
:func:`layer_backward`. The host cost of a call (its Python, torch's allocations
and the ctypes / CuPy call) is measured by ``benchmarks/host_overhead.py``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.autograd.function import once_differentiable

from snncc.backends.cpu import host_pages
from snncc.backends.cpu.threads import intra_op_threads
from snncc.backends.kernels import NeuronKernelInfo, connected, gy_dtype
from snncc.errors import ShapeError, UnsupportedError
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
    """A compiled forward/backward kernel pair, called by argument name (both targets).

    cpu ``NeuronKernel`` and ``CudaNeuronKernel`` fit; ``values`` holds every
    name of ``info.forward_args`` / ``backward_args`` (tensors on ``device``,
    None for NULL, or numbers).
    """

    spec: NeuronSpec
    info: NeuronKernelInfo

    def call(self, which: str, values: Mapping[str, Any], device: torch.device) -> None: ...


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
            hint = ""
            if t.dtype in (torch.bfloat16, torch.float16):  # what autocast("cpu") hands them
                hint = (
                    "; the cpu backend runs float32 only (call it outside torch.autocast; "
                    "16-bit runs: the cuda backend's precision option or its autocast)"
                )
            raise ShapeError(f"the neuron kernels take float32 {what}, got {t.dtype}{hint}")
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


def seq_like(t: Tensor, what: str, x: Tensor, widen: bool) -> Tensor:
    """A per-step input as x's [T, *shape], contiguous: as it is where it already is (no
    autograd node), else broadcast by torch (so autograd reduces its gradient back)."""
    t = as_f32(t, what, x.device, widen)
    if t.shape == x.shape:
        return t
    if not broadcasts_to(t.shape, x.shape):
        raise ShapeError(
            f"{what} of shape {tuple(t.shape)} does not broadcast to the neuron input's "
            f"shape {tuple(x.shape)}"
        )
    return t.expand(x.shape).contiguous()


def flat_seq(t: Tensor, what: str, x: Tensor, widen: bool) -> Tensor:
    """A per-step input broadcast to x's [T, *shape] and flattened to [T, N] (torch broadcasts,
    so autograd reduces its gradient back to its own shape)."""
    return seq_like(t, what, x, widen).reshape(x.shape[0], math.prod(x.shape[1:]))


def flat_quantity(p: Tensor, step_shape: tuple[int, ...], q: str) -> tuple[Tensor, int]:
    """(contiguous fp32 values, stride): one value (stride 0) or one per neuron (stride 1).

    A 0-dim quantity of another float dtype meets the fp32 activations as torch
    casts a scalar operand (to fp32, then one fp32 operation); a dimensioned
    non-fp32 one would promote the whole step to its dtype, which the fp32
    kernels cannot reproduce.
    """
    if p.dim() > 0 and p.dtype != torch.float32:
        raise UnsupportedError(
            f"neuron kernel quantity {q!r}: a {p.dtype} param with shape {tuple(p.shape)} "
            "would make torch compute the neuron in that dtype; the kernels are float32 "
            "(use a float32 param)"
        )
    if not broadcasts_to(p.shape, step_shape):
        raise ShapeError(
            f"neuron kernel quantity {q!r} of shape {tuple(p.shape)} does not broadcast to "
            f"the neuron's per-step shape {step_shape}"
        )
    p = p.detach()
    if p.numel() == 1:
        return p.float().reshape(1).contiguous(), 0
    return p.expand(step_shape).contiguous().reshape(-1), 1


def _reduce_grad(
    g: Tensor, step_shape: tuple[int, ...], shape: torch.Size, dtype: torch.dtype
) -> Tensor:
    """Per-neuron double sums -> the quantity's shape (summed in double), in its dtype.

    On a CPU the sum runs on one thread: torch splits a long sum over its threads, so its
    rounding would depend on the thread count (in the double, 34 of 50 sums of 262,144
    values differed at 1 and 2 threads), and beside other processes the parallel region
    waits for a thread parked behind them (C1's PLIF time constants, every training step).
    """
    g = g.reshape(step_shape)
    with intra_op_threads(1) if g.device.type == "cpu" else contextlib.nullcontext():
        g = g.sum().reshape(shape) if math.prod(shape) == 1 else g.sum_to_size(shape)
    return g.to(dtype)


class Layout:
    """What the host reads of a kernel's calling convention on every call, worked out once."""

    __slots__ = (
        "add_names",
        "g_last_names",
        "grad_names",
        "gx_dtype",
        "last_names",
        "gy_dtype",
        "keep_adds",
        "n_adds",
        "n_ports",
        "n_vars",
        "out_dtype",
        "p_names",
        "port_names",
        "q_grad_names",
        "reach",
        "s0_grad_names",
        "s0_names",
        "seq_grad_names",
        "seq_names",
        "st_names",
        "wants",
    )

    def __init__(self, info: NeuronKernelInfo) -> None:
        self.port_names = info.ports[1:]
        self.n_ports = len(self.port_names)
        self.n_adds = len(info.add_ports)
        self.n_vars = len(info.state_vars)
        self.add_names = tuple(f"a{j}" for j in range(self.n_adds))
        self.out_dtype = TORCH_DTYPES[info.out_dtype]
        self.gx_dtype = TORCH_DTYPES[info.x_dtype]
        self.gy_dtype = TORCH_DTYPES[gy_dtype(info.out_dtype)]
        #: what a storing forward saves, by argument name
        self.seq_names: tuple[str, ...] = (
            ("h_seq",)
            if info.save == "cut"
            else tuple(f"{v}_seq" for v in info.state_vars)
            if info.save == "state"
            else ()
        )
        # the backward re-runs steps from x (through the prologue); a state plan's recompute
        # re-runs the whole forward kernel, which reads the epilogue's inputs as well
        self.keep_adds = (
            self.n_adds
            if (info.recompute and not info.recompute_in_kernel)
            else info.n_prologue_adds
        )
        #: argument names by role, for the backward's call
        self.seq_grad_names = (
            *(f"g{p}" for p in self.port_names),
            *(f"g{a}" for a in self.add_names),
        )
        self.s0_names = tuple(state_arg_names(v)[0] for v in info.state_vars)
        self.s0_grad_names = tuple(f"g{v}0" for v in info.state_vars)
        self.g_last_names = tuple(f"g{v}_last" for v in info.state_vars)
        self.last_names = tuple(state_arg_names(v)[1] for v in info.state_vars)
        self.q_grad_names = tuple(f"gp_{q}" for q in info.param_args)
        self.p_names = tuple(quantity_arg_names(q)[0] for q in info.param_args)
        self.st_names = tuple(quantity_arg_names(q)[1] for q in info.param_args)
        #: the backward's outputs in order: gx, g<port>, ga<j>, g<var>0, gp_<q>
        self.grad_names = ("gx", *self.seq_grad_names, *self.s0_grad_names, *self.q_grad_names)
        #: (T, output used, used final states) -> connected(...)
        self.reach: dict[tuple, set[str]] = {}
        #: what backward_wants answered, by everything its answer depends on
        self.wants: dict[tuple, dict[str, bool]] = {}


def layout(kernel: KernelPair) -> Layout:
    """The kernel's :class:`Layout` (kept on the kernel object)."""
    lay = getattr(kernel, "_snncc_layout", None)
    if lay is None:
        lay = Layout(kernel.info)
        kernel._snncc_layout = lay  # type: ignore[attr-defined]
    return lay


def reach(kernel: KernelPair, T: Any, out_used: bool, used: tuple[str, ...]) -> set[str]:
    """:func:`snncc.backends.kernels.connected` for this kernel, cached per (T, used outputs).

    ``T`` may be symbolic (a ``torch.SymInt`` while torch.compile traces a backward
    with dynamic shapes): see :func:`_steady_steps`.
    """
    if not isinstance(T, int):
        T = _steady_steps(kernel, T, out_used, used)
    cache = layout(kernel).reach
    key = (T, out_used, used)
    got = cache.get(key)
    if got is None:
        if len(cache) > 256:
            cache.clear()
        got = cache[key] = connected(kernel.spec, T, out_used, used)
    return got


def _steady_steps(kernel: KernelPair, T: Any, out_used: bool, used: tuple[str, ...]) -> int:
    """A concrete step count that reaches what a symbolic ``T`` reaches.

    :func:`connected` walks the steps back until the live state variables repeat; past
    that transient (at most 2**S steps for S variables) its answer is periodic with a
    period of at most 2**S. Where that periodic part is one answer, the smallest step
    count m from which the answer stays the same stands for every ``T >= m`` (a guard
    on the symbol, normally already implied); otherwise ``T`` is made concrete (one
    specialisation of the trace per sequence length).
    """
    cache = layout(kernel).reach
    key = ("steady", out_used, used)
    m = cache.get(key)
    if m is None:
        span = 2 ** len(kernel.info.state_vars) + 1
        ref = connected(kernel.spec, span, out_used, used)
        if all(connected(kernel.spec, t, out_used, used) == ref for t in range(span, 2 * span)):
            m = span
            while m > 1 and connected(kernel.spec, m - 1, out_used, used) == ref:
                m -= 1
        else:
            m = 0  # no steady answer
        cache[key] = m
    if m and T >= m:
        return m
    return int(T)


# ------------------------------------------------------------------ kernels


def quantity_arg_names(q: str) -> tuple[str, str]:
    """The two arguments of quantity ``q`` in every kernel: ``p_<q>`` (the values) and
    ``st_<q>`` (their stride: one value for all neurons, or one per neuron)."""
    return f"p_{q}", f"st_{q}"


def quantity_args(names: Sequence[str], quantities: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """A kernel's quantity arguments by name (:func:`quantity_arg_names`)."""
    out: dict[str, Any] = {}
    for q, (p, stride) in zip(names, quantities):
        p_name, st_name = quantity_arg_names(q)
        out[p_name], out[st_name] = p, stride
    return out


def _put_quantities(
    values: dict[str, Any], lay: Layout, quantities: Sequence[tuple[Any, Any]]
) -> None:
    """:func:`quantity_args` into ``values``, with the names the Layout worked out once."""
    for p_name, st_name, (p, stride) in zip(lay.p_names, lay.st_names, quantities):
        values[p_name], values[st_name] = p, stride


def state_arg_names(v: str) -> tuple[str, str]:
    """A forward kernel's two arguments of state variable ``v``: ``<v>0`` (the given initial
    state, or None) and ``<v>_last`` (where the state after the last step goes)."""
    return f"{v}0", f"{v}_last"


def state_args(names: Sequence[str], firsts: Sequence[Any], lasts: Sequence[Any]) -> dict[str, Any]:
    """A forward kernel's state arguments by name (:func:`state_arg_names`)."""
    out: dict[str, Any] = {}
    for v, first, last in zip(names, firsts, lasts):
        first_name, last_name = state_arg_names(v)
        out[first_name], out[last_name] = first, last
    return out


def layer_forward(
    kernel: KernelPair,
    x: Tensor,
    ports: Sequence[Tensor | None],
    adds: Sequence[Tensor | None],
    s0s: Sequence[Tensor | None],
    quantities: Sequence[tuple[Tensor, int]],
    store: bool,
    out_shape: tuple[int, ...] | None = None,
    state_shape: tuple[int, ...] | None = None,
) -> tuple[Tensor, dict[str, Tensor | None], list[Tensor]]:
    """One forward kernel call on [T, N] tensors: (out, what it saved for the backward by
    argument name, final state [N] per variable).

    ``out_shape`` / ``state_shape``: the shapes the output and the final states are
    allocated in (contiguous, so the kernel sees the same [T, N] / [N] memory): the
    caller gets base tensors, not views (an autograd Function's outputs that are views
    of one another cannot be modified in place).
    """
    lay = layout(kernel)
    T, N = x.shape
    dev = x.device
    out = host_pages.empty(out_shape or (T, N), lay.out_dtype, dev)
    saved: dict[str, Tensor | None] = {
        name: host_pages.empty((T, N), torch.float32, dev) if store else None
        for name in lay.seq_names
    }
    lasts = [
        torch.empty(state_shape or (N,), dtype=torch.float32, device=dev) for _ in range(lay.n_vars)
    ]
    values: dict[str, Any] = {"x": x, "out": out, "T": T, "N": N}
    values.update(saved)
    if lay.n_ports:
        values.update(zip(lay.port_names, ports))
    if lay.n_adds:
        values.update(zip(lay.add_names, adds))
    # the names worked out once per kernel (the Layout, from state_arg_names / quantity_arg_names)
    values.update(zip(lay.s0_names, s0s))
    values.update(zip(lay.last_names, lasts))
    _put_quantities(values, lay, quantities)
    kernel.call("fwd", values, dev)
    return out, saved, lasts


def layer_backward(
    kernel: KernelPair,
    shape: tuple[int, int],
    device: torch.device,
    g_out: Tensor | None,
    g_lasts: Sequence[Tensor | None],
    saved: Mapping[str, Tensor | None],
    x: Tensor | None,
    ports: Sequence[Tensor | None],
    adds: Sequence[Tensor | None],
    s0s: Sequence[Tensor | None],
    quantities: Sequence[tuple[Tensor, int]],
    want: Mapping[str, bool],
    gx_shape: tuple[int, ...] | None = None,
) -> dict[str, Tensor | None]:
    """One backward kernel call on [T, N] = ``shape`` tensors on ``device``; returns the gradients by argument name
    (``gx``, ``g<port>``, ``ga<j>``, ``g<var>0``; ``gp_<q>`` as per-neuron double sums),
    None where ``want`` says the caller does not need one (the kernel gets NULL).

    ``g_out`` (None: zero) is read in place with its strides, in the kernel's output dtype
    (a 16-bit output's gradient arrives in 16 bits); ``saved`` is what
    :func:`layer_forward` saved. ``gx_shape``: the shape gx is allocated in (contiguous,
    the same [T, N] memory), so the caller needs no view of it.
    """
    lay = layout(kernel)
    T, N = shape
    dev = device
    f32 = torch.float32
    gy = g_out
    if gy is not None and gy.dtype != lay.gy_dtype:
        gy = gy.to(lay.gy_dtype)
    grads: dict[str, Tensor | None] = {
        "gx": host_pages.empty(gx_shape or (T, N), lay.gx_dtype, dev)
    }
    # the names come worked out from the Layout: this runs once per layer per step
    for name in lay.seq_grad_names:
        grads[name] = host_pages.empty((T, N), f32, dev) if want.get(name) else None
    for name in lay.s0_grad_names:
        grads[name] = torch.empty((N,), dtype=f32, device=dev) if want.get(name) else None
    for name in lay.q_grad_names:
        grads[name] = torch.empty((N,), dtype=torch.float64, device=dev) if want.get(name) else None
    values: dict[str, Any] = {
        "gy": gy,
        "gy_ts": 0 if gy is None else gy.stride(0),
        "gy_ns": 0 if gy is None else gy.stride(1),
        "x": x,
        "T": T,
        "N": N,
    }
    values.update(saved)
    values.update(grads)
    if lay.n_ports:
        values.update(zip(lay.port_names, ports))
    if lay.n_adds:
        values.update(zip(lay.add_names, adds))
    for s0_name, g_name, s0, g_last in zip(lay.s0_names, lay.g_last_names, s0s, g_lasts):
        values[s0_name] = s0
        if g_last is not None and (g_last.dtype != f32 or not g_last.is_contiguous()):
            g_last = g_last.float().contiguous()
        values[g_name] = g_last
    _put_quantities(values, lay, quantities)
    kernel.call("bwd", values, dev)
    return grads


def saved_for_backward(
    kernel: KernelPair,
    x: Tensor,
    ports: Sequence[Tensor | None],
    adds: Sequence[Tensor | None],
) -> tuple[Tensor | None, list[Tensor | None], list[Tensor | None]]:
    """(x, ports, adds) as the backward reads them (None: not read, not kept alive)."""
    info = kernel.info
    reads_x = info.backward_reads_x
    keep = layout(kernel).keep_adds
    return (
        x if reads_x else None,
        [p if (reads_x or info.save == "state") else None for p in ports],
        [a if reads_x and j < keep else None for j, a in enumerate(adds)],
    )


def backward_wants(
    kernel: KernelPair,
    T: int,
    g_out: Tensor | None,
    g_lasts: Sequence[Tensor | None],
    s0s: Sequence[Tensor | None],
    need: Sequence[bool],
) -> dict[str, bool]:
    """Which gradients the backward kernel writes (the rest get NULL), by argument name.

    ``need``: whether autograd wants a gradient for each of (x, *ports, *adds, *s0s,
    *quantities). A gradient is written only where it is needed *and* some used
    output reaches it (torch gives None, not zeros, where none does: ``want["x"]``
    is the latter alone; the kernel writes gx whatever, a cut plan's recompute parks
    values in it).
    """
    lay = layout(kernel)
    key = (
        T,
        g_out is None,
        *[g is None for g in g_lasts],
        *[s is None for s in s0s],
        *[bool(w) for w in need],  # the custom ops' entries can be lists (one per port)
    )
    want = lay.wants.get(key) if isinstance(T, int) else None
    if want is None:
        used = tuple(v for v, g in zip(kernel.info.state_vars, g_lasts) if g is not None)
        given = tuple(s is not None for s in s0s)
        want = _backward_wants(kernel, T, g_out is not None, used, given, need)
        if isinstance(T, int):
            if len(lay.wants) > 256:
                lay.wants.clear()
            lay.wants[key] = want
    return dict(want)  # callers may change their copy


def _backward_wants(
    kernel: KernelPair,
    T: Any,
    out_used: bool,
    used: tuple[str, ...],
    given: tuple[bool, ...],
    need: Sequence[bool],
) -> dict[str, bool]:
    info = kernel.info
    lay = layout(kernel)
    r = reach(kernel, T, out_used, used)
    n_ports, n_adds, n_vars = lay.n_ports, lay.n_adds, lay.n_vars
    need_ports = need[1 : 1 + n_ports]
    need_adds = need[1 + n_ports : 1 + n_ports + n_adds]
    need_s0 = need[1 + n_ports + n_adds : 1 + n_ports + n_adds + n_vars]
    need_q = need[1 + n_ports + n_adds + n_vars :]
    x_on = "x" in r
    n_pro = info.n_prologue_adds
    want = {"x": x_on}
    for p, w in zip(lay.port_names, need_ports):
        want[f"g{p}"] = bool(w) and p in r
    for j, w in enumerate(need_adds):
        want[f"ga{j}"] = bool(w) and (x_on if j < n_pro else out_used)
    for v, s0, w in zip(info.state_vars, given, need_s0):
        want[f"g{v}0"] = bool(w) and s0 and v in r
    for q, w in zip(info.param_args, need_q):
        want[f"gp_{q}"] = bool(w) and q in r
    return want


def recompute_saved(
    kernel: KernelPair,
    x: Tensor | None,
    ports: Sequence[Tensor | None],
    adds: Sequence[Tensor | None],
    s0s: Sequence[Tensor | None],
    flat: Sequence[tuple[Tensor, int]],
    seqs: dict[str, Tensor | None],
) -> dict[str, Tensor | None]:
    """What the backward reads: the saved sequences, or (recompute done on the host) a
    second forward launch that rebuilds them."""
    info = kernel.info
    if info.recompute and not info.recompute_in_kernel:
        _, seqs, _ = layer_forward(kernel, x, ports, adds, s0s, flat, True)  # type: ignore[arg-type]
    return seqs


class LayerFunction(torch.autograd.Function):
    """Autograd over (x, *ports, *adds, *state0, *quantities) -> (out, *final state).

    Sequences come and go in x's shape [T, *shape] and states in the per-step shape:
    the [T, N] views the kernels take are made in here, so autograd records no view
    nodes around the layer (each costs host time in the forward and the backward).
    """

    @staticmethod
    def forward(ctx, kernel: KernelPair, step_shape: tuple[int, ...], x, *rest):  # type: ignore[override]
        info = kernel.info
        lay = layout(kernel)
        n_ports, n_adds, n_vars = lay.n_ports, lay.n_adds, lay.n_vars
        T = x.shape[0]
        N = x.numel() // T if T else 0
        ports = [p.view(T, N) for p in rest[:n_ports]]
        adds = [a.view(T, N) for a in rest[n_ports : n_ports + n_adds]]
        s0s = [
            None if s is None else s.view(N)
            for s in rest[n_ports + n_adds : n_ports + n_adds + n_vars]
        ]
        qs = rest[n_ports + n_adds + n_vars :]
        ctx.set_materialize_grads(False)  # an output without a gradient arrives as None
        flat = [flat_quantity(p, step_shape, q) for q, p in zip(info.param_args, qs)]
        # grad mode is off inside Function.forward: ask the inputs instead
        training = x.requires_grad or any(t is not None and t.requires_grad for t in rest)
        store = training and info.save != "none" and not info.recompute
        shape = x.shape
        x = x.view(T, N)
        out, saved, lasts = layer_forward(
            kernel, x, ports, adds, s0s, flat, store, shape, tuple(step_shape)
        )
        # one attribute: the backward reads it once (each ctx attribute costs a lookup)
        ctx.meta = (
            kernel,
            step_shape,
            shape,
            (T, N),
            x.device,
            [stride for _, stride in flat],
            [(p.shape, p.dtype) for p in qs],
            list(saved),
        )
        kx, kports, kadds = saved_for_backward(kernel, x, ports, adds)
        ctx.save_for_backward(kx, *kports, *kadds, *s0s, *(p for p, _ in flat), *saved.values())
        if info.out_dtype == "uint8":
            ctx.mark_non_differentiable(out)
        return (out, *lasts)

    @staticmethod
    def backward(ctx, g_out, *g_lasts):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: refuse a second derivative later
            return _backward_once(ctx, g_out, *g_lasts)
        return _backward(ctx, g_out, *g_lasts)


def _backward(ctx: Any, g_out: Tensor | None, *g_lasts: Tensor | None) -> tuple:
    """:meth:`LayerFunction.backward`. Not wrapped in ``once_differentiable`` on the usual
    path: grad mode is already off in a backward without ``create_graph``, and the
    wrapper's ``no_grad`` costs about 2 us a layer (benchmarks/host_overhead.py: this
    runs once per layer per training step, so its Python is kept lean)."""
    kernel, step_shape, shape, tn, device, strides, q_meta, saved_names = ctx.meta
    lay = layout(kernel)
    n_ports, n_adds, n_vars = lay.n_ports, lay.n_adds, lay.n_vars
    n_q = len(strides)
    saved = ctx.saved_tensors
    x = saved[0]
    pos = 1
    ports = saved[pos : pos + n_ports]
    pos += n_ports
    adds = saved[pos : pos + n_adds]
    pos += n_adds
    s0s = saved[pos : pos + n_vars]
    pos += n_vars
    flat = list(zip(saved[pos : pos + n_q], strides)) if n_q else []
    pos += n_q
    seqs = dict(zip(saved_names, saved[pos:]))
    need = ctx.needs_input_grad[2:]  # (kernel, step_shape, x, *ports, *adds, *s0s, *qs)
    T, N = tn
    if g_out is not None:
        g_out = g_out.reshape(T, N)  # a view wherever the strides allow (y.sum(): (0, 0))
    g_lasts = [None if g is None else g.reshape(N) for g in g_lasts]
    want = backward_wants(kernel, T, g_out, g_lasts, s0s, need)
    seqs = recompute_saved(kernel, x, ports, adds, s0s, flat, seqs)
    grads = layer_backward(
        kernel, tn, device, g_out, g_lasts, seqs, x, ports, adds, s0s, flat, want, shape
    )
    out: list[Tensor | None] = [None, None, grads["gx"] if need[0] and want["x"] else None]
    for name in lay.seq_grad_names:
        g = grads[name]
        out.append(None if g is None else g.view(shape))
    for name in lay.s0_grad_names:
        g = grads[name]
        out.append(None if g is None else g.view(step_shape))
    for name, meta in zip(lay.q_grad_names, q_meta):
        g = grads[name]
        out.append(None if g is None else _reduce_grad(g, step_shape, *meta))
    return tuple(out)


_backward_once = once_differentiable(_backward)


def run_layer(
    kernel: KernelPair,
    x: Tensor,
    ports: Sequence[Tensor] = (),
    adds: Sequence[Tensor] = (),
    state: Mapping[str, Tensor] | None = None,
    quantities: Mapping[str, Tensor] | None = None,
    widen: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One neuron layer over a sequence: x [T, *shape] -> (out [T, *shape], final state).

    ``ports``: the form's input ports after x (``rec``), [T, *shape] each;
    ``adds``: the add steps' inputs in the kernel's a<j> order (broadcast to
    x's shape by torch, so autograd reduces their gradients back); ``state``:
    state variables at t = -1 (None, or a missing variable: its initial value);
    ``quantities``: the form's derived quantities (:func:`derive_quantities`).
    ``widen``: non-fp32 floating inputs are cast to fp32 (cuda's bf16 autocast)
    instead of refused. Without any input that requires grad the forward
    kernel runs directly (no autograd node, no saved tensors); under
    ``torch.compile`` / ``torch.export`` the kernels run as custom ops
    (:mod:`snncc.backends.cpu.custom_ops`).
    """
    info = kernel.info
    lay = layout(kernel)
    if quantities is None:
        quantities = {}
    if len(adds) != lay.n_adds:
        raise ShapeError(f"neuron kernel expects {lay.n_adds} add inputs, got {len(adds)}")
    if len(ports) != lay.n_ports:
        raise ShapeError(
            f"neuron charge form {kernel.spec.charge!r} takes the input ports "
            f"{list(info.ports)}; got {len(ports) + 1} inputs"
        )
    n_q = len(info.param_args)
    if len(quantities) != n_q or (n_q and any(q not in quantities for q in info.param_args)):
        raise ShapeError(
            f"neuron kernel expects the quantities {list(info.param_args)}, got {sorted(quantities)}"
        )
    device = x.device
    x, step_shape, N = time_major(x, widen, TORCH_DTYPES[info.x_dtype])
    T = x.shape[0]
    seq_ports = [
        seq_like(p, f"input port {name!r}", x, widen) for name, p in zip(lay.port_names, ports)
    ]
    seq_adds = [seq_like(a, f"fused add input {j}", x, widen) for j, a in enumerate(adds)]
    s0s: list[Tensor | None] = []
    for var in info.state_vars:
        s = None if state is None else state.get(var)
        if s is None:
            s0s.append(None)
            continue
        s = as_f32(s, f"state {var!r}", device, widen)
        if not broadcasts_to(s.shape, step_shape):
            raise ShapeError(
                f"state {var!r} of shape {tuple(s.shape)} does not match the neuron's "
                f"per-step shape {step_shape}"
            )
        s0s.append(s if s.shape == step_shape else s.expand(step_shape).contiguous())
    qs = [quantities[q] for q in info.param_args]
    if torch.compiler.is_compiling():
        from snncc.backends.cpu import custom_ops

        flat_s0 = [None if s is None else s.reshape(N) for s in s0s]
        out, lasts = custom_ops.run(
            kernel,
            step_shape,
            x.reshape(T, N),
            [p.reshape(T, N) for p in seq_ports],
            [a.reshape(T, N) for a in seq_adds],
            flat_s0,
            qs,
        )
        out = out.reshape(x.shape)
        lasts = [last.reshape(step_shape) for last in lasts]
    elif torch.is_grad_enabled() and (
        x.requires_grad  # most calls in training: the rest need not be looked at
        or any(t is not None and t.requires_grad for t in (*seq_ports, *seq_adds, *s0s, *qs))
    ):
        outs = LayerFunction.apply(kernel, step_shape, x, *seq_ports, *seq_adds, *s0s, *qs)
        out, lasts = outs[0], outs[1:]
    else:
        flat = [flat_quantity(p, step_shape, q) for q, p in zip(info.param_args, qs)]
        out, _, lasts = layer_forward(
            kernel,
            x.view(T, N),
            [p.view(T, N) for p in seq_ports],
            [a.view(T, N) for a in seq_adds],
            [None if s is None else s.view(N) for s in s0s],
            flat,
            False,
            x.shape,
            tuple(step_shape),
        )
    return out, dict(zip(info.state_vars, lasts))


# ------------------------------------------------- the SpikingJelly-style call
def run_neuron(
    kernel: KernelPair,
    x: Tensor,
    adds: Sequence[Tensor] = (),
    v0: Tensor | None = None,
    k: Tensor | None = None,
    widen: bool = False,
) -> tuple[Tensor, Tensor]:
    """A one-state layer (membrane ``v``): x [T, *shape] -> (out, v_last [*shape]).

    ``v0``: the membrane before step 0 (None: the form's v_init); ``k``: PLIF's
    decay ``sigmoid(w)`` (a tensor that may require grad) for the forms that
    have that quantity.
    """
    info = kernel.info
    if info.learns_k and k is None:
        raise ShapeError("a PLIF neuron kernel needs k = sigmoid(w)")
    quantities = {"k": k} if info.learns_k else {}
    if v0 is not None:
        v0 = as_f32(v0, "initial membrane", x.device, widen)
        if tuple(v0.shape) != tuple(x.shape[1:]):
            v0 = v0.expand(x.shape[1:])
    out, state = run_layer(
        kernel, x, (), adds, None if v0 is None else {"v": v0}, quantities, widen
    )
    return out, state["v"]
