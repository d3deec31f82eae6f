"""Norse 1.1's LIFAdEx, LIFEx, LIFRefrac, Izhikevich, IAF, LSNN, LILinearCell and LIBoxCell
against Norse itself.

Acceptance (issue 12 item 4), on the ways Norse users drive them (a ``SequentialState`` of
cells called once per step with the state threaded, a ``SequentialState`` of sequence
modules fed ``[T, B, ...]``, a ``forward`` holding the time loop):

- reference backend: every output bit for bit with Norse eager on the CPU (float32);
- cpu backend: bit for bit too, except LIFAdEx and LIFEx (below); gradients of one scalar loss wrt
  the input, the weights and every learnable Norse parameter (``nn.Parameter`` fields of
  ``p``: time constants, thresholds, adaptation, Izhikevich's ``a``) within 1e-4 relative
  on both backends (``assert_close(rtol=1e-4, atol=64 ulps of the largest value)``); the
  recurrent weights' diagonal is masked as Norse's autapse hook masks it;
- jax: spikes within 1e-4 mismatch, continuous values within 1e-5, gradients within 1e-4
  relative L2 (tests/test_jax_snntorch_norse.py's ``compare``);
- ONNX: the exported model runs in onnxruntime at other T and B than traced and equals the
  reference backend bit for bit on dyadic weights and inputs (every node probed);
- the kernels compile with nvcc for sm_80 / sm_90: tests/test_kernels.py's matrix.

LIFAdEx and LIFEx call ``torch.exp`` in their forward. torch's CPU exp (MKL VML's ``vsExp`` in this
build) is not correctly rounded; the cpu kernels' exp is (``snncc_expf``), so the two differ
in the last bit on about 1% of arguments. The cpu backend's LIFAdEx and LIFEx are therefore
tested with
a stated tolerance: spikes may differ in at most ``ADEX_SPIKE_TOL`` = 1e-4 of the values
(0 measured) and membranes / currents within ``ADEX_RTOL`` = 1e-5 relative + 1e-6
absolute; :func:`test_adex_cpu_exp_mismatch_is_rare_and_tiny` measures it on a large layer
(printed with ``pytest -s``: 0.03% of the membrane values differ, by at most 2.4e-7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import snncc
from snncc.errors import UnsupportedError
from snncc.ir.neuron import NeuronSpec

norse = pytest.importorskip("norse.torch")
from measured import Measured, grad_rel  # noqa: E402
from norse.torch.functional import izhikevich as izf  # noqa: E402
from norse.torch.functional.iaf import IAFParameters  # noqa: E402
from norse.torch.functional.leaky_integrator import LIParameters  # noqa: E402
from norse.torch.functional.leaky_integrator_box import LIBoxParameters  # noqa: E402
from norse.torch.functional.lif import LIFParameters  # noqa: E402
from norse.torch.functional.lif_adex import LIFAdExParameters  # noqa: E402
from norse.torch.functional.lif_ex import LIFExParameters  # noqa: E402
from norse.torch.functional.lif_refrac import LIFRefracParameters  # noqa: E402
from norse.torch.functional.lsnn import LSNNParameters  # noqa: E402
from peer_models import norse_per_step, randomise  # noqa: E402
from tolerances import grad_atol  # noqa: E402

B = 3
BACKENDS = ["reference", "cpu"]
ADEX_SPIKE_TOL = 1e-4
ADEX_RTOL = 1e-5
#: the worst LIFAdEx cpu-vs-Norse values measured (printed with -s, for the report)
MEASURED: dict[str, float] = {}
#: per family and backend, the figures the README's Sources table quotes (printed with -s)
FIGURES = Measured("Norse families vs Norse")


@pytest.fixture(scope="module", autouse=True)
def report_measured():
    yield
    print(f"\nLIFAdEx cpu backend vs Norse (exp not torch's), measured: {MEASURED}")
    print(FIGURES.report())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call(model: nn.Module, x: torch.Tensor):
    return model(x)


def _as_tuple(y) -> tuple[torch.Tensor, ...]:
    return tuple(y) if isinstance(y, tuple) else (y,)


def _is_spikes(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def check(
    model: nn.Module,
    x: torch.Tensor,
    run: Callable,
    backend: str,
    cache_dir: str,
    learnable: tuple[str, ...] = (),
    masks: dict[str, torch.Tensor] | None = None,
    exact: bool = True,
    probe: Callable | None = None,
) -> Any:
    """Norse eager (forward, backward), then the compiled model: outputs bit for bit (or,
    ``exact=False``, within the LIFAdEx tolerances), gradients within 1e-4 relative.
    ``probe(model, x)``: a hidden layer's spikes in Norse's run, when no output is spikes
    (some spikes but not all must be checked somewhere)."""
    xr = x.clone().requires_grad_()
    ref = _as_tuple(run(model, xr))
    gen = _gen(1)
    weights = [torch.randn(r.shape, generator=gen) for r in ref]
    model.zero_grad()
    sum((r * w).sum() for r, w in zip(ref, weights)).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    options = {"cache_dir": cache_dir} if backend == "cpu" else {}
    cm = snncc.compile(model, x, backend=backend, **options)
    if backend == "cpu":
        kernels = cm.program.kernels.values()
        assert kernels and all(k.info.family == "expr" for k in kernels)
    xs = x.clone().requires_grad_()
    got = _as_tuple(cm(xs))
    assert len(got) == len(ref)
    spiking = [r.detach() for r in ref if _is_spikes(r.detach())]
    if probe is not None:
        spiking.append(probe(model, x))
    assert spiking and any(0 < int(r.sum()) < r.numel() for r in spiking), "degenerate spikes"
    for i, (g, r) in enumerate(zip(got, ref)):
        assert g.shape == r.shape
        g, r = g.detach(), r.detach()
        if exact:
            assert torch.equal(g, r), f"output {i}: {int((g != r).sum())} of {r.numel()} differ"
        elif _is_spikes(r):
            frac = float((g != r).float().mean())
            MEASURED["spike_mismatch"] = max(MEASURED.get("spike_mismatch", 0.0), frac)
            assert frac <= ADEX_SPIKE_TOL, f"output {i}: {frac:.2e} of the spikes differ"
        else:
            err = float((g - r).abs().max())
            MEASURED["membrane_abs"] = max(MEASURED.get("membrane_abs", 0.0), err)
            torch.testing.assert_close(g, r, rtol=ADEX_RTOL, atol=1e-6, msg=f"output {i}")
    family = ", ".join(sorted(_charges(cm)))
    FIGURES.note_outputs(family, backend, got, ref)
    sum((g * w).sum() for g, w in zip(got, weights)).backward()
    FIGURES.note(family, backend, "grad rel (L2)", grad_rel(xs.grad, xr.grad))
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=grad_atol(xr.grad))
    assert want, "no parameter gradient to compare"
    for name, w in want.items():
        g = cm.program.params[name].grad
        assert g is not None, f"no gradient for {name}"
        if masks and name in masks:  # Norse's autapse hook zeroes the diagonal's gradient
            g = g * masks[name]
        FIGURES.note(family, backend, "grad rel (L2)", grad_rel(g, w))
        torch.testing.assert_close(g, w, rtol=1e-4, atol=grad_atol(w), msg=name)
    for name in learnable:
        assert name in want and float(want[name].abs().sum()) > 0, f"{name}: nothing tested"
    return cm


def _hidden_spikes(layer: int) -> Callable:
    """A probe: the spikes of ``seq[layer]`` (a cell) in Norse's own per-step run."""

    def probe(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seq, zs, state = model.seq, [], [None] * len(model.seq)
        with torch.no_grad():
            for xt in x:
                h = xt
                for i, m in enumerate(list(seq)[: layer + 1]):
                    if seq.stateful_layers[i]:
                        h, state[i] = m(h, state[i])
                    else:
                        h = m(h)
                zs.append(h)
        return torch.stack(zs)

    return probe


def _charges(cm) -> set[str]:
    g = cm.ir
    return {NeuronSpec.from_dict(g.attrs(n)["neuron"]).charge for n in g.iter_ops("neuron")}


# --------------------------------------------------------------------------- LIFAdEx


class ReadoutNet(nn.Module):
    """Linear -> a cell whose listed ``p`` fields are learnable (Parameters registered here
    under the field's name; ``v_leak`` 0.05, ``v_reset`` -0.1) -> an LILinearCell readout
    (its own input weights)."""

    def __init__(self, cell: type, params: type, **learnable: torch.Tensor) -> None:
        super().__init__()
        for name, value in learnable.items():
            self.register_parameter(name, nn.Parameter(value))
        p = params(
            **{name: getattr(self, name) for name in learnable},
            v_leak=torch.tensor(0.05),
            v_reset=torch.tensor(-0.1),
        )
        self.seq = norse.SequentialState(
            nn.Linear(6, 8),
            cell(p),
            norse.LILinearCell(8, 3, LIParameters(v_leak=torch.tensor(0.0))),
        )

    def forward(self, x: torch.Tensor, state=None):
        return self.seq(x, state)


def AdExLearnable() -> nn.Module:
    """LIFAdExCell with learnable adaptation, time constant, per-neuron threshold and delta_T."""
    return ReadoutNet(
        norse.LIFAdExCell,
        LIFAdExParameters,
        tau_ada_inv=torch.tensor(40.0),
        adaptation_current=torch.tensor(2.0),
        adaptation_spike=torch.tensor(0.3),
        delta_T=torch.tensor(0.4),
        v_th=torch.linspace(0.4, 0.7, 8),
    )


class AdExLoop(nn.Module):
    """A forward holding the loop; the membrane (state.v) and the current (state.i) used."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.cell = norse.LIFAdExCell(LIFAdExParameters(v_th=torch.tensor(0.5)), dt=0.002)

    def forward(self, x: torch.Tensor):
        s = None
        zs, vs, cs = [], [], []
        for xt in x:
            z, s = self.cell(self.fc(xt), s)
            zs.append(z)
            vs.append(s.v)
            cs.append(s.i)
        return torch.stack(zs), torch.stack(vs), torch.stack(cs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["LIFAdExCell", "LIFExCell"])
def test_exponential_cells_learnable(cell: str, backend: str, cache_dir: str) -> None:
    """Every learnable field of ReadoutNet's cell gets Norse's gradient (the exp forms keep
    the LIFAdEx tolerance on the cpu backend)."""
    make, charge = (AdExLearnable, "norse_lif_adex") if cell == "LIFAdExCell" else (
        LIFExLearnable, "norse_lif_ex")  # fmt: skip
    model = randomise(make(), 3, gain=12.0)
    x = torch.randn(12, B, 6, generator=_gen(3)) + 0.5
    learnable = (*(n for n, _ in model.named_parameters() if "." not in n), "seq.2.input_weights")
    assert len(learnable) >= 4
    cm = check(
        model, x, norse_per_step, backend, cache_dir, learnable, exact=backend != "cpu",
        probe=_hidden_spikes(1),
    )  # fmt: skip
    assert _charges(cm) == {charge, "norse_li"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_adex_loop_state_fields(backend: str, cache_dir: str) -> None:
    model = randomise(AdExLoop(), 4, gain=12.0)
    x = torch.randn(12, B, 6, generator=_gen(4)) + 0.5
    check(model, x, _call, backend, cache_dir, exact=backend != "cpu")


class SequenceThenLinear(nn.Module):
    """Linear -> a Norse sequence module over [T, B, ...] -> Linear; returns the spikes too."""

    def __init__(self, neuron: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.neuron = neuron
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor):
        z, _ = self.neuron(self.fc1(x))
        return z, self.fc2(z)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adex_sequence_module(backend: str, cache_dir: str) -> None:
    lif = norse.LIFAdEx(LIFAdExParameters(v_th=torch.tensor(0.4)))
    model = randomise(SequenceThenLinear(lif), 5, gain=12.0)
    x = torch.randn(12, B, 6, generator=_gen(5)) + 0.5
    check(model, x, _call, backend, cache_dir, exact=backend != "cpu")


def test_adex_cpu_exp_mismatch_is_rare_and_tiny(cache_dir: str) -> None:
    """The cpu kernel (its exp correctly rounded) against the torch lowering (torch's exp, as
    Norse) on 4000 neurons x 60 steps: spikes within ADEX_SPIKE_TOL, under 1% of the
    membrane values differing, each within ADEX_RTOL + 1e-6; measured values printed with -s."""
    from snncc import neurons
    from snncc.backends.cpu.forms import derive_params, run_form
    from snncc.backends.cpu.neuron import NeuronKernel

    p = LIFAdExParameters(v_th=torch.tensor(0.5))
    extra = {
        "dt": 1e-3,
        "v_leak": 0.0,
        "dt_tau_mem_inv": float(1e-3 * p.tau_mem_inv),
        "neg_dt_tau_syn_inv": float(-1e-3 * p.tau_syn_inv),
        "dt_tau_ada_inv": float(1e-3 * p.tau_ada_inv),
        "delta_T": 0.5,
        "adaptation_current": 4.0,
        "adaptation_spike": 0.02,
    }
    spec = NeuronSpec(
        model="norse_lif_adex",
        charge="norse_lif_adex",
        v_threshold=0.5,
        v_reset=0.0,
        fire_cmp=">",
        surrogate="superspike",
        alpha=100.0,
        extra=extra,
    )
    x = torch.randn(60, 4000, generator=_gen(6)) * 4 + 1.5
    state = {v: torch.zeros(4000) for v in ("v", "i", "w")}
    for s in (spec, spec.replace(output="membrane")):
        kernel = NeuronKernel(s, (), (), {}, cache_dir)
        ref, _ = neurons.run_sequence(s, {}, x, dict(state))
        out, _ = run_form(kernel, x, None, (), dict(state), derive_params(s, kernel.info, {}))
        frac = float((out != ref).float().mean())
        if s.spiking:
            MEASURED["large_spike_mismatch"] = frac
            FIGURES.note("norse_lif_adex", "cpu, 60 steps x 4000", "spikes differing", frac)
            assert 0.01 < float(ref.mean()) < 0.99
            assert frac <= ADEX_SPIKE_TOL
        else:
            MEASURED["large_membrane_values_differing"] = frac
            MEASURED["large_membrane_abs"] = float((out - ref).abs().max())
            FIGURES.note_outputs("norse_lif_adex", "cpu, 60 steps x 4000", [out], [ref])
            assert frac < 0.01
            torch.testing.assert_close(out, ref, rtol=ADEX_RTOL, atol=1e-6)


# --------------------------------------------------------------------------- LIFEx


def LIFExLearnable() -> nn.Module:
    """LIFExCell with a learnable sharpness and membrane time constant and a per-neuron
    learnable threshold."""
    return ReadoutNet(
        norse.LIFExCell,
        LIFExParameters,
        delta_T=torch.tensor(0.4),
        tau_mem_inv=torch.tensor(80.0),
        v_th=torch.linspace(0.4, 0.7, 8),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_ex_sequence_module(backend: str, cache_dir: str) -> None:
    lif = norse.LIFEx(LIFExParameters(v_th=torch.tensor(0.4), v_leak=torch.tensor(0.1)))
    model = randomise(SequenceThenLinear(lif), 5, gain=12.0)
    x = torch.randn(12, B, 6, generator=_gen(5)) + 0.5
    cm = check(model, x, _call, backend, cache_dir, exact=backend != "cpu")
    assert _charges(cm) == {"norse_lif_ex"}


class RecurrentLoop(nn.Module):
    """A recurrent cell in a hand-written loop; its spikes, membranes and currents."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor):
        s = None
        zs, vs, cs = [], [], []
        for xt in x:
            z, s = self.cell(xt, s)
            zs.append(z)
            vs.append(s.v)
            cs.append(s.i)
        return torch.stack(zs), torch.stack(vs), torch.stack(cs)


EXPONENTIAL_RECURRENT: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    "LIFExRecurrentCell": (
        lambda: RecurrentLoop(
            norse.LIFExRecurrentCell(6, 8, LIFExParameters(v_th=torch.tensor(0.5)))
        ),
        "cell",
        "norse_lif_ex_recurrent",
    ),
    "LIFAdExRecurrentCell": (
        lambda: RecurrentLoop(
            norse.LIFAdExRecurrentCell(
                6, 8, LIFAdExParameters(v_th=torch.tensor(0.5), tau_ada_inv=torch.tensor(200.0))
            )
        ),
        "cell",
        "norse_lif_adex_recurrent",
    ),
    "LIFExRecurrent": (
        lambda: SequenceThenLinear(
            norse.LIFExRecurrent(8, 8, LIFExParameters(v_th=torch.tensor(0.4)))
        ),
        "neuron",
        "norse_lif_ex_recurrent",
    ),
    "LIFAdExRecurrent": (
        lambda: SequenceThenLinear(
            norse.LIFAdExRecurrent(
                8, 8, LIFAdExParameters(v_th=torch.tensor(0.4), adaptation_spike=torch.tensor(0.2))
            )
        ),
        "neuron",
        "norse_lif_adex_recurrent",
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(EXPONENTIAL_RECURRENT))
def test_exponential_recurrent(name: str, backend: str, cache_dir: str) -> None:
    """The recurrent LIFEx / LIFAdEx cells in a loop and their sequence layers: the recurrent
    product one step late, no detach in the reset (Norse's lif_ex_step / lif_adex_step)."""
    build, where, charge = EXPONENTIAL_RECURRENT[name]
    model = randomise(build(), 17, gain=12.0)
    x = torch.randn(12, B, 6, generator=_gen(17)) + 0.5
    w_rec = f"{where}.recurrent_weights"
    masks = {w_rec: torch.ones(8, 8) - torch.eye(8)}
    cm = check(model, x, _call, backend, cache_dir, (w_rec,), masks, exact=backend != "cpu")
    assert _charges(cm) == {charge}
    assert "recurrent" in [grp["kind"] for grp in cm.ir.meta["groups"]]


# --------------------------------------------------------------------------- LIFRefrac


def _refrac_p(v_th: Any = 0.4, rho_reset: Any = 3.0, **lif: Any) -> LIFRefracParameters:
    v_th = v_th if isinstance(v_th, torch.Tensor) else torch.tensor(v_th)
    rho = rho_reset if isinstance(rho_reset, torch.Tensor) else torch.tensor(rho_reset)
    return LIFRefracParameters(LIFParameters(v_th=v_th, **lif), rho_reset=rho)


class RefracLearnable(nn.Module):
    """LIFRefracCell with a per-neuron learnable threshold, a learnable refractory count and
    membrane time constant, in a SequentialState."""

    def __init__(self) -> None:
        super().__init__()
        self.v_th = nn.Parameter(torch.linspace(0.3, 0.6, 8))
        self.rho_reset = nn.Parameter(torch.tensor(3.0))
        self.tau_mem_inv = nn.Parameter(torch.tensor(150.0))
        p = _refrac_p(
            self.v_th, self.rho_reset, tau_mem_inv=self.tau_mem_inv,
            v_leak=torch.tensor(0.05), v_reset=torch.tensor(-0.1),
        )  # fmt: skip
        self.seq = norse.SequentialState(nn.Linear(6, 8), norse.LIFRefracCell(p), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor, state=None):
        return self.seq(x, state)


class RefracLoop(nn.Module):
    """A refractory cell in a hand-written loop reading Norse's nested state (state.lif.v,
    state.lif.i); recurrent cells take the input directly."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Identity() if hasattr(cell, "recurrent_weights") else nn.Linear(6, 8)
        self.cell = cell

    def forward(self, x: torch.Tensor):
        s = None
        zs, vs, cs = [], [], []
        for xt in x:
            z, s = self.cell(self.fc(xt), s)
            zs.append(z)
            vs.append(s.lif.v)
            cs.append(s.lif.i)
        return torch.stack(zs), torch.stack(vs), torch.stack(cs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_refrac_cells_learnable(backend: str, cache_dir: str) -> None:
    model = randomise(RefracLearnable(), 18, gain=12.0)
    x = torch.randn(16, B, 6, generator=_gen(18)) + 0.5
    learnable = ("v_th", "rho_reset", "tau_mem_inv")
    cm = check(model, x, norse_per_step, backend, cache_dir, learnable, probe=_hidden_spikes(1))
    assert _charges(cm) == {"norse_lif_refrac"}


REFRACTORY: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "LIFRefracCell": (lambda: RefracLoop(norse.LIFRefracCell(_refrac_p())), "norse_lif_refrac"),
    "LIFRefracRecurrentCell": (
        lambda: RefracLoop(norse.LIFRefracRecurrentCell(6, 8, _refrac_p())),
        "norse_lif_refrac_recurrent",
    ),
    "LIFRefracRecurrent": (
        lambda: SequenceThenLinear(norse.LIFRefracRecurrent(8, 8, _refrac_p(rho_reset=2.0))),
        "norse_lif_refrac_recurrent",
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(REFRACTORY))
def test_lif_refrac(name: str, backend: str, cache_dir: str) -> None:
    """The refractory cells in a loop (Norse's nested state read) and the recurrent layer,
    bit for bit; and the refractory period matters here: the same weights as a LIFCell
    (LIFRecurrentCell) would spike elsewhere."""
    build, charge = REFRACTORY[name]
    model = randomise(build(), 19, gain=12.0)
    x = torch.randn(16, B, 6, generator=_gen(19)) + 0.5
    recurrent = "Recurrent" in name
    where = "neuron" if name == "LIFRefracRecurrent" else "cell"
    masks = {f"{where}.recurrent_weights": torch.ones(8, 8) - torch.eye(8)} if recurrent else None
    cm = check(model, x, _call, backend, cache_dir, (), masks)
    assert _charges(cm) == {charge}
    cell = getattr(model, where)
    plain = (norse.LIFRecurrentCell(6 if where == "cell" else 8, 8, cell.p.lif) if recurrent
             else norse.LIFCell(cell.p.lif))  # fmt: skip
    plain.load_state_dict(cell.state_dict())
    with torch.no_grad():
        if where == "neuron":
            model.neuron = plain
            z_plain = model(x)[0]
        else:
            s, zs = None, []
            for xt in x:
                z, s = plain(model.fc(xt), s)
                zs.append(z)
            z_plain = torch.stack(zs)
        assert not torch.equal(z_plain, cm(x)[0]), "no neuron was ever refractory"


# --------------------------------------------------------------------------- LSNN


class LSNNLearnable(nn.Module):
    """LSNNCell with a learnable threshold (also the adaptive threshold's start), increment
    and adaptation time constant; an LICell readout."""

    def __init__(self) -> None:
        super().__init__()
        self.v_th = nn.Parameter(torch.tensor(0.5))
        self.beta = nn.Parameter(torch.tensor(0.3))
        self.tau_adapt_inv = nn.Parameter(torch.tensor(50.0))
        p = LSNNParameters(
            v_th=self.v_th,
            beta=self.beta,
            tau_adapt_inv=self.tau_adapt_inv,
            v_leak=torch.tensor(0.02),
            v_reset=torch.tensor(-0.05),
        )
        self.seq = norse.SequentialState(nn.Linear(6, 8), norse.LSNNCell(p), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor, state=None):
        return self.seq(x, state)


class LSNNRecurrentLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = norse.LSNNRecurrentCell(
            6, 8, LSNNParameters(v_th=torch.tensor(0.4), tau_adapt_inv=torch.tensor(80.0))
        )
        self.out = norse.LILinearCell(8, 3)

    def forward(self, x: torch.Tensor):
        s = so = None
        zs, vs = [], []
        for xt in x:
            z, s = self.cell(xt, s)
            v, so = self.out(z, so)
            zs.append(z)
            vs.append(v)
        return torch.stack(zs), torch.stack(vs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lsnn_cells_learnable(backend: str, cache_dir: str) -> None:
    model = randomise(LSNNLearnable(), 7, gain=20.0)
    x = torch.randn(14, B, 6, generator=_gen(7)) + 0.5
    learnable = ("v_th", "beta", "tau_adapt_inv")
    cm = check(model, x, norse_per_step, backend, cache_dir, learnable, probe=_hidden_spikes(1))
    assert _charges(cm) == {"norse_lsnn"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_lsnn_recurrent_cell(backend: str, cache_dir: str) -> None:
    model = randomise(LSNNRecurrentLoop(), 8, gain=20.0)
    x = torch.randn(14, B, 6, generator=_gen(8)) + 0.5
    masks = {"cell.recurrent_weights": torch.ones(8, 8) - torch.eye(8)}
    cm = check(model, x, _call, backend, cache_dir, ("cell.recurrent_weights",), masks)
    assert _charges(cm) == {"norse_lsnn_recurrent", "norse_li"}
    assert "recurrent" in [grp["kind"] for grp in cm.ir.meta["groups"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lsnn_sequence_module_and_streaming(backend: str, cache_dir: str) -> None:
    lsnn = norse.LSNN(LSNNParameters(v_th=torch.tensor(0.4)))
    model = randomise(SequenceThenLinear(lsnn), 9, gain=20.0)
    x = torch.randn(14, B, 6, generator=_gen(9)) + 0.5
    cm = check(model, x, _call, backend, cache_dir)
    with torch.no_grad():  # the adaptive threshold and its 'started' flag carry over
        full, _ = cm.run(x)
        for k in (1, 6):
            a, state = cm.run(x[:k])
            assert any("started" in s for s in state.values())
            b, _ = cm.run(x[k:], state)
            assert all(torch.equal(torch.cat([u, v]), w) for u, v, w in zip(a, b, full))


# --------------------------------------------------------------------------- IAF


class CellLoop(nn.Module):
    """Linear -> a cell in a hand-written loop; returns the cell's spikes and membranes."""

    def __init__(self, cell: nn.Module, n_in: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, 8)
        self.cell = cell

    def forward(self, x: torch.Tensor):
        s = None
        zs, vs = [], []
        for xt in x:
            z, s = self.cell(self.fc(xt), s)
            zs.append(z)
            vs.append(s.v)
        return torch.stack(zs), torch.stack(vs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_iaf_cell_learnable_threshold(backend: str, cache_dir: str) -> None:
    class Net(CellLoop):
        def __init__(self) -> None:
            v_th = nn.Parameter(torch.linspace(0.6, 1.2, 8))
            super().__init__(norse.IAFCell(IAFParameters(v_th=v_th, v_reset=torch.tensor(-0.2))))
            self.v_th = v_th

    model = randomise(Net(), 10, gain=0.8)
    x = torch.randn(12, B, 6, generator=_gen(10)) + 0.3
    cm = check(model, x, _call, backend, cache_dir, ("v_th",))
    assert _charges(cm) == {"norse_iaf"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_iaf_sequence_module(backend: str, cache_dir: str) -> None:
    model = randomise(SequenceThenLinear(norse.IAF(IAFParameters(v_th=torch.tensor(0.5)))), 14, 0.8)
    x = torch.randn(12, B, 6, generator=_gen(14)) + 0.3
    check(model, x, _call, backend, cache_dir)


def test_iaf_learnable_reset_is_refused() -> None:
    cell = norse.IAFCell(IAFParameters(v_reset=nn.Parameter(torch.tensor(0.0))))
    model = norse.SequentialState(nn.Linear(6, 4), cell)
    with pytest.raises(UnsupportedError, match="v_reset must be a scalar constant for IAF"):
        snncc.compile(model, torch.randn(4, B, 6))


# --------------------------------------------------------------------------- Izhikevich

PRESETS = [
    name
    for name, value in vars(izf).items()
    if isinstance(value, izf.IzhikevichSpikingBehavior) and not name.startswith("_")
]


@pytest.mark.parametrize("preset", PRESETS)
def test_izhikevich_presets(preset: str) -> None:
    """Every behaviour preset Norse ships, as a cell driven by a current: spikes and
    membranes bit for bit (each preset's own parameters and initial v, u)."""
    behaviour = getattr(izf, preset)
    model = randomise(CellLoop(norse.IzhikevichCell(behaviour), n_in=4), 11, gain=4.0)
    with torch.no_grad():
        model.fc.bias.fill_(6.0)
    x = torch.randn(40, 2, 4, generator=_gen(11))
    cm = snncc.compile(model, x)
    with torch.no_grad():
        ref = model(x)
        got = cm(x)
    for g, r in zip(got, ref):
        assert torch.equal(g, r), f"{int((g != r).sum())} of {r.numel()} differ"
    spec = NeuronSpec.from_dict(cm.ir.attrs(next(iter(cm.ir.iter_ops("neuron"))))["neuron"])
    assert spec.v_init == float(behaviour.s.v.detach())
    assert spec.extra["u_init"] == float(behaviour.s.u.detach())


class IzhikevichLearnable(nn.Module):
    """IzhikevichCell whose a and b are nn.Parameters (the rest of tonic spiking)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.02))
        self.b = nn.Parameter(torch.tensor(0.2))
        p = izf.IzhikevichParameters(a=self.a, b=self.b, c=-65.0, d=6.0)
        s = izf.IzhikevichState(v=torch.tensor(-70.0), u=torch.tensor(-14.0))
        behaviour = izf.IzhikevichSpikingBehavior(p=p, s=s)
        self.seq = norse.SequentialState(nn.Linear(6, 8), norse.IzhikevichCell(behaviour))

    def forward(self, x: torch.Tensor, state=None):
        return self.seq(x, state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_izhikevich_learnable(backend: str, cache_dir: str) -> None:
    model = randomise(IzhikevichLearnable(), 12, gain=40.0)
    with torch.no_grad():
        model.seq[0].bias.add_(8.0)
    x = torch.randn(20, B, 6, generator=_gen(12))
    check(model, x, norse_per_step, backend, cache_dir, ("a", "b"))  # the cell is the output


@pytest.mark.parametrize("backend", BACKENDS)
def test_izhikevich_recurrent_cell(backend: str, cache_dir: str) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rec = norse.IzhikevichRecurrentCell(6, 8, izf.tonic_bursting)

        def forward(self, x: torch.Tensor):
            s = None
            zs, vs = [], []
            for xt in x:
                z, s = self.rec(xt, s)
                zs.append(z)
                vs.append(s.v)
            return torch.stack(zs), torch.stack(vs)

    model = randomise(Net(), 13, gain=60.0)
    x = torch.randn(20, B, 6, generator=_gen(13)) + 0.5
    masks = {"rec.recurrent_weights": torch.ones(8, 8) - torch.eye(8)}
    cm = check(model, x, _call, backend, cache_dir, ("rec.recurrent_weights",), masks)
    assert _charges(cm) == {"norse_izhikevich_recurrent"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_izhikevich_sequence_module(backend: str, cache_dir: str) -> None:
    model = SequenceThenLinear(norse.Izhikevich(izf.spike_frequency_adaptation))
    randomise(model, 15, gain=40.0)
    with torch.no_grad():
        model.fc1.bias.add_(8.0)
    x = torch.randn(20, B, 6, generator=_gen(15))
    check(model, x, _call, backend, cache_dir)


@pytest.mark.parametrize("backend", BACKENDS)
def test_izhikevich_recurrent_sequence_module(backend: str, cache_dir: str) -> None:
    model = SequenceThenLinear(norse.IzhikevichRecurrent(8, 8, izf.tonic_spiking))
    randomise(model, 20, gain=60.0)
    with torch.no_grad():
        model.fc1.bias.add_(8.0)
    x = torch.randn(16, B, 6, generator=_gen(20)) + 0.5
    masks = {"neuron.recurrent_weights": torch.ones(8, 8) - torch.eye(8)}
    cm = check(model, x, _call, backend, cache_dir, ("neuron.recurrent_weights",), masks)
    assert _charges(cm) == {"norse_izhikevich_recurrent"}


# --------------------------------------------------------------------------- LIBox


class LIBoxReadout(nn.Module):
    """A LIFCell layer read out by an LIBoxCell (its input drives the membrane directly)
    whose membrane time constant learns."""

    def __init__(self) -> None:
        super().__init__()
        self.tau_mem_inv = nn.Parameter(torch.tensor(80.0))
        p = LIBoxParameters(tau_mem_inv=self.tau_mem_inv, v_leak=torch.tensor(0.1))
        self.seq = norse.SequentialState(
            nn.Linear(6, 8), norse.LIFCell(), nn.Linear(8, 3), norse.LIBoxCell(p)
        )

    def forward(self, x: torch.Tensor, state=None):
        return self.seq(x, state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_li_box_readout(backend: str, cache_dir: str) -> None:
    model = randomise(LIBoxReadout(), 21, gain=12.0)
    x = torch.randn(16, B, 6, generator=_gen(21)) + 0.5
    cm = check(
        model, x, norse_per_step, backend, cache_dir, ("tau_mem_inv",), probe=_hidden_spikes(1)
    )
    assert _charges(cm) == {"norse_lif", "norse_li_box"}


# --------------------------------------------------------------------------- jax and ONNX


@pytest.mark.parametrize(
    "which",
    ["adex", "lif_ex_recurrent", "lif_refrac", "lsnn_recurrent", "iaf", "izhikevich", "li_box"],
)
def test_jax_backend(which: str, cache_dir: str) -> None:
    if which == "adex":
        model = randomise(AdExLoop(), 4, gain=12.0)
        x, learnable = torch.randn(12, B, 6, generator=_gen(4)) + 0.5, ()
    elif which == "lif_refrac":
        model = randomise(REFRACTORY["LIFRefracRecurrentCell"][0](), 19, gain=12.0)
        x, learnable = torch.randn(16, B, 6, generator=_gen(19)) + 0.5, ("cell.input_weights",)
    elif which == "lif_ex_recurrent":
        model = randomise(EXPONENTIAL_RECURRENT["LIFExRecurrentCell"][0](), 17, gain=12.0)
        x, learnable = torch.randn(12, B, 6, generator=_gen(17)) + 0.5, ("cell.input_weights",)
    elif which == "lsnn_recurrent":
        model = randomise(LSNNRecurrentLoop(), 8, gain=20.0)
        x, learnable = torch.randn(14, B, 6, generator=_gen(8)) + 0.5, ("cell.input_weights",)
    elif which in ("iaf", "li_box"):
        if which == "iaf":
            model = randomise(norse.SequentialState(nn.Linear(6, 8), norse.IAFCell()), 10, 0.8)
        else:
            model = randomise(LIBoxReadout(), 21, gain=12.0).seq

        class Loop(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, v: torch.Tensor):
                return norse_per_step(self.m, v)

        model = Loop()
        x, learnable = torch.randn(12, B, 6, generator=_gen(10)) + 0.3, ()
        if which == "li_box":
            x, learnable = torch.randn(16, B, 6, generator=_gen(21)) + 0.5, ("m.3.p.tau_mem_inv",)
    else:
        model = randomise(IzhikevichLearnable(), 12, gain=40.0)
        with torch.no_grad():
            model.seq[0].bias.add_(8.0)

        class Loop(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, v: torch.Tensor):
                return norse_per_step(self.m, v)

        model = Loop()
        x, learnable = torch.randn(20, B, 6, generator=_gen(12)), ("m.a", "m.b")
    FIGURES.jax_compare(model, x, cache_dir, learnable=learnable)


def _dyadic(model: nn.Module, seed: int) -> nn.Module:
    gen = _gen(seed)
    for name, p in model.named_parameters():
        if name.endswith("weight") or name.endswith("weights") or name.endswith("bias"):
            scale = 16.0 if name.endswith("bias") else 8.0
            with torch.no_grad():
                p.copy_(torch.randint(-3, 6, p.shape, generator=gen) / scale)
    return model


class CellSteps(nn.Module):
    """A SequentialState of cells as a [T, B, ...] -> [T, B, ...] loop (what ONNX exports)."""

    def __init__(self, *cells: nn.Module) -> None:
        super().__init__()
        self.seq = norse.SequentialState(*cells)

    def forward(self, x: torch.Tensor):
        s = None
        out = []
        for xt in x:
            y, s = self.seq(xt, s)
            out.append(y)
        return torch.stack(out)


ONNX_MODELS: dict[str, tuple[Callable[[], nn.Module], float]] = {
    "adex": (
        lambda: CellSteps(
            nn.Linear(6, 8),
            norse.LIFAdExCell(LIFAdExParameters(v_th=torch.tensor(0.3))),
            norse.LILinearCell(8, 3),
        ),
        8.0,
    ),
    "lif_ex": (
        lambda: CellSteps(
            nn.Linear(6, 8), norse.LIFExCell(LIFExParameters(v_th=torch.tensor(0.3)))
        ),
        8.0,
    ),
    "lif_refrac": (
        lambda: CellSteps(nn.Linear(6, 8), norse.LIFRefracCell(_refrac_p(0.3))),
        8.0,
    ),
    "li_box": (
        lambda: CellSteps(nn.Linear(6, 8), norse.LIFCell(), nn.Linear(8, 3), norse.LIBoxCell()),
        8.0,
    ),
    "adex_recurrent": (
        lambda: CellSteps(
            norse.LIFAdExRecurrentCell(6, 8, LIFAdExParameters(v_th=torch.tensor(0.3)))
        ),
        8.0,
    ),
    "lsnn": (
        lambda: CellSteps(nn.Linear(6, 8), norse.LSNNCell(LSNNParameters(v_th=torch.tensor(0.3)))),
        8.0,
    ),
    "lsnn_recurrent": (
        lambda: CellSteps(norse.LSNNRecurrentCell(6, 8, LSNNParameters(v_th=torch.tensor(0.3)))),
        8.0,
    ),
    "iaf": (lambda: CellSteps(nn.Linear(6, 8), norse.IAFCell()), 1.0),
    "izhikevich": (
        lambda: CellSteps(nn.Linear(6, 8), norse.IzhikevichCell(izf.tonic_spiking)),
        16.0,
    ),
    "izhikevich_recurrent": (
        lambda: CellSteps(norse.IzhikevichRecurrentCell(6, 8, izf.tonic_spiking)),
        16.0,
    ),
}


def _dyadic_input(t: int, b: int, seed: int, scale: float) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((t, b, 6)) * 1.5 + 0.8
    return (np.round(x * 8) / 8 * scale).astype(np.float32)


@pytest.mark.parametrize("name", list(ONNX_MODELS))
def test_onnx_export_runs_and_equals_the_reference(name: str) -> None:
    pytest.importorskip("onnxruntime")
    from test_onnx import assert_exact, probe_all, run_onnx, run_ref

    from snncc.exchange.onnx_export import to_onnx

    build, scale = ONNX_MODELS[name]
    model = _dyadic(build(), len(name))
    x0 = torch.from_numpy(_dyadic_input(8, B, 1, scale))
    graph = snncc.compile(model, x0, backend="reference").ir
    g, probes = probe_all(graph)
    onnx_model = to_onnx(g)
    rates = []
    for t, b in [(1, 2), (13, 5)]:
        x = _dyadic_input(t, b, 10 + t, scale)
        ys, rs = run_onnx(onnx_model, x), run_ref(g, x)
        assert_exact(ys, rs)
        for n, r in zip(probes, rs[len(graph.meta["outputs"]) :]):
            if g.op(n) == "neuron" and NeuronSpec.from_dict(g.attrs(n)["neuron"]).spiking:
                rates.append(float((r != 0).mean()))
    assert rates and any(0.0 < q < 1.0 for q in rates), f"degenerate spikes {rates}"


# --------------------------------------------------------------------------- NIR


def test_nir_iaf_round_trip_exact_and_families_without_a_nir_node(tmp_path) -> None:
    """IAF is NIR's IF (r = 1/dt): snncc -> NIR -> snncc gives the same spikes, with and
    without snncc's metadata; the families NIR has no node for are refused by name."""
    import nir

    from snncc.exchange.nir_export import to_nir
    from snncc.exchange.nir_import import from_nir

    model = norse.SequentialState(
        nn.Linear(6, 8),
        norse.IAFCell(IAFParameters(v_th=torch.tensor(0.5), v_reset=torch.tensor(-0.1))),
    )
    randomise(model, 16, gain=1.5)
    x = torch.randn(12, B, 6, generator=_gen(16)) + 0.5
    cm = snncc.compile(model, x)
    with torch.no_grad():
        y = cm(x)
    assert 0 < int(y.sum()) < y.numel()
    path = tmp_path / "iaf.nir"
    to_nir(cm.ir, path, dt=1e-3)
    assert {type(v).__name__ for v in nir.read(str(path)).nodes.values()} >= {"IF"}
    stripped = nir.read(str(path))
    for node in stripped.nodes.values():
        node.metadata = {}
    for source in (path, stripped):
        with torch.no_grad():
            assert torch.equal(snncc.compile_graph(from_nir(source, dt=1e-3))(x), y)
    for cell in (
        norse.LIFAdExCell(),
        norse.LIFExCell(),
        norse.LIFRefracCell(),
        norse.LSNNCell(),
        norse.IzhikevichCell(izf.tonic_spiking),
    ):
        ir = snncc.compile(norse.SequentialState(nn.Linear(6, 8), cell), x).ir
        with pytest.raises(UnsupportedError, match="has no NIR node"):
            to_nir(ir, dt=1e-3)
