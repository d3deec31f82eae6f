"""Eager torch neuron maths for users of the API: the reference backend's lowering.

Each neuron form is defined once, as data, in :mod:`snncc.ir.neurons`; the
reference backend lowers those definitions to torch eager ops
(:mod:`snncc.backends.reference.neurons`). This module re-exports that lowering
under its public name, for :mod:`snncc.nn` and for users stepping a neuron by hand::

    from snncc import neurons
    out, state = neurons.step(spec, params, x, neurons.init_state(spec, x.shape))
"""

from __future__ import annotations

from snncc.backends.reference.neurons import (
    State,
    derived_constants,
    init_state,
    run_sequence,
    step,
)

__all__ = ["State", "derived_constants", "init_state", "run_sequence", "step"]
