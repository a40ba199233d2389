"""Gradient-penalty step benchmark: an R1 step through a discriminator block with attention.

    python -m bench.penalty                      # 64x64 and 128x128 features, B=1, C=64 (Cqk=8), float32
    python -m bench.penalty --sizes 32 64 --repeats 5 --out bench/results

The block is SAGAN's attention with its 1x1 convs: f, g, h = W x, y = attention(f, g, h, x, gamma); the
step is R1's: D = <y, w>, grad_x D with create_graph=True, penalty = ||grad_x D||^2, then the penalty's
backward to the weights, gamma and x (second derivatives of the attention). Implementations, same
weights and inputs:
  fused       torch.ops.sagan.self_attn: fused backward and fused double backward (O(N) memory)
  composite   the op's forward with the closed-form backward of sagan_attn.reference differentiated
              by autograd: what sagan-attn did under create_graph before the fused double backward
  notebook    sagan_attn.reference.self_attn: bmm, softmax, bmm (the bmm module users have today)
  sdpa-math   F.scaled_dot_product_attention with the math backend (the one SDPA backend that has a
              second derivative), q = f^T, k = g^T, v = h^T
Time is the median of repeated steps (wall time); peak memory the growth of the resident set of a fresh
worker process during one step (both by sagan_attn.measure, the meters of the demo and the sweep). Ratios are against the notebook, measured
in the same run. Writes penalty-<stamp>.json and .md under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sagan_attn  # noqa: F401  (registers torch.ops.sagan)
from sagan_attn import reference
from sagan_attn.measure import cpu_peak_bytes, emit, median_ms, run_worker

from .measure import commit_text, git_state, machine, write_record

IMPLS = ["fused", "composite", "notebook", "sdpa-math"]
WORKER_FLAG = "--_worker"


class _CompositeBackward(torch.autograd.Function):
    """The op's forward; its backward is the reference's closed form, differentiable by autograd."""

    @staticmethod
    def forward(ctx, f, g, h, x, gamma):
        ctx.save_for_backward(f, g, h, gamma)
        return torch.ops.sagan.self_attn(f, g, h, x, gamma, 1.0)

    @staticmethod
    def backward(ctx, dy):
        f, g, h, gamma = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() if not t.requires_grad else t for t in (f, g, h, gamma)]
            y = reference.self_attn(*leaves[:3], None, leaves[3], 1.0)
            grads = torch.autograd.grad(y, leaves, dy, create_graph=torch.is_grad_enabled())
        return grads[0], grads[1], grads[2], dy, grads[3]


def _sdpa_math(f, g, h, x, gamma):
    q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in (f, g, h))
    with sdpa_kernel(SDPBackend.MATH):
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return gamma * o.squeeze(1).transpose(1, 2) + x


ATTENTION: Dict[str, Callable] = {
    "fused": lambda f, g, h, x, gamma: torch.ops.sagan.self_attn(f, g, h, x, gamma, 1.0),
    "composite": _CompositeBackward.apply,
    "notebook": lambda f, g, h, x, gamma: reference.self_attn(f, g, h, x, gamma, 1.0),
    "sdpa-math": _sdpa_math,
}


def make_step(impl: str, side: int, channels: int = 64, batch: int = 1, seed: int = 0) -> Callable[[], float]:
    """One R1 step of the attention block at side x side features, for impl."""
    gen = torch.Generator().manual_seed(seed)
    cqk, n = max(1, channels // 8), side * side
    rnd = lambda *s: torch.randn(*s, generator=gen) / s[-1] ** 0.5  # noqa: E731
    w_f, w_g, w_h = (rnd(c, channels).requires_grad_() for c in (cqk, cqk, channels))
    gamma = torch.tensor(0.5, requires_grad=True)
    x0 = torch.randn(batch, channels, n, generator=gen)
    w_out = torch.randn(batch, channels, n, generator=gen)
    attention = ATTENTION[impl]

    def step() -> float:
        x = x0.clone().requires_grad_()
        f, g, h = (torch.einsum("oc,bcn->bon", w, x) for w in (w_f, w_g, w_h))
        y = attention(f, g, h, x, gamma)
        (grad_x,) = torch.autograd.grad((y * w_out).sum(), x, create_graph=True)
        penalty = grad_x.square().sum()
        penalty.backward()
        return float(penalty.detach())

    return step


def _worker(job: str) -> int:
    impl, side = json.loads(job)
    make_step(impl, 8)()  # warm-up: thread pool, autograd engine
    step = make_step(impl, side)
    emit({"peak": cpu_peak_bytes(step)})
    return 0


def peak_memory(impl: str, side: int) -> Optional[int]:
    """Resident-set growth of one step in a fresh process (None if it was killed, e.g. out of memory)."""
    proc = run_worker(["-m", "bench.penalty", WORKER_FLAG, json.dumps([impl, side])],
                      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for rec in proc.records[::-1]:
        if "peak" in rec:
            return int(rec["peak"])
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WORKER_FLAG]:
        return _worker(argv[1])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="feature-map sides (N = side^2)")
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per implementation (median)")
    p.add_argument("--max-map-gib", type=float, default=8.0,
                   help="skip materialising implementations whose N x N float32 maps would exceed this")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)

    record = {"kind": "penalty", "machine": machine("cpu"), "git": git_state(os.path.dirname(os.path.abspath(__file__))),
              "rows": []}
    for side in args.sizes:
        n = side * side
        map_gib = n * n * 4 / 2**30
        for impl in args.impls:
            row = {"side": side, "N": n, "impl": impl}
            if impl != "fused" and 4 * map_gib > args.max_map_gib:  # a penalty step holds several maps
                row.update(ms="skipped", peak_mib="skipped",
                           why=f"needs several {map_gib:.0f} GiB N x N maps (--max-map-gib {args.max_map_gib})")
            else:
                step = make_step(impl, side)
                step()  # warm-up at this size
                row["ms"] = median_ms(step, "cpu", warmup=0, repeats=args.repeats, budget_s=0.0,
                                      min_repeats=args.repeats)
                peak = peak_memory(impl, side)
                row["peak_mib"] = "killed" if peak is None else peak / 2**20
            record["rows"].append(row)
            print(json.dumps(row), flush=True)

    lines = ["# R1 penalty step, attention block (B=1, C=64, Cqk=8, float32, CPU)",
             "", f"commit {commit_text(record['git'])}, "
             f"{record['machine']['cpu']}, {record['machine']['threads']} threads, torch {record['machine']['torch']}",
             "", "| N | impl | step ms (median) | speed-up over notebook | peak MiB | % of notebook memory |",
             "|---|---|---|---|---|---|"]
    for side in args.sizes:
        rows = {r["impl"]: r for r in record["rows"] if r["side"] == side}
        base = rows.get("notebook", {})
        for impl in args.impls:
            r = rows[impl]
            ratio = (f"{base['ms'] / r['ms']:.2f}x" if isinstance(base.get("ms"), float)
                     and isinstance(r["ms"], float) else "-")
            mem = (f"{100 * r['peak_mib'] / base['peak_mib']:.1f}%" if isinstance(base.get("peak_mib"), float)
                   and isinstance(r["peak_mib"], float) and base["peak_mib"] > 0 else "-")
            ms = f"{r['ms']:.0f}" if isinstance(r["ms"], float) else str(r["ms"])
            pk = f"{r['peak_mib']:.0f}" if isinstance(r["peak_mib"], float) else str(r["peak_mib"])
            lines.append(f"| {side}x{side} ({r['N']}) | {impl} | {ms} | {ratio} | {pk} | {mem} |")
    write_record(args.out, "penalty", record, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
