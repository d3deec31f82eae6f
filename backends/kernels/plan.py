"""How one neuron layer's fused kernels work: what they save, read and take, from its definition.

Every neuron layer gets the same two kernels, whatever its form: a forward
that runs the step over all T steps with the state in registers, and a
backward that runs time in reverse applying the step's vector-Jacobian
product, derived from the form's expression graph (:func:`snncc.ir.expr.vjp`).
What differs between forms is data this module works out:

- the *quantities*: the derived per-sequence values that come from node
  params (kernel arguments with a stride: one value or one per neuron, and a
  per-neuron double gradient sum); everything else is an exact fp32 literal;
- the *save plan*: what the forward keeps for the backward, the cheapest of
  ``"none"`` (the backward needs no forward value: a linear leaky integrator),
  ``"cut"`` (one value per step that every result of the step is computed
  from, e.g. SpikingJelly's charged membrane ``h``: the backward rebuilds the
  state before step t from the cut of step t-1) and ``"state"`` (every state
  variable before each step; the backward re-runs the step);
- whether the backward reads the inputs again (``x``, ``rec``: only where the
  derivative needs them).

``recompute`` saves nothing: a cut-plan backward with fp32 ``x`` first re-runs
the forward inside the kernel, parking the cut in ``gx`` (which it overwrites
step by step afterwards); otherwise the backward gets what it reads from a
second forward launch by the host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import Any

from snncc.errors import UnsupportedError
from snncc.ir import expr as E
from snncc.ir.expr import Namer
from snncc.ir.neuron import NeuronSpec
from snncc.ir.neurons import NeuronGraph, build

from .lower_c import C_RESERVED, Lowered, f32_literal, lower

#: flags that keep nvcc / NVRTC from contracting a*b+c into an FMA (which rounds once)
NVCC_EXACT_FLAGS: tuple[str, ...] = ("-fmad=false",)
#: the same for the host compiler (GCC/Clang); never add -ffast-math / -Ofast
HOST_EXACT_FLAGS: tuple[str, ...] = ("-ffp-contract=off", "-fno-fast-math")
TARGETS = ("cuda", "cpu")
#: bump when the generated code changes meaning, so caches keyed by name invalidate
KERNEL_ABI_VERSION = 3  # 3: one kernel family lowered from the forms' expression graphs
#: kernel I/O dtypes -> the C element type the templates declare
C_TYPES = {
    "float32": "float",
    "uint8": "unsigned char",
    "bfloat16": "snncc_bf16",
    "float16": "snncc_f16",
}
_PTR_TYPES = {
    "float32": "float*",
    "uint8": "uint8*",
    "bfloat16": "snncc_bf16*",
    "float16": "snncc_f16*",
}
#: 16-bit float dtypes the kernels read (x, gy) and write (out, gx)
HALF_DTYPES = ("bfloat16", "float16")
#: renderer options and their defaults
DEFAULT_OPTIONS: dict[str, Any] = {
    # dtype of the output: "float32"; "uint8" (4x less traffic; a spiking output
    # without an epilogue only, so the values are exactly 0/1); "bfloat16" / "float16"
    # (2x less; any output, rounded to nearest even as torch's cast would round it)
    "spike_dtype": "float32",
    # dtype of the input x the forward reads and of its gradient gx the backward
    # writes: "float32", "bfloat16" or "float16" (autocast: the kernel widens on load
    # and rounds gx as torch's cast would; arithmetic stays fp32)
    "x_dtype": "float32",
    # backward recomputes what the forward would have saved, instead of reading it
    "recompute": False,
}


@dataclass(frozen=True)
class NeuronKernelInfo:
    """How to call the rendered kernels: names, argument lists, what each needs.

    ``forward_args`` / ``backward_args`` are ``(name, ctype)`` pairs in call
    order; ctype is one of ``"const float*"``, ``"float*"``, ``"uint8*"``,
    ``"const snncc_bf16*"``, ``"snncc_bf16*"``, ``"const snncc_f16*"``,
    ``"snncc_f16*"`` (bfloat16 / float16 as raw 16-bit words), ``"double*"``,
    ``"float"``, ``"int"``, ``"int64"``. Pointer arguments documented as
    nullable may be NULL. Arrays are contiguous and time-major: ``[T, N]`` with
    N = every per-step element (batch included), except ``gy``, read at
    ``t * gy_ts + n * gy_ns`` (any strides: a broadcast gradient is read in
    place). Each quantity ``q`` is ``p_<q>`` (fp32) with ``st_<q>`` (0: one
    value, 1: one per neuron); its gradient ``gp_<q>`` is ``double[N]``, one sum
    over time per neuron, reduced by the host (the same on both targets).
    """

    tag: str
    forward_name: str
    backward_name: str
    #: input port of each add step, in a<j> order (prologue steps first)
    add_ports: tuple[int, ...]
    #: how many of the add steps belong to the prologue (the rest: epilogue)
    n_prologue_adds: int
    #: dtype of the forward kernel's ``out`` (and the backward's ``gy``)
    out_dtype: str
    #: the forward saves one cut value per step (``h_seq``) unless recompute
    needs_h: bool
    #: the backward recomputes what the forward would have saved
    recompute: bool
    #: the backward reads x (and the prologue add inputs) again
    backward_reads_x: bool
    #: the form has a quantity ``k`` (SpikingJelly PLIF's decay)
    learns_k: bool
    forward_args: tuple[tuple[str, str], ...]
    backward_args: tuple[tuple[str, str], ...]
    #: the one kernel family ("expr": lowered from the form's expression graph)
    family: str = "expr"
    #: state variables in argument order (``<var>0``, ``<var>_seq``, ``<var>_last``, ...)
    state_vars: tuple[str, ...] = ("v",)
    #: the form reads input port 1 (``rec``; its gradient ``grec``)
    has_rec: bool = False
    #: the quantities passed as arguments (``p_<q>``, ``st_<q>``, ``gp_<q>``)
    param_args: tuple[str, ...] = ()
    #: the node param roles each quantity is derived from (first role)
    param_roles: tuple[str, ...] = ()
    #: dtype of ``x`` (forward and backward) and ``gx``
    x_dtype: str = "float32"
    #: "none", "cut" or "state" (see the module docstring)
    save: str = "none"
    #: the form's input ports (``x``, then e.g. ``rec``)
    ports: tuple[str, ...] = ("x",)
    #: the state sequences the forward saves for the backward (save plan "state")
    saves_state: bool = False
    #: the output is a spike straight from a comparison: exactly 0 or 1 (uint8 allowed)
    out_binary: bool = False
    #: recompute inside the backward kernel (cut plan, fp32 x: the cuts are parked in gx);
    #: otherwise the host re-runs the forward kernel into a buffer first
    recompute_in_kernel: bool = False


@dataclass(frozen=True)
class StepCode:
    """The C text of one form's step and vector-Jacobian product (for neuron_step.cuh.j2)."""

    #: the step's parameters in order: (C name, what) pairs after ``p``
    step_params: tuple[str, ...]
    step_lines: tuple[str, ...]
    #: result field -> C expression (``out``, each state variable, ``cut``)
    step_results: dict[str, str]
    vjp_params: tuple[str, ...]
    vjp_lines: tuple[str, ...]
    #: adjoint field (``d_x``, ``d_v``, ``d_<q>``...) -> C expression
    vjp_results: dict[str, str]
    #: cut plan: the state after the step computed from the cut alone
    from_cut_lines: tuple[str, ...] = ()
    from_cut_results: dict[str, str] = field(default_factory=dict)
    #: the adjoint of the state after the step of the carry (chunked backward: a_t)
    unused_step: tuple[str, ...] = ()
    unused_vjp: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    spec: NeuronSpec
    graph: NeuronGraph
    prologue: list[dict]
    epilogue: list[dict]
    options: dict[str, Any]
    info: NeuronKernelInfo
    code: StepCode
    #: the state values the forward starts from (fp32 literals)
    inits: dict[str, str]
    #: the ports (after x) the backward's VJP reads, and whether it reads x
    vjp_reads: frozenset[str]
    #: the VJP reads the state before the step (cut plan: rebuilt from the previous cut)
    vjp_reads_state: bool
    #: the VJP reads the cut (cut plan)
    vjp_reads_cut: bool
    summary: str


# ------------------------------------------------------------------ options
def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(DEFAULT_OPTIONS)
    for key, value in (options or {}).items():
        if key not in DEFAULT_OPTIONS:
            raise UnsupportedError(
                f"unknown neuron kernel option {key!r}; supported: {', '.join(DEFAULT_OPTIONS)}"
            )
        opts[key] = value
    if opts["spike_dtype"] not in ("float32", "uint8", *HALF_DTYPES):
        raise UnsupportedError(
            f"neuron kernel option spike_dtype={opts['spike_dtype']!r}; supported: "
            f"'float32', 'uint8', {', '.join(map(repr, HALF_DTYPES))}"
        )
    if opts["x_dtype"] not in ("float32", *HALF_DTYPES):
        raise UnsupportedError(
            f"neuron kernel option x_dtype={opts['x_dtype']!r}; supported: 'float32', "
            f"{', '.join(map(repr, HALF_DTYPES))}"
        )
    opts["recompute"] = bool(opts["recompute"])
    return opts


def gy_dtype(out_dtype: str) -> str:
    """The backward's ``gy`` dtype: the output's, except uint8 outputs (inference only,
    not differentiable; their unused backward keeps fp32)."""
    return "float32" if out_dtype == "uint8" else out_dtype


def _steps(
    steps: Sequence[Mapping[str, Any]], where: str, first_add: int, min_port: int = 1
) -> list[dict]:
    """Validate ir/ops.py prologue/epilogue steps and format them for the templates.

    ``min_port``: the first port after the form's own input ports (an add step
    reading port 1 of a form whose port 1 is ``rec`` would alias it).
    """
    out: list[dict] = []
    j = first_add
    for st in steps:
        kind = st.get("kind")
        if kind == "scale":
            op = {"mul": "*", "div": "/"}.get(st.get("op"))
            if op is None:
                raise UnsupportedError(
                    f"neuron {where} scale op {st.get('op')!r} is not 'mul' or 'div'"
                )
            out.append({"kind": "scale", "op": op, "value": f32_literal(float(st["value"]))})
        elif kind == "add":
            port = st.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or port < min_port:
                raise UnsupportedError(
                    f"neuron {where} add step needs an int port >= {min_port} (after the "
                    f"form's own input ports), got {port!r}"
                )
            out.append({"kind": "add", "arg": f"a{j}", "port": port})
            j += 1
        else:
            raise UnsupportedError(
                f"neuron {where} step kind {kind!r} cannot be fused; supported: 'scale', 'add'"
            )
    return out


def _kernel_tag(**rendered_from: Any) -> str:
    """The hash that names a kernel (and so keys the compile caches): everything its source
    is rendered from, and nothing else.

    Why not the spec: specs that differ only where the kernels never look (the model's
    name, a value passed at run time such as snnTorch's ``beta``, which params learn)
    render the same source; named by their content they share one kernel, one build and
    one entry in every cache (the test suite built some 50 such twins). ``rendered_from``
    holds every value the templates read (:func:`snncc.backends.kernels.context`), with
    the names left empty; ``tests/test_kernels.py`` checks over the form matrix that equal
    tags mean equal sources and equal sources equal tags.
    """
    body = {"abi": KERNEL_ABI_VERSION, **rendered_from}
    key = json.dumps(body, sort_keys=True, default=_jsonable)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    """Dataclasses and sets in a tag's body, as JSON sees them (sets sorted)."""
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"a kernel tag cannot hash {type(value).__name__}")


# ---------------------------------------------------------------- analysis
def grad_deps(g: E.Graph, root: int) -> set[str]:
    """The inputs a gradient at ``root`` reaches (paths through comparisons and detach cut)."""
    seen: set[int] = set()
    found: set[str] = set()
    stack = [root]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        n = g.nodes[i]
        if n.op == "input":
            found.add(n.name)
        elif n.op not in E.NO_GRAD:
            stack.extend(n.args)
    return found


def _results(ng: NeuronGraph) -> dict[str, E.Operand]:
    """The step's results by field name: ``out`` and each state variable."""
    return {"out": ng.outputs[ng.out], **{var: ng.next_state[var] for var in ng.states}}


def _input_names(g: E.Graph, roots: Sequence[int]) -> set[str]:
    return {g.nodes[i].name for i in g.ancestors(roots) if g.nodes[i].op == "input"}


def _cut_candidates(ng: NeuronGraph) -> list[int]:
    """Step nodes every result is computed from alone (with the quantities), latest first."""
    g = ng.step
    res = [v.i for v in _results(ng).values() if isinstance(v, E.Val)]
    if not res:
        return []
    out = []
    for c in sorted(g.ancestors(res), reverse=True):
        if g.nodes[c].op in ("input", "const"):
            continue
        reach = E._ancestors_until(g, res, {c})
        names = {g.nodes[i].name for i in reach if g.nodes[i].op == "input"}
        if all(n.startswith("q:") for n in names) and c in reach:
            out.append(c)
    return out


@dataclass
class _Vjp:
    graph: E.Graph
    #: adjoint field -> value (or None: unreachable)
    adjoints: dict[str, E.Operand | None]
    inputs: set[str]


def _vjp(ng: NeuronGraph, cut: int | None) -> _Vjp:
    """The step's VJP; with a cut, rewritten to read the cut instead of what it came from."""
    g = ng.step
    results = {k: v.i for k, v in _results(ng).items() if isinstance(v, E.Val)}
    inputs = g.inputs()
    wrt_names = [f"x:{p}" for p in ng.ports] + [f"s:{v}" for v in ng.states]
    wrt_names += [f"q:{q}" for q in ng.quantities]
    wrt = [inputs[n] for n in wrt_names if n in inputs]
    bg, fwd, adj = E.vjp(g, results, wrt)
    fields: dict[str, E.Operand | None] = {}
    for name in wrt_names:
        i = inputs.get(name)
        fields["d_" + name.split(":", 1)[1]] = None if i is None else adj[i]
    roots = [v.i for v in fields.values() if isinstance(v, E.Val)]
    if cut is None:
        return _Vjp(bg, fields, _input_names(bg, roots))
    h = E.Graph()
    cut_in = h.input("c", "cut")
    copied = E.rebuild(bg, roots, h, replace={fwd[cut].i: cut_in})  # type: ignore[union-attr]
    out: dict[str, E.Operand | None] = {}
    for k, v in fields.items():
        out[k] = copied[v.i] if isinstance(v, E.Val) else v
    new_roots = [v.i for v in out.values() if isinstance(v, E.Val)]
    return _Vjp(h, out, _input_names(h, new_roots))


def _choose_save(ng: NeuronGraph) -> tuple[str, int | None, _Vjp]:
    """The cheapest save plan (see the module docstring) and its VJP."""
    state = _vjp(ng, None)
    state_needs = {n for n in state.inputs if n[:2] in ("s:", "x:")}
    if not state_needs:
        return "none", None, state
    best = ("state", None, state, len(state_needs))
    for c in _cut_candidates(ng):
        v = _vjp(ng, c)
        needs = {n for n in v.inputs if n[:2] in ("c:", "x:")}
        if any(n.startswith("s:") for n in v.inputs):
            needs.add("c:cut")  # the state before step t is rebuilt from the cut of step t-1
        if not needs:
            return "none", None, v
        if len(needs) <= best[3]:
            best = ("cut", c, v, len(needs))
            break  # the latest cut is the one the step's results come from directly
    return best[0], best[1], best[2]


# ------------------------------------------------------------------- plan
def plan(
    spec: NeuronSpec | Mapping[str, Any],
    prologue: Sequence[Mapping[str, Any]] = (),
    epilogue: Sequence[Mapping[str, Any]] = (),
    options: Mapping[str, Any] | None = None,
) -> Plan:
    """Everything the templates and the host need to render and call one layer's kernels."""
    spec = spec if isinstance(spec, NeuronSpec) else NeuronSpec.from_dict(dict(spec))
    ng = build(spec)
    opts = _options(options)
    first_port = len(ng.ports)
    pro = _steps(prologue, "prologue", 0, first_port)
    n_pro = sum(st["kind"] == "add" for st in pro)
    epi = _steps(epilogue, "epilogue", n_pro, first_port)
    if opts["spike_dtype"] == "uint8" and (not ng.binary_output or epi):
        raise UnsupportedError(
            "neuron kernel option spike_dtype='uint8' needs a spiking output without an "
            "epilogue (the output must be exactly 0/1): charge form "
            f"{spec.charge!r} with output {spec.output!r} gives other values; 'float32' or a 16-bit"
        )
    save, cut, vjp = _choose_save(ng)
    recompute = opts["recompute"] and save != "none"
    # a cut plan's backward re-runs the forward itself, parking the cuts in an fp32 gx;
    # otherwise the host re-runs the forward kernel into a buffer first
    in_kernel = recompute and save == "cut" and opts["x_dtype"] == "float32"
    vjp_reads = frozenset(n.split(":", 1)[1] for n in vjp.inputs if n.startswith("x:"))
    reads_state = any(n.startswith("s:") for n in vjp.inputs)
    reads_cut = "c:cut" in vjp.inputs
    reads_x = "x" in vjp_reads or recompute or save == "state"
    code = _step_code(ng, cut, vjp)
    adds = [st for st in pro + epi if st["kind"] == "add"]
    names = [st["arg"] for st in adds]
    svars = ng.states
    qs = tuple(ng.quantities)
    x_c, out_c = _PTR_TYPES[opts["x_dtype"]], _PTR_TYPES[opts["spike_dtype"]]
    gy_c = _PTR_TYPES[gy_dtype(opts["spike_dtype"])]
    others = ng.ports[1:]
    params = tuple(a for q in qs for a in ((f"p_{q}", "const float*"), (f"st_{q}", "int64")))
    fwd_args = (
        ("x", f"const {x_c}"),
        *((p, "const float*") for p in others),
        *((a, "const float*") for a in names),
        *((f"{v}0", "const float*") for v in svars),
        *params,
        ("out", out_c),
        *((("h_seq", "float*"),) if save == "cut" else ()),
        *(((f"{v}_seq", "float*") for v in svars) if save == "state" else ()),
        *((f"{v}_last", "float*") for v in svars),
        ("T", "int"),
        ("N", "int64"),
    )
    bwd_args = (
        ("gy", f"const {gy_c}"),
        ("gy_ts", "int64"),
        ("gy_ns", "int64"),
        *((f"g{v}_last", "const float*") for v in svars),
        *((("h_seq", "const float*"),) if save == "cut" else ()),
        *(((f"{v}_seq", "const float*") for v in svars) if save == "state" else ()),
        ("x", f"const {x_c}"),
        *((p, "const float*") for p in others),
        *((a, "const float*") for a in names),
        *((f"{v}0", "const float*") for v in svars),
        *params,
        ("gx", x_c),
        *((f"g{p}", "float*") for p in others),
        *((f"g{a}", "float*") for a in names),
        *((f"g{v}0", "float*") for v in svars),
        *((f"gp_{q}", "double*") for q in qs),
        ("T", "int"),
        ("N", "int64"),
    )
    info = NeuronKernelInfo(
        tag="",
        forward_name="",
        backward_name="",
        add_ports=tuple(st["port"] for st in adds),
        n_prologue_adds=n_pro,
        out_dtype=opts["spike_dtype"],
        needs_h=save == "cut",
        recompute=recompute,
        backward_reads_x=reads_x,
        learns_k="k" in qs,
        forward_args=fwd_args,
        backward_args=bwd_args,
        state_vars=svars,
        has_rec="rec" in ng.ports,
        param_args=qs,
        param_roles=tuple(ng.quantity_roles[q][0] for q in qs),
        x_dtype=opts["x_dtype"],
        save=save,
        ports=ng.ports,
        saves_state=save == "state",
        out_binary=ng.binary_output,
        recompute_in_kernel=in_kernel,
    )
    inits = {v: f32_literal(ng.inits[v]) for v in svars}
    summary = kernel_summary(spec, ng)
    # a recompute the host does (it re-runs the forward kernel into a buffer) leaves both
    # kernels' source as it is; only one inside the backward kernel changes it
    tag = _kernel_tag(
        info=replace(info, recompute=in_kernel),
        code=code,
        inits=inits,
        prologue=pro,
        epilogue=epi,
        options={**opts, "recompute": in_kernel},
        vjp_reads=vjp_reads,
        vjp_reads_state=reads_state,
        vjp_reads_cut=reads_cut,
        summary=summary,
        formula=ng.info.summary,
    )
    info = replace(info, tag=tag, forward_name=f"snncc_fwd_{tag}", backward_name=f"snncc_bwd_{tag}")
    return Plan(
        spec=spec,
        graph=ng,
        prologue=pro,
        epilogue=epi,
        options=opts,
        info=info,
        code=code,
        inits=inits,
        vjp_reads=vjp_reads,
        vjp_reads_state=reads_state,
        vjp_reads_cut=reads_cut,
        summary=summary,
    )


def _step_code(ng: NeuronGraph, cut: int | None, vjp: _Vjp) -> StepCode:
    """Lower the step, its VJP and (cut plan) the state-from-cut map to C statements."""
    states, ports = ng.states, ng.ports
    env = {f"s:{v}": f"s_{v}" for v in states}
    env.update({f"x:{p}": f"in_{p}" for p in ports})
    env.update({f"q:{q}": f"p.{q}" for q in ng.quantities})
    step_params = tuple(f"const float s_{v}" for v in states) + tuple(
        f"const float in_{p}" for p in ports
    )
    namer = Namer({*env.values(), *C_RESERVED})
    results = _results(ng)
    roots = [v.i for v in results.values() if isinstance(v, E.Val)]
    if cut is not None:
        roots.append(cut)
    low: Lowered = lower(ng.step, roots, env, namer)

    def ref(v: E.Operand) -> str:
        return low.refs[v.i] if isinstance(v, E.Val) else f32_literal(float(v))

    step_results = {k: ref(v) for k, v in results.items()}
    if cut is not None:
        step_results["cut"] = low.refs[cut]
    used = _input_names(ng.step, roots)
    unused_step = tuple(env[n] for n in env if n not in used and not n.startswith("q:"))

    # the VJP: adjoint inputs g:out and g:<var>, the cut c:cut
    venv = dict(env)
    venv["c:cut"] = "cut"
    venv["g:out"] = "g_out"
    venv.update({f"g:{v}": f"g_{v}" for v in states})
    vnamer = Namer({*venv.values(), *C_RESERVED})
    vroots = [v.i for v in vjp.adjoints.values() if isinstance(v, E.Val)]
    vlow = lower(vjp.graph, vroots, venv, vnamer, prefix="b")
    vjp_params = (
        "const float cut",
        *step_params,
        "const float g_out",
        *(f"const float g_{v}" for v in states),
    )

    def vref(v: E.Operand | None) -> str:
        if v is None:
            return "0.0f"
        return vlow.refs[v.i] if isinstance(v, E.Val) else f32_literal(float(v))

    vjp_results = {k: vref(v) for k, v in vjp.adjoints.items()}
    vused = _input_names(vjp.graph, vroots)
    unused_vjp = tuple(c for n, c in venv.items() if n not in vused and not n.startswith("q:"))

    from_lines: tuple[str, ...] = ()
    from_results: dict[str, str] = {}
    if cut is not None:
        h = E.Graph()
        cut_in = h.input("c", "cut")
        nroots = [ng.next_state[v].i for v in states if isinstance(ng.next_state[v], E.Val)]
        copied = E.rebuild(ng.step, nroots, h, replace={cut: cut_in})
        fnamer = Namer({"cut", *C_RESERVED})
        froots = [copied[i].i for i in nroots if isinstance(copied[i], E.Val)]
        flow = lower(
            h, froots, {"c:cut": "cut", **{f"q:{q}": f"p.{q}" for q in ng.quantities}}, fnamer
        )
        from_lines = flow.lines
        for v in states:
            nv = ng.next_state[v]
            if isinstance(nv, E.Val):
                cv = copied[nv.i]
                from_results[v] = flow.refs[cv.i] if isinstance(cv, E.Val) else f32_literal(cv)
            else:
                from_results[v] = f32_literal(float(nv))
    return StepCode(
        step_params=step_params,
        step_lines=low.lines,
        step_results=step_results,
        vjp_params=vjp_params,
        vjp_lines=vlow.lines,
        vjp_results=vjp_results,
        from_cut_lines=from_lines,
        from_cut_results=from_results,
        unused_step=unused_step,
        unused_vjp=unused_vjp,
    )


def kernel_summary(spec: NeuronSpec, ng: NeuronGraph) -> str:
    """A comment-safe summary: validated names and numbers formatted here only."""
    # a hard reset's value shows: the time-chunked kernels start a chunk from it
    hard = spec.reset == "hard" and spec.v_reset is not None
    parts = [spec.charge, f"hard({float(spec.v_reset)!r})" if hard else spec.reset]
    if spec.reset_delay:
        parts.append("reset_delay")
    if spec.detach_reset:
        parts.append("detach_reset")
    if spec.tau is not None:
        parts.append(f"tau={float(spec.tau)!r}")
    parts.append(f"fire{spec.fire_cmp}")
    parts.append(f"out={spec.output}")
    for q in ng.quantities:
        parts.append(f"{q}=@{ng.quantity_roles[q][0]}")
    # the surrogate shows only where a spike feeds a result: otherwise the code has none of
    # it, and kernels that differ only there keep one name (see _kernel_tag)
    live = ng.step.ancestors(v.i for v in _results(ng).values() if isinstance(v, E.Val))
    if any(ng.step.nodes[i].op == "heaviside" for i in live):
        sp = "".join(f", {k}={float(v)!r}" for k, v in sorted(spec.surrogate_params.items()))
        parts.append(f"{spec.surrogate}({float(spec.alpha)!r}{sp})")
    return " ".join(parts)


def connected(spec: NeuronSpec, T: int, out_used: bool, last_used: Sequence[str]) -> set[str]:
    """Inputs of a T-step run that autograd reaches from the used outputs.

    Names: the state variables (their values at t = -1), the ports (``x``,
    ``rec``) and the quantities. ``out_used``: the output sequence gets a
    gradient; ``last_used``: the final state variables that do. torch gives
    ``None`` (not zeros) to a leaf no path reaches, and so must the kernels' op.
    """
    ng = build(spec)
    g = ng.step

    def deps(v: E.Operand) -> set[str]:
        if not isinstance(v, E.Val):
            return set()
        return {n.split(":", 1)[1] for n in grad_deps(g, v.i)}

    table = {
        "out": deps(ng.outputs[ng.out]),
        **{var: deps(ng.next_state[var]) for var in ng.states},
    }
    state_vars = set(ng.states)
    reached: set[str] = set()
    live = set(last_used)  # state variables after step t that reach the loss
    for _ in range(T):  # t = T-1 down to 0
        step = set(table["out"]) if out_used else set()
        for var in live:
            step |= table[var]
        reached |= step - state_vars
        before = step & state_vars  # ... and before step t
        if before == live:
            break  # every earlier step is this one again
        live = before
    return reached | live
