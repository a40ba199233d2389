#!/usr/bin/env bash
# Sets up development of sagan-attn on a Debian/Ubuntu machine: the system packages it lacks (g++,
# GoogleTest, python3-venv), the project's virtual environment (.venv, see scripts/venv.sh) with the
# pinned torch, the build tools and the extras' dependencies, and the editable build of the extension
# with the GoogleTest suite. Idempotent and quick: when requirements-dev.txt, pyproject.toml, setup.py,
# version.txt and the build folder are those of the last run (a stamp in the environment), apt and pip are
# skipped and only the build runs again (incremental: what changed is recompiled).
#   SAGAN_ATTN_VENV       the environment (default .venv)
#   SAGAN_ATTN_BUILD_DIR  the CMake build (default build/cmake)
#   PYTHON                the Python that creates the environment (default python3, 3.9 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/venv.sh
export SAGAN_ATTN_BUILD_DIR="${SAGAN_ATTN_BUILD_DIR:-build/cmake}"
# scripts/test.sh runs the GoogleTest suite: here it is required, not optional as for a user's install.
export SAGAN_ATTN_BUILD_TESTS=ON
BASE_PY="${PYTHON:-python3}"
STAMP="$VENV/.sagan-attn-setup"
key="$(cat requirements-dev.txt pyproject.toml setup.py version.txt | sha256sum | cut -d' ' -f1) $SAGAN_ATTN_BUILD_DIR"

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ]; then
  echo "setup: $VENV is up to date (no apt, no pip); building what changed"
  # The editable install's own build step (setup.py), without pip: reconfigures the CMake build only
  # when needed (e.g. after a wheel build reused it) and recompiles what changed.
  "$PY" setup.py -q build_ext --inplace
  exit 0
fi

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: apt-get install $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" > /dev/null
}

# GoogleTest: Debian's libgtest-dev is built with the C++11 ABI that the torch wheel uses since 2.7.
need=()
compgen -G "/usr/lib/*/cmake/GTest/GTestConfig.cmake" > /dev/null || [ -f /usr/lib/cmake/GTest/GTestConfig.cmake ] \
  || need+=(libgtest-dev)
command -v g++ > /dev/null || need+=(g++)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

"$BASE_PY" -c 'import sys; assert sys.version_info >= (3, 9), "Python 3.9 or newer is needed, got " + sys.version'
if [ ! -x "$PY" ]; then
  # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) separately, in python3-venv.
  if ! "$BASE_PY" -m venv "$VENV"; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$BASE_PY" -m venv "$VENV"
  fi
fi
echo "setup: installing into $VENV"
"$PY" -m pip install -q -r requirements-dev.txt
# --no-build-isolation: build against the torch installed above, not a freshly fetched one.
"$PY" -m pip install -q --no-build-isolation -e ".[train,bench,test]"
echo "$key" > "$STAMP"
