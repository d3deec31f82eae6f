"""The ``cpu`` backend: the CUDA kernel templates compiled by the host C++ compiler.

Why it exists: it is the CPU deployment target, and the way CI checks the
generated kernels' logic without a GPU (the neuron arithmetic is the same
template text as the CUDA kernels; only the thread-index macro layer differs).
Stateless ops run exactly as in the reference backend, so its spikes match the
reference bit for bit; gradients flow through a ``torch.autograd.Function``
over the compiled forward/backward kernels.

Every neuron form of the IR is fused: SpikingJelly/snncc (IF, LIF, PLIF, LI),
snnTorch (Leaky, Synaptic, RLeaky; learnable or per-neuron beta, threshold,
graded_spikes_factor, alpha, V) and Norse (LIF, LIFRecurrentCell, LIFBox, LI;
learnable or per-neuron tau_mem_inv, tau_syn_inv, v_th, v_reset). A neuron
layer runs all T steps in one kernel call; a neuron inside a recurrent
component (snnTorch RLeaky, Norse LIFRecurrentCell: their recurrent weight is
a graph node fed by the neuron's previous spike) runs the same kernel once per
time step, with its state carried between the calls.

    import snncc
    cm = snncc.compile(model, x, backend="cpu")
    y = cm(x)

Options: ``cache_dir`` (compiled-kernel cache, default ``~/.cache/snncc/cpu``),
``recompute`` (backward recomputes membranes instead of saving them),
``saved_spike_dtype`` ("uint8", the default, or "float32": how a spike-fed
linear/conv keeps its input for the backward), ``recurrent`` ("step", the default:
recurrent groups step by step, bit for bit with the reference; "fused": one kernel
over time per recurrent group that has a fused plan, see snncc.ir.recurrent), and the
reference backend's
``requires_grad``, ``stateless_per_step``, ``training``.
Needs a C++17 compiler with OpenMP (g++ by default; ``SNNCC_CXX``/``CXX``
override it). The kernels are built for the machine (``-march=native`` where
the compiler has it): each OpenMP iteration runs a block of 32 neurons as SIMD
lanes, which rounds exactly as scalar code does.
"""

from __future__ import annotations

from typing import Any

from snncc.backends import register
from snncc.backends.base import check_options
from snncc.backends.cpu.program import CpuProgram
from snncc.backends.reference import ReferenceBackend
from snncc.ir.graph import Graph

__all__ = ["CpuBackend", "CpuProgram"]

_OPTIONS = (
    "cache_dir",
    "recompute",
    "saved_spike_dtype",
    "recurrent",
    "requires_grad",
    "stateless_per_step",
    "training",
)


class CpuBackend:
    """Lower a scheduled graph to a :class:`CpuProgram` (neuron kernels compiled on lowering)."""

    name = "cpu"
    #: the reference pipeline plus fuse_elementwise, which is bit-exact (no
    #: fold_batchnorm: folding changes the rounding, and the cpu backend
    #: promises the reference's spikes bit for bit)
    features = frozenset({"torch_module"})
    pipeline = ("canonicalize", "drop_noops", "fuse_elementwise", "temporal_fusion")
    #: options an artifact may carry (snncc.load): everything but the cache folder, which
    #: only the user names (an artifact choosing it would choose which binaries get loaded)
    artifact_options = tuple(o for o in _OPTIONS if o != "cache_dir")

    def lower(self, graph: Graph, **options: Any) -> CpuProgram:
        """Compile every neuron layer's kernels and return the runnable program."""
        check_options("cpu", options, _OPTIONS)
        return CpuProgram(graph, **options)

    def to_native(self, x: Any) -> Any:
        """torch / numpy / jax arrays -> torch CPU tensors (as the reference backend)."""
        return ReferenceBackend.to_native(self, x)


register("cpu", CpuBackend)
