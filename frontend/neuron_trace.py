"""Trace a neuron's own step code into an expression graph (a user-defined neuron).

A neuron snncc has never seen compiles from its own code: its step is run
once on :class:`Sym` tensors, stand-ins whose every torch operation builds a
node of an :mod:`snncc.ir.expr` graph instead of computing. The step's
states, params and input are graph inputs; its results (the spike, the new
state) are graph nodes; the graph becomes the node's ``program`` (the
``traced`` form, :mod:`snncc.ir.neurons.traced`), which every backend lowers
like any other form: fused kernels with a derived backward, jax, ONNX.

What traces: element-wise torch arithmetic (``+ - * /``, ``exp``, ``log``,
``tanh``, ``sigmoid``, ``abs``, ``sqrt``, ``relu``, ``sign``, ``clamp``,
``where``, comparisons, ``pow`` 2 and 3, ``detach``, ``clone``, ``float()``,
``zeros_like``...), in-place forms of them, the spike of a known surrogate
(a SpikingJelly surrogate module, an snnTorch ``spike_grad``,
:func:`snncc.surrogate.spike`), Python numbers and the module's own
parameters and buffers. What does not: Python control flow on tensor
values, other torch functions, other autograd Functions. Each is refused
with one message naming the module, the line, and what to change.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snncc.errors import UnsupportedError
from snncc.ir import expr as E

Tensor = torch.Tensor
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_SNNCC_DIRS = tuple(
    str(Path(__file__).resolve().parent.parent / d) for d in ("frontend", "ir", "snncc", "backends")
)


class TraceError(UnsupportedError):
    """A step that cannot be traced; the message names the line."""


def _user_line() -> str:
    """``file:line: code`` of the innermost frame outside torch and snncc (the traced code)."""
    for fr in reversed(traceback.extract_stack()):
        fn = str(Path(fr.filename).resolve()) if fr.filename else ""
        if not fn or fn.startswith(_TORCH_DIR) or fn.startswith(_SNNCC_DIRS):
            continue
        return f"{Path(fr.filename).name}:{fr.lineno}: {(fr.line or '').strip()}"
    return "(unknown line)"


def _refuse(why: str) -> TraceError:
    return TraceError(f"{why} at {_user_line()}")


# --------------------------------------------------------------------- Sym
def _val(a: Any) -> E.Operand:
    """An operand as an expression value: a Sym's node, a Python number, a one-value tensor."""
    if isinstance(a, Sym):
        return a.val
    if isinstance(a, bool):
        return float(a)
    if isinstance(a, (int, float)):
        return float(a)
    if isinstance(a, Tensor) and a.numel() == 1 and not a.requires_grad:
        return float(a.detach().reshape(()).item())
    if isinstance(a, Tensor):
        raise _refuse(
            f"a tensor of shape {tuple(a.shape)} that is not one of the neuron's own parameters "
            "or buffers is used in its step"
        )
    raise _refuse(f"a {type(a).__name__} value is used as a tensor in the neuron's step")


def _binary(op: str) -> Callable[[Any, Any], E.Operand]:
    def fn(a: Any, b: Any) -> E.Operand:
        x, y = _val(a), _val(b)
        if not isinstance(x, E.Val) and not isinstance(y, E.Val):
            return E.evaluate_const(E.ENode(op), [float(x), float(y)])
        g = (x if isinstance(x, E.Val) else y).g
        return g.op(op, x, y)

    return fn


def _rdiv(a: Any, b: Any) -> E.Operand:
    """``b / a`` with a the tensor (torch's __rtruediv__: reciprocal(a) * b)."""
    return _val(b) / _val(a)


def _unary(name: str) -> Callable[[Any], E.Operand]:
    fns = {
        "exp": E.exp,
        "log": E.log,
        "tanh": E.tanh,
        "sigmoid": E.sigmoid,
        "abs": E.abs_,
        "sqrt": E.sqrt,
        "relu": E.relu,
    }

    def fn(a: Any) -> E.Operand:
        return fns[name](_val(a))

    return fn


def _neg(a: Any) -> E.Operand:
    return -_val(a)  # type: ignore[operator]


def _recip(a: Any) -> E.Operand:
    return 1.0 / _val(a)  # type: ignore[operator]


def _sign(a: Any) -> E.Operand:
    x = _val(a)
    return x.g.op("sign", x) if isinstance(x, E.Val) else float((x > 0) - (x < 0))


def _pow(a: Any, b: Any) -> E.Operand:
    if b not in (2, 3, 2.0, 3.0):
        raise _refuse(f"pow with exponent {b!r} (supported: 2 and 3, and x * x)")
    x = _val(a)
    return x * x if b in (2, 2.0) else x * x * x  # type: ignore[operator]


def _square(a: Any) -> E.Operand:
    return _pow(a, 2)


def _clamp(a: Any, min: Any = None, max: Any = None) -> E.Operand:  # noqa: A002 - torch's names
    for bound in (min, max):
        if bound is not None and not isinstance(bound, (int, float)):
            raise _refuse("clamp with tensor bounds (supported: Python number bounds)")
    return E.clamp(_val(a), min, max)


def _clamp_min(a: Any, min: Any) -> E.Operand:  # noqa: A002
    return _clamp(a, min, None)


def _clamp_max(a: Any, max: Any) -> E.Operand:  # noqa: A002
    return _clamp(a, None, max)


def _where(cond: Any, a: Any, b: Any) -> E.Operand:
    c = _val(cond)
    if not isinstance(c, E.Val):
        return _val(a) if c else _val(b)
    return E.where(c, _val(a), _val(b))


def _same(a: Any, *args: Any, **kwargs: Any) -> E.Operand:
    """Ops that keep the value: detach aside (see _detach), clone, contiguous, float()..."""
    return _val(a)


def _to(a: Any, *args: Any, **kwargs: Any) -> E.Operand:
    dtypes = [v for v in (*args, kwargs.get("dtype")) if isinstance(v, torch.dtype)]
    if any(not d.is_floating_point for d in dtypes):
        raise _refuse(f"a conversion to {dtypes[0]} (the neuron's values are floats)")
    return _val(a)


def _detach(a: Any) -> E.Operand:
    return E.detach(_val(a))


def _like(value: float) -> Callable[..., float]:
    def fn(a: Any, *args: Any, **kwargs: Any) -> float:
        return value

    return fn


def _full_like(a: Any, fill: Any, *args: Any, **kwargs: Any) -> float:
    if not isinstance(fill, (int, float)):
        raise _refuse("full_like with a tensor fill value")
    return float(fill)


def _add(a: Any, b: Any, *, alpha: Any = 1) -> E.Operand:
    return _binary("add")(a, b) if alpha == 1 else _binary("add")(a, _binary("mul")(b, alpha))


def _sub(a: Any, b: Any, *, alpha: Any = 1) -> E.Operand:
    return _binary("sub")(a, b) if alpha == 1 else _binary("sub")(a, _binary("mul")(b, alpha))


def _rsub(a: Any, b: Any, *, alpha: Any = 1) -> E.Operand:
    return _sub(b, a, alpha=alpha)


def _div(a: Any, b: Any, *, rounding_mode: Any = None) -> E.Operand:
    if rounding_mode is not None:
        raise _refuse(f"div with rounding_mode={rounding_mode!r}")
    return _binary("div")(a, b)


_T = torch.Tensor
_F = torch.nn.functional
#: torch function or Tensor method -> (expression builder, in place)
_OPS: dict[Any, tuple[Callable[..., E.Operand], bool]] = {}


def _reg(fn: Callable[..., E.Operand], *targets: Any, inplace: bool = False) -> None:
    for t in targets:
        _OPS[t] = (fn, inplace)


_reg(_add, torch.add, _T.add, _T.__add__, _T.__radd__, _T.__iadd__)
_reg(_add, _T.add_, inplace=True)
_reg(_sub, torch.sub, torch.subtract, _T.sub, _T.__sub__, _T.__isub__)
_reg(_sub, _T.sub_, inplace=True)
_reg(_rsub, _T.__rsub__, torch.rsub)
_reg(_binary("mul"), torch.mul, torch.multiply, _T.mul, _T.__mul__, _T.__rmul__, _T.__imul__)
_reg(_binary("mul"), _T.mul_, inplace=True)
_reg(_div, torch.div, torch.true_divide, _T.div, _T.__truediv__, _T.__itruediv__)
_reg(_div, _T.div_, inplace=True)
_reg(_rdiv, _T.__rtruediv__)
_reg(_neg, torch.neg, _T.neg, _T.__neg__)
_reg(_recip, torch.reciprocal, _T.reciprocal)
for _name in ("exp", "log", "tanh", "sigmoid", "abs", "sqrt", "relu"):
    _reg(_unary(_name), getattr(torch, _name), getattr(_T, _name))
    _reg(_unary(_name), getattr(_T, _name + "_"), inplace=True)
_reg(_unary("sigmoid"), torch.nn.functional.sigmoid)
_reg(_unary("tanh"), torch.nn.functional.tanh)
_reg(_unary("relu"), _F.relu, _T.__abs__)
_OPS[_T.__abs__] = (_unary("abs"), False)
_reg(_sign, torch.sign, _T.sign)
_reg(_pow, torch.pow, _T.pow, _T.__pow__)
_reg(_square, torch.square, _T.square)
_reg(_clamp, torch.clamp, torch.clip, _T.clamp, _T.clip)
_reg(_clamp, _T.clamp_, inplace=True)
_reg(_clamp_min, torch.clamp_min, _T.clamp_min)
_reg(_clamp_max, torch.clamp_max, _T.clamp_max)
_reg(_where, torch.where, _T.where)
for _name, _op in (("gt", "gt"), ("ge", "ge"), ("lt", "lt"), ("le", "le"), ("eq", "eq")):
    _reg(_binary(_op), getattr(torch, _name), getattr(_T, _name), getattr(_T, f"__{_name}__"))
_reg(_binary("gt"), torch.greater)
_reg(_binary("ge"), torch.greater_equal)
_reg(_binary("lt"), torch.less)
_reg(_binary("le"), torch.less_equal)
_reg(_detach, torch.detach, _T.detach)
_reg(_same, torch.clone, _T.clone, _T.contiguous, _T.float, _T.type_as, torch.Tensor.view_as)
_reg(_to, _T.to, _T.type)
_reg(_like(0.0), torch.zeros_like)
_reg(_like(1.0), torch.ones_like)
_reg(_full_like, torch.full_like)

#: queries answered with the example's real numbers
_QUERIES = {
    _T.shape.__get__,  # type: ignore[attr-defined]
    _T.dtype.__get__,  # type: ignore[attr-defined]
    _T.device.__get__,  # type: ignore[attr-defined]
    _T.ndim.__get__,  # type: ignore[attr-defined]
    _T.requires_grad.__get__,  # type: ignore[attr-defined]
    _T.is_floating_point,
    _T.dim,
    _T.size,
    _T.numel,
    _T.__len__,
}


class Sym(Tensor):
    """A tensor stand-in: torch operations on it build expression nodes (see the module doc).

    It has the example's shape, dtype and device (code may ask for them) and no
    data; ``val`` is its expression value (a node, or a Python number).
    """

    val: E.Operand

    @staticmethod
    def __new__(cls, val: E.Operand, like: Tensor) -> Sym:
        r = Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, like.shape, dtype=like.dtype, device=like.device
        )
        r.val = val
        return r

    def __init__(self, val: E.Operand, like: Tensor) -> None:
        pass

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        raise _refuse(f"torch operation {func} on a neuron value (not element-wise arithmetic)")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _QUERIES:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        like = next(a for a in (*args, *kwargs.values()) if isinstance(a, Sym))
        hit = _OPS.get(func)
        if hit is None:
            name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
            if name.rsplit(".", 1)[-1] in (
                "__bool__",
                "item",
                "__float__",
                "__int__",
                "any",
                "all",
            ):
                raise _refuse(
                    "Python control flow (or a conversion to a Python number) on a neuron value: "
                    "the step must not branch on tensor values; use torch.where"
                )
            raise _refuse(
                f"{name} on a neuron value is not one of the element-wise operations a traced "
                "step may use (+ - * /, exp, log, tanh, sigmoid, abs, sqrt, relu, sign, clamp, "
                "where, comparisons, pow 2/3, detach, zeros_like...)"
            )
        fn, inplace = hit
        result = fn(*args, **kwargs)
        if inplace:
            args[0].val = result
            return args[0]
        return Sym(result, like)

    def snncc_spike(
        self, cmp: str, surrogate: str, alpha: float, params: Mapping[str, float] | None = None
    ) -> Sym:
        """The spike of this value (a Heaviside step forward, the named surrogate backward)."""
        v = self.val
        if not isinstance(v, E.Val):
            raise _refuse("a spike of a constant")
        return Sym(E.heaviside(v, cmp, surrogate, alpha, params), self)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Sym({self.val!r}, shape={tuple(self.shape)})"


def _spike_of(
    cmp: str, name: str, alpha: float, params: Mapping[str, float] | None = None
) -> Callable[[Any], Sym]:
    def spike(u: Any, *args: Any, **kwargs: Any) -> Sym:
        if not isinstance(u, Sym):
            raise _refuse("a surrogate spike of a value that is not the neuron's")
        return u.snncc_spike(cmp, name, alpha, params)

    return spike


# ----------------------------------------------------------------- surrogates
def _known_surrogate(obj: Any) -> tuple[str, str, float, dict[str, float]] | None:
    """(cmp, snncc name, alpha, params) of a framework surrogate object, or None if it is
    not one."""
    from snncc.frontend import surrogates as fs

    mod = type(obj).__module__ or ""
    if isinstance(obj, nn.Module) and mod.startswith("spikingjelly"):
        # refuses unknown subclasses by name; params: the ones beyond alpha (few have any)
        name, alpha, params = fs.spikingjelly_surrogate(obj)
        return ">=", name, alpha, params
    if callable(obj) and (getattr(obj, "__module__", "") or "").startswith("snntorch"):
        name, alpha, params = fs.snntorch_surrogate(obj)
        return ">", name, alpha, params
    return None


@contextmanager
def _surrogates_as_spikes(module: nn.Module) -> Iterator[None]:
    """While active, each known surrogate the module holds returns a traced spike.

    A SpingJelly surrogate module gets an instance ``forward``; an snnTorch
    ``spike_grad`` (a plain function attribute) is replaced; both are put back.
    """
    patched: list[tuple[Any, str, Any, bool]] = []
    try:
        for m in module.modules():
            for key, value in list(vars(m).items()) + list(m._modules.items()):
                if key.startswith("_") and key != "_modules" or value is None:
                    continue
                if isinstance(value, (int, float, str, bool, Tensor, dict, list, tuple)):
                    continue
                found = _known_surrogate(value)
                if found is None:
                    continue
                spike = _spike_of(*found)
                if isinstance(value, nn.Module):
                    had = "forward" in vars(value)
                    patched.append((value, "forward", vars(value).get("forward"), had))
                    object.__setattr__(value, "forward", spike)
                else:
                    patched.append((m, key, value, True))
                    object.__setattr__(m, key, spike)
        yield
    finally:
        for obj, key, old, had in reversed(patched):
            if had:
                object.__setattr__(obj, key, old)
            else:
                object.__delattr__(obj, key)


@contextmanager
def _params_as_inputs(module: nn.Module, g: E.Graph, like: Tensor) -> Iterator[dict[str, str]]:
    """While active, the module's own float parameters and buffers are graph inputs
    ``p:<name>`` (their state_dict names, ``.`` written ``__``); yields name -> role."""
    swapped: list[tuple[dict, str, Any]] = []
    roles: dict[str, str] = {}
    try:
        for prefix, m in module.named_modules():
            for store in (m._parameters, m._buffers):
                for key, t in list(store.items()):
                    if t is None or not t.is_floating_point():
                        continue
                    name = f"{prefix}.{key}" if prefix else key
                    role = name.replace(".", "__")
                    roles[name] = role
                    swapped.append((store, key, t))
                    store[key] = Sym(g.input("p", role), like)
        yield roles
    finally:
        for store, key, t in reversed(swapped):
            store[key] = t


@contextmanager
def _no_foreign_functions() -> Iterator[None]:
    """While active, an autograd Function applied to a neuron value is refused: its forward
    would be traced as plain ops and its own backward silently lost."""
    fn_cls = torch.autograd.Function
    original = fn_cls.__dict__["apply"]

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, Sym) for a in (*args, *kwargs.values())):
            raise _refuse(
                f"autograd Function {cls.__module__}.{cls.__qualname__} applied to a neuron "
                "value (its backward is its own): only the spikes of known surrogates "
                "(SpikingJelly surrogate modules, snnTorch spike_grad, snncc.surrogate.spike) "
                "can be traced"
            )
        return original.__get__(None, cls)(*args, **kwargs)

    fn_cls.apply = classmethod(apply)  # type: ignore[method-assign]
    try:
        yield
    finally:
        fn_cls.apply = original  # type: ignore[method-assign]


# ----------------------------------------------------------------- tracing
def trace_step(
    module: nn.Module,
    step: Callable[[Sym, list[Sym]], tuple[Any, list[Any]]],
    states: dict[str, float],
    x_like: Tensor,
) -> dict[str, Any]:
    """Trace ``step(x, states) -> (out, new_states)`` of ``module`` into a traced program.

    ``states``: each state variable's name and initial value (in the order the
    step takes and returns them); ``x_like``: a tensor with the input's per-step
    shape. Returns the ``program`` of a traced NeuronSpec. Refuses what cannot be
    traced (:class:`TraceError`, naming the line).
    """
    g = E.Graph()
    x = Sym(g.input("x", "x"), x_like)
    s_in = [Sym(g.input("s", name), x_like) for name in states]
    with (
        _surrogates_as_spikes(module),
        _no_foreign_functions(),
        _params_as_inputs(module, g, x_like) as roles,
    ):
        out, new_states = step(x, s_in)
    if len(new_states) != len(states):
        raise UnsupportedError(
            f"the step returned {len(new_states)} state values for {len(states)} state variables"
        )

    def ref(v: Any, what: str) -> Any:
        value = _val(v)
        if isinstance(value, E.Val):
            return value.i
        if not math.isfinite(value):
            raise UnsupportedError(f"the step's {what} is the constant {value!r}")
        return {"const": value}

    spiking = (
        isinstance(out, Sym)
        and isinstance(out.val, E.Val)
        and (
            g.nodes[out.val.i].op == "heaviside"
            or any(n.op == "heaviside" for n in _ancestor_nodes(g, out.val.i))
        )
    )
    used = {g.nodes[i].name for i in range(len(g.nodes)) if g.nodes[i].op == "input"}
    params = [role for role in roles.values() if f"p:{role}" in used]
    return {
        "states": list(states),
        "inits": {k: float(v) for k, v in states.items()},
        "params": params,
        "graph": g.to_json(),
        "next_state": {k: ref(v, f"state {k!r}") for k, v in zip(states, new_states)},
        "outputs": {("spike" if spiking else "membrane"): ref(out, "output")},
    }


def _ancestor_nodes(g: E.Graph, root: int) -> list[E.ENode]:
    return [g.nodes[i] for i in g.ancestors([root])]


def param_names(program: dict[str, Any]) -> dict[str, str]:
    """Role -> the module's own state_dict name (roles write ``.`` as ``__``)."""
    return {role: role.replace("__", ".") for role in program["params"]}
