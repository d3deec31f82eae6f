"""Time-parallel neuron layers for long sequences with few neurons: chunks of time run at once.

Which neuron forms can be parallelised over time, and how exactly?

- **Forward, hard reset, spiking output** (SpikingJelly IF/LIF/PLIF with
  ``v_reset``): exactly (fp32 bit for bit). A step that fires sets the
  membrane to ``v_reset`` whatever came before, so a chunk of steps started
  from a *guessed* membrane is exactly right from the first step at which it
  and the true run both fire. snncc runs all chunks at once from the guess,
  then one sequential pass per neuron re-runs each chunk only up to that merge
  step (``templates/cuda/neuron_chunked.cu.j2``). Typical inputs fire within a
  few steps, so the sequential part is a few steps per chunk instead of T.
- **Forward, soft reset of a leaky neuron** (LIF/PLIF subtracting the
  threshold): exactly too. A wrong start is not forgotten at once, but it
  decays by ``1 - 1/tau`` a step until rounding makes the guessed and the
  true membranes the same fp32 bits; from that step on the runs are
  identical. The guessed run stores its membrane every
  :data:`CHECKPOINT_EVERY` steps, the fix-up stops at the first checkpoint
  whose bits it reproduces, and :func:`plan_chunks` makes chunks about four
  times as long as :func:`merge_steps` expects that to take (tau = 2: about
  40 steps), or does not split when the decay is too slow.
- **Not split:** IF with a soft reset (no leak: a wrong start never decays),
  no-reset neurons and membrane outputs (LI readouts), layers with a fused
  epilogue (the chunk kernels are the bare form's), the snnTorch / Norse
  form kernels and recurrent groups. A parallel scan of the linear part
  (``v[t] = a v[t-1] + b x[t]``) would re-associate the fp32 sums and move
  spikes near the threshold, so snncc does not scan; these run one thread per
  neuron over all T, with a launch configuration that spreads the few
  threads over every SM.
- **Backward** of the chunked layers (training): the reverse loop is affine
  in the membrane gradient once the forward values are fixed, so chunks run
  in parallel from a zero gradient, one sequential pass per neuron composes
  the chunks' maps, and a second parallel pass reruns every chunk from its
  true entering gradient (``templates/cuda/neuron_chunked_backward.cu.j2``).
  The last two chunks are bit for bit the plain kernel's; elsewhere the
  composition's rounding (done in double, a few fp32 ulps) stays well inside
  the 1e-4 gradient tolerance. The chunked forward saves what this needs:
  ``h[t]`` (or, with ``recompute``, only the input and the true membrane
  entering each chunk, from which each chunk recomputes its ``h``).

The chunked path is taken when a layer has too few neurons to fill the GPU
and enough steps to split (see :func:`plan_chunks`), or whenever the
``time_chunks`` option forces a chunk length, in inference and in training.
Prologue steps (fused scale/add) are applied with torch first -- the same
single-rounding ops, differentiated by torch's autograd -- so the chunk
kernels are those of the bare form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from snncc.backends.kernels import (
    PLIF_CHARGES,
    SJ_CHARGES,
    neuron_kernel_info,
    neuron_view,
    render_neuron_kernels,
    render_template,
)
from snncc.errors import UnsupportedError
from snncc.ir.neuron import NeuronSpec

Tensor = torch.Tensor

_TEMPLATE = "neuron_chunked.cu.j2"
_BACKWARD_TEMPLATE = "neuron_chunked_backward.cu.j2"
#: a chunk shorter than this is not worth a thread
MIN_CHUNK = 16


#: a soft-reset guess is compared with the true run every this many steps
CHECKPOINT_EVERY = 8


def chunkable(spec: NeuronSpec, epilogue: list) -> bool:
    """Whether a layer's forward can be split over time exactly (see the module docstring).

    SpikingJelly-style spiking forms without an epilogue, with a hard reset
    (v_reset not -0.0) or a soft reset and a leak (IF with a soft reset never
    forgets a wrong start). snnTorch's and Norse's forms are not chunked: their
    kernels are another template family, and Norse's synaptic current is not
    cleared by a reset.
    """
    if spec.charge not in SJ_CHARGES or not spec.spiking or epilogue:
        return False
    if spec.reset == "hard":
        vr = float(spec.v_reset)
        return not (vr == 0.0 and math.copysign(1.0, vr) < 0)
    return spec.reset == "subtract" and spec.charge != "sj_if"


def merge_steps(spec: NeuronSpec, k: float | None = None) -> int | None:
    """About how many steps a guessed start takes to merge with the true run; None: never.

    Hard reset: the first common spike, a few steps: 0 (no constraint). Soft
    reset: the start's error shrinks by the decay ``d`` (1 - 1/tau, PLIF
    1 - k) a step until it is under an fp32 ulp, ``24 / log2(1/|d|)`` steps; the
    estimate adds a third for rounding luck and one checkpoint interval
    (measured for LIF, input U[0, 2): tau 2 median 23, 99th percentile 33;
    tau 4: 62 / 124).
    """
    if spec.reset == "hard":
        return 0
    decay = 1.0 - (float(k) if spec.charge in PLIF_CHARGES else 1.0 / float(spec.tau))
    if not abs(decay) < 1.0:  # no leak, or tau <= 1/2 (the error grows), or NaN
        return None
    if decay == 0.0:
        return CHECKPOINT_EVERY
    return math.ceil(32.0 / math.log2(1.0 / abs(decay))) + CHECKPOINT_EVERY


def plan_chunks(
    T: int, N: int, sm_count: int, forced: int | None = None, merge: int | None = 0
) -> int | None:
    """Chunk length L for a [T, N] layer, or None to run the plain kernel.

    Chunks are worth it when one thread per neuron leaves the GPU idle: fewer
    than 512 neurons per SM. Then enough chunks to give every SM about 2048
    threads, each at least :data:`MIN_CHUNK` steps long and four times the
    steps a guess takes to merge (``merge``, :func:`merge_steps`; None: it
    never does), so the sequential fix-up stays a small part of each chunk.
    """
    if T < 1:
        return None
    if forced is not None:
        return max(1, min(int(forced), T))
    if merge is None:
        return None
    min_len = max(MIN_CHUNK, 4 * merge)
    if N >= 512 * sm_count or T < 4 * min_len:
        return None
    chunks = min(math.ceil(2048 * sm_count / N), T // min_len)
    if chunks < 4:
        return None
    return math.ceil(T / chunks)


#: what both chunk-parallel backward kernels read first, in order
_BACKWARD_INPUTS: tuple[tuple[str, str], ...] = (
    ("gy", "const float*"),
    ("gy_ts", "int64"),
    ("gy_ns", "int64"),
    ("gv_last", "const float*"),
    ("h_seq", "const float*"),
    ("x", "const float*"),
    ("v_start", "const float*"),
    ("k", "float"),
)
#: kernel argument signatures (name, C type), by kernel suffix; see the templates
SIGNATURES: dict[str, tuple[tuple[str, str], ...]] = {
    "spec": (
        ("x", "const float*"),
        ("v0", "const float*"),
        ("k", "float"),
        ("out", "float*"),
        ("v_end", "float*"),
        ("h_seq", "float*"),
        ("v_ck", "float*"),
        ("T", "int"),
        ("L", "int"),
        ("C", "int"),
        ("K", "int"),
        ("N", "int64"),
    ),
    "fix": (
        ("x", "const float*"),
        ("v0", "const float*"),
        ("k", "float"),
        ("out", "float*"),
        ("v_end", "const float*"),
        ("v_last", "float*"),
        ("h_seq", "float*"),
        ("v_start", "float*"),
        ("v_ck", "const float*"),
        ("T", "int"),
        ("L", "int"),
        ("C", "int"),
        ("K", "int"),
        ("N", "int64"),
    ),
    "bpart": (
        *_BACKWARD_INPUTS,
        ("gx", "float*"),
        ("alpha", "double*"),
        ("beta", "float*"),
        ("T", "int"),
        ("L", "int"),
        ("C", "int"),
        ("N", "int64"),
    ),
    "bcarry": (
        ("alpha", "const double*"),
        ("beta", "const float*"),
        ("g_in", "float*"),
        ("C", "int"),
        ("N", "int64"),
    ),
    "bapply": (
        *_BACKWARD_INPUTS,
        ("g_in", "const float*"),
        ("gx", "float*"),
        ("gv0", "float*"),
        ("gk", "double*"),
        ("T", "int"),
        ("L", "int"),
        ("C", "int"),
        ("N", "int64"),
    ),
}
#: how many threads each kernel runs: one per (chunk, neuron) or one per neuron
_THREADS = {"spec": "CN", "fix": "N", "bpart": "CN", "bcarry": "N", "bapply": "CN"}


def render_chunked(
    spec: NeuronSpec,
    target: str = "cuda",
    out_dtype: str = "float32",
    *,
    backward: bool = False,
    recompute: bool = False,
) -> tuple[str, str, str, str]:
    """(unit, chunk kernels, kernel name prefix, unit tag) of one form.

    ``unit + chunk kernels`` is a self-contained translation unit: the bare
    form's unit, then the chunk kernels that call its step functions (the
    forward pair, and with ``backward`` the three backward kernels; those
    recompute ``h`` per chunk when ``recompute``).

    The unit comes from :func:`snncc.backends.kernels.render_neuron_kernels`
    (so the step functions are the shared templates'), rendered for
    ``target`` ("cuda" or "cpu": the tests run the same text on the host).
    """
    if not chunkable(spec, []):
        raise UnsupportedError(
            f"neuron {spec.summary()} cannot be chunked over time exactly: only "
            "SpikingJelly-style spiking neurons with a hard reset (v_reset not -0.0) or a "
            "leaky soft reset can"
        )
    if backward and out_dtype != "float32":
        raise UnsupportedError("the time-chunked backward needs float32 spikes (training)")
    options = {"spike_dtype": out_dtype}
    info = neuron_kernel_info(spec, (), (), options)
    unit = render_neuron_kernels(spec, (), (), target, options)
    suffix = ("b" if backward else "") + ("r" if recompute else "")
    name = f"snncc_chunk_{info.tag}" + (f"_{suffix}" if suffix else "")
    context = {
        "target": target,
        "tag": info.tag,
        "name": name,
        "n": neuron_view(spec),
        "out_type": "unsigned char" if out_dtype == "uint8" else "float",
        "recompute": recompute,
    }
    chunk = render_template(_TEMPLATE, **context)
    if backward:
        chunk += "\n" + render_template(_BACKWARD_TEMPLATE, **context)
    return unit, chunk, name, info.tag


class ChunkedNeuron:
    """The time-chunked kernels of one neuron form on the GPU (compiled on first use).

    ``backward``: also the chunked backward (training; float32 spikes only),
    recomputing ``h`` per chunk when ``recompute``.
    """

    def __init__(
        self,
        spec: NeuronSpec,
        out_dtype: str,
        cache_dir: str | None,
        *,
        backward: bool = False,
        recompute: bool = False,
    ) -> None:
        self.spec = spec
        self.out_dtype = out_dtype
        self.backward_kernels = backward
        self.recompute = recompute
        self.unit, self.kernels_text, self.name, self.tag = render_chunked(
            spec, "cuda", out_dtype, backward=backward, recompute=recompute
        )
        #: self-contained: what is compiled
        self.source = f"{self.unit}\n{self.kernels_text}"
        self.cache_dir = cache_dir
        self.learns_k = spec.charge in PLIF_CHARGES
        self._fns: dict[tuple[str, int], Any] = {}

    def _fn(self, which: str, device: torch.device) -> Any:
        from snncc.backends.cuda import runtime

        key = (which, device.index)
        if key not in self._fns:
            self._fns[key] = runtime.load_function(
                self.source, f"{self.name}_{which}", device, self.cache_dir
            )
        return self._fns[key]

    def _launch(self, which: str, values: dict[str, Any], block: int | None) -> None:
        from snncc.backends.cuda import runtime

        dev = values["x"].device if values.get("x") is not None else values["gy"].device
        n = values["N"] * (values["C"] if _THREADS[which] == "CN" else 1)
        args = runtime.pack_args(SIGNATURES[which], values)
        runtime.launch(self._fn(which, dev), n, args, dev, block)

    def forward(
        self,
        x: Tensor,
        v0: Tensor | None,
        k: float,
        L: int,
        block: int | None = None,
        *,
        training: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """x [T, N] fp32 contiguous (prologue applied) -> (out [T, N], v_last [N], h_seq, v_start).

        ``training`` also returns what the chunked backward reads: ``h_seq``
        [T, N] (None with recompute) and ``v_start`` [C, N].
        """
        T, N = x.shape
        dev = x.device
        C = math.ceil(T / L)
        K = CHECKPOINT_EVERY
        f32 = {"dtype": torch.float32, "device": dev}
        soft = self.spec.reset != "hard"
        out_dtype = torch.uint8 if self.out_dtype == "uint8" else torch.float32
        values = {
            "x": x,
            "v0": v0,
            "k": k,
            "out": torch.empty((T, N), dtype=out_dtype, device=dev),
            "v_end": torch.empty((C * N,), **f32),
            "v_last": torch.empty((N,), **f32),
            "h_seq": torch.empty((T, N), **f32) if training and not self.recompute else None,
            "v_start": torch.empty((C * N,), **f32) if training else None,
            # soft reset: the guessed membrane at every K-th step and each chunk's end
            "v_ck": torch.empty((C * math.ceil(L / K) * N,), **f32) if soft else None,
            "T": T,
            "L": L,
            "C": C,
            "K": K,
            "N": N,
        }
        self._launch("spec", values, block)
        self._launch("fix", values, block)
        return values["out"], values["v_last"], values["h_seq"], values["v_start"]

    def backward(
        self,
        gy: Tensor,
        gv_last: Tensor | None,
        h_seq: Tensor | None,
        x: Tensor | None,
        v_start: Tensor,
        k: float,
        L: int,
        block: int | None = None,
        *,
        want_v0: bool,
        want_k: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(gx [T, N], gv0 [N] or None, d loss / d k as a float64 [1] or None)."""
        if not self.backward_kernels:
            raise UnsupportedError("these time-chunked kernels were rendered forward-only")
        T, N = gy.shape
        dev = gy.device
        C = math.ceil(T / L)
        f32 = {"dtype": torch.float32, "device": dev}
        values = {
            "gy": gy,  # read in place by its strides (a broadcast gradient is not materialised)
            "gy_ts": gy.stride(0),
            "gy_ns": gy.stride(1),
            "gv_last": gv_last,
            "h_seq": h_seq,
            "x": x,
            "v_start": v_start,
            "k": k,
            "gx": torch.empty((T, N), **f32),
            "alpha": torch.empty((C * N,), dtype=torch.float64, device=dev),
            "beta": torch.empty((C * N,), **f32),
            "g_in": torch.empty((C * N,), **f32),
            "gv0": torch.empty((N,), **f32) if want_v0 else None,
            # one double, accumulated atomically by every thread (zeroed here)
            "gk": torch.zeros((1,), dtype=torch.float64, device=dev)
            if want_k and self.learns_k
            else None,
            "T": T,
            "L": L,
            "C": C,
            "N": N,
        }
        for which in ("bpart", "bcarry", "bapply"):
            self._launch(which, values, block)
        return values["gx"], values["gv0"], values["gk"]


class ChunkedNeuronFunction(torch.autograd.Function):
    """Autograd over (v0, k, x) -> (out, v_last) through the chunked kernels ([T, N] / [N])."""

    @staticmethod
    def forward(ctx, run: ChunkedNeuron, k_value: float, L: int, block, v0, k, x):  # type: ignore[override]
        out, v_last, h_seq, v_start = run.forward(x, v0, k_value, L, block, training=True)
        ctx.set_materialize_grads(False)  # an output without a gradient arrives as None
        ctx.run, ctx.k_value, ctx.L, ctx.block = run, k_value, L, block
        ctx.k_shape = None if k is None else k.shape
        ctx.has_v0 = v0 is not None
        ctx.tn = tuple(x.shape)
        keep_x = run.recompute or run.spec.charge == "sj_plif_decay_input"
        ctx.save_for_backward(h_seq, x if keep_x else None, v_start)
        return out, v_last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_vlast):  # type: ignore[override]
        h_seq, x, v_start = ctx.saved_tensors
        need = ctx.needs_input_grad  # (run, k_value, L, block, v0, k, x)
        gy = (
            torch.zeros((), dtype=torch.float32, device=v_start.device).expand(ctx.tn)
            if g_out is None
            else g_out.float()
        )
        gv_last = None if g_vlast is None else g_vlast.float().contiguous()
        gx, gv0, gk = ctx.run.backward(
            gy,
            gv_last,
            h_seq,
            x,
            v_start,
            ctx.k_value,
            ctx.L,
            ctx.block,
            want_v0=bool(need[4]) and ctx.has_v0,
            want_k=bool(need[5]),
        )
        gk_t = None
        if need[5] and gk is not None:  # summed in double, one rounding to fp32
            gk_t = gk.sum().to(torch.float32).expand(ctx.k_shape).clone()
        return (None, None, None, None, gv0, gk_t, gx)
