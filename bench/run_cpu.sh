#!/usr/bin/env bash
# CPU benchmark of record for now: the demo's sweep (fused SelfAttention2d vs the notebook module,
# median time and peak memory) at B=4, C=64, float32, written to bench/results/ as the printed table
# (.txt) and every figure with device, torch version and git commit (.json).
# Run on a quiet machine: medians on a shared one swing by 10x. Usage: bash bench/run_cpu.sh [extra demo flags]
set -euo pipefail
cd "$(dirname "$0")/.."
stamp="$(date +%Y%m%d-%H%M%S)"
out="bench/results/cpu-${stamp}"
mkdir -p bench/results
python -m sagan_attn --device cpu --batch 4 --channels 64 --sizes 32,64,96,128 --dtype float32 \
  --json "${out}.json" "$@" | tee "${out}.txt"
