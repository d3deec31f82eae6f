"""Checks the model tests share: fp32-derived tolerances, and that every neuron layer fires.

Why a tolerance in roundings: two correct fp32 programs that sum in a different
order (XLA's dot products and convolutions against torch's) differ by a few
roundings of the values summed, so a difference is measured in units of fp32's
unit roundoff ``u = 2**-24`` times the compared tensor's own scale (its largest
magnitude). A fixed ``atol=1e-5`` is 84 roundings of a value near 1 and 8400
of one near 1e-2; an error such as a BatchNorm losing its ``eps`` (moving
membranes by 4.3e-5 where they are about 2) hid under it.

Why the firing check: a model test whose neurons never fire compares zeros
with zeros, and every spike-path bug (threshold, reset, surrogate) passes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec

#: fp32 unit roundoff (half an ulp of 1.0)
U32 = 2.0**-24

#: the roundings (of the compared tensor's largest magnitude) a value computed by a
#: differently ordered fp32 program may be away from the reference: the jax tests
#: measured at most 4 (the worst seen is printed with -s, see MEASURED); 4x that
FP32_ROUNDINGS = 16

#: worst difference seen, in roundings of the tensor's scale (printed by the jax tests)
MEASURED = {"roundings": 0.0}


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_fp32_close(got: Any, want: Any, what: str = "", roundings: float = FP32_ROUNDINGS):
    """``|got - want| <= roundings * u * max|want|`` elementwise, NaNs in the same places."""
    got, want = _np(got).astype(np.float64), _np(want).astype(np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaNs differ"
    finite = ~np.isnan(want)
    if not finite.any():
        return
    scale = float(np.abs(want[finite]).max())
    err = float(np.abs(got[finite] - want[finite]).max())
    if scale > 0:
        MEASURED["roundings"] = max(MEASURED["roundings"], err / (U32 * scale))
    tol = roundings * U32 * scale
    assert err <= tol, (
        f"{what}: max |difference| {err:.3g} > {roundings} fp32 roundings of the scale "
        f"{scale:.3g} ({tol:.3g}; {err / (U32 * scale) if scale else float('inf'):.1f} roundings)"
    )


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
    assert neurons, "the model has no spiking neuron layer"
    fused = [n for n in neurons if g.attrs(n).get("epilogue")]
    assert not fused, f"neurons {fused} carry fused epilogues: pass the model or its traced graph"
    first = len(g.meta["outputs"])
    for i, n in enumerate(neurons):
        g.add_node("output", [n], attrs={"index": first + i}, shape=g.node(n).get("shape"))
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
