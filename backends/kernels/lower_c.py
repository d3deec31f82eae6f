"""The expression language lowered to C/CUDA statements (one fp32 operation per line).

Each node of a :class:`snncc.ir.expr.Graph` becomes one ``const float`` line
in the generated kernels, in graph order, named by the definition's label
(``h``, ``s``, ``mem``...) where it has one. The statements use only the macro
layer of ``templates/cuda/common.cuh.j2`` (``snncc_expf``, ``SNNCC_DIV_SCALAR``...),
so the same text compiles for CUDA and for the host. Constants are exact fp32
literals of ``float32(value)``: what torch uses when a Python scalar meets an
fp32 tensor. Nothing a user wrote reaches the text: names are checked
identifiers from the form definitions, numbers are formatted here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from snncc.errors import IRError, UnsupportedError
from snncc.ir import expr as E
from snncc.ir.expr import Namer

#: C keywords and macro-layer names a label must not shadow
C_RESERVED = frozenset(
    {
        "auto", "break", "case", "char", "const", "continue", "default", "do", "double",
        "else", "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long",
        "register", "return", "short", "signed", "sizeof", "static", "struct", "switch",
        "typedef", "union", "unsigned", "void", "volatile", "while", "bool", "true", "false",
        "p", "st", "n", "i", "k", "t", "T", "N", "res", "cut", "adj", "prev",
    }
)  # fmt: skip


def f32_literal(value: float) -> str:
    """An exact C/CUDA fp32 literal for ``float32(value)``, e.g. ``0x1.8p+1f`` for 3.0.

    Hexadecimal so that no decimal-to-binary rounding (and no double rounding
    through double) can change the value; negative values are parenthesised so
    the literal is safe after any operator.
    """
    v = np.float32(value)
    if not np.isfinite(v):
        raise UnsupportedError(f"kernel constant {value!r} is not finite; only finite fp32 values")
    f = float(v)
    if f == 0.0:
        text = "0.0f" if math.copysign(1.0, f) > 0 else "(-0.0f)"
    else:
        mant, exp = f.hex().split("p")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
        text = f"{mant}p{exp}f"
        if f < 0:
            text = f"({text})"
    back = float.fromhex(text.strip("()").rstrip("f"))
    if np.float32(back) != v or back != f:
        raise AssertionError(f"fp32 literal {text} does not round-trip {value!r}")
    return text


@dataclass(frozen=True)
class Lowered:
    """Statements computing some nodes, and the C expression of each node."""

    lines: tuple[str, ...]
    #: node -> C expression (a name, or a literal)
    refs: dict[int, str]


def _fmt(op: str, a: list[str], n: E.ENode, const_arg: list[bool]) -> str:
    if op in ("add", "sub", "mul"):
        return f"{a[0]} {'+-*'[('add', 'sub', 'mul').index(op)]} {a[1]}"
    if op == "div":
        # tensor / Python scalar: torch's CUDA kernel multiplies by the fp32 reciprocal
        return f"SNNCC_DIV_SCALAR({a[0]}, {a[1]})" if const_arg[1] else f"{a[0]} / {a[1]}"
    if op == "neg":
        return f"-{a[0]}"
    if op == "recip":
        return f"1.0f / {a[0]}"
    if op in ("exp", "log", "tanh", "abs", "sqrt", "sin", "cos"):
        return f"snncc_{op}f({a[0]})"
    if op == "pow":
        return f"snncc_powf({a[0]}, {f32_literal(n.attr('e'))})"
    if op == "sigmoid":
        return f"snncc_sigmoidf({a[0]})"
    if op == "relu":
        return f"({a[0]} < 0.0f) ? 0.0f : {a[0]}"
    if op == "sign":
        return f"(float)(({a[0]} > 0.0f) - ({a[0]} < 0.0f))"
    if op == "clamp":
        lo, hi = n.attr("lo"), n.attr("hi")
        text = a[0]
        if lo is not None:
            text = f"snncc_clamp_min({text}, {f32_literal(lo)})"
        if hi is not None:
            text = f"snncc_clamp_max({text}, {f32_literal(hi)})"
        return text
    if op in ("gt", "ge", "lt", "le", "eq"):
        sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "=="}[op]
        return f"({a[0]} {sym} {a[1]}) ? 1.0f : 0.0f"
    if op == "and":
        return f"(({a[0]} != 0.0f) && ({a[1]} != 0.0f)) ? 1.0f : 0.0f"
    if op == "where":
        return f"({a[0]} != 0.0f) ? {a[1]} : {a[2]}"
    if op == "heaviside":
        return f"({a[0]} {n.attr('cmp')} 0.0f) ? 1.0f : 0.0f"
    if op == "detach":
        return a[0]
    raise IRError(f"the C lowering has no rule for expression op {op!r}")


def lower(
    g: E.Graph,
    roots: Iterable[int],
    inputs: Mapping[str, str],
    namer: Namer,
    prefix: str = "",
    known: Mapping[int, str] | None = None,
) -> Lowered:
    """C statements for the nodes ``roots`` need.

    ``inputs`` maps each input name (``"s:v"``) to the C expression holding it;
    ``known``: nodes already computed (node -> C expression), not re-emitted;
    ``prefix``: for the temporaries' names (``t12`` -> ``<prefix>t12``).
    """
    lines: list[str] = []

    def apply(i: int, n: E.ENode, args: list[str]) -> str:
        if n.op == "detach":  # only the backward sees it (the VJP is derived from the graph)
            return args[0]
        const_arg = [g.nodes[j].op == "const" for j in n.args]
        name = namer.fresh(g.labels.get(i) or f"{prefix}t{i}")
        lines.append(f"const float {name} = {_fmt(n.op, args, n, const_arg)};")
        return name

    refs = E.lower_nodes(g, roots, inputs, f32_literal, apply, known, "the C lowering")
    return Lowered(tuple(lines), refs)
