#!/usr/bin/env bash
# The main job: sets up and builds (scripts/setup.sh, into the project's virtual environment .venv), runs
# the demo (the fused op checked against the reference, then time and peak memory against the notebook
# baseline, the package's bmm module), then a quick benchmark sweep against that baseline and PyTorch
# SDPA (bench/sweep.py --quick). GPU if there is one.
# Arguments go to the demo (python -m sagan_attn --help). SAGAN_ATTN_SKIP_SETUP=1 skips the set-up
# (an environment that is already installed and built). The sweep's files go to build/bench-quick/;
# the benchmark of record is `python bench/sweep.py` (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SAGAN_ATTN_SKIP_SETUP:-0}" != "1" ]; then
  bash scripts/setup.sh
fi
source scripts/venv.sh
venv_require demo.sh
"$PY" -m sagan_attn "$@"
echo
echo "== quick benchmark sweep (bench/sweep.py --quick) =="
"$PY" bench/sweep.py --quick --out build/bench-quick
