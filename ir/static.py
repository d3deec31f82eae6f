"""Which values of a graph have no time axis ("static"), and the program's own number of steps.

Why a separate notion: models from the frameworks' zoos feed a static image and
repeat it over time themselves (``x.unsqueeze(0).repeat(T, 1, 1, 1, 1)``),
feed the same input at every step of their loop (snnTorch tutorial 5), or
reduce over time (``.mean(0)``). What depends only on such an input is the
same at every step and is computed once, on ``[B, ...]``; a reduction over
time yields one ``[B, ...]`` value. The IR keeps every other value per step.
The rule (see :mod:`snncc.ir.ops`, "Static values"):

- an ``input`` is static when ``attrs.static`` says so;
- ``time_reduce`` is static, ``repeat_time`` and ``neuron`` never are;
- any other node is static when it has inputs and all of them are static.

Backends run static nodes once (reference: on ``[B, ...]``; jax and ONNX
likewise) and broadcast them only at ``repeat_time``.
"""

from __future__ import annotations

from snncc.errors import IRError
from snncc.ir.graph import Graph


def static_nodes(graph: Graph) -> set[int]:
    """The ids of the nodes whose value has no time axis (see the module docstring)."""
    static: set[int] = set()
    for n in graph.topo_order():
        op = graph.op(n)
        if op == "input":
            if graph.attrs(n).get("static"):
                static.add(n)
        elif op == "time_reduce":
            static.add(n)
        elif op not in ("repeat_time", "neuron"):
            ins = graph.in_edges(n)
            if ins and all(e.src in static and e.delay == 0 for e in ins):
                static.add(n)
    return static


def time_steps(graph: Graph) -> int | None:
    """The steps the model repeats its static values over (``repeat_time``), or None."""
    counts = {int(graph.attrs(n)["times"]) for n in graph.iter_ops("repeat_time")}
    if len(counts) > 1:
        raise IRError(f"repeat_time nodes disagree on the number of time steps: {sorted(counts)}")
    return counts.pop() if counts else None


def fixed_time(graph: Graph) -> bool:
    """Whether every input is static: the program then runs :func:`time_steps` steps."""
    ins = graph.meta.get("inputs", [])
    return bool(ins) and all(graph.attrs(n).get("static") for n in ins)
