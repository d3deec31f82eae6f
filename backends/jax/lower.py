"""The expression language lowered to jax.numpy statements (the generated module's neuron code).

One line per node, in graph order, named by the form definition's labels
where it has them. Python floats stay Python floats: jax casts a weakly typed
scalar to the array's dtype before the one operation, as torch casts a
Python scalar, so every operation rounds as in the source framework. The
gradient rules that jax's own differentiation would get wrong for torch
semantics live in the runtime: :func:`~snncc.backends.jax.runtime.clamp` (the
gradient passes at the bounds, as torch's clamp) and the spike, whose backward
is the surrogate's expression, emitted as a function of the module
(:func:`surrogate_function`) from :mod:`snncc.ir.surrogates`.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from snncc.errors import IRError
from snncc.ir import expr as E
from snncc.ir.expr import Namer
from snncc.ir.surrogates import surrogate_backward

#: names the generated module uses itself; expression names must not shadow them
PY_RESERVED = frozenset(
    {*keyword.kwlist, "jax", "jnp", "lax", "rt", "params", "state", "new_state", "T", "B", "float"}
)


def py_float(value: float) -> str:
    """An exact Python literal for a float constant (negative ones parenthesised)."""
    v = float(value)
    if not math.isfinite(v):
        raise IRError(f"expression constant {v!r} is not finite")
    text = repr(v)
    return f"({text})" if text.startswith("-") else text


@dataclass(frozen=True)
class Emitted:
    lines: tuple[str, ...]
    refs: dict[int, str]


#: a spike's surrogate as the generated module names it: (name, alpha, params)
SurrogateKey = tuple[str, float, tuple[tuple[str, float], ...]]


def surrogate_key(n: E.ENode) -> SurrogateKey:
    """The surrogate of a heaviside node: its name, alpha and parameters beyond alpha."""
    return (n.attr("surrogate"), n.attr("alpha"), n.attr("params", ()))


def _fmt(
    n: E.ENode, a: list[str], surrogates: Mapping[SurrogateKey, str], kernel: bool = False
) -> str:
    op = n.op
    if op in ("add", "sub", "mul", "div"):
        return f"{a[0]} {'+-*/'[('add', 'sub', 'mul', 'div').index(op)]} {a[1]}"
    if op == "neg":
        return f"-{a[0]}"
    if op == "recip":
        return f"1.0 / {a[0]}"
    if op in ("exp", "log", "tanh", "abs", "sqrt", "sign", "sin", "cos"):
        return f"jnp.{op}({a[0]})"
    if op == "pow":
        return f"jnp.power({a[0]}, {py_float(n.attr('e'))})"
    if op in ("sigmoid", "relu"):
        return f"jax.nn.{op}({a[0]})"
    if op == "clamp":
        lo, hi = n.attr("lo"), n.attr("hi")
        los = "None" if lo is None else py_float(lo)
        his = "None" if hi is None else py_float(hi)
        return f"rt.{'clamp_value' if kernel else 'clamp'}({a[0]}, {los}, {his})"
    if op in ("gt", "ge", "lt", "le", "eq"):
        sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "=="}[op]
        return f"jnp.asarray({a[0]} {sym} {a[1]}, jnp.float32)"
    if op == "and":
        return f"{a[0]} * {a[1]}"
    if op == "where":
        return f"jnp.where({a[0]} != 0, {a[1]}, {a[2]})"
    if op == "heaviside" and kernel:
        return f"jnp.asarray({a[0]} {n.attr('cmp')} 0.0, jnp.float32)"
    if op == "heaviside":
        fn = "rt.spike" if n.attr("cmp") == ">=" else "rt.spike_gt"
        return f"{fn}({a[0]}, {surrogates[surrogate_key(n)]})"
    if op == "detach":
        return a[0] if kernel else f"lax.stop_gradient({a[0]})"
    raise IRError(f"the jax lowering has no rule for expression op {op!r}")


def emit(
    g: E.Graph,
    roots: Iterable[int],
    inputs: Mapping[str, str],
    namer: Namer,
    surrogates: Mapping[SurrogateKey, str],
    suffix: str = "",
    kernel: bool = False,
) -> Emitted:
    """Python statements computing the nodes ``roots`` need.

    ``inputs``: input name (``"s:v"``) -> the Python expression holding it;
    ``surrogates``: (surrogate name, alpha, params) -> the module function computing its
    gradient (:func:`surrogate_function`); ``suffix`` makes temporaries unique
    per node of the model (``h_4``). ``kernel``: statements for a Pallas kernel body, whose
    backward is its own derived kernel rather than jax's differentiation: a spike is
    its comparison, a clamp its value and a detach the value itself (no ``custom_vjp``,
    ``custom_jvp`` or ``stop_gradient`` inside the kernel).
    """
    lines: list[str] = []

    def apply(i: int, n: E.ENode, args: list[str]) -> str:
        name = namer.fresh((g.labels.get(i) or f"t{i}") + suffix)
        lines.append(f"{name} = {_fmt(n, args, surrogates, kernel)}")
        return name

    refs = E.lower_nodes(g, roots, inputs, py_float, apply, target="the generated jax module")
    return Emitted(tuple(lines), refs)


def surrogates_of(g: E.Graph) -> set[SurrogateKey]:
    """The (surrogate, alpha, params) a graph's spikes use."""
    return {surrogate_key(n) for n in g.nodes if n.op == "heaviside"}


def surrogate_function(
    name: str, alpha: float, fn_name: str, params: tuple[tuple[str, float], ...] = ()
) -> list[str]:
    """A module-level ``def fn_name(g, x)``: the surrogate's gradient, from its expression."""
    g = E.Graph()
    grad, x = g.input("g", "g"), g.input("x", "x")
    result = surrogate_backward(name, grad, x, alpha, params)
    extra = "".join(f", {k} = {float(v)!r}" for k, v in params)
    head = f"def {fn_name}(g, x):  # surrogate {name}, alpha = {float(alpha)!r}{extra}"
    if not isinstance(result, E.Val):
        return [head, f"    return jnp.full_like(g, {py_float(float(result))})"]
    out = emit(g, [result.i], {"g:g": "g", "x:x": "x"}, Namer({"g", "x", *PY_RESERVED}), {})
    return [head, *(f"    {line}" for line in out.lines), f"    return {out.refs[result.i]}"]
