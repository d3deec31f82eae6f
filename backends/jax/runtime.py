"""The small runtime every generated jax module imports (as ``rt``).

Why a runtime at all: the generated module should read like the model (one
line per op, one scan per neuron group), so the few pieces that are the same
for every model and fiddly to get exactly right live here once: the spike
(Heaviside forward, the generated module's surrogate function backward), a
clamp with torch's gradient, torch-exact pooling windows (padding, ceil_mode,
divisors), conv padding, and the time-major reshapes.

Everything here is pure jax, jit-able and differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.expr import clamp_passes_bounds

HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------- spikes
def _make_spike(strict: bool):
    """A Heaviside spike (``x >= 0``, or ``x > 0`` when strict) whose backward is ``grad_fn``.

    ``grad_fn(g, x)`` is the surrogate's gradient, a function the generated module
    defines from :mod:`snncc.ir.surrogates` (one expression per surrogate, lowered to
    jax.numpy like the neuron steps), so the surrogates exist in one place only.
    """

    @partial(jax.custom_vjp, nondiff_argnums=(1,))
    def spike(x: jax.Array, grad_fn) -> jax.Array:
        hit = x > 0 if strict else x >= 0
        return hit.astype(x.dtype)

    def fwd(x, grad_fn):
        return spike(x, grad_fn), x

    def bwd(grad_fn, x, g):
        return (grad_fn(g, x),)

    spike.defvjp(fwd, bwd)
    return spike


#: ``spike(x, grad_fn)``: forward ``(x >= 0)``, backward ``grad_fn(g, x)`` (the surrogate).
spike = _make_spike(strict=False)
#: ``spike_gt(x, grad_fn)``: forward ``(x > 0)`` (snnTorch, Norse), same backward.
spike_gt = _make_spike(strict=True)


def clamp_value(x: jax.Array, lo: float | None, hi: float | None) -> jax.Array:
    """torch's ``clamp(x, lo, hi)`` value (NaN stays NaN), without a derivative rule: what a
    Pallas kernel computes (its backward is derived from the expression graph)."""
    y = x
    if lo is not None:
        y = jnp.where(y < lo, jnp.asarray(lo, x.dtype), y)
    if hi is not None:
        y = jnp.where(y > hi, jnp.asarray(hi, x.dtype), y)
    return y


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def clamp(x: jax.Array, lo: float | None, hi: float | None) -> jax.Array:
    """torch's ``clamp(x, lo, hi)``: NaN stays NaN, and the gradient passes strictly
    inside (lo, hi) and at the bounds as the installed torch's clamp does
    (:func:`snncc.ir.expr.clamp_passes_bounds`: torch 2.13 passes it, 2.14 does not;
    ``jnp.clip`` would give 0.5 at a bound)."""
    return clamp_value(x, lo, hi)


@clamp.defjvp
def _clamp_jvp(lo, hi, primals, tangents):
    (x,), (t,) = primals, tangents
    closed = clamp_passes_bounds()
    inside = jnp.ones(x.shape, bool)
    if lo is not None:
        inside = inside & ((x >= lo) if closed else (x > lo))
    if hi is not None:
        inside = inside & ((x <= hi) if closed else (x < hi))
    return clamp(x, lo, hi), jnp.where(inside, t, jnp.zeros_like(t))


# ----------------------------------------------------------------- time axis
def merge_time(x: jax.Array) -> jax.Array:
    """[T, B, ...] -> [T*B, ...]: a layer group sees the whole sequence as one batch."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def split_time(x: jax.Array, steps: int) -> jax.Array:
    """[T*B, ...] -> [T, B, ...]."""
    return x.reshape((steps, x.shape[0] // steps) + x.shape[1:])


def delayed(seq: jax.Array, prev: jax.Array) -> jax.Array:
    """The sequence one step late: ``prev`` at t=0, then ``seq[:-1]`` (a delay-1 edge)."""
    return jnp.concatenate([prev[None].astype(seq.dtype), seq[:-1]], axis=0)


def _given(state: dict, nid: int, var: str, shape: Sequence[int], group: Sequence[str]):
    """``state[nid][var]`` checked against ``shape``, or None when the caller did not pass it.

    ``group``: the node's state variables that only make sense together (a
    neuron form's ``v``/``i``/``s``): a state holding some of them but not
    ``var`` is refused rather than silently restarting ``var`` at its initial value.
    """
    node_state = state.get(nid)
    if node_state is None or var not in node_state:
        present = [g for g in group if node_state is not None and g in node_state]
        if present:
            raise ShapeError(
                f"state of node %{nid} has {present} but lacks {var!r}; this neuron keeps "
                f"{list(group)} (pass the whole state a previous run returned)"
            )
        return None
    value = node_state[var]
    if tuple(value.shape) != tuple(shape):
        raise ShapeError(
            f"state of node %{nid} {var!r} has shape {tuple(value.shape)}; this input needs "
            f"{tuple(shape)}"
        )
    return value


def fresh(
    state: dict, nid: int, var: str, like: jax.Array, fill: float, group: Sequence[str] = ()
) -> jax.Array:
    """``state[nid][var]`` if the caller passed it, else a fresh array shaped like ``like``."""
    value = _given(state, nid, var, like.shape, group)
    if value is not None:
        return jnp.asarray(value, like.dtype)
    return jnp.full(like.shape, fill, like.dtype)


def fresh_shape(
    state: dict, nid: int, var: str, shape: Sequence[int], fill: float, group: Sequence[str] = ()
) -> jax.Array:
    """Like :func:`fresh` for values not computed yet (delayed producers inside a recurrence)."""
    value = _given(state, nid, var, tuple(shape), group)
    if value is not None:
        return jnp.asarray(value, jnp.float32)
    return jnp.full(tuple(shape), fill, jnp.float32)


# ------------------------------------------------------------------- dropout
def require_key(key) -> None:
    """Refuse a missing key where the module draws dropout masks (never a silent fixed seed)."""
    if key is None:
        raise UnsupportedError(
            "this model applies dropout (compiled in training mode), so its jax function "
            "needs a random key: call jax_fn(params, x, key=jax.random.key(seed)); "
            "cm(x) and cm.run draw from the program's own key (option seed)"
        )


def _dropout_noise(key, nid: int, shape: Sequence[int], p: float, dtype) -> jax.Array:
    """torch's dropout noise: ``bernoulli(1 - p) / (1 - p)``, each element kept with 1 - p.

    One stream per node (the key folded with the node id), so two dropouts never
    share masks. Equal to torch's in distribution; the bits are jax's own generator's.
    """
    keep = jax.random.bernoulli(jax.random.fold_in(key, nid), 1.0 - p, tuple(shape))
    return keep.astype(dtype) / jnp.asarray(1.0 - p, dtype)


def dropout(key, nid: int, x: jax.Array, p: float) -> jax.Array:
    """torch.nn.Dropout in training mode: a fresh mask for every element of [T*B, ...]."""
    return x * _dropout_noise(key, nid, x.shape, p, x.dtype)


def dropout_shared(
    key, nid: int, state: dict, new_state: dict, x: jax.Array, p: float, steps: int
) -> jax.Array:
    """SpikingJelly's layer.Dropout in training mode: one mask [B, ...] for every step.

    The mask is kept in the state (``"mask"``), so a stream continued from a
    state keeps it, as SpikingJelly keeps it until ``reset_net``.
    """
    xs = split_time(x, steps)
    mask = _given(state, nid, "mask", xs.shape[1:], ())
    if mask is None:
        mask = _dropout_noise(key, nid, xs.shape[1:], p, x.dtype)
    new_state.setdefault(nid, {})["mask"] = mask
    return merge_time(xs * mask)


# ----------------------------------------------------------------- dense ops
def linear(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """torch.nn.functional.linear over the last dim, full fp32 precision (no TF32)."""
    y = jnp.matmul(x, w.T, precision=HIGHEST)
    return y if b is None else y + b


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """torch.matmul of two batched values, full fp32 precision (one batched GEMM)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def repeat_rows(x: jax.Array, steps) -> jax.Array:
    """A static value's [B, ...] rows at every one of ``steps`` steps: [T*B, ...] (t-major,
    as merge_time lays out a sequence)."""
    return jnp.tile(x, (steps,) + (1,) * (x.ndim - 1))


def layer_norm(x: jax.Array, shape, w: jax.Array | None, b: jax.Array | None, eps: float):
    """torch's layer_norm over the trailing ``shape`` dims (biased variance)."""
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + eps)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def group_norm(
    x: jax.Array, groups: int, w: jax.Array | None, b: jax.Array | None, eps: float
) -> jax.Array:
    """torch's group_norm of [N, C, ...]: each sample's channel groups normalised (biased
    variance), then the per-channel affine."""
    n, c = x.shape[0], x.shape[1]
    g = x.reshape((n, groups, -1))
    mean = jnp.mean(g, axis=2, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=2, keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
    per_channel = (1, c) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.reshape(per_channel)
    return y if b is None else y + b.reshape(per_channel)


def activation(x: jax.Array, fn: str) -> jax.Array:
    """The IR's ``activation`` functions, as torch defines them (GELU: erf or tanh form)."""
    if fn == "relu":
        return jax.nn.relu(x)
    if fn == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if fn == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if fn == "sigmoid":
        return jax.nn.sigmoid(x)
    if fn == "tanh":
        return jnp.tanh(x)
    raise ValueError(f"unknown activation {fn!r}")


def _tuple(v, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(a) for a in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


def conv_padding(padding, kernel: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]]:
    """torch's conv ``padding`` (int, tuple, "valid", "same") as explicit (lo, hi) pairs."""
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * n
        if padding == "same":
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return pads
        raise ValueError(f"conv padding {padding!r} is not an int, a tuple, 'valid' or 'same'")
    return [(p, p) for p in _tuple(padding, n)]


def conv(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None,
    stride: Sequence[int],
    padding: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    groups: int,
) -> jax.Array:
    """torch conv1d/conv2d (NC[H]W input, OI[H]W weight), full fp32 precision."""
    spatial = "HW"[-(x.ndim - 2) :] if x.ndim <= 4 else None
    if spatial is None:
        raise ValueError("only 1-d and 2-d convolutions are supported")
    dn = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=tuple(stride),
        padding=[tuple(p) for p in padding],
        rhs_dilation=tuple(dilation),
        dimension_numbers=dn,
        feature_group_count=groups,
        precision=HIGHEST,
    )
    if b is None:
        return y
    return y + b.reshape((1, -1) + (1,) * (x.ndim - 2))


def conv_transpose(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> jax.Array:
    """torch conv_transpose1d/2d (NC[H]W input, weight [C_in, C_out / groups, k...]).

    A transposed convolution is the convolution of the input dilated by the stride with the
    kernel flipped and its channel axes swapped (per group), padded by ``d * (k - 1) - p``
    on both sides plus ``output_padding`` at the end."""
    nd = x.ndim - 2
    spatial = "HW"[-nd:]
    kernel = tuple(int(k) for k in w.shape[2:])
    c_in, c_out_g = int(w.shape[0]), int(w.shape[1])
    wg = w.reshape((groups, c_in // groups, c_out_g) + kernel)
    wg = jnp.swapaxes(wg, 1, 2).reshape((groups * c_out_g, c_in // groups) + kernel)
    wf = jnp.flip(wg, axis=tuple(range(2, 2 + nd)))
    pads = [
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, op, d in zip(kernel, padding, output_padding, dilation)
    ]
    y = lax.conv_general_dilated(
        x,
        wf,
        window_strides=(1,) * nd,
        padding=pads,
        lhs_dilation=tuple(stride),
        rhs_dilation=tuple(dilation),
        dimension_numbers=("NC" + spatial, "OI" + spatial, "NC" + spatial),
        feature_group_count=groups,
        precision=HIGHEST,
    )
    if b is None:
        return y
    return y + b.reshape((1, -1) + (1,) * nd)


def pad(x: jax.Array, pads: Sequence[int], value: float) -> jax.Array:
    """torch F.pad in mode "constant": (low, high) pairs from the last dim backwards."""
    widths = [(0, 0)] * x.ndim
    for k in range(len(pads) // 2):
        widths[x.ndim - 1 - k] = (int(pads[2 * k]), int(pads[2 * k + 1]))
    return jnp.pad(x, widths, constant_values=jnp.asarray(value, x.dtype))


def upsample_nearest(x: jax.Array, maps: Sequence[Sequence[int]]) -> jax.Array:
    """torch's nearest upsampling as gathers: ``maps[d]`` is the source index of each
    output element along spatial dim d (``snncc.ir.resample``, from torch itself)."""
    for d, m in enumerate(maps):
        x = jnp.take(x, jnp.asarray(m, dtype=jnp.int32), axis=2 + d)
    return x


def fold_bn(
    w: jax.Array,
    b: jax.Array | None,
    bn_weight: jax.Array | None,
    bn_bias: jax.Array | None,
    bn_mean: jax.Array,
    bn_var: jax.Array,
    eps: float,
) -> tuple[jax.Array, jax.Array]:
    """Fold an eval BatchNorm into the preceding linear/conv (ops.py's formula).

    Computed inside the traced function from the source parameters, so
    ``jax.grad`` reaches ``weight``/``bias``/``bn_weight``/``bn_bias`` themselves.
    """
    gamma = jnp.ones_like(bn_var) if bn_weight is None else bn_weight
    beta = jnp.zeros_like(bn_mean) if bn_bias is None else bn_bias
    s = gamma / jnp.sqrt(bn_var + eps)
    w2 = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    b0 = jnp.zeros_like(bn_mean) if b is None else b
    return w2, (b0 - bn_mean) * s + beta


def batch_norm(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    weight: jax.Array | None,
    bias: jax.Array | None,
    eps: float,
) -> jax.Array:
    """torch batch_norm with given statistics over channel dim 1 of [N, C, ...]."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def batch_norm_train(
    x: jax.Array,
    weight: jax.Array | None,
    bias: jax.Array | None,
    eps: float,
    groups: int = 1,
) -> jax.Array:
    """Training-mode torch batch_norm: normalise with the batch's own statistics.

    ``groups`` splits the leading dim into ``groups`` independent batches: a
    layer group holds [T*B, C, ...], and statistics per step (a single-step
    source, attrs.stats == "step") are over each step's B rows, while a
    multi-step source (stats == "sequence") normalises over all T*B rows.
    Uses the biased variance, as torch does for the normalisation itself.
    (Running statistics are not updated: parameters are immutable here.)
    """
    xr = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    axes = (1,) + tuple(range(3, xr.ndim))
    mean = jnp.mean(xr, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xr - mean), axis=axes, keepdims=True)
    y = (xr - mean) / jnp.sqrt(var + eps)
    shape = (1, 1, -1) + (1,) * (xr.ndim - 3)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y.reshape(x.shape)


def flatten(x: jax.Array, start: int, end: int) -> jax.Array:
    """torch.flatten(x, start, end) with per-step dims (dim 0 is the batch, kept)."""
    s = start % x.ndim
    e = end % x.ndim
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1 :])


def cat_batch(xs: Sequence[jax.Array], steps: int) -> jax.Array:
    """torch.cat along the per-step batch dim when values hold ``steps`` steps as [T*B, ...]."""
    parts = [split_time(x, steps) for x in xs]
    return merge_time(jnp.concatenate(parts, axis=1))


# ------------------------------------------------------------------- pooling
def _pool_geometry(
    size: int, k: int, s: int, p: int, d: int, ceil_mode: bool
) -> tuple[int, tuple[int, int]]:
    """torch's pooled length and the (lo, hi) padding that makes reduce_window produce it."""
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    hi = max((out - 1) * s + eff - size - p, 0)
    return out, (p, hi)


def _pool_params(x: jax.Array, kernel, stride, padding, dilation, ceil_mode: bool):
    n = 2
    k = _tuple(kernel, n)
    s = _tuple(stride if stride not in (None, [], ()) else kernel, n)
    p = _tuple(padding, n)
    d = _tuple(dilation, n)
    geo = [_pool_geometry(x.shape[-n + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(n)]
    return k, s, p, d, geo


def max_pool2d(x, kernel, stride, padding, dilation=1, ceil_mode: bool = False) -> jax.Array:
    """torch max_pool2d: -inf padding, dilation, ceil_mode; ties pass gradient to the first max."""
    k, s, _p, d, geo = _pool_params(x, kernel, stride, padding, dilation, ceil_mode)
    lead = x.ndim - 2
    if d != (1, 1):
        return _max_pool_patches(x, k, s, d, geo)
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1,) * lead + k,
        (1,) * lead + s,
        [(0, 0)] * lead + [g[1] for g in geo],
        window_dilation=(1,) * lead + d,
    )


def _max_pool_patches(x, k, s, d, geo) -> jax.Array:
    """Dilated max pooling as an argmax over the k_h*k_w strided window taps.

    jax has no VJP for a dilated ``reduce_window`` max; taking the first
    maximum in row-major window order also routes the gradient of ties
    (common with binary spikes) to the same element torch picks.
    """
    (oh, (ph, hh)), (ow, (pw, hw)) = geo
    pad = [(0, 0)] * (x.ndim - 2) + [(ph, hh), (pw, hw)]
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    taps = []
    for i in range(k[0]):
        for j in range(k[1]):
            r0, c0 = i * d[0], j * d[1]
            taps.append(
                xp[..., r0 : r0 + (oh - 1) * s[0] + 1 : s[0], c0 : c0 + (ow - 1) * s[1] + 1 : s[1]]
            )
    patches = jnp.stack(taps, axis=-1)
    first = jnp.argmax(patches, axis=-1)
    return jnp.take_along_axis(patches, first[..., None], axis=-1)[..., 0]


def _divisor(size: int, k: int, s: int, p: int, out: int, include_pad: bool) -> np.ndarray:
    """The per-output-position element count torch's avg_pool2d divides by (one axis)."""
    div = np.empty(out, np.int64)
    for o in range(out):
        start = o * s - p
        end = min(start + k, size + p)
        if include_pad:
            div[o] = end - start
        else:
            div[o] = min(end, size) - max(start, 0)
    return div


def avg_pool2d(
    x,
    kernel,
    stride,
    padding,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> jax.Array:
    """torch avg_pool2d: window sums over zero padding divided by torch's exact divisor."""
    k, s, p, _d, geo = _pool_params(x, kernel, stride, padding, 1, ceil_mode)
    lead = x.ndim - 2
    total = lax.reduce_window(
        x,
        0.0,
        lax.add,
        (1,) * lead + k,
        (1,) * lead + s,
        [(0, 0)] * lead + [g[1] for g in geo],
    )
    if divisor_override:
        return total / float(divisor_override)
    dh = _divisor(x.shape[-2], k[0], s[0], p[0], geo[0][0], count_include_pad)
    dw = _divisor(x.shape[-1], k[1], s[1], p[1], geo[1][0], count_include_pad)
    div = (dh[:, None] * dw[None, :]).astype(np.float32)
    return total / jnp.asarray(div)


def adaptive_avg_pool2d(x: jax.Array, output_size) -> jax.Array:
    """torch adaptive_avg_pool2d: window i spans [floor(i*n/o), ceil((i+1)*n/o)), sum then divide."""
    size = output_size if isinstance(output_size, (list, tuple)) else (output_size, output_size)
    h, w = x.shape[-2], x.shape[-1]
    oh = h if size[0] is None else int(size[0])
    ow = w if size[1] is None else int(size[1])
    if h % oh == 0 and w % ow == 0:
        kh, kw = h // oh, w // ow
        return avg_pool2d(x, (kh, kw), (kh, kw), 0)
    ah, ch = _adaptive_matrix(h, oh)
    aw, cw = _adaptive_matrix(w, ow)
    y = jnp.einsum("...hw,oh,pw->...op", x, ah, aw, precision=HIGHEST)
    return y / jnp.asarray(np.outer(ch, cw).astype(np.float32))


def _adaptive_matrix(n: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.zeros((out, n), np.float32)
    counts = np.zeros(out, np.int64)
    for i in range(out):
        start = (i * n) // out
        end = -(-((i + 1) * n) // out)
        m[i, start:end] = 1.0
        counts[i] = end - start
    return m, counts


def voting(x: jax.Array, voting_size: int) -> jax.Array:
    """SpikingJelly VotingLayer: avg_pool1d over the last dim, kernel = stride = voting_size."""
    n = x.shape[-1] // voting_size
    y = x[..., : n * voting_size].reshape(x.shape[:-1] + (n, voting_size))
    return jnp.sum(y, axis=-1) / float(voting_size)
