"""The CPU kernels against the machine's matmul rate: GFLOP/s over a (Cqk, Cv) grid, SDPA's CPU flash
attention head to head, thread scaling, and bfloat16 against float32, in one run.

    python -m bench.cpu_kernels                 # about 2 minutes on 2 cores
    python -m bench.cpu_kernels --quick         # one shape of each part (a smoke test)

Forward and backward are timed separately at the op level (torch.ops.sagan.self_attn_fwd and
self_attn_backward, inputs made beforehand). The machine this runs on is a shared VM whose speed drifts
by up to 50% between seconds, so every comparison is timed interleaved (sagan_attn.measure.interleaved_ms):
round by round, the forward, the backward and a matmul of the roofline's size in turn, and a row's
"% matmul" is the median over rounds of that round's ratio. The FLOPs counted are the products each
pass really computes, per image:
  forward   2 Nq Nk (Cqk + Cv)          s = f^T g, o = h p^T
  backward  2 Nq Nk (3 Cqk + 2 Cv)      s again, dp = dy^T h, dh = dy p, df = ds g^T, dg = f ds
(the exp, the row statistics and the elementwise softmax backward come on top, uncounted). The roofline
is torch.mm's float32 GFLOP/s on square matrices sized to take about 0.2 s, with the same thread count,
and beside it the hardware's: the float32 FMA peak of bench/fma_peak.cpp (register-only multiply-add
chains, built here with the C++ compiler) in the instruction set the kernels run (sagan_attn.build_info()'s
cpu_isa: SAGAN_ATTN_CPU_ISA=avx2 times the AVX2 build on an AVX-512 CPU, against the AVX2 peak), at the
start and at the end, "% peak" against the higher.
Head to head: the CPU target shapes of bench/shapes.py, sagan-attn against SDPA's flash backend on q and
k zero-padded to Cv (bench/impls.py's sdpa-flash-pad), forward (no grad) and forward+backward, through
bench/impls.py as the sweep runs them, interleaved; the ratio is the median of the per-round ratios.
Thread scaling times the same call at 1 thread and at every thread
(torch.get_num_threads() at start), interleaved. Phases: bench/cpu_phases.cpp (the kernels' instantiation
file of their instruction set, built here with a timer at each phase of the forward's steps), one thread,
the fastest of --repeats calls: the shares of the scores, the running maximum, the exps, the value product
and the rest. Writes bench/results/cpu-kernels-<stamp>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # python bench/cpu_kernels.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import sagan_attn  # noqa: E402,F401  (registers torch.ops.sagan)
from sagan_attn.measure import interleaved_ms, ratio_median  # noqa: E402

from bench import impls  # noqa: E402
from bench.measure import commit_text, git_state, machine, matmul_tflops, write_record  # noqa: E402
from bench.shapes import CPU_TARGETS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID_CQK = (8, 16, 32)
GRID_CV = (64, 128, 256)


def flops(B: int, Cqk: int, Cv: int, Nq: int, Nk: int) -> Dict[str, float]:
    return {"fwd": 2.0 * B * Nq * Nk * (Cqk + Cv), "bwd": 2.0 * B * Nq * Nk * (3 * Cqk + 2 * Cv)}


def pass_fns(B: int, Cqk: int, Cv: int, N: int, dtype: torch.dtype) -> Dict[str, Callable[[], object]]:
    """The forward and the backward (all three gradients) at one shape, inputs made beforehand."""
    gen = torch.Generator().manual_seed(0)

    def rnd(*size):
        return torch.randn(*size, generator=gen).to(dtype)

    f, g, h, x = rnd(B, Cqk, N), rnd(B, Cqk, N), rnd(B, Cv, N), rnd(B, Cv, N)
    gamma = torch.tensor(0.5, dtype=dtype)
    y, o, lse = torch.ops.sagan.self_attn_fwd(f, g, h, x, gamma, 1.0)
    dy = rnd(B, Cv, N)
    return {"fwd": lambda: torch.ops.sagan.self_attn_fwd(f, g, h, x, gamma, 1.0),
            "bwd": lambda: torch.ops.sagan.self_attn_backward(dy, f, g, h, o, lse, gamma, 1.0, [True, True, True])}


def with_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    """fn run on n threads (torch.set_num_threads before the call; the caller restores the count)."""
    def run():
        torch.set_num_threads(n)
        return fn()
    return run


def matmul_fn(n: int) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    return lambda: torch.mm(a, b)


def head_to_head(rounds: int, quick: bool) -> List[dict]:
    """sagan-attn against SDPA flash on padded q, k at the CPU target shapes: fwd and fwd+bwd, interleaved."""
    rows = []
    for shape in CPU_TARGETS[:1] if quick else CPU_TARGETS:
        if quick:
            shape = replace(shape, B=1, H=16, W=16)
        inputs = impls.make_inputs(shape, torch.float32, "cpu")
        fns: Dict[str, Callable[[], object]] = {}
        for name in (impls.FUSED, "sdpa-flash-pad"):
            resolved, _ = impls.resolve(name, shape, inputs)
            if resolved.fn is None:
                raise RuntimeError(f"{name} cannot run {shape.name}: {resolved.reason}")
            steps = impls.step_fns(resolved.fn, inputs)
            fns[f"{name} fwd"], fns[f"{name} fwd+bwd"] = steps["fwd"], steps["fwd+bwd"]
        t = interleaved_ms(fns, "cpu", warmup=1, rounds=rounds)
        row = {"shape": shape.name, "dims": [shape.B, shape.Cqk, shape.Cv, shape.Nq, shape.Nk],
               "ms": {k: statistics.median(v) for k, v in t.items()}, "rounds_ms": t}
        for step in ("fwd", "fwd+bwd"):
            row[f"speedup_{step}"] = ratio_median(t, f"sdpa-flash-pad {step}", f"{impls.FUSED} {step}")
        rows.append(row)
        print(f"{shape.name} {tuple(row['dims'])}: SDPA flash padded / sagan-attn: fwd x{row['speedup_fwd']:.2f}, "
              f"fwd+bwd x{row['speedup_fwd+bwd']:.2f}", flush=True)
    return rows


def gflops(fl: float, ms: float) -> float:
    return fl / (ms * 1e-3) / 1e9


# bench/fma_peak.cpp's name for the instruction set of each CPU kernel build (build_info()["cpu_isa"]):
# the default build is the x86-64 baseline, SSE multiplies and adds.
FMA_PEAK_ISA = {"avx512": "avx512", "avx2": "avx2", "default": "sse"}


# bench/cpu_phases.cpp's SAGAN_PHASES_ISA for each CPU kernel build.
PHASES_ISA = {"default": 0, "avx2": 2, "avx512": 3}
PHASES = ("scores", "max", "exp", "values")
# (Cqk, Cv) of the bf16-vs-fp32 and phase measurements: the target shape and the grid's widest.
DETAIL_SHAPES = ((8, 64), (32, 256))


def error_text(e: BaseException) -> str:
    """What a failed build or run of a helper program said: the exception's type and the program's stderr."""
    return f"{type(e).__name__}: {getattr(e, 'stderr', None) or e}"


def build_helper(tmp: str, name: str, flags: Sequence[str], timeout: float, root: str = ROOT) -> str:
    """<root>/bench/<name>.cpp (by default this checkout's) built in the folder tmp with $CXX or c++ and
    flags, within timeout seconds; returns the executable's path. Raises OSError or
    subprocess.SubprocessError where it cannot be built."""
    exe = os.path.join(tmp, name)
    subprocess.run([os.environ.get("CXX", "c++"), *flags, os.path.join(root, "bench", name + ".cpp"), "-o", exe],
                   check=True, capture_output=True, text=True, timeout=timeout)
    return exe


def build_cpu_phases(tmp: str, cpu_isa: str, root: str = ROOT, count: bool = False) -> str:
    """bench/cpu_phases.cpp built in the folder tmp for the kernel build cpu_isa, as CMakeLists.txt
    compiles the kernels (C++20, -O3, -ffp-contract=fast), from the kernels of the tree at root (by
    default this checkout; bench/cpu_ab.py passes a revision's); with count, the build that callgrind
    counts phase by phase (bench/cpu_instructions.py) instead of the timer."""
    return build_helper(tmp, "cpu_phases", ["-std=c++20", "-O3", "-ffp-contract=fast", "-I", root,
                                            f"-DSAGAN_PHASES_ISA={PHASES_ISA.get(cpu_isa, 0)}",
                                            f"-DSAGAN_PHASES_COUNT={int(count)}"], timeout=600, root=root)


def cpu_phases(exe: str, B: int, Cqk: int, Cv: int, N: int, calls: int,
               preexec_fn: Optional[Callable[[], None]] = None) -> dict:
    """The forward's phases at (B, Cqk, Cv, N = Nq = Nk), one thread, the fastest of `calls` calls:
    {"shape", "total_ms", "ms" and "fraction" per phase and "rest", "scores_gflops", "values_gflops"}.
    preexec_fn runs in the child before the timer starts (bench/cpu_ab.py pins it to one CPU)."""
    out = subprocess.run([exe, str(B), str(Cqk), str(Cv), str(N), str(calls)], check=True, capture_output=True,
                         text=True, timeout=600, preexec_fn=preexec_fn)
    total, *parts = (int(v) for v in out.stdout.split())
    ms = dict(zip(PHASES, (v * 1e-6 for v in parts)))
    ms["rest"] = total * 1e-6 - sum(ms.values())
    return {"shape": [B, Cqk, Cv, N, N], "total_ms": total * 1e-6, "ms": ms,
            "fraction": {k: v / (total * 1e-6) for k, v in ms.items()},
            "scores_gflops": gflops(2.0 * B * N * N * Cqk, ms["scores"]),
            "values_gflops": gflops(2.0 * B * N * N * Cv, ms["values"])}


def build_fma_peak(tmp: str) -> str:
    """bench/fma_peak.cpp built in the folder tmp."""
    return build_helper(tmp, "fma_peak", ["-O3", "-pthread"], timeout=120)


def fma_peak(exe: Optional[str], threads: int, isa: Optional[str]) -> dict:
    """The CPU's float32 multiply-add peak at `threads` threads in the instruction set isa (None: the CPU's
    best), from the built bench/fma_peak.cpp (register-only FMA chains, no memory): {"gflops", "isa"}, or
    {"error"} where it could not be built (exe None) or run."""
    if exe is None:
        return {"error": "bench/fma_peak.cpp could not be built"}
    try:
        out = subprocess.run([exe, str(threads)] + ([isa] if isa else []), check=True, capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": error_text(e)}
    value, got = out.stdout.split()
    return {"gflops": float(value), "isa": got}


def run(args: argparse.Namespace) -> dict:
    threads = torch.get_num_threads()
    N, B = args.n, args.batch
    record: dict = {"machine": machine("cpu"), "git": git_state(ROOT), "n": N, "batch": B,
                    "repeats": args.repeats, "threads": threads}
    mm = matmul_tflops(torch.float32, "cpu")
    record["matmul"] = mm
    mm_gflops = 1e3 * mm["tflops"]
    print(f"matmul float32, {threads} threads: n={mm['n']}, {mm_gflops:.1f} GFLOP/s", flush=True)
    # The FMA peak in the kernels' instruction set, built once, measured at the start and at the end;
    # the phase timer built for it too.
    cpu_isa = record["machine"]["sagan_attn"].get("cpu_isa")
    peak_isa = FMA_PEAK_ISA.get(cpu_isa)
    peak_dir = tempfile.TemporaryDirectory()
    try:
        peak_exe: Optional[str] = build_fma_peak(peak_dir.name)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"bench/fma_peak.cpp not built ({error_text(e)})", flush=True)
        peak_exe = None
    try:
        phases_exe: Optional[str] = build_cpu_phases(peak_dir.name, cpu_isa)
        phases_error = None
    except (OSError, subprocess.SubprocessError) as e:
        phases_exe, phases_error = None, error_text(e)
    record["fma_peak_start"] = fma_peak(peak_exe, threads, peak_isa)
    print(f"FMA peak, {threads} threads: {record['fma_peak_start']}", flush=True)

    grid = [(c, v) for c in GRID_CQK for v in GRID_CV]
    if args.quick:
        grid = grid[:1]
    rows: List[dict] = []
    mm_fn, mm_flops = matmul_fn(mm["n"]), 2.0 * mm["n"] ** 3
    for cqk, cv in grid:
        fl = flops(B, cqk, cv, N, N)
        fns = dict(pass_fns(B, cqk, cv, N, torch.float32), matmul=mm_fn)
        t = interleaved_ms(fns, "cpu", warmup=1, rounds=args.repeats)
        med = {k: statistics.median(v) for k, v in t.items()}
        row = {"Cqk": cqk, "Cv": cv, "fwd_ms": med["fwd"], "bwd_ms": med["bwd"], "matmul_ms": med["matmul"],
               "fwd_gflops": gflops(fl["fwd"], med["fwd"]), "bwd_gflops": gflops(fl["bwd"], med["bwd"]),
               "matmul_gflops": gflops(mm_flops, med["matmul"]), "matmul_n": mm["n"], "rounds_ms": t}
        # (fl / t_pass) / (mm_flops / t_mm), round by round
        row["fwd_frac"] = fl["fwd"] / mm_flops * ratio_median(t, "matmul", "fwd")
        row["bwd_frac"] = fl["bwd"] / mm_flops * ratio_median(t, "matmul", "bwd")
        rows.append(row)
        print(f"Cqk={cqk:3d} Cv={cv:4d}: fwd {med['fwd']:8.1f} ms {row['fwd_gflops']:6.1f} GFLOP/s "
              f"({100 * row['fwd_frac']:.0f}%), bwd {med['bwd']:8.1f} ms {row['bwd_gflops']:6.1f} GFLOP/s "
              f"({100 * row['bwd_frac']:.0f}%)", flush=True)
    record["grid"] = rows
    record["head_to_head"] = head_to_head(args.repeats, args.quick)

    # Thread scaling: B = 1 with a large N (the case that must split one image over the cores) and the
    # batched target shape; 1 thread and all of them interleaved, round by round, the speed-up the
    # median of the per-round ratios.
    scaling = []
    cases = [(1, 8, 64, args.scaling_n), (B, 8, 64, N)]
    if args.quick:
        cases = cases[:1]
    for b, cqk, cv, n in cases:
        counts = sorted({1, threads})
        fns = {f"{nt} {step}": with_threads(nt, fn) for step, fn in pass_fns(b, cqk, cv, n, torch.float32).items()
               for nt in counts}
        t = interleaved_ms(fns, "cpu", warmup=1, rounds=args.repeats)
        torch.set_num_threads(threads)
        per = {nt: {step: statistics.median(t[f"{nt} {step}"]) for step in ("fwd", "bwd")} for nt in counts}
        row = {"B": b, "Cqk": cqk, "Cv": cv, "N": n, "ms": {str(k): v for k, v in per.items()}, "rounds_ms": t,
               "speedup_fwd": ratio_median(t, "1 fwd", f"{threads} fwd"),
               "speedup_bwd": ratio_median(t, "1 bwd", f"{threads} bwd")}
        scaling.append(row)
        print(f"scaling B={b} N={n}: 1 -> {threads} threads: fwd x{row['speedup_fwd']:.2f}, "
              f"bwd x{row['speedup_bwd']:.2f}", flush=True)
    record["scaling"] = scaling

    # bfloat16 against float32 at the target shape and at the grid's widest (bf16 is computed in float32),
    # interleaved: the ratios are medians of per-round ratios, as everywhere above, over 3x the rounds
    # (a few seconds), for a difference of a few percent.
    record["dtypes"] = []
    for cqk, cv in DETAIL_SHAPES:
        fns = {f"{name} {step}": fn for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
               for step, fn in pass_fns(B, cqk, cv, N, dtype).items()}
        t = interleaved_ms(fns, "cpu", warmup=1, rounds=3 * args.repeats)
        dt = {name: {step: statistics.median(t[f"{name} {step}"]) for step in ("fwd", "bwd")}
              for name in ("float32", "bfloat16")}
        d = {"shape": [B, cqk, cv, N, N], "ms": dt, "rounds_ms": t,
             "bf16_over_fp32_fwd": ratio_median(t, "bfloat16 fwd", "float32 fwd"),
             "bf16_over_fp32_bwd": ratio_median(t, "bfloat16 bwd", "float32 bwd")}
        record["dtypes"].append(d)
        print(f"bf16 / fp32 time at (Cqk, Cv) = ({cqk}, {cv}): fwd {d['bf16_over_fp32_fwd']:.2f}, "
              f"bwd {d['bf16_over_fp32_bwd']:.2f}", flush=True)
    # The forward's phases, one thread, at the same two shapes.
    record["phases"] = []
    for cqk, cv in DETAIL_SHAPES:
        if phases_exe is None:
            record["phases"].append({"shape": [B, cqk, cv, N, N], "error": phases_error})
            print(f"phases not measured: {phases_error}", flush=True)
            continue
        try:
            ph = cpu_phases(phases_exe, B, cqk, cv, N, args.repeats)
        except (OSError, subprocess.SubprocessError) as e:
            ph = {"shape": [B, cqk, cv, N, N], "error": error_text(e)}
        ph["isa"] = cpu_isa
        record["phases"].append(ph)
        if "error" not in ph:
            print(f"phases at (Cqk, Cv) = ({cqk}, {cv}), 1 thread, {ph['total_ms']:.1f} ms: "
                  + ", ".join(f"{k} {100 * v:.1f}%" for k, v in ph["fraction"].items()), flush=True)
    record["fma_peak_end"] = fma_peak(peak_exe, threads, peak_isa)
    peak_dir.cleanup()
    peaks = [p["gflops"] for p in (record["fma_peak_start"], record["fma_peak_end"]) if "gflops" in p]
    # The roofline: the higher of the two measurements (the lower one met more of the neighbours' load).
    peak = record["fma_peak_gflops"] = max(peaks) if peaks else None
    for row in record["grid"]:
        for step in ("fwd", "bwd"):
            row[f"{step}_peak_frac"] = row[f"{step}_gflops"] / peak if peak else None
    record["load_average_end"] = list(os.getloadavg())
    return record


def peak_text(p: Optional[dict]) -> str:
    if not p:
        return "not measured"
    return f"{p['gflops']:.1f} GFLOP/s ({p['isa']})" if "gflops" in p else f"not measured ({p['error']})"


def pct(frac: Optional[float]) -> str:
    return "-" if frac is None else f"{100 * frac:.0f}%"


def markdown(rec: dict) -> str:
    m = rec["machine"]
    mm = 1e3 * rec["matmul"]["tflops"]
    out = [f"# CPU kernels against the matmul roofline ({time.strftime('%Y-%m-%d')})", "",
           f"- {m['cpu']}, {rec['threads']} threads, cpu_isa {m['sagan_attn'].get('cpu_isa')}, torch {m['torch']}, "
           f"commit {commit_text(rec['git'])}",
           f"- load average at start {m['load_average_start']}, at end {rec['load_average_end']}",
           f"- matmul float32 (n = {rec['matmul']['n']}): {mm:.1f} GFLOP/s at the start; {rec['repeats']} rounds "
           "per row, the pass and a matmul interleaved; ms and GFLOP/s are medians, % matmul the median of the "
           "per-round ratios",
           f"- B = {rec['batch']}, Nq = Nk = {rec['n']}, float32; FLOPs: forward 2 Nq Nk (Cqk + Cv), "
           "backward 2 Nq Nk (3 Cqk + 2 Cv) per image",
           f"- FMA peak (bench/fma_peak.cpp, registers only, the kernels' instruction set, {rec['threads']} threads): "
           f"{peak_text(rec.get('fma_peak_start'))} at the start, {peak_text(rec.get('fma_peak_end'))} at the end; "
           "% peak is a row's median GFLOP/s over the higher of the two", "",
           "| Cqk | Cv | fwd ms | fwd GFLOP/s | % matmul | % peak | bwd ms | bwd GFLOP/s | % matmul | % peak "
           "| matmul GFLOP/s |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rec["grid"]:
        out.append(f"| {r['Cqk']} | {r['Cv']} | {r['fwd_ms']:.1f} | {r['fwd_gflops']:.1f} | {100 * r['fwd_frac']:.0f}% "
                   f"| {pct(r.get('fwd_peak_frac'))} | {r['bwd_ms']:.1f} | {r['bwd_gflops']:.1f} "
                   f"| {100 * r['bwd_frac']:.0f}% | {pct(r.get('bwd_peak_frac'))} | {r['matmul_gflops']:.1f} |")
    out += ["", "Head to head with SDPA's CPU flash attention, q and k zero-padded to Cv (interleaved; speed-up = "
            "median of the per-round ratios SDPA / sagan-attn):", "",
            "| shape | (B, Cqk, Cv, Nq, Nk) | fwd ms sagan / SDPA | speed-up | fwd+bwd ms sagan / SDPA | speed-up |",
            "|---|---|---:|---:|---:|---:|"]
    for r in rec["head_to_head"]:
        ms, F = r["ms"], "sagan-attn"
        out.append(f"| {r['shape']} | {tuple(r['dims'])} | {ms[F + ' fwd']:.1f} / {ms['sdpa-flash-pad fwd']:.1f} "
                   f"| x{r['speedup_fwd']:.2f} | {ms[F + ' fwd+bwd']:.1f} / {ms['sdpa-flash-pad fwd+bwd']:.1f} "
                   f"| x{r['speedup_fwd+bwd']:.2f} |")
    out += ["", f"Thread scaling (1 thread -> {rec['threads']}; interleaved, speed-up = median of the per-round "
            "ratios):", "",
            "| B | Cqk | Cv | N | fwd ms (1 / all) | speed-up | bwd ms (1 / all) | speed-up |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rec["scaling"]:
        one, all_ = r["ms"]["1"], r["ms"][str(rec["threads"])]
        out.append(f"| {r['B']} | {r['Cqk']} | {r['Cv']} | {r['N']} | {one['fwd']:.1f} / {all_['fwd']:.1f} "
                   f"| x{r['speedup_fwd']:.2f} | {one['bwd']:.1f} / {all_['bwd']:.1f} | x{r['speedup_bwd']:.2f} |")
    out += ["", "bfloat16 vs float32 (interleaved; x = median of the per-round ratios bfloat16 / float32):", "",
            "| (B, Cqk, Cv, Nq, Nk) | rounds | fwd ms bf16 / fp32 | x | bwd ms bf16 / fp32 | x |",
            "|---|---:|---:|---:|---:|---:|"]
    for d in rec["dtypes"]:
        out.append(f"| {tuple(d['shape'])} | {len(d['rounds_ms']['float32 fwd'])} "
                   f"| {d['ms']['bfloat16']['fwd']:.1f} / {d['ms']['float32']['fwd']:.1f} | x{d['bf16_over_fp32_fwd']:.2f} "
                   f"| {d['ms']['bfloat16']['bwd']:.1f} / {d['ms']['float32']['bwd']:.1f} | x{d['bf16_over_fp32_bwd']:.2f} |")
    if rec.get("phases"):
        out += ["", "The forward's phases (bench/cpu_phases.cpp, one thread, the fastest of "
                f"{rec['repeats']} calls; value product h p^T with the rescale; rest: tile copies, final "
                "normalisation):", "",
                "| (B, Cqk, Cv, Nq, Nk) | build | total ms | scores | max | exp | values | rest "
                "| scores GFLOP/s | values GFLOP/s |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for ph in rec["phases"]:
            if "error" in ph:  # the cells of a shape not measured, and why
                out.append(f"| {tuple(ph['shape'])} | not measured: {ph['error']} |" + " - |" * 8)
                continue
            fr = ph["fraction"]
            out.append(f"| {tuple(ph['shape'])} | {ph['isa']} | {ph['total_ms']:.1f} | "
                       + " | ".join(f"{100 * fr[k]:.1f}%" for k in PHASES + ("rest",))
                       + f" | {ph['scores_gflops']:.1f} | {ph['values_gflops']:.1f} |")
    out.append("")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_kernels", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4096, help="Nq = Nk of the grid (default 4096)")
    p.add_argument("--batch", type=int, default=4, help="B of the grid (default 4)")
    p.add_argument("--scaling-n", type=int, default=16384, help="N of the B = 1 scaling case (default 16384)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="one shape per part, small N")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.scaling_n, args.batch, args.repeats = 512, 1024, 1, 2
    rec = run(args)
    stem = write_record(args.out, "cpu-kernels", rec, markdown(rec))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
