"""CpuProgram: the reference interpreter's schedule, with every neuron run by a compiled kernel.

Why a subclass of the reference program: the stateless ops (linear, conv,
pooling, BN, reshapes) must run exactly as the reference backend runs them for
the cpu backend's spikes to match it bit for bit, so they are *inherited*, not
copied. Only the neuron hooks change: a neuron layer runs the whole sequence in
one call of the fused C++ kernel (:mod:`snncc.backends.cpu.neuron`, driven by
the device-independent :mod:`snncc.backends.cpu.autograd`), whose fused
prologue/epilogue steps replace the interpreter's ``apply_steps``; a neuron
inside a recurrent component (snnTorch RLeaky, Norse LIFRecurrentCell, any
neuron fed back through a delay) runs the same kernel one step at a time
(T = 1 per call, its state carried between the calls), in the reference
interpreter's step order.
"""

from __future__ import annotations

from typing import Any

import torch

from snncc.backends.cpu.autograd import run_layer
from snncc.backends.cpu.forms import check_node_params
from snncc.backends.cpu.neuron import NeuronKernel
from snncc.backends.cpu.op_threads import FittedOps, split_for
from snncc.backends.cpu.recurrent import RecurrentKernel, fused_recurrent
from snncc.backends.cpu.saved_spikes import spike_fed_gemms, spikes_saved_as_uint8
from snncc.backends.reference.program import ReferenceProgram
from snncc.errors import UnsupportedError
from snncc.ir.graph import Graph
from snncc.ir.recurrent import fused_plan
from snncc.ir.schedule import groups_of

Tensor = torch.Tensor

#: what a spike-fed linear/conv keeps of its input for the backward
SAVED_SPIKE_DTYPES = ("uint8", "float32")
#: how recurrent groups run: "step" (the reference's order, bit for bit) or "fused" (one
#: kernel over time where snncc.ir.recurrent found a plan; another summation order)
RECURRENT_SCHEDULES = ("step", "fused")


def refuse_jit_trace() -> None:
    """Refuse ``torch.jit.trace`` in one line. Why: it records torch ops only, and the
    kernels are ctypes (cpu) or CuPy (cuda) calls, so its trace would hold none of their
    work; it failed inside torch with "unordered_map::at". torch.compile and torch.export
    trace them as the custom ops (custom_ops.py); TorchScript cannot (its tracer rejects
    their int-list arguments, and torch deprecates it)."""
    if torch.jit.is_tracing():
        raise UnsupportedError(
            "torch.jit.trace cannot record the cpu and cuda backends' compiled kernels "
            "(TorchScript sees them as opaque calls, and torch deprecates it); capture the "
            "module with torch.export.export or torch.compile, which trace them as snncc's "
            "custom ops, or trace a backend='reference' compile (ONNX, which torch.onnx.export "
            "with dynamo=False traces this way: snncc export --format onnx)"
        )


class CpuProgram(ReferenceProgram):
    """A graph whose neuron layers run as compiled kernels (C++/OpenMP, same source as CUDA).

    Parameters
    ----------
    graph
        The scheduled graph.
    cache_dir
        Where compiled kernels are cached (default ``~/.cache/snncc/cpu``).
    recompute
        Backward recomputes each neuron's charged membrane from its input
        instead of saving it in the forward (less memory while training).
    saved_spike_dtype
        ``"uint8"`` (default): a linear/conv fed by spikes keeps them for its
        weight gradient as uint8 (exact, a quarter of the bytes;
        :mod:`snncc.backends.cpu.saved_spikes`); ``"float32"`` keeps torch's
        fp32 copy (no pack/unpack passes: a little faster, more memory).
    recurrent
        ``"step"`` (default here: the reference's step order, bit for bit) or ``"fused"``:
        each recurrent group with a fused plan in the IR (:mod:`snncc.ir.recurrent`)
        runs as one kernel over time (:mod:`snncc.backends.cpu.recurrent`); groups
        without one keep the step schedule (``source`` says why).
    **reference_options
        ``requires_grad``, ``stateless_per_step``, ``training``: as the reference backend.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        cache_dir: str | None = None,
        recompute: bool = False,
        saved_spike_dtype: str = "uint8",
        recurrent: str | None = None,
        **reference_options: Any,
    ) -> None:
        if saved_spike_dtype not in SAVED_SPIKE_DTYPES:
            raise UnsupportedError(
                f"option saved_spike_dtype={saved_spike_dtype!r}; supported: "
                f"{', '.join(map(repr, SAVED_SPIKE_DTYPES))}"
            )
        recurrent = self.default_recurrent if recurrent is None else recurrent
        if recurrent not in RECURRENT_SCHEDULES:
            raise UnsupportedError(
                f"option recurrent={recurrent!r}; supported: "
                f"{', '.join(map(repr, RECURRENT_SCHEDULES))}"
            )
        super().__init__(graph, **reference_options)
        self.cache_dir = cache_dir
        self.recurrent = recurrent
        self._check_form_params()
        self._build_kernels(recompute)
        self._build_fused_groups()
        #: linear/conv nodes fed by spikes -> how those spikes are made (saved_spikes.py):
        #: the input they save for the backward is kept as a uint8 mask
        self.spike_fed = spike_fed_gemms(graph, self._specs) if saved_spike_dtype == "uint8" else {}
        #: the row ops' calls, with fewer threads on a busy machine where the bits allow
        self.row_ops = FittedOps()
        #: convolution and linear node -> its row function with a split backward
        #: (op_threads.py)
        self._splits = {n: split_for(graph.op(n), graph.attrs(n)) for n in graph.topo_order()}

    def _build_kernels(self, recompute: bool) -> None:
        """The kernel-factory hook: one compiled kernel pair per neuron node into ``kernels``.

        Subclasses for other targets (cuda) override only this; the
        interpreter's setup and the form-param check above stay shared.
        """
        self.kernels: dict[int, NeuronKernel] = {}
        for n, spec in self._specs.items():
            attrs = self.graph.attrs(n)
            self.kernels[n] = NeuronKernel(
                spec,
                attrs.get("prologue") or [],
                attrs.get("epilogue") or [],
                {"recompute": recompute},
                self.cache_dir,
            )

    #: the recurrent schedule when the option is not given (cpu: the exact step schedule)
    default_recurrent = "step"

    def _build_fused_groups(self) -> None:
        """Per recurrent group: its fused plan and kernel (option ``recurrent="fused"``), or
        the one-line reason it runs step by step, for ``source``."""
        self._fused: dict[int, tuple[dict[str, Any], Any]] = {}
        self._step_notes: dict[int, str] = {}
        for group in groups_of(self.graph):
            if group["kind"] != "recurrent":
                continue
            first = min(group["nodes"], key=self._pos.__getitem__)
            # derived from the graph itself: what an IR records is for its readers (and is
            # checked against this on load, ir/verify.py), never what picks the kernels
            plan, why = fused_plan(self.graph, list(group["nodes"]))
            if plan is None:
                self._step_notes[first] = f"no fused plan: {why}"
            elif self.recurrent != "fused":
                self._step_notes[first] = "fusable; option recurrent='step'"
            else:
                why_not = self._fused_refusal(plan)
                if why_not:
                    self._step_notes[first] = why_not
                else:
                    self._fused[first] = (plan, self._fused_kernel(plan))

    def _fused_refusal(self, plan: dict[str, Any]) -> str:
        """Why this target keeps a fusable group step by step ("" where it fuses)."""
        return ""

    def _fused_kernel(self, plan: dict[str, Any]) -> Any:
        """The compiled fused kernels of one group (the cuda backend overrides this)."""
        return RecurrentKernel(self._specs[plan["neuron"]], plan["port"], self.cache_dir)

    #: widen non-fp32 floating inputs of the kernels (cuda: bf16 autocast) or refuse them
    _widen_inputs = False

    def _check_form_params(self) -> None:
        """Every neuron node: the spec's param roles are the node's (see check_node_params)."""
        for n, spec in self._specs.items():
            where = f"neuron %{n} ({self.graph.node(n).get('name') or '?'!r})"
            check_node_params(spec, list(self.graph.node(n)["params"]), where)

    # ------------------------------------------------------------ listing
    @property
    def kernel_source(self) -> str:
        """Every neuron layer's generated C++ (one translation unit each, concatenated),
        then each fused recurrent group's."""
        parts = []
        for n, kernel in self.kernels.items():
            name = kernel.info.forward_name
            parts.append(f"// ==== node %{n}: {name} ====\n{kernel.source}")
        for plan, kernel in self._fused.values():
            name = kernel.info.forward_name
            parts.append(
                f"// ==== recurrent group of %{plan['neuron']}: {name} ====\n{kernel.source}"
            )
        return "\n".join(parts)

    def _unit_kind(self, unit: list[int]) -> str:
        first = unit[0]
        if first in self._fused:
            plan = self._fused[first][0]
            return (
                f"recurrent, fused: one kernel over t, linear %{plan['linear']} -> port "
                f"{plan['port']} of %{plan['neuron']}, sum {plan['order']}"
            )
        if first in self._step_notes:
            return f"recurrent, step by step ({self._step_notes[first]})"
        return super()._unit_kind(unit)

    @property
    def source(self) -> str:
        """The generated kernels, then the schedule the host side follows."""
        listing = "\n".join(f"// {line}" for line in super().source.splitlines())
        return f"{self.kernel_source}\n// ---- host schedule ----\n{listing}\n"

    def files(self) -> dict[str, str]:
        return {"kernels.cpp": self.kernel_source, "program.txt": super().source}

    def run(self, x: Any, state: dict | None = None) -> tuple[Any, dict]:
        refuse_jit_trace()
        self.row_ops.new_run()  # a row op's bits are checked once it comes back (op_threads.py)
        return super().run(x, state)

    # ------------------------------------------------------------ stateless ops
    def _row_step(self, ctx: Any, n: int, ins: list[Tensor]) -> Tensor:
        """The reference's row op, with fewer threads where other processes hold cores and the
        bits allow (op_threads.py); a spike-fed GEMM saves its spikes as uint8 while training."""
        fn, params = self._row_fn(n), ctx.params(n)
        split = self._splits.get(n)
        source = self.spike_fed.get(n)
        if source is not None and torch.is_grad_enabled():
            scale = None if source.scale is None else self.params[source.scale]
            if scale is None or scale.numel() == 1:
                with spikes_saved_as_uint8(ins[0], scale):
                    return self.row_ops.run(n, fn, ins, params, split)
        return self.row_ops.run(n, fn, ins, params, split)

    # ------------------------------------------------------------ neurons
    def _kernel_for(
        self, n: int, ins: list[Tensor], state: dict | None, quantities: dict, lead: bool
    ) -> Any:
        """Which compiled kernel runs node n on these inputs (the cuda backend picks variants)."""
        return self.kernels[n]

    def _layer_call(
        self, ctx: Any, n: int, ins: list[Tensor], state: dict | None, lead: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Node n's kernel on its inputs (lead=False: one step of a recurrent component,
        [B, ...] -> [B, ...]); returns (output, state after the last step)."""
        quantities = self._quantities(ctx, n, self.kernels[n].info)
        kernel = self._kernel_for(n, ins, state, quantities, lead)
        info = kernel.info
        x = ins[0]
        ports = list(ins[1 : len(info.ports)])
        adds = [ins[p] for p in info.add_ports]
        if not lead:
            x = x.unsqueeze(0)
            ports = [p.unsqueeze(0) for p in ports]
            adds = [a.unsqueeze(0) for a in adds]
        out, new_state = run_layer(kernel, x, ports, adds, state, quantities, self._widen_inputs)
        return (out if lead else out.squeeze(0)), new_state

    def _quantities(self, ctx: Any, n: int, info: Any) -> dict[str, Tensor]:
        """The kernel's quantities: the node's derived constants, computed once per run."""
        p = ctx.neuron_params(n)
        return {q: p[q] for q in info.param_args}

    def _given_state(self, ctx: Any, n: int, x_step: Tensor) -> dict | None:
        """The state the caller passed for node n (checked as the reference does), or None."""
        if "v" not in ctx.state.get(n, {}):
            return None
        return self._neuron_state(ctx, n, x_step)

    def _neuron_seq(self, ctx: Any, n: int, ins: list[Tensor]) -> Tensor:
        state = self._given_state(ctx, n, ins[0][0])
        out, new_state = self._layer_call(ctx, n, ins, state, lead=True)
        ctx.new_state.setdefault(n, {}).update(new_state)
        return out

    def _run_recurrent(self, ctx: Any, unit: list[int]) -> None:
        fused = self._fused.get(unit[0])
        if fused is None:
            return super()._run_recurrent(ctx, unit)
        plan, kernel = fused
        n, lin = plan["neuron"], plan["linear"]
        lp = ctx.params(lin)
        weight, bias = lp["weight"], lp.get("bias")
        if plan["pattern"] == "cat":
            (ext,) = [e for e in self._in_edges[plan["cat"]] if e.port == 0]
            x = ctx.seq_input(ext)
            split = plan["split"]
            c = torch.nn.functional.linear(x.flatten(0, 1), weight[:, :split], bias)
            c = c.unflatten(0, tuple(x.shape[:2]))
            w = weight[:, split:]
            fed: list[Tensor] = []
            T, B = x.shape[:2]
        elif plan["pattern"] == "add":  # x + linear(s@t-1): x (+ the bias) is the feed-forward
            target = n if plan.get("add") is None else plan["add"]
            (ext,) = [e for e in self._in_edges[target] if e.src != lin]
            c = ctx.seq_input(ext)
            c = c if bias is None else c + bias
            w, fed = weight, []
            T, B = c.shape[:2]
        else:
            edges = sorted(self._in_edges[n], key=lambda e: e.port)
            fed = [ctx.seq_input(e) for e in edges if e.port != plan["port"]]
            c, w = bias, weight
            T, B = fed[0].shape[:2]
        H = int(plan["hidden"])
        s0 = ctx.state.get(n, {}).get("delay")
        like = torch.zeros((B, H), dtype=torch.float32, device=ctx.device)
        given = self._given_state(ctx, n, like)
        info = kernel.info
        s0s = [None if given is None else given[v] for v in info.state_vars]
        q = self._quantities(ctx, n, info)
        out, lasts = fused_recurrent(
            kernel,
            fed,
            c,
            w,
            s0,
            s0s,
            [q[k] for k in info.param_args],
            (T, B, H),
            self._widen_inputs,
        )
        ctx.set_value(n, out)
        ctx.new_state.setdefault(n, {}).update(zip(info.state_vars, lasts))
        return None

    def _step_node(self, ctx: Any, n: int, ins: list[Tensor], nstate: dict) -> Tensor:
        if self.graph.op(n) != "neuron":
            return super()._step_node(ctx, n, ins, nstate)
        state = nstate[n] if n in nstate else self._given_state(ctx, n, ins[0])
        out, nstate[n] = self._layer_call(ctx, n, ins, state, lead=False)
        return out
