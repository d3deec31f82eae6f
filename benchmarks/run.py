"""The snncc benchmark suite (L1, L2, M1, C1 of shared/reference/anchors.md) against the peers.

    python benchmarks/run.py --suite L1,L2,M1,C1 --device cuda --out results/
    python benchmarks/run.py --suite L1,M1 --device cpu --small --out results/

Every peer runs in its own worker process (SpikingJelly picks its neuron
implementation from the environment at import; jax must not pre-allocate the
GPU; one peer's memory never counts against the next), one after the other,
on the same machine in the same run. Each (workload case, mode) is timed
forward-only and forward+backward: warm-up, then the median of ``--repeat``
(>= 20) runs, with CUDA events on a GPU and ``time.perf_counter`` on the CPU,
plus peak GPU memory. A peer that is not installed or cannot run a case is
recorded as ``n/a: reason``. The whole run keeps to ``--budget`` seconds
(default 450: under 8 minutes with start-up), skipping what does not fit.

Writes ``bench_<device>.json`` (every record and the machine), ``.md`` (the
tables, with snncc's speed-up over the fastest SpikingJelly and, for
L1/L2, the memory-bandwidth floor) and ``.png`` (a chart) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import SUITE, bytes_moved, cases, expected_ms, flops, fmt_ms  # noqa: E402

MODES = ("fwd", "fwd+bwd")


# ====================================================================== worker
def worker(args: argparse.Namespace) -> int:
    """Run every case of the suite for some peers (comma-separated); write JSON to ``args.result``."""
    records: list[dict[str, Any]] = []

    def save() -> None:
        Path(args.result).write_text(json.dumps(records, indent=1))

    if args.worker == "roofline":
        records.append(roofline(args.device))
        save()
        return 0
    for peer in args.worker.split(","):
        _run_peer(args, peer, records, save)
    save()
    return 0


def _run_peer(args: argparse.Namespace, peer: str, records: list, save) -> None:
    """Time every (case, mode) of the suite for one peer, appending one record each."""
    import torch
    from peers import NA, PEERS, cleanup, measure

    make = PEERS[peer][0]
    for wl in args.suite.split(","):
        for case in cases(wl, args.small):
            for mode in MODES:
                rec: dict[str, Any] = {
                    "peer": peer,
                    "workload": wl,
                    "case": case.label,
                    "mode": mode,
                }
                if time.time() > args.deadline:
                    rec["status"] = "n/a: the run's time budget was spent"
                    records.append(rec)
                    continue
                t0 = time.time()
                try:
                    bench = make(case, mode, args.device)
                    rec.update(measure(bench, case, mode, args.device, args.warmup, args.repeat))
                    rec["status"] = "ok"
                except NA as exc:
                    rec["status"] = f"n/a: {exc}"
                except ModuleNotFoundError as exc:
                    rec["status"] = f"n/a: {exc.name} is not installed"
                except torch.cuda.OutOfMemoryError:
                    rec["status"] = "n/a: out of GPU memory"
                except Exception as exc:  # a peer's failure is a result, not a crash of the suite
                    rec["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                    rec["traceback"] = traceback.format_exc()[-3000:]
                rec["wall_s"] = round(time.time() - t0, 2)
                records.append(rec)
                save()
                print(_line(rec), flush=True)
                bench = None
                cleanup()


def roofline(device: str) -> dict[str, Any]:
    """Measured ceilings on this device: device-to-device copy (bytes read + written) and fp32 GEMM."""
    import torch

    rec: dict[str, Any] = {"peer": "roofline", "status": "ok"}
    if device != "cuda":
        rec["status"] = "n/a: ceilings are measured on a GPU only"
        return rec
    props = torch.cuda.get_device_properties(0)
    rec.update(device=props.name, sm_count=props.multi_processor_count)
    n = 1 << 28  # 1 GiB of fp32
    a = torch.rand(n, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(25):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    rec["copy_bytes_per_s"] = 2 * 4 * n / (times[len(times) // 2] / 1e3)
    del a, b
    m = 8192
    x = torch.rand(m, m, device="cuda")
    y = torch.rand(m, m, device="cuda")
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for _ in range(3):
            x @ y
        times = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            x @ y
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    times.sort()
    rec["fp32_gemm_flops_per_s"] = 2 * m**3 / (times[len(times) // 2] / 1e3)
    return rec


def _line(rec: dict[str, Any]) -> str:
    what = f"{rec['peer']:18s} {rec['workload']} {rec['case']:18s} {rec['mode']:8s}"
    if rec.get("status") != "ok":
        return f"{what} {rec.get('status')}"
    peak = rec.get("peak_mib")
    mem = f"  peak {peak:.0f} MiB" if peak else ""
    return f"{what} {fmt_ms(rec['median_ms']):>9s} ms{mem}"


# ================================================================ orchestrator
def versions() -> dict[str, str]:
    """Versions of everything timed (None: not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in (
        "snncc",
        "torch",
        "triton",
        "cupy-cuda12x",
        "cupy-cuda13x",
        "jax",
        "jaxlib",
        "spikingjelly",
        "snntorch",
        "norse",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            sm_count=p.multi_processor_count,
            capability=f"{p.major}.{p.minor}",
            cuda=torch.version.cuda,
        )
    return info


def write_report(report: dict, out: Path) -> Path:
    """``bench_<device>[_small].json/.md/.png`` of one run into ``out``; returns the stem."""
    stem = out / f"bench_{report['device']}{'_small' if report['small'] else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    try:
        chart(report, stem.with_suffix(".png"))
    except ModuleNotFoundError as exc:
        print(f"no chart: {exc.name} is not installed", file=sys.stderr)
    return stem


def render(path: str, out: str) -> int:
    """Re-write the markdown table and the chart of a saved run (no timing)."""
    report = json.loads(Path(path).read_text())
    stem = Path(out) / Path(path).stem
    Path(out).mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(markdown(report))
    try:
        chart(report, stem.with_suffix(".png"))
    except ModuleNotFoundError as exc:
        print(f"no chart: {exc.name} is not installed", file=sys.stderr)
    print(f"wrote {stem}.md/.png from {path}")
    return 0


def orchestrate(args: argparse.Namespace) -> int:
    from peers import CPU_PEERS, GPU_PEERS, PEERS

    start = time.time()
    deadline = start + args.budget
    peers = (
        args.peers.split(",")
        if args.peers
        else list(GPU_PEERS if args.device == "cuda" else CPU_PEERS)
    )
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        print(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)}", file=sys.stderr)
        return 2
    for wl in args.suite.split(","):
        if wl not in SUITE:
            print(f"unknown workload {wl!r}; the suite is {', '.join(SUITE)}", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    logs = out / f"bench_{args.device}_logs"
    logs.mkdir(exist_ok=True)
    # peers with the same environment share one worker process (start-up costs seconds each)
    groups: list[list[str]] = [["roofline"]]
    for peer in peers:
        if len(groups) > 1 and PEERS[groups[-1][0]][1] == PEERS[peer][1]:
            groups[-1].append(peer)
        else:
            groups.append([peer])
    for group in groups:
        peer = ",".join(group)
        env = dict(os.environ)
        if peer != "roofline":
            env.update(PEERS[group[0]][1])
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            result = fh.name
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            peer,
            "--suite",
            args.suite,
            "--device",
            args.device,
            "--repeat",
            str(args.repeat),
            "--warmup",
            str(args.warmup),
            "--deadline",
            str(deadline),
            "--result",
            result,
        ] + (["--small"] if args.small else [])
        left = deadline - time.time()
        print(f"== {peer} ({max(left, 0):.0f} s of budget left)", flush=True)
        status = None
        with open(logs / f"{group[0]}{'+' if len(group) > 1 else ''}.log", "w") as log:
            try:
                proc = subprocess.run(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=max(left, 1) + 60
                )
                if proc.returncode != 0:
                    status = f"error: worker exited with status {proc.returncode} (see {log.name})"
            except subprocess.TimeoutExpired:
                status = "n/a: the run's time budget was spent"
        try:
            got = json.loads(Path(result).read_text() or "[]")
        except (OSError, ValueError):
            got = []
        Path(result).unlink(missing_ok=True)
        done = {(r["peer"], r["workload"], r["case"], r["mode"]) for r in got if "workload" in r}
        if status and peer != "roofline":  # cases the worker never reached
            missing = [
                (member, w, c, m)
                for member in group
                for w in args.suite.split(",")
                for c in cases(w, args.small)
                for m in MODES
            ]
            for member, wl, case, mode in missing:
                if (member, wl, case.label, mode) not in done:
                    got.append(
                        {
                            "peer": member,
                            "workload": wl,
                            "case": case.label,
                            "mode": mode,
                            "status": status,
                        }
                    )
        for r in got:
            print("   " + _line(r) if "workload" in r else f"   roofline: {r}", flush=True)
        records.extend(got)
    report = {
        "suite": args.suite.split(","),
        "device": args.device,
        "small": args.small,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": round(time.time() - start, 1),
        "machine": machine(args.device),
        "versions": versions(),
        "peers": {p: PEERS[p][2] for p in peers},
        "records": records,
    }
    stem = write_report(report, out)
    print(stem.with_suffix(".md").read_text())
    print(f"wrote {stem}.json/.md/.png in {report['wall_s']} s")
    return 0


# ===================================================================== report
def _by_key(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    table: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if "workload" in r:
            table.setdefault((r["workload"], r["case"], r["mode"]), {})[r["peer"]] = r
    return table


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("status") == "ok":
        return fmt_ms(r["median_ms"])
    return r.get("status", "-").split(":")[0]  # "n/a" / "error"; reasons listed below


def markdown(report: dict) -> str:
    recs = report["records"]
    roof = next((r for r in recs if r.get("peer") == "roofline" and r.get("status") == "ok"), {})
    peers = list(report["peers"])
    m = report["machine"]
    dev = m.get("gpu") or f"CPU ({m.get('cpu_count')} cores)"
    lines = [
        f"# snncc benchmark suite on {dev}",
        "",
        f"{report['date']}; suite {', '.join(report['suite'])}"
        f"{' (small sizes)' if report['small'] else ''}; median of {report['repeat']} runs "
        f"after {report['warmup']} warm-up runs; times in ms; whole run {report['wall_s']} s.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
    ]
    if roof:
        lines.append(
            f"Measured ceilings: copy {roof['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), "
            f"fp32 GEMM {roof['fp32_gemm_flops_per_s'] / 1e12:.1f} TFLOP/s."
        )
    lines.append("")
    table = _by_key(recs)
    bw = roof.get("copy_bytes_per_s")
    sj = [p for p in ("sj-triton", "sj-torch") if p in peers]
    for wl in report["suite"]:
        keys = [k for k in table if k[0] == wl]
        if not keys:
            continue
        lines += [f"## {wl}", ""]
        ours_prefix = "snncc-cuda" if report["device"] == "cuda" else "snncc-cpu"
        head = ["case", "mode", *peers, f"{ours_prefix} vs best SJ", "floor"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for key in keys:
            row = table[key]
            cells = [key[1], key[2], *(_cell(row.get(p)) for p in peers)]
            best_sj = min(
                (row[p]["median_ms"] for p in sj if row.get(p, {}).get("status") == "ok"),
                default=None,
            )
            ours = min(
                (
                    r["median_ms"]
                    for p, r in row.items()
                    if p.startswith(ours_prefix) and r.get("status") == "ok"
                ),
                default=None,
            )
            cells.append(f"{best_sj / ours:.2f}x" if best_sj and ours else "-")
            from workloads import cases as _cases

            case = next(c for c in _cases(wl, report["small"]) if c.label == key[1])
            floor = expected_ms(bytes_moved(case, key[2]), bw)
            if (
                floor is None
                and flops(case)
                and roof.get("fp32_gemm_flops_per_s")
                and key[2] == "fwd"
            ):
                floor = flops(case) / roof["fp32_gemm_flops_per_s"] * 1e3
            cells.append(fmt_ms(floor) if floor else "-")
            lines.append("| " + " | ".join(cells) + " |")
        mem = [
            f"{key[1]}: "
            + ", ".join(
                f"{p} {table[key][p]['peak_mib']:.0f}"
                for p in peers
                if table[key].get(p, {}).get("status") == "ok" and table[key][p].get("peak_mib")
            )
            for key in keys
            if key[2] == "fwd+bwd"
        ]
        mem = [m for m in mem if not m.endswith(": ")]
        if mem:
            lines += ["", "Peak GPU memory in training (MiB): " + "; ".join(mem) + "."]
        lines.append("")
    grouped: dict[tuple[str, str], list[str]] = {}
    for r in recs:
        if "workload" in r and r.get("status") == "ok":
            for note in r.get("notes", []):
                where = f"{r['workload']} {r['case']} {r['mode']}"
                grouped.setdefault((r["peer"], note), []).append(where)
    notes = [f"{peer} ({'; '.join(where)}): {note}" for (peer, note), where in grouped.items()]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    reasons = sorted(
        {
            f"{r['peer']}: {r['status']}"
            for r in recs
            if "workload" in r and r.get("status", "ok") != "ok"
        }
    )
    if reasons:
        lines += ["## Not measured", ""] + [f"- {r}" for r in reasons] + [""]
    lines += [
        "Floors: L1/L2 = the fewest bytes a fused layer must move (each input read and each "
        "output written once, fp32 spikes; training also saves and re-reads the membrane) over "
        "the measured copy bandwidth; M1 forward = its GEMM FLOPs over the measured fp32 GEMM "
        "rate. 'vs best SJ' divides the fastest SpikingJelly time by the fastest snncc variant "
        "named in that column's header, in the same row.",
        "",
        "Peers: " + "; ".join(f"{p} = {d}" for p, d in report["peers"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _by_key(report["records"])
    keys = list(table)
    peers = [
        p for p in report["peers"] if any(table[k].get(p, {}).get("status") == "ok" for k in keys)
    ]
    if not keys or not peers:
        return
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(keys) + 2), 5))
    colors = plt.get_cmap("tab20")  # one colour per peer: tab10 repeats after ten
    width = 0.8 / len(peers)
    for i, p in enumerate(peers):
        xs, ys = [], []
        for j, k in enumerate(keys):
            r = table[k].get(p)
            if r and r.get("status") == "ok":
                xs.append(j + i * width)
                ys.append(r["median_ms"])
        ax.bar(xs, ys, width, label=p, color=colors(i % colors.N))
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms, log scale)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    ax.set_xticklabels(
        [f"{k[0]} {k[1]}\n{k[2]}" for k in keys], fontsize=7, rotation=45, ha="right"
    )
    m = report["machine"]
    ax.set_title(
        f"snncc vs peers on {m.get('gpu') or 'CPU'}{' (small sizes)' if report['small'] else ''}"
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ======================================================================= main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--suite", default=",".join(SUITE), help="workloads, e.g. L1,L2,M1,C1")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--small", action="store_true", help="small sizes (a CPU finishes in minutes)")
    p.add_argument("--out", default="results", help="folder for bench_<device>.json/.md/.png")
    p.add_argument("--peers", default=None, help="comma-separated subset of peers")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per case (median; >= 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run")
    p.add_argument(
        "--render", metavar="JSON", help="re-write the .md and .png of a saved run into --out"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 20 and not args.worker:
        p.error("--repeat must be >= 20 (the suite reports medians of at least 20 runs)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.out)
    if args.worker:
        return worker(args)
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
