"""How a neuron model is defined: a builder, the built graph, and the registry of forms.

A *form* is one neuron model's exact arithmetic (``sj_lif_decay_input``,
``snntorch_synaptic``, ...), defined once by a function that writes the
model's step with :mod:`snncc.ir.expr` values, in the source framework's
operation order, reading its constants from a :class:`~snncc.ir.neuron.NeuronSpec`::

    @form("sj_lif", state=("v",), summary="h = v - (v - vr) / tau + x",
          source="SpikingJelly 2.0 LIFNode(decay_input=False)")
    def lif(n: NeuronBuilder) -> None:
        v, x = n.state("v"), n.port("x")
        h = n.name("h", v - (v - n.vr) / n.tau + x)
        sj_fire_reset(n, h)

:func:`build` runs that function for one spec and returns a
:class:`NeuronGraph`: two expression graphs and what connects them.

- ``derive``: the per-sequence quantities from the node's params (snnTorch's
  ``beta.clamp(0, 1)``, PLIF's ``sigmoid(w)``, Norse's ``dt * tau_mem_inv``),
  computed once per run; its inputs are ``p:<role>``. A quantity whose
  inputs are all constants folds to a Python number and never becomes one.
- ``step``: one time step; inputs ``s:<var>`` (each state variable before the
  step), ``x:<port>`` (the form's input ports) and ``q:<name>`` (the derived
  quantities); results: each state variable after the step and each output
  (``spike``, ``membrane``, ``current``).

Every target lowers these two graphs; nothing else describes the maths.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from snncc.errors import IRError, UnsupportedError
from snncc.ir import expr as E
from snncc.ir.expr import Graph, Operand, Val


@dataclass(frozen=True)
class FormDef:
    """What the registry knows of a form without a spec (its interface and its docs).

    ``state``: state variables (``v`` starts at ``spec.v_init``, the rest at
    ``inits`` or 0). ``ports``: input ports (port 0 is the input current ``x``;
    fused prologue/epilogue ``add`` ports come after these). ``roles``: the node
    param roles it may read; ``constants``: role -> the spec constant it falls
    back to. ``extra``: the ``spec.extra`` keys the form understands. ``step``:
    the definition function's docstring (the equations).
    """

    summary: str
    state: tuple[str, ...]
    ports: tuple[str, ...]
    roles: tuple[str, ...]
    constants: dict[str, str]
    step: str
    source: str
    framework: str = ""
    extra: tuple[str, ...] = ()
    inits: dict[str, float] = field(default_factory=dict)
    #: whether a spiking layer's time loop may be split into chunks run in parallel, exactly
    #: (backends/cuda/chunked.py): "hard" (a hard reset sets the one membrane to v_reset
    #: whatever came before), "hard_or_leak" (also a soft reset: the charge forgets a wrong
    #: start geometrically), "" (never: e.g. a reset from the previous membrane, or a second
    #: state variable a reset does not clear)
    time_parallel: str = ""


Definition = Callable[["NeuronBuilder"], None]


@dataclass(frozen=True)
class Form:
    name: str
    info: FormDef
    define: Definition
    #: a form whose interface depends on the spec (a traced neuron: its own states and
    #: params): spec -> the FormDef for that spec; None for a fixed interface
    dynamic: Callable[[Any], FormDef] | None = None

    def info_for(self, spec: Any) -> FormDef:
        return self.dynamic(spec) if self.dynamic is not None else self.info


#: form name -> its definition (filled by the modules of this package on import)
REGISTRY: dict[str, Form] = {}

#: what a neuron node can return: its spike, its membrane ``v``, its synaptic current
#: ``i``, or an analog activation computed from the membrane (SpikingJelly's LIAF:
#: ``act(h - v_threshold)``, real-valued, so never packed or stored as 0/1)
OUTPUT_KINDS = ("spike", "membrane", "current", "activation")


def form(
    name: str,
    *,
    state: tuple[str, ...] = ("v",),
    ports: tuple[str, ...] = ("x",),
    roles: tuple[str, ...] = (),
    constants: Mapping[str, str] | None = None,
    extra: tuple[str, ...] = (),
    inits: Mapping[str, float] | None = None,
    summary: str,
    source: str,
    framework: str,
    time_parallel: str = "",
    dynamic: Callable[[Any], FormDef] | None = None,
) -> Callable[[Definition], Definition]:
    """Register ``fn(builder)`` as the definition of form ``name`` (``dynamic``: see :class:`Form`)."""

    def deco(fn: Definition) -> Definition:
        if name in REGISTRY:
            raise IRError(f"neuron form {name!r} is defined twice")
        for n in (*state, *ports, *roles):
            E.check_name(n)
        if ports[:1] != ("x",):
            raise IRError(f"neuron form {name!r}: port 0 must be 'x'")
        clash = (set(state) & set(ports)) | (set(state) & {"out", "cut"})
        if clash or len(set(state)) != len(state):
            raise IRError(f"neuron form {name!r}: state names {sorted(clash) or state} clash")
        if time_parallel not in ("", "hard", "hard_or_leak"):
            raise IRError(f"neuron form {name!r}: time_parallel={time_parallel!r}")
        info = FormDef(
            summary=summary,
            state=tuple(state),
            ports=tuple(ports),
            roles=tuple(roles),
            constants=dict(constants or {}),
            step=_doc(fn),
            source=source,
            framework=framework,
            extra=tuple(extra),
            inits=dict(inits or {}),
            time_parallel=time_parallel,
        )
        REGISTRY[name] = Form(name, info, fn, dynamic)
        return fn

    return deco


def _doc(fn: Callable) -> str:
    import inspect

    return inspect.cleandoc(fn.__doc__ or "")


# ----------------------------------------------------------------- building
class NeuronBuilder:
    """What a definition function writes into: states, ports, params, quantities, results."""

    def __init__(self, spec: Any, f: Form) -> None:
        self.spec = spec
        self.form = f
        #: the form's interface for this spec
        self.info = f.info_for(spec)
        self.derive = Graph()
        self.step = Graph()
        self._quantities: dict[str, int] = {}  # name -> derive node
        self._q_roles: dict[str, tuple[str, ...]] = {}
        self._states: dict[str, Val] = {}
        self.next_state: dict[str, Operand] = {}
        self.outputs: dict[str, Operand] = {}
        self.inits: dict[str, float] = {}
        self._used_extra: set[str] = set()

    # ------------------------------------------------------------- inputs
    def state(self, var: str) -> Val:
        """State variable ``var`` before the step."""
        if var not in self.info.state:
            raise IRError(f"form {self.form.name!r} reads undeclared state {var!r}")
        if var not in self._states:
            self._states[var] = self.step.input("s", var)
        return self._states[var]

    def port(self, name: str) -> Val:
        """Input port ``name`` at this step (``x``, or ``rec`` for recurrent forms)."""
        if name not in self.info.ports:
            raise IRError(f"form {self.form.name!r} reads undeclared port {name!r}")
        return self.step.input("x", name)

    def param(self, role: str, fallback: Operand | None) -> Operand:
        """The node param ``role`` (in the derive graph) when the spec lists it, else ``fallback``.

        A param is a tensor (learnable, a buffer, or one value per neuron); the
        fallback is the spec's constant (a Python number: folded exactly as the
        framework's Python code computes it).
        """
        if role not in self.info.roles:
            raise IRError(f"form {self.form.name!r} reads undeclared param role {role!r}")
        if role in self.spec.roles:
            return self.derive.input("p", role)
        if fallback is None:
            const = self.info.constants.get(role, role)
            raise UnsupportedError(
                f"neuron charge form {self.form.name!r} needs the param {role!r} or its "
                f"constant ({const})"
            )
        return _finite(
            fallback, f"neuron charge form {self.form.name!r}: the constant for {role!r}"
        )

    def quantity(self, name: str, value: Operand) -> Operand:
        """A per-sequence quantity: a Python number stays one; a derive value becomes ``q:name``."""
        if not isinstance(value, Val):
            return _finite(value, f"neuron charge form {self.form.name!r}: quantity {name!r}")
        if value.g is not self.derive:
            raise IRError(f"quantity {name!r} must be computed from params (the derive graph)")
        if name in self._quantities and self._quantities[name] != value.i:
            raise IRError(f"quantity {name!r} defined twice")
        self._quantities[name] = value.i
        roles = [n.name.split(":", 1)[1] for n in _inputs(self.derive, value.i)]
        self._q_roles[name] = tuple(roles)
        return self.step.input("q", name)

    def extra(self, key: str, default: float | None = None) -> float | None:
        """``spec.extra[key]`` as a finite float (the form must declare the key)."""
        if key not in self.info.extra:
            raise IRError(f"form {self.form.name!r} reads undeclared extra constant {key!r}")
        self._used_extra.add(key)
        if key not in self.spec.extra:
            return default
        value = self.spec.extra[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UnsupportedError(
                f"neuron {self.form.name!r} constant extra[{key!r}]={value!r} is not a number"
            )
        return _finite(float(value), f"neuron {self.form.name!r} constant extra[{key!r}]")

    def require(self, field_name: str) -> float:
        """A spec field that must be set (e.g. ``tau``), as a finite float."""
        value = getattr(self.spec, field_name)
        if value is None:
            raise UnsupportedError(
                f"neuron charge form {self.form.name!r} needs {field_name} (got None)"
            )
        return _finite(float(value), f"neuron charge form {self.form.name!r}: {field_name}")

    # ------------------------------------------------------------ helpers
    def name(self, label: str, v: Operand) -> Operand:
        """Name an intermediate for the generated code (readability only)."""
        if isinstance(v, Val):
            v.g.label(v, label)
        return v

    def spike(self, u: Val) -> Val:
        """The spec's spike function of ``u`` (its comparison and its surrogate)."""
        spec = self.spec
        return E.heaviside(u, spec.fire_cmp, spec.surrogate, spec.alpha, spec.surrogate_params)

    # ------------------------------------------------------------ results
    def set_state(self, var: str, value: Operand) -> None:
        if var not in self.info.state:
            raise IRError(f"form {self.form.name!r} sets undeclared state {var!r}")
        self.next_state[var] = value

    def output(self, kind: str, value: Operand) -> None:
        if kind not in OUTPUT_KINDS:
            raise IRError(f"neuron output kind {kind!r} is not one of {OUTPUT_KINDS}")
        self.outputs[kind] = value

    def init(self, var: str, value: float) -> None:
        """State ``var``'s value at t = -1 when it comes from the spec (Izhikevich's
        ``w_rest``); otherwise it is the form's ``inits`` entry, or 0 (``v``: ``v_init``)."""
        if var not in self.form.info.state or var == "v":
            raise IRError(f"form {self.form.name!r} cannot set the initial value of {var!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IRError(f"form {self.form.name!r}: the initial {var} must be a number")
        self.inits[var] = float(_finite(value, f"neuron {self.form.name!r}: the initial {var}"))


def _inputs(g: Graph, root: int) -> list[Any]:
    return [g.nodes[i] for i in sorted(g.ancestors([root])) if g.nodes[i].op == "input"]


def _finite(value: Any, what: str) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UnsupportedError(f"{what} is {value!r}; neuron constants must be finite")
    return value


@dataclass(frozen=True)
class NeuronGraph:
    """One neuron node's maths, built from its spec: what every backend lowers."""

    form: str
    info: FormDef
    #: per-sequence quantities from params (inputs ``p:<role>``)
    derive: Graph
    #: quantity name -> its node in ``derive``, in definition order
    quantities: dict[str, int]
    #: quantity name -> the param roles it is computed from
    quantity_roles: dict[str, tuple[str, ...]]
    #: one time step (inputs ``s:<var>``, ``x:<port>``, ``q:<name>``)
    step: Graph
    #: state variables, in the form's order, and their values at t = -1
    states: tuple[str, ...]
    inits: dict[str, float]
    ports: tuple[str, ...]
    #: state variable -> its value after the step (a node of ``step``, or a constant)
    next_state: dict[str, Any]
    #: output kind -> value; ``out`` is the kind this node returns
    outputs: dict[str, Any]
    out: str

    def result_nodes(self) -> dict[str, int]:
        """Every step result that is a node: ``out`` and ``state:<var>``, by name."""
        res = {}
        o = self.outputs[self.out]
        if isinstance(o, Val):
            res["out"] = o.i
        for var in self.states:
            v = self.next_state[var]
            if isinstance(v, Val):
                res[f"state_{var}"] = v.i
        return res

    @property
    def binary_output(self) -> bool:
        """The output is a spike straight from a comparison: exactly 0 or 1."""
        o = self.outputs[self.out]
        return isinstance(o, Val) and self.step.nodes[o.i].op in ("heaviside", *E.COMPARISONS)

    @property
    def fires(self) -> bool:
        """The step has a spike function (a surrogate to render)."""
        return any(n.op == "heaviside" for n in self.step.nodes)


def _check_common(spec: Any, f: Form) -> None:
    info = f.info_for(spec)
    if spec.fire_from != "updated":
        raise UnsupportedError(
            f"neuron fire_from={spec.fire_from!r} is not supported for charge form "
            f"{f.name!r}; only 'updated'"
        )
    bad = [r for r in spec.learnable if r not in info.roles]
    if bad:
        raise UnsupportedError(
            f"learnable neuron params {bad} mean nothing to charge form {f.name!r} (its roles: "
            f"{', '.join(info.roles) or 'none'}; nothing to learn or differentiate)"
        )
    unknown = sorted(set(spec.extra) - set(info.extra))
    if unknown:
        raise UnsupportedError(
            f"neuron extra constants {unknown} mean nothing to the {f.name!r} form "
            f"(known: {', '.join(info.extra) or 'none'}); refusing rather than ignoring them"
        )
    stray = [r for r in spec.roles if r not in info.roles]
    if stray:
        raise UnsupportedError(
            f"neuron params {stray} mean nothing to charge form {f.name!r} "
            f"(its roles: {', '.join(info.roles) or 'none'})"
        )


def _init(spec: Any, info: FormDef, var: str, built: Mapping[str, float]) -> float:
    """A state variable's value at t = -1: the form's own (a traced neuron's), the spec's
    ``v_init`` for the membrane ``v``, the value the builder set from the spec
    (:meth:`NeuronBuilder.init`, Izhikevich's ``w_rest``), else 0."""
    if var in info.inits:
        return _finite(float(info.inits[var]), f"neuron initial value of {var!r}")
    if var == "v":
        return float(spec.v_init)
    return float(built.get(var, 0.0))


def check_spec(spec: Any) -> Form:
    """The form of ``spec`` after the checks that need no build (form, fire_from, extra, roles)."""
    f = get_form(spec.charge)
    _check_common(spec, f)
    _finite(spec.v_init, f"neuron charge form {f.name!r}: v_init")
    return f


def build(spec: Any) -> NeuronGraph:
    """The :class:`NeuronGraph` of ``spec`` (cached by the spec's contents).

    Programs ask for it on every layer call (the reference's per-step loop, the
    kernels' derived quantities), so the same spec object is answered from a cache
    by identity first (specs are frozen values); the content key is the JSON of
    the spec's fields read directly (``to_dict``'s deep copy cost more than the
    lookup it keyed).
    """
    hit = _BY_ID.get(id(spec))
    if hit is not None and hit[0]() is spec:
        return hit[1]
    fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
    if fields.get("program") is None:
        fields.pop("program", None)
    graph = _build(json.dumps(fields, sort_keys=True))
    key = id(spec)
    try:
        ref = weakref.ref(spec, lambda dead, key=key: _forget(key, dead))
    except TypeError:  # not weak-referenceable: content lookups only
        return graph
    _BY_ID[key] = (ref, graph)
    return graph


#: id(spec) -> (weak reference to the spec, its graph): :func:`build`'s identity cache. An
#: entry leaves with its spec (the reference's callback), never before. Why: a live
#: program's specs must stay found by identity. A call traced by torch.compile that missed
#: here reached the JSON key, which dynamo cannot trace: a graph break, an error under
#: fullgraph=True. The cache used to be cleared whole at 1024 specs, which a long process
#: (a sweep, a test run) reaches.
_BY_ID: dict[int, tuple[Any, NeuronGraph]] = {}


def _forget(key: int, dead: Any) -> None:
    """Drop ``key``'s entry if it is still the one ``dead`` (a spec now gone) made."""
    entry = _BY_ID.get(key)
    if entry is not None and entry[0] is dead:
        del _BY_ID[key]


@lru_cache(maxsize=512)
def _build(key: str) -> NeuronGraph:
    from snncc.ir import surrogates
    from snncc.ir.neuron import NeuronSpec

    spec = NeuronSpec.from_dict(json.loads(key))
    f = check_spec(spec)
    b = NeuronBuilder(spec, f)
    f.define(b)
    info = b.info
    missing = [v for v in info.state if v not in b.next_state]
    if missing:
        raise IRError(f"form {f.name!r} does not set the state {missing}")
    if spec.output not in b.outputs:
        raise UnsupportedError(
            f"neuron output {spec.output!r} is not available for charge form {f.name!r} "
            f"(it has: {', '.join(b.outputs)})"
        )
    roles = info.roles

    def first_role(q: str) -> int:
        return min((roles.index(r) for r in b._q_roles[q] if r in roles), default=len(roles))

    order = sorted(b._quantities, key=first_role)  # kernel arguments in the roles' order
    g = NeuronGraph(
        form=f.name,
        info=info,
        derive=b.derive,
        quantities={q: b._quantities[q] for q in order},
        quantity_roles={q: b._q_roles[q] for q in order},
        step=b.step,
        states=info.state,
        inits={v: _init(spec, info, v, b.inits) for v in info.state},
        ports=info.ports,
        next_state=dict(b.next_state),
        outputs=dict(b.outputs),
        out=spec.output,
    )
    if g.fires:
        surrogates.check_alpha(spec.surrogate, float(spec.alpha), spec.surrogate_params)
    return g


def get_form(name: str) -> Form:
    from snncc.ir import neurons  # noqa: F401 - the modules register their forms on import

    f = REGISTRY.get(name)
    if f is None:
        raise UnsupportedError(
            f"neuron charge form {name!r} is not defined (no fused kernel, no torch lowering); "
            f"defined forms: {', '.join(REGISTRY)}"
        )
    return f
