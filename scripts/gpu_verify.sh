#!/usr/bin/env bash
# GPU verification of the CUDA kernels in ONE device call of at most 9 minutes (an H200 with 16 cores),
# against the torch installed there (2.11 under Python 3.12: the build is also the first check that the
# code builds against torch 2.11). It collects what a later session without a GPU needs to fix what
# fails, in 8 files at most under $OUT (default build/gpu-verify/out):
#   gpu_verify.log  environment, the source's commit, the PTX semantics check, each stage's exit and time,
#                   the summary (the last lines of the output, as the device call returns them)
#   build.log       the build for this GPU's arch only (pip -e ., CMake, nvcc; no GoogleTest)
#   pytest.log      pytest's output, every attempt of every stage (-ra, per-test durations)
#   tests.jsonl     one line per test (tests/cuda/outcome_log.py): outcome, duration, parameters; for a
#                   failure the error, the traceback and the locals of the test's frames
#   failures.pt     the tensors (small ones) in the frames of each failed test, moved to the CPU
#   sanitizer.log   compute-sanitizer memcheck, then racecheck if time is left (tests/cuda/sanitize_case.py --quick)
#   bench.json/.md  the first benchmark rows: B=32, C=256, 64x64, bf16, sagan-attn against the notebook
#                   and every SDPA backend (the .md names the fastest), paper and pooled variants
# Stages, most valuable first, each under `timeout` and a shared deadline, so that a hang in one still
# leaves the others' logs: env; build, with the PTX check beside it; the CUDA tests (no -x; a test that
# hangs or kills the CUDA context is recorded and the rest resume in a fresh process); memcheck; bench;
# racecheck; the rest of tests/python.
#
# The device call (scripts/README-gpu.md): here, `bash scripts/gpu_carry_prepare.sh`; then
#   run(command="bash scripts/gpu_verify.sh", carry=[".carry"], timeout_s=540)
# Environment:
#   GPU_VERIFY_BUDGET_S    seconds for the whole script (default 500: done before a 540 s device call ends)
#   GPU_VERIFY_CUDA_TESTS  pytest selection of the CUDA tests (default "tests/python -k cuda": the
#                          device-parametrised matrix, every test's cuda case, and tests/python/test_cuda.py)
#   GPU_VERIFY_DRY_RUN=1   on a machine without a GPU: prove the plumbing. Skips the build (uses the
#                          in-place one) and the sanitizers, compiles the PTX check without running it,
#                          runs the CUDA tests (they skip) and the plugin's own tests, a tiny CPU bench,
#                          and collects the rest of the suite without running it
#   TORCH_CUDA_ARCH_LIST   default: this GPU's (nvidia-smi), e.g. 9.0      MAX_JOBS  default 16
# Exit status: 0 if every stage that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="${PYTHON:-python3}"
DRY="${GPU_VERIFY_DRY_RUN:-0}"
BUDGET="${GPU_VERIFY_BUDGET_S:-500}"
RESERVE=15  # seconds kept for the summary at the end
read -r -a CUDA_TESTS <<< "${GPU_VERIFY_CUDA_TESTS:-tests/python -k cuda}"
if [ -z "${OUT:-}" ]; then
  OUT=build/gpu-verify/out
  rm -rf "$OUT"
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK="$ROOT/build/gpu-verify/work"  # everything that must not come back (8 files at most do)
rm -rf "$WORK"
mkdir -p "$WORK"
LOG="$OUT/gpu_verify.log"
OUT_FILES="gpu_verify.log build.log pytest.log tests.jsonl failures.pt sanitizer.log bench.json bench.md"
for f in $OUT_FILES; do rm -f "$OUT/$f"; done
export MAX_JOBS="${MAX_JOBS:-16}" SAGAN_ATTN_BUILD_TESTS=0 SAGAN_ATTN_BUILD_DIR=build/gpu PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT/tests/cuda${PYTHONPATH:+:$PYTHONPATH}"  # the outcome_log plugin

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - SECONDS)); }
tool() {  # tool NAME: its path on PATH or in the CUDA toolkit, else NAME
  command -v "$1" 2> /dev/null || { [ -x "/usr/local/cuda/bin/$1" ] && echo "/usr/local/cuda/bin/$1"; } || echo "$1"
}
NVCC=$(tool nvcc)
SANITIZER=$(tool compute-sanitizer)
# CMake's CUDA detection looks in CUDA_HOME and /usr/local/cuda; name the nvcc found on PATH as well.
[ -n "${CUDACXX:-}" ] || ! command -v "$NVCC" > /dev/null || export CUDACXX="$NVCC"

# stage ORDER NAME CAP LOGFILE COMMAND...: runs COMMAND under `timeout` for min(CAP, time left), output
# appended to LOGFILE; writes its line of the summary (a file: stages may run in the background).
stage() {
  local order=$1 name=$2 cap=$3 logf=$4 t rc t0 result cmd
  shift 4
  t=$(($(left) - RESERVE))
  ((t > cap)) && t=$cap
  if ((t < 10)); then
    printf '%s\t%s\t%s\t%s\n' "$order" "$name" "SKIPPED" "no time left" >> "$WORK/summary.tsv"
    say "== $name: skipped, no time left =="
    return 99
  fi
  cmd="$*"
  echo "== $name (timeout ${t}s): ${cmd:0:300} ==" >> "$logf"
  say "== $name: started at ${SECONDS}s, timeout ${t}s =="
  t0=$SECONDS
  timeout -k 10 "$t" "$@" >> "$logf" 2>&1
  rc=$?
  case $rc in
    0) result=ok ;;
    124 | 137) result="TIMEOUT after ${t}s" ;;
    *) result="FAIL (exit $rc)" ;;
  esac
  echo "== $name: $result, $((SECONDS - t0))s ==" >> "$logf"
  printf '%s\t%s\t%s\t%s\n' "$order" "$name" "$result" "$((SECONDS - t0))s, log $(basename "$logf")" >> "$WORK/summary.tsv"
  say "== $name: $result in $((SECONDS - t0))s =="
  return $rc
}
note() {  # note ORDER NAME RESULT DETAIL: a summary line for a stage that did not run
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/summary.tsv"
  say "== $2: $3 ($4) =="
}

# pytest_stage ORDER NAME CAP ARGS...: pytest under the outcome_log plugin; after a test that hangs (the
# per-test or the stage timeout) or leaves the CUDA context unusable, a fresh process resumes with the
# tests that have no result yet. The verdict comes from tests.jsonl, not from the last exit status.
PER_TEST_TIMEOUT=()
if "$PY" -c "import pytest_timeout" 2> /dev/null; then
  # thread: ends the process with every thread's stack in the log, even inside a CUDA call that never
  # returns; the next attempt records that test as crashed and goes on.
  PER_TEST_TIMEOUT=(--timeout=75 --timeout-method=thread)
fi
pytest_stage() {
  local order=$1 name=$2 cap=$3 end attempt=0 t t0=$SECONDS result
  shift 3
  t=$(($(left) - RESERVE))
  ((t > cap)) && t=$cap
  if ((t < 15)); then
    note "$order" "$name" "SKIPPED" "no time left"
    return
  fi
  end=$((SECONDS + t))
  say "== $name: started at ${SECONDS}s, timeout ${t}s: pytest $* =="
  while ((attempt < 6)); do
    t=$((end - SECONDS))
    if ((t < 15)); then
      echo "== $name: no time for attempt $((attempt + 1)) ==" >> "$OUT/pytest.log"
      break
    fi
    attempt=$((attempt + 1))
    echo "== $name, attempt $attempt (timeout ${t}s): pytest $* ==" >> "$OUT/pytest.log"
    timeout -k 10 "$t" "$PY" -m pytest "$@" -q -ra --durations=25 --durations-min=0.5 -p no:cacheprovider \
      -p outcome_log --outcome-log "$OUT/tests.jsonl" --outcome-stage "$name" --outcome-attempt "$attempt" \
      --outcome-tensors "$OUT/failures.pt" "${PER_TEST_TIMEOUT[@]}" >> "$OUT/pytest.log" 2>&1
    echo "== $name, attempt $attempt: exit $? at ${SECONDS}s ==" >> "$OUT/pytest.log"
    "$PY" tests/cuda/outcome_log.py finished "$OUT/tests.jsonl" "$name" "$attempt" && break
  done
  # On a GPU a stage whose every test skipped saw no CUDA device: that is a failure there.
  if "$PY" tests/cuda/outcome_log.py verdict "$OUT/tests.jsonl" "$name" $((DRY != 1)); then result=ok; else result=FAIL; fi
  printf '%s\t%s\t%s\t%s\n' "$order" "$name" "$result" "$((SECONDS - t0))s, $attempt attempt(s), tests.jsonl" \
    >> "$WORK/summary.tsv"
  say "== $name: $result in $((SECONDS - t0))s, $attempt attempt(s) =="
}

# -- carried wheels: test packages the GPU machine's Python lacks ------------------------------------
SITE=/tmp/gpu-verify-site
for whl in .carry/wheels/*.whl; do
  [ -e "$whl" ] || continue
  dist=$(basename "$whl" | cut -d- -f1)
  if ! "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2> /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$whl" \
      >> "$LOG" 2>&1 && say "installed carried wheel $(basename "$whl") into $SITE"
  fi
done
[ -d "$SITE" ] && export PYTHONPATH="$PYTHONPATH:$SITE"
"$PY" -c "import expecttest" 2> /dev/null \
  || say "WARNING: expecttest missing (torch.library.opcheck needs it): run scripts/gpu_carry_prepare.sh and carry .carry"

# -- 1. environment ------------------------------------------------------------------------------------
env_report() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   dry run: $GPU_VERIFY_DRY_RUN"
  echo "kernel: $(uname -r)   (4.4.0 is gVisor: no compute-sanitizer, no ncu counters there)   cores: $(nproc)"
  free -g | head -2
  echo "--- source"
  if [ -f .carry/source.txt ]; then cat .carry/source.txt; else echo "no .carry/source.txt (run scripts/gpu_carry_prepare.sh)"; fi
  git rev-parse HEAD 2> /dev/null && git status --short 2> /dev/null | head -40
  if [ -f .carry/tree.sha256 ]; then
    bad=$(sha256sum --quiet -c .carry/tree.sha256 2>&1 | grep -v '^sha256sum: WARNING')
    if [ -z "$bad" ]; then echo "tree: every file matches .carry/tree.sha256 (the source above)"; else
      echo "tree: DIFFERS from .carry/tree.sha256 (changed after gpu_carry_prepare.sh):"; echo "$bad" | head -40; fi
  fi
  echo "--- GPU"
  nvidia-smi || echo "nvidia-smi: not available"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,persistence_mode \
    --format=csv 2> /dev/null
  echo "--- tools"
  "$NVCC" --version 2>&1 | tail -2
  "$SANITIZER" --version 2>&1 | head -2
  echo "--- python"
  "$PY" -VV
  "$PY" - << 'EOF'
import importlib.metadata as m
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "at", torch.__file__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, "capability", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
else:
    print("torch.cuda.is_available(): False")
for name in ("pytest", "pytest-timeout", "pytest-xdist", "expecttest", "hypothesis", "numpy", "matplotlib",
             "tqdm", "triton", "setuptools", "pybind11", "cmake", "ninja"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
}
export GPU_VERIFY_DRY_RUN=$DRY NVCC SANITIZER PY
stage 1 env 60 "$LOG" bash -c "$(declare -f env_report); env_report"

if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d ' ')
  [ -n "$TORCH_CUDA_ARCH_LIST" ] || TORCH_CUDA_ARCH_LIST=$(timeout 60 "$PY" -c \
    "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')" 2> /dev/null)
fi
if [ -z "$TORCH_CUDA_ARCH_LIST" ] && [ "$DRY" != 1 ]; then
  say "no GPU found (nvidia-smi, torch.cuda): nothing to verify; GPU_VERIFY_DRY_RUN=1 runs the plumbing without one"
  exit 1
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
ARCH="sm_$(echo "${TORCH_CUDA_ARCH_LIST%%[ ;]*}" | tr -d '.' | sed 's/+PTX//')"
say "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (PTX check: $ARCH)  MAX_JOBS=$MAX_JOBS  budget ${BUDGET}s"

# -- 2. build, and beside it (nvcc on one core) the PTX semantics check --------------------------------
# Does mma.sync / ldmatrix behave as the host emulation assumes (bitwise, one warp)?
PTX_BIN="$WORK/mma_ptx_check"
PTX_CMD="\"$NVCC\" -std=c++17 -arch=$ARCH -I. tests/emulation/mma/mma_ptx_semantics_check.cu -o \"$PTX_BIN\""
if [ "$DRY" = 1 ]; then
  PTX_CMD="$PTX_CMD && echo 'compiled; not run (dry run: no GPU)'"
else
  PTX_CMD="$PTX_CMD && \"$PTX_BIN\""
fi
stage 2 ptx_check 150 "$WORK/ptx.log" bash -c "$PTX_CMD" &
PTX_PID=$!

BUILT=1
if [ "$DRY" = 1 ]; then
  note 3 build "SKIPPED" "dry run: the in-place build is used"
else
  stage 3 build 240 "$OUT/build.log" "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . || BUILT=0
fi
wait "$PTX_PID"
cat "$WORK/ptx.log" >> "$LOG"
if ((BUILT)); then
  stage 4 import 60 "$LOG" "$PY" -c "
import torch, sagan_attn
info = sagan_attn.build_info()
print('sagan_attn', sagan_attn.__file__, info)
if not $DRY:
    assert str(info['cuda']).lower() == 'true', 'built without the CUDA kernels: ' + repr(info)
    assert torch._C._dispatch_has_kernel_for_dispatch_key('sagan::self_attn_fwd', 'CUDA'), 'no CUDA kernel registered'
" || BUILT=0
fi

if ((BUILT)); then
  # -- 3. the CUDA tests, no early exit ------------------------------------------------------------------
  pytest_stage 5 cuda 180 "${CUDA_TESTS[@]}"
  if [ "$DRY" = 1 ]; then
    pytest_stage 6 plugin_selftest 120 tests/cuda/test_outcome_log.py
  fi

  # -- 4. memcheck on one small ragged case through every kernel -----------------------------------------
  # One cudaMalloc per tensor (no caching allocator): an access past a tensor's end then lands outside
  # any allocation, where memcheck sees it, instead of inside the allocator's larger block.
  if [ "$DRY" = 1 ]; then
    note 7 memcheck "SKIPPED" "dry run"
    stage 7 sanitize_case_loads 30 "$OUT/sanitizer.log" "$PY" tests/cuda/sanitize_case.py --help
  else
    stage 7 memcheck 120 "$OUT/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$SANITIZER" --tool memcheck --error-exitcode 1 --print-limit 100 "$PY" tests/cuda/sanitize_case.py --quick
  fi

  # -- 5. the first benchmark rows -------------------------------------------------------------------------
  # bench/sweep.py has no step filter: it times fwd, bwd and fwd+bwd of each row. The notebook and every
  # SDPA backend run: which SDPA backend is fastest is only known on the GPU (the .md names it).
  IMPLS="notebook,sagan-attn,sdpa-*"
  if [ "$DRY" = 1 ]; then
    BENCH_ARGS=(--device cpu --max-n 2048 --repeats 3)
    ROWS=(scaling-N1024 scaling-N2048)
  else
    BENCH_ARGS=(--device cuda --dtype bfloat16)
    ROWS=(biggan-deep biggan-deep-pooled)  # B=32, C=256, 64x64: the paper block, then the pooled one
  fi
  for i in 0 1; do
    stage $((8 + i)) "bench_${ROWS[$i]}" 90 "$WORK/bench_${ROWS[$i]}.log" "$PY" bench/sweep.py "${BENCH_ARGS[@]}" \
      --only "${ROWS[$i]},$IMPLS" --no-progress --out "$WORK/bench_${ROWS[$i]}"
  done
  "$PY" - "$OUT" "$WORK" "${ROWS[@]}" << 'EOF' >> "$LOG" 2>&1
import glob, json, os, sys
out, work, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
records, md = [], []
for row in rows:
    js = sorted(glob.glob(os.path.join(work, f"bench_{row}", "*.json")))
    mds = sorted(glob.glob(os.path.join(work, f"bench_{row}", "*.md")))
    if js:
        with open(js[-1]) as fh:
            records.append(json.load(fh))
    if mds:
        with open(mds[-1]) as fh:
            md.append(fh.read())
    else:  # no record: the sweep failed or was stopped (its output says why), or never ran
        log = os.path.join(work, f"bench_{row}.log")
        text = open(log, errors="replace").read()[-6000:] if os.path.exists(log) else "not run: no time left"
        md.append(f"# {row}: no record; the end of bench/sweep.py's output\n\n```\n{text}\n```\n")
with open(os.path.join(out, "bench.json"), "w") as fh:
    json.dump({"runs": records}, fh, indent=1)
with open(os.path.join(out, "bench.md"), "w") as fh:
    fh.write("\n\n".join(md))
print(f"bench: {len(records)} record(s) of {len(rows)} in bench.json, bench.md")
EOF

  # -- 6. racecheck (shared memory hazards), then the rest of the suite, with the time left ----------------
  if [ "$DRY" != 1 ]; then
    stage 10 racecheck 120 "$OUT/sanitizer.log" \
      "$SANITIZER" --tool racecheck --error-exitcode 1 --print-limit 100 "$PY" tests/cuda/sanitize_case.py --quick
  fi
  if [ "$DRY" = 1 ]; then
    # What the real run's last stage would run: everything the cuda stage did not (-k "not cuda").
    stage 11 rest_collect 60 "$OUT/pytest.log" "$PY" -m pytest tests/python --collect-only -q -p no:cacheprovider \
      -k "not cuda"
  else
    pytest_stage 11 rest 100000 tests/python --outcome-skip-stage cuda
  fi
else
  note 5 tests "SKIPPED" "no build"
fi

# -- summary ---------------------------------------------------------------------------------------------
for f in "$OUT"/*; do  # 16 MiB per file come back: keep both ends of a longer log
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((15 << 20)) ] && [[ "$f" == *.log ]]; then
    { head -c $((5 << 20)) "$f"; echo; echo "[... cut to 15 MiB ...]"; tail -c $((10 << 20)) "$f"; } > "$f.cut" && mv "$f.cut" "$f"
  fi
done
{
  echo
  echo "==================== gpu_verify summary (${SECONDS}s of ${BUDGET}s) ===================="
  sort -n "$WORK/summary.tsv" | awk -F'\t' '{printf "%-24s %-22s %s\n", $2, $3, $4}'
  echo
  [ -f "$OUT/tests.jsonl" ] && "$PY" tests/cuda/outcome_log.py summary "$OUT/tests.jsonl"
  grep -h -E "ERROR SUMMARY|RACECHECK SUMMARY|Device not supported" "$OUT/sanitizer.log" 2> /dev/null | sed 's/^/sanitizer: /'
  grep -h -E "^(OK|FAIL)|^== ptx_check: " "$WORK/ptx.log" 2> /dev/null | head -6 | sed 's/^/ptx_check: /'
  grep -c -E "^  .*(ldmatrix|mma).*got" "$WORK/ptx.log" 2> /dev/null | sed 's/^/ptx_check: mismatching registers: /'
  if [ -f "$OUT/bench.md" ]; then  # the headline tables: sagan-attn per shape against the others
    echo
    awk '/^#/ { p = /^## Model shapes, .*: sagan-attn$/ || /^## Scaling sweep/ } p' "$OUT/bench.md" | head -50
  fi
  echo
  echo "files in $OUT ($(ls "$OUT" | wc -l), at most 8 come back):"
  ls -la "$OUT" | tail -n +2
} | tee -a "$LOG"
[ "$(ls "$OUT" | wc -l)" -le 8 ] || say "WARNING: more than 8 files in $OUT: some will not come back"
if cut -f3 "$WORK/summary.tsv" | grep -q -E "FAIL|TIMEOUT"; then exit 1; fi
exit 0
