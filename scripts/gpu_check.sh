#!/usr/bin/env bash
# Every check of snncc that needs a CUDA GPU, in one command, for a GPU machine.
#
#   bash scripts/gpu_check.sh --pack     # beforehand, on a machine with the peers installed
#   bash scripts/gpu_check.sh            # on the GPU machine: GPU tests, then the suite
#   bash scripts/gpu_check.sh --bench    # on the GPU machine: the like-for-like tables only
#   bash scripts/gpu_check.sh --multi    # on the GPU machine: the multi-device check (issue 13):
#                                        # the time-chunk pipeline's stages on CUDA streams of
#                                        # one GPU, measured overlap vs the simulation
#                                        # (benchmarks/scaling.py --gpu-streams, at most
#                                        # MULTI_TIMEOUT=300 s; $OUT/scaling_gpu_streams.json)
#
# What it does, each step bounded in time so the whole call fits in one device call:
#   1. installs what is missing: wheels carried in .whl/ (e.g. cupy-cuda13x, or
#      cupy-cuda12x for a CUDA 12 driver), pure-Python peers carried in
#      .whl/site/ by --pack (SpikingJelly, snnTorch, Norse and their small
#      pure-Python dependencies), and snncc itself (pip install -e ., offline);
#   2. starts building SpikingJelly's native CUDA neurons (LIF, PLIF) from the sdist
#      that --pack put in .whl/sdist/ (benchmarks/sj_native.py, nvcc, at most
#      SJ_BUILD_TIMEOUT s; in the background while the tests run), so that the suite's
#      sj-native peer runs, or its row says "n/a: not built: <reason>";
#   3. (not with --bench) pytest -m gpu on tests/test_cuda_backend.py: cuda == reference
#      backend on the same GPU for the equivalence models and every neuron form (spikes and
#      membranes exactly in fp32, gradients within 1e-4 relative), CUDA-graph replay, uint8
#      spikes, time-chunked forward and training, tf32/bf16/fp16 spike agreement, 16-bit
#      kernel I/O, to_torch, and a training loop on the bundled digits example compared
#      with eager SpikingJelly (loss curves -> $OUT/digits_loss_curves.json); and
#      tests/test_recurrent_fused.py -m gpu: the fused recurrent-group kernels on the GPU
#      equal the host's bit for bit (outputs, states, kernel-written gradients), and a
#      fused group under torch.compile(fullgraph=True) equals its eager run;
#      tests/test_jax_pallas.py: the jax backend's Pallas (Triton) neuron kernels against its
#      lax.scan path on this GPU (spikes, values and gradients; needs jax with CUDA);
#   3c. (not with --bench) snncc deploy's CUDA target: pytest -m gpu on tests/test_deploy.py
#      deploys the digits model, builds the tree with CMake + Ninja for this GPU's
#      architecture only (-DSNNCC_CUDA=ON), and checks snncc_run's output spikes on the
#      359-digit test split against the cuda backend (bit for bit), T=4+4 streaming against
#      T=8, the final membranes (within 1e-5), and times batch-1 streaming per step
#      (-> $OUT/deploy_cuda.json); at most DEPLOY_TIMEOUT=180 s (the build is well under
#      a minute: on the 2-core development VM, at load 7, nvcc compiled the digits tree's
#      CUDA sources for sm_80 and sm_90 in 26 s; a CPU build of the same tree took 24 s);
#   3d. the host cost of one neuron layer call on the cuda path, per direction
#      (benchmarks/host_overhead.py --device cuda; issue 16: at most 30 us) into summary.txt;
#   4. the benchmark suite (benchmarks/run.py --device cuda): like-for-like ratios
#      (snncc fp32 eager vs SpikingJelly fp32 eager, native/triton/torch; snncc CUDA graph
#      vs SpikingJelly's StaticCudaGraph; snncc bf16 vs SpikingJelly under bf16 autocast;
#      tf32 vs tf32), every peer in its own process, timed the same way, with spreads;
#      R1 (the recurrent workload, issue 16: goal training step >= 3x SpikingJelly) with
#      its rows copied into summary.txt.
#
# Time (--bench, the tables): about 30 s of setup; the native build, which runs beside
# nothing that is timed (about 80 s of nvcc per op for sm_90, measured on the development
# VM; the two ops build side by side, so expect 1-2 minutes; capped at
# SJ_BUILD_TIMEOUT=180); then the suite for the rest of TOTAL_SECONDS (default 540:
# with a machine start of a minute or two, about 10 minutes of device time), about
# 340 s. The suite runs its peers in priority order (benchmarks/peers.py GPU_PEERS):
# the nine of the like-for-like columns first (snncc fp32/graph/bf16/tf32, SpikingJelly
# triton fp32/graph/bf16/tf32 and native; about 3-4 minutes, estimated from the H200
# run's per-case times plus a process start, device warm-up and stable warm-up per
# peer), then C1 with cuDNN's measured convolution algorithms for snncc and SpikingJelly
# alike (issue 16, goal 5; C1 only, so well under a minute), then snncc jax (lax.scan
# neurons) and snncc jax with Pallas (Triton) neuron kernels on L1/L2 (a process per
# case each; the table adds "snncc-jax-pallas /
# snncc-cuda", issue 16's goal <= 1.3x), snnTorch, Norse, SpikingJelly torch,
# torch.compile and the explanatory variants as the budget allows. What it does not
# reach is recorded as "n/a: the run's time budget was spent"; a second call with
# PEERS=sj-torch,torch-compile,... SJ_NATIVE=0 times the rest.
#
# Everything lands in $OUT (default ./gpu_results), at most 8 files:
#   summary.txt, pytest_gpu.log, digits_loss_curves.json, deploy_cuda.json,
#   bench_cuda.{json,md,png}, logs.tgz (nvidia-smi, versions, junit xml, the deploy
#   check's pytest log, the native build's logs, every benchmark worker's log).
# Knobs (environment): PYTHON (python3), SUITE (L1,L2,M1,C1,R1), PEERS (comma-separated;
# default: benchmarks/peers.py's GPU_PEERS), ROUNDS (1), TESTS (a pytest -k expression),
# PROFILE=1 (benchmarks/profile_step.py into logs.tgz, at most PROFILE_TIMEOUT=90 s),
# PYTEST_TIMEOUT (default 240), SJ_NATIVE=0 (skip the native build), SJ_BUILD_TIMEOUT
# (180), DEPLOY_TIMEOUT (180), SKIP_DEPLOY=1, BENCH_BUDGET (seconds for the suite; default
# and cap: what is left of TOTAL_SECONDS, default 570, or 540 with --bench), SKIP_BENCH=1.
# The deploy check needs cmake and ninja: --pack carries their wheels in .whl/tools/
# (about 30 MB; PACK_DEPLOY_TOOLS=0 leaves them out where the GPU machine has them).
#
# On this workplace's device tool: run `bash scripts/gpu_check.sh --pack` here first,
# then `run` with carry [".whl"] and the command `bash scripts/gpu_check.sh --bench`
# (timeout_s 600).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"

# ------------------------------------------------------------------ --pack
if [ "${1:-}" = "--pack" ]; then
    # Copy the pure-Python peers from this machine's environment into .whl/site/
    # (ignored by git; carried to the GPU machine, which has no package index), and
    # download SpikingJelly's sdist (its native CUDA sources) into .whl/sdist/.
    dest="$ROOT/.whl/site"
    mkdir -p "$dest"
    for pkg in spikingjelly snntorch norse nir nirtorch loguru; do
        # where the import finds it (a venv may reach another one's site-packages via .pth)
        site=$("$PY" -c "import importlib.util as u, os, sys; s = u.find_spec(sys.argv[1]); \
print(os.path.dirname(s.submodule_search_locations[0]) if s and s.submodule_search_locations else '')" \
            "$pkg" 2>/dev/null)
        if [ -n "$site" ] && [ -d "$site/$pkg" ]; then
            rm -rf "${dest:?}/$pkg"
            cp -r "$site/$pkg" "$dest/$pkg"
            find "$dest/$pkg" -name __pycache__ -type d -prune -exec rm -rf {} +
            cp -r "$site/$pkg"-*.dist-info "$dest/" 2>/dev/null || true
            echo "packed $pkg"
        else
            echo "not installed here, not packed: $pkg"
        fi
    done
    sj=$("$PY" -c "from importlib.metadata import version; print(version('spikingjelly'))" 2>/dev/null)
    if [ -n "$sj" ]; then
        mkdir -p "$ROOT/.whl/sdist"
        rm -f "$ROOT"/.whl/sdist/spikingjelly-*
        "$PY" -m pip download -q --no-deps --no-binary :all: -d "$ROOT/.whl/sdist" "spikingjelly==$sj" \
            && echo "downloaded the spikingjelly $sj sdist (native CUDA sources)" \
            || echo "could not download the spikingjelly $sj sdist: sj-native will be n/a"
    fi
    if [ "${PACK_DEPLOY_TOOLS:-1}" != "0" ]; then
        # cmake and ninja for the deploy check (step 3c), the versions installed here
        mkdir -p "$ROOT/.whl/tools"
        rm -f "$ROOT"/.whl/tools/*.whl
        tools=""
        for pkg in cmake ninja; do
            v=$("$PY" -c "from importlib.metadata import version; print(version('$pkg'))" 2>/dev/null)
            tools="$tools $pkg${v:+==$v}"
        done
        "$PY" -m pip download -q --only-binary=:all: --no-deps -d "$ROOT/.whl/tools" $tools \
            && echo "downloaded$tools (the deploy check's build tools)" \
            || echo "could not download$tools: the deploy check needs cmake and ninja on the GPU machine"
    fi
    du -sh "$ROOT/.whl"
    exit 0
fi
BENCH_ONLY=0
[ "${1:-}" = "--bench" ] && BENCH_ONLY=1
MULTI_ONLY=0
[ "${1:-}" = "--multi" ] && MULTI_ONLY=1 && SJ_NATIVE=0

OUT="${OUT:-$ROOT/gpu_results}"
mkdir -p "$OUT"
LOGS="$(mktemp -d)"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1
export SNNCC_CACHE_DIR="${SNNCC_CACHE_DIR:-/tmp/snncc-cache}"
START=$(date +%s)
TOTAL="${TOTAL_SECONDS:-$([ $BENCH_ONLY = 1 ] && echo 540 || echo 570)}"
NATIVE_DIR=/tmp/sj-native
BUILD_PID=""

say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }

finish() {
    [ -n "$BUILD_PID" ] && kill "$BUILD_PID" 2>/dev/null
    if [ -d "$OUT/bench/bench_cuda_logs" ]; then
        mv "$OUT/bench/bench_cuda_logs" "$LOGS/bench_logs"
    fi
    if [ -d "$NATIVE_DIR" ]; then
        mkdir -p "$LOGS/sj_native"
        cp "$NATIVE_DIR"/build.json "$NATIVE_DIR"/NOT_BUILT "$NATIVE_DIR"/build/*.log \
            "$LOGS/sj_native/" 2>/dev/null
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
if ls .whl/tools/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/snncc-tools .whl/tools/*.whl >> "$LOGS/install.log" 2>&1 \
        && export PATH="/tmp/snncc-tools/bin:$PATH" \
            PYTHONPATH="/tmp/snncc-tools${PYTHONPATH:+:$PYTHONPATH}" \
        || say "installing the carried cmake/ninja failed (see logs.tgz: install.log)"
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

# ------------------------------------------------------------------ multi-device (--multi)
if [ $MULTI_ONLY = 1 ]; then
    say "multi-device: pipeline stages on CUDA streams of one GPU (benchmarks/scaling.py --gpu-streams, at most ${MULTI_TIMEOUT:-300}s)"
    timeout "${MULTI_TIMEOUT:-300}" "$PY" benchmarks/scaling.py --gpu-streams --out "$OUT" \
        > "$LOGS/scaling_gpu_streams.log" 2>&1
    rc=$?
    say "gpu streams: exit $rc"
    [ -f "$OUT/scaling_gpu_streams.json" ] && head -c 3000 "$OUT/scaling_gpu_streams.json" >> "$SUMMARY"
    exit "$rc"
fi

# ------------------------------------------------------------------ 2. native SpikingJelly (background)
if [ "${SJ_NATIVE:-1}" != "0" ]; then
    sdist=$(ls .whl/sdist/spikingjelly-*.tar.gz 2>/dev/null | head -1)
    say "building SpikingJelly's native CUDA LIF/PLIF from ${sdist:-<no sdist>} (at most ${SJ_BUILD_TIMEOUT:-180}s, background)"
    "$PY" benchmarks/sj_native.py build --sdist "${sdist:-.whl/sdist/missing.tar.gz}" \
        --out "$NATIVE_DIR" --timeout "${SJ_BUILD_TIMEOUT:-180}" > "$LOGS/sj_native.log" 2>&1 &
    BUILD_PID=$!
    export SJ_NATIVE_DIR="$NATIVE_DIR"
fi

"$PY" - > "$LOGS/versions.txt" 2>&1 <<'PYEOF'
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
PYEOF
say "versions: $(grep -E '^(snncc|torch|cupy|spikingjelly|snntorch|norse|jax) ' "$LOGS/versions.txt" | awk '{print $1"="$2}' | tr '\n' ' ')"
grep -q MISSING "$LOGS/versions.txt" && say "missing: $(grep MISSING "$LOGS/versions.txt" | cut -d' ' -f1 | tr '\n' ' ')"
if ! "$PY" -c "import cupy, torch; assert torch.cuda.is_available(); cupy.cuda.runtime.getDeviceCount()" \
        >> "$LOGS/install.log" 2>&1; then
    say "no usable CuPy + GPU: the GPU tests will skip. Carry a CuPy wheel in .whl/ (pip download --only-binary=:all: cupy-cuda13x or cupy-cuda12x)"
fi

# ------------------------------------------------------------------ 3. GPU tests
rc=0
if [ $BENCH_ONLY = 0 ]; then
    say "pytest -m gpu (timeout ${PYTEST_TIMEOUT:-240}s)"
    SNNCC_GPU_OUT="$OUT" timeout "${PYTEST_TIMEOUT:-240}" "$PY" -m pytest tests/test_cuda_backend.py \
        tests/test_recurrent_fused.py tests/test_jax_pallas.py -m gpu ${TESTS:+-k "$TESTS"} \
        -q -rs --durations=15 -p no:cacheprovider \
        --junitxml="$LOGS/pytest_gpu.xml" -s > "$OUT/pytest_gpu.log" 2>&1
    rc=$?
    say "pytest -m gpu: exit $rc; $(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$OUT/pytest_gpu.log" | tail -1)"
fi

# ------------------------------------------------------------------ 3c. deploy's CUDA target
if [ $BENCH_ONLY = 0 ] && [ "${SKIP_DEPLOY:-0}" != "1" ]; then
    say "deploy CUDA tree: pytest -m gpu tests/test_deploy.py (timeout ${DEPLOY_TIMEOUT:-180}s; cmake: $(command -v cmake || echo none), nvcc: $(command -v nvcc || echo none))"
    SNNCC_GPU_OUT="$OUT" timeout "${DEPLOY_TIMEOUT:-180}" "$PY" -m pytest tests/test_deploy.py \
        -m gpu -q -rs -s -p no:cacheprovider > "$LOGS/pytest_deploy_gpu.log" 2>&1
    drc=$?
    [ $rc = 0 ] && rc=$drc
    say "deploy CUDA: exit $drc; $(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$LOGS/pytest_deploy_gpu.log" | tail -1)"
    grep -E 'SKIPPED|spikes_differ|accuracy|membranes|streaming|us_per_step|build_seconds' \
        "$LOGS/pytest_deploy_gpu.log" | head -12 >> "$SUMMARY"
fi

# ------------------------------------------------------------------ 3b. profile (diagnostic)
if [ "${PROFILE:-0}" = "1" ] && "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    say "profiling a few snncc steps (benchmarks/profile_step.py -> logs.tgz: profile.txt)"
    timeout "${PROFILE_TIMEOUT:-90}" "$PY" benchmarks/profile_step.py --out "$LOGS/profile.txt" \
        > "$LOGS/profile.log" 2>&1
    say "profile: exit $?"
fi

# ------------------------------------------------------------------ 3d. host cost per layer
# issue 16's goal: at most 30 us of host time per neuron layer per direction on the cuda
# path (the chain rows: a layer inside a network). Into summary.txt, about 20 s.
if "$PY" -c "import cupy, torch; assert torch.cuda.is_available()" 2>/dev/null; then
    say "host cost per neuron layer call (benchmarks/host_overhead.py --device cuda)"
    timeout 120 "$PY" benchmarks/host_overhead.py --device cuda --json "$LOGS/host_overhead.json" \
        > "$LOGS/host_overhead.log" 2>&1
    say "host_overhead: exit $?"
    cat "$LOGS/host_overhead.log" >> "$SUMMARY"
fi

# ------------------------------------------------------------------ 4. benchmarks
if [ -n "$BUILD_PID" ]; then  # the suite must not time anything while nvcc runs
    wait "$BUILD_PID"
    BUILD_PID=""
    say "$(tail -1 "$LOGS/sj_native.log")"
fi
if [ "${SKIP_BENCH:-0}" != "1" ] && "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    # one device call may run 600 s: the suite gets what is left of TOTAL, less 70 s to
    # stop a case in flight and write the results
    left=$(( TOTAL - ($(date +%s) - START) - 70 ))
    budget="${BENCH_BUDGET:-$left}"
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt 30 ]; then
        say "benchmarks skipped: only ${left}s left of the call"
    else
        say "benchmark suite ${SUITE:-L1,L2,M1,C1,R1} (budget ${budget}s, ${ROUNDS:-1} round(s))"
        timeout $((budget + 60)) "$PY" benchmarks/run.py --suite "${SUITE:-L1,L2,M1,C1,R1}" \
            --device cuda --out "$OUT/bench" --budget "$budget" --rounds "${ROUNDS:-1}" \
            ${PEERS:+--peers "$PEERS"} > "$LOGS/bench.log" 2>&1
        say "benchmarks: exit $?"
        [ -f "$OUT/bench/bench_cuda.md" ] && grep -E '^\|' "$OUT/bench/bench_cuda.md" | head -40 >> "$SUMMARY"
        # issue 16's recurrent goal: the R1 training step at least 3x SpikingJelly's
        if [ -f "$OUT/bench/bench_cuda.md" ]; then
            # issue 16's host-cost goal: the L1 T=4 training step under 0.25 ms, eager
            # (snncc-cuda) and with the whole step in CUDA graphs (snncc-cuda-module-graphed)
            echo "L1 (goal: T=4 training step (fwd+bwd) < 0.25 ms; snncc-cuda eager, snncc-cuda-module-graphed: torch.compile reduce-overhead):" >> "$SUMMARY"
            awk '/^## L1/{f=1; next} /^## /{f=0} f && /^\|/' "$OUT/bench/bench_cuda.md" >> "$SUMMARY"
            echo "R1 (goal: training step (fwd+bwd) >= 3x SpikingJelly; snncc-cuda fuses the recurrent group, snncc-cuda-step does not):" >> "$SUMMARY"
            awk '/^## R1/{f=1; next} /^## /{f=0} f && /^\|/' "$OUT/bench/bench_cuda.md" >> "$SUMMARY"
            # issue 16's convolution goals: C1 fp32 >= 1.0x SpikingJelly, tf32 >= 1.5x; the
            # measured-cuDNN columns say whether cuDNN's own choice closes the fp32 gap
            echo "C1 (goals: fp32 >= 1.0x SpikingJelly, tf32 >= 1.5x; snncc-cuda-cudnn / sj-triton-cudnn: cuDNN's measured algorithms, both sides):" >> "$SUMMARY"
            awk '/^## C1/{f=1; next} /^## /{f=0} f && /^\|/' "$OUT/bench/bench_cuda.md" >> "$SUMMARY"
            grep -F 'measured vs heuristic' "$OUT/bench/bench_cuda.md" >> "$SUMMARY" || true
        fi
    fi
else
    say "benchmarks skipped (SKIP_BENCH=1 or no GPU)"
fi
exit "$rc"
