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
import operator
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from snncc.errors import IRError, ShapeError, SnnccError, UnsupportedError
from snncc.ir.graph import Graph

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


def _base_with_same_step(cls: type) -> type | None:
    """The nearest registered base of ``cls`` if ``cls`` only configures it.

    Users subclass a framework module to set defaults in ``__init__``
    (``class MyLIF(LIFNode): def __init__(self): super().__init__(tau=3.0)``).
    Its maths is the base's, read from the instance's attributes by the base's
    converter, so it converts as the base. A subclass that defines any other
    method (a new step, a property) may change the maths and is not matched
    here: it is traced from its own code or refused.
    """
    for klass in cls.__mro__:
        if klass in MODULES:
            return klass
        own = {
            name
            for name, value in vars(klass).items()
            if callable(value) or isinstance(value, (property, staticmethod, classmethod))
        }
        if own - _HARMLESS_METHODS:
            return None
    return None


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
    *targets: tuple[Any, str],
) -> Callable[[FunctionConverter], FunctionConverter]:
    """Register a converter for fx ``call_function`` targets, given as (callable, public name)."""

    def deco(fn: FunctionConverter) -> FunctionConverter:
        for target, name in targets:
            FUNCTIONS[target] = FunctionEntry(name, fn)
        return fn

    return deco


def register_method(*names: str) -> Callable[[FunctionConverter], FunctionConverter]:
    """Register a converter for fx ``call_method`` targets (Tensor method names)."""

    def deco(fn: FunctionConverter) -> FunctionConverter:
        for name in names:
            METHODS[name] = FunctionEntry(f"Tensor.{name}", fn)
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
    passes its first item on.
    """

    view: str
    children: tuple[tuple[str, nn.Module], ...]
    result: str = "tensor"


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
    #: the framework's models may hold an explicit time loop (snnTorch, Norse): fold it
    loops: bool = False
    #: how a stateful module's state is passed by hand in a time loop, or None
    state_args: Callable[[nn.Module], StateArgs | None] = lambda m: None
    #: how the shape-recording run calls a module whose folded loop dropped its state
    #: argument (a module that cannot run without one), or None: called as traced
    call_without_state: Callable[..., Any] | None = None


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
    functions = sorted({f.split(" ")[0].rsplit(".", 1)[-1] for f in s["functions"]})
    methods = sorted({m.rsplit(".", 1)[-1] for m in s["methods"]})
    return (
        f"supported modules: {len(s['modules'])} from {families}; supported functions: "
        f"{', '.join(functions)}; supported Tensor methods: {', '.join(methods)} (the full list: "
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


class SnnccTracer(fx.Tracer):
    """fx tracer whose leaves are framework modules; records the user source line of each node."""

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
        node.meta["snncc_src"] = _user_frame()
        return node


def _user_frame() -> str:
    """``file:line: code`` of the user's ``forward`` code that made the current fx node.

    Walks outward from the innermost frame, skipping torch's frames, and stops
    at snncc's own frames: anything outside them (the user's script, the CLI)
    only called the tracer and says nothing about where the op is. A module
    inside an ``nn.Sequential`` has no user frame at all; its path names it.
    """
    torch_dir = str(Path(torch.__file__).resolve().parent)
    inside_torch = False  # the tracer's own hook frames come first, then torch's
    for fr in reversed(traceback.extract_stack()):
        if not fr.filename or fr.filename.startswith("<"):
            continue
        fn = str(Path(fr.filename).resolve())
        if fn.startswith(torch_dir):
            inside_torch = True
            continue
        if fn.startswith((_HERE, _SNNCC_DIR)):
            if inside_torch:
                return ""  # back out in snncc's trace() call: no user frame
            continue
        return f"{Path(fr.filename).name}:{fr.lineno}: {(fr.line or '').strip()}"
    return ""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Value:
    """A tensor value during conversion: its IR node and shapes."""

    id: int
    fx_shape: tuple[int, ...]  # full shape as the model saw it (with T for "m")
    shape: list  # per-step IR shape, batch as "B"
    dtype: str


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

    def __init__(self, model: nn.Module, gm: fx.GraphModule, step_mode: str, T: int, B: int):
        self.model = model
        self.gm = gm
        self.step_mode = step_mode
        self.T = T
        self.B = B
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
            else:  # get_attr
                raise _unsupported_node(node, self.gm)
        return self.graph

    def _placeholder(self, node: fx.Node) -> None:
        meta = node.meta["snncc_shape"]
        index = len(self.graph.meta["inputs"])
        shape = self.step_shape(meta.shape, 1 if self.step_mode == "m" else 0, None)
        nid = self.graph.add_node(
            "input", attrs={"index": index}, shape=shape, dtype=meta.dtype, name=node.name
        )
        self.env[node] = Value(nid, meta.shape, shape, meta.dtype)

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
        meta = node.meta.get("snncc_shape")
        items = node.meta.get("snncc_items")
        first = meta or next((m for m in items or () if m is not None), None)
        if first is None:
            raise UnsupportedError(
                f"{_describe(node, self.gm)} returned "
                f"{type(node.meta.get('snncc_value')).__name__}, not a tensor"
            )
        call = Call(
            ctx=self,
            path=str(node.target),
            what=f"module '{node.target}' ({type_name(module)})",
            target=module,
            inputs=tensors,
            out_fx_shape=first.shape,
            out_dtype=first.dtype,
            view=self.model_view,
            args=args,
            kwargs=kwargs,
            src=node.meta.get("snncc_src", ""),
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
        return Value(res, meta.shape, call.out_shape, meta.dtype)

    def _item(self, call: Call, item: Any, meta: TensorMeta | None) -> Any:
        """One item of a Multi as a Value (thunks stay lazy), StateValue or None."""
        if item is None or isinstance(item, StateValue):
            return item
        if meta is None:
            raise call.unsupported("a tensor item of its result has no recorded shape")

        def value(nid: int) -> Value:
            shape = self.step_shape(meta.shape, call.time_dims, call)
            return Value(nid, meta.shape, shape, meta.dtype)

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
        if meta is None:
            value = node.meta.get("snncc_value")
            if shape_op and not _has_tensor(value):
                # a Python value computed from shapes: consumers use the recorded shapes
                return ShapeValue(value)
            raise UnsupportedError(
                f"{_describe(node, self.gm)} returns "
                f"{type(node.meta.get('snncc_value')).__name__}, not a tensor; {supported_text()}"
            )
        entry = (FUNCTIONS if node.op == "call_function" else METHODS).get(node.target)
        if entry is None:
            raise _unsupported_node(node, self.gm, self.step_mode)
        module_path = _enclosing_path(node)
        call = Call(
            ctx=self,
            path=module_path,
            what=f"{entry.name} in {_where(module_path)}",
            target=node.target,
            inputs=tensors,
            out_fx_shape=meta.shape,
            out_dtype=meta.dtype,
            view=self.model_view,
            args=args,
            kwargs=kwargs,
            src=node.meta.get("snncc_src", ""),
        )
        nid = entry.convert(call)
        return Value(nid, meta.shape, call.out_shape, meta.dtype)

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


def _unsupported_node(node: fx.Node, gm: fx.GraphModule, step_mode: str = "s") -> UnsupportedError:
    """The one error for an fx node snncc has no converter for."""
    src = node.meta.get("snncc_src", "")
    where_src = f" [{src}]" if src else ""
    path = _enclosing_path(node)
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


# --------------------------------------------------------------------------- shape propagation


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced model once, recording every tensor value's shape on its fx node.

    Chain containers also record the shape after each child, by running the
    children on the view they see (one step, or the T*B-folded sequence).
    """

    def __init__(self, gm: fx.GraphModule, model_view: str):
        super().__init__(gm)
        self.model_view = model_view
        # fx would append "While executing ... Use tlparse ..." to every error raised while
        # the model runs, snncc's own one-line messages included: they name the place already
        self.extra_traceback = False

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        module = self.fetch_attr(target)
        fw = framework_of(module)
        if fw is not None and fw.call_without_state is not None:
            return fw.call_without_state(module, *args, **kwargs)
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except IRError as e:  # a neuron refused while running (e.g. a NaN threshold)
            raise UnsupportedError(f"{_describe(n, self.module)}: {e}") from None
        except SnnccError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the node's location
            raise ShapeError(
                f"running the model on the example input failed at {_describe(n, self.module)}: "
                f"{type(e).__name__}: {e}"
            ) from e
        if isinstance(result, torch.Tensor):
            n.meta["snncc_shape"] = TensorMeta(tuple(result.shape), _dtype_name(result.dtype))
        elif n.op in ("call_function", "call_method", "call_module"):
            n.meta["snncc_value"] = result
            if n.op == "call_module" and isinstance(result, (tuple, list)):
                n.meta["snncc_items"] = [
                    TensorMeta(tuple(r.shape), _dtype_name(r.dtype))
                    if isinstance(r, torch.Tensor)
                    else None
                    for r in result
                ]
        if n.op == "call_module":
            module = self.module.get_submodule(n.target)
            fw = framework_of(module)
            chain = fw.chain(module) if fw is not None else None
            if chain is not None and module_entry(module) is None:
                x = self.env[n.args[0]] if n.args and isinstance(n.args[0], fx.Node) else None
                if isinstance(x, torch.Tensor):
                    n.meta["snncc_chain"] = _chain_shapes(chain, x, self.model_view)
        return result


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

    def __init__(self, model: nn.Module, resets: list[Callable[[nn.Module], None]]):
        self.model = model
        self.resets = resets

    def __enter__(self) -> _Restore:
        self.buffers = [
            (m, k, b, None if b is None else b.detach().clone())
            for m in self.model.modules()
            for k, b in list(m._buffers.items())
        ]
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
        torch.random.set_rng_state(self.rng)


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
                "[T, B, ...] (at least 2 dims)"
            )
        out.append(x)
    if not out:
        raise ShapeError("no example input given")
    Ts = {int(x.shape[0]) for x in out}
    Bs = {int(x.shape[1]) for x in out}
    if len(Ts) != 1 or len(Bs) != 1:
        raise ShapeError(
            f"example inputs disagree on T or B: {[list(x.shape) for x in out]}; all are [T, B, ...]"
        )
    return tuple(out)


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


def _fx_trace(model: nn.Module, n_inputs: int = 1) -> fx.GraphModule:
    _check_module_names(model)
    tracer = SnnccTracer()
    concrete = none_defaults(model, n_inputs)
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except SnnccError:
        raise
    except Exception as e:  # noqa: BLE001 - fx raises many types; all mean "not traceable"
        raise UnsupportedError(
            f"torch.fx could not trace {type_name(model)}: {type(e).__name__}: {e}. snncc traces "
            "the forward with torch.fx, keeping framework modules as leaves; Python control flow "
            "on tensor values in your own modules is not supported"
        ) from e
    drop_concrete_placeholders(graph, concrete)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


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
    """Refuse unsupported modules/functions before running anything (one clear message)."""
    view = "sequence" if step_mode == "m" else "step"
    _check_single_use(gm)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            raise _unsupported_node(node, gm)
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
    if entry.per_step_only and view == "sequence":
        raise UnsupportedError(f"{what}: {_SEQUENCE_HINT}")
    why = entry.check(module, view) if entry.check else None
    if why:
        raise UnsupportedError(f"{what}: {why}")


def trace(model: nn.Module, example_input: Any) -> Graph:
    """Trace ``model`` into a per-step IR Graph; ``example_input`` is time-major [T, B, ...].

    A multi-step model (SpikingJelly step_mode 'm', snncc.nn) is run on the
    example input as is; a single-step model (SpikingJelly step_mode 's', plain
    torch) on ``example_input[0]``, and compiled as applied at every step. The
    model is left as it was: SpikingJelly state reset, buffers (BatchNorm
    running statistics) and the torch RNG restored, training/eval mode unchanged.
    """
    from snncc.frontend import loops

    ensure_converters()
    if not isinstance(model, nn.Module):
        raise UnsupportedError(f"snncc compiles torch.nn.Module models, not {type_name(model)}")
    xs = _as_inputs(example_input)
    T, B = int(xs[0].shape[0]), int(xs[0].shape[1])
    resets = [fw.reset for fw in FRAMEWORKS if fw.reset is not None]
    with _Restore(model, resets):
        gm, error = _try_fx_trace(model, len(xs))
        folded = loops.wants_fold(model, gm, error)
        if folded:
            gm = loops.fold(model, xs, error)
        elif error is not None:
            raise error
        n_placeholders = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
        if n_placeholders != len(xs):
            raise ShapeError(
                f"{type_name(model)}.forward takes {n_placeholders} inputs but {len(xs)} example "
                "inputs were given"
            )
        step_mode, source = _step_mode(gm)
        if folded and step_mode == "m":
            raise UnsupportedError(
                f"{type_name(model)}.forward loops over time steps but calls multi-step modules "
                "(fed the whole [T, B, ...] sequence); inside a time loop use single-step "
                "modules (snnTorch neurons, Norse *Cell modules)"
            )
        _precheck(gm, step_mode)

        run_inputs = xs if step_mode == "m" else tuple(x[0] for x in xs)
        recorder = _ShapeRecorder(gm, "sequence" if step_mode == "m" else "step")
        for r in resets:
            r(model)
        with torch.no_grad():
            recorder.run(*run_inputs)

    conv = Converter(model, gm, step_mode, T, B)
    _check_layout(gm, step_mode, T, B)
    graph = conv.run()
    graph.meta["source"] = source
    graph.meta["step_mode"] = step_mode
    if folded:
        graph.meta["time_loop"] = "folded"
    return graph


def _try_fx_trace(
    model: nn.Module, n_inputs: int
) -> tuple[fx.GraphModule | None, Exception | None]:
    """The fx trace, or the UnsupportedError saying why fx failed (a loop fold may still work)."""
    try:
        return _fx_trace(model, n_inputs), None
    except UnsupportedError as e:
        return None, e


def _check_layout(gm: fx.GraphModule, step_mode: str, T: int, B: int) -> None:
    """Every tensor value must keep [T, B, ...] ("m") or [B, ...] ("s") in front."""
    lead = (T, B) if step_mode == "m" else (B,)
    want = "[T, B, ...]" if step_mode == "m" else "[B, ...]"
    for n in gm.graph.nodes:
        meta = n.meta.get("snncc_shape")
        if meta is None:
            continue
        if tuple(meta.shape[: len(lead)]) != lead:
            raise UnsupportedError(
                f"the value of {_describe(n, gm)} has shape {list(meta.shape)}, but every value "
                f"must keep {want} = {list(lead)} in front; an op that moves or merges the "
                "time/batch dims is not supported"
            )
