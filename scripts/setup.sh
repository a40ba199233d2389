#!/usr/bin/env bash
# Installs everything sagan-attn needs on a fresh Debian machine, then builds it (editable).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# GoogleTest (Debian's libgtest-dev, built with the C++11 ABI that the torch wheel uses since 2.7).
if [ ! -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ] && [ ! -f /usr/lib/cmake/GTest/GTestConfig.cmake ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libgtest-dev g++ > /dev/null
fi

python -m pip install -q -r requirements-dev.txt
# --no-build-isolation: build against the torch installed above, not a freshly fetched one.
python -m pip install -q --no-build-isolation -e .
