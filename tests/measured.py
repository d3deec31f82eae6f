"""The agreement the equivalence tests measure, per neuron family and backend.

The README's "Sources" table quotes these figures; a test module records them while it
asserts its tolerances, and prints the worst value of each (family, backend, metric) when
it ends (``pytest -s``), so the table is taken from a run, not written by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from snncc.ir.neuron import NeuronSpec


def grad_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| (L2, in float64): the relative gradient error."""
    g, w = got.detach().double(), want.detach().double()
    denom = float(w.norm())
    err = float((g - w).norm())
    return err / denom if denom > 0 else err


def _tensor(value: Any) -> torch.Tensor:
    """A detached torch tensor of a torch, numpy or jax array."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.from_numpy(np.array(value))


def ulps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest distance in float32 ulps (steps between representable values; +0 and -0
    are one value)."""

    def ordered(t: torch.Tensor) -> torch.Tensor:
        i = (t.contiguous() + 0.0).view(torch.int32).long()  # + 0.0: -0 becomes +0
        return torch.where(i < 0, -(i & 0x7FFFFFFF), i)

    return float((ordered(got) - ordered(want)).abs().max()) if want.numel() else 0.0


def charges(graph: Any) -> set[str]:
    """The neuron forms (charge names) of a graph IR."""
    return {NeuronSpec.from_dict(graph.attrs(n)["neuron"]).charge for n in graph.iter_ops("neuron")}


class Measured:
    """The worst figure seen per (family, backend, metric)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: dict[tuple[str, str, str], float] = {}

    def note(self, family: str, backend: str, metric: str, value: float) -> None:
        key = (family, backend, metric)
        self.rows[key] = max(self.rows.get(key, 0.0), float(value))

    def note_outputs(
        self,
        family: str,
        backend: str,
        got: Iterable[Any],
        want: Iterable[Any],
        what: str = "values",
    ) -> None:
        """Fraction of spikes differing; of continuous values (membranes, currents, analog
        outputs, states) the max |difference| and, in float32, the max distance in ulps."""
        for g, w in zip(got, want):
            g, w = _tensor(g), _tensor(w)
            if bool(((w == 0) | (w == 1)).all()) and what == "values":
                self.note(family, backend, "spikes differing", float((g != w).float().mean()))
            elif w.numel():
                self.note(family, backend, f"max |d| {what}", float((g - w).abs().max()))
                if g.dtype == w.dtype == torch.float32:
                    self.note(family, backend, f"max ulps {what}", ulps(g, w))

    def jax_compare(self, model: nn.Module, x: torch.Tensor, cache_dir: str, **kw: Any) -> Any:
        """tests/test_jax_snntorch_norse.py's ``compare`` (jax against the reference backend,
        which equals the framework bit for bit), noting the figures it measured for this
        model's families; its module-wide maxima stay as they were plus this run."""
        import test_jax_snntorch_norse as tj

        before = dict(tj.MEASURED)
        tj.MEASURED.update(dict.fromkeys(tj.MEASURED, 0.0))
        ref, jx = tj.compare(model, x, cache_dir, **kw)
        family = ", ".join(sorted(charges(ref.ir)))
        names = {"spike_mismatch": "spikes differing", "membrane_abs": "max |d| values"}
        for k, v in tj.MEASURED.items():
            self.note(family, "jax", names.get(k, "grad rel (L2)"), v)
            tj.MEASURED[k] = max(v, before.get(k, 0.0))
        return ref, jx

    def report(self) -> str:
        lines = [f"\n{self.title}, worst measured (family | backend | metric | value):"]
        for (fam, backend, metric), v in sorted(self.rows.items()):
            lines.append(f"  {fam} | {backend} | {metric} | {np.format_float_scientific(v, 2)}")
        return "\n".join(lines)
