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
    python scripts/mutants.py --only cuda-fire-ge-to-gt,onnx-tau-reciprocal
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the installed package's layout: import name -> folder in the tree (pyproject's package-dir)
PACKAGE_DIRS = {
    "frontend": "frontend",
    "ir": "ir",
    "backends": "backends",
    "templates": "templates",
}

TIMEOUT_S = 900


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


MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- the three that survived
    Mutant(
        "cuda-fire-ge-to-gt",
        "neuron template (step)",
        "templates/cuda/neuron_step.cuh.j2",
        "    return ((h - {{ n.th }}) {{ n.fire_cmp }} 0.0f) ? 1.0f : 0.0f;",
        "    return ((h - {{ n.th }}) > 0.0f) ? 1.0f : 0.0f;",
        k("tests/test_cpu_backend.py", "exactly_on_the_threshold and sj_if"),
        "SpikingJelly-style kernels fire with > instead of the spec's comparison",
    ),
    Mutant(
        "onnx-tau-reciprocal",
        "exporter (ONNX)",
        "snncc/export/onnx.py",
        '"Add", [v, sc.op("Div", [sc.op("Sub", [x, sc.op("Sub", [v, c(vr)])]), c(spec.tau)])]',
        '"Add", [v, sc.op("Mul", [sc.op("Sub", [x, sc.op("Sub", [v, c(vr)])]), c(1 / spec.tau)])]',
        k("tests/test_onnx.py", "neuron_scans"),
        "the exported LIF multiplies by 1/tau instead of dividing by tau",
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
    # ---------------------------------------------------------------- neuron templates
    Mutant(
        "cuda-atan-surrogate",
        "neuron template (surrogate)",
        "templates/cuda/neuron_step.cuh.j2",
        "    return {{ c.half_alpha }} / (1.0f + z * z);",
        "    return {{ c.alpha }} / (1.0f + z * z);",
        k("tests/test_cpu_backend.py", "kernel_matches_torch_neuron_maths and atan"),
        "the atan surrogate uses alpha instead of alpha / 2",
    ),
    Mutant(
        "cuda-hard-reset-grad-detached",
        "neuron template (backward)",
        "templates/cuda/neuron_adjoint.j2",
        "const float rg = (1.0f - s) + ({{ n.vr_reset }} - h) * sg;",
        "const float rg = (1.0f - s);",
        k("tests/test_cpu_backend.py", "kernel_matches_torch_neuron_maths and hard"),
        "a hard reset that is not detached loses its gradient through the spike",
    ),
    Mutant(
        "cuda-lif-grad-no-decay",
        "neuron template (backward)",
        "templates/cuda/neuron_adjoint.j2",
        "float gxt = gh / {{ n.tau }};\ngv = gh - gh / {{ n.tau }};",
        "float gxt = gh / {{ n.tau }};\ngv = gh;",
        k("tests/test_cpu_backend.py", "kernel_matches_torch_neuron_maths and sj_lif_decay"),
        "the LIF membrane gradient forgets the decay",
    ),
    Mutant(
        "form-fire-gt-to-ge",
        "neuron template (step)",
        "templates/cuda/form_step.cuh.j2",
        "    st.H = (st.u {{ f.fire_cmp }} 0.0f) ? 1.0f : 0.0f;",
        "    st.H = (st.u >= 0.0f) ? 1.0f : 0.0f;",
        k("tests/test_cpu_snntorch_norse.py", "exactly_on_the_threshold and snntorch_leaky"),
        "snnTorch-style kernels fire with >= instead of the spec's comparison",
    ),
    Mutant(
        "form-reset-from-ge",
        "neuron template (step)",
        "templates/cuda/form_step.cuh.j2",
        "    st.r = ((v - p.th) > 0.0f) ? 1.0f : 0.0f;",
        "    st.r = ((v - p.th) >= 0.0f) ? 1.0f : 0.0f;",
        k("tests/test_cpu_snntorch_norse.py", "exactly_on_the_threshold and snntorch_leaky"),
        "snnTorch's reset from the previous membrane uses >= (snnTorch: m - th > 0)",
    ),
    Mutant(
        "form-norse-fire-ge-to-gt",
        "neuron template (step)",
        "templates/cuda/form_step.cuh.j2",
        "    st.z = (st.u {{ f.fire_cmp }} 0.0f) ? 1.0f : 0.0f;",
        "    st.z = (st.u > 0.0f) ? 1.0f : 0.0f;",
        k("tests/test_cpu_snntorch_norse.py", "exactly_on_the_threshold and norse_lifbox"),
        "Norse-style kernels fire with > even where the spec says >= (NIR files)",
    ),
    Mutant(
        "form-fast-sigmoid",
        "neuron template (surrogate)",
        "templates/cuda/form_step.cuh.j2",
        '{% elif f.surrogate == "fast_sigmoid" %}\n'
        "    const float d = {{ c.alpha }} * snncc_absf(x) + 1.0f;\n"
        "    return g / (d * d);",
        '{% elif f.surrogate == "fast_sigmoid" %}\n'
        "    const float d = {{ c.alpha }} * snncc_absf(x) + 1.0f;\n"
        "    return g / d;",
        k("tests/test_cpu_snntorch_norse.py", "kernel_matches_torch_neuron_maths and fast_sigmoid"),
        "snnTorch's fast sigmoid surrogate without its square",
    ),
    Mutant(
        "form-lifbox-order",
        "neuron template (step)",
        "templates/cuda/form_step.cuh.j2",
        "    st.w = (x + {{ f.v_leak }}) - v;",
        "    st.w = x + ({{ f.v_leak }} - v);",
        k("tests/test_cpu_snntorch_norse.py", "kernel_matches_torch_neuron_maths and norse_lifbox"),
        "Norse's box LIF in another (algebraically equal) operation order",
    ),
    # ---------------------------------------------------------------- jax render / runtime
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
        "jax render",
        "backends/jax/render.py",
        '"fire": "rt.spike" if spec.fire_cmp == ">=" else "rt.spike_gt",',
        '"fire": "rt.spike",',
        k("tests/test_jax_backend.py", "exactly_on_the_threshold"),
        "jax ignores the spec's comparison (>= everywhere)",
    ),
    Mutant(
        "jax-snntorch-reset-ge",
        "jax template",
        "templates/jax/neuron.py.j2",
        "{{ r }} = lax.stop_gradient(({{ v }} - {{ th }} > 0).astype({{ v }}.dtype))",
        "{{ r }} = lax.stop_gradient(({{ v }} - {{ th }} >= 0).astype({{ v }}.dtype))",
        k("tests/test_jax_backend.py", "exactly_on_the_threshold"),
        "jax's snnTorch reset from the previous membrane uses >=",
    ),
    Mutant(
        "jax-hard-reset-drops-vreset",
        "jax template",
        "templates/jax/neuron.py.j2",
        "{{ n.v }} = {{ z }} * {{ n.vr }} + (1.0 - {{ z }}) * {{ n.h }}",
        "{{ n.v }} = (1.0 - {{ z }}) * {{ n.h }}",
        k("tests/test_jax_backend.py", "mlp_neuron_forms and vreset"),
        "jax's hard reset goes to 0 instead of v_reset",
    ),
    Mutant(
        "jax-atan-surrogate",
        "jax runtime",
        "backends/jax/runtime.py",
        "    return g * ((alpha / 2) / (1 + z * z))",
        "    return g * (alpha / (1 + z * z))",
        k("tests/test_jax_snntorch_norse.py", "surrogate_gradients_match_torch"),
        "jax's atan surrogate uses alpha instead of alpha / 2",
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
    Mutant(
        "jax-dropout-unscaled",
        "jax runtime",
        "backends/jax/runtime.py",
        "    return keep.astype(dtype) / jnp.asarray(1.0 - p, dtype)",
        "    return keep.astype(dtype)",
        k("tests/test_dropout.py", "distribution and jax"),
        "jax's training dropout does not scale the kept units by 1 / (1 - p)",
    ),
    # ---------------------------------------------------------------- reference (torch) maths
    Mutant(
        "torch-snntorch-reset-ge",
        "reference maths",
        "snncc/neurons.py",
        "    r = (m - th > 0).float()",
        "    r = (m - th >= 0).float()",
        k("tests/test_neurons.py", "exactly_the_threshold"),
        "the torch maths' snnTorch reset uses >=",
    ),
    Mutant(
        "torch-lif-reciprocal",
        "reference maths",
        "snncc/neurons.py",
        "        return v - (v - vr) / spec.tau + x",
        "        return v - (v - vr) * (1.0 / spec.tau) + x",
        ("tests/test_neurons.py",),
        "the torch maths' LIF (decay_input=False) multiplies by 1/tau",
    ),
    Mutant(
        "torch-soft-sign-surrogate",
        "reference maths",
        "snncc/surrogate.py",
        "    return g * (1 / (2 * alpha * z * z))",
        "    return g * (1 / (2 * alpha * z))",
        ("tests/test_surrogate.py",),
        "the soft-sign surrogate loses a factor",
    ),
    Mutant(
        "reference-dropout-not-shared",
        "reference maths",
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
        "snncc/export/onnx.py",
        '        cmp = "GreaterOrEqual" if spec.fire_cmp == ">=" else "Greater"',
        '        cmp = "Greater"',
        k("tests/test_onnx.py", "exactly_on_the_threshold"),
        "the ONNX Scan fires with > whatever the spec says",
    ),
    Mutant(
        "onnx-snntorch-reset-ge",
        "exporter (ONNX)",
        "snncc/export/onnx.py",
        '        r = op("Cast", [op("Greater", [op("Sub", [m, th]), c(0.0)])], to=TensorProto.FLOAT)',
        '        r = op("Cast", [op("GreaterOrEqual", [op("Sub", [m, th]), c(0.0)])], '
        "to=TensorProto.FLOAT)",
        k("tests/test_onnx.py", "exactly_on_the_threshold"),
        "the exported snnTorch reset uses >=",
    ),
    Mutant(
        "onnx-lifbox-order",
        "exporter (ONNX)",
        "snncc/export/onnx.py",
        'v1 = op("Add", [v, op("Mul", [c_m, op("Sub", [op("Add", [x, v_leak]), v])])])',
        'v1 = op("Add", [v, op("Mul", [c_m, op("Add", [x, op("Sub", [v_leak, v])])])])',
        k("tests/test_onnx.py", "form_scans"),
        "the exported Norse box LIF in another (algebraically equal) operation order",
    ),
    Mutant(
        "nir-sj-lif-r",
        "exporter (NIR)",
        "snncc/export/nir.py",
        '        r = full(1.0 if form != "sj_lif" else float(spec.tau))',
        "        r = full(1.0)",
        k("tests/test_nir.py", "round_trip_spikingjelly_conv_mlp"),
        "NIR export writes SpikingJelly's decay_input=False LIF with r = 1",
    ),
    Mutant(
        "nir-if-r",
        "exporter (NIR)",
        "snncc/export/nir.py",
        '                "r": full(1.0 / dt),',
        '                "r": full(1.0),',
        k("tests/test_nir.py", "round_trip_spikingjelly_conv_mlp"),
        "NIR export writes an IF neuron's input gain without 1 / dt",
    ),
    Mutant(
        "nir-ge-threshold-unchanged",
        "exporter (NIR)",
        "snncc/export/nir.py",
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
    for name, folder in PACKAGE_DIRS.items():
        (dest / "snncc" / name).symlink_to(dest / folder)


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env["XDG_CACHE_HOME"] = str(copy / "_cache")  # never reuse a kernel the real tree built
    return env


def check_imports_from(copy: Path) -> None:
    code = (
        "import snncc, snncc.backends.jax.runtime as r, snncc.ir.passes as p, "
        "snncc.frontend as f, snncc.templates as t; "
        "print(snncc.__file__, r.__file__, p.__file__, f.__file__, t.__file__)"
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
            status = "survived" if rc == 0 else ("timeout" if rc == -1 else "caught")
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
    survived = [m.id for m, s, _, _ in rows if s != "caught"]
    if survived:
        print(f"survived: {', '.join(survived)}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
