"""snncc deploy: the generated C/C++ tree, built with CMake + Ninja, against the cpu backend.

Each tree is deployed and built once per module (fixtures), with the flags the tree's
CMakeLists.txt sets (the backends' exact ones). What is checked:

- the bundled digits model: ``snncc_run`` on the 359-digit test split, 1 and 2 threads,
  output spikes bit for bit those of the cpu backend, accuracy 0.9638; streaming T=4+4
  equals T=8 (outputs and state), batch-1 step-by-step equals a whole run; two models in
  two threads at once give what each gives alone;
- every forward variant of the cpu backend's neuron-form tests (SpikingJelly, snntorch,
  Norse forms; every reset, output, reset_delay and params-as-args/constants case: the
  142 cases have 110 distinct forwards, detach_reset and the surrogate changing only the
  backward), SpikingJelly 2.0's families (QIF, EIF, Izhikevich, KLIF, CUBA-LIF, LIAF) and
  user-defined neurons traced from their own step code, from a random carried state and
  from a fresh one: outputs and final states bit for bit (a step that calls exp, sigmoid
  or tanh: within tolerance of the reference backend, whose torch rounds them its own way);
- convolution, BatchNorm, pooling, broadcasting, cat, voting, folded BatchNorm and a
  recurrent loop in the same model: within a stated tolerance, mismatch counts printed;
- the library exports only ``snncc_model_*`` and links neither libtorch nor libpython;
- misuse (bad weights files, NULLs, wrong T/B and counts) gives error codes and
  messages, run once under AddressSanitizer;
- the CUDA sources compile with nvcc for sm_80 and sm_90; on a GPU (marked ``gpu``, run by
  scripts/gpu_check.sh) the CUDA tree's outputs against the cuda backend's.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import snncc
from snncc.deploy import deploy
from snncc.errors import CheckpointError, UnsupportedError
from snncc.examples import digits
from snncc.ir.graph import Graph
from snncc.ir.neuron import NeuronSpec

CMAKE = shutil.which("cmake")
NINJA = shutil.which("ninja")
CXX = shutil.which(os.environ.get("CXX", "")) or shutil.which("g++") or shutil.which("c++")
CC = shutil.which("gcc") or shutil.which("cc")
NVCC = shutil.which("nvcc")
HAS_OPENBLAS = importlib.util.find_spec("scipy_openblas32") is not None
#: seconds a configure, build or run may take before the test fails (bounded subprocesses)
BUILD_TIMEOUT = 600
RUN_TIMEOUT = 120

needs_build = pytest.mark.skipif(
    CMAKE is None or NINJA is None or CXX is None or not HAS_OPENBLAS,
    reason="building a deployed tree needs cmake, ninja, a C++ compiler and scipy-openblas32 "
    "(pip install cmake ninja scipy-openblas32: the [test] extra); missing: "
    + ", ".join(
        n
        for n, ok in (
            ("cmake", CMAKE),
            ("ninja", NINJA),
            ("a C++ compiler", CXX),
            ("scipy-openblas32", HAS_OPENBLAS),
        )
        if not ok
    ),
)


# ------------------------------------------------------------------ helpers
def _run(cmd: list, env: dict | None = None, timeout: float = RUN_TIMEOUT, **kw):
    res = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )
    if res.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def _openblas_dir() -> str:
    import scipy_openblas32

    return str(Path(scipy_openblas32.get_lib_dir()) / "cmake" / "openblas")


def build_tree(tree: Path, build: Path, *extra: str) -> Path:
    """cmake -G Ninja + build, as the tree's README says; returns the build folder."""
    _run(
        [
            CMAKE,
            "-S",
            tree,
            "-B",
            build,
            "-G",
            "Ninja",
            *([f"-DOpenBLAS_DIR={_openblas_dir()}"] if HAS_OPENBLAS else []),
            *extra,
        ],
        timeout=BUILD_TIMEOUT,
    )
    _run([CMAKE, "--build", build], timeout=BUILD_TIMEOUT)
    return build


def snncc_run(build: Path, tree: Path, *args, threads: int = 1) -> str:
    env = {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    return _run(
        [build / "snncc_run", tree / "weights.safetensors", "--threads", threads, *args], env
    ).stdout


class Lib:
    """The deployed library through ctypes (the C interface, as a C program sees it)."""

    def __init__(self, path: Path) -> None:
        self.lib = lib = ctypes.CDLL(str(path))
        P, I64, SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
        lib.snncc_model_create.argtypes = [ctypes.c_char_p, ctypes.POINTER(P)]
        lib.snncc_model_destroy.argtypes = [P]
        lib.snncc_model_last_error.argtypes = [P]
        lib.snncc_model_last_error.restype = ctypes.c_char_p
        lib.snncc_model_sizes.argtypes = [P, I64, I64, P, P, P]
        lib.snncc_model_set_threads.argtypes = [P, ctypes.c_int]
        lib.snncc_model_run.argtypes = [P, I64, I64, P, SZ, P, SZ, P, SZ, P, SZ]
        lib.snncc_model_num_state_entries.argtypes = [P]
        lib.snncc_model_state_entry.argtypes = [P, ctypes.c_int, P, P, P]

    def create(self, weights: Path) -> tuple[int, int, str]:
        m = ctypes.c_void_p()
        rc = self.lib.snncc_model_create(str(weights).encode(), ctypes.byref(m))
        msg = self.lib.snncc_model_last_error(m).decode()
        return rc, m.value or 0, msg

    def error(self, m: int) -> str:
        return self.lib.snncc_model_last_error(m).decode()

    def sizes(self, m: int, T: int, B: int) -> tuple[int, int, int]:
        out = [ctypes.c_size_t() for _ in range(3)]
        rc = self.lib.snncc_model_sizes(m, T, B, *(ctypes.byref(o) for o in out))
        assert rc == 0, self.error(m)
        return tuple(o.value for o in out)

    def run(self, m: int, x: np.ndarray, state: np.ndarray | None = None) -> tuple:
        T, B = x.shape[:2]
        nx, ny, ns = self.sizes(m, T, B)
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty(ny, np.float32)
        s_out = np.empty(ns, np.float32)
        s_in = None if state is None else np.ascontiguousarray(state, dtype=np.float32)
        rc = self.lib.snncc_model_run(
            m,
            T,
            B,
            x.ctypes.data,
            x.size,
            None if s_in is None else s_in.ctypes.data,
            0 if s_in is None else s_in.size,
            s_out.ctypes.data,
            s_out.size,
            y.ctypes.data,
            y.size,
        )
        assert rc == 0, self.error(m)
        return y, s_out


def split_outputs(y: np.ndarray, T: int, B: int, shapes: list) -> list[np.ndarray]:
    out, off = [], 0
    for s in shapes:
        n = T * B * math.prod(s)
        out.append(y[off : off + n].reshape(T, B, *s))
        off += n
    return out


def _host(a) -> np.ndarray:
    """A backend's array (torch on any device, CuPy, NumPy) as a host NumPy array."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return a.get() if hasattr(a, "get") else np.asarray(a)


def state_to_flat(result, state: dict, B: int) -> np.ndarray:
    """A cpu-backend state dict laid out as the deployed model's flat state: entry by
    entry, each [B, count] at B * offset."""
    flat = np.zeros(B * result.lowered.state_per_sample, np.float32)
    for e in result.lowered.state:
        node, var = e.name[1:].split(".")
        value = _host(state[int(node)][var]).reshape(B, e.count)
        flat[B * e.offset : B * (e.offset + e.count)] = value.reshape(-1)
    return flat


def flat_to_state(result, flat: np.ndarray, B: int) -> dict:
    out: dict = {}
    for e in result.lowered.state:
        node, var = e.name[1:].split(".")
        out.setdefault(int(node), {})[var] = flat[B * e.offset : B * (e.offset + e.count)]
    return out


# ------------------------------------------------------------ digits model
@pytest.fixture(scope="module")
def digits_data():
    images, labels = digits.test_split()
    return digits.encode(images).numpy(), labels


@pytest.fixture(scope="module")
def digits_cm(digits_data):
    x, _ = digits_data
    return snncc.compile(digits.load_pretrained(), torch.from_numpy(x[:, :1]), backend="cpu")


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory, digits_cm):
    root = tmp_path_factory.mktemp("deploy-digits")
    result = deploy(digits_cm, root / "tree", target="cpu")
    return result


@pytest.fixture(scope="module")
def digits_build(digits_tree):
    return build_tree(digits_tree.path, digits_tree.path / "build")


def test_the_tree_holds_what_the_issue_lists(digits_tree) -> None:
    files = set(digits_tree.files)
    for f in (
        "include/snncc_model.h",
        "src/model.cpp",
        "weights.safetensors",
        "CMakeLists.txt",
        "tools/snncc_run.cpp",
        "README.md",
        "src/neuron_kernels_cpu_0.cpp",
        "src/neuron_kernels_cuda_0.cu",
    ):
        assert f in files, f
    tree = digits_tree.path
    model = (tree / "src" / "model.cpp").read_text()
    # the schedule's groups in order, one kernel launch per neuron layer, planned buffers
    assert model.count("// ---- group") == 5
    assert model.count("_launch(rt,") == 2
    assert "arena + TB * " in model
    # the digits model's two LIF layers share one kernel, rendered once per target
    for name in ("neuron_kernels_cpu_0.cpp", "neuron_kernels_cuda_0.cu"):
        src = (tree / "src" / name).read_text()
        assert src.count("SNNCC_KERNEL void snncc_fwd_") == 1
        assert "snncc_bwd_" not in src  # forward only
    cmake = (tree / "CMakeLists.txt").read_text()
    from snncc.backends.kernels import HOST_EXACT_FLAGS, NVCC_EXACT_FLAGS

    for flag in (*HOST_EXACT_FLAGS, *NVCC_EXACT_FLAGS):
        assert flag in cmake
    assert "option(SNNCC_CUDA" in cmake
    # the weights file: the program's tensors, tagged with the model's id
    from safetensors import safe_open

    with safe_open(str(tree / "weights.safetensors"), "np") as f:
        assert f.metadata()["snncc_model"] == digits_tree.model_id
        assert sorted(f.keys()) == ["n1.bias", "n1.weight", "n3.bias", "n3.weight"]
        np.testing.assert_array_equal(f.get_tensor("n1.weight"), digits_cm_weight())


def digits_cm_weight() -> np.ndarray:
    return digits.load_pretrained()[0].weight.detach().numpy()


@needs_build
@pytest.mark.parametrize("threads", [1, 2])
def test_digits_spikes_bit_for_bit_with_the_cpu_backend(
    threads, digits_tree, digits_build, digits_data, digits_cm, tmp_path
) -> None:
    x, labels = digits_data
    np.save(tmp_path / "x.npy", x)
    snncc_run(digits_build, digits_tree.path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
              threads=threads)  # fmt: skip
    y = np.load(tmp_path / "y.npy")
    with torch.no_grad():
        ref = digits_cm(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape == (8, 359, 10)
    mismatches = int((y != ref).sum())
    print(f"digits, {threads} thread(s): {mismatches} of {y.size} output spikes differ")
    assert mismatches == 0
    assert round(digits.accuracy(y, labels), 4) == 0.9638


@needs_build
def test_streaming_in_two_calls_equals_one_call(
    digits_tree, digits_build, digits_data, digits_cm, tmp_path
) -> None:
    x, _ = digits_data
    np.save(tmp_path / "x8.npy", x)
    np.save(tmp_path / "xa.npy", x[:4])
    np.save(tmp_path / "xb.npy", np.ascontiguousarray(x[4:]))
    t = digits_tree.path
    snncc_run(digits_build, t, "-i", tmp_path / "x8.npy", "-o", tmp_path / "y8.npy",
              "--state-out", tmp_path / "s8.npy")  # fmt: skip
    snncc_run(digits_build, t, "-i", tmp_path / "xa.npy", "-o", tmp_path / "ya.npy",
              "--state-out", tmp_path / "sa.npy")  # fmt: skip
    snncc_run(digits_build, t, "-i", tmp_path / "xb.npy", "-o", tmp_path / "yb.npy",
              "--state-in", tmp_path / "sa.npy", "--state-out", tmp_path / "sb.npy")  # fmt: skip
    y8 = np.load(tmp_path / "y8.npy")
    y44 = np.concatenate([np.load(tmp_path / "ya.npy"), np.load(tmp_path / "yb.npy")])
    assert np.array_equal(y44, y8)
    assert np.array_equal(np.load(tmp_path / "sb.npy"), np.load(tmp_path / "s8.npy"))
    # the final membranes are the cpu backend's up to the GEMMs' rounding (OpenBLAS and
    # MKL sum in their own orders: the spikes above are the same, membranes may move an ulp)
    with torch.no_grad():
        _, state = digits_cm.run(torch.from_numpy(x))
    ref = state_to_flat(digits_tree, state, x.shape[1])
    got = np.load(tmp_path / "s8.npy")
    err = float(np.abs(got - ref).max())
    print(f"digits final state: {int((got != ref).sum())} of {got.size} membranes differ, "
          f"max |diff| {err:.3g}")  # fmt: skip
    assert err <= 1e-5 * max(float(np.abs(ref).max()), 1.0)


@needs_build
def test_batch_one_streaming_step_by_step_equals_a_whole_run(
    digits_tree, digits_build, digits_data, tmp_path
) -> None:
    x, _ = digits_data
    for b in range(3):
        np.save(tmp_path / "x.npy", np.ascontiguousarray(x[:, b : b + 1]))
        out = snncc_run(digits_build, digits_tree.path, "-i", tmp_path / "x.npy", "-o",
                        tmp_path / "ys.npy", "--stream")  # fmt: skip
        assert "per step" in out
        snncc_run(digits_build, digits_tree.path, "-i", tmp_path / "x.npy", "-o",
                  tmp_path / "yw.npy")  # fmt: skip
        assert np.array_equal(np.load(tmp_path / "ys.npy"), np.load(tmp_path / "yw.npy"))


@needs_build
def test_only_the_c_interface_is_exported_and_no_torch_or_python_is_linked(digits_build) -> None:
    lib = digits_build / "libsnncc_model.so"
    nm, ldd = shutil.which("nm"), shutil.which("ldd")
    if nm is None or ldd is None:
        pytest.skip("nm / ldd not found (binutils, libc-bin)")
    out = _run([nm, "-D", "--defined-only", lib]).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert names and all(n.startswith("snncc_model_") for n in names), names
    assert {"snncc_model_create", "snncc_model_run", "snncc_model_destroy"} <= set(names)
    linked = _run([ldd, lib]).stdout + _run([ldd, digits_build / "snncc_run"]).stdout
    assert "libtorch" not in linked and "libc10" not in linked
    assert "libpython" not in linked


@needs_build
def test_the_readme_c_example_builds_and_streams(digits_tree, digits_build, tmp_path) -> None:
    """The README's Deploy example, as written, against this tree."""
    if CC is None:
        pytest.skip("no C compiler (gcc / cc) found")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```c\n(.*?)```", readme[readme.index("## Deploy") :], re.S).group(1)
    weights = str(digits_tree.path / "weights.safetensors")
    assert '"out/digits-c/weights.safetensors"' in code
    (tmp_path / "example.c").write_text(code.replace("out/digits-c/weights.safetensors", weights))
    _run([CC, "-std=c11", "-Wall", "-Werror", tmp_path / "example.c", "-I",
          digits_tree.path / "include", "-L", digits_build, "-lsnncc_model",
          f"-Wl,-rpath,{digits_build}", "-o", tmp_path / "example"], timeout=BUILD_TIMEOUT)  # fmt: skip
    out = _run([tmp_path / "example"], {"OPENBLAS_NUM_THREADS": "1"}).stdout
    assert out.count("step ") == 8


@needs_build
def test_a_single_step_source_runs_its_layers_step_by_step(digits_data, tmp_path) -> None:
    """SpikingJelly step mode 's': the GEMMs see B rows per step, as in the source."""
    from spikingjelly.activation_based import functional

    x, labels = digits_data
    model = digits.load_pretrained()
    functional.set_step_mode(model, "s")
    cm = snncc.compile(model, torch.from_numpy(x[:, :1]), backend="cpu")
    assert cm.ir.meta["step_mode"] == "s"
    result = deploy(cm, tmp_path / "tree")
    model_cpp = (result.path / "src" / "model.cpp").read_text()
    assert model_cpp.count("for (int64_t t = 0; t < T; ++t)") == 2
    build = build_tree(result.path, tmp_path / "build")
    np.save(tmp_path / "x.npy", x)
    snncc_run(build, result.path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    with torch.no_grad():
        ref = cm(torch.from_numpy(x)).numpy()
    y = np.load(tmp_path / "y.npy")
    mismatches = int((y != ref).sum())
    print(f"digits in step mode 's': {mismatches} of {y.size} output spikes differ")
    assert mismatches == 0
    assert round(digits.accuracy(y, labels), 4) == 0.9638


# ------------------------------------------------------------- bad inputs
def _safetensors(tensors: dict, meta: dict) -> bytes:
    """A safetensors file written by hand (so that it can be wrong on purpose)."""
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [off, off + len(data)],
        }
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def bad_weight_files(tree, folder: Path) -> dict[str, Path]:
    """Weights files that must be refused, each named for what is wrong with it."""
    from safetensors import safe_open

    with safe_open(str(tree.path / "weights.safetensors"), "np") as f:
        good = {k: f.get_tensor(k) for k in f.keys()}
    meta = {"snncc_model": tree.model_id}

    def entries(arrays: dict) -> dict:
        return {k: ("F32", v.shape, v.astype("<f4").tobytes()) for k, v in arrays.items()}

    first = sorted(good)[0]
    cases = {
        "missing": _safetensors(entries({k: v for k, v in good.items() if k != first}), meta),
        "misshaped": _safetensors(entries({**good, first: good[first].reshape(-1)[:-1]}), meta),
        "float64": _safetensors(
            {
                **entries(good),
                first: ("F64", good[first].shape, good[first].astype("<f8").tobytes()),
            },
            meta,
        ),
        "extra": _safetensors(entries({**good, "stowaway": np.zeros(3, np.float32)}), meta),
        "other_model": _safetensors(entries(good), {"snncc_model": "0" * 24}),
        "no_metadata": _safetensors(entries(good), {}),
        "offsets_past_the_end": _safetensors(entries(good), meta)[:-8],
        "huge_header_length": struct.pack("<Q", 1 << 60) + b"{}",
        "not_json": struct.pack("<Q", 5) + b"[1,2]",
        "short": b"\x01\x02",
        "deep_nesting": (lambda h: struct.pack("<Q", len(h)) + h)(
            b'{"__metadata__": {"snncc_model": "x"}, "a": {"dtype": "F32", "shape": [1], '
            b'"data_offsets": [0, 4], "x": ' + b"[" * 100 + b"]" * 100 + b"}}"
        ),
    }
    out = {}
    for name, data in cases.items():
        p = folder / f"{name}.safetensors"
        p.write_bytes(data)
        out[name] = p
    out["nonexistent"] = folder / "nonexistent.safetensors"
    out["a_folder"] = folder
    return out


@needs_build
def test_bad_weights_files_and_bad_calls_are_error_codes_with_messages(
    digits_tree, digits_build, tmp_path
) -> None:
    lib = Lib(digits_build / "libsnncc_model.so")
    expected = {
        "missing": "lacks tensor",
        "misshaped": "has shape",
        "float64": "is F64",
        "extra": "stowaway",
        "other_model": "not written for this model",
        "no_metadata": "not written for this model",
        "offsets_past_the_end": "data_offsets",
        "huge_header_length": "header of",
        "not_json": "not a JSON object",
        "short": "too short",
        "deep_nesting": "nests too deeply",
        "nonexistent": "cannot open",
        "a_folder": "weights file",
    }
    for name, path in bad_weight_files(digits_tree, tmp_path).items():
        rc, m, msg = lib.create(path)
        lib.lib.snncc_model_destroy(m)
        assert rc == 2, (name, rc, msg)
        assert expected[name] in msg, (name, msg)
    rc, m, msg = lib.create(digits_tree.path / "weights.safetensors")
    assert rc == 0, msg
    try:
        x = np.random.default_rng(0).random((3, 2, 64), dtype=np.float32)
        nx, ny, ns = lib.sizes(m, 3, 2)
        assert (nx, ny, ns) == (3 * 2 * 64, 3 * 2 * 10, 2 * 138)
        y = np.empty(ny, np.float32)
        calls = {  # (T, B, x count, state_in, y count) -> the words the message must hold
            "wrong T": ((4, 2, nx, None, ny), "x holds 384 floats; T=4, B=2"),
            "wrong B": ((3, 1, nx, None, ny), "x holds 384 floats; T=3, B=1"),
            "short y": ((3, 2, nx, None, ny - 1), "y holds 59 floats"),
            "T=0": ((0, 2, nx, None, ny), "must both be at least 1"),
            "short state": ((3, 2, nx, np.zeros(ns - 1, np.float32), ny), "state_in holds 275"),
        }
        for what, ((T, B, cx, s, cy), words) in calls.items():
            rc = lib.lib.snncc_model_run(
                m, T, B, x.ctypes.data, cx, None if s is None else s.ctypes.data,
                0 if s is None else s.size, None, 0, y.ctypes.data, cy,
            )  # fmt: skip
            assert rc == 1, what
            assert words in lib.error(m), (what, lib.error(m))
        rc = lib.lib.snncc_model_run(m, 3, 2, None, nx, None, 0, None, 0, y.ctypes.data, ny)
        assert rc == 1 and "x is NULL" in lib.error(m)
        # and a good call still works, clearing the error
        lib.run(m, x)
        assert lib.error(m) == ""
    finally:
        lib.lib.snncc_model_destroy(m)


@needs_build
def test_two_models_run_side_by_side_in_two_threads(digits_tree, digits_build, digits_data):
    """No global state: two models, one per thread, each streaming other digits step by step
    at the same time (ctypes releases the GIL), give what each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    x, _ = digits_data
    lib = Lib(digits_build / "libsnncc_model.so")
    weights = digits_tree.path / "weights.safetensors"
    parts = [np.ascontiguousarray(x[:, :120]), np.ascontiguousarray(x[:, 120:240])]

    def alone(xs: np.ndarray) -> np.ndarray:
        rc, m, msg = lib.create(weights)
        assert rc == 0, msg
        try:
            return lib.run(m, xs)[0]
        finally:
            lib.lib.snncc_model_destroy(m)

    def streaming(xs: np.ndarray) -> list[np.ndarray]:
        rc, m, msg = lib.create(weights)
        assert rc == 0, msg
        try:
            runs = []
            for _ in range(10):  # long enough for the two threads to overlap
                ys, state = [], None
                for t in range(xs.shape[0]):
                    y, state = lib.run(m, xs[t : t + 1], state)
                    ys.append(y)
                runs.append(np.concatenate(ys))
            return runs
        finally:
            lib.lib.snncc_model_destroy(m)

    with ThreadPoolExecutor(2) as pool:
        side_by_side = list(pool.map(streaming, parts))
    for xs, runs in zip(parts, side_by_side):
        expected = alone(xs)
        assert all(np.array_equal(r, expected) for r in runs)


@needs_build
def test_snncc_run_refuses_a_wrong_input_in_one_line(digits_tree, digits_build, tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((8, 2, 63), np.float32))
    res = subprocess.run(
        [digits_build / "snncc_run", digits_tree.path / "weights.safetensors", "-i",
         tmp_path / "x.npy", "-o", tmp_path / "y.npy"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 2
    assert "has shape [8, 2, 63]; the model takes [T, B, 64]" in res.stderr
    np.save(tmp_path / "x.npy", np.zeros((8, 2, 64), np.float64))
    res = subprocess.run(
        [digits_build / "snncc_run", digits_tree.path / "weights.safetensors", "-i",
         tmp_path / "x.npy", "-o", tmp_path / "y.npy"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 2 and "is not float32" in res.stderr


def _asan_works() -> bool:
    if CC is None:
        return False
    probe = subprocess.run(
        [CC, "-fsanitize=address", "-x", "c", "-", "-o", os.devnull],
        input="int main(void) { return 0; }\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.returncode == 0


@needs_build
def test_misuse_under_address_sanitizer(digits_tree, tmp_path) -> None:
    """The whole library and a C driver that misuses it, built with -fsanitize=address."""
    if not _asan_works():
        pytest.skip("the C compiler cannot build with -fsanitize=address")
    flags = "-fsanitize=address -fno-omit-frame-pointer"
    build = build_tree(
        digits_tree.path, tmp_path / "build-asan", f"-DCMAKE_C_FLAGS={flags}",
        f"-DCMAKE_CXX_FLAGS={flags}", "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address",
        "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address",
    )  # fmt: skip
    driver = tmp_path / "deploy_abuse"
    _run(
        [CC, "-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-std=c11",
         Path(__file__).with_name("deploy_abuse.c"), "-I", digits_tree.path / "include",
         "-L", build, "-lsnncc_model", f"-Wl,-rpath,{build}", "-o", driver],
        timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    bad = bad_weight_files(digits_tree, tmp_path)
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "OPENBLAS_NUM_THREADS": "1"}
    res = _run([driver, digits_tree.path / "weights.safetensors", *bad.values()], env)
    assert "all checks passed" in res.stdout, res.stdout
    assert "FAIL" not in res.stdout
    # snncc_run too, on a wrong input file
    np.save(tmp_path / "x.npy", np.zeros((8, 2, 63), np.float32))
    r = subprocess.run(
        [build / "snncc_run", digits_tree.path / "weights.safetensors", "-i", tmp_path / "x.npy",
         "-o", tmp_path / "y.npy"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, env={**os.environ, **env},
    )  # fmt: skip
    assert r.returncode == 2 and "AddressSanitizer" not in r.stderr


# ------------------------------------------------------- the neuron forms
def _form_cases() -> list[tuple]:
    """The cpu backend's neuron-form test cases, one per distinct forward."""
    tests = str(Path(__file__).parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import test_cpu_backend as sj
    import test_cpu_snntorch_norse as sn

    cases, seen = [], set()
    for f in sj.FORMS:
        spec = sj.spec_of(f)
        cases.append(("sj", spec, {"w": torch.tensor(-math.log(1.5))} if spec.roles else {}))
    for i, c in enumerate(sn.CASES):
        spec = sn._spec(*c)
        cases.append(("sn", spec, sn._params(spec, i)))
    out = []
    for kind, spec, params in cases:
        d = spec.to_dict()
        for backward_only in ("surrogate", "alpha", "detach_reset"):
            d.pop(backward_only, None)
        key = json.dumps(d, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((kind, spec, params))
    return out


def _traced_neurons() -> list[tuple[str, object, bool]]:
    """SpikingJelly 2.0's families (tests/test_spikingjelly_families.py) and neurons users
    wrote themselves, compiled from their own step code (tests/test_user_neurons.py): each
    its source module (a Linear then the neuron, step mode 's') and whether its step calls
    a transcendental function (EIF's exp, LIAF's sigmoid / tanh), which the kernels take
    from their libm and the reference backend, this module's oracle, from torch."""
    tests = str(Path(__file__).parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import test_spikingjelly_families as fam
    import test_user_neurons as user

    nets = [(k, fam._model(k, "s"), k.startswith(fam.TRANSCENDENTAL)) for k in fam.FAMILIES]
    return nets + [(f"user_{k}", make("s"), False) for k, make in user.CASES.items()]


def _add_traced(g: Graph, x: int, name: str, net, width: int) -> int:
    """The traced neuron of ``net`` (its definition and parameters as the frontend wrote
    them) behind a Linear from ``x`` ([B, 4, 5]) to ``width`` features of its own.

    The Linear selects: one power-of-two weight per row, so that every BLAS computes it
    to the same bits (OpenBLAS and MKL sum a general product in their own orders, and
    the final membranes would differ by an ulp from that, not from the neuron)."""
    traced = snncc.trace(net, torch.zeros(2, 1, net[0].in_features))
    (neuron,) = [n for n in traced.nodes() if traced.node(n)["op"] == "neuron"]
    node = traced.node(neuron)
    select = np.zeros((width, 5), np.float32)
    for o in range(width):
        select[o, o % 5] = (1.0, 2.0, 0.5)[o % 3]
    lin = g.add_node("linear", [x], shape=["B", 4, width], params={
        "weight": g.add_param(f"{name}.lin.weight", select),
        "bias": _param(g, f"{name}.lin.bias", (width,), 0.2, len(g.params))})  # fmt: skip
    params = {
        role: g.add_param(f"{name}.{role}", np.asarray(traced.params[p]))
        for role, p in node.get("params", {}).items()
    }
    return g.add_node("neuron", [lin], attrs=dict(node["attrs"]), params=params,
                      shape=["B", 4, width], name=name)  # fmt: skip


def _neuron(g: Graph, ins: list, spec: NeuronSpec, params: dict, name: str, shape) -> int:
    roles = {}
    for role, value in params.items():
        roles[role] = g.add_param(f"{name}.{role}", value.detach().float().numpy())
    return g.add_node(
        "neuron", ins, attrs={"neuron": spec.to_dict()}, params=roles, shape=shape, name=name
    )


def _lif(tau: float = 2.0, output: str = "spike") -> NeuronSpec:
    return NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=tau, output=output)


def _param(g: Graph, name: str, shape, scale: float, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    return g.add_param(name, (torch.randn(shape, generator=gen) * scale).numpy())


def forms_and_layers_graph() -> tuple[Graph, list[str]]:
    """One input [B, 4, 5] feeding every neuron form and a branch of every stateless op.

    Returns the graph and, per output, whether it must match exactly ("exact": neuron
    forms and element-wise ops) or within tolerance ("spikes" / "values": after GEMMs).
    """
    g = Graph()
    g.meta.update(source="test", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4, 5], name="x")
    step = ["B", 4, 5]
    kinds: list[str] = []
    drive = {"norse_lifbox": 0.75}
    scaled: dict[float, int] = {}
    rec = g.add_node("scale", [x], attrs={"op": "mul", "value": 0.3}, shape=step, name="rec")
    for i, (_kind, spec, params) in enumerate(_form_cases()):
        s = drive.get(spec.charge, 0.375 if spec.charge.startswith("norse") else 1.0)
        src = x
        if s != 1.0:
            if s not in scaled:
                scaled[s] = g.add_node("scale", [x], attrs={"op": "mul", "value": s}, shape=step)
            src = scaled[s]
        ins = [src, rec] if len(spec.input_ports) > 1 else [src]
        n = _neuron(g, ins, spec, params, f"form{i}", step)
        g.add_node("output", [n], attrs={"index": len(kinds)}, shape=step, name=f"out{i}")
        kinds.append("exact")

    def out(n: int, shape, kind: str) -> None:
        g.add_node("output", [n], attrs={"index": len(kinds)}, shape=shape)
        kinds.append(kind)

    # convolutions, BatchNorm, pooling, a linear with a folded BatchNorm
    img = g.add_node("reshape", [x], attrs={"shape": [-1, 1, 4, 5]}, shape=["B", 1, 4, 5])
    conv_attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    c = g.add_node("conv2d", [img], attrs=conv_attrs, shape=["B", 6, 4, 5], params={
        "weight": _param(g, "c.weight", (6, 1, 3, 3), 0.6, 1),
        "bias": _param(g, "c.bias", (6,), 0.1, 2)})  # fmt: skip
    bn = g.add_node("batchnorm", [c], attrs={"eps": 1e-5, "momentum": 0.1, "training": False},
                    shape=["B", 6, 4, 5], params={
        "running_mean": _param(g, "bn.running_mean", (6,), 0.1, 3),
        "running_var": g.add_param("bn.running_var", np.linspace(0.5, 1.5, 6, dtype=np.float32)),
        "weight": _param(g, "bn.weight", (6,), 0.5, 4), "bias": _param(g, "bn.bias", (6,), 0.2, 5)})  # fmt: skip
    s1 = g.add_node("neuron", [bn], attrs={"neuron": _lif().to_dict()}, shape=["B", 6, 4, 5])
    mp = g.add_node("maxpool2d", [s1], attrs={"kernel_size": [2, 2], "stride": [1, 1],
                    "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}, shape=["B", 6, 3, 4])  # fmt: skip
    ap = g.add_node("avgpool2d", [bn], attrs={"kernel_size": [2, 2], "stride": [1, 1],
                    "padding": [1, 1], "ceil_mode": False, "count_include_pad": False,
                    "divisor_override": None}, shape=["B", 6, 5, 6])  # fmt: skip
    out(ap, ["B", 6, 5, 6], "values")
    aap = g.add_node(
        "adaptive_avgpool2d", [ap], attrs={"output_size": [2, 3]}, shape=["B", 6, 2, 3]
    )
    fl = g.add_node("flatten", [aap], attrs={"start_dim": 1, "end_dim": -1}, shape=["B", 36])
    lin = g.add_node("linear", [fl], shape=["B", 12], attrs={"bn_eps": 1e-5}, params={
        "weight": _param(g, "l.weight", (12, 36), 0.5, 6), "bias": _param(g, "l.bias", (12,), 0.1, 7),
        "bn_mean": _param(g, "lbn.mean", (12,), 0.1, 8),
        "bn_var": g.add_param("lbn.var", np.linspace(0.6, 1.4, 12, dtype=np.float32)),
        "bn_weight": _param(g, "lbn.weight", (12,), 1.0, 9), "bn_bias": _param(g, "lbn.bias", (12,), 0.3, 10)})  # fmt: skip
    mem = g.add_node(
        "neuron", [lin], attrs={"neuron": _lif(output="membrane").to_dict()}, shape=["B", 12]
    )
    out(mem, ["B", 12], "values")
    flm = g.add_node("flatten", [mp], attrs={"start_dim": 1, "end_dim": -1}, shape=["B", 72])
    l2 = g.add_node(
        "linear", [flm], shape=["B", 8], params={"weight": _param(g, "l2.weight", (8, 72), 0.4, 11)}
    )
    out(
        g.add_node("neuron", [l2], attrs={"neuron": _lif(1.5).to_dict()}, shape=["B", 8]),
        ["B", 8],
        "spikes",
    )
    gap = g.add_node(
        "adaptive_avgpool2d", [bn], attrs={"output_size": [1, 1]}, shape=["B", 6, 1, 1]
    )
    out(gap, ["B", 6, 1, 1], "values")
    c1_attrs = {"stride": [1], "padding": [1], "dilation": [1], "groups": 2}
    c1 = g.add_node("conv1d", [x], attrs=c1_attrs, shape=["B", 6, 5], params={
        "weight": _param(g, "c1.weight", (6, 2, 3), 0.7, 12)})  # fmt: skip
    out(
        g.add_node("neuron", [c1], attrs={"neuron": _lif().to_dict()}, shape=["B", 6, 5]),
        ["B", 6, 5],
        "spikes",
    )
    # element-wise: add, scale (division), mul with broadcasting, cat, voting
    third = g.add_node("scale", [x], attrs={"op": "div", "value": 3.0}, shape=step)
    a = g.add_node("add", [x, third, x], shape=step)
    col = g.add_node(
        "linear",
        [x],
        shape=["B", 4, 1],
        params={"weight": _param(g, "col.weight", (1, 5), 0.5, 13)},
    )
    m = g.add_node("mul", [a, col], shape=step)
    cat = g.add_node("cat", [m, x], attrs={"dim": 2}, shape=["B", 4, 10])
    vote = g.add_node("voting", [cat], attrs={"voting_size": 2}, shape=step)
    out(
        g.add_node("neuron", [vote], attrs={"neuron": _lif().to_dict()}, shape=step), step, "spikes"
    )
    out(a, step, "exact")
    # a recurrent form's rec input broadcast to its shape ([B, 4, 1] -> [B, 4, 5])
    _, spec, params = next(c for c in _form_cases() if len(c[1].input_ports) > 1)
    out(_neuron(g, [x, col], spec, params, "wide_rec", step), step, "spikes")
    # a recurrent loop: flat x plus W_rec times the neuron's previous spikes
    flat = g.add_node("flatten", [x], attrs={"start_dim": 1, "end_dim": -1}, shape=["B", 20])
    wrec = g.add_node(
        "linear", [], shape=["B", 20], params={"weight": _param(g, "rec.weight", (20, 20), 0.3, 14)}
    )
    add = g.add_node("add", [flat, wrec], shape=["B", 20])
    rl = g.add_node("neuron", [add], attrs={"neuron": _lif().to_dict()}, shape=["B", 20])
    g.add_edge(rl, wrec, 0, delay=1)
    out(rl, ["B", 20], "spikes")
    # SpikingJelly 2.0's families and user-defined neurons, each behind a Linear: bit for
    # bit, a transcendental step within tolerance
    # (the kernel's libm against torch's on the reference backend, as on the cpu backend)
    for name, net, transcendental in _traced_neurons():
        width = net[0].out_features
        out(_add_traced(g, x, name, net, width), ["B", 4, width],
            "close" if transcendental else "exact")  # fmt: skip
    return g, kinds


@pytest.fixture(scope="module")
def forms_model(tmp_path_factory):
    """The graph after the cpu backend's passes, deployed, and its oracle.

    The oracle is the reference interpreter on the same scheduled graph: the cpu backend
    equals it bit for bit (its own tests), and it spares this module compiling 110 forms'
    forward and backward kernels a second time.
    """
    from snncc import backends
    from snncc.backends.base import pipeline_for
    from snncc.backends.reference.program import ReferenceProgram
    from snncc.ir.passes import run_pipeline

    graph, kinds = forms_and_layers_graph()
    graph = run_pipeline(graph, pipeline_for(backends.get("cpu"), {}))
    result = deploy(graph, tmp_path_factory.mktemp("deploy-forms") / "tree")
    return ReferenceProgram(graph, requires_grad=False), result, kinds


@pytest.fixture(scope="module")
def forms_build(forms_model):
    """Built for the generic x86-64 target (SNNCC_NATIVE=OFF): half the compile time of
    110 kernels with -march=native, the same results (SIMD lanes round as scalar code; no
    contraction either way); the digits tree checks the default, native build."""
    _, result, _ = forms_model
    return build_tree(result.path, result.path / "build", "-DSNNCC_NATIVE=OFF")


@pytest.fixture(scope="module")
def forms_runs(forms_model, forms_build):
    """Deployed and oracle outputs and final states, T = 9, B = 3, from a random state; and
    the outputs from a fresh state (each state's initial value: Izhikevich's w_rest...)."""
    cm, result, kinds = forms_model
    T, B = 9, 3
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((T, B, 4, 5), generator=gen) * 1.6 - 0.3
    low = result.lowered
    flat = np.zeros(B * low.state_per_sample, np.float32)
    for e in low.state:
        node, var = e.name[1:].split(".")
        if var == "delay":
            v = (torch.rand((B, e.count), generator=gen) > 0.5).float()
        elif var == "s":  # a snnTorch spike state
            v = (torch.rand((B, e.count), generator=gen) > 0.5).float()
        else:
            v = torch.rand((B, e.count), generator=gen) * 0.6 - 0.1
        flat[B * e.offset : B * (e.offset + e.count)] = v.numpy().reshape(-1)
    lib = Lib(forms_build / "libsnncc_model.so")
    rc, m, msg = lib.create(result.path / "weights.safetensors")
    assert rc == 0, msg
    try:
        y, s_out = lib.run(m, x.numpy(), flat)
        y_fresh, _ = lib.run(m, x.numpy())
    finally:
        lib.lib.snncc_model_destroy(m)
    shapes = low.output_shapes
    got = split_outputs(y, T, B, shapes)
    state_in = {}
    for n, d in flat_to_state(result, flat, B).items():
        shape = cm.graph.node(n)["shape"][1:]
        state_in[n] = {v: torch.from_numpy(a.copy()).reshape(B, *shape) for v, a in d.items()}
    with torch.no_grad():
        ref, state = cm.run(x, state_in)
        ref_fresh, _ = cm.run(x)
    ref = [r.numpy() for r in ref]
    fresh = (split_outputs(y_fresh, T, B, shapes), [r.numpy() for r in ref_fresh])
    # the neuron each output reads (outputs are in the order they were added)
    sources = [cm.graph.in_edges(o)[0].src for o in cm.graph.meta["outputs"]]
    return result, kinds, sources, got, ref, s_out, state_to_flat(result, state, B), fresh


@needs_build
def test_every_neuron_form_bit_for_bit_outputs_and_final_states(forms_runs) -> None:
    result, kinds, sources, got, ref, s_out, s_ref, fresh = forms_runs
    exact = [i for i, k in enumerate(kinds) if k == "exact"]
    assert len(exact) >= 100  # every forward variant of the cpu backend's form tests
    bad = [i for i in exact if not np.array_equal(got[i], ref[i])]
    assert not bad, f"outputs {bad} differ"
    bad = [i for i in exact if not np.array_equal(fresh[0][i], fresh[1][i])]
    assert not bad, f"outputs {bad} differ from a fresh state"
    close = [i for i, k in enumerate(kinds) if k == "close"]
    assert close  # EIF's exp, LIAF's sigmoid / tanh: the kernel's libm, torch's in the oracle
    for i in close:
        for (a, b), start in (
            ((got[i], ref[i]), "a random"),
            ((fresh[0][i], fresh[1][i]), "a fresh"),
        ):
            n, err = int((a != b).sum()), float(np.abs(a - b).max())
            print(f"output {i} ({start} state): {n} of {a.size} differ, max |diff| {err:.3g}")
            if ((b == 0) | (b == 1)).all():
                # a spike flips only where a membrane lies within an exp's rounding of the
                # threshold (the families' own bound on the cpu backend: 1e-3 of the spikes)
                assert n <= a.size * 1e-3, (n, err)
            else:  # LIAF's analog activations
                assert err <= 1e-5 * max(float(np.abs(b).max()), 1.0), (n, err)
    # the drives make the spiking forms fire (and not on every step)
    spiking = sum(
        1 for i in exact if ((got[i] == 0) | (got[i] == 1)).all() and 0 < got[i].mean() < 1
    )
    assert spiking >= 20
    forms = {sources[i] for i in exact}
    near = {sources[i] for i in close}
    B, compared, differ = 3, 0, []
    for e in result.lowered.state:
        node = int(e.name[1:].split(".")[0])
        a = s_out[B * e.offset : B * (e.offset + e.count)]
        b = s_ref[B * e.offset : B * (e.offset + e.count)]
        if node in near:
            assert float(np.abs(a - b).max()) <= 1e-5 * max(float(np.abs(b).max()), 1.0)
        if node not in forms:
            continue
        compared += 1
        if not np.array_equal(a, b):
            differ.append(e.name)
    assert compared >= len(exact) - 1  # every form's every state variable
    assert not differ, f"final states {differ} differ"


@needs_build
def test_layers_within_tolerance_with_mismatch_counts(forms_runs) -> None:
    """Convolutions and GEMMs sum in the BLAS's order, not oneDNN's / MKL's: spikes may flip
    where a membrane lies within rounding of the threshold; values agree to 1e-5 relative."""
    result, kinds, sources, got, ref, s_out, s_ref, fresh = forms_runs
    report = []
    for i, kind in enumerate(kinds):
        a, b = got[i], ref[i]
        if kind == "spikes":
            n = int((a != b).sum())
            report.append(f"output {i} spikes: {n} of {a.size} differ")
            assert n <= max(2, a.size // 100), report[-1]
        elif kind == "values":
            err = float(np.abs(a - b).max())
            scale = float(np.abs(b).max())
            report.append(f"output {i} values: max |diff| {err:.3g} (max |ref| {scale:.3g})")
            assert err <= 1e-5 * max(scale, 1.0), report[-1]
    print("\n".join(report))


# ----------------------------------------------------------------- refusals
def test_deploy_refuses_what_it_cannot_run_naming_the_node(tmp_path) -> None:
    g = Graph()
    g.meta.update(source="test", step_mode="m")
    x = g.add_node("input", attrs={"index": 0}, shape=["B", 4], name="x")
    d = g.add_node("dropout", [x], attrs={"p": 0.5, "training": True}, shape=["B", 4], name="drop")
    g.add_node("output", [d], attrs={"index": 0}, shape=["B", 4])
    cm = snncc.compile_graph(g, backend="reference")
    with pytest.raises(UnsupportedError, match=r"node %1 \('drop', op dropout\).*training mode"):
        deploy(cm, tmp_path / "t")
    with pytest.raises(UnsupportedError, match="deploy target 'tpu'; supported: cpu, cuda"):
        deploy(cm, tmp_path / "t", target="tpu")
    # below the API floor: an artifact folder or a torch module is named with the way in
    with pytest.raises(
        UnsupportedError, match=r"for an artifact folder: snncc.deploy\(snncc.load_ir"
    ):
        deploy(str(tmp_path), tmp_path / "t")
    with pytest.raises(UnsupportedError, match=r"snncc.deploy\(snncc.trace\(model, example_in"):
        deploy(torch.nn.Linear(2, 2), tmp_path / "t")


def test_a_partitioned_schedule_deploys_as_one_program(digits_cm, tmp_path) -> None:
    """The partition pass's stages run in one process here: a transfer is the same memory,
    and the weights and the carried state are the unpartitioned model's."""
    from snncc.ir.passes import run_pipeline
    from snncc.ir.schedule import n_stages

    g = digits_cm.ir.copy()
    g.meta["partition"] = {"steps": 8, "batch": 4, "stages": 2}
    parted = run_pipeline(g, ["partition"])
    assert n_stages(parted) == 2
    whole, split = deploy(digits_cm, tmp_path / "whole"), deploy(parted, tmp_path / "split")
    model = (split.path / "src" / "model.cpp").read_text()
    assert re.search(r"const auto v\d+ = v\d+;  // %\d+ transfer .*: same memory", model)
    assert [t.name for t in split.lowered.tensors] == [t.name for t in whole.lowered.tensors]
    assert all(
        np.array_equal(a.array, b.array)
        for a, b in zip(split.lowered.tensors, whole.lowered.tensors)
    )
    assert split.lowered.state == whole.lowered.state
    assert model.count("_launch(rt,") == 2


def test_deploy_never_writes_through_a_link(digits_cm, tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(CheckpointError, match="symbolic link"):
        deploy(digits_cm, tmp_path / "link")
    assert not any(real.iterdir())


def test_cli_deploys_an_artifact_and_a_spec(digits_cm, tmp_path, capsys) -> None:
    from snncc.cli import main

    digits_cm.save(tmp_path / "art")
    assert (
        main(["deploy", str(tmp_path / "art"), "--target", "cpu", "-o", str(tmp_path / "t1")]) == 0
    )
    out = capsys.readouterr().out
    assert "deployed" in out and "cmake -S" in out
    assert (tmp_path / "t1" / "include" / "snncc_model.h").is_file()
    spec = "snncc.examples.digits:load_pretrained"
    rc = main(
        ["deploy", spec, "--input-shape", "8,1,64", "--target", "cuda", "-o", str(tmp_path / "t2")]
    )
    assert rc == 0
    cmake = (tmp_path / "t2" / "CMakeLists.txt").read_text()
    assert (
        'option(SNNCC_CUDA "build the CUDA target' in cmake
        and 'target (CUDA toolkit + cuBLAS) instead of the CPU one" ON)' in cmake
    )
    # the same weights, the same model id, whichever way it was named
    a = json.loads((tmp_path / "t1" / "snncc_deploy.json").read_text())
    b = json.loads((tmp_path / "t2" / "snncc_deploy.json").read_text())
    assert a["model"] == b["model"] and a["target"] == "cpu" and b["target"] == "cuda"
    assert main(["deploy", str(tmp_path / "nowhere"), "-o", str(tmp_path / "t3")]) == 2


def test_a_cuda_artifact_deploys_without_lowering_it(digits_cm, tmp_path) -> None:
    """The artifact's IR is read, not lowered for its backend: a cuda artifact deploys (and
    `snncc ir` prints it) on a machine where the cuda backend cannot run."""
    import snncc
    from snncc.cli import main

    digits_cm.save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "snncc.json").read_text())
    manifest.update(backend="cuda", options={})
    (tmp_path / "art" / "snncc.json").write_text(json.dumps(manifest))
    graph = snncc.load_ir(tmp_path / "art")
    assert graph.meta.get("groups") == digits_cm.ir.meta.get("groups")
    assert (
        main(["deploy", str(tmp_path / "art"), "--target", "cuda", "-o", str(tmp_path / "t")]) == 0
    )
    a = json.loads((tmp_path / "t" / "snncc_deploy.json").read_text())
    assert a["target"] == "cuda" and a["model"] == deploy(digits_cm, tmp_path / "t2").model_id


def test_deploy_help_shows_an_example(capsys) -> None:
    from snncc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["deploy", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "snncc deploy out/digits --target cpu" in out
    assert "cmake --build out/digits-c/build" in out


# ---------------------------------------------------------------------- CUDA
def _cublas_include() -> str | None:
    spec = importlib.util.find_spec("nvidia")
    for root in list(spec.submodule_search_locations or []) if spec else []:
        for hit in Path(root).glob("*/include/cublas_v2.h"):
            return str(hit.parent)
    for root in ("/usr/local/cuda/include", "/usr/include"):
        if (Path(root) / "cublas_v2.h").is_file():
            return root
    return None


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
def test_the_cuda_target_compiles_with_nvcc_for_sm_80_and_sm_90(digits_tree, tmp_path) -> None:
    cublas = _cublas_include()
    if cublas is None:
        pytest.skip("cuBLAS headers not found (pip install nvidia-cublas, or the CUDA toolkit's)")
    src, inc = digits_tree.path / "src", digits_tree.path / "include"
    from snncc.backends.kernels import NVCC_EXACT_FLAGS

    archs = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    for name in ("runtime_cuda.cu", "neuron_kernels_cuda_0.cu"):
        obj = tmp_path / (name + ".o")
        _run([NVCC, "-c", "-std=c++17", *NVCC_EXACT_FLAGS, *archs, "-I", src, "-I", inc,
              "-I", cublas, src / name, "-o", obj], timeout=BUILD_TIMEOUT)  # fmt: skip
        cuobjdump = shutil.which("cuobjdump") or str(Path(NVCC).resolve().parent / "cuobjdump")
        if Path(cuobjdump).is_file():
            listing = _run([cuobjdump, "--list-elf", obj]).stdout
            assert "sm_80" in listing and "sm_90" in listing
    # the host side of the CUDA build (the C interface, the schedule, the runner), compiled
    # as C++ by nvcc's host compiler with the toolkit's headers
    for f in (src / "model.cpp", src / "api.cpp", src / "safetensors.cpp",
              digits_tree.path / "tools" / "snncc_run.cpp"):  # fmt: skip
        _run([NVCC, "-c", "-x", "c++", "-std=c++17", "-DSNNCC_CUDA=1", "-I", src, "-I", inc,
              f, "-o", tmp_path / (f.name + ".o")], timeout=BUILD_TIMEOUT)  # fmt: skip


def _gpu_ready() -> bool:
    return importlib.util.find_spec("cupy") is not None and torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs CuPy and a CUDA GPU (the cuda backend)")
@pytest.mark.skipif(
    CMAKE is None or NINJA is None or NVCC is None,
    reason="building the CUDA tree needs cmake, ninja and nvcc (on a GPU machine without an "
    "index: bash scripts/gpu_check.sh --pack carries the cmake and ninja wheels)",
)
def test_the_cuda_tree_on_a_gpu_equals_the_cuda_backend(digits_data, tmp_path) -> None:
    """The digits model's CUDA tree, built with CMake for this GPU, against the cuda backend:
    the test split's output spikes, T=4+4 streaming against T=8, the final membranes, and the
    batch-1 streaming latency per step (into $SNNCC_GPU_OUT/deploy_cuda.json where set)."""
    import time

    x, labels = digits_data
    cm = snncc.compile(digits.load_pretrained(), torch.from_numpy(x[:, :1]), backend="cuda")
    result = deploy(cm, tmp_path / "tree", target="cuda")
    major, minor = torch.cuda.get_device_capability()
    t0 = time.perf_counter()
    build = build_tree(result.path, tmp_path / "build", "-DSNNCC_CUDA=ON",
                       f"-DCMAKE_CUDA_ARCHITECTURES={major}{minor}")  # fmt: skip
    build_s = time.perf_counter() - t0
    t = result.path
    np.save(tmp_path / "x8.npy", x)
    np.save(tmp_path / "xa.npy", x[:4])
    np.save(tmp_path / "xb.npy", np.ascontiguousarray(x[4:]))
    snncc_run(build, t, "-i", tmp_path / "x8.npy", "-o", tmp_path / "y8.npy",
              "--state-out", tmp_path / "s8.npy")  # fmt: skip
    snncc_run(build, t, "-i", tmp_path / "xa.npy", "-o", tmp_path / "ya.npy",
              "--state-out", tmp_path / "sa.npy")  # fmt: skip
    snncc_run(build, t, "-i", tmp_path / "xb.npy", "-o", tmp_path / "yb.npy",
              "--state-in", tmp_path / "sa.npy", "--state-out", tmp_path / "sb.npy")  # fmt: skip
    y = np.load(tmp_path / "y8.npy")
    ref, state = cm.run(x)
    ref = _host(ref)
    spikes_differ = int((y != ref).sum())
    got_s, ref_s = np.load(tmp_path / "s8.npy"), state_to_flat(result, state, x.shape[1])
    membranes_differ = int((got_s != ref_s).sum())
    max_diff = float(np.abs(got_s - ref_s).max())
    y44 = np.concatenate([np.load(tmp_path / "ya.npy"), np.load(tmp_path / "yb.npy")])
    stream_equal = bool(
        np.array_equal(y44, y)
        and np.array_equal(np.load(tmp_path / "sb.npy"), np.load(tmp_path / "s8.npy"))
    )
    # batch-1 streaming, one step per call, as in the README's CPU latency table
    per_step = []
    for b in range(20):
        np.save(tmp_path / "x1.npy", np.ascontiguousarray(x[:, b : b + 1]))
        out = snncc_run(build, t, "-i", tmp_path / "x1.npy", "-o", tmp_path / "y1.npy",
                        "--stream", "--repeat", 20)  # fmt: skip
        per_step.append(float(out.split(":")[-1].split("us per step")[0]))
    record = {
        "device": torch.cuda.get_device_name(0),
        "capability": f"sm_{major}{minor}",
        "build_seconds": round(build_s, 1),
        "spikes_differ": spikes_differ,
        "spikes": int(y.size),
        "accuracy": round(digits.accuracy(y, labels), 4),
        "final_membranes_differ": membranes_differ,
        "final_membranes": int(got_s.size),
        "final_membranes_max_abs_diff": max_diff,
        "streaming_4_plus_4_equals_8": stream_equal,
        "batch1_us_per_step_median_of_20_digits": float(np.median(per_step)),
        "batch1_us_per_step_quartiles": [float(q) for q in np.percentile(per_step, [25, 75])],
    }
    print(json.dumps(record, indent=2))
    out_dir = os.environ.get("SNNCC_GPU_OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "deploy_cuda.json").write_text(json.dumps(record, indent=2))
    assert stream_equal
    assert spikes_differ == 0, f"{spikes_differ} of {y.size} output spikes differ"
    assert record["accuracy"] == 0.9638
    assert max_diff <= 1e-5 * max(float(np.abs(ref_s).max()), 1.0)
