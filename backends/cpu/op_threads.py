"""Fewer threads for a cpu program's row ops on a busy machine, where that gives the same bits.

Why: each of torch's parallel regions waits at its barrier for every thread,
and beside other processes one of them is often parked behind another
process for a scheduler slice. Measured on the 2-core development VM beside a
test campaign (``benchmarks/compete.py``), M1's small training step took
10.9 ms with torch at 2 threads against 3.4 ms at 1 (1.4 and 1.7 ms idle),
and SpikingJelly lost just as much, so the cpu backend's lead was gone. The
neuron kernels already fit their thread count to the free cores
(:mod:`snncc.backends.cpu.threads`); the row ops between them (linear,
convolution, BatchNorm, pooling) are torch's, and their count may change
their bits: oneDNN splits a convolution's weight-gradient sum over its
threads, MKL a linear's into few outputs (1 and 2 threads differ there), and
a result must not depend on what else the machine runs.

So a row op runs with fewer threads only where that is shown to give the
same bits. For each call signature (the node, its inputs' and params' shapes,
strides, dtypes and gradient flags, the two thread counts) the op and, when
it will be differentiated, its backward are run at both counts on random
values of that signature and compared bit for bit. MKL and oneDNN pick their
algorithm and split from the signature and the thread count, not from the
values, so the comparison answers for every call with that signature. Random
values, not the call's own (a silent layer's input is all zeros), and drawn
again until at least :data:`COMPARED` output elements were compared: another
split may round only a few outputs differently (MKL's [2, 512] by [512, 10]
linear, 1 thread against 2: 2-4 of its 20 outputs, none on some draws). The
comparison runs only on a busy machine, for a signature that comes back in a
third run (:data:`CHECK_AFTER_RUNS`); until then, and always when idle, the
op runs at torch's count. ("The same bits" is as reproducible
as torch itself: without ``MKL_CBWR=AUTO,STRICT``, which the ``snncc``
command and the tests set, MKL may round a GEMM by its operands' alignment.)

The backward follows the same rule on its own: the op's autograd nodes (all
of them between its output and its inputs) lower the count for themselves (a
pre-hook, restored by the post-hook) when the load as the backward starts
asks for it and the pair of counts was found to give the same bits for an
incoming gradient laid out like this one: contiguous, as the forward's check
compared, or as a loss broadcast it (``y.sum()``, ``y.mean(0)``: strides of
0), compared in that layout when it first comes.
A convolution whose weight gradient a count changes (oneDNN splits its sum
over threads) while its forward and input gradient stay the same runs as
:class:`SplitConvolution`: its backward computes the input gradient at the
fitted count, and the weight and bias gradients as oneDNN's threads sum them
(over batch chunks, added in order, at one thread) or else at torch's count,
as calls of the ``aten.convolution_backward`` that autograd calls once. A
linear in that case (MKL divides a weight gradient into few outputs among its
threads by output rows) runs as :class:`SplitLinear`: the weight gradient's
blocks of rows at one thread, or else at torch's count. Either is compared bit
for bit against autograd's own backward before it is used.
torch's count is per thread once a thread has used it, so this changes
nothing for the user's other threads (one that first uses torch during the
call starts from the lowered count; if the op's backward raises, its count
stays lowered).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from snncc.backends.cpu.threads import intra_op_threads, torch_threads

Tensor = torch.Tensor
Params = Mapping[str, Tensor]
#: a row op as the program calls it: (inputs, params) -> output
RowFn = Callable[[list[Tensor], Params], Tensor]
#: how a split backward runs (:class:`SplitConvolution`, :class:`SplitLinear`): torch's count
#: ``n``, the fitted count ``k`` (the input gradient's), and ``part``: 0 for the weight
#: gradient at ``n`` threads, or how it is rebuilt at one thread as the ``n`` threads divide
#: it (a convolution's batch chunks, a linear's first block of output rows)
SplitPlan = tuple[int, int, int]
#: the same op with its backward split over two thread counts: (inputs, params, plan)
SplitFn = Callable[[list[Tensor], Params, SplitPlan], Tensor]


class Split(NamedTuple):
    """An op whose backward can be split over two thread counts."""

    #: the op with its backward split as a plan says
    run: SplitFn
    #: the ``part`` values to try, in order, when one thread is left: (n, inputs, params)
    parts: Callable[[int, list[Tensor], Params], list[int]]
    #: whether the split applies to these inputs at all
    applies: Callable[[list[Tensor]], bool] = lambda ins: True


def _signature(values: list[Tensor] | Params) -> tuple:
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    return tuple((key, tuple(t.shape), t.stride(), t.dtype, t.requires_grad) for key, t in items)


def _random_like(t: Tensor, generator: torch.Generator, grad: bool, normal: bool = False) -> Tensor:
    """Random values in ``t``'s shape, strides and dtype (a leaf; stride-0 views too; ``t``
    may be a meta tensor), in [0.5, 1.5): positive, as a BatchNorm's running variance must
    be; or standard normal (``normal``: an incoming gradient)."""
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    size = max(extent, 1) if t.numel() else 0
    if normal:
        base = torch.randn(size, generator=generator)
    else:
        base = torch.rand(size, generator=generator) + 0.5
    r = base.to(t.dtype).as_strided(t.shape, t.stride()).detach()
    return r.requires_grad_(grad and t.requires_grad)


def _meta_like(values: list[Tensor] | Params) -> Any:
    """Tensors with ``values``' shapes, strides, dtypes and gradient flags and no data: what
    a later check draws its random values from, without keeping the call's tensors alive."""

    def meta(t: Tensor) -> Tensor:
        m = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        return m.requires_grad_(t.requires_grad)

    if isinstance(values, Mapping):
        return {key: meta(t) for key, t in values.items()}
    return [meta(t) for t in values]


#: output elements compared per check at least (small outputs are drawn again): a different
#: rounding may show in few of them (MKL's [2, 512] by [512, 10] linear under strict CNR
#: differs at 1 and 2 threads in 2-4 of its 20 outputs, and in none for some draws)
COMPARED = 1 << 12
#: draws per check at most
MAX_DRAWS = 64
#: a signature is checked in the third program run that calls it on a busy machine, not the
#: first: the check costs a few calls of the op, which a loop of runs (training, a benchmark,
#: a stream) pays back and a one-off call does not
CHECK_AFTER_RUNS = 2


def _kept(t: Tensor) -> Tensor:
    return t


def _own_saved_tensors() -> contextlib.AbstractContextManager:
    """The check's saved tensors pass none of the caller's hooks (only the innermost pair of
    saved-tensor hooks applies): memory accounting or ``save_on_cpu`` never sees them."""
    enabled = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", None)
    if enabled is not None and not enabled():
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_kept, _kept)


def _draw(
    count: int,
    fn: RowFn,
    ins: list[Tensor],
    params: Params,
    grads: bool,
    seed: int,
    grad_like: Tensor | None = None,
) -> tuple[Tensor, tuple]:
    """``fn`` and its gradients at ``count`` threads, on random values of the signature (the
    same values for a seed); the incoming gradient contiguous, or laid out as ``grad_like``."""
    generator = torch.Generator().manual_seed(seed)
    rins = [_random_like(t, generator, grads) for t in ins]
    rparams = {k: _random_like(t, generator, grads) for k, t in params.items()}
    with intra_op_threads(count), torch.set_grad_enabled(grads), _own_saved_tensors():
        y = fn(rins, rparams)
        wrt = [t for t in (*rins, *rparams.values()) if t.requires_grad]
        gradients: tuple = ()
        if grads and wrt and y.requires_grad:
            if grad_like is None:
                g = torch.randn(y.shape, generator=generator).to(y.dtype)
            else:
                g = _random_like(grad_like, generator, False, normal=True)
            gradients = torch.autograd.grad(y, wrt, g)
    return y.detach(), gradients


def _agree(
    first: Callable[[int], tuple[Tensor, tuple]], second: Callable[[int], tuple[Tensor, tuple]]
) -> tuple[bool, bool]:
    """Whether two ways of drawing (``seed -> (output, gradients)``) give the same output and
    the same gradients (False where there are none), on as many draws as the output's size
    asks (:data:`COMPARED`, :data:`MAX_DRAWS`); stops at the first draw where both differ."""
    forward = backward = True
    draws = 1
    seed = 0
    while seed < draws and (forward or backward):
        (y1, g1), (y2, g2) = first(seed), second(seed)
        if seed == 0:
            draws = min(MAX_DRAWS, -(-COMPARED // max(1, y1.numel())))
            backward = bool(g1)
        forward = forward and torch.equal(y1, y2)
        backward = backward and len(g1) == len(g2) and all(map(torch.equal, g1, g2))
        seed += 1
    return forward, backward


def same_bits(
    fn: RowFn,
    ins: list[Tensor],
    params: Params,
    grads: bool,
    counts: tuple[int, int],
    grad_like: Tensor | None = None,
) -> tuple[bool, bool]:
    """Whether ``fn`` gives the same bits at both thread ``counts`` on random values of
    ``ins``' and ``params``' signature: its output, and its gradients (if ``grads``; else
    False). Two answers, because they are two calls: a linear's forward may split over
    threads the same way at both counts while its weight gradient does not (measured with
    MKL without strict CNR: [64, 256] rows into 10 outputs, the weight gradient differs at 1
    and 2 threads and the forward does not; under strict CNR [2, 512] rows into 10 differ
    in the forward only).
    Outputs smaller than :data:`COMPARED` elements are compared on several draws. The
    incoming gradient is contiguous, or laid out as ``grad_like`` (strides of 0 where a
    loss broadcast it: ``y.sum()``, ``y.mean(0)``)."""
    n, k = counts
    return _agree(
        lambda seed: _draw(n, fn, ins, params, grads, seed, grad_like),
        lambda seed: _draw(k, fn, ins, params, grads, seed, grad_like),
    )


def same_as_autograd(fn: RowFn, split: RowFn, ins: list[Tensor], params: Params, n: int) -> bool:
    """Whether ``split`` gives ``fn``'s output and gradients bit for bit (``fn`` at ``n``
    threads; ``split`` picks its own counts), on random values of the signature."""
    return all(
        _agree(
            lambda seed: _draw(n, fn, ins, params, True, seed),
            lambda seed: _draw(n, split, ins, params, True, seed),
        )
    )


def _autocast() -> bool:
    """Whether CPU autocast is on (a split convolution would save the uncast input, where
    autograd saves the cast one: it is not used then)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _in_order(parts: list[Tensor | None]) -> Tensor | None:
    """The parts summed left to right (None where they are None: a gradient not asked for)."""
    total = parts[0]
    if total is None:
        return None
    for part in parts[1:]:
        total = total + part
    return total


class SplitConvolution(torch.autograd.Function):
    """A convolution (``F.conv1d``/``F.conv2d``: same forward) whose backward computes the
    input gradient at the fitted count and the weight and bias gradients either at torch's
    count or, as oneDNN sums them at torch's count, over batch chunks at one thread.

    Why the chunks: oneDNN's weight gradient at 2 threads is, for most batches measured
    (4, 8, 16, 32 rows), bit for bit the sum of the two half batches' weight gradients at
    one thread: its threads split the batch and add their parts. Rebuilt so on one thread,
    the busy machine's step no longer waits at a barrier for a parked thread, with the idle
    bits. Where another split gives other bits (2, 3, 5 or 7 rows; 64 channels) the check
    before use finds it, and the weight gradient stays at torch's count.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        conv: tuple[Callable[..., Tensor], dict[str, Any]],
        plan: SplitPlan,
    ) -> Tensor:
        fn, args = conv
        ctx.save_for_backward(x, weight)
        ctx.args, ctx.plan = args, plan
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        with intra_op_threads(plan[1]):
            return fn(x, weight, bias, **args)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        n, k, chunks = ctx.plan
        a = ctx.args
        dims = weight.dim() - 2

        def backward(grad: Tensor, x: Tensor, mask: list[bool]) -> tuple:
            return torch.ops.aten.convolution_backward(
                grad, x, weight, ctx.bias_sizes, a["stride"], a["padding"], a["dilation"],
                False, [0] * dims, a["groups"], mask,
            )  # fmt: skip

        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        mask = [False, want_w, want_b and ctx.bias_sizes is not None]
        if not grad.is_contiguous():  # the check compared contiguous gradients: autograd's call
            with intra_op_threads(n):
                grad_x, grad_w, grad_b = backward(grad, x, [want_x, *mask[1:]])
            return grad_x, grad_w, grad_b, None, None
        grad_x = grad_w = grad_b = None
        if want_x:
            with intra_op_threads(k):
                grad_x = backward(grad, x, [True, False, False])[0]
        if (want_w or want_b) and chunks:
            with intra_op_threads(1):
                parts = [
                    backward(g, xs, mask)
                    for g, xs in zip(grad.tensor_split(chunks), x.tensor_split(chunks))
                ]
            grad_w = _in_order([p[1] for p in parts])
            grad_b = _in_order([p[2] for p in parts])
        elif want_w or want_b:
            with intra_op_threads(n):
                _, grad_w, grad_b = backward(grad, x, mask)
        return grad_x, grad_w, grad_b, None, None


def split_convolution(op: str, attrs: dict[str, Any]) -> Split | None:
    """``op``'s row function with a split backward (:class:`SplitConvolution`), or None where
    it has none (not a convolution; string padding, which ``convolution_backward`` lacks)."""
    fns = {"conv1d": F.conv1d, "conv2d": F.conv2d}
    if op not in fns or isinstance(attrs["padding"], str):
        return None
    dims = 1 if op == "conv1d" else 2

    def ints(v: Any) -> list[int]:
        return [int(e) for e in v] if isinstance(v, (list, tuple)) else [int(v)] * dims

    args = {
        "stride": ints(attrs["stride"]),
        "padding": ints(attrs["padding"]),
        "dilation": ints(attrs["dilation"]),
        "groups": int(attrs["groups"]),
    }
    conv = (fns[op], args)

    def split(ins: list[Tensor], params: Params, plan: SplitPlan) -> Tensor:
        return SplitConvolution.apply(ins[0], params["weight"], params.get("bias"), conv, plan)

    return Split(split, lambda n, ins, params: [n])


class SplitLinear(torch.autograd.Function):
    """A linear (``F.linear``) whose backward computes the input and bias gradients at the
    fitted count and the weight gradient at torch's count or, as MKL's two threads divide
    it, in two blocks of output rows at one thread.

    Why the blocks: without strict CNR, MKL's weight gradient (``grad.T @ x``) into 5-7 or
    9-11 outputs (a 10-class readout among them) differs at 1 and 2 threads, and at 2
    threads it is, bit for bit, the outputs below 4 (5-7) or below 8 (9-11) and the rest
    computed apart at one thread: measured for 16, 64 and 256 rows of 100 and 512 inputs
    (torch 2.14's MKL, the 2-core AMD EPYC VM); other output counts from 1 to 69 agree at
    both counts. Where another split gives other bits the check before use finds it.
    The gradients are the calls autograd makes for ``F.linear`` of a contiguous 2-D or 3-D
    input (``addmm``/``mm`` on the rows folded into one dimension; the split applies to no
    other input), so a gradient that arrives non-contiguous (``y.sum()``) runs them as
    autograd would, at torch's count.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, plan: SplitPlan
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.plan = plan
        with intra_op_threads(plan[1]):
            return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        n, k, cut = ctx.plan
        if not grad.is_contiguous():  # the check compared contiguous gradients
            k, cut = n, 0
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        with intra_op_threads(k):
            if want_x:
                grad_x = rows.mm(weight).reshape(x.shape)
            if want_b:
                grad_b = rows.sum(0)
        if want_w:
            x_rows = x.reshape(-1, x.shape[-1])
            with intra_op_threads(1 if cut else n):
                if cut:
                    grad_w = torch.cat([rows[:, :cut].t().mm(x_rows), rows[:, cut:].t().mm(x_rows)])
                else:
                    grad_w = rows.t().mm(x_rows)
        return grad_x, grad_w, grad_b, None


#: where MKL's two threads divide a weight gradient's output rows (:class:`SplitLinear`):
#: at a multiple of this many rows
LINEAR_ROW_BLOCK = 4


def split_linear(op: str, attrs: dict[str, Any]) -> Split | None:
    """``op``'s row function with a split backward (:class:`SplitLinear`), or None where it
    is not a linear."""
    if op != "linear":
        return None

    def split(ins: list[Tensor], params: Params, plan: SplitPlan) -> Tensor:
        return SplitLinear.apply(ins[0], params["weight"], params.get("bias"), plan)

    def parts(n: int, ins: list[Tensor], params: Params) -> list[int]:
        outputs = params["weight"].shape[0]
        cuts = range((outputs - 1) // LINEAR_ROW_BLOCK * LINEAR_ROW_BLOCK, 0, -LINEAR_ROW_BLOCK)
        return list(cuts)[:2]  # the largest first: 8 for 9-11 outputs, 4 for 5-7

    def applies(ins: list[Tensor]) -> bool:  # where F.linear folds the rows (see SplitLinear)
        return ins[0].dim() in (2, 3) and ins[0].is_contiguous()

    return Split(split, parts, applies)


def split_for(op: str, attrs: dict[str, Any]) -> Split | None:
    """The op's split backward (a convolution's or a linear's), or None where it has none."""
    return split_convolution(op, attrs) or split_linear(op, attrs)


def _op_nodes(y: Tensor, inputs: list[Tensor]) -> list[Any]:
    """The autograd nodes of the op that made ``y`` from ``inputs``: ``y.grad_fn`` first,
    then what it reaches before the inputs' own nodes (or their gradient accumulators).
    Nodes are told apart by identity: a node's Python object is one while it is alive, so
    the inputs' are held until the walk ends."""
    inputs_nodes = [t.grad_fn for t in inputs if t.grad_fn is not None]
    stop = {id(node) for node in inputs_nodes}
    nodes: list[Any] = []
    seen: set[int] = set()
    todo = [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen or id(node) in stop or hasattr(node, "variable"):
            continue  # hasattr "variable": a leaf's AccumulateGrad
        seen.add(id(node))
        nodes.append(node)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return nodes


class FittedOps:
    """One program's row-op calls, each at torch's thread count or at the fitted one where
    the two were found to give the same bits (the module docstring says why and how)."""

    def __init__(self) -> None:
        #: (signature, torch's count, fitted count) -> whether they give the same bits
        #: (forward, backward)
        self._same: dict[tuple, tuple[bool, bool]] = {}
        #: (signature, counts, "split") -> the split backward's plan that gives autograd's
        #: bits, or None where none does
        self._split: dict[tuple, SplitPlan | None] = {}
        #: (signature, counts) -> the run that first called it busy (CHECK_AFTER_RUNS)
        self._first_run: dict[tuple, int] = {}
        #: signature -> (row function, data-less inputs, params): for the backward's checks
        self._drawn_from: dict[tuple, tuple[RowFn, list[Tensor], Params]] = {}
        #: (signature, counts, incoming gradient's layout) -> whether the backward gives the
        #: same bits at both counts for a gradient laid out so (a loss's broadcast one)
        self._same_layout: dict[tuple, bool] = {}
        #: program runs so far (:meth:`new_run`)
        self.runs = 0
        #: signatures checked so far (the tests read it)
        self.checks = 0

    def new_run(self) -> None:
        """The program starts a run (not counted while torch.compile traces: no guard on it)."""
        if not torch.compiler.is_compiling():
            self.runs += 1

    def run(
        self,
        node: int,
        fn: RowFn,
        ins: list[Tensor],
        params: Params,
        split: Split | None = None,
    ) -> Tensor:
        """``fn(ins, params)``, with fewer threads where the load asks and the bits allow
        (``split``: the op with its backward split over the two counts, where it has one)."""
        if torch.compiler.is_compiling() or ins[0].device.type != "cpu":
            return fn(ins, params)
        n = torch.get_num_threads()
        k = torch_threads(n)
        if k >= n:
            return fn(ins, params)
        grads = torch.is_grad_enabled() and any(t.requires_grad for t in (*ins, *params.values()))
        signature = (node, _signature(ins), _signature(params), grads)
        key = (signature, n, k)
        same = self._same.get(key)
        if same is None:
            if self.runs - self._first_run.setdefault(key, self.runs) < CHECK_AFTER_RUNS:
                return fn(ins, params)  # not checked until it comes back
            self.checks += 1
            same = self._same[key] = same_bits(fn, ins, params, grads, (n, k))
            if grads and same[1]:
                self._drawn_from[signature] = (fn, _meta_like(ins), _meta_like(params))
        if (
            grads
            and same[0]
            and not same[1]
            and split is not None
            and split.applies(ins)
            and not _autocast()
        ):
            plan = self._split_plan(key, fn, split, ins, params, (n, k))
            if plan is not None:
                return split.run(ins, params, plan)
        with intra_op_threads(k if same[0] else n):
            y = fn(ins, params)
        if grads and same[1] and y.grad_fn is not None:
            self._fit_backward(y, [*ins, *params.values()], signature)
        return y

    def _split_plan(
        self,
        key: tuple,
        fn: RowFn,
        split: Split,
        ins: list[Tensor],
        params: Params,
        counts: tuple[int, int],
    ) -> SplitPlan | None:
        """The first split backward that gives autograd's bits for this signature (checked
        once), or None: with one thread left, the weight gradient rebuilt at one thread as
        the ``n`` threads divide it (the op's ``parts``), else at torch's count ``n``."""
        split_key = (*key, "split")
        if split_key not in self._split:
            n, k = counts
            parts = split.parts(n, ins, params) if k == 1 else []
            found = None
            for plan in [*((n, k, part) for part in parts), (n, k, 0)]:
                self.checks += 1
                if same_as_autograd(
                    fn, lambda xs, ps, plan=plan: split.run(xs, ps, plan), ins, params, n
                ):
                    found = plan
                    break
            self._split[split_key] = found
        return self._split[split_key]

    def _fit_backward(self, y: Tensor, inputs: list[Tensor], signature: tuple) -> None:
        """The op's backward runs at the fitted count when, as it starts, it would be fitted
        and the pair of counts was compared (gradients included) for this signature, with
        an incoming gradient laid out as this one. The op's backward is every autograd node
        between ``y`` and its inputs (a voting layer's pooling sits between two views):
        each lowers the count before it runs and puts it back after, so nodes of other ops
        that the engine runs in between keep torch's count."""
        fitted: list[int] = []  # [n, k] while this op's backward runs fitted

        def decide(grad_outputs: tuple) -> None:
            n = torch.get_num_threads()
            k = torch_threads(n)
            fitted[:] = (
                [n, k] if k < n and self._backward_same(signature, n, k, grad_outputs) else []
            )

        def before(grad_outputs: tuple) -> None:
            if fitted:
                torch.set_num_threads(fitted[1])

        def after(grad_inputs: tuple, grad_outputs: tuple) -> None:
            if fitted:
                torch.set_num_threads(fitted[0])

        for i, node in enumerate(_op_nodes(y, inputs)):
            if i == 0:
                node.register_prehook(decide)
            node.register_prehook(before)
            node.register_hook(after)

    def _backward_same(self, signature: tuple, n: int, k: int, grad_outputs: tuple) -> bool:
        """Whether the backward gives the same bits at ``n`` and ``k`` threads for this
        incoming gradient: compared with a contiguous one when the signature was checked, and
        for another layout (a loss's broadcast gradient: strides of 0) when it first comes,
        here in the backward, on random values of the signature laid out the same way."""
        if not self._same.get((signature, n, k), (False, False))[1]:
            return False
        if all(g is None or g.is_contiguous() for g in grad_outputs):
            return True
        (g,) = grad_outputs  # a row op has one output
        key = (signature, n, k, tuple(g.shape), g.stride(), g.dtype)
        same = self._same_layout.get(key)
        if same is None:
            fn, ins, params = self._drawn_from[signature]
            self.checks += 1
            same = self._same_layout[key] = same_bits(fn, ins, params, True, (n, k), g)[1]
        return same
