"""snncc.neurons against SpikingJelly 2.0 neurons on CPU: values bit for bit, gradients to 1e-5.

Each case runs one SpikingJelly neuron layer (step_mode 'm', or 's' looped
over T) and :func:`snncc.neurons.step` on the same random input, and compares
spikes, every step's membrane, and the gradients of one scalar loss (through
spikes *and* the final membrane) wrt the input and PLIF's w.
"""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from snncc.errors import UnsupportedError
from snncc.ir.neuron import NeuronSpec
from snncc.neurons import derived_constants, init_state, run_sequence, step

KINDS = ["if", "lif_di", "lif", "plif_di", "plif"]
SURROGATES = {"sigmoid": surrogate.Sigmoid, "atan": surrogate.ATan}
FEATURES = 24
BATCH = 3


def _sj_node(kind: str, v_reset, detach: bool, sg: str, mode: str):
    common = {
        "v_threshold": 1.0,
        "v_reset": v_reset,
        "surrogate_function": SURROGATES[sg](),
        "detach_reset": detach,
        "step_mode": mode,
    }
    if kind == "if":
        return neuron.IFNode(**common)
    if kind.startswith("lif"):
        return neuron.LIFNode(tau=2.5, decay_input=kind.endswith("_di"), **common)
    return neuron.ParametricLIFNode(init_tau=3.0, decay_input=kind.endswith("_di"), **common)


def _spec(kind: str, v_reset, detach: bool, sg: str) -> NeuronSpec:
    charge = {
        "if": "sj_if",
        "lif_di": "sj_lif_decay_input",
        "lif": "sj_lif",
        "plif_di": "sj_plif_decay_input",
        "plif": "sj_plif",
    }[kind]
    return NeuronSpec(
        model=kind.split("_")[0],
        charge=charge,
        tau=2.5 if kind.startswith("lif") else None,
        decay_input=kind.endswith("_di"),
        v_reset=v_reset,
        reset="subtract" if v_reset is None else "hard",
        detach_reset=detach,
        surrogate=sg,
        alpha=SURROGATES[sg]().alpha,
        v_init=0.0 if v_reset is None else v_reset,
        learnable=("w",) if kind.startswith("plif") else (),
    )


def _sj_run(node, x: torch.Tensor, mode: str):
    """SpikingJelly: spikes [T,...], membranes after each step [T,...], final v."""
    functional.reset_net(node)
    if mode == "m":
        node.store_v_seq = True
        s = node(x)
        return s, node.v_seq, node.v
    outs, vs = [], []
    for xt in x:
        outs.append(node(xt))
        vs.append(node.v)
    return torch.stack(outs), torch.stack(vs), node.v


def _snncc_run(spec: NeuronSpec, params: dict, x: torch.Tensor, per_step_k: bool):
    st = init_state(spec, x.shape[1:])
    p = params if per_step_k else {**params, **derived_constants(spec, params)}
    outs, vs = [], []
    for xt in x:
        out, st = step(spec, p, xt, st)
        outs.append(out)
        vs.append(st["v"])
    return torch.stack(outs), torch.stack(vs), st["v"]


def _loss(s: torch.Tensor, v: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    return (s * r1).sum() + (v * r2).sum()


CASES = list(
    itertools.product(
        KINDS, [0.0, None], [False, True], ["sigmoid", "atan"], ["m", "s"], [1, 8, 64]
    )
)


@pytest.mark.parametrize(("kind", "v_reset", "detach", "sg", "mode", "T"), CASES)
def test_matches_spikingjelly(kind, v_reset, detach, sg, mode, T) -> None:
    g = torch.Generator().manual_seed(
        zlib.crc32(repr((kind, v_reset, detach, sg, mode, T)).encode())
    )
    x = (torch.randn(T, BATCH, FEATURES, generator=g) * 2.0 + 1.0).requires_grad_()
    r1 = torch.randn(T, BATCH, FEATURES, generator=g)
    r2 = torch.randn(BATCH, FEATURES, generator=g)

    node = _sj_node(kind, v_reset, detach, sg, mode)
    s_ref, v_ref, vT_ref = _sj_run(node, x, mode)
    _loss(s_ref, vT_ref, r1, r2).backward()
    gx_ref = x.grad.clone()
    x.grad = None

    spec = _spec(kind, v_reset, detach, sg)
    params = {}
    if kind.startswith("plif"):
        params["w"] = node.w.detach().clone().requires_grad_()
    # 's' recomputes sigmoid(w) each step like SpikingJelly's single-step PLIF
    s, v, vT = _snncc_run(spec, params, x, per_step_k=mode == "s")
    _loss(s, vT, r1, r2).backward()

    assert torch.equal(s, s_ref), "spikes differ"
    assert torch.equal(v, v_ref), "membranes differ"
    assert s.sum() > 0, "degenerate case: no spikes"
    torch.testing.assert_close(x.grad, gx_ref, rtol=1e-5, atol=1e-6)
    if kind.startswith("plif"):
        torch.testing.assert_close(params["w"].grad, node.w.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T", [1, 8, 64])
def test_li_matches_spikingjelly_nonspiking_lif(T: int) -> None:
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, BATCH, FEATURES, generator=g).requires_grad_()
    r = torch.randn(T, BATCH, FEATURES, generator=g)
    ref = torch.stack(neuron.NonSpikingLIFNode(tau=3.0)(x))
    (ref * r).sum().backward()
    gx_ref = x.grad.clone()
    x.grad = None
    spec = NeuronSpec(
        model="li", charge="snncc_li", tau=3.0, v_reset=None, reset="none", output="membrane"
    )
    out, st = run_sequence(spec, {}, x)
    (out * r).sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(st["v"], ref[-1])
    torch.testing.assert_close(x.grad, gx_ref, rtol=1e-5, atol=1e-6)


def test_run_sequence_continues_from_state() -> None:
    spec = _spec("lif_di", 0.0, False, "sigmoid")
    x = torch.randn(10, 2, 5) * 2
    full, st_full = run_sequence(spec, {}, x)
    a, st = run_sequence(spec, {}, x[:4])
    b, st = run_sequence(spec, {}, x[4:], st)
    assert torch.equal(torch.cat([a, b]), full)
    assert torch.equal(st["v"], st_full["v"])


def test_strict_fire_and_membrane_output() -> None:
    spec = NeuronSpec(model="if", charge="sj_if", fire_cmp=">", output="membrane")
    x = torch.tensor([[1.0, 0.5, 2.0]])
    out, st = step(spec, {}, x, init_state(spec, (1, 3)))
    # h = x; '>' does not fire at exactly the threshold, so v stays 1.0 there
    assert torch.equal(out, torch.tensor([[1.0, 0.5, 0.0]]))
    assert torch.equal(st["v"], out)


def test_init_state_uses_v_init() -> None:
    spec = NeuronSpec(model="if", charge="sj_if", v_reset=-0.5, v_init=-0.5)
    st = init_state(spec, (2, 3))
    assert torch.equal(st["v"], torch.full((2, 3), -0.5))
    assert not st["v"].requires_grad


def test_unsupported_forms_raise() -> None:
    with pytest.raises(UnsupportedError, match="charge form 'nope'"):
        init_state(NeuronSpec(model="x", charge="nope"), (1,))
    with pytest.raises(UnsupportedError, match="fire_from"):
        init_state(NeuronSpec(model="if", charge="sj_if", fire_from="previous"), (1,))
    with pytest.raises(UnsupportedError, match="needs the param 'w'"):
        spec = NeuronSpec(model="plif", charge="sj_plif")
        step(spec, {}, torch.zeros(1), init_state(spec, (1,)))


# --------------------------------------------------------------------------- snnTorch / Norse forms

snntorch = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")

from norse.torch.functional.leaky_integrator import LIParameters  # noqa: E402
from norse.torch.functional.lif import LIFParameters  # noqa: E402
from norse.torch.functional.lif_box import LIFBoxParameters  # noqa: E402
from norse.torch.functional.reset import reset_subtract, reset_value  # noqa: E402

_MECH = {"subtract": "subtract", "zero": "hard", "none": "none"}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _snntorch_spec(charge: str, mech: str, rd: bool, roles, learnable=()) -> NeuronSpec:
    return NeuronSpec(
        model="leaky",
        charge=charge,
        v_reset=0.0,
        reset=_MECH[mech],
        fire_cmp=">",
        surrogate="atan",
        alpha=2.0,
        reset_delay=rd,
        param_roles=tuple(roles),
        learnable=tuple(learnable),
    )


def _rand(shape, seed: int, scale: float = 1.5, shift: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale + shift


@pytest.mark.parametrize("mech", ["subtract", "zero", "none"])
@pytest.mark.parametrize("rd", [True, False])
@pytest.mark.parametrize("gsf", [1.0, 0.7])
@pytest.mark.parametrize("T", [1, 8, 32])
def test_snntorch_leaky_form(mech: str, rd: bool, gsf: float, T: int) -> None:
    """Every step's spikes and membrane bit for bit; grads wrt x, beta, threshold, gsf."""
    beta = torch.tensor([0.8, 0.95, 1.3, -0.2, 0.5, 0.0, 1.0])  # clamped each step
    lif = snntorch.Leaky(
        beta=beta.clone(),
        reset_mechanism=mech,
        reset_delay=rd,
        graded_spikes_factor=gsf,
        learn_beta=True,
        learn_threshold=True,
        learn_graded_spikes_factor=True,
    )
    x = _rand((T, 3, 7), T).requires_grad_()
    r = _rand((T, 3, 7), 99, 1.0, 0.0)
    mem = lif.init_leaky()
    spk, mems = [], []
    for t in range(T):
        s, mem = lif(x[t], mem)
        spk.append(s)
        mems.append(mem)
    ref_s, ref_m = torch.stack(spk), torch.stack(mems)
    ((ref_s * r).sum() + (ref_m * r).sum()).backward()
    gx_ref = x.grad.clone()
    x.grad = None

    roles = ("beta", "threshold", "graded_spikes_factor")
    spec = _snntorch_spec("snntorch_leaky", mech, rd, roles, roles)
    p = {k: getattr(lif, k).detach().clone().requires_grad_() for k in roles}
    st = init_state(spec, (3, 7))
    spk, mems = [], []
    for t in range(T):
        s, st = step(spec, p, x[t], st)
        spk.append(s)
        mems.append(st["v"])
    s, m = torch.stack(spk), torch.stack(mems)
    ((s * r).sum() + (m * r).sum()).backward()
    assert torch.equal(s, ref_s) and torch.equal(m, ref_m)
    assert ref_s.sum() > 0
    _close(x.grad, gx_ref)
    for k in roles:
        _close(p[k].grad, getattr(lif, k).grad)


def test_snntorch_reset_delay_anomaly() -> None:
    """reset_delay=False with beta=1: (1,1.5),(0,1.5),... as snnTorch (the correction quirk)."""
    spec = _snntorch_spec("snntorch_leaky", "subtract", False, ())
    spec = spec.replace(extra={"beta": 1.0})
    st = init_state(spec, (1,))
    got = []
    for v in (2.5, 0.0, 0.0, 0.0):
        s, st = step(spec, {}, torch.tensor([v]), st)
        got.append((float(s), float(st["v"])))
    assert got == [(1.0, 1.5), (0.0, 1.5), (0.0, 1.5), (0.0, 1.5)]


@pytest.mark.parametrize("mech", ["subtract", "zero", "none"])
@pytest.mark.parametrize("rd", [True, False])
def test_snntorch_synaptic_form(mech: str, rd: bool) -> None:
    T = 16
    lif = snntorch.Synaptic(alpha=0.8, beta=0.9, reset_mechanism=mech, reset_delay=rd)
    lif.alpha = torch.nn.Parameter(lif.alpha.clone())
    x = _rand((T, 2, 6), 5).requires_grad_()
    r = _rand((T, 2, 6), 6, 1.0, 0.0)
    syn, mem = lif.init_synaptic()
    out = []
    for t in range(T):
        s, syn, mem = lif(x[t], syn, mem)
        out.append((s, syn, mem))
    ref = [torch.stack(v) for v in zip(*out)]
    sum((v * r).sum() for v in ref).backward()
    gx_ref = x.grad.clone()
    x.grad = None

    roles = ("alpha", "beta", "threshold", "graded_spikes_factor")
    spec = _snntorch_spec("snntorch_synaptic", mech, rd, roles, ("alpha",))
    p = {k: getattr(lif, k).detach().clone() for k in roles}
    p["alpha"].requires_grad_()
    st = init_state(spec, (2, 6))
    out = []
    for t in range(T):
        s, st = step(spec, p, x[t], st)
        out.append((s, st["i"], st["v"]))
    got = [torch.stack(v) for v in zip(*out)]
    sum((v * r).sum() for v in got).backward()
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    assert ref[0].sum() > 0
    _close(x.grad, gx_ref)
    _close(p["alpha"].grad, lif.alpha.grad)
    out_i, _ = step(spec.replace(output="current"), p, x[0].detach(), init_state(spec, (2, 6)))
    assert torch.equal(out_i, ref[1][0])


@pytest.mark.parametrize("kind", ["linear", "V"])
@pytest.mark.parametrize("mech", ["subtract", "zero", "none"])
@pytest.mark.parametrize("rd", [True, False])
def test_snntorch_rleaky_form(kind: str, mech: str, rd: bool) -> None:
    """RLeaky: the rec port is recurrent(previous spike) (Linear), or V inside the form."""
    T, n = 12, 5
    if kind == "linear":
        lif = snntorch.RLeaky(beta=0.9, linear_features=n, reset_mechanism=mech, reset_delay=rd)
    else:
        lif = snntorch.RLeaky(
            beta=0.9, all_to_all=False, V=torch.rand(n) * 0.5, reset_mechanism=mech, reset_delay=rd
        )
    x = _rand((T, 2, n), 11)
    spk, mem = lif.init_rleaky()
    ref = []
    for t in range(T):
        spk, mem = lif(x[t], spk, mem)
        ref.append((spk, mem))
    base = ("beta", "threshold", "graded_spikes_factor")
    if kind == "linear":
        spec = _snntorch_spec("snntorch_rleaky", mech, rd, base)
    else:
        spec = _snntorch_spec("snntorch_rleaky_v", mech, rd, (*base, "V"))
    p = {k: getattr(lif, k) for k in spec.param_roles}
    st = init_state(spec, (2, n))
    prev = torch.zeros(2, n)
    with torch.no_grad():
        for t in range(T):
            ports = (lif.recurrent(prev),) if kind == "linear" else ()
            s, st = step(spec, p, x[t], st, *ports)
            prev = s
            assert torch.equal(s, ref[t][0]) and torch.equal(st["v"], ref[t][1])
    assert sum(float(s.detach().sum()) for s, _ in ref) > 0


NORSE_P = LIFParameters(
    tau_syn_inv=torch.as_tensor(150.0),
    tau_mem_inv=torch.as_tensor(90.0),
    v_leak=torch.as_tensor(0.1),
    v_th=torch.as_tensor(0.8),
    v_reset=torch.as_tensor(-0.2),
)


def _norse_spec(charge: str, m, **kw) -> NeuronSpec:
    extra = {
        "dt": m.dt,
        "v_leak": float(m.p.v_leak),
        "dt_tau_mem_inv": float(m.dt * m.p.tau_mem_inv),
    }
    if hasattr(m.p, "tau_syn_inv"):
        extra["neg_dt_tau_syn_inv"] = float(-m.dt * m.p.tau_syn_inv)
    base = {
        "model": charge,
        "charge": charge,
        "fire_cmp": ">",
        "v_init": float(m.p.v_leak),
        "extra": extra,
    }
    if charge != "norse_li":
        base.update(v_threshold=float(m.p.v_th), v_reset=float(m.p.v_reset))
        base.update(surrogate="superspike", alpha=100.0)
    else:
        base.update(reset="none", v_reset=None, output="membrane")
    base.update(kw)
    return NeuronSpec(**base)


def _norse_run(cell, x: torch.Tensor):
    s, out, vs, is_ = None, [], [], []
    for t in range(len(x)):
        o, s = cell(x[t], s)
        out.append(o)
        vs.append(s.v)
        is_.append(getattr(s, "i", s.v))
    return torch.stack(out), torch.stack(vs), torch.stack(is_)


@pytest.mark.parametrize("T", [1, 8, 32])
@pytest.mark.parametrize("dt", [0.001, 0.0007])
def test_norse_lif_cell_form(T: int, dt: float) -> None:
    cell = norse.LIFCell(NORSE_P, dt=dt)
    x = _rand((T, 2, 6), T, 40.0, 30.0).requires_grad_()
    r = _rand((T, 2, 6), 7, 1.0, 0.0)
    z_ref, v_ref, i_ref = _norse_run(cell, x)
    ((z_ref * r).sum() + (v_ref * r).sum()).backward()
    gx_ref = x.grad.clone()
    x.grad = None
    spec = _norse_spec("norse_lif", cell)
    st = init_state(spec, (2, 6))
    zs, vs, is_ = [], [], []
    for t in range(T):
        z, st = step(spec, {}, x[t], st)
        zs.append(z)
        vs.append(st["v"])
        is_.append(st["i"])
    z, v, i = torch.stack(zs), torch.stack(vs), torch.stack(is_)
    ((z * r).sum() + (v * r).sum()).backward()
    assert torch.equal(z, z_ref) and torch.equal(v, v_ref) and torch.equal(i, i_ref)
    assert z_ref.sum() > 0
    _close(x.grad, gx_ref)


@pytest.mark.parametrize("reset", [reset_value, reset_subtract])
def test_norse_lifbox_form(reset) -> None:
    p = LIFBoxParameters(
        tau_mem_inv=torch.as_tensor(500.0),
        v_leak=torch.as_tensor(0.05),
        v_th=torch.as_tensor(0.3),
        v_reset=torch.as_tensor(-0.1),
        reset_method=reset,
    )
    cell = norse.LIFBoxCell(p, dt=0.0013)
    x = _rand((16, 2, 6), 3, 1.0, 0.4)
    z_ref, v_ref, _ = _norse_run(cell, x)
    spec = _norse_spec(
        "norse_lifbox", cell, reset="subtract" if reset is reset_subtract else "hard"
    )
    st = init_state(spec, (2, 6))
    for t in range(16):
        z, st = step(spec, {}, x[t], st)
        assert torch.equal(z, z_ref[t]) and torch.equal(st["v"], v_ref[t])
    assert z_ref.sum() > 0


def test_norse_li_form_and_learnable_tau() -> None:
    """LICell (output = the new v); tau_mem_inv as a learnable param gets Norse's gradient."""
    tau = torch.nn.Parameter(torch.tensor(120.0))
    cell = norse.LICell(LIParameters(tau_mem_inv=tau, v_leak=torch.tensor(0.2)), dt=0.002)
    x = _rand((10, 2, 4), 8, 5.0, 1.0)
    v_ref, _, i_ref = _norse_run(cell, x)
    v_ref.sum().backward()
    spec = _norse_spec("norse_li", cell, param_roles=("tau_mem_inv",), learnable=("tau_mem_inv",))
    tau2 = tau.detach().clone().requires_grad_()
    st = init_state(spec, (2, 4))
    vs = []
    for t in range(10):
        v, st = step(spec, {"tau_mem_inv": tau2}, x[t], st)
        vs.append(v)
        assert torch.equal(st["i"], i_ref[t])
    torch.stack(vs).sum().backward()
    assert torch.equal(torch.stack(vs), v_ref)
    _close(tau2.grad, tau.grad)


def test_norse_lif_recurrent_form() -> None:
    """lif_step: i += W_in x + W_rec z[t-1]; the reset uses z detached."""
    cell = norse.LIFRecurrentCell(3, 5, NORSE_P)
    x = _rand((12, 2, 3), 4, 30.0, 20.0)
    z_ref, v_ref, i_ref = _norse_run(cell, x)
    spec = _norse_spec("norse_lif_recurrent", cell, detach_reset=True)
    st = init_state(spec, (2, 5))
    z = torch.zeros(2, 5)
    with torch.no_grad():
        for t in range(12):
            xin = torch.nn.functional.linear(x[t], cell.input_weights)
            rec = torch.nn.functional.linear(z, cell.recurrent_weights)
            z, st = step(spec, {}, xin, st, rec)
            assert torch.equal(z, z_ref[t]) and torch.equal(st["v"], v_ref[t])
            assert torch.equal(st["i"], i_ref[t])
    assert z_ref.sum() > 0


def test_new_forms_refuse_missing_constants_and_ports() -> None:
    with pytest.raises(UnsupportedError, match="dt_tau_mem_inv"):
        init_state(
            NeuronSpec(model="n", charge="norse_lif", extra={"dt": 1e-3, "v_leak": 0.0}), (1,)
        )
    spec = _snntorch_spec("snntorch_rleaky", "subtract", True, ())
    with pytest.raises(UnsupportedError, match="takes 1 input"):
        step(spec, {}, torch.zeros(1), {"v": torch.zeros(1)})
    spec = _snntorch_spec("snntorch_leaky", "subtract", True, ())
    with pytest.raises(UnsupportedError, match="'beta'"):
        step(spec, {}, torch.zeros(1), init_state(spec, (1,)))


# --------------------------------------------------------------------------- the threshold
def test_the_frameworks_at_exactly_the_threshold() -> None:
    """What each framework does with a membrane exactly on its threshold, and the torch maths
    doing the same: SpikingJelly fires (``h - th >= 0``); snnTorch and Norse do not
    (``> 0``), and snnTorch's reset from that membrane is 0. Binary-exact values, so the
    membranes land exactly: x = [on, 0, half, half] with on/half = 1/0.5 times the step's
    gain."""

    def seq(on: float) -> torch.Tensor:
        return torch.tensor([on, 0.0, on / 2, on / 2]).reshape(4, 1, 1)

    sj_cases = [
        (neuron.IFNode(v_threshold=1.0), NeuronSpec(model="if", charge="sj_if"), 1.0),
        (
            neuron.LIFNode(tau=2.0),
            NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0),
            2.0,
        ),
    ]
    for node, spec, on in sj_cases:
        functional.set_step_mode(node, "m")
        functional.reset_net(node)
        x = seq(on)
        with torch.no_grad():
            ref = node(x)
        got, _ = run_sequence(spec, {}, x)
        assert torch.equal(got, ref) and ref[0].item() == 1.0, spec.charge

    for mech, rd in itertools.product(("subtract", "zero"), (True, False)):
        lif = snntorch.Leaky(beta=0.5, threshold=1.0, reset_mechanism=mech, reset_delay=rd)
        spec = _snntorch_spec("snntorch_leaky", mech, rd, ()).replace(extra={"beta": 0.5})
        x, mem, st = seq(1.0), lif.init_leaky(), init_state(spec, (1, 1))
        for t in range(4):
            with torch.no_grad():
                s_ref, mem = lif(x[t], mem)
                s, st = step(spec, {}, x[t], st)
            assert torch.equal(s, s_ref) and torch.equal(st["v"], mem), (mech, rd, t)
            if t == 0:
                assert s_ref.item() == 0.0 and mem.item() == 1.0  # on the threshold: no spike

    p = LIFBoxParameters(
        tau_mem_inv=torch.as_tensor(500.0),
        v_leak=torch.as_tensor(0.0),
        v_th=torch.as_tensor(1.0),
        v_reset=torch.as_tensor(0.0),
    )
    cell = norse.LIFBoxCell(p, dt=0.001)  # dt * tau_mem_inv = 0.5
    x = seq(2.0)
    z_ref, v_ref, _ = _norse_run(cell, x)
    spec = _norse_spec("norse_lifbox", cell)
    z, st = run_sequence(spec, {}, x)
    assert torch.equal(z, z_ref) and torch.equal(st["v"], v_ref[-1])
    assert z_ref[0].item() == 0.0 and v_ref[0].item() == 1.0
