"""Bundled, really trained example models (weights and test data ship as package data).

- :mod:`snncc.examples.digits`: a SpikingJelly LIF MLP on scikit-learn's 8x8 digits,
  used by ``snncc example``.
"""
