"""Tolerances derived from fp32 rounding, shared by the equivalence tests.

Two correct fp32 computations of a gradient (torch's autograd order and
snncc's, a GEMM over T*B rows and T GEMMs over B rows) differ by a few ulps of
the *largest* terms summed, not of each result: where terms cancel, a result
near zero can differ by far more than a fixed absolute tolerance allows (an
input gradient of 13.5 has an ulp of 1e-6).
"""

from __future__ import annotations

import torch

FP32_EPS = float(torch.finfo(torch.float32).eps)


def grad_atol(ref: torch.Tensor, ulps: float = 64.0, floor: float = 1e-6) -> float:
    """An absolute tolerance of ``ulps`` fp32 ulps of ``ref``'s largest magnitude (at least
    ``floor``): 64 ulps is 7.6e-6 relative to that magnitude."""
    scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
    return max(floor, ulps * FP32_EPS * scale)
