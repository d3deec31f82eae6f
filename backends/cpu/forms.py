"""snnTorch / Norse neuron layers through the form kernels, as a differentiable torch op.

The ``form_*`` templates (see :mod:`snncc.backends.kernels`) run one neuron
layer of an snnTorch or Norse form over all T steps: every state variable of
the form (``v``, and ``i`` or ``s``), its recurrent input ``rec``, its fused
prologue/epilogue steps and its parameters. This module is their host side,
written against a two-method kernel protocol (``info``, ``spec`` and
``call(which, values, device)``) so the same code drives the cpu backend's
compiled C++ and the cuda backend's CUDA kernels:

- :func:`derive_params`: each kernel quantity from the node's params, with
  torch, exactly as :mod:`snncc.neurons` derives it (``beta.clamp(0, 1)``,
  ``dt * tau_mem_inv``, ...); autograd differentiates the derivation (so
  ``clamp``'s gradient passes inside [0, 1] exactly as torch's does), the
  kernels the rest;
- :class:`FormFunction`: autograd over the forward/backward kernels. Param
  gradients come back from the kernel as one double sum per neuron and are
  reduced to the param's shape in double here;
- :func:`connected`: which inputs autograd would reach at all. torch gives
  ``None`` (not zeros) to a leaf no path reaches (e.g. snnTorch's threshold
  when neither spikes nor a reset are used, Norse's ``tau_syn_inv`` with one
  step), and so does this op, so ``.grad`` stays ``None`` exactly when the
  reference backend's would.

Recompute (option ``recompute``): the forward saves no state sequence; the
backward re-runs the forward kernel to rebuild it first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from snncc.backends.cpu.autograd import (
    TORCH_DTYPES,
    KernelPair,
    as_f32,
    broadcasts_to,
    flat_seq,
    time_major,
)
from snncc.backends.kernels import NeuronKernelInfo, gy_dtype
from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor


#: a compiled form-family kernel pair: the protocol both kernel families share
FormKernel = KernelPair


# ------------------------------------------------------------------- params
def check_node_params(spec: NeuronSpec, node_roles: Sequence[str], where: str) -> None:
    """The spec's param roles must be exactly the node's (for the form's roles).

    The kernels take a quantity as an argument when the spec lists its role and
    as a literal otherwise; the reference reads whatever param the node has.
    A disagreement would run different values, so it is refused.
    """
    form = spec.form
    roles = set(form.roles) if form is not None else set()
    have = set(node_roles) & roles
    listed = set(spec.roles) & roles
    if have != listed:
        raise UnsupportedError(
            f"{where}: the node's params {sorted(have)} and its spec's param roles "
            f"{sorted(listed)} disagree; the fused kernel needs them to match"
        )


def derive_params(spec: NeuronSpec, info: NeuronKernelInfo, params: Mapping[str, Tensor]) -> dict:
    """The kernel's argument quantities, derived with torch as ``snncc.neurons`` does."""
    out: dict[str, Tensor] = {}
    for q, role in zip(info.param_args, info.param_roles):
        p = params.get(role)
        if p is None:
            raise UnsupportedError(
                f"neuron charge form {spec.charge!r} lists the param role {role!r} but the "
                "node has no such param"
            )
        if q in ("b", "a"):
            out[q] = p.clamp(0, 1)  # snnTorch's beta.clamp(0, 1) / alpha.clamp(0, 1)
        elif q == "cm":
            out[q] = float(spec.extra["dt"]) * p  # Norse: dt * tau_mem_inv
        elif q == "cs":
            out[q] = -float(spec.extra["dt"]) * p  # Norse: (-dt) * tau_syn_inv
        else:
            out[q] = p
    return out


def _flat_param(p: Tensor, step_shape: tuple[int, ...], q: str) -> tuple[Tensor, int]:
    """(contiguous fp32 values, stride): one value (stride 0) or one per neuron (stride 1).

    A 0-dim param of another float dtype meets the fp32 activations as torch
    casts a scalar operand (to fp32, then one fp32 operation); a dimensioned
    non-fp32 param would promote the whole step to its dtype, which the fp32
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


def _reduce_param_grad(
    g: Tensor, step_shape: tuple[int, ...], shape: torch.Size, dtype: torch.dtype
) -> Tensor:
    """Per-neuron double sums -> the param's shape (summed in double), in its dtype."""
    g = g.reshape(step_shape)
    g = g.sum().reshape(shape) if math.prod(shape) == 1 else g.sum_to_size(shape)
    return g.to(dtype)


# ------------------------------------------------------------- connectivity
def _step_deps(spec: NeuronSpec) -> dict[str, set[str]]:
    """For each step result ("out" and the next state variables), the step inputs
    (state variables, "x", "rec", quantities) autograd connects it to."""
    charge, sub = spec.charge, spec.reset == "subtract"
    if charge.startswith("snntorch"):
        i1: set[str] = set()
        if charge == "snntorch_leaky":
            base = {"b", "v", "x"}
        elif charge == "snntorch_synaptic":
            i1 = {"a", "i", "x"}
            base = {"b", "v"} | i1
        elif charge == "snntorch_rleaky":
            base = {"b", "v", "x", "rec"}
        else:
            base = {"b", "v", "x", "s", "V"}
        m1a = base | ({"th"} if sub else set())
        s = m1a | {"th", "g"}
        corrected = not spec.reset_delay and spec.reset != "none"
        m2 = m1a | ((s | ({"th"} if sub else set())) if corrected else set())
        out = {"spike": s, "membrane": m2, "current": i1}[spec.output]
        return {"out": out, "v": m2, "i": i1, "s": s}
    i2: set[str] = set()
    if charge == "norse_lifbox":
        v1 = {"v", "cm", "x"}
    else:
        i1 = {"i", "x"} | ({"rec"} if charge == "norse_lif_recurrent" else set())
        v1 = {"v", "cm"} | i1
        i2 = i1 | {"cs"}
    z: set[str] = set()
    v2 = v1
    if charge != "norse_li":
        z = v1 | {"th"}
        zr = set() if spec.detach_reset else z
        if spec.reset == "hard":
            v2 = v1 | {"vr"} | zr
        elif sub:
            v2 = v1 | {"th"} | zr
    out = {"spike": z, "membrane": v2, "current": i2}[spec.output]
    return {"out": out, "v": v2, "i": i2}


def connected(spec: NeuronSpec, T: int, out_used: bool, last_used: Sequence[str]) -> set[str]:
    """Inputs of a T-step run that autograd reaches from the used outputs.

    Names: the state variables (their values at t = -1), "x", "rec" and the
    kernel quantities. ``out_used``: the output sequence gets a gradient;
    ``last_used``: the final state variables that do.
    """
    deps = _step_deps(spec)
    state_vars = set(spec.state_vars)
    reached: set[str] = set()
    live = set(last_used)  # state variables after step t that reach the loss
    for _ in range(T):  # t = T-1 down to 0
        step = set(deps["out"]) if out_used else set()
        for var in live:
            step |= deps[var]
        reached |= step - state_vars
        before = step & state_vars  # ... and before step t
        if before == live:
            break  # every earlier step is this one again
        live = before
    return reached | live


# ---------------------------------------------------------------- autograd
def _forward(
    kernel: FormKernel,
    x: Tensor,
    rec: Tensor | None,
    adds: Sequence[Tensor],
    s0s: Sequence[Tensor | None],
    flat: Sequence[tuple[Tensor, int]],
    store: bool,
) -> tuple[Tensor, list[Tensor | None], list[Tensor]]:
    """One forward kernel call: (out [T, N], state sequences or Nones, final states [N])."""
    info = kernel.info
    T, N = x.shape
    f32 = {"dtype": torch.float32, "device": x.device}
    out = torch.empty((T, N), dtype=TORCH_DTYPES[info.out_dtype], device=x.device)
    seqs = [torch.empty((T, N), **f32) if store else None for _ in info.state_vars]
    lasts = [torch.empty((N,), **f32) for _ in info.state_vars]
    values: dict[str, Any] = {"x": x, "rec": rec, "out": out, "T": T, "N": N}
    values.update({f"a{j}": a for j, a in enumerate(adds)})
    for var, s0, seq, last in zip(info.state_vars, s0s, seqs, lasts):
        values.update({f"{var}0": s0, f"{var}_seq": seq, f"{var}_last": last})
    for q, (p, stride) in zip(info.param_args, flat):
        values.update({f"p_{q}": p, f"st_{q}": stride})
    kernel.call("fwd", values, x.device)
    return out, seqs, lasts


class FormFunction(torch.autograd.Function):
    """Autograd over (x, rec, *adds, *state0, *params) -> (out, *final state), [T, N] / [N]."""

    @staticmethod
    def forward(ctx, kernel: FormKernel, step_shape: tuple[int, ...], x, rec, *rest):  # type: ignore[override]
        info = kernel.info
        n_adds, n_vars = len(info.add_ports), len(info.state_vars)
        adds, s0s, ps = rest[:n_adds], rest[n_adds : n_adds + n_vars], rest[n_adds + n_vars :]
        ctx.set_materialize_grads(False)
        flat = [_flat_param(p, step_shape, q) for q, p in zip(info.param_args, ps)]
        # grad mode is off inside Function.forward: ask the inputs instead
        training = any(t is not None and t.requires_grad for t in (x, rec, *rest))
        store = training and not info.recompute
        out, seqs, lasts = _forward(kernel, x, rec, adds, s0s, flat, store)
        ctx.kernel = kernel
        ctx.step_shape = step_shape
        ctx.strides = [stride for _, stride in flat]
        ctx.param_meta = [(p.shape, p.dtype) for p in ps]
        n_pro = info.n_prologue_adds
        # the backward re-runs steps from x (through the prologue); recompute re-runs the
        # whole forward kernel, which reads the epilogue's inputs as well
        keep = n_adds if info.recompute else n_pro
        ctx.save_for_backward(
            x,
            rec,
            *(a if j < keep else None for j, a in enumerate(adds)),
            *s0s,
            *(p for p, _ in flat),
            *seqs,
        )
        return (out, *lasts)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, *g_lasts):  # type: ignore[override]
        kernel: FormKernel = ctx.kernel
        info = kernel.info
        n_adds, n_vars, n_ps = len(info.add_ports), len(info.state_vars), len(info.param_args)
        saved = list(ctx.saved_tensors)
        x, rec = saved[0], saved[1]
        adds = saved[2 : 2 + n_adds]
        s0s = saved[2 + n_adds : 2 + n_adds + n_vars]
        flat = list(zip(saved[2 + n_adds + n_vars : 2 + n_adds + n_vars + n_ps], ctx.strides))
        seqs = saved[2 + n_adds + n_vars + n_ps :]
        T, N = x.shape
        used = [v for v, g in zip(info.state_vars, g_lasts) if g is not None]
        reach = connected(kernel.spec, T, g_out is not None, used)
        need = ctx.needs_input_grad  # (kernel, step_shape, x, rec, *adds, *s0s, *params)
        need_adds = need[4 : 4 + n_adds]
        need_s0 = need[4 + n_adds : 4 + n_adds + n_vars]
        need_p = need[4 + n_adds + n_vars :]
        if seqs[0] is None:  # recompute: rebuild the state sequences with the forward kernel
            _, seqs, _ = _forward(kernel, x, rec, adds, s0s, flat, True)
        f32 = {"dtype": torch.float32, "device": x.device}
        x_on = "x" in reach
        gx = torch.empty((T, N), dtype=TORCH_DTYPES[info.x_dtype], device=x.device)
        grec = torch.empty((T, N), **f32) if need[3] and "rec" in reach else None
        n_pro = info.n_prologue_adds
        gadds = [
            torch.empty((T, N), **f32) if w and (x_on if j < n_pro else g_out is not None) else None
            for j, w in enumerate(need_adds)
        ]
        gs0 = [
            torch.empty((N,), **f32) if w and s0 is not None and var in reach else None
            for var, s0, w in zip(info.state_vars, s0s, need_s0)
        ]
        gps = [
            torch.empty((N,), dtype=torch.float64, device=x.device) if w and q in reach else None
            for q, w in zip(info.param_args, need_p)
        ]
        # a 16-bit output's gradient arrives in 16 bits; the kernel reads it in place, by its
        # strides (the gradient of y.sum() is one broadcast value, never materialised)
        gy = None if g_out is None else g_out.to(TORCH_DTYPES[gy_dtype(info.out_dtype)])
        values: dict[str, Any] = {
            "gy": gy,
            "gy_ts": 0 if gy is None else gy.stride(0),
            "gy_ns": 0 if gy is None else gy.stride(1),
            "x": x,
            "rec": rec,
            "gx": gx,
            "grec": grec,
            "T": T,
            "N": N,
        }
        values.update({f"a{j}": a for j, a in enumerate(adds)})
        values.update({f"ga{j}": g for j, g in enumerate(gadds)})
        for var, seq, g_last, g0 in zip(info.state_vars, seqs, g_lasts, gs0):
            g_last = None if g_last is None else g_last.float().contiguous()
            values.update({f"{var}_seq": seq, f"g{var}_last": g_last, f"g{var}0": g0})
        for q, (p, stride), gp in zip(info.param_args, flat, gps):
            values.update({f"p_{q}": p, f"st_{q}": stride, f"gp_{q}": gp})
        kernel.call("bwd", values, x.device)
        g_params = [
            None if gp is None else _reduce_param_grad(gp, ctx.step_shape, *meta)
            for gp, meta in zip(gps, ctx.param_meta)
        ]
        return (
            None,
            None,
            gx if need[2] and x_on else None,
            grec,
            *gadds,
            *gs0,
            *g_params,
        )


def run_form(
    kernel: FormKernel,
    x: Tensor,
    rec: Tensor | None = None,
    adds: Sequence[Tensor] = (),
    state: Mapping[str, Tensor] | None = None,
    params: Mapping[str, Tensor] | None = None,
    widen: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One snnTorch / Norse layer over a sequence: x [T, *shape] -> (out, final state).

    ``rec``: port 1 of the recurrent forms, [T, *shape]; ``adds``: the add
    steps' inputs in the kernel's a<j> order (broadcast to x's shape);
    ``state``: every state variable of the form at t = -1 (None: a fresh
    state); ``params``: the kernel quantities from :func:`derive_params`.
    """
    info = kernel.info
    params = dict(params or {})
    if len(adds) != len(info.add_ports):
        raise ShapeError(f"neuron kernel expects {len(info.add_ports)} add inputs, got {len(adds)}")
    if (rec is not None) != info.has_rec:
        raise ShapeError(
            f"neuron charge form {kernel.spec.charge!r} "
            + ("needs its recurrent input (port 1)" if info.has_rec else "has no port 1 input")
        )
    if sorted(params) != sorted(info.param_args):
        raise ShapeError(
            f"neuron kernel expects the quantities {list(info.param_args)}, got {sorted(params)}"
        )
    device = x.device
    x, step_shape, N = time_major(x, widen, TORCH_DTYPES[info.x_dtype])
    T = x.shape[0]
    flat_rec = None if rec is None else flat_seq(rec, "recurrent input", x, widen)
    flat_adds = [flat_seq(a, f"fused add input {j}", x, widen) for j, a in enumerate(adds)]
    s0s: list[Tensor | None] = []
    for var in info.state_vars:
        if state is None:
            s0s.append(None)
            continue
        if var not in state:
            raise ShapeError(
                f"state of a {kernel.spec.charge!r} neuron lacks {var!r}; it keeps "
                f"{list(info.state_vars)}"
            )
        s = as_f32(state[var], f"state {var!r}", device, widen)
        if not broadcasts_to(s.shape, step_shape):
            raise ShapeError(
                f"state {var!r} of shape {tuple(s.shape)} does not match the neuron's "
                f"per-step shape {step_shape}"
            )
        s0s.append(s.expand(step_shape).contiguous().reshape(N))
    ps = [params[q] for q in info.param_args]
    outs = FormFunction.apply(kernel, step_shape, x.reshape(T, N), flat_rec, *flat_adds, *s0s, *ps)
    out = outs[0].reshape(x.shape)
    new_state = {var: last.reshape(step_shape) for var, last in zip(info.state_vars, outs[1:])}
    return out, new_state
