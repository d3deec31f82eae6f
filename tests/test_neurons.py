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
from snncc.ir.neuron import NeuronSpec
from spikingjelly.activation_based import functional, neuron, surrogate

from snncc.errors import UnsupportedError
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
