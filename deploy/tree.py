"""Render a lowered model into its source tree (templates/deploy, one template per file).

Why here and not in the templates: the templates hold text; what varies (the
kernels' launch signatures, flag lists, the tables) is worked out by the small
helpers below and :mod:`snncc.deploy.lower`, so no template holds logic.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from snncc.backends.cpu.compiler import BASE_FLAGS
from snncc.backends.kernels import (
    HOST_EXACT_FLAGS,
    NVCC_EXACT_FLAGS,
    render_neuron_kernels,
    template_environment,
)

from .lower import MAX_RANK, Lowered, comment

_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "deploy"
#: GPU architectures the CUDA target is built for unless the user names others
CUDA_ARCHS = ("80", "90")
#: the host flags of the cpu backend a library build keeps (CMake adds -fPIC, -shared, -std)
HOST_FLAGS = tuple(f for f in BASE_FLAGS if f not in ("-shared", "-fPIC", "-std=c++17"))
#: file name -> template; every file of the tree comes from one template
FILES = {
    "include/snncc_model.h": "snncc_model.h.j2",
    "src/snncc_internal.h": "snncc_internal.h.j2",
    "src/snncc_cuda.h": "snncc_cuda.h.j2",
    "src/model.cpp": "model.cpp.j2",
    "src/api.cpp": "api.cpp.j2",
    "src/safetensors.cpp": "safetensors.cpp.j2",
    "src/runtime_cpu.cpp": "runtime_cpu.cpp.j2",
    "src/runtime_cuda.cu": "runtime_cuda.cu.j2",
    "src/exports.map": "exports.map.j2",
    "tools/snncc_run.cpp": "snncc_run.cpp.j2",
    "CMakeLists.txt": "CMakeLists.txt.j2",
    "README.md": "README.md.j2",
}
WEIGHTS_FILE = "weights.safetensors"
#: neuron kernels per translation unit: a model with many neuron forms builds in parallel
KERNELS_PER_FILE = 12

#: C++ parameter types of the kernels' argument kinds (NeuronKernelInfo.forward_args)
_CXX_TYPES = {
    "const float*": "const float*",
    "float*": "float*",
    "int": "int",
    "int64": "long long",
}


def _env() -> Any:
    return template_environment("deploy")


def template_names() -> list[str]:
    return sorted(p.name for p in _TEMPLATE_DIR.glob("*.j2"))


def _div_scalar(target: str):
    """The target's rule for tensor / Python scalar (the kernels' macro layer says why)."""

    def fmt(a: str, b: str) -> str:
        return f"{a} / {b}" if target == "cpu" else f"{a} * (1.0f / {b})"

    return fmt


def _launch_params(info: Any) -> tuple[str, str]:
    params, args = [], []
    for name, ctype in info.forward_args:
        if ctype not in _CXX_TYPES:
            raise AssertionError(f"kernel argument {name} of type {ctype} in an fp32 deployment")
        params.append(f"{_CXX_TYPES[ctype]} {name}")
        args.append(name)
    return ", ".join(params), ", ".join(args)


def kernel_file_names(n_kernels: int, target: str) -> list[str]:
    """The neuron kernel files of a target: ``KERNELS_PER_FILE`` kernels each (at least one)."""
    ext = "cu" if target == "cuda" else "cpp"
    count = max(1, -(-n_kernels // KERNELS_PER_FILE))
    return [f"src/neuron_kernels_{target}_{i}.{ext}" for i in range(count)]


def _md(text: str) -> str:
    return comment(text).replace("|", "\\|").replace("`", "'")


def render(low: Lowered, target: str) -> dict[str, str]:
    """Every text file of the tree, by relative path."""
    launchers = [(tag, _launch_params(use.info)[0]) for tag, use in low.kernels.items()]
    common = {
        "low": low,
        "comment": comment,
        "prod": lambda dims: math.prod(dims),
        "max_rank": MAX_RANK,
        "model_id": low.model_id,
    }
    out: dict[str, str] = {}
    kernel_files = {t: kernel_file_names(len(low.kernels), t) for t in ("cpu", "cuda")}
    tags = list(low.kernels)
    for kt, names in kernel_files.items():
        for i, path in enumerate(names):
            units = []
            for tag in tags[i * KERNELS_PER_FILE : (i + 1) * KERNELS_PER_FILE]:
                use = low.kernels[tag]
                params, args = _launch_params(use.info)
                source = render_neuron_kernels(
                    use.spec, use.prologue, use.epilogue, kt, None, backward=False
                )
                units.append({"tag": tag, "source": source, "params": params, "args": args})
            ctx = dict(common, target=kt, units=units)
            out[path] = _env().get_template("neuron_kernels.j2").render(**ctx)
    for path, template in FILES.items():
        ctx = dict(common)
        if template == "model.cpp.j2":
            ctx.update(
                launchers=launchers,
                ir_lines=[comment(line) for line in low.ir_text.splitlines()],
                output_per_sample=sum(math.prod(s) for s in low.output_shapes),
            )
        elif template == "runtime_cpu.cpp.j2":
            ctx.update(div_scalar=_div_scalar("cpu"))
        elif template == "runtime_cuda.cu.j2":
            ctx.update(div_scalar=_div_scalar("cuda"))
        elif template == "CMakeLists.txt.j2":
            ctx.update(
                host_flags=HOST_FLAGS,
                nvcc_flags=NVCC_EXACT_FLAGS,
                cuda_default=target == "cuda",
                archs=CUDA_ARCHS,
                kernel_files=kernel_files,
            )
        elif template == "README.md.j2":
            ctx.update(
                target=target,
                archs=CUDA_ARCHS,
                host_exact=HOST_EXACT_FLAGS,
                nvcc_exact=NVCC_EXACT_FLAGS,
                tensors_md=[
                    (t.name, "[" + ", ".join(map(str, t.array.shape)) + "]", _md(t.what))
                    for t in low.tensors
                ],
            )
            ctx["low"] = _readme_view(low)
        out[path] = _env().get_template(template).render(**ctx)
    return out


def _readme_view(low: Lowered) -> Lowered:
    """The lowered model with its IR listing made safe for a Markdown code block."""
    from dataclasses import replace

    text = low.ir_text.replace("```", "'''")
    return replace(low, ir_text=text if text.endswith("\n") else text + "\n")


def weights_bytes(low: Lowered) -> bytes:
    """The safetensors file: every tensor in ``w[]`` order, tagged with the model's id."""
    from safetensors.numpy import save

    arrays = {t.name: np.ascontiguousarray(t.array, dtype=np.float32) for t in low.tensors}
    meta = {"snncc_model": low.model_id, "format": "snncc-deploy"}
    if not arrays:  # safetensors needs no tensor, but keep the header well-formed
        return save({}, metadata=meta)
    return save(arrays, metadata=meta)


def manifest(low: Lowered, target: str) -> str:
    """A small JSON description of the tree (for tools; the C library does not read it)."""
    body = {
        "format": "snncc-deploy",
        "model": low.model_id,
        "target": target,
        "input": list(low.input_shape),
        "outputs": [list(s) for s in low.output_shapes],
        "state": [{"name": s.name, "offset": s.offset, "count": s.count} for s in low.state],
        "state_per_sample": low.state_per_sample,
        "tensors": {t.name: list(t.array.shape) for t in low.tensors},
    }
    buf = io.StringIO()
    json.dump(body, buf, indent=2, sort_keys=True)
    return buf.getvalue() + "\n"
