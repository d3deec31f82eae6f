"""The cpu backend: compiled kernels == torch neuron maths == reference backend.

Spikes and membranes must match bit for bit (same fp32 operation order, no
FMA contraction); gradients within 1e-5 relative (max |a - b| / max |b| per
tensor), since the kernels sum the surrogate chain in a different order than
torch's autograd.
"""

from __future__ import annotations

import ctypes
import itertools
import math

import pytest
import torch
from checks import assert_fires, charged_membrane, fired_on_step, threshold_crossing_inputs
from kernel_specs import (
    PLIF_FORMS,
    backward_gy_strides,
    kernel_spec,
    recurrent_lif_graph,
    recurrent_lif_input,
)

import snncc
from snncc import neurons
from snncc import nn as snn
from snncc.backends.cpu.autograd import run_neuron
from snncc.backends.cpu.neuron import NeuronKernel
from snncc.backends.cpu.program import CpuProgram
from snncc.backends.kernels import SJ_CHARGES, SUPPORTED_SURROGATES
from snncc.backends.reference.ops import apply_steps
from snncc.backends.reference.program import ReferenceProgram
from snncc.errors import BackendError, ShapeError, UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec

GRAD_RTOL = 1e-5
TS = (1, 8, 64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are all zero)."""
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_grads_close(a: torch.Tensor, b: torch.Tensor, what: str, scale: float = 0.0) -> None:
    """max |a - b| <= GRAD_RTOL * max(max |b|, scale).

    ``scale`` is for gradients that are sums with cancellation (PLIF's scalar
    w): the size of the summed terms, since fp32 summation error is relative to
    them, not to the (possibly tiny) total.
    """
    assert a.shape == b.shape, what
    assert torch.isfinite(a).all(), what
    ref = max(b.abs().max().item(), scale)
    err = (a - b).abs().max().item() / ref if ref > 0 else (a - b).abs().max().item()
    assert err <= GRAD_RTOL, f"{what}: relative error {err:.3g} > {GRAD_RTOL}"


def plif_w_grad_scale(spec, x, v0, w, gy, gv) -> float:
    """sum over neurons and steps of |d loss / d k| * k (1 - k): the terms d loss / d w sums."""
    k = w.detach().sigmoid()
    k_full = (k * torch.ones(x.shape[1:])).requires_grad_()
    st = {"v": v0.detach()}
    outs = []
    for xt in x:
        o, st = neurons.step(spec, {"k": k_full}, xt, st)
        outs.append(o)
    loss = (torch.stack(outs) * gy).sum() + (st["v"] * gv).sum()
    (g,) = torch.autograd.grad(loss, k_full)
    return (g.abs().sum() * k * (1 - k)).item()


# ------------------------------------------------------------------ forms
def _forms() -> list[tuple[str, str, bool, str, str, str]]:
    """charge x reset x detach x output; detach only where a reset exists; knobs cycle."""
    out = []
    combos = itertools.product(
        SJ_CHARGES, ("hard", "subtract", "none"), (False, True), ("spike", "membrane")
    )
    i = 0
    for charge, reset, detach, output in combos:
        if reset == "none" and detach:
            continue
        cmp = (">=", ">")[i % 2]
        sg = SUPPORTED_SURROGATES[i % len(SUPPORTED_SURROGATES)]
        out.append((charge, reset, detach, output, cmp, sg))
        i += 1
    return out


FORMS = _forms()


def form_id(f: tuple) -> str:
    charge, reset, detach, output, cmp, sg = f
    return f"{charge}-{reset}{'-detach' if detach else ''}-{output}-{'ge' if cmp == '>=' else 'gt'}-{sg}"


def spec_of(form: tuple) -> NeuronSpec:
    return kernel_spec(*form)


_KERNELS: dict = {}


def kernel_for(spec, cache_dir, pro=(), epi=(), **opts) -> NeuronKernel:
    key = (repr(spec), repr(pro), repr(epi), repr(sorted(opts.items())))
    if key not in _KERNELS:
        _KERNELS[key] = NeuronKernel(spec, pro, epi, opts, cache_dir)
    return _KERNELS[key]


def _inputs(T: int, seed: int, shape=(3, 37)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((T, *shape), generator=g) * 1.6 - 0.3
    v0 = torch.rand(shape, generator=g) * 0.8 - 0.2
    w = torch.tensor(-math.log(2.5 - 1.0))  # PLIF init_tau = 2.5
    gy = torch.randn((T, *shape), generator=g)
    gv = torch.randn(shape, generator=g)
    return x, v0, w, gy, gv


def _torch_reference(spec, x, v0, w):
    params = {"w": w} if spec.charge in PLIF_FORMS else {}
    out, st = neurons.run_sequence(spec, params, x, {"v": v0})
    return out, st["v"]


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("form", FORMS, ids=form_id)
def test_kernel_matches_torch_neuron_maths(form, T, cache_dir) -> None:
    spec = spec_of(form)
    kernel = kernel_for(spec, cache_dir)
    x, v0, w, gy, gv = _inputs(T, seed=T)
    leaves_ref = [t.clone().requires_grad_() for t in (x, v0, w)]
    leaves_cpu = [t.clone().requires_grad_() for t in (x, v0, w)]
    out_ref, v_ref = _torch_reference(spec, *leaves_ref)
    xk, v0k, wk = leaves_cpu
    out, v_last = run_neuron(kernel, xk, (), v0k, wk.sigmoid())
    # forward: bit for bit
    assert torch.equal(out, out_ref), f"{(out != out_ref).sum().item()} outputs differ"
    assert torch.equal(v_last, v_ref)
    if spec.spiking:
        assert 0 < out.sum().item() < out.numel() or T == 1  # the test exercises both branches
    # backward: within GRAD_RTOL
    loss_ref = (out_ref * gy).sum() + (v_ref * gv).sum()
    loss = (out * gy).sum() + (v_last * gv).sum()
    wanted = [0, 1, 2] if spec.charge in PLIF_FORMS else [0, 1]
    g_ref = torch.autograd.grad(loss_ref, [leaves_ref[i] for i in wanted])
    g_cpu = torch.autograd.grad(loss, [leaves_cpu[i] for i in wanted])
    for name, a, b in zip(("x", "v0"), g_cpu, g_ref):
        assert_grads_close(a, b, f"grad {name}")
    if spec.charge in PLIF_FORMS:
        scale = plif_w_grad_scale(spec, x, v0, w, gy, gv)
        assert_grads_close(g_cpu[2], g_ref[2], "grad w", scale)


@pytest.mark.parametrize("form", FORMS, ids=form_id)
def test_membrane_exactly_on_the_threshold(form, cache_dir) -> None:
    """Charged exactly onto the threshold a neuron fires under ``>=`` and not under ``>``;
    one ulp below it never fires and one above always does: kernel == torch maths == rule."""
    spec = spec_of(form)
    kernel = kernel_for(spec, cache_dir)
    _, v0, w, *_ = _inputs(1, seed=5)
    params = {"w": w} if spec.charge in PLIF_FORMS else {}
    state, landed, exact, below, above = threshold_crossing_inputs(spec, params, {"v": v0})
    x = torch.stack([torch.cat([exact, below, above]), torch.zeros(9, 37)])
    v0 = state["v"].repeat(3, 1)
    out_ref, v_ref = _torch_reference(spec, x, v0, w)
    out, v_last = run_neuron(kernel, x, (), v0, w.sigmoid())
    assert torch.equal(out, out_ref), f"{(out != out_ref).sum().item()} outputs differ"
    assert torch.equal(v_last, v_ref)
    h = charged_membrane(spec, params, x[0], {"v": v0})
    for got in (out, out_ref):
        fired = fired_on_step(spec, got[0], h)
        if fired is None:
            continue
        on, lo, hi = fired.split(3)
        assert torch.equal(on[landed], torch.full_like(on[landed], spec.fire_cmp == ">="))
        assert not lo.any() and hi.all()


def test_fresh_state_starts_at_v_init(cache_dir) -> None:
    spec = spec_of(("sj_lif_decay_input", "hard", False, "spike", ">=", "sigmoid"))
    x, *_ = _inputs(8, seed=1)
    out, v_last = run_neuron(kernel_for(spec, cache_dir), x)
    ref, st = neurons.run_sequence(spec, {}, x)
    assert torch.equal(out, ref) and torch.equal(v_last, st["v"])


@pytest.mark.parametrize(
    "charge", ["sj_lif_decay_input", "sj_plif_decay_input", "sj_if", "snncc_li"]
)
def test_fused_prologue_and_epilogue_match_reference_steps(charge, cache_dir) -> None:
    """scale/add steps fused into the kernel == the reference backend's apply_steps."""
    output = "membrane" if charge == "snncc_li" else "spike"
    reset = "none" if charge == "snncc_li" else "hard"
    spec = spec_of((charge, reset, False, output, ">=", "atan"))
    pro = [
        {"kind": "add", "port": 1},
        {"kind": "scale", "op": "div", "value": 3.0},
        {"kind": "scale", "op": "mul", "value": 1.9},
    ]
    epi = [{"kind": "scale", "op": "mul", "value": 0.3}, {"kind": "add", "port": 2}]
    kernel = kernel_for(spec, cache_dir, pro, epi)
    T = 16
    x, v0, w, gy, _ = _inputs(T, seed=5)
    a1 = torch.rand_like(x)
    a2 = torch.randn(x.shape[1:])  # broadcast over time: autograd reduces its gradient
    ref_leaves = [t.clone().requires_grad_() for t in (x, a1, a2, w)]
    cpu_leaves = [t.clone().requires_grad_() for t in (x, a1, a2, w)]
    rx, ra1, ra2, rw = ref_leaves
    ins = [rx, ra1, ra2.expand_as(rx)]
    xin = apply_steps(pro, rx, ins, "test prologue")
    params = {"w": rw} if charge in PLIF_FORMS else {}
    y, _ = neurons.run_sequence(spec, params, xin, {"v": v0})
    ref = apply_steps(epi, y, ins, "test epilogue")
    cx, ca1, ca2, cw = cpu_leaves
    out, _ = run_neuron(kernel, cx, (ca1, ca2), v0, cw.sigmoid())
    assert torch.equal(out, ref)
    wanted = [0, 1, 2, 3] if charge in PLIF_FORMS else [0, 1, 2]
    g_ref = torch.autograd.grad((ref * gy).sum(), [ref_leaves[i] for i in wanted])
    g_cpu = torch.autograd.grad((out * gy).sum(), [cpu_leaves[i] for i in wanted])
    for name, a, b in zip(("x", "a1", "a2", "w"), g_cpu, g_ref):
        assert_grads_close(a, b, f"grad {name}")


@pytest.mark.parametrize("charge", ["sj_plif_decay_input", "sj_lif", "sj_if"])
def test_recompute_gives_the_same_gradients_as_saved_membranes(charge, cache_dir) -> None:
    spec = spec_of((charge, "hard", False, "spike", ">=", "sigmoid"))
    pro = [{"kind": "scale", "op": "mul", "value": 1.25}, {"kind": "add", "port": 1}]
    saved = kernel_for(spec, cache_dir, pro)
    recomputed = kernel_for(spec, cache_dir, pro, recompute=True)
    assert recomputed.info.recompute and not saved.info.recompute
    x, v0, w, gy, gv = _inputs(24, seed=9)
    a = torch.rand_like(x)
    grads = []
    for kernel in (saved, recomputed):
        leaves = [t.clone().requires_grad_() for t in (x, a, v0, w)]
        out, v_last = run_neuron(kernel, leaves[0], (leaves[1],), leaves[2], leaves[3].sigmoid())
        loss = (out * gy).sum() + (v_last * gv).sum()
        grads.append((out, torch.autograd.grad(loss, leaves, allow_unused=True)))
    (o1, g1), (o2, g2) = grads
    assert torch.equal(o1, o2)
    assert (g1[3] is None) == (charge not in PLIF_FORMS)
    for a_, b_ in zip(g1, g2):
        # same arithmetic, only where h comes from differs
        assert (a_ is None and b_ is None) or torch.equal(a_, b_)


@pytest.mark.parametrize("charge", ["sj_plif_decay_input", "sj_lif"])
def test_lane_blocks_keep_neurons_apart(charge, cache_dir) -> None:
    """The host kernels run blocks of 32 neurons as SIMD lanes, the last block partial: a
    neuron's outputs and gradients are bit for bit the same wherever it sits (75 neurons
    reversed moves each one to another block and lane, and into or out of the tail)."""
    spec = spec_of((charge, "hard", False, "spike", ">=", "sigmoid"))
    kernel = kernel_for(spec, cache_dir, recompute=charge == "sj_lif")
    x, v0, w, gy, gv = _inputs(11, seed=4, shape=(75,))
    perm = torch.arange(74, -1, -1)
    runs = []
    for order in (torch.arange(75), perm):
        leaves = [x[:, order].clone().requires_grad_(), v0[order].clone().requires_grad_()]
        out, v_last = run_neuron(kernel, leaves[0], (), leaves[1], w.sigmoid())
        loss = (out * gy[:, order]).sum() + (v_last * gv[order]).sum()
        grads = torch.autograd.grad(loss, leaves)
        back = torch.argsort(order)
        runs.append([out[:, back], v_last[back], grads[0][:, back], grads[1][back]])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert 0 < runs[0][0].sum() < runs[0][0].numel()
    if charge in PLIF_FORMS:  # d loss / d k, one double per neuron before the host sums them
        from snncc.backends.cpu.autograd import layer_backward, layer_forward

        k = [(w.sigmoid().detach().reshape(1), 0)]
        gks = []
        for order in (torch.arange(75), perm):
            xo, v0o = x[:, order].contiguous(), v0[order].contiguous()
            _, saved, _ = layer_forward(kernel, xo, (), (), [v0o], k, store=True)
            gyo, gvo = gy[:, order].contiguous(), gv[order].contiguous()
            want = {"gv0": True, "gp_k": True}
            grads = layer_backward(
                kernel, tuple(xo.shape), xo.device, gyo, [gvo], saved, xo, (), (), [v0o], k, want
            )
            gks.append(grads["gp_k"][torch.argsort(order)])
        assert gks[0].shape == (75,) and bool((gks[0] != 0).all())
        assert torch.equal(gks[0], gks[1])


@pytest.mark.parametrize("layout", ["sum", "mean-over-time", "transposed"])
def test_backward_reads_the_output_gradient_in_place_with_its_strides(layout, cache_dir) -> None:
    """gy with strides (0, 0) (y.sum()), (0, 1) (a mean over time) or (1, T) reaches the
    kernel as it is, never materialised, and gives the bits of a contiguous copy."""
    spec = spec_of(("sj_plif_decay_input", "hard", False, "spike", ">=", "atan"))
    kernel = kernel_for(spec, cache_dir)
    T, N = 16, 40
    x, v0, w, _, _ = _inputs(T, seed=31, shape=(N,))
    g = torch.randn(T, N, generator=torch.Generator().manual_seed(2))
    gy = {
        "sum": torch.ones(()).expand(T, N),
        "mean-over-time": g[0].div(T).expand(T, N),
        "transposed": g.t().contiguous().t(),
    }[layout]
    assert not gy.is_contiguous()
    runs = []
    with backward_gy_strides(kernel) as seen:
        for grad_out in (gy, gy.contiguous()):
            leaves = [t.clone().requires_grad_() for t in (x, v0, w)]
            out, _ = run_neuron(kernel, leaves[0], (), leaves[1], leaves[2].sigmoid())
            runs.append(torch.autograd.grad(out, leaves, grad_outputs=grad_out))
    # the kernel got the strided gradient itself, then the contiguous copy
    assert seen == [(gy.stride(), *gy.stride()), ((N, 1), N, 1)], seen
    for name, a, b in zip(("x", "v0", "w"), *runs):
        assert torch.equal(a, b), name


def test_create_graph_gives_the_same_gradients_and_refuses_a_second_derivative(
    cache_dir,
) -> None:
    """The layer's backward runs without ``once_differentiable``'s wrapper on the usual path
    (host cost); with ``create_graph=True`` it still gives the same bits, and differentiating
    those gradients again is refused, not silently zero."""
    spec = spec_of(("sj_plif_decay_input", "hard", False, "spike", ">=", "atan"))
    kernel = kernel_for(spec, cache_dir)
    x, v0, w, _, _ = _inputs(12, seed=5, shape=(24,))
    grads = []
    for create_graph in (False, True):
        leaves = [t.clone().requires_grad_() for t in (x, v0, w)]
        out, _ = run_neuron(kernel, leaves[0], (), leaves[1], leaves[2].sigmoid())
        gy = torch.ones_like(out).requires_grad_(create_graph)  # a gradient that is a graph
        grads.append(torch.autograd.grad(out, leaves, gy, create_graph=create_graph))
    for name, a, b in zip(("x", "v0", "w"), *grads):
        assert torch.equal(a, b.detach()), name
    assert grads[1][0].requires_grad
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grads[1][0].sum().backward()


def test_uint8_spikes_equal_float_spikes(cache_dir) -> None:
    spec = spec_of(("sj_lif_decay_input", "hard", False, "spike", ">=", "sigmoid"))
    x, v0, *_ = _inputs(8, seed=3)
    f32, _ = run_neuron(kernel_for(spec, cache_dir), x, (), v0)
    u8, _ = run_neuron(kernel_for(spec, cache_dir, spike_dtype="uint8"), x, (), v0)
    assert u8.dtype == torch.uint8 and torch.equal(u8.float(), f32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("form", FORMS[::3], ids=form_id)
def test_16_bit_io_kernels_equal_widening_then_narrowing(form, dtype, cache_dir) -> None:
    """x_dtype / spike_dtype "bfloat16" / "float16": the fp32 kernel's bits between torch casts.

    What autocast would do around the fp32 kernel -- widen x, run, narrow the
    output for the next GEMM, and narrow gx back to x's dtype in the backward --
    the 16-bit-I/O kernel does on load and store, so outputs, membranes and every
    gradient are identical, not just close. A prologue with an add input (fp32,
    widened as before) rides along, and on every other form an epilogue scale
    makes the output something other than 0/1 (membranes are not 0/1 either).
    """
    spec = spec_of(form)
    pro = [{"kind": "add", "port": 1}, {"kind": "scale", "op": "div", "value": 3.0}]
    epi = [{"kind": "scale", "op": "mul", "value": 0.3}] if FORMS.index(form) % 2 else []
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    k32 = kernel_for(spec, cache_dir, pro, epi)
    k16 = kernel_for(spec, cache_dir, pro, epi, x_dtype=name, spike_dtype=name)
    T = 12
    x, v0, w, gy, gv = _inputs(T, seed=21)
    x = (x * 3).to(dtype)  # 16-bit activations, some far past the threshold
    a = torch.rand_like(x, dtype=torch.float32)
    # a 16-bit output's gradient is 16-bit; tiny ones exercise the fp16 subnormals
    gy = (gy * torch.logspace(-9, 0, T).reshape(T, 1, 1)).to(dtype)
    runs = []
    for kernel, widen in ((k32, True), (k16, False)):
        xs, a_, v0_, w_ = (t.clone().requires_grad_() for t in (x, a, v0, w))
        xin = xs.float() if widen else xs
        out, v_last = run_neuron(kernel, xin, (a_,), v0_, w_.sigmoid())
        if widen:
            out = out.to(dtype)  # what the next GEMM's autocast does
        loss = (out.float() * gy.float()).sum() + (v_last * gv).sum()
        grads = torch.autograd.grad(loss, (xs, a_, v0_, w_), allow_unused=True)
        runs.append((out, v_last, grads))
    (o32, v32, g32), (o16, v16, g16) = runs
    assert o16.dtype == dtype and g16[0].dtype == dtype
    assert torch.equal(o16, o32) and torch.equal(v16, v32)
    if not (spec.spiking and not epi):  # rounding really happened
        assert not torch.equal(o16.float(), out_fp32(k32, x, a, v0, w))
    for name, got, want in zip(("x", "a", "v0", "w"), g16, g32):
        assert (got is None) == (want is None), name
        if want is not None:
            assert torch.equal(got, want), name


def out_fp32(kernel, x, a, v0, w) -> torch.Tensor:
    """The fp32 kernel's output on widened x (no rounding to 16 bits)."""
    with torch.no_grad():
        return run_neuron(kernel, x.float(), (a,), v0, w.sigmoid())[0]


#: bit patterns at every edge of the fp32 -> 16-bit roundings: zeros, infinities, the
#: largest finite values, ties and near-ties, subnormal results, NaNs with payloads
_EDGE_BITS = [
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF,
    0x7F7F8000, 0x7F7F7FFF, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF,
    0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0xC77FF000, 0x47800000,  # fp16 max, inf
    0x38800000, 0x387FFFFF, 0x387FF000, 0x33000000, 0x33000001, 0x32FFFFFF, 0x33800000,
    0x33C00000, 0x34200000, 0x37FFE000, 0x37FFF000, 0x80000001, 0x00000001, 0x00008000,
    0x00018000, 0x007FFFFF, 0x80008000,
    0x7FC00000, 0x7F800001, 0xFFC00001, 0x7FFFFFFF, 0x7FA00000,
]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16_bit_conversions_in_the_kernels_match_torch(dtype, cache_dir) -> None:
    """The common layer's 16-bit load (exact) and store (round to nearest even, overflow to
    inf, NaN quiet) against torch's casts: random fp32 bit patterns, random values in the
    16-bit subnormal and normal ranges, every edge, and every 16-bit value widened."""
    from snncc.backends.cpu import compiler
    from snncc.backends.kernels import render_template

    ctype = {torch.bfloat16: "snncc_bf16", torch.float16: "snncc_f16"}[dtype]
    src = render_template("common.cuh.j2", target="cpu") + (
        f'extern "C" void snncc_test_narrow(const float* x, {ctype}* y, long long n) {{\n'
        "    for (long long i = 0; i < n; ++i) snncc_store(y, i, x[i]);\n}\n"
        f'extern "C" void snncc_test_widen(const {ctype}* x, float* y, long long n) {{\n'
        "    for (long long i = 0; i < n; ++i) y[i] = snncc_load(x, i);\n}\n"
    )
    lib = compiler.load(src, cache_dir)

    def call(fn, src_t: torch.Tensor, dst_t: torch.Tensor) -> None:
        fn(
            ctypes.c_void_p(src_t.data_ptr()),
            ctypes.c_void_p(dst_t.data_ptr()),
            ctypes.c_longlong(src_t.numel()),
        )

    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31, (1 << 18,), generator=g, dtype=torch.int64)
    bits = torch.cat([bits, torch.tensor(_EDGE_BITS, dtype=torch.int64)])
    x = torch.from_numpy((bits & 0xFFFFFFFF).numpy().astype("uint32").view("float32").copy())
    scales = torch.logspace(-26, 5, 1 << 16, base=2.0)  # subnormal to past the fp16 max
    x = torch.cat([x, scales * (torch.rand(scales.shape, generator=g) + 0.5), -scales])
    y = torch.empty(x.shape, dtype=dtype)
    call(lib.snncc_test_narrow, x, y)
    want = x.to(dtype)
    nan = torch.isnan(x)
    got_bits, want_bits = y.view(torch.int16), want.view(torch.int16)
    bad = (got_bits != want_bits) & ~nan
    assert not bad.any(), [hex(int(b) & 0xFFFFFFFF) for b in x[bad].view(torch.int32)[:8]]
    assert torch.isnan(y.float()[nan]).all()  # NaN stays NaN: torch's quiet NaN
    quiet = 0x7FC0 if dtype == torch.bfloat16 else 0x7E00
    assert bool(((got_bits[nan] & 0x7FFF) == quiet).all())
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    back = torch.empty(every.shape, dtype=torch.float32)
    call(lib.snncc_test_widen, every, back)
    want = every.float()
    same = (back.view(torch.int32) == want.view(torch.int32)) | (back.isnan() & want.isnan())
    assert bool(same.all())


def test_the_host_exp_is_correctly_rounded(cache_dir) -> None:
    """The cpu layer's own e^x (inline so lane loops vectorise; the surrogates use it): on
    random inputs over the whole range and every edge it equals e^x computed in double and
    rounded once to float, which is the correctly rounded value but for a double-rounding
    case once in about 1e8; overflow is inf, underflow 0, NaN NaN."""
    from snncc.backends.cpu import compiler
    from snncc.backends.kernels import render_template

    src = render_template("common.cuh.j2", target="cpu") + (
        'extern "C" void snncc_test_exp(const float* x, float* y, long long n) {\n'
        "    for (long long i = 0; i < n; ++i) y[i] = snncc_expf(x[i]);\n}\n"
    )
    lib = compiler.load(src, cache_dir)
    g = torch.Generator().manual_seed(0)
    edges = [0.0, -0.0, 1e-45, -1e-45, 1e-30, 2.0**-25, -(2.0**-25), 1.0, -1.0, 0.5 * math.log(2)]
    edges += [88.72283, 88.72284, 88.7229, 89.0, 100.0, -87.33654, -87.3366, -103.27893]
    edges += [-103.97208, -103.97209, -104.0, -150.0, math.inf, -math.inf, math.nan]
    x = torch.cat(
        [
            torch.rand(1 << 20, generator=g) * 208.0 - 104.0,  # the finite range
            torch.randn(1 << 18, generator=g) * 4,  # where surrogates live
            torch.tensor(edges, dtype=torch.float32),
        ]
    )
    y = torch.empty_like(x)
    lib.snncc_test_exp(
        ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_longlong(x.numel())
    )
    want = x.double().exp().float()
    nan = x.isnan()
    assert bool(y[nan].isnan().all())
    same = y[~nan].view(torch.int32) == want[~nan].view(torch.int32)
    assert bool(same.all()), [
        (float(a), float(b)) for a, b in zip(x[~nan][~same][:4], y[~nan][~same][:4])
    ]
    at = dict(zip(edges[:-1], y[-len(edges) : -1].tolist()))
    assert at[math.inf] == math.inf and at[100.0] == math.inf and at[88.72284] == math.inf
    assert at[-math.inf] == 0.0 and at[-150.0] == 0.0 and at[-104.0] == 0.0
    assert at[-103.27893] > 0.0  # the smallest subnormal, not flushed to zero
    assert at[0.0] == 1.0 and at[-0.0] == 1.0


def test_broadcast_check_follows_torch() -> None:
    """The kernels' plain-Python broadcast check (torch's is slow per time step) agrees with
    torch.broadcast_shapes on every pair of shapes up to rank 3 with sizes 0 to 3."""
    from snncc.backends.cpu.autograd import broadcasts_to

    def torch_says(a, b) -> bool:
        try:
            return tuple(torch.broadcast_shapes(a, b)) == b
        except RuntimeError:
            return False

    shapes = [s for r in range(4) for s in itertools.product(range(4), repeat=r)]
    for a, b in itertools.product(shapes, repeat=2):
        assert broadcasts_to(a, b) == torch_says(a, b), (a, b)


def test_wrong_inputs_are_refused(cache_dir) -> None:
    spec = spec_of(("sj_plif", "hard", False, "spike", ">=", "sigmoid"))
    kernel = kernel_for(spec, cache_dir)
    x = torch.rand(4, 2, 3)
    with pytest.raises(ShapeError, match="float32"):
        run_neuron(kernel, x.double(), (), None, torch.tensor(0.5))
    with pytest.raises(ShapeError, match="k = sigmoid"):
        run_neuron(kernel, x)
    with pytest.raises(ShapeError, match="add inputs"):
        run_neuron(kernel, x, (x,), None, torch.tensor(0.5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_is_refused_in_one_line_saying_where_16_bits_run(dtype, cache_dir) -> None:
    """Under torch.autocast("cpu") a linear hands its neuron layer 16-bit activations. The
    cpu backend's kernels run float32 only; widening the input, as the cuda backend does,
    would not give the reference's bits (it runs the neuron ops in the autocast dtype), so
    the refusal says what to do."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), snn.LIF(tau=2.0))
    x = torch.rand(4, 2, 6)
    module = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir).to_torch()
    with torch.autocast("cpu", dtype=dtype):
        with pytest.raises(ShapeError, match=r"float32 only \(call it outside torch\.autocast"):
            module(x)
    assert module(x).dtype == torch.float32  # and without autocast it runs


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from snncc.backends.cpu import compiler

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("SNNCC_CXX", raising=False)
    with pytest.raises(BackendError, match=r"tried .*g\+\+.*install"):
        compiler.find_compiler()


def test_compiled_kernels_are_cached_on_disk(tmp_path) -> None:
    spec = spec_of(("sj_if", "subtract", True, "spike", ">", "rect"))
    NeuronKernel(spec, cache_dir=str(tmp_path))
    sos = list(tmp_path.glob("*.so"))
    cpps = list(tmp_path.glob("*.cpp"))
    assert len(sos) == 1 and len(cpps) == 1
    mtime = sos[0].stat().st_mtime_ns
    NeuronKernel(spec, cache_dir=str(tmp_path))
    assert sos[0].stat().st_mtime_ns == mtime and len(list(tmp_path.glob("*.so"))) == 1


def test_kernels_are_built_for_this_cpu_and_cached_per_cpu(monkeypatch, tmp_path) -> None:
    """-march=native where the compiler resolves it (512-bit vectors only with AVX-512), and
    the resolved target in the cache key: a cache shared by two kinds of CPU keeps one
    library per kind instead of loading one CPU's instructions on the other."""
    from snncc.backends.cpu import compiler

    cxx = compiler.find_compiler()
    real = compiler.native_target(cxx)
    if real is None:
        pytest.skip("this compiler resolves no -march=native")
    assert "native" not in real.split() and "-march=native" not in real.split()
    src = 'extern "C" int snncc_probe() { return 7; }\n'
    paths = {}
    uncached = compiler.native_flags.__wrapped__
    for target in ("-march=cpu-a -mavx2", "-march=cpu-b -mavx2 -mavx512f", None):
        monkeypatch.setattr(compiler, "native_target", lambda _cxx, t=target: t)
        wanted = uncached(cxx)  # the flags this target would get
        if target is not None and not wanted:
            continue  # the fake AVX-512 target where 512-bit vectors do not build
        monkeypatch.setattr(compiler, "native_flags", lambda _cxx, f=wanted: f)
        flags = compiler.compile_flags(cxx)
        assert ("-march=native" in flags) == (target is not None)
        assert ("-mprefer-vector-width=512" in flags) == (target is not None and "avx512" in target)
        if target is None or "avx512" not in target:  # the fake AVX-512 one may not build here
            paths[target] = compiler.build(src, tmp_path)
    assert len(set(paths.values())) == len(paths) == 2
    # -fno-fast-math turns trapping maths back on: -fno-trapping-math must come after it
    base = list(compiler.BASE_FLAGS)
    assert base.index("-fno-trapping-math") > base.index("-fno-fast-math")


def test_a_native_flag_that_does_not_build_falls_back_to_the_generic_target(tmp_path) -> None:
    """A driver that lists -march=native under -### while the compiler proper rejects it
    (an assembler older than the CPU, a port that passes 'native' through): the kernels
    build for the generic target, with a warning, instead of the backend failing."""
    from snncc.backends.cpu import compiler

    real = compiler.find_compiler()
    if compiler.native_target(real) is None:
        pytest.skip("this compiler has no -march=native to reject")
    fake = tmp_path / "fake-cxx"
    fake.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do [ "$a" = "-###" ] && exec {real} "$@"; done\n'
        'for a in "$@"; do [ "$a" = "-march=native" ] && '
        "{ echo \"cc1plus: error: bad value 'native' for '-march='\" >&2; exit 1; }; done\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    cxx = str(fake)
    assert compiler.native_target(cxx) is not None  # the listing still resolves it
    with pytest.warns(UserWarning, match="cannot build with it"):
        flags = compiler.compile_flags(cxx)
    assert "-march=native" not in flags and "-mprefer-vector-width=512" not in flags


# ------------------------------------------------------------------ graphs
def _grads_by_name(prog, x: torch.Tensor, gy: torch.Tensor):
    xin = x.clone().requires_grad_()
    y, _ = prog.run(xin)
    names = [n for n, p in prog.params.items() if p.requires_grad]
    leaves = [prog.params[n] for n in names] + [xin]
    grads = torch.autograd.grad((y * gy).sum(), leaves, allow_unused=True)
    return y, dict(zip([*names, "<input>"], grads))


def _compare_programs(ref, cpu, x: torch.Tensor) -> None:
    assert_fires(ref.graph, x)
    gy = torch.randn(ref.run(x)[0].shape, generator=torch.Generator().manual_seed(0))
    y_ref, g_ref = _grads_by_name(ref, x, gy)
    y_cpu, g_cpu = _grads_by_name(cpu, x, gy)
    assert torch.equal(y_cpu, y_ref), f"{(y_cpu != y_ref).sum().item()} outputs differ"
    assert g_ref.keys() == g_cpu.keys()
    for name in g_ref:
        if g_ref[name] is None:
            assert g_cpu[name] is None
            continue
        assert_grads_close(g_cpu[name], g_ref[name], f"grad {name}")


def _compile_both(model: torch.nn.Module, x: torch.Tensor, cache_dir: str):
    ref = snncc.compile(model, x, backend="reference")
    cpu = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir)
    return ref, cpu


class _Residual(torch.nn.Module):
    """Scale and residual add around a neuron: fuse_elementwise makes them kernel steps."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 12)
        self.lif = snn.LIF(tau=1.5)
        self.out = torch.nn.Linear(12, 5)
        self.li = snn.LI(tau=3.0)

    def forward(self, x):
        s = self.lif(self.fc(x) / 2.0 + x)
        return self.li(self.out(s * 0.5 + x))


def _models():
    torch.manual_seed(0)
    plif_net = torch.nn.Sequential(
        torch.nn.Linear(12, 24),
        snn.IF(v_reset=None, surrogate="atan", alpha=2.0, detach_reset=True),
        torch.nn.Linear(24, 16),
        snn.ParametricLIF(init_tau=3.0, decay_input=False),
        torch.nn.Linear(16, 5),
    )
    with torch.no_grad():  # the PLIF fires on its first step too (T = 1)
        plif_net[2].bias.add_(1.0)
    return {
        "mlp_lif_li": torch.nn.Sequential(
            torch.nn.Linear(12, 32), snn.LIF(), torch.nn.Linear(32, 5), snn.LI()
        ),
        "mlp_if_soft_atan_plif": plif_net,
        "residual_fused": _Residual(),
    }


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("name", ["mlp_lif_li", "mlp_if_soft_atan_plif", "residual_fused"])
def test_cpu_backend_matches_reference_on_snncc_models(name, T, cache_dir) -> None:
    model = _models()[name]
    x = torch.rand(T, 4, 12, generator=torch.Generator().manual_seed(T)) * 3.0
    ref, cpu = _compile_both(model, x, cache_dir)
    if name == "residual_fused":
        neuron_attrs = [cpu.ir.attrs(n) for n in cpu.ir.iter_ops("neuron")]
        assert any(a.get("prologue") for a in neuron_attrs)
        assert any(a.get("epilogue") for a in neuron_attrs)
    _compare_programs(ref.program, cpu.program, x)


@pytest.mark.parametrize("T", TS)
def test_cpu_backend_matches_reference_on_spikingjelly_convnet(T, cache_dir) -> None:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    torch.manual_seed(1)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1),
        layer.BatchNorm2d(4),
        neuron.ParametricLIFNode(init_tau=2.0, surrogate_function=surrogate.ATan()),
        layer.MaxPool2d(2),
        layer.Flatten(),
        layer.Linear(4 * 4 * 4, 10),
        neuron.LIFNode(tau=2.0, detach_reset=True, v_reset=None),
    )
    functional.set_step_mode(net, "m")
    with torch.no_grad():  # default inits never fired here: drives that fire from t = 0
        net[0].weight.mul_(3.0)
        net[0].bias.add_(2.0)
        net[5].bias.add_(1.5)
    net.eval()
    x = torch.rand(T, 2, 1, 8, 8, generator=torch.Generator().manual_seed(T)) * 2
    ref, cpu = _compile_both(net, x, cache_dir)
    _compare_programs(ref.program, cpu.program, x)
    # and the source framework agrees with both, bit for bit
    functional.reset_net(net)
    with torch.no_grad():
        assert torch.equal(cpu(x).detach(), net(x))


def test_streaming_run_continues_from_state(cache_dir) -> None:
    model = _models()["mlp_lif_li"]
    x = torch.rand(10, 3, 12, generator=torch.Generator().manual_seed(2)) * 1.5
    ref, cpu = _compile_both(model, x, cache_dir)
    y_full, st_full = cpu.program.run(x)
    y1, st = cpu.program.run(x[:4])
    y2, st2 = cpu.program.run(x[4:], st)
    assert torch.equal(torch.cat([y1, y2]), y_full)
    ry, rst = ref.program.run(x)
    assert torch.equal(y_full, ry)
    assert st_full.keys() == rst.keys()
    for n in rst:
        assert torch.equal(st2[n]["v"], rst[n]["v"])


@pytest.mark.parametrize("T", TS)
def test_cpu_backend_matches_reference_on_a_recurrent_graph(T, cache_dir) -> None:
    g = recurrent_lif_graph()
    x = recurrent_lif_input(T, seed=T)
    ref = ReferenceProgram(g)
    cpu = CpuProgram(g, cache_dir=cache_dir)
    _compare_programs(ref, cpu, x)
    if T > 1:  # streaming across the recurrence: the delay state carries over
        y, _ = cpu.run(x)
        y1, st = cpu.run(x[:1])
        y2, _ = cpu.run(x[1:], st)
        assert torch.equal(torch.cat([y1, y2]), y)


def _backward_node_names(y: torch.Tensor) -> list[str]:
    seen, todo, names = set(), [y.grad_fn], []
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_recurrent_component_reads_its_inputs_step_by_step_without_select(
    backend, cache_dir
) -> None:
    """A component run step by step takes its outside inputs' steps from one unbind per
    sequence: a seq[t] per step has a backward that writes a zero tensor of the whole
    sequence for each step (O(T^2): it was half of a T=100 RLeaky training step)."""
    g = recurrent_lif_graph()
    T = 12
    x = torch.rand(T, 3, 6, generator=torch.Generator().manual_seed(1)).requires_grad_()
    prog = ReferenceProgram(g) if backend == "reference" else CpuProgram(g, cache_dir=cache_dir)
    y, _ = prog.run(x)
    names = _backward_node_names(y)
    assert "UnbindBackward0" in names
    assert "SelectBackward0" not in names, sorted(set(names))


def test_cpu_backend_is_registered_and_lists_its_source(cache_dir) -> None:
    from snncc import backends

    assert "cpu" in backends.available()
    model = _models()["mlp_lif_li"]
    x = torch.rand(4, 2, 12)
    cm = snncc.compile(model, x, backend="cpu", cache_dir=cache_dir)
    assert "SNNCC_KERNEL void snncc_fwd_" in cm.source
    assert "kernels.cpp" in cm.program.files()
    with pytest.raises(snncc.UnsupportedError, match="unknown cpu backend option"):
        snncc.compile(model, x, backend="cpu", unroll=4)


# ------------------------------------------- spikes saved as uint8 for the GEMMs
def _spike_net(epilogue: bool = False) -> torch.nn.Module:
    """conv -> LIF -> maxpool -> flatten -> linear -> PLIF -> dropout -> linear -> LIF."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = snn.SeqToANN(torch.nn.Conv2d(1, 4, 3, padding=1))
            self.lif1 = snn.LIF(tau=2.0)
            self.pool = snn.SeqToANN(torch.nn.MaxPool2d(2))
            self.fc1 = torch.nn.Linear(4 * 4 * 4, 16)
            self.plif = snn.ParametricLIF(init_tau=2.5, surrogate="atan")
            self.drop = torch.nn.Dropout(0.2)
            self.fc2 = torch.nn.Linear(16, 5)
            self.lif2 = snn.LIF(tau=1.5, v_reset=None)

        def forward(self, x):
            s = self.pool(self.lif1(self.conv(x)))
            s = self.plif(self.fc1(s.flatten(2)))
            if epilogue:
                s = s * 0.5  # fused into the PLIF kernel: no longer 0/1
            return self.lif2(self.fc2(self.drop(s)))

    torch.manual_seed(3)
    net = Net()
    with torch.no_grad():
        net.conv[0].weight.mul_(6.0)
        net.fc1.weight.mul_(12.0)
        net.fc2.weight.mul_(4.0)
        net.fc2.bias.fill_(1.5)
    return net


def test_spike_fed_gemms_are_found_from_the_graph_only() -> None:
    """Spiking SJ-style neurons (no epilogue) through maxpool/flatten into a GEMM; not past
    dropout (it scales), an epilogue, a delay edge or an snnTorch form."""
    from snncc.backends.cpu.saved_spikes import spike_fed_gemms

    x = torch.rand(3, 2, 1, 8, 8)

    def fed(net: torch.nn.Module) -> set[str]:
        prog = snncc.compile(net, x, backend="cpu").program
        return {prog.graph.node(n).get("name") for n in prog.spike_fed}

    assert fed(_spike_net().eval()) == {"fc1", "fc2"}  # conv is fed by the input
    assert fed(_spike_net(epilogue=True).eval()) == {"fc1"}  # PLIF's output scaled by 0.5

    lif = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0)
    leaky = NeuronSpec(  # graded spikes
        model="leaky",
        charge="snntorch_leaky",
        reset="subtract",
        extra={"beta": 0.9, "graded_spikes_factor": 0.5},
    )
    g = Graph()
    inp = g.add_node("input", attrs={"index": 0}, shape=["B", 4])
    specs = {}
    names = {}
    for label, spec, via in (
        ("direct", lif, None),
        ("dropout", lif, "dropout"),
        ("identity", lif, "identity"),
        ("snntorch", leaky, None),
    ):
        neu = g.add_node("neuron", [inp], attrs={"neuron": lif.to_dict()}, shape=["B", 4])
        specs[neu] = spec
        src = neu
        if via is not None:
            src = g.add_node(
                via, [neu], attrs={"p": 0.5} if via == "dropout" else {}, shape=["B", 4]
            )
        names[g.add_node("linear", [src], params={"weight": "w"}, shape=["B", 4])] = label
    delayed = g.add_node("linear", [], params={"weight": "w"}, shape=["B", 4])
    g.add_edge(next(iter(specs)), delayed, 0, delay=1)
    names[delayed] = "delayed"
    assert {names[n] for n in spike_fed_gemms(g, specs)} == {"direct", "identity"}


def test_spike_fed_gemms_save_uint8_and_keep_gradients_bit_for_bit() -> None:
    packed: list[torch.Tensor] = []

    def record(t: torch.Tensor) -> torch.Tensor:  # an outer hook sees what is saved
        if t.dtype == torch.uint8:
            packed.append(t)
        return t

    x = torch.rand(6, 3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    net = _spike_net().eval()
    grads = {}
    for compact in (True, False):
        prog = snncc.compile(net, x, backend="cpu").program
        if not compact:
            prog.spike_fed = {}
        packed.clear()
        xs = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            y, _ = prog.run(xs)
        assert y.sum() > 0  # every layer fires
        leaves = [xs] + [p for p in prog.params.values() if p.requires_grad]
        grads[compact] = torch.autograd.grad((y * torch.linspace(-1, 1, 5)).sum(), leaves)
        if compact:  # fc1's and fc2's inputs: [T*B, 64] and [T*B, 16] spikes, one byte each
            assert [tuple(t.shape) for t in packed] == [(18, 64), (18, 16)]
            assert all(t.max() == 1 for t in packed)
        else:
            assert not packed
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        packed.clear()
        prog.run(x)  # inference saves nothing
        assert not packed
    # where the caller disabled saved-tensor hooks, nothing is packed (and nothing fails)
    prog = snncc.compile(net, x, backend="cpu").program
    with torch.autograd.graph.disable_saved_tensors_hooks("no hooks here"):
        xs = x.clone().requires_grad_()
        y, _ = prog.run(xs)
    leaves = [xs] + [p for p in prog.params.values() if p.requires_grad]
    for a, b in zip(torch.autograd.grad((y * torch.linspace(-1, 1, 5)).sum(), leaves), grads[True]):
        assert torch.equal(a, b)


def test_packed_spikes_unpack_to_the_same_bits_in_a_large_block() -> None:
    """Unscaled spikes are packed by one cast, scaled ones (snnTorch's graded factor) by a
    comparison with 0, and a large unpacked block is allocated on huge pages: either way
    the backward reads the bits the kernel wrote."""
    from snncc.backends.cpu import host_pages
    from snncc.backends.cpu.saved_spikes import spikes_saved_as_uint8

    n = 2 * host_pages.MIN_BYTES // 4  # fp32 elements: a block the unpack advises
    s = (torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    seen: list[torch.Tensor] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return t

    for scale in (None, torch.tensor([-0.75])):
        spikes = s if scale is None else s * scale
        w = torch.ones((), requires_grad=True)
        seen.clear()
        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            with spikes_saved_as_uint8(spikes, scale):
                y = spikes * w  # saves ``spikes`` for w's gradient
        assert [t.dtype for t in seen] == [torch.uint8]  # the mask only: spikes need no grad
        assert torch.equal(seen[0], (spikes != 0).to(torch.uint8))
        unpacked = y.grad_fn._saved_self
        assert unpacked.shape == spikes.shape and unpacked.dtype == torch.float32
        assert torch.equal(unpacked.view(torch.int32), spikes.view(torch.int32))
        (gw,) = torch.autograd.grad(y.sum(), [w])
        assert torch.equal(gw, (spikes * torch.ones(())).sum())


def test_max_pooling_passes_spikes_on_only_without_dilation() -> None:
    """A dilated, padded window can see only padding (-inf): not spikes any more."""
    from snncc.backends.cpu.saved_spikes import binary_nodes

    lif = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0)
    g = Graph()
    inp = g.add_node("input", attrs={"index": 0}, shape=["B", 1, 4, 4])
    neu = g.add_node("neuron", [inp], attrs={"neuron": lif.to_dict()}, shape=["B", 1, 4, 4])
    pools = {}
    for dilation in (1, 2):
        attrs = {"kernel_size": [2, 2], "stride": [1, 1], "padding": [1, 1]}
        attrs["dilation"] = [dilation, dilation]
        pools[dilation] = g.add_node("maxpool2d", [neu], attrs=attrs, shape=["B", 1, 3, 3])
    binary = binary_nodes(g, {neu: lif})
    assert pools[1] in binary and pools[2] not in binary


def test_spike_packing_hands_everything_on_to_the_callers_hooks() -> None:
    """Under save_on_cpu or a non-reentrant checkpoint the caller's hooks still see every
    saved tensor (the spikes as uint8), and the gradients stay bit for bit."""
    from torch.utils.checkpoint import checkpoint

    x = torch.rand(6, 3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    prog = snncc.compile(_spike_net().eval(), x, backend="cpu").program
    seen: list[torch.dtype] = []

    def outer_pack(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.dtype)
        return t

    def grads(run) -> tuple[torch.Tensor, ...]:
        xs = x.clone().requires_grad_()
        y = run(xs)
        leaves = [xs] + [p for p in prog.params.values() if p.requires_grad]
        return torch.autograd.grad((y * torch.linspace(-1, 1, 5)).sum(), leaves)

    want = grads(lambda xs: prog.run(xs)[0])
    with torch.autograd.graph.saved_tensors_hooks(outer_pack, lambda t: t):
        got = grads(lambda xs: prog.run(xs)[0])
    assert seen.count(torch.uint8) == 2  # fc1's and fc2's spikes, handed on packed
    for run in (
        lambda xs: checkpoint(lambda inp: prog.run(inp)[0], xs, use_reentrant=False),
        lambda xs: _on_cpu(lambda: prog.run(xs)[0]),
    ):
        for a, b in zip(grads(run), want):
            assert torch.equal(a, b)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def _on_cpu(fn):
    with torch.autograd.graph.save_on_cpu():
        return fn()


def test_saved_memory_benchmark_counts_the_packed_spikes() -> None:
    """benchmarks/saved_memory.py sees the uint8 spikes through its hook (README's table)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "saved_memory.py"
    spec = importlib.util.spec_from_file_location("saved_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x = torch.rand(8, 4, 256)
    model = bench.mlp(lambda: snn.LIF(tau=2.0)).train()
    # input (fp32) + 3 x h (fp32) + 2 x spikes fed to a Linear (uint8); T*B = 32 rows
    want = 32 * (256 * 4 + (1024 + 1024 + 10) * 4 + 2 * 1024) / 2**20
    assert bench.saved_mib(model, x) == pytest.approx(want)


def test_saved_spike_dtype_option() -> None:
    """ "float32" keeps torch's fp32 copy (same gradients); an unknown value is refused by name;
    the option survives save/load and the cuda backend takes it too."""
    x = torch.rand(4, 2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    net = _spike_net().eval()
    progs = {
        dtype: snncc.compile(net, x, backend="cpu", saved_spike_dtype=dtype).program
        for dtype in ("uint8", "float32")
    }
    assert progs["uint8"].spike_fed and not progs["float32"].spike_fed
    grads = {}
    for dtype, prog in progs.items():
        xs = x.clone().requires_grad_()
        y, _ = prog.run(xs)
        grads[dtype] = torch.autograd.grad(y.sum() + (y * y.cumsum(0)).sum(), [xs])[0]
    assert torch.equal(grads["uint8"], grads["float32"])
    with pytest.raises(UnsupportedError, match=r"saved_spike_dtype='bf16'.*'uint8', 'float32'"):
        snncc.compile(net, x, backend="cpu", saved_spike_dtype="bf16")
    cuda = snncc.compile(net, x, backend="cuda", saved_spike_dtype="float32")
    assert not cuda.program.spike_fed


def test_saved_spike_dtype_survives_save_and_load(tmp_path) -> None:
    x = torch.rand(4, 2, 1, 8, 8)
    cm = snncc.compile(_spike_net().eval(), x, backend="cpu", saved_spike_dtype="float32")
    cm.save(tmp_path / "art")
    assert not snncc.load(tmp_path / "art").program.spike_fed
