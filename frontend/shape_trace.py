"""Shape-aware tracing: torch.fx proxies that know the shape of the value they stand for.

Why: models from the SNN frameworks' zoos read shapes in plain Python --
``if x_seq.ndim != 5: raise ...``, ``T, N, C, L = x_seq.shape``,
``if x.ndim == 4: x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)``,
``for step in range(x.size(0))``, ``local_dim = qkv.shape[2] // 3`` -- which
plain ``torch.fx`` cannot trace (a Proxy has no shape). Here every proxy
carries a *fake* tensor (``torch._subclasses.FakeTensorMode``: shape, dtype
and device, no data, no arithmetic), computed as the proxy is made by running
the op on the fake values of its arguments. So shape questions are answered
with the example input's real numbers, and Python branches on them resolve at
trace time.

What was read is recorded (:attr:`ShapeTracer.reads`: the user's line, the
expression and its value) so a later call whose per-step shape differs can
say which decisions of the model's own code it would have changed.

Control flow on tensor *values* (``if x.sum() > 0``, ``x.item()``,
``int(x)``) cannot be decided from a fake tensor and is refused with one
:class:`UnsupportedError` naming the line.

Running leaf modules on fake values costs a few hundred microseconds per
torch op; a framework may give a cheaper answer (``Framework.fake_call``:
SpikingJelly neurons return an empty tensor shaped like their input instead
of running their multi-step loop).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from snncc.errors import IRError, ShapeError, SnnccError, UnsupportedError

try:  # private in torch 2.x; a context manager that undoes fx's patching of nn.Module
    from torch.fx._symbolic_trace import _maybe_revert_all_patches as _unpatched
except ImportError:  # pragma: no cover - other torch versions
    _unpatched = contextlib.nullcontext  # type: ignore[assignment]
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)

#: exceptions of fake execution that mean "this needs the tensor's values"
_VALUE_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException)


#: torch logs a failing meta kernel's traceback (ERROR level) before raising it
_FAKE_TENSOR_LOG = logging.getLogger("torch._subclasses.fake_tensor")


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """Silence that log while a module runs on fake values: the exception it precedes is
    the model's own error on the example's shapes, which the tracer reports in one line."""
    level = _FAKE_TENSOR_LOG.level
    _FAKE_TENSOR_LOG.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        _FAKE_TENSOR_LOG.setLevel(level)


@dataclass(frozen=True)
class ShapeRead:
    """One shape question the model's code asked while tracing, and the answer it got."""

    where: str  # "file.py:12: if x.ndim != 5:"
    what: str  # "x_seq.ndim"
    value: Any


def value_of(a: Any) -> Any:
    """The fake value an fx argument stands for (proxies and nodes resolved, recursively)."""
    if isinstance(a, fx.Proxy):
        a = a.node
    if isinstance(a, fx.Node):
        return a.meta.get("snncc_fake")
    return a


def _user_where(tracer: Any) -> str:
    from snncc.frontend.tracer import user_frame

    return user_frame()


class ShapeProxy(fx.Proxy):
    """An fx Proxy whose shape, rank, dtype and device are those of its example value."""

    # ------------------------------------------------------------ the value
    @property
    def _fake(self) -> Any:
        return self.node.meta.get("snncc_fake")

    def _tensor(self, what: str) -> torch.Tensor:
        v = self._fake
        if not isinstance(v, torch.Tensor):
            raise UnsupportedError(
                f"{what} of {self.node.name}, which is a {type(v).__name__}, not a tensor "
                f"[{_user_where(self.tracer)}]"
            )
        return v

    def _read(self, what: str, value: Any) -> Any:
        self.tracer.note_read(f"{self.node.name}{what}", value)  # type: ignore[attr-defined]
        return value

    # ------------------------------------------------------------ shape questions
    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        return self._read(".shape", self._tensor("shape").shape)

    @property
    def ndim(self) -> int:
        return self._read(".ndim", self._tensor("ndim").ndim)

    def size(self, dim: int | None = None) -> Any:
        t = self._tensor("size()")
        if dim is None:
            return self._read(".size()", t.shape)
        return self._read(f".size({dim})", t.shape[dim])

    def dim(self) -> int:
        return self._read(".dim()", self._tensor("dim()").dim())

    def numel(self) -> int:
        return self._read(".numel()", self._tensor("numel()").numel())

    def __len__(self) -> int:
        v = self._fake
        if isinstance(v, torch.Tensor):
            if v.dim() == 0:
                raise TypeError("len() of a 0-d tensor")
            return self._read(" (len)", v.shape[0])
        if isinstance(v, (tuple, list)):
            return len(v)
        raise TypeError(f"len() of {type(v).__name__}")

    @property
    def dtype(self) -> torch.dtype:
        return self._tensor("dtype").dtype

    @property
    def device(self) -> torch.device:
        return self._tensor("device").device

    @property
    def is_cuda(self) -> bool:
        return self._tensor("is_cuda").is_cuda

    @property
    def requires_grad(self) -> bool:
        return False

    def is_floating_point(self) -> bool:
        return self._tensor("is_floating_point()").is_floating_point()

    def __iter__(self) -> Iterator[fx.Proxy]:
        v = self._fake
        if isinstance(v, (tuple, list)):
            return (self[i] for i in range(len(v)))
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            n = self._read(" (iterated)", v.shape[0])
            return (self[i] for i in range(n))
        return super().__iter__()

    # ------------------------------------------------------------ values: refused
    def _needs_values(self, what: str) -> UnsupportedError:
        return value_dependent(what)

    def __bool__(self) -> bool:
        raise self._needs_values("a Python branch (if/while/and/or/assert) on a tensor's value")

    def __int__(self) -> int:
        raise self._needs_values("int() of a tensor")

    def __float__(self) -> float:
        raise self._needs_values("float() of a tensor")

    def __index__(self) -> int:
        raise self._needs_values("a tensor used as a Python index or count")

    def item(self) -> Any:
        raise self._needs_values("Tensor.item()")

    def tolist(self) -> Any:
        raise self._needs_values("Tensor.tolist()")

    # ------------------------------------------------------------ attributes
    def __getattr__(self, k: str) -> Any:
        if k.startswith("__"):  # inspect.unwrap & co. probe dunders: a proxy has none
            raise AttributeError(k)
        v = self.node.meta.get("snncc_fake") if "node" in self.__dict__ else None
        attr = getattr(v, k, None) if v is not None else None
        if attr is None or callable(attr):
            return super().__getattr__(k)  # a method call (or unknown): fx's lazy Attribute
        # x.T, x.mT, state.v, and a state's nested state (Norse's LIFRefrac state.lif, whose
        # own fields are read next: state.lif.v): a node of its own
        if isinstance(attr, torch.Tensor) or (isinstance(attr, tuple) and hasattr(attr, "_fields")):
            return self.tracer.create_proxy("call_function", builtins.getattr, (self, k), {})
        return attr  # a plain attribute of the value (a namedtuple's field name list, ...)


def value_dependent(what: str, where: str | None = None, who: str = "") -> UnsupportedError:
    """The one refusal of control flow that needs a tensor's values, naming the line."""
    where = _user_where(None) if where is None else where
    at = f" at {where}" if where else ""
    head = f"{who}: " if who else ""
    return UnsupportedError(
        f"{head}Python control flow on tensor values ({what}){at} cannot be compiled: the "
        "values are not known while tracing (depends on tensor values); snncc resolves Python "
        "code that reads shapes (x.ndim, x.shape[i], x.dim(), len(x)) at trace time, but not "
        "branches on values (use torch.where, or move the decision out of forward)"
    )


class ShapeTracer(fx.Tracer):
    """Mixin body for the snncc tracer: proxies carry fake values (see the module docstring).

    ``inputs``: the fake values of forward's positional inputs, in order;
    ``fake_call(module, args, kwargs)`` may return a module call's fake result
    without running it (``NotImplemented``: run it).
    """

    def init_shapes(
        self,
        inputs: list[torch.Tensor],
        mode: FakeTensorMode,
        fake_call: Callable[[nn.Module, tuple, dict], Any] | None = None,
    ) -> None:
        self.fake_mode = mode
        self._fake_inputs = list(inputs)
        self._n_placeholders = 0
        self._fake_call = fake_call
        self.reads: list[ShapeRead] = []
        self._seen_reads: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ fx hooks
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapeProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None):  # type: ignore[override]  # fmt: skip
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if kind == "placeholder":
            i = self._n_placeholders
            self._n_placeholders += 1
            node.meta["snncc_fake"] = self._fake_inputs[i] if i < len(self._fake_inputs) else None
        elif kind == "get_attr":
            with _unpatched():  # fx patches nn.Module.__getattr__ to make get_attr proxies
                node.meta["snncc_fake"] = self._fake(_fetch(self.root, str(target)))
        elif kind in ("call_function", "call_method", "call_module"):
            with _quiet_fake_tensor_log():
                node.meta["snncc_fake"] = self._run(node, kind, target, args, kwargs)
        return proxy

    def to_bool(self, obj: fx.Proxy) -> bool:
        raise value_dependent("a Python branch (if/while/and/or/assert) on a tensor's value")

    def iter(self, obj: fx.Proxy) -> Iterator:
        return iter(obj)  # ShapeProxy.__iter__ knows the length

    # ------------------------------------------------------------------ values
    def note_read(self, what: str, value: Any) -> None:
        """Record a shape read made by the model's own code (once per line and expression)."""
        where = _user_where(self)
        if not where:
            return
        key = (where, what)
        if key not in self._seen_reads:
            self._seen_reads.add(key)
            shown = list(value) if isinstance(value, torch.Size) else value
            self.reads.append(ShapeRead(where, what, shown))

    def _fake(self, value: Any) -> Any:
        """Real tensors (parameters, constants) as fake ones; everything else as is."""
        if isinstance(value, torch.Tensor) and not is_fake(value):
            return self.fake_mode.from_tensor(value)
        return value

    def _values(self, a: Any) -> Any:
        return fx.node.map_aggregate(a, lambda x: self._fake(value_of(x)))

    def _run(self, node: fx.Node, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        vals, kvals = self._values(args), self._values(kwargs)
        try:
            if kind == "call_module":
                module = self.root.get_submodule(target)
                with _unpatched():
                    self.before_module(module, str(target), node)
                    if self._fake_call is not None:
                        out = self._fake_call(module, vals, kvals)
                        if out is not NotImplemented:
                            return out
                    out = _batchnorm_shape(module, vals, kvals, self.fake_mode)
                    if out is not None:
                        return out
                    with self.fake_mode:
                        return module(*vals, **kvals)
            with self.fake_mode:
                if kind == "call_method":
                    return getattr(vals[0], target)(*vals[1:], **kvals)
                return target(*vals, **kvals)
        except IRError as e:
            if kind != "call_module":
                raise
            # a module's own invalid constants (snncc.nn builds its neuron spec in forward):
            # named at the module, as its converter would name them
            from snncc.frontend.tracer import type_name

            module = self.root.get_submodule(target)
            raise UnsupportedError(f"module {str(target)!r} ({type_name(module)}): {e}") from None
        except SnnccError:
            raise
        except _VALUE_DEPENDENT as e:
            from snncc.frontend.tracer import type_name, user_frame_of

            who = _describe(kind, target)
            if kind == "call_module":
                who += f" ({type_name(self.root.get_submodule(target))})"
            where = user_frame_of(e).removeprefix(" at ")
            raise value_dependent("a tensor read as a Python value", where, who) from None
        except Exception as e:  # noqa: BLE001 - the model's own error on the example's shapes
            if kind == "call_module":
                self.module_failed(self.root.get_submodule(target), str(target), node)
            where = node.meta.get("snncc_src") or _user_where(self)
            at = f" [{where}]" if where else ""
            err = ShapeError(
                f"running the model on the example input failed at {_describe(kind, target)}"
                f"{at}: {type(e).__name__}: {e}"
            )
            err.snncc_nodes = len(self.graph.nodes)  # type: ignore[attr-defined]
            raise err from e

    def before_module(self, module: nn.Module, path: str, node: fx.Node) -> None:
        """Hook run before a leaf module runs on fake values (refuse it early here)."""

    def module_failed(self, module: nn.Module, path: str, node: fx.Node) -> None:
        """Hook run when a leaf module failed on fake values (raise a better error here)."""


def _batchnorm_shape(module: nn.Module, vals: tuple, kvals: dict, mode: Any) -> Any:
    """An eval BatchNorm's output on a fake input whose channels fit: a fake of its shape.

    Why: running BatchNorm under FakeTensorMode costs ~30 ms a call (half of tracing a
    ResNet-18), yet its output always has its input's shape and dtype. Anything unusual
    (no channels where expected, another count) returns None and runs the module itself,
    which raises the model's own error."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.training:
        return None  # training mode checks its batch (more than one value per channel)
    if kvals or len(vals) != 1:
        return None
    (x,) = vals
    if not isinstance(x, torch.Tensor) or not is_fake(x):
        return None
    # SpikingJelly's multi-step BatchNorm takes [T, B, C, ...]; torch's [B, C, ...]
    channel = 2 if getattr(module, "step_mode", "s") == "m" else 1
    want = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}
    ranks = next((r for cls, r in want.items() if isinstance(module, cls)), None)
    if ranks is None or x.dim() - (channel - 1) not in ranks:
        return None
    if x.shape[channel] != module.num_features:
        return None
    with mode:
        return torch.empty_like(x)


def _describe(kind: str, target: Any) -> str:
    if kind == "call_module":
        return f"module '{target}'"
    if kind == "call_method":
        return f"Tensor.{target}"
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", str(target))


def is_fake(t: torch.Tensor) -> bool:
    """Whether a tensor is one of the shape trace's fake tensors (shape and dtype only)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def new_mode() -> FakeTensorMode:
    """A fake-tensor mode that accepts the model's real parameters and constants.

    One-element tensors of the model (snnTorch's ``reset_mechanism_val`` buffer,
    Norse's ``p.v_leak``) keep their value (fake-tensor "constants"), so the
    frameworks' own code that reads them (``if self.reset_mechanism_val == 0``,
    ``torch.full(shape, p.v_leak)``) runs; the example input never does.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    converter = mode.fake_tensor_converter
    real = converter.from_real_tensor

    def from_real_tensor(fake_mode: Any, t: torch.Tensor, make_constant: bool = False,
                         *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        if (
            not getattr(converter, "_snncc_inputs", False)
            and t.numel() <= 1
            and not isinstance(t, nn.Parameter)
        ):
            make_constant = True
        return real(fake_mode, t, make_constant, *args, **kwargs)

    converter.from_real_tensor = from_real_tensor  # type: ignore[method-assign]
    return mode


def fake_inputs(mode: FakeTensorMode, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The example inputs as fake tensors (same shape, dtype and device; no data, never a
    constant: the model's code must not branch on its values)."""
    converter = mode.fake_tensor_converter
    converter._snncc_inputs = True  # type: ignore[attr-defined]
    try:
        return [mode.from_tensor(x.detach().clone()) for x in xs]
    finally:
        converter._snncc_inputs = False  # type: ignore[attr-defined]


def run_fake(mode: FakeTensorMode, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on fake values, outside fx's patching (used for chain children)."""
    with _unpatched(), mode:
        return fn(*args)


__all__ = [
    "ShapeProxy",
    "ShapeRead",
    "ShapeTracer",
    "fake_inputs",
    "new_mode",
    "run_fake",
    "value_dependent",
    "value_of",
]
