"""The SpikingJelly-family neuron specs the kernel tests (cpu and cuda) run, defined once.

``v_reset = -0.1`` is deliberately not an fp32 value: it tests that the kernels'
literals round as torch rounds a Python scalar.
"""

from __future__ import annotations

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
