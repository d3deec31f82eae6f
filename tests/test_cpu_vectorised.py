"""The cpu backend's neuron steps run as SIMD lanes: GCC's own report on the generated kernels.

Why a test: whether a lane loop vectorises is decided silently by the compiler, and a
harmless-looking template change can keep a whole family scalar. Three patterns did until
2026-12-07: a NULL test on an optional input beside the other selects of the backward's step
(a SpikingJelly PLIF backward took 6x a LIF's time per neuron-step); lanes of a parameter
struct with five fields (snnTorch Alpha), an interleaved access GCC 12 does not vectorise;
and, in kernels with fp16 I/O, a normalising loop in the load and a chain of branches in the
store. Results never depend on it (lanes round as scalar code does, tested bit for bit
elsewhere); speed does, by 2x to 8x on the fp32 forms measured (README, "On a CPU").

Each model's neuron layers are traced, their kernels rendered exactly as the backend
renders them, and compiled once with the backend's flags plus ``-fopt-info-vec-optimized``.
Every lane loop that runs a step (``snncc_step_`` / ``snncc_vjp_`` / ``snncc_from_cut_``)
must be reported vectorised. GCC only: other compilers report differently.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import torch
from torch import nn

from snncc.backends.cpu import compiler
from snncc.backends.kernels import render_neuron_kernels
from snncc.errors import BackendError
from snncc.frontend import trace
from snncc.ir.neuron import NeuronSpec

STEP_CALLS = ("snncc_step_", "snncc_vjp_", "snncc_from_cut_")


def _gcc() -> str:
    """The host compiler where it is GCC 12 or newer (the report's format and the
    vectoriser's reach are GCC's; 12 is this project's CI compiler)."""
    try:
        cxx = compiler.find_compiler()
    except BackendError as exc:
        pytest.skip(f"no host compiler: {exc}")
    identity = compiler.compiler_identity(cxx)
    version = re.search(r"\b(\d+)\.\d+\.\d+", identity)
    if not ("GCC" in identity or "g++" in identity) or version is None:
        pytest.skip(f"{cxx} is not GCC; the vectorisation report is GCC's")
    if int(version.group(1)) < 12:
        pytest.skip(f"{cxx} is GCC {version.group(1)}; the check expects GCC 12's vectoriser")
    return cxx


def _sj_plif() -> tuple[nn.Module, torch.Tensor]:
    from spikingjelly.activation_based import functional, neuron, surrogate

    net = nn.Sequential(
        neuron.ParametricLIFNode(init_tau=2.0, surrogate_function=surrogate.Sigmoid())
    )
    functional.set_step_mode(net, "m")
    return net, torch.rand(4, 2, 8)


def _snntorch_alpha() -> tuple[nn.Module, torch.Tensor]:
    """Per-neuron alpha and beta, learnable beta and threshold: five quantities."""
    import snntorch as snn

    cell = snn.Alpha(
        alpha=torch.linspace(0.85, 0.95, 8), beta=torch.linspace(0.5, 0.8, 8),
        learn_beta=True, learn_threshold=True, init_hidden=True,
    )  # fmt: skip
    return nn.Sequential(nn.Linear(8, 8), cell), torch.rand(4, 2, 8)


def _snntorch_lapicque() -> tuple[nn.Module, torch.Tensor]:
    import snntorch as snn

    cell = snn.Lapicque(beta=0.9, learn_beta=True, learn_threshold=True, init_hidden=True)
    return nn.Sequential(nn.Linear(8, 8), cell), torch.rand(4, 2, 8)


#: name -> (the model, the kernels' render options: fp16 I/O is autocast's)
MODELS = {
    "spikingjelly-plif": (_sj_plif, {}),
    "spikingjelly-plif-fp16-io": (_sj_plif, {"x_dtype": "float16", "spike_dtype": "float16"}),
    "snntorch-alpha": (_snntorch_alpha, {}),
    "snntorch-lapicque": (_snntorch_lapicque, {}),
}


def _sources(make, options: dict) -> list[tuple[str, str]]:
    """(form, the cpu kernels' source) of each neuron layer of the model."""
    model, x = make()
    graph = trace(model, x)
    out = []
    for node in graph.iter_ops("neuron"):
        spec = NeuronSpec.from_dict(graph.attrs(node)["neuron"])
        out.append((spec.charge, render_neuron_kernels(spec, (), (), "cpu", options)))
    assert out, "the model traced to no neuron layer"
    return out


def _unvectorised_step_loops(cxx: str, source: str) -> list[str]:
    """The lane loops that run a step and that GCC did not report vectorised."""
    lines = source.splitlines()
    starts = [
        i
        for i, line in enumerate(lines)
        if "SNNCC_FOR_EACH_LANE(" in line and "#define" not in line
    ]
    step_loops = []
    for a, i in enumerate(starts):
        end = starts[a + 1] if a + 1 < len(starts) else len(lines)
        if any(call in line for line in lines[i + 1 : end] for call in STEP_CALLS):
            step_loops.append(i + 1)  # 1-based, as GCC reports
    cmd = [cxx, *compiler.compile_flags(cxx), "-fopt-info-vec-optimized", "-x", "c++", "-"]
    res = subprocess.run(
        [*cmd, "-o", "/dev/null"], input=source, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    done = {
        int(m.group(1)) for m in re.finditer(r":(\d+):\d+: optimized: loop vectorized", res.stderr)
    }
    # the loop macro spans three lines; GCC names the line of its condition or increment
    return [f"line {n}: {lines[n - 1].strip()}" for n in step_loops if not {n, n + 1, n + 2} & done]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_step_loop_of_the_form_vectorises(name: str) -> None:
    cxx = _gcc()
    for charge, source in _sources(*MODELS[name]):
        missed = _unvectorised_step_loops(cxx, source)
        assert not missed, f"{name} ({charge}): step loops GCC kept scalar: {missed}"
