"""Neurons snncc has never seen, compiled from their own step code (traced, not converted).

Two kinds are recognised:

- a SpikingJelly 2.0 neuron class snncc has no converter for: a subclass of
  ``neuron.SimpleBaseNode`` (its own ``neuronal_charge``, and possibly
  ``neuronal_fire`` / ``neuronal_reset``) or of ``neuron.BaseNode`` (its own
  ``single_step_functional_forward``). Its memories (``v``, ...) are its
  states, at their registered initial values;
- a module whose step is ``forward(x, state) -> (spike, state)``, written with
  element-wise torch ops and a known surrogate (a SpikingJelly surrogate
  module, an snnTorch ``spike_grad``, :func:`snncc.surrogate.spike`), with
  ``state`` one tensor that starts at zero, called in a time
  loop that threads the state (``spk, mem = neuron(cur, mem)``) as snnTorch
  users do. The second parameter must be named ``state``, ``mem``, ``v``,
  ``hidden`` or ``states``, and the module must hold no layers of its own.

The step is traced once (:mod:`snncc.frontend.neuron_trace`) into the node's
``program``; the node's params are the module's own parameters and buffers the
step reads. What cannot be traced (Python control flow on tensor values, an
unknown autograd Function, another torch function) is refused with one message
naming the module, the line and what to change.
"""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import torch
from torch import nn

from snncc.errors import UnsupportedError
from snncc.frontend import torch_nn as tnn
from snncc.frontend.neuron_trace import TraceError, param_names, trace_step
from snncc.frontend.tracer import (
    Call,
    Framework,
    Multi,
    StateArgs,
    own_methods,
    register_fallback,
    register_framework,
    registered_base,
)
from snncc.ir.neuron import NeuronSpec

#: names the state parameter of a user step module may have
STATE_PARAMS = ("state", "mem", "v", "hidden", "states")
_FRAMEWORK_PREFIXES = ("torch", "spikingjelly", "snntorch", "norse", "snncc", "sinabs", "lava")


def _sj_neuron_module() -> Any:
    return sys.modules.get("spikingjelly.activation_based.neuron")


def is_sj_custom(m: nn.Module) -> bool:
    """A SpikingJelly neuron class of the user's (or one snncc has no converter for)."""
    N = _sj_neuron_module()
    if N is None:
        return False
    return isinstance(m, (N.BaseNode, N.SimpleBaseNode))


def _state_param(m: nn.Module) -> str | None:
    """The name of a user step module's state parameter, or None if it is not one."""
    mod = type(m).__module__ or ""
    if mod.split(".")[0] in _FRAMEWORK_PREFIXES or mod.startswith("snncc"):
        return None
    try:
        params = list(inspect.signature(type(m).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if len(params) != 2 or params[1].name not in STATE_PARAMS:
        return None
    from snncc.frontend.neuron_trace import _known_surrogate

    for child in m.children():
        try:
            if _known_surrogate(child) is None:
                return None
        except UnsupportedError:
            continue  # a surrogate of the framework's snncc cannot reproduce: refused later
    return params[1].name


def is_user_step(m: nn.Module) -> bool:
    return _state_param(m) is not None


# ----------------------------------------------------------------- converters
def _x_like(call: Call) -> torch.Tensor:
    """A tensor of the neuron's per-step input shape (what the traced step sees)."""
    x = call.inputs[0]
    shape = x.fx_shape[call.time_dims :] if call.time_dims else x.fx_shape
    return torch.zeros(tuple(shape), dtype=torch.float32)


def _spec(model: str, program: dict[str, Any], m: nn.Module) -> NeuronSpec:
    names = param_names(program)
    learnable = tuple(
        role
        for role, name in names.items()
        if isinstance(_get(m, name), nn.Parameter) and _get(m, name).requires_grad
    )
    output = "spike" if "spike" in program["outputs"] else "membrane"
    v_init = float(program["inits"].get("v", 0.0))
    return NeuronSpec(
        model=model,
        charge="traced",
        output=output,
        reset="none",
        v_init=v_init,
        param_roles=tuple(program["params"]),
        learnable=learnable,
        program=program,
    )


def _get(m: nn.Module, dotted: str) -> Any:
    obj: Any = m
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _params(call: Call, m: nn.Module, program: dict[str, Any]) -> dict[str, str]:
    out = {}
    for role, name in param_names(program).items():
        full = f"{call.path}.{name}" if call.path else name
        out[role] = call.ctx.add_param(full, _get(m, name))
    return out


def _trace(call: Call, m: nn.Module, step: Any, states: dict[str, float]) -> dict[str, Any]:
    try:
        return trace_step(m, step, states, _x_like(call))
    except TraceError as e:
        raise call.unsupported(f"its step cannot be compiled: {e}{_subclass_hint(m)}") from None


def _subclass_hint(m: nn.Module) -> str:
    """What to do when a subclass of a neuron snncc converts overrides part of it: the
    base's step runs through the framework's fused functional code, which only the
    exact class's converter understands."""
    base = registered_base(type(m).__mro__[1])
    if base is None:
        return ""
    own = sorted(own_methods(type(m)))
    N = _sj_neuron_module()
    if (
        N is not None
        and issubclass(base, N.BaseNode)
        and own
        and all(n.startswith("neuronal_") for n in own)
    ):
        # SpikingJelly 2.0's BaseNode steps through single_step_functional_forward and
        # never calls neuronal_*: the override is dead code in SpikingJelly itself
        return (
            f" ({type(m).__name__} overrides {', '.join(own)} of {base.__name__}, which "
            "SpikingJelly's BaseNode never calls (its step is single_step_functional_forward): "
            "subclass neuron.SimpleBaseNode to define the step through neuronal_charge/fire/"
            "reset, or override single_step_functional_forward)"
        )
    return (
        f" ({type(m).__name__} overrides {', '.join(own) or 'methods'} of {base.__name__}, "
        "whose step snncc converts only as written; subclass neuron.SimpleBaseNode with your "
        "neuronal_charge/neuronal_fire/neuronal_reset instead, or keep only __init__)"
    )


def _sj_states(call: Call, m: nn.Module) -> dict[str, float]:
    states = {}
    for name, value in m._memories.items():
        if isinstance(value, torch.Tensor):
            raise call.unsupported(
                f"memory {name!r} holds a tensor; a traced SpikingJelly neuron must start from "
                "its registered initial values (call functional.reset_net first)"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise call.unsupported(f"memory {name!r} starts at {value!r}, not a number")
        if not math.isfinite(value):
            raise call.unsupported(f"memory {name!r} starts at {value!r}")
        states[name] = float(value)
    return states


def _sj_custom(call: Call, m: nn.Module) -> int:
    N = _sj_neuron_module()
    states = _sj_states(call, m)
    names = list(states)

    if isinstance(m, N.SimpleBaseNode):

        def step(x: Any, s: list[Any]) -> tuple[Any, list[Any]]:
            saved = dict(m._memories)
            try:
                for name, value in zip(names, s):
                    m._memories[name] = value
                out = m.single_step_forward(x)
                return out, [m._memories[name] for name in names]
            finally:
                m._memories.update(saved)

    else:

        def step(x: Any, s: list[Any]) -> tuple[Any, list[Any]]:
            outs, new = m.single_step_functional_forward((x,), tuple(s))
            return outs[0], list(new)

    program = _trace(call, m, step, states)
    spec = _spec(type(m).__name__, program, m)
    return call.emit(
        "neuron",
        [tnn.one_input(call)],
        attrs={"neuron": spec.to_dict()},
        params=_params(call, m, program),
    )


def _user_step(call: Call, m: nn.Module) -> int | Multi:
    if len(call.inputs) != 1:
        raise call.unsupported(
            "a traced step module is called with its input only here; its state is kept "
            "inside the compiled program (thread it through the time loop: "
            "spk, mem = neuron(x, mem), starting from zeros)"
        )

    def step(x: Any, s: list[Any]) -> tuple[Any, list[Any]]:
        result = m(x, s[0])
        if not isinstance(result, tuple) or len(result) != 2:
            raise TraceError("the step must return (spike, state)")
        out, new = result
        if isinstance(new, (tuple, list)):
            raise TraceError(
                "the step returned a tuple state; a traced step module keeps one state tensor "
                "(write a neuron with several states as a SpikingJelly BaseNode subclass)"
            )
        return out, [new]

    program = _trace(call, m, step, {"v": 0.0})
    program["outputs"]["membrane"] = program["next_state"]["v"]
    spec = _spec(type(m).__name__, program, m)
    params = _params(call, m, program)
    x = tnn.one_input(call)
    out = call.emit("neuron", [x], attrs={"neuron": spec.to_dict()}, params=params)
    if spec.output == "membrane":
        return Multi((out, out))

    def membrane() -> int:
        mem = spec.replace(output="membrane")
        return call.emit("neuron", [x], attrs={"neuron": mem.to_dict()}, params=params)

    return Multi((out, membrane))


def _from_zeros(m: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """A step module called for its shapes only, its state dropped by the loop folding: the
    first step's (zeros, of the input's shape: the state is element-wise)."""
    if args or kwargs:
        return m(x, *args, **kwargs)
    return m(x, torch.zeros_like(x))


def _zeros(value: Any) -> bool:
    """A fresh state for a traced step module: zeros (a tensor or a tuple of them)."""
    if isinstance(value, torch.Tensor):
        return bool((value == 0).all())
    if isinstance(value, (tuple, list)) and value:
        return all(_zeros(v) for v in value)
    return False


register_fallback(is_sj_custom, "a SpikingJelly neuron subclass (traced from its step)")(_sj_custom)
register_framework(
    Framework(
        name="traced",
        owns=is_user_step,
        step_mode=lambda m: "s",
        stateful=lambda m: True,
        source="torch",
        priority=0,
        loops=lambda m: True,
        state_args=lambda m: StateArgs(
            (_state_param(m) or "state",), (1,), _zeros, internal_ok=False
        ),
        call_without_state=_from_zeros,
    )
)
register_fallback(is_user_step, "a module with a step forward(x, state) (traced)")(_user_step)
