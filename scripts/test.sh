#!/usr/bin/env bash
# Runs every test of sagan-attn: sets up and builds (scripts/setup.sh: the project's virtual environment,
# .venv; quick when nothing changed), then the GoogleTest suite (through ctest), the C++ package test and
# the pytest suite, all with the environment's tools and python. Exits non-zero if anything fails.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/venv.sh
venv_require test.sh
echo "== GoogleTest (ctest) =="
# Two at a time: the host emulation tests run one emulated thread at a time, a core each.
ctest --test-dir "${SAGAN_ATTN_BUILD_DIR:-build/cmake}" --output-on-failure --parallel "${CTEST_PARALLEL_LEVEL:-2}"
echo "== C++ package (cmake --install, examples/cpp) =="
bash scripts/test_cpp_package.sh
# torch.compile's inductor cache of this build, not the machine's shared /tmp one (compiled code of
# an older op schema must never be served to this build).
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor-cache}"
echo "== pytest =="
"$PY" -m pytest tests/python -q -ra "$@"
