"""A neuron traced from its own code: the form whose definition is data in the spec.

A user's own neuron (a SpikingJelly ``BaseNode`` / ``SimpleBaseNode`` subclass
snncc does not know, or a module whose step is ``(x, state) -> (spike,
state)``) is traced by the frontend (:mod:`snncc.frontend.neuron_trace`) into
an expression graph, which the node's spec carries as ``program``::

    {"states": ["v", ...], "inits": {"v": 0.0, ...}, "params": ["w", ...],
     "graph": [...],                     # snncc.ir.expr.Graph.to_json(); inputs
                                         # s:<state>, x:x, p:<param>
     "next_state": {"v": <ref>, ...},    # ref: a node index, or {"const": number}
     "outputs": {"spike": <ref>, ...}}   # "spike" and/or "membrane"

Every backend then lowers it like any other form: fused kernels with a
derived backward, jax, ONNX. The node's params (``params``: the module's own
parameters and buffers the step reads, by their names) become the form's
quantities as they are (one value or one per neuron).
"""

from __future__ import annotations

import math
from typing import Any

from snncc.errors import IRError
from snncc.ir import expr as E
from snncc.ir.neurons.base import FormDef, NeuronBuilder, form

_KEYS = ("states", "inits", "params", "graph", "next_state", "outputs")


def _program(spec: Any) -> dict[str, Any]:
    prog = spec.program
    if not isinstance(prog, dict) or sorted(prog) != sorted(_KEYS):
        raise IRError(f"a traced neuron's program needs exactly the keys {list(_KEYS)}")
    for key in ("states", "params"):
        if not isinstance(prog[key], list) or not all(isinstance(v, str) for v in prog[key]):
            raise IRError(f"a traced neuron's program {key!r} must be a list of names")
        for v in prog[key]:
            E.check_name(v)
    if not prog["states"] or len(set(prog["states"])) != len(prog["states"]):
        raise IRError("a traced neuron needs distinct state variable names")
    if set(prog["states"]) & {"x", "out", "cut"} or set(prog["params"]) & set(prog["states"]):
        raise IRError("a traced neuron's state and param names must not clash (or be x, out, cut)")
    inits = prog["inits"]
    if not isinstance(inits, dict) or sorted(inits) != sorted(prog["states"]):
        raise IRError("a traced neuron's program 'inits' must give every state variable a value")
    for var, value in inits.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise IRError(
                f"a traced neuron's initial {var!r} must be a finite number, got {value!r}"
            )
    return prog


def traced_interface(spec: Any) -> FormDef:
    """The interface of one traced neuron: its own states, its own params."""
    prog = _program(spec)
    return FormDef(
        summary="a step traced from the module's own code",
        state=tuple(prog["states"]),
        ports=("x",),
        roles=tuple(prog["params"]),
        constants={p: "a node param (the module's own)" for p in prog["params"]},
        step="",
        source="the module's own step code",
        framework="traced",
        inits={k: float(v) for k, v in prog["inits"].items()},
    )


@form(
    "traced",
    summary="a step traced from the module's own code",
    source="the module's own step code",
    framework="traced",
    dynamic=traced_interface,
)
def traced(n: NeuronBuilder) -> None:
    """The module's own step, as traced: its expression graph, states and outputs."""
    prog = _program(n.spec)
    g = E.Graph.from_json(prog["graph"], "a traced neuron's graph")
    quantities = {p: n.quantity(p, n.param(p, None)) for p in prog["params"]}

    def rename(name: str) -> E.Operand:
        kind, _, what = name.partition(":")
        if kind == "s" and what in prog["states"]:
            return n.state(what)
        if kind == "x" and what == "x":
            return n.port("x")
        if kind == "p" and what in quantities:
            return quantities[what]
        raise IRError(f"a traced neuron's graph reads {name!r}, which it does not declare")

    def ref(r: Any) -> Any:
        if isinstance(r, dict) and set(r) == {"const"}:
            value = r["const"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise IRError(f"a traced neuron's constant result {value!r} is not a number")
            return float(value)
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < len(g.nodes):
            raise IRError(f"a traced neuron's result {r!r} is not a node of its graph")
        return r

    results = {**prog["next_state"], **prog["outputs"]}
    roots = [r for r in (ref(v) for v in results.values()) if isinstance(r, int)]
    copied = E.rebuild(g, roots, n.step, rename=rename)

    def value(r: Any) -> E.Operand:
        r = ref(r)
        return r if isinstance(r, float) else copied[r]

    if sorted(prog["next_state"]) != sorted(prog["states"]):
        raise IRError("a traced neuron's program must give every state variable its next value")
    for var in prog["states"]:
        n.set_state(var, value(prog["next_state"][var]))
    for kind, r in prog["outputs"].items():
        n.output(kind, value(r))
