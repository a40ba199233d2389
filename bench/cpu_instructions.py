"""Instructions and simulated L1 misses of the CPU forward, phase by phase, per (query, key) pair.

    python -m bench.cpu_instructions                            # AVX2 and baseline builds, two shapes (~2 min)
    python -m bench.cpu_instructions --isa avx2 --base 7e37f7b  # a revision's kernels beside the working tree's

bench/cpu_phases.cpp, built with -DSAGAN_PHASES_COUNT=1 from the kernels' instantiation file of one
instruction set (as bench/cpu_kernels.py builds its timer), runs one forward (float32, one thread) under
valgrind's callgrind, which collects events only within one phase of every (query tile, key tile) step:
the scores (f'^T g), the running maximum (with the rescale factors), the exps with their sums, the value
product (h p^T with the rescale); then over the whole call. The rest (tile copies, the final
normalisation) is the whole call less the four phases. Five runs per shape and build, two at a time.

Events: Ir, the instructions executed, and D1mr + D1mw, the misses of a simulated L1 data cache of
32 KiB, 8 ways, 64-byte lines (Zen 3's and Zen 4's L1d), cold at the start of the call and with no
hardware prefetcher: a model of where lines are evicted, not a measurement of stalls. Both are divided
by the pairs, B Nq Nk. (callgrind's counts of data reads are left out: it counts an FMA's 32-byte memory
operand as 8 reads.) Beside them, the floor of the products: the multiply-add
instructions per pair they need at the least, Cqk / L for the scores and Cv / L for the values with L
float lanes (AVX2: 8 lanes, one FMA each; the baseline build, SSE2 without FMA: 4 lanes, a multiply and
an add).

Counts depend on the binary only (bench/cpu_phases.cpp runs the call on a stack frame at the same
address modulo 4 KiB wherever the stack starts, below the program's path and environment, so that the
simulated misses do not depend on these): the same on every x86-64 CPU and whatever else the machine
is doing, so a change of the kernels is compared exactly (--base REV counts the kernels of git revision
REV, commit 7939648 or later, with this tree's bench/cpu_phases.cpp), and a record made here holds for
the same build on a Zen 3 or a Xeon (their timing is another matter: bench/cpu_kernels.py). valgrind
3.19 does not decode AVX-512, so that build is not counted. The count build compiles the kernels in
bench/cpu_phases.cpp's translation unit, so a change of that harness can change the compiler's code for
them (it moved the baseline build's exps from 7.67 to 7.55 instructions per pair at f08a02d): records
compare exactly at the same harness, which --base keeps. Writes
bench/results/cpu-instructions-<stamp>.{json,md}.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # python bench/cpu_instructions.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu_ab import RevisionError, revision_tree, shape_arg  # noqa: E402
from bench.cpu_kernels import PHASES, ROOT, build_cpu_phases, error_text  # noqa: E402
from bench.measure import commit_text, git_state, machine, run_to_record, shape_text  # noqa: E402

DEFAULT_SHAPES = ((1, 8, 64, 1024), (1, 32, 256, 1024))
# The builds callgrind can run (valgrind 3.19 decodes AVX2, not AVX-512), with their float lanes and the
# instructions one multiply-add of L lanes takes.
COUNTED_ISAS = {"avx2": (8, 1), "default": (4, 2)}
EVENTS = ("Ir", "D1mr", "D1mw")
# The simulated caches: L1 data and instruction caches of Zen 3 and Zen 4 (32 KiB, 8 ways, 64-byte
# lines), and a last level of Zen 3's L2 (512 KiB, 8 ways; given so that callgrind does not guess one
# from the host, its misses not reported).
CACHES = ("--D1=32768,8,64", "--I1=32768,8,64", "--LL=524288,8,64")
# What cpu_phases' count build takes for its last argument: 0 the whole call, 1-4 the phases.
WHOLE = "call"
COUNTED = (WHOLE, *PHASES)


class CountError(Exception):
    """Something this tool needs is missing (valgrind, its header) or cannot run the build asked for."""


def callgrind_totals(path: str) -> Dict[str, int]:
    """The events and their totals of a callgrind output file ("events:" and "totals:" or "summary:")."""
    names: List[str] = []
    values: Optional[List[int]] = None
    with open(path) as fh:
        for line in fh:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith(("totals:", "summary:")) and values is None:
                values = [int(v) for v in line.split()[1:]]
    if not names or values is None:
        raise CountError(f"{path}: no events or totals in callgrind's output")
    counts = dict(zip(names, values + [0] * (len(names) - len(values))))
    return {e: counts.get(e, 0) for e in EVENTS}


def count_one(exe: str, shape: Tuple[int, int, int, int], what: str) -> Dict[str, int]:
    """Runs the count build exe under callgrind collecting `what` (WHOLE or a phase); returns its totals.
    callgrind's output goes beside exe."""
    B, Cqk, Cv, N = shape
    out = os.path.join(os.path.dirname(exe), f"callgrind.{B}-{Cqk}-{Cv}-{N}.{what}")
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                    "--cache-sim=yes", *CACHES, f"--callgrind-out-file={out}",
                    exe, str(B), str(Cqk), str(Cv), str(N), str(COUNTED.index(what))],
                   check=True, capture_output=True, text=True, timeout=1800)
    return callgrind_totals(out)


def per_pair(counts: Dict[str, Dict[str, int]], pairs: int) -> Dict[str, Dict[str, float]]:
    """Per phase (and "rest", "call"): instructions and simulated L1d misses per pair."""
    return {k: {"instructions": c["Ir"] / pairs, "d1_misses": (c["D1mr"] + c["D1mw"]) / pairs}
            for k, c in counts.items()}


def run(args: argparse.Namespace) -> dict:
    if shutil.which("valgrind") is None:
        raise CountError("valgrind is not installed (Debian: apt-get install valgrind)")
    for isa in args.isa:
        if isa not in COUNTED_ISAS:
            raise CountError(f"the {isa} build cannot be counted: valgrind decodes AVX2, not AVX-512")
    record: dict = {"machine": machine("cpu"), "git": git_state(ROOT), "caches": list(CACHES),
                    "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True,
                                               text=True).stdout.strip(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"new": ROOT}
        if args.base:
            base_root = os.path.join(tmp, "base-tree")
            os.makedirs(base_root)
            record["base"] = {"rev": args.base, "commit": revision_tree(args.base, base_root)}
            # The revision's kernels with this tree's counting harness (its own may not count).
            shutil.copy(os.path.join(ROOT, "bench", "cpu_phases.cpp"), os.path.join(base_root, "bench"))
            trees = {"base": base_root, "new": ROOT}
        exes: Dict[Tuple[str, str], str] = {}
        for side, root in trees.items():
            for isa in args.isa:
                d = os.path.join(tmp, f"{side}-{isa}")
                os.makedirs(d)
                try:
                    exes[side, isa] = build_cpu_phases(d, isa, root=root, count=True)
                except (OSError, subprocess.SubprocessError) as e:
                    raise CountError(f"bench/cpu_phases.cpp ({side}, {isa}) not built: {error_text(e)}") from e
        print(f"built bench/cpu_phases.cpp's count build for {', '.join(args.isa)}"
              + (f" at {record['base']['commit'][:12]} and" if args.base else "") + " from the working tree",
              flush=True)
        jobs = [(side, isa, tuple(shape), what) for isa in args.isa for shape in args.shape
                for side in trees for what in COUNTED]
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {job: pool.submit(count_one, exes[job[0], job[1]], job[2], job[3]) for job in jobs}
            results = {job: f.result() for job, f in futures.items()}
    for isa in args.isa:
        lanes, ops = COUNTED_ISAS[isa]
        for shape in args.shape:
            B, Cqk, Cv, N = shape
            pairs = B * N * N
            for side in trees:
                counts = {what: results[side, isa, tuple(shape), what] for what in COUNTED}
                counts["rest"] = {e: counts[WHOLE][e] - sum(counts[k][e] for k in PHASES) for e in EVENTS}
                row = {"isa": isa, "side": side, "shape": [B, Cqk, Cv, N, N], "pairs": pairs, "counts": counts,
                       "per_pair": per_pair(counts, pairs),
                       "floor": {"scores": ops * Cqk / lanes, "values": ops * Cv / lanes}}
                record["rows"].append(row)
                pp = row["per_pair"]
                print(f"{isa} {side} (B, Cqk, Cv, N) = ({B}, {Cqk}, {Cv}, {N}): instructions per pair "
                      + ", ".join(f"{k} {pp[k]['instructions']:.2f}" for k in (*PHASES, "rest", WHOLE)),
                      flush=True)
    record["machine"]["load_average_end"] = list(os.getloadavg())
    return record


def markdown(rec: dict) -> str:
    m, g = rec["machine"], rec["git"]
    tree = commit_text(g)
    lines = [f"# CPU forward: instructions and simulated L1 misses per (query, key) pair "
             f"({time.strftime('%Y-%m-%d')})",
             "",
             f"- bench/cpu_phases.cpp's count build under {rec['valgrind']} (callgrind), one forward, float32, "
             f"one thread, built on {m['cpu']}; the working tree at {tree}"
             + (f"; base: `{rec['base']['rev']}` = {rec['base']['commit'][:12]} (its kernels, this tree's "
                "harness)" if "base" in rec else ""),
             f"- simulated caches {' '.join(rec['caches'])}: cold at the call's start, no prefetcher",
             "- per pair: divided by B Nq Nk; floor: the multiply-add instructions the product needs at the least "
             "(AVX2: Cqk / 8 or Cv / 8 FMAs; baseline, SSE2 without FMA: 2 Cqk / 4 or 2 Cv / 4)",
             "- rest: the tile copies and the final normalisation (the call less its phases)", "",
             "Instructions per pair:", "",
             "| build | (B, Cqk, Cv, Nq, Nk) | tree | scores (floor) | max | exp | values (floor) | rest | call |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rec["rows"]:
        pp, fl = row["per_pair"], row["floor"]
        shape = shape_text(row["shape"])
        cells = [f"{pp['scores']['instructions']:.2f} ({fl['scores']:g})", f"{pp['max']['instructions']:.2f}",
                 f"{pp['exp']['instructions']:.2f}", f"{pp['values']['instructions']:.2f} ({fl['values']:g})",
                 f"{pp['rest']['instructions']:.2f}", f"{pp[WHOLE]['instructions']:.2f}"]
        lines.append(f"| {row['isa']} | {shape} | {row['side']} | " + " | ".join(cells) + " |")
    lines += ["", "Simulated L1d misses (reads and writes) per 100 pairs:", "",
              "| build | (B, Cqk, Cv, Nq, Nk) | tree | scores | max | exp | values | rest | call |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rec["rows"]:
        pp = row["per_pair"]
        shape = shape_text(row["shape"])
        cells = [f"{100 * pp[k]['d1_misses']:.2f}" for k in (*PHASES, "rest", WHOLE)]
        lines.append(f"| {row['isa']} | {shape} | {row['side']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_instructions", description=__doc__.split("\n")[0])
    p.add_argument("--isa", action="append", choices=sorted(("avx512", *COUNTED_ISAS)),
                   help="kernel build to count (repeatable; default avx2 and default)")
    p.add_argument("--shape", type=shape_arg, action="append",
                   help="B,Cqk,Cv,N (repeatable; default 1,8,64,1024 and 1,32,256,1024)")
    p.add_argument("--base", help="also count the kernels of this git revision (7939648 or later)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="callgrind runs at a time")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    args.isa = args.isa or ["avx2", "default"]
    args.shape = args.shape or list(DEFAULT_SHAPES)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return run_to_record("cpu_instructions", lambda: run(args), markdown, args.out, "cpu-instructions",
                         errors=(CountError, RevisionError))


if __name__ == "__main__":
    sys.exit(main())
