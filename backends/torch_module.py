"""``to_torch``: a compiled program as a trainable ``torch.nn.Module`` with the source's state_dict names.

Why nested modules: nn.Module names may not contain dots, yet users (and
their checkpoints, optimizers' param groups, schedulers) know the weights by
the source model's dotted ``state_dict`` names. Rebuilding the dotted path as
nested container modules makes ``module.state_dict()`` keys equal the
source's, so ``load_state_dict(source.state_dict())`` and back just work.

Why rebinding on every call: the program reads its weights from its
``params`` dict. The module owns the tensors (``nn.Parameter`` for learnable
roles, buffers for the rest, e.g. BatchNorm running statistics) and points
the program's dict at them before each run, so ``.to(device)``,
``load_state_dict`` and optimizer steps are always what runs, with no copies.

Works for every torch-native backend (reference, cpu, cuda): the forward is
the program's own autograd path (for cpu/cuda a ``torch.autograd.Function``
over the generated kernels), so ``loss.backward()`` fills ``.grad`` of the
module's parameters. ``CompiledModel.to_torch()`` is the public entry point.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from snncc.backends.reference.ops import BN_FOLD_ROLES
from snncc.backends.reference.program import check_dropout_trainable
from snncc.errors import UnsupportedError

#: prefix of everything this wrapper adds to the root module, so source names cannot clash
_PREFIX = "snncc_"


class _Scope(nn.Module):
    """A plain container standing for one prefix of the source's dotted names."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("this module only holds parameters of an snncc program")


class ProgramModule(nn.Module):
    """An nn.Module whose parameters are a program's weights and whose forward runs the program.

    ``forward(x)`` runs ``x`` [T, B, ...] from a fresh state and returns the
    outputs; ``snncc_run(x, state)`` continues a stream. ``train()``/``eval()``
    switch BatchNorm and dropout between batch statistics and running ones,
    as in the source model (the initial mode is the one the model was
    compiled in).
    """

    def __init__(self, program: Any) -> None:
        super().__init__()
        params = getattr(program, "params", None)
        if not isinstance(params, dict) or not all(
            isinstance(v, torch.Tensor) for v in params.values()
        ):
            raise UnsupportedError(
                "to_torch needs a program whose weights are torch tensors (backends "
                f"reference, cpu, cuda); {type(program).__name__} holds "
                f"{sorted({type(v).__name__ for v in (params or {}).values()}) or 'no weights'}"
            )
        object.__setattr__(self, "_snncc_prog", program)  # a plain attribute, not a submodule
        #: (name, owner, leaf, dtype as compiled): the program's arithmetic (and its kernels)
        #: is for that dtype, so a module cast with .double() / .half() is refused at its run
        self._snncc_slots: list[tuple[str, nn.Module, str, torch.dtype]] = []
        for name, tensor in params.items():
            owner, leaf = self._owner(name)
            value = tensor.detach()  # shares storage with the program's tensor
            if tensor.requires_grad and tensor.is_floating_point():
                owner.register_parameter(leaf, nn.Parameter(value, requires_grad=True))
            else:
                owner.register_buffer(leaf, value)
            self._snncc_slots.append((name, owner, leaf, tensor.dtype))
        graph = program.graph
        compiled_training = any(bool(graph.attrs(n).get("training", False)) for n in graph.nx.nodes)
        self.forward = _own_forward(self)
        override = getattr(program, "training", None)
        self.train(compiled_training if override is None else bool(override))

    def train(self, mode: bool = True) -> ProgramModule:
        """Switch BatchNorm and dropout as ``nn.Module.train`` does; refused where BatchNorm
        was folded into a conv/linear (no batch statistics are left to switch to) or eval-mode
        dropout was removed (none is left to apply)."""
        if mode and getattr(self, "_snncc_prog", None) is not None:
            graph = self._snncc_prog.graph
            check_dropout_trainable(graph, "train()")
            folded = [
                n
                for n in graph.nx.nodes
                if any(r in BN_FOLD_ROLES for r in graph.node(n)["params"])
            ]
            if folded:
                names = ", ".join(str(graph.node(n).get("name") or f"%{n}") for n in folded)
                raise UnsupportedError(
                    f"train(): BatchNorm is folded into {names} in this program (the cuda "
                    "backend folds eval-mode BatchNorm under precision tf32/bf16/fp16), so it "
                    "cannot switch to batch statistics. Compile the model in training mode "
                    "(model.train()) to train with batch statistics, or stay in eval() mode: "
                    "gradients flow there too, with the running statistics"
                )
        return super().train(mode)

    def _owner(self, name: str) -> tuple[nn.Module, str]:
        """The (nested) module that holds ``name``'s last segment, created on demand."""
        parts = name.split(".")
        if any(not p for p in parts):
            raise UnsupportedError(f"weight name {name!r} has an empty segment; cannot nest it")
        if parts[0].startswith(_PREFIX):
            raise UnsupportedError(
                f"weight name {name!r} starts with {_PREFIX!r}, which to_torch reserves"
            )
        owner: nn.Module = self
        for part in parts[:-1]:
            child = owner._modules.get(part)
            if child is None:
                if hasattr(owner, part):
                    raise UnsupportedError(
                        f"weight name {name!r}: segment {part!r} clashes with an nn.Module "
                        "attribute; rename the source submodule"
                    )
                child = _Scope()
                owner.add_module(part, child)
            owner = child
        leaf = parts[-1]
        if hasattr(owner, leaf):
            raise UnsupportedError(
                f"weight name {name!r}: {leaf!r} clashes with an existing attribute"
            )
        return owner, leaf

    @property
    def snncc_program(self) -> Any:
        """The wrapped program (its ``params`` point at this module's tensors while it runs)."""
        return self._snncc_prog

    def snncc_run(self, x: Any, state: dict | None = None) -> tuple[Any, dict]:
        """Run ``x`` [T, B, ...] from ``state`` (None: fresh); return (outputs, final state)."""
        prog = self._snncc_prog
        # traced (torch.compile, torch.export), the module's tensors are stand-ins that must
        # not outlive the trace: the program runs on a dict of its own for the trace, and its
        # dict is neither read nor changed. Reading it would guard on what it holds (the
        # program's tensors, or the module's after an eager call), so that an eager call
        # between two compiled ones recompiled the module.
        own = prog.params
        bound = {}
        for name, owner, leaf, dtype in self._snncc_slots:
            tensor = bound[name] = getattr(owner, leaf)
            if tensor.dtype != dtype:
                raise UnsupportedError(
                    f"to_torch(): {name!r} is {tensor.dtype}, but the program was compiled "
                    f"for {dtype} and computes in it; keep the module's dtype (no .double(), "
                    ".half() or .to(dtype)); for 16-bit GEMMs, the cuda backend's precision "
                    "option or torch.autocast"
                )
        if torch.compiler.is_compiling():
            prog.params = bound
        else:
            own.update(bound)
        saved = getattr(prog, "training", None)
        prog.training = self.training
        try:
            return prog.run(x, state)
        finally:
            prog.training = saved
            prog.params = own

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script`` before it compiles a module: refuse in one line (the
        forward is Python that interprets a program, which TorchScript cannot compile)."""
        raise UnsupportedError(
            "torch.jit.script cannot compile an snncc module (its forward is Python that runs "
            "the compiled program); use torch.export.export or torch.compile"
        )

    def forward(self, x: Any) -> Any:
        """Outputs of ``x`` [T, B, ...] from a fresh state (differentiable)."""
        return self.snncc_run(x)[0]


def _own_forward(module: ProgramModule) -> Any:
    """``ProgramModule.forward`` bound to ``module`` with a code object of its own.

    Why: torch.compile keeps its compiled graphs per code object, at most
    ``torch._dynamo.config.recompile_limit`` (8) of them. Every snncc model is a
    ProgramModule, so all of them shared one forward: the ninth model compiled in a
    process failed under ``fullgraph=True`` and ran eagerly, with a warning, without it.
    A copy of the code object gives each module its own budget.
    """
    fn = ProgramModule.forward
    code = fn.__code__.replace()  # equal, but another object
    own = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    own.__qualname__, own.__doc__ = fn.__qualname__, fn.__doc__
    return types.MethodType(own, module)


def to_torch(program: Any) -> ProgramModule:
    """An nn.Module over ``program`` (see :class:`ProgramModule`); weights shared, not copied."""
    return ProgramModule(program)
