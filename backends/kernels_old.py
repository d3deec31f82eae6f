"""Render the fused neuron kernels (templates/cuda/*.cu.j2) for CUDA or for the host CPU.

Why one renderer for two targets: the cpu backend exists to run *the same
kernel logic* as the GPU, so the neuron arithmetic is written once, in the
templates, against a small macro layer (``common.cuh.j2``: ``SNNCC_KERNEL``,
``SNNCC_FOR_EACH_NEURON``, ...) and only that layer differs between targets.

Exactness contract (spikes bit for bit with torch eager fp32):

- every operation keeps the order of ``snncc/neurons.py`` (SpikingJelly's);
- constants are rendered as hexadecimal fp32 literals (``0x1.8p+1f``) of
  ``float32(value)``, exactly the value torch uses when it multiplies an fp32
  tensor by a Python scalar (torch casts the scalar to the tensor's dtype);
  :func:`f32_literal` checks the round trip;
- derived tensors (PLIF ``k = sigmoid(w)``) are computed by torch on the host and
  passed as kernel arguments, so the kernels never re-derive them differently;
- the code is compiled without fast-math and without FMA contraction
  (:data:`NVCC_EXACT_FLAGS`, :data:`HOST_EXACT_FLAGS`).

Two kernel families share the macro layer, the fused element-wise steps and
the calling conventions' style:

- SpikingJelly forms (``sj_*``, ``snncc_li``): ``neuron_{step,forward,backward}``
  templates, one membrane ``v``, the backward reads the saved charged membrane
  ``h[t]``;
- snnTorch and Norse forms (:data:`SNNTORCH_NORSE_CHARGES`):
  ``form_{step,forward,backward}`` templates, one or more state variables
  (``v``, ``i``, ``s``: ``snncc.ir.neuron.FORMS``), the ``rec`` input port of
  the recurrent forms, and parameters (snnTorch ``beta``, ``threshold``, ...,
  Norse ``tau_mem_inv``, ...) that are either exact literals (spec constants)
  or per-layer / per-neuron kernel arguments with their own gradients. The
  forward saves each step's incoming state; the backward re-runs that step
  (the same inline function) and applies its vector-Jacobian product, so
  every intermediate is bit-identical to the forward's.

Generated code never contains user strings: kernel names come from a hash of
the (validated) spec, and every value pasted into the source is a number this
module formatted itself or a name from the fixed tables of ``snncc.ir.neuron``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from snncc.errors import UnsupportedError
from snncc.ir.neuron import CHARGE_FORMS, FORMS, NORSE_FORMS, SNNTORCH_FORMS, NeuronSpec

#: flags that keep nvcc / NVRTC from contracting a*b+c into an FMA (which rounds once)
NVCC_EXACT_FLAGS: tuple[str, ...] = ("-fmad=false",)
#: the same for the host compiler (GCC/Clang); never add -ffast-math / -Ofast
HOST_EXACT_FLAGS: tuple[str, ...] = ("-ffp-contract=off", "-fno-fast-math")

TARGETS = ("cuda", "cpu")
#: SpikingJelly-style forms: the ``neuron_*`` templates (one membrane, saved h[t])
SJ_CHARGES = (
    "sj_if",
    "sj_lif_decay_input",
    "sj_lif",
    "sj_plif_decay_input",
    "sj_plif",
    "snncc_li",
)
#: snnTorch and Norse forms: the ``form_*`` templates (several state variables, params)
SNNTORCH_NORSE_CHARGES = (*SNNTORCH_FORMS, *NORSE_FORMS)
#: charge forms the kernels implement (all of snncc.ir.neuron.CHARGE_FORMS)
SUPPORTED_CHARGES = (*SJ_CHARGES, *SNNTORCH_NORSE_CHARGES)
PLIF_CHARGES = ("sj_plif_decay_input", "sj_plif")
TAU_CHARGES = ("sj_lif_decay_input", "sj_lif", "snncc_li")
#: every surrogate of snncc/surrogate.py (tests check the two lists agree)
SUPPORTED_SURROGATES = (
    "sigmoid",
    "atan",
    "piecewise_quadratic",
    "piecewise_exp",
    "soft_sign",
    "sj_superspike",
    "erf",
    "rect",
    "fast_sigmoid",
    "snntorch_sigmoid",
    "straight_through",
    "snntorch_heaviside",
    "snntorch_triangular",
    "superspike",
    "triangle",
    "norse_tanh",
    "no_grad",
)
#: surrogates whose constants divide by alpha (alpha must be > 0 there; others: any finite alpha)
_ALPHA_DIVIDES = ("soft_sign", "rect")
#: renderer options and their defaults
DEFAULT_OPTIONS: dict[str, Any] = {
    # dtype of the output: "float32"; "uint8" (4x less traffic; a spiking output
    # without an epilogue only, so the values are exactly 0/1); "bfloat16" / "float16"
    # (2x less; any output, rounded to nearest even as torch's cast would round it)
    "spike_dtype": "float32",
    # dtype of the input x the forward reads and of its gradient gx the backward
    # writes: "float32", "bfloat16" or "float16" (autocast: the kernel widens on load
    # and rounds gx as torch's cast would; arithmetic stays fp32)
    "x_dtype": "float32",
    # backward recomputes h from x instead of reading the h_seq the forward saved
    "recompute": False,
}
#: bump when the generated code changes meaning, so caches keyed by name invalidate
KERNEL_ABI_VERSION = 2  # 2: gy strides in the backward, 16-bit x / out / gy / gx
#: kernel I/O dtypes -> the C element type the templates declare
C_TYPES = {
    "float32": "float",
    "uint8": "unsigned char",
    "bfloat16": "snncc_bf16",
    "float16": "snncc_f16",
}
#: ... and the pointer type names of NeuronKernelInfo's argument lists
_PTR_TYPES = {
    "float32": "float*",
    "uint8": "uint8*",
    "bfloat16": "snncc_bf16*",
    "float16": "snncc_f16*",
}
#: 16-bit float dtypes the kernels (both families) read (x, gy) and write (out, gx)
HALF_DTYPES = ("bfloat16", "float16")

_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "cuda"


# --------------------------------------------------------------------- literals
def f32_literal(value: float) -> str:
    """An exact C/CUDA fp32 literal for ``float32(value)``, e.g. ``0x1.8p+1f`` for 3.0.

    Hexadecimal so that no decimal-to-binary rounding (and no double rounding
    through double) can change the value; negative values are parenthesised so
    the literal is safe after any operator.
    """
    v = np.float32(value)
    if not np.isfinite(v):
        raise UnsupportedError(f"kernel constant {value!r} is not finite; only finite fp32 values")
    f = float(v)
    if f == 0.0:
        text = "0.0f" if math.copysign(1.0, f) > 0 else "(-0.0f)"
    else:
        mant, exp = f.hex().split("p")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
        text = f"{mant}p{exp}f"
        if f < 0:
            text = f"({text})"
    back = float.fromhex(text.strip("()").rstrip("f"))
    if np.float32(back) != v or back != f:
        raise AssertionError(f"fp32 literal {text} does not round-trip {value!r}")
    return text


# ------------------------------------------------------------------------ views
@dataclass(frozen=True)
class NeuronView:
    """Everything the templates need about a neuron form, pre-formatted (no logic in Jinja)."""

    summary: str
    charge: str
    charge_formula: str
    tau: str
    vr: str  # the charge's reset potential (v_reset, or 0 for soft reset)
    vr_reset: str  # the hard reset value
    th: str
    v_init: str
    reset: str
    detach_reset: bool
    fire_cmp: str
    fires: bool
    spiking: bool
    needs_surrogate: bool
    needs_h: bool
    learns_k: bool
    surrogate: str
    alpha_repr: str
    #: the surrogate's constants as fp32 literals (see :func:`_surrogate_constants`)
    sg: dict[str, str]


@dataclass(frozen=True)
class NeuronKernelInfo:
    """How to call the rendered kernels: names, argument lists, what each needs.

    ``forward_args`` / ``backward_args`` are ``(name, ctype)`` pairs in call
    order; ctype is one of ``"const float*"``, ``"float*"``, ``"uint8*"``,
    ``"const snncc_bf16*"``, ``"snncc_bf16*"``, ``"const snncc_f16*"``,
    ``"snncc_f16*"`` (bfloat16 / float16 as raw 16-bit words),
    ``"double*"``, ``"float"``, ``"int"``, ``"int64"``. Pointer arguments the
    kernel documents as nullable may be passed as NULL. Arrays are contiguous
    and time-major: ``[T, N]`` with N = every per-step element (batch included),
    except the backward kernels' ``gy``, read at ``t * gy_ts + n * gy_ns`` (any
    strides: a broadcast gradient is read in place).

    Target differences (the only ones): ``gk`` is ``double[1]``, zeroed by the
    caller and accumulated with one atomicAdd per warp, on CUDA (launch with
    ``blockDim.x`` a multiple of 32: the warp reduction needs full warps; any
    grid size works, the loop is grid-stride); on the CPU it is ``double[N]``,
    one partial sum per neuron, summed by the host. The form family's
    ``gp_<q>`` are ``double[N]`` (one sum over time per neuron) on both targets.
    """

    tag: str
    forward_name: str
    backward_name: str
    #: input port of each add step, in a<j> order (prologue steps first)
    add_ports: tuple[int, ...]
    #: how many of the add steps belong to the prologue (the rest: epilogue)
    n_prologue_adds: int
    #: dtype of the forward kernel's ``out`` (and the backward's ``gy``): "float32",
    #: "uint8" (inference only), "bfloat16" or "float16"
    out_dtype: str
    #: the backward kernel reads h[t]: the forward must save h_seq unless recompute
    needs_h: bool
    #: the backward recomputes h from x (and the prologue add inputs)
    recompute: bool
    #: the backward reads x and the prologue add inputs
    backward_reads_x: bool
    #: the form has a PLIF decay k (gk is produced)
    learns_k: bool
    forward_args: tuple[tuple[str, str], ...]
    backward_args: tuple[tuple[str, str], ...]
    #: "sj" (``neuron_*`` templates) or "form" (``form_*``: snnTorch / Norse forms)
    family: str = "sj"
    #: state variables in argument order (``<var>0``, ``<var>_seq``, ``<var>_last``, ...)
    state_vars: tuple[str, ...] = ("v",)
    #: the form reads input port 1 (``rec``; its gradient ``grec``)
    has_rec: bool = False
    #: form family: kernel quantities passed as arguments (``p_<q>`` values, ``st_<q>``
    #: 0 for one value / 1 for one per neuron, ``gp_<q>`` per-neuron double gradient sums)
    param_args: tuple[str, ...] = ()
    #: the node param role each entry of ``param_args`` is derived from
    param_roles: tuple[str, ...] = ()
    #: dtype of ``x`` (forward and backward) and ``gx``: "float32", "bfloat16" or "float16"
    x_dtype: str = "float32"


def _as_spec(spec: NeuronSpec | Mapping[str, Any]) -> NeuronSpec:
    return spec if isinstance(spec, NeuronSpec) else NeuronSpec.from_dict(dict(spec))


def _check_spec(spec: NeuronSpec) -> None:
    """Refuse, with one clear message, anything the SJ-family kernels would not run faithfully."""
    if spec.charge not in SJ_CHARGES:
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r} has no fused kernel; supported: "
            f"{', '.join(SUPPORTED_CHARGES)}"
        )
    if spec.fire_from != "updated":
        raise UnsupportedError(
            f"neuron fire_from={spec.fire_from!r} has no fused kernel; only 'updated'"
        )
    if spec.charge in TAU_CHARGES and spec.tau is None:
        raise UnsupportedError(f"neuron charge {spec.charge!r} needs tau, got None")
    if spec.surrogate not in SUPPORTED_SURROGATES and _needs_surrogate(spec):
        raise UnsupportedError(
            f"surrogate {spec.surrogate!r} has no kernel; supported: "
            f"{', '.join(SUPPORTED_SURROGATES)}"
        )
    if _needs_surrogate(spec) and not (math.isfinite(spec.alpha) and spec.alpha > 0):
        raise UnsupportedError(f"surrogate alpha must be finite and > 0, got {spec.alpha!r}")
    if spec.extra:
        raise UnsupportedError(
            f"neuron extra constants {sorted(spec.extra)} mean nothing to the "
            f"{spec.charge!r} kernels; refusing rather than ignoring them"
        )
    learnable = set(spec.learnable)
    allowed = {"w"} if spec.charge in PLIF_CHARGES else set()
    if learnable - allowed:
        raise UnsupportedError(
            f"learnable neuron params {sorted(learnable - allowed)} of charge "
            f"{spec.charge!r} have no kernel gradient; supported: {sorted(allowed) or 'none'}"
        )


def _fires(spec: NeuronSpec) -> bool:
    return spec.spiking or spec.reset != "none"


def _needs_surrogate(spec: NeuronSpec) -> bool:
    return spec.spiking or (spec.reset != "none" and not spec.detach_reset)


def _summary(spec: NeuronSpec) -> str:
    """A comment-safe summary built only from validated names and formatted numbers."""
    parts = [spec.charge]
    if spec.tau is not None:
        parts.append(f"tau={float(spec.tau)!r}")
    parts.append(f"th={float(spec.v_threshold)!r}")
    if spec.reset == "hard":
        parts.append(f"hard({float(spec.v_reset)!r})")
    else:
        parts.append(spec.reset)
    if spec.detach_reset:
        parts.append("detach_reset")
    parts.append(f"fire{spec.fire_cmp}")
    parts.append("out=spike" if spec.spiking else "out=membrane")
    if _needs_surrogate(spec):
        parts.append(f"{spec.surrogate}({float(spec.alpha)!r})")
    return " ".join(parts)


def neuron_view(spec: NeuronSpec) -> NeuronView:
    """Pre-format one validated spec for the templates."""
    _check_spec(spec)
    vr = 0.0 if spec.v_reset is None else spec.v_reset
    needs_sg = _needs_surrogate(spec)
    learns_k = spec.charge in PLIF_CHARGES
    alpha = float(spec.alpha)
    return NeuronView(
        summary=_summary(spec),
        charge=spec.charge,
        charge_formula=CHARGE_FORMS[spec.charge],
        tau=f32_literal(spec.tau) if spec.tau is not None else "0.0f",
        vr=f32_literal(vr),
        vr_reset=f32_literal(vr),
        th=f32_literal(spec.v_threshold),
        v_init=f32_literal(spec.v_init),
        reset=spec.reset,
        detach_reset=bool(spec.detach_reset),
        fire_cmp=spec.fire_cmp,
        fires=_fires(spec),
        spiking=spec.spiking,
        needs_surrogate=needs_sg,
        needs_h=needs_sg or spec.reset == "hard" or learns_k,
        learns_k=learns_k,
        surrogate=spec.surrogate,
        alpha_repr=repr(alpha),
        sg=_surrogate_constants(alpha),
    )


def _surrogate_constants(alpha: float) -> dict[str, str]:
    """The surrogate formulas' Python-float subexpressions, each as torch rounds it to fp32.

    snncc/surrogate.py evaluates e.g. ``math.pi / 2 * alpha`` in double and torch
    casts the result to fp32 when it meets an fp32 tensor; so do these.
    """
    inv = alpha != 0.0  # only soft_sign / rect use the reciprocals, and they need alpha > 0
    return {
        "alpha": f32_literal(alpha),
        "half_alpha": f32_literal(alpha / 2),
        "pi_2_alpha": f32_literal(math.pi / 2 * alpha),
        "alpha_sq": f32_literal(alpha * alpha),
        "neg_alpha": f32_literal(-alpha),
        "inv_alpha": f32_literal(1 / alpha) if inv else "0.0f",
        "two_alpha": f32_literal(2 * alpha),
        "alpha_rsqrt_pi": f32_literal(alpha / math.sqrt(math.pi)),
        "half_inv_alpha": f32_literal(0.5 / alpha) if inv else "0.0f",
    }


def _kernel_tag(
    spec: NeuronSpec, pro: list, epi: list, opts: dict, family: str | None = None
) -> str:
    """The hash that names a kernel (and keys the compile caches): everything it is rendered from."""
    body: dict[str, Any] = {
        "abi": KERNEL_ABI_VERSION,
        "spec": spec.to_dict(),
        "prologue": pro,
        "epilogue": epi,
        "options": opts,
    }
    if family is not None:
        body["family"] = family
    key = json.dumps(body, sort_keys=True, default=repr)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _steps(
    steps: Sequence[Mapping[str, Any]], where: str, first_add: int, min_port: int = 1
) -> list[dict]:
    """Validate ir/ops.py prologue/epilogue steps and format them for the templates.

    ``min_port``: the first port after the form's own input ports (an add step
    reading port 1 of a form whose port 1 is ``rec`` would alias it).
    """
    out: list[dict] = []
    j = first_add
    for st in steps:
        kind = st.get("kind")
        if kind == "scale":
            op = {"mul": "*", "div": "/"}.get(st.get("op"))
            if op is None:
                raise UnsupportedError(
                    f"neuron {where} scale op {st.get('op')!r} is not 'mul' or 'div'"
                )
            out.append({"kind": "scale", "op": op, "value": f32_literal(float(st["value"]))})
        elif kind == "add":
            port = st.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or port < min_port:
                raise UnsupportedError(
                    f"neuron {where} add step needs an int port >= {min_port} (after the "
                    f"form's own input ports), got {port!r}"
                )
            out.append({"kind": "add", "arg": f"a{j}", "port": port})
            j += 1
        else:
            raise UnsupportedError(
                f"neuron {where} step kind {kind!r} cannot be fused; supported: 'scale', 'add'"
            )
    return out


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(DEFAULT_OPTIONS)
    for key, value in (options or {}).items():
        if key not in DEFAULT_OPTIONS:
            raise UnsupportedError(
                f"unknown neuron kernel option {key!r}; supported: {', '.join(DEFAULT_OPTIONS)}"
            )
        opts[key] = value
    if opts["spike_dtype"] not in ("float32", "uint8", *HALF_DTYPES):
        raise UnsupportedError(
            f"neuron kernel option spike_dtype={opts['spike_dtype']!r}; supported: "
            f"'float32', 'uint8', {', '.join(map(repr, HALF_DTYPES))}"
        )
    if opts["x_dtype"] not in ("float32", *HALF_DTYPES):
        raise UnsupportedError(
            f"neuron kernel option x_dtype={opts['x_dtype']!r}; supported: 'float32', "
            f"{', '.join(map(repr, HALF_DTYPES))}"
        )
    opts["recompute"] = bool(opts["recompute"])
    return opts


def gy_dtype(out_dtype: str) -> str:
    """The backward's ``gy`` dtype: the output's, except uint8 outputs (inference only,
    not differentiable; their unused backward keeps fp32)."""
    return "float32" if out_dtype == "uint8" else out_dtype


@dataclass(frozen=True)
class _Plan:
    spec: NeuronSpec
    view: Any  # NeuronView (SJ family) or FormView (form family)
    prologue: list[dict]
    epilogue: list[dict]
    options: dict[str, Any]
    info: NeuronKernelInfo


def _plan(
    spec: NeuronSpec | Mapping[str, Any],
    prologue: Sequence[Mapping[str, Any]],
    epilogue: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any] | None,
) -> _Plan:
    spec = _as_spec(spec)
    if spec.charge in SNNTORCH_NORSE_CHARGES:
        return _form_plan(spec, prologue, epilogue, options)
    view = neuron_view(spec)
    opts = _options(options)
    pro = _steps(prologue, "prologue", 0)
    n_pro = sum(st["kind"] == "add" for st in pro)
    epi = _steps(epilogue, "epilogue", n_pro)
    if opts["spike_dtype"] == "uint8" and (not spec.spiking or epi):
        raise UnsupportedError(
            "neuron kernel option spike_dtype='uint8' needs a spiking output without an "
            "epilogue (the output must be exactly 0/1)"
        )
    recompute = opts["recompute"] and view.needs_h
    if recompute and opts["x_dtype"] != "float32":
        raise UnsupportedError(
            f"neuron kernel option recompute needs x_dtype='float32' (the backward parks the "
            f"recomputed fp32 membrane in gx), got x_dtype={opts['x_dtype']!r}"
        )
    tag = _kernel_tag(spec, pro, epi, opts)
    adds = [st for st in pro + epi if st["kind"] == "add"]
    names = [st["arg"] for st in adds]
    out_c = _PTR_TYPES[opts["spike_dtype"]]
    x_c = _PTR_TYPES[opts["x_dtype"]]
    gy_c = _PTR_TYPES[gy_dtype(opts["spike_dtype"])]
    fwd_args = (
        ("x", f"const {x_c}"),
        *((a, "const float*") for a in names),
        ("v0", "const float*"),
        ("k", "float"),
        ("out", out_c),
        ("h_seq", "float*"),
        ("v_last", "float*"),
        ("T", "int"),
        ("N", "int64"),
    )
    bwd_args = (
        ("gy", f"const {gy_c}"),
        ("gy_ts", "int64"),
        ("gy_ns", "int64"),
        ("gv_last", "const float*"),
        ("h_seq", "const float*"),
        ("x", f"const {x_c}"),
        *((a, "const float*") for a in names),
        ("v0", "const float*"),
        ("k", "float"),
        ("gx", x_c),
        *((f"g{a}", "float*") for a in names),
        ("gv0", "float*"),
        ("gk", "double*"),
        ("T", "int"),
        ("N", "int64"),
    )
    info = NeuronKernelInfo(
        tag=tag,
        forward_name=f"snncc_fwd_{tag}",
        backward_name=f"snncc_bwd_{tag}",
        add_ports=tuple(st["port"] for st in adds),
        n_prologue_adds=n_pro,
        out_dtype=opts["spike_dtype"],
        needs_h=view.needs_h,
        recompute=recompute,
        backward_reads_x=recompute or spec.charge == "sj_plif_decay_input",
        learns_k=view.learns_k,
        forward_args=fwd_args,
        backward_args=bwd_args,
        x_dtype=opts["x_dtype"],
    )
    return _Plan(spec, view, pro, epi, opts, info)


# ------------------------------------------------ snnTorch / Norse forms (form family)
#: kernel quantity -> the node param role it is derived from on the host, with torch,
#: exactly as snncc/neurons.py derives it (the kernels never re-derive it)
QUANTITY_ROLES: dict[str, str] = {
    "b": "beta",  # beta.clamp(0, 1)
    "a": "alpha",  # alpha.clamp(0, 1): snnTorch Synaptic's decay (not the surrogate's)
    "th": "threshold",
    "g": "graded_spikes_factor",
    "V": "V",
    "cm": "tau_mem_inv",  # dt * tau_mem_inv
    "cs": "tau_syn_inv",  # (-dt) * tau_syn_inv
    "vr": "v_reset",
}
#: the quantities each form's step reads (Norse: vr only with a hard reset)
_FORM_QUANTITIES: dict[str, tuple[str, ...]] = {
    "snntorch_leaky": ("b", "th", "g"),
    "snntorch_synaptic": ("a", "b", "th", "g"),
    "snntorch_rleaky": ("b", "th", "g"),
    "snntorch_rleaky_v": ("b", "th", "g", "V"),
    "norse_lif": ("cm", "cs", "th", "vr"),
    "norse_lif_recurrent": ("cm", "cs", "th", "vr"),
    "norse_lifbox": ("cm", "th", "vr"),
    "norse_li": ("cm", "cs"),
}
#: the ``extra`` constants each framework's forms understand
_FORM_EXTRA = {
    "snntorch": ("beta", "alpha", "graded_spikes_factor", "V"),
    "norse": ("dt", "v_leak", "dt_tau_mem_inv", "neg_dt_tau_syn_inv"),
}


@dataclass(frozen=True)
class FormView:
    """A validated snnTorch / Norse spec, pre-formatted for the ``form_*`` templates."""

    summary: str
    charge: str
    charge_formula: str
    #: "snntorch" or "norse"
    kind: str
    state_vars: tuple[str, ...]
    has_rec: bool
    reset: str
    reset_delay: bool
    detach_reset: bool
    fire_cmp: str
    fires: bool
    output: str
    #: the step struct field holding the node's output
    out_field: str
    #: state variable -> the step struct field holding its value after the step
    next_state: dict[str, str]
    v_init: str
    v_leak: str
    #: each quantity: {"name", "arg": passed as an argument, "value": literal or None}
    quantities: tuple[dict[str, Any], ...]
    #: ``s / g`` as torch computes it (a Python-scalar g divides like the device does)
    s_over_g: str
    surrogate: str
    alpha_repr: str
    sg: dict[str, str]


def _number(spec: NeuronSpec, key: str) -> float | None:
    """``spec.extra[key]`` as a float (None when absent); refuses non-numbers by name."""
    if key not in spec.extra:
        return None
    value = spec.extra[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnsupportedError(
            f"neuron {spec.charge!r} constant extra[{key!r}]={value!r} is not a number"
        )
    return float(value)


def _clamp01(value: float) -> float:
    """snnTorch's ``clamp(0, 1)`` of a Python constant (exact: 0 and 1 are fp32 values)."""
    return min(max(value, 0.0), 1.0)


def _form_constant(spec: NeuronSpec, q: str) -> float | None:
    """The spec constant quantity ``q`` falls back to without a node param (None: none)."""
    if q in ("b", "a"):
        value = _number(spec, "beta" if q == "b" else "alpha")
        return None if value is None else _clamp01(value)
    if q == "th":
        return float(spec.v_threshold)
    if q == "g":
        value = _number(spec, "graded_spikes_factor")
        return 1.0 if value is None else value
    if q == "V":
        return _number(spec, "V")
    if q == "cm":
        return _number(spec, "dt_tau_mem_inv")
    if q == "cs":
        return _number(spec, "neg_dt_tau_syn_inv")
    return None if spec.v_reset is None else float(spec.v_reset)  # vr


def form_quantities(spec: NeuronSpec) -> tuple[str, ...]:
    """The kernel quantities ``spec``'s step reads (see :data:`QUANTITY_ROLES`)."""
    qs = _FORM_QUANTITIES[spec.charge]
    if spec.charge in NORSE_FORMS and spec.reset != "hard":
        qs = tuple(q for q in qs if q != "vr")
    return qs


def _check_form(spec: NeuronSpec) -> str:
    """Refuse what the form kernels would not run faithfully; return the framework kind."""
    if spec.charge not in SNNTORCH_NORSE_CHARGES:
        raise UnsupportedError(
            f"neuron charge form {spec.charge!r} has no fused kernel; supported: "
            f"{', '.join(SUPPORTED_CHARGES)}"
        )
    kind = "snntorch" if spec.charge in SNNTORCH_FORMS else "norse"
    if spec.fire_from != "updated":
        raise UnsupportedError(
            f"neuron fire_from={spec.fire_from!r} has no fused kernel; only 'updated'"
        )
    unknown = sorted(set(spec.extra) - set(_FORM_EXTRA[kind]))
    if unknown:
        raise UnsupportedError(
            f"neuron extra constants {unknown} mean nothing to the {spec.charge!r} kernels "
            f"(known: {', '.join(_FORM_EXTRA[kind])}); refusing rather than ignoring them"
        )
    for key in spec.extra:
        _number(spec, key)
    if kind == "norse":
        missing = [k for k in ("dt", "v_leak") if k not in spec.extra]
        if missing:
            raise UnsupportedError(
                f"neuron charge form {spec.charge!r} needs the constants {missing} in extra"
            )
    form_roles = FORMS[spec.charge].roles
    stray = [r for r in spec.roles if r not in form_roles]
    if stray:
        raise UnsupportedError(
            f"neuron params {stray} mean nothing to charge form {spec.charge!r} "
            f"(its roles: {', '.join(form_roles)})"
        )
    fires = spec.charge != "norse_li"
    if fires:
        if spec.surrogate not in SUPPORTED_SURROGATES:
            raise UnsupportedError(
                f"surrogate {spec.surrogate!r} has no kernel; supported: "
                f"{', '.join(SUPPORTED_SURROGATES)}"
            )
        if not math.isfinite(spec.alpha) or (
            spec.surrogate in _ALPHA_DIVIDES and not spec.alpha > 0
        ):
            raise UnsupportedError(
                f"surrogate {spec.surrogate!r} alpha must be finite"
                f"{' and > 0' if spec.surrogate in _ALPHA_DIVIDES else ''}, got {spec.alpha!r}"
            )
    return kind


def _form_summary(spec: NeuronSpec, quantities: Sequence[Mapping[str, Any]]) -> str:
    """A comment-safe summary: validated names and numbers this module formatted only."""
    parts = [spec.charge, spec.reset]
    if spec.reset_delay:
        parts.append("reset_delay")
    if spec.detach_reset:
        parts.append("detach_reset")
    parts.append(f"fire{spec.fire_cmp}")
    parts.append(f"out={spec.output}")
    for q in quantities:
        name = q["name"]
        parts.append(f"{name}=@{QUANTITY_ROLES[name]}" if q["arg"] else f"{name}={q['number']!r}")
    if spec.charge != "norse_li":
        parts.append(f"{spec.surrogate}({float(spec.alpha)!r})")
    return " ".join(parts)


def form_view(spec: NeuronSpec) -> FormView:
    """Validate an snnTorch / Norse spec and pre-format it for the form templates."""
    kind = _check_form(spec)
    roles = set(spec.roles)
    quantities = []
    for q in form_quantities(spec):
        role = QUANTITY_ROLES[q]
        if role in roles:
            quantities.append({"name": q, "arg": True, "value": None})
            continue
        value = _form_constant(spec, q)
        if value is None:
            raise UnsupportedError(
                f"neuron charge form {spec.charge!r} needs the param {role!r} or its "
                f"constant ({FORMS[spec.charge].constants.get(role, role)})"
            )
        if not math.isfinite(value):
            raise UnsupportedError(
                f"neuron charge form {spec.charge!r}: the constant for {role!r} is {value!r}; "
                "the kernels need a finite value or a node param with that role"
            )
        literal = f32_literal(value)
        quantities.append({"name": q, "arg": False, "value": literal, "number": value})
    g_arg = any(q["name"] == "g" and q["arg"] for q in quantities)
    if kind == "snntorch":
        out_field = {"spike": "s", "membrane": "m2", "current": "i1"}[spec.output]
        next_state = {"v": "m2", "i": "i1", "s": "s"}
    else:
        out_field = {"spike": "z", "membrane": "v2", "current": "i2"}[spec.output]
        next_state = {"v": "v2", "i": "i2"}
    state_vars = spec.state_vars
    fires = spec.charge != "norse_li"
    alpha = float(spec.alpha) if fires else 1.0
    return FormView(
        summary=_form_summary(spec, quantities),
        charge=spec.charge,
        charge_formula=CHARGE_FORMS[spec.charge],
        kind=kind,
        state_vars=state_vars,
        has_rec=len(spec.input_ports) > 1,
        reset=spec.reset,
        reset_delay=bool(spec.reset_delay),
        detach_reset=bool(spec.detach_reset),
        fire_cmp=spec.fire_cmp,
        fires=fires,
        output=spec.output,
        out_field=out_field,
        next_state={v: next_state[v] for v in state_vars},
        v_init=f32_literal(spec.v_init),
        v_leak=f32_literal(_number(spec, "v_leak") or 0.0) if kind == "norse" else "0.0f",
        quantities=tuple(quantities),
        s_over_g="st.s / p.g" if g_arg else "SNNCC_DIV_SCALAR(st.s, p.g)",
        surrogate=spec.surrogate,
        alpha_repr=repr(alpha),
        sg=_surrogate_constants(alpha),
    )


def _form_plan(
    spec: NeuronSpec,
    prologue: Sequence[Mapping[str, Any]],
    epilogue: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any] | None,
) -> _Plan:
    """The form family's :class:`_Plan`: calling convention per state variable and param."""
    view = form_view(spec)
    opts = _options(options)
    if opts["spike_dtype"] == "uint8":
        raise UnsupportedError(
            f"neuron kernel option spike_dtype='uint8' is not available for charge form "
            f"{spec.charge!r} (snnTorch spikes are graded); 'float32' or a 16-bit float"
        )
    first_port = len(spec.input_ports)
    pro = _steps(prologue, "prologue", 0, first_port)
    n_pro = sum(st["kind"] == "add" for st in pro)
    epi = _steps(epilogue, "epilogue", n_pro, first_port)
    tag = _kernel_tag(spec, pro, epi, opts, family="form")
    adds = [st for st in pro + epi if st["kind"] == "add"]
    names = [st["arg"] for st in adds]
    svars = view.state_vars
    qs = tuple(q["name"] for q in view.quantities if q["arg"])
    rec = (("rec", "const float*"),) if view.has_rec else ()
    params = tuple(arg for q in qs for arg in ((f"p_{q}", "const float*"), (f"st_{q}", "int64")))
    x_c, out_c = _PTR_TYPES[opts["x_dtype"]], _PTR_TYPES[opts["spike_dtype"]]
    fwd_args = (
        ("x", f"const {x_c}"),
        *rec,
        *((a, "const float*") for a in names),
        *((f"{v}0", "const float*") for v in svars),
        *params,
        ("out", out_c),
        *((f"{v}_seq", "float*") for v in svars),
        *((f"{v}_last", "float*") for v in svars),
        ("T", "int"),
        ("N", "int64"),
    )
    bwd_args = (
        ("gy", f"const {out_c}"),
        ("gy_ts", "int64"),
        ("gy_ns", "int64"),
        *((f"g{v}_last", "const float*") for v in svars),
        *((f"{v}_seq", "const float*") for v in svars),
        ("x", f"const {x_c}"),
        *rec,
        *((a, "const float*") for a in names),
        *params,
        ("gx", x_c),
        *((("grec", "float*"),) if view.has_rec else ()),
        *((f"g{a}", "float*") for a in names),
        *((f"g{v}0", "float*") for v in svars),
        *((f"gp_{q}", "double*") for q in qs),
        ("T", "int"),
        ("N", "int64"),
    )
    info = NeuronKernelInfo(
        tag=tag,
        forward_name=f"snncc_fwd_{tag}",
        backward_name=f"snncc_bwd_{tag}",
        add_ports=tuple(st["port"] for st in adds),
        n_prologue_adds=n_pro,
        out_dtype=opts["spike_dtype"],
        needs_h=False,
        recompute=opts["recompute"],
        backward_reads_x=True,
        learns_k=False,
        forward_args=fwd_args,
        backward_args=bwd_args,
        family="form",
        state_vars=svars,
        has_rec=view.has_rec,
        param_args=qs,
        param_roles=tuple(QUANTITY_ROLES[q] for q in qs),
        x_dtype=opts["x_dtype"],
    )
    return _Plan(spec, view, pro, epi, opts, info)


def neuron_kernel_info(
    spec: NeuronSpec | Mapping[str, Any],
    prologue: Sequence[Mapping[str, Any]] = (),
    epilogue: Sequence[Mapping[str, Any]] = (),
    options: Mapping[str, Any] | None = None,
) -> NeuronKernelInfo:
    """Names and calling convention of the kernels :func:`render_neuron_kernels` renders."""
    return _plan(spec, prologue, epilogue, options).info


# -------------------------------------------------------------------- rendering
@lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(template: str, **context: Any) -> str:
    """Render one template of templates/cuda by file name (StrictUndefined)."""
    return _env().get_template(template).render(**context)


def render_neuron_kernels(
    spec: NeuronSpec | Mapping[str, Any],
    prologue: Sequence[Mapping[str, Any]] = (),
    epilogue: Sequence[Mapping[str, Any]] = (),
    target: str = "cuda",
    options: Mapping[str, Any] | None = None,
    *,
    backward: bool = True,
) -> str:
    """One translation unit with the forward (and backward) kernel of a neuron layer.

    ``prologue``/``epilogue`` are the neuron node's ``attrs["prologue"]`` /
    ``attrs["epilogue"]`` (ir/ops.py). ``target`` picks the macro layer:
    ``"cuda"`` (nvcc/NVRTC) or ``"cpu"`` (a host C++ compiler with OpenMP). The
    result is self-contained and can be concatenated with other neuron layers'
    units (helpers are suffixed with the kernel tag, the macro layer is guarded).
    """
    if target not in TARGETS:
        raise UnsupportedError(f"kernel target {target!r}; supported: {', '.join(TARGETS)}")
    plan = _plan(spec, prologue, epilogue, options)
    info = plan.info
    adds = [st["arg"] for st in plan.prologue + plan.epilogue if st["kind"] == "add"]
    ctx = {
        "target": target,
        "tag": info.tag,
        "n": plan.view,
        "f": plan.view,
        "prologue": plan.prologue,
        "epilogue": plan.epilogue,
        "adds": adds,
        "out_type": C_TYPES[info.out_dtype],
        "x_type": C_TYPES[info.x_dtype],
        "gy_type": C_TYPES[gy_dtype(info.out_dtype)],
        "recompute": info.recompute,
        "info": info,
    }
    prefix = "form" if info.family == "form" else "neuron"
    parts = [
        f"// snncc fused neuron kernels {info.tag} (target {target}); generated, do not edit.\n"
        f"// {plan.view.summary}\n",
        render_template("common.cuh.j2", **ctx),
        render_template(f"{prefix}_step.cuh.j2", **ctx),
        render_template(f"{prefix}_forward.cu.j2", name=info.forward_name, **ctx),
    ]
    if backward:
        parts.append(render_template(f"{prefix}_backward.cu.j2", name=info.backward_name, **ctx))
    return "\n".join(parts)


def template_names() -> list[str]:
    """The kernel template files (for tests and ``snncc compile --backend cuda``)."""
    return sorted(p.name for p in _TEMPLATE_DIR.glob("*.j2"))
