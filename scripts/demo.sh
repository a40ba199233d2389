#!/usr/bin/env bash
# The main job: sets up and builds (scripts/setup.sh), then runs the demo, which checks the fused op
# against the reference and prints time and peak memory against the notebook module (GPU if any).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m sagan_attn "$@"
