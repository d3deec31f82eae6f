"""The one backend registry: name -> factory (ARCHITECTURE.md, "Backends").

A backend module registers itself on import; :func:`get` imports the module
lazily, so a missing optional dependency (jax, cupy) surfaces as one clear
BackendError only when that backend is asked for, never as a silent switch
to another backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from snncc.errors import BackendError

#: name -> module that registers it (imported on first use)
_KNOWN: dict[str, str] = {
    "reference": "snncc.backends.reference",
    "jax": "snncc.backends.jax",
    "cpu": "snncc.backends.cpu",
    "cuda": "snncc.backends.cuda",
}
_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., Any]) -> None:
    """Register ``factory`` (returns a Backend) under ``name``; a duplicate name is an error."""
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise BackendError(f"backend {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Every backend name snncc knows, whether or not its dependencies are installed."""
    return sorted(set(_KNOWN) | set(_REGISTRY))


def get(name: str) -> Any:
    """A backend instance by name; unknown names raise BackendError listing the choices."""
    if name not in _REGISTRY:
        if name not in _KNOWN:
            raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(available())}")
        importlib.import_module(_KNOWN[name])
    return _REGISTRY[name]()
