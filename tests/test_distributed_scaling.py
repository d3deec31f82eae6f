"""benchmarks/scaling.py's pieces: the projection goal, the validation and the streams runner.

The figures themselves are measured or projected by the script (benchmarks/results/scaling.*);
these tests check that what the script reports is computed the way it says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import snncc
from snncc.nn import LIF

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

scaling = pytest.importorskip("scaling")


def test_paper_workload_projection_and_the_partition_choice() -> None:
    """On 8 GPUs (projected, NVLink): the schedule the partition pass applies is the one its
    model predicts fastest, and it reaches the goal of 7x (the paper reports 6.6x)."""
    pytest.importorskip("spikingjelly")
    from snncc.ir.passes.partition import parse_request, plan

    gpu = scaling.h200_model(BENCH / "results" / "bench_cuda_h200.json")
    case = scaling.workload_cases(False)["paper"]
    graph = scaling.traced(case)
    chosen = scaling.partition_choice(graph, case, gpu["device"])
    req = parse_request(
        {
            "devices": 8,
            "steps": case.T,
            "batch": case.B,
            "device": vars(gpu["device"]),
            "link": "nvlink4",
        }
    )
    predicted = plan(graph, req, 8)
    feasible = {k: v for k, v in predicted.items() if v.get("feasible")}
    print(chosen["line"])
    for name, p in feasible.items():
        print(
            f"{name}: projected {p['speedup']:.2f}x, bubble {p['bubble'] * 1e3:.2f} ms, "
            f"link busy {p['transfer'] * 1e3:.2f} ms"
        )
    fastest = min(feasible, key=lambda k: feasible[k]["seconds"])
    assert feasible[chosen["schedule"]]["seconds"] == feasible[fastest]["seconds"]
    assert feasible[chosen["schedule"]]["speedup"] >= 7.0
    assert predicted["pipeline"]["feasible"] is False  # one layer: nothing to pipeline
    assert 6.5 < feasible["temporal"]["speedup"] < 8.0  # the paper's method, with its bubble


def _mlp_cm(backend: str = "reference"):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), LIF(), torch.nn.Linear(32, 24), LIF())
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)
    x = torch.rand(16, 8, 8)
    return snncc.compile(net, x, backend=backend), x


def test_validation_compares_a_simulated_and_a_measured_sequential_run() -> None:
    cm, x = _mlp_cm()
    v = scaling.validate_pipeline(cm, x, stages=2, chunks=2, repeat=1)
    print(v)
    assert v["outputs_bit_for_bit"] and v["predicted_s"] > 0 and v["measured_s"] > 0
    t = scaling.validate_temporal(cm, x, segments=2, micro=2, repeat=1)
    assert t["outputs_bit_for_bit"] and t["predicted_s"] > 0


def test_streams_runner_without_a_gpu_is_the_sequential_pipeline() -> None:
    """run_streams (the GPU check's runner) with no CUDA streams: the chunked pipeline in order,
    bit for bit the one-call result."""
    import contextlib

    from snncc.distributed.graphs import partitioned, stage_graph
    from snncc.distributed.runner import lower

    cm, x = _mlp_cm()
    graph = partitioned(cm.ir, 2, {"steps": 16, "batch": 8, "chunks": 4})
    progs = [lower(stage_graph(graph, s), cm.backend, cm.options) for s in range(2)]
    with torch.no_grad():
        y = scaling.run_streams(progs, x, 4, [contextlib.nullcontext()] * 2)
        assert torch.equal(y, cm(x))
    times = scaling.task_times(progs, x, 4, repeat=1)  # what the GPU check simulates from
    assert sorted(times) == [(s, k) for s in range(2) for k in range(4)]
    assert all(t > 0 for t in times.values())
