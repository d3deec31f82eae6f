#!/usr/bin/env bash
# Every check of snncc that needs a CUDA GPU, in one command, for a GPU machine.
#
#   bash scripts/gpu_check.sh            # on the GPU machine, from the repository root
#   bash scripts/gpu_check.sh --pack     # beforehand, on a machine with the peers installed
#
# What it does, each step bounded in time so the whole run fits in 10 minutes:
#   1. installs what is missing: wheels carried in .whl/ (e.g. cupy-cuda13x, or
#      cupy-cuda12x for a CUDA 12 driver), pure-Python peers carried in
#      .whl/site/ by --pack (SpikingJelly, snnTorch, Norse and their small
#      pure-Python dependencies), and snncc itself (pip install -e ., offline);
#   2. pytest -m gpu on tests/test_cuda_backend.py: cuda == reference backend on
#      the same GPU for the equivalence models and every neuron form (spikes and
#      membranes exactly in fp32, gradients within 1e-4 relative), CUDA-graph
#      replay, uint8 spikes, time-chunked forward and training, tf32/bf16/fp16 spike agreement, 16-bit kernel I/O,
#      to_torch, and a training loop on the bundled digits example compared
#      with eager SpikingJelly (loss curves -> $OUT/digits_loss_curves.json);
#   3. the benchmark suite (benchmarks/run.py --device cuda) against the peers.
#
# Everything lands in $OUT (default ./gpu_results), at most 8 files:
#   summary.txt, pytest_gpu.log, digits_loss_curves.json, bench_cuda.{json,md,png},
#   logs.tgz (nvidia-smi, versions, junit xml, every benchmark worker's log).
# Knobs (environment): PYTHON (python3), SUITE (L1,L2,M1,C1), PEERS (comma-separated;
# default: benchmarks/peers.py's GPU_PEERS), TESTS (a pytest -k expression), PROFILE=1
# (benchmarks/profile_step.py into logs.tgz, at most PROFILE_TIMEOUT=90 s), PYTEST_TIMEOUT (default
# 240), BENCH_BUDGET (seconds for the suite; default and cap: what is left of
# TOTAL_SECONDS, default 570, after the tests), SKIP_BENCH=1.
#
# On this workplace's device tool: run `bash scripts/gpu_check.sh --pack` here
# first, then `run` with carry [".whl"] and the command `bash scripts/gpu_check.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"

# ------------------------------------------------------------------ --pack
if [ "${1:-}" = "--pack" ]; then
    # Copy the pure-Python peers from this machine's environment into .whl/site/
    # (ignored by git; carried to the GPU machine, which has no package index).
    dest="$ROOT/.whl/site"
    mkdir -p "$dest"
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    for pkg in spikingjelly snntorch norse nir nirtorch loguru; do
        if [ -d "$site/$pkg" ]; then
            rm -rf "${dest:?}/$pkg"
            cp -r "$site/$pkg" "$dest/$pkg"
            find "$dest/$pkg" -name __pycache__ -type d -prune -exec rm -rf {} +
            cp -r "$site/$pkg"-*.dist-info "$dest/" 2>/dev/null || true
            echo "packed $pkg"
        else
            echo "not installed here, not packed: $pkg"
        fi
    done
    du -sh "$dest"
    exit 0
fi

OUT="${OUT:-$ROOT/gpu_results}"
mkdir -p "$OUT"
LOGS="$(mktemp -d)"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1
export SNNCC_CACHE_DIR="${SNNCC_CACHE_DIR:-/tmp/snncc-cache}"
START=$(date +%s)

say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }

finish() {
    if [ -d "$OUT/bench/bench_cuda_logs" ]; then
        mv "$OUT/bench/bench_cuda_logs" "$LOGS/bench_logs"
    fi
    for f in "$OUT"/bench/bench_cuda.*; do [ -e "$f" ] && mv "$f" "$OUT/"; done
    rmdir "$OUT/bench" 2>/dev/null || true
    tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null
    rm -rf "$LOGS"
    say "done; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
}
trap finish EXIT

# ------------------------------------------------------------------ 1. setup
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1 || say "nvidia-smi failed: no NVIDIA driver here?"
if ls .whl/*.whl > /dev/null 2>&1; then
    say "installing carried wheels: $(cd .whl && ls ./*.whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/snncc-wheels .whl/*.whl >> "$LOGS/install.log" 2>&1 \
        && export PYTHONPATH="/tmp/snncc-wheels${PYTHONPATH:+:$PYTHONPATH}" \
        || say "installing the carried wheels failed (see logs.tgz: install.log)"
fi
if [ -d .whl/site ]; then
    export PYTHONPATH="$ROOT/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
    say "peers from .whl/site: $(ls .whl/site | grep -v dist-info | tr '\n' ' ')"
fi
if ! "$PY" -c "import snncc.backends.cuda" > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >> "$LOGS/install.log" 2>&1 \
        || { "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/snncc-pkg . \
                 >> "$LOGS/install.log" 2>&1 \
             && export PYTHONPATH="/tmp/snncc-pkg${PYTHONPATH:+:$PYTHONPATH}"; }
fi
"$PY" - > "$LOGS/versions.txt" 2>&1 <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("snncc", "torch", "cupy", "triton", "jax", "spikingjelly", "snntorch", "norse"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as exc:
        print(name, "MISSING:", type(exc).__name__, exc)
import torch
print("cuda available:", torch.cuda.is_available(), "torch cuda:", torch.version.cuda)
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
EOF
say "versions: $(grep -E '^(snncc|torch|cupy|spikingjelly|snntorch|norse|jax) ' "$LOGS/versions.txt" | awk '{print $1"="$2}' | tr '\n' ' ')"
grep -q MISSING "$LOGS/versions.txt" && say "missing: $(grep MISSING "$LOGS/versions.txt" | cut -d' ' -f1 | tr '\n' ' ')"
if ! "$PY" -c "import cupy, torch; assert torch.cuda.is_available(); cupy.cuda.runtime.getDeviceCount()" \
        >> "$LOGS/install.log" 2>&1; then
    say "no usable CuPy + GPU: the GPU tests will skip. Carry a CuPy wheel in .whl/ (pip download --only-binary=:all: cupy-cuda13x or cupy-cuda12x)"
fi

# ------------------------------------------------------------------ 2. GPU tests
say "pytest -m gpu (timeout ${PYTEST_TIMEOUT:-240}s)"
SNNCC_GPU_OUT="$OUT" timeout "${PYTEST_TIMEOUT:-240}" "$PY" -m pytest tests/test_cuda_backend.py \
    -m gpu ${TESTS:+-k "$TESTS"} -q -rs --durations=15 -p no:cacheprovider \
    --junitxml="$LOGS/pytest_gpu.xml" -s > "$OUT/pytest_gpu.log" 2>&1
rc=$?
say "pytest -m gpu: exit $rc; $(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$OUT/pytest_gpu.log" | tail -1)"

# ------------------------------------------------------------------ 2b. profile (diagnostic)
if [ "${PROFILE:-0}" = "1" ] && "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    say "profiling a few snncc steps (benchmarks/profile_step.py -> logs.tgz: profile.txt)"
    timeout "${PROFILE_TIMEOUT:-90}" "$PY" benchmarks/profile_step.py --out "$LOGS/profile.txt" \
        > "$LOGS/profile.log" 2>&1
    say "profile: exit $?"
fi

# ------------------------------------------------------------------ 3. benchmarks
if [ "${SKIP_BENCH:-0}" != "1" ] && "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    # one device call may run 600 s: the suite gets what the tests left (TOTAL_SECONDS,
    # default 570, less 70 s to stop a case in flight and write the results)
    left=$(( ${TOTAL_SECONDS:-570} - ($(date +%s) - START) - 70 ))
    budget="${BENCH_BUDGET:-$left}"
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt 30 ]; then
        say "benchmarks skipped: only ${left}s left of the call after the tests"
    else
        say "benchmark suite ${SUITE:-L1,L2,M1,C1} (budget ${budget}s)"
        timeout $((budget + 60)) "$PY" benchmarks/run.py --suite "${SUITE:-L1,L2,M1,C1}" \
            --device cuda --out "$OUT/bench" --budget "$budget" ${PEERS:+--peers "$PEERS"} \
            > "$LOGS/bench.log" 2>&1
        say "benchmarks: exit $?"
        [ -f "$OUT/bench/bench_cuda.md" ] && grep -E '^\|' "$OUT/bench/bench_cuda.md" | head -40 >> "$SUMMARY"
    fi
else
    say "benchmarks skipped (SKIP_BENCH=1 or no GPU)"
fi
exit "$rc"
