"""Fold an explicit time loop in a model's forward back into one per-step graph.

snnTorch and Norse models are often written with the time loop inside ``forward``
(SpikingJelly's single-step ones too: SNASNet loops T times over a static image)::

    def forward(self, x):                       # x: [T, B, ...]
        mem1 = self.lif1.init_leaky()
        spk_rec = []
        for step in range(x.size(0)):           # or range(num_steps), for xt in x, ...
            cur1 = self.fc1(x[step])
            spk1, mem1 = self.lif1(cur1, mem1)
            spk_rec.append(spk1)
        return torch.stack(spk_rec)

torch.fx runs such Python code once and records every call, so the trace
holds T copies of the step. The shape-aware trace (:mod:`snncc.frontend.shape_trace`)
answers ``x.size(0)``, ``x.shape``, ``len(x)`` and ``for xt in x`` with the
example's real numbers; this module checks that every step's copy is the
same computation and folds the copies back into ONE per-step graph:

- ``x[step]`` becomes the per-step input (the program is fed ``[T, B, ...]``);
- a list of per-step values stacked along dim 0 (``torch.stack(spk_rec)``)
  becomes an output;
- a state a stateful module returned at step t-1 and got back at step t
  (``mem1`` above, Norse's ``state``) becomes the neuron's internal state,
  which must be fresh at the first step (None, ``init_leaky()`` /
  ``reset_mem()``, zeros);
- a Norse state returned from ``forward`` is dropped (the compiled program
  returns its state from ``CompiledModel.run``);
- a buffer preallocated before the loop and filled one step per iteration
  (``voltages = torch.zeros(T, B, 10)``, ``voltages[ts, :, :] = v``, then
  ``return voltages``: Norse's ``ConvNet``) is the same as ``torch.stack``;
- an input the loop never indexes by step but feeds whole to every step
  (snnTorch tutorial 5: ``cur1 = self.fc1(x)`` inside ``for step in
  range(num_steps)``) is *static*: the program takes ``[B, ...]``, runs
  what depends only on it once, and repeats the result over the loop's
  steps where it meets per-step values (``repeat_time``); the program's
  number of steps is the loop's;
- a sum accumulated over the steps (``acc = 0`` before the loop, ``acc = acc +
  v`` or ``acc += v`` in it, SpikingJelly's ``out_fr += net(x)``) is a
  ``time_reduce`` sum of ``v`` taken in step order, as the loop adds; what
  forward computes from it after the loop (``acc / T``) runs once on that
  static value.

Anything else is refused with an :class:`UnsupportedError` that names the
module and why: a branch on the step index (the steps differ), a value from
an earlier step used other than as a module's state, a state that is not
fresh at the first step or not threaded from the previous step, the whole
input sequence used inside the loop, returning only the last step's value.

If the example has one time step, the loop is traced once more with two
steps, so that how state flows from one step to the next is seen.
"""

from __future__ import annotations

import hashlib
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from snncc.errors import SnnccError, UnsupportedError
from snncc.frontend import tracer as tr

STATIC = -1  # does not depend on the input (parameters, constants, initial states)
WHOLE = -2  # depends on the whole input sequence, not on one step of it
COLLECTOR = -3  # combines values of several steps (torch.stack of per-step values)
INVARIANT = -4  # depends only on static inputs (fed whole at every step): the same each step
AFTER = -5  # computed after the loop from a sum it accumulated: static, once


# --------------------------------------------------------------------------- detection


def _loop_frameworks(model: nn.Module) -> bool:
    for m in model.modules():
        fw = tr.framework_of(m)
        if fw is not None and fw.loops(m):
            return True
    return False


def wants_fold(model: nn.Module, gm: fx.GraphModule) -> bool:
    """Whether ``model`` (using snnTorch / Norse modules) holds a time loop to fold.

    Yes when its trace indexes an input by an integer (``x[step]``, ``for xt in
    x``) or calls a stateful snnTorch / Norse / single-step SpikingJelly module more
    than once.
    """
    if not _loop_frameworks(model):
        return False
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if _time_slice(n, inputs) is not None:
            return True
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            fw = tr.framework_of(m)
            if fw is not None and fw.loops(m) and fw.stateful(m):
                counts[n.target] = counts.get(n.target, 0) + 1
                if counts[n.target] > 1:
                    return True
    return False


def _time_slice(n: fx.Node, inputs: list[fx.Node]) -> tuple[int, int, tuple] | None:
    """``(input index, t, rest of the index)`` for ``x[t]`` / ``x[t, ...]`` on an input."""
    if n.op != "call_function" or n.target is not operator.getitem:
        return None
    base, index = n.args[0], n.args[1]
    if _unbinds_input(base, inputs) and isinstance(index, int) and not isinstance(index, bool):
        return inputs.index(base.args[0]), index, ()  # for xt in x.unbind(0)
    if base not in inputs:
        return None
    rest: tuple = ()
    if isinstance(index, tuple) and index and isinstance(index[0], int):
        index, rest = index[0], tuple(index[1:])
        while rest and rest[-1] in (slice(None), Ellipsis):
            rest = rest[:-1]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return None
    return inputs.index(base), index, rest


def _unbinds_input(n: Any, inputs: list[fx.Node]) -> bool:
    """``x.unbind(0)`` / ``torch.unbind(x)`` of an input."""
    if not isinstance(n, fx.Node) or n.op not in ("call_method", "call_function"):
        return False
    if n.target not in ("unbind", torch.unbind) or not n.args or n.args[0] not in inputs:
        return False
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    return dim == 0


def sum_over_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Marks a sum a folded loop accumulated over its ``steps`` (``acc = acc + x`` per step);
    the converter makes it a ``time_reduce`` sum in step order, a static value."""
    return x


def repeat_over_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Marks where a static value (the same at every step) meets per-step values in a folded
    loop; the converter makes it a ``repeat_time`` node (per step it is ``x`` itself)."""
    return x


# --------------------------------------------------------------------------- analysis


@dataclass
class _Call:
    """A stateful module call with its arguments split into the input(s) and the state."""

    module: nn.Module
    state: tr.StateArgs
    main: list[Any]  # the non-state arguments, in forward's parameter order
    values: dict[str, Any]  # state name -> the value passed (fx node, None, constant)


@dataclass
class _Loop:
    gm: fx.GraphModule
    inputs: list[fx.Node]
    labels: dict[fx.Node, int] = field(default_factory=dict)
    slices: dict[fx.Node, tuple[int, int, tuple]] = field(default_factory=dict)
    calls: dict[fx.Node, _Call] = field(default_factory=dict)
    steps: list[list[fx.Node]] = field(default_factory=list)
    index: list[dict[fx.Node, int]] = field(default_factory=list)
    inits: list[tuple[fx.Node, str, Any]] = field(default_factory=list)
    #: buffer attribute -> (step, written value, the write node) for ``buf[t] = v``
    writes: dict[str, list[tuple[int, fx.Node, fx.Node]]] = field(default_factory=dict)
    #: inputs fed whole to every step (never indexed by step): static, [B, ...]
    static_inputs: frozenset[int] = frozenset()
    #: module -> how many of its calls were fed only static values (the k-th is step k)
    fresh_calls: dict[str, int] = field(default_factory=dict)
    #: a sum accumulated over the steps: each of its nodes -> (the sum so far, or None at
    #: step 0, where it adds to the initial zero; the step's value added)
    sums: dict[fx.Node, tuple[fx.Node | None, fx.Node]] = field(default_factory=dict)
    #: the last step's node of each accumulated sum (what forward reads after the loop)
    sum_finals: list[fx.Node] = field(default_factory=list)
    #: (a sum's step-0 node, the tensor it starts from), which must be zeros
    sum_inits: list[tuple[fx.Node, fx.Node]] = field(default_factory=list)


def _nodes(a: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(a, out.append)
    return out


def _what(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return f"module '{n.target}' ({tr.type_name(gm.get_submodule(n.target))})"
    src = n.meta.get("snncc_src", "")
    where = f" [{src}]" if src else ""
    if n.op in ("call_function", "call_method"):
        return f"{tr._target_name(n)}{where}"
    return f"{n.op} {n.name}"


def _bind(gm: fx.GraphModule, n: fx.Node) -> _Call | None:
    """Split a stateful module call's arguments, or None for other nodes."""
    if n.op != "call_module":
        return None
    m = gm.get_submodule(n.target)
    fw = tr.framework_of(m)
    sa = fw.state_args(m) if fw is not None else None
    if sa is None:
        return None
    try:
        bound = inspect.signature(m.forward).bind(*n.args, **n.kwargs)
    except TypeError as e:
        raise UnsupportedError(f"{_what(gm, n)}: cannot read its arguments ({e})") from e
    main = [v for k, v in bound.arguments.items() if k not in sa.names]
    values = {k: bound.arguments.get(k) for k in sa.names}
    return _Call(m, sa, main, values)


def _buffer_write(n: fx.Node) -> tuple[str, Any, fx.Node] | None:
    """``buf[index] = value`` on a tensor made before the loop: (buffer, index, value)."""
    if n.op != "call_method" or n.target != "__setitem__" or len(n.args) != 3:
        return None
    buf, index, value = n.args
    if not isinstance(buf, fx.Node) or buf.op != "get_attr" or not isinstance(value, fx.Node):
        return None
    return str(buf.target), index, value


def _write_step(index: Any) -> tuple[int, tuple] | None:
    """``(t, rest)`` for an index ``t``, ``(t, :, ..., :)`` or ``(t, ...)`` (rest: slices)."""
    rest: tuple = ()
    if isinstance(index, tuple) and index:
        index, rest = index[0], tuple(index[1:])
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return None
    if any(r not in (slice(None), Ellipsis) for r in rest):
        return None
    return index, rest


def _analyse(gm: fx.GraphModule) -> _Loop:
    """Label every node with its step (or STATIC / WHOLE / COLLECTOR / INVARIANT) and group
    the steps."""
    lp = _Loop(gm, [n for n in gm.graph.nodes if n.op == "placeholder"])
    sliced = {ts[0] for n in gm.graph.nodes if (ts := _time_slice(n, lp.inputs)) is not None}
    lp.static_inputs = frozenset(i for i in range(len(lp.inputs)) if i not in sliced)
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            static = lp.inputs.index(n) in lp.static_inputs
            lp.labels[n] = INVARIANT if static else WHOLE
            continue
        if n.op == "get_attr":
            lp.labels[n] = STATIC
            continue
        if n.op == "output":
            continue
        ts = _time_slice(n, lp.inputs)
        if ts is not None:
            lp.slices[n] = ts
            lp.labels[n] = ts[1]
            continue
        call = _bind(gm, n)
        if call is not None:
            lp.calls[n] = call
            main = {lp.labels[a] for a in _nodes(call.main)}
            state = {lp.labels[a] for a in _nodes(list(call.values.values()))}
            if WHOLE in main | state:
                lp.labels[n] = WHOLE
                continue
            steps = {t for t in main if t >= 0} | {t + 1 for t in state if t >= 0}
            if COLLECTOR in main | state or len(steps) > 1:
                raise UnsupportedError(
                    f"{_what(gm, n)} is called with an input and a state from inconsistent "
                    "time steps; inside a time loop a module gets this step's input and the "
                    "state it returned at the previous step"
                )
            if call.state.internal_ok and all(v is None for v in call.values.values()):
                # a module keeping its own state (snnTorch init_hidden, SpikingJelly) advances
                # one step per call: its k-th call is step k, whatever it is fed (static values)
                k = lp.fresh_calls.get(str(n.target), 0)
                lp.fresh_calls[str(n.target)] = k + 1
                if steps and steps != {k}:
                    early = next(a for a in _nodes(call.main) if lp.labels[a] in steps - {k})
                    raise _cross_step(gm, n, k, early, lp.labels[early])
                steps = {k}
            elif not steps:
                k = lp.fresh_calls.get(str(n.target), 0)
                lp.fresh_calls[str(n.target)] = k + 1
                steps = {k}
            lp.labels[n] = steps.pop()
            continue
        write = _buffer_write(n)
        if write is not None:
            target, index, value = write
            step = _write_step(index)
            if step is None or lp.labels.get(value, STATIC) < 0:
                raise UnsupportedError(
                    f"{_what(gm, n)} writes into buffer {target!r} at {index!r}; supported: "
                    "one whole time step per loop iteration (buf[t] = v, buf[t, :, :] = v) "
                    "with a value computed at that step"
                )
            if step[0] != lp.labels[value]:
                raise UnsupportedError(
                    f"{_what(gm, n)} writes the value of time step {lp.labels[value]} into "
                    f"{target}[{step[0]}]; snncc folds buffers filled one step per iteration "
                    "at that step's index"
                )
            lp.writes.setdefault(target, []).append((step[0], value, n))
            lp.labels[n] = step[0]
            continue
        labels = {lp.labels[a] for a in _nodes((n.args, n.kwargs))}
        if WHOLE in labels:
            lp.labels[n] = WHOLE
            continue
        steps = {t for t in labels if t >= 0}
        if _stacks_steps(n, lp.labels):
            lp.labels[n] = COLLECTOR
            continue
        if COLLECTOR in labels:
            raise UnsupportedError(
                f"{_what(gm, n)} uses values stacked over time steps; snncc compiles the loop "
                "body as a per-step program, so return the stacked values unchanged "
                "(reduce over time outside the model, e.g. on the compiled model's output)"
            )
        if len(steps) > 1 and _accumulates(lp, n):
            lp.labels[n] = max(steps)
            continue
        if len(steps) > 1:
            t = max(steps)
            early = next(a for a in _nodes((n.args, n.kwargs)) if lp.labels[a] in steps - {t})
            raise _cross_step(gm, n, t, early, lp.labels[early])
        if steps:
            lp.labels[n] = steps.pop()
        else:
            lp.labels[n] = INVARIANT if INVARIANT in labels else STATIC
    _check_whole_and_collectors(lp)
    _check_buffers(lp)
    _label_after_sums(lp)
    n_steps = 1 + max((t for t in lp.labels.values() if t >= 0), default=-1)
    lp.steps = [[] for _ in range(n_steps)]
    for n in gm.graph.nodes:
        t = lp.labels.get(n)
        if t is not None and t >= 0:
            lp.steps[t].append(n)
    for t, nodes in enumerate(lp.steps):
        if not nodes:
            raise UnsupportedError(
                f"{tr.type_name(gm)}.forward computes nothing at time step {t}; every step "
                "of the loop must run the same computation"
            )
    lp.index = [{n: i for i, n in enumerate(nodes)} for nodes in lp.steps]
    return lp


#: the additions a loop accumulates with (``acc + v``, ``acc += v``, ``torch.add``, ``.add``)
_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}


def _addition(n: fx.Node) -> tuple[Any, Any] | None:
    """The two operands of a plain addition (no ``alpha``, no ``out``), else None."""
    if n.op not in ("call_function", "call_method") or n.target not in _ADDS:
        return None
    if len(n.args) != 2 or n.kwargs:
        return None
    return n.args[0], n.args[1]


def _is_zero(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def _accumulates(lp: _Loop, n: fx.Node) -> bool:
    """Whether ``n`` at step t adds this step's value to the sum so far (``acc + v``), the sum
    so far being the same addition at step t-1 (at step 0: ``0 + v``). Records the sum."""
    ops = _addition(n)
    if ops is None or not all(isinstance(a, fx.Node) for a in ops):
        return False
    t = max(lp.labels[a] for a in ops)
    prev = next((a for a in ops if lp.labels[a] == t - 1), None)
    value = next((a for a in ops if lp.labels[a] == t), None)
    if prev is None or value is None or value in lp.sums:
        return False
    if prev not in lp.sums:  # the sum's first node: 0 (or zeros) + the value of step 0
        first = _addition(prev)
        if t != 1 or first is None:
            return False
        start = [a for a in first if isinstance(a, fx.Node) and lp.labels[a] == 0]
        init = [a for a in first if not (isinstance(a, fx.Node) and lp.labels[a] == 0)]
        if len(start) != 1 or len(init) != 1 or start[0] in lp.sums:
            return False
        if not (
            _is_zero(init[0]) or (isinstance(init[0], fx.Node) and lp.labels[init[0]] == STATIC)
        ):
            return False
        lp.sums[prev] = (None, start[0])
        if isinstance(init[0], fx.Node):
            lp.sum_inits.append((prev, init[0]))
    lp.sums[n] = (prev, value)
    return True


def _label_after_sums(lp: _Loop) -> None:
    """Each sum's last node is what forward reads after the loop; what it computes from it
    (``acc / T``) is AFTER the loop. A sum read inside the loop, or mixed after it with a value
    of one step, is refused."""
    gm = lp.gm
    prevs = {prev for prev, _ in lp.sums.values() if prev is not None}
    lp.sum_finals = [n for n in lp.sums if n not in prevs]
    for n in lp.sums:
        if n in prevs and len(n.users) != 1:  # its next step's addition, and something else
            nxt = [u for u in n.users if lp.sums.get(u, (None,))[0] is n][:1]
            other = next(u for u in n.users if u not in nxt)
            raise UnsupportedError(
                f"{_what(gm, other)} reads the sum {_what(gm, n)} accumulates while the loop "
                "still adds to it; snncc folds a sum over time steps that forward reads "
                "after the loop only"
            )
    after = set(lp.sum_finals)
    for n in gm.graph.nodes:
        if n in after or n.op == "output" or n in lp.sums:
            continue
        args = _nodes((n.args, n.kwargs))
        if not any(a in after for a in args):
            continue
        mixed = [a for a in args if a not in after and lp.labels[a] not in (STATIC, INVARIANT)]
        if mixed:
            raise UnsupportedError(
                f"{_what(gm, n)} combines a sum accumulated over the loop's steps with "
                f"{_what(gm, mixed[0])}, a value of one step; supported after the loop: the sum "
                "and values that do not depend on the step"
            )
        lp.labels[n] = AFTER
        after.add(n)


def _cross_step(
    gm: fx.GraphModule, n: fx.Node, t: int, arg: fx.Node, t_arg: int
) -> UnsupportedError:
    return UnsupportedError(
        f"{_what(gm, n)} at time step {t} uses a value computed at time step {t_arg} "
        f"({_what(gm, arg)}) other than as a module's state; snncc folds a time loop whose "
        "steps only pass neuron state to each other (use a recurrent neuron such as "
        "snntorch.RLeaky or norse LIFRecurrentCell for recurrence)"
    )


def _check_whole_and_collectors(lp: _Loop) -> None:
    gm = lp.gm
    for n in gm.graph.nodes:
        label = lp.labels.get(n)
        if label == WHOLE and n.op != "placeholder":
            bad = [
                u
                for u in n.users
                if u not in lp.slices
                and (u.op == "output" or lp.labels.get(u) not in (WHOLE, None))
            ]
            if bad:
                raise UnsupportedError(
                    f"{_what(gm, n)} uses the whole input sequence inside the time loop; snncc "
                    "compiles the loop body as a per-step program: read the input one step at a "
                    "time (x[step], for xt in x)"
                )
        if label == COLLECTOR:
            if n.target is not torch.stack or _stack_dim(n) != 0:
                raise UnsupportedError(
                    f"{_what(gm, n)} combines values of different time steps; supported: a "
                    "neuron's state threaded from one step to the next, and torch.stack(values, "
                    "dim=0) of one value per step returned from forward"
                )
            if any(u.op != "output" for u in n.users):
                raise UnsupportedError(
                    f"{_what(gm, n)}: the values stacked over time are used inside the model; "
                    "snncc compiles the loop body as a per-step program, so return them "
                    "unchanged (reduce over time outside the model)"
                )


def _check_buffers(lp: _Loop) -> None:
    """A buffer filled one step per iteration is read by nothing but forward's return."""
    for n in lp.gm.graph.nodes:
        if n.op != "get_attr" or str(n.target) not in lp.writes:
            continue
        for u in n.users:
            if u.op != "output" and _buffer_write(u) is None:
                raise UnsupportedError(
                    f"{_what(lp.gm, u)} reads buffer {str(n.target)!r}, which the loop fills one "
                    "time step per iteration; supported: returning the filled buffer (it is "
                    "torch.stack of the values written)"
                )


def _stacks_steps(n: fx.Node, labels: dict[fx.Node, int]) -> bool:
    """``torch.stack([v0, v1, ...], dim=0)`` with item t computed at step t (also one step)."""
    if n.op != "call_function" or n.target is not torch.stack or _stack_dim(n) != 0:
        return False
    values = n.args[0] if n.args else n.kwargs.get("tensors")
    if not isinstance(values, (list, tuple)) or not values:
        return False
    return all(isinstance(v, fx.Node) and labels.get(v) == t for t, v in enumerate(values))


def _stack_dim(n: fx.Node) -> Any:
    if len(n.args) > 1:
        return n.args[1]
    return n.kwargs.get("dim", 0)


# --------------------------------------------------------------------------- step signatures


class _StepMismatch(Exception):
    """Raised inside signature building when a step reads another step's value."""

    def __init__(self, node: fx.Node, arg: fx.Node) -> None:
        super().__init__(node, arg)
        self.node = node
        self.arg = arg


def _static_key(gm: fx.GraphModule, a: fx.Node, cache: dict[fx.Node, Any]) -> Any:
    """What a static node computes, so per-step copies of the same constant compare equal."""
    if a in cache:
        return cache[a]
    if a.op == "placeholder":
        key: Any = ("input", str(a.target))
    elif a.op == "get_attr":
        value = _fetch_attr(gm, str(a.target))
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous()
            digest = hashlib.sha1(data.numpy().tobytes() if data.numel() else b"").hexdigest()
            key = ("tensor", tuple(data.shape), str(data.dtype), digest)
            if isinstance(value, nn.Parameter):
                key = ("param", str(a.target))
        else:
            key = ("attr", str(a.target))
    else:
        key = (
            a.op,
            _target_key(a),
            _plain(a.args, lambda x: _static_key(gm, x, cache)),
            _plain(a.kwargs, lambda x: _static_key(gm, x, cache)),
        )
    cache[a] = key
    return key


def _target_key(n: fx.Node) -> Any:
    if n.op == "call_module" or n.op == "call_method":
        return str(n.target)
    return id(n.target)


def _plain(a: Any, node_key) -> Any:
    if isinstance(a, fx.Node):
        return node_key(a)
    if isinstance(a, (list, tuple)):
        return (type(a).__name__, tuple(_plain(x, node_key) for x in a))
    if isinstance(a, dict):
        return ("dict", tuple((k, _plain(v, node_key)) for k, v in a.items()))
    if isinstance(a, slice):
        return (
            "slice",
            _plain(a.start, node_key),
            _plain(a.stop, node_key),
            _plain(a.step, node_key),
        )
    if isinstance(a, torch.Tensor):
        return ("tensor", id(a))
    return ("const", type(a).__name__, repr(a))


def _state_token(lp: _Loop, n: fx.Node, call: _Call, t: int, name: str, value: Any) -> str:
    """How the state ``name`` reaches this call: fresh at step 0, or threaded from step t-1."""
    gm = lp.gm
    sa = call.state
    where = f"{_what(gm, n)} at time step {t}"
    if value is None:
        if t > 0 and not sa.internal_ok:
            raise UnsupportedError(
                f"{where} gets state {name}=None, i.e. a fresh state at every step; pass the "
                "state it returned at the previous step (z, s = cell(x[t], s))"
            )
        return "state"
    if not isinstance(value, fx.Node):
        raise UnsupportedError(f"{where}: state argument {name}={value!r} is not supported")
    label = lp.labels[value]
    if label == STATIC and t == 0:
        lp.inits.append((n, name, value))
        return "state"
    k = sa.returns[sa.names.index(name)]
    prev = (
        value.args[0] if value.op == "call_function" and value.target is operator.getitem else None
    )
    if (
        label == t - 1
        and isinstance(prev, fx.Node)
        and prev.op == "call_module"
        and prev.target == n.target
        and value.args[1] == k
    ):
        return "state"
    raise UnsupportedError(
        f"{where}: its state argument {name!r} is not the state it returned at the previous "
        f"step (item {k} of its result); snncc folds a time loop only when each stateful "
        "module gets back its own state as it was returned (spk, mem = lif(x, mem); not "
        "through a slice such as out[1:] or a container)"
    )


def _signature(lp: _Loop, t: int, cache: dict[fx.Node, Any]) -> list[Any]:
    gm = lp.gm
    idx = lp.index[t]

    def ref_for(n: fx.Node):
        def ref(a: fx.Node) -> Any:
            label = lp.labels[a]
            if label == t:
                return ("n", idx[a])
            if label in (STATIC, INVARIANT):
                return ("static", _static_key(gm, a, cache))
            raise _StepMismatch(n, a)

        return ref

    sig: list[Any] = []
    for n in lp.steps[t]:
        ref = ref_for(n)
        try:
            if n in lp.slices:
                i, _, rest = lp.slices[n]
                sig.append(("input", i, _plain(rest, ref)))
            elif n in lp.calls:
                call = lp.calls[n]
                tokens = tuple(_state_token(lp, n, call, t, k, v) for k, v in call.values.items())
                sig.append(("module", str(n.target), _plain(call.main, ref), tokens))
            elif (write := _buffer_write(n)) is not None:
                target, index, value = write
                sig.append(("write", target, repr(_write_step(index)[1]), ref(value)))  # type: ignore[index]
            elif n in lp.sums:  # the sum so far plus this step's value (0 + it at step 0)
                sig.append(("sum", ref(lp.sums[n][1])))
            else:
                sig.append((n.op, _target_key(n), _plain(n.args, ref), _plain(n.kwargs, ref)))
        except _StepMismatch as e:
            raise _cross_step(gm, e.node, t, e.arg, lp.labels[e.arg]) from None
    return sig


def _check_steps(lp: _Loop) -> None:
    cache: dict[fx.Node, Any] = {}
    first = _signature(lp, 0, cache)
    for t in range(1, len(lp.steps)):
        sig = _signature(lp, t, cache)
        if sig == first:
            continue
        k = next(
            (i for i, (a, b) in enumerate(zip(first, sig)) if a != b), min(len(first), len(sig))
        )
        nodes = lp.steps[t]
        at = _what(lp.gm, nodes[k]) if k < len(nodes) else "the end of the step"
        raise UnsupportedError(
            f"time step {t} of the loop in {tr.type_name(lp.gm)}.forward differs from step 0 "
            f"(at {at}); snncc folds a loop whose body is the same computation at every step "
            "(no branch on the step index)"
        )


# --------------------------------------------------------------------------- initial states


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _eval_static(gm: fx.GraphModule, n: fx.Node, cache: dict[fx.Node, Any]) -> Any:
    """Run a node that does not depend on the input (an initial state) on its own."""
    if n in cache:
        return cache[n]

    def ev(a: Any) -> Any:
        return fx.node.map_arg(a, lambda x: _eval_static(gm, x, cache))

    if n.op == "get_attr":
        value = _fetch_attr(gm, str(n.target))
    elif n.op == "call_function":
        value = n.target(*ev(n.args), **ev(n.kwargs))
    elif n.op == "call_method":
        self_, *rest = ev(n.args)
        value = getattr(self_, n.target)(*rest, **ev(n.kwargs))
    elif n.op == "call_module":
        value = gm.get_submodule(n.target)(*ev(n.args), **ev(n.kwargs))
    else:
        raise UnsupportedError(f"cannot evaluate {n.op} {n.name} as an initial state")
    cache[n] = value
    return value


def _check_inits(lp: _Loop) -> None:
    cache: dict[fx.Node, Any] = {}
    with torch.no_grad():
        for n, node in lp.sum_inits:
            value = _eval_static(lp.gm, node, cache)
            if not isinstance(value, torch.Tensor) or bool((value != 0).any()):
                raise UnsupportedError(
                    f"{_what(lp.gm, n)} starts a sum over the loop's steps from "
                    f"{_what(lp.gm, node)}, which is not zero; supported: a sum from 0 or zeros"
                )
            added = lp.sums[n][1].meta.get("snncc_fake")
            if (
                added is None
                or value.dtype != added.dtype
                or (torch.broadcast_shapes(value.shape, added.shape) != added.shape)
            ):
                got = f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
                raise UnsupportedError(
                    f"{_what(lp.gm, n)} starts a sum over the loop's steps from zeros of "
                    f"{got}, which would change what it adds; supported: 0, or zeros of the "
                    "added values' dtype that broadcast to their shape"
                )
        for n, name, node in lp.inits:
            try:
                value = _eval_static(lp.gm, node, cache)
            except SnnccError:
                raise
            except Exception as e:  # noqa: BLE001 - user code: report where it failed
                raise UnsupportedError(
                    f"{_what(lp.gm, n)}: computing its initial state {name!r} failed: "
                    f"{type(e).__name__}: {e}"
                ) from e
            if not lp.calls[n].state.fresh(value):
                raise UnsupportedError(
                    f"{_what(lp.gm, n)} starts from a state {name!r} that is not fresh (not "
                    "None or zeros); snncc programs start from a fresh state (continue from "
                    "a state with CompiledModel.run(x, state))"
                )


# --------------------------------------------------------------------------- folding


def _outputs(lp: _Loop) -> Any:
    """The output structure with stacked per-step values replaced by step 0's node."""
    gm = lp.gm
    (out_node,) = [n for n in gm.graph.nodes if n.op == "output"]

    def conv(a: Any) -> Any:
        if isinstance(a, (list, tuple)):
            return type(a)(conv(x) for x in a)
        if not isinstance(a, fx.Node):
            if a is None:
                return None
            raise UnsupportedError(f"forward returns {a!r}; snncc models return tensors")
        label = lp.labels[a]
        if label == COLLECTOR:
            values = a.args[0]
            if not isinstance(values, (list, tuple)) or len(values) != len(lp.steps):
                raise UnsupportedError(
                    f"{_what(gm, a)} stacks {len(values) if isinstance(values, (list, tuple)) else '?'} "
                    f"values, but the loop has {len(lp.steps)} steps; return "
                    "torch.stack of one value per step"
                )
            pos = set()
            for t, v in enumerate(values):
                if not isinstance(v, fx.Node) or lp.labels.get(v) != t:
                    raise UnsupportedError(
                        f"{_what(gm, a)}: item {t} is not the value computed at time step {t}"
                    )
                pos.add(lp.index[t][v])
            if len(pos) != 1:
                raise UnsupportedError(
                    f"{_what(gm, a)} stacks different values at different time steps"
                )
            return lp.steps[0][pos.pop()]
        if label == STATIC and str(a.target) in lp.writes:
            return _filled_buffer(lp, a)
        if label == AFTER or a in lp.sum_finals:
            return a  # computed once after the loop, from what it summed
        if label >= 0 and _is_opaque_state(lp, a):
            return None  # a Norse state: kept by the compiled program
        if label >= 0:
            raise UnsupportedError(
                f"forward returns {_what(gm, a)} of time step {label} only; snncc programs "
                "return every step: collect one value per step and return "
                "torch.stack(values) (dim 0)"
            )
        raise UnsupportedError(
            f"forward returns {_what(gm, a)}, which is not a per-step value stacked over time"
        )

    return conv(out_node.args[0])


def _filled_buffer(lp: _Loop, a: fx.Node) -> fx.Node:
    """A returned buffer filled one step per iteration: torch.stack of the values written."""
    gm, target = lp.gm, str(a.target)
    writes = sorted(lp.writes[target], key=lambda w: w[0])
    # a buffer made from trace-time ints (torch.zeros(T, B, n)) is a real constant, not a fake
    buf = a.meta.get("snncc_fake")
    if buf is None and isinstance(getattr(gm, target, None), torch.Tensor):
        buf = getattr(gm, target)
    steps = [t for t, _, _ in writes]
    if steps != list(range(len(lp.steps))) or buf is None or buf.shape[0] != len(lp.steps):
        raise UnsupportedError(
            f"forward returns buffer {target!r} of shape {list(getattr(buf, 'shape', []))}, "
            f"written at steps {steps}; supported: a buffer of the loop's {len(lp.steps)} steps "
            "in front, every step written once (buf[t] = v)"
        )
    pos = {lp.index[t][v] for t, v, _ in writes}
    value = writes[0][1].meta.get("snncc_fake")
    if len(pos) != 1 or value is None or tuple(value.shape) != tuple(buf.shape[1:]):
        raise UnsupportedError(
            f"forward returns buffer {target!r}, but its steps are written with different "
            f"values or shapes ({_what(gm, writes[0][2])}); supported: the same per-step "
            "value at every step, of the buffer's per-step shape"
        )
    return lp.steps[0][pos.pop()]


def _is_opaque_state(lp: _Loop, a: fx.Node) -> bool:
    if a.op != "call_function" or a.target is not operator.getitem:
        return False
    call = lp.calls.get(a.args[0]) if isinstance(a.args[0], fx.Node) else None
    return call is not None and call.state.opaque and a.args[1] in call.state.returns


def _build(lp: _Loop, outputs: Any, T: int) -> fx.GraphModule:
    gm = lp.gm
    g = fx.Graph()
    ph = []
    for i, p in enumerate(lp.inputs):
        new = g.placeholder(str(p.target))
        new.meta = dict(p.meta)
        if i not in lp.static_inputs:  # fed one step at a time: the per-step value's meta
            first = next((n for n, ts in lp.slices.items() if ts[0] == i and ts[1] == 0), None)
            if first is not None:
                new.meta["snncc_fake"] = _step_value(first, lp.slices[first][2])
        ph.append(new)
    env: dict[fx.Node, fx.Node] = {}
    repeated: dict[fx.Node, fx.Node] = {}

    def arg(a: fx.Node) -> fx.Node:
        """A node of step 0's graph, or a static / invariant one (computed once)."""
        if a in env:
            return env[a]
        if lp.labels[a] == INVARIANT and a.op == "placeholder":
            env[a] = ph[lp.inputs.index(a)]
            return env[a]
        if lp.labels[a] not in (STATIC, INVARIANT):
            raise AssertionError(f"loop fold: {a.name} is not available at step 0")
        env[a] = g.node_copy(a, arg)
        return env[a]

    def step_arg(a: fx.Node) -> fx.Node:
        """What a step-0 node reads: an invariant value repeated over the loop's steps."""
        if lp.labels.get(a) != INVARIANT:
            return arg(a)
        if a not in repeated:
            repeated[a] = g.call_function(repeat_over_time, (arg(a), T))
            repeated[a].meta = {"snncc_fake": a.meta.get("snncc_fake"), "snncc_src": ""}
        return repeated[a]

    for n in lp.steps[0]:
        if n in lp.slices:
            i, _, rest = lp.slices[n]
            env[n] = ph[i] if not rest else g.call_function(operator.getitem, (ph[i], rest))
            if rest:
                env[n].meta = dict(n.meta)
        elif n in lp.calls:
            main = fx.node.map_arg(lp.calls[n].main, step_arg)
            env[n] = g.call_module(str(n.target), tuple(main))
            env[n].meta = dict(n.meta)
        elif _buffer_write(n) is not None:
            continue  # the buffer is returned as the stack of the written values
        elif n in lp.sums:
            continue  # the sum is taken over the steps below
        else:
            env[n] = g.node_copy(n, step_arg)
    for final in lp.sum_finals:
        first = final
        while lp.sums[first][0] is not None:
            first = lp.sums[first][0]  # type: ignore[assignment]
        env[final] = g.call_function(sum_over_time, (env[lp.sums[first][1]], T))
        env[final].meta = {k: final.meta[k] for k in ("snncc_fake", "snncc_src") if k in final.meta}
    for n in gm.graph.nodes:  # what forward computes from the sums after the loop: once
        if lp.labels.get(n) == AFTER:
            env[n] = g.node_copy(n, arg)
    invariant_out = [a for a in _nodes(outputs) if lp.labels.get(a) == INVARIANT]
    if invariant_out:
        raise UnsupportedError(
            f"forward returns {_what(gm, invariant_out[0])}, which does not depend on the time "
            "step; snncc programs return one value per step (torch.stack of per-step values)"
        )
    g.output(fx.node.map_arg(outputs, arg))
    _drop_unused(g)  # e.g. the getitem of a state that only fed the next step
    g.lint()
    out = fx.GraphModule(gm, g, gm.__class__.__name__)
    out.meta["snncc_reads"] = gm.meta.get("snncc_reads", [])
    return out


def _step_value(slice_node: fx.Node, rest: tuple) -> Any:
    """The value ``x[0]`` of a time input (what the folded graph's placeholder stands for)."""
    v = slice_node.meta.get("snncc_fake")
    if not rest or v is None:
        return v
    base = slice_node.args[0]
    full = base.meta.get("snncc_fake") if isinstance(base, fx.Node) else None
    return full[0] if full is not None else v


def _drop_unused(g: fx.Graph) -> None:
    """Remove nodes nothing uses (inputs and the output stay)."""
    for n in reversed(list(g.nodes)):
        if n.op not in ("placeholder", "output") and not n.users:
            g.erase_node(n)


@dataclass
class Folded:
    """A folded loop: the per-step graph, its static inputs, T and B."""

    gm: fx.GraphModule
    static_inputs: frozenset[int]
    T: int
    B: int


def fold(
    model: nn.Module,
    gm: fx.GraphModule,
    xs: tuple[torch.Tensor, ...],
    retrace: Callable[[list[torch.Tensor]], fx.GraphModule],
) -> Folded:
    """The per-step fx graph of a model whose forward loops over time (see the module
    docstring); ``gm`` is its shape-aware trace on ``xs``, ``retrace(inputs)`` traces again."""
    lp = _analyse(gm)
    timed = [i for i in range(len(xs)) if i not in lp.static_inputs]
    if not lp.steps:
        raise UnsupportedError(
            f"{tr.type_name(model)}.forward does not read its input one time step at a time "
            "(x[step] or for xt in x); snncc compiles it as a per-step program only then"
        )
    T = int(xs[timed[0]].shape[0]) if timed else len(lp.steps)
    if len(lp.steps) == 1 and T == 1 and timed:  # learn how state flows from two steps
        two = tuple(x if i in lp.static_inputs else torch.cat([x, x]) for i, x in enumerate(xs))
        gm2 = retrace(list(two))
        lp2 = _analyse(gm2)
        if len(lp2.steps) == 2:
            gm, lp, xs = gm2, lp2, two
            T = 2
    if len(lp.steps) != T:
        raise UnsupportedError(
            f"the time loop in {tr.type_name(model)}.forward runs {len(lp.steps)} steps but the "
            f"example input has T = {T}; snncc compiles a per-step program that runs as many "
            "steps as its input has, so loop over x.size(0) (or give an example with T = "
            f"{len(lp.steps)})"
        )
    B = int(xs[timed[0]].shape[1]) if timed else int(xs[0].shape[0])
    for i, x in enumerate(xs):
        lead = (x.shape[0],) if i in lp.static_inputs else tuple(x.shape[:2])
        want = (B,) if i in lp.static_inputs else (T, B)
        if tuple(int(d) for d in lead) != want:
            raise UnsupportedError(
                f"example inputs disagree on T or B: {[list(x.shape) for x in xs]}; inputs the "
                "loop reads one step at a time are [T, B, ...], inputs fed whole to every step "
                "[B, ...]"
            )
    _check_steps(lp)
    _check_inits(lp)
    out = _build(lp, _outputs(lp), T)
    return Folded(out, lp.static_inputs, T, B)
