"""The fused neuron kernels (templates/cuda/*.j2), rendered for CUDA or for the host CPU.

Why one renderer for two targets: the cpu backend exists to run *the same
kernel logic* as the GPU, so each kernel is written once, against a small
macro layer (``common.cuh.j2``: ``SNNCC_KERNEL``, ``SNNCC_FOR_EACH_NEURON``...),
and only that layer differs between targets.

Why one kernel family for every neuron form: a form is data (its expression
graph, :mod:`snncc.ir.neurons`); :mod:`.lower_c` lowers the step and its
vector-Jacobian product to C statements and :mod:`.plan` works out what the
kernels save, read and take. The templates only loop over time and neurons.

Exactness contract (outputs bit for bit with torch eager fp32):

- every operation keeps the order of the form's definition (the source
  framework's), one fp32 rounding per operation;
- constants are hexadecimal fp32 literals of ``float32(value)`` (:func:`f32_literal`);
- quantities derived from params (PLIF ``k = sigmoid(w)``, snnTorch
  ``beta.clamp(0, 1)``) are computed by torch on the host, so the kernels
  never re-derive them differently;
- the code is compiled without fast-math and without FMA contraction
  (:data:`NVCC_EXACT_FLAGS`, :data:`HOST_EXACT_FLAGS`).

Generated code never contains user strings: kernel names come from a hash of
the (validated) spec, and every name pasted into the source is an identifier
from the form definitions or a number this package formatted itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from snncc.errors import UnsupportedError
from snncc.ir.neuron import FORMS, NORSE_FORMS, SNNTORCH_FORMS, SPIKINGJELLY_FORMS, NeuronSpec
from snncc.ir.surrogates import SURROGATES

from .lower_c import f32_literal
from .plan import (
    C_TYPES,
    DEFAULT_OPTIONS,
    HALF_DTYPES,
    HOST_EXACT_FLAGS,
    KERNEL_ABI_VERSION,
    NVCC_EXACT_FLAGS,
    TARGETS,
    NeuronKernelInfo,
    Plan,
    connected,
    gy_dtype,
    plan,
)

__all__ = [
    "C_TYPES",
    "DEFAULT_OPTIONS",
    "HALF_DTYPES",
    "HOST_EXACT_FLAGS",
    "KERNEL_ABI_VERSION",
    "NVCC_EXACT_FLAGS",
    "SUPPORTED_CHARGES",
    "SUPPORTED_SURROGATES",
    "TARGETS",
    "NeuronKernelInfo",
    "Plan",
    "connected",
    "f32_literal",
    "gy_dtype",
    "neuron_kernel_info",
    "plan",
    "render_neuron_kernels",
    "render_step",
    "render_template",
    "template_names",
]

#: every charge form has fused kernels (lowered from its definition)
SUPPORTED_CHARGES = tuple(FORMS)
#: every surrogate has a kernel gradient (lowered from snncc.ir.surrogates)
SUPPORTED_SURROGATES = tuple(SURROGATES)
#: the forms by source framework (informational: one kernel family serves them all)
SJ_CHARGES = SPIKINGJELLY_FORMS
SNNTORCH_NORSE_CHARGES = (*SNNTORCH_FORMS, *NORSE_FORMS)

_TEMPLATE_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "cuda"


@cache
def template_environment(folder: str) -> Any:
    """The Jinja2 environment of one folder of ``snncc.templates`` (cuda, jax, deploy).

    One set of settings for every generated file: StrictUndefined, so a value a
    template needs and is not given fails the render instead of printing nothing;
    block whitespace trimmed, so generated code stays readable and diffable; no
    autoescaping (C++, CUDA and Python, not HTML).
    """
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("snncc.templates", folder),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _env() -> Any:
    return template_environment("cuda")


def render_template(template: str, **context: Any) -> str:
    """Render one template of templates/cuda by file name (StrictUndefined)."""
    return _env().get_template(template).render(**context)


def template_names() -> list[str]:
    """The kernel template files (for tests and ``snncc compile --backend cuda``)."""
    return sorted(p.name for p in _TEMPLATE_DIR.glob("*.j2"))


def neuron_kernel_info(
    spec: NeuronSpec | Mapping[str, Any],
    prologue: Sequence[Mapping[str, Any]] = (),
    epilogue: Sequence[Mapping[str, Any]] = (),
    options: Mapping[str, Any] | None = None,
) -> NeuronKernelInfo:
    """Names and calling convention of the kernels :func:`render_neuron_kernels` renders."""
    return plan(spec, prologue, epilogue, options).info


def declare(arg: str, ctype: str) -> str:
    """One kernel parameter's declaration from its NeuronKernelInfo ctype."""
    if ctype.endswith("*"):
        base = ctype[:-1].replace("uint8", "unsigned char")
        return f"{base}* SNNCC_RESTRICT {arg}"
    if ctype == "int64":
        return f"const long long {arg}"
    return f"const {ctype} {arg}"


def context(p: Plan, target: str) -> dict[str, Any]:
    """What every neuron template reads about one layer."""
    if target not in TARGETS:
        raise UnsupportedError(f"kernel target {target!r}; supported: {', '.join(TARGETS)}")
    info = p.info
    return {
        "target": target,
        "tag": info.tag,
        "info": info,
        "summary": p.summary,
        "formula": p.graph.info.summary,
        "code": p.code,
        "states": info.state_vars,
        "ports": info.ports,
        "quantities": info.param_args,
        "inits": p.inits,
        "prologue": p.prologue,
        "epilogue": p.epilogue,
        "reads": sorted(p.vjp_reads),
        "reads_state": p.vjp_reads_state,
        "reads_cut": p.vjp_reads_cut,
        "declare": declare,
    }


def render_step(p: Plan, target: str) -> str:
    """The macro layer and one form's step functions (what every kernel of the form calls)."""
    ctx = context(p, target)
    return render_template("common.cuh.j2", **ctx) + render_template("neuron_step.cuh.j2", **ctx)


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
    units (functions are suffixed with the kernel tag, the macro layer is guarded).
    """
    p = plan(spec, prologue, epilogue, options)
    ctx = context(p, target)
    info = p.info
    parts = [
        f"// snncc fused neuron kernels {info.tag} (target {target}); generated, do not edit.\n"
        f"// {p.summary}\n",
        render_template("common.cuh.j2", **ctx),
        render_template("neuron_step.cuh.j2", **ctx),
        render_template("neuron_forward.cu.j2", name=info.forward_name, **ctx),
    ]
    if backward:
        parts.append(render_template("neuron_backward.cu.j2", name=info.backward_name, **ctx))
    return "\n".join(parts)
