"""The public API: ``snncc.compile``, ``CompiledModel`` and ``snncc.load``.

This module is glue on purpose: tracing, passes and code generation live in
``snncc.frontend``, ``snncc.ir.passes`` and ``snncc.backends``. What it owns
is the user-facing contract around them:

- inputs are checked *before* they reach a backend, so a wrong shape or dtype
  is one :class:`~snncc.errors.ShapeError` naming expected vs got, never a
  matmul error from deep inside generated code;
- results come back as the same kind of array the user passed in (torch,
  numpy, or jax), while state stays in the backend's native kind;
- an artifact directory (``save`` / ``load``) holds everything needed to run
  again without the source model: the scheduled IR with its weights, a JSON
  manifest, and the generated source for people to read and diff.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from snncc.errors import CheckpointError, ShapeError, SnnccError, UnsupportedError
from snncc.ir.safe_files import (
    exchange_dirs,
    inner_dir,
    make_dirs,
    os_error_hint,
    parse_json,
    read_file,
    umask,
    write_file,
)

#: bumped when the artifact layout changes incompatibly
ARTIFACT_FORMAT = 1
MANIFEST = "snncc.json"
IR_DIR = "ir"
SOURCE_DIR = "source"
#: the largest manifest snncc reads (its own are a few hundred bytes)
MAX_MANIFEST_BYTES = 1 << 20


# --------------------------------------------------------------------- arrays
def _array_kind(x: Any) -> str | None:
    """'torch', 'numpy' or 'jax' for the array kinds snncc accepts, else None.

    Looks only at modules that are already imported, so checking a numpy
    array never imports jax (and vice versa).
    """
    if isinstance(x, np.ndarray):
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    return None


def _dtype_name(x: Any) -> str:
    dtype = x.dtype
    if _array_kind(x) == "torch":
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name


def _is_float(x: Any) -> bool:
    if _array_kind(x) == "torch":
        return bool(x.dtype.is_floating_point)
    return np.issubdtype(np.dtype(x.dtype), np.floating)


def _to_numpy(x: Any) -> np.ndarray:
    if _array_kind(x) == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _to_kind(y: Any, kind: str) -> Any:
    """Convert one backend output to the user's array kind (no copy when it already is)."""
    if isinstance(y, (tuple, list)):
        return type(y)(_to_kind(v, kind) for v in y)
    if _array_kind(y) == kind:
        return y
    arr = _to_numpy(y)
    if kind == "numpy":
        return arr
    if kind == "torch":
        import torch

        return torch.from_numpy(np.array(arr, copy=True))
    import jax.numpy as jnp

    return jnp.asarray(arr)


def _shape_str(shape: list | tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_example_input(example_input: Any) -> Any:
    """Validate compile()'s example input and return it as a torch tensor for tracing."""
    import torch

    kind = _array_kind(example_input)
    if kind is None:
        raise ShapeError(
            "example_input must be a torch.Tensor or numpy.ndarray of shape [T, B, ...]; "
            f"got {type(example_input).__name__}"
        )
    if not _is_float(example_input):
        raise ShapeError(
            f"example_input must be a float array; got dtype {_dtype_name(example_input)} "
            "(SNN inputs are currents or spikes as float32)"
        )
    if len(example_input.shape) < 2:  # [B, F]: a static input the model repeats over time
        raise ShapeError(
            "example_input must be time-major [T, B, ...] (rank >= 3); got shape "
            f"{_shape_str(example_input.shape)}; add the missing axis, e.g. x.unsqueeze(0) "
            "for one time step"
        )
    if kind == "torch":
        return example_input.detach()
    return torch.from_numpy(np.array(_to_numpy(example_input), copy=True))


def _check_model_dtype(model: Any, example: Any) -> None:
    """A float64 example for a float32 model is a clear error here, not a matmul error later."""
    params = getattr(model, "parameters", None)
    if params is None:
        return
    first = next(iter(params()), None)
    if first is not None and first.dtype != example.dtype:
        raise ShapeError(
            f"example_input has dtype {_dtype_name(example)} but the model's parameters are "
            f"{str(first.dtype).removeprefix('torch.')}; convert the input (x.float() or "
            "x.astype(numpy.float32))"
        )


# ---------------------------------------------------------------- the model
class CompiledModel:
    """A compiled SNN: call it like the source model on time-major inputs [T, B, ...].

    ``cm(x)`` starts from a fresh state; ``cm.run(x, state)`` continues from
    ``state`` (as returned by an earlier ``run``) so a long sequence can be
    fed in chunks. State is in the backend's native array kind; pass it back
    unchanged.
    """

    def __init__(
        self,
        program: Any,
        backend: str,
        input_spec: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> None:
        self._program = program
        self._backend_name = backend
        self._backend_obj: Any = None
        #: per-step input shape (batch as "B") and dtype the model was traced with;
        #: "static": True for an input without a time axis ([B, ...]: the model repeats it)
        self.input_spec = {"shape": list(input_spec["shape"]), "dtype": input_spec["dtype"]}
        if input_spec.get("static"):
            self.input_spec["static"] = True
        self.options = dict(options or {})

    # ------------------------------------------------------------- properties
    @property
    def backend(self) -> str:
        """The backend's registry name (e.g. ``"reference"``, ``"jax"``)."""
        return self._backend_name

    @property
    def ir(self) -> Any:
        """The scheduled :class:`snncc.ir.Graph` the program was lowered from."""
        return self._program.graph

    @property
    def source(self) -> str:
        """The generated source (or, for interpreters, a readable listing)."""
        return self._program.source

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The weights as numpy arrays, keyed by the source model's ``state_dict`` names."""
        return {name: _to_numpy(value) for name, value in self._program.params.items()}

    @property
    def program(self) -> Any:
        """The backend's Program (see :mod:`snncc.backends.base`), for advanced use."""
        return self._program

    def files(self) -> dict[str, str]:
        """Every generated file, name -> text (what ``save`` writes under ``source/``)."""
        return dict(self._program.files())

    # -------------------------------------------------------------- running
    def __call__(self, x: Any) -> Any:
        """Run ``x`` [T, B, ...] from a fresh state; returns outputs of the same array kind."""
        return self.run(x)[0]

    def run(self, x: Any, state: dict | None = None) -> tuple[Any, dict]:
        """Run ``x`` [T, B, ...] from ``state`` (None: fresh); return (outputs, final state)."""
        kind = self._check_input(x)
        native = self._native_backend().to_native(x)
        y, new_state = self._program.run(native, state)
        return _to_kind(y, kind), new_state

    def to_torch(self) -> Any:
        """A trainable ``torch.nn.Module`` over this program (reference, cpu and cuda backends).

        Its ``state_dict`` keys are the source model's; its forward takes and returns
        torch tensors [T, B, ...] through the program's autograd path, so a torch
        optimizer trains it and ``loss.backward()`` runs the generated backward kernels.
        """
        if not self._has("torch_module"):
            raise UnsupportedError(
                f"to_torch() needs a backend whose programs are torch modules (reference, cpu, "
                f"cuda); backend {self._backend_name!r} has none: use cm.jax_fn(params, x) with "
                "jax.grad"
            )
        from snncc.backends.torch_module import to_torch

        return to_torch(self._program)

    def jax_fn(self, params: Any, x: Any, key: Any = None) -> Any:
        """The pure function ``(params, x) -> outputs`` for ``jax.grad`` / ``jax.jit`` (jax only);
        ``key`` (``jax.random.key``) where training-mode dropout draws masks."""
        fn = getattr(self._program, "jax_fn", None) if self._has("jax_fn") else None
        if fn is None:
            raise UnsupportedError(
                f"jax_fn is only available for backend 'jax'; this model was compiled for "
                f"{self._backend_name!r} (use snncc.compile(..., backend='jax'))"
            )
        return fn(params, x, key)

    def parallel(self, schedule: str, **options: Any) -> Any:
        """This model on several processes: the runner of ``schedule`` for this rank
        (``"data_parallel"``, ``"pipeline"``, ``"temporal"``, ``"neuron_split"``; see
        :mod:`snncc.distributed`). Call :func:`snncc.distributed.init` first (under
        ``torchrun``); every rank calls ``run(x, state)`` / ``train_step(x, loss_fn)``."""
        from snncc import distributed

        return distributed.make(self, schedule, **options)

    def _has(self, feature: str) -> bool:
        from snncc.backends.base import has_feature

        return has_feature(self._native_backend(), feature)

    def _native_backend(self) -> Any:
        if self._backend_obj is None:
            from snncc import backends

            self._backend_obj = backends.get(self._backend_name)
        return self._backend_obj

    def _check_input(self, x: Any) -> str:
        """Raise ShapeError unless ``x`` fits the traced per-step shape; return its array kind."""
        kind = _array_kind(x)
        jax_ok = self._has("jax_arrays")
        allowed = "a torch.Tensor or numpy.ndarray" + (" or jax.Array" if jax_ok else "")
        if kind is None or (kind == "jax" and not jax_ok):
            raise ShapeError(f"input must be {allowed}; got {type(x).__name__}")
        per_step = self.input_spec["shape"]  # e.g. ["B", 64]
        static = bool(self.input_spec.get("static"))
        expected = list(per_step) if static else ["T", *per_step]
        got = tuple(x.shape)
        lead = 1 if static else 2
        if len(got) != len(expected) or list(got[lead:]) != list(per_step[1:]):
            how = (
                "static: the model repeats it over its time steps; B may vary"
                if static
                else "time-major; T and B may vary"
            )
            raise ShapeError(
                f"input shape mismatch: expected {_shape_str(expected)} ({how}), got "
                f"{_shape_str(got)}{_shape_reads(self.ir)}"
            )
        if min(got[:lead]) < 1:
            raise ShapeError(
                f"input needs at least one time step and one sample; got {_shape_str(got)}"
            )
        dtype = _dtype_name(x)
        if not _is_float(x) or dtype != self.input_spec["dtype"]:
            raise ShapeError(
                f"input dtype mismatch: expected {self.input_spec['dtype']}, got {dtype}"
            )
        return kind

    # ------------------------------------------------------------ artifacts
    def save(self, directory: str | Path) -> Path:
        """Write an artifact directory: ``ir/`` (graph + weights), ``snncc.json``, ``source/``.

        ``snncc.load(directory)`` lowers the saved IR again with the same
        backend and options; the files under ``source/`` are for reading,
        diffing and shipping. The manifest records the options that define the
        program (precision, recompute, ...), never where this machine keeps its
        caches or which device it uses (``cache_dir``, ``device``).

        All or nothing: the artifact is written into a fresh folder beside
        ``directory`` and swapped in, so an interrupted save leaves the old
        artifact or the new one, never a mix, and nothing is written through a
        link. Files of the user's own in an existing ``directory`` are kept.
        """
        from snncc import __version__, backends

        saved = _artifact_options(backends.get(self._backend_name))
        options = {k: v for k, v in self.options.items() if k in saved}
        try:
            json.dumps(options)
        except (TypeError, ValueError) as exc:
            raise UnsupportedError(
                f"cannot save: backend options must be JSON values to go into {MANIFEST}; "
                f"got {options!r} ({exc})"
            ) from None
        files = self.files()
        for name in files:
            _check_relative(name)
        graph = self.ir.copy()
        # Weights as the program holds them now, so in-place updates are saved too.
        graph.params.update({k: v for k, v in self.params.items() if k in graph.params})
        manifest = {
            "format": "snncc-artifact",
            "format_version": ARTIFACT_FORMAT,
            "snncc_version": __version__,
            "backend": self._backend_name,
            "options": options,
            "input": self.input_spec,
            "ir": IR_DIR,
            "source": sorted(f"{SOURCE_DIR}/{name}" for name in files),
        }

        def write(into: Path) -> None:
            from snncc.ir import serde

            serde.save(graph, into / IR_DIR)
            for name, text in files.items():
                path = into / SOURCE_DIR / name
                make_dirs(path.parent)
                write_file(path, text)
            text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            write_file(into / MANIFEST, text)

        return _write_artifact(Path(directory), write)

    def __repr__(self) -> str:
        lead = [] if self.input_spec.get("static") else ["T"]
        shape = _shape_str([*lead, *self.input_spec["shape"]])
        return (
            f"<snncc.CompiledModel backend={self._backend_name!r} input={shape} "
            f"{self.input_spec['dtype']}, {len(self.ir)} IR nodes>"
        )


def _shape_reads(graph: Any) -> str:
    """The shape decisions the model's code made while traced (graph.meta["shape_reads"])."""
    reads = graph.meta.get("shape_reads") or []
    if not reads:
        return ""
    shown = "; ".join(f"{r['where']} ({r['what']} = {r['value']})" for r in reads[:4])
    more = f" and {len(reads) - 4} more" if len(reads) > 4 else ""
    return (
        f". The model's code read the traced input's shapes: {shown}{more}; another per-sample "
        "shape needs a new compile"
    )


#: what an artifact folder holds; anything else in it is the user's and is kept on save
_ARTIFACT_ENTRIES = (MANIFEST, IR_DIR, SOURCE_DIR)
_NEW = ".snncc-new-"
_OLD = ".snncc-old-"


def _write_artifact(out: Path, write: Any) -> Path:
    """Run ``write(folder)`` on a fresh folder beside ``out``, then swap it in for ``out``."""
    if os.path.islink(out):
        raise CheckpointError(
            f"cannot save to {out}: it is a symbolic link; give the real folder's path "
            "(snncc never writes through links)"
        )
    if os.path.lexists(out) and not out.is_dir():
        raise CheckpointError(
            f"cannot save to {out}: it exists and is not a folder; choose another path or remove it"
        )
    parent = Path(os.path.abspath(out)).parent
    try:
        make_dirs(parent)
        _remove_stale_saves(parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_NEW}", dir=parent))
    except OSError as exc:
        raise _save_error(out, exc) from None
    try:
        mode = os.stat(out).st_mode if out.is_dir() else 0o777 & ~umask()
        os.chmod(tmp, stat.S_IMODE(mode))
        write(tmp)
        _swap_in(tmp, out)
    except OSError as exc:
        raise _save_error(out, exc) from None
    finally:
        # the unsaved new artifact, or an old one emptied of the user's files; a folder still
        # holding files of the user's (a carry-over that failed) is left for them to recover
        if tmp.exists() and set(os.listdir(tmp)) <= set(_ARTIFACT_ENTRIES):
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_error(out: Path, exc: OSError) -> CheckpointError:
    where = f" ({exc.filename})" if exc.filename else ""
    return CheckpointError(
        f"cannot save the artifact to {out}: {exc.strerror or exc}{where}; {os_error_hint(exc)}"
    )


def _swap_in(new: Path, out: Path) -> None:
    """Make the complete folder ``new`` the artifact ``out`` in one step; carry the user's
    own files over from the old ``out`` afterwards, then delete the old artifact."""
    if not os.path.lexists(out):
        try:
            os.rename(new, out)
            return
        except OSError:
            if not os.path.lexists(out):
                raise  # not a race with another save: a real error
    if os.path.islink(out) or not out.is_dir():
        raise CheckpointError(f"cannot save to {out}: it became a link or a file meanwhile")
    if exchange_dirs(new, out):
        old = new  # the exchange left the old artifact at the fresh folder's name
    else:
        old = new.with_name(new.name.replace(_NEW, _OLD))
        os.rename(out, old)
        try:
            os.rename(new, out)
        except OSError:
            os.rename(old, out)  # put the old artifact back
            raise
    mine = [e.name for e in os.scandir(old) if e.name not in _ARTIFACT_ENTRIES]
    try:
        for name in mine:
            os.rename(old / name, out / name)
    except OSError as exc:
        raise CheckpointError(
            f"saved the artifact to {out}, but moving your other files there from the old one "
            f"failed ({exc.strerror or exc}); they are in {old}"
        ) from None
    shutil.rmtree(old)


def _remove_stale_saves(parent: Path, name: str, age: float = 3600.0) -> None:
    """Folders of saves that died over an hour ago: removed when they hold only snncc's files
    (a folder holding anything else keeps the user's files and is left alone)."""
    now = time.time()
    for entry in os.scandir(parent):
        if not entry.name.startswith((f".{name}{_NEW}", f".{name}{_OLD}")):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or now - entry.stat().st_mtime < age:
                continue
            if set(os.listdir(entry.path)) <= set(_ARTIFACT_ENTRIES):
                shutil.rmtree(entry.path)
        except OSError:
            continue


def _artifact_options(backend: Any) -> tuple[str, ...]:
    """The options of ``backend`` that an artifact may carry (its explicit allow-list)."""
    return tuple(getattr(backend, "artifact_options", ()))


def _check_relative(name: str) -> None:
    """Generated file names must stay inside the artifact's source/ folder."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise UnsupportedError(f"generated file name {name!r} would leave the artifact directory")


# ------------------------------------------------------------------ entry points
def compile(  # noqa: A001 - the public name is snncc.compile, by design
    model: Any,
    example_input: Any,
    backend: str = "reference",
    dump_ir: str | Path | None = None,
    *,
    stages: int | None = None,
    devices: int | None = None,
    partition: dict[str, Any] | None = None,
    **options: Any,
) -> CompiledModel:
    """Compile ``model`` for ``backend``, tracing it with ``example_input`` [T, B, ...].

    ``dump_ir``: a directory that receives the IR after each pass
    (``NN_<pass>.txt``). ``stages`` splits the schedule into that many stages
    for a time-chunk pipeline; ``devices`` lets the partition pass model every
    multi-device schedule on that many devices and apply the fastest;
    ``partition`` holds the pass's other settings (the workload ``steps`` /
    ``batch`` it is costed for, default the example's; ``chunks``, ``device``,
    ``link``, ``memory_cap``, ``calibration``, ...: see
    :mod:`snncc.ir.passes.partition`). ``options`` go to the backend's ``lower``.
    """
    from snncc import backends
    from snncc.frontend import trace

    example = _check_example_input(example_input)
    backends.get(backend)  # unknown names fail before the (slower) trace
    _check_model_dtype(model, example)
    workload = {"steps": int(example.shape[0]), "batch": int(example.shape[1])}
    return compile_graph(
        trace(model, example),
        backend,
        dump_ir=dump_ir,
        stages=stages,
        devices=devices,
        partition=None
        if partition is None and stages is None and devices is None
        else {**workload, **(partition or {})},
        **options,
    )


def _graph_input_spec(graph: Any) -> dict[str, Any]:
    """The per-step input spec (batch as "B") and dtype of a graph's one input node."""
    inputs = graph.meta.get("inputs", [])
    if len(inputs) != 1:
        raise UnsupportedError(
            f"snncc compiles graphs with exactly one input; this graph has {len(inputs)}"
        )
    node = graph.node(inputs[0])
    if node.get("shape") is None:
        raise UnsupportedError("the graph's input node has no per-step shape")
    spec = {"shape": ["B", *node["shape"][1:]], "dtype": node.get("dtype", "float32")}
    if node["attrs"].get("static"):
        spec["static"] = True
    return spec


def compile_graph(
    graph: Any,
    backend: str = "reference",
    dump_ir: str | Path | None = None,
    *,
    stages: int | None = None,
    devices: int | None = None,
    partition: dict[str, Any] | None = None,
    **options: Any,
) -> CompiledModel:
    """Compile an IR graph (traced, or imported from NIR/ONNX) for ``backend``.

    The input spec comes from the graph's input node: its per-step shape and dtype.
    ``stages``, ``devices``, ``partition``: as :func:`compile` (the partition
    pass runs after the backend's passes when any is given).
    """
    from snncc import backends
    from snncc.backends.base import pipeline_for
    from snncc.ir.passes import run_pipeline

    be = backends.get(backend)
    spec = _graph_input_spec(graph)
    names = list(pipeline_for(be, options))
    if stages is not None or devices is not None or partition is not None:
        request = dict(partition or {})
        for key, value in (("stages", stages), ("devices", devices)):
            if value is not None:
                request[key] = value
        graph = graph.copy()
        graph.meta["partition"] = request
        names.append("partition")
    graph = run_pipeline(graph, names, dump_dir=dump_ir)
    program = be.lower(graph, **options)
    return CompiledModel(program, backend, spec, options)


def load(directory: str | Path, **options: Any) -> CompiledModel:
    """Load an artifact written by :meth:`CompiledModel.save` and lower it again.

    An artifact is data, whoever wrote it: its manifest may carry only the
    options its backend lists in ``artifact_options`` (precision, recompute,
    ...); a path, a device or anything else about the machine is refused, and
    comes only from the caller's ``options`` (``snncc.load(d, cache_dir=...)``),
    which override the manifest's. Nothing is read from outside ``directory``.
    """
    from snncc import backends

    manifest, graph, spec = _read_artifact(directory)
    merged = {**manifest["options"], **options}
    program = backends.get(manifest["backend"]).lower(graph, **merged)
    return CompiledModel(program, manifest["backend"], spec, merged)


def register_torch_ops() -> None:
    """Register snncc's torch custom ops (``snncc::neuron_*``, ``snncc::recurrent_*``) here.

    Why: a process that loads an exported snncc model (``torch.export.load``) or its
    AOTInductor package (``torch._inductor.aoti_load_package``) without having compiled
    one has no snncc ops until something imports them. Each op then builds its kernel
    from the key the graph holds (validated data: a neuron spec, rendered and compiled
    into this user's own cache), never from code in the file.
    """
    import snncc.backends.cpu.custom_ops  # noqa: F401  (registers every snncc op)


def load_ir(directory: str | Path) -> Any:
    """The scheduled IR of an artifact, checked as :func:`load` checks it, without lowering it
    for its backend: ``snncc ir`` and ``snncc deploy`` read a cuda artifact on a machine
    without a GPU, and build no kernels they do not need."""
    return _read_artifact(directory)[1]


def _read_artifact(directory: str | Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(manifest, IR graph, input spec) of an artifact directory, every problem one
    CheckpointError naming the file."""
    from snncc import backends
    from snncc.ir import serde

    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"artifact directory {root} does not exist")
    manifest_path = root / MANIFEST
    manifest = _read_manifest(manifest_path)
    be = backends.get(manifest["backend"])
    allowed = _artifact_options(be)
    refused = sorted(k for k in manifest["options"] if k not in allowed)
    if refused:
        raise CheckpointError(
            f"{manifest_path}: option(s) {', '.join(map(repr, refused))} are not taken from an "
            "artifact (artifacts are data: paths, devices and other choices about this "
            f"machine come from whoever loads it; an artifact may carry "
            f"{', '.join(allowed) or 'no options'} for backend {manifest['backend']!r}); remove "
            "them from the manifest and pass them to snncc.load(..., key=value) instead"
        )
    ir_dir = inner_dir(root, manifest["ir"], "IR folder", CheckpointError)
    try:
        graph = serde.load(ir_dir)
    except SnnccError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read the IR in {ir_dir}: {exc}") from None
    spec = _graph_input_spec(graph)
    if spec != {k: v for k, v in manifest["input"].items() if k in ("shape", "dtype", "static")}:
        raise CheckpointError(
            f"{manifest_path}: its input {_shape_str(['T', *manifest['input']['shape']])} "
            f"{manifest['input']['dtype']} does not match the IR's input node "
            f"{_shape_str(['T', *spec['shape']])} {spec['dtype']}; the artifact is inconsistent"
        )
    return manifest, graph, spec


def _read_manifest(path: Path) -> dict[str, Any]:
    """Parse and check snncc.json; every problem is a CheckpointError naming the file."""
    if not os.path.lexists(path):
        raise CheckpointError(f"{path} is missing: not an snncc artifact directory")
    raw = read_file(path, "artifact manifest", CheckpointError, MAX_MANIFEST_BYTES)
    manifest = parse_json(raw, f"{path}", CheckpointError, 8, "is not valid JSON")
    if not isinstance(manifest, dict) or manifest.get("format") != "snncc-artifact":
        raise CheckpointError(f"{path} is not an snncc artifact manifest")
    if manifest.get("format_version") != ARTIFACT_FORMAT:
        raise CheckpointError(
            f"{path} has artifact format {manifest.get('format_version')!r}; this snncc "
            f"reads format {ARTIFACT_FORMAT}"
        )
    checks = {
        "backend": str,
        "options": dict,
        "ir": str,
        "input": dict,
    }
    for key, typ in checks.items():
        if not isinstance(manifest.get(key), typ):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {typ.__name__}")
    spec = manifest["input"]
    if not isinstance(spec.get("shape"), list) or not isinstance(spec.get("dtype"), str):
        raise CheckpointError(f"{path}: field 'input' needs a 'shape' list and a 'dtype' string")
    ir = PurePosixPath(manifest["ir"])
    if ir.is_absolute() or ".." in ir.parts:
        raise CheckpointError(f"{path}: field 'ir' must name a folder inside the artifact")
    return manifest
