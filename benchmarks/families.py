"""The SpikingJelly 2.0 families' fused cpu kernels against SpikingJelly's eager modules (CPU).

    python benchmarks/families.py                      # writes results/families_cpu.{json,md}
    python benchmarks/families.py --sizes 16x8x1024 --families qif,klif --threads 1

One neuron layer per family (QIFNode, EIFNode, IzhikevichNode, KLIFNode,
CUBALIFNode, LIAFNode, and ParametricLIFNode, C1's neuron), fed a [T, B, N] input drawn from [0, 2): SpikingJelly
runs the module in step mode 'm' (its CPU path: QIF/EIF/Izhikevich through
their ``torch.ops.sj_*`` CPU kernels, KLIF/CUBA/LIAF through a Python loop of
per-step torch ops), snncc the same module compiled for the cpu backend (one
fused C++ kernel over all T steps, forward and backward). ``fwd`` times one
forward; ``fwd+bwd`` one forward and ``y.sum().backward()`` (input gradient,
and KLIF's ``k``, PLIF's ``w``). Each step includes SpikingJelly's ``reset_net`` (what a
user's loop does). Timing is the suite's (benchmarks/peers.py ``measure``:
warm-up until stable, then blocks of back-to-back steps; median and quartiles
of per-step ms). Both peers run in this process with the same thread count.
The machine's load average is recorded next to the figures: on a shared
machine the absolute times move, the ratios less.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from peers import Bench, Protocol, measure  # noqa: E402
from run import load, machine, versions  # noqa: E402
from torch import nn  # noqa: E402
from workloads import Case  # noqa: E402

#: family -> the SpikingJelly module (default constants but for a few that make it fire)
FAMILIES: dict[str, Callable[[], nn.Module]] = {}


def _families() -> dict[str, Callable[[], nn.Module]]:
    from spikingjelly.activation_based import neuron

    return {
        "qif": lambda: neuron.QIFNode(tau=2.0),
        "eif": lambda: neuron.EIFNode(tau=2.0),
        "izhikevich": lambda: neuron.IzhikevichNode(tau=2.0, a=0.1, b=0.2),
        "klif": lambda: neuron.KLIFNode(tau=2.0),
        "cuba_lif": lambda: neuron.CUBALIFNode(),
        # store_v_seq: SpikingJelly runs LIAF's own step in mode 'm' (otherwise LIF's)
        "liaf": lambda: neuron.LIAFNode(
            act=nn.ReLU(), threshold_related=True, tau=2.0, store_v_seq=True
        ),
        "plif": lambda: neuron.ParametricLIFNode(init_tau=2.0),
    }


def _model(family: str) -> nn.Sequential:
    from spikingjelly.activation_based import functional

    net = nn.Sequential(FAMILIES[family]())
    functional.set_step_mode(net, "m")
    return net


def _bench(fn: Callable[[torch.Tensor], Any], mode: str, before: Callable[[], None]) -> Bench:
    if mode == "fwd":

        def run(x: torch.Tensor) -> Any:
            with torch.no_grad():
                return fn(x)

        return Bench(fn=run, before=before)

    def train(x: torch.Tensor) -> Any:
        y = fn(x)
        y.sum().backward()
        return y

    return Bench(fn=train, before=before, convert=lambda x: x.requires_grad_(True))


def benches(
    family: str, case: Case, mode: str, cache_dir: str
) -> tuple[dict[str, Bench], dict[str, float]]:
    """SpikingJelly's eager module and snncc's cpu program for one family and size, and the
    mean of each one's output over the whole sequence (equal work: equal outputs)."""
    import warnings

    from spikingjelly.activation_based import functional

    import snncc

    net = _model(family)

    def sj_before() -> None:
        functional.reset_net(net)
        net.zero_grad(set_to_none=True)

    x = torch.rand(case.input_shape) * 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = snncc.compile(net, x, backend="cpu", cache_dir=cache_dir)
    program_params = [p for p in cm.program.params.values() if p.requires_grad]
    functional.reset_net(net)
    with torch.no_grad():
        means = {"spikingjelly": float(net(x).mean()), "snncc cpu": float(cm(x).mean())}
    functional.reset_net(net)

    def snncc_before() -> None:
        for p in program_params:
            p.grad = None

    return {
        "spikingjelly": _bench(net, mode, sj_before),
        "snncc cpu": _bench(cm, mode, snncc_before),
    }, means


def parse_size(text: str) -> Case:
    t, b, n = (int(v) for v in text.split("x"))
    return Case(workload="F", label=f"T={t} B={b} N={n}", T=t, B=b, shape=(n,), neurons=b * n)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    protocol = Protocol(repeat=args.repeat, max_warmup_s=3.0)
    before = load()
    records = []
    cache_dir = tempfile.mkdtemp(prefix="snncc-families-")
    for family in args.families.split(","):
        for size in args.sizes.split(","):
            case = parse_size(size)
            for mode in ("fwd", "fwd+bwd"):
                peers, means = benches(family, case, mode, cache_dir)
                for peer, bench in peers.items():
                    rec = measure(bench, case, mode, "cpu", protocol)
                    rec.update(
                        family=family,
                        size=case.label,
                        mode=mode,
                        peer=peer,
                        output_mean=means[peer],
                    )
                    records.append(rec)
                    print(
                        f"{family:11s} {case.label:20s} {mode:8s} {peer:13s} "
                        f"{rec['median_ms']:9.3f} ms  [{rec['p25_ms']:.3f}, {rec['p75_ms']:.3f}]"
                        f"  output mean {means[peer]:.4f}",
                        flush=True,
                    )
    return {
        "what": "SpikingJelly 2.0 families: snncc cpu fused kernel vs SpikingJelly eager (CPU)",
        "threads": args.threads,
        "machine": machine("cpu"),
        "versions": versions(),
        "load_before": before,
        "load_after": load(),
        "records": records,
    }


def markdown(report: dict[str, Any]) -> str:
    lb, la = report["load_before"], report["load_after"]
    lines = [
        "# SpikingJelly 2.0 families on the CPU: snncc's fused kernel vs SpikingJelly eager",
        "",
        f"{report['machine'].get('cpu', '?')}, {lb['nproc']} usable CPUs, "
        f"{report['threads']} torch/OpenMP thread(s); load average "
        f"{' / '.join(f'{v:.2f}' for v in lb['loadavg'])} before, "
        f"{' / '.join(f'{v:.2f}' for v in la['loadavg'])} after (a shared machine: other "
        "work ran alongside). Median ms per step [quartiles]; speed-up = SpikingJelly / snncc; "
        "output mean: SpikingJelly's output averaged over the sequence (snncc's is equal: "
        "recorded per peer in the JSON).",
        "",
        "| family | size | mode | SpikingJelly eager | snncc cpu | speed-up | output mean |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {(r["family"], r["size"], r["mode"], r["peer"]): r for r in report["records"]}
    seen = []
    for r in report["records"]:
        key = (r["family"], r["size"], r["mode"])
        if key not in seen:
            seen.append(key)
    for family, size, mode in seen:
        sj = by.get((family, size, mode, "spikingjelly"))
        ours = by.get((family, size, mode, "snncc cpu"))

        def cell(r: dict | None) -> str:
            if r is None:
                return "n/a"
            return f"{r['median_ms']:.3f} [{r['p25_ms']:.3f}, {r['p75_ms']:.3f}]"

        ratio = f"{sj['median_ms'] / ours['median_ms']:.2f}x" if sj and ours else "n/a"
        mean = f"{sj['output_mean']:.4f}" if sj else "n/a"
        lines.append(
            f"| {family} | {size} | {mode} | {cell(sj)} | {cell(ours)} | {ratio} | {mean} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="qif,eif,izhikevich,klif,cuba_lif,liaf,plif")
    p.add_argument("--sizes", default="16x8x1024,64x16x4096", help="TxBxN,...")
    # one thread: on a shared 2-core machine two OpenMP threads wait on each other's time
    # slices (a 0.2 ms kernel measured 16 ms under load 4.6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    FAMILIES.update(_families())
    start = time.time()
    report = run(args)
    report["seconds"] = round(time.time() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families_cpu.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (out / "families_cpu.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
