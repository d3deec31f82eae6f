"""Hooks and parametrizations: Python a compiled model would silently leave out.

Why refuse them: snncc compiles what a module computes from its stored tensors. A forward
hook that rescales an output, a pre-hook that masks a weight (``torch.nn.utils.prune``,
the old ``weight_norm``) or a parametrization (``parametrizations.weight_norm``) is code
around that computation. The compiled program would run without it and give other
outputs, without a word. So a model carrying one is refused, before anything of it runs,
in one line that names the module, the hook and, for torch's own weight transforms, the
call that bakes the transform into a stored weight.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

from snncc.errors import UnsupportedError

#: a module's hook dicts, what each holds and the torch call that registers a global one
_HOOKS = (
    ("_forward_pre_hooks", "a forward pre-hook", "register_module_forward_pre_hook"),
    ("_forward_hooks", "a forward hook", "register_module_forward_hook"),
    ("_backward_pre_hooks", "a backward pre-hook", "register_module_full_backward_pre_hook"),
    ("_backward_hooks", "a backward hook", "register_module_full_backward_hook"),
)


def refuse_hooks(model: nn.Module) -> None:
    """Raise :class:`UnsupportedError` if the model, or any module in it, has a forward or
    backward hook or a parametrization, or torch has a global module hook registered."""
    for attr, what, register in _HOOKS:
        hooks = getattr(torch_module, f"_global{attr}", None) or {}
        for hook in hooks.values():
            raise UnsupportedError(
                f"a global module hook is registered ({what}: {_name(hook)}, "
                f"torch.nn.modules.module.{register}); snncc compiles each module's own "
                "computation and would run without it: remove it (handle.remove()) before "
                "compiling"
            )
    for path, module in model.named_modules():
        where = f"module '{path}'" if path else "the model"
        what_module = f"{where} ({type(module).__module__}.{type(module).__qualname__})"
        if parametrize.is_parametrized(module):
            name, transforms = next(iter(module.parametrizations.items()))
            kinds = ", ".join(type(t).__name__ for t in transforms)
            raise UnsupportedError(
                f"{what_module}: its {name!r} is computed by a parametrization ({kinds}); "
                "snncc compiles stored tensors: bake it first with "
                f"torch.nn.utils.parametrize.remove_parametrizations(module, {name!r}) "
                "(training the compiled model then trains the baked tensor)"
            )
        for attr, what, _ in _HOOKS:
            for hook in (getattr(module, attr, None) or {}).values():
                raise UnsupportedError(f"{what_module} has {what} ({_name(hook)}); {_fix(hook)}")


def _fix(hook: Any) -> str:
    """How to compile without the hook: bake torch's own weight transforms, else remove it."""
    baked = " (training the compiled model then trains the baked tensor)"
    cls = type(hook)
    where = cls.__module__
    if where == "torch.nn.utils.weight_norm":
        return f"bake it first with torch.nn.utils.remove_weight_norm(module){baked}"
    if where == "torch.nn.utils.spectral_norm":
        return f"bake it first with torch.nn.utils.remove_spectral_norm(module){baked}"
    if where == "torch.nn.utils.prune":
        name = getattr(hook, "_tensor_name", "weight")
        return f"bake it first with torch.nn.utils.prune.remove(module, {name!r}){baked}"
    if getattr(hook, "__module__", "") == "spikingjelly.activation_based.monitor":
        return (
            "a SpikingJelly monitor records through hooks, which a compiled model does not "
            "call: call monitor.remove_hooks() before compiling"
        )
    return (
        "snncc compiles the module's own computation and would run without it: remove it "
        "(handle.remove()) before compiling"
    )


def _name(hook: Any) -> str:
    """A hook's qualified name and, for a function, where it is defined."""
    fn = getattr(hook, "__func__", hook)  # a bound method: its function
    name = getattr(fn, "__qualname__", None) or type(hook).__qualname__
    if not inspect.isfunction(fn):
        return f"{type(hook).__module__}.{type(hook).__qualname__}"
    code = fn.__code__
    return f"{name} at {os.path.basename(code.co_filename)}:{code.co_firstlineno}"
