"""From the record of a run (the JSON) to its Markdown: the headline table, the targets of issue 4
evaluated on the run's own figures, the CPU targets against sdpa-flash-pad and flex (issue 14), every
implementation's figures, and the scaling sweep.

Everything here reads the record only, so a committed JSON can be re-rendered:
``python -m bench.report bench/results/<run>.json``.
"""
from __future__ import annotations

import math
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .impls import FLEX, FUSED, IMPLS, NOTEBOOK

MiB = 2**20
GiB = 2**30
STEPS = ("fwd", "bwd", "fwd+bwd")
# What sagan-attn is compared with on the CPU target shapes (issue 14): the fastest fused alternatives.
CPU_TARGET_RIVALS = ("sdpa-flash-pad", FLEX)


# -- reading the record ------------------------------------------------------------------------------


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Run:
    """Look-ups into a record: results by (shape, dtype, impl), shapes by name."""

    def __init__(self, record: dict) -> None:
        self.record = record
        self.info = record["run"]
        self.device = self.info["machine"]["device"]
        self.dtypes: List[str] = self.info["config"]["dtypes"]
        self.shapes = {s["name"]: s for s in record["shapes"]}
        self.order = [s["name"] for s in record["shapes"]]
        self.results = {(r["shape"], r["dtype"], r["impl"]): r for r in record["results"]}
        self.impls = [i for i in IMPLS if any(k[2] == i for k in self.results)]

    def get(self, shape: str, dtype: str, impl: str) -> Optional[dict]:
        return self.results.get((shape, dtype, impl))

    def ms(self, shape: str, dtype: str, impl: str, step: str):
        """The median ms of a step, or why there is none. An implementation whose output failed the
        correctness check reads as its status: its figures stay in the record but compare with nothing."""
        r = self.get(shape, dtype, impl)
        if r is None or r["status"].startswith("wrong"):
            return None if r is None else r["status"]
        return r["ms"].get(step, r["status"])

    def mem(self, shape: str, dtype: str, impl: str, step: str = "fwd+bwd", key: str = "extra"):
        """Peak bytes of a step beyond the inputs ('extra') or in all ('peak'), or why there is none."""
        r = self.get(shape, dtype, impl)
        if r is None or r["status"].startswith("wrong"):
            return None if r is None else r["status"]
        m = r["memory"].get(step)
        return m.get(key) if isinstance(m, dict) else (m if m is not None else r["status"])

    def model_shapes(self) -> List[str]:
        """The GAN blocks and, on a CPU run, the CPU targets: every shape but the scaling sweep's."""
        return [n for n in self.order if self.shapes[n]["group"] in ("models", "cpu-target")]

    def cpu_target_shapes(self) -> List[str]:
        return [n for n in self.order if self.shapes[n]["group"] == "cpu-target"]

    def scaling_shapes(self) -> List[str]:
        return sorted((n for n in self.order if self.shapes[n]["group"] == "scaling"),
                      key=lambda n: self.shapes[n]["Nq"])

    def sdpa_impls(self) -> List[str]:
        return [i for i in self.impls if i.startswith("sdpa-")]

    def best_sdpa(self, shape: str, dtype: str, step: str) -> Tuple[Optional[str], Optional[float]]:
        """The fastest SDPA variant that ran the shape (copies included), and its time."""
        times = [(self.ms(shape, dtype, i, step), i) for i in self.sdpa_impls()]
        times = [(t, i) for t, i in times if is_num(t)]
        if not times:
            return None, None
        t, i = min(times)
        return i, t

    def largest_n(self, dtype: str, impl: str) -> Optional[int]:
        """The largest N of the scaling sweep at which impl ran a forward+backward."""
        ran = [self.shapes[n]["Nq"] for n in self.scaling_shapes() if is_num(self.ms(n, dtype, impl, "fwd+bwd"))]
        return max(ran) if ran else None


# -- formatting ----------------------------------------------------------------------------------------


def short(v) -> str:
    """A cell for a value that is not a number: 'OOM', 'n/a', 'skipped', 'wrong', ..."""
    if v is None:
        return "-"
    text = str(v)
    for word in ("OOM", "n/a", "skipped", "wrong", "error"):
        if text.startswith(word):
            return word
    return text


def fmt_ms(v) -> str:
    if not is_num(v):
        return short(v)
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def fmt_mib(v) -> str:
    if not is_num(v):
        return short(v)
    return f"{v / MiB:.3g}" if v < 100 * MiB else f"{v / MiB:.0f}"


def ratio(num, den) -> Optional[float]:
    return num / den if is_num(num) and is_num(den) and den > 0 else None


def fmt_x(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v:.2f}x" if v < 10 else f"{v:.1f}x" if v < 100 else f"{v:.0f}x")


def fmt_pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.3g}%"


def rate_unit(run: "Run") -> Tuple[str, float]:
    """GFLOP/s on a CPU, TFLOP/s on a GPU (the JSON holds TFLOP/s either way)."""
    return ("TFLOP/s", 1.0) if run.device == "cuda" else ("GFLOP/s", 1e3)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    align = ["---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def shape_label(s: dict) -> str:
    return f"{s['name']}"


def shape_dims(s: dict) -> str:
    nk = f"{s['Nk']}" if s["Nk"] != s["Nq"] else "="
    return f"{s['B']} / {s['Cqk']} / {s['Cv']} / {s['Nq']} / {nk}"


# -- targets -------------------------------------------------------------------------------------------


def _target(name: str, device: str, dtype: str, run: Run, evaluate) -> dict:
    """Evaluates one target: status 'pass' / 'fail' on its device and dtype, else 'n.a.' with what this
    run measured of it (in the run's first dtype) for information."""
    here = run.device == device and dtype in run.dtypes
    use = dtype if dtype in run.dtypes else run.dtypes[0]
    ok, text = evaluate(use)
    if not here:
        status = "n.a."
        text = f"{device} target ({dtype}); on this run ({run.device}, {use}): {text}"
    else:
        status = "n.a." if ok is None else ("pass" if ok else "fail")
    return {"target": name, "device": device, "dtype": dtype, "status": status, "measured": text}


def evaluate_targets(run: Run) -> List[dict]:
    models = run.model_shapes()

    def speedup_64(dtype):
        rows = [n for n in models if run.shapes[n]["H"] == 64 and run.shapes[n]["W"] == 64
                and run.shapes[n]["group"] == "models"]
        parts, ok = [], True
        for n in rows:
            nb, fu = run.ms(n, dtype, NOTEBOOK, "fwd+bwd"), run.ms(n, dtype, FUSED, "fwd+bwd")
            r = ratio(nb, fu)
            if r is None and is_num(fu) and short(nb) in ("OOM", "skipped"):
                parts.append(f"{n}: notebook {short(nb)}")
                continue
            if r is None:
                return None, f"{n}: no figures"
            ok &= r >= 5
            parts.append(f"{n}: {fmt_x(r)}")
        return (ok if parts else None), "; ".join(parts) or "no 64x64 model shape in this run"

    def runs_where_oom(dtype):
        nb, fu = run.largest_n(dtype, NOTEBOOK), run.largest_n(dtype, FUSED)
        sweep = [run.shapes[n]["Nq"] for n in run.scaling_shapes()]
        if not sweep or fu is None:
            return None, "no scaling sweep with sagan-attn figures"
        text = f"largest N (B=1, C=128): sagan-attn {fu}, notebook {nb or 'none'}"
        others = [f"{i} {run.largest_n(dtype, i)}" for i in run.sdpa_impls() if run.largest_n(dtype, i)]
        if others:
            text += ", " + ", ".join(others)
        if nb is not None and nb >= max(sweep):
            return None, text + " (the notebook ran at every N of the sweep: raise --max-n)"
        return fu > (nb or 0), text

    def fwd_vs_sdpa(dtype):
        parts, worst = [], None
        for n in models:
            fu = run.ms(n, dtype, FUSED, "fwd")
            impl, best = run.best_sdpa(n, dtype, "fwd")
            r = ratio(best, fu)
            if r is None:
                continue
            worst = r if worst is None else min(worst, r)
            parts.append(f"{n}: {fmt_x(r)} ({impl})")
        if worst is None:
            return None, "no shape with both sagan-attn and an SDPA backend"
        return worst >= 1.5, f"worst {fmt_x(worst)}; " + "; ".join(parts)

    def roofline(step, goal):
        def evaluate(dtype):
            rows = [n for n in models if n.startswith("biggan-deep")]
            parts, ok = [], True
            for n in rows:
                r = run.get(n, dtype, FUSED)
                frac = r["matmul_fraction"].get(step) if r else None
                if not is_num(frac):
                    return None, f"{n}: no figure"
                ok &= frac >= goal
                unit, factor = rate_unit(run)
                parts.append(f"{n}: {factor * r['tflops'][step]:.3g} {unit} = {fmt_pct(frac)} of matmul")
            return (ok if parts else None), "; ".join(parts) or "no BigGAN-deep shape in this run"
        return evaluate

    def fp32_not_slower(dtype):
        if dtype != "float32":
            return None, "float32 not in this run (--dtype bfloat16,float32)"
        worst = None
        for n in run.order:
            for step in ("fwd", "fwd+bwd"):
                r = ratio(run.ms(n, dtype, NOTEBOOK, step), run.ms(n, dtype, FUSED, step))
                if r is not None and (worst is None or r < worst[0]):
                    worst = (r, n, step)
        if worst is None:
            return None, "no shape with both figures"
        return worst[0] >= 1.0, f"slowest relative: {worst[1]} {worst[2]}, notebook / sagan-attn = {fmt_x(worst[0])}"

    def memory_linear(dtype):
        pts = [(run.shapes[n]["Nq"], run.mem(n, dtype, FUSED)) for n in run.scaling_shapes()]
        pts = [(n, m) for n, m in pts if is_num(m) and m > 0]
        # The three largest N: at small N fixed costs (thread workspaces, page granularity) blur the slope.
        if len(pts) < 3:
            return None, "fewer than 3 points of the scaling sweep"
        top = pts[-3:]
        slope = loglog_slope(top)
        nb = [(run.shapes[n]["Nq"], run.mem(n, dtype, NOTEBOOK)) for n in run.scaling_shapes()]
        nb = [(n, m) for n, m in nb if is_num(m) and m > 0]
        text = (f"log-log slope of fwd+bwd peak over N = {top[0][0]}..{top[-1][0]}: {slope:.2f} "
                f"(linear 1, quadratic 2); {fmt_mib(top[-1][1])} MiB at N = {top[-1][0]}")
        if len(nb) >= 2:
            text += f"; notebook slope {loglog_slope(nb[-3:]):.2f}"
        return slope <= 1.1, text

    def cpu_speed(dtype):
        r = ratio(run.ms("cpu-target", dtype, NOTEBOOK, "fwd+bwd"), run.ms("cpu-target", dtype, FUSED, "fwd+bwd"))
        if r is None:
            return None, "cpu-target not in this run"
        return r >= 2, (f"fwd+bwd notebook {fmt_ms(run.ms('cpu-target', dtype, NOTEBOOK, 'fwd+bwd'))} ms / "
                        f"sagan-attn {fmt_ms(run.ms('cpu-target', dtype, FUSED, 'fwd+bwd'))} ms = {fmt_x(r)}")

    def cpu_memory(dtype):
        fu, nb = run.mem("cpu-target", dtype, FUSED), run.mem("cpu-target", dtype, NOTEBOOK)
        r = ratio(fu, nb)
        if r is None:
            return None, "cpu-target memory not in this run"
        return r <= 0.05, f"fwd+bwd peak sagan-attn {fmt_mib(fu)} MiB / notebook {fmt_mib(nb)} MiB = {fmt_pct(r)}"

    def cpu_sdpa_math(dtype):
        if "cpu-target" not in run.shapes:
            return None, "cpu-target not in this run"
        fu = run.ms("cpu-target", dtype, FUSED, "fwd+bwd")
        sd = run.ms("cpu-target", dtype, "sdpa-math", "fwd+bwd")
        r = ratio(sd, fu)
        if r is None:
            return False, f"no sdpa-math figures at cpu-target ({short(sd)})"
        fwd = ratio(run.ms("cpu-target", dtype, "sdpa-math", "fwd"), run.ms("cpu-target", dtype, FUSED, "fwd"))
        return True, f"sdpa-math / sagan-attn: fwd {fmt_x(fwd)}, fwd+bwd {fmt_x(r)}"

    return [
        _target("fwd+bwd >= 5x faster than the notebook at 64x64 features", "cuda", "bfloat16", run, speedup_64),
        _target("runs where the notebook runs out of memory (largest N)", "cuda", "bfloat16", run, runs_where_oom),
        _target("fwd >= 1.5x faster than the fastest SDPA backend, copies included", "cuda", "bfloat16", run,
                fwd_vs_sdpa),
        _target("fwd >= 50% of dense matmul TFLOP/s at BigGAN-deep", "cuda", "bfloat16", run, roofline("fwd", 0.5)),
        _target("bwd >= 35% of dense matmul TFLOP/s at BigGAN-deep", "cuda", "bfloat16", run, roofline("bwd", 0.35)),
        _target("float32 not slower than the notebook in float32, any shape", "cuda", "float32", run, fp32_not_slower),
        _target("fwd+bwd peak memory linear in N", "cuda", "bfloat16", run, memory_linear),
        _target("CPU: fwd+bwd >= 2x faster than the notebook (N=4096, B=4, C=64)", "cpu", "float32", run, cpu_speed),
        _target("CPU: fwd+bwd peak memory <= 5% of the notebook's (same shape)", "cpu", "float32", run, cpu_memory),
        _target("CPU: a row against SDPA's math backend (same shape)", "cpu", "float32", run, cpu_sdpa_math),
    ]


def loglog_slope(points: Sequence[Tuple[float, float]]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


# -- the Markdown --------------------------------------------------------------------------------------


def headline(run: Run, dtype: str) -> str:
    rows = []
    for n in run.model_shapes():
        s = run.shapes[n]
        fu = run.get(n, dtype, FUSED)
        if fu is None:
            continue
        nb = {st: ratio(run.ms(n, dtype, NOTEBOOK, st), run.ms(n, dtype, FUSED, st)) for st in ("fwd", "fwd+bwd")}
        sd = {}
        for st in ("fwd", "fwd+bwd"):
            impl, best = run.best_sdpa(n, dtype, st)
            r = ratio(best, run.ms(n, dtype, FUSED, st))
            sd[st] = f"{fmt_x(r)} ({impl[5:]})" if r is not None else "-"
        nb_cell = {st: fmt_x(nb[st]) if nb[st] is not None else short(run.ms(n, dtype, NOTEBOOK, st))
                   for st in nb}
        mem_fu, mem_nb = run.mem(n, dtype, FUSED), run.mem(n, dtype, NOTEBOOK)
        frac = fu.get("matmul_fraction", {})
        rows.append([
            f"{n} ({s['model']}, {s['features']}, {s['variant']})", shape_dims(s),
            fmt_ms(run.ms(n, dtype, FUSED, "fwd")), fmt_ms(run.ms(n, dtype, FUSED, "fwd+bwd")),
            nb_cell["fwd"], nb_cell["fwd+bwd"], sd["fwd"], sd["fwd+bwd"],
            f"{fmt_mib(mem_fu)} / {fmt_mib(mem_nb)}",
            fmt_pct(frac.get("fwd")), fmt_pct(frac.get("bwd")),
        ])
    return table(["shape", "B / Cqk / Cv / Nq / Nk", "fwd ms", "fwd+bwd ms", "vs notebook fwd", "fwd+bwd",
                  "vs best SDPA fwd", "fwd+bwd", "fwd+bwd peak MiB (notebook)", "fwd % matmul",
                  "bwd % matmul"], rows, left=2)


def cpu_targets(run: Run, dtype: str) -> str:
    """The CPU target shapes: sagan-attn's times, its ratios against sdpa-flash-pad and flex (their time
    over sagan-attn's, or why there is none), and its forward rate against the matmul roofline of the run."""
    unit, factor = rate_unit(run)
    mm = run.record.get("matmul", {}).get(dtype, {}).get("tflops")
    rows = []
    for n in run.cpu_target_shapes():
        s = run.shapes[n]
        fu = run.get(n, dtype, FUSED)
        if fu is None:
            continue
        cells = []
        for rival in CPU_TARGET_RIVALS:
            for st in ("fwd", "fwd+bwd"):
                other = run.ms(n, dtype, rival, st)
                r = ratio(other, run.ms(n, dtype, FUSED, st))
                cells.append(fmt_x(r) if r is not None else short(other))
        rate = fu.get("tflops", {}).get("fwd")
        rows.append([
            f"{n} ({s['variant']})", shape_dims(s),
            fmt_ms(run.ms(n, dtype, FUSED, "fwd")), fmt_ms(run.ms(n, dtype, FUSED, "fwd+bwd")), *cells,
            f"{factor * rate:.3g}" if is_num(rate) else "-",
            fmt_pct(fu.get("matmul_fraction", {}).get("fwd")),
        ])
    head = ["shape", "B / Cqk / Cv / Nq / Nk", "fwd ms", "fwd+bwd ms"]
    for rival in CPU_TARGET_RIVALS:
        head += [f"vs {rival} fwd", "fwd+bwd"]
    head += [f"fwd {unit}", "fwd % matmul"]
    text = table(head, rows, left=2)
    if is_num(mm):
        text += (f"\n\nRatios: the other implementation's median time over sagan-attn's. Matmul roofline of this "
                 f"run: {factor * mm:.3g} {unit} ({dtype}).")
    return text


def all_impls(run: Run, dtype: str, shapes: Sequence[str]) -> str:
    unit, factor = rate_unit(run)
    rows = []
    for n in shapes:
        for impl in run.impls:
            r = run.get(n, dtype, impl)
            if r is None or r["status"].startswith("n/a"):
                continue
            check = r.get("check") or {}
            err = check.get("rel_err")
            rows.append([
                n, impl,
                *(fmt_ms(run.ms(n, dtype, impl, st)) for st in STEPS),
                *(fmt_x(ratio(run.ms(n, dtype, impl, st), run.ms(n, dtype, FUSED, st))) for st in ("fwd", "fwd+bwd")),
                fmt_mib(run.mem(n, dtype, impl, "fwd")), fmt_mib(run.mem(n, dtype, impl, "fwd+bwd")),
                *(f"{factor * r['tflops'][st]:.3g}" if is_num(r["tflops"].get(st)) else "-" for st in ("fwd", "bwd")),
                fmt_pct(r["matmul_fraction"].get("fwd")),
                f"{err:.1e}" if is_num(err) else short(r["status"]),
            ])
    return table(["shape", "implementation", "fwd ms", "bwd ms", "fwd+bwd ms", "fwd / sagan-attn",
                  "fwd+bwd / sagan-attn", "peak fwd MiB", "peak fwd+bwd MiB", f"fwd {unit}", f"bwd {unit}",
                  "fwd % matmul", "max rel err"], rows, left=2)


def scaling(run: Run, dtype: str) -> str:
    names = run.scaling_shapes()
    impls = [i for i in run.impls if any(is_num(run.ms(n, dtype, i, "fwd")) for n in names)]
    rows = []
    for n in names:
        rows.append([str(run.shapes[n]["Nq"])]
                    + [fmt_ms(run.ms(n, dtype, i, "fwd+bwd")) for i in impls]
                    + [fmt_mib(run.mem(n, dtype, i)) for i in impls])
    head = ["N"] + [f"{i} ms" for i in impls] + [f"{i} MiB" for i in impls]
    text = table(head, rows)
    reach = ", ".join(f"{i} {run.largest_n(dtype, i) or 'none'}" for i in impls)
    return text + f"\n\nLargest N with a forward+backward: {reach}."


def not_run(run: Run, dtype: str) -> str:
    """Implementations that did not run some shapes, grouped by reason."""
    reasons: Dict[Tuple[str, str], List[str]] = {}
    for (n, d, impl), r in run.results.items():
        if d == dtype and r["status"] != "ok":
            # the first sentence: PyTorch's reasons go on with the sizes of the shape (kept in the JSON)
            why = r["status"].split(". ")[0]
            why = why + ")" if why.count("(") > why.count(")") else why
            reasons.setdefault((impl, why), []).append(n)
    lines = [f"- {impl}: {why} ({', '.join(names) if len(names) < len(run.order) else 'every shape'})"
             for (impl, why), names in sorted(reasons.items())]
    return "\n".join(lines) if lines else "Every implementation ran every shape."


def _load_range(record: dict) -> str:
    loads = [r["load_average"][0] for r in record["results"] if r.get("load_average")]
    return f"; 1-min load at the start of each shape {min(loads):.2f} .. {max(loads):.2f}" if loads else ""


def markdown(record: dict) -> str:
    run = Run(record)
    info, m = run.info, run.info["machine"]
    git = info["git"]
    lines = [
        f"# sagan-attn benchmark: {m['name']} ({run.device}), {', '.join(run.dtypes)}",
        "",
        f"- date {info['date']}; commit `{git['commit'][:10]}`"
        + (" (tree dirty: " + ", ".join(git["dirty_files"]) + ")" if git.get("dirty") else " (clean tree)"),
        f"- torch {m['torch']}, CUDA {m['cuda'] or '-'}, Python {m['python']}; sagan_attn "
        f"{m['sagan_attn'].get('version', '?')} (cpu_isa {m['sagan_attn'].get('cpu_isa', '-')}, "
        f"cuda {m['sagan_attn'].get('cuda', '-')})",
        f"- {m['cpu']}, {m['threads']} threads"
        + (f"; GPU {m['name']}, {m['gpu_memory_bytes'] / GiB:.0f} GiB, TF32 matmul {m['tf32_matmul']}"
           if run.device == "cuda" else ""),
        f"- load average at start {' / '.join(f'{v:.2f}' for v in m['load_average_start'])}, at end "
        f"{' / '.join(f'{v:.2f}' for v in info.get('load_average_end', []))} (1 / 5 / 15 min; the machine may be "
        f"shared){_load_range(record)}",
        f"- command: `{info['command']}` ({info['duration_s']:.0f} s)",
        "- dense matmul (roofline, best of the start and the end of the run): "
        + "; ".join(f"{d} {v['n']}^3: {rate_unit(run)[1] * v['tflops']:.3g} {rate_unit(run)[0]}"
                    for d, v in record["matmul"].items()),
        "",
        "Op level: f, g, h and x are given (the 1x1 convolutions are the same for every implementation and "
        "left out); scale = 1, gamma = 0.5. Times are medians "
        + ("(CUDA events)" if run.device == "cuda" else "(wall time)")
        + f", ms; at least {info['config']['repeats']} repeats after warm-up. fwd: inference forward (no grad); "
        "bwd: the backward alone (gradients of f, g, h, x, gamma); fwd+bwd: both. Peak: memory beyond the "
        "inputs during the step (" + ("torch.cuda.max_memory_allocated" if run.device == "cuda" else
                                      "peak RSS growth of a fresh process") + "). "
        "TFLOP/s counts 2 B Nq Nk (Cqk + Cv) per forward, 2.5x that per backward, for every implementation "
        "(the issue's convention; the exact backward count, 2 B Nq Nk (3 Cqk + 2 Cv), is about 2.1x the "
        "forward at Cqk = C/8, so backward fractions of the matmul read high). "
        "Variants: paper = Cv = C, Nk = N; pooled = official SAGAN/BigGAN code, Cv = C/2, keys and values "
        "2x2 max-pooled, Nk = N/4; kv-pooled = Cv = C, keys and values 2x2 max-pooled; Cqk = C/8 in all. "
        "Ratios are the other time / sagan-attn's (above 1: sagan-attn faster).",
    ]
    targets = record.get("targets") or evaluate_targets(run)
    lines += ["", "## Targets (issue 4), evaluated on this run", "",
              table(["target", "device, dtype", "status", "measured"],
                    [[t["target"], f"{t['device']}, {t['dtype']}", f"**{t['status']}**", t["measured"]]
                     for t in targets], left=4)]
    for dtype in run.dtypes:
        if run.model_shapes():
            lines += ["", f"## Model shapes, {dtype}: sagan-attn", "", headline(run, dtype)]
        if run.cpu_target_shapes():
            lines += ["", f"## CPU targets, {dtype}: sagan-attn against {' and '.join(CPU_TARGET_RIVALS)}", "",
                      cpu_targets(run, dtype)]
        if run.model_shapes():
            lines += ["", f"## Model shapes, {dtype}: every implementation", "",
                      all_impls(run, dtype, run.model_shapes())]
        if run.scaling_shapes():
            lines += ["", f"## Scaling sweep, {dtype}: B=1, C=128 (Cqk=16, Cv=128), paper variant; fwd+bwd", "",
                      scaling(run, dtype)]
            lines += ["", f"### Scaling sweep, {dtype}: every implementation", "",
                      all_impls(run, dtype, run.scaling_shapes())]
        lines += ["", f"## Not run, {dtype}", "", not_run(run, dtype)]
    if record.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in record["plots"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    import json

    for path in argv:
        with open(path) as fh:
            record = json.load(fh)
        sys.stdout.write(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
