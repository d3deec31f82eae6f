"""The benchmark suite (shared/reference/anchors.md) and every peer's version of each workload.

Workloads are defined once, as SpikingJelly 2.0 multi-step models (the
framework the anchors were measured with); each peer runs the *same network*
with its own neurons: snncc compiles the SpikingJelly model itself; snnTorch,
Norse and torch.compile get the model with each SpikingJelly neuron replaced by
their equivalent (same dynamics: for LIF with decay_input,
``h = v + (x - v) / tau``), stepped over T layer by layer.

Like for like (issue 17): every neuron of every workload uses the ATan surrogate
(alpha = 2; C1's own, and snnTorch's default), in every peer: snnTorch's
``surrogate.atan``, Norse through its ``threshold`` function (Norse 1.1 has no
ATan, so the suite adds one: Norse's firing ``x > 0`` with the ATan gradient),
snncc.nn's ``"atan"``. Where SpikingJelly's time constant is learnable (C1's
PLIF), it is learnable in every peer: snnTorch ``learn_beta`` with the input
scaled by ``1 - beta``, Norse ``tau_mem_inv = sigmoid(w) / dt`` from a learnable
``w``, snncc.nn ``ParametricLIF``. Resets follow SpikingJelly's ``detach_reset``
(C1: detached; L1, L2, M1: not) in SpikingJelly, snncc and Norse (its
``reset_method``); snnTorch's reset is never detached. Firing: SpikingJelly and
snncc fire at ``h >= threshold``, snnTorch and Norse at ``h > threshold``.

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

SUITE = ("L1", "L2", "M1", "C1", "R1")


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
    if workload == "R1":
        return r1_cases(small)
    if workload == "C1":
        ch = 16 if small else 128
        t, b = (2, 4) if small else (4, 64)
        return [
            Case("C1", f"T={t} B={b} ch={ch}", t, b, (3, 32, 32), 0, "uniform01", {"channels": ch})
        ]
    raise ValueError(f"unknown workload {workload!r}; the suite is {', '.join(SUITE)}")


# ----------------------------------------------------------- SpikingJelly models
def sj_model(case: Case, calibrate: bool = True) -> nn.Module:
    """The workload as a SpikingJelly 2.0 multi-step model (fresh weights, seeded).

    M1 and C1 are calibrated to fire (see :func:`calibrated_gains`) unless ``calibrate``
    is false (the calibration itself starts from the uncalibrated model).
    """
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    if case.workload == "R1":
        return r1_sj_model(case)
    torch.manual_seed(0)

    def lif() -> nn.Module:
        return neuron.LIFNode(
            tau=2.0, decay_input=True, v_reset=0.0, surrogate_function=surrogate.ATan()
        )

    if case.workload in ("L1", "L2"):
        net = nn.Sequential(lif())
    elif case.workload == "M1":
        h = case.model["hidden"]
        net = nn.Sequential(
            layer.Linear(784, h), lif(), layer.Linear(h, h), lif(), layer.Linear(h, 10), lif()
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
    if calibrate and case.workload in CALIBRATED:
        for module, gain in zip(_pre_neuron_affines(net), calibrated_gains(case)):
            _scale(module, gain)
    return net


# ----------------------------------------------------------- inputs that fire
#: the workloads whose default-initialised weights leave their deeper layers silent
#: (M1's output fired 0 of 40,960 neuron-steps, C1's last two layers none): their
#: pre-neuron affine layers are scaled so that every neuron layer fires at this rate
CALIBRATED = ("M1", "C1")
#: the fraction of neuron-steps each neuron layer of a calibrated workload fires
#: (eval mode, on a calibration input drawn with seed CALIBRATION_SEED)
TARGET_RATE = 0.10
CALIBRATION_SEED = 1
#: samples of the calibration input (at most the case's batch): M1's 10 outputs need a few
#: hundred neuron-steps for a rate; C1's convolutions make each bisection step costly
CALIBRATION_BATCH = {"M1": 16, "C1": 4}


def _neuron_types() -> tuple[type, ...]:
    from spikingjelly.activation_based import neuron

    return (neuron.LIFNode, neuron.ParametricLIFNode)


def _pre_neuron_affines(net: nn.Module) -> list[nn.Module]:
    """The affine layer right before each neuron (Linear, Conv, or the BatchNorm after a conv).

    Scaling it scales the neuron's input current in eval mode (BatchNorm's running
    statistics are fixed there), which is where the forward benchmarks run.
    """
    affines: list[nn.Module] = []
    last = None
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.BatchNorm2d)):
            last = module
        elif isinstance(module, _neuron_types()):
            if last is None:
                raise ValueError("a neuron without an affine layer before it cannot be calibrated")
            affines.append(last)
            last = None
    return affines


def _scale(module: nn.Module, gain: float) -> None:
    with torch.no_grad():
        module.weight.mul_(gain)
        if module.bias is not None:
            module.bias.mul_(gain)


_GAINS: dict[tuple, tuple[float, ...]] = {}


def calibrated_gains(case: Case) -> tuple[float, ...]:
    """Per neuron layer, the gain on its affine layer that makes it fire at TARGET_RATE.

    Found layer by layer (each layer's rate depends only on the layers before it,
    already calibrated) by bisection of log(gain) on the seeded uncalibrated model in
    eval mode, fp32 on the CPU, with a calibration input of its own seed. Computed once
    per process and case: every peer's copy of the model gets the same weights.
    """
    key = (case.workload, case.T, case.shape, tuple(sorted(case.model.items())))
    if key in _GAINS:
        return _GAINS[key]
    from spikingjelly.activation_based import functional

    net = sj_model(case, calibrate=False)
    net.eval()
    small = Case(**{**case.__dict__, "B": min(case.B, CALIBRATION_BATCH[case.workload])})
    x = make_input(small, seed=CALIBRATION_SEED, device="cpu")
    neurons = [m for m in net.modules() if isinstance(m, _neuron_types())]
    affines = _pre_neuron_affines(net)
    gains: list[float] = []

    def rate(k: int) -> float:
        out: list[torch.Tensor] = []
        hook = neurons[k].register_forward_hook(lambda m, i, o: out.append(o))
        try:
            functional.reset_net(net)
            with torch.no_grad():
                net(x)
        finally:
            hook.remove()
        return float(out[0].float().mean())

    for k, affine in enumerate(affines):
        w0 = affine.weight.detach().clone()
        b0 = None if affine.bias is None else affine.bias.detach().clone()
        lo, hi = math.log(1 / 64), math.log(1024.0)
        for _ in range(20):
            mid = (lo + hi) / 2
            with torch.no_grad():
                affine.weight.copy_(w0 * math.exp(mid))
                if b0 is not None:
                    affine.bias.copy_(b0 * math.exp(mid))
            r = rate(k)
            if abs(r - TARGET_RATE) <= 0.005:
                break
            lo, hi = (mid, hi) if r < TARGET_RATE else (lo, mid)
        gains.append(math.exp(mid))
    _GAINS[key] = tuple(gains)
    return _GAINS[key]


def make_input(case: Case, seed: int, device: str) -> torch.Tensor:
    """Seeded uniform input, drawn on ``device`` (a GiB on the CPU would take seconds)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(case.input_shape, generator=g, device=device)
    if case.dist == "uniform02":
        x = x * 2.0
    return x


# ----------------------------------------------------------- neuron replacement
def _sj_neuron_params(node: nn.Module) -> dict[str, Any]:
    """tau / threshold / reset / surrogate / PLIF-ness of a SpikingJelly LIF-family node."""
    from spikingjelly.activation_based import neuron

    from snncc.surrogate import from_spikingjelly

    surrogate, alpha = from_spikingjelly(node.surrogate_function)
    if surrogate != "atan":  # every peer below maps ATan to its own; nothing else is mapped
        raise ValueError(f"the suite's peers are given ATan only; this node has {surrogate}")
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
        "alpha": alpha,
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
    """snnTorch ``Leaky`` stepped over T: ``mem = beta * mem + (1 - beta) * x``, beta = 1 - 1/tau.

    Scaling the input by ``1 - beta`` makes snnTorch's form SpikingJelly's
    decay_input LIF (``h = v + (x - v) / tau``); for a PLIF node beta is
    learnable (``learn_beta``) and the scale follows it, so the time constant is
    learned as in SpikingJelly (snnTorch clamps beta to [0, 1], as its own step does).
    """

    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        import snntorch
        from snntorch import surrogate

        self.learn = p["plif"]
        self.inv_tau = 1.0 / p["tau"]
        self.cell = snntorch.Leaky(
            beta=1.0 - self.inv_tau,
            threshold=p["v_threshold"],
            spike_grad=surrogate.atan(alpha=p["alpha"]),
            reset_mechanism="zero" if p["v_reset"] is not None else "subtract",
            learn_beta=self.learn,
            reset_delay=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = self.cell.init_leaky()
        scale = 1.0 - self.cell.beta.clamp(0, 1) if self.learn else self.inv_tau
        out = []
        for xt in x:
            spk, mem = self.cell(xt * scale, mem)
            out.append(spk)
        return torch.stack(out)


def _norse_threshold_with_atan() -> None:
    """Give Norse 1.1's LIFBox step an ``"atan"`` threshold method (it has none).

    Norse's step calls ``threshold(x, method, alpha)`` from its module globals;
    ``"atan"`` becomes snncc's ``spike_gt`` (Norse's firing, ``x > 0``, with the
    ATan gradient of SpikingJelly and snnTorch); every other method is Norse's own.
    """
    from norse.torch.functional import lif_box

    if getattr(lif_box.threshold, "adds_atan", False):
        return
    from snncc.surrogate import spike_gt

    norse_threshold = lif_box.threshold

    def threshold(x: torch.Tensor, method: str, alpha: float) -> torch.Tensor:
        if method == "atan":
            return spike_gt(x, "atan", float(alpha))
        return norse_threshold(x, method, alpha)

    threshold.adds_atan = True
    lif_box.threshold = threshold


def _norse_detached_reset(z, v, reset, th):
    """Norse's ``reset_value`` with the spike detached (SpikingJelly's ``detach_reset``)."""
    from norse.torch.functional.reset import reset_value

    return reset_value(z.detach(), v, reset, th)


class NorseLayer(nn.Module):
    """Norse ``LIFBoxCell`` (no synaptic current) stepped over T, dt * tau_mem_inv = 1 / tau.

    A PLIF node's time constant is a learnable ``w`` here, ``tau_mem_inv =
    sigmoid(w) / dt`` (SpikingJelly's parametrisation), passed to Norse through
    its parameters each forward -- Norse's documented way to learn a parameter.
    """

    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        from norse.torch import LIFBoxCell, LIFBoxParameters
        from norse.torch.functional.reset import reset_value

        _norse_threshold_with_atan()
        self.dt = 1e-3
        self.w = nn.Parameter(torch.tensor(-math.log(p["tau"] - 1.0))) if p["plif"] else None
        params = LIFBoxParameters(
            tau_mem_inv=torch.tensor(1.0 / (p["tau"] * self.dt)),
            v_th=torch.tensor(p["v_threshold"]),
            v_reset=torch.tensor(0.0 if p["v_reset"] is None else float(p["v_reset"])),
            v_leak=torch.tensor(0.0),
            method="atan",
            alpha=p["alpha"],
            reset_method=_norse_detached_reset if p["detach_reset"] else reset_value,
        )
        self.cell = LIFBoxCell(p=params, dt=self.dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w is not None:
            self.cell.p = self.cell.p._replace(tau_mem_inv=self.w.sigmoid() / self.dt)
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
        "surrogate": "atan",
        "alpha": p["alpha"],
    }
    if p["plif"]:
        return snn.ParametricLIF(init_tau=p["tau"], decay_input=p["decay_input"], **common)
    return snn.LIF(tau=p["tau"], decay_input=p["decay_input"], **common)


# ----------------------------------------------------------- floors
#: Bytes per neuron-step that one fused LIF layer must move (L1, L2; fp32 input, output and
#: gradients), and what they are. The step's loss is ``y.sum()``, whose gradient is one
#: broadcast value: a kernel can read it in place (snncc's does), so it costs no traffic.
LAYER_BYTES: dict[str, tuple[int, str]] = {
    "fwd": (8, "read x 4 + write spikes 4"),
    "fwd+bwd": (
        16,
        "forward 8; backward recomputing h from x: re-read x 4 + write grad x 4 "
        "(saving h instead costs 20: write h 4 in the forward, read it back 4)",
    ),
}


@dataclass(frozen=True)
class Floor:
    """The least work a case needs, and the time it takes at the measured ceilings."""

    ms: float | None  # None: no ceiling measured on this device
    work: str  # e.g. "16 B/neuron-step, 4.29 GB" or "47.7 GFLOP"
    what: str  # what is counted


def floor(case: Case, mode: str, roof: dict[str, Any]) -> Floor | None:
    """L1/L2: bytes over the measured copy rate; M1: GEMM FLOPs over the fp32 GEMM rate; C1: none"""
    if case.workload in ("L1", "L2"):
        per, what = LAYER_BYTES[mode]
        total = per * case.T * case.neurons
        rate = roof.get("copy_bytes_per_s")
        size = f"{total / 1e9:.3g} GB" if total >= 1e9 else f"{total / 1e6:.3g} MB"
        return Floor(total / rate * 1e3 if rate else None, f"{per} B/neuron-step, {size}", what)
    if case.workload == "M1":
        total = gemm_flops(case, mode)
        rate = roof.get("fp32_gemm_flops_per_s")
        what = (
            "forward GEMMs"
            if mode == "fwd"
            else ("forward GEMMs + weight gradients + input gradients of layers 2 and 3")
        )
        return Floor(total / rate * 1e3 if rate else None, f"{total / 1e9:.4g} GFLOP", what)
    return None


def gemm_flops(case: Case, mode: str = "fwd") -> float:
    """M1's GEMM FLOPs (2 * rows * in * out per Linear): the forward, or the whole training step.

    The training step adds the weight gradients (as many FLOPs as the forward) and the
    input gradients of the second and third Linear (the first one's input needs none).
    """
    h = case.model["hidden"]
    rows = case.T * case.B
    fwd = 2.0 * rows * (784 * h + h * h + h * 10)
    return fwd if mode == "fwd" else 2 * fwd + 2.0 * rows * (h * h + h * 10)


def fmt_ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


# ----------------------------------------------------------- R1: a recurrent SNN (issue 16)
# One contained block (the recurrent workload's cases and its three frameworks' models):
# a speech-style RSNN, 700 inputs (SHD's channels) -> 256 recurrent LIF -> 20 outputs
# (a Linear readout of the spikes), T = 100, B = 64. The same sizes on a CPU (--small):
# a CPU runs it in a fraction of a second per step.
R1_SIZES = {"inputs": 700, "hidden": 256, "outputs": 20, "T": 100, "B": 64}
#: the input and recurrent weights' gains over PyTorch's default init, so that the uniform
#: [0, 1) input makes about 12% of the hidden neurons fire per step (measured with the
#: SpikingJelly model, seed 0: 12.7%; test_benchmarks.py checks 5-25%) and the loop feeds back
R1_GAINS = {"input": 10.0, "recurrent": 2.0}


def r1_cases(small: bool) -> list[Case]:
    """R1 at the issue's sizes, on every device (``small`` changes nothing)."""
    del small
    z = R1_SIZES
    label = f"T={z['T']} B={z['B']} {z['inputs']}-{z['hidden']}r-{z['outputs']}"
    return [Case("R1", label, z["T"], z["B"], (z["inputs"],), z["hidden"], "uniform01", dict(z))]


def r1_sj_model(case: Case) -> nn.Module:
    """SpikingJelly: Linear 700-256, then ``LinearRecurrentContainer`` (its Linear over
    cat(x, s[t-1]), 512-256, into LIF tau=2, decay_input, hard reset 0, ATan; SpikingJelly's
    container maps back to its input width, so the projection comes first), then a Linear
    readout; multi-step."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    torch.manual_seed(0)
    z = case.model
    h = z["hidden"]
    lif = neuron.LIFNode(
        tau=2.0, decay_input=True, v_reset=0.0, surrogate_function=surrogate.ATan(), step_mode="s"
    )
    proj = layer.Linear(z["inputs"], h, step_mode="m")
    rec = layer.LinearRecurrentContainer(lif, in_features=h, out_features=h, step_mode="m")
    with torch.no_grad():
        proj.weight *= R1_GAINS["input"]
        rec.rc.weight[:, h:] *= R1_GAINS["recurrent"]
    return nn.Sequential(proj, rec, layer.Linear(h, z["outputs"], step_mode="m"))


def _r1_weights(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Linear]:
    """The SpikingJelly model's input weight and bias (its two Linears before the neuron,
    folded into one), recurrent weight and readout, for the other frameworks' versions of
    the same network."""
    sj = r1_sj_model(case)
    h = case.model["hidden"]
    proj, rc = sj[0], sj[1].rc
    w_x = rc.weight.detach()[:, :h]
    w_in = w_x @ proj.weight.detach()
    b = w_x @ proj.bias.detach() + rc.bias.detach()
    return w_in, b, rc.weight.detach()[:, h:].clone(), sj[2]


class R1SnnTorch(nn.Module):
    """snnTorch: Linear over all T, then ``RLeaky`` (all-to-all recurrent Linear, beta 0.5,
    zero reset, ATan) stepped over T, then the readout. SpikingJelly's decay_input LIF
    ``h = v + (x - v) / 2`` is snnTorch's ``beta * m + x`` with the input (and the
    recurrent term) scaled by 1 - beta = 0.5, so the weights are the SpikingJelly model's
    times 0.5."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        import snntorch
        from snntorch import surrogate

        w_in, b, w_rec, readout = _r1_weights(case)
        z = case.model
        self.fc = nn.Linear(z["inputs"], z["hidden"])
        self.rlif = snntorch.RLeaky(
            beta=0.5,
            linear_features=z["hidden"],
            spike_grad=surrogate.atan(alpha=2.0),
            reset_mechanism="zero",
        )
        with torch.no_grad():
            self.fc.weight.copy_(w_in * 0.5)
            self.fc.bias.copy_(b * 0.5)
            self.rlif.recurrent.weight.copy_(w_rec * 0.5)
            self.rlif.recurrent.bias.zero_()
        self.readout = nn.Linear(z["hidden"], z["outputs"])
        self.readout.load_state_dict(readout.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cur = self.fc(x)
        spk, mem = self.rlif.init_rleaky()
        out = []
        for ct in cur:
            spk, mem = self.rlif(ct, spk, mem)
            out.append(spk)
        return self.readout(torch.stack(out))


class R1Norse(nn.Module):
    """Norse: ``LIFRecurrentCell`` (input and recurrent weights, no bias; its current-based
    LIF with dt * tau_mem_inv = 0.5 and dt * tau_syn_inv = 1, so the current is the step's
    input; SuperSpike, Norse's default surrogate) stepped over T, then the readout."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        from norse.torch import LIFParameters, LIFRecurrentCell

        w_in, _, w_rec, readout = _r1_weights(case)
        z = case.model
        dt = 1e-3
        p = LIFParameters(
            tau_syn_inv=torch.tensor(1.0 / dt),
            tau_mem_inv=torch.tensor(0.5 / dt),
            v_th=torch.tensor(1.0),
            v_reset=torch.tensor(0.0),
            v_leak=torch.tensor(0.0),
        )
        self.cell = LIFRecurrentCell(z["inputs"], z["hidden"], p=p, dt=dt)
        with torch.no_grad():
            self.cell.input_weights.copy_(w_in)
            self.cell.recurrent_weights.copy_(w_rec)
        self.readout = nn.Linear(z["hidden"], z["outputs"])
        self.readout.load_state_dict(readout.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state, out = None, []
        for xt in x:
            z, state = self.cell(xt, state)
            out.append(z)
        return self.readout(torch.stack(out))
