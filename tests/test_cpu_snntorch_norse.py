"""snnTorch and Norse forms on the cpu backend: fused kernels == torch neuron maths == reference.

The cpu backend runs the form-family kernels (templates/cuda/form_*, the same
text the cuda backend compiles). Required, like tests/test_cpu_backend.py:

- spikes, membranes, currents and every final state variable bit for bit
  (same fp32 operations in the same order, no FMA contraction);
- gradients (input, rec, initial state, every param: beta, threshold,
  graded_spikes_factor, alpha, V, tau_mem_inv, tau_syn_inv, v_reset) within
  1e-5 relative: max |a - b| <= 1e-5 max |b| per tensor (+ 1e-6 absolute for
  gradients that are rounding noise around zero), where a param summed over
  many neurons uses the size of its summed terms as the scale (the fp32
  reference sum has cancellation error relative to them, not to the total)
  and, where even that is exceeded, the fp32 reference's own error against
  torch in float64 (same spikes) is allowed on top (snnTorch's graded factor
  through the reset correction sums terms that cancel exactly);
- ``None`` gradients exactly where the reference's are None.

Kernel level: every form x reset x reset_delay / detach_reset x output, params
as per-layer, per-channel or per-neuron arguments (values outside [0, 1] and
on its boundary for the clamped ones) or as spec constants. Program level:
snnTorch / Norse models compiled for both backends (feed-forward layers fused
over T; RLeaky / LIFRecurrentCell recurrent components one kernel step per
time step), streaming, and the source frameworks' own outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from checks import (
    assert_fires,
    charged_membrane,
    fired_on_step,
    threshold_crossing_inputs,
    threshold_of,
)
from kernel_specs import backward_gy_strides
from torch import nn

import snncc
from snncc import neurons
from snncc.backends.cpu.forms import connected, derive_params, run_form
from snncc.backends.cpu.neuron import NeuronKernel
from snncc.backends.cpu.program import CpuProgram
from snncc.backends.reference.program import ReferenceProgram
from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.neuron import FORMS, NORSE_FORMS, SNNTORCH_FORMS, NeuronSpec

GRAD_RTOL = 1e-5
#: gradients that are rounding noise around 0 (snnTorch's graded factor through the
#: reset correction: d (s / g) / dg with s = H g is two terms that cancel exactly)
#: compare absolutely; the gradients here are O(1) (the equivalence tests' atol)
GRAD_ATOL = 1e-6
STEP_SHAPE = (3, 4, 5)  # [B, C, F]: params per layer (), per channel (4, 1), per feature (5,)
NORSE_EXTRA = {"dt": 1e-3, "v_leak": 0.05, "dt_tau_mem_inv": 0.25, "neg_dt_tau_syn_inv": -0.3}
SNNTORCH_EXTRA = {"beta": 0.9, "alpha": 0.8, "graded_spikes_factor": 0.5, "V": 0.4}
SURROGATES = {
    "snntorch": ("atan", "fast_sigmoid", "snntorch_sigmoid", "straight_through",
                 "snntorch_heaviside", "snntorch_triangular", "no_grad"),
    "norse": ("superspike", "triangle", "norse_tanh", "no_grad"),
}  # fmt: skip


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_grads_close(a, b, what: str, scale: float = 0.0, b64=None) -> None:
    """Both None, or max |a - b| <= GRAD_RTOL * max(max |b|, scale) + GRAD_ATOL (+ b's own error).

    ``b64``: the same gradient computed by torch in float64 (same spikes), for
    sums whose fp32 cancellation error exceeds the relative tolerance: the fp32
    reference's own error max |b - b64| is then allowed on top.
    """
    assert (a is None) == (b is None), f"{what}: None-ness differs ({a is None} vs {b is None})"
    if a is None:
        return
    assert a.shape == b.shape, what
    # NaN where torch's own surrogate formula gives NaN (snnTorch sigmoid: exp overflow)
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN positions differ"
    a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
    assert torch.isfinite(a).all() or not torch.isfinite(b).all(), what
    ref = max(b.abs().max().item(), scale)
    err = (a - b).abs().max().item()
    own = 0.0 if b64 is None else (b.double() - b64).abs().max().item()
    assert err <= GRAD_RTOL * ref + GRAD_ATOL + own, (
        f"{what}: max |a - b| = {err:.3g} > {GRAD_RTOL} * {ref:.3g} + {GRAD_ATOL} + {own:.3g}"
    )


def _float64_grads(run, ins, params, loss_of, out32):
    """torch's gradients in float64 wrt the params, or Nones where a spike flips.

    A flipped spike changes a spike output by 1 or a membrane by about the
    threshold, far outside allclose; rounding alone stays inside it.
    """
    i = {k: v.double() for k, v in ins.items()}
    p = {k: v.double().requires_grad_() for k, v in params.items()}
    out, st = run(i, p)
    if not p or not torch.allclose(out, out32.double(), rtol=1e-5, atol=1e-5):
        return [None] * len(p)
    return list(torch.autograd.grad(loss_of(out, st), list(p.values()), allow_unused=True))


# --------------------------------------------------------------- the forms
def _spec(charge, reset, flag, output, args, surrogate) -> NeuronSpec:
    """One spec: ``flag`` is reset_delay (snnTorch) or detach_reset (Norse)."""
    roles = FORMS[charge].roles if args else ()
    if charge in NORSE_FORMS:
        li = charge == "norse_li"
        extra = dict(NORSE_EXTRA)
        return NeuronSpec(
            model=charge,
            charge=charge,
            v_threshold=math.nan if li else 0.4,
            v_reset=None if li else -0.1,
            reset=reset,
            detach_reset=flag,
            fire_cmp=">",
            output=output,
            surrogate=surrogate,
            alpha=100.0 if surrogate == "norse_tanh" else 0.3 if surrogate == "triangle" else 1.0,
            v_init=0.05,
            extra=extra,
            param_roles=roles,
            learnable=roles,
        )
    consts = {} if args else {k: v for k, v in SNNTORCH_EXTRA.items() if k in FORMS[charge].roles}
    return NeuronSpec(
        model=charge,
        charge=charge,
        v_threshold=0.8,
        reset=reset,
        reset_delay=flag,
        fire_cmp=">",
        output=output,
        surrogate=surrogate,
        alpha=10.0 if surrogate.endswith("sigmoid") else 2.0,
        extra=consts,
        param_roles=roles,
        learnable=roles,
    )


def _cases() -> list[tuple]:
    """charge x reset x flag x output; params as args / constants and surrogates cycle."""
    out, i = [], 0
    for charge in (*SNNTORCH_FORMS, *NORSE_FORMS):
        kind = "snntorch" if charge in SNNTORCH_FORMS else "norse"
        if charge == "norse_li":
            resets = ("none",)
        elif charge == "norse_lifbox":
            resets = ("hard", "subtract")
        elif kind == "norse":
            resets = ("hard", "none")
        else:
            resets = ("subtract", "hard", "none")
        outputs = ["spike", "membrane"] + (["current"] if "i" in FORMS[charge].state else [])
        if charge == "norse_li":
            outputs.remove("spike")
        for reset in resets:
            for flag in (False, True):
                if kind == "norse" and reset == "none" and flag:
                    continue  # detach_reset means nothing without a reset
                for output in outputs:
                    sg = (
                        "no_grad"
                        if charge == "norse_li"
                        else SURROGATES[kind][i % len(SURROGATES[kind])]
                    )
                    out.append((charge, reset, flag, output, i % 3 != 2, sg))
                    i += 1
    return out


CASES = _cases()


def case_id(c: tuple) -> str:
    charge, reset, flag, output, args, sg = c
    return f"{charge}-{reset}{'-flag' if flag else ''}-{output}-{'args' if args else 'const'}-{sg}"


_KERNELS: dict = {}


def kernel_for(spec: NeuronSpec, cache_dir: str, pro=(), epi=(), **opts) -> NeuronKernel:
    key = (repr(spec), repr(pro), repr(epi), repr(sorted(opts.items())))
    if key not in _KERNELS:
        _KERNELS[key] = NeuronKernel(spec, pro, epi, opts, cache_dir)
    return _KERNELS[key]


def _params(spec: NeuronSpec, seed: int) -> dict[str, torch.Tensor]:
    """A node param per role: per layer, per channel or per feature; clamped ones cross [0, 1]."""
    g = _gen(seed)
    shapes = [(), (4, 1), (5,)]
    out = {}
    for j, role in enumerate(spec.roles):
        shape = shapes[(seed + j) % 3]
        u = torch.rand(shape, generator=g)
        if role in ("beta", "alpha"):
            value = 0.5 + 0.8 * u  # some above 1: clamp passes no gradient there
            if value.dim():
                value.view(-1)[0] = 1.0  # on the boundary: torch <= 2.13 passes it, 2.14 gives 0
        elif role == "threshold":
            value = (0.4 if spec.charge in NORSE_FORMS else 0.8) + 0.2 * u
        elif role == "graded_spikes_factor":
            value = 0.5 + u
        elif role == "V":
            value = u * 1.3 - 0.5
        elif role == "tau_mem_inv":
            value = 200.0 + 100.0 * u
        elif role == "tau_syn_inv":
            value = 250.0 + 100.0 * u
        else:  # v_reset
            value = -0.1 - 0.1 * u
        out[role] = value.float()
    return out


def _inputs(spec: NeuronSpec, T: int, seed: int) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    # drives that fire at moderate rates: snnTorch th ~0.8; Norse th ~0.4 with the
    # current integrating x (LIF) or the membrane relaxing towards x + v_leak (LIFBox)
    scale, shift = {"norse_lifbox": (1.2, 0.1)}.get(
        spec.charge, (0.6, 0.1) if spec.charge in NORSE_FORMS else (1.6, 0.3)
    )
    x = torch.rand((T, *STEP_SHAPE), generator=g) * scale - shift
    state = {}
    for var in spec.state_vars:
        if var == "s":
            state[var] = (torch.rand(STEP_SHAPE, generator=g) > 0.5).float()
        else:
            state[var] = torch.rand(STEP_SHAPE, generator=g) * 0.6 - 0.1
    ins = {"x": x, **{f"{v}0": s for v, s in state.items()}}
    if spec.input_ports[1:]:
        ins["rec"] = torch.randn((T, *STEP_SHAPE), generator=g) * 0.3
    return ins


def _torch_run(spec, ins, params):
    state = {v: ins[f"{v}0"] for v in spec.state_vars}
    ports = (ins["rec"],) if "rec" in ins else ()
    return neurons.run_sequence(spec, params, ins["x"], state, *ports)


def _kernel_run(spec, kernel, ins, params):
    state = {v: ins[f"{v}0"] for v in spec.state_vars}
    return run_form(
        kernel, ins["x"], ins.get("rec"), (), state, derive_params(spec, kernel.info, params)
    )


def _param_scale(loss_fn, params: dict[str, torch.Tensor], role: str) -> float:
    """sum |d loss / d param| over the neurons: the size of the terms a param gradient sums.

    ``loss_fn(params)`` is the reference loss; the param is expanded to one
    value per neuron for this run only.
    """
    p = {k: (v.expand(STEP_SHAPE).clone() if k == role else v) for k, v in params.items()}
    p[role].requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(p), p[role], allow_unused=True)
    return 0.0 if g is None else g.abs().sum().item()


@pytest.mark.parametrize("T", [1, 9])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_form_kernel_matches_torch_neuron_maths(case, T, cache_dir) -> None:
    spec = _spec(*case)
    kernel = kernel_for(spec, cache_dir)
    assert kernel.info.family == "expr"
    seed = T + len(case_id(case))
    ins, params = _inputs(spec, T, seed), _params(spec, seed)
    leaves = lambda: (  # noqa: E731
        {k: v.clone().requires_grad_() for k, v in ins.items()},
        {k: v.clone().requires_grad_() for k, v in params.items()},
    )
    ri, rp = leaves()
    ci, cp = leaves()
    ref, rst = _torch_run(spec, ri, rp)
    out, cst = _kernel_run(spec, kernel, ci, cp)
    # forward: bit for bit, every state variable too
    assert torch.equal(out, ref), f"{(out != ref).sum().item()} of {out.numel()} outputs differ"
    assert rst.keys() == cst.keys()
    for var in rst:
        assert torch.equal(cst[var], rst[var]), f"final state {var!r} differs"
    if spec.spiking and T > 1:
        spikes = (out != 0).float()
        assert 0 < spikes.sum() < spikes.numel(), "degenerate case: all or no spikes"
    # backward: every input, every param
    g = _gen(seed + 1)
    gy = torch.randn(out.shape, generator=g)
    gs = {v: torch.randn(STEP_SHAPE, generator=g) for v in spec.state_vars}
    loss_ref = (ref * gy).sum() + sum((rst[v] * gs[v]).sum() for v in rst)
    loss = (out * gy).sum() + sum((cst[v] * gs[v]).sum() for v in cst)
    names = [*ins, *params]
    g_ref = torch.autograd.grad(loss_ref, [*ri.values(), *rp.values()], allow_unused=True)
    g_cpu = torch.autograd.grad(loss, [*ci.values(), *cp.values()], allow_unused=True)

    def loss_of(o, st):
        return (o * gy.to(o)).sum() + sum((st[v] * gs[v].to(o)).sum() for v in st)

    def ref_loss(p):
        return loss_of(*_torch_run(spec, ins, p))

    g64 = _float64_grads(lambda i, p: _torch_run(spec, i, p), ins, params, loss_of, ref.detach())
    g64 = [None] * len(ins) + g64
    for name, a, b, b64 in zip(names, g_cpu, g_ref, g64):
        scale = _param_scale(ref_loss, params, name) if name in params and b is not None else 0.0
        assert_grads_close(a, b, f"grad {name}", scale, b64)


#: the firing cases, plus every firing form under ``>=`` (NIR files import Norse's
#: box form with SpikingJelly's ``>=``; the template must take the comparison from the spec)
THRESHOLD_CASES = [(c, ">") for c in CASES if c[0] != "norse_li" and c[3] != "current"] + [
    ((charge, reset, False, "spike", True, sg), ">=")
    for charge, reset, sg in (
        ("snntorch_leaky", "subtract", "atan"),
        ("snntorch_synaptic", "hard", "fast_sigmoid"),
        ("snntorch_rleaky", "subtract", "straight_through"),
        ("snntorch_rleaky_v", "none", "atan"),
        ("norse_lif", "hard", "superspike"),
        ("norse_lif_recurrent", "hard", "triangle"),
        ("norse_lifbox", "subtract", "norse_tanh"),
    )
]


@pytest.mark.parametrize(
    "case, cmp", THRESHOLD_CASES, ids=[f"{case_id(c)}-{m}" for c, m in THRESHOLD_CASES]
)
def test_membrane_exactly_on_the_threshold(case, cmp, cache_dir) -> None:
    """Charged exactly onto the threshold a neuron fires under ``>=`` and not under ``>``;
    one ulp below it never fires and one above always does (kernel == torch maths == rule).
    Two more steps follow from the membrane left on the threshold: snnTorch's reset reads
    it (``m - th > 0``, so no reset from exactly th)."""
    spec = _spec(*case).replace(fire_cmp=cmp)
    kernel = kernel_for(spec, cache_dir)
    ins, params = _inputs(spec, 3, 7), _params(spec, 7)
    th = threshold_of(spec, params)
    state = {v: ins[f"{v}0"] for v in spec.state_vars}
    state["v"] = torch.minimum(state["v"], th - 0.3)  # below: no reset from the last step
    rec0 = (ins["rec"][0],) if "rec" in ins else ()
    state, landed, exact, below, above = threshold_crossing_inputs(spec, params, state, rec0)
    three = {k: torch.cat([v, v, v]) for k, v in state.items()}
    first = torch.cat([exact, below, above])
    x = torch.cat([first[None], torch.zeros(2, *first.shape)])
    run_ins = {"x": x, **{f"{k}0": v for k, v in three.items()}}
    if "rec" in ins:
        run_ins["rec"] = torch.cat([ins["rec"]] * 3, dim=1)
    p3 = dict(params)
    ref, rst = _torch_run(spec, run_ins, p3)
    out, cst = _kernel_run(spec, kernel, run_ins, p3)
    assert torch.equal(out, ref), f"{(out != ref).sum().item()} of {out.numel()} outputs differ"
    for var in rst:
        assert torch.equal(cst[var], rst[var]), f"final state {var!r} differs"
    rec = (run_ins["rec"][0],) if "rec" in run_ins else ()
    h = charged_membrane(spec, p3, x[0], three, rec)
    for got in (out, ref):
        fired = fired_on_step(spec, got[0], h)
        if fired is None:
            continue
        on, lo, hi = fired.split(exact.shape[0])
        assert torch.equal(on[landed], torch.full_like(on[landed], cmp == ">="))
        assert not lo.any() and hi.all()


@pytest.mark.parametrize(
    "charge, reset, output",
    [
        ("snntorch_leaky", "none", "membrane"),
        ("snntorch_synaptic", "hard", "current"),
        ("norse_lif", "hard", "spike"),
        ("norse_li", "none", "current"),
    ],
)
def test_unused_paths_give_none_gradients_like_torch(charge, reset, output, cache_dir) -> None:
    """One step, only the output used: a param autograd never reaches gets None, not zeros."""
    spec = _spec(charge, reset, False, output, True, "atan" if "snntorch" in charge else "triangle")
    kernel = kernel_for(spec, cache_dir)
    ins, params = _inputs(spec, 1, 0), _params(spec, 0)
    grads = []
    for run in (_torch_run, lambda s, i, p: _kernel_run(s, kernel, i, p)):
        i = {k: v.clone().requires_grad_() for k, v in ins.items()}
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        out, _ = run(spec, i, p)
        grads.append(torch.autograd.grad(out.sum(), [*i.values(), *p.values()], allow_unused=True))
    assert [a is None for a in grads[1]] == [b is None for b in grads[0]]
    assert any(b is None for b in grads[0])  # the case does exercise an unreached input


def test_connectivity_follows_the_unrolled_steps() -> None:
    syn = _spec("snntorch_synaptic", "hard", False, "current", True, "atan")
    assert connected(syn, 5, True, []) == {"a", "i", "x"}  # the current never sees the membrane
    assert "b" in connected(syn, 5, True, ["v"])
    lif = _spec("norse_lif", "hard", False, "spike", True, "superspike")
    assert "cs" not in connected(lif, 1, True, [])  # the decayed current feeds step t+1 only
    assert "cs" in connected(lif, 2, True, [])
    leaky = _spec("snntorch_leaky", "none", True, "membrane", True, "atan")
    assert "th" not in connected(leaky, 4, True, ["v"])  # no reset, no spike: r is detached


@pytest.mark.parametrize(
    "charge", ["snntorch_synaptic", "snntorch_rleaky", "norse_lif_recurrent", "norse_lifbox"]
)
def test_fused_steps_and_recompute(charge, cache_dir) -> None:
    """Prologue/epilogue steps == the reference's apply_steps; recompute == saved states."""
    from snncc.backends.reference.ops import apply_steps

    reset = "subtract" if charge in SNNTORCH_FORMS or charge == "norse_lifbox" else "hard"
    spec = _spec(
        charge, reset, False, "spike", True, "atan" if "snntorch" in charge else "triangle"
    )
    first = len(spec.input_ports)
    pro = [{"kind": "scale", "op": "div", "value": 3.0}, {"kind": "add", "port": first}]
    epi = [{"kind": "scale", "op": "mul", "value": 0.3}, {"kind": "add", "port": first + 1}]
    T = 10
    ins, params = _inputs(spec, T, 5), _params(spec, 5)
    g = _gen(6)
    ins["a0"] = torch.rand((T, *STEP_SHAPE), generator=g)
    ins["a1"] = torch.randn(STEP_SHAPE, generator=g)  # broadcast over time
    gy = torch.randn((T, *STEP_SHAPE), generator=g)
    results = []
    for recompute in (False, True):
        kernel = kernel_for(spec, cache_dir, pro, epi, recompute=recompute)
        assert kernel.info.recompute == recompute
        i = {k: v.clone().requires_grad_() for k, v in ins.items()}
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        state = {v: i[f"{v}0"] for v in spec.state_vars}
        out, _ = run_form(
            kernel, i["x"], i.get("rec"), (i["a0"], i["a1"]), state,
            derive_params(spec, kernel.info, p),
        )  # fmt: skip
        grads = torch.autograd.grad((out * gy).sum(), [*i.values(), *p.values()], allow_unused=True)
        results.append((out, grads))

    def reference(i, p):
        port_ins = [i["x"], *([i["rec"]] if "rec" in i else []), i["a0"], i["a1"].expand_as(i["x"])]
        xin = apply_steps(pro, i["x"], port_ins, "test prologue")
        y, _ = _torch_run(spec, {**i, "x": xin}, p)
        return apply_steps(epi, y, port_ins, "test epilogue")

    ri = {k: v.clone().requires_grad_() for k, v in ins.items()}
    rp = {k: v.clone().requires_grad_() for k, v in params.items()}
    ref = reference(ri, rp)
    g_ref = torch.autograd.grad((ref * gy).sum(), [*ri.values(), *rp.values()], allow_unused=True)
    (o1, g1), (o2, g2) = results
    assert torch.equal(o1, ref) and torch.equal(o2, ref)
    for a, b in zip(g1, g2):
        assert (a is None and b is None) or torch.equal(a, b)  # the same kernel arithmetic
    for name, a, b in zip([*ins, *params], g1, g_ref):
        scale = 0.0
        if name in params and b is not None:
            scale = _param_scale(lambda p: (reference(ins, p) * gy).sum(), params, name)
        assert_grads_close(a, b, f"grad {name}", scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "charge, output",
    [
        ("snntorch_leaky", "spike"),
        ("snntorch_synaptic", "membrane"),
        ("norse_lif", "spike"),
        ("norse_lifbox", "spike"),
        ("norse_li", "membrane"),
        ("snntorch_rleaky", "spike"),  # recurrent forms: rec (port 1) stays fp32
        ("snntorch_rleaky_v", "membrane"),
        ("norse_lif_recurrent", "spike"),
    ],
)
@pytest.mark.parametrize("recompute", [False, True], ids=["saved", "recompute"])
def test_16_bit_io_form_kernels_equal_widening_then_narrowing(
    charge, output, recompute, dtype, cache_dir
) -> None:
    """The form kernels with x and the output in bf16 / fp16 (autocast): the bits of the fp32
    kernel between torch's casts -- outputs (graded spikes, membranes), final states and every
    gradient, inputs and params -- with and without recompute, with a prologue and epilogue."""
    reset = "none" if charge == "norse_li" else "subtract"
    sg = "triangle" if charge in NORSE_FORMS else "atan"
    spec = _spec(charge, reset, False, output, True, sg)
    first = len(spec.input_ports)
    pro = [{"kind": "scale", "op": "div", "value": 3.0}, {"kind": "add", "port": first}]
    epi = [{"kind": "scale", "op": "mul", "value": 0.3}]
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    k32 = kernel_for(spec, cache_dir, pro, epi, recompute=recompute)
    k16 = kernel_for(spec, cache_dir, pro, epi, recompute=recompute, x_dtype=name, spike_dtype=name)
    T = 9
    ins, params = _inputs(spec, T, 8), _params(spec, 8)
    ins["x"] = (ins["x"] * 3).to(dtype)  # 16-bit activations, some far past the threshold
    g = _gen(9)
    ins["a0"] = torch.rand((T, *STEP_SHAPE), generator=g)
    # the 16-bit output's gradient is 16-bit; tiny ones exercise the fp16 subnormals
    gy = (torch.randn((T, *STEP_SHAPE), generator=g) * 1e-6).to(dtype)
    gs = {v: torch.randn(STEP_SHAPE, generator=g) for v in spec.state_vars}
    runs = []
    for kernel, widen in ((k32, True), (k16, False)):
        i = {k: v.clone().requires_grad_() for k, v in ins.items()}
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        state = {v: i[f"{v}0"] for v in spec.state_vars}
        x = i["x"].float() if widen else i["x"]
        params_k = derive_params(spec, kernel.info, p)
        out, st = run_form(kernel, x, i.get("rec"), (i["a0"],), state, params_k)
        if widen:
            out = out.to(dtype)  # what the next GEMM's autocast does
        loss = (out.float() * gy.float()).sum() + sum((st[v] * gs[v]).sum() for v in st)
        grads = torch.autograd.grad(loss, [*i.values(), *p.values()], allow_unused=True)
        runs.append((out, st, grads))
    (o32, s32, g32), (o16, s16, g16) = runs
    assert o16.dtype == dtype and torch.equal(o16, o32)
    for v in s32:
        assert torch.equal(s16[v], s32[v]), v
    assert g16[0].dtype == dtype
    for what, a, b in zip([*ins, *params], g16, g32):
        assert (a is None) == (b is None), what
        if b is not None:
            assert torch.equal(a, b), what


@pytest.mark.parametrize("charge", ["snntorch_synaptic", "norse_lif"])
def test_form_lane_blocks_keep_neurons_apart(charge, cache_dir) -> None:
    """The host form kernels run blocks of 32 neurons as SIMD lanes: with a param per
    neuron, reversing 75 neurons (another block and lane for each, in and out of the partial
    last block) reverses every output, state and gradient, params' included, bit for bit."""
    reset = "subtract"
    sg = "triangle" if charge in NORSE_FORMS else "atan"
    spec = _spec(charge, reset, False, "spike", True, sg)
    kernel = kernel_for(spec, cache_dir)
    T, N = 10, 75
    g = _gen(3)
    x = torch.rand((T, N), generator=g) * 0.9 - 0.1
    state = {v: torch.rand(N, generator=g) * 0.5 for v in spec.state_vars}
    params = {role: 0.3 + 0.6 * torch.rand(N, generator=g) for role in spec.roles}
    gy = torch.randn((T, N), generator=g)
    runs = []
    for order in (torch.arange(N), torch.arange(N - 1, -1, -1)):
        xi = x[:, order].clone().requires_grad_()
        st = {v: s[order].clone().requires_grad_() for v, s in state.items()}
        ps = {r: p[order].clone().requires_grad_() for r, p in params.items()}
        out, last = run_form(kernel, xi, None, (), st, derive_params(spec, kernel.info, ps))
        loss = (out * gy[:, order]).sum() + sum(t.sum() for t in last.values())
        leaves = [xi, *st.values(), *ps.values()]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        back = torch.argsort(order)
        runs.append([out[:, back], *(t[back] for t in last.values())])
        runs[-1] += [t[..., back] for t in grads if t is not None]
    assert len(runs[0]) == len(runs[1]) > 3
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert 0 < runs[0][0].sum() < runs[0][0].numel()


@pytest.mark.parametrize("layout", ["sum", "transposed"])
@pytest.mark.parametrize("charge", ["snntorch_synaptic", "norse_lif"])
def test_form_backward_reads_the_output_gradient_in_place(layout, charge, cache_dir) -> None:
    """A broadcast (y.sum()) or transposed output gradient reaches the form kernel with its
    strides, never materialised, and gives the bits of a contiguous copy."""
    snntorch = charge in SNNTORCH_FORMS
    spec = _spec(charge, "subtract" if snntorch else "hard", False, "spike", True,
                 "atan" if snntorch else "triangle")  # fmt: skip
    kernel = kernel_for(spec, cache_dir)
    T = 9
    ins, params = _inputs(spec, T, 4), _params(spec, 4)
    N = math.prod(STEP_SHAPE)
    if layout == "sum":
        gy = torch.ones(()).expand(T, *STEP_SHAPE)
    else:  # [T, N] with strides (1, T), seen through the per-step shape
        gy = torch.randn(N, T, generator=_gen(5)).t().reshape(T, *STEP_SHAPE)
    runs = []
    with backward_gy_strides(kernel) as seen:
        for grad_out in (gy, gy.contiguous()):
            x = ins["x"].clone().requires_grad_()
            state = {v: ins[f"{v}0"] for v in spec.state_vars}
            out, _ = run_form(kernel, x, None, (), state, derive_params(spec, kernel.info, params))
            runs.append(torch.autograd.grad(out, x, grad_outputs=grad_out))
    strided = (0, 0) if layout == "sum" else (1, T)
    assert seen == [(strided, *strided), ((N, 1), N, 1)], seen
    assert torch.equal(runs[0][0], runs[1][0])


def test_bad_params_and_inputs_are_refused(cache_dir) -> None:
    spec = _spec("snntorch_leaky", "subtract", False, "spike", True, "atan")
    kernel = kernel_for(spec, cache_dir)
    ins = _inputs(spec, 3, 1)
    params = {
        "beta": torch.tensor(0.9),
        "threshold": torch.tensor(0.8),
        "graded_spikes_factor": torch.tensor(1.0),
    }
    q = derive_params(spec, kernel.info, params)
    with pytest.raises(UnsupportedError, match="float32"):
        run_form(kernel, ins["x"], None, (), None, {**q, "b": torch.full((5,), 0.5).double()})
    with pytest.raises(ShapeError, match="does not broadcast"):
        run_form(kernel, ins["x"], None, (), None, {**q, "b": torch.full((7,), 0.5)})
    with pytest.raises(ShapeError, match="float32 input"):
        run_form(kernel, ins["x"].double(), None, (), None, q)
    with pytest.raises(ShapeError, match="no port 1"):
        run_form(kernel, ins["x"], ins["x"], (), None, q)
    with pytest.raises(ShapeError, match="lacks 'v'"):
        run_form(kernel, ins["x"], None, (), {"i": ins["v0"]}, q)
    rleaky = _spec("snntorch_rleaky", "subtract", False, "spike", False, "atan")
    with pytest.raises(ShapeError, match="recurrent input"):
        run_form(kernel_for(rleaky, cache_dir), ins["x"], None, (), None, {})
    # a 0-dim param of another float dtype is a scalar operand for torch: accepted
    out, _ = run_form(kernel, ins["x"], None, (), None, {**q, "th": q["th"].double()})
    ref, _ = neurons.run_sequence(
        spec, {**params, "threshold": params["threshold"].double()}, ins["x"]
    )
    assert torch.equal(out, ref)


# ------------------------------------------------------------------ models
snntorch = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")
from peer_models import (  # noqa: E402
    NorseBoxLearnable,
    norse_lif_params,
    norse_per_step,
    snntorch_convnet,
    snntorch_step_run,
)
from peer_models import randomise as _randomise  # noqa: E402
from snntorch import surrogate as st_surrogate  # noqa: E402

B = 3
NORSE_P = norse_lif_params()


class LoopLeaky(nn.Module):
    """snnTorch tutorial style: per-neuron learnable beta (crossing 1) and threshold."""

    def __init__(self, mech: str, reset_delay: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.lif1 = snntorch.Leaky(
            beta=torch.linspace(0.5, 1.2, 10),
            reset_mechanism=mech,
            reset_delay=reset_delay,
            learn_beta=True,
            learn_threshold=True,
        )
        self.fc2 = nn.Linear(10, 4)
        self.lif2 = snntorch.Leaky(
            beta=0.8,
            reset_mechanism=mech,
            reset_delay=reset_delay,
            spike_grad=st_surrogate.fast_sigmoid(slope=10),
        )

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk_rec, mem_rec = [], []
        for xt in x:
            spk1, mem1 = self.lif1(self.fc1(xt), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


class LoopSynapticRLeaky(nn.Module):
    """An RLeaky (a recurrent component: one kernel step per t) into a learnable Synaptic."""

    def __init__(self, kind: str, mech: str, reset_delay: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        common = {"beta": 0.9, "reset_mechanism": mech, "reset_delay": reset_delay}
        if kind == "linear":
            self.rlif = snntorch.RLeaky(linear_features=8, **common)
        else:
            self.rlif = snntorch.RLeaky(all_to_all=False, V=torch.linspace(-0.5, 0.8, 8), **common)
        self.fc2 = nn.Linear(8, 4)
        self.syn = snntorch.Synaptic(
            alpha=0.7,
            beta=0.85,
            reset_mechanism=mech,
            reset_delay=reset_delay,
            learn_alpha=True,
            spike_grad=st_surrogate.atan(alpha=3.0),
        )

    def forward(self, x):
        spk1, mem1 = self.rlif.init_rleaky()
        syn, mem2 = self.syn.init_synaptic()
        spk_rec, syn_rec = [], []
        for xt in x:
            spk1, mem1 = self.rlif(self.fc1(xt), spk1, mem1)
            spk2, syn, mem2 = self.syn(self.fc2(spk1), syn, mem2)
            spk_rec.append(spk2)
            syn_rec.append(syn)
        return torch.stack(spk_rec), torch.stack(syn_rec)


class NorseLoop(nn.Module):
    """Norse tutorial style: LIFCell -> LIFRecurrentCell (recurrent component) -> LICell."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.lif = norse.LIFCell(NORSE_P)
        self.rec = norse.LIFRecurrentCell(8, 6, NORSE_P)
        self.out = norse.LICell()

    def forward(self, x):
        s1 = s2 = so = None
        vs, zs = [], []
        for xt in x:
            z, s1 = self.lif(self.fc(xt), s1)
            z, s2 = self.rec(z, s2)
            vo, so = self.out(z, so)
            vs.append(vo)
            zs.append(z)
        return torch.stack(vs), torch.stack(zs)


def _lift(model: nn.Module, layer: str, bias: float) -> nn.Module:
    """Raise one Linear's bias so the neurons after it fire at T = 1 too (a silent layer
    compares zeros with zeros)."""
    with torch.no_grad():
        model.get_submodule(layer).bias.add_(bias)
    return model


MODELS = {
    "loop_leaky_subtract": (lambda: _randomise(LoopLeaky("subtract", False), 10, 4.0), None, 1.5),
    "loop_leaky_zero_delay": (lambda: _randomise(LoopLeaky("zero", True), 11, 4.0), None, 1.5),
    "rleaky_linear_synaptic": (
        lambda: _lift(_randomise(LoopSynapticRLeaky("linear", "zero", False), 5, 1.5), "fc2", 1.0),
        None,
        0.8,
    ),
    "rleaky_V_synaptic": (
        lambda: _randomise(LoopSynapticRLeaky("V", "subtract", True), 6, 1.5), None, 0.8,
    ),
    "snntorch_convnet": (lambda: _randomise(snntorch_convnet(), 3, 3.0), snntorch_step_run, None),
    "norse_loop": (lambda: _randomise(NorseLoop(), 31, 2.5), None, 1.0),
    "norse_box_learnable": (
        lambda: _lift(_randomise(NorseBoxLearnable(), 4), "seq.2", 2.0), norse_per_step, 1.0
    ),
}  # fmt: skip


def _model_input(name: str, T: int, seed: int) -> torch.Tensor:
    if name == "snntorch_convnet":
        return torch.rand(T, B, 1, 8, 8, generator=_gen(seed)) * 2
    shift = MODELS[name][2]
    return torch.randn(T, B, 6, generator=_gen(seed)) * 2 + shift


def _grads(prog, x: torch.Tensor, seed: int):
    xin = x.clone().requires_grad_()
    y, state = prog.run(xin)
    ys = y if isinstance(y, tuple) else (y,)
    g = _gen(seed)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in ys)
    names = [n for n, p in prog.params.items() if p.requires_grad]
    leaves = [prog.params[n] for n in names] + [xin]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return ys, state, dict(zip([*names, "<input>"], grads))


@pytest.mark.parametrize("T", [1, 8])
@pytest.mark.parametrize("name", list(MODELS))
def test_cpu_backend_matches_reference_on_snntorch_and_norse_models(name, T, cache_dir) -> None:
    model = MODELS[name][0]()
    x = _model_input(name, T, T)
    assert_fires(model, x)
    cm = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir)
    prog = cm.program
    assert isinstance(prog, CpuProgram)
    forms = [k for k in prog.kernels.values() if k.info.family == "expr"]
    assert forms and len(forms) == len(prog.kernels)  # every neuron runs a fused form kernel
    ref = ReferenceProgram(prog.graph)
    y_ref, st_ref, g_ref = _grads(ref, x, 1)
    y, st, g = _grads(prog, x, 1)
    for a, b in zip(y, y_ref):
        assert torch.equal(a, b), f"{(a != b).sum().item()} of {b.numel()} outputs differ"
    assert st.keys() == st_ref.keys()
    for n in st_ref:
        assert st[n].keys() == st_ref[n].keys()
        for var in st_ref[n]:
            assert torch.equal(st[n][var], st_ref[n][var]), (n, var)
    assert g.keys() == g_ref.keys()
    for key in g_ref:
        assert_grads_close(g[key], g_ref[key], f"grad {key}")
    if T > 1:  # and the source framework's own outputs, bit for bit
        run = MODELS[name][1] or (lambda m, v: m(v))
        with torch.no_grad():
            src = run(model, x)
            mine = cm(x)
        src = src if isinstance(src, tuple) else (src,)
        mine = mine if isinstance(mine, tuple) else (mine,)
        for a, b in zip(mine, [s for s in src if isinstance(s, torch.Tensor)]):
            assert torch.equal(a, b)
        spikes = mine[1] if name == "norse_loop" else mine[0]
        assert 0 < int((spikes != 0).sum()) < spikes.numel(), "degenerate: all or no spikes"


def test_recurrent_components_step_the_fused_kernel(cache_dir) -> None:
    """RLeaky / LIFRecurrentCell sit in recurrent components: T kernel calls of one step each."""
    model = _randomise(NorseLoop(), 31, 2.5)
    x = _model_input("norse_loop", 6, 2)
    cm = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir)
    prog = cm.program
    rec_nodes = [n for n in prog.kernels if n in prog._recurrent]
    assert [prog._specs[n].charge for n in rec_nodes] == ["norse_lif_recurrent"]
    calls: list[int] = []
    kernel = prog.kernels[rec_nodes[0]]
    original = kernel.call

    def counting(which, values, device=None):
        if which == "fwd":
            calls.append(values["T"])
        return original(which, values, device)

    kernel.call = counting  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            prog.run(x)
    finally:
        del kernel.call
    assert calls == [1] * 6


def test_streaming_and_state_hand_off(cache_dir) -> None:
    """run(x[:k]) then run(x[k:], state) == run(x); the reference's state continues on cpu."""
    model = _randomise(LoopSynapticRLeaky("V", "zero", False), 8, 1.5)
    x = _model_input("rleaky_V_synaptic", 12, 3)
    cpu = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir)
    ref = snncc.compile(model, x, backend="reference")
    with torch.no_grad():
        full, _ = cpu.run(x)
        for k in (1, 5):
            a, state = cpu.run(x[:k])
            assert any("s" in s for s in state.values()) and any("i" in s for s in state.values())
            b, _ = cpu.run(x[k:], state)
            for i in range(2):
                assert torch.equal(torch.cat([a[i], b[i]]), full[i])
        a, state = ref.run(x[:5])
        b, _ = cpu.run(x[5:], state)
        for i in range(2):
            assert torch.equal(torch.cat([a[i], b[i]]), full[i])


def test_node_params_must_match_the_spec(cache_dir) -> None:
    """A node param the spec does not list would be read by the reference, not the kernel: refused."""
    model = _randomise(LoopLeaky("subtract", False), 1)
    x = _model_input("loop_leaky_subtract", 3, 0)
    graph = snncc.compile(model, x).ir
    n = next(iter(graph.iter_ops("neuron")))
    spec = NeuronSpec.from_dict(graph.attrs(n)["neuron"])
    graph.attrs(n)["neuron"] = spec.replace(param_roles=("beta",), learnable=("beta",)).to_dict()
    with pytest.raises(UnsupportedError, match="disagree"):
        CpuProgram(graph, cache_dir=cache_dir)


@pytest.mark.parametrize("name", list(MODELS))
def test_spikes_saved_as_uint8_keep_the_gradients_bit_for_bit(name, cache_dir) -> None:
    """snnTorch (graded factor 1) and Norse spikes feeding a GEMM are packed as uint8; the
    gradients equal those of the same program saving them as fp32, bit for bit."""
    model = MODELS[name][0]()
    x = _model_input(name, 8, 3)
    prog = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir).program
    fed = dict(prog.spike_fed)
    runs = {}
    for compact in (True, False):
        prog.spike_fed = fed if compact else {}
        runs[compact] = _grads(prog, x, 2)
    (y1, _, g1), (y0, _, g0) = runs[True], runs[False]
    assert all(torch.equal(a, b) for a, b in zip(y1, y0))
    for key in g0:
        assert (g1[key] is None) == (g0[key] is None), key
        assert g0[key] is None or torch.equal(g1[key], g0[key]), key
    if name in ("snntorch_convnet", "norse_box_learnable"):
        assert fed, "a spiking layer (0/1) feeds a Linear there"


def test_snntorch_graded_spikes_are_packed_with_the_factor_they_had(cache_dir) -> None:
    """snnTorch keeps graded_spikes_factor in its state_dict (a node param in the IR): its
    spikes are saved as a mask plus a copy of the factor taken at that moment, so any factor
    -- changed after compiling, even through ``.data`` -- gives the unpacked run's gradients."""
    from snncc.backends.cpu.saved_spikes import SpikeSource, spike_source

    model = MODELS["snntorch_convnet"][0]()
    x = _model_input("snntorch_convnet", 6, 1)
    prog = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir).program
    assert list(prog.spike_fed.values()) == [SpikeSource("2.graded_spikes_factor")]
    factor = prog.params["2.graded_spikes_factor"]
    masks: list[torch.Tensor] = []

    def outer_pack(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.uint8:
            masks.append(t)
        return t

    def grads(packed: bool) -> dict:
        fed = prog.spike_fed
        prog.spike_fed = fed if packed else {}
        masks.clear()
        try:
            with torch.autograd.graph.saved_tensors_hooks(outer_pack, lambda t: t):
                return _grads(prog, x, 4)[2]
        finally:
            prog.spike_fed = fed

    T = x.shape[0]  # the per-step model's Linear runs (and saves) once per step
    for value in (1.0, 0.5, -0.75):
        factor.data.fill_(value)  # .data: torch's version counter does not move
        want, got = grads(packed=False), grads(packed=True)
        assert len(masks) == T and all(int(m.max()) <= 1 for m in masks)
        assert any(int(m.sum()) > 0 for m in masks), "the layer fires"
        for key in want:
            assert (got[key] is None) == (want[key] is None), key
            assert want[key] is None or torch.equal(got[key], want[key]), (value, key)

    # the same form with the factor as a spec constant: 1 packs without a scale, 0.5 never
    spec = prog._specs[2] if 2 in prog._specs else next(iter(prog._specs.values()))
    const = Graph()
    inp = const.add_node("input", attrs={"index": 0}, shape=["B", 4])
    node = const.add_node("neuron", [inp], attrs={"neuron": spec.to_dict()}, shape=["B", 4])
    assert spike_source(const, node, spec) == SpikeSource()
    graded = spec.replace(extra={**spec.extra, "graded_spikes_factor": 0.5})
    assert spike_source(const, node, graded) is None
