"""Tolerances derived from fp32 rounding, shared by the equivalence tests.

Two correct fp32 computations of a gradient (torch's autograd order and
snncc's, a GEMM over T*B rows and T GEMMs over B rows) differ by a few ulps of
the *largest* terms summed, not of each result: where terms cancel, a result
near zero can differ by far more than a fixed absolute tolerance allows (an
input gradient of 13.5 has an ulp of 1e-6).

The same holds for values (membranes, currents) of two programs that order
their sums differently (XLA's dot products and convolutions against torch's):
a fixed ``atol=1e-5`` is 84 ulps of a value near 1 and 8400 of one near 1e-2,
and an error such as a BatchNorm losing its ``eps`` (moving membranes by 4.3e-5
where they are about 2) hid under it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

FP32_EPS = float(torch.finfo(torch.float32).eps)


def grad_atol(ref: torch.Tensor, ulps: float = 64.0, floor: float = 1e-6) -> float:
    """An absolute tolerance of ``ulps`` fp32 ulps of ``ref``'s largest magnitude (at least
    ``floor``): 64 ulps is 7.6e-6 relative to that magnitude."""
    scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
    return max(floor, ulps * FP32_EPS * scale)


#: the ulps (of the compared tensor's largest magnitude) a value computed by a
#: differently ordered fp32 program may be away from the reference: the jax tests
#: measured at most 2 (the worst seen is printed with -s, see MEASURED); 4x that
FP32_ULPS = 8

#: worst difference seen by :func:`assert_fp32_close`, in ulps of the tensor's scale
MEASURED = {"ulps": 0.0}


def assert_fp32_close(got: Any, want: Any, what: str = "", ulps: float = FP32_ULPS) -> None:
    """``|got - want| <= ulps * eps32 * max|want|`` elementwise, NaNs in the same places."""
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, np.float64)
    want = np.asarray(want.detach().cpu() if isinstance(want, torch.Tensor) else want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaNs differ"
    finite = ~np.isnan(want)
    if not finite.any():
        return
    scale = float(np.abs(want[finite]).max())
    err = float(np.abs(got[finite] - want[finite]).max())
    unit = FP32_EPS * scale
    if unit > 0:
        MEASURED["ulps"] = max(MEASURED["ulps"], err / unit)
    assert err <= ulps * unit, (
        f"{what}: max |difference| {err:.3g} > {ulps} fp32 ulps of the scale {scale:.3g} "
        f"({err / unit if unit else float('inf'):.1f} ulps)"
    )
