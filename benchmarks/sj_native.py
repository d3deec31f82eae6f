"""Build SpikingJelly 2.0's native CUDA neurons (LIF, PLIF) from its sdist, for the sj-native peer.

    python benchmarks/sj_native.py build --sdist .whl/sdist/spikingjelly-2.0.0.tar.gz --out DIR
    python benchmarks/sj_native.py status --out DIR

SpikingJelly 2.0 picks its native CUDA operators first when they are importable
(its selection order is cuda, triton, torch). Its wheel ships without them; a
source install builds them only with ``SJ_BUILD_NATIVE_CUDA=1``, and then all
twelve neuron ops. The suite needs two, LIF (L1, L2, M1) and PLIF (C1): this
builds those two in parallel with the nvcc flags of SpikingJelly's setup.py
(``-O3 --fmad=false`` and the arch flags torch derives from
``TORCH_CUDA_ARCH_LIST`` or the visible GPU) through
``torch.utils.cpp_extension``, into a copy of the sdist's package laid out as
pip installs it (``DIR/site/spikingjelly``, ``ops/`` as ``_ops/``), each
``_C.so`` next to the ``_native_build.json`` that SpikingJelly's loader checks
(torch and CUDA versions, operator ABI, arch flags).

Outcome: ``DIR/site`` goes first on the sj-native worker's PYTHONPATH (run.py
does it when ``SJ_NATIVE_DIR=DIR``), or ``DIR/NOT_BUILT`` holds one line saying
why not (no nvcc, no GPU and no arch list, a compile error, the time limit),
which the suite's table prints as ``n/a: not built: <reason>``. ``DIR/build.json``
records the flags, versions and seconds; ``DIR/build/<op>/`` the compiler logs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

OPS = ("lif", "plif")
NVCC_FLAGS = ["-O3", "--fmad=false"]  # SpikingJelly 2.0 setup.py, for every neuron op


def site_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "site"


def not_built(out: str | os.PathLike) -> str | None:
    """Why ``out`` holds no usable build (None: it does)."""
    out = Path(out)
    marker = out / "NOT_BUILT"
    if marker.is_file():
        return marker.read_text().strip() or "unknown reason"
    if not (site_dir(out) / "spikingjelly").is_dir():
        return f"{out} holds no build (run benchmarks/sj_native.py build)"
    return None


def not_loaded() -> str | None:
    """Why this process does not run the native build (None: it does); for the sj-native peer."""
    out = os.environ.get("SJ_NATIVE_DIR")
    if not out:
        return "SJ_NATIVE_DIR is not set (benchmarks/sj_native.py builds it; gpu_check.sh sets it)"
    why = not_built(out)
    if why:
        return why
    import spikingjelly

    here = Path(spikingjelly.__file__).resolve()
    if site_dir(out).resolve() not in here.parents:
        return f"the worker imported SpikingJelly from {here.parent}, not from {site_dir(out)}"
    return None


def _cuda_home() -> str | None:
    """The CUDA toolkit to build with: CUDA_HOME, else /usr/local/cuda, else nvcc's parent.

    torch guesses the parent of ``nvcc`` on PATH; where that is /usr/local/bin (a
    link farm) the libraries and headers live in /usr/local/cuda instead.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    if Path("/usr/local/cuda/bin/nvcc").is_file():
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def _extra_includes() -> list[str]:
    """Header folders of the nvidia-* wheels torch depends on (cuSPARSE, cuBLAS, ... headers
    that torch's CUDA headers include and a compiler-only toolkit lacks)."""
    import torch

    site = Path(torch.__file__).resolve().parent.parent
    return sorted(str(p) for p in site.glob("nvidia/*/include") if p.is_dir())


def _why_not_buildable() -> str | None:
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    home = _cuda_home()
    if not home or not (Path(home) / "bin" / "nvcc").is_file():
        return "no CUDA compiler (nvcc) found: set CUDA_HOME"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler found (set CXX)"
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        return "no visible GPU and no TORCH_CUDA_ARCH_LIST to build for"
    return None


def _extract(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist (regular files and folders only) and return its top folder."""
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "spikingjelly").is_dir() or not (tops[0] / "ops").is_dir():
        raise ValueError(f"{sdist.name} is not a SpikingJelly sdist (spikingjelly/ and ops/)")
    return tops[0]


def _compile_one(op: str, source: Path, build: Path) -> Path:
    """Compile one op's native.cu into a shared library (run in its own process)."""
    from torch.utils.cpp_extension import load

    build.mkdir(parents=True, exist_ok=True)
    load(
        name=f"sj_native_{op}",
        sources=[str(source)],
        extra_cuda_cflags=NVCC_FLAGS,
        extra_include_paths=_extra_includes(),
        build_directory=str(build),
        is_python_module=False,
        verbose=True,
    )
    return build / f"sj_native_{op}.so"


def build(sdist: Path, out: Path, ops: tuple[str, ...], timeout: float) -> int:
    """Build ``ops`` from ``sdist`` into ``out``; writes NOT_BUILT with the reason on failure."""
    import torch

    start = time.time()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    record: dict = {"sdist": sdist.name, "ops": list(ops), "torch": torch.__version__}

    def fail(reason: str) -> int:
        (out / "NOT_BUILT").write_text(reason + "\n")
        record.update(status=f"not built: {reason}", seconds=round(time.time() - start, 1))
        (out / "build.json").write_text(json.dumps(record, indent=1))
        print(f"SpikingJelly native CUDA: not built: {reason}")
        return 1

    if not sdist.is_file():
        return fail(f"no SpikingJelly sdist at {sdist} (gpu_check.sh --pack downloads it)")
    why = _why_not_buildable()
    if why:
        return fail(why)
    os.environ.setdefault("CUDA_HOME", _cuda_home() or "")
    try:
        top = _extract(sdist, out / "src")
    except (OSError, ValueError, tarfile.TarError) as exc:
        return fail(f"cannot unpack {sdist.name}: {exc}")
    pkg = site_dir(out) / "spikingjelly"
    shutil.copytree(top / "spikingjelly", pkg)
    shutil.copytree(top / "ops", pkg / "_ops", dirs_exist_ok=True)
    abi = re.search(r"_NATIVE_ABI\s*=\s*(\d+)", (top / "ops" / "__init__.py").read_text())
    version = re.search(r"^Version:\s*(\S+)", (top / "PKG-INFO").read_text(), re.M)
    record.update(version=version and version.group(1), operator_abi=abi and int(abi.group(1)))
    if abi is None:
        return fail("the sdist's ops/__init__.py names no _NATIVE_ABI")
    from torch.utils.cpp_extension import _get_cuda_arch_flags  # what SJ's setup.py records

    arch = _get_cuda_arch_flags()
    record.update(cuda_home=os.environ["CUDA_HOME"], nvcc_flags=NVCC_FLAGS, arch_flags=arch)
    procs = {}
    for op in ops:
        log = (out / "build" / f"{op}.log").resolve()
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "_compile", op, str(pkg / "_ops" / op / "native.cu")]
        cmd.append(str(out / "build" / op))
        procs[op] = (subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log)
    failed = []
    for op, (proc, log) in procs.items():
        left = max(1.0, timeout - (time.time() - start))
        try:
            rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            for other, _ in procs.values():
                other.kill()
            return fail(f"nvcc did not finish in {timeout:.0f} s (ops {', '.join(ops)})")
        if rc != 0:
            lines = [ln for ln in log.read_text().splitlines() if "error" in ln.lower()]
            failed.append(f"{op}: {(lines or [f'exit status {rc}'])[0].strip()[:200]}")
    if failed:
        return fail("compile failed: " + "; ".join(failed))
    meta = {
        "torch_version": str(torch.__version__),
        "operator_abi": int(abi.group(1)),
        "cuda_version": torch.version.cuda,
        "cuda_arch_flags": arch,
        "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
    }
    for op in ops:
        shutil.copy2(out / "build" / op / f"sj_native_{op}.so", pkg / "_ops" / op / "_C.so")
        (pkg / "_ops" / op / "_native_build.json").write_text(json.dumps(meta, indent=2) + "\n")
    check = subprocess.run(  # SpikingJelly's own loader accepts the build (versions, ABI)
        [sys.executable, "-c", "".join(f"import spikingjelly._ops.{op}.native;" for op in ops)],
        env={**os.environ, "PYTHONPATH": str(site_dir(out))},
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        tail = (check.stderr.strip().splitlines() or ["?"])[-1]
        return fail(f"built, but SpikingJelly's loader refused it: {tail[:200]}")
    record.update(status="built", seconds=round(time.time() - start, 1), native_build=meta)
    (out / "build.json").write_text(json.dumps(record, indent=1))
    print(f"SpikingJelly native CUDA: built {', '.join(ops)} in {record['seconds']} s ({arch})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build LIF and PLIF into --out")
    b.add_argument("--sdist", required=True, type=Path)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--ops", default=",".join(OPS))
    b.add_argument("--timeout", type=float, default=240.0, help="seconds for the whole build")
    s = sub.add_parser("status", help="print whether --out holds a usable build")
    s.add_argument("--out", required=True, type=Path)
    c = sub.add_parser("_compile")  # one op, in its own process (internal)
    c.add_argument("op")
    c.add_argument("source", type=Path)
    c.add_argument("build", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "build":
        return build(args.sdist, args.out, tuple(args.ops.split(",")), args.timeout)
    if args.cmd == "status":
        why = not_built(args.out)
        print(f"not built: {why}" if why else f"built: {site_dir(args.out)}")
        return 1 if why else 0
    _compile_one(args.op, args.source, args.build)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
