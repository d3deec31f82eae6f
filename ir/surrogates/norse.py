"""Norse 1.1's surrogates (``norse.torch.functional.threshold``)."""

from __future__ import annotations

from snncc.ir.expr import Operand, Val, abs_, relu, tanh
from snncc.ir.surrogates import surrogate


@surrogate("superspike", 100.0, "Norse 1.1 SuperSpike (alpha unused by Norse 1.1)")
def _superspike(g: Val, x: Val, alpha: float) -> Operand:
    return g / (abs_(x) + 1.0) ** 2


@surrogate("triangle", 0.3, "Norse 1.1 Triangle")
def _triangle(g: Val, x: Val, alpha: float) -> Operand:
    return g * alpha * relu(1 - abs_(x))


@surrogate("norse_tanh", 100.0, "Norse 1.1 HeaviTanh")
def _norse_tanh(g: Val, x: Val, alpha: float) -> Operand:
    t = tanh(x * alpha)
    return g * (1 - t * t)
