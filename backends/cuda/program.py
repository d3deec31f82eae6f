"""CudaProgram: the cpu backend's program with CUDA kernels and torch CUDA tensors.

Why a subclass of :class:`~snncc.backends.cpu.program.CpuProgram`: the host
side of a compiled SNN is identical on both targets -- the reference
interpreter's schedule runs the stateless ops with torch (on the GPU that is
cuBLAS for GEMMs and cuDNN for convolutions, batch norm and pooling) and every
neuron layer is one call of a fused kernel over all T steps. What differs is
small data: which kernel class renders/launches (CUDA via NVRTC + CuPy instead
of C++ via the host compiler), where the tensors live, and GPU-only options
(CUDA graphs, GEMM precision, uint8 spikes, time-chunked long sequences).

Every form runs through the same fused-kernel path as on the cpu backend
(:mod:`snncc.backends.cpu.autograd`, device-generic), launched here; uint8
spikes need an exactly 0/1 output, time chunks a form that allows them
(:mod:`snncc.backends.cuda.chunked`).

Nothing here needs a GPU until ``run``: lowering renders the kernel sources
(``files()``, ``source``), so ``snncc compile --backend cuda`` works anywhere.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from snncc.backends.cpu.autograd import TORCH_DTYPES
from snncc.backends.cpu.program import CpuProgram, refuse_jit_trace
from snncc.backends.cpu.saved_spikes import GEMM_OPS, spike_source
from snncc.backends.cuda import cache as kcache
from snncc.backends.cuda import runtime
from snncc.backends.cuda.chunked import (
    ChunkedNeuron,
    ChunkedNeuronFunction,
    chunkable,
    merge_steps,
    plan_chunks,
)
from snncc.backends.cuda.neuron import CudaNeuronKernel
from snncc.backends.cuda.recurrent import CudaRecurrentKernel
from snncc.backends.kernels import HALF_DTYPES
from snncc.backends.kernels.recurrent import MAX_FUSED_HIDDEN
from snncc.backends.reference.ops import apply_steps
from snncc.backends.reference.program import ReferenceProgram
from snncc.errors import UnsupportedError
from snncc.ir.graph import Graph

Tensor = torch.Tensor

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
#: 16-bit activations the neuron kernels read and write as they are (autocast_io): dtype -> name
_HALF = {TORCH_DTYPES[name]: name for name in HALF_DTYPES}
#: the precisions that run under autocast, and its dtype
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
SPIKE_DTYPES = ("float32", "uint8")


class CudaProgram(CpuProgram):
    """A graph whose neuron layers run as generated CUDA kernels and everything else as torch CUDA ops.

    Parameters
    ----------
    graph
        The scheduled graph.
    cache_dir
        Kernel cache (default ``~/.cache/snncc/cuda``): generated ``.cu`` files
        and the cubins NVRTC made of them.
    recompute
        Backward recomputes what each neuron layer's forward would save (its
        charged membrane or its state) instead of saving it.
    device
        ``"cuda"`` (the current device) or ``"cuda:N"``.
    precision
        ``"fp32"`` (default; true fp32 GEMMs and convolutions, TF32 off),
        ``"tf32"`` (TF32 tensor cores for GEMMs and convolutions) or
        ``"bf16"`` / ``"fp16"`` (stateless ops under autocast to that dtype;
        neuron arithmetic stays fp32, its I/O 16-bit: see ``autocast_io``; fp16
        keeps three more mantissa bits than bf16 but overflows past 65504, so
        training in fp16 wants the caller's ``torch.amp.GradScaler``).
        Spikes are exact only in fp32 (the others change GEMM rounding).
        The setting holds while the program runs, so for outputs; a later
        ``backward()`` runs torch's autograd outside it: bf16 ops differentiate
        in bf16 (autocast recorded them), while fp32/tf32 GEMMs and
        convolutions differentiate under torch's global flags (by default
        fp32 matmuls and TF32 cuDNN convolutions; set
        ``torch.backends.cudnn.conv.fp32_precision = "ieee"`` for fp32
        convolution gradients).
    cuda_graph
        Capture inference runs (grad disabled, fresh state) in a CUDA graph per
        input shape and replay it: one launch instead of one per op. The
        outputs are the graph's static tensors, overwritten by the next call
        of the same shape (clone them to keep them).
    spike_dtype
        ``"uint8"``: in inference, spiking layers whose only consumers are
        program outputs store spikes as uint8 (4x less traffic); those outputs
        are then uint8 tensors of 0/1. Default ``"float32"``.
    block_size
        Threads per block for the neuron kernels (default: chosen per layer).
    autocast_io
        Under autocast to bf16 or fp16 (``precision="bf16"`` / ``"fp16"``, or
        the caller's own ``torch.autocast("cuda", dtype=...)`` around
        ``to_torch()``), neuron layers read their 16-bit input as is and write
        its gradient in the same dtype, and a layer whose output feeds exactly
        one linear or convolution layer (through flatten / reshape, and for
        exact 0/1 spikes non-overlapping max pooling) writes it in that dtype,
        rounded as autocast would round it there: the values and gradients are
        those of widening to fp32 and letting autocast narrow again (NaNs aside:
        any NaN becomes one quiet NaN), without the casts' extra passes over
        memory (default True; False widens through torch casts). The neuron
        arithmetic stays fp32. Recurrent components and time-chunked layers
        widen instead.
    time_chunks
        Long sequences with few neurons: ``"auto"`` (default) splits the time
        loop of hard-reset and leaky soft-reset spiking layers into chunks run
        in parallel and fixed up exactly (:mod:`snncc.backends.cuda.chunked`)
        when one thread per neuron would leave the GPU idle, forward (bit for
        bit) and backward (within the gradient tolerance); an int forces that
        chunk length wherever the form allows; ``0`` turns it off.
    recurrent
        ``"fused"`` (default here): each recurrent group with a fused plan in the IR
        (snncc.ir.recurrent) and at most 1024 neurons runs as one kernel launch per
        direction, one thread block per sample; its sums run in another order than the
        reference's GEMM (README, "Recurrent groups": tolerance). ``"step"``: one kernel
        call and one GEMM per time step, as the cpu backend's default.
    **reference_options
        ``saved_spike_dtype``: as the cpu backend; ``requires_grad``,
        ``stateless_per_step``, ``training``: as the reference backend.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        cache_dir: str | None = None,
        recompute: bool = False,
        device: str | int | None = None,
        precision: str = "fp32",
        cuda_graph: bool = False,
        spike_dtype: str = "float32",
        block_size: int | None = None,
        time_chunks: str | int = "auto",
        autocast_io: bool = True,
        **reference_options: Any,
    ) -> None:
        _check_options(precision, spike_dtype, block_size, time_chunks)
        # what _build_kernels reads, set before CpuProgram.__init__ calls it
        self.autocast_io = bool(autocast_io)
        self.recompute = bool(recompute)
        self.time_chunks = time_chunks
        self.block_size = block_size
        self.precision = precision
        #: which fp32 precision flags of torch the graph's ops read (checked when traced)
        self._fp32_ops = fp32_op_kinds(graph)
        self.cuda_graph = bool(cuda_graph)
        self.spike_dtype = spike_dtype
        self._device_spec = device
        self.device: torch.device | None = None
        super().__init__(graph, cache_dir=cache_dir, recompute=recompute, **reference_options)
        self._graphs: dict[Any, tuple] = {}
        if torch.cuda.is_available():  # params live on the GPU from the start when there is one
            self._place(runtime.resolve_device(device))

    # ------------------------------------------------------------ lowering
    def _build_kernels(self, recompute: bool) -> None:
        """Render every neuron layer's kernels: plain, uint8 and time-chunked variants.

        CpuProgram's kernel-factory hook; rendering needs no GPU (NVRTC compiles on first launch).
        """
        graph, cache_dir, block_size = self.graph, self.cache_dir, self.block_size
        self.kernels: dict[int, CudaNeuronKernel] = {}
        self.u8_kernels: dict[int, CudaNeuronKernel] = {}
        for n, spec in self._specs.items():
            attrs = graph.attrs(n)
            pro, epi = attrs.get("prologue") or [], attrs.get("epilogue") or []
            self.kernels[n] = CudaNeuronKernel(
                spec, pro, epi, {"recompute": recompute}, cache_dir, block=block_size
            )
            if self.spike_dtype == "uint8" and self._u8_eligible(n, epi):
                self.u8_kernels[n] = CudaNeuronKernel(
                    spec,
                    pro,
                    epi,
                    {"spike_dtype": "uint8"},
                    cache_dir,
                    # forward-only would do, but then the unit's surrogate helper is unused
                    # and nvcc --Werror rejects it (templates/cuda: needs [[maybe_unused]])
                    backward=True,
                    block=block_size,
                )
        # autocast (see autocast_io): node -> whether its 16-bit-input kernel may also write
        # a 16-bit output (a single GEMM reads it); the kernels are rendered now for
        # precision="bf16"/"fp16" (so files() and build() hold them), else on first use
        self.half_out: dict[int, bool] = {}
        if self.autocast_io:
            for n in self._specs:
                if n not in self._recurrent:  # recurrent steps widen
                    self.half_out[n] = self._half_out_eligible(n)
        #: node -> (x dtype, out dtype) -> kernel
        self.half_kernels: dict[int, dict[tuple[str, str], CudaNeuronKernel]] = {}
        if self.precision in _AUTOCAST:
            name = _HALF[_AUTOCAST[self.precision]]
            for n, half_out in self.half_out.items():
                self._half_kernel(n, name, "float32")
                if half_out:
                    self._half_kernel(n, name, name)
        self.chunked: dict[int, dict[str, ChunkedNeuron]] = {}
        if self.time_chunks != 0:
            for n, spec in self._specs.items():
                epi = graph.attrs(n).get("epilogue") or []
                if n in self._recurrent or not chunkable(spec, epi):
                    continue
                # float32 kernels also train (chunked backward); uint8 is inference only
                self.chunked[n] = {
                    "float32": ChunkedNeuron(
                        spec, "float32", cache_dir, backward=True, recompute=recompute
                    )
                }
                if n in self.u8_kernels:
                    self.chunked[n]["uint8"] = ChunkedNeuron(spec, "uint8", cache_dir)

    #: autocast may hand the kernels 16-bit activations: widen them
    _widen_inputs = True

    #: recurrent groups run fused by default here: the GEMMs already differ from the CPU
    #: reference's rounding, and one launch per group and direction replaces T of each
    default_recurrent = "fused"

    def _fused_refusal(self, plan: dict[str, Any]) -> str:
        if int(plan["hidden"]) > MAX_FUSED_HIDDEN:
            return (
                f"hidden size {plan['hidden']} > {MAX_FUSED_HIDDEN}: one thread block per "
                "sample holds at most that many neurons; per-step kernels and GEMMs instead"
            )
        return ""

    def _fused_kernel(self, plan: dict[str, Any]) -> Any:
        return CudaRecurrentKernel(self._specs[plan["neuron"]], plan["port"], self.cache_dir)

    def _u8_eligible(self, n: int, epilogue: list) -> bool:
        """uint8 spikes only where the output is exactly 0/1 (a spike straight from the
        comparison, no epilogue: snnTorch's graded spikes ``H * g`` are not) and nothing but
        a program output reads it."""
        if not self.kernels[n].info.out_binary or epilogue or n in self._recurrent:
            return False
        users = self.graph.users(n)
        return bool(users) and all(self.graph.op(e.dst) == "output" and e.delay == 0 for e in users)

    def _half_kernel(self, n: int, x_dtype: str, out: str) -> CudaNeuronKernel:
        """Node n's kernel reading 16-bit x and writing ``out`` (rendered once, on first use)."""
        variants = self.half_kernels.setdefault(n, {})
        kernel = variants.get((x_dtype, out))
        if kernel is None:
            attrs = self.graph.attrs(n)
            opts = {"x_dtype": x_dtype, "spike_dtype": out, "recompute": self.recompute}
            kernel = variants[(x_dtype, out)] = CudaNeuronKernel(
                self._specs[n],
                attrs.get("prologue") or [],
                attrs.get("epilogue") or [],
                opts,
                self.cache_dir,
                block=self.block_size,
            )
        return kernel

    def _half_variant(self, n: int, x: Tensor) -> CudaNeuronKernel | None:
        """Node n's 16-bit kernel for x, where autocast_io gives one (else None: widen)."""
        if x.dtype not in _HALF or n not in self.half_out:
            return None
        x_dtype = _HALF[x.dtype]
        half_out = self.half_out[n] and _autocast_to(x)
        return self._half_kernel(n, x_dtype, x_dtype if half_out else "float32")

    def _half_out_eligible(self, n: int) -> bool:
        """A 16-bit output only where a single linear / convolution reads it (autocast narrows
        its input to the same 16 bits anyway, with the same rounding), possibly through ops
        that hand each element on once, so no value anywhere differs from the fp32 output's.

        Never a program output (its dtype would change), and never more than one reader or
        an overlapping max pool: their gradients are summed into the output's gradient, in
        fp32 on an fp32 output but in 16 bits on a 16-bit one. Max pooling passes only
        exact 0/1 spikes on (on rounded membranes a tie could pick another element).
        """
        source = spike_source(self.graph, n, self._specs[n])
        return _sole_gemm_reader(self.graph, n, binary=source is not None and source.scale is None)

    def _units_by_tag(self) -> dict[str, tuple[Any, list[int]]]:
        """One translation unit per distinct kernel (identical layers share one), with its nodes.

        Values are objects with a ``source`` (plain, uint8 and time-chunked kernels).
        """
        units: dict[str, tuple[Any, list[int]]] = {}
        for table in (self.kernels, self.u8_kernels):
            for n, kernel in table.items():
                units.setdefault(kernel.info.tag, (kernel, []))[1].append(n)
        for n, variants in self.half_kernels.items():
            for kernel in variants.values():
                units.setdefault(kernel.info.tag, (kernel, []))[1].append(n)
        for n, variants in self.chunked.items():
            for chunk in variants.values():
                units.setdefault(chunk.name, (chunk, []))[1].append(n)
        return units

    @property
    def kernel_source(self) -> str:
        """Every distinct generated CUDA unit, concatenated (one file that compiles as a whole)."""
        parts = []
        plain = {k.info.tag for table in (self.kernels, self.u8_kernels) for k in table.values()}
        plain |= {k.info.tag for vs in self.half_kernels.values() for k in vs.values()}
        for tag, (kernel, nodes) in self._units_by_tag().items():
            used = ", ".join(f"%{n}" for n in nodes)
            text = kernel.source
            if isinstance(kernel, ChunkedNeuron) and kernel.tag in plain:
                text = kernel.kernels_text  # its step functions are already above
            parts.append(f"// ==== kernels {tag}: nodes {used} ====\n{text}")
        return "\n".join(parts)

    def files(self) -> dict[str, str]:
        return {"kernels.cu": self.kernel_source, "program.txt": ReferenceProgram.source.fget(self)}

    def build(self, arch: str | None = None) -> list:
        """Compile every kernel unit into the cache and return the binaries' paths.

        ``arch`` ("sm_80", "sm_90", "compute_90") builds without a GPU (ahead of
        time, or to check the generated code); None builds for this
        program's device (needs a GPU).
        """
        if arch is None:
            dev = self._ready()
            cap = runtime.device_info(dev.index).capability
            return [
                kcache.build(k.source, cap, self.cache_dir)
                for k, _ in self._units_by_tag().values()
            ]
        return [
            kcache.build(k.source, cache_dir=self.cache_dir, arch=arch)
            for k, _ in self._units_by_tag().values()
        ]

    # ------------------------------------------------------------ devices
    def _place(self, device: torch.device) -> None:
        """Move every param to ``device`` once, keeping learnable ones leaf tensors."""
        self.device = device
        for name, t in list(self.params.items()):
            if t.device != device:
                moved = t.detach().to(device)
                self.params[name] = moved.requires_grad_(t.requires_grad)

    def _ready(self) -> torch.device:
        """CuPy + GPU present (else BackendError saying what to install); params on the device."""
        dev = runtime.require(self._device_spec if self.device is None else self.device)
        if self.device != dev:
            self._place(dev)
        return dev

    # ------------------------------------------------------------ running
    def run(self, x: Any, state: dict | None = None) -> tuple[Any, dict]:
        """Run ``x`` [T, B, ...] on the GPU from ``state``; return (outputs, final state)."""
        refuse_jit_trace()
        dev = self._ready()
        xs = list(x) if isinstance(x, (tuple, list)) else [x]
        xs = [torch.as_tensor(t).to(dev) if not _on(t, dev) else t for t in xs]
        x = xs if isinstance(x, (tuple, list)) else xs[0]
        if (  # traced, torch's own CUDA graphs (mode="reduce-overhead") take this role
            self.cuda_graph
            and state is None
            and not self._grad_needed(xs)
            and not torch.compiler.is_compiling()
        ):
            return self._graph_run(xs)
        with self._precision():
            y, new_state = ReferenceProgram.run(self, x, state)
        if self.precision in _AUTOCAST:  # autocast may leave 16-bit outputs: results are fp32
            y = _widen(y)
        return y, new_state

    def _grad_needed(self, xs: list[Tensor]) -> bool:
        if not torch.is_grad_enabled():
            return False
        return any(t.requires_grad for t in xs) or any(
            p.requires_grad for p in self.params.values()
        )

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        """GEMM/convolution precision for this run only; the global flags are restored after.

        Traced (torch.compile, torch.export) the flags cannot be set from inside the
        graph, and dynamo cannot read them either: they are read once when the graph is
        traced, and a graph whose GEMMs or convolutions the caller's flags would run in
        another precision than this program's is refused by name (torch's default lets
        cuDNN convolutions use TF32, which exact fp32 does not)."""
        mode = "tf32" if self.precision == "tf32" else "ieee"
        if torch.compiler.is_compiling():
            flags = contextlib.nullcontext()
            wrong = _precision_mismatch(mode, self._fp32_ops, _fp32_modes())
            if wrong:
                raise UnsupportedError(
                    f"cuda program of precision {self.precision!r} under torch.compile / "
                    f"torch.export: {wrong}; a traced graph cannot set them itself"
                )
        else:
            flags = _fp32_precision(mode)
        with flags:
            if self.precision in _AUTOCAST:
                kind = "cuda" if self.device is None else self.device.type
                with torch.autocast(kind, dtype=_AUTOCAST[self.precision]):
                    yield
            else:
                yield

    def _graph_key(self, xs: list[Tensor]) -> tuple:
        """Shapes, every param's storage and version, and the caller's autocast (it decides
        which ops run in 16 bits and which kernel variants): any change re-captures."""
        kind = self.device.type if self.device is not None else "cuda"
        return (
            tuple((tuple(t.shape), t.dtype) for t in xs),
            tuple((t.data_ptr(), t._version) for t in self.params.values()),
            _autocast_dtype(kind),
        )

    def _graph_run(self, xs: list[Tensor]) -> tuple[Any, dict]:
        key = self._graph_key(xs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(xs)
            self._graphs = {key: entry}  # keep one: old captures hold stale params
        graph, static_in, y, state = entry
        for s, t in zip(static_in, xs):
            s.copy_(t)
        graph.replay()
        return y, state

    def _capture(self, xs: list[Tensor]) -> tuple:
        dev = self.device
        static_in = [t.clone() for t in xs]
        arg = static_in if len(static_in) > 1 else static_in[0]
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), self._precision():
            # warm-up: loads kernels, caches PLIF decays, creates cuBLAS/cuDNN handles
            for _ in range(2):
                ReferenceProgram.run(self, arg, None)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self._precision():
            y, state = ReferenceProgram.run(self, arg, None)
            if self.precision in _AUTOCAST:
                y = _widen(y)
        return graph, static_in, y, state

    # ------------------------------------------------------------ neurons
    def _kernel_for(
        self, n: int, ins: list[Tensor], state: dict | None, quantities: dict, lead: bool
    ) -> Any:
        """uint8 spikes in inference where allowed, a 16-bit variant under autocast, or plain."""
        if lead and n in self.u8_kernels and not _inputs_need_grad(ins, state, quantities):
            return self.u8_kernels[n]
        half = self._half_variant(n, ins[0])
        return self.kernels[n] if half is None else half

    def _layer_call(
        self, ctx: Any, n: int, ins: list[Tensor], state: dict | None, lead: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # traced, a layer runs its plain kernel: the chunked schedule plans from the
        # quantities' values and launches outside any custom op (same bits, tested)
        if lead and n in self.chunked and not torch.compiler.is_compiling():
            quantities = self._quantities(ctx, n, self.kernels[n].info)
            chunked = self._chunked_call(n, ins, state, quantities)
            if chunked is not None:
                return chunked
        return super()._layer_call(ctx, n, ins, state, lead)

    def _chunked_call(
        self, n: int, ins: list[Tensor], state: dict | None, quantities: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Node n's layer split over time (see chunked.py), or None where it would not pay.

        The prologue and the reshapes are torch ops, so autograd carries their
        gradients; the chunked kernels' own autograd node is added only when a
        gradient is wanted.
        """
        x = ins[0]
        T = x.shape[0]
        step_shape = tuple(x.shape[1:])
        N = math.prod(step_shape)
        forced = None if self.time_chunks == "auto" else int(self.time_chunks)
        values = {q: float(t.detach().reshape(-1)[0]) for q, t in quantities.items()}
        merge = merge_steps(self._specs[n], values)
        L = plan_chunks(T, N, runtime.device_info(self.device.index).sm_count, forced, merge)
        if L is None:
            return None
        u8 = n in self.u8_kernels and not _inputs_need_grad(ins, state, quantities)
        pro = self.graph.attrs(n).get("prologue") or []
        x = x.float()  # first: under autocast the prologue runs in fp32, as in the fused kernel
        if pro:  # the same single-rounding steps the fused kernel would apply
            x = apply_steps(pro, x, ins, f"neuron %{n} prologue")
        x = x.contiguous().reshape(T, N)
        v0 = None if state is None else state.get("v")
        v0_flat = None if v0 is None else v0.float().expand(step_shape).contiguous().reshape(N)
        qs = [quantities[q].float() for q in self.chunked[n]["float32"].quantities]
        if _any_grad(x, v0_flat, *qs):
            run = self.chunked[n]["float32"]
            out, v_last = ChunkedNeuronFunction.apply(run, L, self.block_size, v0_flat, x, *qs)
        else:
            run = self.chunked[n]["uint8" if u8 else "float32"]
            qd = dict(zip(run.quantities, qs))
            out, v_last, _, _ = run.forward(x, v0_flat, qd, L, self.block_size)
        return out.reshape(T, *step_shape), {"v": v_last.reshape(step_shape)}

    def _step_input(self, ctx: Any, e: Any, t: int, members: set, hist: dict) -> Tensor:
        # the interpreter's t = 0 zeros of a delay edge inside a component are made on the CPU
        v = super()._step_input(ctx, e, t, members, hist)
        return v if self.device is None or v.device == self.device else v.to(self.device)


def _widen(y: Any) -> Any:
    if isinstance(y, tuple):
        return tuple(_widen(v) for v in y)
    return y.float() if y.dtype in _HALF else y


def _hands_on_once(graph: Graph, n: int, binary: bool) -> bool:
    """Op n hands every input element to at most one output element, unchanged (so its
    backward never sums two gradients into one input element): flatten, reshape, identity,
    and for exact 0/1 spikes a max pool whose windows do not overlap."""
    op = graph.op(n)
    if op in ("flatten", "reshape", "identity"):
        return True
    if op != "maxpool2d" or not binary:
        return False
    attrs = graph.attrs(n)
    kernel = _pair(attrs["kernel_size"])
    stride = _pair(attrs.get("stride") or attrs["kernel_size"])
    return _pair(attrs.get("dilation", 1)) == (1, 1) and all(s >= k for s, k in zip(stride, kernel))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def _sole_gemm_reader(graph: Graph, n: int, binary: bool) -> bool:
    """Node n has one reader, in the same step: port 0 of a GEMM, or an op that hands each
    element on once and has such a reader itself."""
    users = graph.users(n)
    if len(users) != 1 or users[0].delay != 0:
        return False
    e = users[0]
    if graph.op(e.dst) in GEMM_OPS:
        return e.port == 0
    return _hands_on_once(graph, e.dst, binary) and _sole_gemm_reader(graph, e.dst, binary)


def _autocast_to(x: Tensor) -> bool:
    """Autocast to x's dtype is on for x's device type: the next GEMM narrows its input to it."""
    return _autocast_dtype(x.device.type) == x.dtype


def _autocast_dtype(kind: str) -> torch.dtype | None:
    """The dtype autocast narrows to on device type ``kind`` now, or None where it is off.

    torch >= 2.4 asks by device type; 2.2 and 2.3 (which pyproject allows) only have the
    per-device functions.
    """
    try:
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    except (AttributeError, TypeError):
        if kind == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        if kind == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return None


def _on(t: Any, dev: torch.device) -> bool:
    return isinstance(t, Tensor) and t.device == dev


def _any_grad(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _inputs_need_grad(ins: list[Tensor], state: dict | None, quantities: dict) -> bool:
    return _any_grad(*ins, *(state or {}).values(), *quantities.values())


def _check_options(
    precision: str, spike_dtype: str, block_size: int | None, time_chunks: str | int
) -> None:
    """Refuse, by name, option values the cuda backend has no meaning for."""
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("spike_dtype", spike_dtype, SPIKE_DTYPES)
    runtime.check_block(block_size, "cuda backend option block_size")
    if not (
        time_chunks == "auto"
        or (isinstance(time_chunks, int) and not isinstance(time_chunks, bool) and time_chunks >= 0)
    ):
        raise UnsupportedError(
            f"cuda backend option time_chunks={time_chunks!r}: 'auto', 0 (off) or a chunk "
            "length >= 1"
        )


def _check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UnsupportedError(
            f"cuda backend option {option}={value!r}; supported: {', '.join(map(repr, choices))}"
        )


#: the torch flag that sets each kind of op's fp32 precision (torch >= 2.9; before: the
#: ``allow_tf32`` pair)
_FP32_FLAGS = {
    "gemm": "torch.backends.cuda.matmul.fp32_precision",
    "conv": "torch.backends.cudnn.conv.fp32_precision",
}
_LEGACY_TF32_FLAGS = {
    "gemm": "torch.backends.cuda.matmul.allow_tf32",
    "conv": "torch.backends.cudnn.allow_tf32",
}
#: this torch has the fp32_precision flags (read once here: traced code cannot read them)
_HAS_FP32_PRECISION = hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
    getattr(torch.backends.cudnn, "conv", None), "fp32_precision"
)


def fp32_op_kinds(graph: Graph) -> tuple[str, ...]:
    """Which of torch's fp32 precision flags the graph's ops read: "gemm" (linear), "conv"."""
    ops = {graph.op(n) for n in graph.nodes()}
    kinds = []
    if "linear" in ops:
        kinds.append("gemm")
    if ops & {"conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"}:
        kinds.append("conv")
    return tuple(kinds)


@torch.compiler.assume_constant_result
def _fp32_modes() -> dict[str, str]:
    """The fp32 precision torch's flags give GEMMs and convolutions now: "tf32" or "ieee".
    Read eagerly when a graph is traced (dynamo cannot read these flags itself)."""
    matmul = torch.backends.cuda.matmul
    if _HAS_FP32_PRECISION:
        conv = torch.backends.cudnn.conv
        parent = getattr(torch.backends, "fp32_precision", "none")

        def resolve(flag: str) -> str:
            flag = parent if flag == "none" else flag
            return "tf32" if flag == "tf32" else "ieee"

        return {"gemm": resolve(matmul.fp32_precision), "conv": resolve(conv.fp32_precision)}
    return {  # torch < 2.9
        "gemm": "tf32" if matmul.allow_tf32 else "ieee",
        "conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee",
    }


def _precision_mismatch(mode: str, kinds: tuple[str, ...], modes: dict[str, str]) -> str:
    """What the caller must set for the graph's ops to run in ``mode``; "" when nothing."""
    wrong = [k for k in kinds if modes[k] != mode]
    if not _HAS_FP32_PRECISION:  # torch < 2.9
        tf32 = mode == "tf32"
        return "; ".join(f"set {_LEGACY_TF32_FLAGS[k]} = {tf32}" for k in wrong)
    return "; ".join(f"set {_FP32_FLAGS[k]} = {mode!r} (it gives {modes[k]!r} now)" for k in wrong)


@contextlib.contextmanager
def _fp32_precision(mode: str) -> Iterator[None]:
    """Set torch's fp32 GEMM and cuDNN convolution precision ("ieee" or "tf32"), then restore it."""
    matmul = torch.backends.cuda.matmul
    if _HAS_FP32_PRECISION:
        conv = torch.backends.cudnn.conv
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision, conv.fp32_precision = mode, mode
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
    else:  # torch < 2.9
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
