"""Time-parallel forward for long sequences with few neurons: exact chunking of hard-reset neurons.

Which neuron forms can be parallelised over time, exactly (fp32 bit for bit)?

- **Hard reset, spiking output** (SpikingJelly IF/LIF/PLIF with ``v_reset``):
  yes. A step that fires sets the membrane to ``v_reset`` whatever came
  before, so a chunk of steps started from a *guessed* membrane is exactly
  right from the first step at which it and the true run both fire. snncc
  runs all chunks at once from the guess, then one sequential pass per neuron
  re-runs each chunk only up to that merge step (``templates/cuda/neuron_chunked.cu.j2``).
  Typical inputs fire within a few steps, so the sequential part is a few
  steps per chunk instead of T.
- **Soft reset** (subtract the threshold) and **no reset** (LI readouts, IF
  without reset): not exactly. Their membranes never forget the past: a wrong
  guess stays a (decaying) error. The linear part (LIF without reset:
  ``v[t] = a v[t-1] + b x[t]``) could run as a parallel scan, but a scan
  re-associates the fp32 sums and would change spikes near the threshold, so
  snncc does not; these run one thread per neuron over all T, with a launch
  configuration that spreads the few threads over every SM.
- **Backward** of every form: the reverse loop is linear in the membrane
  gradient and could be scanned within the 1e-4 gradient tolerance, but it is
  not implemented; training runs the plain backward kernel.

The chunked path is used for inference (no gradients wanted) when a layer has
too few neurons to fill the GPU and enough steps to split (see
:func:`plan_chunks`), or whenever the ``time_chunks`` option forces a chunk
length. Prologue steps (fused scale/add) are applied with torch first -- the
same single-rounding ops -- so the chunk kernels are those of the bare form.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from snncc.backends.kernels import (
    SJ_CHARGES,
    neuron_kernel_info,
    neuron_view,
    render_neuron_kernels,
    render_template,
)
from snncc.errors import UnsupportedError
from snncc.ir.neuron import NeuronSpec

_TEMPLATE = "neuron_chunked.cu.j2"
#: a chunk shorter than this is not worth a thread
MIN_CHUNK = 16


def chunkable(spec: NeuronSpec, epilogue: list) -> bool:
    """Whether a layer's forward can be split over time exactly (see the module docstring).

    SpikingJelly-style forms only: snnTorch's reset reads the previous membrane
    and Norse's LIF carries a synaptic current that a reset does not clear, so
    a guessed start is never forgotten there.
    """
    if spec.charge not in SJ_CHARGES:
        return False
    if not spec.spiking or spec.reset != "hard" or epilogue:
        return False
    vr = float(spec.v_reset)
    return not (vr == 0.0 and math.copysign(1.0, vr) < 0)


def plan_chunks(T: int, N: int, sm_count: int, forced: int | None = None) -> int | None:
    """Chunk length L for a [T, N] layer, or None to run the plain kernel.

    Chunks are worth it when one thread per neuron leaves the GPU idle: fewer
    than 512 neurons per SM. Then enough chunks to give every SM about 2048
    threads, each at least :data:`MIN_CHUNK` steps long.
    """
    if forced is not None:
        return max(1, min(int(forced), T))
    if N >= 512 * sm_count or T < 4 * MIN_CHUNK:
        return None
    chunks = min(math.ceil(2048 * sm_count / N), T // MIN_CHUNK)
    if chunks < 4:
        return None
    return math.ceil(T / chunks)


def render_chunked(
    spec: NeuronSpec, target: str = "cuda", out_dtype: str = "float32"
) -> tuple[str, str, str, str]:
    """(unit, chunk kernels, kernel name prefix, unit tag) of one form.

    ``unit + chunk kernels`` is a self-contained translation unit: the bare
    form's unit, then the two chunk kernels that call its step functions.

    The unit comes from :func:`snncc.backends.kernels.render_neuron_kernels`
    (so the step functions are the shared templates'), rendered for
    ``target`` ("cuda" or "cpu": the tests run the same text on the host).
    """
    if not chunkable(spec, []):
        raise UnsupportedError(
            f"neuron {spec.summary()} cannot be chunked over time exactly: only spiking "
            "neurons with a hard reset (v_reset not -0.0) can"
        )
    options = {"spike_dtype": out_dtype}
    info = neuron_kernel_info(spec, (), (), options)
    unit = render_neuron_kernels(spec, (), (), target, options)
    name = f"snncc_chunk_{info.tag}"
    chunk = render_template(
        _TEMPLATE,
        target=target,
        tag=info.tag,
        name=name,
        n=neuron_view(spec),
        out_type="unsigned char" if out_dtype == "uint8" else "float",
    )
    return unit, chunk, name, info.tag


class ChunkedForward:
    """The time-chunked forward of one neuron form on the GPU (compiled on first use)."""

    def __init__(self, spec: NeuronSpec, out_dtype: str, cache_dir: str | None) -> None:
        self.spec = spec
        self.out_dtype = out_dtype
        self.unit, self.kernels_text, self.name, self.tag = render_chunked(spec, "cuda", out_dtype)
        #: self-contained: what is compiled
        self.source = f"{self.unit}\n{self.kernels_text}"
        self.cache_dir = cache_dir
        self._fns: dict[tuple[str, int], Any] = {}

    def _fn(self, which: str, device: torch.device) -> Any:
        from snncc.backends.cuda import runtime

        key = (which, device.index)
        if key not in self._fns:
            self._fns[key] = runtime.load_function(
                self.source, f"{self.name}_{which}", device, self.cache_dir
            )
        return self._fns[key]

    def __call__(
        self, x: torch.Tensor, v0: torch.Tensor | None, k: float, L: int, block: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, N] fp32 contiguous (prologue applied) -> (out [T, N], v_last [N])."""
        from snncc.backends.cuda import runtime

        T, N = x.shape
        dev = x.device
        C = math.ceil(T / L)
        out = torch.empty(
            (T, N), dtype=torch.uint8 if self.out_dtype == "uint8" else torch.float32, device=dev
        )
        v_end = torch.empty((C * N,), dtype=torch.float32, device=dev)
        v_last = torch.empty((N,), dtype=torch.float32, device=dev)
        spec_sig = (
            ("x", "const float*"),
            ("v0", "const float*"),
            ("k", "float"),
            ("out", "float*"),
            ("v_end", "float*"),
            ("T", "int"),
            ("L", "int"),
            ("C", "int"),
            ("N", "int64"),
        )
        fix_sig = (
            ("x", "const float*"),
            ("k", "float"),
            ("out", "float*"),
            ("v_end", "const float*"),
            ("v_last", "float*"),
            ("T", "int"),
            ("L", "int"),
            ("C", "int"),
            ("N", "int64"),
        )
        values = {
            "x": x,
            "v0": v0,
            "k": k,
            "out": out,
            "v_end": v_end,
            "v_last": v_last,
            "T": T,
            "L": L,
            "C": C,
            "N": N,
        }
        runtime.launch(
            self._fn("spec", dev), C * N, runtime.pack_args(spec_sig, values), dev, block
        )
        runtime.launch(self._fn("fix", dev), N, runtime.pack_args(fix_sig, values), dev, block)
        return out, v_last
