"""ReferenceProgram: interpret a Graph with torch eager ops, layer by layer over the sequence.

Execution model: the IR's schedule, ``meta["groups"]`` in order, read through
:func:`snncc.ir.schedule.groups_of` (a graph nobody scheduled gets temporal
fusion's groups, computed by that pass on a copy); nothing here re-derives it:

1. A ``layer`` group's nodes run one after another, each over the whole
   sequence: row ops (linear, conv, pooling, BN, voting) on ``[T*B, ...]``
   exactly like SpikingJelly's multi-step wrappers (``seq_to_ann_forward``),
   lead ops (flatten, reshape, cat, element-wise, transfer) on ``[T, B, ...]``.
2. A ``neuron`` group's node loops over t with :func:`snncc.backends.reference.neurons.step`.
3. A ``recurrent`` group (a component holding a delay-1 edge back into
   itself) runs step by step: at each t every member computes its one-step
   value in same-step topological order; a delay edge reads the producer's
   value at t-1 (at t = 0: the state's ``"delay"`` entry, or zeros).

Stages (the partition pass) all run here, in order, in this one process; a
``transfer`` node, which stands for moving a value to the next stage's device,
passes its value on unchanged (the distributed runtimes, ``snncc.distributed``,
run each stage where it belongs).

Graphs traced from a single-step source (``meta["step_mode"] == "s"``) run row
ops one step at a time instead (option ``stateless_per_step``), as the source
did, so no GEMM ever sees a different number of rows than in the source; so do
the GEMMs a multi-step source ran per step (``attrs.source_rows``, ir/ops.py).

State (backends/base.py): ``{node_id: {"v": membrane}}`` for neurons,
``{node_id: {"delay": value at T-1}}`` for producers of delay edges and
``{node_id: {"mask": mask}}`` for a training-mode dropout whose mask is shared
over time, so ``run(x[:k])`` then ``run(x[k:], state)`` equals ``run(x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from snncc.backends.base import check_state, state_spec
from snncc.backends.reference import neurons
from snncc.errors import IRError, ShapeError, UnsupportedError
from snncc.ir.graph import Edge, Graph
from snncc.ir.neuron import NeuronSpec
from snncc.ir.ops import OPS
from snncc.ir.passes.drop_noops import dropped_dropout
from snncc.ir.schedule import groups_of
from snncc.ir.static import static_nodes, time_steps

from .ops import LEAD_OPS, ROW_OPS, apply_steps, batchnorm, fold_bn, reduce_time

Tensor = torch.Tensor

#: roles whose arrays are trained (everything else, e.g. running stats, is a buffer)
LEARNABLE_ROLES = frozenset({"weight", "bias", "bn_weight", "bn_bias"})

_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def check_dropout_trainable(graph: Graph, where: str) -> None:
    """Refuse training mode where drop_noops removed eval-mode dropout: none is left to apply,
    and training without it would silently change the model."""
    names = dropped_dropout(graph)
    if names:
        raise UnsupportedError(
            f"{where}: dropout {', '.join(names)} was removed because the model was compiled "
            "in eval mode, so this program cannot apply it in training mode. Compile the "
            "model in training mode (model.train()) to train with dropout, or stay in eval "
            "mode: gradients flow there too"
        )


def _to_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().clone()
    return torch.from_numpy(np.array(value, copy=True))


class ReferenceProgram:
    """A Graph interpreted with torch eager ops; differentiable wrt ``params`` and inputs.

    Parameters
    ----------
    graph
        The (scheduled or not) graph to run.
    requires_grad
        Make learnable params (weights, biases, BN affine, neuron ``learnable``
        roles) leaf tensors with ``requires_grad=True`` so ``run`` can be
        trained through.
    stateless_per_step
        Run row ops one step at a time (True) or over all T*B rows (False); default:
        each row op as its source ran it (every one of a graph from a single-step
        source, ``meta["step_mode"] == "s"``; else those marked ``source_rows``).
    training
        None honours each node's ``training`` attr (batchnorm, dropout);
        True/False overrides them all, like ``module.train()`` / ``.eval()``.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        requires_grad: bool = True,
        stateless_per_step: bool | None = None,
        training: bool | None = None,
    ) -> None:
        self.graph = graph
        if training:
            check_dropout_trainable(graph, "option training=True")
        self.training = training
        if stateless_per_step is None and graph.meta.get("step_mode") == "s":
            stateless_per_step = True
        #: None: per node, as its source ran it (``attrs.source_rows``)
        self.stateless_per_step = stateless_per_step
        #: what a carried state must hold (backends/base.py), worked out once
        self._state_spec = state_spec(graph)
        self._check_ops()
        self._specs = {
            n: NeuronSpec.from_dict(graph.attrs(n)["neuron"]) for n in graph.iter_ops("neuron")
        }
        for spec in self._specs.values():
            neurons.prepare(spec)  # refuses a spec no form can run, naming the problem
        learnable = self._learnable_names()
        self.params: dict[str, Tensor] = {}
        for name, value in graph.params.items():
            t = _to_tensor(value)
            if requires_grad and name in learnable and t.is_floating_point():
                t.requires_grad_(True)
            self.params[name] = t
        self._topo = graph.topo_order()
        #: values without a time axis (run once on [B, ...]) and the steps the model repeats
        #: them over (snncc.ir.static)
        self._static = static_nodes(graph)
        self._repeat_steps = time_steps(graph)
        self._pos = {n: i for i, n in enumerate(self._topo)}
        self._units = self._schedule()
        # the lowered graph's structure is final: look its edges up once, not on every run
        self._in_edges = {n: graph.in_edges(n) for n in self._topo}
        self._delay_srcs = frozenset(e.src for e in self._all_edges() if e.delay > 0)

    # ----------------------------------------------------------- lowering
    def _check_ops(self) -> None:
        for n in self.graph.nx.nodes:
            op = self.graph.op(n)
            if op not in OPS:
                raise IRError(
                    f"node %{n} ({self.graph.node(n).get('name') or '?'!r}): unknown op {op!r}"
                )
            if (
                op not in ROW_OPS
                and op not in LEAD_OPS
                and op
                not in (
                    "input",
                    "neuron",
                    "batchnorm",
                    "dropout",
                    "repeat_time",
                    "time_reduce",
                )
            ):
                raise UnsupportedError(f"reference backend has no implementation of op {op!r}")
        for e in self._all_edges():
            if e.delay not in (0, 1):
                raise UnsupportedError(
                    f"edge %{e.src} -> %{e.dst} has delay {e.delay}; the reference backend runs delays 0 and 1"
                )

    def _all_edges(self) -> list[Edge]:
        return [
            Edge(u, v, d["port"], d.get("delay", 0)) for u, v, d in self.graph.nx.edges(data=True)
        ]

    def _learnable_names(self) -> set[str]:
        names: set[str] = set()
        for n in self.graph.nx.nodes:
            roles = self.graph.node(n)["params"]
            ok = set(self._specs[n].learnable) if n in self._specs else LEARNABLE_ROLES
            names.update(name for role, name in roles.items() if role in ok)
        return names

    def _schedule(self) -> list[list[int]]:
        """Execution units in the IR's schedule order: one node each for layer and neuron
        groups, a recurrent group's nodes (same-step topological order) as one unit."""
        units: list[list[int]] = []
        self._recurrent: set[int] = set()
        for group in groups_of(self.graph):
            if group["kind"] == "recurrent":
                members = sorted(group["nodes"], key=self._pos.__getitem__)
                units.append(members)
                self._recurrent.update(members)
            else:
                units.extend([n] for n in group["nodes"])
        return units

    # ------------------------------------------------------------ listing
    @property
    def source(self) -> str:
        """The graph listing (snncc.ir.printer) plus the schedule this interpreter follows."""
        try:
            from snncc.ir.printer import format_graph

            text = format_graph(self.graph)
        except ImportError:  # the printer is optional for the interpreter
            text = (
                "\n".join(
                    f"%{n} = {self.graph.op(n)}({', '.join(f'%{s}' for s in self.graph.inputs(n))})"
                    for n in self._topo
                )
                + "\n"
            )
        lines = ["# reference backend schedule (torch eager), the IR's groups in order:"]
        group_of = {
            n: (g["id"], g.get("stage", 0)) for g in groups_of(self.graph) for n in g["nodes"]
        }
        for i, unit in enumerate(self._units):
            ids = " ".join(f"%{n}" for n in unit)
            gid, stage = group_of[unit[0]]
            lines.append(
                f"#   {i:3d}: {ids}  ({self._unit_kind(unit)}; group {gid}, stage {stage})"
            )
        return text + "\n".join(lines) + "\n"

    def _unit_kind(self, unit: list[int]) -> str:
        """How one execution unit runs, for ``source`` (backends add their own kinds)."""
        if self.graph.op(unit[0]) in ("input", "output", "transfer"):
            return str(self.graph.op(unit[0]))
        if unit[0] in self._recurrent:
            return "recurrent, step by step"
        if unit[0] in self._static:
            return "once, [B, ...] (static)"
        if self.graph.op(unit[0]) == "repeat_time":
            return "static -> every step"
        if self.graph.op(unit[0]) == "neuron":
            return "neuron, loop over t"
        if self.graph.op(unit[0]) in ROW_OPS or self.graph.op(unit[0]) == "batchnorm":
            return "per step" if self.runs_per_step(unit[0]) else "rows [T*B, ...]"
        return "sequence [T, B, ...]"

    def files(self) -> dict[str, str]:
        return {"program.txt": self.source}

    # ------------------------------------------------------------ running
    def run(self, x: Any, state: dict | None = None) -> tuple[Any, dict]:
        """Run ``x`` [T, B, ...] (or a tuple, one per graph input) from ``state``; return (y, state)."""
        inputs = self._check_inputs(x)
        T, B = self._time_batch(inputs)
        check_state(self._state_spec, state, B, self._state_leaf_check(inputs[0].device))
        ctx = _RunContext(self, T, B, dict(state or {}), inputs[0].device)
        for unit in self._units:
            if unit[0] in self._recurrent:
                self._run_recurrent(ctx, unit)
            else:
                self._run_layer(ctx, unit[0], inputs)
        outs = [ctx.values[o] for o in self.graph.meta["outputs"]]
        return (outs[0] if len(outs) == 1 else tuple(outs)), ctx.new_state

    def _state_leaf_check(self, device: torch.device) -> Any:
        """How a carried state's arrays are checked here: torch tensors of the node's dtype on
        the input's device (a numpy or float64 state is refused, never cast)."""

        def check(where: str, value: Any, dtype: str | None) -> None:
            if not isinstance(value, Tensor):
                raise ShapeError(
                    f"{where} is a {type(value).__module__}.{type(value).__name__}; this backend "
                    "carries state as torch tensors (pass the state run() returned, or convert "
                    "with torch.from_numpy)"
                )
            want = _TORCH_DTYPES.get(dtype or "", None)
            if (dtype is None and not value.is_floating_point()) or (
                dtype is not None and value.dtype != want
            ):
                raise ShapeError(
                    f"{where} is {str(value.dtype).removeprefix('torch.')}; this model keeps "
                    f"{dtype or 'floating'} state (snncc never casts it silently: convert it, "
                    f"e.g. with .to(torch.{dtype or 'float32'}))"
                )
            if value.device != device:
                raise ShapeError(f"{where} is on {value.device}; the input is on {device}")

        return check

    def _time_batch(self, inputs: list[Tensor]) -> tuple[int, int]:
        """(T, B) of a run: a per-step input's, or the model's own T for static inputs."""
        ids = self.graph.meta["inputs"]
        timed = [x for nid, x in zip(ids, inputs) if nid not in self._static]
        static = [x for nid, x in zip(ids, inputs) if nid in self._static]
        # shape entries as they are (ints; symbolic under torch.export, where int() would
        # specialise the batch to the example's)
        B = timed[0].shape[1] if timed else static[0].shape[0]
        T = timed[0].shape[0] if timed else int(self._repeat_steps or 1)
        if timed and self._repeat_steps is not None and T != self._repeat_steps:
            raise ShapeError(
                f"the input has T = {T} steps, but the model repeats its static values over "
                f"{self._repeat_steps} steps; give it {self._repeat_steps} steps"
            )
        if any(x.shape[0] != B for x in static):
            raise ShapeError(f"inputs disagree on B: {[tuple(x.shape) for x in inputs]}")
        return T, B

    def _check_inputs(self, x: Any) -> list[Tensor]:
        ids = self.graph.meta["inputs"]
        xs = list(x) if isinstance(x, (tuple, list)) else [x]
        if len(xs) != len(ids):
            raise ShapeError(f"the program takes {len(ids)} input(s); got {len(xs)}")
        out = []
        for nid, xi in zip(ids, xs):
            if not isinstance(xi, Tensor):
                xi = torch.as_tensor(np.asarray(xi))
            node = self.graph.node(nid)
            lead = 0 if nid in self._static else 1  # a static input has no time axis
            if xi.dim() < 1 + lead:
                want = "[B, ...]" if lead == 0 else "time-major [T, B, ...]"
                raise ShapeError(f"input %{nid} must be {want}; got shape {tuple(xi.shape)}")
            shape = node.get("shape")
            if shape is not None and (
                len(shape) != xi.dim() - lead
                or any(
                    isinstance(d, int) and d != s for d, s in zip(shape[1:], xi.shape[1 + lead :])
                )
            ):
                shown = ("T, " if lead else "") + ", ".join(map(str, shape))
                raise ShapeError(f"input %{nid} expects [{shown}]; got {tuple(xi.shape)}")
            dtype = _TORCH_DTYPES.get(node.get("dtype", "float32"), torch.float32)
            if xi.dtype != dtype:  # as CompiledModel refuses it, and the source model would
                raise ShapeError(
                    f"input %{nid} dtype mismatch: expected {str(dtype).removeprefix('torch.')}"
                    f", got {str(xi.dtype).removeprefix('torch.')} (snncc never casts an input "
                    "silently: convert it, e.g. with x.float())"
                )
            out.append(xi)
        timed = [o for nid, o in zip(ids, out) if nid not in self._static]
        if timed and any(o.shape[:2] != timed[0].shape[:2] for o in timed):
            raise ShapeError(f"inputs disagree on [T, B]: {[tuple(o.shape[:2]) for o in timed]}")
        if timed and timed[0].shape[0] == 0:
            raise ShapeError("input has T = 0 steps")
        return out

    def _training(self, attrs: dict[str, Any]) -> bool:
        return bool(attrs.get("training", False)) if self.training is None else self.training

    # -- one layer over the whole sequence
    def _run_layer(self, ctx: _RunContext, n: int, inputs: list[Tensor]) -> None:
        op = self.graph.op(n)
        if op == "input":
            ctx.set_value(n, inputs[self.graph.meta["inputs"].index(n)])
            return
        ins = [ctx.seq_input(e) for e in self._in_edges[n]]
        attrs = self.graph.attrs(n)
        lead = 0 if n in self._static else 1  # a static value is one [B, ...] for all steps
        if op == "neuron":
            y = self._neuron_seq(ctx, n, ins)
        elif op == "repeat_time":  # the same value at every step (as torch broadcasts it)
            y = ins[0].unsqueeze(0).expand(ctx.T, *ins[0].shape)
        elif op == "time_reduce":
            y = reduce_time(ins[0], attrs)
        elif op in LEAD_OPS:
            y = LEAD_OPS[op](attrs, ctx.params(n), ins, lead)
        elif op == "dropout":
            y = self._dropout(ctx, n, ins[0], lead=lead)
        elif lead == 0:  # a row op on a static value: its B rows, once
            y = self._row_step(ctx, n, ins)
        elif (
            op == "batchnorm"
            and self._training(attrs)
            and (self.runs_per_step(n) or attrs.get("stats", "sequence") == "step")
        ):
            p = ctx.params(n)
            y = torch.stack([batchnorm(attrs, p, [xt], True) for xt in ins[0]])
        else:
            y = self._rows(ctx, n, ins)
        ctx.set_value(n, y)

    def _rows(self, ctx: _RunContext, n: int, ins: list[Tensor]) -> Tensor:
        """A row op on the whole sequence: flattened to [T*B, ...] (or per step for 's' sources)."""
        if self.runs_per_step(n):  # unbind, not x[t]: see _RunContext.steps
            steps = zip(*(x.unbind(0) for x in ins))
            return torch.stack([self._row_step(ctx, n, list(xs)) for xs in steps])
        T, B = ins[0].shape[:2]
        y = self._row_step(ctx, n, [x.flatten(0, 1) for x in ins])
        return y.unflatten(0, (T, B))

    def runs_per_step(self, n: int) -> bool:
        """Whether row op ``n`` runs one step at a time (see ``stateless_per_step``)."""
        if self.stateless_per_step is not None:
            return bool(self.stateless_per_step)
        return self.graph.attrs(n).get("source_rows") == "step"

    def _row_step(self, ctx: _RunContext, n: int, ins: list[Tensor]) -> Tensor:
        return self._row_fn(n)(ins, ctx.params(n))

    def _row_fn(self, n: int) -> Callable[[list[Tensor], dict[str, Tensor]], Tensor]:
        """Row op ``n`` as a function of its inputs and params (the cpu backend calls it with
        other thread counts, and on other values to compare them)."""
        op, attrs = self.graph.op(n), self.graph.attrs(n)
        if op == "batchnorm":
            training = self._training(attrs)
            return lambda ins, params: batchnorm(attrs, params, ins, training)
        return lambda ins, params: ROW_OPS[op](attrs, params, ins)

    def _dropout(self, ctx: _RunContext, n: int, x: Tensor, lead: int) -> Tensor:
        attrs = self.graph.attrs(n)
        if not self._training(attrs):
            return x
        p = float(attrs["p"])
        if not attrs.get("shared_over_time", False):
            if lead and self.runs_per_step(n):
                # a single-step source drew one mask per step call: the same draws in order
                return torch.stack([F.dropout(xt, p, training=True) for xt in x.unbind(0)])
            return F.dropout(x, p, training=True)
        mask = ctx.state.get(n, {}).get("mask")
        step_shape = x.shape[lead:]
        if mask is None or mask.shape != step_shape:
            # SpikingJelly layer.Dropout: one mask per sequence, F.dropout(ones_like(x[0])).
            mask = F.dropout(
                torch.ones(step_shape, dtype=x.dtype, device=x.device), p, training=True
            )
        ctx.new_state.setdefault(n, {})["mask"] = mask
        return x * mask

    # -- neurons
    def _neuron_x(self, n: int, ins: list[Tensor]) -> Tensor:
        pro = self.graph.attrs(n).get("prologue") or []
        return apply_steps(pro, ins[0], ins, f"neuron %{n} prologue")

    def _neuron_out(self, n: int, y: Tensor, ins: list[Tensor]) -> Tensor:
        epi = self.graph.attrs(n).get("epilogue") or []
        return apply_steps(epi, y, ins, f"neuron %{n} epilogue")

    def _neuron_state(self, ctx: _RunContext, n: int, x_step: Tensor) -> dict[str, Tensor]:
        """The carried state of neuron ``n`` (every variable of its form), or a fresh one."""
        spec = self._specs[n]
        given = ctx.state.get(n, {})
        fresh = neurons.init_state(spec, x_step.shape, x_step.dtype, x_step.device)
        if "v" not in given:
            return fresh
        state = {}
        for var in fresh:
            v = given.get(var)
            if v is None:
                raise ShapeError(
                    f"state of neuron %{n} ({self.graph.node(n).get('name') or '?'!r}) lacks "
                    f"{var!r}; its form {spec.charge!r} keeps {list(fresh)}"
                )
            if tuple(v.shape) != tuple(x_step.shape):
                raise ShapeError(
                    f"state of neuron %{n} ({self.graph.node(n).get('name') or '?'!r}) has shape "
                    f"{tuple(v.shape)}; this input needs {tuple(x_step.shape)}"
                )
            state[var] = v
        return state

    def _neuron_seq(self, ctx: _RunContext, n: int, ins: list[Tensor]) -> Tensor:
        spec = self._specs[n]
        x = self._neuron_x(n, ins)
        st = self._neuron_state(ctx, n, x[0])
        p = ctx.neuron_params(n)
        # the form's own inputs after x (e.g. rec), unbound once (see _RunContext.steps)
        ports = [port.unbind(0) for port in ins[1 : len(spec.input_ports)]]
        outs = []
        for t, xt in enumerate(x):
            out, st = neurons.step(spec, p, xt, st, *(port[t] for port in ports))
            outs.append(out)
        ctx.new_state.setdefault(n, {}).update(st)
        return self._neuron_out(n, torch.stack(outs), ins)

    # -- recurrent components, step by step
    def _run_recurrent(self, ctx: _RunContext, unit: list[int]) -> None:
        members = set(unit)
        hist: dict[int, list[Tensor]] = {n: [] for n in unit}
        nstate: dict[int, dict[str, Tensor]] = {}
        for t in range(ctx.T):
            for n in unit:
                ins = [self._step_input(ctx, e, t, members, hist) for e in self._in_edges[n]]
                hist[n].append(self._step_node(ctx, n, ins, nstate))
        for n in unit:
            ctx.set_value(n, torch.stack(hist[n]))
        for n, st in nstate.items():
            ctx.new_state.setdefault(n, {}).update(st)

    def _step_input(
        self, ctx: _RunContext, e: Edge, t: int, members: set[int], hist: dict[int, list[Tensor]]
    ) -> Tensor:
        if e.src in members:
            if e.delay == 0:
                return hist[e.src][t]
            return hist[e.src][t - 1] if t > 0 else ctx.initial_delay(e.src)
        seq = ctx.steps(e.src)
        if e.delay == 0:
            return seq[t]
        return seq[t - 1] if t > 0 else ctx.initial_delay(e.src, like=seq[0])

    def _step_node(
        self, ctx: _RunContext, n: int, ins: list[Tensor], nstate: dict[int, dict[str, Tensor]]
    ) -> Tensor:
        op, attrs = self.graph.op(n), self.graph.attrs(n)
        if op == "neuron":
            x = self._neuron_x(n, ins)
            if n not in nstate:
                nstate[n] = self._neuron_state(ctx, n, x)
            spec = self._specs[n]
            ports = ins[1 : len(spec.input_ports)]  # the form's own inputs after x (e.g. rec)
            out, nstate[n] = neurons.step(spec, ctx.neuron_params(n), x, nstate[n], *ports)
            return self._neuron_out(n, out, ins)
        if op in LEAD_OPS:
            return LEAD_OPS[op](attrs, ctx.params(n), ins, 0)
        if op == "dropout":
            return self._dropout(ctx, n, ins[0], lead=0)
        if op == "input":
            raise IRError(f"input %{n} cannot be part of a recurrent component")
        return self._row_step(ctx, n, ins)


class _RunContext:
    """Everything one ``run`` call computes: sequence values, resolved params, the new state."""

    def __init__(
        self, prog: ReferenceProgram, T: int, B: int, state: dict, device: torch.device
    ) -> None:
        self.prog = prog
        #: where the run's inputs live: tensors the run creates itself (t = 0 zeros) go there too
        self.device = device
        self.graph = prog.graph
        self.T, self.B = T, B
        self.state = state
        self.new_state: dict[int, dict[str, Tensor]] = {}
        self.values: dict[int, Tensor] = {}
        self._steps: dict[int, tuple[Tensor, ...]] = {}
        self._params: dict[int, dict[str, Tensor]] = {}
        self._nparams: dict[int, dict[str, Tensor]] = {}
        self._delay_srcs = prog._delay_srcs

    def params(self, n: int) -> dict[str, Tensor]:
        """Node ``n``'s params by role, BN-folded once per run (differentiable)."""
        if n not in self._params:
            roles = self.graph.node(n)["params"]
            p = {role: self.prog.params[name] for role, name in roles.items()}
            if self.graph.op(n) in ("linear", "conv1d", "conv2d"):
                p = fold_bn(self.graph.attrs(n), p)
            self._params[n] = p
        return self._params[n]

    def neuron_params(self, n: int) -> dict[str, Tensor]:
        """A neuron's params plus its per-sequence constants (PLIF k = sigmoid(w), once per run)."""
        if n not in self._nparams:
            p = self.params(n)
            self._nparams[n] = {**p, **neurons.derived_constants(self.prog._specs[n], p)}
        return self._nparams[n]

    def set_value(self, n: int, y: Tensor) -> None:
        self.values[n] = y
        self._steps.pop(n, None)
        if n in self._delay_srcs:
            self.new_state.setdefault(n, {})["delay"] = y[-1]

    def steps(self, n: int) -> tuple[Tensor, ...]:
        """Node ``n``'s sequence value as its T steps, for a component run step by step.

        One ``unbind`` per sequence, not ``seq[t]`` per step: the backward of each
        ``seq[t]`` builds a zero tensor of the whole sequence to place one step's
        gradient in (T of them, O(T^2) memory traffic: half a training step's time
        on a T=100 recurrent model); unbind's backward stacks the T gradients once.
        """
        if n not in self._steps:
            self._steps[n] = self.values[n].unbind(0)
        return self._steps[n]

    def initial_delay(self, n: int, like: Tensor | None = None) -> Tensor:
        """The value a delay edge from ``n`` reads at t = 0: the carried state, or zeros."""
        given = self.state.get(n, {}).get("delay")
        if given is not None:
            return given
        if like is not None:
            return torch.zeros_like(like)
        shape = self.graph.node(n).get("shape")
        if shape is None:
            raise IRError(
                f"node %{n} feeds a delay edge inside a recurrent component but has no shape; "
                "the reference backend needs it to build the t = 0 zeros"
            )
        dims = _concrete(shape, self.B)
        dtype = _TORCH_DTYPES.get(self.graph.node(n).get("dtype", "float32"), torch.float32)
        return torch.zeros(dims, dtype=dtype, device=self.device)

    def seq_input(self, e: Edge) -> Tensor:
        """The whole-sequence value an edge delivers (shifted one step for a delay edge)."""
        seq = self.values[e.src]
        if e.delay == 0:
            return seq
        first = self.initial_delay(e.src, like=seq[0])
        return torch.cat([first.unsqueeze(0), seq[:-1]])


def _concrete(shape: Sequence[Any], batch: int) -> tuple[int, ...]:
    return tuple(batch if d == "B" else int(d) for d in shape)
