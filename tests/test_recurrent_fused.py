"""Recurrent groups fused over time (issue 16 item 2): the plan in the IR, the kernels, the option.

- the IR: which recurrent groups get a fused plan (snncc.ir.recurrent), and the reason
  recorded for the others, visible in dumps and ``program.source``;
- the host kernel bit for bit against a torch oracle that sums in the kernels' defined
  order (ascending j over the neurons that fired, then + the feed-forward input);
- fused against the reference (step by step, torch's GEMM order) on snnTorch RLeaky, Norse
  LIFRecurrentCell and SpikingJelly's LinearRecurrentContainer: spikes, membranes and
  gradients within the stated tolerances;
- the CUDA rendering compiles with nvcc (sm_80, sm_90) and NVRTC, with no contraction in
  the forward; on a GPU (``-m gpu``) the cuda kernels equal the host's bit for bit.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from checks import assert_export_runs_elsewhere
from torch import nn

import snncc
from snncc.backends.cpu.recurrent import fused_recurrent
from snncc.backends.kernels.recurrent import recurrent_kernel_info, render_recurrent_kernels
from snncc.backends.reference import neurons
from snncc.ir.neuron import FORMS, NeuronSpec
from snncc.ir.printer import format_graph
from snncc.ir.recurrent import fused_plan

snntorch = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")
sj = pytest.importorskip("spikingjelly.activation_based")

#: the tolerances the README states for recurrent="fused" against the step schedule
SPIKE_AGREEMENT = 0.999
GRAD_RTOL = 1e-4


# ------------------------------------------------------------------ models
class RLeakyNet(nn.Module):
    """snnTorch: Linear -> RLeaky (its recurrent Linear with bias) -> Linear readout."""

    def __init__(self, n_in: int = 12, hidden: int = 24, n_out: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, hidden)
        self.rlif = snntorch.RLeaky(beta=0.9, linear_features=hidden, init_hidden=True)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.out(self.rlif(self.fc(x)))


class NorseRecurrentNet(nn.Module):
    """Norse: LIFRecurrentCell over time (input and recurrent weights, no bias)."""

    def __init__(self, n_in: int = 12, hidden: int = 24) -> None:
        super().__init__()
        self.cell = norse.LIFRecurrentCell(n_in, hidden)

    def forward(self, x):
        state, out = None, []
        for xt in x:
            z, state = self.cell(xt, state)
            out.append(z)
        return torch.stack(out)


def sj_container(n_in: int = 12, hidden: int = 24) -> nn.Module:
    """SpikingJelly: Linear -> LinearRecurrentContainer(LIF) (linear over cat(x, s[t-1]))."""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    net = nn.Sequential(
        layer.Linear(n_in, hidden),
        layer.LinearRecurrentContainer(
            neuron.LIFNode(step_mode="s", surrogate_function=surrogate.ATan()),
            in_features=hidden,
            out_features=hidden,
            step_mode="m",
        ),
    )
    functional.set_step_mode(net[0], "m")
    return net


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(11)
    if name == "snntorch":
        return RLeakyNet(), torch.rand(24, 4, 12, generator=g) * 2.0
    if name == "norse":
        return NorseRecurrentNet(), torch.rand(24, 4, 12, generator=g) * 40.0
    return sj_container(), torch.rand(24, 4, 12, generator=g) * 12.0


MODELS = ["snntorch", "norse", "spikingjelly"]


def _fused_group(cm) -> dict:
    (group,) = [g for g in cm.ir.meta["groups"] if g["kind"] == "recurrent"]
    return group


# ------------------------------------------------------------------ the IR
@pytest.mark.parametrize(
    "name, pattern", [("snntorch", "port"), ("norse", "port"), ("spikingjelly", "cat")]
)
def test_the_ir_records_the_fused_plan(name: str, pattern: str) -> None:
    model, x = _model(name)
    cm = snncc.compile(model, x[:2], backend="reference")
    plan = _fused_group(cm)["fusable"]
    assert plan["pattern"] == pattern
    assert cm.ir.op(plan["neuron"]) == "neuron" and cm.ir.op(plan["linear"]) == "linear"
    assert plan["hidden"] == 24 and plan["port"] == (1 if pattern == "port" else 0)
    assert "(fusable: " in format_graph(cm.ir)
    assert "recurrent, step by step" in cm.program.source  # the reference never fuses


def test_a_group_that_does_not_match_says_why_in_the_dump_and_the_source(cache_dir) -> None:
    """Two neurons in one loop (LIF -> Linear -> LIF -> back): no plan, one line why."""
    from kernel_specs import recurrent_lif_graph

    g = recurrent_lif_graph()
    lif = [n for n in g.nx.nodes if g.op(n) == "neuron"][0]
    spec = NeuronSpec.from_dict(g.attrs(lif)["neuron"])
    extra = g.add_node("neuron", [lif], attrs={"neuron": spec.to_dict()}, shape=["B", 6])
    lin = [n for n in g.nx.nodes if g.op(n) == "linear"][0]
    (e,) = g.in_edges(lin)
    g.remove_edge(e)
    g.add_edge(extra, lin, 0, delay=1)
    from snncc.ir.passes.temporal_fusion import temporal_fusion

    temporal_fusion(g)
    (group,) = [gr for gr in g.meta["groups"] if gr["kind"] == "recurrent"]
    assert "fusable" not in group and group["step_reason"].startswith("2 neuron nodes")
    assert "(step only: " in format_graph(g)
    from snncc.backends.cpu import CpuProgram

    prog = CpuProgram(g, recurrent="fused", cache_dir=cache_dir)
    assert "recurrent, step by step (no fused plan: 2 neuron nodes" in prog.source


def test_the_add_pattern_as_a_node_and_as_a_fused_prologue() -> None:
    from kernel_specs import recurrent_lif_graph

    from snncc.ir.passes.fuse_elementwise import fuse_elementwise

    for g in (recurrent_lif_graph(), fuse_elementwise(recurrent_lif_graph())):
        group = [n for n in g.nx.nodes if g.op(n) not in ("input", "output")]
        plan, why = fused_plan(g, group)
        assert plan is not None, why
        assert plan["pattern"] == "add" and plan["port"] == 0


def test_the_plan_survives_save_and_load(tmp_path, cache_dir) -> None:
    model, x = _model("snntorch")
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    cm.save(tmp_path / "art")
    cm2 = snncc.load(tmp_path / "art")
    assert _fused_group(cm2)["fusable"] == _fused_group(cm)["fusable"]
    assert "recurrent, fused: one kernel over t" in cm2.program.source
    assert torch.equal(cm2(x), cm(x))


@pytest.mark.parametrize(
    ("field", "value"), [("hidden", 4096), ("linear", 0), ("pattern", "cat"), ("port", 7)]
)
def test_an_artifact_whose_fused_plan_was_edited_is_refused(
    tmp_path, cache_dir, field, value
) -> None:
    """The plan is derived from the graph; an artifact recording another one (which would
    have the kernel read the weights with the wrong sizes) is refused by name on load."""
    model, x = _model("snntorch")
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    cm.save(tmp_path / "art")
    ir_path = tmp_path / "art" / "ir" / "ir.json"
    doc = json.loads(ir_path.read_text())
    group = next(g for g in doc["meta"]["groups"] if "fusable" in g)
    group["fusable"][field] = value
    ir_path.write_text(json.dumps(doc))
    with pytest.raises(snncc.errors.IRError, match="recorded fused plan"):
        snncc.load(tmp_path / "art", recurrent="fused", cache_dir=cache_dir)


def test_the_option_is_checked_and_cpu_defaults_to_the_exact_step_schedule(cache_dir) -> None:
    model, x = _model("snntorch")
    cm = snncc.compile(model, x[:2], backend="cpu", cache_dir=cache_dir)
    assert "fusable; option recurrent='step'" in cm.program.source
    ref = snncc.compile(model, x[:2], backend="reference")
    assert torch.equal(cm(x), ref(x))
    with pytest.raises(snncc.errors.UnsupportedError, match="recurrent='sometimes'"):
        snncc.compile(model, x[:2], backend="cpu", recurrent="sometimes")


# ------------------------------------------------------------- the oracle
def _oracle(spec, p, fed, c, w, port, s0=None):
    """The fused kernel's arithmetic in torch: per step, acc = sum over j ascending with
    s_j(t-1) != 0 of W[:, j] * s_j (one rounding per product and per sum), r = acc + c,
    then the reference's neuron step (which the kernels match bit for bit)."""
    T, B, H = (fed[0] if fed else c).shape[:2] + (w.shape[0],)
    state = neurons.init_state(spec, (B, H))
    s = torch.zeros(B, H) if s0 is None else s0
    outs = []
    for t in range(T):
        acc = torch.zeros(B, H)
        for j in range(H):
            sj = s[:, j : j + 1]
            acc = torch.where(sj != 0, acc + w[:, j][None, :] * sj, acc)
        r = acc + (c if c.dim() == 1 else c[t])
        ins = [f[t] for f in fed]
        ins.insert(port, r)
        out, state = neurons.step(spec, p, ins[0], state, *ins[1:])
        outs.append(out)
        s = out
    return torch.stack(outs), state


@pytest.mark.parametrize("name", MODELS)
def test_the_host_kernel_equals_an_oracle_in_the_same_order_bit_for_bit(name, cache_dir) -> None:
    model, x = _model(name)
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    prog = cm.program
    ((plan, kernel),) = prog._fused.values()
    n = plan["neuron"]
    spec = prog._specs[n]
    roles = {r: prog.params[k].detach() for r, k in prog.graph.node(n)["params"].items()}
    p = {**roles, **neurons.derived_constants(spec, roles)}
    T, B, H = 20, 3, plan["hidden"]
    g = torch.Generator().manual_seed(7)
    scale = {"norse": 30.0, "snntorch": 1.5, "spikingjelly": 2.5}[name]
    w = torch.randn(H, H, generator=g) * (0.3 if name != "norse" else 3.0)
    fed = [torch.rand(T, B, H, generator=g) * scale for _ in kernel.info.fed_ports]
    c = torch.randn(H, generator=g) * 0.1 if fed else torch.rand(T, B, H, generator=g) * scale
    out, lasts = fused_recurrent(
        kernel, fed, c, w, None, [None] * len(kernel.info.state_vars),
        [p[q] for q in kernel.info.param_args], (T, B, H),
    )  # fmt: skip
    want, state = _oracle(spec, p, fed, c, w, plan["port"])
    assert 0.05 < float((want != 0).float().mean()) < 0.95  # it fires, and not always
    assert torch.equal(out, want)
    for var, last in zip(kernel.info.state_vars, lasts):
        assert torch.equal(last, state[var]), var


# --------------------------------------------------- fused against the reference
def _run_with_grads(cm, x, gy):
    m = cm.to_torch()
    xx = x.clone().requires_grad_(True)
    y = m(xx)
    (y * gy).sum().backward()
    grads = {k: v.grad for k, v in m.named_parameters() if v.grad is not None}
    return y.detach(), {**grads, "<input>": xx.grad}


@pytest.mark.parametrize("name", MODELS)
def test_fused_against_the_reference_spikes_membranes_and_gradients(name, cache_dir) -> None:
    """Spikes >= 99.9% equal (measured: all equal on these models), final membranes within
    1e-4 of the largest, gradients within 1e-4 relative of the reference's autograd."""
    model, x = _model(name)
    ref = snncc.compile(model, x[:2], backend="reference")
    fused = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    assert "recurrent, fused: one kernel over t" in fused.program.source
    with torch.no_grad():
        (y_ref, st_ref), (y, st) = ref.run(x), fused.run(x)
    assert float((y == y_ref).float().mean()) >= SPIKE_AGREEMENT
    n = _fused_group(fused)["fusable"]["neuron"]
    assert torch.equal(st[n]["delay"] != 0, st_ref[n]["delay"] != 0)
    assert 0.05 < float((st_ref[n]["delay"] != 0).float().mean()) < 0.95  # the loop fires
    v_ref, v = st_ref[n]["v"], st[n]["v"]
    assert float((v - v_ref).abs().max()) <= 1e-4 * max(1.0, float(v_ref.abs().max()))
    gy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(0))
    _, g_ref = _run_with_grads(ref, x[:12], gy[:12])
    _, g = _run_with_grads(fused, x[:12], gy[:12])
    assert set(g) == set(g_ref)
    for k in g_ref:
        err = float((g[k] - g_ref[k]).abs().max()) / max(float(g_ref[k].abs().max()), 1e-12)
        assert err <= GRAD_RTOL, (k, err)


def test_streaming_carries_the_delay_and_the_state(cache_dir) -> None:
    model, x = _model("norse")
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    with torch.no_grad():
        y, _ = cm.run(x)
        y1, st = cm.run(x[:9])
        y2, _ = cm.run(x[9:], st)
    assert torch.equal(torch.cat([y1, y2]), y)


# ------------------------------------------------------------------ CUDA
NVCC = shutil.which("nvcc")


def _cases() -> list[tuple[NeuronSpec, int]]:
    """Every form with a recurrent port (fed at that port; the family forms as the layer
    kernel tests build them), and one-port SpikingJelly / snnTorch / Norse forms fed at
    port 0 (cut, state and none save plans)."""
    from kernel_specs import kernel_spec
    from test_kernels import form_spec, snntorch_norse_families_matrix

    cases = [(form_spec("snntorch_rleaky", args=True), 1)]
    cases.append((form_spec("norse_lif_recurrent", "hard", args=True), 1))
    seen = {"snntorch_rleaky", "norse_lif_recurrent"}
    for spec, _, _, _ in snntorch_norse_families_matrix():
        ports = FORMS[spec.charge].ports
        if "rec" in ports and spec.charge not in seen:
            seen.add(spec.charge)
            cases.append((spec, ports.index("rec")))
    cases += [(kernel_spec("sj_lif_decay_input"), 0), (kernel_spec("sj_if", "subtract"), 0)]
    cases += [(form_spec("snntorch_leaky", args=True), 0), (form_spec("norse_lif", "hard"), 0)]
    return cases


@pytest.fixture(scope="module")
def cuda_units() -> str:
    return "\n".join(render_recurrent_kernels(s, p, "cuda") for s, p in _cases())


@pytest.fixture(scope="module")
def cuda_units_ptx(cuda_units, tmp_path_factory) -> Path:
    """The units through nvcc's front end once (test_kernels.nvcc_ptx says why once)."""
    from test_kernels import nvcc_ptx

    if NVCC is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    assert cuda_units.count("SNNCC_KERNEL void snncc_rfwd_") == len(_cases())
    return nvcc_ptx(cuda_units, tmp_path_factory.mktemp("rec"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_recurrent_cuda_kernels_compile_with_nvcc(arch, cuda_units_ptx, tmp_path) -> None:
    from test_kernels import ptxas

    ptxas(cuda_units_ptx, arch, tmp_path / "r.cubin")


def test_the_recurrent_cuda_kernels_compile_with_nvrtc_without_contraction(cuda_units) -> None:
    from test_kernels import _nvrtc, calls_libm, nvrtc_compile

    lib = _nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found")
    rc, log, ptx = nvrtc_compile(lib, cuda_units, ["--gpu-architecture=compute_90", "-fmad=false"])
    assert rc == 0, log[-4000:]
    forward = [e for e in re.split(r"\.entry ", ptx)[1:] if e.startswith("snncc_rfwd_")]
    assert len(forward) == len(_cases())
    # the sums round as the host's do; an exp's own fma (LIFEx, LIFAdEx) is libdevice's
    libm = {recurrent_kernel_info(s, p).forward_name for s, p in _cases() if calls_libm(s)}
    assert libm, "no recurrent form calls exp: the exemption is untested"
    contracted = [e.split("(")[0] for e in forward if "fma." in e]
    assert not [n for n in contracted if n not in libm]


def test_cuda_defaults_to_fused_and_keeps_large_groups_per_step(cache_dir) -> None:
    model, x = _model("snntorch")
    cm = snncc.compile(model, x[:2], backend="cuda", cache_dir=cache_dir)
    assert "recurrent, fused: one kernel over t" in cm.program.source
    big = RLeakyNet(hidden=1056)
    cm = snncc.compile(big, x[:2], backend="cuda", cache_dir=cache_dir)
    assert "hidden size 1056 > 1024" in cm.program.source
    assert recurrent_kernel_info(cm.program._specs[2], 1).forward_name.startswith("snncc_rfwd_")


def _gpu_ready() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("name", MODELS)
def test_gpu_cuda_fused_equals_host_fused_bit_for_bit(name, tmp_path, cache_dir) -> None:
    """The same inputs through the cuda and the host kernels: outputs, final states and the
    kernel-written gradients (inputs, recurrent input, states) bit for bit; the weight
    gradient (a GEMM: cuBLAS vs the CPU BLAS) within 1e-5 relative. (These forms divide
    by no Python scalar but tau = 2, and their surrogates call no exp: the two targets'
    steps are the same arithmetic.)"""
    from snncc.backends.cuda.recurrent import CudaRecurrentKernel

    model, x = _model(name)
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    ((plan, host),) = cm.program._fused.values()
    spec = cm.program._specs[plan["neuron"]]
    dev = CudaRecurrentKernel(spec, plan["port"], str(tmp_path / "cuda"))
    n = plan["neuron"]
    roles = {
        r: cm.program.params[k].detach() for r, k in cm.program.graph.node(n)["params"].items()
    }
    p = {**roles, **neurons.derived_constants(spec, roles)}
    T, B, H = 32, 8, plan["hidden"]
    g = torch.Generator().manual_seed(2)
    w = torch.randn(H, H, generator=g) * 0.4
    fed = [torch.rand(T, B, H, generator=g) * 2 for _ in host.info.fed_ports]
    c = torch.randn(H, generator=g) * 0.1 if fed else torch.rand(T, B, H, generator=g) * 3
    gy = torch.randn(T, B, H, generator=g)
    runs = []
    for kernel, device in ((host, "cpu"), (dev, "cuda")):
        leaves = [t.to(device).requires_grad_(True) for t in (*fed, c, w)]
        q = [p[k].to(device) for k in host.info.param_args]
        out, lasts = fused_recurrent(
            kernel, leaves[:-2], leaves[-2], leaves[-1], None,
            [None] * len(host.info.state_vars), q, (T, B, H),
        )  # fmt: skip
        (out * gy.to(device)).sum().backward()
        runs.append(
            [out.detach().cpu(), *(v.cpu() for v in lasts), *(t.grad.cpu() for t in leaves)]
        )
    for i, (a, b) in enumerate(zip(*runs)):
        if i == len(runs[0]) - 1:  # the weight gradient: one GEMM
            assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
        else:
            assert torch.equal(a, b), i


def test_the_cli_flag_sets_the_option_once() -> None:
    from snncc import cli

    parser = cli.build_parser()
    base = ["compile", "m.py:make", "--input-shape", "4,1,12", "-o", "out", "--backend", "cpu"]
    args = parser.parse_args([*base, "--recurrent", "fused"])
    assert cli._options(args) == {"recurrent": "fused"}
    args = parser.parse_args([*base, "--recurrent", "step", "-O", "recurrent=step"])
    with pytest.raises(cli.UsageError, match="give the recurrent schedule once"):
        cli._options(args)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--recurrent", "sometimes"])


@pytest.mark.parametrize("name", ["norse", "spikingjelly"])
def test_gradients_reach_a_carried_state(name, cache_dir) -> None:
    """Streaming with a state that needs a gradient: the previous output (the delay edge's
    value, gs0 = W^T gr(0) in the kernel) and the membrane, within 1e-4 of the reference."""
    model, x = _model(name)
    ref = snncc.compile(model, x[:2], backend="reference")
    fused = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    n = _fused_group(fused)["fusable"]["neuron"]
    with torch.no_grad():
        _, st = ref.run(x[:8])
    grads = []
    for cm in (ref, fused):
        leaves = {k: v.clone().requires_grad_(True) for k, v in st[n].items()}
        y, _ = cm.run(x[8:16], {**st, n: leaves})
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad((y * gy).sum(), [leaves["delay"], leaves["v"]]))
    for g_ref, g in zip(*grads):
        assert float(g_ref.abs().max()) > 0
        assert float((g - g_ref).abs().max()) <= 1e-4 * float(g_ref.abs().max())


# ------------------------------------------- traced: torch.compile and torch.export
def _step_grads(module: nn.Module, run, x: torch.Tensor, gy: torch.Tensor):
    for p in module.parameters():
        p.grad = None
    xx = x.clone().requires_grad_(True)
    y = run(xx)
    (y * gy).sum().backward()
    grads = {k: p.grad for k, p in module.named_parameters() if p.grad is not None}
    return y.detach(), {**grads, "<input>": xx.grad}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", MODELS)
def test_a_fused_group_compiles_as_one_graph_with_the_eager_bits(
    name, cache_dir, monkeypatch
) -> None:
    """torch.compile(fullgraph=True) of a model with a fused group: the group runs as the
    ``snncc::recurrent_*`` custom ops (the eager Function is not called), the forward is
    the eager one bit for bit, and the gradients agree within rounding (inductor may sum
    the bias and weight gradients in another order)."""
    from snncc.backends.cpu import recurrent

    model, x = _model(name)
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    module = cm.to_torch()
    gy = torch.randn((24, 4, module(x[:1]).shape[-1]), generator=torch.Generator().manual_seed(2))
    y_e, g_e = _step_grads(module, module, x, gy)
    with torch.no_grad():
        y_inf = module(x)

    def eager_only(*args, **kwargs):
        raise AssertionError("the traced program called the eager Function")

    monkeypatch.setattr(recurrent.FusedRecurrentFunction, "apply", eager_only)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    y_c, g_c = _step_grads(module, compiled, x, gy)
    assert torch.equal(y_c, y_e)
    assert g_c.keys() == g_e.keys()
    assert all(float(g.abs().max()) > 0 for g in g_e.values())  # every gradient reached
    for k in g_e:
        torch.testing.assert_close(g_c[k], g_e[k], rtol=1e-5, atol=1e-6, msg=k)
    with torch.no_grad():
        assert torch.equal(compiled(x), y_inf)  # inference: the forward op saves nothing


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("recurrent", ["fused", "step"])
def test_streaming_through_a_compiled_module_carries_the_state(recurrent, cache_dir) -> None:
    """``to_torch().snncc_run(x, state)`` under torch.compile(fullgraph=True), in two pieces,
    equals one eager run: the carried state (the delay, the membranes) is checked and used
    in the traced graph (the check reads a state spec worked out at lowering, not the
    networkx graph, which dynamo cannot walk)."""
    model, x = _model("norse")
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent=recurrent, cache_dir=cache_dir)
    module = cm.to_torch().eval()
    torch._dynamo.reset()
    run = torch.compile(lambda xs, st=None: module.snncc_run(xs, st), fullgraph=True)
    with torch.no_grad():
        y, _ = module.snncc_run(x)
        y1, st = run(x[:10])
        y2, _ = run(x[10:], st)
    assert torch.equal(torch.cat([y1, y2]), y)
    assert 0 < float(y.sum()) < y.numel()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_fused_group_exports_for_any_length_and_batch_and_loads_elsewhere(
    tmp_path, cache_dir
) -> None:
    """torch.export with T and B dynamic, saved and run in a fresh process that never
    compiled the model: the recurrent ops rebuild their kernel from its key, and the
    outputs equal the eager program's bit for bit at lengths and batches not traced."""
    model, x = _model("spikingjelly")
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    module = cm.to_torch().eval()
    dims = {0: torch.export.Dim("T", min=2, max=4096), 1: torch.export.Dim("B", max=4096)}
    exported = torch.export.export(module, (x,), dynamic_shapes={"x": dims})
    g = torch.Generator().manual_seed(5)
    x2 = torch.rand((37, 9, 12), generator=g) * 12.0
    with torch.no_grad():
        assert torch.equal(exported.module()(x), module(x))
        y2 = module(x2)
        assert torch.equal(exported.module()(x2), y2)
    assert 0 < float(y2.sum()) < y2.numel()
    assert_export_runs_elsewhere(exported, x2, y2, tmp_path)


@pytest.mark.parametrize(
    "name, c_kind, given",
    [("snntorch", "bias", True), ("norse", None, False), ("spikingjelly", "seq", True)],
)
def test_the_recurrent_ops_pass_torch_opcheck(name, c_kind, given, cache_dir) -> None:
    """torch.library.opcheck: schema, fake shapes and the autograd registration agree with
    the real kernels, for each pattern's group: ``c`` a bias, none or a sequence; the
    previous output and the states given at t = -1 or not; gradients to every input."""
    from snncc.backends.cpu import recurrent_ops

    model, x = _model(name)
    cm = snncc.compile(model, x[:2], backend="cpu", recurrent="fused", cache_dir=cache_dir)
    (kernel,) = [k for _, k in cm.program._fused.values()]
    info = kernel.info
    key = recurrent_ops.recurrent_key(kernel)
    T, B, H = 5, 3, 24
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.rand(shape, generator=g) * scale).requires_grad_(True)

    fed = [leaf(T, B, H, scale=2.0) for _ in info.fed_ports]
    c = {"bias": leaf(H), "seq": leaf(T, B, H), None: None}[c_kind]
    s0 = (leaf(B, H) > 0.5).float().requires_grad_(True) if given else None
    s0s = [leaf(B, H) for _ in info.state_vars] if given else []
    qs = [torch.tensor(0.5, requires_grad=True) for _ in info.param_args]
    flags = [int(given)] * len(info.state_vars)
    packed = [leaf(H, H, scale=0.2), *fed, *qs, *s0s]  # w, fed, quantities, given states
    args = (key, c, s0, packed, [1, len(fed), len(qs), *flags], T, B, H, True)
    torch.library.opcheck(torch.ops.snncc.recurrent_forward.default, args)


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.skipif(not _gpu_ready(), reason="needs CuPy and a CUDA GPU")
def test_gpu_a_fused_group_compiles_as_one_graph_on_cuda() -> None:
    """The cuda backend's default (fused) group under torch.compile(fullgraph=True): the
    CUDA kernels as the custom ops, the eager forward bit for bit, gradients within 1e-5."""
    model, x = _model("snntorch")
    cm = snncc.compile(model, x[:2], backend="cuda")
    assert "recurrent, fused: one kernel over t" in cm.program.source
    module = cm.to_torch().to("cuda")
    xc = x.cuda()
    gy = torch.randn((24, 4, 5), generator=torch.Generator().manual_seed(2)).cuda()
    y_e, g_e = _step_grads(module, module, xc, gy)
    torch._dynamo.reset()
    y_c, g_c = _step_grads(module, torch.compile(module, fullgraph=True), xc, gy)
    assert torch.equal(y_c, y_e)
    assert g_c.keys() == g_e.keys()
    for k in g_e:
        torch.testing.assert_close(g_c[k], g_e[k], rtol=1e-5, atol=1e-6, msg=k)
