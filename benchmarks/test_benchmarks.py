"""Checks of the benchmark harness itself: equal work in every peer, and the report's arithmetic.

    python -m pytest benchmarks -q      # CPU, about a minute; not part of the main suite

The suite's ratios mean something only if every peer runs the same network with
the same surrogate and the same learnable parameters (issue 17): these tests
run each peer's model eagerly on small inputs and compare spikes and gradients
with SpikingJelly's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("spikingjelly")
from peers import (  # noqa: E402
    COMPARISONS,
    PEERS,
    Bench,
    Protocol,
    measure,
)
from run import _fastest, combine, ratio_cell  # noqa: E402
from workloads import (  # noqa: E402
    LAYER_BYTES,
    TARGET_RATE,
    NorseLayer,
    SnnTorchLayer,
    calibrated_gains,
    cases,
    floor,
    gemm_flops,
    make_input,
    replace_neurons,
    sj_model,
    snncc_nn_layer,
)


def _sj_run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    return model(x)


FACTORIES = {"snntorch": SnnTorchLayer, "norse": NorseLayer, "snncc.nn": snncc_nn_layer}


@pytest.mark.parametrize("peer", list(FACTORIES))
def test_layer_peers_match_spikingjelly_spikes_and_input_gradients(peer: str) -> None:
    """L1: same spikes; the input gradient through the ATan surrogate and the (undetached)
    reset agrees with SpikingJelly's to rounding."""
    pytest.importorskip(peer.split(".")[0] if peer != "snncc.nn" else "snncc")
    case = cases("L1", small=True)[1]  # T=16
    sj = sj_model(case)
    other = replace_neurons(sj, FACTORIES[peer])
    x = make_input(case, seed=3, device="cpu")
    xs, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yo = _sj_run(sj, xs), other(xo)
    assert 0.05 < float(ys.detach().mean()) < 0.95  # the layer fires
    assert (ys != yo).float().mean() < 1e-4  # only exact-threshold ties may differ (>= vs >)
    ys.sum().backward()
    yo.sum().backward()
    torch.testing.assert_close(xo.grad, xs.grad, rtol=1e-4, atol=1e-5)


def _learnable_taus(model: torch.nn.Module) -> list[torch.Tensor]:
    out = []
    for m in model.modules():
        if isinstance(m, SnnTorchLayer):
            out.append(m.cell.beta)
        elif isinstance(m, NorseLayer):
            out.append(m.w)
        elif hasattr(m, "w") and isinstance(m.w, torch.nn.Parameter):
            out.append(m.w)  # SpikingJelly ParametricLIFNode, snncc.nn ParametricLIF
    return out


@pytest.mark.parametrize("peer", list(FACTORIES))
def test_c1_peers_learn_the_time_constant(peer: str) -> None:
    """C1: every PLIF time constant is a learnable parameter in every peer and gets a gradient;
    where the reset is detached as in SpikingJelly (Norse, snncc.nn) the gradient is SJ's."""
    pytest.importorskip(peer.split(".")[0] if peer != "snncc.nn" else "snncc")
    case = cases("C1", small=True)[0]
    sj = sj_model(case).train()
    other = replace_neurons(sj, FACTORIES[peer]).train()
    x = make_input(case, seed=1, device="cpu")
    torch.manual_seed(5)  # the same dropout masks: neurons draw no random numbers
    ys = _sj_run(sj, x)
    torch.manual_seed(5)
    yo = other(x)
    assert torch.equal(ys, yo) or (ys != yo).float().mean() < 1e-3
    ys.sum().backward()
    yo.sum().backward()
    want, got = _learnable_taus(sj), _learnable_taus(other)
    assert len(want) == len(got) == 8  # 6 conv + 2 linear PLIF layers
    assert all(p.requires_grad and p.grad is not None and p.grad.abs() > 0 for p in got)
    if peer != "snntorch":  # snnTorch never detaches its reset; C1's SpikingJelly does
        torch.testing.assert_close(
            torch.stack([p.grad for p in got]),
            torch.stack([p.grad for p in want]),
            rtol=1e-3,
            atol=1e-6,
        )


def test_every_torch_peer_uses_atan() -> None:
    """The peers' surrogates: ATan with SpikingJelly's alpha, none left at a framework default."""
    from snncc.surrogate import from_spikingjelly

    case = cases("M1", small=True)[0]
    sj = sj_model(case)
    nodes = [m for m in sj.modules() if hasattr(m, "surrogate_function")]
    assert nodes and all(from_spikingjelly(n.surrogate_function) == ("atan", 2.0) for n in nodes)
    snn = [m for m in replace_neurons(sj, SnnTorchLayer).modules() if isinstance(m, SnnTorchLayer)]
    assert all("atan" in m.cell.spike_grad.__qualname__ for m in snn)
    norse = [m for m in replace_neurons(sj, NorseLayer).modules() if isinstance(m, NorseLayer)]
    assert all(m.cell.p.method == "atan" and float(m.cell.p.alpha) == 2.0 for m in norse)
    ours = [m for m in replace_neurons(sj, snncc_nn_layer).modules() if hasattr(m, "surrogate")]
    assert ours and all(m.surrogate == "atan" and m.alpha == 2.0 for m in ours)


def test_jax_training_step_returns_its_output() -> None:
    """jax's step writes its output like the torch peers' (not only the gradient)."""
    pytest.importorskip("jax")
    case = cases("L1", small=True)[0]
    bench = PEERS["snncc-jax"].make(case, "fwd+bwd", "cpu")
    x = bench.convert(make_input(case, seed=0, device="cpu"))
    y, gx = bench.fn(x)
    assert tuple(y.shape) == case.input_shape and tuple(gx.shape) == case.input_shape
    assert 0 < float(y.mean()) < 1


def test_jax_pallas_variant_times_gpu_layers_only_and_shows_its_ratio_to_cuda() -> None:
    """The Pallas variant is timed on a GPU only (a CPU only interprets it), on L1/L2; the
    table divides its time by the cuda backend's (issue 16's 1.3x goal)."""
    from peers import NA

    pytest.importorskip("jax")
    l1, m1 = cases("L1", small=True)[0], cases("M1", small=True)[0]
    with pytest.raises(NA, match="on a GPU"):
        PEERS["snncc-jax-pallas"].make(l1, "fwd", "cpu")
    with pytest.raises(NA, match="L1 and L2"):
        PEERS["snncc-jax-pallas"].make(m1, "fwd", "cuda")
    pallas = {"status": "ok", "median_ms": 1.2, "p25_ms": 1.1, "p75_ms": 1.3}
    cuda = {"status": "ok", "median_ms": 1.0, "p25_ms": 0.9, "p75_ms": 1.1}
    assert ratio_cell(cuda, {"snncc-jax-pallas": pallas}) == "1.20x (1.00-1.44)"


def test_cudnn_measured_peers_time_c1_only_and_set_the_worker_flags() -> None:
    """Issue 16, goal 5: snncc and SpikingJelly alike with cuDNN's measured algorithm choice
    (deterministic), compared with each other only, on the one workload with convolutions."""
    from peers import CUDNN_MEASURED, NA, set_precision

    m1 = cases("M1", small=True)[0]
    for peer in ("snncc-cuda-cudnn", "sj-triton-cudnn"):
        assert PEERS[peer].config == CUDNN_MEASURED
        with pytest.raises(NA, match="convolutions"):
            PEERS[peer].make(m1, "fwd", "cuda")
    assert (CUDNN_MEASURED, "snncc-cuda-cudnn", ("sj-triton-cudnn",)) in COMPARISONS
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32)
    try:
        set_precision(CUDNN_MEASURED)
        assert cudnn.benchmark and cudnn.deterministic and not cudnn.allow_tf32
        set_precision("fp32")
        assert not cudnn.benchmark and not cudnn.deterministic
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = saved


def test_measure_pools_blocks_into_a_spread() -> None:
    """A fake 1 ms step: >= repeat samples, blocks of several steps, ordered quartiles."""
    import time

    case = cases("L1", small=True)[0]
    calls = []
    bench = Bench(fn=lambda x: calls.append(time.sleep(0.001)) or x, before=lambda: None)
    rec = measure(bench, case, "fwd", "cpu", Protocol(repeat=20, min_warmup_s=0.02))
    assert len(rec["samples_ms"]) == 20 and rec["steps_per_sample"] >= 2
    assert rec["min_ms"] <= rec["p25_ms"] <= rec["median_ms"] <= rec["p75_ms"] <= rec["max_ms"]
    assert rec["median_ms"] >= 1.0
    assert len(calls) == rec["warmup_runs"] + 20 * rec["steps_per_sample"]


def _rec(median: float, p25: float, p75: float, peer: str = "x") -> dict:
    return {"status": "ok", "median_ms": median, "p25_ms": p25, "p75_ms": p75, "samples_ms": []}


def test_ratio_is_same_configuration_with_quartile_range() -> None:
    ours = _rec(1.0, 0.9, 1.1)
    cell = ratio_cell(ours, {"sj-triton": _rec(2.0, 1.8, 2.2), "sj-torch": _rec(8.0, 7, 9)})
    assert cell == f"2.00x ({1.8 / 1.1:.2f}-{2.2 / 0.9:.2f}) triton"
    assert ratio_cell({"status": "n/a: x"}, {"sj-triton": _rec(2, 2, 2)}) == "-"
    assert all(len(c) == 3 and c[1].startswith("snncc-") for c in COMPARISONS)
    for _, ours_name, theirs in COMPARISONS:  # each compares one configuration
        assert {PEERS[p].config for p in theirs} == {PEERS[ours_name].config}


def test_combine_pools_rounds_and_fastest_names_ties() -> None:
    a = {"status": "ok", "median_ms": 1, "samples_ms": [1.0, 1.2, 0.8], "peak_mib": 5}
    b = {"status": "ok", "median_ms": 2, "samples_ms": [2.0, 2.2, 1.8], "peak_mib": 7}
    c = combine([a, b])
    assert c["median_ms"] == pytest.approx(1.5) and c["round_medians"] == [1, 2]
    assert c["peak_mib"] == 7
    assert combine([a, {"status": "error: boom"}])["status"] == "error: boom"
    row = {"p": _rec(1.0, 0.9, 1.2), "q": _rec(1.1, 1.0, 1.3), "r": _rec(3, 2.9, 3.1)}
    assert _fastest(row, {"p": "fp32", "q": "fp32", "r": "fp32"}) == "p (ties q)"
    assert _fastest(row, {"p": "bf16", "q": "fp32", "r": "fp32"}) == "q"


def test_the_idle_and_loaded_table_pools_every_round() -> None:
    """With ``--rounds 2`` each row has a record per round: the comparison gives the median of
    their pooled samples, as the report's tables do (it once gave the last round's)."""
    from run import compare_loads

    def report(samples: list[list[float]], compete: str | None) -> dict:
        records = [
            {
                "workload": "M1",
                "case": "T=4",
                "mode": "fwd",
                "peer": "snncc-cpu",
                "status": "ok",
                "median_ms": sorted(s)[len(s) // 2],
                "samples_ms": s,
            }
            for s in samples
        ]
        return {"records": records, "compete": compete, "load": {"start": {"uptime": "-"}}}

    idle = report([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], None)
    loaded = report([[8.0, 8.0, 8.0, 8.0], [2.0, 2.0, 2.0]], "campaign")  # last round: 2
    row = compare_loads(idle, loaded).splitlines()[-1]
    assert row == "| M1 | T=4 | fwd | snncc-cpu | 1.000 | 8.000 | 8.00x |", row


def test_a_compete_pair_never_writes_over_a_plain_report(tmp_path) -> None:
    """``--compete``'s idle run is written as ``..._compete-idle``, its loaded run as
    ``..._compete-<load>``; a plain run keeps the plain name (the idle run once overwrote
    the README's pinned report)."""
    from run import write_report

    saved = json.loads(
        (Path(__file__).parent / "results" / "bench_cpu_small_compete-idle.json").read_text()
    )
    for pair, name in ((None, "bench_cpu_small"), ("idle", "bench_cpu_small_compete-idle")):
        stem = write_report(saved, tmp_path, pair)
        assert stem == tmp_path / name and stem.with_suffix(".md").is_file()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "bench_cpu_small.json",
        "bench_cpu_small_compete-idle.json",
    ]


def test_a_report_states_the_environment_its_peers_ran_in(tmp_path, monkeypatch) -> None:
    """MKL's reproducibility mode and the thread settings change the timings (strict CNR
    slowed SpikingJelly's loaded M1 steps), so a report names the ones set, or says none."""
    from run import machine, write_report

    saved = json.loads(
        (Path(__file__).parent / "results" / "bench_cpu_small_compete-idle.json").read_text()
    )
    for value, line in (("AUTO,STRICT", "Environment: MKL_CBWR=AUTO,STRICT "), (None, "none set")):
        if value is None:
            monkeypatch.delenv("MKL_CBWR", raising=False)
        else:
            monkeypatch.setenv("MKL_CBWR", value)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME"):
            monkeypatch.delenv(name, raising=False)
        saved["machine"] = machine("cpu")
        stem = write_report(saved, tmp_path)
        assert line in stem.with_suffix(".md").read_text()


def test_floors_state_their_bytes_and_flops() -> None:
    assert LAYER_BYTES["fwd"][0] == 8 and LAYER_BYTES["fwd+bwd"][0] == 16  # recompute
    l1 = cases("L1", small=False)[3]  # T=256, 2^20 neurons
    f = floor(l1, "fwd+bwd", {"copy_bytes_per_s": 4e12})
    assert f.ms == pytest.approx(16 * 256 * 2**20 / 4e12 * 1e3) and f.work.startswith("16 B")
    m1 = cases("M1", small=False)[0]
    assert gemm_flops(m1) == pytest.approx(47.68e9, rel=1e-3)
    assert gemm_flops(m1, "fwd+bwd") == pytest.approx(129.9e9, rel=1e-3)
    assert floor(cases("C1", small=False)[0], "fwd", {}) is None


def test_r1_fires_in_every_framework_and_snncc_fuses_its_recurrent_group() -> None:
    """R1 (issue 16): SpikingJelly's model fires 5-25% of its hidden neurons per step on the
    suite's input, snnTorch's RLeaky and Norse's LIFRecurrentCell versions (its folded
    weights) too, and snncc finds the fused plan of the recurrent group."""
    from workloads import R1Norse, R1SnnTorch

    import snncc

    case = cases("R1", small=True)[0]
    x = make_input(case, seed=0, device="cpu")[:20]
    rates = {}
    sj = sj_model(case)
    got: list[torch.Tensor] = []
    sj[1].sub_module.register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        assert _sj_run(sj, x).shape == (20, case.B, 20)
    rates["spikingjelly"] = float(torch.stack(got).mean())
    for name, make, cell in (("snntorch", R1SnnTorch, "rlif"), ("norse", R1Norse, "cell")):
        model, seen = make(case), []
        getattr(model, cell).register_forward_hook(lambda m, i, o, seen=seen: seen.append(o[0]))
        with torch.no_grad():
            assert model(x).shape == (20, case.B, 20)
        rates[name] = float(torch.stack(seen).mean())
    assert all(0.05 <= r <= 0.25 for r in rates.values()), rates
    cm = snncc.compile(sj, x[:2, :2], backend="reference")
    (group,) = [g for g in cm.ir.meta["groups"] if g["kind"] == "recurrent"]
    assert group["fusable"]["pattern"] == "cat" and group["fusable"]["hidden"] == 256


@pytest.mark.parametrize("workload", ["M1", "C1"])
def test_calibrated_workloads_fire_in_every_neuron_layer(workload: str) -> None:
    """M1 and C1 fire about TARGET_RATE in every neuron layer (their uncalibrated outputs
    were silent), on the timing input too, and every call builds the same weights."""
    from spikingjelly.activation_based import functional, neuron

    case = cases(workload, small=True)[0]
    net = sj_model(case).eval()
    rates: list[float] = []
    for m in net.modules():
        if isinstance(m, (neuron.LIFNode, neuron.ParametricLIFNode)):
            m.register_forward_hook(lambda mod, i, o: rates.append(float(o.float().mean())))
    functional.reset_net(net)
    with torch.no_grad():
        net(make_input(case, seed=0, device="cpu"))
    assert len(rates) == len(calibrated_gains(case)) >= 3
    assert all(0.5 * TARGET_RATE <= r <= 1.5 * TARGET_RATE for r in rates), rates
    again = sj_model(case).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("kind", ["busy", "campaign"])
def test_a_competing_load_ends_when_its_benchmark_is_killed(kind: str) -> None:
    """A benchmark killed inside its ``with CompetingLoad(...)`` block (no ``__exit__``) leaves
    no load behind: each load process stops once its parent is gone."""
    import os
    import signal
    import subprocess
    import time

    here = Path(__file__).resolve().parent
    script = (
        f"import sys, time; sys.path.insert(0, {str(here)!r})\n"
        "from compete import CompetingLoad\n"
        f"load = CompetingLoad({kind!r}, cores=1).__enter__()\n"
        "print(load._procs[0].pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        load_pid = int(bench.stdout.readline())
    finally:
        bench.send_signal(signal.SIGKILL)
        bench.wait()
    deadline = time.monotonic() + 30
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            os.kill(load_pid, 0)
            with open(f"/proc/{load_pid}/stat") as f:  # a zombie has ended
                alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        time.sleep(0.2)
    if alive:
        os.killpg(load_pid, signal.SIGKILL)
    assert not alive, f"the {kind} load outlived its benchmark"
