"""Neuron models as data: one definition per form, registered by name (see :mod:`.base`).

Importing this package registers every form; :func:`build` turns a node's
:class:`~snncc.ir.neuron.NeuronSpec` into the :class:`NeuronGraph` every
backend lowers.
"""

# isort: off - registration order is the order FORMS lists the forms in
from snncc.ir.neurons import (
    norse,  # noqa: F401
    snntorch,  # noqa: F401
    spikingjelly,  # noqa: F401 - each module registers its forms
)

# isort: on
from snncc.ir.neurons.base import REGISTRY, FormDef, NeuronBuilder, NeuronGraph, build, form

__all__ = ["REGISTRY", "FormDef", "NeuronBuilder", "NeuronGraph", "build", "form"]
