"""The error types snncc raises.

Errors are part of the interface: each one names the thing that is wrong
(module path, option, file) and what is supported, so users never have to
read a traceback to know what to change.
"""

from __future__ import annotations


class SnnccError(Exception):
    """Base class of every error snncc raises on purpose."""


class UnsupportedError(SnnccError):
    """A module, function, option or file feature snncc cannot compile faithfully."""


class ShapeError(SnnccError, ValueError):
    """An input whose rank, shape or dtype does not fit the compiled model."""


class IRError(SnnccError):
    """A graph that breaks an IR invariant (raised by the verifier and the pass driver)."""


class BackendError(SnnccError):
    """An unknown backend, or a backend whose dependency is missing."""


class CheckpointError(SnnccError):
    """A weights file that is missing, corrupt, or does not fit the model."""
