"""The neuron kernels as torch custom ops, so ``torch.compile`` and ``torch.export`` trace them.

Why: a ctypes call (cpu) or a CuPy launch (cuda) is opaque to torch's tracers:
dynamo breaks the graph there and ``torch.export`` cannot export the program.
Registered with ``torch.library.custom_op`` (a fake implementation for shapes,
an autograd formula), each kernel call is one node of the traced graph, so
inductor fuses the ops around the GEMMs, an exported program runs the same
kernels, and a captured training step holds every launch.

Eagerly the programs keep calling :class:`~snncc.backends.cpu.autograd.LayerFunction`
(called eagerly, a custom op's dispatch costs several times a Function's: with
``benchmarks/host_overhead.py`` at load 8-10 on the 2-core development VM, a small
layer's call took 146-170 us of CPU time forward and 235-287 backward through the
ops, against 42 and 102 through the Function); ``run_layer`` switches to
these ops when ``torch.compiler.is_compiling()`` (torch.compile and torch.export).
Both call the same host functions (:func:`~snncc.backends.cpu.autograd.layer_forward`,
:func:`~snncc.backends.cpu.autograd.layer_backward`), so the results are the same bits.

Which kernel an op call runs is named by a string key: the JSON of what the
kernel is rendered from (target, neuron spec, fused steps, options). A key seen
for the first time in this process (an exported program loaded elsewhere) is
rendered and compiled from that JSON into the user's own cache, exactly as
``snncc.load`` lowers an artifact's IR: the key is validated data, never code.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from snncc.backends.cpu.autograd import (
    KernelPair,
    _reduce_grad,
    backward_wants,
    flat_quantity,
    layer_backward,
    layer_forward,
    layout,
    recompute_saved,
    saved_for_backward,
)
from snncc.errors import UnsupportedError

Tensor = torch.Tensor

_lock = threading.Lock()
#: key -> kernel object of this process
_KERNELS: dict[str, KernelPair] = {}


def kernel_key(kernel: KernelPair) -> str:
    """The op key of ``kernel`` (registered so ops with this key run this very object)."""
    key = getattr(kernel, "_snncc_op_key", None)
    if key is None:
        prologue, epilogue, options = kernel.render_args  # type: ignore[attr-defined]
        key = register(
            kernel,
            {
                "target": kernel.target,  # type: ignore[attr-defined]
                "spec": kernel.spec.to_dict(),
                "prologue": [dict(s) for s in prologue],
                "epilogue": [dict(s) for s in epilogue],
                "options": dict(options),
                "block": getattr(kernel, "block", None),
            },
        )
    return key


def register(kernel: Any, body: dict[str, Any]) -> str:
    """Key ``kernel`` by the JSON of what it is rendered from (``body``) and register it:
    ops called with that key in this process run this very object."""
    key = json.dumps(body, sort_keys=True)
    kernel._snncc_op_key = key
    with _lock:
        _KERNELS.setdefault(key, kernel)
    return key


def lookup(key: str, build: Callable[[dict[str, Any]], Any], what: str) -> Any:
    """The kernel an op key names: this process's object, or ``build(body)`` from the key's
    JSON (validated by ``build``: a malformed or unknown key is an UnsupportedError that
    names ``what``)."""
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    try:
        body = json.loads(key)
        kernel = build(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise UnsupportedError(f"snncc {what} op: malformed kernel key ({exc})") from None
    kernel._snncc_op_key = key
    with _lock:
        return _KERNELS.setdefault(key, kernel)


def prime_for_tracing(kernel: KernelPair) -> None:
    """Work out now what a traced call reads from ``kernel`` (its op key, its Layout).

    Why: both are memoised on the kernel object. Left to the first call, a first call
    under torch.compile guards on their absence, and the next call (once an eager call
    has set them) recompiles the module. The kernels' constructors call this."""
    kernel_key(kernel)
    layout(kernel)


def kernel_of(key: str) -> KernelPair:
    """The neuron kernel an op key names: this process's object, or one built from the key."""
    return lookup(key, _build_neuron_kernel, "neuron")


def _build_neuron_kernel(body: dict[str, Any]) -> KernelPair:
    target = body["target"]
    args = (body["spec"], body["prologue"], body["epilogue"], body["options"])
    if target == "cpu":
        from snncc.backends.cpu.neuron import NeuronKernel

        return NeuronKernel(*args)
    if target == "cuda":
        from snncc.backends.cuda.neuron import CudaNeuronKernel

        return CudaNeuronKernel(*args, block=body.get("block"))
    raise UnsupportedError(f"snncc neuron op: unknown kernel target {target!r}")


# ------------------------------------------------------------------ packing
# Every op takes its tensors packed into one list that is never empty, with their counts in
# another: AOTInductor's generated code hands an empty list argument to a Python custom op as
# None (torch 2.14), which the schema refuses, and a list can have no other "absent" form
# (torch has no Tensor[]? type). So a form with no ports, adds, given states or quantities
# still runs from an AOTInductor package.
def pack(*groups: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """``groups`` flattened into one list, and the length of each group."""
    return [t for g in groups for t in g], [len(g) for g in groups]


def unpack(tensors: Sequence[Any], counts: Sequence[int]) -> list[list[Any]]:
    """The groups :func:`pack` flattened, back as lists."""
    out, i = [], 0
    for n in counts:
        out.append(list(tensors[i : i + n]))
        i += n
    return out


def _forward_inputs(tensors, counts):
    """(x, ports, adds, initial states with None where not given, quantities) of a packed
    forward call: tensors [x, *ports, *adds, *qs, *given states], counts [1, n_ports,
    n_adds, n_qs, then 1 or 0 per state variable: given or not]."""
    given = [bool(g) for g in counts[4:]]
    (x,), ports, adds, qs, s0_list = unpack(tensors, [*counts[:4], sum(given)])
    return x, ports, adds, _spread(s0_list, given), qs


# ------------------------------------------------------------------ forward
@torch.library.custom_op("snncc::neuron_forward", mutates_args=())
def neuron_forward(
    key: str, tensors: list[Tensor], counts: list[int], step_shape: list[int], store: bool
) -> list[Tensor]:
    """One forward kernel call on [T, N] tensors: [out, *saved sequences (store), *final states].

    ``tensors``/``counts``: x, the ports, the adds, the quantities and the given initial
    states, packed (:func:`_forward_inputs`)."""
    kernel = kernel_of(key)
    x, ports, adds, s0s, qs = _forward_inputs(tensors, counts)
    flat = [flat_quantity(p, tuple(step_shape), q) for q, p in zip(kernel.info.param_args, qs)]
    out, saved, lasts = layer_forward(kernel, x, ports, adds, s0s, flat, store)
    return [out, *(t for t in saved.values() if t is not None), *lasts]


@neuron_forward.register_fake
def _neuron_forward_fake(key, tensors, counts, step_shape, store):
    lay = layout(kernel_of(key))
    x = tensors[0]
    T, N = x.shape
    seqs = [x.new_empty((T, N), dtype=torch.float32) for _ in lay.seq_names] if store else []
    lasts = [x.new_empty((N,), dtype=torch.float32) for _ in range(lay.n_vars)]
    return [x.new_empty((T, N), dtype=lay.out_dtype), *seqs, *lasts]


# ------------------------------------------------------------------ backward
def _backward_inputs(tensors, counts):
    """A packed backward call's inputs: tensors [g_out, x, *g_lasts, *seqs, *ports, *adds,
    *s0s, *qs] (None where absent), counts [1, 1, then each group's length]."""
    (g_out,), (x,), *groups = unpack(tensors, counts)
    return g_out, x, *groups


@torch.library.custom_op("snncc::neuron_backward", mutates_args=())
def neuron_backward(
    key: str,
    tensors: list[Tensor | None],
    counts: list[int],
    step_shape: list[int],
    T: int,
    N: int,
    want: list[bool],
) -> list[Tensor]:
    """One backward kernel call: [gx, *g<port>, *ga<j>, *g<var>0, *gp_<q>] in the kernel's
    order (``Layout.grad_names``); a gradient ``want`` does not ask for is an empty tensor.
    ``tensors``/``counts``: see :func:`_backward_inputs`."""
    kernel = kernel_of(key)
    lay = layout(kernel)
    info = kernel.info
    g_out, x, g_lasts, seqs, ports, adds, s0s, qs = _backward_inputs(tensors, counts)
    flat = [flat_quantity(p, tuple(step_shape), q) for q, p in zip(info.param_args, qs)]
    saved = dict(zip(lay.seq_names, seqs)) if seqs else dict.fromkeys(lay.seq_names)
    saved = recompute_saved(kernel, x, ports, adds, s0s, flat, saved)
    wants = dict(zip(lay.grad_names, want))
    wants["x"] = True
    dev = _device(tensors)
    grads = layer_backward(
        kernel, (T, N), dev, g_out, g_lasts, saved, x, ports, adds, s0s, flat, wants
    )
    return [
        torch.empty((0,), device=dev) if grads[name] is None else grads[name]
        for name in lay.grad_names
    ]


def _spread(given: Sequence[Tensor], mask: Sequence[bool]) -> list[Tensor | None]:
    """The given tensors back in their places, None where the mask says none was given."""
    it = iter(given)
    return [next(it) if m else None for m in mask]


def _device(*candidates: Any) -> torch.device:
    for c in candidates:
        if isinstance(c, Tensor):
            return c.device
        if isinstance(c, (list, tuple)):
            for t in c:
                if isinstance(t, Tensor):
                    return t.device
    return torch.device("cpu")


@neuron_backward.register_fake
def _neuron_backward_fake(key, tensors, counts, step_shape, T, N, want):
    kernel = kernel_of(key)
    lay = layout(kernel)
    dev = _device(tensors)
    n_seq = 1 + lay.n_ports + lay.n_adds
    out = []
    for i, (name, w) in enumerate(zip(lay.grad_names, want)):
        if i == 0:
            out.append(torch.empty((T, N), dtype=lay.gx_dtype, device=dev))
        elif not w:
            out.append(torch.empty((0,), device=dev))
        elif i < n_seq:
            out.append(torch.empty((T, N), dtype=torch.float32, device=dev))
        elif name.startswith("gp_"):
            out.append(torch.empty((N,), dtype=torch.float64, device=dev))
        else:
            out.append(torch.empty((N,), dtype=torch.float32, device=dev))
    return out


# ------------------------------------------------------------------ autograd
def _setup_context(ctx, inputs, output) -> None:
    key, tensors, counts, step_shape, store = inputs
    x, ports, adds, s0s, qs = _forward_inputs(tensors, counts)
    kernel = kernel_of(key)
    lay = layout(kernel)
    ctx.set_materialize_grads(False)
    ctx.key = key
    ctx.step_shape = list(step_shape)
    ctx.tn = (x.shape[0], x.shape[1])
    ctx.counts = list(counts)
    ctx.s0_given = [s is not None for s in s0s]
    ctx.q_meta = [(p.shape, p.dtype) for p in qs]
    seqs = list(output[1 : 1 + len(lay.seq_names)]) if store else []
    ctx.n_seqs = len(seqs)
    kx, kports, kadds = saved_for_backward(kernel, x, ports, adds)
    ctx.has = (kx is not None, [p is not None for p in kports], [a is not None for a in kadds])
    ctx.save_for_backward(
        *([kx] if kx is not None else []),
        *(p for p in kports if p is not None),
        *(a for a in kadds if a is not None),
        *(s for s in s0s if s is not None),
        *qs,
        *seqs,
    )


def _backward(ctx, grads):
    kernel = kernel_of(ctx.key)
    lay = layout(kernel)
    info = kernel.info
    saved = list(ctx.saved_tensors)
    has_x, has_ports, has_adds = ctx.has
    x = saved.pop(0) if has_x else None
    ports = [saved.pop(0) if h else None for h in has_ports]
    adds = [saved.pop(0) if h else None for h in has_adds]
    s0s = [saved.pop(0) if h else None for h in ctx.s0_given]
    n_q = len(ctx.q_meta)
    qs, seqs = saved[:n_q], saved[n_q:]
    g_out = grads[0]
    g_lasts = list(grads[len(grads) - lay.n_vars :])
    T, N = ctx.tn
    # one flag per packed input (custom ops unflatten needs_input_grad to the inputs' shape)
    need_x, need_ports, need_adds, need_qs, need_given = unpack(
        ctx.needs_input_grad[1], ctx.counts[:4] + [sum(ctx.s0_given)]
    )
    need_s0 = _spread(need_given, ctx.s0_given)
    flat_need = [*need_x, *need_ports, *need_adds, *(bool(n) for n in need_s0), *need_qs]
    want = backward_wants(kernel, T, g_out, g_lasts, s0s, flat_need)
    x_on = want.pop("x")
    want_list = [True, *(want[name] for name in lay.grad_names[1:])]
    packed, counts = pack([g_out], [x], g_lasts, seqs, ports, adds, s0s, qs)
    outs = torch.ops.snncc.neuron_backward(ctx.key, packed, counts, ctx.step_shape, T, N, want_list)
    by = dict(zip(lay.grad_names, outs))
    gx = by["gx"] if need_x[0] and x_on else None
    gports = [by[f"g{p}"] if want[f"g{p}"] else None for p in lay.port_names]
    gadds = [by[f"g{a}"] if want[f"g{a}"] else None for a in lay.add_names]
    gs0 = [by[f"g{v}0"] if want[f"g{v}0"] else None for v in info.state_vars]
    step_shape = tuple(ctx.step_shape)
    gqs = [
        _reduce_grad(by[f"gp_{q}"], step_shape, *meta) if want[f"gp_{q}"] else None
        for q, meta in zip(info.param_args, ctx.q_meta)
    ]
    gs0_given = [g for g, h in zip(gs0, ctx.s0_given) if h]
    # the gradient of the packed list, in its order: x, ports, adds, quantities, states
    return None, [gx, *gports, *gadds, *gqs, *gs0_given], None, None, None


neuron_forward.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ entry
def run(
    kernel: KernelPair,
    step_shape: tuple[int, ...],
    x: Tensor,
    ports: Sequence[Tensor],
    adds: Sequence[Tensor],
    s0s: Sequence[Tensor | None],
    qs: Sequence[Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """One layer through the custom ops ([T, N] inputs): (out, final states [N])."""
    info = kernel.info
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, *ports, *adds, *s0s, *qs)
    )
    store = training and info.save != "none" and not info.recompute
    given = [s for s in s0s if s is not None]
    tensors, counts = pack([x], ports, adds, qs, given)
    counts = [*counts[:4], *(int(s is not None) for s in s0s)]
    outs = torch.ops.snncc.neuron_forward(
        kernel_key(kernel), tensors, counts, list(step_shape), store
    )
    n_vars = layout(kernel).n_vars
    return outs[0], list(outs[len(outs) - n_vars :])


# The fused recurrent groups' ops register with these: importing this module registers
# every snncc op (what a process that loads an exported program needs).
from snncc.backends.cpu import recurrent_ops as _recurrent_ops  # noqa: E402, F401
