"""Spikes a linear or convolution saves for its backward, kept as uint8 instead of fp32.

Why: training memory grows with T (every layer's activations are kept for
BPTT), and a spiking layer's output is exactly 0 or 1. The GEMM after it needs
those spikes twice -- in fp32 for its forward, and again for its weight
gradient -- and torch's autograd keeps the fp32 tensor alive for the second
use. Packing that saved copy as uint8 (torch's ``saved_tensors_hooks``) keeps
a quarter of the bytes; the backward unpacks it to the same fp32 values, so
autograd's own backward formula runs on identical inputs and the gradients
are bit for bit those of the unpacked run.

Which inputs are spikes is decided from the graph, never from the spikes
themselves: the output of a spiking neuron whose kernel writes exactly 0.0f
or 1.0f (:func:`zero_or_one_conditions`: SpikingJelly-style and Norse forms;
snnTorch forms while their ``graded_spikes_factor`` holds 1 and is not
learned, checked once per value of that param by :class:`OnesCheck`; none
with a fused epilogue), passed on unchanged by flatten, reshape, identity or
max pooling, into port 0 of a linear/conv1d/conv2d in the same step. Graded
spikes, dropout (it scales), average pooling and delayed (recurrent) edges
are not followed.

The cost: one cast over the spikes in the forward (4 bytes read, 1 written per
spike) and one back in the backward. Where something else keeps the fp32
spikes alive anyway (they are also a program output) the packed copy is extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from snncc.backends.kernels import SJ_CHARGES
from snncc.ir.graph import Graph
from snncc.ir.neuron import NORSE_FORMS, SNNTORCH_FORMS, NeuronSpec

Tensor = torch.Tensor

#: ops whose output is 0/1 wherever their only input is
BINARY_PRESERVING = ("flatten", "reshape", "identity", "maxpool2d")
#: ops that save their input for the weight gradient
GEMM_OPS = ("linear", "conv1d", "conv2d")


def zero_or_one_conditions(graph: Graph, n: int, spec: NeuronSpec) -> tuple[str, ...] | None:
    """When neuron node ``n``'s kernel output is exactly 0.0 or 1.0 at every element.

    None: never. Otherwise the names of the params that must hold exactly 1
    (and not be learnable) at run time -- ``()`` for always:

    - SpikingJelly-style and Norse spiking forms write the Heaviside step itself;
    - snnTorch forms write it times ``graded_spikes_factor``: a constant 1, or
      a node param (snnTorch keeps it in its state_dict) that holds 1;
    - a fused epilogue (a scale, an add) changes the values: never.
    """
    if not spec.spiking or graph.attrs(n).get("epilogue"):
        return None
    if spec.charge in SJ_CHARGES or spec.charge in NORSE_FORMS:
        return ()
    if spec.charge in SNNTORCH_FORMS:
        param = graph.node(n)["params"].get("graded_spikes_factor")
        if param is not None:
            return (param,)
        factor = (spec.extra or {}).get("graded_spikes_factor", 1.0)
        return () if float(factor) == 1.0 else None
    return None


def binary_nodes(graph: Graph, specs: Mapping[int, NeuronSpec]) -> dict[int, tuple[str, ...]]:
    """Nodes whose value is 0/1 by construction, with the params that must hold 1 for it."""
    binary: dict[int, tuple[str, ...]] = {}
    for n in graph.topo_order():
        op = graph.op(n)
        if op == "neuron":
            conditions = zero_or_one_conditions(graph, n, specs[n])
            if conditions is not None:
                binary[n] = conditions
        elif op in BINARY_PRESERVING:
            edges = graph.in_edges(n)
            if len(edges) == 1 and edges[0].delay == 0 and edges[0].src in binary:
                binary[n] = binary[edges[0].src]
    return binary


def spike_fed_gemms(graph: Graph, specs: Mapping[int, NeuronSpec]) -> dict[int, tuple[str, ...]]:
    """Linear/conv nodes whose data input (port 0, same step) is a binary node, with the
    params that must hold 1 at run time for that input to be 0/1."""
    binary = binary_nodes(graph, specs)
    fed: dict[int, tuple[str, ...]] = {}
    for n in graph.topo_order():
        if graph.op(n) not in GEMM_OPS:
            continue
        edges = [e for e in graph.in_edges(n) if e.port == 0]
        if edges and edges[0].delay == 0 and edges[0].src in binary:
            fed[n] = binary[edges[0].src]
    return fed


class OnesCheck:
    """Whether params hold exactly 1 and are not being learned, read once per value.

    Reading a GPU tensor's value is a device-to-host sync, so the answer is
    cached per param and re-read only when its storage or version counter
    moves (an optimizer step, ``load_state_dict``).
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[int, int], bool]] = {}

    def __call__(self, params: Mapping[str, Tensor], names: tuple[str, ...]) -> bool:
        return all(self._one(name, params[name]) for name in names)

    def _one(self, name: str, p: Tensor) -> bool:
        if p.requires_grad:  # learned: it will move away from 1
            return False
        stamp = (p.data_ptr(), p._version)
        hit = self._seen.get(name)
        if hit is None or hit[0] != stamp:
            hit = (stamp, bool(torch.all(p == 1)))
            self._seen[name] = hit
        return hit[1]


@contextlib.contextmanager
def spikes_saved_as_uint8(spikes: Tensor) -> Iterator[None]:
    """While active, autograd saves ``spikes`` (that exact fp32 view) as uint8.

    Other saved tensors pass through untouched. Hooks the caller already
    installed (``torch.autograd.graph.save_on_cpu``, non-reentrant
    ``torch.utils.checkpoint``) still see every saved tensor -- the packed
    spikes as their uint8 copy -- because these hooks hand everything on to
    them; where torch cannot say which hooks are active, nothing is packed.
    """
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None or torch.compiler.is_compiling():
        # a torch without the query: do not risk bypassing the caller's hooks; under
        # torch.compile the compiler decides what is saved
        yield
        return
    outer = top(False)
    outer_pack, outer_unpack = outer if outer is not None else (None, None)
    ptr, numel = spikes.data_ptr(), spikes.numel()

    def pack(t: Tensor) -> Any:
        if t.dtype == torch.float32 and t.data_ptr() == ptr and t.numel() == numel:
            small = t.to(torch.uint8)
            return _Packed(small if outer_pack is None else outer_pack(small), t.shape)
        return t if outer_pack is None else outer_pack(t)

    def unpack(saved: Any) -> Tensor:
        if isinstance(saved, _Packed):
            small = saved.data if outer_unpack is None else outer_unpack(saved.data)
            return small.to(torch.float32).reshape(saved.shape)
        return saved if outer_unpack is None else outer_unpack(saved)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


class _Packed:
    """A saved spike tensor in uint8 (or what the caller's hooks made of it), with its shape."""

    __slots__ = ("data", "shape")

    def __init__(self, data: Any, shape: torch.Size) -> None:
        self.data = data
        self.shape = shape
