#!/usr/bin/env python
"""Plant known bugs one at a time in a copy of the tree and check that the tests catch each.

Why a list of planted bugs and not a mutation tool: the bugs worth planting here
are the ones this project makes (``>=`` vs ``>``, an operation order, a lost
``eps``, a reset read from the wrong membrane) in Jinja templates, generated
C++/CUDA and exporters, which generic tools do not mutate; each mutant names
the tests that must catch it, so a run takes minutes, not hours.

Each mutant is data: the file, the exact original snippet (it must occur exactly
once), its replacement, and the pytest arguments that must fail. When code is
refactored (neuron definitions moving into data, say), a mutant whose snippet
is gone makes the run fail loudly naming it: retarget it to where the logic
lives now, never delete it silently.

The working tree is never touched: the tree (tracked and untracked, not ignored
files) is copied once to a temporary directory, laid out as pyproject installs
it (the top-level folders linked inside ``snncc/``, so the copy imports as
``snncc`` from its own root, ahead of the editable install), checked to pass
every selected test unmutated, then each mutant is written, tested and
reverted in that copy.

Usage::

    python scripts/mutants.py            # every mutant; exit 1 if one survives
    python scripts/mutants.py --list     # the mutants, without running
    python scripts/mutants.py --only c-fire-ge-to-gt,onnx-div-reciprocal
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(root: Path) -> dict[str, str]:
    """The installed layout, from pyproject's package-dir: top-level folders that install
    as ``snncc.<name>`` (``snncc.frontend`` = ``frontend``), name -> folder."""
    text = (root / "pyproject.toml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("package-dir"))
    pairs = re.findall(r'"snncc\.(\w+)"\s*=\s*"([^"]+)"', line)
    return {name: folder for name, folder in pairs if folder != f"snncc/{name}"}


TIMEOUT_S = 300  # per pytest run (a mutant that hangs a test is reported as a timeout)

#: pytest's exit code -> a mutant's status. Only a failing test (exit 1) catches a mutant: a
#: mutant that breaks collection (2: interrupted, 3: internal error, 4: usage error) or leaves
#: nothing to run (5) says nothing about the tests and is reported as not caught.
STATUS = {0: "survived", 1: "caught", -1: "timeout"}


@dataclass(frozen=True)
class Mutant:
    id: str
    area: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    why: str


def k(path: str, expr: str) -> tuple[str, ...]:
    return (path, "-k", expr)


FAM = "tests/test_spikingjelly_families.py"


MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- the three that survived
    Mutant(
        "c-fire-ge-to-gt",
        "neuron kernels (C/CUDA lowering)",
        "backends/kernels/lower_c.py",
        """        return f"({a[0]} {n.attr('cmp')} 0.0f) ? 1.0f : 0.0f\"""",
        """        return f"({a[0]} > 0.0f) ? 1.0f : 0.0f\"""",
        k("tests/test_cpu_backend.py", "exactly_on_the_threshold and sj_if"),
        "the C/CUDA kernels fire with > instead of the spec's comparison",
    ),
    Mutant(
        "onnx-div-reciprocal",
        "exporter (ONNX)",
        "exchange/onnx_export.py",
        "    if op in _BINARY:\n        return sc.op(_BINARY[op], a)\n",
        '    if op == "div":\n        return sc.op("Mul", [a[0], sc.op("Reciprocal", [a[1]])])\n'
        "    if op in _BINARY:\n        return sc.op(_BINARY[op], a)\n",
        k("tests/test_onnx.py", "neuron_scans"),
        "the exported neuron multiplies by 1/tau instead of dividing by tau",
    ),
    Mutant(
        "jax-fold-bn-eps",
        "jax runtime",
        "backends/jax/runtime.py",
        "    s = gamma / jnp.sqrt(bn_var + eps)",
        "    s = gamma / jnp.sqrt(bn_var)",
        k("tests/test_jax_backend.py", "folded_elsewhere"),
        "the jax BatchNorm fold loses eps",
    ),
    # ---------------------------------------------------------------- neuron kernels
    Mutant(
        "c-gt-as-ge",
        "neuron kernels (C/CUDA lowering)",
        "backends/kernels/lower_c.py",
        'sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "=="}[op]',
        'sym = {"gt": ">=", "ge": ">=", "lt": "<", "le": "<=", "eq": "=="}[op]',
        k("tests/test_cpu_snntorch_norse.py", "exactly_on_the_threshold and snntorch_leaky"),
        "the kernels' snnTorch reset from the previous membrane uses >= (snnTorch: m - th > 0)",
    ),
    Mutant(
        "c-host-div-reciprocal",
        "neuron kernels (template)",
        "templates/cuda/common.cuh.j2",
        "#define SNNCC_DIV_SCALAR(a, b) ((a) / (b))",
        "#define SNNCC_DIV_SCALAR(a, b) ((a) * (1.0f / (b)))",
        k("tests/test_cpu_backend.py", "kernel_matches_torch_neuron_maths and sj_lif_decay"),
        "the host kernels divide by tau as a multiplication by 1/tau (torch's CPU divides)",
    ),
    Mutant(
        "c-backward-ignores-final-state-grad",
        "neuron kernels (template, backward)",
        "templates/cuda/neuron_backward.cu.j2",
        "(g{{ v }}_last != SNNCC_NULL) ? g{{ v }}_last[n] : 0.0f;",
        "0.0f;",
        k("tests/test_cpu_backend.py", "kernel_matches_torch_neuron_maths and sj_if"),
        "the backward kernel drops the gradient arriving at the final membrane",
    ),
    Mutant(
        "c-backward-quantity-sum-starts-at-one",
        "neuron kernels (template, backward)",
        "templates/cuda/neuron_backward.cu.j2",
        "            SNNCC_LANE(acc_{{ q }}, n) = 0.0;",
        "            SNNCC_LANE(acc_{{ q }}, n) = 1.0;",
        k("tests/test_cpu_backend.py", "kernel_matches_torch_neuron_maths and plif"),
        "the per-neuron sum of a quantity's gradient (PLIF's k) does not start at 0",
    ),
    Mutant(
        "c-forward-drops-final-state",
        "neuron kernels (template, forward)",
        "templates/cuda/neuron_forward.cu.j2",
        "            if ({{ v }}_last != SNNCC_NULL) {{ v }}_last[n] = SNNCC_LANE(s_{{ v }}, n);",
        "            if ({{ v }}_last != SNNCC_NULL) {{ v }}_last[n] = 0.0f;",
        k("tests/test_cpu_backend.py", "streaming_run_continues_from_state"),
        "the forward kernel loses the final membrane (streaming restarts from 0)",
    ),
    # ---------------------------------------------------------------- definitions, autodiff
    Mutant(
        "def-snntorch-reset-ge",
        "neuron definitions",
        "ir/neurons/snntorch.py",
        '    r = n.name("r", m - th > 0.0)',
        '    r = n.name("r", m - th >= 0.0)',
        k("tests/test_neurons.py", "exactly_the_threshold"),
        "snnTorch's reset from the previous membrane defined with >=",
    ),
    Mutant(
        "def-lifbox-order",
        "neuron definitions",
        "ir/neurons/norse.py",
        '    v1 = n.name("v_decayed", v + c_m * ((x + v_leak) - v))',
        '    v1 = n.name("v_decayed", v + c_m * (x + (v_leak - v)))',
        ("tests/test_neurons.py",),
        "Norse's box LIF in another (algebraically equal) operation order",
    ),
    Mutant(
        "def-sj-lif-reciprocal",
        "neuron definitions",
        "ir/neurons/spikingjelly.py",
        '    h = v - (v - reset_potential(n)) / n.require("tau") + x',
        '    h = v - (v - reset_potential(n)) * (1.0 / n.require("tau")) + x',
        ("tests/test_neurons.py",),
        "SpikingJelly's LIF (decay_input=False) multiplies by 1/tau",
    ),
    Mutant(
        "autodiff-sub",
        "autodiff (kernel backward)",
        "ir/expr.py",
        "            acc(n.args[0], gy)\n            acc(n.args[1], -gy)",
        "            acc(n.args[0], gy)\n            acc(n.args[1], gy)",
        k("tests/test_cpu_backend.py", "kernel_matches_torch_neuron_maths and sj_lif_decay"),
        "the derivative of a subtraction loses its sign",
    ),
    Mutant(
        "autodiff-div-divisor",
        "autodiff (kernel backward)",
        "ir/expr.py",
        "            acc(n.args[1], (-gy) * (y / a[1]))",
        "            acc(n.args[1], gy * (y / a[1]))",
        k(
            "tests/test_cpu_snntorch_norse.py",
            "kernel_matches_torch_neuron_maths and snntorch_leaky",
        ),
        "the derivative wrt a divisor (snnTorch's s / graded factor) loses its sign",
    ),
    Mutant(
        "autodiff-mul",
        "autodiff (kernel backward)",
        "ir/expr.py",
        "            acc(n.args[0], gy * a[1])\n            acc(n.args[1], gy * a[0])",
        "            acc(n.args[0], gy * a[1])\n            acc(n.args[1], gy * a[1])",
        k(
            "tests/test_cpu_snntorch_norse.py",
            "kernel_matches_torch_neuron_maths and snntorch_leaky",
        ),
        "the derivative of a product wrt its second factor (beta * m wrt beta) is wrong",
    ),
    Mutant(
        "surrogate-atan",
        "surrogates",
        "ir/surrogates/spikingjelly.py",
        "    return g * ((alpha / 2) / (1 + z * z))",
        "    return g * (alpha / (1 + z * z))",
        ("tests/test_surrogate.py",),
        "the atan surrogate uses alpha instead of alpha / 2",
    ),
    Mutant(
        "surrogate-soft-sign",
        "surrogates",
        "ir/surrogates/spikingjelly.py",
        "    return g * (1 / (2 * alpha * z * z))",
        "    return g * (1 / (2 * alpha * z))",
        ("tests/test_surrogate.py",),
        "the soft-sign surrogate loses a factor",
    ),
    # ---------------------------------------------------------------- SpikingJelly 2.0 families
    Mutant(
        "def-qif-product-order",
        "neuron definitions (families)",
        "ir/neurons/spikingjelly_qif.py",
        '    h = v + (x + a0 * (v - rest) * (v - vc)) / n.require("tau")',
        '    h = v + (x + a0 * ((v - rest) * (v - vc))) / n.require("tau")',
        (f"{FAM}::test_family_reference_and_cpu[qif_hard-s]",),
        "QIF's quadratic term in another (algebraically equal) product order",
    ),
    Mutant(
        "def-izhikevich-recovery-from-v",
        "neuron definitions (families)",
        "ir/neurons/spikingjelly_izhikevich.py",
        "w + (a * (h - rest) - w) / tau_w + b * s",
        "w + (a * (v - rest) - w) / tau_w + b * s",
        (f"{FAM}::test_family_reference_and_cpu[izhikevich_hard-s]",),
        "Izhikevich's recovery variable follows the membrane before the charge, not h",
    ),
    Mutant(
        "def-klif-no-relu",
        "neuron definitions (families)",
        "ir/neurons/spikingjelly_klif.py",
        '    hk = n.name("hk", E.relu(k * lif_charge(n)))',
        '    hk = n.name("hk", k * lif_charge(n))',
        (f"{FAM}::test_family_reference_and_cpu[klif_hard-s]",),
        "KLIF's scaled charge is not rectified",
    ),
    Mutant(
        "def-klif-unscale-reciprocal",
        "neuron definitions (families)",
        "ir/neurons/spikingjelly_klif.py",
        '    u = n.name("u", hk / k)',
        '    u = n.name("u", hk * (1.0 / k))',
        (f"{FAM}::test_family_reference_and_cpu[klif_soft_nodecay_scale-s]",),
        "KLIF's scale_reset divides by k as a multiplication by 1/k",
    ),
    Mutant(
        "def-cuba-decays-swapped",
        "neuron definitions (families)",
        "ir/neurons/spikingjelly_cuba_lif.py",
        "    c_decay, v_decay = (n.quantity(r, n.param(r, n.extra(r))) for r in ROLES)",
        "    v_decay, c_decay = (n.quantity(r, n.param(r, n.extra(r))) for r in ROLES)",
        (f"{FAM}::test_family_reference_and_cpu[cuba_soft_sigmoid-s]",),
        "CUBA-LIF's current and membrane decays swapped",
    ),
    Mutant(
        "def-liaf-threshold-related-ignored",
        "neuron definitions (families)",
        "ir/neurons/spikingjelly_liaf.py",
        '        u = h - n.require("v_threshold") if related else h',
        "        u = h",
        (f"{FAM}::test_family_reference_and_cpu[liaf_relu_related-s]",),
        "LIAF's activation ignores threshold_related (act(h) instead of act(h - v_threshold))",
    ),
    Mutant(
        "def-eif-exponent-reciprocal",
        "neuron definitions (families)",
        "ir/neurons/spikingjelly_eif.py",
        '    e = n.name("e", E.exp((v - theta) / delta))',
        '    e = n.name("e", E.exp((v - theta) * (1.0 / delta)))',
        (f"{FAM}::test_family_reference_and_cpu[eif_hard-s]",),
        "EIF's exponent multiplies by 1/delta_T instead of dividing",
    ),
    Mutant(
        "frontend-klif-ignores-scale-reset",
        "frontend",
        "frontend/spikingjelly.py",
        '        extra={"scale_reset": 1.0 if m.scale_reset else 0.0},',
        '        extra={"scale_reset": 0.0},',
        (f"{FAM}::test_family_reference_and_cpu[klif_soft_nodecay_scale-s]",),
        "the frontend drops KLIF's scale_reset",
    ),
    Mutant(
        "autodiff-cos-sign",
        "autodiff (kernel backward)",
        "ir/expr.py",
        '            acc(n.args[0], gy * -dst.op("sin", a[0]))',
        '            acc(n.args[0], gy * dst.op("sin", a[0]))',
        k(FAM, "new_ops_in_every_lowering"),
        "the derivative of cos loses its sign",
    ),
    Mutant(
        "autodiff-pow-drops-exponent",
        "autodiff (kernel backward)",
        "ir/expr.py",
        "            acc(n.args[0], gy * (e * pow_(a[0], e - 1.0)))",
        "            acc(n.args[0], gy * pow_(a[0], e - 1.0))",
        k(FAM, "new_ops_in_every_lowering"),
        "the derivative of x ** e loses the factor e",
    ),
    Mutant(
        "surrogate-squarewave-terms",
        "surrogates",
        "ir/surrogates/spikingjelly.py",
        "    for i in range(1, int(n)):",
        "    for i in range(1, int(n) + 1):",
        k(FAM, "surrogate_torch_lowering"),
        "SquarewaveFourierSeries sums n cosines (SpikingJelly: n - 1)",
    ),
    Mutant(
        "surrogate-leaky-k-relu-at-zero",
        "surrogates",
        "ir/surrogates/spikingjelly.py",
        "    mask = x >= 0.0",
        "    mask = x > 0.0",
        k(FAM, "surrogate_torch_lowering"),
        "LeakyKReLU's gradient at x = 0 is the leak's (SpikingJelly: k's)",
    ),
    Mutant(
        "surrogate-piecewise-leaky-relu-default",
        "surrogates",
        "ir/surrogates/spikingjelly.py",
        '    params={"c": 0.01},',
        '    params={"c": 0.1},',
        k("tests/test_surrogate.py", "defaults_match_spikingjelly"),
        "PiecewiseLeakyReLU's default c is not SpikingJelly's",
    ),
    # ---------------------------------------------------------------- jax
    Mutant(
        "jax-bn-eps",
        "jax runtime",
        "backends/jax/runtime.py",
        "    y = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)",
        "    y = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape))",
        k("tests/test_jax_backend.py", "conv_bn_pool"),
        "the jax BatchNorm loses eps",
    ),
    Mutant(
        "jax-fire-always-ge",
        "jax lowering",
        "backends/jax/lower.py",
        '        fn = "rt.spike" if n.attr("cmp") == ">=" else "rt.spike_gt"',
        '        fn = "rt.spike"',
        k("tests/test_jax_backend.py", "exactly_on_the_threshold"),
        "jax ignores the spec's comparison (>= everywhere)",
    ),
    Mutant(
        "jax-gt-as-ge",
        "jax lowering",
        "backends/jax/lower.py",
        'sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "=="}[op]',
        'sym = {"gt": ">=", "ge": ">=", "lt": "<", "le": "<=", "eq": "=="}[op]',
        k("tests/test_jax_backend.py", "exactly_on_the_threshold"),
        "jax's snnTorch reset from the previous membrane uses >=",
    ),
    Mutant(
        "jax-spike-ge-as-gt",
        "jax runtime",
        "backends/jax/runtime.py",
        "        hit = x > 0 if strict else x >= 0",
        "        hit = x > 0",
        k("tests/test_jax_backend.py", "exactly_on_the_threshold"),
        "jax's SpikingJelly spike fires on > 0",
    ),
    Mutant(
        "jax-pallas-fire-always-ge",
        "jax Pallas kernels",
        "backends/jax/lower.py",
        """        return f"jnp.asarray({a[0]} {n.attr('cmp')} 0.0, jnp.float32)\"""",
        """        return f"jnp.asarray({a[0]} >= 0.0, jnp.float32)\"""",
        k("tests/test_jax_pallas.py", "threshold"),
        "the Pallas kernels ignore the spec's comparison (>= everywhere)",
    ),
    Mutant(
        "jax-pallas-backward-forward-in-time",
        "jax Pallas kernels",
        "templates/jax/pallas_backward.py.j2",
        "        {{ k.t }} = T - 1 - {{ k.k }}",
        "        {{ k.t }} = {{ k.k }}",
        k("tests/test_jax_pallas.py", "gradients_match"),
        "the backward kernel runs time forwards",
    ),
    Mutant(
        "jax-pallas-quantity-gradient-dropped",
        "jax Pallas kernels",
        "templates/jax/pallas_backward.py.j2",
        "{{ a }} + {{ k.d_quantities[loop.index0] }}, ",
        "{{ a }}, ",
        k("tests/test_jax_pallas.py", "gradients_match"),
        "the backward kernel never sums the learnable neuron params' gradients",
    ),
    Mutant(
        "jax-pallas-state-gradient-dropped",
        "jax Pallas kernels",
        "backends/jax/pallas.py",
        "    return gx, gq, gs0\n",
        "    return gx, gq, tuple(jnp.zeros_like(g) for g in gs0)\n",
        k("tests/test_jax_pallas.py", "gradients_match"),
        "the Pallas group's custom_vjp drops the gradient of the state it started from",
    ),
    Mutant(
        "jax-dropout-unscaled",
        "jax runtime",
        "backends/jax/runtime.py",
        "    return keep.astype(dtype) / jnp.asarray(1.0 - p, dtype)",
        "    return keep.astype(dtype)",
        k("tests/test_dropout.py", "distribution and jax"),
        "jax's training dropout does not scale the kept units by 1 / (1 - p)",
    ),
    Mutant(
        "jax-pipeline-folds-bn",
        "pass",
        "backends/jax/__init__.py",
        '        "canonicalize",\n        "drop_noops",',
        '        "canonicalize",\n        "fold_batchnorm",\n        "drop_noops",',
        k("tests/test_jax_backend.py", "conv_bn_pool"),
        "the jax pipeline folds eval BatchNorm into the conv again (rounds differently)",
    ),
    # ---------------------------------------------------------------- torch (reference) lowering
    Mutant(
        "torch-gt-as-ge",
        "reference (torch lowering)",
        "backends/reference/lowering.py",
        't = {"gt": a > b, "ge": a >= b,',
        't = {"gt": a >= b, "ge": a >= b,',
        k("tests/test_neurons.py", "exactly_the_threshold"),
        "the torch maths' snnTorch reset uses >=",
    ),
    Mutant(
        "torch-div-reciprocal",
        "reference (torch lowering)",
        "backends/reference/lowering.py",
        "        return a[0] / a[1]  # type: ignore[operator]",
        "        return a[0] * (1.0 / a[1])  # type: ignore[operator]",
        ("tests/test_neurons.py",),
        "the torch maths divide by tau as a multiplication by 1/tau",
    ),
    Mutant(
        "reference-dropout-not-shared",
        "reference (dropout)",
        "backends/reference/program.py",
        '        if not attrs.get("shared_over_time", False):\n            if lead',
        "        if True:\n            if lead",
        k("tests/test_dropout.py", "bit_for_bit and reference"),
        "SpikingJelly's layer.Dropout draws a new mask every step",
    ),
    # ---------------------------------------------------------------- passes and frontend
    Mutant(
        "drop-noops-drops-training-dropout",
        "pass",
        "ir/passes/drop_noops.py",
        '        return attrs.get("training", False) is False or attrs.get("p") == 0',
        "        return True",
        k("tests/test_dropout.py", "bit_for_bit and reference"),
        "the original bug: dropout removed whatever its mode",
    ),
    Mutant(
        "fold-bn-in-training",
        "pass",
        "ir/passes/fold_batchnorm.py",
        '    if node["attrs"].get("training") is not False:\n        return None\n',
        "",
        k("tests/test_passes.py", "fold_batchnorm"),
        "a training-mode BatchNorm (batch statistics) folded into its conv",
    ),
    Mutant(
        "frontend-dropout-always-eval",
        "frontend",
        "frontend/torch_nn.py",
        '            "shared_over_time": bool(shared_over_time),\n'
        '            "training": bool(m.training),',
        '            "shared_over_time": bool(shared_over_time),\n            "training": False,',
        k("tests/test_dropout.py", "bit_for_bit and reference"),
        "the frontend records dropout without its mode (the issue's silent drop)",
    ),
    # ---------------------------------------------------------------- exporters
    Mutant(
        "onnx-fire-always-gt",
        "exporter (ONNX)",
        "exchange/onnx_export.py",
        '        cmp = "GreaterOrEqual" if n.attr("cmp") == ">=" else "Greater"',
        '        cmp = "Greater"',
        k("tests/test_onnx.py", "exactly_on_the_threshold"),
        "the ONNX Scan fires with > whatever the spec says",
    ),
    Mutant(
        "onnx-gt-as-ge",
        "exporter (ONNX)",
        "exchange/onnx_export.py",
        '    "gt": "Greater",',
        '    "gt": "GreaterOrEqual",',
        k("tests/test_onnx.py", "exactly_on_the_threshold"),
        "the exported snnTorch reset uses >=",
    ),
    Mutant(
        "onnx-exp-in-fp32",
        "exporter (ONNX)",
        "exchange/onnx_export.py",
        '    e = sc.op("Exp", [sc.op("Cast", [x], to=TensorProto.DOUBLE)])\n'
        '    return sc.op("Cast", [e], to=TensorProto.FLOAT)',
        '    return sc.op("Exp", [x])',
        k("tests/test_onnx.py", "neuron_scans or form_scans"),
        "the exported exp (PLIF's sigmoid) in ONNX Runtime's fp32 exp, not torch's",
    ),
    Mutant(
        "nir-sj-lif-r",
        "exporter (NIR)",
        "exchange/nir_export.py",
        '        r = full(1.0 if form != "sj_lif" else float(spec.tau))',
        "        r = full(1.0)",
        k("tests/test_nir.py", "round_trip_spikingjelly_conv_mlp"),
        "NIR export writes SpikingJelly's decay_input=False LIF with r = 1",
    ),
    Mutant(
        "nir-if-r",
        "exporter (NIR)",
        "exchange/nir_export.py",
        '    if form == "sj_if":\n        out = NeuronExport(\n            "IF",\n            {\n'
        '                "r": full(1.0 / dt),',
        '    if form == "sj_if":\n        out = NeuronExport(\n            "IF",\n            {\n'
        '                "r": full(1.0),',
        k("tests/test_nir.py", "round_trip_spikingjelly_conv_mlp"),
        "NIR export writes an IF neuron's input gain without 1 / dt",
    ),
    Mutant(
        "nir-ge-threshold-unchanged",
        "exporter (NIR)",
        "exchange/nir_export.py",
        '    return below(th, dtype) if spec.fire_cmp == ">=" else th',
        "    return th",
        k("tests/test_nir.py", "ge_threshold"),
        "NIR export writes a >= threshold unchanged (NIR fires on >)",
    ),
)


# --------------------------------------------------------------------------- running
def tree_files() -> list[str]:
    """Tracked and untracked files that git does not ignore (what a checkout would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def make_copy(dest: Path) -> None:
    for rel in tree_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    # the package as pyproject installs it: the top-level folders inside snncc/, so the copy
    # imports as snncc from its own root (ahead of the editable install of the real tree)
    for name, folder in package_dirs(dest).items():
        (dest / "snncc" / name).symlink_to(dest / folder)


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env["XDG_CACHE_HOME"] = str(copy / "_cache")  # never reuse a kernel the real tree built
    return env


def check_imports_from(copy: Path) -> None:
    code = (
        "import snncc, snncc.backends.jax.runtime as r, snncc.ir.passes as p, "
        "snncc.frontend as f, snncc.templates as t, snncc.exchange as e; "
        "print(snncc.__file__, r.__file__, p.__file__, f.__file__, t.__file__, e.__file__)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=env_for(copy), capture_output=True, text=True
    )
    files = res.stdout.split()
    if res.returncode != 0 or not files or not all(f.startswith(str(copy)) for f in files):
        sys.exit(f"the copy in {copy} does not import as snncc: {res.stdout}{res.stderr}")


def pytest(copy: Path, args: tuple[str, ...]) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    t0 = time.time()
    try:
        res = subprocess.run(
            cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.time() - t0
    tail = (res.stdout + res.stderr).strip().splitlines()
    return res.returncode, tail[-1] if tail else "", time.time() - t0


def apply(copy: Path, m: Mutant) -> str:
    path = copy / m.file
    text = path.read_text()
    n = text.count(m.find)
    if n != 1:
        raise SystemExit(
            f"mutant {m.id}: its snippet occurs {n} times in {m.file} (needs exactly 1); "
            "the code moved: retarget the mutant\n--- snippet ---\n" + m.find
        )
    path.write_text(text.replace(m.find, m.replace))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", default="", help="comma-separated mutant ids")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = ap.parse_args(argv)
    mutants = list(MUTANTS)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.id for m in mutants}
        if unknown:
            ap.error(f"unknown mutant ids: {sorted(unknown)}")
        mutants = [m for m in mutants if m.id in wanted]
    if args.list:
        for m in mutants:
            print(f"{m.id:34s} {m.area:28s} {m.file}: {m.why}")
        return 0
    for m in mutants:  # every snippet must be where it is said to be before anything runs
        text = (ROOT / m.file).read_text()
        if text.count(m.find) != 1:
            raise SystemExit(
                f"mutant {m.id}: its snippet occurs {text.count(m.find)} times in {m.file} "
                "(needs exactly 1): the code moved, retarget the mutant"
            )
    tmp = Path(tempfile.mkdtemp(prefix="snncc-mutants-"))
    try:
        copy = tmp / "tree"
        make_copy(copy)
        check_imports_from(copy)
        selections = sorted({m.tests for m in mutants})
        print(f"baseline: {len(selections)} test selections on the unmutated copy ...", flush=True)
        for sel in selections:
            rc, last, secs = pytest(copy, sel)
            if rc != 0:
                raise SystemExit(f"baseline fails ({' '.join(sel)}): {last}")
        rows = []
        for m in mutants:
            original = apply(copy, m)
            try:
                rc, last, secs = pytest(copy, m.tests)
            finally:
                (copy / m.file).write_text(original)
            status = STATUS.get(rc, f"error (pytest exit {rc})")
            rows.append((m, status, secs, last))
            print(f"{status:9s} {secs:6.1f}s  {m.id:34s} {last}", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    caught = sum(1 for _, s, _, _ in rows if s == "caught")
    print(f"\n{caught} of {len(rows)} mutants caught")
    by_area: dict[str, list[str]] = {}
    for m, s, _, _ in rows:
        by_area.setdefault(m.area, []).append(s)
    for area, states in sorted(by_area.items()):
        print(f"  {area:30s} {states.count('caught')}/{len(states)}")
    survived = [f"{m.id} ({s})" for m, s, _, _ in rows if s != "caught"]
    if survived:
        print(f"not caught: {', '.join(survived)}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
