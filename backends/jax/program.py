"""JaxProgram: the rendered module, loaded from disk, jitted once, run from any state."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from snncc.backends import kernel_cache
from snncc.backends.base import check_state, state_spec
from snncc.errors import BackendError, ShapeError
from snncc.ir import safe_files
from snncc.ir.graph import Graph


def default_cache_dir() -> Path:
    """Where generated modules are written unless ``cache_dir`` is given (readable by users)."""
    return kernel_cache.default_dir("jax")


def load_module(source: str, cache_dir: str | os.PathLike | None = None) -> tuple[ModuleType, Path]:
    """Write ``source`` to ``<cache_dir>/model_<hash>.py`` (atomically) and run it as a module.

    Why a file at all: tracebacks, ``inspect`` and users all get a real path to
    read, and the same source hashes to the same file. What runs is ``source``
    itself, compiled from memory under that file name, never the file's
    contents read back: whatever happens to the file, only the generated code
    runs.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    folder = kernel_cache.folder("jax", cache_dir)
    path = folder / f"model_{digest}.py"
    try:
        try:
            current = safe_files.read_file(path, "module", BackendError, len(source.encode()) + 1)
        except BackendError:
            current = None
        if current != source.encode():
            safe_files.write_file(path, source)
    except OSError as exc:
        raise BackendError(
            f"cannot write the generated jax module to {folder} ({exc.strerror or exc}); "
            f"{safe_files.os_error_hint(exc)}, or pass cache_dir=... to a writable folder"
        ) from None
    name = f"snncc_jax_generated_{digest}"
    if name in sys.modules:
        return sys.modules[name], path
    module = ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - our own code
    except Exception:
        del sys.modules[name]
        raise
    return module, path


def to_jax(x: Any) -> jax.Array:
    """torch tensor / numpy array / jax array / nested lists -> float32 jax array."""
    if isinstance(x, jax.Array):
        return x.astype(jnp.float32) if x.dtype != jnp.float32 else x
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    return jnp.asarray(np.asarray(x, dtype=np.float32))


def _check_state_leaf(where: str, value: Any, dtype: str | None) -> None:
    """A carried state's array: jax, numpy or torch (states move between backends), of the
    node's dtype; a float64 state is refused, never cast."""
    kind = type(value).__module__.split(".")[0]
    if not isinstance(value, (jax.Array, np.ndarray)) and kind != "torch":
        raise ShapeError(
            f"{where} is a {type(value).__name__}; a state holds jax, numpy or torch arrays "
            "(pass the state run() returned)"
        )
    got = str(value.dtype).removeprefix("torch.")
    if (dtype is not None and got != dtype) or (dtype is None and "float" not in got):
        raise ShapeError(
            f"{where} is {got}; this model keeps {dtype or 'floating'} state (snncc never "
            f"casts it silently: convert it, e.g. with .astype(numpy.{dtype or 'float32'}))"
        )


class JaxProgram:
    """A scheduled graph lowered to a generated jax module (see ``files()``)."""

    def __init__(self, graph: Graph, source: str, options: dict[str, Any]) -> None:
        self.graph = graph
        #: what a carried state must hold (backends/base.py), worked out once
        self._state_spec = state_spec(graph)
        self._source = source
        self.options = dict(options)
        self.module, self.path = load_module(source, options.get("cache_dir"))
        self.params: dict[str, jax.Array] = {
            name: self._param(value) for name, value in graph.params.items()
        }
        self._n_inputs = len(graph.meta["inputs"])
        self._n_outputs = len(graph.meta["outputs"])
        self._jit_run = jax.jit(self.module.forward)
        #: the key run() draws dropout masks from (option ``seed``), split on every call so
        #: that each run gets new masks, as eager torch's global generator does
        self._key = jax.random.key(int(options.get("seed", 0))) if self.uses_key else None

    @staticmethod
    def _param(value: Any) -> jax.Array:
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        return jnp.asarray(arr)

    # ------------------------------------------------------------- protocol
    @property
    def source(self) -> str:
        return self._source

    def files(self) -> dict[str, str]:
        return {"model.py": self._source}

    def _inputs(self, x: Any) -> tuple[jax.Array, ...]:
        xs = tuple(x) if isinstance(x, (tuple, list)) and self._n_inputs > 1 else (x,)
        if len(xs) != self._n_inputs:
            raise ShapeError(f"the model takes {self._n_inputs} inputs, got {len(xs)}")
        out = tuple(to_jax(a) for a in xs)
        for a in out:
            if a.ndim < 1:
                raise ShapeError(
                    f"inputs are time-major [T, B, ...] (or [B, ...] for a static input); got an "
                    f"array of shape {tuple(a.shape)}"
                )
        return out

    @staticmethod
    def _state(state: dict) -> dict[int, dict[str, jax.Array]]:
        """A state from any backend (torch, numpy or jax leaves) as jax arrays keyed by node id."""
        return {int(k): {var: to_jax(val) for var, val in v.items()} for k, v in state.items()}

    def _outputs(self, ys: tuple[jax.Array, ...]) -> Any:
        return ys[0] if self._n_outputs == 1 else tuple(ys)

    @property
    def uses_key(self) -> bool:
        """Whether the model draws random numbers (training-mode dropout)."""
        return bool(getattr(self.module, "USES_KEY", False))

    def _next_key(self) -> jax.Array | None:
        if self._key is None:
            return None
        self._key, key = jax.random.split(self._key)
        return key

    def run(self, x: Any, state: dict | None = None) -> tuple[Any, dict]:
        """Run [T, B, ...] from ``state`` (None: fresh); returns (outputs, final state)."""
        xs = self._inputs(x)
        first_static = self.graph.attrs(self.graph.meta["inputs"][0]).get("static")
        batch = int(xs[0].shape[0 if first_static else 1])
        check_state(self._state_spec, state, batch, _check_state_leaf)
        st = {} if state is None else self._state(state)
        ys, new_state = self._jit_run(self.params, xs, st, self._next_key())
        return self._outputs(ys), new_state

    def jax_fn(self, params: dict[str, Any], x: Any, key: Any = None) -> Any:
        """Pure ``(params, x[, key]) -> y`` from a fresh state: jit-able, differentiable in both.

        ``key`` (a ``jax.random.key``) is required where the model applies
        dropout (compiled in training mode), and unused otherwise.
        """
        xs = tuple(x) if isinstance(x, (tuple, list)) and self._n_inputs > 1 else (x,)
        ys, _ = self.module.forward(params, xs, {}, key)
        return self._outputs(ys)

    def __call__(self, x: Any) -> Any:
        return self.run(x)[0]

    def __repr__(self) -> str:
        return f"<snncc JaxProgram {len(self.graph)} nodes, source {self.path}>"
