"""The jax backend: render a readable jax module from Jinja2 templates and run it.

``snncc.backends.get("jax")`` imports this module; without jax installed it
raises one BackendError saying what to install, and never falls back to
another backend.

The generated module (``JaxProgram.source``, also written to the cache dir)
defines ``forward(params, inputs, state, key=None)``: layer groups run once over the
whole sequence reshaped to [T*B, ...]; each recurrent group is one ``lax.scan``
over t, each neuron group a ``lax.scan`` or (option ``neuron_kernels="pallas"``, the
default on GPUs) a pair of Pallas kernels (:mod:`snncc.backends.jax.pallas`). See
:mod:`snncc.backends.jax.render`.
"""

from __future__ import annotations

from typing import Any

from snncc.backends import register
from snncc.backends.base import check_options
from snncc.errors import BackendError

try:
    import jax  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise BackendError(
        f"the jax backend needs jax, which cannot be imported ({exc}); "
        "install it with `pip install jax` (CPU) or `pip install 'jax[cuda12]'` (NVIDIA GPU)"
    ) from exc

from snncc.ir.graph import Graph

from .program import JaxProgram, to_jax
from .render import render

__all__ = ["JaxBackend", "JaxProgram"]


class JaxBackend:
    """Lowers a scheduled graph to a :class:`JaxProgram`."""

    name = "jax"
    #: options an artifact may carry (snncc.load); ``cache_dir`` comes only from the user
    artifact_options = ("unroll", "seed")
    features = frozenset({"jax_fn", "jax_arrays"})
    #: no fold_batchnorm: folding BatchNorm into the weights rounds differently from the
    #: source's own BatchNorm, and no backend gives up exact fp32 arithmetic unasked
    pipeline = (
        "canonicalize",
        "drop_noops",
        "fuse_elementwise",
        "temporal_fusion",
    )

    def lower(self, graph: Graph, **options: Any) -> JaxProgram:
        """Render the module for ``graph`` and load it.

        Options: ``cache_dir`` (where the generated file is written; default
        ``~/.cache/snncc/jax``), ``unroll`` (lax.scan unroll factor, default 1),
        ``seed`` (int, default 0: the key ``run`` draws training-mode dropout masks
        from, advanced on every call; ``jax_fn`` takes a key instead),
        ``neuron_kernels`` (``"scan"``: each neuron group a ``lax.scan``; ``"pallas"``:
        each a Pallas kernel pair, Triton on a GPU, Pallas' interpreter on a CPU; default
        ``"pallas"`` where jax's default device is a GPU, ``"scan"`` elsewhere).
        """
        check_options("jax", options, ("cache_dir", "unroll", "seed", "neuron_kernels"))
        unroll = options.get("unroll", 1)
        if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
            raise BackendError(f"jax backend option unroll={unroll!r} must be an int >= 1")
        seed = options.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BackendError(f"jax backend option seed={seed!r} must be an int")
        source = render(graph, **{**options, **neuron_kernels(options.get("neuron_kernels"))})
        return JaxProgram(graph, source, options)

    def to_native(self, x: Any) -> Any:
        """torch tensor / numpy array / jax array -> float32 jax array."""
        return to_jax(x)


#: jax platforms whose Pallas kernels lower through Triton
PALLAS_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def neuron_kernels(choice: Any) -> dict[str, Any]:
    """The render options for option ``neuron_kernels`` on this machine's default jax platform.

    Why a GPU default of "pallas": a neuron group's ``lax.scan`` runs T small XLA
    steps on a GPU (5x-30x slower than a fused kernel, issue 16); on a CPU the scan
    is the fast path and Pallas can only interpret.
    """
    platform = jax.default_backend()
    on_gpu = platform in PALLAS_GPU_PLATFORMS
    if choice is None:
        choice, explicit = ("pallas" if on_gpu else "scan"), False
    else:
        explicit = True
    if choice not in ("scan", "pallas"):
        raise BackendError(
            f"jax backend option neuron_kernels={choice!r} must be 'scan' or 'pallas'"
        )
    if choice == "pallas" and not on_gpu and platform != "cpu":
        raise BackendError(
            f"jax backend option neuron_kernels='pallas' runs on GPUs (Triton) and in Pallas "
            f"interpret mode on CPUs, not on {platform!r}; use neuron_kernels='scan'"
        )
    return {
        "neuron_kernels": choice,
        "neuron_kernels_explicit": explicit,
        "pallas_interpret": choice == "pallas" and not on_gpu,
    }


register("jax", JaxBackend)
