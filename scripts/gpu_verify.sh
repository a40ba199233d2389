#!/usr/bin/env bash
# GPU verification of the CUDA kernels, in one run on a machine with an NVIDIA GPU (H100/H200), against
# the torch installed there: build for this GPU's arch only, the CUDA tests, compute-sanitizer memcheck
# and racecheck on a small forward + backward through every kernel, the whole pytest suite, and the
# first benchmark rows. Logs go to $OUT (default build/gpu-verify); the exit status is the first failure.
#   TORCH_CUDA_ARCH_LIST  default: this GPU's (e.g. 9.0)      MAX_JOBS  default 16
# Missing pure-Python test dependencies (expecttest) can be given as wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu-verify}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-16}" SAGAN_ATTN_BUILD_TESTS=0 SAGAN_ATTN_BUILD_DIR=build/gpu PYTHONUNBUFFERED=1
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)"
  export TORCH_CUDA_ARCH_LIST
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
status=0
step() {  # step NAME COMMAND...: runs, logs to $OUT/NAME.log, remembers the first failure
  local name=$1; shift
  echo "== $name =="
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc =="
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
  return $rc
}
{ nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; git rev-parse HEAD; } > "$OUT/env.log" 2>&1
# First: do mma.sync / ldmatrix behave as the host emulation assumes (bitwise, one warp)?
step ptx_semantics bash -c "nvcc -std=c++17 -arch=sm_${TORCH_CUDA_ARCH_LIST//./} -I. kernels/cuda/mma/host_emulation/mma_ptx_semantics_check.cu -o /tmp/mma_ptx_check && /tmp/mma_ptx_check"
step build "$PY" -m pip install --no-build-isolation --no-deps -v -e . || exit 1
step pytest_cuda "$PY" -m pytest tests/python/test_cuda.py -q -ra
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" tests/cuda/sanitize_case.py
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" tests/cuda/sanitize_case.py
step pytest_all "$PY" -m pytest tests/python -q -ra -x
exit $status
