"""The main job, ``python -m sagan_attn``: the fused ``SelfAttention2d`` against the notebook module.

For a few feature-map sizes it
  (a) checks the fused op: y and the input gradient against the notebook's math in float64,
  (b) times forward (inference) and forward+backward (a training step), medians, fused vs notebook,
  (c) measures the peak memory of each: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth
      of the peak resident set size (VmHWM) of a fresh worker process over its resident size just
      before the step, with glibc told to hand every block of 64 KiB or more back to the system on
      free (``MALLOC_MMAP_THRESHOLD_``), so the peak is that of the live tensors, not of a reused heap.
Time and memory are measured by ``sagan_attn.measure`` (the meters the benchmarks and tests use too).

The baseline is the widely shared notebook's ``self_attn`` module, as the package's own bmm module
``sagan_attn.baseline.NotebookSelfAttention``: on ``sagan_attn.reference``, with the same convolutions
and the same math (bmm, softmax, bmm), and it returns the map as the notebook does.

``python -m sagan_attn --info`` prints what the extension was built with.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import sagan_attn
from sagan_attn import measure, reference
from sagan_attn.baseline import NotebookSelfAttention
from sagan_attn.modules import SelfAttention2d

GAMMA = 0.5  # non-zero, so y depends on the attention branch (at the module's init, 0, y == x)
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_MEMORY_WORKER_FLAG = "--_memory-worker"


# -- set-up shared by the main process and the memory worker -------------------------------------------


def _build(kind: str, channels: int, dtype: torch.dtype, device: str, seed: int = 0) -> nn.Module:
    """The fused module or the notebook baseline, with the same weights (seeded) and gamma = GAMMA."""
    torch.manual_seed(seed)
    fused = SelfAttention2d(channels)
    with torch.no_grad():
        fused.gamma.fill_(GAMMA)
    if kind == "notebook":
        module = NotebookSelfAttention(channels, fused.attn_channels)
        module.load_state_dict(fused.state_dict(), strict=True)
    else:
        module = fused
    return module.to(device=device, dtype=dtype)


def _inputs(batch: int, channels: int, size: Tuple[int, int], dtype: torch.dtype, device: str, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *size, generator=gen, dtype=torch.float64)
    grad_y = torch.randn(batch, channels, *size, generator=gen, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), grad_y.to(device=device, dtype=dtype)


def _output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    return out[0] if isinstance(out, tuple) else out


def _step_fns(module: nn.Module, x: torch.Tensor, grad_y: torch.Tensor) -> Dict[str, Callable[[], None]]:
    """'fwd': an inference forward (no_grad); 'fwd+bwd': forward and backward to x and the weights."""
    x_leaf = x.detach().requires_grad_(True)

    def fwd() -> None:
        with torch.no_grad():
            module(x)

    def fwd_bwd() -> None:
        x_leaf.grad = None
        module.zero_grad(set_to_none=True)
        _output(module, x_leaf).backward(grad_y)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def _notebook_fits(batch: int, n: int, dtype: torch.dtype, device: str) -> bool:
    """Whether the notebook's maps fit in free memory: a training step peaks at 4 B x N x N maps (measured),
    5 are asked for, as headroom.

    On CPU an allocation that does not fit gets the worker killed by the kernel rather than an
    error, so sizes that cannot fit are reported as OOM without running them.
    """
    need = 5 * batch * n * n * torch.empty((), dtype=dtype).element_size()
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return need < free
    available = measure.mem_available_bytes()
    return available is None or need < 0.8 * available


# -- (c) peak memory ---------------------------------------------------------------------------------


def _memory_worker(job_json: str) -> int:
    """Runs in a fresh process: one JSON line per (kind, step) with its peak bytes, flushed at once."""
    job = json.loads(job_json)
    dtype = DTYPES[job["dtype"]]
    size = tuple(job["size"])
    for kind in job["kinds"]:
        module = _build(kind, job["channels"], dtype, "cpu")
        x, grad_y = _inputs(job["batch"], job["channels"], size, dtype, "cpu")
        fns = _step_fns(module, x, grad_y)
        # Warm-up, so that one-time set-up (thread pools, the autograd engine's ~35 MiB on its first
        # backward, conv primitives) is not counted as the step's: a small training step, then one
        # inference forward at the measured size.
        small_x, small_grad_y = _inputs(1, job["channels"], (8, 8), dtype, "cpu")
        _step_fns(module, small_x, small_grad_y)["fwd+bwd"]()
        fns["fwd"]()
        for step in ("fwd", "fwd+bwd"):
            measure.emit({"kind": kind, "step": step, "bytes": measure.cpu_peak_bytes(fns[step])})
        del module, x, grad_y, fns
    return 0


def _memory_cpu(batch: int, channels: int, size: Tuple[int, int], dtype_name: str) -> Dict[Tuple[str, str], object]:
    """Runs the memory worker in a fresh process (measure.run_worker); a result it could not give (killed,
    OOM) reads 'OOM'."""
    results: Dict[Tuple[str, str], object] = {}
    if not measure.cpu_peak_supported():
        return {(k, s): "n/a" for k in ("fused", "notebook") for s in ("fwd", "fwd+bwd")}
    kinds = ["fused", "notebook"]
    if not _notebook_fits(batch, size[0] * size[1], DTYPES[dtype_name], "cpu"):
        results.update({("notebook", s): "OOM" for s in ("fwd", "fwd+bwd")})
        kinds.remove("notebook")
    job = {"batch": batch, "channels": channels, "size": list(size), "dtype": dtype_name, "kinds": kinds}
    proc = measure.run_worker(["-m", "sagan_attn", _MEMORY_WORKER_FLAG, json.dumps(job)])
    for rec in proc.records:
        results.setdefault((rec["kind"], rec["step"]), rec["bytes"])
    failed = "OOM" if proc.killed_for_memory else "error"
    missing = [(k, s) for k in ("fused", "notebook") for s in ("fwd", "fwd+bwd") if (k, s) not in results]
    results.update({key: failed for key in missing})
    if missing and failed == "error":
        print(f"\n    memory worker failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
    return results


# -- (a) accuracy -------------------------------------------------------------------------------------


@dataclass
class Accuracy:
    """One checked quantity: the max abs error against the float64 oracle, fused and notebook."""

    dtype: str
    quantity: str
    err: float  # fused, run in dtype
    nb_err: float  # the notebook math run in dtype
    floor: float  # 4 ulp of dtype at max(1, largest value of the oracle)

    @property
    def bound(self) -> float:
        # flash-attention's rule (STYLE.md): at most 2x the error of the reference run in the same dtype,
        # plus a rounding floor.
        return 2 * self.nb_err + self.floor

    @property
    def ok(self) -> bool:
        return self.err <= self.bound


def _outputs_and_grads(fn: Callable, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor) -> List[torch.Tensor]:
    """[out, d<out, grad_out>/d input for each input], all widened to float64."""
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(out, inputs, grad_out)
    return [out.detach().double()] + [g.double() for g in grads]


def check_accuracy(batch: int, channels: int, size: Tuple[int, int], dtype_name: str, device: str) -> List[Accuracy]:
    """The module's y and dL/dx, and the op's attention output o and dL/d(f, g, h), against float64.

    The oracle gets exactly the inputs and weights the dtype run gets (rounded to dtype, then widened), so
    what is compared is the computation. The module's y = gamma * o + x and dL/dx = grad_y + ... are
    dominated by the rounding of the result to dtype (x and grad_y pass straight through), so the op's own
    o and gradients, without the residual, are checked as well.
    """
    dtype = DTYPES[dtype_name]
    eps = torch.finfo(dtype).eps
    x, grad_y = _inputs(batch, channels, size, dtype, device)
    fused = _build("fused", channels, dtype, device)
    notebook = _build("notebook", channels, dtype, device)
    oracle = NotebookSelfAttention(channels, fused.attn_channels).to(device=device, dtype=torch.float64)
    oracle.load_state_dict({k: v.double() for k, v in notebook.state_dict().items()}, strict=True)

    with torch.no_grad():
        fgh = [fused.f(x).flatten(2), fused.g(x).flatten(2), fused.h(x).flatten(2)]
    one = torch.ones(1, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(2)
    grad_o = torch.randn(fgh[2].shape[0], fgh[2].shape[1], fgh[0].shape[2], generator=gen).to(device, dtype)

    def op(f, g, h):
        return sagan_attn.self_attn(f, g, h, None, one)

    def op_reference(f, g, h):
        return reference.self_attn(f, g, h, None, torch.ones(1, dtype=f.dtype, device=device))

    runs = {
        "module": (
            _outputs_and_grads(fused, [x], grad_y),
            _outputs_and_grads(notebook, [x], grad_y),
            _outputs_and_grads(oracle, [x.double()], grad_y.double()),
        ),
        "op": (
            _outputs_and_grads(op, fgh, grad_o),
            _outputs_and_grads(op_reference, fgh, grad_o),
            _outputs_and_grads(op_reference, [t.double() for t in fgh], grad_o.double()),
        ),
    }
    specs = [  # (label, run, indices into [out, grads...])
        ("y (module)", "module", [0]),
        ("dL/dx (module)", "module", [1]),
        ("o (op)", "op", [0]),
        ("dL/d(f, g, h) (op)", "op", [1, 2, 3]),
    ]
    checks = []
    for label, what, idx in specs:
        ours, nb, ref = runs[what]
        err = max(float((ours[i] - ref[i]).abs().max()) for i in idx)
        nb_err = max(float((nb[i] - ref[i]).abs().max()) for i in idx)
        largest = max(float(ref[i].abs().max()) for i in idx)
        checks.append(Accuracy(dtype_name, label, err, nb_err, 4 * eps * max(1.0, largest)))
    return checks


# -- the job ------------------------------------------------------------------------------------------


@dataclass
class Config:
    device: str
    dtypes: List[str]
    sizes: List[Tuple[int, int]]
    batch: int
    channels: int
    check_size: Tuple[int, int]
    min_reps: int
    budget_s: float
    quick: bool = False
    notes: List[str] = field(default_factory=list)
    json_path: Optional[str] = None


@dataclass
class Row:
    size: Tuple[int, int]
    dtype: str
    ms: Dict[Tuple[str, str], object]
    mem: Dict[Tuple[str, str], object]
    diff_y: object  # max |y_fused - y_notebook| in the dtype at this size


def _cuda_built() -> bool:
    return str(sagan_attn.build_info().get("cuda", "false")).lower() not in ("false", "0", "", "none", "off")


def _parse_sizes(text: str) -> List[Tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"--sizes: expected e.g. '32,64' or '32x48', got {item!r}")
        sizes.append((int(parts[0]), int(parts[-1])))
    if not sizes:
        raise argparse.ArgumentTypeError("--sizes: no size given")
    return sizes


def _parse_dtypes(text: str) -> List[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in DTYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--dtype: expected a comma list of {sorted(DTYPES)}, got {text!r}")
    return names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sagan_attn",
        description="Demo of sagan_attn: the fused SelfAttention2d against the notebook module "
        "(accuracy, median time, peak memory).",
    )
    p.add_argument("--info", action="store_true", help="print the build info and runtime, then exit")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="default: cuda if available and built, else cpu")
    p.add_argument("--dtype", type=_parse_dtypes, default=None,
                   help="comma list, e.g. bfloat16,float32 (default: float32 on CPU, bfloat16,float32 on CUDA)")
    p.add_argument("--sizes", type=_parse_sizes, default=None,
                   help="feature-map sizes, e.g. 32,64 or 32x48 (default: 32,64,96 on CPU; 32,64,128 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="B (default: 2 on CPU, 8 on CUDA)")
    p.add_argument("--channels", type=int, default=None, help="C (default: 64 on CPU, 256 on CUDA); Cqk = C // 8")
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (a smoke test)")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                   help="also write every figure, with device, torch version and git commit, as JSON")
    p.add_argument(_MEMORY_WORKER_FLAG, dest="memory_worker", default=None, help=argparse.SUPPRESS)
    return p


def _config(args: argparse.Namespace) -> Config:
    notes = []
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and _cuda_built() else "cpu"
        if torch.cuda.is_available() and not _cuda_built():
            notes.append("CUDA is available but this build of sagan_attn has no CUDA kernels: using CPU")
    elif device == "cuda" and not (torch.cuda.is_available() and _cuda_built()):
        raise SystemExit(
            "python -m sagan_attn: --device cuda needs a CUDA device and a CUDA build of sagan_attn "
            f"(torch.cuda.is_available() = {torch.cuda.is_available()}, "
            f"build cuda = {sagan_attn.build_info().get('cuda')})"
        )
    gpu = device == "cuda"
    if args.quick:
        sizes, batch, channels = [(16, 16), (24, 24)], 1, 32
    elif gpu:
        sizes, batch, channels = [(32, 32), (64, 64), (128, 128)], 8, 256
    else:
        sizes, batch, channels = [(32, 32), (64, 64), (96, 96)], 2, 64
    sizes = args.sizes or sizes
    batch = args.batch or batch
    channels = args.channels or channels
    if batch < 1 or channels < 1:
        raise SystemExit("python -m sagan_attn: --batch and --channels must be positive")
    dtypes = args.dtype or (["bfloat16", "float32"] if gpu and not args.quick else ["float32"])
    # (a) runs the float64 notebook math, so on a small map: the smallest size, at most 32 x 32.
    smallest = min(sizes, key=lambda s: s[0] * s[1])
    check_size = (min(smallest[0], 32), min(smallest[1], 32))
    return Config(
        device=device,
        dtypes=dtypes,
        sizes=sizes,
        batch=batch,
        channels=channels,
        check_size=check_size,
        min_reps=2 if args.quick else (5 if gpu else 3),
        budget_s=0.1 if args.quick else (1.0 if gpu else 0.5),
        quick=args.quick,
        notes=notes,
        json_path=args.json_path,
    )


def _fmt_ms(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _fmt_mib(v: object) -> str:
    return f"{v / 2**20:.1f}" if isinstance(v, int) else str(v)


def _fmt_ratio(num: object, den: object) -> str:
    if isinstance(num, (int, float)) and isinstance(den, (int, float)) and den > 0:
        return f"{num / den:.1f}x"
    return "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, indent: str = "  ") -> str:
    """Aligned columns: the first `left` (text) left-aligned, the others (numbers) right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _size_str(size: Tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def run(cfg: Config) -> int:
    t_start = time.perf_counter()
    info = sagan_attn.build_info()
    version = info.get("version", sagan_attn.__version__)
    print(f"sagan_attn {version} demo: fused SelfAttention2d vs the notebook module")
    if cfg.device == "cpu":
        threads = f", {torch.get_num_threads()} threads"
    else:
        threads = f" ({torch.cuda.get_device_name()})"
    print(f"device: {cfg.device}{threads}; torch {torch.__version__}; B={cfg.batch}, C={cfg.channels}, "
          f"Cqk={max(1, cfg.channels // 8)}, Cv=C, gamma={GAMMA}")
    print("baseline: the notebook's self_attn module, as the package's bmm module on sagan_attn.reference:")
    print("          same 1x1 convs and weights (its state_dict), same math (bmm, softmax, bmm, keeps the N x N map)")
    for note in cfg.notes:
        print(f"note: {note}")
    print()

    # (a) accuracy
    print(f"accuracy at {_size_str(cfg.check_size)}: max abs error against the notebook math in float64 "
          f"(same inputs and weights)")
    accs: List[Accuracy] = []
    for dtype in cfg.dtypes:
        print(f"  checking {dtype} ...", flush=True)
        accs += check_accuracy(cfg.batch, cfg.channels, cfg.check_size, dtype, cfg.device)
    print(_table(
        ["dtype", "quantity", "max|err| fused", "notebook", "bound", "check"],
        [[a.dtype, a.quantity, f"{a.err:.2e}", f"{a.nb_err:.2e}", f"{a.bound:.2e}", "ok" if a.ok else "FAIL"]
         for a in accs],
        left=2,
    ))
    print("  bound: 2 x the notebook math's own error in that dtype + 4 ulp of max(1, largest value);")
    print("  op: the fused op alone (x=None, gamma=1) on the module's f(x), g(x), h(x), vs sagan_attn.reference")
    print()

    # (b) time and (c) memory, size by size
    rows: List[Row] = []
    jobs = [(s, d) for s in cfg.sizes for d in cfg.dtypes]
    for k, (size, dtype_name) in enumerate(jobs, 1):
        t0 = time.perf_counter()
        print(f"[{k}/{len(jobs)}] {_size_str(size)} {dtype_name}: timing ...", end="", flush=True)
        dtype = DTYPES[dtype_name]
        n = size[0] * size[1]
        x, grad_y = _inputs(cfg.batch, cfg.channels, size, dtype, cfg.device)
        ms: Dict[Tuple[str, str], object] = {}
        mem: Dict[Tuple[str, str], object] = {}
        diff_y: object = "-"
        outputs = {}
        for kind in ("fused", "notebook"):
            if kind == "notebook" and not _notebook_fits(cfg.batch, n, dtype, cfg.device):
                ms.update({(kind, s): "OOM" for s in ("fwd", "fwd+bwd")})
                mem.update({(kind, s): "OOM" for s in ("fwd", "fwd+bwd")})
                continue
            module = _build(kind, cfg.channels, dtype, cfg.device)
            fns = _step_fns(module, x, grad_y)
            for step in ("fwd", "fwd+bwd"):
                # one warm-up call; at least min_reps timed, more until budget_s, at most 50
                ms[(kind, step)] = measure.median_ms(fns[step], cfg.device, warmup=1, repeats=cfg.min_reps,
                                                     budget_s=cfg.budget_s, max_repeats=50)
                if cfg.device == "cuda":
                    mem[(kind, step)] = measure.cuda_peak(fns[step])["extra"]
            try:
                with torch.no_grad():
                    outputs[kind] = _output(module, x)
            except Exception as err:  # noqa: BLE001
                if not measure.is_oom(err):
                    raise
            del module, fns
        if len(outputs) == 2:
            diff_y = float((outputs["fused"].double() - outputs["notebook"].double()).abs().max())
        del outputs, x, grad_y
        if cfg.device == "cpu":
            print(" memory ...", end="", flush=True)
            measured = _memory_cpu(cfg.batch, cfg.channels, size, dtype_name)
            for key, value in measured.items():
                mem.setdefault(key, value)
        print(f" done ({time.perf_counter() - t0:.1f} s)", flush=True)
        rows.append(Row(size, dtype_name, ms, mem, diff_y))
    print()

    print("time: median ms (fwd: inference forward under no_grad; fwd+bwd: forward and backward to x and weights)")
    print(_table(
        ["size", "N", "dtype", "fwd fused", "notebook", "speed-up", "fwd+bwd fused", "notebook", "speed-up",
         "max|y fused - y nb|"],
        [[_size_str(r.size), str(r.size[0] * r.size[1]), r.dtype,
          _fmt_ms(r.ms[("fused", "fwd")]), _fmt_ms(r.ms[("notebook", "fwd")]),
          _fmt_ratio(r.ms[("notebook", "fwd")], r.ms[("fused", "fwd")]),
          _fmt_ms(r.ms[("fused", "fwd+bwd")]), _fmt_ms(r.ms[("notebook", "fwd+bwd")]),
          _fmt_ratio(r.ms[("notebook", "fwd+bwd")], r.ms[("fused", "fwd+bwd")]),
          f"{r.diff_y:.1e}" if isinstance(r.diff_y, float) else r.diff_y] for r in rows],
    ))
    print()
    if cfg.device == "cuda":
        what = "torch.cuda.max_memory_allocated() during the step, minus memory_allocated() before it"
    else:
        what = (f"peak RSS growth (VmHWM - VmRSS before the step) in a fresh process, "
                f"MALLOC_MMAP_THRESHOLD_={measure.MMAP_THRESHOLD // 1024}KiB")
    print(f"peak memory: MiB, {what}")
    print(_table(
        ["size", "N", "dtype", "fwd fused", "notebook", "ratio", "fwd+bwd fused", "notebook", "ratio",
         "N x N map"],
        [[_size_str(r.size), str(r.size[0] * r.size[1]), r.dtype,
          _fmt_mib(r.mem.get(("fused", "fwd"), "n/a")), _fmt_mib(r.mem.get(("notebook", "fwd"), "n/a")),
          _fmt_ratio(r.mem.get(("notebook", "fwd")), r.mem.get(("fused", "fwd"))),
          _fmt_mib(r.mem.get(("fused", "fwd+bwd"), "n/a")), _fmt_mib(r.mem.get(("notebook", "fwd+bwd"), "n/a")),
          _fmt_ratio(r.mem.get(("notebook", "fwd+bwd")), r.mem.get(("fused", "fwd+bwd"))),
          _fmt_mib(cfg.batch * (r.size[0] * r.size[1]) ** 2 * DTYPES[r.dtype].itemsize)] for r in rows],
    ))
    if any(v == "OOM" for r in rows for v in list(r.ms.values()) + list(r.mem.values())):
        print("  OOM: out of memory, or skipped because 5 B x N x N maps exceed the free memory "
              "(CPU: 80% of MemAvailable)")
    print()

    ok = all(a.ok for a in accs)
    if cfg.json_path:
        _write_record(cfg.json_path, cfg, accs, rows)
        print(f"record: {cfg.json_path}")
    print(_verdict(ok, accs, rows))
    print(f"(total {time.perf_counter() - t_start:.1f} s)")
    sweep = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "bench", "sweep.py")
    if os.path.exists(sweep):  # a checkout of the repository, not an installed wheel
        print("against PyTorch SDPA and the matmul roofline too, on GAN shapes: python bench/sweep.py "
              "(--quick for a short sweep; see bench/README.md)")
    return 0 if ok else 1


def _git_commit() -> str:
    """The commit of the checkout this package runs from, with '+dirty' for uncommitted changes."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return measure.cpu_model() or "cpu"


def _write_record(path: str, cfg: Config, accs: Sequence[Accuracy], rows: Sequence[Row]) -> None:
    """Every figure of the run, with what it ran on, for bench/results/."""
    def key(k: Tuple[str, str]) -> str:
        return f"{k[0]}/{k[1]}"

    record = {
        "device": cfg.device,
        "device_name": _device_name(cfg.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "build": sagan_attn.build_info(),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {"batch": cfg.batch, "channels": cfg.channels, "dtypes": cfg.dtypes,
                   "sizes": [list(sz) for sz in cfg.sizes]},
        "units": {"ms": "median wall ms", "mem": "peak bytes (see README of bench/)"},
        "accuracy": [dict(a.__dict__) for a in accs],
        "rows": [{"size": list(r.size), "N": r.size[0] * r.size[1], "dtype": r.dtype,
                  "ms": {key(k): v for k, v in r.ms.items()}, "mem": {key(k): v for k, v in r.mem.items()},
                  "max_abs_y_fused_minus_notebook": r.diff_y} for r in rows],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as out:
        json.dump(record, out, indent=1, default=str)
        out.write("\n")


def _verdict(ok: bool, accs: Sequence[Accuracy], rows: Sequence[Row]) -> str:
    if not ok:
        bad = ", ".join(f"{a.quantity} in {a.dtype}" for a in accs if not a.ok)
        return f"verdict: FAIL: the fused op is less accurate than the notebook math allows: {bad}"
    text = "verdict: PASS: the fused op matches the notebook math"
    ran = [r for r in rows if isinstance(r.ms.get(("notebook", "fwd+bwd")), float)]
    if ran:
        largest = max(ran, key=lambda r: r.size[0] * r.size[1])  # the largest size the notebook could run
        parts = [f"{step} {_fmt_ratio(largest.ms[('notebook', step)], largest.ms[('fused', step)])}"
                 for step in ("fwd", "fwd+bwd")]
        text += f"; at {_size_str(largest.size)} {largest.dtype}, speed-up (notebook time / fused) {', '.join(parts)}"
        mem = _fmt_ratio(largest.mem.get(("notebook", "fwd+bwd")), largest.mem.get(("fused", "fwd+bwd")))
        if mem != "-":
            text += f"; fwd+bwd peak memory notebook / fused {mem}"
    oom = sorted({_size_str(r.size) for r in rows if r.ms.get(("notebook", "fwd+bwd")) == "OOM"})
    if oom:
        text += f"; the notebook is out of memory at {', '.join(oom)}"
    return text


def print_info() -> int:
    info = sagan_attn.build_info()
    print("sagan_attn build info")
    for key in ("version", "torch", "cuda", "cuda_archs", "cpu_isa"):
        print(f"  {key + ':':<12} {info.get(key, '') or '-'}")
    for key in sorted(set(info) - {"version", "torch", "cuda", "cuda_archs", "cpu_isa"}):
        print(f"  {key + ':':<12} {info[key] or '-'}")
    print("runtime")
    print(f"  {'torch:':<12} {torch.__version__}")
    print(f"  {'python:':<12} {sys.version.split()[0]}")
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name()}, torch CUDA {torch.version.cuda})"
        if not _cuda_built():
            device += "; this build has no CUDA kernels, the demo uses cpu"
    else:
        device = f"cpu ({torch.get_num_threads()} threads; CUDA not available)"
    print(f"  {'device:':<12} {device}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.memory_worker is not None:
        return _memory_worker(args.memory_worker)
    if args.info:
        return print_info()
    return run(_config(args))


if __name__ == "__main__":
    sys.exit(main())
