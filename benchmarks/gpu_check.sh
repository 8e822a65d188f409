#!/usr/bin/env bash
# The GPU check, sized for under 8 minutes on one H200: build the CUDA extension, run the kernel
# tests on CUDA tensors (CUDA extension and Triton), then benchmark (benchmarks/bench_gpu.py).
#
# Usage, from anywhere:  benchmarks/gpu_check.sh [OUT_DIR]
#   OUT_DIR defaults to $OUT, else ./gpu_check_out. It receives one log per stage, summary.txt,
#   tests.xml, results.json and results.md, each written as its stage goes, so a stage that fails
#   or runs out of time leaves the earlier results in place.
# Environment: PYTHON (default python3, which must have a CUDA build of torch), STAGE_SCALE
#   (multiplies every stage's time limit; default 1). Wheels in .whl/ (e.g. vector-quantize-pytorch
#   and its dependencies, for a machine without a package index) are installed first into a
#   private folder; see docs/gpu.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${1:-${OUT:-$ROOT/gpu_check_out}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$ROOT"

PY=${PYTHON:-python3}
SCALE=${STAGE_SCALE:-1}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/patchvq_gpu_ext}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
unset TRITON_INTERPRET PATCHVQ_BACKEND

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: $PY has no CUDA build of torch, or sees no GPU; nothing to check" | tee "$OUT_DIR/summary.txt"
  exit 2
fi
# Build for the GPU present only (a JIT build for the local card).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}

if compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/patchvq_site \
    "$ROOT"/.whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/patchvq_site"
fi

: > "$OUT_DIR/summary.txt"
FAILED=0

# stage NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output in OUT_DIR/NAME.log.
stage() {
  local name=$1 limit=$2 start rc=0
  shift 2
  limit=$(awk -v s="$limit" -v f="$SCALE" 'BEGIN { printf "%d", s * f }')
  start=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - start ))
  if [ "$rc" -eq 0 ]; then
    echo "$name: ok in ${took}s" | tee -a "$OUT_DIR/summary.txt"
  else
    [ "$rc" -eq 124 ] && why="timed out" || why="exit $rc"
    echo "$name: FAILED ($why) after ${took}s, see $name.log" | tee -a "$OUT_DIR/summary.txt"
    FAILED=1
  fi
  tail -n 25 "$OUT_DIR/$name.log"
}

stage env 20 bash -c "nvidia-smi; $PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'; \
  command -v nvcc && nvcc --version | tail -n 2; $PY -m patchvq info --no-build"

stage build 150 "$PY" -c "
from patchvq.ops import native
native.cpu_extension()
native.cuda_extension()
from patchvq import info
print(info.format_info(info.collect()))
"

TESTS=(tests/test_gpu_kernels.py tests/test_triton_ops.py)
for t in tests/test_nearest_code.py tests/test_code_stats.py tests/test_patch_assign.py tests/test_layers_on_device.py \
  tests/test_ops_library.py tests/test_gpu_sync.py; do
  [ -f "$t" ] && TESTS+=("$t")
done
# Several workers share the GPU so that Triton's first compilations overlap (pytest-xdist, if present).
PARALLEL=()
"$PY" -c "import xdist" 2> /dev/null && PARALLEL=(-n 4)
stage tests 140 env PATCHVQ_TEST_DEVICE=cuda "$PY" -m pytest "${TESTS[@]}" "${PARALLEL[@]}" -m "not slow" -q -rs \
  -p no:cacheprovider --junitxml="$OUT_DIR/tests.xml"

stage bench 170 "$PY" benchmarks/bench_gpu.py --out "$OUT_DIR" \
  --budget "$(awk -v f="$SCALE" 'BEGIN { printf "%d", 155 * f }')"

echo "== summary"
cat "$OUT_DIR/summary.txt"
[ -f "$OUT_DIR/results.md" ] && cat "$OUT_DIR/results.md"
exit "$FAILED"
