"""What the benchmark adds to sagan_attn.measure: its CPU memory worker, the dense-matmul roofline, and
the machine and checkout a record was made on.

Time and peak memory are the package's meters (``sagan_attn.measure``, those of the demo and the tests).
Time: the median of repeated calls after warm-up calls; CUDA events on the GPU (the GPU's own clock),
wall time on the CPU. Peak memory, in bytes beyond what was allocated before the step (the inputs, and
the graph for a backward), with the raw peak (inputs included) recorded beside it:
  CUDA  torch.cuda.max_memory_allocated() during the step after reset_peak_memory_stats(), in this
        process (sagan_attn.measure.cuda_peak).
  CPU   the growth of the peak resident set (VmHWM) of a fresh worker process over its resident set
        just before the step, with glibc handing every block of 64 KiB or more back on free
        (sagan_attn.measure.cpu_peak_bytes in a sagan_attn.measure.run_worker process). One worker per
        shape (cpu_memory, memory_worker below), so no cache or pool of an earlier shape counts.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, Optional, Sequence, Tuple, Type

import torch

from sagan_attn.measure import Measured, cpu_model, cpu_peak_bytes, emit, is_oom, median_ms, run_worker


# -- the CPU memory worker -------------------------------------------------------------------------------


WORKER_FLAG = "--_memory-worker"


def cpu_memory(job: dict) -> Dict[str, Dict[str, Dict[str, Measured]]]:
    """Runs the memory worker on job (shape, dtype, implementations with their layouts) in a fresh process;
    returns {impl: {step: {'peak', 'extra'}}}. A step the worker could not run reads as its reason
    ('n/a (...)'); one it did not finish reads 'OOM' if the worker was killed for memory, else 'error'."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweep.py")
    proc = run_worker([script, WORKER_FLAG, json.dumps(job)])
    out: Dict[str, Dict[str, Dict[str, Measured]]] = {}
    for rec in proc.records:
        out.setdefault(rec["impl"], {})[rec["step"]] = {"peak": rec["peak"], "extra": rec["extra"]}
    for name, _ in job["impls"]:
        for step in ("fwd", "fwd+bwd"):
            if step not in out.get(name, {}):
                why = ("OOM" if proc.killed_for_memory
                       else f"error (worker exit {proc.returncode}: {proc.stderr.strip()[-160:]})")
                out.setdefault(name, {})[step] = {"peak": why, "extra": why}
    return out


def memory_worker(job_json: str) -> int:
    """In a fresh process: for each implementation, the peak of one forward (no grad) and one
    forward+backward, printed as JSON lines as soon as known. A step the implementation does not support
    (FlexAttention's backward on the CPU) is printed with its reason instead of a number."""
    from .impls import COMPILED, build, make_inputs, step_fns
    from .shapes import Shape

    job = json.loads(job_json)
    shape = Shape.from_dict(job["shape"])
    dtype = getattr(torch, job["dtype"])
    inputs = make_inputs(shape, dtype, "cpu")
    inputs_size = sizes_of(inputs)
    small = make_inputs(Shape("warm-up", "", "", 1, shape.C, 8, 8, shape.variant), dtype, "cpu", seed=1)
    for name, layout in job["impls"]:
        fn = build(name, layout)
        # Warm-up, so that one-time set-up (thread pool, the autograd engine) is not counted as the step's;
        # a compiled implementation also compiles its forward for the measured shape here.
        unsupported: Dict[str, str] = {}
        try:
            step_fns(fn, small)["fwd+bwd"]()
        except (RuntimeError, NotImplementedError) as err:
            if is_oom(err):
                raise
            unsupported["fwd+bwd"] = "n/a (" + " ".join(str(err).split())[:160] + ")"
        fns = step_fns(fn, inputs)
        if name in COMPILED:
            fns["fwd"]()
        for step in ("fwd", "fwd+bwd"):
            if step in unsupported:
                emit({"impl": name, "step": step, "extra": unsupported[step], "peak": unsupported[step]})
                continue
            extra = cpu_peak_bytes(fns[step])
            emit({"impl": name, "step": step, "extra": extra, "peak": extra + inputs_size})
        del fns
    return 0


# -- the dense matmul roofline ---------------------------------------------------------------------------


def matmul_tflops(dtype: torch.dtype, device: str, target_s: float = 0.2, repeats: int = 5) -> dict:
    """TFLOP/s of an n x n x n matmul in dtype, n large enough to be near the machine's peak: 8192 on
    CUDA; on the CPU sized so that one product takes about target_s."""
    if device == "cuda":
        n = 8192
    else:
        probe = 512
        a = torch.randn(probe, probe, dtype=dtype)
        a @ a
        t0 = time.perf_counter()
        a @ a
        rate = 2 * probe**3 / max(time.perf_counter() - t0, 1e-9)
        n = int(round((rate * target_s / 2) ** (1 / 3) / 256)) * 256
        n = max(512, min(n, 8192))
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    ms = median_ms(lambda: a @ b, device, warmup=2 if device == "cuda" else 1, repeats=repeats, budget_s=0.0)
    return {"n": n, "ms": ms, "tflops": 2 * n**3 / (ms * 1e-3) / 1e12}


# -- the machine -----------------------------------------------------------------------------------------


def _cpu_model() -> str:
    return cpu_model() or platform.processor() or "cpu"


def git_state(path: str) -> dict:
    """The commit of the checkout holding path, and whether tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None, "dirty_files": []}
    files = [line[3:] for line in dirty.splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(files), "dirty_files": files}


def commit_text(git: dict) -> str:
    """git_state's commit for a record's Markdown: its first 12 digits, and "(dirty)" where tracked files
    differed from it."""
    return git["commit"][:12] + (" (dirty)" if git.get("dirty") else "")


def shape_text(shape: Sequence[int]) -> str:
    """A shape for a record's Markdown: "(4, 8, 64, 4096, 4096)"."""
    return "(" + ", ".join(str(v) for v in shape) + ")"


def _library(path: str) -> dict:
    """Which compiled library ran: its path in the checkout, modification time and SHA-256 prefix."""
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return {"path": os.path.relpath(path, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(path))),
            "sha256": digest[:16]}


def machine(device: str) -> dict:
    import sagan_attn

    info = {
        "device": device,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "sagan_attn": sagan_attn.build_info(),
        "sagan_attn_library": _library(sagan_attn._C.__file__),
        "load_average_start": list(os.getloadavg()),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update({
            "name": props.name,
            "gpu_memory_bytes": props.total_memory,
            "compute_capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    else:
        info["name"] = info["cpu"]
    return info


def run_to_record(prog: str, run: Callable[[], dict], markdown: Callable[[dict], str], out_dir: str,
                  prefix: str, errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """A record-making tool's main after its arguments: record = run(), written by write_record under
    <out_dir>/<prefix>-<stamp> with markdown(record); returns 0. A helper program that failed
    (subprocess.CalledProcessError) or an exception of errors ends it with one line on stderr, no record,
    and exit code 1."""
    try:
        record = run()
    except subprocess.CalledProcessError as e:
        cmd = " ".join(map(str, e.cmd)) if isinstance(e.cmd, (list, tuple)) else str(e.cmd)
        print(f"{prog}: {cmd} failed: {(e.stderr or '').strip()[-400:]}", file=sys.stderr)
        return 1
    except errors as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    stem = write_record(out_dir, prefix, record, markdown(record))
    print(f"wrote {stem}.json and .md")
    return 0


def write_record(out_dir: str, prefix: str, record: dict, markdown: str) -> str:
    """record as <out_dir>/<prefix>-<date>-<time>.json and its Markdown beside it (.md); returns the path
    without the extension."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    with open(stem + ".json", "w") as fh:
        json.dump(record, fh, indent=1)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown)
    return stem


def safe_name(text: str) -> str:
    """Letters, digits, '.', '_' and '-' only (file names of the results)."""
    out = "".join(c if c.isalnum() and c.isascii() or c in "._-" else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "device"


def sizes_of(tensors: Sequence[Optional[torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
