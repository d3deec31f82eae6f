"""Neuron specs and a recurrent IR graph the kernel tests (cpu and cuda) share, defined once.

``v_reset = -0.1`` is deliberately not an fp32 value: it tests that the kernels'
literals round as torch rounds a Python scalar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec
from snncc.surrogate import default_alpha

TAU_FORMS = ("sj_lif_decay_input", "sj_lif", "snncc_li")
PLIF_FORMS = ("sj_plif_decay_input", "sj_plif")


def kernel_spec(
    charge: str,
    reset: str = "hard",
    detach: bool = False,
    output: str = "spike",
    cmp: str = ">=",
    sg: str = "sigmoid",
) -> NeuronSpec:
    v_reset = None if reset == "subtract" else -0.1
    return NeuronSpec(
        model="plif" if charge in PLIF_FORMS else "lif",
        charge=charge,
        tau=1.7 if charge in TAU_FORMS else None,
        v_threshold=0.7,
        v_reset=v_reset,
        reset=reset,
        detach_reset=detach,
        fire_cmp=cmp,
        output=output,
        surrogate=sg,
        alpha=default_alpha(sg),
        v_init=0.0 if v_reset is None else v_reset,
        learnable=("w",) if charge in PLIF_FORMS else (),
    )


def recurrent_lif_graph() -> Graph:
    """input -> add(input, W_rec @ s[t-1]) -> LIF -> output: a recurrent component.

    Hand-built IR shared by the cpu and cuda backend tests.
    """
    g = Graph()
    g.meta.update(source="torch", step_mode="m")
    inp = g.add_node("input", attrs={"index": 0}, shape=["B", 6], name="x")
    lin = g.add_node("linear", [], params={"weight": "rec.weight"}, shape=["B", 6], name="rec")
    add = g.add_node("add", [inp, lin], shape=["B", 6], name="add")
    spec = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=2.0)
    neu = g.add_node("neuron", [add], attrs={"neuron": spec.to_dict()}, shape=["B", 6], name="lif")
    g.add_edge(neu, lin, 0, delay=1)
    g.add_node("output", [neu], attrs={"index": 0}, shape=["B", 6], name="out")
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(4)) * 0.8
    g.add_param("rec.weight", w.numpy())
    return g


def recurrent_lif_input(T: int, seed: int) -> torch.Tensor:
    """An input [T, 3, 6] that makes :func:`recurrent_lif_graph` fire from the first step on
    (its LIF, tau = 2 from rest, needs a drive above 2; the old 1.2 never fired at T = 1, 8)."""
    return torch.rand(T, 3, 6, generator=torch.Generator().manual_seed(seed)) * 3.0


@contextlib.contextmanager
def backward_gy_strides(kernel) -> Iterator[list[tuple]]:
    """While active, every backward call of ``kernel`` (a host NeuronKernel) records what
    reached it: (gy's strides, gy_ts, gy_ns)."""
    seen: list[tuple] = []
    call = kernel.call

    def spy(which, values, device=None):
        if which == "bwd":
            seen.append((values["gy"].stride(), values["gy_ts"], values["gy_ns"]))
        return call(which, values, device)

    kernel.call = spy
    try:
        yield seen
    finally:
        del kernel.call
