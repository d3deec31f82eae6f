"""Compile generated C++ with the host compiler and load it with ctypes, through an on-disk cache.

Why a cache keyed by source + compiler + flags: compiling a kernel takes about
a second, and the same neuron form recurs across layers, runs and processes;
the key changes whenever anything that could change the machine code changes.
Why these flags: ``-ffp-contract=off`` (and no fast-math) keeps every fp32
operation rounding once, as torch eager does, so spikes match bit for bit.
``-march=native`` (where the compiler has it) lets the lane loops of the
kernels (templates/cuda/common.cuh.j2) use the machine's widest vectors and
masked stores; SIMD lanes round exactly as scalar code does, so results do not
change. A library built for one CPU may not run on another, so the cache key
holds what ``-march=native`` resolved to here (a cache shared over NFS by
different machines keeps one library per kind of CPU).
Why not just "load the .so if it exists": a cached library runs as native code
in the process, so it is found only in the user's own private cache, verified
against the content hash recorded when it was built, and built once per entry
under a lock with temporary files of its own (:mod:`snncc.backends.kernel_cache`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from snncc.backends import kernel_cache
from snncc.backends.kernels import HOST_EXACT_FLAGS
from snncc.errors import BackendError
from snncc.ir import safe_files

#: compilers tried in order when neither SNNCC_CXX nor CXX names one
CANDIDATES = ("g++", "c++", "clang++")
#: ``-fno-strict-aliasing``: the kernels never rely on type-based aliasing (``restrict`` says
#: what they need), and GCC 12.2 at -O3 miscompiles a lane loop under it, with or without
#: -march and omp simd (not at -O2): the Norse LIF forward with bf16 x stored each step's
#: new current into i_seq where the current before the step belongs (found by
#: tests/test_cpu_snntorch_norse.py's 16-bit test). Keep it on everywhere.
#: ``-fno-trapping-math``: the kernels never read floating-point exception flags; under
#: the default GCC will not evaluate both arms of a select (a spike, a clamp), which keeps
#: every lane loop with one scalar. It changes no value (results stay IEEE, tested bit for
#: bit against the reference).
BASE_FLAGS: tuple[str, ...] = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fno-strict-aliasing",
    *HOST_EXACT_FLAGS,
    "-fno-trapping-math",  # after -fno-fast-math, which turns trapping math back on
)
OPENMP_FLAG = "-fopenmp"
NATIVE_FLAG = "-march=native"
#: how ``-march=native``'s listing names AVX-512 (GCC, Clang)
AVX512_FEATURES = ("-mavx512f", "+avx512f")

#: seconds one kernel may take to compile before the build is stopped
COMPILE_TIMEOUT = 900.0

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


def default_cache_dir() -> Path:
    """``$SNNCC_CACHE_DIR/cpu`` or ``~/.cache/snncc/cpu`` (XDG_CACHE_HOME respected)."""
    return kernel_cache.default_dir("cpu")


def find_compiler() -> str:
    """The host C++ compiler: $SNNCC_CXX, else $CXX, else g++, c++, clang++ on PATH.

    A compiler the environment names but that cannot be found is an error, not
    a reason to try another one: the user asked for that compiler.
    """
    for var in ("SNNCC_CXX", "CXX"):
        name = os.environ.get(var)
        if name:
            path = shutil.which(name)
            if path is None:
                raise BackendError(
                    f"${var}={name} names no compiler that can be run (not found, or not "
                    f"executable); install it, point ${var} at a C++17 compiler, or unset {var} "
                    f"to use {' / '.join(CANDIDATES)}"
                )
            return path
    tried = []
    for name in CANDIDATES:
        tried.append(name)
        path = shutil.which(name)
        if path:
            return path
    raise BackendError(
        "the cpu backend needs a C++17 compiler with OpenMP and found none "
        f"(tried {', '.join(tried)}); install one (Debian/Ubuntu: apt-get install g++; "
        "Fedora: dnf install gcc-c++; macOS: brew install gcc, then set CXX=g++-14) "
        "or point SNNCC_CXX at it"
    )


@cache
def compiler_identity(cxx: str) -> str:
    """The compiler's ``--version`` first line: part of the cache key."""
    try:
        res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"cannot run the C++ compiler {cxx}: {exc}") from exc
    return (res.stdout or res.stderr).splitlines()[0] if (res.stdout or res.stderr) else cxx


@cache
def openmp_works(cxx: str) -> bool:
    """Whether ``cxx -fopenmp`` builds a shared library (Apple clang does not without libomp)."""
    src = '#include <omp.h>\nextern "C" int snncc_probe() { return omp_get_max_threads(); }\n'
    with tempfile.TemporaryDirectory(prefix="snncc-omp-") as tmp:
        c = Path(tmp) / "probe.cpp"
        c.write_text(src)
        res = subprocess.run(
            [cxx, *BASE_FLAGS, OPENMP_FLAG, str(c), "-o", str(Path(tmp) / "probe.so")],
            capture_output=True,
            text=True,
        )
    return res.returncode == 0


@cache
def native_target(cxx: str) -> str | None:
    """What ``cxx -march=native`` resolves to on this machine, or None where it has no such flag.

    Read from the driver's ``-###`` listing: GCC passes the detected ``-march=``,
    ``-m<feature>`` and cache ``--param`` flags to cc1plus, Clang ``-target-cpu`` and
    ``-target-feature``; temporary file names are left out, so the text is stable.
    """
    try:
        res = subprocess.run(
            [cxx, NATIVE_FLAG, "-###", "-x", "c++", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    kept: list[str] = []
    for line in (res.stderr + res.stdout).splitlines():
        if "cc1" not in line and "-target-cpu" not in line:
            continue  # the compiler proper's command line, not the driver's echo of ours
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        for prev, tok in zip(["", *tokens], tokens):
            if tok.startswith("-m") or prev in ("--param", "-target-cpu", "-target-feature"):
                kept.append(tok)
    if not kept or NATIVE_FLAG in kept or "native" in kept:
        return None  # passed on unresolved: nothing says what it would build for
    return " ".join(kept)


@cache
def native_flags(cxx: str) -> tuple[str, ...]:
    """``-march=native`` (and 512-bit vectors where the CPU has AVX-512) if ``cxx`` resolves
    it and a lane loop builds with it, else nothing (warned: same results, slower).

    ``-###`` only lists the commands, so a probe compile checks the flags for real
    (an assembler older than the CPU, for one, rejects what native selects).
    """
    target = native_target(cxx)
    if target is None:
        return ()
    flags: tuple[str, ...] = (NATIVE_FLAG,)
    if any(f in target.split() for f in AVX512_FEATURES):
        # GCC and Clang default to 256-bit vectors even where AVX-512 exists; a lane
        # block's step (SNNCC_LANES = 32 floats) is then two 512-bit registers (measured
        # on a Xeon: LIF backward 1.6x, forward 1.3x faster than at 256 bits).
        # -fno-unswitch-loops: GCC copies a lane loop once per optional array (h_seq,
        # v_seq, ga0, ...), 2^k vectorised copies; AVX-512's masked stores make the
        # copies worthless (same kernel speed, measured) and a snnTorch/Norse kernel
        # then builds in 0.8 s instead of 2.7 s. Without masked stores (SSE, AVX2) the
        # copies are what vectorises the loop: they stay.
        flags += ("-mprefer-vector-width=512", "-fno-unswitch-loops")
    src = (
        'extern "C" void snncc_probe(const float* x, float* y, long long n) {\n'
        "    for (long long i = 0; i < n; ++i) y[i] = x[i] > 0.5f ? x[i] / 3.0f : 0.0f;\n}\n"
    )
    with tempfile.TemporaryDirectory(prefix="snncc-native-") as tmp:
        c = Path(tmp) / "probe.cpp"
        c.write_text(src)
        res = subprocess.run(
            [cxx, *BASE_FLAGS, *flags, str(c), "-o", str(Path(tmp) / "probe.so")],
            capture_output=True,
            text=True,
        )
    if res.returncode != 0:
        warnings.warn(
            f"{cxx} lists {NATIVE_FLAG} but cannot build with it "
            f"({(res.stderr.strip().splitlines() or ['?'])[-1]}); the cpu backend's kernels "
            "are built for the generic target (same results, slower)",
            stacklevel=3,
        )
        return ()
    return flags


def compile_flags(cxx: str) -> list[str]:
    """Flags for ``cxx``: :data:`BASE_FLAGS`, ``-march=native`` where the compiler has it
    (with 512-bit vectors where the CPU has AVX-512), and OpenMP where it works (warned
    when not)."""
    flags = [*BASE_FLAGS, *native_flags(cxx)]
    if openmp_works(cxx):
        flags.append(OPENMP_FLAG)
    else:
        warnings.warn(
            f"{cxx} cannot build with -fopenmp; the cpu backend's kernels run on one "
            "thread (same results, slower). Install libomp / use GCC for parallel kernels.",
            stacklevel=3,
        )
    return flags


def cache_key(source: str) -> tuple[str, list[str], str]:
    """(compiler, flags, key): the key hashes everything that could change the machine code."""
    cxx = find_compiler()
    flags = compile_flags(cxx)
    target = native_target(cxx) if NATIVE_FLAG in flags else None
    key_text = "\0".join([source, cxx, compiler_identity(cxx), *flags, target or ""])
    return cxx, flags, hashlib.sha256(key_text.encode()).hexdigest()[:24]


def _compile_into(cxx: str, flags: list[str], source: str, where: Path, name: str) -> Callable:
    """The build step for :func:`snncc.backends.kernel_cache.get_or_build`: ``source`` -> ``out``.

    The compiler reads the source from a pipe, so no builder ever reads a file
    another is writing, and the library holds no temporary file name (the same
    source builds to the same bytes). The readable copy, ``<name>.cpp``, is
    written atomically beside it for users to read exactly what runs.
    """

    def run(out: Path) -> None:
        readable = safe_files.write_file(where / f"{name}.cpp", source)
        cmd = [cxx, *flags, "-x", "c++", "-", "-x", "none", "-o", str(out), "-lm"]
        try:
            res = subprocess.run(
                cmd, input=source, capture_output=True, text=True, timeout=COMPILE_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise BackendError(
                f"the C++ compiler took more than {COMPILE_TIMEOUT:.0f} s on generated kernel "
                f"{readable}; stopped"
            ) from None
        except OSError as exc:
            raise BackendError(f"cannot run the C++ compiler {cxx}: {exc}") from None
        if res.returncode != 0:
            raise BackendError(
                f"the C++ compiler failed on generated kernel {readable} (command: "
                f"{' '.join(cmd)} < {readable}):\n{res.stderr.strip()[-4000:]}"
            )

    return run


def build(
    source: str, cache_dir: str | os.PathLike | None = None, *, reject: Path | None = None
) -> Path:
    """The verified cached shared library of ``source``, compiled first if missing or damaged.

    See :mod:`snncc.backends.kernel_cache` for the protocol (private folder, content
    hash checked before every use, one build per entry under a lock, atomic
    publication). ``reject``: a library that verified but did not load.
    """
    cxx, flags, key = cache_key(source)
    where = kernel_cache.folder("cpu", cache_dir)
    name = f"snncc_{key}"
    try:
        return kernel_cache.get_or_build(
            where, name, ".so", _compile_into(cxx, flags, source, where, name), reject=reject
        )
    except OSError as exc:
        raise BackendError(
            f"the cpu kernel cache {where} cannot be used: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}; "
            f"{safe_files.os_error_hint(exc)} (SNNCC_CACHE_DIR or the cache_dir option)"
        ) from None


def load(
    source: str, cache_dir: str | os.PathLike | None = None, symbols: Sequence[str] = ()
) -> ctypes.CDLL:
    """Build (or find in the cache) and load ``source``; one handle per library per process.

    The library must define every name in ``symbols``. A cached library that
    verifies but does not load, or lacks a symbol, is rebuilt once (it was
    damaged or foreign); a fresh build that still fails is a BackendError.
    """
    bad: Path | None = None
    for attempt in range(2):
        path = build(source, cache_dir, reject=bad)
        try:
            lib = _dlopen(path)
            missing = [s for s in symbols if not hasattr(lib, s)]
        except OSError as exc:
            missing, error = [], f"it does not load ({exc})"
        else:
            error = f"it lacks the symbols {missing}" if missing else ""
        if not error:
            return lib
        if attempt == 1:
            raise BackendError(
                f"the compiled kernel library {path} cannot be used: {error}; remove it "
                "('snncc cache clear') and report the kernel if this repeats"
            )
        bad = path
    raise AssertionError("unreachable")


def _dlopen(path: Path) -> ctypes.CDLL:
    with _lock:
        lib = _loaded.get(str(path))
        if lib is None:
            lib = ctypes.CDLL(str(path))
            _loaded[str(path)] = lib
    return lib
