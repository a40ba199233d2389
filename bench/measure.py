"""How the benchmark measures: time, peak memory, the dense-matmul roofline, and the machine.

Time: the median of repeated calls after warm-up calls. On CUDA each call sits between two CUDA events
on the current stream (the GPU's own clock, no host overhead counted beyond what the call launches); on
the CPU it is wall time (time.perf_counter), at least `repeats` calls and more until `budget_s` passed.

Peak memory, in bytes beyond what was allocated before the step (the inputs, and the graph for a
backward):
  CUDA  torch.cuda.max_memory_allocated() during the step after reset_peak_memory_stats(), in this
        process; the raw peak (inputs included) is recorded beside it.
  CPU   the growth of the peak resident set (VmHWM) of a fresh worker process over its resident set
        just before the step, with glibc handing every block of 64 KiB or more back on free (the meter
        of sagan_attn.demo, shared). One worker per shape, so no cache or pool of an earlier shape counts.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from .impls import is_oom

Measured = Union[float, str]  # a number, or why there is none ("OOM", "n/a (...)")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: str, warmup: int, repeats: int, budget_s: float,
              max_repeats: int = 100, cap_s: float = 10.0, min_repeats: int = 3) -> Measured:
    """Median time of fn in ms, or "OOM". CUDA: CUDA events; CPU: wall time.

    At least `repeats` calls, and more while less than budget_s has passed (fast calls get more); but a
    slow call stops at min_repeats once cap_s has passed."""

    def more(n: int, elapsed: float) -> bool:
        if n >= max_repeats or (n >= min(repeats, min_repeats) and elapsed > cap_s):
            return False
        return n < repeats or elapsed < budget_s

    try:
        for _ in range(warmup):
            fn()
        sync(device)
        times: List[float] = []
        start = time.perf_counter()
        if device == "cuda":
            events = []
            while more(len(events), time.perf_counter() - start):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                events.append((begin, end))
                if len(events) >= min(repeats, min_repeats):
                    end.synchronize()  # the budget is GPU time, not launch time
            torch.cuda.synchronize()
            times = [b.elapsed_time(e) for b, e in events]
        else:
            while more(len(times), time.perf_counter() - start):
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        free_cuda(device)
        return "OOM"
    return statistics.median(times)


def free_cuda(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def cuda_peak(fn: Callable[[], object]) -> Dict[str, Measured]:
    """{'peak': raw bytes, 'extra': bytes over what was allocated before} of one call, or 'OOM'."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        fn()
        torch.cuda.synchronize()
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        free_cuda("cuda")
        return {"peak": "OOM", "extra": "OOM"}
    peak = torch.cuda.max_memory_allocated()
    return {"peak": peak, "extra": peak - before}


# -- the CPU memory worker -------------------------------------------------------------------------------


WORKER_FLAG = "--_memory-worker"


def cpu_memory(job: dict) -> Dict[str, Dict[str, Dict[str, Measured]]]:
    """Runs the memory worker on job (shape, dtype, implementations with their layouts) in a fresh process;
    returns {impl: {step: {'peak', 'extra'}}}. An implementation the worker did not finish reads 'OOM' if
    the worker was killed for memory, else 'error'."""
    from sagan_attn.demo import cpu_memory_env

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweep.py")
    proc = subprocess.run([sys.executable, script, WORKER_FLAG, json.dumps(job)], env=cpu_memory_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: Dict[str, Dict[str, Dict[str, Measured]]] = {}
    for line in proc.stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out.setdefault(rec["impl"], {})[rec["step"]] = {"peak": rec["peak"], "extra": rec["extra"]}
    killed = proc.returncode in (-9, 137) or is_oom(RuntimeError(proc.stderr))
    for name, _ in job["impls"]:
        for step in ("fwd", "fwd+bwd"):
            if step not in out.get(name, {}):
                why = "OOM" if killed else f"error (worker exit {proc.returncode}: {proc.stderr.strip()[-160:]})"
                out.setdefault(name, {})[step] = {"peak": why, "extra": why}
    return out


def memory_worker(job_json: str) -> int:
    """In a fresh process: for each implementation, the peak of one forward (no grad) and one
    forward+backward, printed as JSON lines as soon as known."""
    from sagan_attn.demo import cpu_peak_bytes

    from .impls import build, make_inputs, step_fns
    from .shapes import Shape

    job = json.loads(job_json)
    shape = Shape.from_dict(job["shape"])
    dtype = getattr(torch, job["dtype"])
    inputs = make_inputs(shape, dtype, "cpu")
    inputs_size = sizes_of(inputs)
    small = make_inputs(Shape("warm-up", "", "", 1, shape.C, 8, 8, shape.variant), dtype, "cpu", seed=1)
    for name, layout in job["impls"]:
        fn = build(name, layout)
        # Warm-up, so that one-time set-up (thread pool, the autograd engine) is not counted as the step's.
        step_fns(fn, small)["fwd+bwd"]()
        fns = step_fns(fn, inputs)
        for step in ("fwd", "fwd+bwd"):
            extra = cpu_peak_bytes(fns[step])
            print(json.dumps({"impl": name, "step": step, "extra": extra, "peak": extra + inputs_size}), flush=True)
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
    from sagan_attn.demo import cpu_model

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


def mem_available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def safe_name(text: str) -> str:
    """Letters, digits, '.', '_' and '-' only (file names of the results)."""
    out = "".join(c if c.isalnum() and c.isascii() or c in "._-" else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "device"


def sizes_of(tensors: Sequence[Optional[torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
