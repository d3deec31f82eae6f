"""A small expression language for one neuron step: the data every target lowers.

Why a language of its own: a neuron model's arithmetic has to run on five
targets (torch eager, C++/CUDA kernels forward and backward, jax.numpy, ONNX
Scan bodies) and must round exactly as the source framework does. Writing it
once, as a graph of single-rounding float operations in the source's own
order, and lowering that graph everywhere is what keeps the targets from
drifting apart; the backward comes from differentiating the same graph
(:func:`vjp`), the surrogate gradient standing in for the step function.

Values and semantics (torch eager's, because the source frameworks are torch):

- A :class:`Val` is one fp32 value per neuron (a tensor element). Every op
  below is one fp32 operation that rounds once.
- Python numbers are *constants*. Operations between constants fold in
  Python double arithmetic at build time (``dt * tau_mem_inv`` of two Python
  floats is a double, as in the framework's Python code); a constant meeting a
  Val is rounded to fp32 first, as torch casts a Python scalar to the
  tensor's dtype.
- ``const / val`` is ``reciprocal(val) * const`` (torch's ``__rtruediv__``),
  two roundings; ``val / const`` divides by the fp32 constant (the C lowering
  uses ``SNNCC_DIV_SCALAR``: torch's CUDA kernel multiplies by the fp32
  reciprocal there); ``val ** 2`` is ``val * val`` (torch's pow kernel; :func:`pow_`
  lists its other special exponents, any other constant exponent is the ``pow`` op).
- Comparisons give 0.0 / 1.0 and carry no gradient; :func:`heaviside` is the
  spike: a comparison forward, a named surrogate gradient backward.
- Gradients follow torch's derivative formulas (``clamp`` passes the gradient
  at its bounds, ``relu`` does not at 0, ``abs`` gives 0 at 0).

A graph is a list of :class:`ENode` in build order (topological by
construction), hash-consed so that writing the same subexpression twice
yields one node. Inputs are named ``"<kind>:<name>"`` (``s:v`` a state
variable before the step, ``x:rec`` an input port, ``q:b`` a per-sequence
quantity, ``p:beta`` a node param, ``g:<...>`` an adjoint, ``c:cut`` a value a
kernel saved); names are plain
identifiers, so nothing a user writes reaches generated code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from snncc.errors import IRError, UnsupportedError

#: op name -> number of Val arguments
ARITY: dict[str, int] = {
    "input": 0,
    "const": 0,
    "add": 2,
    "sub": 2,
    "mul": 2,
    "div": 2,
    "neg": 1,
    "recip": 1,
    "exp": 1,
    "log": 1,
    "tanh": 1,
    "sigmoid": 1,
    "abs": 1,
    "sqrt": 1,
    "sin": 1,
    "cos": 1,
    "pow": 1,
    "relu": 1,
    "sign": 1,
    "clamp": 1,
    "gt": 2,
    "ge": 2,
    "lt": 2,
    "le": 2,
    "eq": 2,
    "and": 2,
    "where": 3,
    "heaviside": 1,
    "detach": 1,
}
#: ops whose result is 0.0 or 1.0 and never carries a gradient
COMPARISONS = ("gt", "ge", "lt", "le", "eq", "and")
#: ops that cut the gradient (their result is treated as a constant by the backward)
NO_GRAD = (*COMPARISONS, "detach", "sign")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
INPUT_KINDS = ("s", "x", "q", "p", "g", "c")


@dataclass(frozen=True)
class ENode:
    """One operation: ``op`` on the nodes ``args`` (indices of earlier nodes).

    ``value``: a const's Python float. ``name``: an input's ``"<kind>:<name>"``.
    ``attrs``: sorted (key, value) pairs: clamp ``lo``/``hi`` (float or None);
    pow ``e`` (the constant exponent); heaviside ``cmp`` (">=" or ">"), ``surrogate``
    (a name of :mod:`snncc.ir.surrogates`), ``alpha`` and, for a surrogate with
    parameters beyond alpha, ``params`` (sorted (name, value) pairs).
    """

    op: str
    args: tuple[int, ...] = ()
    value: float | None = None
    name: str | None = None
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)


class Val:
    """A handle on one node of a :class:`Graph`; arithmetic on it builds nodes."""

    __slots__ = ("g", "i")

    def __init__(self, g: Graph, i: int) -> None:
        self.g = g
        self.i = i

    # arithmetic (Python evaluates left to right, as torch eager does)
    def __add__(self, o: Any) -> Val:
        return self.g.op("add", self, o)

    def __radd__(self, o: Any) -> Val:
        return self.g.op("add", o, self)

    def __sub__(self, o: Any) -> Val:
        return self.g.op("sub", self, o)

    def __rsub__(self, o: Any) -> Val:
        return self.g.op("sub", o, self)

    def __mul__(self, o: Any) -> Val:
        return self.g.op("mul", self, o)

    def __rmul__(self, o: Any) -> Val:
        return self.g.op("mul", o, self)

    def __truediv__(self, o: Any) -> Val:
        return self.g.op("div", self, o)

    def __rtruediv__(self, o: Any) -> Val:
        # torch: scalar / tensor is tensor.reciprocal() * scalar (two roundings)
        return self.g.op("mul", self.g.op("recip", self), o)

    def __neg__(self) -> Val:
        return self.g.op("neg", self)

    def __pow__(self, o: Any) -> Val:
        return pow_(self, o)  # type: ignore[return-value]

    # comparisons give 0.0 / 1.0 (torch: (a > b).float()); no __eq__: Vals stay hashable
    def __gt__(self, o: Any) -> Val:
        return self.g.op("gt", self, o)

    def __ge__(self, o: Any) -> Val:
        return self.g.op("ge", self, o)

    def __lt__(self, o: Any) -> Val:
        return self.g.op("lt", self, o)

    def __le__(self, o: Any) -> Val:
        return self.g.op("le", self, o)

    def __bool__(self) -> bool:
        raise IRError(
            "a neuron value has no truth value at build time: use where(cond, a, b) "
            "instead of Python control flow on it"
        )

    def __repr__(self) -> str:
        return f"<Val %{self.i} {self.g.nodes[self.i].op}>"


Num = float | int
Operand = Val | Num


def is_val(v: Any) -> bool:
    return isinstance(v, Val)


@dataclass
class Graph:
    """A hash-consed list of nodes; :meth:`op` builds, :meth:`input` names inputs."""

    nodes: list[ENode] = field(default_factory=list)
    #: readable names of some nodes (for generated code), node -> name
    labels: dict[int, str] = field(default_factory=dict)
    _index: dict[ENode, int] = field(default_factory=dict, repr=False)

    # -------------------------------------------------------------- building
    def add(self, node: ENode) -> Val:
        i = self._index.get(node)
        if i is None:
            i = len(self.nodes)
            self.nodes.append(node)
            self._index[node] = i
        return Val(self, i)

    def input(self, kind: str, name: str) -> Val:
        if kind not in INPUT_KINDS:
            raise IRError(f"expression input kind {kind!r} is not one of {INPUT_KINDS}")
        check_name(name)
        return self.add(ENode("input", name=f"{kind}:{name}"))

    def const(self, value: Num) -> Val:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IRError(f"expression constant {value!r} is not a number")
        return self.add(ENode("const", value=float(value)))

    def val(self, v: Operand) -> Val:
        if isinstance(v, Val):
            if v.g is not self:
                raise IRError("a value from another expression graph was used")
            return v
        return self.const(v)

    def op(self, op: str, *args: Operand, **attrs: Any) -> Val:
        if ARITY.get(op) != len(args):
            raise IRError(f"expression op {op!r} takes {ARITY.get(op)} operands, got {len(args)}")
        ids = tuple(self.val(a).i for a in args)
        return self.add(ENode(op, ids, attrs=tuple(sorted(attrs.items()))))

    def label(self, v: Val, name: str) -> Val:
        """Give node ``v`` a readable name in generated code (first name wins)."""
        check_name(name)
        if v.g is not self:
            raise IRError("a value from another expression graph was labelled")
        if self.nodes[v.i].op not in ("input", "const"):
            self.labels.setdefault(v.i, name)
        return v

    # ------------------------------------------------------------- reading
    def node(self, i: int) -> ENode:
        return self.nodes[i]

    def inputs(self) -> dict[str, int]:
        """Input name (``"s:v"``...) -> node, in build order."""
        return {n.name: i for i, n in enumerate(self.nodes) if n.op == "input"}

    def ancestors(self, roots: Iterable[int]) -> set[int]:
        """Every node the ``roots`` are computed from (roots included)."""
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(self.nodes[i].args)
        return seen

    def to_json(self) -> list[dict[str, Any]]:
        """A JSON-able list (node index = position), for IR files."""
        out = []
        for i, n in enumerate(self.nodes):
            d: dict[str, Any] = {"op": n.op}
            if n.args:
                d["args"] = list(n.args)
            if n.value is not None:
                d["value"] = n.value
            if n.name is not None:
                d["name"] = n.name
            if n.attrs:
                d["attrs"] = dict(n.attrs)
            if i in self.labels:
                d["label"] = self.labels[i]
            out.append(d)
        return out

    @classmethod
    def from_json(cls, items: Any, where: str = "expression") -> Graph:
        """Rebuild and validate a graph written by :meth:`to_json`; IRError names the problem."""
        if not isinstance(items, list):
            raise IRError(f"{where}: expected a list of nodes")
        g = cls()
        for pos, d in enumerate(items):
            if not isinstance(d, dict) or d.get("op") not in ARITY:
                raise IRError(f"{where}: node {pos} has no known op (one of {sorted(ARITY)})")
            op = d["op"]
            args = d.get("args", [])
            if (
                not isinstance(args, list)
                or len(args) != ARITY[op]
                or any(isinstance(a, bool) or not isinstance(a, int) for a in args)
                or any(not 0 <= a < len(g.nodes) for a in args)
            ):
                raise IRError(f"{where}: node {pos} ({op}) has bad args {args!r}")
            if op == "input":
                kind, _, name = str(d.get("name", "")).partition(":")
                v = g.input(kind, name)
            elif op == "const":
                value = d.get("value")
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise IRError(f"{where}: const node {pos} has value {value!r}")
                if not math.isfinite(value):
                    raise IRError(f"{where}: const node {pos} is not finite ({value!r})")
                v = g.const(value)
            else:
                attrs = d.get("attrs", {})
                if not isinstance(attrs, dict):
                    raise IRError(f"{where}: node {pos} attrs must be an object")
                v = g.op(op, *(Val(g, a) for a in args), **_checked_attrs(op, attrs, where))
            if v.i != pos:
                raise IRError(f"{where}: node {pos} repeats node {v.i} (graphs are hash-consed)")
            if "label" in d:
                g.label(v, str(d["label"]))
        return g


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise IRError(f"expression name {name!r} is not a plain identifier")
    return name


def _checked_attrs(op: str, attrs: dict[str, Any], where: str) -> dict[str, Any]:
    if op == "clamp":
        for k in ("lo", "hi"):
            v = attrs.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise IRError(f"{where}: clamp {k}={v!r}")
        return {"lo": attrs.get("lo"), "hi": attrs.get("hi")}
    if op == "pow":
        e = attrs.get("e")
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
            raise IRError(f"{where}: pow exponent {e!r}")
        return {"e": float(e)}
    if op == "heaviside":
        from snncc.ir.surrogates import SURROGATES, resolve_params

        if attrs.get("cmp") not in (">=", ">") or attrs.get("surrogate") not in SURROGATES:
            raise IRError(f"{where}: heaviside attrs {attrs!r}")
        alpha = attrs.get("alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise IRError(f"{where}: heaviside alpha {alpha!r}")
        out = {"cmp": attrs["cmp"], "surrogate": attrs["surrogate"], "alpha": float(alpha)}
        if "params" in attrs:
            pairs = attrs["params"]
            if not isinstance(pairs, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
                for p in pairs
            ):
                raise IRError(f"{where}: heaviside params {pairs!r}")
            try:
                out["params"] = resolve_params(attrs["surrogate"], dict(pairs))
            except UnsupportedError as e:
                raise IRError(f"{where}: {e}") from None
        return out
    if attrs:
        raise IRError(f"{where}: op {op!r} takes no attrs, got {sorted(attrs)}")
    return {}


class Namer:
    """Unique names for generated code: a node's label where it has one, else a temporary.

    ``taken``: names the target already uses (its keywords, the surrounding code's variables).
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        name = base if base not in self.taken else None
        j = 1
        while name is None:
            cand = f"{base}_{j}"
            name = cand if cand not in self.taken else None
            j += 1
        self.taken.add(name)
        return name


# ------------------------------------------------------------------ functions
def _unary(op: str, fold: Callable[[float], float]) -> Callable[[Operand], Operand]:
    def fn(a: Operand) -> Operand:
        if isinstance(a, Val):
            return a.g.op(op, a)
        return fold(float(a))

    fn.__name__ = op
    return fn


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


exp = _unary("exp", math.exp)
log = _unary("log", math.log)
tanh = _unary("tanh", math.tanh)
sigmoid = _unary("sigmoid", _sigmoid)
sqrt = _unary("sqrt", math.sqrt)
relu = _unary("relu", lambda a: max(a, 0.0))
abs_ = _unary("abs", abs)
sin = _unary("sin", math.sin)
cos = _unary("cos", math.cos)


def pow_(a: Operand, e: Num) -> Operand:
    """``a ** e`` for a constant exponent, as torch's pow kernel computes it.

    torch rewrites some exponents before any ``pow`` runs (aten pow_tensor_scalar): 2 is
    ``a * a``, 3 is ``a * a * a``, -1 is ``reciprocal(a)``, -2 is ``reciprocal(a * a)``,
    0.5 is ``sqrt(a)``; so are they here, which keeps them exact on every target. Any other
    finite exponent is the ``pow`` op (attr ``e``; a libm ``powf`` on the kernel targets,
    which may differ from torch's in the last bit).
    """
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
        raise IRError(f"the exponent of pow must be a finite Python number, got {e!r}")
    e = float(e)
    if not isinstance(a, Val):
        return float(a) ** e
    if e == 2.0:
        return a * a
    if e == 3.0:
        return a * a * a
    if e == -1.0:
        return a.g.op("recip", a)
    if e == -2.0:
        return a.g.op("recip", a * a)
    if e == 0.5:
        return a.g.op("sqrt", a)
    return a.g.op("pow", a, e=e)


def _graph_of(*vals: Any) -> Graph | None:
    for v in vals:
        if isinstance(v, Val):
            return v.g
    return None


@lru_cache(maxsize=1)
def clamp_passes_bounds() -> bool:
    """Whether torch's ``clamp`` passes the gradient at a bound (``x == lo`` or ``x == hi``).

    torch changed this between releases (2.13: it passes, 2.14: it does not), and
    the source frameworks call torch's clamp (snnTorch's ``beta.clamp(0, 1)``), so
    snncc follows the installed torch: every target's clamp derivative asks here.
    """
    import torch

    x = torch.tensor([0.0, 1.0], requires_grad=True)
    x.clamp(0.0, 1.0).sum().backward()
    assert x.grad is not None
    return bool(x.grad[1] == 1.0)


def clamp(a: Operand, lo: Num | None = None, hi: Num | None = None) -> Operand:
    """torch's ``clamp(a, lo, hi)`` (max with lo first, then min with hi); its gradient passes
    strictly inside (lo, hi), and at the bounds as the installed torch decides
    (:func:`clamp_passes_bounds`)."""
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if isinstance(a, Val):
        return a.g.op("clamp", a, lo=lo, hi=hi)
    v = float(a)
    if lo is not None:
        v = max(v, lo)
    if hi is not None:
        v = min(v, hi)
    return v


def where(cond: Val, a: Operand, b: Operand) -> Val:
    """``a`` where ``cond`` (a 0/1 comparison) is 1, else ``b`` (torch.where)."""
    return cond.g.op("where", cond, a, b)


def logical_and(a: Val, b: Val) -> Val:
    return a.g.op("and", a, b)


def eq(a: Operand, b: Operand) -> Val:
    g = _graph_of(a, b)
    if g is None:
        raise IRError("eq of two constants")
    return g.op("eq", a, b)


def detach(a: Operand) -> Operand:
    """The value without its gradient (torch ``.detach()``)."""
    return a.g.op("detach", a) if isinstance(a, Val) else a


def heaviside(
    u: Val, cmp: str, surrogate: str, alpha: float, params: Mapping[str, float] | None = None
) -> Val:
    """The spike ``(u >= 0)`` or ``(u > 0)`` as 0.0/1.0; backward: the named surrogate.

    ``params``: the surrogate's parameters beyond alpha (its defaults fill the rest); the
    node carries them (attr ``params``, sorted pairs) only for a surrogate that has some.
    """
    from snncc.ir.surrogates import SURROGATES, resolve_params

    if cmp not in (">=", ">"):
        raise IRError(f"heaviside comparison {cmp!r} is not '>=' or '>'")
    if surrogate not in SURROGATES:
        raise UnsupportedError(
            f"surrogate {surrogate!r} is not supported; choose one of: "
            f"{', '.join(sorted(SURROGATES))}"
        )
    extra = resolve_params(surrogate, params)
    attrs: dict[str, Any] = {"cmp": cmp, "surrogate": surrogate, "alpha": float(alpha)}
    if extra:
        attrs["params"] = extra
    return u.g.op("heaviside", u, **attrs)


# ------------------------------------------------------------------- lowering
def lower_nodes(
    g: Graph,
    roots: Iterable[int],
    inputs: Mapping[str, Any],
    const: Callable[[float], Any],
    apply: Callable[[int, ENode, list[Any]], Any],
    known: Mapping[int, Any] | None = None,
    target: str = "this target",
) -> dict[int, Any]:
    """Walk the nodes ``roots`` need, in graph order: every target's lowering driver.

    ``inputs`` maps input names (``"s:v"``) to the target's values; ``const`` makes
    a target value of a Python float; ``apply(i, node, args)`` lowers one operation
    given its operands' target values. ``known``: nodes already lowered (not
    revisited, nor are their ancestors). Returns node -> target value.
    """
    refs: dict[int, Any] = dict(known or {})
    for i in sorted(_ancestors_until(g, roots, set(refs))):
        if i in refs:
            continue
        n = g.nodes[i]
        if n.op == "input":
            if n.name not in inputs:
                raise IRError(f"expression input {n.name!r} has no value in {target}")
            refs[i] = inputs[n.name]
        elif n.op == "const":
            refs[i] = const(float(n.value))
        else:
            refs[i] = apply(i, n, [refs[j] for j in n.args])
    return refs


# ------------------------------------------------------------------- rebuild
def rebuild(
    src: Graph,
    roots: Iterable[int],
    dst: Graph,
    replace: Mapping[int, Operand] | None = None,
    rename: Callable[[str], Operand] | None = None,
) -> dict[int, Operand]:
    """Copy the nodes ``roots`` depend on from ``src`` into ``dst``.

    ``replace``: src node -> a value in ``dst`` to use instead (its ancestors
    are not copied); ``rename``: maps each src input name to a dst value
    (default: the same input). Returns src node -> dst value for every copied node.
    """
    replace = dict(replace or {})
    need = _ancestors_until(src, roots, set(replace))
    out: dict[int, Operand] = dict(replace)
    for i in sorted(need):
        if i in out:
            continue
        n = src.nodes[i]
        if n.op == "input":
            out[i] = rename(n.name) if rename else dst.add(ENode("input", name=n.name))
        elif n.op == "const":
            out[i] = n.value
        else:
            args = [out[a] for a in n.args]
            out[i] = _apply(dst, n, args)
        if i in src.labels and isinstance(out[i], Val):
            dst.label(out[i], src.labels[i])
    return out


def _ancestors_until(g: Graph, roots: Iterable[int], stop: set[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if i not in stop:
            stack.extend(g.nodes[i].args)
    return seen


def _apply(dst: Graph, n: ENode, args: list[Operand]) -> Operand:
    """Re-apply node ``n``'s op to new operands (folding when all are constants)."""
    if not any(isinstance(a, Val) for a in args):
        return evaluate_const(n, [float(a) for a in args])
    g = _graph_of(*args) or dst
    return g.op(n.op, *args, **dict(n.attrs))


def evaluate_const(n: ENode, a: list[float]) -> float:
    """A node's value on constant operands, in double (Python's own arithmetic)."""
    op = n.op
    if op == "add":
        return a[0] + a[1]
    if op == "sub":
        return a[0] - a[1]
    if op == "mul":
        return a[0] * a[1]
    if op == "div":
        return a[0] / a[1]
    if op == "neg":
        return -a[0]
    if op == "recip":
        return 1.0 / a[0]
    if op in ("exp", "log", "tanh", "sqrt", "sin", "cos"):
        return getattr(math, op)(a[0])
    if op == "pow":
        return a[0] ** n.attr("e")
    if op == "sigmoid":
        return _sigmoid(a[0])
    if op == "abs":
        return abs(a[0])
    if op == "relu":
        return max(a[0], 0.0)
    if op == "sign":
        return float((a[0] > 0) - (a[0] < 0))
    if op == "clamp":
        return float(clamp(a[0], n.attr("lo"), n.attr("hi")))
    if op in COMPARISONS:
        x, y = a
        return float(
            {"gt": x > y, "ge": x >= y, "lt": x < y, "le": x <= y, "eq": x == y, "and": x and y}[op]
        )
    if op == "where":
        return a[1] if a[0] else a[2]
    if op == "detach":
        return a[0]
    if op == "heaviside":
        return float(a[0] >= 0 if n.attr("cmp") == ">=" else a[0] > 0)
    raise IRError(f"cannot fold op {op!r}")


# ---------------------------------------------------------------------- VJP
def vjp(
    g: Graph,
    outputs: Mapping[str, int],
    wrt: Iterable[int],
    dst: Graph | None = None,
) -> tuple[Graph, dict[int, Operand], dict[int, Val | None]]:
    """Reverse-mode differentiation of ``g``: the vector-Jacobian product of ``outputs``.

    Each output ``name`` gets an adjoint input ``g:<name>`` in the result
    graph; the result maps every node of ``wrt`` to its adjoint (None where no
    path from a differentiable output reaches it, as torch gives ``None``).
    The forward nodes are copied into the same graph (hash-consed), so a
    lowering computes exactly what it needs of them. Derivative formulas are
    torch's; a node used several times sums its contributions in the order its
    users were built, last user first (as autograd runs the backward).
    """
    from snncc.ir.surrogates import surrogate_backward

    dst = dst if dst is not None else Graph()
    fwd = rebuild(g, list(outputs.values()) + list(wrt), dst)
    adj: dict[int, Operand | None] = {}

    def acc(i: int, contrib: Operand) -> None:
        if g.nodes[i].op == "const":
            return
        prev = adj.get(i)
        adj[i] = contrib if prev is None else prev + contrib

    for name, i in outputs.items():
        acc(i, dst.input("g", name))
    order = sorted(g.ancestors(outputs.values()), reverse=True)
    for i in order:
        gy = adj.get(i)
        n = g.nodes[i]
        if gy is None or n.op in ("input", "const") or n.op in NO_GRAD:
            continue
        a = [fwd[j] for j in n.args]
        y = fwd[i]
        op = n.op
        if op == "add":
            acc(n.args[0], gy)
            acc(n.args[1], gy)
        elif op == "sub":
            acc(n.args[0], gy)
            acc(n.args[1], -gy)
        elif op == "mul":
            acc(n.args[0], gy * a[1])
            acc(n.args[1], gy * a[0])
        elif op == "div":
            acc(n.args[0], gy / a[1])
            acc(n.args[1], (-gy) * (y / a[1]))
        elif op == "neg":
            acc(n.args[0], -gy)
        elif op == "recip":
            acc(n.args[0], (-gy) * (y * y))
        elif op == "exp":
            acc(n.args[0], gy * y)
        elif op == "log":
            acc(n.args[0], gy / a[0])
        elif op == "tanh":
            acc(n.args[0], gy * (1.0 - y * y))
        elif op == "sigmoid":
            acc(n.args[0], (gy * (1.0 - y)) * y)
        elif op == "abs":
            acc(n.args[0], gy * dst.op("sign", a[0]))
        elif op == "sqrt":
            acc(n.args[0], gy / (2.0 * y))
        elif op == "sin":
            acc(n.args[0], gy * dst.op("cos", a[0]))
        elif op == "cos":
            acc(n.args[0], gy * -dst.op("sin", a[0]))
        elif op == "pow":
            e = n.attr("e")
            acc(n.args[0], gy * (e * pow_(a[0], e - 1.0)))
        elif op == "relu":
            acc(n.args[0], where(dst.val(y) > 0.0, gy, 0.0))
        elif op == "clamp":
            lo, hi = n.attr("lo"), n.attr("hi")
            inside = None
            closed = clamp_passes_bounds()
            if lo is not None:
                inside = dst.val(a[0]) >= lo if closed else dst.val(a[0]) > lo
            if hi is not None:
                le = dst.val(a[0]) <= hi if closed else dst.val(a[0]) < hi
                inside = le if inside is None else logical_and(inside, le)
            acc(n.args[0], gy if inside is None else where(inside, gy, 0.0))
        elif op == "where":
            acc(n.args[1], where(dst.val(a[0]), gy, 0.0))
            acc(n.args[2], where(dst.val(a[0]), 0.0, gy))
        elif op == "heaviside":
            acc(
                n.args[0],
                surrogate_backward(
                    n.attr("surrogate"),
                    dst.val(gy),
                    dst.val(a[0]),
                    n.attr("alpha"),
                    n.attr("params", ()),
                ),
            )
        else:  # pragma: no cover - ARITY and this table list the same ops
            raise IRError(f"no derivative for expression op {op!r}")
    result: dict[int, Val | None] = {}
    for i in wrt:
        d = adj.get(i)
        result[i] = None if d is None else dst.val(d)
    return dst, fwd, result
