"""Neuron models as data: one definition per form, registered by name (see :mod:`.base`).

Every module of this package defines one or more forms with the :func:`form`
decorator; importing the package imports them all (the three original
framework modules first, so :data:`snncc.ir.neuron.FORMS` lists their forms
first, then the others by module name), so a new neuron family is one new
module here plus its frontend mapping, and nothing else.
:func:`build` turns a node's :class:`~snncc.ir.neuron.NeuronSpec` into the
:class:`NeuronGraph` every backend lowers.
"""

import importlib
import pkgutil

from snncc.ir.neurons.base import REGISTRY, FormDef, NeuronBuilder, NeuronGraph, build, form

__all__ = ["REGISTRY", "FormDef", "NeuronBuilder", "NeuronGraph", "build", "form"]

_FIRST = ("spikingjelly", "snntorch", "norse")


def _register_all() -> None:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")
    for name in [*_FIRST, *(n for n in found if n not in _FIRST)]:
        importlib.import_module(f"{__name__}.{name}")


_register_all()
