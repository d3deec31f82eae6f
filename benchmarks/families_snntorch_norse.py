"""The issue-12 snnTorch / Norse families: snncc's fused cpu kernel against the framework's
eager module, on the CPU, forward and forward + backward.

    python benchmarks/families_snntorch_norse.py --threads 1 --out benchmarks/results/

Each case is one neuron layer fed a current ``x`` of shape [T, B, N] (no Linear in front:
the neuron is what is timed): the framework's module called once per step in a loop (a
cell, or the sequence module once), exactly the model snncc compiles (``backend="cpu"``:
one fused kernel running all T steps, or, for the recurrent cells, one kernel step per time
step around the recurrent GEMM). Training steps backpropagate ``y.sum()`` to ``x`` and to the
module's learnable parameters (cleared before each step). The timer is the suite's
(``peers.measure``: warm-up until stable, then median and quartiles of blocks of steps);
the compiled model's outputs are checked against the module's before timing. The report
records the load average at the start and the end (the development machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _threads_from_argv(argv: list[str]) -> int:
    """--threads, read before torch is imported (OpenMP and MKL read their env once)."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 1


if __name__ == "__main__":
    _n = str(_threads_from_argv(sys.argv[1:]))
    os.environ.setdefault("OMP_NUM_THREADS", _n)
    os.environ.setdefault("MKL_NUM_THREADS", _n)
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import Bench, Protocol, measure  # noqa: E402

MODES = ("fwd", "fwd+bwd")


class StepLoop(nn.Module):
    """``x`` [T, B, N] through one neuron module called once per step, state threaded by
    ``step(module, x_t, state) -> (spikes, state)``; returns the stacked spikes."""

    def __init__(self, neuron: nn.Module, step: Callable, init: Callable) -> None:
        super().__init__()
        self.neuron = neuron
        self._step = step
        self._init = init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._init(self.neuron)
        out = []
        for xt in x:
            z, state = self._step(self.neuron, xt, state)
            out.append(z)
        return torch.stack(out)


# ---------------------------------------------------------------- the families
def _snntorch_cases(n: int) -> dict[str, Callable[[], nn.Module]]:
    import snntorch as snn

    def alpha() -> nn.Module:
        class Loop(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lif = snn.Alpha(alpha=0.9, beta=0.8, learn_beta=True, learn_threshold=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                e, h, m = self.lif.reset_mem()
                out = []
                for xt in x:
                    z, e, h, m = self.lif(xt, e, h, m)
                    out.append(z)
                return torch.stack(out)

        return Loop()

    def lapicque() -> nn.Module:
        class Loop(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                # learn_beta=False: snnTorch can backward through a learnable beta only once
                self.lif = snn.Lapicque(beta=0.9, learn_threshold=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                m = self.lif.reset_mem()
                out = []
                for xt in x:
                    z, m = self.lif(xt, m)
                    out.append(z)
                return torch.stack(out)

        return Loop()

    def rsynaptic(all_to_all: bool) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            class Loop(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    kw: dict[str, Any] = (
                        {"linear_features": n}
                        if all_to_all
                        else {"all_to_all": False, "V": torch.full((n,), 0.3)}
                    )
                    self.lif = snn.RSynaptic(alpha=0.8, beta=0.9, learn_alpha=True, **kw)
                    if all_to_all:
                        with torch.no_grad():
                            self.lif.recurrent.weight.mul_(0.1)

                def forward(self, x: torch.Tensor) -> torch.Tensor:
                    spk, syn, mem = self.lif.reset_mem()
                    out = []
                    for xt in x:
                        spk, syn, mem = self.lif(xt, spk, syn, mem)
                        out.append(spk)
                    return torch.stack(out)

            return Loop()

        return make

    return {
        "snnTorch Alpha": alpha,
        "snnTorch Lapicque": lapicque,
        "snnTorch RSynaptic (one-to-one V)": rsynaptic(False),
        "snnTorch RSynaptic (all-to-all Linear)": rsynaptic(True),
    }


def _norse_cases(n: int) -> dict[str, Callable[[], nn.Module]]:
    import norse.torch as norse
    from norse.torch.functional import izhikevich as izf
    from norse.torch.functional.iaf import IAFParameters
    from norse.torch.functional.lif_adex import LIFAdExParameters
    from norse.torch.functional.lsnn import LSNNParameters

    def cell(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        return lambda: StepLoop(make(), lambda m, xt, s: m(xt, s), lambda m: None)

    def lsnn_recurrent() -> nn.Module:
        class Loop(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.cell = norse.LSNNRecurrentCell(
                    n, n, LSNNParameters(v_th=torch.tensor(0.5), tau_adapt_inv=torch.tensor(50.0))
                )
                with torch.no_grad():
                    self.cell.input_weights.copy_(torch.eye(n) * 40.0)
                    self.cell.recurrent_weights.mul_(0.1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                s = None
                out = []
                for xt in x:
                    z, s = self.cell(xt, s)
                    out.append(z)
                return torch.stack(out)

        return Loop()

    return {
        "Norse LIFAdExCell": cell(
            lambda: norse.LIFAdExCell(LIFAdExParameters(v_th=torch.tensor(0.3)))
        ),
        "Norse IzhikevichCell (tonic spiking)": cell(
            lambda: norse.IzhikevichCell(izf.tonic_spiking)
        ),
        "Norse IAFCell": cell(lambda: norse.IAFCell(IAFParameters(v_th=torch.tensor(0.5)))),
        "Norse LSNNCell": cell(
            lambda: norse.LSNNCell(
                LSNNParameters(v_th=torch.tensor(0.3), tau_adapt_inv=torch.tensor(50.0))
            )
        ),
        "Norse LSNNRecurrentCell": lsnn_recurrent,
    }


#: x = randn * scale + offset * scale per case: each layer fires at a moderate rate (about
#: 0.1-0.2 at the default sizes; the measured rate is in the table)
SCALES: dict[str, tuple[float, float]] = {
    "snnTorch Alpha": (100.0, 0.3),
    "snnTorch Lapicque": (10.0, 0.1),
    "snnTorch RSynaptic (one-to-one V)": (0.1, 0.0),
    "snnTorch RSynaptic (all-to-all Linear)": (0.3, 0.1),
    "Norse LIFAdExCell": (1.0, 0.1),
    "Norse IzhikevichCell (tonic spiking)": (100.0, 0.3),
    "Norse IAFCell": (100.0, 0.1),
    "Norse LSNNCell": (10.0, 0.3),
    "Norse LSNNRecurrentCell": (0.3, 0.3),
}


def _input(name: str, t: int, b: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale, offset = SCALES[name]
    return (torch.randn((t, b, n), generator=g) + offset) * scale


# ---------------------------------------------------------------- timing
def _benches(model: nn.Module, compiled: Any, mode: str, fused: Any = None) -> dict[str, Bench]:
    """The framework's eager model and the compiled one as :class:`peers.Bench` steps (and
    ``fused``, the model compiled with ``recurrent="fused"``, where it has a fused group)."""
    import snntorch

    eager_params = [p for p in model.parameters() if p.requires_grad]

    def clear(params: list[torch.Tensor]) -> Callable[[], None]:
        def before() -> None:
            snntorch.SpikingNeuron.init()  # snnTorch keeps every neuron it ever built
            for p in params:
                p.grad = None

        return before

    if mode == "fwd":

        def eager(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        def snncc_fwd(cm: Any) -> Callable[[torch.Tensor], torch.Tensor]:
            def fwd(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return cm(x)

            return fwd

        benches = {"eager": Bench(eager), "snncc-cpu": Bench(snncc_fwd(compiled))}
        if fused is not None:
            benches["snncc-cpu-fused"] = Bench(snncc_fwd(fused))
        return benches

    def eager_train(x: torch.Tensor) -> torch.Tensor:
        y = model(x)
        y.sum().backward()
        return y

    def snncc_train(cm: Any) -> Bench:
        def step(x: torch.Tensor) -> torch.Tensor:
            y = cm(x)
            y.sum().backward()
            return y

        ours = [p for p in cm.program.params.values() if p.requires_grad]
        return Bench(step, before=clear(ours))

    benches = {
        "eager": Bench(eager_train, before=clear(eager_params)),
        "snncc-cpu": snncc_train(compiled),
    }
    if fused is not None:
        benches["snncc-cpu-fused"] = snncc_train(fused)
    return benches


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workloads import Case

    import snncc
    from snncc.ir.neuron import NeuronSpec

    torch.set_num_threads(args.threads)
    t, b, n = args.T, args.B, args.N
    cases = {**_snntorch_cases(n), **_norse_cases(n)}
    if args.only:
        cases = {k: v for k, v in cases.items() if any(s in k for s in args.only.split(","))}
    protocol = Protocol(repeat=args.repeat, max_warmup_s=args.max_warmup_s)
    records = []
    for name, make in cases.items():
        torch.manual_seed(0)
        model = make()
        x = _input(name, t, b, n, seed=1)
        t0 = time.perf_counter()
        compiled = snncc.compile(model, x, backend="cpu", cache_dir=args.cache_dir)
        compile_s = time.perf_counter() - t0
        # a recurrent cell also runs fused over time (recurrent="fused": one kernel per
        # direction, another summation order than the step schedule's torch GEMMs)
        fused = snncc.compile(model, x, backend="cpu", cache_dir=args.cache_dir, recurrent="fused")
        if "recurrent, fused" not in fused.program.source:
            fused = None
        with torch.no_grad():
            want, got = model(x), compiled(x)
            fused_mismatch = None if fused is None else int((want != fused(x)).sum())
        mismatch = int((want != got).sum())
        rate = float(want.mean())
        ir = compiled.ir
        charges = sorted(
            {NeuronSpec.from_dict(ir.attrs(k)["neuron"]).charge for k in ir.iter_ops("neuron")}
        )
        for mode in MODES:
            case = Case(workload="families", label=name, T=t, B=b, shape=(n,), neurons=b * n)
            row: dict[str, Any] = {
                "case": name,
                "mode": mode,
                "forms": charges,
                "T": t,
                "B": b,
                "N": n,
                "spike_rate": rate,
                "spikes_differing": mismatch,
                "spikes_differing_fused": fused_mismatch,
                "compile_s": round(compile_s, 2),
            }
            for who, bench in _benches(model, compiled, mode, fused).items():
                xs = x.clone().requires_grad_(mode == "fwd+bwd")
                bench.convert = lambda _x, xs=xs: xs
                rec = measure(bench, case, mode, "cpu", protocol)
                row[who] = {k: rec[k] for k in ("median_ms", "p25_ms", "p75_ms", "warmup_stable")}
            row["speedup"] = row["eager"]["median_ms"] / row["snncc-cpu"]["median_ms"]
            if fused is not None:
                row["speedup_fused"] = (
                    row["eager"]["median_ms"] / row["snncc-cpu-fused"]["median_ms"]
                )
            records.append(row)
            print(
                f"{name:42s} {mode:8s} eager {row['eager']['median_ms']:9.2f} ms  "
                f"snncc {row['snncc-cpu']['median_ms']:8.2f} ms  x{row['speedup']:.1f}"
                + (f"  fused x{row['speedup_fused']:.1f}" if fused is not None else ""),
                flush=True,
            )
    return {"records": records}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# snnTorch / Norse families: snncc cpu kernels vs the frameworks' eager modules",
        "",
        f"One neuron layer, x [T={report['T']}, B={report['B']}, N={report['N']}] fed directly;"
        f" CPU, {report['threads']} thread(s) for both; {m['cpu']}; torch {m['torch']}, "
        f"snnTorch {m['snntorch']}, Norse {m['norse']}.",
        f"Load average (1/5/15 min) at the start {m['load_start']}, at the end {m['load_end']} "
        "(a shared 2-core development machine: absolute times are noisy, ratios less so).",
        "Cells: median ms per step [25th-75th percentile] (`peers.measure`). 'fwd+bwd' = "
        "forward + `y.sum().backward()` to x and the learnable parameters. snncc-cpu runs a "
        "recurrent cell step by step (the default: torch's GEMM each step, bit for bit); "
        '"fused" is `recurrent="fused"` (one kernel over time per direction, its own '
        "summation order), for the cells that have a fused plan.",
        "",
        "| family (forms) | mode | spike rate | eager ms | snncc-cpu ms | speedup "
        "| snncc-cpu fused ms | speedup fused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["records"]:
        e, s = r["eager"], r["snncc-cpu"]
        flag = "" if e["warmup_stable"] and s["warmup_stable"] else " (not settled)"
        check = "" if r["spikes_differing"] == 0 else f", {r['spikes_differing']} spikes differ"
        f_cells = "| n/a | n/a"
        fz = r.get("snncc-cpu-fused")
        if fz is not None:
            differ = r.get("spikes_differing_fused")
            note = f" ({differ} spikes differ)" if differ else ""
            f_cells = (
                f"| {fz['median_ms']:.2f} [{fz['p25_ms']:.2f}-{fz['p75_ms']:.2f}]{note} "
                f"| {r['speedup_fused']:.1f}x"
            )
        lines.append(
            f"| {r['case']} ({', '.join(r['forms'])}) | {r['mode']} | {r['spike_rate']:.3f}{check} "
            f"| {e['median_ms']:.2f} [{e['p25_ms']:.2f}-{e['p75_ms']:.2f}] "
            f"| {s['median_ms']:.2f} [{s['p25_ms']:.2f}-{s['p75_ms']:.2f}] "
            f"| {r['speedup']:.1f}x{flag} {f_cells} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--N", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--max-warmup-s", type=float, default=3.0)
    ap.add_argument("--only", default="", help="comma-separated substrings of case names")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    import platform

    import norse
    import snntorch

    machine = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "snntorch": snntorch.__version__,
        "norse": getattr(norse, "__version__", "1.1"),
        "load_start": [round(v, 2) for v in os.getloadavg()],
    }
    report = {"T": args.T, "B": args.B, "N": args.N, "threads": args.threads, **run(args)}
    machine["load_end"] = [round(v, 2) for v in os.getloadavg()]
    report["machine"] = machine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / "families_snntorch_norse_cpu"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
