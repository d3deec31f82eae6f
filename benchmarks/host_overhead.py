"""Host cost of one neuron layer call on the cpu path, per direction (issue 16 goal: <= 30 us).

    python benchmarks/host_overhead.py [--json out.json]

A layer so small that its kernel's arithmetic is negligible (T=4, 32 neurons: well
under a microsecond of work), so the time of a call *is* its host cost: the Python
of the host side (backends/cpu/autograd.py), torch's allocations and autograd
bookkeeping, and the ctypes call. Measured for:

- ``kernel call fwd``: the bare kernel call with its arguments prepared (the floor:
  ctypes on the cpu path, the CuPy launch on the cuda path);
- ``eager fwd`` / ``eager bwd``: ``run_layer`` through ``LayerFunction`` (what
  programs and ``to_torch()`` run eagerly), the backward by ``torch.autograd.grad``
  on the layer output alone (no other node in the graph);
- ``chain fwd / layer`` / ``chain bwd / layer``: a chain of :data:`DEPTH` such layers
  and one backward, divided by the depth: a layer's cost inside a network, where
  autograd's entry (``torch.autograd.grad``, about 40 us) is paid once per step;
- ``no-grad fwd``: ``run_layer`` without autograd (inference);
- ``custom-op fwd`` / ``custom-op bwd``: the same layer through the ``snncc::``
  custom ops called eagerly (what a traced graph runs per node, without the
  tracer's own savings), for the comparison the autograd module's docstring states.

Each figure is the median of 15 blocks, a block being the mean over >= 20 ms of
back-to-back calls, in CPU time of the calling thread (torch set to one thread); the machine's load average is printed with it
(the machine is shared: medians move with it). ``--device cuda`` measures the cuda
path's host cost the same way (launches are asynchronous: CPU time is the host's
share); scripts/gpu_check.sh runs it where a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from snncc.backends.cpu import custom_ops
from snncc.backends.cpu.autograd import layer_forward, run_layer
from snncc.backends.cpu.neuron import NeuronKernel
from snncc.ir.neuron import NeuronSpec

#: layers in the chain that measures the per-layer cost inside a network
DEPTH = 8


def lif_spec() -> NeuronSpec:
    """SpikingJelly's LIFNode(tau=2) with ATan: the suite's L1/M1 neuron."""
    return NeuronSpec(
        model="lif",
        charge="sj_lif_decay_input",
        tau=2.0,
        v_threshold=1.0,
        v_reset=0.0,
        reset="hard",
        surrogate="atan",
        alpha=2.0,
        v_init=0.0,
    )


def time_us(fn: Callable[[], object], blocks: int = 15, block_s: float = 0.02) -> float:
    """Median over blocks of the mean CPU time of one call, in microseconds.

    CPU time of this thread, not wall time: on a shared machine the scheduler parks the
    process for whole time slices, which is not host cost (one thread: both agree idle).
    """
    for _ in range(200):  # warm-up (allocator, caches)
        fn()
    per = []
    for _ in range(blocks):
        n = 0
        t0 = time.thread_time()
        while True:
            fn()
            n += 1
            dt = time.thread_time() - t0
            if dt >= block_s and n >= 20:
                break
        per.append(dt / n * 1e6)
    return statistics.median(per)


def measure(T: int = 4, N: int = 32, device: str = "cpu") -> dict[str, float]:
    if device == "cuda":
        from snncc.backends.cuda.neuron import CudaNeuronKernel

        kernel = CudaNeuronKernel(lif_spec())
    else:
        kernel = NeuronKernel(lif_spec())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((T, N), generator=g) * 2).to(device)
    gy = torch.randn((T, N), generator=g).to(device)
    res: dict[str, float] = {}

    # the bare kernel call (ctypes / CuPy launch): arguments prepared once
    out, saved, lasts = layer_forward(kernel, x, [], [], [None], [], True)
    values = {"x": x, "out": out, "T": T, "N": N, **saved, "v0": None, "v_last": lasts[0]}
    res["kernel call fwd"] = time_us(lambda: kernel.call("fwd", values, x.device))

    res["no-grad fwd"] = time_us(lambda: run_layer(kernel, x))
    xg = x.clone().requires_grad_()
    res["eager fwd"] = time_us(lambda: run_layer(kernel, xg))

    def eager_bwd() -> None:
        y, _ = run_layer(kernel, xg)
        torch.autograd.grad(y, xg, gy)

    res["eager fwd+bwd"] = time_us(eager_bwd)
    res["eager bwd"] = res["eager fwd+bwd"] - res["eager fwd"]

    # per layer inside a network: a chain of DEPTH layers, one backward pass (autograd's
    # own entry, torch.autograd.grad, is paid once per training step, not per layer)
    def chain() -> torch.Tensor:
        y = xg
        for _ in range(DEPTH):
            y, _ = run_layer(kernel, y)
        return y

    res["chain fwd / layer"] = time_us(chain) / DEPTH

    def chain_bwd() -> None:
        torch.autograd.grad(chain(), xg, gy)

    res["chain bwd / layer"] = time_us(chain_bwd) / DEPTH - res["chain fwd / layer"]

    def op_fwd():
        return custom_ops.run(kernel, (N,), xg, [], [], [None], [])

    res["custom-op fwd"] = time_us(op_fwd)

    def op_bwd() -> None:
        y, _ = op_fwd()
        torch.autograd.grad(y, xg, gy)

    res["custom-op fwd+bwd"] = time_us(op_bwd)
    res["custom-op bwd"] = res["custom-op fwd+bwd"] - res["custom-op fwd"]
    return res


def gy_layouts(T: int = 16, N: int = 1 << 16, device: str = "cpu") -> dict[str, float]:
    """The backward of one larger layer by the layout of its output gradient, one thread:
    contiguous, and expanded as ``y.sum().backward()`` gives it (strides (0, 0): every
    element one value), which the kernel reads once per step instead of gathering."""
    kernel = NeuronKernel(lif_spec())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((T, N), generator=g) * 2).requires_grad_()
    res = {}
    for name, gy in (
        ("contiguous", torch.randn((T, N), generator=g)),
        ("expanded", torch.ones(()).expand(T, N)),
    ):
        y, _ = run_layer(kernel, x)
        res[f"bwd, {name} gy"] = time_us(
            lambda y=y, gy=gy: torch.autograd.grad(y, x, gy, retain_graph=True), blocks=7
        )
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the figures here as JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    res = measure(device=args.device)
    layer = gy_layouts() if args.device == "cpu" else {}
    load1 = os.getloadavg()
    print(
        f"host cost per neuron layer call, cpu path (T=4, N=32, one thread), torch {torch.__version__}"
    )
    for name, us in res.items():
        print(f"  {name:<20s} {us:8.1f} us")
    if layer:
        print("one layer's backward, T=16, N=65536, one thread, by its output gradient's layout")
    for name, us in layer.items():
        print(f"  {name:<20s} {us:8.1f} us")
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "us": res,
                    "gy_layouts_us": layer,
                    "load": [load0[0], load1[0]],
                    "torch": torch.__version__,
                },
                f,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
