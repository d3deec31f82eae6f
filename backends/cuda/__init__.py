"""The ``cuda`` backend: fused neuron kernels generated from the shared templates, run through CuPy.

    import snncc
    cm = snncc.compile(model, x, backend="cuda")          # renders CUDA C; no GPU needed yet
    y = cm(x.cuda())                                       # compiles (NVRTC, cached) and runs
    cm = snncc.compile(model, x, backend="cuda", cuda_graph=True, precision="tf32")

Each neuron layer is one kernel over all T steps (state in registers); the
forward and backward kernels are the templates in ``templates/cuda`` rendered
for the ``cuda`` target -- the same text the ``cpu`` backend compiles for the
host, which is how CI checks their logic without a GPU. Stateless ops run as
torch CUDA ops (cuBLAS GEMMs, cuDNN convolutions) in the reference
interpreter's schedule. Training goes through a ``torch.autograd.Function``
over the kernels.

Exactness (fp32): each neuron layer computes SpikingJelly's CPU arithmetic
bit for bit (true division, no FMA contraction), so the outputs equal the
reference backend run with the same GEMM results. Two things differ on a
GPU and are not the kernels' doing: cuBLAS/cuDNN sum in another order than
the CPU's BLAS (compare with the reference on the same GPU), and torch on a
GPU computes ``tensor / python_float`` as a multiply by the reciprocal, so
the reference backend -- and SpikingJelly's torch neurons -- run *on a GPU*
differ from the CPU arithmetic wherever tau is not a power of two.

snnTorch and Norse forms are fused too (the same form kernels the cpu backend
runs); a recurrent group that snncc.ir.recurrent found a fused plan for (RLeaky,
LIFRecurrentCell, LinearRecurrentContainer, x + linear(s[t-1])) and with at most
1024 neurons runs as one launch per direction, one block per sample (option
``recurrent="fused"``, the default; ``"step"``: one kernel step and one GEMM per
time step, as before); ``spike_dtype``
and ``time_chunks`` apply to SpikingJelly-style layers only (snnTorch spikes
are graded; the time-chunked kernels are written for those forms' reset).

Options: ``cache_dir`` (default ``~/.cache/snncc/cuda``: the ``.cu`` sources and
their cubins), ``device`` ("cuda" / "cuda:N"), ``precision`` ("fp32" | "tf32" |
"bf16" | "fp16"; the last three also fold eval-mode BatchNorm into the
conv/linear before it, which fp32 does not, since folding moves the rounding),
``cuda_graph`` (capture inference in CUDA graphs), ``spike_dtype``
("float32" | "uint8" for spikes that only feed outputs), ``autocast_io`` (under
bf16/fp16 autocast, neuron kernels read and write 16 bits directly: same
values, fewer bytes; default true), ``recompute``,
``saved_spike_dtype`` ("uint8" | "float32", as the cpu backend),
``block_size``, ``recurrent`` ("fused" | "step"), ``time_chunks`` (time-parallel forward, exact, and backward of
hard-reset and leaky soft-reset layers with few neurons and long sequences:
"auto" | chunk length | 0), and the reference backend's ``requires_grad``,
``stateless_per_step``, ``training``.

Running needs CuPy (``pip install "snncc[cuda12]"`` or ``"snncc[cuda13]"``) and
a CUDA GPU; without them lowering and rendering work and running raises a
BackendError saying so. There is never a silent fallback to another backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from snncc.backends import register
from snncc.backends.base import check_options
from snncc.backends.cpu import CpuBackend
from snncc.backends.cuda import runtime
from snncc.backends.cuda.program import CudaProgram
from snncc.backends.reference import ReferenceBackend
from snncc.ir.graph import Graph

__all__ = ["CudaBackend", "CudaProgram"]

_OPTIONS = (
    "cache_dir",
    "recompute",
    "saved_spike_dtype",
    "device",
    "precision",
    "cuda_graph",
    "spike_dtype",
    "block_size",
    "time_chunks",
    "autocast_io",
    "recurrent",
    "requires_grad",
    "stateless_per_step",
    "training",
)


class CudaBackend:
    """Lower a scheduled graph to a :class:`CudaProgram` (kernels rendered now, compiled on first run)."""

    name = "cuda"
    #: options an artifact may carry (snncc.load): not the cache folder or the device,
    #: which only the user chooses
    artifact_options = tuple(o for o in _OPTIONS if o not in ("cache_dir", "device"))
    #: the cpu backend's pipeline: bit-exact rewrites only (no BatchNorm folding)
    features = frozenset({"torch_module"})
    pipeline = CpuBackend.pipeline
    #: with a precision option that already gives up bit-exact results: eval-mode
    #: BatchNorm folded into the conv/linear before it (one pass over the activations
    #: less; on an H200 the unfolded BatchNorms took 20% of C1's tf32 forward)
    folding_pipeline = ("canonicalize", "fold_batchnorm", *pipeline[1:])

    def pipeline_for(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The exact pipeline for fp32; BatchNorm folded too for tf32, bf16 and fp16."""
        if options.get("precision", "fp32") != "fp32":
            return self.folding_pipeline
        return self.pipeline

    #: CuPy and a GPU were found once (to_native sits on every call's path)
    _ready = False

    def lower(self, graph: Graph, **options: Any) -> CudaProgram:
        """Render every neuron layer's kernels; needs no GPU."""
        check_options("cuda", options, _OPTIONS)
        return CudaProgram(graph, **options)

    def check_runtime(self, options: Mapping[str, Any]) -> None:
        """Raise BackendError (what to install) now when running would need CuPy or a GPU
        that is missing: the CLI asks before any slow work, not after it."""
        runtime.require(options.get("device"))

    def to_native(self, x: Any) -> Any:
        """torch / numpy / jax arrays -> torch tensors; the program moves them to its GPU.

        Raises BackendError (what to install) when CuPy or a GPU is missing.
        """
        if not self._ready:
            runtime.require()
            self._ready = True
        return ReferenceBackend.to_native(self, x)


register("cuda", CudaBackend)
