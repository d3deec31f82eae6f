"""The benchmark suite (shared/reference/anchors.md) and every peer's version of each workload.

Workloads are defined once, as SpikingJelly 2.0 multi-step models (the
framework the anchors were measured with); each peer runs the *same network*
with its own neurons: snncc compiles the SpikingJelly model itself; snnTorch,
Norse and torch.compile get the model with each SpikingJelly neuron replaced by
their equivalent (same dynamics: for LIF with decay_input,
``h = v + (x - v) / tau``), stepped over T layer by layer.

Sizes: ``full`` is the anchors' suite (for a GPU); ``small`` keeps every
workload's structure at sizes a CPU runs in seconds (``--small``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SUITE = ("L1", "L2", "M1", "C1")


@dataclass(frozen=True)
class Case:
    """One timed configuration of a workload."""

    workload: str
    label: str  # e.g. "T=64"
    T: int
    B: int
    #: per-step feature shape after B
    shape: tuple[int, ...]
    #: neurons per step (for the bandwidth floor of L1/L2)
    neurons: int
    #: how inputs are drawn: "uniform02" (L1/L2: [0, 2)) or "uniform01"
    dist: str = "uniform01"
    #: model constructor kwargs
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.T, self.B, *self.shape)


def cases(workload: str, small: bool) -> list[Case]:
    """The configurations of one workload id (see anchors.md)."""
    if workload == "L1":
        n = 1 << (12 if small else 20)
        ts = (4, 16) if small else (4, 16, 64, 256)
        w = 64 if small else 1024
        return [Case("L1", f"T={t}", t, n // w, (w,), n, "uniform02", {"kind": "lif"}) for t in ts]
    if workload == "L2":
        n = 1 << (10 if small else 14)
        t = 128 if small else 1024
        return [Case("L2", f"T={t}", t, n // 64, (64,), n, "uniform02", {"kind": "lif"})]
    if workload == "M1":
        hidden = 256 if small else 2048
        t, b = (4, 16) if small else (16, 256)
        return [Case("M1", f"T={t} B={b}", t, b, (784,), hidden, "uniform01", {"hidden": hidden})]
    if workload == "C1":
        ch = 16 if small else 128
        t, b = (2, 4) if small else (4, 64)
        return [
            Case("C1", f"T={t} B={b} ch={ch}", t, b, (3, 32, 32), 0, "uniform01", {"channels": ch})
        ]
    raise ValueError(f"unknown workload {workload!r}; the suite is {', '.join(SUITE)}")


# ----------------------------------------------------------- SpikingJelly models
def sj_model(case: Case) -> nn.Module:
    """The workload as a SpikingJelly 2.0 multi-step model (fresh weights, seeded)."""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    torch.manual_seed(0)
    if case.workload in ("L1", "L2"):
        net = nn.Sequential(neuron.LIFNode(tau=2.0, decay_input=True, v_reset=0.0))
    elif case.workload == "M1":
        h = case.model["hidden"]
        net = nn.Sequential(
            layer.Linear(784, h),
            neuron.LIFNode(tau=2.0),
            layer.Linear(h, h),
            neuron.LIFNode(tau=2.0),
            layer.Linear(h, 10),
            neuron.LIFNode(tau=2.0),
        )
    elif case.workload == "C1":
        from spikingjelly.activation_based.model import parametric_lif_net

        net = parametric_lif_net.CIFAR10Net(
            channels=case.model["channels"],
            spiking_neuron=neuron.ParametricLIFNode,
            surrogate_function=surrogate.ATan(),
            detach_reset=True,
        )
    else:
        raise ValueError(case.workload)
    functional.set_step_mode(net, "m")
    return net


def make_input(case: Case, seed: int, device: str) -> torch.Tensor:
    """Seeded uniform input, drawn on ``device`` (a GiB on the CPU would take seconds)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(case.input_shape, generator=g, device=device)
    if case.dist == "uniform02":
        x = x * 2.0
    return x


# ----------------------------------------------------------- neuron replacement
def _sj_neuron_params(node: nn.Module) -> dict[str, Any]:
    """tau / threshold / reset / PLIF-ness of a SpikingJelly LIF-family node."""
    from spikingjelly.activation_based import neuron

    plif = isinstance(node, neuron.ParametricLIFNode)
    if plif:
        tau = 1.0 / float(node.w.detach().sigmoid())
    else:
        tau = float(node.tau)
    return {
        "tau": tau,
        "plif": plif,
        "decay_input": bool(node.decay_input),
        "v_threshold": float(node.v_threshold),
        "v_reset": node.v_reset,
        "detach_reset": bool(node.detach_reset),
    }


def replace_neurons(model: nn.Module, factory) -> nn.Module:
    """A deep copy of ``model`` with every SpikingJelly LIF/PLIF node replaced by ``factory(params)``."""
    from spikingjelly.activation_based import neuron

    model = copy.deepcopy(model)

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, (neuron.LIFNode, neuron.ParametricLIFNode)):
                setattr(parent, name, factory(_sj_neuron_params(child)))
            else:
                visit(child)

    visit(model)
    return model


class SnnTorchLayer(nn.Module):
    """snnTorch ``Leaky`` stepped over T: ``mem = beta * mem + x / tau`` with beta = 1 - 1/tau.

    Feeding ``x / tau`` makes snnTorch's form the same dynamics as
    SpikingJelly's decay_input LIF (``h = v + (x - v) / tau``).
    """

    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        import snntorch

        self.inv_tau = 1.0 / p["tau"]
        self.cell = snntorch.Leaky(
            beta=1.0 - self.inv_tau,
            threshold=p["v_threshold"],
            reset_mechanism="zero" if p["v_reset"] is not None else "subtract",
            learn_beta=p["plif"],
            reset_delay=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = self.cell.init_leaky()
        out = []
        for xt in x:
            spk, mem = self.cell(xt * self.inv_tau, mem)
            out.append(spk)
        return torch.stack(out)


class NorseLayer(nn.Module):
    """Norse ``LIFBoxCell`` (no synaptic current) stepped over T, dt * tau_mem_inv = 1 / tau."""

    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        from norse.torch import LIFBoxCell, LIFBoxParameters

        dt = 1e-3
        params = LIFBoxParameters(
            tau_mem_inv=torch.tensor(1.0 / (p["tau"] * dt)),
            v_th=torch.tensor(p["v_threshold"]),
            v_reset=torch.tensor(0.0 if p["v_reset"] is None else float(p["v_reset"])),
            v_leak=torch.tensor(0.0),
        )
        self.cell = LIFBoxCell(p=params, dt=dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = None
        out = []
        for xt in x:
            spk, state = self.cell(xt, state)
            out.append(spk)
        return torch.stack(out)


def snncc_nn_layer(p: dict[str, Any]) -> nn.Module:
    """snncc.nn's pure-torch eager neuron with SpikingJelly's exact maths (torch.compile's input)."""
    from snncc import nn as snn

    common = {
        "v_threshold": p["v_threshold"],
        "v_reset": p["v_reset"],
        "detach_reset": p["detach_reset"],
    }
    if p["plif"]:
        return snn.ParametricLIF(init_tau=p["tau"], decay_input=p["decay_input"], **common)
    return snn.LIF(tau=p["tau"], decay_input=p["decay_input"], **common)


# ----------------------------------------------------------- bandwidth floors
def bytes_moved(case: Case, mode: str, out_bytes: int = 4) -> int | None:
    """The fewest bytes one neuron layer must move (L1/L2), each array once; None elsewhere.

    Forward: read x, write spikes (``out_bytes`` each). Forward+backward with
    the membrane saved: forward reads x, writes spikes and h; backward reads h
    and writes grad_x. The step's loss is ``y.sum()``, whose gradient is one
    broadcast value: a kernel can read it in place (snncc's does), so it costs
    no traffic.
    """
    if case.workload not in ("L1", "L2"):
        return None
    tn = case.T * case.neurons
    if mode == "fwd":
        return tn * (4 + out_bytes)
    return tn * (4 + out_bytes + 4) + tn * (4 + 4)


def flops(case: Case) -> float | None:
    """Forward GEMM FLOPs of M1 (2 * rows * in * out per Linear)."""
    if case.workload != "M1":
        return None
    h = case.model["hidden"]
    rows = case.T * case.B
    return 2.0 * rows * (784 * h + h * h + h * 10)


def expected_ms(nbytes: int | None, bandwidth: float | None) -> float | None:
    if not nbytes or not bandwidth:
        return None
    return nbytes / bandwidth * 1e3


def fmt_ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"
