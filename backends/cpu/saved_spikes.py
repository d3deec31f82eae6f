"""Spikes a linear or convolution saves for its backward, kept as uint8 instead of fp32.

Why: training memory grows with T (every layer's activations are kept for
BPTT), and a spiking layer's output is exactly 0 or 1. The GEMM after it needs
those spikes twice -- in fp32 for its forward, and again for its weight
gradient -- and torch's autograd keeps the fp32 tensor alive for the second
use. Packing that saved copy as uint8 (torch's ``saved_tensors_hooks``) keeps
a quarter of the bytes; the backward unpacks it to the same fp32 values, so
autograd's own backward formula runs on identical inputs and the gradients
are bit for bit those of the unpacked run.

Which inputs are spikes is decided from the graph, never from the values:
the output of a spiking neuron whose kernel writes the Heaviside step, or
that step times a one-element scale (:func:`spike_source`: SpikingJelly-style
and Norse forms; snnTorch forms, whose ``graded_spikes_factor`` is copied
when the spikes are saved; none with a fused epilogue), passed on unchanged
by flatten, reshape, identity or undilated max pooling, into port 0 of a
linear/conv1d/conv2d in the same step. Per-neuron graded factors, dropout
(it scales), average pooling and delayed (recurrent) edges are not followed.
Under autocast the GEMM saves a 16-bit copy it cast itself, which is not
packed; where the cuda backend's kernel wrote the spikes in 16 bits already
(``autocast_io``), the GEMM saves those and they are packed like fp32 ones.
Nothing is packed under ``torch.compile`` (the compiler decides what is
saved) or where saved-tensor hooks are disabled.

The cost: one cast over the spikes in the forward (4 bytes read, 1 written per
spike) and one back in the backward (at torch's count fitted to the free cores:
element-wise, so the same bits at any count). On M1's 4096x2048 spikes (one thread, the dev
VM) these take 4.7 and 5.0 ms; comparing with 0 before the cast and letting torch
allocate the unpacked block (page faults on fresh memory) took 15 and 16 ms. Where
something else keeps the fp32 spikes alive anyway (they are also a program output)
the packed copy is extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from snncc.backends.cpu import host_pages
from snncc.backends.cpu.autograd import TORCH_DTYPES
from snncc.backends.cpu.threads import elementwise_threads
from snncc.backends.kernels import HALF_DTYPES
from snncc.ir.graph import Graph
from snncc.ir.neuron import SNNTORCH_FORMS, NeuronSpec
from snncc.ir.neurons import build

Tensor = torch.Tensor

#: ops whose output is 0/1 wherever their only input is
BINARY_PRESERVING = ("flatten", "reshape", "identity", "maxpool2d")
#: 16-bit spikes a kernel may write under autocast (cuda backend, ``autocast_io``)
HALF_SPIKES = tuple(TORCH_DTYPES[name] for name in HALF_DTYPES)
#: ops that save their input for the weight gradient
GEMM_OPS = ("linear", "conv1d", "conv2d")


@dataclass(frozen=True)
class SpikeSource:
    """A value that is ``s * g`` elementwise, ``s`` in {0, 1}: ``g`` is 1, or the one-element
    param named ``scale`` (snnTorch's ``graded_spikes_factor``), read when the spikes are saved."""

    scale: str | None = None


def spike_source(graph: Graph, n: int, spec: NeuronSpec) -> SpikeSource | None:
    """How neuron node ``n``'s kernel output is made of 0/1 spikes, or None if it is not.

    A form whose output is its Heaviside step (read from its definition: every
    SpikingJelly-style and Norse spiking form, a traced user neuron that returns it) is;
    snnTorch forms write it times ``graded_spikes_factor`` (a node param when
    the model keeps it in its state_dict, as snnTorch does: one element, or it
    is not followed); a fused epilogue (a scale, an add) changes the values.
    """
    if not spec.spiking or graph.attrs(n).get("epilogue"):
        return None
    if build(spec).binary_output:
        return SpikeSource()
    if spec.charge in SNNTORCH_FORMS:
        param = graph.node(n)["params"].get("graded_spikes_factor")
        if param is not None:
            return SpikeSource(param) if graph.params[param].size == 1 else None
        factor = (spec.extra or {}).get("graded_spikes_factor", 1.0)
        return SpikeSource() if float(factor) == 1.0 else None
    return None


def preserves_spikes(graph: Graph, n: int) -> bool:
    """Whether op ``n`` only moves or selects its input's elements (max pooling: unless a
    dilated window can see nothing but padding)."""
    op = graph.op(n)
    if op == "maxpool2d":
        return all(d == 1 for d in graph.attrs(n).get("dilation", (1, 1)))
    return op in BINARY_PRESERVING


def binary_nodes(graph: Graph, specs: Mapping[int, NeuronSpec]) -> dict[int, SpikeSource]:
    """Nodes whose value is made of 0/1 spikes by construction, and how."""
    binary: dict[int, SpikeSource] = {}
    for n in graph.topo_order():
        if graph.op(n) == "neuron":
            source = spike_source(graph, n, specs[n])
            if source is not None:
                binary[n] = source
        elif preserves_spikes(graph, n):
            edges = graph.in_edges(n)
            if len(edges) == 1 and edges[0].delay == 0 and edges[0].src in binary:
                binary[n] = binary[edges[0].src]
    return binary


def spike_fed_gemms(graph: Graph, specs: Mapping[int, NeuronSpec]) -> dict[int, SpikeSource]:
    """Linear/conv nodes whose data input (port 0, same step) is made of spikes, and how."""
    binary = binary_nodes(graph, specs)
    fed: dict[int, SpikeSource] = {}
    for n in graph.topo_order():
        if graph.op(n) not in GEMM_OPS:
            continue
        edges = [e for e in graph.in_edges(n) if e.port == 0]
        if edges and edges[0].delay == 0 and edges[0].src in binary:
            fed[n] = binary[edges[0].src]
    return fed


def packing_available() -> bool:
    """Whether spikes can be packed now: torch can say which saved-tensor hooks are active,
    hooks are enabled (not under ``disable_saved_tensors_hooks``), and no compiler traces."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if compiling is not None and compiling():  # first: dynamo cannot trace the queries below
        return False
    autograd = torch._C._autograd
    top = getattr(autograd, "_top_saved_tensors_default_hooks", None)
    enabled = getattr(autograd, "_saved_tensors_hooks_is_enabled", None)
    return top is not None and enabled is not None and bool(enabled())


@contextlib.contextmanager
def spikes_saved_as_uint8(spikes: Tensor, scale: Tensor | None = None) -> Iterator[None]:
    """While active, autograd saves ``spikes`` (that exact fp32 view) as a uint8 mask.

    ``spikes`` must be ``s * scale`` with ``s`` in {0, 1} (``scale`` a one-element
    tensor, or None for 1): the mask is ``spikes != 0`` and a copy of ``scale``
    is taken at the same moment, so the unpacked ``mask * scale`` has the bits
    the kernel wrote (``1 * g = g``, ``0 * g = 0``) whatever happens to the
    param later. Other saved tensors pass through untouched. Hooks the caller
    already installed (``torch.autograd.graph.save_on_cpu``, non-reentrant
    ``torch.utils.checkpoint``) still see every saved tensor -- the mask in
    place of the spikes -- because these hooks hand everything on to them.
    Without :func:`packing_available`, nothing is packed.
    """
    if not packing_available():
        yield
        return
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    outer_pack, outer_unpack = outer if outer is not None else (None, None)
    ptr, numel = spikes.data_ptr(), spikes.numel()

    packable = (torch.float32,) if scale is not None else (torch.float32, *HALF_SPIKES)

    def pack(t: Tensor) -> Any:
        if t.dtype in packable and t.data_ptr() == ptr and t.numel() == numel:
            # unscaled spikes are 0 or 1, which one cast keeps exactly (a third of the
            # time of compare-then-cast); scaled ones are compared with 0
            with _cast_threads(t):
                mask = t.to(torch.uint8) if scale is None else (t != 0).to(torch.uint8)
            g = None if scale is None else scale.detach().reshape(()).clone()
            return _Packed(mask if outer_pack is None else outer_pack(mask), t.shape, t.dtype, g)
        return t if outer_pack is None else outer_pack(t)

    def unpack(saved: Any) -> Tensor:
        if isinstance(saved, _Packed):
            mask = saved.data if outer_unpack is None else outer_unpack(saved.data)
            # a large block goes on huge pages, as the kernels' outputs do (host_pages)
            values = host_pages.empty(saved.shape, saved.dtype, mask.device)
            with _cast_threads(values):
                values.copy_(mask.reshape(saved.shape))
                return values if saved.scale is None else values * saved.scale
        return saved if outer_unpack is None else outer_unpack(saved)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def _cast_threads(t: Tensor) -> contextlib.AbstractContextManager:
    """The casts run at torch's count fitted to the free cores where ``t`` is on the CPU
    (element-wise: the same bits at any count)."""
    return elementwise_threads() if t.device.type == "cpu" else contextlib.nullcontext()


class _Packed:
    """Saved spikes: the uint8 mask (or what the caller's hooks made of it), its shape and
    dtype, and the spike value when it is not 1."""

    __slots__ = ("data", "shape", "dtype", "scale")

    def __init__(
        self, data: Any, shape: torch.Size, dtype: torch.dtype, scale: Tensor | None
    ) -> None:
        self.data = data
        self.shape = shape
        self.dtype = dtype
        self.scale = scale
