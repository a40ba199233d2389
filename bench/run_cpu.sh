#!/usr/bin/env bash
# The CPU benchmark of record: bench/sweep.py on the CPU in float32 (the model shapes at a 16th of their
# GPU batch, the CPU targets at N=4096 (group cpu-target: B=4 C=64, the same with Nk=1024, B=1 C=128),
# the scaling sweep N=1024..16384 at B=1 C=128), written to bench/results/cpu-<date>.{json,md} and .png
# plots. About 10 minutes on 2 quiet cores of an Intel Xeon, 24 on an AMD EPYC (Zen 3), plus flex's
# compilation (5-20 s per shape, in the sweep and again in its memory worker).
# Run from a clean commit on a quiet machine (the record notes the load average; medians on a busy one
# swing). Usage: bash bench/run_cpu.sh [extra sweep flags, e.g. --quick or --only 'cpu-target,scaling']
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/sweep.py --device cpu --dtype float32 "$@"
