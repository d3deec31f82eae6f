"""The fused neuron kernel templates: rendering rules, exact literals, and nvcc compilation.

Every generated CUDA kernel must compile for sm_80 and sm_90 (CI without a
GPU still has nvcc); the kernels' numerics are checked on the host by
tests/test_cpu_backend.py, which runs the very same template text.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from snncc.backends.kernels import (
    NVCC_EXACT_FLAGS,
    SJ_CHARGES,
    SNNTORCH_NORSE_CHARGES,
    SUPPORTED_CHARGES,
    SUPPORTED_SURROGATES,
    f32_literal,
    neuron_kernel_info,
    render_neuron_kernels,
    template_names,
)
from snncc.errors import IRError, UnsupportedError
from snncc.ir.neuron import CHARGE_FORMS, FORMS, NORSE_FORMS, NeuronSpec
from snncc.ir.neurons import build

TAU_FORMS = ("sj_lif_decay_input", "sj_lif", "snncc_li")


def make_spec(
    charge: str,
    reset: str = "hard",
    detach: bool = False,
    output: str = "spike",
    fire_cmp: str = ">=",
    surrogate: str = "sigmoid",
    alpha: float = 4.0,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
) -> NeuronSpec:
    """A spec of one charge form with the given knobs (v_reset None for a soft reset)."""
    plif = charge in ("sj_plif_decay_input", "sj_plif")
    return NeuronSpec(
        model="plif" if plif else ("li" if charge == "snncc_li" else "lif"),
        charge=charge,
        tau=tau if charge in TAU_FORMS else None,
        v_threshold=v_threshold,
        v_reset=None if reset == "subtract" else v_reset,
        reset=reset,
        detach_reset=detach,
        fire_cmp=fire_cmp,
        output=output,
        surrogate=surrogate,
        alpha=alpha,
        v_init=0.0 if reset == "subtract" else v_reset,
        learnable=("w",) if plif else (),
    )


_SNNTORCH_CONSTANTS = {"beta": 0.9, "alpha": 0.8, "graded_spikes_factor": 0.5, "V": 0.4}
_NORSE_CONSTANTS = {"dt": 1e-3, "v_leak": 0.05, "dt_tau_mem_inv": 0.25, "neg_dt_tau_syn_inv": -0.3}


def form_spec(
    charge: str,
    reset: str = "subtract",
    output: str = "spike",
    *,
    args: bool = False,
    reset_delay: bool = False,
    detach: bool = False,
    surrogate: str = "atan",
    alpha: float = 2.0,
) -> NeuronSpec:
    """An snnTorch / Norse spec: every quantity a node param (``args``) or a spec constant."""
    norse = charge in NORSE_FORMS
    roles = FORMS[charge].roles if args else ()
    if norse:
        extra = dict(_NORSE_CONSTANTS)
        if "tau_syn_inv" not in FORMS[charge].roles:
            extra.pop("neg_dt_tau_syn_inv")
        li = charge == "norse_li"
        return NeuronSpec(
            model=charge,
            charge=charge,
            v_threshold=math.nan if li else 0.4,
            v_reset=None if li else -0.1,
            reset="none" if li else reset,
            detach_reset=detach,
            fire_cmp=">",
            output=output,
            surrogate="no_grad" if li else surrogate,
            alpha=alpha,
            v_init=0.05,
            extra=extra,
            param_roles=roles,
            learnable=roles,
        )
    extra = (
        {} if args else {k: v for k, v in _SNNTORCH_CONSTANTS.items() if k in FORMS[charge].roles}
    )
    return NeuronSpec(
        model=charge,
        charge=charge,
        v_threshold=0.8,
        v_reset=0.0,
        reset=reset,
        reset_delay=reset_delay,
        fire_cmp=">",
        output=output,
        surrogate=surrogate,
        alpha=alpha,
        extra=extra,
        param_roles=roles,
        learnable=roles,
    )


def snntorch_norse_matrix() -> list[tuple[NeuronSpec, list, list, dict]]:
    """A compact matrix of the form family: every charge x reset, the other knobs cycling.

    Covers every form, reset, reset_delay, detach_reset, output, both param
    kinds (argument / literal), every surrogate, prologue and epilogue steps.
    """
    cases = []
    combos = [
        (c, r)
        for c in SNNTORCH_NORSE_CHARGES
        if c.startswith("snntorch")
        for r in ("subtract", "hard", "none")
    ]
    combos += [
        ("norse_lif", "hard"),
        ("norse_lif", "none"),
        ("norse_lif_recurrent", "hard"),
        ("norse_lifbox", "hard"),
        ("norse_lifbox", "subtract"),
        ("norse_li", "none"),
    ]
    for i, (charge, reset) in enumerate(combos):
        outputs = [
            o
            for o in ("spike", "membrane", "current")
            if o != "current" or "i" in FORMS[charge].state
        ]
        if charge == "norse_li":
            outputs.remove("spike")
        spec = form_spec(
            charge,
            reset,
            outputs[i % len(outputs)],
            args=i % 2 == 0,
            reset_delay=i % 3 == 1,
            detach=i % 2 == 1 and charge in NORSE_FORMS,
            surrogate=SUPPORTED_SURROGATES[(3 * i) % len(SUPPORTED_SURROGATES)],
            alpha=1.5 + (i % 4),
        )
        first = len(spec.input_ports)
        pro = [
            [],
            [{"kind": "scale", "op": "mul", "value": 1.5}],
            [{"kind": "add", "port": first}],
        ][i % 3]
        n_pro_adds = sum(st["kind"] == "add" for st in pro)
        epi = [] if i % 2 else [{"kind": "add", "port": first + n_pro_adds}]
        opts: dict = {"recompute": i % 4 == 3}
        if i % 3 == 2:  # autocast's 16-bit I/O: both dtypes, with and without a 16-bit output
            opts["x_dtype"] = ("bfloat16", "float16")[(i // 3) % 2]
            if (i // 6) % 2 == 0:
                opts["spike_dtype"] = opts["x_dtype"]
        cases.append((spec, pro, epi, opts))
    return cases


def snntorch_norse_families_matrix() -> list[tuple[NeuronSpec, list, list, dict]]:
    """The issue-12 snnTorch / Norse families (tests/test_snntorch_families.py and
    test_norse_families.py check their numerics): each form with every quantity a node param
    and with constants; outputs, resets, surrogates, recompute, 16-bit I/O cycling."""
    norse = {"dt": 1e-3, "v_leak": 0.05, "dt_tau_mem_inv": 0.1, "neg_dt_tau_syn_inv": -0.2}
    izh_c = {"dt": 1e-3, "b": 0.2, "c": -65.0, "d": 6.0, "sq": 0.04, "mn": 5.0, "bias": 140.0}
    consts = {
        "snntorch_alpha": {"alpha": 0.9, "beta": 0.8, "current_inh": 1.0},
        "snntorch_lapicque": {"R": 5.0, "C": 0.02, "time_step": 0.01},
        "snntorch_rsynaptic": {"alpha": 0.9, "beta": 0.8},
        "snntorch_rsynaptic_v": {"alpha": 0.9, "beta": 0.8, "V": 0.5},
        "norse_iaf": {"dt": 1e-3},
        "norse_lif_adex": {
            **norse,
            **{"dt_tau_ada_inv": 0.002, "delta_T": 0.5},
            **{"adaptation_current": 4.0, "adaptation_spike": 0.02},
        },
        "norse_lif_ex": {**norse, "delta_T": 0.5},
        "norse_lif_refrac": {**norse, "rho_reset": 3.0},
        "norse_lsnn": {**norse, "dt_tau_adapt_inv": 0.002, "beta": 1.8},
        "norse_izhikevich": {**izh_c, "tau_inv_dt": 0.25, "tau_inv_dt_a": 0.005, "u_init": -14.0},
    }
    consts["norse_lsnn_recurrent"] = consts["norse_lsnn"]
    consts["norse_lif_ex_recurrent"] = consts["norse_lif_ex"]
    consts["norse_lif_refrac_recurrent"] = consts["norse_lif_refrac"]
    consts["norse_lif_adex_recurrent"] = consts["norse_lif_adex"]
    consts["norse_izhikevich_recurrent"] = consts["norse_izhikevich"]
    always = {"dt", "v_leak", "u_init", "current_inh"}  # constants that no param replaces
    cases = []
    for i, (charge, args) in enumerate(itertools.product(consts, (True, False))):
        roles = FORMS[charge].roles if args else ()
        if charge == "snntorch_lapicque":  # the beta param derives C (learn_beta=True)
            roles = tuple(r for r in roles if r != "C")
        izh = "izhikevich" in charge
        outputs = ["spike", "membrane"] + (["current"] if "i" in FORMS[charge].state else [])
        spec = NeuronSpec(
            model=charge,
            charge=charge,
            v_threshold=30.0 if izh else 0.5,
            v_reset=-65.0 if izh else -0.1,
            reset=("subtract", "hard", "none")[i % 3] if charge.startswith("snntorch") else "hard",
            detach_reset=charge.endswith("recurrent"),
            fire_cmp=">",
            output=outputs[i % len(outputs)],
            surrogate=SUPPORTED_SURROGATES[(5 * i) % len(SUPPORTED_SURROGATES)],
            alpha=1.5 + (i % 4),
            v_init=-70.0 if izh else 0.05,
            extra={k: v for k, v in consts[charge].items() if not args or k in always},
            param_roles=roles,
            learnable=roles,
        )
        opts: dict = {"recompute": i % 4 == 3}
        if i % 3 == 2:  # autocast's 16-bit I/O, with and without a 16-bit output
            opts["x_dtype"] = ("bfloat16", "float16")[(i // 3) % 2]
            if i % 2:
                opts["spike_dtype"] = opts["x_dtype"]
        pro = [[], [{"kind": "add", "port": len(spec.input_ports)}]][i % 2]
        cases.append((spec, pro, [], opts))
    return cases


def form_matrix() -> list[tuple[NeuronSpec, list, list, dict]]:
    """Every SJ-family charge x reset x detach x output; the other knobs cycle through all values."""
    cases = []
    prologues = ([], [{"kind": "scale", "op": "div", "value": 3.0}], [{"kind": "add", "port": 1}])
    epilogues = ([], [{"kind": "add", "port": 2}, {"kind": "scale", "op": "mul", "value": 0.5}])
    combos = itertools.product(
        SJ_CHARGES, ("hard", "subtract", "none"), (False, True), ("spike", "membrane")
    )
    n_half = 0
    for i, (charge, reset, detach, output) in enumerate(combos):
        spec = make_spec(
            charge,
            reset,
            detach,
            output,
            fire_cmp=(">=", ">")[i % 2],
            surrogate=SUPPORTED_SURROGATES[i % len(SUPPORTED_SURROGATES)],
            alpha=1.5 + (i % 4),
        )
        pro = prologues[i % 3]
        epi = [dict(s, port=len(pro) + 1) if s["kind"] == "add" else s for s in epilogues[i % 2]]
        opts: dict = {"recompute": i % 4 >= 2}
        if output == "spike" and not epi and i % 5 == 0:
            opts["spike_dtype"] = "uint8"
        if not opts["recompute"] and i % 3 == 1:  # autocast's 16-bit I/O (not with recompute)
            # both dtypes, with and without a 16-bit output (any output: spikes, membranes)
            opts["x_dtype"] = ("bfloat16", "float16")[(n_half // 2) % 2]
            half_out = (n_half % 4 in (0, 3)) != ((n_half // 4) % 2 == 1)
            if "spike_dtype" not in opts and half_out:
                opts["spike_dtype"] = opts["x_dtype"]
            n_half += 1
        cases.append((spec, pro, epi, opts))
    return cases


# ----------------------------------------------------------------- literals
@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.0, 2.0, -0.5, 0.1, 1 / 3, 2.0000001, 1e-40, 3.4e38, -7.77]
)
def test_f32_literal_round_trips_to_the_fp32_value_torch_uses(value: float) -> None:
    text = f32_literal(value)
    assert text.endswith("f") or text.endswith("f)")
    parsed = (
        float.fromhex(text.strip("()").rstrip("f")) if "0x" in text else float(text.strip("()f"))
    )
    assert np.float32(parsed) == np.float32(value)
    assert parsed == float(np.float32(value))  # exactly representable: no double rounding
    if value == 0.0:
        assert np.signbit(np.float32(parsed)) == np.signbit(value)


def test_f32_literal_refuses_non_finite() -> None:
    with pytest.raises(UnsupportedError, match="not finite"):
        f32_literal(float("inf"))


def test_host_compiler_parses_literals_exactly(tmp_path: Path) -> None:
    """g++ reads each rendered literal back as exactly float32(value)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    values = [0.1, 1 / 3, 2.0000001, -7.77, 1e-40, 0.7, 2.5e-3]
    body = "".join(f'  std::printf("%a\\n", (double){f32_literal(v)});\n' for v in values)
    src = tmp_path / "lit.cpp"
    src.write_text(f"#include <cstdio>\nint main() {{\n{body}  return 0;\n}}\n")
    exe = tmp_path / "lit"
    subprocess.run([cxx, "-std=c++17", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert [float.fromhex(o) for o in out] == [float(np.float32(v)) for v in values]


# ---------------------------------------------------------------- rendering
def test_surrogate_and_charge_tables_cover_the_ir() -> None:
    from snncc.surrogate import SURROGATE_DEFAULTS

    assert set(SUPPORTED_SURROGATES) == set(SURROGATE_DEFAULTS)
    assert set(SUPPORTED_CHARGES) == set(CHARGE_FORMS)


def test_templates_are_one_kernel_per_file() -> None:
    names = template_names()
    assert "neuron_forward.cu.j2" in names and "neuron_backward.cu.j2" in names
    src = render_neuron_kernels(make_spec("sj_lif_decay_input"), target="cuda")
    assert len(re.findall(r"SNNCC_KERNEL void ", src)) == 2


def test_names_are_hashes_and_no_user_strings_reach_the_code() -> None:
    spec = make_spec("sj_plif", "subtract")
    info = neuron_kernel_info(spec)
    assert re.fullmatch(r"snncc_fwd_[0-9a-f]{16}", info.forward_name)
    assert re.fullmatch(r"snncc_bwd_[0-9a-f]{16}", info.backward_name)
    src = render_neuron_kernels(spec, target="cpu")
    assert info.forward_name in src and info.backward_name in src
    # different forms, options or fused steps never share a name
    other = neuron_kernel_info(spec, options={"recompute": True})
    assert other.tag != info.tag
    with pytest.raises(UnsupportedError, match="extra"):
        render_neuron_kernels(spec.replace(extra={"note": '"; system("x"); //'}))


@pytest.mark.parametrize(
    "spec",
    [
        make_spec("sj_plif_decay_input", "hard", surrogate="atan"),
        form_spec("snntorch_synaptic", "hard", args=True),
        form_spec("norse_lif_recurrent", "hard", detach=True),
    ],
    ids=lambda s: s.charge,
)
def test_same_logic_for_both_targets(spec) -> None:
    """Everything after the macro layer is the same text for CUDA and CPU."""
    steps = ([{"kind": "scale", "op": "mul", "value": 0.25}], [{"kind": "add", "port": 2}])
    cuda = render_neuron_kernels(spec, *steps, target="cuda")
    cpu = render_neuron_kernels(spec, *steps, target="cpu")
    body = lambda s: s[s.index("// ---- neuron ") :]  # noqa: E731
    assert body(cuda) == body(cpu)


def test_form_kernels_take_params_as_arguments_or_exact_literals() -> None:
    """A quantity with a node param is an argument (with a gradient); otherwise an fp32 literal."""
    as_args = neuron_kernel_info(form_spec("snntorch_synaptic", args=True))
    assert as_args.family == "expr" and as_args.state_vars == ("v", "i")
    assert as_args.param_args == ("a", "b", "th", "g")
    assert as_args.param_roles == ("alpha", "beta", "threshold", "graded_spikes_factor")
    names = [a for a, _ in as_args.backward_args]
    assert {"p_b", "st_b", "gp_b", "gi_last", "i_seq", "gi0"} <= set(names)
    spec = form_spec("snntorch_leaky")  # beta 0.9 (a double): the fp32 torch multiplies by
    src = render_neuron_kernels(spec, target="cpu")
    # no p_b argument (as a whole word: a kernel tag may contain the letters, "step_b...");
    # the constant is an exact literal inside the step
    assert f"{f32_literal(0.9)} * s_v;" in src and not re.search(r"\bp_b\b", src)
    assert neuron_kernel_info(spec).param_args == ()
    # a constant graded factor divides the way torch divides by a Python scalar on each device
    assert re.search(r"SNNCC_DIV_SCALAR\(s, 0x[0-9a-f.p+-]+f\)", src)
    assert "= s / p.g;" in render_neuron_kernels(form_spec("snntorch_leaky", args=True))
    norse = neuron_kernel_info(form_spec("norse_lif_recurrent", "hard", args=True))
    assert norse.has_rec and norse.state_vars == ("v", "i")
    assert norse.param_args == ("cm", "cs", "th", "vr")
    # Norse's v_reset is read by a hard reset only
    box = neuron_kernel_info(form_spec("norse_lifbox", "subtract", args=True))
    assert box.param_args == ("cm", "th") and box.state_vars == ("v",)


@pytest.mark.parametrize(
    "spec, steps, options, match",
    [
        (make_spec("sj_lif").replace(charge="made_up"), ((), ()), {}, "no fused kernel"),
        (make_spec("sj_lif").replace(fire_from="previous"), ((), ()), {}, "fire_from"),
        (make_spec("sj_lif"), ((), ()), {"unroll": 4}, "unknown neuron kernel option"),
        (make_spec("sj_lif"), ((), ()), {"spike_dtype": "int8"}, "spike_dtype"),
        (
            make_spec("sj_lif"),
            ((), [{"kind": "scale", "op": "mul", "value": 2.0}]),
            {"spike_dtype": "uint8"},
            "uint8",
        ),
        (
            make_spec("snncc_li", "none", output="membrane"),
            ((), ()),
            {"spike_dtype": "uint8"},
            "uint8",
        ),
        (make_spec("sj_lif"), ([{"kind": "relu"}], ()), {}, "cannot be fused"),
        (make_spec("sj_lif"), ([{"kind": "add", "port": 0}], ()), {}, "port >= 1"),
        (make_spec("sj_lif").replace(surrogate="nope"), ((), ()), {}, "surrogate"),
        (make_spec("sj_lif").replace(learnable=("tau",)), ((), ()), {}, "learnable"),
        # the snnTorch / Norse form family
        (form_spec("snntorch_leaky").replace(extra={}), ((), ()), {}, "'beta' or its constant"),
        (
            form_spec("snntorch_leaky").replace(extra={"beta": 0.9, "tau": 2.0}),
            ((), ()),
            {},
            r"extra constants \['tau'\]",
        ),
        (
            form_spec("snntorch_leaky").replace(extra={"beta": "0.9"}),
            ((), ()),
            {},
            "not a number",
        ),
        (
            form_spec("norse_lif").replace(param_roles=("w",), learnable=("w",)),
            ((), ()),
            {},
            r"params \['w'\] mean nothing",
        ),
        (form_spec("norse_lif").replace(extra={"dt": 1e-3}), ((), ()), {}, "v_leak"),
        (
            form_spec("snntorch_rleaky"),
            ([{"kind": "add", "port": 1}], ()),
            {},
            "port >= 2",
        ),
        (form_spec("snntorch_leaky"), ((), ()), {"spike_dtype": "uint8"}, "'float32' or a 16-bit"),
        (form_spec("snntorch_leaky"), ((), ()), {"x_dtype": "float64"}, "x_dtype='float64'"),
        (make_spec("sj_lif"), ((), ()), {"x_dtype": "float64"}, "x_dtype='float64'"),
        (
            make_spec("sj_lif", output="membrane"),
            ((), ()),
            {"spike_dtype": "uint8"},
            "needs a spiking output",
        ),
        (
            form_spec("snntorch_leaky", surrogate="rect").replace(alpha=0.0),
            ((), ()),
            {},
            "> 0",
        ),
        (form_spec("norse_lif").replace(fire_from="previous"), ((), ()), {}, "fire_from"),
    ],
)
def test_unsupported_inputs_are_refused_by_name(spec, steps, options, match) -> None:
    with pytest.raises(UnsupportedError, match=match):
        render_neuron_kernels(spec, *steps, target="cuda", options=options)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"alpha": math.inf}, "alpha is inf"), ({"v_threshold": math.nan}, "v_threshold is nan")],
)
def test_non_finite_constants_are_refused_before_any_kernel(change, match) -> None:
    """A non-finite constant the kernels would read never becomes a spec (NeuronSpec refuses
    it once, for every backend); the kernels' own finiteness checks stay as a second line."""
    with pytest.raises(IRError, match=match):
        form_spec("norse_lif").replace(**change)


def test_info_describes_the_calling_convention() -> None:
    pro = [{"kind": "add", "port": 1}, {"kind": "scale", "op": "div", "value": 2.0}]
    epi = [{"kind": "add", "port": 2}]
    info = neuron_kernel_info(make_spec("sj_plif_decay_input"), pro, epi, {"recompute": True})
    assert info.add_ports == (1, 2) and info.n_prologue_adds == 1
    assert info.recompute and info.backward_reads_x and info.learns_k and info.needs_h
    names = [a for a, _ in info.forward_args]
    assert names == ["x", "a0", "a1", "v0", "p_k", "st_k", "out", "h_seq", "v_last", "T", "N"]
    assert info.save == "cut" and info.recompute_in_kernel  # h parked in gx by the backward
    # 16-bit x: the host re-runs the forward into a buffer instead (gx is 16-bit)
    half = neuron_kernel_info(
        make_spec("sj_lif"), options={"x_dtype": "bfloat16", "recompute": True}
    )
    assert half.recompute and not half.recompute_in_kernel
    # a non-spiking leaky integrator needs no saved membrane: its backward is linear
    li = neuron_kernel_info(
        make_spec("snncc_li", "none", output="membrane"), options={"recompute": True}
    )
    assert not li.needs_h and not li.recompute


# ------------------------------------------------------------------- nvcc
NVCC = shutil.which("nvcc")


# ---- SpikingJelly 2.0's other families (issue 12 item 4): every form, reset and output,
# surrogates with parameters and the new ops (cos, pow), params as arguments (KLIF's k),
# fused steps and 16-bit I/O
_FAMILY_EXTRA = {
    "sj_qif": {"a0": 1.3, "v_rest": -0.05, "v_c": 0.7},
    "sj_eif": {"delta_T": 0.7, "theta_rh": 0.6, "v_rest": 0.0},
    "sj_izhikevich": {"a0": 1.0, "v_rest": -0.1, "v_c": 0.8, "a": 0.3, "b": 0.4, "tau_w": 3.0},
    "sj_cuba_lif": {"c_decay": 0.5, "v_decay": 0.75},
    "sj_klif": {"scale_reset": 1.0},
}
_FAMILY_SURROGATES = [
    ("piecewise_leaky_relu", 0.5, {"c": 0.05}),
    ("squarewave_fourier_series", 3.0, {"n": 4.0}),
    ("q_pseudo_spike", 3.5, {}),
    ("s2nn", 2.0, {"beta": 0.5}),
    ("leaky_k_relu", 0.9, {"leak": 0.1}),
    ("fake_numerical_gradient", 0.3, {}),
    ("log_tailed_relu", 0.2, {}),
    ("nonzero_sign_log_abs", 2.0, {}),
    ("rect", 1.0, {}),
]


def family_cases() -> list[tuple[NeuronSpec, list, list, dict]]:
    forms = [f for f in FORMS if FORMS[f].framework == "spikingjelly_families"]
    cases = []
    for i, (charge, reset) in enumerate(itertools.product(forms, ("hard", "subtract"))):
        sg, alpha, params = _FAMILY_SURROGATES[i % len(_FAMILY_SURROGATES)]
        liaf = charge.startswith("sj_liaf")
        outputs = ["activation"] if liaf else ["spike", "membrane"]
        outputs += ["current"] if charge == "sj_cuba_lif" else []
        extra = dict(_FAMILY_EXTRA.get(charge, {"threshold_related": float(i % 2)}))
        if charge == "sj_klif":
            extra["scale_reset"] = float(i % 2)
        spec = NeuronSpec(
            model=charge,
            charge=charge,
            tau=None if charge == "sj_cuba_lif" else 2.0,
            decay_input=i % 2 == 0,
            v_threshold=0.7,
            v_reset=None if reset == "subtract" else -0.1,
            reset=reset,
            detach_reset=i % 3 == 0,
            output=outputs[i % len(outputs)],
            surrogate=sg,
            alpha=alpha,
            surrogate_params=params,
            v_init=0.0 if reset == "subtract" else -0.1,
            extra=extra,
            learnable=("k",) if charge == "sj_klif" else (),
        )
        pro = [[], [{"kind": "scale", "op": "mul", "value": 1.5}], [{"kind": "add", "port": 1}]]
        n_pro_adds = 1 if i % 3 == 2 else 0  # the prologue's add takes port 1
        epi = [] if i % 2 else [{"kind": "add", "port": 1 + n_pro_adds}]
        opts: dict = {"recompute": i % 4 == 3}
        if i % 5 == 1:
            opts["x_dtype"] = "bfloat16"
        if spec.spiking and not epi and i % 4 == 1:
            opts["spike_dtype"] = "uint8"
        cases.append((spec, pro[i % 3], epi, opts))
    return cases


def all_cases() -> list[tuple[NeuronSpec, list, list, dict]]:
    """The SJ-family matrix, the compact snnTorch / Norse one and the new families'
    (SpikingJelly 2.0's, snnTorch / Norse's)."""
    return (
        form_matrix() + snntorch_norse_matrix() + family_cases() + snntorch_norse_families_matrix()
    )


def test_kernels_are_named_by_their_source_alone() -> None:
    """A kernel's tag is a hash of what its source is rendered from: over the whole form
    matrix, plus variants whose specs differ only where the kernels never look (which params
    learn, the model's name, a threshold passed at run time, a recompute the host does), equal
    tags mean equal sources and equal sources equal tags, so twins share one build and one
    cache entry."""
    cases = list(all_cases())
    for spec, pro, epi, opts in all_cases()[::7]:
        cases.append((spec.replace(model="renamed"), pro, epi, opts))
    for spec, pro, epi, opts in all_cases()[::3]:  # recompute flipped (some sources keep it out)
        cases.append((spec, pro, epi, {**opts, "recompute": not opts.get("recompute", False)}))
    leaky = NeuronSpec(
        model="leaky",
        charge="snntorch_leaky",
        reset="subtract",
        fire_cmp=">",
        surrogate="atan",
        alpha=2.0,
        reset_delay=True,
        param_roles=("beta", "threshold", "graded_spikes_factor"),
    )
    twins = [leaky, leaky.replace(learnable=("beta",)), leaky.replace(v_threshold=0.5)]
    cases += [(t, [], [], {}) for t in twins]
    by_tag: dict[str, set[str]] = {}
    by_source: dict[str, set[str]] = {}
    for spec, pro, epi, opts in cases:
        tag = neuron_kernel_info(spec, pro, epi, opts).tag
        source = render_neuron_kernels(spec, pro, epi, "cpu", opts).replace(tag, "<tag>")
        by_tag.setdefault(tag, set()).add(source)
        by_source.setdefault(source, set()).add(tag)
    assert all(len(sources) == 1 for sources in by_tag.values())
    assert all(len(tags) == 1 for tags in by_source.values())
    assert len({neuron_kernel_info(t).tag for t in twins}) == 1
    assert len(by_tag) >= len(all_cases())  # the variants above found no new kernel


@pytest.fixture(scope="module")
def matrix_cuda_source() -> str:
    """Every case of :func:`all_cases` in one translation unit (units are concatenable)."""
    return "\n".join(render_neuron_kernels(s, p, e, "cuda", o) for s, p, e, o in all_cases())


def nvcc(args: list[str]) -> None:
    """Run nvcc (the exact flags, every warning an error) and assert it succeeds."""
    cmd = [NVCC, *NVCC_EXACT_FLAGS, "--Werror", "all-warnings", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]


def nvcc_ptx(source: str, folder: Path, arch: str = "sm_80") -> Path:
    """nvcc's front end over one unit (the exact flags, every warning an error): its PTX.

    The templates hold no ``__CUDA_ARCH__`` branch, so this PTX is the same for every
    architecture but its ``.target`` line; a test assembles it for each one with
    :func:`ptxas` rather than running the front end (most of nvcc's time) once per arch."""
    cu, ptx = folder / "unit.cu", folder / "unit.ptx"
    cu.write_text(source)
    nvcc([f"-arch={arch}", "-ptx", str(cu), "-o", str(ptx)])
    return ptx


def ptxas(ptx: Path, arch: str, out: Path) -> None:
    """Assemble PTX into a cubin for ``arch`` (nvcc's own back end) and assert it succeeds."""
    cmd = [str(Path(NVCC).with_name("ptxas")), f"-arch={arch}", str(ptx), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.fixture(scope="module")
def matrix_sm90_ptx(matrix_cuda_source: str, tmp_path_factory) -> Path:
    """The matrix compiled by nvcc's front end for sm_90 (PTX): the sm_90 build runs ptxas on
    it and the FMA check reads it, so the front end runs once for both (about 9 s)."""
    if NVCC is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    return nvcc_ptx(matrix_cuda_source, tmp_path_factory.mktemp("sm90"), "sm_90")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_cuda_kernel_compiles_with_nvcc(
    arch: str, matrix_cuda_source: str, matrix_nvrtc_ptx, request, tmp_path: Path
) -> None:
    """Device code for both architectures, assembled by ptxas (nvcc's own back end) from one
    front end's PTX each: sm_90 from nvcc's (``-ptx``, shared with the FMA check), sm_80 from
    NVRTC's compute_80 PTX, the front end the cuda backend runs on a GPU (checked by the
    NVRTC test below). Why not nvcc's front end twice: it gives the same PTX for both
    architectures but the ``.target`` line, and each run of it over the matrix costs about
    20 s of CPU. Without libnvrtc, sm_80 goes through nvcc's front end as well."""
    if arch == "sm_90":
        ptx = request.getfixturevalue("matrix_sm90_ptx")
    else:
        rc, log, text = matrix_nvrtc_ptx("compute_80") if _nvrtc() else (None, "", "")
        if rc is None:
            ptx = nvcc_ptx(matrix_cuda_source, tmp_path, arch)
        else:
            assert rc == 0, log[-4000:]
            ptx = tmp_path / "k80.ptx"
            ptx.write_text(text)
    ptxas(ptx, arch, tmp_path / "k.cubin")
    n_forms = len(all_cases())
    assert matrix_cuda_source.count("SNNCC_KERNEL void ") == 2 * n_forms


def calls_libm(spec: NeuronSpec) -> bool:
    """Whether the form's step calls exp/tanh/...: libdevice's code for those holds its own
    fma, which -fmad=false does not remove (the same code torch's CUDA kernels call)."""
    libm = {"exp", "log", "tanh", "sigmoid", "sin", "cos", "pow"}
    return any(n.op in libm for n in build(spec).step.nodes)


def fma_contracted(forward_entries: list[str]) -> list[str]:
    """The forward kernels (PTX entries) holding an fma their step's arithmetic does not
    explain: one in a form whose step calls exp/tanh/... is libdevice's own."""
    calls = {
        neuron_kernel_info(sp, p, e, o).forward_name
        for sp, p, e, o in all_cases()
        if calls_libm(sp)
    }
    names = [e.split("(")[0] for e in forward_entries if "fma." in e]
    return [n for n in names if n not in calls]


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
def test_forward_kernels_have_no_fused_multiply_add(matrix_sm90_ptx: Path) -> None:
    """With NVCC_EXACT_FLAGS no forward kernel contracts a*b+c (spikes stay bit-exact).

    Backward kernels may contain fma: CUDA's own expf uses it internally; so may the
    forward of a form whose step calls such a function (EIF's exp, LIAF's tanh: the same
    libdevice code torch's CUDA kernels call).
    """
    ptx = matrix_sm90_ptx
    entries = re.split(r"\.entry ", ptx.read_text())[1:]
    forward = [e for e in entries if e.startswith("snncc_fwd_")]
    assert len(forward) == len(all_cases())
    assert not fma_contracted(forward)
    assert all("mul.rn.f32" in e or "mul.f32" not in e for e in forward)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
@pytest.mark.parametrize(
    "spec",
    [make_spec("sj_if", "none", output="membrane"), form_spec("norse_li", output="membrane")],
    ids=lambda s: s.charge,
)
def test_a_single_unit_compiles_warning_free(spec, tmp_path: Path) -> None:
    """Helpers a form does not use must not trip --Werror (each unit also stands alone)."""
    cu = tmp_path / "one.cu"
    cu.write_text(render_neuron_kernels(spec, target="cuda"))
    nvcc(["-arch=sm_80", "--cubin", str(cu), "-o", str(tmp_path / "one.cubin")])


# ------------------------------------------------------------------ NVRTC
def _nvrtc():
    """libnvrtc via ctypes, found as the CUDA backend finds it, or None where it has none."""
    from snncc.backends.cuda import nvrtc
    from snncc.errors import BackendError

    try:
        return nvrtc.library()
    except BackendError:  # the backend's one "no libnvrtc here" error, nothing else
        return None


def nvrtc_compile(lib, source: str, options: list[str]) -> tuple[int, str, str]:
    """(result code, log, ptx) of compiling ``source`` with NVRTC."""
    import ctypes

    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"k.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if rc == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), ptx


@pytest.fixture(scope="module")
def matrix_nvrtc_ptx(matrix_cuda_source: str) -> Callable[[str], tuple[int, str, str]]:
    """``ptx(arch)``: the matrix through NVRTC for ``arch``, compiled once per module (the
    NVRTC test and the sm_80 build both read it)."""
    done: dict[str, tuple[int, str, str]] = {}

    def ptx(arch: str) -> tuple[int, str, str]:
        if arch not in done:
            options = [f"--gpu-architecture={arch}", *NVCC_EXACT_FLAGS]
            done[arch] = nvrtc_compile(_nvrtc(), matrix_cuda_source, options)
        return done[arch]

    return ptx


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_every_cuda_kernel_compiles_with_nvrtc(arch: str, matrix_nvrtc_ptx) -> None:
    """NVRTC (no host headers, what the CUDA runtime uses) accepts every unit, FMA-free forward."""
    if _nvrtc() is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    rc, log, ptx = matrix_nvrtc_ptx(arch)
    assert rc == 0, log[-4000:]
    forward = [e for e in re.split(r"\.entry ", ptx)[1:] if e.startswith("snncc_fwd_")]
    assert len(forward) == len(all_cases())
    assert not fma_contracted(forward)
