"""A CPU kernel change measured: the forward of a base revision against the working tree's, phase by
phase, interleaved.

    python -m bench.cpu_ab --base HEAD~1                 # about a minute per shape on 2 cores
    python -m bench.cpu_ab --base eda9940 --isa avx2 --shape 4,8,64,4096 --rounds 16

bench/cpu_phases.cpp is built twice for the same instruction set (--isa; by default the one the kernels
run here, sagan_attn.build_info()'s cpu_isa): once from the kernels of git revision --base (extracted with
git archive; the revision must hold bench/cpu_phases.cpp, commit 7939648 or later) and once from the
working tree, as bench/cpu_kernels.py builds it. The two then run round by round, one thread (pinned to
one CPU where the OS allows it), the order reversed every other round, each run the fastest of --calls
calls. On a shared VM whose speed drifts by up to 50% between seconds, only such interleaved ratios
separate a change of a few percent from the drift. Reported per shape: the fastest and the median time
of the forward and of each phase, for each side, and the median, lowest and highest of the per-round
ratios working tree / base of the forward's time. The outputs are not compared (tests/ does that).
Writes bench/results/cpu-ab-<stamp>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # python bench/cpu_ab.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu_kernels import PHASES, PHASES_ISA, ROOT, build_cpu_phases, cpu_phases  # noqa: E402
from bench.measure import commit_text, git_state, machine, run_to_record, shape_text  # noqa: E402

DEFAULT_SHAPES = ((4, 8, 64, 4096), (4, 32, 256, 4096))
# What a revision's tree must hold to build bench/cpu_phases.cpp from its own kernels.
TREE = ("bench/cpu_phases.cpp", "kernels")


class RevisionError(Exception):
    """The base revision cannot be measured (it lacks what bench/cpu_phases.cpp needs)."""


def revision_tree(rev: str, dest: str) -> str:
    """The files of TREE at git revision rev, extracted under dest; returns rev's full commit hash.
    Raises subprocess.CalledProcessError where rev is not a revision, RevisionError where it lacks one of them."""
    commit = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    for path in TREE:
        if subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=ROOT, capture_output=True).returncode:
            raise RevisionError(f"{rev} ({commit[:12]}) has no {path}: the base must be commit 7939648 or later")
    archive = os.path.join(dest, "tree.tar")
    subprocess.run(["git", "archive", "--format=tar", "-o", archive, commit, *TREE], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    with tarfile.open(archive) as tar:
        # git's own archive of the revision; the "data" filter where this Python has it (3.11.4 and later).
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    os.remove(archive)
    return commit


def pinned(cpu: Optional[int]):
    """A preexec_fn that pins the child to one CPU (None: no pinning)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def one_cpu() -> Optional[int]:
    """The last CPU this process may run on, or None where the OS cannot pin."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return max(os.sched_getaffinity(0))


def summary(runs: List[dict]) -> dict:
    """Fastest and median of the forward and of each phase over the runs of one side, in ms."""
    out = {"total_ms": {"min": min(r["total_ms"] for r in runs),
                        "median": statistics.median([r["total_ms"] for r in runs])}}
    for k in (*PHASES, "rest"):
        vals = [r["ms"][k] for r in runs]
        out[k + "_ms"] = {"min": min(vals), "median": statistics.median(vals)}
    return out


def run(args: argparse.Namespace) -> dict:
    info = machine("cpu")
    isa = args.isa or info["sagan_attn"].get("cpu_isa", "default")
    record: dict = {"machine": info, "git": git_state(ROOT), "isa": isa, "rounds": args.rounds,
                    "calls": args.calls, "shapes": []}
    cpu = one_cpu()
    record["pinned_cpu"] = cpu
    with tempfile.TemporaryDirectory() as tmp:
        base_root, new_dir, base_dir = (os.path.join(tmp, d) for d in ("base-tree", "new", "base"))
        for d in (base_root, new_dir, base_dir):
            os.makedirs(d)
        record["base"] = {"rev": args.base, "commit": revision_tree(args.base, base_root)}
        exes = {"base": build_cpu_phases(base_dir, isa, root=base_root), "new": build_cpu_phases(new_dir, isa)}
        print(f"built bench/cpu_phases.cpp ({isa}) at {record['base']['commit'][:12]} and from the working tree",
              flush=True)
        for B, Cqk, Cv, N in args.shape:
            runs: Dict[str, List[dict]] = {"base": [], "new": []}
            for r in range(args.rounds):
                for side in (("base", "new") if r % 2 == 0 else ("new", "base")):
                    runs[side].append(cpu_phases(exes[side], B, Cqk, Cv, N, args.calls, preexec_fn=pinned(cpu)))
            ratios = [n["total_ms"] / b["total_ms"] for n, b in zip(runs["new"], runs["base"])]
            row = {"shape": [B, Cqk, Cv, N, N], "base": summary(runs["base"]), "new": summary(runs["new"]),
                   "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                   "rounds_total_ms": {side: [x["total_ms"] for x in v] for side, v in runs.items()},
                   "rounds_ms": {side: [x["ms"] for x in v] for side, v in runs.items()}}
            record["shapes"].append(row)
            print(f"(B, Cqk, Cv, N) = ({B}, {Cqk}, {Cv}, {N}): working tree / base "
                  f"{row['ratio_median']:.3f} (median of {args.rounds} rounds, {row['ratio_min']:.3f}-"
                  f"{row['ratio_max']:.3f})", flush=True)
    record["machine"]["load_average_end"] = list(os.getloadavg())
    return record


def ms_text(v: float) -> str:
    """A time in ms, to 0.1 ms from 10 ms up and to 0.01 below."""
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def markdown(rec: dict) -> str:
    m, g = rec["machine"], rec["git"]
    tree = commit_text(g)
    lines = [f"# CPU forward, {rec['base']['commit'][:12]} against {tree} ({time.strftime('%Y-%m-%d')})", "",
             f"- {m['cpu']}, bench/cpu_phases.cpp built for {rec['isa']} from both trees, one thread"
             + (f" pinned to CPU {rec['pinned_cpu']}" if rec["pinned_cpu"] is not None else "")
             + f", torch {m['torch']}",
             f"- base: `{rec['base']['rev']}` = {rec['base']['commit'][:12]}; new: the working tree at {tree}",
             f"- {rec['rounds']} rounds, the order reversed every other round, each run the fastest of "
             f"{rec['calls']} calls; ratio = new / base of the forward's time, round by round",
             f"- load average at start {m['load_average_start']}, at end {m['load_average_end']}", "",
             "| (B, Cqk, Cv, Nq, Nk) | ratio new / base: median (range) | side | forward ms: fastest / median | "
             + " | ".join(f"{k} ms" for k in (*PHASES, "rest")) + " |",
             "|---|---:|---|---:|" + "---:|" * (len(PHASES) + 1)]
    for row in rec["shapes"]:
        shape = shape_text(row["shape"])
        ratio = f"{row['ratio_median']:.3f} ({row['ratio_min']:.3f}-{row['ratio_max']:.3f})"
        for i, side in enumerate(("base", "new")):
            s = row[side]
            cells = " | ".join(f"{ms_text(s[k + '_ms']['min'])} / {ms_text(s[k + '_ms']['median'])}"
                               for k in ("total", *PHASES, "rest"))
            lines.append(f"| {shape if i == 0 else ''} | {ratio if i == 0 else ''} | {side} | {cells} |")
    lines += ["", "Phase times: fastest / median over the rounds (each round's run is its fastest call; the phases "
              "of that call)."]
    return "\n".join(lines) + "\n"


def shape_arg(text: str) -> tuple:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a shape is B,Cqk,Cv,N of positive integers, got {text!r}")
    return parts


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_ab", description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare the working tree against")
    p.add_argument("--isa", choices=sorted(PHASES_ISA), help="kernel build (default: the one the kernels run)")
    p.add_argument("--shape", type=shape_arg, action="append",
                   help="B,Cqk,Cv,N (repeatable; default 4,8,64,4096 and 4,32,256,4096)")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    args.shape = args.shape or list(DEFAULT_SHAPES)
    if args.rounds < 1 or args.calls < 1:
        p.error("--rounds and --calls must be at least 1")
    return run_to_record("cpu_ab", lambda: run(args), markdown, args.out, "cpu-ab", errors=(RevisionError,))


if __name__ == "__main__":
    sys.exit(main())
