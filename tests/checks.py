"""Checks the model tests share: every neuron layer fires; membranes exactly on the threshold.

(Tolerances derived from fp32 rounding live in tests/tolerances.py.)

Why the firing check: a model test whose neurons never fire compares zeros
with zeros, and every spike-path bug (threshold, reset, surrogate) passes it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- firing
def _spiking_neurons(graph: Graph) -> list[int]:
    return [
        n
        for n in graph.iter_ops("neuron")
        if NeuronSpec.from_dict(graph.attrs(n)["neuron"]).output == "spike"
    ]


def layer_spike_counts(model_or_graph: Any, x: Any) -> dict[str, int]:
    """Spikes each spiking neuron layer emits on ``x`` (reference backend), by layer name.

    Every spiking neuron node becomes an extra output of a copy of the traced
    (or given) graph, so the count is the layer's own output, whatever follows it.
    """
    from snncc.backends.reference import ReferenceProgram
    from snncc.frontend import trace

    x = torch.as_tensor(_np(x)) if not isinstance(x, (torch.Tensor, tuple, list)) else x
    graph = model_or_graph if isinstance(model_or_graph, Graph) else trace(model_or_graph, x)
    g = graph.copy()
    neurons = _spiking_neurons(g)
    if not neurons:  # a read-out only model (LI): nothing that could stay silent
        return {}
    fused = [n for n in neurons if g.attrs(n).get("epilogue")]
    assert not fused, f"neurons {fused} carry fused epilogues: pass the model or its traced graph"
    first = len(g.meta["outputs"])
    for i, n in enumerate(neurons):
        g.add_node("output", [n], attrs={"index": first + i}, shape=g.node(n).get("shape"))
    g.meta.pop("groups", None)  # the outputs are new nodes: the reference schedules them again
    prog = ReferenceProgram(g, requires_grad=False)
    with torch.no_grad():
        ys, _ = prog.run(x)
    ys = ys if isinstance(ys, tuple) else (ys,)
    counts = {}
    for n, y in zip(neurons, ys[first:]):
        name = g.node(n).get("name") or f"%{n}"
        counts[name] = int((y != 0).sum())
    return counts


def assert_fires(model_or_graph: Any, x: Any) -> dict[str, int]:
    """Fail when any spiking neuron layer stays silent on ``x`` (it would test nothing)."""
    counts = layer_spike_counts(model_or_graph, x)
    silent = [name for name, c in counts.items() if c == 0]
    assert not silent, f"neuron layers that never fire on this input: {silent} (spikes: {counts})"
    return counts


# --------------------------------------------------------------------------- the threshold
def threshold_of(spec: NeuronSpec, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 threshold a neuron compares with: its ``threshold`` param, or the spec's."""
    th = params.get("threshold")
    return th.detach().float() if th is not None else torch.tensor(spec.v_threshold)


def charged_membrane(
    spec: NeuronSpec, params: dict[str, torch.Tensor], x: torch.Tensor, state: dict, ports=()
) -> torch.Tensor:
    """The membrane one step charges before it fires (what the threshold is compared with):
    the same step without a reset, read as the membrane (snnTorch's reset term is 0 while
    the previous membrane is below the threshold, as in a fresh state)."""
    from snncc import neurons

    quiet = spec.replace(reset="none", output="membrane", reset_delay=False)
    p = {**params, **neurons.derived_constants(spec, params)}
    with torch.no_grad():
        return neurons.step(quiet, p, x, dict(state), *ports)[0]


def threshold_crossing_inputs(
    spec: NeuronSpec, params: dict[str, torch.Tensor], state: dict, ports=(), guess: float = 1.0
) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(state, landed, exact, below, above)``: from the returned state (``state`` with a
    membrane moved by a few ulps where needed), input ``exact`` charges the membranes where
    ``landed`` exactly onto their threshold (fires under ``>=``, not under ``>``), ``below``
    every membrane to the fp32 value just under it and ``above`` just over it; inputs
    shaped like ``state["v"]``; at least half of them land.

    Found by a secant step in float64, then a walk one fp32 ulp at a time (the charge
    rises monotonically with x, with slope at most 1 in every form). Where rounding
    steps over the threshold from this membrane (a tie), the membrane moves one ulp; where
    a later term (a recurrent input, a synaptic current) rounds past it, it stays off.
    """
    v0 = state["v"]
    th = threshold_of(spec, params).expand_as(v0)
    up, down = torch.full_like(v0, math.inf), torch.full_like(v0, -math.inf)
    state = dict(state)

    def h(x: torch.Tensor) -> torch.Tensor:
        return charged_membrane(spec, params, x, state, ports).expand_as(v0)

    for _ in range(16):
        x = torch.full_like(v0, guess)
        for _ in range(3):
            x2 = x + 0.25
            h1, h2 = h(x).double(), h(x2).double()
            slope = (h2 - h1) / (x2.double() - x.double())
            x = (x.double() + (th.double() - h1) / slope).float()
        for _ in range(64):
            hx = h(x)
            if torch.equal(hx, th):
                break
            x = torch.where(
                hx < th, torch.nextafter(x, up), torch.where(hx > th, torch.nextafter(x, down), x)
            )
        missed = h(x) != th
        if not missed.any():
            break
        state["v"] = torch.where(missed, torch.nextafter(state["v"], down), state["v"])
    landed = h(x) == th
    frac = float(landed.float().mean())
    assert frac >= 0.5, f"{spec.charge}: only {frac:.0%} of the membranes land on the threshold"
    below, above = x.clone(), x.clone()
    while bool((h(below) >= th).any()):
        below = torch.where(h(below) >= th, torch.nextafter(below, down), below)
    while bool((h(above) <= th).any()):
        above = torch.where(h(above) <= th, torch.nextafter(above, up), above)
    return state, landed, x, below, above


def fired_on_step(spec: NeuronSpec, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
    """Whether each neuron fired on a step, read from that step's output and the membrane
    ``h`` it charged (:func:`charged_membrane`); None where the output does not show it
    (a membrane readout without a reset, snnTorch's delayed reset, a current)."""
    if spec.output == "spike":
        return out != 0
    if spec.output == "membrane" and spec.reset != "none" and not spec.reset_delay:
        return out != h.expand_as(out)  # a reset moved it off the charged value
    return None


def assert_fires_at_threshold(spec: NeuronSpec, out: torch.Tensor, h: torch.Tensor) -> None:
    """Step 0 of a :func:`threshold_graph` output: rows [exact | below | above] thirds."""
    on, lo, hi = fired_on_step(spec, out[0], h).chunk(3)
    assert (on == (spec.fire_cmp == ">=")).all(), f"{spec.summary()}: exactly on the threshold"
    assert not lo.any() and hi.all(), f"{spec.summary()}: one ulp off the threshold"


# --------------------------------------------------------------------------- binary-exact forms
SJ_FIRING = ("sj_if", "sj_lif_decay_input", "sj_lif", "sj_plif_decay_input", "sj_plif", "snncc_li")
FORM_FIRING = (
    "snntorch_leaky",
    "snntorch_synaptic",
    "snntorch_rleaky",
    "snntorch_rleaky_v",
    "norse_lif",
    "norse_lif_recurrent",
    "norse_lifbox",
)


def dyadic_spec(charge: str, cmp: str, reset_delay: bool = False) -> NeuronSpec:
    """A firing spec whose constants are powers of two and whose state starts at 0: with
    inputs from :func:`threshold_crossing_inputs` every step is exact in fp32, so no
    reordering (XLA's division by a constant as a multiplication by its reciprocal, a fused
    multiply-add, ONNX Runtime's kernels) can move a membrane: one that lands on the
    threshold in torch lands on it everywhere."""
    from snncc.ir.neuron import FORMS

    common = dict(model=charge, charge=charge, v_threshold=1.0, fire_cmp=cmp, surrogate="atan")
    if charge in SJ_FIRING:
        plif = charge.startswith("sj_plif")
        tau = 2.0 if charge in ("sj_lif_decay_input", "sj_lif", "snncc_li") else None
        return NeuronSpec(tau=tau, v_reset=0.0, learnable=("w",) if plif else (), **common)
    roles = FORMS[charge].roles
    if charge.startswith("snntorch"):
        consts = {"beta": 0.5, "alpha": 0.5, "graded_spikes_factor": 0.5, "V": 0.5}
        extra = {k: v for k, v in consts.items() if k in roles}
        return NeuronSpec(
            v_reset=0.0, reset="subtract", extra=extra, reset_delay=reset_delay, **common
        )
    extra = {"dt": 1e-3, "v_leak": 0.0, "dt_tau_mem_inv": 0.5}
    if "tau_syn_inv" in roles:
        extra["neg_dt_tau_syn_inv"] = -0.5
    return NeuronSpec(v_reset=0.0, reset="hard", extra=extra, **common)


def threshold_graph() -> tuple[Graph, tuple[torch.Tensor, ...], list[tuple[NeuronSpec, Any]]]:
    """Every firing form under ``>=`` and ``>`` (:func:`dyadic_spec`), one input -> neuron ->
    output each (forms with a recurrent port get it through zero weights: exactly 0), and
    inputs [T=3, 3 * 2, 2]: at t = 0 from the fresh state, rows exactly onto the threshold,
    one ulp below it and one above it; at t = 1 a drive of 0.75, which fires a membrane
    left on the threshold only if snnTorch's reset from it is 0 (``m - th > 0``; with its
    delayed reset, the spikes show that); then a quiet step. Returns (graph, inputs,
    [(spec, charged h at t = 0)])."""
    g = Graph()
    g.meta.update(source="snncc", step_mode="m")
    w = torch.tensor(0.0)  # PLIF: k = sigmoid(0) = 0.5
    g.add_param("w", w.numpy())
    g.add_param("zero", np.zeros((2, 2), np.float32))
    xs, cases = [], []
    specs = [dyadic_spec(c, cmp) for cmp in (">=", ">") for c in SJ_FIRING + FORM_FIRING]
    specs += [dyadic_spec(c, ">", reset_delay=True) for c in FORM_FIRING if "snntorch" in c]
    for k, spec in enumerate(specs):
        inp = g.add_node("input", attrs={"index": k}, shape=["B", 2], name=f"x{k}")
        params = {"w": "w"} if spec.charge.startswith("sj_plif") else {}
        nid = g.add_node(
            "neuron", [inp], attrs={"neuron": spec.to_dict()}, params=params, shape=["B", 2]
        )
        g.node(nid)["name"] = f"n{k}"
        if len(spec.input_ports) > 1:
            rec = g.add_node("linear", [(nid, 1)], params={"weight": "zero"}, shape=["B", 2])
            g.add_edge(rec, nid, 1)
        g.add_node("output", [nid], attrs={"index": k}, shape=["B", 2])
        tparams = {"w": w} if params else {}
        fresh = {var: torch.zeros(2, 2) for var in spec.state_vars}
        rec0 = (torch.zeros(2, 2),) if len(spec.input_ports) > 1 else ()
        st, landed, exact, below, above = threshold_crossing_inputs(spec, tparams, fresh, rec0)
        assert landed.all() and torch.equal(st["v"], fresh["v"]), spec.summary()
        first = torch.cat([exact, below, above])
        xs.append(torch.stack([first, torch.full_like(first, 0.75), torch.zeros_like(first)]))
        zeros = {var: torch.zeros(6, 2) for var in spec.state_vars}
        h = charged_membrane(spec, tparams, first, zeros, tuple(r.repeat(3, 1) for r in rec0))
        cases.append((spec, h))
    return g, tuple(xs), cases


# --------------------------------------------------------------------------- export
def assert_export_runs_elsewhere(exported: Any, x: torch.Tensor, y: torch.Tensor, folder) -> None:
    """``exported`` (a torch.export program), saved and loaded in a fresh Python process that
    never compiled the model, gives ``y`` on ``x`` bit for bit: the snncc ops it calls are
    registered by ``snncc.register_torch_ops()`` and rebuild their kernels from their keys."""
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(folder)
    path = folder / "exported.pt2"
    torch.export.save(exported, str(path))
    torch.save(x, folder / "x.pt")
    torch.save(y, folder / "y.pt")
    script = "\n".join(
        [
            "import torch",
            "import snncc",
            "snncc.register_torch_ops()",
            f"ep = torch.export.load({str(path)!r})",
            f"x, y = torch.load({str(folder / 'x.pt')!r}), torch.load({str(folder / 'y.pt')!r})",
            "with torch.no_grad():",
            "    assert torch.equal(ep.module()(x), y)",
            "print('ok')",
        ]
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
