"""The ``snncc`` command line: compile, ir, run, export, deploy, import, example, cache.

Every failure snncc knows about (:class:`~snncc.errors.SnnccError`) is printed
as one line, ``snncc: error: ...``, with exit status 2 -- the same shape as
argparse's own usage errors -- because a traceback tells a user of a
*compiler* nothing they can act on. So is what the system can throw at any
command: an ``OSError`` on an input, output or cache path (the path and what
to do), running out of memory, an interrupt; a closed pipe on stdout
(``snncc ir ... | head``) ends the command quietly. Heavy imports (torch, jax)
happen inside the commands so ``snncc --help`` stays instant, and the backend
(and, for the cuda backend, CuPy and a GPU where the command runs the model)
is checked before any slow work.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from snncc.errors import CheckpointError, SnnccError
from snncc.ir.safe_files import MAX_ELEMENTS, os_error_hint

FORMATS = ("text", "json", "dot")
EXCHANGE_FORMATS = ("onnx", "nir")


class UsageError(SnnccError, ValueError):
    """A model spec, file or argument the CLI cannot use (named in the message)."""


# ------------------------------------------------------------------ helpers
def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"8,1,64"`` -> (8, 1, 64): time-major [T, B, ...], every size a positive integer."""
    parts = [p.strip() for p in text.split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 8,1,64 for [T, B, features]"
        ) from None
    if len(dims) < 3:
        raise argparse.ArgumentTypeError(
            f"{text!r} has {len(dims)} dimension(s); need time-major T,B,... with at least 3, "
            "e.g. 8,1,64"
        )
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be >= 1")
    n = 1
    for d in dims:
        n *= d
    if n > MAX_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is {n} elements, more than the {MAX_ELEMENTS} snncc allocates for one "
            "array; tracing needs only a few steps and one sample, e.g. 8,1,64"
        )
    return dims


def load_factory(spec: str) -> Callable[[], Any]:
    """Resolve ``path/file.py:factory`` or ``package.module:factory`` to the factory callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target:
        raise UsageError(
            f"model spec {spec!r} must be 'path/file.py:factory' or 'package.module:factory'"
        )
    if not attr.isidentifier():
        raise UsageError(f"model spec {spec!r}: factory name {attr!r} is not a Python identifier")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target))
        where = str(target)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"model spec {spec!r}: cannot import module {target!r} ({exc})"
            ) from None
        where = f"module {target}"
    factory = getattr(module, attr, None)
    if factory is None:
        raise UsageError(f"model spec {spec!r}: {where} has no attribute {attr!r}")
    if not callable(factory):
        raise UsageError(f"model spec {spec!r}: {where}:{attr} is not callable")
    return factory


def _import_file(path: Path) -> Any:
    """Execute a Python file as a fresh module; its folder is importable while it runs."""
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    name = "_snncc_user_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"model file {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except SnnccError:
        raise
    except Exception as exc:  # the user's file: report it in one line, naming the file
        raise UsageError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(folder)
    return module


def build_model(spec: str, weights: str | None = None) -> Any:
    """Call the spec's factory, check it gives an nn.Module, load weights, switch to eval mode."""
    from torch import nn

    factory = load_factory(spec)
    try:
        model = factory()
    except SnnccError:
        raise
    except Exception as exc:
        raise UsageError(f"calling {spec} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    if weights is not None:
        load_weights(model, Path(weights))
    return model.eval()


def load_weights(model: Any, path: Path) -> None:
    """Load a state_dict (.pt via torch.load(weights_only=True), or .safetensors) strictly."""
    import torch

    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format: all one message
        raise CheckpointError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(
            f"weights file {path} does not hold a state_dict (a mapping of names to tensors)"
        )
    problems = _state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"weights file {path} does not fit the model: {problems}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights file {path} does not fit the model: {exc}") from None


def _state_dict_mismatch(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    """Missing keys, unexpected keys and shape mismatches, in one line ('' if it fits)."""
    parts = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        parts.append("missing keys " + ", ".join(missing))
    if unexpected:
        parts.append("unexpected keys " + ", ".join(unexpected))
    for key in sorted(set(expected) & set(got)):
        want, have = tuple(expected[key].shape), tuple(got[key].shape)
        if want != have:
            parts.append(f"{key} has shape {list(have)} in the file, the model needs {list(want)}")
        elif expected[key].dtype != got[key].dtype:
            w, h = (str(t.dtype).removeprefix("torch.") for t in (expected[key], got[key]))
            parts.append(
                f"{key} is {h} in the file, the model's is {w} (snncc never casts weights "
                f"silently: convert the checkpoint, e.g. {{k: v.to(torch.{w}) ...}}, or the model)"
            )
    return "; ".join(parts)


def example_input(shape: tuple[int, ...]) -> Any:
    """The tracing input: float32 uniform [0, 1), seeded so runs are repeatable."""
    import torch

    return torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)


def format_ir(graph: Any, fmt: str) -> str:
    """The graph as text (the numbered printer), JSON (node-link, as saved) or Graphviz dot."""
    if fmt == "text":
        from snncc.ir.printer import format_graph

        return format_graph(graph)
    if fmt == "json":
        from snncc.ir.serde import to_json

        return to_json(graph)
    from snncc.ir.dot import to_dot

    return to_dot(graph)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _best_of(fn: Callable[[], Any], repeat: int = 5) -> tuple[Any, float]:
    """Run ``fn`` ``repeat`` times; return the last result and the fastest wall time."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


# ----------------------------------------------------------------- commands
def _backend_first(name: str, options: dict[str, Any] | None = None, runs: bool = False) -> Any:
    """The backend, checked before any slow work; with ``runs``, also what running needs
    (the cuda backend: CuPy and a GPU)."""
    from snncc import backends

    be = backends.get(name)
    check = getattr(be, "check_runtime", None)
    if runs and check is not None:
        check(options or {})
    return be


def output_file(path: str) -> Path:
    """An output file path: its folder is created; a folder (or a link to one) is refused."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"output {out} is a folder; name a file to write, e.g. {out / 'y.npy'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the folder of output {out}: {exc.strerror}; {os_error_hint(exc)}"
        ) from None
    return out


def read_npy(path: Path) -> Any:
    """One array from a .npy file: no pickles, and its declared size checked against the
    limit and the file's length before anything is allocated."""
    import numpy as np

    from snncc.ir.safe_files import check_elements

    if not path.is_file():
        what = "is a folder, not a .npy file" if path.is_dir() else "does not exist"
        raise UsageError(f"input file {path} {what}")
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
            header = fh.tell()
        n = check_elements(list(shape), f"input file {path}", UsageError)
        if dtype.hasobject:
            raise UsageError(f"input file {path} holds Python objects; snncc reads numeric arrays")
        if path.stat().st_size < header + n * dtype.itemsize:
            raise UsageError(
                f"input file {path} declares {list(shape)} {dtype} but is too short for it "
                "(truncated?)"
            )
        return np.load(path, allow_pickle=False)
    except SnnccError:
        raise
    except Exception as exc:  # a corrupt header, an npz, a pickle: all one message
        raise UsageError(f"cannot read input file {path} as .npy: {exc}") from None


def cmd_compile(args: argparse.Namespace) -> int:
    import snncc

    _backend_first(args.backend)
    model = build_model(args.spec, args.weights)
    start = time.perf_counter()
    cm = snncc.compile(
        model,
        example_input(args.input_shape),
        backend=args.backend,
        dump_ir=args.dump_ir,
        **_partition(args),
        **_options(args),
    )
    elapsed = time.perf_counter() - start
    out = cm.save(args.output)
    groups = len(cm.ir.meta.get("groups", []))
    print(
        f"compiled {args.spec} for backend {cm.backend} in {elapsed:.2f} s: "
        f"{len(cm.ir)} IR nodes, {groups} groups, {len(cm.params)} weight arrays"
        + _stages_note(cm.ir)
    )
    print(f"wrote {out}/ (snncc.json, ir/, source/: {', '.join(sorted(cm.files()))})")
    return 0


def cmd_ir(args: argparse.Namespace) -> int:
    from snncc.frontend import trace
    from snncc.ir.passes import run_pipeline

    backend = _backend_first(args.backend)
    model = build_model(args.spec, args.weights)
    graph = trace(model, example_input(args.input_shape))
    names = list(backend.pipeline)
    request = _partition(args)
    if request:
        workload = {"steps": args.input_shape[0], "batch": args.input_shape[1]}
        graph.meta["partition"] = {
            **workload,
            **(request.get("partition") or {}),
            **{k: v for k, v in request.items() if k != "partition"},
        }
        names.append("partition")
    graph = run_pipeline(graph, names, dump_dir=args.dump_ir)
    text = format_ir(graph, args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import snncc
    from snncc.ir.safe_files import write_file

    out = output_file(args.output)
    if not Path(args.artifact).is_dir():
        raise CheckpointError(f"artifact directory {args.artifact} does not exist")
    path = Path(args.input)
    x = read_npy(path)
    cm = snncc.load(args.artifact, **_options(args))
    _backend_first(cm.backend, cm.options, runs=True)
    where = ""
    if args.parallel is not None:
        y, where = _run_parallel(cm, x, args)
        if y is None:  # another rank holds the outputs and writes them
            return 0
        elapsed = y[1]
        y = y[0]
    else:
        if args.chunks is not None or args.micro_batches is not None:
            raise UsageError("--chunks / --micro-batches apply with --parallel only")
        start = time.perf_counter()
        with torch.no_grad():  # inference only: torch backends need no autograd graph
            y = cm(x)
        elapsed = time.perf_counter() - start
    buf = io.BytesIO()
    if isinstance(y, (tuple, list)):
        if out.suffix != ".npz":
            raise UsageError(f"this model has {len(y)} outputs: give an output file ending in .npz")
        np.savez(buf, **{f"output{i}": v for i, v in enumerate(y)})
        shapes = ", ".join(f"output{i} {list(v.shape)}" for i, v in enumerate(y))
    else:
        np.save(buf, y)
        shapes = f"{list(y.shape)} {y.dtype}"
    try:
        write_file(out, buf.getvalue())  # atomic; a link at the output is replaced, not followed
    except OSError as exc:
        raise UsageError(
            f"cannot write output {out}: {exc.strerror}; {os_error_hint(exc)}"
        ) from None
    print(f"ran {args.artifact} ({cm.backend}{where}) on {path} {list(x.shape)} in {_ms(elapsed)}")
    print(f"wrote {out}: {shapes}")
    return 0


def _run_parallel(cm: Any, x: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """``snncc run --parallel``: this process's rank of the schedule (under torchrun).

    Returns ((outputs, seconds), description) on the rank that holds the outputs,
    (None, ...) on the others."""
    import numpy as np
    import torch

    from snncc import distributed

    device = cm.options.get("device") if cm.backend == "cuda" else None
    rank, world = distributed.init(args.dist_backend, device=device or cm.backend)
    options = {"chunks": args.chunks, "micro_batches": args.micro_batches}
    runner = cm.parallel(args.parallel, **options)
    xt = torch.from_numpy(np.array(x, copy=True)).to(runner.device)
    torch.distributed.barrier()
    start = time.perf_counter()
    y, _ = runner.run(xt)
    torch.distributed.barrier()
    elapsed = time.perf_counter() - start
    distributed.finalize()
    what = f", {args.parallel.replace('_', ' ')} over {world} ranks, rank {rank} writes"
    if y is None or (args.parallel == "neuron_split" and rank != world - 1):
        return None, what
    ys = y if isinstance(y, tuple) else (y,)
    ys = tuple(v.detach().cpu().numpy() for v in ys)
    return (ys if len(ys) > 1 else ys[0], elapsed), what


def _partition(args: argparse.Namespace) -> dict[str, Any]:
    """The compile keywords of --stages / --devices / --partition KEY=VALUE."""
    out: dict[str, Any] = {}
    if getattr(args, "stages", None) is not None:
        out["stages"] = args.stages
    if getattr(args, "devices", None) is not None:
        out["devices"] = args.devices
    settings: dict[str, Any] = {}
    for key, value in getattr(args, "partition", None) or []:
        if key in settings:
            raise UsageError(f"partition setting {key!r} given twice (--partition {key}=...)")
        settings[key] = value
    if settings:
        out["partition"] = settings
    return out


def _stages_note(graph: Any) -> str:
    stages = graph.meta.get("stages")
    parallel = graph.meta.get("parallel")
    note = f", {len(stages)} stages" if isinstance(stages, list) and len(stages) > 1 else ""
    if isinstance(parallel, dict) and parallel.get("schedule"):
        note += f"; modelled fastest on {parallel['devices']} devices: {parallel['schedule']}"
    return note


def load_graph(model: str, input_shape: tuple[int, ...] | None, weights: str | None) -> Any:
    """The scheduled IR of MODEL: an artifact directory, or a SPEC traced at ``input_shape``."""
    import snncc

    if Path(model).is_dir():
        return snncc.load_ir(model)
    if input_shape is None:
        raise UsageError(
            f"{model!r} is not an artifact directory; to trace a SPEC give --input-shape T,B,..."
        )
    cm = snncc.compile(build_model(model, weights), example_input(input_shape))
    return cm.ir


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "onnx" and (args.dt is not None or args.accept):
        raise UsageError("--dt/--accept apply to NIR export, not ONNX")
    out = output_file(args.output)
    graph = load_graph(args.model, args.input_shape, args.weights)
    try:
        if args.format == "onnx":
            from snncc.exchange.onnx_export import to_onnx

            to_onnx(graph, out)
        else:
            from snncc.exchange.nir_export import to_nir

            to_nir(graph, out, dt=args.dt, accept=args.accept or ())
    except OSError as exc:
        raise UsageError(
            f"cannot write {out}: {exc.strerror or exc}; {os_error_hint(exc)}"
        ) from None
    print(f"exported {args.model} as {args.format} to {out} ({out.stat().st_size} bytes)")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    import snncc.deploy as deployment

    if args.target not in deployment.TARGETS:
        raise UsageError(
            f"deploy target {args.target!r}; supported: {', '.join(deployment.TARGETS)}"
        )
    if Path(args.model).is_dir():
        if args.input_shape is not None or args.weights is not None:
            raise UsageError("--input-shape/--weights apply to a SPEC, not an artifact directory")
        import snncc

        start = time.perf_counter()
        source: Any = snncc.load_ir(args.model)  # not lowered: no kernels, no GPU needed
    elif args.input_shape is None:
        raise UsageError(
            f"{args.model!r} is not an artifact directory; to trace a SPEC give --input-shape "
            "T,B,..."
        )
    else:
        from snncc.frontend import trace

        model = build_model(args.model, args.weights)
        start = time.perf_counter()
        source = trace(model, example_input(args.input_shape))  # scheduled by deploy
    result = deployment.deploy(source, args.output, target=args.target)
    low = result.lowered
    print(
        f"deployed {args.model} ({args.target}) to {result.path} in "
        f"{time.perf_counter() - start:.2f} s: model {result.model_id}, {len(low.tensors)} "
        f"weight tensors, {len(low.kernels)} neuron kernel(s), state {low.state_per_sample} "
        "floats per sample"
    )
    build = result.path / ("build-cuda" if args.target == "cuda" else "build")
    print("build it with (README.md in the folder says more):")
    if args.target == "cuda":
        print(f"  cmake -S {result.path} -B {build} -G Ninja -DSNNCC_CUDA=ON")
    else:
        print(
            f"  cmake -S {result.path} -B {build} -G Ninja -DOpenBLAS_DIR=$(python -c "
            '"import scipy_openblas32 as s; print(s.get_lib_dir())")/cmake/openblas'
        )
    print(f"  cmake --build {build}")
    print(f"  {build}/snncc_run {result.path}/weights.safetensors -i x.npy -o y.npy")
    return 0


def import_graph(path: Path, fmt: str | None, **nir_options: Any) -> Any:
    """Read an ONNX or NIR file into the IR; the format comes from the suffix unless given."""
    fmt = fmt or {".onnx": "onnx", ".nir": "nir", ".h5": "nir", ".hdf5": "nir"}.get(path.suffix)
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {path} from its suffix; give --format "
            f"({' or '.join(EXCHANGE_FORMATS)})"
        )
    if fmt == "onnx":
        from snncc.exchange.onnx_import import from_onnx

        return from_onnx(path)
    from snncc.exchange.nir_import import from_nir

    return from_nir(path, **nir_options)


def cmd_import(args: argparse.Namespace) -> int:
    import snncc

    nir_options = {
        k: v
        for k, v in (
            ("dt", args.dt),
            ("reset", args.reset),
            ("accept", args.accept),
            ("fire", args.fire),
        )
        if v is not None
    }
    if args.format == "onnx" or Path(args.file).suffix == ".onnx":
        if nir_options:
            raise UsageError(f"--dt/--reset/--accept/--fire apply to NIR files, not {args.file}")
    _backend_first(args.backend)
    graph = import_graph(Path(args.file), args.format, **nir_options)
    cm = snncc.compile_graph(graph, backend=args.backend, **_options(args))
    out = cm.save(args.output)
    print(
        f"imported {args.file} for backend {cm.backend}: {len(cm.ir)} IR nodes, "
        f"{len(cm.params)} weight arrays, input [T, {', '.join(map(str, cm.input_spec['shape']))}]"
    )
    print(f"wrote {out}/ (run it with: snncc run {out} --input x.npy -o y.npy)")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    _backend_first(args.backend, _options(args), runs=True)  # before 15 s of eager runs
    import numpy as np
    import torch

    import snncc
    from snncc.examples import digits

    model = digits.load_pretrained()
    images, labels = digits.test_split()
    x = digits.encode(images)
    digits.run_eager(model, images)  # warm-up: SpikingJelly's first call initialises lazily
    eager, t_eager = _best_of(lambda: digits.run_eager(model, images))
    start = time.perf_counter()
    cm = snncc.compile(model, x[:, :1], backend=args.backend, **_options(args))
    t_compile = time.perf_counter() - start
    with torch.no_grad():  # inference, as the eager run: no autograd graph for torch backends
        start = time.perf_counter()
        compiled = cm(x)  # the first call includes any JIT compilation
        t_first = time.perf_counter() - start
        compiled, t_run = _best_of(lambda: cm(x))
    eager_np = eager.numpy()
    compiled_np = np.asarray(compiled.detach() if hasattr(compiled, "detach") else compiled)
    differ = int((eager_np != compiled_np).sum())
    name = f"compiled ({cm.backend})"
    print(
        f"snncc example: SpikingJelly LIF MLP {digits.N_IN}-{digits.N_HIDDEN}-{digits.N_OUT} "
        f"trained on scikit-learn digits, T={digits.T}, {len(labels)} test digits"
    )
    print(
        f"  {'eager (SpikingJelly)':22s} accuracy {digits.accuracy(eager_np, labels):.4f}  "
        f"run {_ms(t_eager)}"
    )
    print(
        f"  {name:22s} accuracy {digits.accuracy(compiled_np, labels):.4f}  "
        f"run {_ms(t_run)} (first call {_ms(t_first)}), compile {t_compile:.2f} s"
    )
    print(f"  output spikes that differ: {differ} of {eager_np.size}")
    print("  (run times: best of 5 after a warm-up call, on this machine's CPU)")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _cache_folders(args: argparse.Namespace) -> list[tuple[str, Path]]:
    from snncc.backends import kernel_cache

    kinds = [args.kind] if args.kind else list(kernel_cache.KINDS)
    if args.cache_dir is not None:
        return [(k, Path(args.cache_dir)) for k in kinds]
    return [(k, kernel_cache.default_dir(k)) for k in kinds]


def cmd_cache(args: argparse.Namespace) -> int:
    from snncc.backends import kernel_cache

    if args.action == "info":
        where = "--cache-dir" if args.cache_dir else _root_source()
        if not args.cache_dir:
            print(f"snncc kernel caches under {kernel_cache.root()} ({where})")
        for kind, path in _cache_folders(args):
            info = kernel_cache.summary(kind, path)
            if not info.exists:
                print(f"  {kind:5s} {path}: not created yet")
                continue
            if kind == "jax":
                line = f"{info.modules} generated modules"
            else:
                line = (
                    f"{info.entries} entries, {info.verified} verified, "
                    f"{len(info.damaged)} damaged (rebuilt on next use)"
                )
                if info.unrecorded:
                    line += f", {info.unrecorded} unrecorded binaries (never loaded)"
            if info.temporary:
                line += f", {info.temporary} temporary files"
            print(f"  {kind:5s} {path}: {line}; {info.files} files, {_size(info.size)}")
            if info.problem:
                print(f"        unsafe, not used: {info.problem}")
        return 0
    total = size = kept = 0
    for _, path in _cache_folders(args):
        n, b, k = kernel_cache.clear(path)
        total, size, kept = total + n, size + b, kept + k
        if n:
            print(f"removed {n} files ({_size(b)}) from {path}")
    if not total:
        print("nothing to remove: the caches hold no snncc files")
    if kept:
        print(f"left {kept} other files and folders alone (snncc removes only its own files)")
    return 0


def _root_source() -> str:
    if os.environ.get("SNNCC_CACHE_DIR"):
        return "from SNNCC_CACHE_DIR"
    if os.environ.get("XDG_CACHE_HOME"):
        return "from XDG_CACHE_HOME"
    return "the default; set SNNCC_CACHE_DIR to move it"


# ------------------------------------------------------------------- parser
_COMPILE_EPILOG = """\
example:
  snncc compile snncc.examples.digits:load_pretrained --input-shape 8,1,64 -o out/digits
  # your own model file, trained weights, the jax backend, every pass's IR dumped:
  snncc compile my_model.py:make_model --backend jax --input-shape 16,1,2,34,34 \\
      --weights ckpt.pt -o out/mine --dump-ir out/mine-ir
  # backend options (each backend names what it supports):
  snncc compile snncc.examples.digits:load_pretrained --input-shape 8,1,64 \\
      --backend cpu -O recompute=true -o out/digits-cpu
  # two stages for a time-chunk pipeline (run with torchrun, see 'snncc run --help'):
  snncc compile snncc.examples.digits:load_pretrained --input-shape 8,1,64 \\
      --backend cpu --stages 2 -o out/digits-2stages

SPEC is path/file.py:factory or package.module:factory; the factory takes no
arguments and returns a torch.nn.Module (put in eval mode before tracing).
--weights: a state_dict saved with torch.save (read with weights_only=True) or
a .safetensors file; it must fit the model exactly.
"""

_IR_EPILOG = """\
example:
  snncc ir snncc.examples.digits:digits_snn --input-shape 8,1,64 --format text
  snncc ir snncc.examples.digits:digits_snn --input-shape 8,1,64 --format dot | dot -Tsvg > ir.svg
  # stages, transfers and each stage's modelled cost; the schedule modelled fastest on 8 GPUs:
  snncc ir snncc.examples.digits:digits_snn --input-shape 8,1,64 --stages 2
  snncc ir snncc.examples.digits:digits_snn --input-shape 8,64,64 --devices 8 \\
      --partition steps=4096 --partition link=pcie5
"""

_RUN_EPILOG = """\
example:
  snncc compile snncc.examples.digits:load_pretrained --input-shape 8,1,64 -o out/digits
  python -c "import numpy as np; np.save('x.npy', np.random.rand(8, 4, 64).astype('float32'))"
  snncc run out/digits --input x.npy -o y.npy

The input is time-major [T, B, ...] float32 with the per-step shape the model was
compiled for (T and B may differ from the compile-time shape).

Several processes (torchrun starts them; every rank reads the input, the rank
that holds the outputs writes them):
  torchrun --standalone --nproc-per-node 2 -m snncc run out/digits --input x.npy \\
      -o y.npy --parallel pipeline --chunks 4
  # --parallel data_parallel | pipeline | temporal | neuron_split; on several nodes:
  # torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 ...
"""

_EXPORT_EPILOG = """\
example:
  snncc compile snncc.examples.digits:load_pretrained --input-shape 8,1,64 -o out/digits
  snncc export out/digits --format onnx -o out/digits.onnx
  snncc export snncc.examples.digits:load_pretrained --input-shape 8,1,64 --format nir \\
      --dt 1e-4 -o out/digits.nir

MODEL is an artifact directory written by 'snncc compile', or a SPEC
(path/file.py:factory or package.module:factory) traced at --input-shape.
ONNX: the whole sequence [T, B, ...] in one graph, each neuron layer an ONNX
Scan over time (T and B are symbolic); runs in onnxruntime.
"""

_IMPORT_EPILOG = """\
example:
  snncc compile snncc.examples.digits:load_pretrained --input-shape 8,1,64 -o out/digits
  snncc export out/digits --format onnx -o out/digits.onnx
  snncc import out/digits.onnx -o out/digits-from-onnx
  snncc export out/digits --format nir --dt 1e-4 -o out/digits.nir
  snncc import out/digits.nir --dt 1e-4 -o out/from-nir --backend jax
  python -c "import numpy as np; np.save('x.npy', np.random.rand(8, 4, 64).astype('float32'))"
  snncc run out/digits-from-onnx --input x.npy -o y.npy

Each file the example reads is written by a line before it. The imported
file becomes an artifact directory like 'snncc compile' writes. NIR files
describe continuous-time neurons: --dt (required) says how to discretise them;
see the README for the conventions and what --accept allows.
"""

_DEPLOY_EPILOG = """\
example:
  snncc compile snncc.examples.digits:load_pretrained --input-shape 8,1,64 \\
      --backend cpu -o out/digits
  snncc deploy out/digits --target cpu -o out/digits-c
  cmake -S out/digits-c -B out/digits-c/build -G Ninja \\
      -DOpenBLAS_DIR=$(python -c "import scipy_openblas32 as s; print(s.get_lib_dir())")/cmake/openblas
  cmake --build out/digits-c/build
  python -c "import numpy as np; np.save('x.npy', np.random.rand(8, 4, 64).astype('float32'))"
  out/digits-c/build/snncc_run out/digits-c/weights.safetensors -i x.npy -o y.npy
  # a SPEC directly, for the CUDA target (builds with -DSNNCC_CUDA=ON):
  snncc deploy snncc.examples.digits:load_pretrained --input-shape 8,1,64 \\
      --target cuda -o out/digits-cuda

MODEL is an artifact directory written by 'snncc compile', or a SPEC
(path/file.py:factory or package.module:factory) traced at --input-shape. The
folder gets a C/C++ source tree: include/snncc_model.h (the C interface),
src/model.cpp (the schedule), the neuron kernels the backends run, the weights
(weights.safetensors), CMakeLists.txt, tools/snncc_run.cpp and a README. It
builds with CMake into a library that needs neither Python nor torch;
pip install cmake ninja scipy-openblas32 brings what the CPU build needs.
"""

_CACHE_EPILOG = """\
example:
  snncc cache info
  snncc cache clear --kind cpu

The caches hold compiled kernels (cpu: shared libraries, cuda: cubins) and the
jax backend's generated modules, under $SNNCC_CACHE_DIR, else
$XDG_CACHE_HOME/snncc, else ~/.cache/snncc. A cached binary is loaded only
after its content hash matches the one recorded when it was built; a damaged
one is rebuilt. 'clear' removes only files snncc wrote.
"""

_EXAMPLE_EPILOG = """\
example:
  snncc example
  snncc example --backend jax
  snncc example --backend cuda -O cuda_graph=true
"""


def _command(
    sub: Any, name: str, help: str, epilog: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.set_defaults(func=func)
    return p


def _spec_args(p: argparse.ArgumentParser, required: bool = True, when: str = "") -> None:
    """--input-shape (and --weights) for commands that trace a model spec."""
    p.add_argument(
        "--input-shape",
        required=required,
        type=parse_input_shape,
        metavar="T,B,...",
        help=f"time-major shape of the example input to trace with{when}",
    )
    p.add_argument(
        "--weights", metavar="FILE", help="state_dict (.pt / .safetensors) to load first"
    )


def _backend_arg(p: argparse.ArgumentParser, backends: list[str], help: str | None = None) -> None:
    p.add_argument(
        "--backend",
        default="reference",
        help=help or f"one of {', '.join(backends)} (default: reference)",
    )


def _option_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        type=parse_option,
        metavar="KEY=VALUE",
        help="a backend option, repeatable (e.g. -O recompute=true -O precision=tf32); "
        "the backend names what it supports",
    )
    p.add_argument(
        "--recurrent",
        choices=("step", "fused"),
        default=None,
        help="cpu / cuda: how recurrent groups run: 'fused' (one kernel over time where the "
        "IR has a fused plan; sums in another order than the reference) or 'step' (step by "
        "step, bit for bit with the reference); default: the backend's (cpu step, cuda fused)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def _partition_args(p: argparse.ArgumentParser) -> None:
    """--stages / --devices / --partition for the commands that run the pass pipeline."""
    p.add_argument(
        "--stages",
        type=_positive_int,
        metavar="S",
        help="split the schedule into S stages (the time-chunk pipeline's; see the IR's header)",
    )
    p.add_argument(
        "--devices",
        type=_positive_int,
        metavar="P",
        help="model every multi-device schedule on P devices and apply the fastest",
    )
    p.add_argument(
        "--partition",
        action="append",
        default=[],
        type=parse_option,
        metavar="KEY=VALUE",
        help="a partition setting, repeatable: steps, batch, chunks, micro_batches, training, "
        "device (h100-sxm, h200), link (nvlink4, pcie5, ib-ndr), memory_cap (bytes)",
    )


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value): true/false, none, an int, a float, else the string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    words = {"true": True, "false": False, "none": None}
    if raw.lower() in words:
        return key.strip(), words[raw.lower()]
    for kind in (int, float):
        try:
            return key.strip(), kind(raw)
        except ValueError:
            pass
    return key.strip(), raw


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in args.option:
        if key in options:
            raise UsageError(f"backend option {key!r} given twice (-O {key}=...)")
        options[key] = value
    recurrent = getattr(args, "recurrent", None)
    if recurrent is not None:
        if "recurrent" in options:
            raise UsageError("give the recurrent schedule once: --recurrent or -O recurrent=...")
        options["recurrent"] = recurrent
    return options


def build_parser() -> argparse.ArgumentParser:
    from snncc import __version__
    from snncc.backends import available

    backends = available()  # the registry's names (importing the registry is cheap)
    parser = argparse.ArgumentParser(
        prog="snncc",
        description="snncc: compile spiking neural networks (SpikingJelly, snnTorch, Norse, "
        "snncc.nn; ONNX and NIR files) into fused, time-major programs.",
        epilog="Run 'snncc COMMAND --help' for a working example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"snncc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    spec_help = "path/file.py:factory or package.module:factory"
    dump_help = "write the IR after each pass into DIR"

    p = _command(
        sub, "compile", "compile a model into an artifact directory", _COMPILE_EPILOG, cmd_compile
    )
    p.add_argument("spec", metavar="SPEC", help=spec_help)
    _backend_arg(p, backends)
    _option_arg(p)
    _spec_args(p)
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="artifact directory to write"
    )
    p.add_argument("--dump-ir", metavar="DIR", help=dump_help)
    _partition_args(p)

    p = _command(sub, "ir", "print a model's scheduled IR", _IR_EPILOG, cmd_ir)
    p.add_argument("spec", metavar="SPEC", help=spec_help)
    _spec_args(p)
    p.add_argument(
        "--format", choices=FORMATS, default="text", help="output format (default: text)"
    )
    _backend_arg(p, backends, "whose pass pipeline to run (default: reference)")
    p.add_argument("--dump-ir", metavar="DIR", help=dump_help)
    _partition_args(p)

    p = _command(sub, "run", "run a compiled artifact on a .npy input", _RUN_EPILOG, cmd_run)
    p.add_argument("artifact", metavar="DIR", help="artifact directory written by 'snncc compile'")
    _option_arg(p)
    p.add_argument("--input", required=True, metavar="X.npy", help="input array [T, B, ...]")
    p.add_argument(
        "-o", "--output", required=True, metavar="Y.npy", help="where to save the output"
    )
    p.add_argument(
        "--parallel",
        choices=("data_parallel", "pipeline", "temporal", "neuron_split"),
        help="run over the processes torchrun started, with this schedule",
    )
    p.add_argument(
        "--chunks", type=_positive_int, metavar="K", help="pipeline: time chunks (default 4)"
    )
    p.add_argument(
        "--micro-batches",
        type=_positive_int,
        metavar="M",
        help="temporal split: micro-batches of the batch pipelined through the segments",
    )
    p.add_argument(
        "--dist-backend",
        choices=("gloo", "nccl"),
        help="process group transport (default: nccl for the cuda backend, else gloo)",
    )

    p = _command(
        sub,
        "export",
        "export a compiled or traced model as ONNX or NIR",
        _EXPORT_EPILOG,
        cmd_export,
    )
    p.add_argument("model", metavar="MODEL", help=f"artifact directory, or a SPEC ({spec_help})")
    p.add_argument("--format", required=True, choices=EXCHANGE_FORMATS, help="file format")
    _spec_args(p, required=False, when=" (when MODEL is a SPEC)")
    p.add_argument(
        "--dt", type=float, default=None, help="NIR: the time step the model's steps stand for"
    )
    p.add_argument(
        "--accept",
        default=None,
        metavar="KEYS",
        help="NIR: comma-separated approximations to write instead of refusing "
        "(reset, reset_delay, init)",
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")

    p = _command(
        sub,
        "deploy",
        "write a standalone C/C++ (and CUDA) library of a model: C interface, CMake, weights",
        _DEPLOY_EPILOG,
        cmd_deploy,
    )
    p.add_argument("model", metavar="MODEL", help=f"artifact directory, or a SPEC ({spec_help})")
    p.add_argument(
        "--target",
        default="cpu",
        help="cpu or cuda: what the tree builds by default (its SNNCC_CUDA switch; default: cpu)",
    )
    _spec_args(p, required=False, when=" (when MODEL is a SPEC)")
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="folder to write the tree to"
    )

    p = _command(
        sub,
        "import",
        "import an ONNX or NIR file into an artifact directory",
        _IMPORT_EPILOG,
        cmd_import,
    )
    p.add_argument("file", metavar="FILE", help="a .onnx or .nir file")
    p.add_argument("--format", choices=EXCHANGE_FORMATS, help="default: from the file suffix")
    _backend_arg(p, backends)
    _option_arg(p)
    p.add_argument("--dt", type=float, default=None, help="NIR: discretisation time step")
    p.add_argument(
        "--reset",
        default=None,
        choices=("hard", "subtract"),
        help="NIR: how neurons reset (default: hard, NIR's definition)",
    )
    p.add_argument(
        "--fire",
        default=None,
        choices=(">", ">="),
        help="NIR: firing comparison (default: '>', NIR's definition; '>=' for SpikingJelly files)",
    )
    p.add_argument(
        "--accept",
        default=None,
        metavar="KEYS",
        help="NIR: comma-separated approximations to accept instead of refusing the file "
        "(float32, unstable)",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="artifact directory to write"
    )

    p = _command(
        sub,
        "example",
        "compile the bundled trained digits SNN and compare accuracy with eager",
        _EXAMPLE_EPILOG,
        cmd_example,
    )
    _backend_arg(p, backends)
    _option_arg(p)

    p = _command(
        sub,
        "cache",
        "show or clear snncc's compiled-kernel caches",
        _CACHE_EPILOG,
        cmd_cache,
    )
    p.add_argument("action", choices=("info", "clear"), help="info: what is cached; clear: remove")
    p.add_argument("--kind", choices=("cpu", "cuda", "jax"), help="one cache only (default: all)")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="a cache folder given as a backend's cache_dir option (default: the caches under "
        "SNNCC_CACHE_DIR or ~/.cache/snncc)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``snncc`` console script; returns the exit status."""
    # Before torch loads MKL: GEMM results independent of operand alignment, so a compiled
    # run and an eager one round alike (tests/conftest.py says why).
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except SnnccError as exc:
        return _error(str(exc))
    except BrokenPipeError:
        # the reader of stdout went away (snncc ir ... | head): nothing left to say to it
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        print("snncc: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return _error(f"{exc.strerror or exc}:{where}; {os_error_hint(exc)}")
    except MemoryError:
        return _error(
            "out of memory; use a smaller input (T, batch) or model, or a machine with more memory"
        )
    except RecursionError:
        return _error("an input nests too deeply to be processed (a malformed or hostile file?)")


def _error(text: str) -> int:
    message = " ".join(text.split())  # one line, whatever the raiser formatted
    try:
        print(f"snncc: error: {message}", file=sys.stderr)
    except OSError:
        pass
    return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
