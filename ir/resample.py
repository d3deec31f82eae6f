"""Which input element each output element of a nearest-neighbour upsampling reads.

Why here, as numbers: backends that have no torch kernel to call (jax, ONNX) gather with
these indices, so they read exactly the elements torch's ``upsample_nearest`` reads. They
come from torch itself, run on index grids of the same rank, sizes and arguments: torch's
CPU kernels do not agree on one formula (``floor(i * scale)`` in float32 in general, but
the 2-D kernel copies a dim whose size is unchanged even where that formula would not:
a scale_factor of 1.3333 on 2 rows reads rows 0, 0 in 1-D and 0, 1 in 2-D).
"""

from __future__ import annotations

from collections.abc import Sequence


def nearest_indices(
    in_sizes: Sequence[int], size: Sequence[int], scale_factor: Sequence[float] | None
) -> list[list[int]]:
    """Per spatial dim, the source index of each output element of
    ``F.interpolate(x, size, scale_factor, mode="nearest")`` on an input of ``in_sizes``
    (``size`` is used when ``scale_factor`` is None)."""
    import torch
    import torch.nn.functional as F

    nd = len(in_sizes)
    maps = []
    for d in range(nd):
        along = [int(in_sizes[d]) if k == d else 1 for k in range(nd)]
        grid = torch.arange(int(in_sizes[d]), dtype=torch.float32).reshape(along)
        grid = grid.expand(*[int(s) for s in in_sizes]).reshape(1, 1, *in_sizes).contiguous()
        if scale_factor is None:
            out = F.interpolate(grid, size=[int(s) for s in size], mode="nearest")
        else:
            out = F.interpolate(grid, scale_factor=[float(s) for s in scale_factor], mode="nearest")
        first = tuple(slice(None) if k == d else 0 for k in range(nd))
        maps.append([int(v) for v in out[0, 0][first].tolist()])
    return maps
