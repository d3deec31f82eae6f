"""CpuProgram: the reference interpreter's schedule, with every neuron run by a compiled kernel.

Why a subclass of the reference program: the stateless ops (linear, conv,
pooling, BN, reshapes) must run exactly as the reference backend runs them for
the cpu backend's spikes to match it bit for bit, so they are *inherited*, not
copied. Only the neuron hooks change: a neuron layer runs the whole sequence in
one call of the fused C++ kernel (:mod:`snncc.backends.cpu.neuron`), whose
fused prologue/epilogue steps replace the interpreter's ``apply_steps``; a
neuron inside a recurrent component runs the same kernel one step at a time.
"""

from __future__ import annotations

from typing import Any

import torch

from snncc.backends.cpu.neuron import NeuronKernel, run_neuron
from snncc.backends.reference.program import ReferenceProgram
from snncc.ir.graph import Graph

Tensor = torch.Tensor


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
    **reference_options
        ``requires_grad``, ``stateless_per_step``, ``training``: as the reference backend.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        cache_dir: str | None = None,
        recompute: bool = False,
        **reference_options: Any,
    ) -> None:
        super().__init__(graph, **reference_options)
        self.kernels: dict[int, NeuronKernel] = {}
        for n, spec in self._specs.items():
            attrs = graph.attrs(n)
            self.kernels[n] = NeuronKernel(
                spec,
                attrs.get("prologue") or [],
                attrs.get("epilogue") or [],
                {"recompute": recompute},
                cache_dir,
            )

    # ------------------------------------------------------------ listing
    @property
    def kernel_source(self) -> str:
        """Every neuron layer's generated C++ (one translation unit each, concatenated)."""
        parts = []
        for n, kernel in self.kernels.items():
            name = kernel.info.forward_name
            parts.append(f"// ==== node %{n}: {name} ====\n{kernel.source}")
        return "\n".join(parts)

    @property
    def source(self) -> str:
        """The generated kernels, then the schedule the host side follows."""
        listing = "\n".join(f"// {line}" for line in super().source.splitlines())
        return f"{self.kernel_source}\n// ---- host schedule ----\n{listing}\n"

    def files(self) -> dict[str, str]:
        return {"kernels.cpp": self.kernel_source, "program.txt": super().source}

    # ------------------------------------------------------------ neurons
    def _kernel_call(
        self, ctx: Any, n: int, ins: list[Tensor], x: Tensor, v0: Tensor | None, lead: bool
    ) -> tuple[Tensor, Tensor]:
        """Run node n's kernel on x (with lead=False: one step, [B, ...] -> [1, B, ...])."""
        kernel = self.kernels[n]
        adds = [ins[p] for p in kernel.info.add_ports]
        if not lead:
            x = x.unsqueeze(0)
            adds = [a.unsqueeze(0) for a in adds]
        k = ctx.neuron_params(n).get("k") if kernel.info.learns_k else None
        out, v_last = run_neuron(kernel, x, adds, v0, k)
        return (out if lead else out[0]), v_last

    def _neuron_seq(self, ctx: Any, n: int, ins: list[Tensor]) -> Tensor:
        x = ins[0]
        v0 = None
        if "v" in ctx.state.get(n, {}):
            v0 = self._neuron_state(ctx, n, x[0])["v"]  # the reference's shape check
        out, v_last = self._kernel_call(ctx, n, ins, x, v0, lead=True)
        ctx.new_state.setdefault(n, {})["v"] = v_last
        return out

    def _step_node(self, ctx: Any, n: int, ins: list[Tensor], nstate: dict) -> Tensor:
        if self.graph.op(n) != "neuron":
            return super()._step_node(ctx, n, ins, nstate)
        if n in nstate:
            v0 = nstate[n]["v"]
        elif "v" in ctx.state.get(n, {}):
            v0 = self._neuron_state(ctx, n, ins[0])["v"]
        else:
            v0 = None
        out, v_last = self._kernel_call(ctx, n, ins, ins[0], v0, lead=False)
        nstate[n] = {"v": v_last}
        return out
