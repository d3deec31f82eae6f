"""One rank of the multi-process tests (tests/test_distributed.py starts WORLD of these).

Every rank builds the same seeded models, compiles them for the cpu backend,
runs each schedule of snncc.distributed and, in the same process, the
one-device run it must reproduce; it writes what it found (spike mismatches,
largest gradient errors relative to the gradient's scale) to OUT/rank<r>.json.
The parent test asserts on those numbers.

    python tests/distributed_worker.py OUT CACHE_DIR SCENARIO   (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT in the environment)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import snncc  # noqa: E402
from snncc import distributed  # noqa: E402
from snncc.ir.printer import format_graph  # noqa: E402
from snncc.nn import LIF, SeqToANN  # noqa: E402

T, B = 16, 8


class Skip(nn.Module):
    """Three spiking layers and a skip from the first to the third (crosses two stage cuts)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(24, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.lif1, self.lif2, self.lif3 = LIF(), LIF(), LIF()
        self.head, self.out = nn.Linear(32, 24), LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.lif1(self.fc1(x))
        s2 = self.lif2(self.fc2(s1))
        s3 = self.lif3(self.fc3(s2) + s1)
        return self.out(self.head(s3))


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(24, 48), LIF(), nn.Linear(48, 40), LIF(), nn.Linear(40, 24), LIF()
    )


def conv() -> nn.Module:
    return nn.Sequential(
        SeqToANN(nn.Conv2d(2, 8, 3, padding=1)),
        LIF(),
        SeqToANN(nn.AvgPool2d(2)),
        nn.Flatten(2),
        nn.Linear(8 * 4 * 4, 24),
        LIF(),
    )


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = {"mlp": mlp, "skip": Skip, "conv": conv, "lif": lambda: nn.Sequential(LIF())}[name]()
    with torch.no_grad():  # weights and biases large enough that every layer fires
        for key, p in model.named_parameters():
            p.mul_(2.5)
            if key.endswith("bias"):
                p.add_(0.8)
    shape = (T, B, 2, 8, 8) if name == "conv" else (T, B, 24)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 1.5
    return model, x


def forwarding_request(cm) -> dict:
    """Partition settings that cut the skip model after lif1 and after lif2, so lif1's spikes
    cross two cuts: measured-looking seconds per group (stage costs 2, 2, 2)."""
    groups = [g for g in cm.ir.meta["groups"] if any(cm.ir.op(n) != "output" for n in g["nodes"])]
    seconds = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    assert len(groups) == len(seconds), [g["nodes"] for g in groups]
    return {
        "calibration": {
            "steps": T,
            "batch": B,
            "seconds": {str(g["nodes"][0]): s for g, s in zip(groups, seconds)},
            "source": "made up for the test",
        }
    }


def loss_fn(y: torch.Tensor) -> torch.Tensor:
    """A loss over the whole sequence (not a sum of per-chunk terms): the squared rate."""
    return (y.mean(0) ** 2).mean() + 0.1 * y.mean()


def reference(cm, x: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    """One device: outputs, final state, gradients of loss_fn."""
    y, state = cm.run(x)
    module = cm.to_torch()
    if not any(True for _ in module.parameters()):
        return y, state, {}
    module.zero_grad()
    loss_fn(module(x)).backward()
    return y, state, {k: p.grad.clone() for k, p in module.named_parameters()}


def rel(a: torch.Tensor | None, b: torch.Tensor) -> float:
    a = torch.zeros_like(b) if a is None else a
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def state_mismatch(mine: dict | None, ref: dict, cut=None) -> int:
    bad = 0
    for n, d in (mine or {}).items():
        for k, v in d.items():
            want = ref[n][k] if cut is None else cut(n, ref[n][k])
            bad += int((v != want).sum())
    return bad


def check(schedule: str, model: str, cm, x, ref, rank: int, **opts) -> dict:
    y1, st1, g1 = ref
    runner = distributed.make(cm, schedule, **opts)
    start = time.perf_counter()
    y, st = runner.run(x)
    out: dict = {"schedule": schedule, "model": model, "seconds": time.perf_counter() - start}
    if y is not None:
        out["spikes"] = int(y1.sum())
        out["mismatch"] = int((y != y1).sum())
    cut = None
    if schedule == "data_parallel":
        b0, b1 = runner._share(B)
        cut = lambda n, t: t[b0:b1]  # noqa: E731
    elif schedule == "neuron_split":

        def cut(n, t):
            if n not in runner.pieces:
                return t
            dim, lo, hi = runner.pieces[n]
            return t.narrow(dim, lo, hi - lo)

    out["state_mismatch"] = state_mismatch(st, st1, cut)
    # streaming: the first half, then the second from the state each rank got back
    half = T // 2
    ya, sta = runner.run(x[:half])
    yb, _ = runner.run(x[half:], sta)
    if ya is not None:
        out["stream_mismatch"] = int((torch.cat([ya, yb]) != y1).sum())
    if not runner.params:  # the paper's lone LIF layer: nothing to train
        out["grad_rel"] = {}
        return out
    for p in runner.params.values():
        p.grad = None
    loss = runner.train_step(x, loss_fn)
    out["loss"] = loss
    errs = {}
    for name, p in runner.params.items():
        want = g1[name]
        if schedule == "neuron_split":
            piece = runner.piece_of(name)
            if piece is not None:
                axis, lo, hi = piece
                want = want.narrow(axis, lo, hi - lo)
        errs[name] = rel(p.grad, want)
    out["grad_rel"] = errs
    return out


def main() -> None:
    out_dir, cache, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    rank, world = distributed.init()
    torch.set_num_threads(1)
    results = []
    plans = {
        "two": [
            ("mlp", "pipeline", {"chunks": 4}),
            ("mlp", "temporal", {"micro_batches": 2}),
            ("mlp", "data_parallel", {}),
            ("mlp", "neuron_split", {}),
            ("conv", "neuron_split", {}),
            ("lif", "neuron_split", {}),  # the paper's workload: the input itself is cut
        ],
        "three": [
            ("skip", "pipeline", {"chunks": 4}),
            ("skip", "temporal", {"micro_batches": 2}),
        ],
    }[scenario]
    built: dict = {}
    for model, schedule, opts in plans:
        if model not in built:
            net, x = build(model)
            cm = snncc.compile(net, x, backend="cpu", cache_dir=cache)
            built[model] = (cm, x, reference(cm, x))
        cm, x, ref = built[model]
        if model == "skip" and schedule == "pipeline":
            opts = {**opts, "request": forwarding_request(cm)}
        results.append(check(schedule, model, cm, x, ref, rank, **opts))
        if schedule == "pipeline":
            results[-1]["ir"] = format_graph(distributed.make(cm, "pipeline", **opts).graph)
    path = os.path.join(out_dir, f"rank{rank}.json")
    with open(path, "w") as fh:  # before the teardown: tells its failures from the runs'
        json.dump(results, fh, indent=1)
    distributed.finalize()
    results.append({"schedule": "finalize", "model": "", "threads": thread_names()})
    with open(path + ".tmp", "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(path + ".tmp", path)


def thread_names() -> list[str] | None:
    """The names of this process's threads (Linux), or None where they cannot be read."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return None
    names = []
    for tid in sorted(os.listdir(tasks)):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            with open(os.path.join(tasks, tid, "comm")) as fh:
                names.append(fh.read().strip())
    return names


if __name__ == "__main__":
    main()
