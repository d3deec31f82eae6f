"""Which recurrent groups can run as one fused kernel over time, and how (the plan in the IR).

Why: a recurrent group (a strongly connected component closed by a delay-1
edge) otherwise runs step by step: per step a GEMM for the recurrent linear
and a one-step neuron call, T launches. The common shape of such a group is
one neuron whose recurrent input is a linear of its own output at t-1. That
group can run as one kernel that loops over t itself: the recurrent product
``sum_j W[i, j] * s_j(t-1)`` is taken over the neurons that fired (spikes are
mostly zero), in ascending j (a defined order, the same on every target),
added to the feed-forward input precomputed for all T*B rows, and the
neuron's step follows (templates/cuda/recurrent_*.cu.j2).

Three patterns are recognised (anything else keeps the step schedule, with the
reason recorded):

- ``port``: the neuron form has a second input port that it adds itself
  (snnTorch RLeaky ``rec``, Norse LIFRecurrentCell ``rec``); the group is the
  neuron plus ``linear(neuron@t-1)`` feeding that port. The kernel computes
  ``rec = sum + bias`` and hands it to the form's step unchanged.
- ``cat``: SpikingJelly's LinearRecurrentContainer: ``linear(cat(x,
  neuron@t-1))`` feeds a one-port neuron. The columns of the weight that read
  ``x`` become a feed-forward GEMM over all T*B rows (with the bias); the
  others are the recurrent weight.
- ``add``: ``x + linear(neuron@t-1)`` into a one-port neuron, as an ``add``
  node in the group or as the neuron's one fused prologue add step
  (``fuse_elementwise`` makes the latter of the former). ``x`` (plus the
  bias) is the feed-forward input.

The plan is stored on the group (``graph.meta["groups"][i]``): ``"fusable"``
(the plan dict) or ``"step_reason"`` (one line). Whether a backend runs the
plan is its option (``recurrent="fused"`` / ``"step"``): the fused sum adds in
another order than torch's GEMM, so it is not bit for bit the reference.
"""

from __future__ import annotations

from typing import Any

from snncc.ir.graph import Graph

#: the summation order every fused target follows (recorded in the plan)
ORDER = "ascending j over s_j(t-1) != 0, then + feed-forward"


def _shape(graph: Graph, n: int) -> list[Any] | None:
    shape = graph.node(n).get("shape")
    return list(shape) if shape is not None else None


def _plain_linear(graph: Graph, n: int) -> str | None:
    """Why ``n`` is not a plain linear (weight, optional bias, nothing folded), or None."""
    if graph.op(n) != "linear":
        return f"%{n} is {graph.op(n)}, not linear"
    roles = set(graph.node(n)["params"])
    if not roles <= {"weight", "bias"} or "weight" not in roles:
        return f"linear %{n} carries params {sorted(roles)} (a folded BatchNorm?)"
    return None


def fused_plan(graph: Graph, nodes: list[int]) -> tuple[dict[str, Any] | None, str]:
    """The fused plan of one recurrent group's ``nodes``, or (None, why not in one line)."""
    neurons = [n for n in nodes if graph.op(n) == "neuron"]
    if len(neurons) != 1:
        return None, f"{len(neurons)} neuron nodes in the group (fused: exactly one)"
    nn_ = neurons[0]
    attrs = graph.attrs(nn_)
    prologue = attrs.get("prologue") or []
    if attrs.get("epilogue"):
        return None, f"neuron %{nn_} has fused epilogue steps"
    if prologue and [st.get("kind") for st in prologue] != ["add"]:
        return None, f"neuron %{nn_} has fused prologue steps other than one add"
    shape = _shape(graph, nn_)
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        return None, f"neuron %{nn_} has per-step shape {shape} (fused: [B, H])"
    hidden = shape[1]
    others = [n for n in nodes if n != nn_]
    members = set(nodes)
    for n in others:  # nothing but the neuron may be read outside the group
        if any(e.dst not in members for e in graph.users(n)):
            return None, f"%{n} is also read outside the group"
    ins = graph.in_edges(nn_)
    from snncc.ir.neuron import NeuronSpec
    from snncc.ir.neurons import build

    ports = build(NeuronSpec.from_dict(attrs["neuron"])).ports
    if len(ins) != len(ports) + len(prologue):
        return None, f"neuron %{nn_} has {len(ins)} inputs for ports {list(ports)}"
    inner = [e for e in ins if e.src in members]
    if len(inner) != 1 or inner[0].delay != 0:
        return None, f"neuron %{nn_} reads the group through {len(inner)} same-step edges"
    if len(ports) == 1 and (prologue or graph.op(inner[0].src) == "add"):
        return _add_plan(graph, nn_, hidden, members, inner[0], prologue)
    if prologue:
        return None, f"neuron %{nn_} has a fused prologue add and ports {list(ports)}"
    lin = inner[0].src
    why = _plain_linear(graph, lin)
    if why:
        return None, why
    port = inner[0].port
    w_shape = list(graph.params[graph.node(lin)["params"]["weight"]].shape)
    lin_in = graph.in_edges(lin)
    if len(lin_in) != 1:
        return None, f"linear %{lin} has {len(lin_in)} inputs"
    src = lin_in[0]
    if len(others) == 1 and port >= 1:
        if src.src != nn_ or src.delay != 1:
            return None, f"linear %{lin} does not read neuron %{nn_} at t-1"
        if w_shape != [hidden, hidden]:
            return None, f"recurrent weight {w_shape} is not [{hidden}, {hidden}]"
        if any(e.src in members for e in ins if e.port != port):
            return None, "the neuron's other ports are not fed from outside the group"
        plan = {"pattern": "port", "neuron": nn_, "linear": lin, "port": port}
    elif len(others) == 2 and port == 0 and len(ports) == 1:
        cat = src.src
        if cat not in members or graph.op(cat) != "cat" or src.delay != 0:
            return None, f"linear %{lin} reads %{src.src}, not cat(x, neuron@t-1)"
        if graph.attrs(cat).get("dim") not in (1, -1):
            return None, f"cat %{cat} joins along dim {graph.attrs(cat).get('dim')}, not features"
        cins = sorted(graph.in_edges(cat), key=lambda e: e.port)
        if (
            len(cins) != 2
            or cins[0].src in members
            or cins[0].delay != 0
            or cins[1].src != nn_
            or cins[1].delay != 1
        ):
            return None, f"cat %{cat} is not cat(x from outside, neuron %{nn_}@t-1)"
        xs = _shape(graph, cins[0].src)
        if xs is None or len(xs) != 2 or not isinstance(xs[1], int):
            return None, f"cat %{cat}'s feed-forward input has shape {xs}"
        if w_shape != [hidden, xs[1] + hidden]:
            return None, f"weight {w_shape} is not [{hidden}, {xs[1]} + {hidden}]"
        plan = {
            "pattern": "cat",
            "neuron": nn_,
            "linear": lin,
            "port": 0,
            "cat": cat,
            "split": xs[1],
        }
    else:
        return None, "not linear(neuron@t-1) into a port, nor linear(cat(x, neuron@t-1))"
    plan.update({"hidden": hidden, "order": ORDER})
    return plan, ""


def _recurrent_linear(graph: Graph, lin: int, nn_: int, hidden: int) -> str | None:
    """Why ``lin`` is not a plain [H, H] linear of neuron ``nn_`` at t-1, or None."""
    why = _plain_linear(graph, lin)
    if why:
        return why
    lin_in = graph.in_edges(lin)
    if len(lin_in) != 1 or lin_in[0].src != nn_ or lin_in[0].delay != 1:
        return f"linear %{lin} does not read neuron %{nn_} at t-1"
    w_shape = list(graph.params[graph.node(lin)["params"]["weight"]].shape)
    if w_shape != [hidden, hidden]:
        return f"recurrent weight {w_shape} is not [{hidden}, {hidden}]"
    return None


def _add_plan(
    graph: Graph, nn_: int, hidden: int, members: set[int], inner: Any, prologue: list
) -> tuple[dict[str, Any] | None, str]:
    """x + linear(neuron@t-1) into a one-port neuron: an ``add`` node in the group, or the
    neuron's one fused prologue add (fuse_elementwise's form of the same)."""
    if prologue:  # x on port 0 from outside, the linear on the add step's port
        if inner.port != prologue[0].get("port"):
            return None, f"neuron %{nn_}'s prologue adds port {prologue[0].get('port')}"
        add, lin = None, inner.src
        outside = [e for e in graph.in_edges(nn_) if e.src not in members]
    else:
        add = inner.src
        a_in = graph.in_edges(add)
        lins = [e for e in a_in if e.src in members]
        outside = [e for e in a_in if e.src not in members]
        if len(lins) != 1 or lins[0].delay != 0 or len(members) != 3:
            return None, f"add %{add} is not x + linear(neuron %{nn_}@t-1)"
        lin = lins[0].src
    if len(outside) != 1 or outside[0].delay != 0:
        return None, "the feed-forward input is not one same-step value from outside"
    why = _recurrent_linear(graph, lin, nn_, hidden)
    if why:
        return None, why
    plan = {"pattern": "add", "neuron": nn_, "linear": lin, "port": 0, "add": add}
    plan.update({"hidden": hidden, "order": ORDER})
    return plan, ""


def annotate(graph: Graph) -> None:
    """Record each recurrent group's fused plan (or why not) in ``graph.meta["groups"]``."""
    for g in graph.meta.get("groups") or []:
        if g.get("kind") != "recurrent":
            continue
        g.pop("fusable", None)
        g.pop("step_reason", None)
        plan, why = fused_plan(graph, list(g["nodes"]))
        if plan is not None:
            g["fusable"] = plan
        else:
            g["step_reason"] = why
