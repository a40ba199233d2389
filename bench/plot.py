"""PNG plots of a run's record: for each dtype, time and peak memory against N on the scaling sweep
(log-log, one line per implementation) and the model shapes as bars (time relative to sagan-attn).

``python -m bench.plot bench/results/<run>.json`` redraws them beside the JSON.
"""
from __future__ import annotations

import os
import sys
from typing import List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from .impls import FLEX, FUSED  # noqa: E402
from .report import MiB, Run, is_num  # noqa: E402
from .shapes import SCALING_B, SCALING_C  # noqa: E402

COLOURS = {
    "notebook": "tab:red",
    "sdpa-math": "tab:orange",
    "sdpa-efficient": "tab:olive",
    "sdpa-cudnn": "tab:purple",
    "sdpa-flash": "tab:brown",
    "sdpa-flash-pad": "tab:blue",
    FLEX: "tab:cyan",
    FUSED: "tab:green",
}


def _title(run: Run, what: str, dtype: str) -> str:
    m = run.info["machine"]
    return f"{what}, {dtype}\n{m['name']} ({run.device}), commit {run.info['git']['commit'][:10]}"


def scaling_plot(run: Run, dtype: str, kind: str, path: str) -> bool:
    """kind 'time' (median ms) or 'memory' (peak beyond the inputs); panels fwd and fwd+bwd."""
    names = run.scaling_shapes()
    if len(names) < 2:
        return False
    n_all = [run.shapes[n]["Nq"] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), squeeze=False)
    drawn = False
    for ax, step in zip(axes[0], ("fwd", "fwd+bwd")):
        series = {}
        for impl in run.impls:
            pts = []
            for n in names:
                v = run.ms(n, dtype, impl, step) if kind == "time" else run.mem(n, dtype, impl, step)
                if is_num(v) and v > 0:
                    pts.append((run.shapes[n]["Nq"], v if kind == "time" else v / MiB))
            if pts:
                series[impl] = pts
        if not series:
            ax.set_axis_off()
            ax.set_title(f"{step}: no figures")
            continue
        drawn = True
        for impl, pts in series.items():
            xs, ys = zip(*pts)
            label = impl + ("" if max(xs) == max(n_all) else f" (up to N={max(xs)})")
            ax.plot(xs, ys, marker="o", ms=4, lw=2.2 if impl == FUSED else 1.3, color=COLOURS.get(impl),
                    label=label)
        if kind == "memory":
            _guides(ax, series)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"N = H x W (B={SCALING_B}, C={SCALING_C}, Cqk={SCALING_C // 8}, Cv={SCALING_C})")
        ax.set_ylabel("median time, ms" if kind == "time" else "peak beyond the inputs, MiB")
        ax.set_title(step)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    what = "time" if kind == "time" else "peak memory"
    fig.suptitle(_title(run, f"Scaling: {what} against N", dtype), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _guides(ax, series: dict) -> None:
    """Grey lines proportional to N and to N^2 through the lowest first point, for reading slopes."""
    firsts = [pts[0] for pts in series.values()]
    x0, y0 = min(firsts, key=lambda p: (p[0], p[1]))
    x1 = max(p[0] for pts in series.values() for p in pts)
    ax.plot([x0, x1], [y0, y0 * x1 / x0], ":", color="grey", lw=1, label="~ N")
    ax.plot([x0, x1], [y0, y0 * (x1 / x0) ** 2], "--", color="grey", lw=1, label="~ N^2")


def shapes_plot(run: Run, dtype: str, path: str) -> bool:
    """Bars: each implementation's median time over sagan-attn's, per model shape (log scale past 8x)."""
    names = [n for n in run.model_shapes() if run.get(n, dtype, FUSED)]
    impls = [i for i in run.impls if any(is_num(run.ms(n, dtype, i, "fwd")) for n in names)]
    if not names or not impls:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(names) + 3), 8), squeeze=False)
    width = 0.8 / len(impls)
    for ax, step in zip(axes[:, 0], ("fwd", "fwd+bwd")):
        for k, impl in enumerate(impls):
            for j, n in enumerate(names):
                t, ref = run.ms(n, dtype, impl, step), run.ms(n, dtype, FUSED, step)
                x = j + (k - (len(impls) - 1) / 2) * width
                if is_num(t) and is_num(ref):
                    ax.bar(x, t / ref, width, color=COLOURS.get(impl), label=impl if j == 0 else None)
                elif t is not None:
                    ax.text(x, 1, str(t).split(" ")[0], rotation=90, ha="center", va="bottom", fontsize=6)
            if not any(is_num(run.ms(n, dtype, impl, step)) for n in names):
                ax.bar([], [], color=COLOURS.get(impl), label=impl)
        ax.axhline(1, color="black", lw=0.8)
        ratios = [run.ms(n, dtype, i, step) / run.ms(n, dtype, FUSED, step) for i in impls for n in names
                  if is_num(run.ms(n, dtype, i, step)) and is_num(run.ms(n, dtype, FUSED, step))]
        if ratios and max(ratios) > 8:  # a wide range (GPU against the notebook): log scale
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{n}\n{run.shapes[n]['features']} B={run.shapes[n]['B']}" for n in names], fontsize=7)
        ax.set_ylabel("time / sagan-attn time")
        ax.set_title(f"{step} (above 1x: slower than sagan-attn; OOM / skipped / n/a written in place)", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(impls))
    fig.suptitle(_title(run, "Model shapes: median time relative to sagan-attn", dtype), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_all(record: dict, stem: str) -> List[str]:
    """Draws every plot of the record as <stem>-<dtype>-<what>.png; returns the file names."""
    run = Run(record)
    out = []
    for dtype in run.dtypes:
        for what, draw in (("shapes", lambda p: shapes_plot(run, dtype, p)),
                           ("scaling-time", lambda p: scaling_plot(run, dtype, "time", p)),
                           ("scaling-memory", lambda p: scaling_plot(run, dtype, "memory", p))):
            path = f"{stem}-{dtype}-{what}.png"
            if draw(path):
                out.append(os.path.basename(path))
    return out


def main(argv: Sequence[str]) -> int:
    import json

    for path in argv:
        with open(path) as fh:
            record = json.load(fh)
        print("\n".join(plot_all(record, os.path.splitext(path)[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
