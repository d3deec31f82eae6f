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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.autograd.function import once_differentiable

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
    """Per-neuron double sums -> the quantity's shape (summed in double), in its dtype."""
    g = g.reshape(step_shape)
    g = g.sum().reshape(shape) if math.prod(shape) == 1 else g.sum_to_size(shape)
    return g.to(dtype)


# ------------------------------------------------------------------ kernels
def layer_forward(
    kernel: KernelPair,
    x: Tensor,
    ports: Sequence[Tensor | None],
    adds: Sequence[Tensor | None],
    s0s: Sequence[Tensor | None],
    quantities: Sequence[tuple[Tensor, int]],
    store: bool,
) -> tuple[Tensor, dict[str, Tensor | None], list[Tensor]]:
    """One forward kernel call on [T, N] tensors: (out, what it saved for the backward by
    argument name, final state [N] per variable)."""
    info = kernel.info
    T, N = x.shape
    dev = x.device
    f32 = {"dtype": torch.float32, "device": dev}
    out = torch.empty((T, N), dtype=TORCH_DTYPES[info.out_dtype], device=dev)
    saved: dict[str, Tensor | None] = {}
    if info.save == "cut":
        saved["h_seq"] = torch.empty((T, N), **f32) if store else None
    elif info.save == "state":
        saved.update(
            {f"{v}_seq": torch.empty((T, N), **f32) if store else None for v in info.state_vars}
        )
    lasts = [torch.empty((N,), **f32) for _ in info.state_vars]
    values: dict[str, Any] = {"x": x, "out": out, "T": T, "N": N, **saved}
    values.update({p: t for p, t in zip(info.ports[1:], ports)})
    values.update({f"a{j}": a for j, a in enumerate(adds)})
    for var, s0, last in zip(info.state_vars, s0s, lasts):
        values.update({f"{var}0": s0, f"{var}_last": last})
    for q, (p, stride) in zip(info.param_args, quantities):
        values.update({f"p_{q}": p, f"st_{q}": stride})
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
) -> dict[str, Tensor | None]:
    """One backward kernel call on [T, N] = ``shape`` tensors on ``device``; returns the gradients by argument name
    (``gx``, ``g<port>``, ``ga<j>``, ``g<var>0``; ``gp_<q>`` as per-neuron double sums),
    None where ``want`` says the caller does not need one (the kernel gets NULL).

    ``g_out`` (None: zero) is read in place with its strides, in the kernel's output dtype
    (a 16-bit output's gradient arrives in 16 bits); ``saved`` is what
    :func:`layer_forward` saved.
    """
    info = kernel.info
    T, N = shape
    dev = device
    f32 = {"dtype": torch.float32, "device": dev}
    gy = None if g_out is None else g_out.to(TORCH_DTYPES[gy_dtype(info.out_dtype)])
    grads: dict[str, Tensor | None] = {
        "gx": torch.empty((T, N), dtype=TORCH_DTYPES[info.x_dtype], device=dev)
    }
    for p in info.ports[1:]:
        grads[f"g{p}"] = torch.empty((T, N), **f32) if want.get(f"g{p}") else None
    for j in range(len(info.add_ports)):
        grads[f"ga{j}"] = torch.empty((T, N), **f32) if want.get(f"ga{j}") else None
    for v in info.state_vars:
        grads[f"g{v}0"] = torch.empty((N,), **f32) if want.get(f"g{v}0") else None
    for q in info.param_args:
        wanted = want.get(f"gp_{q}")
        grads[f"gp_{q}"] = torch.empty((N,), dtype=torch.float64, device=dev) if wanted else None
    values: dict[str, Any] = {
        "gy": gy,
        "gy_ts": 0 if gy is None else gy.stride(0),
        "gy_ns": 0 if gy is None else gy.stride(1),
        "x": x,
        "T": T,
        "N": N,
        **saved,
        **grads,
    }
    values.update({p: t for p, t in zip(info.ports[1:], ports)})
    values.update({f"a{j}": a for j, a in enumerate(adds)})
    for var, s0, g_last in zip(info.state_vars, s0s, g_lasts):
        g_last = None if g_last is None else g_last.float().contiguous()
        values.update({f"{var}0": s0, f"g{var}_last": g_last})
    for q, (p, stride) in zip(info.param_args, quantities):
        values.update({f"p_{q}": p, f"st_{q}": stride})
    kernel.call("bwd", values, dev)
    return grads


class LayerFunction(torch.autograd.Function):
    """Autograd over (x, *ports, *adds, *state0, *quantities) -> (out, *final state)."""

    @staticmethod
    def forward(ctx, kernel: KernelPair, step_shape: tuple[int, ...], x, *rest):  # type: ignore[override]
        info = kernel.info
        n_ports, n_adds, n_vars = len(info.ports) - 1, len(info.add_ports), len(info.state_vars)
        ports = rest[:n_ports]
        adds = rest[n_ports : n_ports + n_adds]
        s0s = rest[n_ports + n_adds : n_ports + n_adds + n_vars]
        qs = rest[n_ports + n_adds + n_vars :]
        ctx.set_materialize_grads(False)  # an output without a gradient arrives as None
        flat = [flat_quantity(p, step_shape, q) for q, p in zip(info.param_args, qs)]
        # grad mode is off inside Function.forward: ask the inputs instead
        training = any(t is not None and t.requires_grad for t in (x, *rest))
        store = training and info.save != "none" and not info.recompute
        out, saved, lasts = layer_forward(kernel, x, ports, adds, s0s, flat, store)
        ctx.kernel = kernel
        ctx.step_shape = step_shape
        ctx.tn = tuple(x.shape)
        ctx.device = x.device
        ctx.strides = [stride for _, stride in flat]
        ctx.q_meta = [(p.shape, p.dtype) for p in qs]
        ctx.saved_names = list(saved)
        reads_x = info.backward_reads_x
        # the backward re-runs steps from x (through the prologue); a state plan's recompute
        # re-runs the whole forward kernel, which reads the epilogue's inputs as well
        keep = n_adds if (info.recompute and not info.recompute_in_kernel) else info.n_prologue_adds
        ctx.save_for_backward(
            x if reads_x else None,
            *(p if (reads_x or info.save == "state") else None for p in ports),
            *(a if reads_x and j < keep else None for j, a in enumerate(adds)),
            *s0s,
            *(p for p, _ in flat),
            *saved.values(),
        )
        if info.out_dtype == "uint8":
            ctx.mark_non_differentiable(out)
        return (out, *lasts)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, *g_lasts):  # type: ignore[override]
        kernel: KernelPair = ctx.kernel
        info = kernel.info
        n_ports, n_adds, n_vars = len(info.ports) - 1, len(info.add_ports), len(info.state_vars)
        n_q = len(info.param_args)
        saved = list(ctx.saved_tensors)
        x = saved[0]
        pos = 1
        ports = saved[pos : pos + n_ports]
        pos += n_ports
        adds = saved[pos : pos + n_adds]
        pos += n_adds
        s0s = saved[pos : pos + n_vars]
        pos += n_vars
        flat = list(zip(saved[pos : pos + n_q], ctx.strides))
        pos += n_q
        seqs = dict(zip(ctx.saved_names, saved[pos:]))
        T = ctx.tn[0]
        used = [v for v, g in zip(info.state_vars, g_lasts) if g is not None]
        reach = connected(kernel.spec, T, g_out is not None, used)
        need = ctx.needs_input_grad  # (kernel, step_shape, x, *ports, *adds, *s0s, *qs)
        need_ports = need[3 : 3 + n_ports]
        need_adds = need[3 + n_ports : 3 + n_ports + n_adds]
        need_s0 = need[3 + n_ports + n_adds : 3 + n_ports + n_adds + n_vars]
        need_q = need[3 + n_ports + n_adds + n_vars :]
        if info.recompute and not info.recompute_in_kernel:  # rebuild what the forward skipped
            _, seqs, _ = layer_forward(kernel, x, ports, adds, s0s, flat, True)
        x_on = "x" in reach
        n_pro = info.n_prologue_adds
        want = {
            "x": True,  # the kernel writes gx whatever (a cut plan's recompute parks values in it)
            **{f"g{p}": w and p in reach for p, w in zip(info.ports[1:], need_ports)},
            **{
                f"ga{j}": w and (x_on if j < n_pro else g_out is not None)
                for j, w in enumerate(need_adds)
            },
            **{
                f"g{v}0": w and s0 is not None and v in reach
                for v, s0, w in zip(info.state_vars, s0s, need_s0)
            },
            **{f"gp_{q}": w and q in reach for q, w in zip(info.param_args, need_q)},
        }
        grads = layer_backward(
            kernel, ctx.tn, ctx.device, g_out, g_lasts, seqs, x, ports, adds, s0s, flat, want
        )
        gx = grads["gx"]
        gports = [grads[f"g{p}"] for p in info.ports[1:]]
        gadds = [grads[f"ga{j}"] for j in range(n_adds)]
        gs0 = [grads[f"g{v}0"] for v in info.state_vars]
        gps = [grads[f"gp_{q}"] for q in info.param_args]
        g_qs = [
            None if gp is None else _reduce_grad(gp, ctx.step_shape, *meta)
            for gp, meta in zip(gps, ctx.q_meta)
        ]
        return (None, None, gx if need[2] and x_on else None, *gports, *gadds, *gs0, *g_qs)


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
    kernel runs directly (no autograd node, no saved tensors).
    """
    info = kernel.info
    quantities = dict(quantities or {})
    if len(adds) != len(info.add_ports):
        raise ShapeError(f"neuron kernel expects {len(info.add_ports)} add inputs, got {len(adds)}")
    if len(ports) != len(info.ports) - 1:
        raise ShapeError(
            f"neuron charge form {kernel.spec.charge!r} takes the input ports "
            f"{list(info.ports)}; got {len(ports) + 1} inputs"
        )
    if sorted(quantities) != sorted(info.param_args):
        raise ShapeError(
            f"neuron kernel expects the quantities {list(info.param_args)}, got {sorted(quantities)}"
        )
    device = x.device
    x, step_shape, N = time_major(x, widen, TORCH_DTYPES[info.x_dtype])
    T = x.shape[0]
    flat_ports = [
        flat_seq(p, f"input port {name!r}", x, widen) for name, p in zip(info.ports[1:], ports)
    ]
    flat_adds = [flat_seq(a, f"fused add input {j}", x, widen) for j, a in enumerate(adds)]
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
        s0s.append(s.expand(step_shape).contiguous().reshape(N))
    qs = [quantities[q] for q in info.param_args]
    x_flat = x.reshape(T, N)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x_flat, *flat_ports, *flat_adds, *s0s, *qs)
    )
    if grad:
        outs = LayerFunction.apply(kernel, step_shape, x_flat, *flat_ports, *flat_adds, *s0s, *qs)
        out, lasts = outs[0], outs[1:]
    else:
        flat = [flat_quantity(p, step_shape, q) for q, p in zip(info.param_args, qs)]
        out, _, lasts = layer_forward(kernel, x_flat, flat_ports, flat_adds, s0s, flat, False)
    new_state = {var: last.reshape(step_shape) for var, last in zip(info.state_vars, lasts)}
    return out.reshape(x.shape), new_state


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
