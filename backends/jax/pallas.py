"""The driver of the generated module's Pallas neuron kernels (imported by it as ``pk``).

A neuron group of the jax backend with ``neuron_kernels="pallas"`` is two
kernels the templates render into the module (``templates/jax/pallas_segment.py.j2``):
a forward that runs the whole time loop over one block of the flattened
neuron axis (B*N) with the state in registers, and a backward that runs time in
reverse applying the step's vector-Jacobian product (derived from the form's
expression graph by :func:`snncc.ir.expr.vjp`, lowered with the jax op table).
What is the same for every neuron lives here once: flattening the sequences to
``[T, M]`` and padding ``M`` to whole blocks (padded lanes compute on zeros and
are cut away, so no kernel needs a mask), the ``pallas_call`` grids, and the
``jax.custom_vjp`` that joins the two kernels, so ``jax.grad`` of a compiled
model runs the backward kernel.

On a GPU the kernels are lowered by Pallas' Triton backend; ``interpret=True``
(a CPU, the tests) runs the same kernel bodies through Pallas' interpreter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

#: lanes per program in interpret mode (each program is a Python-level loop there)
INTERPRET_BLOCK = 128


def block_size(m: int) -> int:
    """Lanes per program on a GPU: wide blocks when there are many neurons, narrow ones when
    few (L2's 16k neurons still give the GPU a few hundred programs to run side by side:
    the time loop is sequential, so parallelism comes from the grid only)."""
    for blk in (1024, 512, 256, 128, 64):
        if m >= blk * 512:
            return blk
    return 32


def lanes(blk: int) -> Any:
    """The kernel's block of the flattened neuron axis: ``ref[t, lanes(BLK)]``."""
    return pl.ds(pl.multiple_of(pl.program_id(0) * blk, blk), blk)


@dataclass(frozen=True)
class Kernels:
    """One neuron group's kernels and their shapes (static: the custom_vjp's non-diff arg)."""

    forward: Callable[..., None]
    backward: Callable[..., None]
    n_ports: int
    n_quantities: int
    n_states: int
    #: how many state variables the forward saves per step for the backward (0 or n_states)
    n_saved: int
    interpret: bool


def _compiler_params(k: Kernels, blk: int) -> Any:
    if k.interpret:
        return None
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=max(1, min(4, blk // 128)), num_stages=1)


def _call(k: Kernels, kernel: Callable, out_shapes: Sequence[tuple], blk: int, mp: int):
    return pl.pallas_call(
        kernel,
        grid=(mp // blk,),
        out_shape=tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes),
        interpret=k.interpret,
        compiler_params=_compiler_params(k, blk),
    )


def _forward(k: Kernels, save: bool, xs, qs, s0):
    steps, mp = xs[0].shape
    blk = INTERPRET_BLOCK if k.interpret else block_size(mp)
    n_saved = k.n_saved if save else 0
    shapes = [(steps, mp)] + [(mp,)] * k.n_states + [(steps, mp)] * n_saved
    kernel = partial(k.forward, T=steps, BLK=blk, save=bool(n_saved))
    outs = _call(k, kernel, shapes, blk, mp)(*xs, *qs, *s0)
    return outs[0], tuple(outs[1 : 1 + k.n_states]), tuple(outs[1 + k.n_states :])


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _group(k: Kernels, xs, qs, s0):
    out, last, _ = _forward(k, False, xs, qs, s0)
    return out, last


def _group_fwd(k: Kernels, xs, qs, s0):
    out, last, saved = _forward(k, True, xs, qs, s0)
    return (out, last), (xs, qs, saved)


def _group_bwd(k: Kernels, res, grads):
    xs, qs, saved = res
    g_out, g_last = grads
    steps, mp = g_out.shape
    blk = INTERPRET_BLOCK if k.interpret else block_size(mp)
    shapes = [(steps, mp)] * k.n_ports + [(mp,)] * (k.n_states + k.n_quantities)
    kernel = partial(k.backward, T=steps, BLK=blk)
    outs = _call(k, kernel, shapes, blk, mp)(g_out, *g_last, *saved, *xs, *qs)
    gx = tuple(outs[: k.n_ports])
    gs0 = tuple(outs[k.n_ports : k.n_ports + k.n_states])
    gq = tuple(outs[k.n_ports + k.n_states :])
    return gx, gq, gs0


_group.defvjp(_group_fwd, _group_bwd)


def neuron_group(
    k: Kernels, xs: Sequence[jax.Array], qs: Sequence[Any], s0: Sequence[jax.Array]
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Run one neuron group: ``xs`` its input ports ``[T, B, ...]``, ``qs`` its per-call
    quantities (anything broadcasting to one step ``[B, ...]``), ``s0`` its state at t = -1
    ``[B, ...]``. Returns the output sequence ``[T, B, ...]`` and the state after step T-1.

    The quantities are broadcast to one value per neuron before the kernel, so a
    quantity's gradient is the kernel's per-neuron sum over time, reduced to the
    quantity's own shape by jax's derivative of the broadcast.
    """
    steps, step_shape = xs[0].shape[0], tuple(xs[0].shape[1:])
    m = math.prod(step_shape)
    blk = INTERPRET_BLOCK if k.interpret else block_size(m)
    mp = -(-m // blk) * blk

    def lanes_of(a: jax.Array) -> jax.Array:  # [..., *step_shape] -> [..., Mp]
        a = a.reshape(a.shape[: a.ndim - len(step_shape)] + (m,))
        if mp == m:
            return a
        return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, mp - m)])

    xf = tuple(
        lanes_of(jnp.broadcast_to(jnp.asarray(x, jnp.float32), (steps, *step_shape))) for x in xs
    )
    qf = tuple(lanes_of(jnp.broadcast_to(jnp.asarray(q, jnp.float32), step_shape)) for q in qs)
    sf = tuple(lanes_of(jnp.asarray(s, jnp.float32)) for s in s0)
    out, last = _group(k, xf, qf, sf)
    if mp != m:
        out, last = out[:, :m], tuple(s[:m] for s in last)
    return out.reshape((steps, *step_shape)), tuple(s.reshape(step_shape) for s in last)
