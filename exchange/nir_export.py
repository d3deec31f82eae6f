"""NIR export (snncc IR -> NIR 1.0 graph / HDF5 file) and the discretisation convention.

NIR (the Neuromorphic Intermediate Representation) describes neurons in
continuous time (``tau dv/dt = (v_leak - v) + r I``); snncc runs discrete
steps. This module fixes *one* convention that maps between the two, used in
both directions (:func:`to_nir` here, :func:`snncc.exchange.nir_import.from_nir`
there), so that snncc -> NIR -> snncc gives back the same outputs bit for bit
on the reference backend.

The convention (``dt`` is the duration of one step, in the file's time unit)
---------------------------------------------------------------------------
Every equation is forward Euler with step ``dt``; what the convention adds is
*which* floating-point form of that step snncc runs (all are the same Euler
step in exact arithmetic, they round differently). ``x`` is the summed input
of the node at step t, ``tau_s = tau / dt`` is a time constant in steps, and a
product ``g * x`` written below is an IR ``scale`` node that is left out when
``float32(g) == 1`` (then it is exactly ``x``).

``IF(r, v_threshold, v_reset)``
    ``h = v + (r*dt) * x`` (SpikingJelly IFNode, charge form ``sj_if``).
``I(r)``
    ``v = v + (r*dt) * x``; outputs v (``sj_if`` without reset).
``LIF(tau, r, v_leak, v_threshold, v_reset)``, uniform parameters and
``v_leak == v_reset`` (the forms SpikingJelly uses):
    ``float32(r) == 1``: ``h = v + (x - (v - v_leak)) / tau_s``
    (``sj_lif_decay_input``); else if ``float32(r*dt/tau) == 1``:
    ``h = (v - (v - v_leak) / tau_s) + x`` (``sj_lif``, what SpikingJelly's
    ``decay_input=False`` and snnTorch's Leaky export); else ``r * x`` first,
    then the first form.
``LIF`` otherwise (``v_leak != v_reset``, or per-neuron parameters):
    ``v1 = v + c * ((r*x + v_leak) - v)``, ``c = dt / tau`` (``norse_lifbox``).
``LI(tau, r, v_leak)``
    ``v_leak == 0`` and uniform: ``h = v + (r*x - v) / tau_s`` (``snncc_li``);
    otherwise ``v1 = v + c * ((v_leak - v) + r*x)`` (``norse_li`` with a
    current that never accumulates). Outputs the membrane.
``CubaLIF(tau_syn, tau_mem, r, v_leak, v_threshold, v_reset, w_in)`` / ``CubaLI``
    the synapse updates first and the membrane uses the new current:
    ``i1 = i + k*x`` with ``k = r * w_in * dt / tau_syn``,
    ``v1 = v + c_m * ((v_leak - v) + i1)``, ``i = i1 + c_s * i1`` with
    ``c_m = dt / tau_mem``, ``c_s = -dt / tau_syn`` (``norse_lif`` / ``norse_li``:
    Norse's LIFCell is ``k = 1``, i.e. ``w_in = tau_syn / dt``).
``Threshold(threshold)``
    ``z = x > threshold`` (stateless).

Firing: ``z = (v - v_threshold > 0)``, NIR's ``v > v_threshold`` (import
option ``fire=">="`` for files whose exporter meant SpikingJelly's ``>=``).
Reset: immediate and hard, ``v = z * v_reset + (1 - z) * v`` (import option
``reset="subtract"``: ``v = v - z * v_threshold``). Initial state: the
membrane starts at ``v_leak`` (IF: at ``v_reset``; I: at 0), currents at 0.
Parameters that differ per neuron become node params of the same forms
(Norse forms; per-neuron ``r``/``k`` of a 1-D layer become a diagonal
``linear``, which multiplies exactly).

Recurrent edges: NIR edges carry no delay. snncc places the one-step delay of
each cycle on the edge *leaving a neuron*: before t = 0 a neuron's output is
0, and the stateless nodes of the loop (an ``Affine`` with its bias, a
``Scale``) are recomputed from the delayed spikes at every step -- snnTorch's
RLeaky and Norse's LIFRecurrentCell behave this way. Formally: the back edges
of a depth-first search from the inputs (following the file's edge order) are
delayed, and a delayed edge out of a stateless node with a single use moves to
that node's in-loop inputs, until it leaves a neuron. A loop without a neuron
is refused. A node with several inputs sums them in the file's edge order.

Export (this module)
--------------------
:func:`to_nir` writes each node so that the convention above reproduces it:

- SpikingJelly ``sj_if`` -> ``IF(r = 1/dt)``; ``sj_lif_decay_input`` ->
  ``LIF(tau = tau_steps*dt, r = 1, v_leak = v_reset)``; ``sj_lif`` -> the same
  with ``r = tau_steps``; ``snncc_li`` -> ``LI``. ``tau`` is the double for
  which ``tau / dt`` gives ``tau_steps`` back exactly.
- SpikingJelly fires on ``>=``; NIR on ``>``. For a float32 membrane
  ``v >= th`` is exactly ``v > nextafter(th, -inf)``, so such a neuron is
  written with ``v_threshold`` one float32 below its threshold (exact for any
  float32 simulator that follows NIR).
- Norse ``norse_lif`` -> ``CubaLIF(tau_mem = dt/c_m, tau_syn = dt/(-c_s), r = 1,
  w_in = tau_syn/dt)``; ``norse_li`` -> ``CubaLI``; ``norse_lifbox`` -> ``LIF(r = 1)``.
  The time step must be the Norse modules' own ``dt``.
- snnTorch ``Leaky`` / ``RLeaky`` -> ``LIF(tau = dt/(1-beta), r = tau/dt)``,
  ``Synaptic`` -> ``CubaLIF(tau_syn = dt/(1-alpha), tau_mem = dt/(1-beta),
  r = tau_mem/dt, w_in = tau_syn/dt)``, a ``graded_spikes_factor`` a ``Scale``
  after the neuron. Only ``reset_mechanism="zero"`` with ``reset_delay=False``
  is what NIR describes (for a positive threshold).
- snnTorch ``RSynaptic`` (all to all) -> ``CubaLIF`` as ``Synaptic`` (its recurrent
  ``Linear`` is an edge of the graph), ``Lapicque`` -> ``LIF(tau = R*C, r = R)`` (the
  file's ``dt`` must be its ``time_step``); both reset from the previous membrane (a
  delayed reset, like ``reset_delay=True``: lossy, ``accept="reset_delay"``).
- Norse ``IAFCell`` / ``IAF`` -> ``IF(r = 1/dt)``: exact.
  Alpha, LIFAdEx, Izhikevich, LSNN and RSynaptic's one-to-one ``V`` have no NIR node.
- SpikingJelly ``CUBALIFNode`` -> ``CubaLIF`` as snnTorch's ``Synaptic`` (alpha =
  ``c_decay``, beta = ``v_decay``, its ``>=`` as above); a ``v_reset`` other than 0 starts
  the membrane off rest (lossy, ``accept="init"``). QIF, EIF, Izhikevich, KLIF (its
  ``k``-scaled ReLU) and LIAF (an analog output) have no NIR node.
- conv / pool / flatten / linear / scale / add map to the matching NIR nodes
  (an ``add`` is a ``Scale(1)`` node fed by every addend).

The NIR fields alone describe the model (for any NIR reader). The discrete
form they go through is not unique (SpikingJelly divides by ``tau_s``,
snnTorch multiplies by ``beta``, Norse by ``dt/tau``), so each neuron also
carries its snncc NeuronSpec in ``metadata["snncc"]`` (JSON). The importer
uses it only when re-exporting it gives exactly the file's fields (an edited
file falls back to the convention) and only for exact conversions. Without
it the convention's own forms still round-trip bit for bit: SpikingJelly's
IF/LIF (hard reset), snncc.nn's LI and Norse's LIFCell/LICell; snnTorch's
forms, Norse's LIFBoxCell and PLIF then run the convention's form (the same
Euler step, rounded differently).

Lossy conversions are refused, naming the node, the reason and the ``accept``
key that writes the approximation instead (see :data:`EXPORT_ACCEPT`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snncc.errors import SnnccError, UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.safe_files import replaced_on_success

__all__ = [
    "EXPORT_ACCEPT",
    "META_KEY",
    "NIRWarning",
    "check_dt",
    "neuron_fields",
    "parse_accept",
    "place_delays",
    "to_nir",
]

#: key of the snncc metadata (a JSON string) on NIR nodes and on the graph
META_KEY = "snncc"
#: version of that metadata's layout
META_VERSION = 1

#: accept key -> the approximation it allows when exporting
EXPORT_ACCEPT = {
    "reset": "write a subtractive ('soft') or absent reset as NIR's hard reset to v_reset "
    "(NIR resets are hard only)",
    "reset_delay": "write snnTorch's reset_delay=True (reset at the next step) as NIR's "
    "immediate reset",
    "init": "write a neuron whose membrane does not start at rest (v_leak) as one that does",
}


class NIRWarning(UserWarning):
    """A NIR file that imports, but whose contents snncc reads with a caveat."""


# --------------------------------------------------------------------------- shared helpers


def check_dt(dt: Any, what: str, hint: str = "") -> float:
    """``dt`` as a positive finite float, or an UnsupportedError saying why it is needed."""
    if dt is None:
        raise UnsupportedError(
            f"{what} needs dt, the time one snncc step stands for (in the file's time unit, "
            f"e.g. seconds): NIR neurons are continuous-time, dt decides the discretisation{hint}"
        )
    try:
        value = float(dt)
    except (TypeError, ValueError):
        raise UnsupportedError(f"{what}: dt={dt!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise UnsupportedError(f"{what}: dt={dt!r} must be a positive finite number")
    return value


def parse_accept(accept: str | Iterable[str] | None, known: Mapping[str, str], what: str) -> set:
    """The accepted approximation keys (a comma-separated string or an iterable)."""
    if accept is None:
        return set()
    items = accept.split(",") if isinstance(accept, str) else list(accept)
    keys = {str(a).strip() for a in items if str(a).strip()}
    bad = sorted(keys - set(known))
    if bad:
        listing = "; ".join(f"{k!r}: {v}" for k, v in known.items())
        raise UnsupportedError(f"{what}: unknown accept key(s) {bad}; known: {listing}")
    return keys


def f32_is_one(value: float) -> bool:
    """Whether multiplying a float32 tensor by ``value`` is the identity (float32(value) == 1)."""
    with np.errstate(over="ignore"):
        return bool(np.float32(value) == np.float32(1.0))


def tau_from_steps(steps: np.ndarray, dt: float) -> np.ndarray:
    """The doubles ``tau`` closest to ``steps * dt`` with ``tau / dt == steps`` where one exists."""
    steps = np.asarray(steps, dtype=np.float64)
    tau = steps * dt
    for _ in range(4):
        q = tau / dt
        tau = np.where(
            q < steps,
            np.nextafter(tau, np.inf),
            np.where(q > steps, np.nextafter(tau, -np.inf), tau),
        )
    return tau


def tau_from_coef(coef: np.ndarray, dt: float) -> np.ndarray:
    """The doubles ``tau`` closest to ``dt / coef`` with ``dt / tau == coef`` where one exists."""
    coef = np.asarray(coef, dtype=np.float64)
    with np.errstate(divide="ignore"):
        tau = dt / coef
        for _ in range(4):
            q = dt / tau
            tau = np.where(
                q < coef,
                np.nextafter(tau, -np.inf),
                np.where(q > coef, np.nextafter(tau, np.inf), tau),
            )
    return tau


def below(value: np.ndarray, dtype: str) -> np.ndarray:
    """The largest ``dtype`` number below each value: ``v >= th`` iff ``v > below(th)``."""
    np_dtype = np.float64 if dtype == "float64" else np.float32
    return np.nextafter(np.asarray(value, dtype=np_dtype), np_dtype(-np.inf)).astype(np.float64)


# --------------------------------------------------------------------------- delays


def place_delays(
    neurons: Mapping[str, bool], edges: list[tuple[str, str]], roots: list[str]
) -> set[tuple[str, str]]:
    """The edges that carry a one-step delay under the convention (module docstring).

    ``neurons``: every node name -> whether it is a neuron (stateful); ``roots``:
    the input nodes, searched first. Raises UnsupportedError for a loop
    without a neuron.
    """
    succ: dict[str, list[str]] = {n: [] for n in neurons}
    pred: dict[str, list[str]] = {n: [] for n in neurons}
    for a, b in edges:
        succ[a].append(b)
        pred[b].append(a)
    back: list[tuple[str, str]] = []
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    for root in [*roots, *neurons]:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(succ[root]))]
        while stack:
            node, it = stack[-1]
            for nxt in it:
                if nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(succ[nxt])))
                    break
                if state[nxt] == 1:
                    back.append((node, nxt))
            else:
                state[node] = 2
                stack.pop()
    comp = _components(neurons, succ)
    for members in {frozenset(m) for m in comp.values()}:
        looped = len(members) > 1 or any(n in succ[n] for n in members)
        if looped and not any(neurons[n] for n in members):
            raise UnsupportedError(
                f"NIR nodes {sorted(members)} form a loop without a neuron: an algebraic loop "
                "has no step-by-step meaning (a loop needs a neuron, whose previous output "
                "closes it)"
            )
    delayed: set[tuple[str, str]] = set()
    for u, v in back:
        delayed |= _retreat(u, v, neurons, succ, pred, comp, set())
    return delayed


def _components(neurons: Mapping[str, bool], succ: dict[str, list[str]]) -> dict[str, set[str]]:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(neurons)
    g.add_edges_from((a, b) for a, bs in succ.items() for b in bs)
    comp: dict[str, set[str]] = {}
    for members in nx.strongly_connected_components(g):
        for n in members:
            comp[n] = members
    return comp


def _retreat(
    u: str,
    v: str,
    neurons: Mapping[str, bool],
    succ: dict[str, list[str]],
    pred: dict[str, list[str]],
    comp: dict[str, set[str]],
    seen: set[str],
) -> set[tuple[str, str]]:
    """Move the delay of back edge u -> v back through stateless single-use nodes."""
    if neurons[u] or len(succ[u]) != 1 or u in seen:
        return {(u, v)}
    seen.add(u)
    inner = [w for w in pred[u] if w in comp[u]]
    out: set[tuple[str, str]] = set()
    for w in inner:
        out |= _retreat(w, u, neurons, succ, pred, comp, seen)
    return out


# --------------------------------------------------------------------------- neurons


@dataclass
class NeuronExport:
    """How one IR neuron node is written: NIR node type and fields, plus what is lost."""

    kind: str
    fields: dict[str, np.ndarray]
    graded: np.ndarray | None = None  # a Scale written after the neuron (snnTorch graded spikes)
    lossy: list[tuple[str, str]] = field(default_factory=list)  # (accept key, why)


_SPIKING_NIR = {"IF", "LIF", "CubaLIF"}


def _arr(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), shape).copy()


def _param(params: Mapping[str, np.ndarray], role: str, fallback: Any) -> Any:
    value = params.get(role)
    return fallback if value is None else np.asarray(value, dtype=np.float64)


def _threshold(
    spec: NeuronSpec, params: Mapping[str, np.ndarray], shape: tuple, dtype: str
) -> np.ndarray:
    th = _arr(_param(params, "threshold", spec.v_threshold), shape)
    return below(th, dtype) if spec.fire_cmp == ">=" else th


def _finite_tau(kind: str, **taus: np.ndarray) -> None:
    for name, tau in taus.items():
        if not np.all(np.isfinite(tau)) or not np.all(tau > 0):
            raise UnsupportedError(
                f"{name} would not be a positive finite time constant ({kind} needs one): "
                "a neuron without leak (beta = 1, or a zero rate) has no NIR LIF form"
            )


def neuron_fields(
    spec: NeuronSpec,
    params: Mapping[str, np.ndarray],
    shape: tuple[int, ...],
    dt: float,
    dtype: str = "float32",
) -> NeuronExport:
    """The NIR node that describes ``spec`` under the convention (module docstring).

    ``params``: role -> array for the node params the spec reads. Raises
    UnsupportedError for a form NIR cannot describe at all; approximations are
    listed in ``lossy`` for the caller to refuse or accept.
    """
    form = spec.charge
    lossy: list[tuple[str, str]] = []
    spiking_form = form not in ("snncc_li", "norse_li")
    if spec.reset == "subtract":
        lossy.append(("reset", "it resets by subtracting the threshold; NIR resets are hard"))
    elif spec.reset == "none" and spiking_form:
        lossy.append(("reset", "it never resets; NIR spiking neurons reset to v_reset"))
    if spec.reset_delay:
        lossy.append(
            ("reset_delay", "snnTorch reset_delay=True resets at the next step; NIR immediately")
        )
    elif form in ("snntorch_lapicque", "snntorch_rsynaptic") and spec.reset != "none":
        lossy.append(
            (
                "reset_delay",
                "snnTorch's Lapicque / RSynaptic reset from the previous membrane (at the next "
                "step, as reset_delay=True); NIR immediately",
            )
        )
    vr = 0.0 if spec.v_reset is None or spec.reset != "hard" else float(spec.v_reset)

    def full(value: Any) -> np.ndarray:
        return _arr(value, shape)

    if form == "sj_if":
        out = NeuronExport(
            "IF",
            {
                "r": full(1.0 / dt),
                "v_threshold": _threshold(spec, params, shape, dtype),
                "v_reset": full(vr),
            },
        )
        rest = vr
    elif form in ("sj_lif_decay_input", "sj_lif", "snncc_li"):
        tau = full(tau_from_steps(np.float64(spec.tau), dt))
        r = full(1.0 if form != "sj_lif" else float(spec.tau))
        leak = 0.0 if form == "snncc_li" else vr
        fields = {"tau": tau, "r": r, "v_leak": full(leak)}
        if form != "snncc_li":
            fields["v_threshold"] = _threshold(spec, params, shape, dtype)
            fields["v_reset"] = full(vr)
        out = NeuronExport("LIF" if form != "snncc_li" else "LI", fields)
        rest = leak
    elif form in ("sj_plif_decay_input", "sj_plif"):
        import torch

        w = params.get("w")
        if w is None:
            raise UnsupportedError("its PLIF weight 'w' is missing")
        k = float(torch.as_tensor(np.asarray(w, dtype=np.float32)).sigmoid())
        tau = full(tau_from_coef(np.float64(k), dt))
        r = full(1.0 if form == "sj_plif_decay_input" else 1.0 / k)
        out = NeuronExport(
            "LIF",
            {
                "tau": tau,
                "r": r,
                "v_leak": full(vr),
                "v_threshold": _threshold(spec, params, shape, dtype),
                "v_reset": full(vr),
            },
        )
        rest = vr
    elif form in ("snntorch_leaky", "snntorch_rleaky", "snntorch_synaptic", "snntorch_rsynaptic"):
        out, rest = _snntorch_fields(spec, params, shape, dt, full)
    elif form == "snntorch_lapicque":
        out, rest = _lapicque_fields(spec, params, shape, dt, full)
    elif form == "sj_cuba_lif":
        out, rest = _sj_cuba_fields(spec, params, shape, dt, dtype, full, vr)
    elif form == "norse_iaf":
        out = NeuronExport(
            "IF",
            {
                "r": full(1.0 / dt),  # the convention's h = v + (r*dt) * x is Norse's v + x
                "v_threshold": _threshold(spec, params, shape, dtype),
                "v_reset": full(_param(params, "v_reset", vr)),
            },
        )
        rest = vr
    elif form in ("norse_lif", "norse_lif_recurrent", "norse_lifbox", "norse_li"):
        out, rest = _norse_fields(spec, params, shape, dt, dtype, full)
    else:
        raise UnsupportedError(f"its charge form {form!r} has no NIR node")
    if spiking_form and spec.output != "spike":
        raise UnsupportedError(
            f"it outputs its {spec.output}; NIR spiking neurons output spikes only "
            "(use the spikes, or an LI read-out)"
        )
    if not spiking_form and spec.output != "membrane":
        raise UnsupportedError(f"it outputs its {spec.output}; NIR LI nodes output the membrane")
    if not math.isclose(float(spec.v_init), float(rest), rel_tol=0.0, abs_tol=0.0):
        lossy.append(
            (
                "init",
                f"its membrane starts at {spec.v_init:g}; NIR neurons start at rest ({rest:g})",
            )
        )
    out.lossy = lossy + out.lossy
    return out


def _snntorch_fields(
    spec: NeuronSpec, params: Mapping[str, np.ndarray], shape: tuple, dt: float, full: Any
) -> tuple[NeuronExport, float]:
    th = full(_param(params, "threshold", spec.v_threshold))
    if spec.reset == "hard" and not np.all(th > 0):
        raise UnsupportedError(
            "its threshold is not positive: snnTorch's zero reset then differs from NIR's "
            "hard reset (it tests the previous membrane against the threshold)"
        )
    beta = np.clip(full(_param(params, "beta", spec.extra.get("beta"))), 0.0, 1.0)
    tau_mem = tau_from_coef(1.0 - beta, dt)
    _finite_tau("LIF", tau=tau_mem)
    g = full(_param(params, "graded_spikes_factor", spec.extra.get("graded_spikes_factor", 1.0)))
    graded = None if np.all(np.float32(g) == np.float32(1.0)) else g
    if spec.charge in ("snntorch_synaptic", "snntorch_rsynaptic"):
        alpha = np.clip(full(_param(params, "alpha", spec.extra.get("alpha"))), 0.0, 1.0)
        tau_syn = tau_from_coef(1.0 - alpha, dt)
        _finite_tau("CubaLIF", tau_syn=tau_syn)
        fields = {
            "tau_syn": tau_syn,
            "tau_mem": tau_mem,
            "r": tau_mem / dt,
            "v_leak": full(0.0),
            "v_threshold": th,
            "v_reset": full(0.0),
            "w_in": tau_syn / dt,
        }
        return NeuronExport("CubaLIF", fields, graded), 0.0
    fields = {
        "tau": tau_mem,
        "r": tau_mem / dt,
        "v_leak": full(0.0),
        "v_threshold": th,
        "v_reset": full(0.0),
    }
    return NeuronExport("LIF", fields, graded), 0.0


def _sj_cuba_fields(
    spec: NeuronSpec,
    params: Mapping[str, np.ndarray],
    shape: tuple,
    dt: float,
    dtype: str,
    full: Any,
    vr: float,
) -> tuple[NeuronExport, float]:
    """SpikingJelly's CUBALIFNode, ``i1 = i*c_decay + x; h = v*v_decay + i1``: the step of
    snnTorch's Synaptic (alpha = c_decay, beta = v_decay), so NIR's CubaLIF with
    ``tau_syn = dt/(1-c_decay)``, ``tau_mem = dt/(1-v_decay)``, ``r = tau_mem/dt``,
    ``w_in = tau_syn/dt`` and ``v_leak = 0`` (its membrane decays towards 0, whatever
    ``v_reset`` is); fired on ``>=`` (the threshold one float32 below), reset immediately."""
    c_decay = full(_param(params, "c_decay", spec.extra.get("c_decay")))
    v_decay = full(_param(params, "v_decay", spec.extra.get("v_decay")))
    tau_syn, tau_mem = tau_from_coef(1.0 - c_decay, dt), tau_from_coef(1.0 - v_decay, dt)
    _finite_tau("CubaLIF", tau_syn=tau_syn, tau_mem=tau_mem)
    fields = {
        "tau_syn": tau_syn,
        "tau_mem": tau_mem,
        "r": tau_mem / dt,
        "v_leak": full(0.0),
        "v_threshold": _threshold(spec, params, shape, dtype),
        "v_reset": full(vr),
        "w_in": tau_syn / dt,
    }
    return NeuronExport("CubaLIF", fields), 0.0


def _lapicque_fields(
    spec: NeuronSpec, params: Mapping[str, np.ndarray], shape: tuple, dt: float, full: Any
) -> tuple[NeuronExport, float]:
    """Lapicque's ``m + (ts/(R*C)) * (R*x - m)``: NIR's LIF with ``tau = R*C``, ``r = R``."""
    ts = np.asarray(_param(params, "time_step", spec.extra.get("time_step", 1.0)), np.float64)
    if not np.allclose(ts, dt, rtol=1e-6, atol=0.0):
        raise UnsupportedError(
            f"it is an snnTorch Lapicque with time_step={float(np.max(ts)):g}; export with "
            "dt equal to its time_step (its R*C is in the same time unit)"
        )
    if "beta" in spec.roles:
        raise UnsupportedError(
            "its C is derived from a learnable beta; NIR needs the value (export after "
            "training, with learn_beta=False)"
        )
    big_r = full(_param(params, "R", spec.extra.get("R", 1.0)))
    tau = big_r * full(_param(params, "C", spec.extra.get("C")))
    _finite_tau("LIF", tau=tau)
    g = full(_param(params, "graded_spikes_factor", spec.extra.get("graded_spikes_factor", 1.0)))
    fields = {
        "tau": tau,
        "r": big_r,
        "v_leak": full(0.0),
        "v_threshold": full(_param(params, "threshold", spec.v_threshold)),
        "v_reset": full(0.0),
    }
    return NeuronExport("LIF", fields, None if np.all(np.float32(g) == 1) else g), 0.0


def _norse_fields(
    spec: NeuronSpec,
    params: Mapping[str, np.ndarray],
    shape: tuple,
    dt: float,
    dtype: str,
    full: Any,
) -> tuple[NeuronExport, float]:
    step = float(spec.extra["dt"])  # what Norse multiplies its rates by
    norse_dt = float(spec.extra.get("nir_dt", step))  # an imported NIR node runs with step 1
    if not math.isclose(norse_dt, dt, rel_tol=1e-12):
        raise UnsupportedError(
            f"it is a Norse neuron with dt={norse_dt:g}; export with dt={norse_dt:g} so the "
            "file's time constants are Norse's (in the same time unit as dt)"
        )
    tm = params.get("tau_mem_inv")
    c_m = (
        full(np.float32(step) * np.asarray(tm, dtype=np.float32))
        if tm is not None
        else full(spec.extra["dt_tau_mem_inv"])
    )
    tau_mem = tau_from_coef(c_m, dt)
    v_leak = full(float(spec.extra["v_leak"]))
    if spec.charge == "norse_lifbox":
        _finite_tau("LIF", tau=tau_mem)
        fields = {"tau": tau_mem, "r": full(1.0), "v_leak": v_leak}
    else:
        ts = params.get("tau_syn_inv")
        c_s = (
            full(np.float32(-step) * np.asarray(ts, dtype=np.float32))
            if ts is not None
            else full(spec.extra["neg_dt_tau_syn_inv"])
        )
        tau_syn = tau_from_coef(-c_s, dt)
        _finite_tau("CubaLIF", tau_mem=tau_mem, tau_syn=tau_syn)
        fields = {
            "tau_syn": tau_syn,
            "tau_mem": tau_mem,
            "r": full(1.0),
            "v_leak": v_leak,
            "w_in": tau_syn / dt,
        }
    if spec.charge == "norse_li":
        return NeuronExport("CubaLI", fields), float(spec.extra["v_leak"])
    fields["v_threshold"] = _threshold(spec, params, shape, dtype)
    vr = _param(params, "v_reset", 0.0 if spec.v_reset is None else spec.v_reset)
    fields["v_reset"] = full(vr if spec.reset == "hard" else 0.0)
    kind = "LIF" if spec.charge == "norse_lifbox" else "CubaLIF"
    return NeuronExport(kind, fields), float(spec.extra["v_leak"])


# --------------------------------------------------------------------------- the exporter


def _nir() -> Any:
    try:
        import nir
    except ImportError as e:  # pragma: no cover - nir is a declared dependency
        raise UnsupportedError("NIR export needs the 'nir' package (pip install nir)") from e
    return nir


def _ref(graph: Graph, nid: int) -> str:
    data = graph.node(nid)
    return f"node %{nid} {data.get('name') or ''!r} ({data['op']})"


def _pairs(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    out = tuple(int(v) for v in value)
    return out * n if len(out) == 1 else out


class _Exporter:
    """Walks a scheduled IR graph and builds the NIR nodes, edges and metadata."""

    def __init__(self, graph: Graph, dt: float, accept: set) -> None:
        self.nir = _nir()
        self.g = graph
        self.dt = dt
        self.accept = accept
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.head: dict[int, str] = {}  # IR node -> NIR node receiving its inputs
        self.tail: dict[int, str] = {}  # IR node -> NIR node producing its value
        self.ports: dict[int, list[str]] = {}  # multi-port neurons: NIR source per port
        self.lossy: list[str] = []
        self._taken: set[str] = set()

    # ------------------------------------------------------------- helpers
    def fail(self, nid: int, why: str) -> UnsupportedError:
        return UnsupportedError(f"NIR export: {_ref(self.g, nid)}: {why}")

    def name(self, nid: int, suffix: str = "") -> str:
        data = self.g.node(nid)
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(data.get("name") or "")) or f"{data['op']}{nid}"
        base = base + suffix
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    def shape(self, nid: int) -> tuple[int, ...]:
        shape = self.g.node(nid).get("shape")
        if not shape or shape[0] != "B" or not all(isinstance(d, int) for d in shape[1:]):
            raise self.fail(nid, f"its per-step shape {shape!r} is not ['B', n, ...]")
        return tuple(shape[1:])

    def in_shape(self, nid: int) -> tuple[int, ...]:
        return self.shape(self.g.in_edges(nid)[0].src)

    def param(self, nid: int, role: str) -> np.ndarray | None:
        value = self.g.param(nid, role)
        return None if value is None else np.asarray(value)

    def meta(self, nid: int, **extra: Any) -> dict[str, str]:
        data = self.g.node(nid)
        doc = {"version": META_VERSION, "name": data.get("name", ""), "params": data["params"]}
        doc.update(extra)
        return {META_KEY: json.dumps(doc, allow_nan=True)}

    def put(self, nid: int, node: Any, suffix: str = "") -> str:
        name = self.name(nid, suffix)
        self.nodes[name] = node
        return name

    # ------------------------------------------------------------- per op
    def run(self) -> None:
        for nid in self.g.topo_order():
            data = self.g.node(nid)
            for key in ("prologue", "epilogue"):
                if data["attrs"].get(key):
                    raise self.fail(
                        nid,
                        f"it carries fused {key} steps (a backend pipeline's fuse_elementwise); "
                        "export the graph the reference backend compiles (backend='reference')",
                    )
            getattr(self, f"op_{data['op']}", self.op_unsupported)(nid)
        for nid in self.g.topo_order():
            self.wire(nid)

    def op_unsupported(self, nid: int) -> None:
        raise self.fail(
            nid,
            "NIR has no node for this op; exportable: linear, conv1d, conv2d, avgpool2d, "
            "flatten, scale, add, identity, dropout and neurons",
        )

    def op_input(self, nid: int) -> None:
        shape = np.array(self.shape(nid))
        meta = self.meta(nid, index=self.g.attrs(nid)["index"])
        name = self.put(nid, self.nir.Input(input_type={"input": shape}, metadata=meta))
        self.head[nid] = self.tail[nid] = name

    def op_output(self, nid: int) -> None:
        shape = np.array(self.shape(nid))
        meta = self.meta(nid, index=self.g.attrs(nid)["index"])
        name = self.put(nid, self.nir.Output(output_type={"output": shape}, metadata=meta))
        self.head[nid] = self.tail[nid] = name

    def op_identity(self, nid: int) -> None:
        self._bypass(nid)

    def op_dropout(self, nid: int) -> None:
        if self.g.attrs(nid).get("training"):
            raise self.fail(nid, "a training-mode dropout is random; NIR has no dropout")
        self._bypass(nid)

    def _bypass(self, nid: int) -> None:
        (edge,) = self.g.in_edges(nid)
        if edge.delay or any(u.delay for u in self.g.users(nid)):
            raise self.fail(
                nid, "it sits on a delayed (recurrent) edge; NIR cannot place that delay"
            )
        self.head[nid] = ""
        self.tail[nid] = self.tail[edge.src]

    def op_linear(self, nid: int) -> None:
        if any(self.param(nid, r) is not None for r in ("bn_weight", "bn_mean", "bn_var")):
            raise self.fail(
                nid,
                "it carries a folded BatchNorm; NIR has no batch norm (export the reference "
                "backend's graph, or fold it into the weights in the model)",
            )
        w = self.param(nid, "weight")
        b = self.param(nid, "bias")
        meta = self.meta(nid)
        node = (
            self.nir.Linear(weight=w, metadata=meta)
            if b is None
            else self.nir.Affine(weight=w, bias=b, metadata=meta)
        )
        self.head[nid] = self.tail[nid] = self.put(nid, node)

    def _conv(self, nid: int, nd: int) -> None:
        if any(self.param(nid, r) is not None for r in ("bn_weight", "bn_mean", "bn_var")):
            raise self.fail(nid, "it carries a folded BatchNorm; NIR has no batch norm")
        a = self.g.attrs(nid)
        w = self.param(nid, "weight")
        b = self.param(nid, "bias")
        b = np.zeros(w.shape[0], dtype=w.dtype) if b is None else b
        pad = a["padding"]
        if isinstance(pad, str):
            raise self.fail(nid, f"padding {pad!r}: export needs explicit padding sizes")
        spatial = self.in_shape(nid)[1:]
        common = {
            "weight": w,
            "stride": _pairs(a["stride"], nd),
            "padding": _pairs(pad, nd),
            "dilation": _pairs(a["dilation"], nd),
            "groups": int(a["groups"]),
            "bias": b,
            "metadata": self.meta(nid),
        }
        if nd == 1:
            for k in ("stride", "padding", "dilation"):
                common[k] = common[k][0]
            node = self.nir.Conv1d(input_shape=int(spatial[0]), **common)
        else:
            node = self.nir.Conv2d(input_shape=tuple(int(s) for s in spatial), **common)
        self.head[nid] = self.tail[nid] = self.put(nid, node)

    def op_conv1d(self, nid: int) -> None:
        self._conv(nid, 1)

    def op_conv2d(self, nid: int) -> None:
        self._conv(nid, 2)

    def op_avgpool2d(self, nid: int) -> None:
        a = self.g.attrs(nid)
        pad = _pairs(a["padding"], 2)
        if a.get("ceil_mode"):
            raise self.fail(nid, "ceil_mode=True; NIR pooling rounds the output size down")
        if any(pad) and not a.get("count_include_pad", True):
            raise self.fail(nid, "count_include_pad=False with padding; NIR averages over k*k")
        div = a.get("divisor_override")
        k = _pairs(a["kernel_size"], 2)
        stride = _pairs(a["stride"] if a["stride"] is not None else a["kernel_size"], 2)
        args = {
            "kernel_size": np.array(k),
            "stride": np.array(stride),
            "padding": np.array(pad),
            "metadata": self.meta(nid),
        }
        if div is None:
            node = self.nir.AvgPool2d(**args)
        elif div == 1:
            node = self.nir.SumPool2d(**args)
        else:
            raise self.fail(nid, f"divisor_override={div}; NIR pools average or sum (1)")
        self.head[nid] = self.tail[nid] = self.put(nid, node)

    def op_flatten(self, nid: int) -> None:
        a = self.g.attrs(nid)
        start, end = int(a["start_dim"]), int(a["end_dim"])
        if start == 0 or end == 0:
            raise self.fail(nid, "it flattens the batch dimension; NIR dims exclude the batch")
        shape = np.array(self.in_shape(nid))
        node = self.nir.Flatten(
            input_type={"input": shape},
            start_dim=start - 1 if start > 0 else start,
            end_dim=end - 1 if end > 0 else end,
            metadata=self.meta(nid),
        )
        self.head[nid] = self.tail[nid] = self.put(nid, node)

    def op_scale(self, nid: int) -> None:
        a = self.g.attrs(nid)
        value = float(a["value"])
        if a["op"] == "div":
            m, _ = math.frexp(value)
            if abs(m) != 0.5:  # x / v == x * (1/v) exactly only for powers of two
                raise self.fail(
                    nid,
                    f"it divides by {value!r}; NIR scales multiply, and x / v differs from "
                    "x * (1/v) in rounding unless v is a power of two",
                )
            value = 1.0 / value
        shape = self.shape(nid)
        node = self.nir.Scale(
            scale=np.full(shape, value, dtype=np.float64), metadata=self.meta(nid)
        )
        self.head[nid] = self.tail[nid] = self.put(nid, node)

    def op_add(self, nid: int) -> None:
        srcs = [e.src for e in self.g.in_edges(nid)]
        if len(set(srcs)) != len(srcs):
            raise self.fail(nid, "it adds a value to itself; NIR edges cannot repeat")
        shape = self.shape(nid)
        node = self.nir.Scale(scale=np.ones(shape, dtype=np.float64), metadata=self.meta(nid))
        self.head[nid] = self.tail[nid] = self.put(nid, node)

    def op_neuron(self, nid: int) -> None:
        data = self.g.node(nid)
        spec = NeuronSpec.from_dict(data["attrs"]["neuron"])
        shape = self.shape(nid)
        params = {role: self.param(nid, role) for role in data["params"]}
        params = {k: v for k, v in params.items() if v is not None}
        try:
            out = neuron_fields(spec, params, shape, self.dt, data.get("dtype", "float32"))
        except UnsupportedError as e:
            raise self.fail(nid, f"{spec.summary()}: {e}") from None
        refused = [(k, why) for k, why in out.lossy if k not in self.accept]
        if refused:
            key, why = refused[0]
            raise self.fail(
                nid,
                f"{spec.summary()}: {why}, so NIR cannot describe it exactly. Pass "
                f"accept=({key!r},) (CLI: --accept {key}) to {EXPORT_ACCEPT[key]}",
            )
        exact = not out.lossy
        self.lossy += [f"{_ref(self.g, nid)}: {why}" for _, why in out.lossy]
        extra: dict[str, Any] = {}
        if exact:
            if out.graded is not None:  # written as a Scale after the neuron: spikes of 1 here
                spec, params = _ungraded(spec, params)
            extra["spec"] = spec.to_dict()
            extra["values"] = {
                role: np.asarray(v, dtype=np.float64).tolist() for role, v in params.items()
            }
            extra["values_shape"] = {role: list(np.shape(v)) for role, v in params.items()}
            extra["dtype"] = data.get("dtype", "float32")
        node = getattr(self.nir, out.kind)(**out.fields, metadata=self.meta(nid, **extra))
        name = self.put(nid, node)
        self.head[nid] = self.tail[nid] = name
        if out.graded is not None:
            scale = self.nir.Scale(scale=out.graded, metadata={})
            self.tail[nid] = self.put(nid, scale, ".graded")
            self.edges.append((name, self.tail[nid]))
        if len(spec.input_ports) > 1:
            self.ports[nid] = []

    # ------------------------------------------------------------- edges
    def wire(self, nid: int) -> None:
        head = self.head[nid]
        if not head:
            return
        for e in self.g.in_edges(nid):
            src = self.tail[e.src]
            if (src, head) in self.edges:
                raise self.fail(nid, f"it reads {src!r} twice; NIR edges cannot repeat")
            self.edges.append((src, head))
            if nid in self.ports:
                self.ports[nid].append(src)
        if nid in self.ports:
            node = self.nodes[head]
            doc = json.loads(node.metadata[META_KEY])
            doc["ports"] = self.ports[nid]
            node.metadata[META_KEY] = json.dumps(doc, allow_nan=True)

    def check_delays(self) -> None:
        """The IR's delay edges must be exactly where the importer will put them."""
        want = set()
        for u, v, d in self.g.nx.edges(data=True):
            if d.get("delay", 0):
                want.add((self.tail[u], self.head[v] or self.tail[v]))
        kinds = {name: type(n).__name__ in _NEURON_NODES for name, n in self.nodes.items()}
        roots = [n for n, node in self.nodes.items() if type(node).__name__ == "Input"]
        got = place_delays(kinds, self.edges, roots)
        if got != want:
            raise UnsupportedError(
                f"NIR export: the recurrent edges' delays sit on {sorted(want)}, but NIR edges "
                f"carry no delay and a reader following snncc's convention (delay on the edge "
                f"leaving a neuron) would put them on {sorted(got)}"
            )


def _ungraded(spec: NeuronSpec, params: dict) -> tuple[NeuronSpec, dict]:
    """The snnTorch spec with graded_spikes_factor 1 (``d = s/g - r`` is the same for s in {0, g})."""
    roles = tuple(r for r in spec.param_roles if r != "graded_spikes_factor")
    learnable = tuple(r for r in spec.learnable if r != "graded_spikes_factor")
    extra = {**spec.extra, "graded_spikes_factor": 1.0}
    params = {k: v for k, v in params.items() if k != "graded_spikes_factor"}
    return spec.replace(param_roles=roles, learnable=learnable, extra=extra), params


_NEURON_NODES = {"IF", "LIF", "CubaLIF", "LI", "CubaLI", "I", "Threshold"}


def to_nir(
    graph: Graph,
    path: str | os.PathLike[str] | None = None,
    dt: float | None = None,
    *,
    accept: str | Iterable[str] = (),
) -> Any:
    """Export an IR graph as a ``nir.NIRGraph`` (and write it as HDF5 when ``path`` is given).

    ``dt``: the time one step stands for, in the file's time unit (required).
    ``accept``: keys of :data:`EXPORT_ACCEPT` (or a comma-separated string) to
    write those approximations instead of refusing them. Raises
    UnsupportedError naming the node and the reason for anything NIR cannot
    describe.
    """
    dt = check_dt(dt, "NIR export")
    keys = parse_accept(accept, EXPORT_ACCEPT, "NIR export")
    ex = _Exporter(graph, dt, keys)
    ex.run()
    ex.check_delays()
    doc = {
        "version": META_VERSION,
        "dt": dt,
        "source": graph.meta.get("source"),
        "step_mode": graph.meta.get("step_mode"),
        "lossy": ex.lossy,
    }
    try:
        out = ex.nir.NIRGraph(
            nodes=ex.nodes, edges=ex.edges, metadata={META_KEY: json.dumps(doc)}, type_check=True
        )
    except (ValueError, AssertionError, TypeError) as e:  # pragma: no cover - a bug here
        raise SnnccError(f"NIR export built an inconsistent NIR graph: {e}") from e
    if path is not None:
        with replaced_on_success(path) as tmp:  # atomic, and never through a link at path
            ex.nir.write(str(tmp), out)
    return out
