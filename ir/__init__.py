"""snncc's graph IR: a networkx MultiDiGraph of per-step ops (see ARCHITECTURE.md)."""

from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec

__all__ = ["Graph", "NeuronSpec"]
