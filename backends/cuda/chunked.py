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

from snncc.backends.cpu.autograd import flat_quantity
from snncc.backends.kernels import context, plan, render_neuron_kernels, render_template
from snncc.backends.kernels.lower_c import f32_literal
from snncc.errors import UnsupportedError
from snncc.ir.neuron import FORMS, NeuronSpec

Tensor = torch.Tensor

_TEMPLATE = "neuron_chunked.cu.j2"
_BACKWARD_TEMPLATE = "neuron_chunked_backward.cu.j2"
#: a chunk shorter than this is not worth a thread
MIN_CHUNK = 16


#: a soft-reset guess is compared with the true run every this many steps
CHECKPOINT_EVERY = 8


def chunkable(spec: NeuronSpec, epilogue: list) -> bool:
    """Whether a layer's forward can be split over time exactly (see the module docstring).

    A spiking form whose definition declares it (``FormDef.time_parallel``:
    ``"hard"`` -- a hard reset erases the past; ``"hard_or_leak"`` -- also a
    soft reset, whose charge forgets a wrong start), one membrane and no
    epilogue; a hard reset needs v_reset not -0.0. IF with a soft reset never
    forgets a wrong start; snnTorch's and Norse's forms reset from the previous
    membrane or keep a synaptic current a reset does not clear.
    """
    form = FORMS.get(spec.charge)
    if form is None or not form.time_parallel or not spec.spiking or epilogue:
        return False
    if form.state != ("v",) or form.ports != ("x",):
        return False
    if spec.reset == "hard":
        vr = float(spec.v_reset)
        return not (vr == 0.0 and math.copysign(1.0, vr) < 0)
    return spec.reset == "subtract" and form.time_parallel == "hard_or_leak"


def merge_steps(spec: NeuronSpec, quantities: dict[str, float] | None = None) -> int | None:
    """About how many steps a guessed start takes to merge with the true run; None: never.

    Hard reset: the first common spike, a few steps: 0 (no constraint). Soft
    reset: the start's error shrinks by the decay ``d`` a step (the derivative
    of the next membrane in the previous one below threshold: 1 - 1/tau for
    LIF, 1 - k for PLIF, read off the form's own step) until it is under an
    fp32 ulp, ``24 / log2(1/|d|)`` steps; the estimate adds a third for
    rounding luck and one checkpoint interval (measured for LIF, input U[0, 2):
    tau 2 median 23, 99th percentile 33; tau 4: 62 / 124).
    """
    if spec.reset == "hard":
        return 0
    decay = _decay(spec, quantities or {})
    if not abs(decay) < 1.0:  # no leak, or a wrong start grows, or NaN
        return None
    if decay == 0.0:
        return CHECKPOINT_EVERY
    return math.ceil(32.0 / math.log2(1.0 / abs(decay))) + CHECKPOINT_EVERY


def _decay(spec: NeuronSpec, quantities: dict[str, float]) -> float:
    """d v[t] / d v[t-1] of the form's step at rest (no input, no spike), in double."""
    from snncc.backends.reference.lowering import evaluate
    from snncc.ir.neurons import build

    g = build(spec)
    nv = g.next_state["v"]
    if not hasattr(nv, "i"):
        return 0.0
    th = float(spec.v_threshold) if math.isfinite(spec.v_threshold) else 0.0
    below = torch.tensor([th - 10.0, th - 10.25], dtype=torch.float64)  # far from firing
    env = {"s:v": below, "x:x": 0.0}
    env.update({f"q:{q}": float(quantities.get(q, 0.5)) for q in g.quantities})
    v = evaluate(g.step, [nv.i], env)[nv.i]
    return float((v[0] - v[1]) / 0.25)


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


#: how many threads each kernel runs: one per (chunk, neuron) or one per neuron
_THREADS = {"spec": "CN", "fix": "N", "bpart": "CN", "bcarry": "N", "bapply": "CN"}


def signatures(quantities: tuple[str, ...]) -> dict[str, tuple[tuple[str, str], ...]]:
    """Kernel argument signatures (name, C type) by kernel suffix; see the templates."""
    par = tuple(a for q in quantities for a in ((f"p_{q}", "const float*"), (f"st_{q}", "int64")))
    back_in = (
        ("gy", "const float*"),
        ("gy_ts", "int64"),
        ("gy_ns", "int64"),
        ("gv_last", "const float*"),
        ("h_seq", "const float*"),
        ("x", "const float*"),
        ("v_start", "const float*"),
        *par,
    )
    return {
        "spec": (
            ("x", "const float*"),
            ("v0", "const float*"),
            *par,
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
            *par,
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
            *back_in,
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
            *back_in,
            ("g_in", "const float*"),
            ("gx", "float*"),
            ("gv0", "float*"),
            *((f"gp_{q}", "double*") for q in quantities),
            ("T", "int"),
            ("L", "int"),
            ("C", "int"),
            ("N", "int64"),
        ),
    }


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
    form's unit (its step functions, from the shared templates), then the
    chunk kernels that call them (the forward pair, and with ``backward`` the
    three backward kernels; those recompute the cuts per chunk when
    ``recompute``), rendered for ``target`` ("cuda" or "cpu": the tests run the
    same text on the host).
    """
    if not chunkable(spec, []):
        raise UnsupportedError(
            f"neuron {spec.summary()} cannot be chunked over time exactly: only "
            "one-membrane spiking forms with a hard reset (v_reset not -0.0), or a leaky soft "
            "reset, whose definition allows it can"
        )
    if backward and out_dtype != "float32":
        raise UnsupportedError("the time-chunked backward needs float32 spikes (training)")
    options = {"spike_dtype": out_dtype}
    p = plan(spec, (), (), options)
    if p.info.save != "cut" or not p.graph.binary_output:
        raise UnsupportedError(
            f"neuron {spec.summary()}: the time-chunked kernels need a saved cut and 0/1 spikes"
        )
    unit = render_neuron_kernels(spec, (), (), target, options)
    suffix = ("b" if backward else "") + ("r" if recompute else "")
    name = f"snncc_chunk_{p.info.tag}" + (f"_{suffix}" if suffix else "")
    ctx = context(p, target)
    ctx.update(
        name=name,
        out_type="unsigned char" if out_dtype == "uint8" else "float",
        recompute=recompute,
        soft=spec.reset != "hard",
        # a later chunk starts from the reset value (0.0 for a soft reset)
        guess=f32_literal(0.0 if spec.v_reset is None else float(spec.v_reset)),
        reads_x="x" in p.vjp_reads or recompute,
    )
    chunk = render_template(_TEMPLATE, **ctx)
    if backward:
        chunk += "\n" + render_template(_BACKWARD_TEMPLATE, **ctx)
    return unit, chunk, name, p.info.tag


class ChunkedNeuron:
    """The time-chunked kernels of one neuron form on the GPU (compiled on first use).

    ``backward``: also the chunked backward (training; float32 spikes only),
    recomputing the cuts per chunk when ``recompute``.
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
        p = plan(spec, (), (), {"spike_dtype": out_dtype})
        #: the form's quantities (kernel arguments), in order
        self.quantities: tuple[str, ...] = p.info.param_args
        #: the backward reads x (the derivative needs it, or recompute re-runs the forward)
        self.reads_x = "x" in p.vjp_reads or recompute
        self.signatures = signatures(self.quantities)
        #: self-contained: what is compiled
        self.source = f"{self.unit}\n{self.kernels_text}"
        self.cache_dir = cache_dir
        self._functions: Any = None  # runtime.KernelFunctions, made on the first launch

    def _fn(self, which: str, device: torch.device) -> Any:
        from snncc.backends.cuda import runtime

        if self._functions is None:
            self._functions = runtime.KernelFunctions(self.source, self.cache_dir)
        return self._functions.get(f"{self.name}_{which}", device)

    def _launch(self, which: str, values: dict[str, Any], block: int | None) -> None:
        from snncc.backends.cuda import runtime

        dev = values["x"].device if values.get("x") is not None else values["gy"].device
        n = values["N"] * (values["C"] if _THREADS[which] == "CN" else 1)
        args = runtime.pack_args(self.signatures[which], values)
        runtime.launch(self._fn(which, dev), n, args, dev, block)

    def _quantity_values(self, quantities: dict[str, Tensor], N: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for q in self.quantities:
            p, stride = flat_quantity(quantities[q], (N,), q)
            values.update({f"p_{q}": p, f"st_{q}": stride})
        return values

    def forward(
        self,
        x: Tensor,
        v0: Tensor | None,
        quantities: dict[str, Tensor],
        L: int,
        block: int | None = None,
        *,
        training: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """x [T, N] fp32 contiguous (prologue applied) -> (out [T, N], v_last [N], h_seq, v_start).

        ``quantities``: the form's derived quantities (one value or one per
        neuron). ``training`` also returns what the chunked backward reads:
        ``h_seq`` [T, N] (None with recompute) and ``v_start`` [C, N].
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
            **self._quantity_values(quantities, N),
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
        quantities: dict[str, Tensor],
        L: int,
        block: int | None = None,
        *,
        want_v0: bool,
        want: tuple[str, ...] = (),
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """(gx [T, N], gv0 [N] or None, each wanted quantity's gradient as float64 [C*N] partials)."""
        if not self.backward_kernels:
            raise UnsupportedError("these time-chunked kernels were rendered forward-only")
        T, N = gy.shape
        dev = gy.device
        C = math.ceil(T / L)
        f32 = {"dtype": torch.float32, "device": dev}
        gps = {
            q: torch.empty((C * N,), dtype=torch.float64, device=dev) if q in want else None
            for q in self.quantities
        }
        values = {
            "gy": gy,  # read in place by its strides (a broadcast gradient is not materialised)
            "gy_ts": gy.stride(0),
            "gy_ns": gy.stride(1),
            "gv_last": gv_last,
            "h_seq": h_seq,
            "x": x,
            "v_start": v_start,
            **self._quantity_values(quantities, N),
            "gx": torch.empty((T, N), **f32),
            "alpha": torch.empty((C * N,), dtype=torch.float64, device=dev),
            "beta": torch.empty((C * N,), **f32),
            "g_in": torch.empty((C * N,), **f32),
            "gv0": torch.empty((N,), **f32) if want_v0 else None,
            **{f"gp_{q}": g for q, g in gps.items()},
            "T": T,
            "L": L,
            "C": C,
            "N": N,
        }
        for which in ("bpart", "bcarry", "bapply"):
            self._launch(which, values, block)
        return values["gx"], values["gv0"], {q: g for q, g in gps.items() if g is not None}


class ChunkedNeuronFunction(torch.autograd.Function):
    """Autograd over (v0, x, *quantities) -> (out, v_last) through the chunked kernels ([T, N])."""

    @staticmethod
    def forward(ctx, run: ChunkedNeuron, L: int, block, v0, x, *qs):  # type: ignore[override]
        quantities = dict(zip(run.quantities, qs))
        out, v_last, h_seq, v_start = run.forward(x, v0, quantities, L, block, training=True)
        ctx.set_materialize_grads(False)  # an output without a gradient arrives as None
        ctx.run, ctx.L, ctx.block = run, L, block
        ctx.q_meta = [(q.shape, q.dtype) for q in qs]
        ctx.has_v0 = v0 is not None
        ctx.tn = tuple(x.shape)
        ctx.save_for_backward(h_seq, x if run.reads_x else None, v_start, *qs)
        return out, v_last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_vlast):  # type: ignore[override]
        h_seq, x, v_start, *qs = ctx.saved_tensors
        run: ChunkedNeuron = ctx.run
        need = ctx.needs_input_grad  # (run, L, block, v0, x, *qs)
        gy = (
            torch.zeros((), dtype=torch.float32, device=v_start.device).expand(ctx.tn)
            if g_out is None
            else g_out.float()
        )
        gv_last = None if g_vlast is None else g_vlast.float().contiguous()
        want = tuple(q for q, w in zip(run.quantities, need[5:]) if w)
        gx, gv0, gps = run.backward(
            gy,
            gv_last,
            h_seq,
            x,
            v_start,
            dict(zip(run.quantities, qs)),
            ctx.L,
            ctx.block,
            want_v0=bool(need[3]) and ctx.has_v0,
            want=want,
        )
        g_qs = []
        for q, (shape, dtype) in zip(run.quantities, ctx.q_meta):
            g = gps.get(q)
            if g is None:
                g_qs.append(None)
                continue
            g = g.reshape(-1, ctx.tn[1]).sum(0)  # the chunks' partial sums, per neuron (double)
            g = g.sum().reshape(shape) if math.prod(shape) == 1 else g.sum_to_size(shape)
            g_qs.append(g.to(dtype))
        return (None, None, None, gv0, gx, *g_qs)
