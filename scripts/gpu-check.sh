#!/usr/bin/env bash
# GPU check of the Triton backend: its tests on the GPU, then `l2bn bench --device cuda`,
# on a machine with one NVIDIA GPU, in under 9 minutes. Everything goes to one folder:
#   environment.txt  torch, CUDA, GPU, which L2BN backend runs what
#   tests.txt        pytest of the Triton tests (GPU-only ones and SyncL2BatchNorm over NCCL
#                    included) and torch.compile
#   bench.txt        the benchmark's table;  bench.json  its results
#   summary.txt      exit codes and durations
#
# Usage: scripts/gpu-check.sh [OUTPUT_DIR]      (default: gpu-check-YYYYmmdd-HHMMSS)
# Time limits (seconds): GPU_CHECK_TESTS_S (default 240), GPU_CHECK_BENCH_S (default 270).
# With pytest-xdist the tests run in 8 processes (the kernels compile in parallel; serially
# they took over 180 s on an H200 machine, most of it Triton compiling).
# Python: $PYTHON if set, else the first of .venv/bin/python and python3 whose torch sees
# CUDA. The library runs from this source tree (nothing is built or installed: the GPU path
# is Triton, compiled at first use); pytest must be importable.
set -uo pipefail
cd "$(dirname "$0")/.."

out="${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

sees_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
py="${PYTHON:-}"
if [ -z "$py" ]; then
    for candidate in .venv/bin/python python3; do
        if command -v "$candidate" >/dev/null 2>&1 && sees_cuda "$candidate"; then
            py="$candidate"
            break
        fi
    done
fi
if [ -z "$py" ] || ! sees_cuda "$py"; then
    echo "gpu-check: no Python whose torch sees a CUDA GPU (set PYTHON=...)" | tee "$out/summary.txt" >&2
    exit 2
fi

{
    date -u
    nvidia-smi 2>&1 || true
    "$py" - <<'PY'
import torch, l2bn
print("python torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton missing:", exc)
print(l2bn.backends.status())
PY
} >"$out/environment.txt" 2>&1

start=$(date +%s)
workers=()
if "$py" -c 'import xdist' 2>/dev/null; then
    workers=(-n 8)
fi
timeout "${GPU_CHECK_TESTS_S:-240}" "$py" -m pytest -q -p no:cacheprovider -rfEs --tb=short \
    "${workers[@]}" \
    tests/test_triton_gpu.py tests/test_triton_kernels.py tests/test_triton_launches.py \
    tests/test_triton_sync.py tests/test_triton_direct.py tests/test_triton_bench.py \
    tests/test_core_compile.py \
    >"$out/tests.txt" 2>&1
tests_rc=$?
mid=$(date +%s)
timeout "${GPU_CHECK_BENCH_S:-270}" "$py" -m l2bn.cli bench --device cuda --output "$out/bench.json" >"$out/bench.txt" 2>&1
bench_rc=$?
end=$(date +%s)

{
    echo "python: $py"
    echo "tests: exit $tests_rc in $((mid - start)) s (124: timed out)"
    echo "bench: exit $bench_rc in $((end - mid)) s (124: timed out)"
    tail -n 3 "$out/tests.txt"
} | tee "$out/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
