"""The neuron split (tensor parallel): each rank computes its own part of every layer's neurons,
and of the output features of the GEMM or convolution feeding them; an all-gather joins the
parts wherever something needs a layer whole (the next GEMM, a flatten, an output).

Why it is exact in the forward: neuron dynamics are element-wise and per-channel
ops (BatchNorm in eval mode, pooling) stay within a channel, so nothing moves
inside a layer; each output feature of a GEMM is the same dot product whichever
rank computes it (whether the BLAS gives it the same bits with fewer output
columns is a property of the library: the tests check each shape). Recurrent
groups run whole on every rank.

The rank's graph (:func:`snncc.distributed.graphs.shard_graph`) is cut into
segments at the gathers; each segment is an ordinary program of the model's
backend, and the gathers are autograd functions (:mod:`.comm`), so training
works through ``train_step``: every rank computes the same loss from the same
gathered outputs, and each ends up with the gradient of its own piece of the
weights (and the whole gradient of what runs whole).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from snncc.errors import ShapeError
from snncc.ir.graph import Graph
from snncc.ir.passes.partition import SHARD_MAKING, refuse_inexact

from . import comm
from .graphs import extract, shard_graph, shard_plan, shard_ranges
from .runner import State, as_list, as_value, lower, own_state, placement

Tensor = torch.Tensor


class NeuronSplit:
    """Rank ``rank``'s piece of every layer's neurons (see the module docstring)."""

    schedule = "neuron_split"

    def __init__(
        self,
        graph: Graph,
        backend: str,
        options: Mapping[str, Any],
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        self.rank, self.world = placement(rank, world)
        self.where = f"neuron piece {self.rank} of {self.world}"
        with comm.on_rank(self.rank, self.where):
            refuse_inexact(graph, "neuron_split")
            self.whole = graph
            self.dims, gathers = shard_plan(graph)
            self.gathers = set(gathers)
            self.graph, self.pieces = shard_graph(graph, self.rank, self.world)
            self._segment(backend, options)
        self.device = next(
            (p.device for prog in self.programs for p in prog.params.values()), torch.device("cpu")
        )

    # ------------------------------------------------------------ segments
    def _reads_whole(self, n: int) -> bool:
        """Whether node ``n`` needs its inputs whole (it is not part of the split, or it is a
        GEMM/convolution making a split from a whole input)."""
        return n not in self.dims or self.graph.op(n) in SHARD_MAKING

    def _segment(self, backend: str, options: Mapping[str, Any]) -> None:
        """Cut the rank's graph into programs where a value must change hands: before a
        reader of a gathered value that needs it whole, and before a GEMM or convolution
        reading a whole value (its input gradient is summed over ranks there)."""
        g = self.graph
        order = g.topo_order()

        def cut(i: int, n: int) -> bool:
            gathered = i in self.gathers and self._reads_whole(n)
            copied = g.op(n) in SHARD_MAKING and i not in self.dims and g.op(i) != "input"
            return gathered or copied

        level: dict[int, int] = {}
        for n in order:
            level[n] = max((level[i] + int(cut(i, n)) for i in g.inputs(n)), default=0)
        depth = 1 + max(level.values())
        self.levels = [[n for n in order if level[n] == k] for k in range(depth)]
        self.programs = []
        #: per segment: its inputs as (value, how): "input", "pass", "gather", "copy",
        #: "gather_copy" (see _arrive)
        self.inputs: list[list[tuple[int, str]]] = []
        self.outputs: list[list[int]] = []
        outputs = set(g.meta["outputs"])
        for k, nodes in enumerate(self.levels):
            kept = set(nodes)
            ins: list[tuple[int, str]] = []
            items: list[Any] = []
            for n in nodes:
                if g.op(n) == "input":
                    ins.append((n, "input"))
                    items.append(n)
            for v in sorted({i for n in nodes for i in g.inputs(n) if i not in kept}):
                readers = [e.dst for e in g.users(v) if e.dst in kept]
                making = [r for r in readers if g.op(r) in SHARD_MAKING]
                if v in self.gathers:
                    kinds = (
                        ("gather_copy", making),
                        ("gather", [r for r in readers if r not in self.dims]),
                        ("pass", [r for r in readers if r in self.dims and r not in making]),
                    )
                elif v not in self.dims:
                    kinds = (("copy", making), ("pass", [r for r in readers if r not in making]))
                else:
                    kinds = (("pass", readers),)
                whole = self.whole.node(v)["shape"]
                for how, rs in kinds:
                    if rs:
                        ins.append((v, how))
                        shape = whole if how.startswith("gather") else g.node(v)["shape"]
                        items.append((v, rs, shape))
            later = {i for m in self.levels[k + 1 :] for n in m for i in g.inputs(n)}
            outs = [n for n in nodes if n in outputs] + [n for n in nodes if n in later]
            program = lower(extract(g, nodes, items, outs), backend, options)
            self.programs.append(program)
            self.inputs.append(ins)
            self.outputs.append(outs)

    @property
    def params(self) -> dict[str, Tensor]:
        """This rank's weights: its pieces of the split layers, the rest whole."""
        out: dict[str, Tensor] = {}
        for prog in self.programs:
            out.update(prog.params)
        return out

    def _bind_params(self) -> None:
        """One tensor per weight name in every segment (they are lowered separately)."""
        shared = self.params
        for prog in self.programs:
            for name in prog.params:
                prog.params[name] = shared[name]

    def piece_of(self, name: str) -> tuple[int, int, int] | None:
        """(axis, lo, hi): where this rank's piece of weight ``name`` sits in the whole
        weight, or None when the rank holds it whole."""
        whole, mine = self.whole.params[name].shape, self.graph.params[name].shape
        if tuple(whole) == tuple(mine):
            return None
        axis = next(d for d in range(len(whole)) if whole[d] != mine[d])
        for n, (_, lo, hi) in self.pieces.items():
            if name in self.graph.node(n)["params"].values():
                return axis, lo, hi
        return None

    # ------------------------------------------------------------ running
    def _arrive(
        self, values: dict[int, Tensor], gathered: dict[int, Tensor], v: int, how: str
    ) -> Tensor:
        """Value ``v`` as a segment reads it: as it is, gathered whole (once per run), and/or
        through :class:`~.comm.CopyToSplit` into a GEMM computing this rank's features."""
        x = values[v]
        if how.startswith("gather"):
            if v not in gathered:
                dim = self.dims[v] + 1  # [T, B, *per-step]: the per-step dim d sits at d + 1
                full = int(self.whole.node(v)["shape"][self.dims[v]])
                sizes = tuple(hi - lo for lo, hi in shard_ranges(full, self.world))
                gathered[v] = comm.Gather.apply(x, dim, sizes, self.rank)
            x = gathered[v]
        if how.endswith("copy") and x.requires_grad:
            x = comm.CopyToSplit.apply(x)
        return x

    def _forward(self, x: Any, state: Mapping[int, Any] | None) -> tuple[list[Tensor], State]:
        self._bind_params()
        xs = as_list(x)
        values: dict[int, Tensor] = {}
        for n, xi in zip(self.graph.meta["inputs"], xs):
            if n in self.pieces:  # an input read element-wise: this rank's piece of it
                dim, lo, hi = self.pieces[n]
                xi = xi.narrow(dim + 1, lo, hi - lo)
            values[n] = xi
        new_state: State = {}
        gathered: dict[int, Tensor] = {}
        for prog, ins, outs in zip(self.programs, self.inputs, self.outputs):
            args = [self._arrive(values, gathered, v, how) for v, how in ins]
            y, st = prog.run(as_value(args), own_state(prog.graph, state))
            values.update(zip(outs, as_list(y)))
            new_state.update(st or {})
        outputs = [values[o] for o in self.graph.meta["outputs"]]
        return outputs, new_state

    def _local_state(self, state: Mapping[int, Any] | None) -> Mapping[int, Any] | None:
        """A whole model's state cut to this rank's pieces (a state of this rank passes)."""
        if not state:
            return state
        out = {}
        for n, d in state.items():
            if n in self.pieces:
                dim, lo, hi = self.pieces[n]
                want = hi - lo
                out[n] = {
                    k: v.narrow(dim, lo, want) if v.shape[dim] != want else v for k, v in d.items()
                }
            else:
                out[n] = d
        return out

    def run(self, x: Any, state: Mapping[int, Any] | None = None) -> tuple[Any, State]:
        """Outputs of ``x`` [T, B, ...] (whole, on every rank) and this rank's state pieces."""
        with comm.on_rank(self.rank, self.where), torch.no_grad():
            ys, st = self._forward(x, self._local_state(state))
        return as_value(ys), st

    def train_step(
        self, x: Any, loss_fn: Callable[[Any], Tensor], state: Mapping[int, Any] | None = None
    ) -> float:
        """Forward, ``loss_fn`` on the whole outputs (the same on every rank) and backward;
        each rank's ``.grad`` holds the gradient of its own weight pieces."""
        with comm.on_rank(self.rank, self.where):
            ys, _ = self._forward(x, self._local_state(state))
            value = loss_fn(as_value(ys))
            if value.dim() != 0:
                raise ShapeError(f"loss_fn must return a scalar; got shape {tuple(value.shape)}")
            value.backward()
        return float(value.detach())
