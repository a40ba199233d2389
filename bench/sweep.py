"""The benchmark of record: sagan-attn against the notebook module, PyTorch SDPA, FlexAttention and the
dense-matmul roofline, on the attention blocks of published GANs, the CPU targets and a scaling sweep
over N.

    python bench/sweep.py                  # GPU if there is one (bfloat16), else CPU (float32)
    python bench/sweep.py --quick          # a short sweep (the demo's)
    python bench/sweep.py --help

Writes bench/results/<device>-<date>.json (every figure, the machine, torch and CUDA versions, the git
commit), .md (the tables and the targets of issue 4, evaluated on the run) and .png plots. Per shape it
first checks every implementation's output against a float64 oracle (a wrong one is not timed), then
times forward, backward and forward+backward and measures peak memory (sagan_attn.measure's meters;
see bench/measure.py).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script, python bench/sweep.py: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from sagan_attn.measure import cuda_peak, free_cuda, is_oom, mem_available_bytes, median_ms  # noqa: E402

from bench import impls as I  # noqa: E402
from bench import measure as M  # noqa: E402
from bench import report, shapes as S  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
GiB = 2**30


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/sweep.py",
        description="sagan-attn against the notebook module, SDPA (each backend), FlexAttention and the matmul "
        "roofline: time, peak memory, TFLOP/s; writes JSON, Markdown and PNGs.",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available")
    p.add_argument("--dtype", default=None,
                   help="comma list (bfloat16, float16, float32, float64); default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--quick", action="store_true",
                   help="a short sweep: three model shapes (B=1 on CPU) and the CPU targets, scaling from N=256 to "
                   "4096 (CPU) / 16384; without --only, flex (compiled per shape) is left out")
    p.add_argument("--only", default="",
                   help=f"comma list of glob patterns over shape names, shape groups ({', '.join(S.GROUPS)}) and "
                   f"implementations ({', '.join(I.IMPLS)}), e.g. 'biggan*,scaling,notebook,sagan-attn'")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="folder of the results")
    p.add_argument("--max-n", type=int, default=0,
                   help="largest N of the scaling sweep, and of any shape (default 16384 on CPU, 262144 on CUDA)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (default: at least 3 on CPU, 20 on CUDA, more for fast calls until 1 s / 0.3 s "
                   "of them; given: exactly this many)")
    p.add_argument("--mem-budget-gib", type=float, default=None,
                   help="skip the map-building implementations (notebook, sdpa-math) where their estimated "
                   "forward+backward memory exceeds this (default 8 on CPU, capped at 80%% of MemAvailable; "
                   "none on CUDA: out of memory is caught and recorded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(M.WORKER_FLAG, dest="memory_worker", default=None, help=argparse.SUPPRESS)
    return p


class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("bench/sweep.py: --device cuda but torch.cuda.is_available() is False")
        self.device = device
        gpu = device == "cuda"
        names = [d.strip() for d in (args.dtype or ("bfloat16" if gpu else "float32")).split(",") if d.strip()]
        bad = [d for d in names if d not in DTYPES]
        if bad or not names:
            raise SystemExit(f"bench/sweep.py: --dtype: unknown {bad or args.dtype!r}; one of {sorted(DTYPES)}")
        self.dtypes = list(dict.fromkeys(str(DTYPES[d]).replace("torch.", "") for d in names))
        patterns = [p.strip() for p in args.only.split(",") if p.strip()]
        impl_patterns = [p for p in patterns if any(S.matches(i, [p]) for i in I.IMPLS)]
        shape_patterns = [p for p in patterns if p not in impl_patterns]
        all_shapes = S.shapes_for(device, args.quick, args.max_n)
        self.shapes = S.select(all_shapes, shape_patterns)
        self.impls = [i for i in I.IMPLS if not impl_patterns or S.matches(i, impl_patterns)]
        if args.quick and not patterns:  # the demo's smoke sweep: no compilation (10-30 s per shape)
            self.impls = [i for i in self.impls if i not in I.COMPILED]
        if not self.shapes or not self.impls:
            raise SystemExit(f"bench/sweep.py: --only {args.only!r} selects no shape or no implementation; shapes: "
                             f"{', '.join(s.name for s in all_shapes)} (groups {', '.join(S.GROUPS)})")
        self.quick = args.quick
        self.repeats = args.repeats or (20 if gpu else 3)
        self.warmup = 3 if gpu else 1
        # Without --repeats, fast calls repeat until a time budget is spent as well; with it, exactly that many.
        self.budget_s = 0.0 if args.repeats else (0.3 if gpu or args.quick else 1.0)
        budget = args.mem_budget_gib if args.mem_budget_gib is not None else (None if gpu else 8.0)
        if budget is not None and not gpu:
            avail = mem_available_bytes()
            if avail:
                budget = min(budget, 0.8 * avail / GiB)
        self.matmul_s = 0.05 if args.quick else 0.2  # CPU: the time one roofline product takes
        self.mem_budget_bytes = None if budget is None else int(budget * GiB)
        self.out = args.out
        self.progress = not args.no_progress
        self.max_n = args.max_n

    def describe(self) -> dict:
        return {"dtypes": self.dtypes, "shapes": [s.name for s in self.shapes], "impls": self.impls,
                "quick": self.quick, "repeats": self.repeats, "warmup": self.warmup, "budget_s": self.budget_s,
                "mem_budget_bytes": self.mem_budget_bytes, "max_n": self.max_n, "scale": I.SCALE, "gamma": I.GAMMA}


# -- one shape, one dtype --------------------------------------------------------------------------------


def _numbers(r: dict, shape: S.Shape, matmul: float) -> None:
    """TFLOP/s and the fraction of the dense matmul's, from the times."""
    fl = I.flops(shape)
    r["tflops"] = {st: fl[st] / (r["ms"][st] * 1e-3) / 1e12 for st in report.STEPS if report.is_num(r["ms"].get(st))}
    r["matmul_fraction"] = {st: v / matmul for st, v in r["tflops"].items()}


def _timed(fn, cfg: Config, warmup: int):
    try:
        return median_ms(fn, cfg.device, warmup, cfg.repeats, cfg.budget_s,
                         min_repeats=5 if cfg.device == "cuda" else 3)
    except (RuntimeError, NotImplementedError) as err:
        return "n/a (" + " ".join(str(err).split())[:160] + ")"


def run_item(shape: S.Shape, dtype_name: str, cfg: Config, matmul: float, bar=None) -> List[dict]:
    dtype = getattr(torch, dtype_name)
    load = list(os.getloadavg())  # per shape: the machine may be shared
    inputs = I.make_inputs(shape, dtype, cfg.device)
    rows = I.check_rows(shape.Nq)
    expected = I.oracle_rows(inputs, rows)
    tol = I.tolerance(dtype)
    results, ready = [], []
    for name in cfg.impls:
        if bar is not None:
            bar.set_postfix_str(f"{shape.name} {dtype_name} {name}", refresh=True)
        r = {"shape": shape.name, "dtype": dtype_name, "impl": name, "status": "ok", "layout": "",
             "load_average": load, "check": None, "ms": {}, "memory": {}, "tflops": {}, "matmul_fraction": {}}
        results.append(r)
        need = I.estimated_bytes(name, shape, dtype)
        if cfg.mem_budget_bytes is not None and need > cfg.mem_budget_bytes:
            r["status"] = f"skipped (would need {need / GiB:.1f} GiB > budget {cfg.mem_budget_bytes / GiB:.1f} GiB)"
            continue
        try:
            impl, y = I.resolve(name, shape, inputs)
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            free_cuda(cfg.device)
            r["status"] = "OOM"
            continue
        if impl.fn is None:
            r["status"] = f"n/a ({impl.reason})"
            continue
        r["layout"] = impl.layout
        err = I.relative_error(y, expected, rows)
        r["check"] = {"rel_err": err, "tol": tol, "ok": err <= tol, "rows": int(rows.numel()),
                      "oracle": "reference math in float64 at the checked query rows"}
        del y
        if err > tol:  # timed all the same, but report.Run compares it with nothing
            r["status"] = f"wrong (max rel err {err:.2e} > {tol:.0e})"
        # CPU: the check just ran the forward (its warm-up; for a compiled implementation, its
        # compilation, and one more call), and the backward timing warms the forward+backward; CUDA:
        # warm-up calls before every timing.
        gpu = cfg.device == "cuda"
        steps = I.step_fns(impl.fn, inputs)
        r["ms"]["fwd"] = _timed(steps["fwd"], cfg, cfg.warmup if gpu or name in I.COMPILED else 0)
        try:
            bwd = I.backward_fn(impl.fn, inputs)
            r["ms"]["bwd"] = _timed(bwd, cfg, cfg.warmup)
        except (RuntimeError, MemoryError, NotImplementedError) as e:
            r["ms"]["bwd"] = "OOM" if is_oom(e) else "n/a (" + " ".join(str(e).split())[:160] + ")"
        bwd = None
        free_cuda(cfg.device)
        r["ms"]["fwd+bwd"] = _timed(steps["fwd+bwd"], cfg, cfg.warmup if gpu or name in I.COMPILED else 0)
        if gpu:
            for st in ("fwd", "fwd+bwd"):
                if report.is_num(r["ms"][st]):
                    steps["clear"]()
                    m = cuda_peak(steps[st])
                    r["memory"][st] = dict(m, inputs=I.input_bytes(shape, dtype))
                else:
                    r["memory"][st] = r["ms"][st]
        else:
            ready.append((name, impl.layout))
        _numbers(r, shape, matmul)
        del steps
        gc.collect()
        free_cuda(cfg.device)
    if ready:
        if bar is not None:
            bar.set_postfix_str(f"{shape.name} {dtype_name} memory", refresh=True)
        measured = M.cpu_memory({"shape": shape.describe(), "dtype": dtype_name, "impls": ready})
        for r in results:
            if r["impl"] in measured:
                r["memory"] = {st: dict(v, inputs=I.input_bytes(shape, dtype)) for st, v in measured[r["impl"]].items()}
    for r in results:
        if r["status"] != "ok" and not r["memory"]:
            r["memory"] = {st: r["status"] for st in ("fwd", "fwd+bwd")}
            r["ms"] = {st: r["status"] for st in report.STEPS}
    return results


# -- the run ---------------------------------------------------------------------------------------------


def run(cfg: Config, argv: Sequence[str]) -> dict:
    t0 = time.time()
    machine = M.machine(cfg.device)
    date = time.strftime("%Y%m%d-%H%M%S")
    name = "cpu" if cfg.device == "cpu" else M.safe_name(machine["name"])
    stem = os.path.join(cfg.out, f"{name}-{date}" + ("-quick" if cfg.quick else ""))
    print(f"sagan-attn benchmark on {machine['name']} ({cfg.device}, {machine['threads']} threads), "
          f"torch {torch.__version__}, dtypes {', '.join(cfg.dtypes)}; load average {machine['load_average_start']}",
          flush=True)
    matmul = {}
    for d in cfg.dtypes:
        matmul[d] = {"start": M.matmul_tflops(getattr(torch, d), cfg.device, cfg.matmul_s)}
        print(f"dense matmul {d} {matmul[d]['start']['n']}^3: {matmul[d]['start']['tflops']:.3g} TFLOP/s", flush=True)

    items = [(s, d) for d in cfg.dtypes for s in cfg.shapes]
    results: List[dict] = []
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(items, desc="sweep", unit="shape", dynamic_ncols=True, file=sys.stderr)
    for shape, d in (bar if bar is not None else items):
        if bar is None:
            print(f"  {shape.name} {d} ...", flush=True)
        results += run_item(shape, d, cfg, matmul[d]["start"]["tflops"], bar)
    if bar is not None:
        bar.close()

    for d in cfg.dtypes:  # the roofline again: the machine may be shared; the higher figure is used
        end = M.matmul_tflops(getattr(torch, d), cfg.device, cfg.matmul_s)
        matmul[d].update(end=end, n=end["n"], tflops=max(end["tflops"], matmul[d]["start"]["tflops"]))
    for r in results:
        shape = next(s for s in cfg.shapes if s.name == r["shape"])
        _numbers(r, shape, matmul[r["dtype"]]["tflops"])

    shapes = []
    for s in cfg.shapes:
        shapes.append(dict(s.describe(), features=s.features, flops=I.flops(s),
                           map_bytes={d: I.map_bytes(s, getattr(torch, d)) for d in cfg.dtypes},
                           input_bytes={d: I.input_bytes(s, getattr(torch, d)) for d in cfg.dtypes}))
    machine["load_average_end"] = list(os.getloadavg())
    record = {
        "schema": "sagan-attn-bench/1",
        "run": {
            "machine": machine,
            "git": M.git_state(ROOT),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)
                                                          if os.path.isabs(sys.argv[0]) else sys.argv[0], *argv]),
            "duration_s": time.time() - t0,
            "load_average_end": machine["load_average_end"],
            "config": cfg.describe(),
        },
        "matmul": matmul,
        "shapes": shapes,
        "results": results,
    }
    rec = report.Run(record)
    record["largest_n"] = {d: {i: rec.largest_n(d, i) for i in rec.impls} for d in cfg.dtypes}
    record["ratios"] = _ratios(rec)
    record["targets"] = report.evaluate_targets(rec)

    os.makedirs(cfg.out, exist_ok=True)
    _write_json(record, stem + ".json")  # first, so that a failure in the plots loses no figure
    from bench import plot

    record["plots"] = plot.plot_all(record, stem)
    _write_json(record, stem + ".json")
    md = report.markdown(record)
    with open(stem + ".md", "w") as fh:
        fh.write(md)
    record["files"] = [stem + ".json", stem + ".md"] + [os.path.join(cfg.out, p) for p in record["plots"]]
    return record


def _write_json(record: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(record, fh, indent=1)
        fh.write("\n")


def _ratios(run: report.Run) -> Dict[str, dict]:
    """Per dtype, shape and implementation: its time and fwd+bwd peak memory over sagan-attn's."""
    out: Dict[str, dict] = {}
    for (shape, dtype, impl), r in run.results.items():
        if impl == I.FUSED:
            continue
        entry = {st: report.ratio(run.ms(shape, dtype, impl, st), run.ms(shape, dtype, I.FUSED, st))
                 for st in report.STEPS}
        entry["memory_fwd+bwd"] = report.ratio(run.mem(shape, dtype, impl), run.mem(shape, dtype, I.FUSED))
        out.setdefault(dtype, {}).setdefault(shape, {})[impl] = entry
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.memory_worker is not None:
        return M.memory_worker(args.memory_worker)
    cfg = Config(args)
    record = run(cfg, argv)
    md_path = record["files"][1]
    with open(md_path) as fh:
        md = fh.read()
    print()
    print(md.split("\n## Model shapes", 1)[0] if "\n## Model shapes" in md else md)
    for d in cfg.dtypes:
        rec = report.Run(record)
        if rec.model_shapes():
            print(f"sagan-attn, model shapes, {d}:\n" + report.headline(rec, d) + "\n")
        if rec.cpu_target_shapes():
            print(f"sagan-attn, CPU targets, {d}:\n" + report.cpu_targets(rec, d) + "\n")
    print("written:\n  " + "\n  ".join(os.path.relpath(p) for p in record["files"]))
    wrong = [r for r in record["results"] if r["status"].startswith("wrong")]
    for r in wrong:
        print(f"WRONG: {r['impl']} at {r['shape']} {r['dtype']}: {r['status']}")
    fused_wrong = any(r["impl"] == I.FUSED for r in wrong)
    return 1 if fused_wrong else 0


if __name__ == "__main__":
    sys.exit(main())
