"""The ``reference`` backend: the graph interpreted with torch eager ops, the oracle.

Why an interpreter is the oracle: it runs each op with the very torch call the
source framework makes (SpikingJelly's multi-step layers flatten ``[T, B]``
into rows, its neurons loop over t in Python), so its spikes match the source
bit for bit, and every other backend is tested against it. Its pass pipeline
has no numerical rewrites for the same reason.

    import snncc
    cm = snncc.compile(model, x, backend="reference")
    y, state = cm.run(x[:4]); y2, _ = cm.run(x[4:], state)   # streaming
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from snncc.backends import register
from snncc.backends.base import check_options
from snncc.ir.graph import Graph

from .program import ReferenceProgram

__all__ = ["ReferenceBackend", "ReferenceProgram"]

_OPTIONS = ("requires_grad", "stateless_per_step", "training")


class ReferenceBackend:
    """Lower a graph to a :class:`ReferenceProgram` (no code generation)."""

    name = "reference"
    features = frozenset({"torch_module"})
    pipeline = ("canonicalize", "drop_noops", "temporal_fusion")
    #: options an artifact may carry (snncc.load): they define the program, not the machine
    artifact_options = _OPTIONS

    def lower(self, graph: Graph, **options: Any) -> ReferenceProgram:
        """Prepare ``graph`` to run; options: requires_grad, stateless_per_step, training."""
        check_options("reference", options, _OPTIONS)
        return ReferenceProgram(graph, **options)

    def to_native(self, x: Any) -> Any:
        """torch / numpy / jax arrays (or a tuple of them) -> torch tensors; ints become float32."""
        if isinstance(x, (tuple, list)):
            return type(x)(self.to_native(v) for v in x)
        if isinstance(x, torch.Tensor):
            t = x
        else:  # numpy, jax (via its __array__), nested lists
            t = torch.from_numpy(np.array(x, copy=True))
        return t if t.is_floating_point() else t.to(torch.float32)


register("reference", ReferenceBackend)
