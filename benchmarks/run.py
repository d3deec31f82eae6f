"""The snncc benchmark suite (L1, L2, M1, C1 of shared/reference/anchors.md) against the peers.

    python benchmarks/run.py --suite L1,L2,M1,C1 --device cuda --out results/
    python benchmarks/run.py --suite L1,L2,M1,C1 --device cpu --small --rounds 3 --out results/

Like for like (issue 17). Every peer runs in its own worker process, with its
memory peak reset after warm-up and the previous case freed (snnTorch's
class-level neuron list included); jax, whose peak cannot be reset, gets a
fresh process per case on a GPU. Each worker times its cases in a shuffled
order (seeded); ``--rounds N`` runs every worker N times (later rounds in a
shuffled peer order) and pools the samples. Every peer is timed the same way
(benchmarks/peers.py: host clock around synchronised blocks of back-to-back
steps, warm-up until stable). Ratios divide a SpikingJelly time by the snncc
time of the same configuration only (fp32 eager, CUDA graph, bf16 autocast,
tf32); there is no best-of-variants headline. A peer that is not installed or
cannot run a case is recorded as ``n/a: reason``. The whole run keeps to
``--budget`` seconds, skipping what does not fit (peers run in priority order).

Writes ``bench_<device>[_small].json`` (every record with its samples, the
machine and its load average), ``.md`` (the tables: median [quartiles] per
peer, the like-for-like ratios with their spread, the fastest fp32 peer, the
floors with the bytes or FLOPs they count) and ``.png`` into ``--out``.
``--render JSON`` rewrites the ``.md`` and ``.png`` of a saved run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import LAYER_BYTES, SUITE, cases, floor, fmt_ms  # noqa: E402

MODES = ("fwd", "fwd+bwd")


def _items(suite: str, small: bool) -> list[tuple[str, Any, str]]:
    return [(wl, c, m) for wl in suite.split(",") for c in cases(wl, small) for m in MODES]


def _key(wl: str, label: str, mode: str) -> str:
    return f"{wl}|{label}|{mode}"


# ====================================================================== worker
def worker(args: argparse.Namespace) -> int:
    """Run one peer's cases (all, or ``--only`` one), shuffled; write JSON to ``--result``."""
    records: list[dict[str, Any]] = []

    def save() -> None:
        Path(args.result).write_text(json.dumps(records, indent=1))

    if args.worker == "roofline":
        records.append(roofline(args.device))
    else:
        _run_peer(args, args.worker, records, save)
    save()
    return 0


def _run_peer(args: argparse.Namespace, peer: str, records: list, save) -> None:
    """Time the (case, mode) items of the suite for one peer, appending one record each."""
    import torch
    from peers import NA, PEERS, Protocol, cleanup, device_warmup, measure, set_precision

    spec = PEERS[peer]
    set_precision(spec.config)
    device_warmup(args.device)
    items = _items(args.suite, args.small)
    if args.only:
        items = [it for it in items if _key(it[0], it[1].label, it[2]) == args.only]
    random.Random(args.seed).shuffle(items)
    protocol = Protocol(repeat=args.repeat, min_warmup_runs=args.warmup, min_warmup_s=args.warmup_s)
    for order, (wl, case, mode) in enumerate(items):
        rec: dict[str, Any] = {
            "peer": peer,
            "workload": wl,
            "case": case.label,
            "mode": mode,
            "round": args.round,
            "order": order,
        }
        if time.time() > args.deadline:
            rec["status"] = "n/a: the run's time budget was spent"
            records.append(rec)
            continue
        cleanup()
        if args.device == "cuda":
            rec["baseline_mib"] = torch.cuda.memory_allocated() / 2**20
        t0 = time.time()
        bench = None
        try:
            bench = spec.make(case, mode, args.device)
            rec.update(measure(bench, case, mode, args.device, protocol))
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
        bench = None  # noqa: F841 (freed before the next case's baseline)
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
    warm = "" if rec.get("warmup_stable", True) else "  (warm-up not stable)"
    return f"{what} {_spread_cell(rec):>24s} ms{mem}{warm}"


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


def load() -> dict[str, Any]:
    """The machine's load right now: load averages, usable CPUs, and ``uptime``'s line."""
    one, five, fifteen = os.getloadavg()
    try:
        up = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        up = None
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": [one, five, fifteen],
        "nproc": len(os.sched_getaffinity(0)),
        "uptime": up,
    }


#: environment variables that change a peer's results or timing (MKL's reproducibility mode:
#: its strict CNR slowed SpikingJelly's loaded M1 steps; thread counts and wait policies)
TIMING_ENV = ("MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    info["env"] = {k: os.environ[k] for k in TIMING_ENV if k in os.environ}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(
                ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
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


def write_report(report: dict, out: Path, pair: str | None = None) -> Path:
    """``bench_<device>[_small].json/.md/.png`` of one run into ``out``; returns the stem.
    A run of a ``--compete`` pair (``pair``: its load, or "idle") is written as
    ``..._compete-<pair>``, so the pair never overwrites a plain run's report."""
    stem = out / f"bench_{report['device']}{'_small' if report['small'] else ''}"
    if pair:
        stem = stem.with_name(f"{stem.name}_compete-{pair}")
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


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that gives OpenMP (torch's CPU ops, snncc's cpu kernels) and MKL
    ``threads`` CPU threads in a worker (None: the libraries' own choice).

    XLA's CPU client takes no such setting: jax 0.10 sizes its thread pool from the
    CPUs the process may run on and ignores ``--xla_cpu_multi_thread_eigen=false``
    (measured on the 2-core dev VM: a jitted 4096x2048 by 2048x2048 matmul with that
    flag used 1.94 s of CPU per second). :func:`worker_cpus` pins the worker instead.
    """
    if not threads:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def worker_cpus(threads: int | None) -> list[int] | None:
    """The CPUs a worker is pinned to under ``--threads``: the first ``threads`` this
    process may use (None: no pinning).

    Pinning holds every library of every peer to the same share, whatever its own
    thread settings: the same for every peer, so that a loaded machine slows each peer
    alike instead of stalling the multi-threaded ones at their barriers, and so that no
    peer runs on more cores than the table says.
    """
    if not threads:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[: max(1, threads)]


def pin_worker(cpus: str | None) -> None:
    """Pin this worker to ``cpus`` ("0,1") before any library starts its threads."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def _worker_env(peer: str, threads: int | None = None) -> dict[str, str]:
    """The worker's environment: the peer's own settings; sj-native imports the native build."""
    from peers import PEERS

    spec = PEERS[peer]
    env = {**os.environ, **spec.env, **thread_env(threads)}
    native = os.environ.get("SJ_NATIVE_DIR")
    if spec.sj_native and native:
        import sj_native

        site = str(sj_native.site_dir(native))
        env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def plan(args: argparse.Namespace, peers: list[str]) -> list[dict[str, Any]]:
    """The worker processes to start, in order: one per (round, peer), or per case where needed."""
    from peers import PEERS

    jobs = []
    for rnd in range(args.rounds):
        order = list(peers)
        if rnd > 0:  # the first round keeps the priority order the budget relies on
            random.Random(args.seed * 1000 + rnd).shuffle(order)
        for peer in order:
            seed = args.seed * 1000 + rnd * 100 + peers.index(peer)
            if PEERS[peer].process_per_case and args.device == "cuda":
                items = _items(args.suite, args.small)
                random.Random(seed).shuffle(items)
                jobs += [
                    {"peer": peer, "round": rnd, "seed": seed, "only": _key(w, c.label, m)}
                    for w, c, m in items
                ]
            else:
                jobs.append({"peer": peer, "round": rnd, "seed": seed, "only": None})
    return jobs


def orchestrate(
    args: argparse.Namespace, compete: str | None = None, pair: str | None = None
) -> int | Path:
    """Run every worker (beside the ``compete`` load, if any); the report's stem, or an
    exit status where the arguments are wrong (``pair``: :func:`write_report`'s)."""
    from compete import CompetingLoad
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
    logs = out / f"bench_{args.device}_logs"
    logs.mkdir(exist_ok=True)
    load_start = load()
    if compete:
        print(f"== beside a competing load: {compete}", flush=True)
    print(f"== load at start: {load_start['uptime']} (nproc {load_start['nproc']})", flush=True)
    records: list[dict[str, Any]] = []
    cpus = worker_cpus(args.threads)
    jobs = [{"peer": "roofline", "round": 0, "seed": 0, "only": None}] + plan(args, peers)
    for n, job in enumerate(jobs):
        peer = job["peer"]
        env = dict(os.environ) if peer == "roofline" else _worker_env(peer, args.threads)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            result = fh.name
        cmd = (
            [
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
                "--warmup-s",
                str(args.warmup_s),
                "--deadline",
                str(deadline),
                "--round",
                str(job["round"]),
                "--seed",
                str(job["seed"]),
                "--result",
                result,
            ]
            + (["--small"] if args.small else [])
            + (["--only", job["only"]] if job["only"] else [])
            + (["--cpus", ",".join(map(str, cpus))] if cpus and peer != "roofline" else [])
        )
        left = deadline - time.time()
        what = f"{peer} round {job['round'] + 1}" + (f" {job['only']}" if job["only"] else "")
        print(f"== {what} ({max(left, 0):.0f} s of budget left)", flush=True)
        status = None
        with open(logs / f"{n:03d}_{peer}_r{job['round'] + 1}.log", "w") as log:
            if left <= 0 and peer != "roofline":
                status = "n/a: the run's time budget was spent"
            else:
                try:
                    with CompetingLoad(compete) if compete else contextlib.nullcontext():
                        proc = subprocess.run(
                            cmd,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            timeout=max(left, 1) + 60,
                        )
                    if proc.returncode != 0:
                        status = (
                            f"error: worker exited with status {proc.returncode} (see {log.name})"
                        )
                except subprocess.TimeoutExpired:
                    status = "n/a: the run's time budget was spent"
        try:
            got = json.loads(Path(result).read_text() or "[]")
        except (OSError, ValueError):
            got = []
        Path(result).unlink(missing_ok=True)
        done = {_key(r["workload"], r["case"], r["mode"]) for r in got if "workload" in r}
        if status and peer != "roofline":  # cases the worker never reached
            for wl, case, mode in _items(args.suite, args.small):
                key = _key(wl, case.label, mode)
                if key not in done and job["only"] in (None, key):
                    got.append(
                        {
                            "peer": peer,
                            "workload": wl,
                            "case": case.label,
                            "mode": mode,
                            "round": job["round"],
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
        "protocol": {
            "clock": "host perf_counter around synchronised blocks of back-to-back steps",
            "repeat": args.repeat,
            "rounds": args.rounds,
            "seed": args.seed,
            "min_warmup_runs": args.warmup,
            "min_warmup_s": args.warmup_s,
            "threads": args.threads,
            "cpus": cpus,
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": round(time.time() - start, 1),
        "machine": machine(args.device),
        "load": {"start": load_start, "end": load()},
        "versions": versions(),
        "peers": {
            p: {"description": PEERS[p].description, "config": PEERS[p].config} for p in peers
        },
        "records": records,
        "compete": compete,
    }
    if os.environ.get("SJ_NATIVE_DIR") and "sj-native" in peers:
        build = Path(os.environ["SJ_NATIVE_DIR"]) / "build.json"
        if build.is_file():
            report["sj_native_build"] = json.loads(build.read_text())
    stem = write_report(report, out, pair)
    print(stem.with_suffix(".md").read_text())
    print(f"wrote {stem}.json/.md/.png in {report['wall_s']} s")
    return stem


def compare_loads(idle: dict, loaded: dict) -> str:
    """Markdown: every snncc peer's median and its ratio to each other peer, idle and loaded."""

    def medians(report: dict) -> dict[tuple[str, str, str, str], float]:
        """Each row's median over its rounds' pooled samples, as the report's tables give it
        (not one round's: with ``--rounds`` a row has a record per round)."""
        rounds: dict[tuple[str, str, str, str], list[dict]] = {}
        for r in report["records"]:
            if "workload" in r:  # not the roofline's note
                rounds.setdefault((r["workload"], r["case"], r["mode"], r["peer"]), []).append(r)
        pooled = {key: combine(recs) for key, recs in rounds.items()}
        return {key: c["median_ms"] for key, c in pooled.items() if "median_ms" in c}

    a, b = medians(idle), medians(loaded)
    lines = [
        f"## Idle and beside a competing load ({loaded['compete']})",
        "",
        f"load average: idle run {idle['load']['start']['uptime']}; "
        f"loaded run {loaded['load']['start']['uptime']}",
        "",
        "| workload | case | mode | peer | idle ms | loaded ms | slowdown |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(a.keys() & b.keys()):
        lines.append(
            f"| {' | '.join(key)} | {a[key]:.3f} | {b[key]:.3f} | {b[key] / a[key]:.2f}x |"
        )
    return "\n".join(lines)


# ===================================================================== report
def combine(recs: list[dict]) -> dict[str, Any]:
    """One peer's records of one row (one per round) as one: samples pooled across rounds.

    An error in any round is the row's result (a failure must show); rounds that the
    time budget did not reach are left out, and the row says how many ran.
    """
    from peers import spread

    ok = [r for r in recs if r.get("status") == "ok"]
    errors = [r for r in recs if str(r.get("status", "")).startswith("error")]
    if errors or not ok:
        bad = (errors or [r for r in recs if r.get("status") != "ok"] or recs)[0]
        return {"status": bad.get("status", "-"), "rounds": len(ok), "of_rounds": len(recs)}
    out: dict[str, Any] = {"status": "ok", "rounds": len(ok), "of_rounds": len(recs)}
    samples = [s for r in ok for s in r.get("samples_ms", [])]
    if samples:
        out.update(spread(samples))
        out["round_medians"] = [r["median_ms"] for r in ok]
    else:  # a run from before the like-for-like protocol: its median only
        out["median_ms"] = ok[0]["median_ms"]
    peaks = [r["peak_mib"] for r in ok if r.get("peak_mib")]
    out["peak_mib"] = max(peaks) if peaks else None
    bases = [r["baseline_mib"] for r in ok if r.get("baseline_mib") is not None]
    out["baseline_mib"] = max(bases) if bases else None
    out["warmup_stable"] = all(r.get("warmup_stable", True) for r in ok)
    out["output_spikes"] = ok[0].get("output_spikes")
    out["notes"] = ok[0].get("notes", [])
    return out


def _rows(records: list[dict], small: bool) -> dict[tuple, dict[str, dict]]:
    """(workload, case, mode) -> peer -> combined record, in the suite's row order."""
    raw: dict[tuple, dict[str, list]] = {}
    for r in records:
        if "workload" in r:
            raw.setdefault((r["workload"], r["case"], r["mode"]), {}).setdefault(
                r["peer"], []
            ).append(r)
    suite = ",".join(w for w in SUITE if any(k[0] == w for k in raw))
    order = (
        {(w, c.label, m): i for i, (w, c, m) in enumerate(_items(suite, small))} if suite else {}
    )
    keys = sorted(raw, key=lambda k: order.get(k, len(order)))
    return {k: {p: combine(raw[k][p]) for p in raw[k]} for k in keys}


def _spread_cell(r: dict) -> str:
    if "p25_ms" in r:
        return f"{fmt_ms(r['median_ms'])} [{fmt_ms(r['p25_ms'])}-{fmt_ms(r['p75_ms'])}]"
    return fmt_ms(r["median_ms"])


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("status") == "ok":
        part = r.get("rounds", 1) < r.get("of_rounds", 1)
        return _spread_cell(r) + (f" ({r['rounds']} of {r['of_rounds']} rounds)" if part else "")
    return r.get("status", "-").split(":")[0]  # "n/a" / "error"; reasons listed below


def _peer_configs(report: dict) -> dict[str, str]:
    """peer -> configuration: stored in new reports; looked up for runs saved before."""
    from peers import PEERS

    out = {}
    for p, v in report["peers"].items():
        if isinstance(v, dict):
            out[p] = v.get("config", "fp32")
        else:
            out[p] = PEERS[p].config if p in PEERS else "?"
    return out


def ratio_cell(ours: dict | None, theirs: dict[str, dict]) -> str:
    """SpikingJelly time / snncc time (> 1: snncc faster) against the fastest SJ that ran.

    The range divides SJ's quartiles by snncc's opposite quartiles: where it
    spans 1.00x the two are not told apart by this run.
    """
    if not ours or ours.get("status") != "ok":
        return "-"
    ran = {p: r for p, r in theirs.items() if r.get("status") == "ok"}
    if not ran:
        return "-"
    name, best = min(ran.items(), key=lambda kv: kv[1]["median_ms"])
    ratio = best["median_ms"] / ours["median_ms"]
    who = f" {name.removeprefix('sj-')}" if len(theirs) > 1 else ""
    if "p25_ms" in ours and "p25_ms" in best:
        lo, hi = best["p25_ms"] / ours["p75_ms"], best["p75_ms"] / ours["p25_ms"]
        return f"{ratio:.2f}x ({lo:.2f}-{hi:.2f}){who}"
    return f"{ratio:.2f}x{who}"


def _fastest(row: dict[str, dict], configs: dict[str, str]) -> str:
    """The fastest fp32 peer of a row; ties (overlapping quartiles) named with it."""
    ran = sorted(
        (r["median_ms"], p)
        for p, r in row.items()
        if r.get("status") == "ok" and configs.get(p) == "fp32"
    )
    if not ran:
        return "-"
    best = row[ran[0][1]]
    ties = [
        p
        for _, p in ran[1:]
        if "p75_ms" in best and row[p].get("p25_ms", float("inf")) <= best["p75_ms"]
    ]
    return ran[0][1] + (f" (ties {', '.join(ties)})" if ties else "")


def _legacy_banner(report: dict) -> list[str]:
    shared = (
        " (snnTorch's leftover neurons count in Norse's and torch.compile's memory)"
        if "snntorch" in report["peers"]
        else ""
    )
    return [
        "**Recorded before the like-for-like protocol of issue 17; no ratios are shown.** "
        "In this run torch peers were timed with back-to-back CUDA events and jax with a "
        "host clock and a sync per run; peers with the same environment shared one worker "
        f"process{shared}; jax's peak memory was never reset (each figure is the largest "
        "peak of that case and all before it); the fp32 torch peers ran cuDNN convolutions in TF32 "
        "(PyTorch's default), snncc in exact fp32; surrogates differed between peers "
        "(SpikingJelly Sigmoid, snnTorch ATan, Norse SuperSpike, torch.compile Sigmoid); "
        "each case ran 3 warm-up runs, the first case of a worker with a cold GPU. "
        "Cells: the median of 20 runs. The floors are recomputed (training: 16 B per "
        "neuron-step with recompute).",
        "",
    ]


#: (peer, baseline) pairs shown as "peer time / baseline time" (issue 16: the jax backend's
#: Pallas kernels within 1.3x of the cuda backend on L1 and L2)
JAX_VS_CUDA = (("snncc-jax-pallas", "snncc-cuda"),)


def markdown(report: dict) -> str:
    from peers import COMPARISONS

    recs = report["records"]
    roof = next((r for r in recs if r.get("peer") == "roofline" and r.get("status") == "ok"), {})
    peers = list(report["peers"])
    configs = _peer_configs(report)
    legacy = "protocol" not in report
    m = report["machine"]
    dev = m.get("gpu") or f"CPU ({m.get('cpu') or ''}, {m.get('cpu_count')} cores)"
    lines = [f"# snncc benchmark suite on {dev}", ""]
    if legacy:
        lines += [
            f"{report['date']}; suite {', '.join(report['suite'])}"
            f"{' (small sizes)' if report['small'] else ''}; times in ms; whole run "
            f"{report['wall_s']} s.",
            "",
        ] + _legacy_banner(report)
    else:
        pr = report["protocol"]
        lines += [
            f"{report['date']}; suite {', '.join(report['suite'])}"
            f"{' (small sizes)' if report['small'] else ''}; whole run {report['wall_s']} s.",
            "",
            f"Timing (the same for every peer): {pr['clock']} (torch: `cuda.synchronize`; jax: "
            "`block_until_ready` on the block's last output); each step includes the peer's "
            "per-step bookkeeping (state reset, clearing grads); warm-up until two consecutive "
            f"windows agree within 5% (at least {pr['min_warmup_runs']} steps and "
            f"{pr['min_warmup_s']} s); {pr['repeat']} samples per case per round, each the mean "
            "of a block of back-to-back steps lasting >= 5 ms; each peer in its own process "
            "(jax on a GPU: one per case), its cases in a shuffled order (seed "
            f"{pr['seed']}); {pr['rounds']} round(s), samples pooled. Cells: median "
            "[25th-75th percentile] ms.",
        ]
        if pr.get("threads"):
            lines.append(_threads_line(pr, recs))
        ld = report.get("load", {})
        if ld:
            s, e = ld.get("start", {}), ld.get("end", {})
            lines.append(
                f"Machine load: load average (1, 5, 15 min) "
                f"{', '.join(f'{v:.2f}' for v in s.get('loadavg', []))} at the start, "
                f"{', '.join(f'{v:.2f}' for v in e.get('loadavg', []))} at the end; "
                f"{s.get('nproc')} usable CPUs (nproc)."
            )
    if "env" in m:
        shown = ", ".join(f"{k}={v}" for k, v in m["env"].items())
        lines.append(
            f"Environment: {shown or 'none set'} (of {', '.join(TIMING_ENV)}; each worker "
            "inherits it)."
        )
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".")
    if roof:
        lines.append(
            f"Measured ceilings: copy {roof['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), "
            f"fp32 GEMM {roof['fp32_gemm_flops_per_s'] / 1e12:.1f} TFLOP/s."
        )
    build = report.get("sj_native_build")
    if build:
        lines.append(
            f"SpikingJelly native CUDA build: {build.get('status')} ({build.get('seconds')} s)."
        )
    lines.append("")
    comparisons = [] if legacy else [c for c in COMPARISONS if c[1] in peers]
    comparisons = [(lbl, ours, tuple(s for s in sj if s in peers)) for lbl, ours, sj in comparisons]
    comparisons = [c for c in comparisons if c[2]]
    table = _rows(recs, report["small"])
    for wl in report["suite"]:
        keys = [k for k in table if k[0] == wl]
        if not keys:
            continue
        lines += [f"## {wl}", ""]
        head = ["case", "mode", *peers]
        head += [f"{lbl}: SJ / {ours}" for lbl, ours, _ in comparisons]
        head += [f"{a} / {b}" for a, b in JAX_VS_CUDA if a in peers and b in peers]
        head += ([] if legacy else ["fastest fp32"]) + ["floor"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for key in keys:
            row = table[key]
            cells = [key[1], key[2], *(_cell(row.get(p)) for p in peers)]
            for _, ours, sj in comparisons:
                cells.append(ratio_cell(row.get(ours), {p: row[p] for p in sj if p in row}))
            for a, b in JAX_VS_CUDA:
                if a in peers and b in peers:  # time of a / time of b: the goal is <= 1.3x
                    cells.append(ratio_cell(row.get(b), {a: row[a]} if a in row else {}))
            if not legacy:
                cells.append(_fastest(row, configs))
            case = next(c for c in cases(wl, report["small"]) if c.label == key[1])
            fl = floor(case, key[2], roof)
            cells.append(f"{fmt_ms(fl.ms)} ({fl.work})" if fl else "-")
            lines.append("| " + " | ".join(cells) + " |")
        extra = _memory_lines(keys, table, peers) + _check_lines(keys, table, peers, configs)
        if extra:
            lines += [""] + extra
        lines.append("")
    grouped: dict[tuple[str, str], list[str]] = {}
    for key, row in table.items():
        for peer, r in row.items():
            if r.get("status") == "ok":
                for note in r.get("notes", []):
                    grouped.setdefault((peer, note), []).append(f"{key[0]} {key[1]} {key[2]}")
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
    lines += _legend(comparisons, legacy)
    lines += [
        "Peers: "
        + "; ".join(
            f"{p} = {d['description'] if isinstance(d, dict) else d} [{configs[p]}]"
            for p, d in report["peers"].items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def _threads_line(protocol: dict, recs: list[dict]) -> str:
    """What ``--threads`` held every peer to, and the CPU use that shows it held."""
    n = protocol["threads"]
    cpus = protocol.get("cpus")
    line = f"CPU threads: {n} per worker for every peer"
    if cpus is None:  # runs before the pinning: only OpenMP/MKL were set
        return line + " (OpenMP, MKL; XLA's own setting, which jax 0.10 ignores)."
    line += (
        f": each worker pinned to CPU {', '.join(map(str, cpus))} (sched_setaffinity), "
        f"OpenMP and MKL given {n} thread(s)"
    )
    used = [r for r in recs if r.get("status") == "ok" and r.get("cpu_per_wall") is not None]
    if used:
        top = max(used, key=lambda r: r["cpu_per_wall"])
        line += (
            f"; process CPU time over wall time in the timed blocks at most "
            f"{top['cpu_per_wall']:.2f} ({top['peer']}, {top['workload']} {top['case']} "
            f"{top['mode']})"
        )
    return line + "."


def _memory_lines(keys: list[tuple], table: dict, peers: list[str]) -> list[str]:
    mem = []
    for key in keys:
        if key[2] != "fwd+bwd":
            continue
        parts = []
        for p in peers:
            r = table[key].get(p, {})
            if r.get("status") == "ok" and r.get("peak_mib"):
                base = r.get("baseline_mib")
                left = f" (of which {base:.0f} left from before)" if base and base >= 1 else ""
                parts.append(f"{p} {r['peak_mib']:.0f}{left}")
        if parts:
            mem.append(f"{key[1]}: " + ", ".join(parts))
    return ["Peak GPU memory in training (MiB): " + "; ".join(mem) + "."] if mem else []


def _check_lines(keys: list[tuple], table: dict, peers: list[str], configs: dict) -> list[str]:
    """Equal work, checked: forward spike counts against SpikingJelly fp32; unstable warm-ups."""
    out = []
    diffs, same = [], []
    for key in keys:
        row = table[key]
        ref = next(
            (
                p
                for p in ("sj-native", "sj-triton", "sj-torch")
                if row.get(p, {}).get("status") == "ok"
            ),
            None,
        )
        if key[2] != "fwd" or ref is None or row[ref].get("output_spikes") is None:
            continue
        want = row[ref]["output_spikes"]
        n_before = len(diffs)
        for p in peers:
            r = row.get(p, {})
            got = r.get("output_spikes")
            if r.get("status") == "ok" and got is not None and got != want:
                diffs.append(f"{key[1]} {p} {got:.0f} vs {want:.0f} ({configs.get(p)})")
        if len(diffs) == n_before:
            same.append(f"{key[1]}: {want:.0f}" + (" (a silent output: zeros)" if not want else ""))
    if diffs:
        out.append(
            "Forward output spike counts that differ from SpikingJelly fp32's (first input): "
            + "; ".join(diffs)
            + "."
        )
    if same:
        out.append(
            "Forward output spike counts equal to SpikingJelly fp32's in every peer (first "
            "input): " + "; ".join(same) + "."
        )
    unstable = [
        f"{key[1]} {key[2]} {p}"
        for key in keys
        for p, r in table[key].items()
        if r.get("status") == "ok" and not r.get("warmup_stable", True)
    ]
    if unstable:
        out.append(
            "Warm-up did not settle within 5% before its time cap (timed anyway): "
            + "; ".join(unstable)
            + "."
        )
    return out


def _legend(comparisons: list, legacy: bool) -> list[str]:
    fwd, bwd = LAYER_BYTES["fwd"], LAYER_BYTES["fwd+bwd"]
    out = [
        f"Floors: L1/L2 = bytes over the measured copy rate: forward {fwd[0]} B per "
        f"neuron-step ({fwd[1]}); training {bwd[0]} B ({bwd[1]}). M1 = fp32 GEMM FLOPs "
        "over the measured GEMM rate (training: forward GEMMs + weight gradients + the input "
        "gradients of layers 2 and 3). C1: none. No ceilings are measured on a CPU.",
        "",
    ]
    if not legacy:
        out += [
            "Ratios: SpikingJelly's time / snncc's time in the same configuration (> 1: snncc "
            "faster), against the fastest SpikingJelly implementation of that configuration "
            "that ran (named where there are several); in brackets the ratio of opposite "
            "quartiles -- where it spans 1.00x this run does not tell them apart. "
            + "; ".join(f"{lbl}: {ours} vs {', '.join(sj)}" for lbl, ours, sj in comparisons)
            + ". Variants without a SpikingJelly counterpart get no ratio. 'fastest fp32': "
            "the fastest peer whose configuration is fp32, with the peers whose quartiles "
            "overlap its own.",
            "",
            "Same network, surrogate and learnable parameters in every peer "
            "(benchmarks/workloads.py): ATan (alpha 2) everywhere; C1's PLIF time "
            "constants learnable in SpikingJelly, snncc, torch.compile, snnTorch (learn_beta) "
            "and Norse (sigmoid(w) / dt); resets detached where SpikingJelly's are (C1), except "
            "snnTorch, which never detaches.",
            "",
        ]
    return out


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _rows(report["records"], report["small"])
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
        xs, ys, lo, hi = [], [], [], []
        for j, k in enumerate(keys):
            r = table[k].get(p)
            if r and r.get("status") == "ok":
                xs.append(j + i * width)
                ys.append(r["median_ms"])
                lo.append(r["median_ms"] - r.get("p25_ms", r["median_ms"]))
                hi.append(r.get("p75_ms", r["median_ms"]) - r["median_ms"])
        ax.bar(xs, ys, width, label=p, color=colors(i % colors.N), yerr=[lo, hi], capsize=1)
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms, log scale; bars: quartiles)")
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
    p.add_argument(
        "--repeat", type=int, default=20, help="timed samples per case and round (>= 20)"
    )
    p.add_argument("--rounds", type=int, default=1, help="worker runs per peer, samples pooled")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled orders")
    p.add_argument("--warmup", type=int, default=5, help="least warm-up steps per case")
    p.add_argument("--warmup-s", type=float, default=0.5, help="least warm-up seconds per case")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads per worker (default: libraries')"
    )
    p.add_argument(
        "--compete",
        choices=("busy", "campaign"),
        default=None,
        help="run the suite twice, idle and beside this competing load (benchmarks/compete.py)",
    )
    p.add_argument(
        "--render", metavar="JSON", help="re-write the .md and .png of a saved run into --out"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--cpus", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 20 and not args.worker:
        p.error("--repeat must be >= 20 (the suite reports medians of at least 20 samples)")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.out)
    if args.worker:
        pin_worker(args.cpus)
        return worker(args)
    if not args.compete:
        res = orchestrate(args)
        return res if isinstance(res, int) else 0
    stems = []
    for load_kind in (None, args.compete):  # the same run idle, then beside the load
        stems.append(orchestrate(args, load_kind, load_kind or "idle"))
        if not isinstance(stems[-1], Path):
            return stems[-1]
    table = compare_loads(*(json.loads(s.with_suffix(".json").read_text()) for s in stems))
    loaded_md = stems[-1].with_suffix(".md")  # the loaded run's report keeps the comparison
    loaded_md.write_text(f"{loaded_md.read_text().rstrip()}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
