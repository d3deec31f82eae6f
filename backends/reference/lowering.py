"""The expression language lowered to torch eager ops (what the reference backend runs).

Each node of a :class:`snncc.ir.expr.Graph` becomes the torch call the source
framework makes for it (``a * b``, ``1.0 - s``, ``t.reciprocal() * c``,
``(u > 0).float()``, ``clamp``...), with Python floats passed as Python scalars
so torch casts them exactly as in the framework's own code. torch's autograd
then differentiates the forward exactly as it differentiates the framework;
the one op it cannot, the spike, is :class:`SpikeFunction`, whose backward
evaluates the surrogate's expression (:mod:`snncc.ir.surrogates`) with the
same lowering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import torch

from snncc.errors import IRError
from snncc.ir import expr as E
from snncc.ir.surrogates import Params, resolve_params, surrogate_backward

Tensor = torch.Tensor
Value = Tensor | float


def _cmp(op: str, a: Value, b: Value) -> Tensor:
    t = {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b, "eq": a == b}[op]  # type: ignore[operator]
    like = a if isinstance(a, Tensor) else b
    return t.to(like.dtype)  # type: ignore[union-attr]


def _apply(n: E.ENode, a: list[Value]) -> Value:
    op = n.op
    if op == "add":
        return a[0] + a[1]  # type: ignore[operator]
    if op == "sub":
        return a[0] - a[1]  # type: ignore[operator]
    if op == "mul":
        return a[0] * a[1]  # type: ignore[operator]
    if op == "div":
        return a[0] / a[1]  # type: ignore[operator]
    if op == "neg":
        return -a[0]  # type: ignore[operator]
    if op == "recip":
        return torch.reciprocal(a[0])  # type: ignore[arg-type]
    if op in ("exp", "log", "tanh", "sigmoid", "abs", "sqrt", "relu", "sign", "sin", "cos"):
        return getattr(torch, op)(a[0])
    if op == "pow":
        return torch.pow(a[0], n.attr("e"))  # type: ignore[call-overload]
    if op == "clamp":
        return torch.clamp(a[0], min=n.attr("lo"), max=n.attr("hi"))  # type: ignore[arg-type]
    if op in ("gt", "ge", "lt", "le", "eq"):
        return _cmp(op, a[0], a[1])
    if op == "and":
        return a[0] * a[1]  # type: ignore[operator]
    if op == "where":
        cond = a[0]
        if not isinstance(cond, Tensor):
            return a[1] if cond else a[2]
        return torch.where(cond != 0, a[1], a[2])  # type: ignore[arg-type]
    if op == "detach":
        return a[0].detach()  # type: ignore[union-attr]
    if op == "heaviside":
        return SpikeFunction.apply(
            a[0],
            n.attr("surrogate"),
            float(n.attr("alpha")),
            n.attr("cmp") == ">",
            n.attr("params", ()),
        )
    raise IRError(f"the torch lowering has no rule for expression op {op!r}")


class Plan:
    """The nodes to evaluate for some roots, in order (built once, run every step)."""

    def __init__(self, g: E.Graph, roots: Iterable[int]) -> None:
        need = sorted(g.ancestors(roots))
        self.g = g
        self.order = [(i, g.nodes[i]) for i in need]

    def run(self, env: Mapping[str, Value]) -> dict[int, Value]:
        """Evaluate every planned node; ``env`` maps input names (``"s:v"``) to values."""
        vals: dict[int, Value] = {}
        for i, n in self.order:
            if n.op == "input":
                try:
                    vals[i] = env[n.name]
                except KeyError:
                    raise IRError(f"expression input {n.name!r} has no value") from None
            elif n.op == "const":
                vals[i] = n.value  # a Python float: torch casts it like the framework's scalar
            else:
                vals[i] = _apply(n, [vals[j] for j in n.args])
        return vals


def evaluate(g: E.Graph, roots: Iterable[int], env: Mapping[str, Value]) -> dict[int, Value]:
    """Evaluate the nodes ``roots`` need with torch (see :class:`Plan`)."""
    return Plan(g, roots).run(env)


# -------------------------------------------------------------------- spike
@lru_cache(maxsize=256)
def _surrogate_plan(name: str, alpha: float, params: Params) -> tuple[E.Graph, Any]:
    g = E.Graph()
    grad, x = g.input("g", "out"), g.input("x", "u")
    return g, surrogate_backward(name, grad, x, alpha, params)


def surrogate_grad_of(
    name: str, alpha: float, grad: Tensor, x: Tensor, params: Params = ()
) -> Tensor:
    """``d spike / d x * grad`` at ``x`` for the surrogate ``name`` (torch); ``params``: its
    parameters beyond alpha (:func:`snncc.ir.surrogates.resolve_params`)."""
    g, result = _surrogate_plan(name, alpha, resolve_params(name, params))
    if not isinstance(result, E.Val):  # a constant gradient (no_grad: 0)
        return torch.full_like(grad, float(result))
    return evaluate(g, [result.i], {"g:out": grad, "x:u": x})[result.i]  # type: ignore[return-value]


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward (``x >= 0``, or ``x > 0`` when ``strict``), surrogate backward.

    ``apply(x, name, alpha, strict[, params])``: ``params`` (optional) are the surrogate's
    parameters beyond alpha.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, name: str, alpha: float, strict: bool, *rest: Any) -> Tensor:
        ctx.save_for_backward(x)
        ctx.name = name
        ctx.alpha = alpha
        ctx.params = tuple(rest[0]) if rest else ()
        ctx.n_rest = len(rest)
        return (x > 0).to(x.dtype) if strict else (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        gx = surrogate_grad_of(ctx.name, ctx.alpha, grad_output, x, ctx.params)
        return gx, None, None, None, *([None] * ctx.n_rest)
