"""How the project measures: time, peak memory, out-of-memory, and the CPU it ran on.

The demo (``python -m sagan_attn``), the training script, the benchmarks (``bench/``) and the memory tests
all measure through this module, so a figure means the same wherever it is printed.

Time: ``median_ms``, the median of repeated calls after warm-up calls. On CUDA each call sits between
two CUDA events on the current stream (the GPU's own clock); on the CPU it is wall time
(``time.perf_counter``). At least ``repeats`` calls, more until ``budget_s`` has passed. For ratios
between implementations on a machine whose speed drifts, ``interleaved_ms`` times them in turn, round
by round (in the given order, then reversed, alternately), and ``ratio_median`` takes the median of the
per-round ratios.

Peak memory:
  CUDA  ``cuda_peak``: ``torch.cuda.max_memory_allocated()`` during one call after
        ``reset_peak_memory_stats()``, and its growth over ``memory_allocated()`` before the call.
  CPU   ``cpu_peak_bytes``: the growth of the peak resident set (VmHWM, reset to the current resident
        set through /proc/self/clear_refs) over the resident set (VmRSS) just before the call (Linux).
        Meaningful in a fresh process started with ``cpu_memory_env()``: glibc then maps every block of
        ``MMAP_THRESHOLD`` or more on its own and unmaps it on free, so the peak is that of the live
        tensors, not of a heap reused from earlier work. ``run_worker`` starts such a process and reads
        the JSON lines it prints (``emit``).
  Process-wide, for a whole run: ``PeakMemory`` (the training script's).

Out of memory: ``is_oom`` tells an allocation failure from other errors; a CPU worker killed by the
kernel for memory reads as ``WorkerResult.killed_for_memory``.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

Measured = Union[float, int, str]  # a number, or why there is none ("OOM", "n/a (...)")

MMAP_THRESHOLD = 64 * 1024  # bytes: glibc returns every freed block this large or larger to the system


# -- out of memory ---------------------------------------------------------------------------------------


def is_oom(err: BaseException) -> bool:
    """Whether err is an allocation failure (CUDA or CPU), as opposed to any other error."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text


# -- time ------------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_cuda(device: str) -> None:
    """Waits for the GPU and returns the caching allocator's free blocks (after an OOM, between steps)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def median_ms(fn: Callable[[], object], device: str, warmup: int, repeats: int, budget_s: float,
              max_repeats: int = 100, cap_s: float = 10.0, min_repeats: int = 3) -> Measured:
    """Median time of fn in ms after `warmup` calls, or "OOM". CUDA: CUDA events; CPU: wall time.

    At least `repeats` calls, and more while less than budget_s has passed (fast calls get more), at
    most max_repeats; but a slow call stops at min(repeats, min_repeats) calls once cap_s has passed."""

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


def interleaved_ms(fns: Dict[str, Callable[[], object]], device: str, warmup: int, rounds: int) -> Dict[str, List[float]]:
    """ms of each call of each fn, the fns taken in turn for `rounds` rounds after `warmup` rounds.

    For ratios on a machine whose speed drifts (a shared VM: the same call swings by 50% between
    seconds): each round times every fn within moments, so the round's ratios compare like with like,
    and the median of the per-round ratios (ratio_median) is the robust comparison. Odd rounds take the
    fns in reverse order (A B, B A, A B, ...): a fn's place in the round (what ran just before it, a
    drift within the round) then favours each side equally often. CUDA: CUDA events; CPU: wall time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(rounds):
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            if device == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(begin.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def ratio_median(times: Dict[str, List[float]], num: str, den: str) -> float:
    """The median over rounds of times[num][r] / times[den][r] (see interleaved_ms)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


# -- CUDA memory -----------------------------------------------------------------------------------------


def cuda_peak(fn: Callable[[], object]) -> Dict[str, Measured]:
    """{'peak': bytes allocated at the peak of one call, 'extra': that over what was allocated before},
    or 'OOM' for both."""
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


# -- CPU memory ------------------------------------------------------------------------------------------


def proc_status_kib(key: str) -> Optional[int]:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM, ...), or None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current VmRSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def cpu_peak_supported() -> bool:
    """Whether cpu_peak_bytes can measure here (Linux with /proc/self/clear_refs)."""
    return os.path.exists("/proc/self/clear_refs")


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak resident-set growth while fn runs: VmHWM after it minus VmRSS before (Linux).

    Meaningful in a process started with ``cpu_memory_env()`` (see the module docstring)."""
    if not reset_peak_rss():
        raise RuntimeError("cpu_peak_bytes: /proc/self/clear_refs cannot be written (Linux >= 4.0 needed)")
    before = proc_status_kib("VmRSS")
    fn()
    after = proc_status_kib("VmHWM")
    if before is None or after is None:
        raise RuntimeError("cpu_peak_bytes: VmRSS or VmHWM missing from /proc/self/status")
    return max(0, after - before) * 1024


def cpu_memory_env() -> Dict[str, str]:
    """The environment of a fresh worker process whose peak resident set measures live tensors: glibc
    maps every block of MMAP_THRESHOLD or more on its own and unmaps it on free, and the worker uses
    this process's thread count."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_=str(MMAP_THRESHOLD))
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


def mem_available_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes, or None where there is none."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- the fresh worker process ----------------------------------------------------------------------------


def emit(record: dict) -> None:
    """In a worker: one result as a JSON line, flushed at once (a later step may get the worker killed)."""
    print(json.dumps(record), flush=True)


@dataclass
class WorkerResult:
    records: List[dict]  # the JSON lines the worker printed (emit), in order
    returncode: int
    stderr: str

    @property
    def killed_for_memory(self) -> bool:
        """Killed by the kernel (SIGKILL: the OOM killer) or ended by an allocation failure."""
        return self.returncode in (-9, 137) or is_oom(RuntimeError(self.stderr))


def run_worker(args: Sequence[str], cwd: Optional[str] = None) -> WorkerResult:
    """Runs `python args...` in a fresh process with cpu_memory_env() and collects what it emitted."""
    proc = subprocess.run([sys.executable, *args], env=cpu_memory_env(), cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = []
    for line in proc.stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return WorkerResult(records, proc.returncode, proc.stderr)


# -- a whole run -----------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of a whole run: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the peak
    resident set of the process (VmHWM, reset at start() where Linux allows it; else ru_maxrss)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        reset_peak_rss()  # VmHWM := VmRSS, so the peak is that of what follows
        self.baseline = (proc_status_kib("VmRSS") or 0) * 1024

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        hwm = proc_status_kib("VmHWM")
        if hwm is not None:
            return hwm * 1024
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024

    @property
    def what(self) -> str:
        return "max CUDA memory allocated" if self.device.type == "cuda" else "peak RSS of the process"


# -- the machine -----------------------------------------------------------------------------------------


def cpu_model() -> Optional[str]:
    """The CPU's model name from /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
