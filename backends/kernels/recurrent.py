"""The fused recurrent-group kernels (templates/cuda/recurrent_*.cu.j2): calling convention.

A recurrent group that :mod:`snncc.ir.recurrent` recognised (one neuron whose
input port ``port`` receives ``linear(neuron@t-1)``) runs as one forward and
one backward kernel over all T steps. The neuron's step and its
vector-Jacobian product are the layer kernels' (:mod:`.plan`, lowered from the
form's definition: nothing restated here); these kernels add the time loop
with the recurrent product inside it:

- forward, per sample b and step t: ``r_i = acc_i + c(t, b, i)`` with
  ``acc_i = sum over j ascending with s_j(t-1) != 0 of W[i, j] * s_j(t-1)``
  (``c``: the bias, the precomputed feed-forward input, or nothing), ``r``
  fed to the neuron's port ``port``, then the step;
- backward, t from T-1 down: the spike gradient is ``gy + sum over i ascending
  of W[i, j] * gr_i(t+1)`` (``gr``: the gradient of ``r``), then the step's
  VJP. The weight gradient is one GEMM over all T*B rows on the host.

One order of every sum, one rounding per operation and no contraction
(:data:`.plan.NVCC_EXACT_FLAGS`, :data:`.plan.HOST_EXACT_FLAGS`), so the cpu
and cuda kernels give the same bits (wherever the form's own step does: a
division by a Python scalar follows torch's rule on each device, and ``exp``
is each target's). CUDA runs one thread block per sample,
one thread per neuron (``hidden <= MAX_FUSED_HIDDEN``; the fired list in
shared memory); the host kernel runs OpenMP over samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snncc.errors import UnsupportedError
from snncc.ir.neuron import NeuronSpec

from .plan import plan

#: the largest hidden size the CUDA kernel runs (one thread per neuron, one block per
#: sample); larger groups keep per-step execution on cuda
MAX_FUSED_HIDDEN = 1024


@dataclass(frozen=True)
class RecurrentKernelInfo:
    """Names and arguments (``(name, ctype)`` in call order) of one fused group's kernels.

    Arrays are [T, B, H] (time-major, contiguous) unless said otherwise; ``c`` is
    read at ``t * c_ts + b * c_bs + i`` (bias: both strides 0).
    """

    tag: str
    forward_name: str
    backward_name: str
    #: the neuron port the recurrent sum feeds
    port: int
    #: the form's ports; every one but ``port`` is a [T, B, H] kernel input
    ports: tuple[str, ...]
    state_vars: tuple[str, ...]
    param_args: tuple[str, ...]
    #: the forward saves the step's cut (``h_seq``) / the state before each step (``<var>_seq``)
    saves_cut: bool
    saves_state: bool
    out_binary: bool
    forward_args: tuple[tuple[str, str], ...]
    backward_args: tuple[tuple[str, str], ...]

    @property
    def fed_ports(self) -> tuple[str, ...]:
        """The ports read from arrays (all but the one the recurrent sum feeds)."""
        return tuple(p for k, p in enumerate(self.ports) if k != self.port)

    @property
    def seq_names(self) -> tuple[str, ...]:
        """What the forward saves for the backward, besides ``r_seq`` and the output."""
        cut = ("h_seq",) if self.saves_cut else ()
        return cut + (tuple(f"{v}_seq" for v in self.state_vars) if self.saves_state else ())


def _plan(spec: NeuronSpec, port: int) -> Any:
    p = plan(spec)
    if not 0 <= port < len(p.info.ports):
        raise UnsupportedError(
            f"fused recurrent group: port {port} of form {spec.charge!r}, which has ports "
            f"{list(p.info.ports)}"
        )
    return p


def recurrent_kernel_info(spec: NeuronSpec, port: int) -> RecurrentKernelInfo:
    """The calling convention of :func:`render_recurrent_kernels` for this neuron and port."""
    p = _plan(spec, port)
    info = p.info
    svars, qs = info.state_vars, info.param_args
    saves_cut = info.save == "cut"
    saves_state = info.save == "state" or p.vjp_reads_state
    fed = tuple(x for k, x in enumerate(info.ports) if k != port)
    params = tuple(a for q in qs for a in ((f"p_{q}", "const float*"), (f"st_{q}", "int64")))
    sizes = (("T", "int"), ("B", "int64"), ("H", "int"))
    fwd = (
        *((f, "const float*") for f in fed),
        ("c", "const float*"),
        ("c_ts", "int64"),
        ("c_bs", "int64"),
        ("wt", "const float*"),
        ("s0", "const float*"),
        *((f"{v}0", "const float*") for v in svars),
        *params,
        ("out", "float*"),
        ("r_seq", "float*"),
        *((("h_seq", "float*"),) if saves_cut else ()),
        *(((f"{v}_seq", "float*") for v in svars) if saves_state else ()),
        *((f"{v}_last", "float*") for v in svars),
        *sizes,
    )
    bwd = (
        ("gy", "const float*"),
        *((f"g{v}_last", "const float*") for v in svars),
        *((("h_seq", "const float*"),) if saves_cut else ()),
        *(((f"{v}_seq", "const float*") for v in svars) if saves_state else ()),
        *((f, "const float*") for f in fed),
        ("r_seq", "const float*"),
        ("w", "const float*"),
        *params,
        *((f"g{f}", "float*") for f in fed),
        ("gr", "float*"),
        *((f"g{v}0", "float*") for v in svars),
        ("gs0", "float*"),
        *((f"gp_{q}", "double*") for q in qs),
        *sizes,
    )
    tag = f"{info.tag}_r{port}"
    return RecurrentKernelInfo(
        tag=tag,
        forward_name=f"snncc_rfwd_{tag}",
        backward_name=f"snncc_rbwd_{tag}",
        port=port,
        ports=info.ports,
        state_vars=svars,
        param_args=qs,
        saves_cut=saves_cut,
        saves_state=saves_state,
        out_binary=info.out_binary,
        forward_args=fwd,
        backward_args=bwd,
    )


def render_recurrent_kernels(spec: NeuronSpec, port: int, target: str = "cuda") -> str:
    """One translation unit: the macro layer, the form's step, the fused forward and backward."""
    from . import context, render_template

    p = _plan(spec, port)
    rinfo = recurrent_kernel_info(spec, port)
    ctx = context(p, target)
    ctx.update(rinfo=rinfo, port=port, port_name=p.info.ports[port], max_hidden=MAX_FUSED_HIDDEN)
    return "\n".join(
        [
            f"// snncc fused recurrent-group kernels {rinfo.tag} (target {target}); "
            "generated, do not edit.\n"
            f"// {p.summary}; the recurrent sum feeds port {port}\n",
            render_template("common.cuh.j2", **ctx),
            render_template("neuron_step.cuh.j2", **ctx),
            render_template("recurrent_forward.cu.j2", name=rinfo.forward_name, **ctx),
            render_template("recurrent_backward.cu.j2", name=rinfo.backward_name, **ctx),
        ]
    )
