"""The small runtime every generated jax module imports (as ``rt``).

Why a runtime at all: the generated module should read like the model (one
line per op, one scan per neuron group), so the few pieces that are the same
for every model and fiddly to get exactly right live here once: surrogate
spike functions whose gradients equal SpikingJelly's autograd bit for bit in
formula, torch-exact pooling windows (padding, ceil_mode, divisors), conv
padding, and the time-major reshapes.

Everything here is pure jax, jit-able and differentiable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from snncc.errors import ShapeError, UnsupportedError

HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------- spikes
def _sigmoid(g, x, alpha):
    s = jax.nn.sigmoid(alpha * x)
    return g * ((1 - s) * s * alpha)


def _atan(g, x, alpha):
    z = x * (math.pi / 2 * alpha)
    return g * ((alpha / 2) / (1 + z * z))


def _piecewise_quadratic(g, x, alpha):
    return g * jnp.maximum(alpha - alpha * alpha * jnp.abs(x), 0.0)


def _piecewise_exp(g, x, alpha):
    return g * ((alpha / 2) * jnp.exp(-alpha * jnp.abs(x)))


def _soft_sign(g, x, alpha):
    z = 1 / alpha + jnp.abs(x)
    return g * (1 / (2 * alpha * z * z))


def _sj_superspike(g, x, alpha):
    z = 1 + jnp.abs(x)
    return g * (alpha / (z * z))


def _erf(g, x, alpha):
    z = alpha * x
    return g * ((alpha / math.sqrt(math.pi)) * jnp.exp(-z * z))


def _rect(g, x, alpha):
    return alpha * (jnp.abs(x) < 0.5 / alpha).astype(x.dtype) * g


def _fast_sigmoid(g, x, alpha):
    return g / (alpha * jnp.abs(x) + 1.0) ** 2


def _superspike(g, x, alpha):
    # Norse 1.1's SuperSpike.backward never reads alpha; copied as installed.
    return g / (jnp.abs(x) + 1.0) ** 2


def _triangle(g, x, alpha):
    return g * alpha * jnp.maximum(1 - jnp.abs(x), 0.0)


def _snntorch_sigmoid(g, x, alpha):
    # snnTorch 1.0 Sigmoid.backward: grad * slope * exp(-slope x) / ((exp(-slope x) + 1) ** 2)
    return g * alpha * jnp.exp(-alpha * x) / ((jnp.exp(-alpha * x) + 1) ** 2)


def _straight_through(g, x, alpha):
    return g


def _snntorch_heaviside(g, x, alpha):
    # snnTorch 1.0 Heaviside.backward: grad_output * out, out = (x > 0).float()
    return g * (x > 0).astype(g.dtype)


def _snntorch_triangular(g, x, alpha):
    # snnTorch 1.0 Triangular.backward: grad = grad_output * threshold; grad[x >= 0] *= -1
    grad = g * alpha
    return jnp.where(x >= 0, -grad, grad)


def _norse_tanh(g, x, alpha):
    # Norse 1.1 HeaviTanh.backward: dy * (1 - (x * k).tanh().pow(2))
    t = jnp.tanh(x * alpha)
    return g * (1 - t * t)


def _no_grad(g, x, alpha):
    return jnp.zeros_like(g)


#: surrogate name -> backward(grad_output, x, alpha); each formula copies
#: snncc.surrogate (itself the source framework's CPU expression) operation
#: by operation, so gradients round the same way as the torch side.
_GRADS = {
    "sigmoid": _sigmoid,
    "atan": _atan,
    "piecewise_quadratic": _piecewise_quadratic,
    "piecewise_exp": _piecewise_exp,
    "soft_sign": _soft_sign,
    "sj_superspike": _sj_superspike,
    "erf": _erf,
    "rect": _rect,
    "fast_sigmoid": _fast_sigmoid,
    "superspike": _superspike,
    "triangle": _triangle,
    "snntorch_sigmoid": _snntorch_sigmoid,
    "straight_through": _straight_through,
    "snntorch_heaviside": _snntorch_heaviside,
    "snntorch_triangular": _snntorch_triangular,
    "norse_tanh": _norse_tanh,
    "no_grad": _no_grad,
}


def _make_spike(strict: bool):
    """A Heaviside spike (``x >= 0``, or ``x > 0`` when strict) with a surrogate backward."""

    @partial(jax.custom_vjp, nondiff_argnums=(1, 2))
    def spike(x: jax.Array, surrogate: str, alpha: float) -> jax.Array:
        hit = x > 0 if strict else x >= 0
        return hit.astype(x.dtype)

    def fwd(x, surrogate, alpha):
        return spike(x, surrogate, alpha), x

    def bwd(surrogate, alpha, x, g):
        return (_GRADS[surrogate](g, x, alpha),)

    spike.defvjp(fwd, bwd)
    return spike


#: ``spike(x, name, alpha)``: forward ``(x >= 0)``, backward the named surrogate.
spike = _make_spike(strict=False)
#: ``spike_gt(x, name, alpha)``: forward ``(x > 0)`` (snnTorch, Norse), same backward.
spike_gt = _make_spike(strict=True)

SURROGATES = tuple(_GRADS)


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


@functools.cache
def torch_clamp_bound_grads() -> tuple[float, float]:
    """The gradient the installed torch's ``x.clamp(0, 1)`` passes back at x == 0 and x == 1.

    Why asked, not written down: torch changed it (2.13 passes the gradient at
    a bound, 2.14 passes 0 there; both pass 1 strictly inside and 0 beyond),
    and the jax backend promises the gradients of the torch model it was
    traced from, whichever torch runs that model.
    """
    import torch

    x = torch.tensor([0.0, 1.0], requires_grad=True)
    x.clamp(0, 1).sum().backward()
    lo, hi = (float(g) for g in x.grad)
    return lo, hi


@jax.custom_jvp
def clamp01(x: jax.Array) -> jax.Array:
    """torch's ``x.clamp(0, 1)`` (snnTorch's beta/alpha), with torch's gradient.

    The gradient is 1 strictly inside, 0 beyond the bounds and, at a bound,
    what the installed torch gives there (:func:`torch_clamp_bound_grads`);
    ``lax.clamp`` alone gives 0 at a bound and ``jnp.clip`` 0.5.
    """
    return lax.clamp(jnp.zeros((), x.dtype), x, jnp.ones((), x.dtype))


@clamp01.defjvp
def _clamp01_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    lo, hi = torch_clamp_bound_grads()
    zero = jnp.zeros_like(dx)
    inside = jnp.where((x > 0) & (x < 1), dx, zero)
    return clamp01(x), jnp.where(x == 0, dx * lo, jnp.where(x == 1, dx * hi, inside))


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
