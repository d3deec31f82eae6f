"""Model -> IR: ``trace(model, example_input) -> Graph`` (torch.fx with framework leaf modules).

Sources: torch.nn, SpikingJelly 2.0 ``activation_based``, snnTorch 1.0 and
Norse 1.1 (each when installed) and snncc's own :mod:`snncc.nn`.
:data:`SUPPORTED` lists every module, function and Tensor method a model may
use; anything else stops tracing with one message naming where it is in the
model and this list. A ``forward`` that loops over time steps itself
(snnTorch / Norse style) is folded into one per-step program
(:mod:`snncc.frontend.loops`).
"""

from typing import Any

from snncc.frontend.tracer import ensure_converters, supported, trace

ensure_converters()

__all__ = ["SUPPORTED", "supported", "trace"]


def __getattr__(name: str) -> Any:
    # SUPPORTED = {"modules": [...], "functions": [...], "methods": [...]}, generated from
    # the converter registry. Lazy, because listing every framework's modules imports
    # every installed framework (Norse alone takes seconds), which compiling a
    # SpikingJelly model should not pay for.
    if name == "SUPPORTED":
        return supported()
    raise AttributeError(f"module 'snncc.frontend' has no attribute {name!r}")
