#!/usr/bin/env bash
# The C++ package as a LibTorch user gets it: installs the built library (cmake --install) into a fresh
# prefix, configures and builds examples/cpp against it with find_package(sagan_attn), and runs it (it
# checks forward and backward against plain ATen and exits non-zero on a mismatch). Needs a build
# (scripts/setup.sh) and uses its virtual environment's torch and cmake; scripts/test.sh runs this after the
# GoogleTest suite.
#   SAGAN_ATTN_BUILD_DIR      the CMake build to install (default build/cmake)
#   SAGAN_ATTN_INSTALL_PREFIX where to install it (default build/install; emptied first)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
venv_require test_cpp_package.sh
BUILD_DIR="${SAGAN_ATTN_BUILD_DIR:-build/cmake}"
PREFIX="$(mkdir -p "${SAGAN_ATTN_INSTALL_PREFIX:-build/install}" && cd "${SAGAN_ATTN_INSTALL_PREFIX:-build/install}" && pwd)"
EXAMPLE_BUILD=build/example-cpp

# A fresh prefix, so that a file the install rules forgot cannot linger from an earlier run.
rm -rf "$PREFIX"
cmake --install "$BUILD_DIR" --prefix "$PREFIX"
echo "installed into $PREFIX:"
(cd "$PREFIX" && find . -type f | sort | sed 's/^/  /')

# The public headers only: the consumer sees <prefix>/include and torch, never the source tree.
TORCH_PREFIX="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
# An example build configured against another environment's torch starts afresh (CMake caches the
# torch it found).
if [ -f "$EXAMPLE_BUILD/CMakeCache.txt" ] && ! grep -qxF "Torch_DIR:PATH=$TORCH_PREFIX/Torch" "$EXAMPLE_BUILD/CMakeCache.txt"; then
  rm "$EXAMPLE_BUILD/CMakeCache.txt"
fi
cmake -S examples/cpp -B "$EXAMPLE_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX;$TORCH_PREFIX"
cmake --build "$EXAMPLE_BUILD"
"$EXAMPLE_BUILD/sagan_attn_example"
