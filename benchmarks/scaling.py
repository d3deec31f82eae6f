"""How snncc's multi-device schedules scale: measured on this CPU, projected for GPUs (issue 13).

    python benchmarks/scaling.py --out benchmarks/results          # the CPU run (~10 min loaded)
    python benchmarks/scaling.py --render benchmarks/results/scaling.json   # rewrite md + png
    python benchmarks/scaling.py --gpu-streams --out DIR           # on a GPU (scripts/gpu_check.sh --multi)

What it does, and what each number is:

1. **Per-group times, measured** on this CPU (cpu backend, one thread): every group of the
   schedule run alone at the chunk and batch shapes a schedule gives it, for the paper's
   workload (one LIF layer, scaled down to fit this CPU), M1 and C1 (``--small`` sizes of
   benchmarks/workloads.py); plus the LIF layer's time per step against the chunk length.
2. **The simulation, validated**: :func:`snncc.ir.cost.simulate` replays a chunked schedule
   on one device, once from each task's time measured alone (its real input and starting
   state) and once from the per-group times through the cost model; the same schedule is
   then run for real, task after task in one process, and the three times are compared.
   Single-process times are the least CPU time of ``--repeat`` runs with one thread (what a
   dedicated core takes: this machine is shared, and its load would add waiting for a core
   to wall time and disturb the caches),
   with glibc's malloc keeping freed memory as torch's GPU caching allocator does
   (:data:`MALLOC_ENV`; else every run pays for first touching fresh pages). Assembling the
   outputs of the chunks is timed apart: the simulation does not model it.
3. **Real multi-process runs**: every schedule on 2 gloo processes of this 2-core machine,
   timed, next to one process. *Measured*, on a machine other developers load too.
4. **Projections for 1-8 GPUs** on the paper's workload (one LIF layer of 2^20 neurons,
   T = 4096, 64 trials as the batch), M1 and C1 at full size, for inference and training:
   every schedule's time from the partition pass's planner (:func:`snncc.ir.passes.partition.plan`,
   the same event simulation), with a device model fitted to the snncc measurements on an
   H200 (``bench_cuda_h200.json``: its measured copy rate and fp32 GEMM rate, the per-call
   host time of its L1 T=4 row, the effective rate of M1's and C1's forward) and links from
   spec sheets (NVLink 4, PCIe Gen5 x16; latencies assumed). Every projected figure says
   "projected". The schedule the partition pass picks on 8 GPUs is the one its model
   predicts fastest; the tables show the bubble and the transfer time of each.

``--gpu-streams`` (needs a CUDA GPU; pending: no GPU was lent when this was written) runs the
time-chunk pipeline's stages in one process on one GPU, each stage on its own CUDA stream,
and compares the measured overlap with the simulation's prediction for the measured task
times (scripts/gpu_check.sh --multi calls it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: CPU time is a dedicated core's time

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from workloads import Case, cases, sj_model  # noqa: E402

import snncc  # noqa: E402
from snncc.distributed.graphs import extract, partitioned, stage_graph  # noqa: E402
from snncc.distributed.runner import chunk_bounds, lower  # noqa: E402
from snncc.ir import cost as C  # noqa: E402
from snncc.ir.passes import run_pipeline  # noqa: E402
from snncc.ir.passes.partition import SCHEDULES, _units, parse_request, plan  # noqa: E402

PAPER = {"neurons": 1 << 20, "steps": 4096, "trials": 64, "speedup": 6.6, "gpus": 8}
#: the paper's workload scaled down for this CPU (same T; fewer neurons and trials)
PAPER_CPU = {"neurons": 1024, "steps": 4096, "trials": 2}
CPU_PIPELINE = ("canonicalize", "drop_noops", "fuse_elementwise", "temporal_fusion")
GPUS = range(1, 9)
LINK_NAMES = ("nvlink4", "pcie5")


def paper_case(neurons: int, steps: int, trials: int) -> Case:
    return Case(
        "L1", f"paper T={steps}", steps, trials, (neurons,), neurons, "uniform02", {"kind": "lif"}
    )


def workload_cases(small: bool) -> dict[str, Case]:
    """The three workloads: the paper's LIF layer and the suite's M1 and C1."""
    paper = PAPER_CPU if small else PAPER
    return {
        "paper": paper_case(paper["neurons"], paper["steps"], paper["trials"]),
        "M1": cases("M1", small)[0],
        "C1": cases("C1", small)[0],
    }


def _example(case: Case) -> torch.Tensor:
    """Two steps of one trial: the IR does not depend on T or B."""
    from workloads import make_input

    small = Case(case.workload, case.label, 2, 1, case.shape, case.neurons, case.dist, case.model)
    return make_input(small, 0, "cpu")


def traced(case: Case) -> Any:
    """The workload's scheduled IR as the cpu and cuda (fp32) backends run it; nothing lowered.
    In eval mode: C1's BatchNorm in training mode normalises over the batch and the sequence,
    which no split reproduces (the partition pass refuses it)."""
    return run_pipeline(snncc.trace(sj_model(case).eval(), _example(case)), CPU_PIPELINE)


def scheduled(case: Case, backend: str = "cpu", options: dict | None = None) -> Any:
    """The workload compiled for ``backend`` in eval mode (traced on two steps of one trial)."""
    return snncc.compile(sj_model(case).eval(), _example(case), backend=backend, **(options or {}))


# ====================================================================== timing
#: what the single-process timings measure: "cpu" (the process's CPU time: one thread, so the
#: time a dedicated core would take; a loaded machine's waiting for a core is left out) or
#: "wall" (the multi-process runs, whose waiting for each other is the point)
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _time(fn: Any, repeat: int, clock: str = "cpu") -> float:
    """Seconds of ``repeat`` calls after one warm-up call, on ``clock``: the least CPU time (the
    run other processes on this machine's cores disturbed least), or the median wall time."""
    now = CLOCKS[clock]
    fn()
    samples = []
    for _ in range(repeat):
        start = now()
        fn()
        samples.append(now() - start)
    return min(samples) if clock == "cpu" else statistics.median(samples)


def _value(graph: Any, n: int, steps: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    shape = (steps, batch, *(int(d) for d in graph.node(n)["shape"][1:]))
    x = torch.rand(shape, generator=gen)
    return (x < 0.2).float() if C.spikes_are_binary(graph, n) else x * 2


def group_programs(cm: Any) -> list[tuple[int, Any, list[int]]]:
    """Every group (with work) as a program of its own: (key, program, its input values)."""
    graph = cm.ir
    out = []
    for nodes in _units(graph):
        if not any(C.node_cost(graph, n).launches for n in nodes):
            continue
        keep = set(nodes)
        inputs = [n for n in nodes if graph.op(n) == "input"]
        inputs += sorted({i for n in nodes for i in graph.inputs(n) if i not in keep})
        outputs = [n for n in nodes if any(e.dst not in keep for e in graph.users(n))]
        sub = extract(graph, nodes, inputs, outputs or [nodes[-1]])
        out.append((nodes[0], lower(sub, cm.backend, cm.options), inputs))
    return out


def measure_groups(cm: Any, steps: int, batch: int, repeat: int) -> C.Calibration:
    """Each group's median time alone at ``steps`` x ``batch`` (random inputs of its shapes),
    continuing from a carried state as every chunk but the first does."""
    gen = torch.Generator().manual_seed(0)
    seconds = {}
    for key, prog, inputs in group_programs(cm):
        xs = [_value(cm.ir, v, steps, batch, gen) for v in inputs]
        arg = xs[0] if len(xs) == 1 else tuple(xs)
        with torch.no_grad():
            _, state = prog.run(arg)
            seconds[key] = _time(
                lambda prog=prog, arg=arg, state=state: prog.run(arg, state or None), repeat
            )
    return C.Calibration(steps, batch, seconds, "this CPU, cpu backend, 1 thread, CPU time")


#: the CPU as the cost model sees it: every group it runs is calibrated (measured)
THIS_CPU = C.Device("this CPU (calibrated per group)", 1e11, 1e10, 0.0)


def from_groups(
    cm: Any, shapes: list[tuple[tuple[int, int], list[int]]], repeat: int
) -> list[float]:
    """Task times from per-group measurements: for each (steps x batch, node ids of the task),
    the cost model's time of the task's groups with the groups measured at that shape."""
    cals: dict[tuple[int, int], C.Calibration] = {}
    gcs = C.group_costs(cm.ir)
    out = []
    for (steps, batch), nodes in shapes:
        if (steps, batch) not in cals:
            cals[(steps, batch)] = measure_groups(cm, steps, batch, repeat)
        mine = [g for g in gcs if g.key in set(nodes)]
        out.append(C.run_seconds(mine, THIS_CPU, steps, batch, cals[(steps, batch)]))
    return out


def chunk_sweep(cm: Any, batch: int, lengths: list[int], repeat: int) -> list[dict[str, Any]]:
    """The whole model's time per step at each chunk length (small chunks lose efficiency)."""
    gen = torch.Generator().manual_seed(1)
    (inp,) = cm.ir.meta["inputs"]
    out = []
    for steps in lengths:
        x = _value(cm.ir, inp, steps, batch, gen)
        with torch.no_grad():
            t = _time(lambda x=x: cm.program.run(x), repeat)
        out.append({"steps": steps, "seconds": t, "us_per_step": t / steps * 1e6})
    return out


# ====================================================================== validation
def _validate(
    schedule: str, runs: list[list[tuple[Any, Any, Any]]], repeat: int, deps_of: Any
) -> dict:
    """Time each task alone (its recorded input and starting state), simulate the tasks on
    one device, and time the same tasks run in order; outputs are assembled outside both.

    ``runs[i]``: one dependent chain of tasks (program, input, starting state) in order;
    ``deps_of(i, j)``: the names a task waits for besides the one before it in the chain.
    """
    task = []
    with torch.no_grad():
        for chain in runs:
            task.append(
                [
                    _time(lambda prog=prog, arg=arg, st=st: prog.run(arg, st), repeat)
                    for prog, arg, st in chain
                ]
            )
    tasks = []
    for i, chain in enumerate(runs):
        for j in range(len(chain)):
            tasks.append(C.Task(f"t{i}.{j}", "dev0", task[i][j], deps_of(i, j)))
    predicted = C.simulate(tasks).makespan
    return {"schedule": schedule, "predicted_s": predicted, "task_s": task}


def _simulated(seconds: list[float], per_chain: int, deps_of: Any) -> float:
    """The one-device simulation of chains of ``per_chain`` tasks with these durations."""
    tasks = [
        C.Task(
            f"t{i // per_chain}.{i % per_chain}", "dev0", t, deps_of(i // per_chain, i % per_chain)
        )
        for i, t in enumerate(seconds)
    ]
    return C.simulate(tasks).makespan


def validate_pipeline(cm: Any, x: torch.Tensor, stages: int, chunks: int, repeat: int) -> dict:
    """Per-stage chunk times measured alone -> simulated sequential run, vs that run measured."""
    T, B = x.shape[:2]
    graph = partitioned(cm.ir, stages, {"steps": T, "batch": B, "chunks": chunks})
    progs = [lower(stage_graph(graph, s), cm.backend, cm.options) for s in range(stages)]
    bounds = chunk_bounds(T, chunks)

    def sequential(record: list | None = None) -> list:
        states: list[Any] = [None] * stages
        ys = []
        for t0, t1 in bounds:
            v: Any = x[t0:t1]
            chain = []
            for s, prog in enumerate(progs):
                chain.append((prog, v, states[s]))
                v, states[s] = prog.run(v, states[s])
            ys.append(v)
            if record is not None:
                record.append(chain)
        return ys

    with torch.no_grad():
        runs: list = []
        ys = sequential(runs)  # each task's real input and starting state, recorded
        measured = _time(sequential, repeat)
        start = time.process_time()
        whole = torch.cat(ys)
        assemble = time.process_time() - start
        same = bool(torch.equal(whole, cm.program.run(x)[0]))
    # task (chunk k, stage s) waits for stage s-1 of chunk k (the chain) and chunk k-1 of stage s
    deps = lambda k, s: (f"t{k}.{s - 1}",) if s else ()  # noqa: E731
    v = _validate("pipeline", runs, repeat, deps)
    shapes = [((t1 - t0, B), list(p.graph.nx.nodes)) for t0, t1 in bounds for p in progs]
    v["predicted_from_groups_s"] = _simulated(from_groups(cm, shapes, repeat), len(progs), deps)
    return {
        **v,
        "stages": stages,
        "chunks": chunks,
        "steps": T,
        "batch": B,
        "measured_s": measured,
        "error": (v["predicted_s"] - measured) / measured,
        "outputs_bit_for_bit": same,
        "assemble_s": assemble,
    }


def validate_temporal(cm: Any, x: torch.Tensor, segments: int, micro: int, repeat: int) -> dict:
    """Segment x micro-batch task times measured alone -> simulated, vs the sequential run."""
    T, B = x.shape[:2]
    segs, mbs = chunk_bounds(T, segments), chunk_bounds(B, micro)

    def sequential(record: list | None = None) -> list:
        out = []
        for b0, b1 in mbs:
            st, rows, chain = None, [], []
            for t0, t1 in segs:
                part = x[t0:t1, b0:b1]
                chain.append((cm.program, part, st))
                y, st = cm.program.run(part, st)
                rows.append(y)
            out.append(rows)
            if record is not None:
                record.append(chain)
        return out

    with torch.no_grad():
        runs: list = []
        parts = sequential(runs)
        measured = _time(sequential, repeat)
        start = time.process_time()
        whole = torch.cat([torch.cat(rows) for rows in parts], dim=1)
        assemble = time.process_time() - start
        same = bool(torch.equal(whole, cm.program.run(x)[0]))
    deps = lambda m, p: (f"t{m}.{p - 1}",) if p else ()  # noqa: E731
    v = _validate("temporal", runs, repeat, deps)
    every = list(cm.ir.nx.nodes)
    shapes = [((t1 - t0, b1 - b0), every) for b0, b1 in mbs for t0, t1 in segs]
    v["predicted_from_groups_s"] = _simulated(from_groups(cm, shapes, repeat), len(segs), deps)
    return {
        **v,
        "segments": segments,
        "micro_batches": micro,
        "steps": T,
        "batch": B,
        "measured_s": measured,
        "error": (v["predicted_s"] - measured) / measured,
        "outputs_bit_for_bit": same,
        "assemble_s": assemble,
    }


# ====================================================================== processes
def worker(out: str, repeat: int) -> None:
    """One rank of the measured multi-process runs (started by torchrun from :func:`processes`)."""
    from snncc import distributed

    rank, world = distributed.init()
    torch.set_num_threads(1)
    results = []
    for name, case in workload_cases(True).items():
        if name == "C1":
            continue  # convolutions on 2 loaded cores: minutes, and no more to learn
        cm = scheduled(case)
        from workloads import make_input

        x = make_input(case, 0, "cpu")
        for schedule in SCHEDULES:
            opts = {"chunks": 4} if schedule == "pipeline" else {}
            if schedule == "temporal":
                opts = {"micro_batches": min(2, case.B)}
            if schedule == "data_parallel" and case.B < world:
                continue
            try:
                runner = distributed.make(cm, schedule, **opts)
            except snncc.SnnccError as e:
                results.append({"workload": name, "schedule": schedule, "status": f"n/a: {e}"})
                continue

            def once(runner: Any = runner, x: torch.Tensor = x) -> None:
                torch.distributed.barrier()
                runner.run(x)
                torch.distributed.barrier()

            with torch.no_grad():
                t = _time(once, repeat, "wall")
            results.append({"workload": name, "schedule": schedule, "seconds": t, "status": "ok"})
    if rank == world - 1:
        Path(out).write_text(json.dumps({"world": world, "results": results}))


def processes(repeat: int, tmp: Path) -> dict[str, Any]:
    """Every schedule on 2 gloo processes (measured), and the one-process time of each workload."""
    out = tmp / "processes.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(Path(__file__).resolve()),
        "--worker",
        str(out),
        "--repeat",
        str(repeat),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    if run.returncode != 0:
        return {"status": f"failed: {run.stderr[-1500:]}"}
    data = json.loads(out.read_text())
    single = {}
    from workloads import make_input

    for name, case in workload_cases(True).items():
        if name == "C1":
            continue
        cm = scheduled(case)
        x = make_input(case, 0, "cpu")
        with torch.no_grad():
            single[name] = _time(lambda cm=cm, x=x: cm.program.run(x), repeat, "wall")
    for r in data["results"]:
        if r.get("status") == "ok":
            r["one_process_s"] = single[r["workload"]]
            r["speedup"] = single[r["workload"]] / r["seconds"]
    return {"status": "ok", **data}


# ====================================================================== the GPU model
def h200_model(path: Path) -> dict[str, Any]:
    """A device model from snncc's own H200 measurements (bench_cuda_h200.json)."""
    records = json.loads(path.read_text())["records"]
    roof = next(r for r in records if r.get("peer") == "roofline")
    timed = {
        (r["workload"], r["case"], r["mode"]): r["median_ms"] / 1e3
        for r in records
        if r.get("peer") == "snncc-cuda" and r.get("status") == "ok"
    }
    host = timed[("L1", "T=4", "fwd")]  # 33.6 MB of traffic: 8 us on the device, the rest host
    device = C.Device(
        name="H200 (snncc-measured rates)",
        flops_per_s=roof["fp32_gemm_flops_per_s"],
        bytes_per_s=roof["copy_bytes_per_s"],
        launch_s=5e-6,
        memory_bytes=141e9,
        saturating=132 * 2048,
        host_s=host,
        source=(
            "measured on an H200 by benchmarks/run.py (bench_cuda_h200.json): copy "
            f"{roof['copy_bytes_per_s'] / 1e12:.2f} TB/s, fp32 GEMM "
            f"{roof['fp32_gemm_flops_per_s'] / 1e12:.1f} TFLOP/s, host time per group "
            f"{host * 1e3:.3f} ms (L1 T=4 forward); launch 5 us and saturation at 132 SMs x "
            "2048 threads assumed"
        ),
    )
    return {"device": device, "timed": timed}


def fit_flops(graph: Any, device: C.Device, steps: int, batch: int, measured: float) -> C.Device:
    """The device with the fp32 rate that makes the model's one-GPU forward equal ``measured``
    (convolutions and small GEMMs run below the GEMM ceiling); unchanged if none does."""
    from dataclasses import replace

    gcs = C.group_costs(graph)
    lo, hi = 1e9, device.flops_per_s * 4
    if C.run_seconds(gcs, replace(device, flops_per_s=hi), steps, batch) < measured:
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            t = C.run_seconds(gcs, replace(device, flops_per_s=mid), steps, batch)
            lo, hi = (mid, hi) if t > measured else (lo, mid)
        return replace(
            device,
            flops_per_s=hi,
            source=device.source + f"; fp32 rate fitted to "
            f"the measured forward: {hi / 1e12:.1f} TFLOP/s",
        )
    return device


def project(gpu: dict[str, Any]) -> dict[str, Any]:
    """Every schedule on 1-8 GPUs for the three workloads at full size, both links, both modes."""
    out: dict[str, Any] = {}
    checks = []
    for name, case in workload_cases(False).items():
        graph = traced(case)
        device = gpu["device"]
        measured = None
        if name in ("M1", "C1"):
            label = case.label
            measured = gpu["timed"].get((name, label, "fwd"))
            if measured is not None:
                device = fit_flops(graph, device, case.T, case.B, measured)
        one = C.run_seconds(C.group_costs(graph), device, case.T, case.B)
        checks.append(
            {
                "workload": name,
                "modelled_s": one,
                "measured_s": measured,
            }
        )
        per_link: dict[str, Any] = {}
        for link in LINK_NAMES:
            per_mode: dict[str, Any] = {}
            for mode in ("fwd", "fwd+bwd"):
                rows = {}
                for P in GPUS:
                    req = parse_request(
                        {
                            "devices": P,
                            "steps": case.T,
                            "batch": case.B,
                            "device": asdict(device),
                            "link": link,
                            "training": mode == "fwd+bwd",
                        }
                    )
                    rows[P] = plan(graph, req, P)
                per_mode[mode] = rows
            per_link[link] = per_mode
        chosen = partition_choice(graph, case, device)
        out[name] = {
            "case": case.label,
            "T": case.T,
            "B": case.B,
            "sizes": sizes(graph, case.T, case.B),
            "links": per_link,
            "chosen_on_8": chosen,
            "device": asdict(device),
        }
    return {"workloads": out, "model_check": checks}


def sizes(graph: Any, steps: int, batch: int) -> dict[str, float]:
    """What the closing note weighs: the state a temporal split hands on per trial, the input
    and output of one run, and what all-gathering the outputs on 8 GPUs would cost (NVLink 4)."""
    (inp,) = graph.meta["inputs"][:1]
    outs = graph.meta["outputs"]
    rows = steps * batch
    made = [graph.inputs(n)[0] for n in outs]  # an output's bytes as the wire carries them
    out_bytes = float(sum(C.elements(graph, n) * C.wire_bytes(graph, n) for n in made)) * rows
    return {
        "state_bytes_per_trial": C.sequence_state_bytes(graph),
        "input_bytes": float(C.elements(graph, inp) * C.wire_bytes(graph, inp) * rows),
        "output_bytes": out_bytes,
        "output_allgather_8_s": C.ring_allgather_seconds(out_bytes, 8, C.LINKS["nvlink4"]),
    }


def partition_choice(graph: Any, case: Case, device: C.Device) -> dict[str, Any]:
    """What the partition pass applies on 8 GPUs (NVLink), as its IR header prints it."""
    from snncc.ir.printer import format_graph

    g = graph.copy()
    g.meta["partition"] = {
        "devices": 8,
        "steps": case.T,
        "batch": case.B,
        "device": asdict(device),
        "link": "nvlink4",
    }
    g = run_pipeline(g, ["partition"])
    header = [ln for ln in format_graph(g).splitlines() if ln.startswith("# parallel")]
    return {"schedule": g.meta["parallel"]["schedule"], "line": header[0] if header else ""}


# ====================================================================== GPU streams (pending)
def run_streams(progs: list[Any], x: torch.Tensor, chunks: int, streams: list[Any]) -> torch.Tensor:
    """The time-chunk pipeline in one process: stage s on ``streams[s]``; chunk k of stage s
    waits (an event) for chunk k of stage s-1 and for chunk k-1 of its own stream. With
    ``nullcontext`` streams (a CPU) it is the sequential run."""
    T = x.shape[0]
    cuda = x.is_cuda
    states: list[Any] = [None] * len(progs)
    outs = []
    for t0, t1 in chunk_bounds(T, chunks):
        v: Any = x[t0:t1]
        ready = None
        for s, prog in enumerate(progs):
            ctx = torch.cuda.stream(streams[s]) if cuda else contextlib.nullcontext()
            with ctx:
                if ready is not None:
                    streams[s].wait_event(ready)
                    for t in v if isinstance(v, tuple) else (v,):
                        t.record_stream(streams[s])  # freed only after this stream used it
                v, states[s] = prog.run(v, states[s])
                if cuda:
                    ready = torch.cuda.Event()
                    ready.record(streams[s])
        outs.append(v)
    if cuda:
        torch.cuda.current_stream().wait_stream(streams[-1])
    return torch.cat(outs)


def task_times(
    progs: list[Any], x: torch.Tensor, chunks: int, repeat: int, clock: str = "wall"
) -> dict[tuple[int, int], float]:
    """(stage, chunk) -> that task's time alone, on its real input and starting state (both
    recorded from one sequential run of the pipeline; spikes keep their wire dtype)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    states: list[Any] = [None] * len(progs)
    recorded = {}
    with torch.no_grad():
        for k, (t0, t1) in enumerate(chunk_bounds(x.shape[0], chunks)):
            v: Any = x[t0:t1]
            for s, prog in enumerate(progs):
                recorded[(s, k)] = (prog, v, states[s])
                v, states[s] = prog.run(v, states[s])
        return {
            key: _time(lambda p=p, a=a, st=st: (p.run(a, st), sync()), repeat, clock)
            for key, (p, a, st) in recorded.items()
        }


def gpu_streams(out_dir: Path, repeat: int) -> dict[str, Any]:
    """Pipeline stages on one GPU, one CUDA stream each: the measured overlap against the
    simulation of the same tasks on independent devices (an upper bound: the streams share
    the GPU's SMs and memory bandwidth). M1 only: the paper's one LIF layer is one stage."""
    if not torch.cuda.is_available():
        return {"status": "n/a: no CUDA GPU"}
    from workloads import make_input

    results = []
    case = workload_cases(False)["M1"]
    cm = scheduled(case, "cuda")
    x = make_input(case, 0, "cuda")
    with torch.no_grad():
        whole = cm.program.run(x)[0]
    for stages in (2, 3):
        for chunks in (4, 16):
            graph = partitioned(cm.ir, stages, {"steps": case.T, "batch": case.B, "chunks": chunks})
            progs = [lower(stage_graph(graph, s), "cuda", cm.options) for s in range(stages)]
            default = [torch.cuda.current_stream()] * stages
            own = [torch.cuda.Stream() for _ in range(stages)]

            def timed(streams: list[Any], progs: Any = progs, chunks: int = chunks) -> float:
                torch.cuda.synchronize()
                start = time.perf_counter()
                run_streams(progs, x, chunks, streams)
                torch.cuda.synchronize()
                return time.perf_counter() - start

            with torch.no_grad():
                sequential = statistics.median(timed(default) for _ in range(repeat + 1))
                overlapped = statistics.median(timed(own) for _ in range(repeat + 1))
                same = bool(torch.equal(run_streams(progs, x, chunks, own), whole))
            task = task_times(progs, x, chunks, repeat)
            sim = C.simulate(
                C.pipeline_tasks(
                    lambda s, k, task=task: task[(s, k)], lambda s, k: 0.0, stages, chunks
                )
            )
            results.append(
                {
                    "workload": "M1",
                    "stages": stages,
                    "chunks": chunks,
                    "sequential_s": sequential,
                    "streams_s": overlapped,
                    "measured_overlap_s": sequential - overlapped,
                    "simulated_s": sim.makespan,
                    "predicted_overlap_s": sequential - sim.makespan,
                    "outputs_bit_for_bit": same,
                }
            )
    data = {"status": "ok", "device": torch.cuda.get_device_name(0), "results": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling_gpu_streams.json").write_text(json.dumps(data, indent=1))
    return data


# ====================================================================== reports
def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def cpu_part(repeat: int, tmp: Path, with_processes: bool) -> dict[str, Any]:
    from workloads import make_input

    torch.set_num_threads(1)
    out: dict[str, Any] = {"groups": {}, "sweep": None, "validation": []}
    wl = workload_cases(True)
    for name, case in wl.items():
        cm = scheduled(case)
        x = make_input(case, 0, "cpu")
        chunk = max(1, case.T // 4)
        cal = measure_groups(cm, chunk, case.B, repeat)
        out["groups"][name] = {
            "case": case.label,
            "steps": chunk,
            "batch": case.B,
            "seconds": {str(k): v for k, v in cal.seconds.items()},
            "names": {str(u[0]): " ".join(f"%{n}" for n in u) for u in _units(cm.ir)},
        }
        if name == "paper":
            out["sweep"] = chunk_sweep(cm, case.B, [16, 64, 256, 1024, 4096], repeat)
            for segments, micro in ((2, 1), (4, 1), (4, 2)):
                out["validation"].append(
                    {"workload": name, **validate_temporal(cm, x, segments, micro, repeat)}
                )
        elif name == "M1":
            for stages, chunks in ((2, 4), (3, 4)):
                out["validation"].append(
                    {"workload": name, **validate_pipeline(cm, x, stages, chunks, repeat)}
                )
            out["validation"].append({"workload": name, **validate_temporal(cm, x, 2, 2, repeat)})
        elif name == "C1":
            out["validation"].append({"workload": name, **validate_pipeline(cm, x, 2, 2, repeat)})
    out["processes"] = processes(repeat, tmp) if with_processes else {"status": "skipped"}
    return out


def _fmt(v: float | None, unit: str = "ms") -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.3f}" if unit == "ms" else f"{v:.2f}"


def _rel(a: float | None, b: float) -> str:
    return "-" if a is None else f"{(a - b) / b:+.1%}"


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# snncc multi-device scaling",
        "",
        f"{m['date']}; {m['platform']}; {m['cpu_count']} CPUs; load average "
        f"{', '.join(f'{v:.2f}' for v in m['loadavg'])} at the start, "
        f"{', '.join(f'{v:.2f}' for v in data.get('loadavg_end', []))} at the end; torch {m['torch']}.",
        "",
        "## Projected: 1-8 GPUs (not measured)",
        "",
        *(
            [f"Projections recomputed {data['projection']['recomputed']} (--reproject)."]
            if data["projection"].get("recomputed")
            else []
        ),
        "Device model: " + data["gpu"]["source"] + ".",
        "Links (one direction): "
        + "; ".join(f"{C.LINKS[k].name}: {C.LINKS[k].source}" for k in LINK_NAMES)
        + ".",
        "Outputs stay where they are computed in every schedule; training assumes a backward of "
        f"2x the forward. Paper's workload: one LIF layer, {PAPER['neurons']} neurons, "
        f"T = {PAPER['steps']}, {PAPER['trials']} trials (the batch); the paper reports "
        f"{PAPER['speedup']}x on {PAPER['gpus']} GPUs.",
        "",
    ]
    for name, w in data["projection"]["workloads"].items():
        for link in LINK_NAMES:
            for mode in ("fwd", "fwd+bwd"):
                rows = w["links"][link][mode]
                lines.append(
                    f"### {name} ({w['case']}), {mode}, {C.LINKS[link].name}: projected speed-up "
                    "(efficiency; bubble / transfer as % of the time)"
                )
                lines.append("")
                lines.append("| GPUs | " + " | ".join(SCHEDULES) + " |")
                lines.append("|---|" + "---|" * len(SCHEDULES))
                for P, preds in rows.items():
                    cells = []
                    for s in SCHEDULES:
                        p = preds[s]
                        if not p.get("feasible"):
                            cells.append("n/a")
                            continue
                        extra = ""
                        if "chunks" in p:
                            extra = f", K={p['chunks']}"
                        if "micro_batches" in p:
                            extra = f", M={p['micro_batches']}"
                        cells.append(
                            f"{p['speedup']:.2f}x ({p['efficiency']:.0%}; "
                            f"{p['bubble'] / p['seconds']:.0%} / {p['transfer'] / p['seconds']:.0%}{extra})"
                        )
                    lines.append(f"| {P} | " + " | ".join(cells) + " |")
                lines.append("")
        lines.append(f"Partition pass on 8 GPUs (NVLink): `{w['chosen_on_8']['line']}`")
        lines.append("")
    lines += ["Model check (one GPU, forward; measured on the H200):", ""]
    lines += ["| workload | modelled ms | measured ms |", "|---|---|---|"]
    for c in data["projection"]["model_check"]:
        lines.append(f"| {c['workload']} | {_fmt(c['modelled_s'])} | {_fmt(c['measured_s'])} |")
    lines += closing(data)
    cpu = data.get("cpu", {})
    lines += ["", "## Measured on this CPU", ""]
    if cpu.get("sweep"):
        lines += [
            "The paper's LIF layer scaled down (" + str(PAPER_CPU) + "), time per step "
            "against the chunk length (cpu backend, one thread, CPU time):",
            "",
            "| chunk steps | ms | us per step |",
            "|---|---|---|",
        ]
        for r in cpu["sweep"]:
            lines.append(f"| {r['steps']} | {_fmt(r['seconds'])} | {r['us_per_step']:.2f} |")
        lines.append("")
    if cpu.get("validation"):
        lines += [
            "The simulation against a measured sequential run of the same chunked schedule "
            "on one process (per-task times measured alone, then the tasks run in order; both "
            "as the least CPU time of the repeats with one thread: what a dedicated core takes, "
            "without the waiting for a core that this machine's load adds to wall time):",
            "",
            "| workload | schedule | split | simulated from per-task times ms | simulated from "
            "per-group times ms | measured ms | error (per-task / per-group) | assembling the "
            "outputs ms (not simulated) | outputs bit for bit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in cpu["validation"]:
            split = (
                f"{v['stages']} stages x {v['chunks']} chunks"
                if v["schedule"] == "pipeline"
                else f"{v['segments']} segments x {v['micro_batches']} micro-batches"
            )
            lines.append(
                f"| {v['workload']} | {v['schedule']} | {split} | {_fmt(v['predicted_s'])} | "
                f"{_fmt(v.get('predicted_from_groups_s'))} | {_fmt(v['measured_s'])} | "
                f"{v['error']:+.1%} / {_rel(v.get('predicted_from_groups_s'), v['measured_s'])} | "
                f"{_fmt(v.get('assemble_s'))} | {v['outputs_bit_for_bit']} |"
            )
        lines.append("")
    proc = cpu.get("processes", {})
    if proc.get("status") == "ok":
        lines += [
            f"Measured: {proc['world']} gloo processes on this machine's {m['cpu_count']} "
            "cores (shared with other developers' work), against one process:",
            "",
            "| workload | schedule | 2 processes ms | 1 process ms | speed-up |",
            "|---|---|---|---|---|",
        ]
        for r in proc["results"]:
            if r.get("status") != "ok":
                lines.append(f"| {r['workload']} | {r['schedule']} | {r['status']} | | |")
                continue
            lines.append(
                f"| {r['workload']} | {r['schedule']} | {_fmt(r['seconds'])} | "
                f"{_fmt(r['one_process_s'])} | {r['speedup']:.2f}x |"
            )
    elif proc:
        lines.append(f"Multi-process runs: {proc.get('status')}")
    return "\n".join(lines) + "\n"


def closing(data: dict[str, Any], gpus: int = 8) -> list[str]:
    """The goal on the paper's workload (at least 7x on 8 GPUs, projected), met or not, why."""
    w = data["projection"]["workloads"]["paper"]
    rows = w["links"]["nvlink4"]["fwd"]
    preds = rows[str(gpus)] if str(gpus) in rows else rows[gpus]  # as saved (JSON) or made
    feasible = {k: v for k, v in preds.items() if v.get("feasible")}
    fastest = min(feasible, key=lambda k: (feasible[k]["seconds"], SCHEDULES.index(k)))
    chosen = w["chosen_on_8"]["schedule"]
    best = feasible[fastest]["speedup"]
    lines = [
        "",
        f"## Closing note: the paper's workload on {gpus} GPUs (projected)",
        "",
        f"One LIF layer of {PAPER['neurons']} neurons, T = {PAPER['steps']}, {PAPER['trials']} "
        f"trials, forward, NVLink 4; the goal is at least 7x (the paper reports "
        f"{PAPER['speedup']}x on its {PAPER['gpus']} GPUs):",
        "",
    ]
    for name in SCHEDULES:
        p = preds[name]
        if not p.get("feasible"):
            lines.append(f"- {name}: n/a ({p['why']})")
            continue
        lines.append(
            f"- {name}: projected {p['speedup']:.2f}x ({p['seconds'] * 1e3:.2f} ms; bubble "
            f"{p['bubble'] * 1e3:.2f} ms, links busy {p['transfer'] * 1e3:.2f} ms)"
        )
    verdict = "met" if best >= 7.0 else "not met"
    lines += [
        "",
        f"The partition pass applies **{chosen}**; its model predicts **{fastest}** fastest "
        f"({feasible[fastest]['seconds'] * 1e3:.2f} ms, {best:.2f}x): goal {verdict}"
        + (
            " (a tie is broken by the order data_parallel, pipeline, temporal, neuron_split)."
            if chosen == fastest
            else "; the pass and its model DISAGREE."
        ),
    ]
    t = feasible.get("temporal")
    z = w.get("sizes", {})
    if t:
        M = t["micro_batches"]
        cap = gpus * M / (M + gpus - 1)
        lines.append(
            f"The temporal split (the paper's method) pipelines {M} micro-batches through {gpus} "
            f"time segments: its bubble is ({gpus}-1)/({M}+{gpus}-1) = "
            f"{(gpus - 1) / (M + gpus - 1):.1%} of the time, which caps it at {cap:.2f}x before "
            f"hand-offs; each hand-off carries a trial's state "
            f"({z.get('state_bytes_per_trial', 0) / 1e6:.2f} MB per trial) over the link, which "
            f"brings it to {t['speedup']:.2f}x."
        )
    if z:
        lines.append(
            f"Data parallel and the neuron split reach 8x because the trials, and the neurons, "
            f"are independent: nothing crosses devices but the output, which stays where it is "
            f"computed. Gathering all {z['output_bytes'] / 1e9:.0f} GB of output spikes (one "
            f"byte each) onto "
            f"every GPU would add {z['output_allgather_8_s'] * 1e3:.0f} ms (ring all-gather, "
            f"NVLink 4), more than the run itself: reduce them where they are made (counts, "
            f"rates). The input is {z['input_bytes'] / 1e12:.2f} TB in fp32, more than any one "
            f"GPU holds: a real run feeds it in chunks (streaming run(x, state) carries the state "
            f"across calls), and the projection models time, "
            f"not memory (memory is checked for the pipeline's stages only)."
        )
    return lines


def png(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = data["projection"]["workloads"]
    fig, axes = plt.subplots(1, len(work), figsize=(5.2 * len(work), 4.4))
    for ax, (name, w) in zip(axes, work.items()):
        rows = w["links"]["nvlink4"]["fwd"]
        Ps = [int(p) for p in rows]
        ax.plot(Ps, Ps, color="0.7", ls=":", label="ideal")
        for s in SCHEDULES:
            ys = [rows[p][s]["speedup"] if rows[p][s].get("feasible") else math.nan for p in rows]
            ax.plot(Ps, ys, marker="o", label=f"{s} (projected)")
        if name == "paper":
            ax.scatter(
                [PAPER["gpus"]],
                [PAPER["speedup"]],
                marker="*",
                s=160,
                color="k",
                zorder=5,
                label=f"paper: {PAPER['speedup']}x (its own GPUs)",
            )
        proc = data.get("cpu", {}).get("processes", {})
        for r in proc.get("results", []) if proc.get("status") == "ok" else []:
            if r["workload"] == name and r.get("status") == "ok":
                ax.scatter([proc["world"]], [r["speedup"]], marker="x", color="r", zorder=6)
        ax.set_title(f"{name} ({w['case']}), inference:\nprojected on 1-8 GPUs, NVLink 4")
        ax.set_xlabel("GPUs")
        ax.set_ylabel("speed-up over one GPU (projected)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.text(
        0.5,
        0.005,
        "red x: measured on this 2-core CPU with 2 gloo processes (not a GPU)",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)


def write(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "scaling.md").write_text(markdown(data))
    png(data, out / "scaling.png")


#: glibc's malloc keeps freed memory for reuse, as torch's GPU caching allocator does: without
#: it every run of a large tensor pays for first touching fresh pages (here about 1 ms per MB),
#: which tasks timed alone (reusing the same memory) never see
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


def main(argv: list[str] | None = None) -> int:
    if argv is None and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        env = {**os.environ, **MALLOC_ENV}  # glibc reads these when the process starts
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-processes", action="store_true", help="skip the multi-process runs")
    ap.add_argument("--no-cpu", action="store_true", help="projections only")
    ap.add_argument("--render", type=Path, help="rewrite the .md and .png of a saved JSON")
    ap.add_argument(
        "--reproject",
        type=Path,
        help="recompute the projections (no measuring) into a saved JSON, then rewrite the .md "
        "and .png; its CPU measurements are kept",
    )
    ap.add_argument("--gpu-streams", action="store_true", help="the one-GPU CUDA-streams check")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.repeat)
        return 0
    if args.render:
        data = json.loads(args.render.read_text())
        write(data, args.render.parent)
        return 0
    if args.reproject:
        data = json.loads(args.reproject.read_text())
        gpu = h200_model(HERE / "results" / "bench_cuda_h200.json")
        data["gpu"] = {"source": gpu["device"].source}
        data["projection"] = project(gpu)
        data["projection"]["recomputed"] = machine()["date"]
        write(json.loads(json.dumps(data, default=str)), args.reproject.parent)
        return 0
    if args.gpu_streams:
        print(json.dumps(gpu_streams(args.out, args.repeat), indent=1))
        return 0
    data: dict[str, Any] = {"machine": machine()}
    gpu = h200_model(HERE / "results" / "bench_cuda_h200.json")
    data["gpu"] = {"source": gpu["device"].source}
    data["projection"] = project(gpu)
    if not args.no_cpu:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            data["cpu"] = cpu_part(args.repeat, Path(tmp), not args.no_processes)
    data["loadavg_end"] = list(os.getloadavg())
    write(data, args.out)
    print((args.out / "scaling.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
