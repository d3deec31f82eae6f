"""Model -> IR: the torch.fx tracer, the converter registry and the conversion driver.

Why torch.fx with leaf modules: SNN neurons (and SpikingJelly's multi-step
wrappers) hold state and shape-dependent Python control flow that fx cannot
trace, but they are exactly the units the IR wants as single nodes. So every
module a framework owns (torch.nn, SpikingJelly, snncc.nn, and other SNN
libraries so they fail with a clear message) is a *leaf*; the user's own
modules and plain ``nn.Sequential`` are traced through.

Pipeline of :func:`trace`:

1. fx-trace the model with :class:`SnnccTracer`;
2. decide the model's step mode from the leaf modules it calls ("m": it is fed
   ``[T, B, ...]`` and runs time itself; "s": it is a per-step network, traced
   with ``example_input[0]`` and compiled as applied at each step);
3. check that every module, function and method has a converter, *before*
   running anything, so an unsupported model fails with one clear message;
4. run the model once on the example input (an fx Interpreter) to record each
   value's shape, leaving the model as it was (state reset, buffers, RNG);
5. convert node by node into a :class:`snncc.ir.Graph` of per-step ops.

Converters live in :mod:`snncc.frontend.torch_nn`, :mod:`.spikingjelly` and
:mod:`.snncc_nn` and register themselves here; :data:`SUPPORTED` is generated
from this registry, so error messages never go stale.
"""

from __future__ import annotations

import builtins
import importlib
import linecache
import operator
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from snncc.errors import IRError, ShapeError, SnnccError, UnsupportedError
from snncc.frontend.model_hooks import refuse_hooks
from snncc.frontend.shape_trace import (
    ShapeRead,
    ShapeTracer,
    fake_inputs,
    is_fake,
    new_mode,
    run_fake,
)
from snncc.ir.graph import Graph
from snncc.ir.ops import SOURCE_ROWS_OPS

# --------------------------------------------------------------------------- registry

#: a module converter: (call, module) -> IR node id of the module's output
ModuleConverter = Callable[["Call", nn.Module], int]
#: a function / method converter: (call) -> IR node id of the result
FunctionConverter = Callable[["Call"], int]


@dataclass(frozen=True)
class ModuleEntry:
    """How one module class converts."""

    name: str  # public name for messages, e.g. "torch.nn.Linear"
    convert: ModuleConverter
    #: the module interprets tensor dims itself (conv, BN, pooling): applied to a
    #: whole [T, B, ...] sequence it would read T as the batch, so it is refused there
    per_step_only: bool = False
    #: early check before the model runs: (module, view) -> why it is unsupported, or None
    check: Callable[[nn.Module, str], str | None] | None = None


@dataclass(frozen=True)
class FunctionEntry:
    name: str  # public name, e.g. "torch.cat" or "Tensor.view"
    convert: FunctionConverter
    #: element-wise: a static operand (no time axis) is repeated over time to meet a
    #: per-step one, as torch broadcasts [B, ...] against [T, B, ...]
    elementwise: bool = False
    #: takes parameters the model's code reads directly (F.linear(x, self.weight))
    params: bool = False


MODULES: dict[type, ModuleEntry] = {}
#: entries for modules no exact class matches, tried in order: (predicate, entry)
FALLBACKS: list[tuple[Callable[[nn.Module], bool], ModuleEntry]] = []
#: chain containers (their children are converted): class -> public name
CONTAINERS: dict[type, str] = {}
FUNCTIONS: dict[Any, FunctionEntry] = {}
METHODS: dict[str, FunctionEntry] = {}


def register_module(
    cls: type,
    name: str,
    *,
    per_step_only: bool = False,
    check: Callable[[nn.Module, str], str | None] | None = None,
) -> Callable[[ModuleConverter], ModuleConverter]:
    """Register a converter for ``cls`` (and subclasses that only configure it in ``__init__``;
    one with methods of its own may change the maths and is not matched).

    ``check(module, view)`` runs before the model is executed (so an option the
    model cannot even run with on the CPU still gets snncc's message) and
    returns the reason the module is unsupported, or None.
    """

    def deco(fn: ModuleConverter) -> ModuleConverter:
        MODULES[cls] = ModuleEntry(name, fn, per_step_only, check)
        return fn

    return deco


def register_fallback(
    predicate: Callable[[nn.Module], bool],
    name: str,
    *,
    check: Callable[[nn.Module, str], str | None] | None = None,
) -> Callable[[ModuleConverter], ModuleConverter]:
    """Register a converter for modules no exact class matches but ``predicate`` accepts
    (a user's own neuron, traced from its step code)."""

    def deco(fn: ModuleConverter) -> ModuleConverter:
        FALLBACKS.append((predicate, ModuleEntry(name, fn, False, check)))
        return fn

    return deco


#: methods a subclass may define and still run its registered base's maths unchanged
_HARMLESS_METHODS = frozenset({"__init__", "extra_repr", "__repr__", "__str__"})


def own_methods(klass: type) -> set[str]:
    """The methods (and properties) ``klass`` defines itself, beyond the harmless ones."""
    return {
        name
        for name, value in vars(klass).items()
        if callable(value) or isinstance(value, (property, staticmethod, classmethod))
    } - _HARMLESS_METHODS


def registered_base(cls: type) -> type | None:
    """The nearest class in ``cls``'s MRO (``cls`` itself included) with a converter."""
    return next((klass for klass in cls.__mro__ if klass in MODULES), None)


def _base_with_same_step(cls: type) -> type | None:
    """The nearest registered base of ``cls`` if ``cls`` only configures it.

    Users subclass a framework module to set defaults in ``__init__``
    (``class MyLIF(LIFNode): def __init__(self): super().__init__(tau=3.0)``).
    Its maths is the base's, read from the instance's attributes by the base's
    converter, so it converts as the base. A subclass that defines any other
    method (a new step, a property) may change the maths and is not matched
    here: it is traced from its own code or refused.
    """
    base = registered_base(cls)
    if base is None:
        return None
    below = cls.__mro__[: cls.__mro__.index(base)]
    return None if any(own_methods(klass) for klass in below) else base


def module_entry(module: nn.Module) -> ModuleEntry | None:
    """The converter entry of ``module``: its exact class's (or the registered base's of a
    subclass that only configures it), else the first fallback's."""
    base = _base_with_same_step(type(module))
    if base is not None:
        return MODULES[base]
    for predicate, fallback in FALLBACKS:
        if predicate(module):
            return fallback
    return None


def register_container(cls: type, name: str) -> None:
    """List a chain container (see :class:`Chain`) among the supported modules."""
    CONTAINERS[cls] = name


def register_function(
    *targets: tuple[Any, str], elementwise: bool = False, params: bool = False
) -> Callable[[FunctionConverter], FunctionConverter]:
    """Register a converter for fx ``call_function`` targets, given as (callable, public name)."""

    def deco(fn: FunctionConverter) -> FunctionConverter:
        for target, name in targets:
            FUNCTIONS[target] = FunctionEntry(name, fn, elementwise, params)
        return fn

    return deco


def register_method(
    *names: str, elementwise: bool = False
) -> Callable[[FunctionConverter], FunctionConverter]:
    """Register a converter for fx ``call_method`` targets (Tensor method names)."""

    def deco(fn: FunctionConverter) -> FunctionConverter:
        for name in names:
            METHODS[name] = FunctionEntry(f"Tensor.{name}", fn, elementwise)
        return fn

    return deco


@dataclass(frozen=True)
class Chain:
    """A container that runs its children in sequence under one view of time.

    ``view`` is what the children see: "flat" (the [T, B, ...] sequence folded
    into a [T*B, ...] batch, SpikingJelly's ``seq_to_ann_forward``), "step"
    (called once per time step with [B, ...]) or "inherit" (whatever the
    container itself sees: Norse ``SequentialState``). ``children`` are
    (name, module). ``result`` is "tensor" (the last child's output) or
    "tensor_state" (``(output, state)``, the state internal to the program).
    A child that returns a tuple (a neuron returning ``(spikes, state)``)
    passes its first item on. ``drops_input_state``: the container itself, given
    such a tuple, runs on its first item and ignores the state (Norse's ``Lift``
    of a stateless module, which Norse's own VGG feeds straight from a ``LIF``).
    """

    view: str
    children: tuple[tuple[str, nn.Module], ...]
    result: str = "tensor"
    drops_input_state: bool = False


@dataclass(frozen=True)
class StateArgs:
    """How a stateful module takes and returns its state when a model threads it by hand.

    Used to fold an explicit time loop (``spk, mem = lif(cur, mem)``) into
    one per-step graph: ``names`` are the module's forward parameters that
    carry state, ``returns`` the index of each one's new value in the call's
    result tuple, ``fresh(value)`` says whether the value passed at the first
    step is a fresh state (None, or zeros), and ``internal_ok`` whether calling
    without the state continues the module's own state (snnTorch) rather than
    starting a fresh one each call (Norse).
    """

    names: tuple[str, ...]
    returns: tuple[int, ...]
    fresh: Callable[[Any], bool]
    internal_ok: bool
    #: the state is not a tensor the model may use (a Norse state tuple): returning it
    #: from forward is allowed and dropped (the compiled program keeps the state)
    opaque: bool = False


@dataclass
class Framework:
    """What the tracer needs to know about one source framework's modules."""

    name: str  # "torch", "spikingjelly", "snncc", ...
    #: the module belongs to the framework: traced as a leaf
    owns: Callable[[nn.Module], bool]
    #: the step mode the module votes for ("s", "m") or None (no opinion)
    step_mode: Callable[[nn.Module], str | None] = lambda m: None
    #: reset the framework's neuron state in a model (before/after shape propagation)
    reset: Callable[[nn.Module], None] | None = None
    #: the container's chain, or None when the module is not a chain container
    chain: Callable[[nn.Module], Chain | None] = lambda m: None
    #: the module keeps state between calls (so calling it twice per step chains states)
    stateful: Callable[[nn.Module], bool] = lambda m: False
    #: a source name for Graph.meta["source"] when this framework's modules are used
    source: str | None = None
    priority: int = 0  # higher wins as Graph.meta["source"]
    #: the module may be driven by an explicit time loop in a model's forward (snnTorch's and
    #: Norse's modules, SpikingJelly's single-step ones): a model holding one has its loop
    #: folded (:mod:`snncc.frontend.loops`)
    loops: Callable[[nn.Module], bool] = lambda m: False
    #: how a stateful module's state is passed by hand in a time loop, or None
    state_args: Callable[[nn.Module], StateArgs | None] = lambda m: None
    #: how the shape-recording run calls a module whose folded loop dropped its state
    #: argument (a module that cannot run without one), or None: called as traced
    call_without_state: Callable[..., Any] | None = None
    #: a module call's fake result without running it (shape-aware tracing; see
    #: snncc.frontend.shape_trace), or NotImplemented to run the module on fake values
    fake_call: Callable[[nn.Module, tuple, dict], Any] | None = None


FRAMEWORKS: list[Framework] = []


def register_framework(fw: Framework) -> None:
    FRAMEWORKS[:] = [f for f in FRAMEWORKS if f.name != fw.name] + [fw]


def framework_of(m: nn.Module) -> Framework | None:
    for fw in FRAMEWORKS:
        if fw.owns(m):
            return fw
    return None


#: converter module -> the framework package its models come from (None: always loaded)
_CONVERTER_MODULES = {
    "snncc.frontend.torch_nn": None,
    "snncc.frontend.snncc_nn": None,
    "snncc.frontend.spikingjelly": "spikingjelly",
    "snncc.frontend.snntorch": "snntorch",
    "snncc.frontend.norse": "norse",
    "snncc.frontend.user_neurons": None,
}


def ensure_converters(everything: bool = False) -> None:
    """Import the converter modules (each registers itself; optional frameworks skip quietly).

    A peer framework's converters load only once the framework itself is imported
    (a model holding its modules implies that), so compiling a SpikingJelly model
    never pays for importing Norse. ``everything`` loads all of them, for listings.
    """
    for mod, framework in _CONVERTER_MODULES.items():
        if everything or framework is None or framework in sys.modules:
            importlib.import_module(mod)


def supported() -> dict[str, list[str]]:
    """The public names of every supported module, function and method, sorted."""
    ensure_converters(everything=True)
    return {
        "modules": sorted({e.name for e in MODULES.values()} | set(CONTAINERS.values())),
        "functions": sorted({e.name for e in FUNCTIONS.values()}),
        "methods": sorted({e.name for e in METHODS.values()}),
    }


#: module path prefix -> the family name a summary shows
_FAMILIES = {
    "torch.nn.": "torch.nn",
    "spikingjelly.": "SpikingJelly",
    "snntorch.": "snnTorch",
    "norse.": "Norse",
    "snncc.nn.": "snncc.nn",
}


def supported_text() -> str:
    """A short summary of :func:`supported` for error messages (the full list is over 1,500
    characters: a message names the families and points at ``snncc.frontend.SUPPORTED``)."""
    s = supported()
    counts: dict[str, int] = {}
    for name in s["modules"]:
        family = next((f for p, f in _FAMILIES.items() if name.startswith(p)), "other")
        counts[family] = counts.get(family, 0) + 1
    families = ", ".join(f"{f} ({n})" for f, n in counts.items())
    names = {f.split(" ")[0].rsplit(".", 1)[-1] for f in s["functions"]}
    names |= {m.rsplit(".", 1)[-1] for m in s["methods"]}
    shown = sorted(n for n in names if n.isidentifier() and not n.startswith("_"))
    return (
        f"supported modules: {len(s['modules'])} from {families}; supported functions and "
        f"Tensor methods: {len(names)}, e.g. {', '.join(shown[:16])}, ... (the full list: "
        "snncc.frontend.SUPPORTED)"
    )


def type_name(obj: Any) -> str:
    """``module.Class`` of an object's class, for messages."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- fx tracing

#: module-name prefixes of libraries whose modules are leaves (so they fail clearly
#: instead of being traced into)
_FOREIGN_PREFIXES = ("snntorch", "norse", "sinabs", "lava", "spyx", "rockpool")
_TRACE_THROUGH = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_HERE = str(Path(__file__).resolve().parent)
_SNNCC_DIR = str(Path(__file__).resolve().parent.parent / "snncc")  # api.py, cli.py


class SnnccTracer(ShapeTracer):
    """fx tracer whose leaves are framework modules, whose proxies know their example value's
    shape (:mod:`snncc.frontend.shape_trace`), and which records the user source line of
    each node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if framework_of(m) is not None:
            return True
        if type(m) in _TRACE_THROUGH:
            return False
        mod = type(m).__module__
        if mod.startswith(("torch.nn", "torch.ao.nn")):
            return True
        return mod.split(".")[0] in _FOREIGN_PREFIXES

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):  # type: ignore[override]
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["snncc_src"] = user_frame()
        return node

    def before_module(self, module: nn.Module, path: str, node: fx.Node) -> None:
        """A module snncc has no converter for is refused before it runs (one clear message,
        also inside a time loop, where it would otherwise look like misused state)."""
        _refuse_early(module, path, node)

    def module_failed(self, module: nn.Module, path: str, node: fx.Node) -> None:
        """A module that reads tensor dims itself failed on the whole [T, B, ...] sequence of a
        multi-step model: that is the cause (T read as the batch), not the shapes."""
        entry = module_entry(module)
        if getattr(self, "sequence", False) and entry is not None and entry.per_step_only:
            src = node.meta.get("snncc_src", "")
            where_src = f" [{src}]" if src else ""
            raise UnsupportedError(
                f"module '{path}' ({type_name(module)}){where_src}: {_SEQUENCE_HINT}"
            )


_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_SKIP_DIRS = (_HERE, _SNNCC_DIR)
#: snncc functions that start a trace: a frame walk that reaches one found no user code
_TRACE_ENTRIES = frozenset({"shape_trace"})


def user_frame() -> str:
    """``file:line: code`` of the user's ``forward`` code that is running now.

    Walks outward from the innermost frame, skipping torch's frames, and stops
    at snncc's own frames: anything outside them (the user's script, the CLI)
    only called the tracer and says nothing about where the op is. A module
    inside an ``nn.Sequential`` has no user frame at all; its path names it.
    Walks ``sys._getframe`` and reads one source line at the end: this runs
    for every traced node.
    """
    frame = sys._getframe(1)
    while frame is not None:
        fn = frame.f_code.co_filename
        if not fn or fn.startswith("<"):
            frame = frame.f_back
            continue
        if fn.startswith(_SKIP_DIRS) and frame.f_code.co_name in _TRACE_ENTRIES:
            return ""  # back out in snncc's call of the tracer: no user frame
        if fn.startswith(_TORCH_DIR) or fn.startswith(_SKIP_DIRS):
            frame = frame.f_back
            continue
        if not fn.startswith("/"):
            fn = str(Path(fn).resolve())
            if fn.startswith(_TORCH_DIR) or fn.startswith(_SKIP_DIRS):
                frame = frame.f_back
                continue
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        return f"{Path(fn).name}:{frame.f_lineno}: {line}"
    return ""


_user_frame = user_frame


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Value:
    """A tensor value during conversion: its IR node and shapes."""

    id: int
    fx_shape: tuple[int, ...]  # full shape as the model saw it (with T for "m")
    shape: list  # per-step IR shape, batch as "B"
    dtype: str
    #: computed once for all time steps (no time axis: [B, ...] even in a multi-step model),
    #: e.g. a static image the model repeats over T itself, or a mean over time
    static: bool = False


@dataclass(frozen=True)
class NewTimeAxis:
    """``x.unsqueeze(0)`` of a static value in a multi-step model: a time axis of length 1,
    waiting for ``.repeat(T, 1, ...)`` / ``.expand(T, ...)`` to make it a sequence."""

    value: Value


@dataclass(frozen=True)
class ParamRef:
    """A parameter or buffer the model's own code reads directly (``F.linear(x, self.weight)``),
    by its state_dict name."""

    name: str
    tensor: Any


@dataclass(frozen=True)
class ShapeValue:
    """A Python value computed from tensor shapes (``x.size(0)``, ``x.shape[1:]``)."""

    value: Any


class StateValue:
    """A neuron state a module returned (Norse ``(z, state)``): internal to the program.

    ``vars`` maps the state's fields (``"v"``, ``"i"``) to thunks that emit an
    IR node computing that field per step (created only when a model reads
    it, e.g. ``state.v``). A state returned as a model output is dropped: the
    compiled program keeps it (``CompiledModel.run`` returns it).
    """

    def __init__(self, what: str, vars: dict[str, Callable[[], Value]] | None = None) -> None:
        self.what = what
        self.vars = dict(vars or {})
        self._made: dict[str, Value] = {}

    def field(self, name: str, call: Call) -> Value:
        if name not in self.vars:
            raise call.unsupported(
                f"reads field {name!r} of the state of {self.what}; supported fields: "
                f"{', '.join(sorted(self.vars)) or 'none'}"
            )
        if name not in self._made:
            self._made[name] = self.vars[name]()
        return self._made[name]


class TupleValue:
    """A module's tuple result (``(spk, mem)``): items are made on first use.

    An item is a :class:`Value`, a :class:`StateValue`, None, or a thunk that
    emits the item's IR node (so a membrane output nobody reads costs nothing).
    """

    def __init__(self, items: list[Any]) -> None:
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def item(self, i: int) -> Any:
        it = self._items[i]
        if callable(it) and not isinstance(it, (Value, StateValue, TupleValue)):
            it = it()
            self._items[i] = it
        return it

    def items(self) -> list[Any]:
        return [self.item(i) for i in range(len(self._items))]


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    return False


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


@dataclass(frozen=True)
class Multi:
    """A module converter's result for a module that returns a tuple (``(spk, mem)``).

    One entry per item: an IR node id, a thunk ``() -> node id`` (emitted on
    first use), a :class:`StateValue`, or None.
    """

    items: tuple[Any, ...]


# --------------------------------------------------------------------------- the call


@dataclass
class Call:
    """Everything a converter needs about one module/function/method call.

    ``view`` says how the callee sees time: "sequence" (it gets the whole
    [T, B, ...] tensor; fx dims are per-step dims + 1), "flat" (it gets
    [T*B, ...]: SpikingJelly seq_to_ann), "step" (it gets [B, ...] per step).
    Converters only ever emit per-step ops; ``view`` decides how to translate
    dims and what BatchNorm statistics / dropout masks mean.
    """

    ctx: Converter
    path: str  # module path, or the enclosing module path for functions
    what: str  # "module 'features.3' (torch.nn...Conv2d)" etc., for messages
    target: Any
    inputs: list[Value]
    out_fx_shape: tuple[int, ...] | None
    out_dtype: str
    view: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    src: str = ""
    #: every tensor input is static (computed once, no time axis): the callee sees [B, ...]
    static: bool = False
    #: the shapes of a tuple result's items (chunk, split, unbind), else None
    items: list | None = None

    # ---------------------------------------------------------------- facts
    @property
    def time_dims(self) -> int:
        """Leading dims the callee sees in front of the per-step dims (1 for "sequence")."""
        return 1 if self.view == "sequence" else 0

    @property
    def out_shape(self) -> list:
        return self.ctx.step_shape(self.out_fx_shape, self.time_dims, self)

    @property
    def bn_stats(self) -> str:
        """Training-mode BatchNorm statistics: over T*B ("sequence") or per step over B ("step")."""
        return "sequence" if self.view in ("flat", "sequence") else "step"

    # ---------------------------------------------------------------- helpers
    def unsupported(self, why: str) -> UnsupportedError:
        """An UnsupportedError naming this call (path and type) and ``why``."""
        where = f" [{self.src}]" if self.src else ""
        return UnsupportedError(f"{self.what}{where}: {why}")

    def step_dim(self, dim: int, rank: int | None = None, *, allow_batch: bool = False) -> int:
        """Translate ``dim`` as the callee sees it to a non-negative per-step dim.

        Raises for the time dim (a per-step program cannot mix time steps) and,
        unless ``allow_batch``, for the batch dim (the batch must stay intact).
        """
        if rank is None:
            rank = len(self.inputs[0].fx_shape)
        d = dim + rank if dim < 0 else dim
        if not 0 <= d < rank:
            raise self.unsupported(f"dim {dim} is out of range for a rank-{rank} tensor")
        d -= self.time_dims
        if d < 0:
            raise self.unsupported(
                f"dim {dim} is the time dim of the [T, B, ...] sequence; snncc programs map "
                "[T, B, ...] to [T, B, ...] one step at a time, so reduce or mix over time "
                "outside the model (e.g. on the compiled model's output)"
            )
        if d == 0 and not allow_batch:
            raise self.unsupported(
                f"dim {dim} is the batch dim; snncc keeps the batch dim intact in every op"
            )
        return d

    def param(self, module: nn.Module, attr: str) -> str:
        """Store ``module.attr`` under its state_dict name (path.attr) and return the name."""
        name = f"{self.path}.{attr}" if self.path else attr
        return self.ctx.add_param(name, getattr(module, attr))

    def emit(
        self,
        op: str,
        inputs: list[Value] | list[int] | None = None,
        *,
        attrs: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        shape: list | None = None,
    ) -> int:
        """Add the IR node for this call (name = this call's path, shape = its output's)."""
        ins = self.inputs if inputs is None else inputs
        ids = [v.id if isinstance(v, Value) else v for v in ins]
        if self.view == "step" and not self.static and self.ctx.step_mode == "m":
            if op in SOURCE_ROWS_OPS:  # one step's rows per call, inside a multi-step model
                attrs = {**(attrs or {}), "source_rows": "step"}
        return self.ctx.graph.add_node(
            op,
            ids,
            attrs=attrs,
            params=params,
            shape=self.out_shape if shape is None else shape,
            dtype=self.out_dtype,
            name=self.path,
        )

    def arg(self, index: int, name: str, default: Any = ...) -> Any:
        """Positional-or-keyword argument of a function call (Values for tensors)."""
        if index < len(self.args):
            return self.args[index]
        if name in self.kwargs:
            return self.kwargs[name]
        if default is ...:
            raise self.unsupported(f"missing argument {name!r}")
        return default

    def sub(self, *, path: str, what: str, inputs: list[Value], out_fx_shape, view: str) -> Call:
        """A Call for a child module of a chain container."""
        return replace(
            self,
            path=path,
            what=what,
            inputs=inputs,
            out_fx_shape=out_fx_shape,
            view=view,
            args=(),
            kwargs={},
        )


# --------------------------------------------------------------------------- conversion


#: pure-Python functions allowed on shape values (``x.size(0) * x.size(1)``)
_SHAPE_FUNCTIONS = {
    operator.getitem,
    operator.mul,
    operator.add,
    operator.sub,
    operator.floordiv,
    builtins.getattr,
    builtins.len,
    builtins.int,
}
_SHAPE_METHODS = {"size", "dim"}


class Converter:
    """Converts one fx-traced model into an IR Graph (one instance per :func:`trace`)."""

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule,
        step_mode: str,
        T: int | None,
        B: int,
        static_inputs: frozenset[int] = frozenset(),
    ):
        self.model = model
        self.gm = gm
        self.step_mode = step_mode
        #: time steps: the example's (a time-major input), the model's own repeat count
        #: (every input static: set by the first repeat over time), else None
        self.T = T
        self.B = B
        #: placeholder indices of the inputs that have no time axis (see Value.static)
        self.static_inputs = static_inputs
        self.graph = Graph()
        self.env: dict[fx.Node, Any] = {}
        self._param_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ shapes
    @property
    def model_view(self) -> str:
        return "sequence" if self.step_mode == "m" else "step"

    def step_shape(
        self, fx_shape: tuple[int, ...] | None, time_dims: int, call: Call | None
    ) -> list:
        """Per-step IR shape of a value the callee saw as ``fx_shape`` (batch -> "B")."""
        if fx_shape is None:
            raise UnsupportedError("internal: a value without a recorded shape")
        shape = list(fx_shape[time_dims:])
        if not shape:
            what = call.what if call else "a value"
            raise UnsupportedError(f"{what}: a value without a batch dim is not supported")
        shape[0] = "B"
        return shape

    def add_param(self, name: str, tensor: Any) -> str:
        """Store a parameter/buffer by state_dict name (copied: later training must not alias)."""
        if tensor is None:
            raise UnsupportedError(f"parameter {name!r} is None")
        if name in self.graph.params:
            return name
        arr = tensor.detach().cpu().clone().numpy() if isinstance(tensor, torch.Tensor) else tensor
        return self.graph.add_param(name, arr)

    # ------------------------------------------------------------------ driver
    def run(self) -> Graph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "output":
                self._output(node)
            elif node.op == "call_module":
                self.env[node] = self._call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.env[node] = self._call_function(node)
            else:  # get_attr: a parameter the model's code uses itself (F.linear(x, self.w))
                self.env[node] = _attribute(self.model, self.gm, str(node.target))
        return self.graph

    def _placeholder(self, node: fx.Node) -> None:
        meta = node.meta["snncc_shape"]
        index = len(self.graph.meta["inputs"])
        static = index in self.static_inputs
        time_dims = 1 if self.step_mode == "m" and not static else 0
        shape = self.step_shape(meta.shape, time_dims, None)
        attrs: dict[str, Any] = {"index": index}
        if static:
            attrs["static"] = True
        nid = self.graph.add_node(
            "input", attrs=attrs, shape=shape, dtype=meta.dtype, name=node.name
        )
        self.env[node] = self.value(nid, meta.shape, shape, meta.dtype, static, node)

    def value(
        self,
        nid: int,
        fx_shape: tuple[int, ...],
        shape: list,
        dtype: str,
        static: bool,
        node: fx.Node | None = None,
        what: str = "",
    ) -> Value:
        """A converted value, after checking it keeps the time and batch dims in front.

        Every per-step value must be [T, B, ...] as the model sees it (a multi-step model)
        or [B, ...] (a per-step model); a static one [B, ...] in both.
        """
        lead: tuple[int, ...] = (self.B,)
        want = "[B, ...]"
        if self.step_mode == "m" and not static and self.T is not None:
            lead, want = (self.T, self.B), "[T, B, ...]"
        if tuple(fx_shape[: len(lead)]) != lead:
            where = _describe(node, self.gm) if node is not None else what
            kind = "value computed once (static)" if static else "value"
            raise UnsupportedError(
                f"the {kind} of {where} has shape {list(fx_shape)}, but every such value "
                f"must keep {want} = {list(lead)} in front; an op that moves or merges the "
                "time/batch dims is not supported"
            )
        return Value(nid, tuple(fx_shape), shape, dtype, static)

    def set_time_steps(self, T: int, call: Call) -> None:
        """The model repeats a static value over ``T`` steps: the program's T (one for all)."""
        if self.T is None:
            self.T = int(T)
        elif int(T) != self.T:
            raise call.unsupported(
                f"repeats a value over {T} time steps, but the model's time axis has "
                f"{self.T} steps; snncc programs have one number of time steps"
            )

    def repeat_over_time(self, v: Value, call: Call) -> Value:
        """A static value as a sequence: the same value at every step (a ``repeat_time`` node)."""
        if self.T is None:
            raise call.unsupported(
                "uses a value repeated over time before the number of steps is known"
            )
        fx_shape = (self.T, *v.fx_shape) if self.step_mode == "m" else v.fx_shape
        nid = self.graph.add_node(
            "repeat_time", [v.id], attrs={"times": self.T}, shape=list(v.shape), dtype=v.dtype,
            name=call.path,
        )  # fmt: skip
        return Value(nid, tuple(fx_shape), list(v.shape), v.dtype, False)

    def _output(self, node: fx.Node) -> None:
        """Tensor outputs in order; neuron states (Norse ``(y, state)``) and None are dropped."""
        values: list[Value] = []

        def visit(o: Any, where: str) -> None:
            v = self.env.get(o) if isinstance(o, fx.Node) else o
            if isinstance(v, TupleValue):
                v = v.items()
            if v is None or isinstance(v, StateValue):
                return
            if isinstance(v, (tuple, list)):
                for j, item in enumerate(v):
                    visit(item, f"{where}[{j}]")
                return
            if isinstance(v, NewTimeAxis):
                raise UnsupportedError(
                    f"model output{where} is x.unsqueeze(0) of a value without a time axis; "
                    "repeat it over the time steps (x.unsqueeze(0).repeat(T, ...))"
                )
            if not isinstance(v, Value):
                raise UnsupportedError(
                    f"model output{where} is {type(v).__name__}, not a tensor; snncc models "
                    "return a tensor or a tuple of tensors"
                )
            values.append(v)

        visit(node.args[0], "")
        if not values:
            raise UnsupportedError("the model returns no tensor; snncc models return a tensor")
        for i, v in enumerate(values):
            name = "output" if len(values) == 1 else f"output.{i}"
            self.graph.add_node(
                "output", [v.id], attrs={"index": i}, shape=v.shape, dtype=v.dtype, name=name
            )

    def _tensor_args(self, node: fx.Node) -> tuple[tuple, dict, list[Value]]:
        """(args, kwargs) with fx nodes replaced by their Values/ShapeValues, plus the tensor Values."""
        tensors: list[Value] = []

        def sub(a: Any) -> Any:
            if isinstance(a, fx.Node):
                v = self.env[a]
                if isinstance(v, Value):
                    tensors.append(v)
                return v
            if isinstance(a, (list, tuple)):
                return type(a)(sub(x) for x in a)
            if isinstance(a, dict):
                return {k: sub(x) for k, x in a.items()}
            return a

        args = tuple(sub(a) for a in node.args)
        kwargs = {k: sub(a) for k, a in node.kwargs.items()}
        return args, kwargs, tensors

    def _call_module(self, node: fx.Node) -> Value | TupleValue:
        module = self.gm.get_submodule(node.target)
        args, kwargs, tensors = self._tensor_args(node)
        if _drops_input_state(module) and len(args) == 1 and isinstance(args[0], TupleValue):
            first = args[0].item(0) if len(args[0]) == 2 else None
            if isinstance(first, Value):  # (output, state): the state is not read
                args, tensors = (first,), [first]
        meta = node.meta.get("snncc_shape")
        items = node.meta.get("snncc_items")
        first = meta or next((m for m in items or () if m is not None), None)
        if first is None:
            raise UnsupportedError(
                f"{_describe(node, self.gm)} returned "
                f"{type(node.meta.get('snncc_value')).__name__}, not a tensor"
            )
        static = self._static_call(node, tensors, f"module '{node.target}' ({type_name(module)})")
        call = Call(
            ctx=self,
            path=str(node.target),
            what=f"module '{node.target}' ({type_name(module)})",
            target=module,
            inputs=tensors,
            out_fx_shape=first.shape,
            out_dtype=first.dtype,
            view="step" if static else self.model_view,
            args=args,
            kwargs=kwargs,
            src=node.meta.get("snncc_src", ""),
            static=static,
        )
        if kwargs or len(tensors) != len([a for a in args if a is not None]):
            raise call.unsupported("modules are supported with tensor positional inputs only")
        res = self.convert_module(call, module, chain_shapes=node.meta.get("snncc_chain"))
        if isinstance(res, Multi):
            if items is None:
                raise call.unsupported("returned a tensor where a tuple was expected")
            metas = list(items) + [None] * max(0, len(res.items) - len(items))
            return TupleValue([self._item(call, it, m) for it, m in zip(res.items, metas)])
        if meta is None:
            raise call.unsupported(
                f"returned a {type(node.meta.get('snncc_value')).__name__}; this module is "
                "supported when it returns one tensor"
            )
        return self.value(res, meta.shape, call.out_shape, meta.dtype, static, node)

    def _static_call(self, node: fx.Node, tensors: list[Value], what: str) -> bool:
        """Whether a call's tensor inputs are all static; a mix is refused (see Value.static)."""
        flags = {v.static for v in tensors}
        if len(flags) > 1:
            src = node.meta.get("snncc_src", "")
            where = f" [{src}]" if src else ""
            raise UnsupportedError(
                f"{what}{where} mixes a value computed once for all time steps (it does not "
                "depend on the step, e.g. the static input) with a per-step value; supported: "
                "element-wise arithmetic between them (the static value is repeated over time)"
            )
        return flags == {True}

    def _item(self, call: Call, item: Any, meta: TensorMeta | None) -> Any:
        """One item of a Multi as a Value (thunks stay lazy), StateValue or None."""
        if item is None or isinstance(item, StateValue):
            return item
        if meta is None:
            raise call.unsupported("a tensor item of its result has no recorded shape")

        def value(nid: int) -> Value:
            shape = self.step_shape(meta.shape, call.time_dims, call)
            return Value(nid, meta.shape, shape, meta.dtype, call.static)

        if callable(item):
            return lambda: value(item())
        return value(item)

    def convert_module(
        self, call: Call, module: nn.Module, chain_shapes: dict | None = None
    ) -> int | Multi:
        """Convert one module call (a chain container converts its children in order)."""
        fw = framework_of(module)
        chain = fw.chain(module) if fw is not None else None
        entry = module_entry(module)
        if chain is not None and entry is None:
            return self._convert_chain(call, chain, chain_shapes or {})
        if entry is None:
            raise call.unsupported(f"this module type is not supported; {supported_text()}")
        if entry.per_step_only and call.view == "sequence":
            raise call.unsupported(_SEQUENCE_HINT)
        why = entry.check(module, call.view) if entry.check else None
        if why:
            raise call.unsupported(why)
        try:
            return entry.convert(call, module)
        except IRError as e:  # e.g. a NaN threshold refused by NeuronSpec: name the module
            raise call.unsupported(str(e)) from None

    def _convert_chain(self, call: Call, chain: Chain, shapes: dict[str, tuple]) -> int | Multi:
        if len(call.inputs) != 1:
            raise call.unsupported("a container takes exactly one tensor input")
        cur = call.inputs[0]
        cur = Value(cur.id, tuple(shapes.get("", cur.fx_shape)), cur.shape, cur.dtype)
        view = call.view if chain.view == "inherit" else chain.view
        for name, child in _flatten_chain(chain.children):
            path = f"{call.path}.{name}" if call.path else name
            out = shapes.get(name)
            sub = call.sub(
                path=path,
                what=f"module '{path}' ({type_name(child)})",
                inputs=[cur],
                out_fx_shape=out,
                view=view,
            )
            res = self.convert_module(sub, child)
            if isinstance(res, Multi):  # (output, state): the state stays inside the program
                res = res.items[0]() if callable(res.items[0]) else res.items[0]
            cur = Value(res, out, sub.out_shape, cur.dtype)
        if chain.result == "tensor_state":
            return Multi((cur.id, StateValue(call.what)))
        return cur.id

    def _call_function(self, node: fx.Node) -> Any:
        args, kwargs, tensors = self._tensor_args(node)
        picked = self._pick(node, args)
        if picked is not _NOTHING:
            return picked
        meta = node.meta.get("snncc_shape")
        shape_op = node.target in (
            _SHAPE_FUNCTIONS if node.op == "call_function" else _SHAPE_METHODS
        )
        items = None
        value = node.meta.get("snncc_value")
        if (
            meta is None
            and isinstance(value, (tuple, list))
            and value
            and all(isinstance(v, torch.Tensor) for v in value)
        ):  # chunk, split, unbind: one item per tensor, made on first use
            items = [TensorMeta(tuple(v.shape), _dtype_name(v.dtype)) for v in value]
        if meta is None and items is None:
            if shape_op and not _has_tensor(value):
                # a Python value computed from shapes: consumers use the recorded shapes
                return ShapeValue(value)
            if node.op == "call_method" and node.target == "__setitem__":
                raise UnsupportedError(
                    f"{_describe(node, self.gm)} writes into a tensor in place; supported: a "
                    "buffer preallocated before a loop over time steps and filled one step per "
                    "iteration (buf[t] = v), which snncc compiles as torch.stack"
                )
            raise UnsupportedError(
                f"{_describe(node, self.gm)} returns "
                f"{type(node.meta.get('snncc_value')).__name__}, not a tensor; {supported_text()}"
            )
        entry = (FUNCTIONS if node.op == "call_function" else METHODS).get(node.target)
        if entry is None:
            raise _unsupported_node(node, self.gm, self.step_mode)
        module_path = _enclosing_path(node)
        what = f"{entry.name} in {_where(module_path)}"
        if any(isinstance(a, ParamRef) for a in (*args, *kwargs.values())) and not entry.params:
            raise _unsupported_node(node, self.gm, self.step_mode, direct_param=True)
        src = node.meta.get("snncc_src", "")
        if entry.elementwise and len({v.static for v in tensors}) > 1:
            args, kwargs, tensors = self._repeat_static(args, kwargs, tensors, what, src)
        static = self._static_call(node, tensors, what)
        first = meta or items[0]  # type: ignore[index]
        call = Call(
            ctx=self,
            path=module_path,
            what=what,
            target=node.target,
            inputs=tensors,
            out_fx_shape=first.shape,
            out_dtype=first.dtype,
            view="step" if static else self.model_view,
            args=args,
            kwargs=kwargs,
            src=src,
            static=static,
            items=items,
        )
        res = entry.convert(call)
        if isinstance(res, (Value, NewTimeAxis, TupleValue)):
            return res
        if isinstance(res, Multi):
            if items is None:
                raise call.unsupported("returned a tensor where a tuple was expected")
            return TupleValue([self._item(call, it, m) for it, m in zip(res.items, items)])
        return self.value(res, meta.shape, call.out_shape, meta.dtype, static, node)

    def _repeat_static(
        self, args: tuple, kwargs: dict, tensors: list[Value], what: str, src: str
    ) -> tuple[tuple, dict, list[Value]]:
        """An element-wise op of a static and a per-step value: the static one repeated over
        time (what torch's broadcasting of [B, ...] against [T, B, ...] computes)."""
        probe = Call(self, "", what, None, tensors, None, "float32", self.model_view, src=src)
        made: dict[int, Value] = {}

        def rep(a: Any) -> Any:
            if isinstance(a, Value) and a.static:
                if a.id not in made:
                    made[a.id] = self.repeat_over_time(a, probe)
                return made[a.id]
            if isinstance(a, (list, tuple)):
                return type(a)(rep(x) for x in a)
            return a

        return rep(args), {k: rep(v) for k, v in kwargs.items()}, [rep(v) for v in tensors]

    def _pick(self, node: fx.Node, args: tuple) -> Any:
        """``result[i]`` of a module's tuple result, ``state.v`` of a neuron state; else _NOTHING."""
        if node.op != "call_function" or not args:
            return _NOTHING
        base = args[0]
        if node.target is operator.getitem and isinstance(base, TupleValue):
            index = args[1]
            if not isinstance(index, int) or not -len(base) <= index < len(base):
                raise UnsupportedError(
                    f"{_describe(node, self.gm)}: index {index!r} of a {len(base)}-item result; "
                    "supported: an int index"
                )
            return base.item(index)
        if isinstance(base, StateValue):
            path = _enclosing_path(node)
            call = Call(self, path, f"{_target_name(node)} in {_where(path)}", node.target,
                        [], None, "float32", self.model_view,
                        src=node.meta.get("snncc_src", ""))  # fmt: skip
            if node.target is builtins.getattr and isinstance(args[1], str):
                return base.field(args[1], call)
            raise call.unsupported(
                f"uses the state of {base.what} other than by a field name (state.v, state.i)"
            )
        return _NOTHING


_NOTHING = object()


_SEQUENCE_HINT = (
    "this module interprets tensor dims itself, and in a multi-step model it receives the "
    "whole [T, B, ...] sequence (T would be read as the batch); use the SpikingJelly "
    "wrapper (spikingjelly.activation_based.layer.*, step_mode='m') or wrap it in "
    "layer.SeqToANNContainer"
)


def _flatten_chain(children) -> Iterator[tuple[str, nn.Module]]:
    """Children of a chain, with plain nn.Sequential children expanded (dotted names)."""
    for name, child in children:
        if type(child) is nn.Sequential:
            yield from ((f"{name}.{n}", c) for n, c in _flatten_chain(child.named_children()))
        else:
            yield name, child


def _enclosing_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return str(last[0]) if isinstance(last, tuple) else str(last)


def _where(path: str) -> str:
    return f"'{path}'" if path else "the model's forward"


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    name = getattr(t, "__name__", None) or str(t)
    for prefix, namespace in (
        ("torch", torch),
        ("torch.nn.functional", torch.nn.functional),
        ("operator", operator),
        ("builtins", builtins),
    ):
        if getattr(namespace, name, None) is t:
            return f"{prefix}.{name}"
    mod = getattr(t, "__module__", None) or ""
    qual = getattr(t, "__qualname__", None) or name
    return f"{mod}.{qual}" if mod else qual


_REDUCTIONS = {"mean", "sum", "max", "min", "amax", "amin", "prod", "argmax", "std", "var"}


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _unsupported_node(
    node: fx.Node, gm: fx.GraphModule, step_mode: str = "s", direct_param: bool = False
) -> UnsupportedError:
    """The one error for an fx node snncc has no converter for."""
    src = node.meta.get("snncc_src", "")
    where_src = f" [{src}]" if src else ""
    path = _enclosing_path(node)
    if direct_param:
        attrs = [a.target for a in node.all_input_nodes if a.op == "get_attr"]
        return UnsupportedError(
            f"{_target_name(node)} in {_where(path)}{where_src} reads tensor attribute(s) "
            f"{', '.join(map(repr, attrs))} directly; parameters must belong to a supported "
            "module, or be the weight/bias of a functional layer (F.linear, F.conv2d, "
            f"F.layer_norm); {supported_text()}"
        )
    if node.op == "get_attr":
        return UnsupportedError(
            f"direct use of tensor attribute '{node.target}' in {_where(path)}{where_src} is not "
            f"supported (parameters must belong to a supported module); {supported_text()}"
        )
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return UnsupportedError(
            f"module '{node.target}' ({type_name(module)}){where_src} is not supported; "
            f"{supported_text()}"
        )
    name = _target_name(node)
    hint = ""
    base = (
        str(node.target).split(".")[-1]
        if node.op == "call_method"
        else getattr(node.target, "__name__", "")
    )
    if step_mode == "m" and base in _REDUCTIONS:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dim in (0, (0,), [0]):
            hint = (
                " It reduces over time (dim 0 of [T, B, ...]): snncc programs map [T, B, ...] "
                "to [T, B, ...], so reduce over time outside the model "
                "(e.g. compiled(x).mean(0))."
            )
    return UnsupportedError(
        f"function {name} in {_where(path)}{where_src} is not supported.{hint} {supported_text()}"
    )


# --------------------------------------------------------------------------- shape metadata


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str


def _record_meta(gm: fx.GraphModule, model_view: str, mode: Any) -> None:
    """Every value's shape where the converters read it, from the trace's fake values.

    Chain containers also get the shape after each child (``snncc_chain``), from
    running the children on the view they see (one step, or the T*B-folded sequence).
    """
    for n in gm.graph.nodes:
        v = n.meta.get("snncc_fake")
        if isinstance(v, torch.Tensor):
            n.meta["snncc_shape"] = TensorMeta(tuple(v.shape), _dtype_name(v.dtype))
        elif n.op in ("call_function", "call_method", "call_module"):
            n.meta["snncc_value"] = v
            if n.op == "call_module" and isinstance(v, (tuple, list)):
                n.meta["snncc_items"] = [
                    TensorMeta(tuple(r.shape), _dtype_name(r.dtype))
                    if isinstance(r, torch.Tensor)
                    else None
                    for r in v
                ]
        if n.op != "call_module":
            continue
        module = gm.get_submodule(n.target)
        fw = framework_of(module)
        chain = fw.chain(module) if fw is not None else None
        if chain is None or module_entry(module) is not None:
            continue
        x = n.args[0].meta.get("snncc_fake") if n.args and isinstance(n.args[0], fx.Node) else None
        if chain.drops_input_state and isinstance(x, tuple) and len(x) == 2:
            x = x[0]
        if isinstance(x, torch.Tensor):
            try:
                n.meta["snncc_chain"] = run_fake(mode, _chain_shapes, chain, x, model_view)
            except SnnccError:
                raise
            except Exception:  # noqa: BLE001 - the conversion names the child that cannot run
                pass


def _attribute(model: nn.Module, gm: fx.GraphModule, target: str) -> ParamRef | float | int:
    """A tensor the model's code reads from an attribute: a parameter or buffer by name, or,
    for a 0-dim tensor that is neither (``self.scale = torch.tensor(0.0)``: not in the
    state_dict, so a constant of the model), its number, which torch multiplies or adds as
    it does the Python number (a 0-dim tensor takes part in type promotion as a scalar).
    The model says which it is: fx's copy registers every plain tensor as a buffer."""
    tensor = _fetch_attr(gm, target)
    owner_path, _, attr = target.rpartition(".")
    try:
        owner = model.get_submodule(owner_path) if owner_path else model
    except AttributeError:
        owner = None
    if (
        isinstance(tensor, torch.Tensor)
        and tensor.dim() == 0
        and not is_fake(tensor)
        and owner is not None
        and attr not in owner._parameters
        and attr not in owner._buffers
        and not tensor.requires_grad
        and (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64))
    ):
        return tensor.item()
    return ParamRef(target, tensor)


def _drops_input_state(module: nn.Module) -> bool:
    fw = framework_of(module)
    chain = fw.chain(module) if fw is not None else None
    return chain is not None and chain.drops_input_state


def _chain_shapes(chain: Chain, x: torch.Tensor, outer_view: str) -> dict[str, tuple]:
    """Shapes after each child of a chain, as the children see them (key "" = the input)."""
    if outer_view == "sequence" and chain.view != "inherit":
        x = x.flatten(0, 1) if chain.view == "flat" else x[0]
    shapes: dict[str, tuple] = {"": tuple(x.shape)}
    for name, child in _flatten_chain(chain.children):
        x = child(x)
        if isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
            x = x[0]  # a neuron's (output, state)
        if not isinstance(x, torch.Tensor):
            break
        shapes[name] = tuple(x.shape)
    return shapes


def _describe(n: fx.Node, gm: fx.GraphModule) -> str:
    src = n.meta.get("snncc_src", "")
    where_src = f" [{src}]" if src else ""
    if n.op == "call_module":
        return f"module '{n.target}' ({type_name(gm.get_submodule(n.target))}){where_src}"
    if n.op in ("call_function", "call_method"):
        return f"{_target_name(n)} in {_where(_enclosing_path(n))}{where_src}"
    return f"{n.op} {n.name}"


class _Restore:
    """Leave the model as it was: reset neuron state before/after, restore buffers and RNG.

    Buffers are restored in place when their shape is unchanged (BatchNorm
    statistics) and by putting the original tensor back otherwise (snnTorch's
    hidden ``mem`` is re-created with the input's shape on the first call).
    """

    def __init__(
        self,
        model: nn.Module,
        resets: list[Callable[[nn.Module], None]],
        drop_trace_values: bool = True,
    ):
        self.model = model
        self.resets = resets
        self.drop_trace_values = drop_trace_values

    def __enter__(self) -> _Restore:
        self.buffers = [
            (m, k, b, None if b is None else b.detach().clone())
            for m in self.model.modules()
            for k, b in list(m._buffers.items())
        ]
        # (only where they are dropped: the restore around fx's own trace keeps them)
        self.attrs = (
            [(m, _plain_attrs(m)) for m in self.model.modules()] if self.drop_trace_values else []
        )
        self.rng = torch.random.get_rng_state()
        for r in self.resets:
            r(self.model)
        return self

    def __exit__(self, *exc: Any) -> None:
        for r in self.resets:
            r(self.model)
        with torch.no_grad():
            for m, k, original, saved in self.buffers:
                if saved is None or original is None:
                    m._buffers[k] = original
                else:  # same object (BatchNorm stats) or replaced (snnTorch mem): put it back
                    original.copy_(saved)
                    m._buffers[k] = original
        for m, saved_attrs in self.attrs:
            _drop_trace_values(m, saved_attrs)
        torch.random.set_rng_state(self.rng)


def _plain_attrs(m: nn.Module) -> dict[str, tuple[Any, Any]]:
    """A module's plain attributes (not parameters, buffers or children): each object, and a
    shallow copy of a list's or dict's items (a forward may append to them)."""
    out = {}
    for k, v in vars(m).items():
        if isinstance(v, list):
            out[k] = (v, list(v))
        elif isinstance(v, dict) and not k.startswith("_"):
            out[k] = (v, dict(v))
        else:
            out[k] = (v, None)
    return out


def _is_trace_value(v: Any) -> bool:
    return isinstance(v, fx.Proxy) or (isinstance(v, torch.Tensor) and is_fake(v))


def _drop_trace_values(m: nn.Module, saved: dict[str, tuple[Any, Any]]) -> None:
    """Undo what the model's own code stored on itself while it ran on trace values
    (``self.last = out``, ``self.record.append(spikes)``): the user's model must not be left
    holding proxies and fake tensors. Attributes it set to real values are left alone."""
    for k, v in list(vars(m).items()):
        items = v if isinstance(v, list) else v.values() if isinstance(v, dict) else (v,)
        if not any(_is_trace_value(i) for i in items):
            continue
        if k not in saved:
            del m.__dict__[k]
            continue
        original, content = saved[k]
        m.__dict__[k] = original
        if isinstance(original, list) and content is not None:
            original[:] = content
        elif isinstance(original, dict) and content is not None:
            original.clear()
            original.update(content)


# --------------------------------------------------------------------------- entry point


def _as_inputs(example_input: Any) -> tuple[torch.Tensor, ...]:
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    out = []
    for i, x in enumerate(items):
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except Exception as e:  # noqa: BLE001
                raise ShapeError(f"example input {i} is a {type(x).__name__}, not a tensor") from e
        if x.ndim < 2:
            raise ShapeError(
                f"example input {i} has shape {list(x.shape)}; snncc inputs are time-major "
                "[T, B, ...] (at least 2 dims), or [B, ...] for a model that repeats its input "
                "over time itself"
            )
        out.append(x)
    if not out:
        raise ShapeError("no example input given")
    return tuple(out)


@dataclass
class Traced:
    """The outcome of tracing: the per-step fx graph and what the converter needs to know."""

    gm: fx.GraphModule
    step_mode: str  # "m" (fed [T, B, ...] at once) or "s" (applied at each step)
    source: str
    #: placeholder indices of inputs without a time axis ([B, ...]: the model repeats them)
    static_inputs: frozenset[int]
    T: int | None  # None: every input is static; the model's own repeat count decides
    B: int
    folded: bool
    reads: list[ShapeRead]


def _fake_call(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """A framework's shortcut for a module call's fake result (see Framework.fake_call)."""
    fw = framework_of(module)
    if fw is None or fw.fake_call is None:
        return NotImplemented
    return fw.fake_call(module, args, kwargs)


def shape_trace(
    model: nn.Module, inputs: list[torch.Tensor], mode: Any, sequence: bool = False
) -> fx.GraphModule:
    """fx-trace ``model`` on fake copies of ``inputs`` (every node's value in its meta).

    The model's buffers and framework state are as before afterwards (the fake run
    leaves fake tensors in neurons' state; a folded loop reads the real initial ones).
    """
    _check_module_names(model)
    tracer = SnnccTracer()
    tracer.init_shapes(fake_inputs(mode, inputs), mode, _fake_call)
    tracer.sequence = sequence  # a multi-step model fed the whole sequence
    concrete = none_defaults(model, len(inputs))
    resets = [fw.reset for fw in FRAMEWORKS if fw.reset is not None]
    try:
        # fx keeps the tensor constants it meets on the root until the GraphModule below
        # copies them; trace()'s own _Restore drops them from the model afterwards
        with _Restore(model, resets, drop_trace_values=False):
            graph = tracer.trace(model, concrete_args=concrete or None)
    except SnnccError:
        raise
    except Exception as e:  # noqa: BLE001 - fx raises many types; all mean "not traceable"
        where = user_frame_of(e)
        raise UnsupportedError(
            f"torch.fx could not trace {type_name(model)}{where}: {type(e).__name__}: {e}. snncc "
            "traces the forward with torch.fx, keeping framework modules as leaves and "
            "resolving Python code on shapes with the example input's shapes"
        ) from e
    drop_concrete_placeholders(graph, concrete)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta["snncc_reads"] = tracer.reads
    return gm


def user_frame_of(e: BaseException) -> str:
    """`` at file:line: code`` of the innermost user frame of an exception's traceback."""
    tb = e.__traceback__
    found = ""
    while tb is not None:
        fn = tb.tb_frame.f_code.co_filename
        if fn and not fn.startswith("<") and not fn.startswith((_TORCH_DIR, *_SKIP_DIRS)):
            line = linecache.getline(fn, tb.tb_lineno).strip()
            found = f" at {Path(fn).name}:{tb.tb_lineno}: {line}"
        tb = tb.tb_next
    return found


def _module_votes(model: nn.Module) -> set[str]:
    """The step modes the model's framework modules declare (used or not)."""
    votes: set[str] = set()
    for m in model.modules():
        fw = framework_of(m)
        mode = fw.step_mode(m) if fw is not None else None
        if mode in ("s", "m"):
            votes.add(mode)
    return votes


def _static_placeholders(gm: fx.GraphModule) -> frozenset[int]:
    """Inputs a multi-step model gives a time axis itself (every use is ``x.unsqueeze(0)``)."""
    out = set()
    for i, p in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        if p.users and all(_new_leading_axis(u, p) for u in p.users):
            out.add(i)
    return frozenset(out)


def _new_leading_axis(n: fx.Node, x: fx.Node) -> bool:
    """``x.unsqueeze(0)``, ``torch.unsqueeze(x, 0)`` or ``x[None]`` (``x[None, ...]``)."""
    if n.op in ("call_method", "call_function") and (
        n.target == "unsqueeze" or n.target is torch.unsqueeze
    ):
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        return n.args[0] is x and dim == 0
    if n.op == "call_function" and n.target is operator.getitem and n.args[0] is x:
        index = n.args[1]
        first = index[0] if isinstance(index, tuple) and index else index
        return first is None
    return False


def _attempt(
    model: nn.Module, inputs: list[torch.Tensor], mode: Any, sequence: bool = False
) -> tuple[fx.GraphModule | None, ShapeError | None]:
    """A shape trace, or the ShapeError of running the model on these shapes."""
    try:
        return shape_trace(model, inputs, mode, sequence), None
    except ShapeError as e:
        return None, e


def _trace_model(model: nn.Module, xs: tuple[torch.Tensor, ...], mode: Any) -> Traced:
    """Trace the model the way it is driven (see :func:`trace`).

    A model with multi-step modules is traced on the sequence. One with snnTorch or
    Norse cells may loop over the steps itself (traced on the sequence and folded)
    or be a per-step network (traced on one step): the sequence is tried first, and
    one step where it shows no loop over time. Anything else is per-step.
    """
    from snncc.frontend import loops

    votes = _module_votes(model)
    loop_fw = any(fw.loops(m) for m in model.modules() if (fw := framework_of(m)) is not None)
    steps = [x[0] for x in xs]
    if "m" not in votes and not loop_fw:
        gm = shape_trace(model, steps, mode)
        return _traced(gm, *_step_mode(gm), xs)
    gm, error = _attempt(model, list(xs), mode, sequence="m" in votes)
    if gm is not None:
        if loops.wants_fold(model, gm):
            f = loops.fold(model, gm, xs, lambda ins: shape_trace(model, ins, mode))
            reads = list(f.gm.meta.get("snncc_reads", []))
            return Traced(f.gm, "s", _step_mode(f.gm)[1], f.static_inputs, f.T, f.B, True, reads)
        step_mode, source = _step_mode(gm)
        if step_mode == "m" or not loop_fw:
            return _traced(gm, step_mode, source, xs)
    elif "m" in votes:
        raise error  # type: ignore[misc]
    # a per-step network of cells, or a model the sequence could not run through
    gm2, error2 = _attempt(model, steps, mode)
    if gm2 is None:
        raise (
            error
            if getattr(error, "snncc_nodes", 0) > getattr(error2, "snncc_nodes", 0)
            else error2
        )  # type: ignore[misc]
    if error is not None and loops.wants_fold(model, gm2):
        raise error  # it loops over time steps and failed on the sequence: that is the cause
    return _traced(gm2, *_step_mode(gm2), xs)


def _traced(gm: fx.GraphModule, step_mode: str, source: str, xs: tuple) -> Traced:
    """The facts of a trace that was not folded: static inputs, T and B (checked)."""
    static = _static_placeholders(gm) if step_mode == "m" else frozenset()
    timed = [x for i, x in enumerate(xs) if i not in static]
    T = int(timed[0].shape[0]) if timed else None
    B = int((timed[0].shape[1]) if timed else xs[0].shape[0])
    for i, x in enumerate(xs):
        if i in static:
            ok = int(x.shape[0]) == B
        else:
            ok = x.ndim >= 3 and (int(x.shape[0]), int(x.shape[1])) == (T, B)
            if x.ndim < 3:
                raise ShapeError(
                    "example_input must be time-major [T, B, ...] (rank >= 3); got shape "
                    f"{list(x.shape)}; add the missing axis, e.g. x.unsqueeze(0) for one time step"
                )
        if not ok:
            raise ShapeError(
                f"example inputs disagree on T or B: {[list(x.shape) for x in xs]}; all are "
                "[T, B, ...] (or [B, ...] where the model repeats the input over time itself)"
            )
    reads = list(gm.meta.get("snncc_reads", []))
    return Traced(gm, step_mode, source, static, T, B, False, reads)


def trace(model: nn.Module, example_input: Any) -> Graph:
    """Trace ``model`` into a per-step IR Graph; ``example_input`` is what the model takes.

    Time-major ``[T, B, ...]`` for a multi-step model (SpikingJelly step_mode 'm',
    snncc.nn, Norse sequence modules), which is traced on it as is; for a single-step
    model (SpikingJelly step_mode 's', snnTorch / Norse cells, plain torch) traced on
    ``example_input[0]`` and compiled as applied at every step; for a model whose
    ``forward`` loops over the steps itself traced on it and folded into one step
    (:mod:`snncc.frontend.loops`). A model may take a static ``[B, ...]`` input it
    repeats over time itself (``x.unsqueeze(0).repeat(T, ...)``, or fed whole at every
    step of its loop): the program then has the model's number of steps.

    Tracing runs no arithmetic: the model runs on fake tensors (shapes only, see
    :mod:`snncc.frontend.shape_trace`). The model is left as it was: framework
    state reset, buffers (BatchNorm running statistics) and the torch RNG restored,
    training/eval mode unchanged.
    """
    ensure_converters()
    if not isinstance(model, nn.Module):
        raise UnsupportedError(f"snncc compiles torch.nn.Module models, not {type_name(model)}")
    refuse_hooks(model)
    if framework_of(model) is not None and module_entry(model) is not None:
        return _trace_alone(model, example_input)
    xs = _as_inputs(example_input)
    resets = [fw.reset for fw in FRAMEWORKS if fw.reset is not None]
    mode = new_mode()
    with _Restore(model, resets):
        t = _trace_model(model, xs, mode)
        n_placeholders = sum(1 for n in t.gm.graph.nodes if n.op == "placeholder")
        if n_placeholders != len(xs):
            raise ShapeError(
                f"{type_name(model)}.forward takes {n_placeholders} inputs but {len(xs)} example "
                "inputs were given"
            )
        if t.folded and t.step_mode == "m":
            raise UnsupportedError(
                f"{type_name(model)}.forward loops over time steps but calls multi-step modules "
                "(fed the whole [T, B, ...] sequence); inside a time loop use single-step "
                "modules (snnTorch neurons, Norse *Cell modules)"
            )
        _precheck(t.gm, t.step_mode)
        _record_meta(t.gm, "sequence" if t.step_mode == "m" else "step", mode)
        conv = Converter(model, t.gm, t.step_mode, t.T, t.B, t.static_inputs)
        graph = conv.run()
    graph.meta["source"] = t.source
    graph.meta["step_mode"] = t.step_mode
    if t.folded:
        graph.meta["time_loop"] = "folded"
    if not any(i not in t.static_inputs for i in range(len(xs))) and conv.T is not None:
        graph.meta["time_steps"] = conv.T  # every input static: the model's own T
    if t.reads:
        graph.meta["shape_reads"] = [
            {"where": r.where, "what": r.what, "value": r.value} for r in t.reads
        ]
    return graph


def _trace_alone(module: nn.Module, example_input: Any) -> Graph:
    """A framework's module (a neuron, a layer) compiled on its own: ``snncc.compile(LIFNode(), x)``.

    The tracer keeps framework modules as leaves of the model that holds them, and fx
    cannot make a model's root a leaf: traced itself, the module's own internals ran and
    failed on one confusing line. So it is traced as the one child of a container, and its
    parameters are named as in its own ``state_dict`` (``w``, not the container's ``0.w``):
    compiled weights are keyed by the source model's names.
    """

    def own(name: str) -> str:
        return name.removeprefix("0.")

    graph = trace(nn.Sequential(module), example_input)
    graph.params = {own(name): value for name, value in graph.params.items()}
    for nid in graph.nodes():
        node = graph.node(nid)
        node["params"] = {role: own(name) for role, name in node["params"].items()}
    return graph


def none_defaults(model: nn.Module, n_inputs: int) -> dict[str, None]:
    """Forward parameters after the inputs whose default is None (Norse ``state=None``).

    They are traced as the constant None (``concrete_args``): a model called
    on its inputs alone sees exactly that.
    """
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {p.name: None for p in positional[n_inputs:] if p.default is None}


def drop_concrete_placeholders(graph: fx.Graph, names: dict[str, None]) -> None:
    """Remove the placeholders (and fx's ``_assert_is_none`` guards) of ``concrete_args``.

    fx may rename them (``state`` -> ``state_1``), so they are found by position:
    the unused placeholders after the inputs.
    """
    if not names:
        return
    for n in list(graph.nodes):
        if n.op == "call_function" and getattr(n.target, "__name__", "") == "_assert_is_none":
            graph.erase_node(n)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for n in placeholders[len(placeholders) - len(names) :]:
        if not n.users:
            graph.erase_node(n)


def _check_module_names(model: nn.Module) -> None:
    """Every submodule name must be one torch.fx can write into the code it generates.

    torch only forbids '.' in a name; fx pastes names into Python source, so a
    quote or newline in one is a SyntaxError deep inside fx (or worse).
    """
    for path, _ in model.named_modules():
        for part in path.split(".") if path else ():
            if not (part.isidentifier() or part.isdigit()):
                raise UnsupportedError(
                    f"module name {path!r} cannot be traced: torch.fx needs each level of a "
                    "module path to be a Python identifier or an index (letters, digits, _); "
                    "rename the module"
                )


def _step_mode(gm: fx.GraphModule) -> tuple[str, str]:
    """(step mode, source) voted by the leaf modules the model calls."""
    votes: dict[str, list[str]] = {"s": [], "m": []}
    sources: list[Framework] = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        fw = framework_of(module)
        if fw is None:
            continue
        if fw.source:
            sources.append(fw)
        mode = fw.step_mode(module)
        if mode in votes:
            votes[mode].append(f"'{node.target}' ({type(module).__name__}, step_mode={mode!r})")
    if votes["s"] and votes["m"]:
        raise UnsupportedError(
            "mixed step modes: multi-step modules "
            + ", ".join(votes["m"])
            + " and single-step modules "
            + ", ".join(votes["s"])
            + "; snncc compiles a model whose modules are all multi-step (fed [T, B, ...]) or "
            "all single-step (applied at each step). For SpikingJelly, call "
            "spikingjelly.activation_based.functional.set_step_mode(model, 'm') (or 's')"
        )
    mode = "m" if votes["m"] else "s"
    source = max(sources, key=lambda f: f.priority).source if sources else "torch"
    return mode, source


def _precheck(gm: fx.GraphModule, step_mode: str) -> None:
    """Refuse unsupported modules/functions before converting anything (one clear message)."""
    view = "sequence" if step_mode == "m" else "step"
    _check_single_use(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            _precheck_module(node, module, str(node.target), view, gm)
        elif node.op == "call_function":
            if node.target not in FUNCTIONS and node.target not in _SHAPE_FUNCTIONS:
                raise _unsupported_node(node, gm, step_mode)
        elif node.op == "call_method":
            if node.target not in METHODS and node.target not in _SHAPE_METHODS:
                raise _unsupported_node(node, gm, step_mode)


def _check_single_use(gm: fx.GraphModule) -> None:
    """A module that keeps state between calls may be called once: a second call would continue
    from the first call's state, which a per-step graph of independent nodes cannot express."""
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        fw = framework_of(module)
        if fw is None or not fw.stateful(module):
            continue
        seen[node.target] = seen.get(node.target, 0) + 1
        if seen[node.target] == 2:
            raise UnsupportedError(
                f"module '{node.target}' ({type_name(module)}) is called more than once per "
                "forward; it keeps state between calls, so each call would continue from the "
                "previous call's state. Use a separate module instance for each call"
            )


def _refuse_unknown(module: nn.Module, path: str, node: fx.Node) -> None:
    fw = framework_of(module)
    chain = fw.chain(module) if fw is not None else None
    if module_entry(module) is not None:
        return
    if chain is not None:
        for name, child in _flatten_chain(chain.children):
            _refuse_unknown(child, f"{path}.{name}", node)
        return
    src = node.meta.get("snncc_src", "")
    where_src = f" [{src}]" if src else ""
    raise UnsupportedError(
        f"module '{path}' ({type_name(module)}){where_src} is not supported; {supported_text()}"
    )


def _refuse_early(module: nn.Module, path: str, node: fx.Node) -> None:
    """Before a leaf module runs on fake values: refuse it if snncc has no converter for it, or
    if its own check finds a problem whatever view it gets (an option it cannot even run with
    is snncc's message, not the module's exception)."""
    _refuse_unknown(module, path, node)
    entry = module_entry(module)
    fw = framework_of(module)
    if entry is None or entry.check is None:
        return
    mode = fw.step_mode(module) if fw is not None else None
    why = entry.check(module, "sequence" if mode == "m" else "step")
    if why:
        src = node.meta.get("snncc_src", "")
        where_src = f" [{src}]" if src else ""
        raise UnsupportedError(f"module '{path}' ({type_name(module)}){where_src}: {why}")


def _precheck_module(node: fx.Node, module: nn.Module, path: str, view: str, gm) -> None:
    src = node.meta.get("snncc_src", "")
    where_src = f" [{src}]" if src else ""
    what = f"module '{path}' ({type_name(module)}){where_src}"
    entry = module_entry(module)
    fw = framework_of(module)
    chain = fw.chain(module) if fw is not None else None
    if entry is None and chain is not None:
        inner = view if chain.view == "inherit" else chain.view
        for name, child in _flatten_chain(chain.children):
            _precheck_module(node, child, f"{path}.{name}", inner, gm)
        return
    if entry is None:
        raise UnsupportedError(f"{what} is not supported; {supported_text()}")
    # (per_step_only is checked where the module is converted: a static input is [B, ...])
    why = entry.check(module, view) if entry.check else None
    if why:
        raise UnsupportedError(f"{what}: {why}")
