#!/usr/bin/env bash
# Builds sagan-attn against a CUDA build of torch, for one arch (TORCH_CUDA_ARCH_LIST, default 9.0), in
# its own virtual environment, then runs the pytest suite with that build. On a machine without a GPU
# this is what CI can check of the CUDA code: every .cu compiles and links, the library loads with its
# CUDA kernels registered, the CPU tests pass, and the CUDA tests skip cleanly.
#   SAGAN_ATTN_CUDA_VENV   the environment (default build/venv-cuda)
#   SAGAN_ATTN_CUDA_TORCH  the torch to install there (default torch==2.14.1, a CUDA 13 build)
# Needs nvcc of CUDA 13 (CUDACXX, CUDA_HOME/bin or /usr/local/cuda/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SAGAN_ATTN_CUDA_VENV:-build/venv-cuda}"
TORCH_SPEC="${SAGAN_ATTN_CUDA_TORCH:-torch==2.14.1}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export SAGAN_ATTN_BUILD_DIR="${SAGAN_ATTN_CUDA_BUILD_DIR:-build/cuda-check}"
export SAGAN_ATTN_BUILD_TESTS=0

if [ -z "${CUDACXX:-}" ] && ! command -v nvcc > /dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "cuda_build_check: no nvcc found (set CUDACXX or CUDA_HOME)" >&2
  exit 1
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"  # its cmake and ninja
echo "== CUDA build check: installing $TORCH_SPEC into $VENV =="
# The CUDA torch first, then the build tools (requirements-dev.txt without its CPU torch pin).
"$PY" -m pip install -q "$TORCH_SPEC" $(grep -v -E '^\s*(#|$|torch[=<> ])' requirements-dev.txt)
"$PY" -c "import torch; assert torch.version.cuda, 'this torch has no CUDA'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

echo "== CUDA build check: building for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST =="
# Not editable: the CPU build's _C in python/sagan_attn stays untouched; this one goes to $VENV, with
# the extras' dependencies that the tests use (torch is none of them: the CUDA torch above stays).
# The PTX semantics check (tests/emulation/mma) is compiled with the kernels, so it never rots.
CMAKE_ARGS="${CMAKE_ARGS:-} -DSAGAN_ATTN_BUILD_PTX_CHECK=ON" "$PY" -m pip install -q --no-build-isolation ".[train,bench,test]"
"$PY" - <<'PYEOF'
import torch, sagan_attn
info = sagan_attn.build_info()
print("sagan_attn build_info:", info)
assert str(info["cuda"]).lower() == "true", "the CUDA kernels were not built"
assert torch._C._dispatch_has_kernel_for_dispatch_key("sagan::self_attn_fwd", "CUDA"), "no CUDA kernel registered"
PYEOF

export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor-cache-cuda}"  # this build's own
echo "== CUDA build check: pytest with the CUDA build =="
# From tests/python's parent, with python/ off sys.path: the package under test is the one in $VENV.
"$PY" -m pytest tests/python -q -ra -p no:cacheprovider "$@"
