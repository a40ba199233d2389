#!/usr/bin/env bash
# Runs every test of sagan-attn: sets up and builds (scripts/setup.sh), then the GoogleTest suite
# (through ctest) and the pytest suite. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== GoogleTest (ctest) =="
ctest --test-dir "${SAGAN_ATTN_BUILD_DIR:-build/cmake}" --output-on-failure
echo "== C++ package (cmake --install, examples/cpp) =="
bash scripts/test_cpp_package.sh
echo "== pytest =="
python -m pytest tests/python -q -ra "$@"
