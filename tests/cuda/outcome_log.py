"""A pytest plugin for runs on a borrowed GPU: every test's outcome, one JSON line each, written as it
happens, and for every failure its parameters, a summary of the tensors in the test's frames, the
error and the traceback (and the tensors themselves, small ones, in a .pt file), so that a later
session without a GPU can work on what failed. Used by scripts/gpu_verify.sh:

    PYTHONPATH=tests/cuda python -m pytest tests/python/test_cuda.py -p outcome_log \\
        --outcome-log OUT/tests.jsonl --outcome-stage cuda --outcome-attempt 1 --outcome-tensors OUT/failures.pt

Resuming: a run of the same stage skips the tests that already have a result in the log, and records
a test that started but has none (the process died under it: a hang killed by a timeout, a crash) as
"crashed". After a test that leaves the CUDA context unusable (an illegal address, a device-side
assert: every later CUDA call fails), the run stops with exit status 75 (RESUME_EXIT) so that the
caller starts a fresh process for the remaining tests instead of recording the same error for each.

    python tests/cuda/outcome_log.py finished LOG STAGE ATTEMPT   # exit 0 if that run ended normally
    python tests/cuda/outcome_log.py verdict LOG STAGE [MIN_RUN]  # exit 0 if it has results, none bad
    python tests/cuda/outcome_log.py summary LOG                  # per stage: counts, failures, slowest
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import pytest

RESUME_EXIT = 75
# failures.pt must come back from the device machine (16 MiB per file there): tensors of one test past
# PER_TEST_BYTES, or of the whole run past TOTAL_BYTES, are summarised in the log but not saved.
PER_TEST_BYTES = 4 << 20
TOTAL_BYTES = 14 << 20
TEXT_LIMIT = 20000  # characters of a traceback or captured output kept per test
ENV_KEYS = ("SAGAN_ATTN_CUDA_KERNELS", "CUDA_LAUNCH_BLOCKING", "PYTORCH_NO_CUDA_MEMORY_CACHING")


def pytest_addoption(parser):
    group = parser.getgroup("outcome_log", "one JSON line per test outcome (scripts/gpu_verify.sh)")
    group.addoption("--outcome-log", default=None, help="JSON-lines file, appended to")
    group.addoption("--outcome-stage", default="tests", help="stage name written into every record")
    group.addoption("--outcome-attempt", type=int, default=1, help="attempt number written into every record")
    group.addoption("--outcome-tensors", default=None,
                    help="a .pt file of the tensors in the frames of each failed test (small ones only)")
    group.addoption("--outcome-no-resume", action="store_true",
                    help="run every test even if the log already has its result")
    group.addoption("--outcome-skip-stage", action="append", default=[],
                    help="also skip the tests this (earlier) stage started; repeatable")


def pytest_configure(config):
    path = config.getoption("--outcome-log", default=None)
    if path:
        config.pluginmanager.register(OutcomeLog(config, path), "outcome_log_writer")


def _short(text: str, limit: int = TEXT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters left out] ...\n{text[-half:]}"


def _jsonable(v: Any, depth: int = 0) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v if not isinstance(v, str) else _short(v, 2000)
    if isinstance(v, (list, tuple)) and depth < 2:
        return [_jsonable(x, depth + 1) for x in list(v)[:16]]
    if isinstance(v, dict) and depth < 2:
        return {str(k): _jsonable(x, depth + 1) for k, x in list(v.items())[:32]}
    return _short(repr(v), 300)


def tensor_summary(t) -> Dict[str, Any]:
    """Shape, dtype, device, strides and, where the data can still be read, value statistics."""
    out: Dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                           "device": str(t.device), "stride": list(t.stride()),
                           "contiguous": t.is_contiguous(), "requires_grad": t.requires_grad}
    # Statistics go through a float64 copy: past 2^24 elements (128 MiB) the shape says enough.
    if t.numel() == 0 or t.numel() > 1 << 24 or not (t.is_floating_point() or t.is_complex()):
        return out
    try:  # reading may itself fail once the CUDA context is lost
        d = t.detach().double() if not t.is_complex() else t.detach().abs().double()
        finite = d.isfinite()
        out["nan"] = int(d.isnan().sum())
        out["inf"] = int(d.isinf().sum())
        if bool(finite.any()):
            v = d[finite]
            out.update(min=v.min().item(), max=v.max().item(), abs_max=v.abs().max().item(),
                       mean=v.mean().item())
    except Exception as err:  # noqa: BLE001  (any failure here is itself the information)
        out["unreadable"] = f"{type(err).__name__}: {_short(str(err), 300)}"
    return out


def _tensors_in(name: str, value: Any, depth: int = 0):
    """(name, tensor) pairs in a local: a tensor, or inside lists, tuples, named tuples, dicts."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if isinstance(value, torch.Tensor):
        yield name, value
    elif depth < 2 and hasattr(value, "_asdict"):
        for k, v in value._asdict().items():
            yield from _tensors_in(f"{name}.{k}", v, depth + 1)
    elif depth < 2 and isinstance(value, (list, tuple)):
        for i, v in enumerate(value[:16]):
            yield from _tensors_in(f"{name}[{i}]", v, depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for k, v in list(value.items())[:32]:
            yield from _tensors_in(f"{name}[{k!r}]", v, depth + 1)


class OutcomeLog:
    def __init__(self, config, path: str):
        self.config = config
        self.path = path
        self.stage = config.getoption("--outcome-stage")
        self.attempt = config.getoption("--outcome-attempt")
        self.tensor_path = config.getoption("--outcome-tensors")
        self.resume = not config.getoption("--outcome-no-resume")
        self.skip_stages = set(config.getoption("--outcome-skip-stage"))
        self.rootdir = str(config.rootpath)
        self.reports: Dict[str, List[Any]] = {}
        self.locals: Dict[str, Dict[str, Any]] = {}
        self.counts: Dict[str, int] = {}
        self.lost = False
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")

    # -- writing -----------------------------------------------------------------------------------
    def write(self, record: Dict[str, Any]) -> None:
        rec = {"event": record.pop("event"), "stage": self.stage, "attempt": self.attempt,
               "time": round(time.time(), 3)}
        rec.update(record)
        self.fh.write(json.dumps(rec, default=str) + "\n")
        self.fh.flush()  # a kill may follow at any moment: each line must already be in the file

    def pytest_sessionstart(self, session):
        info: Dict[str, Any] = {"argv": sys.argv[1:], "python": sys.version.split()[0], "pid": os.getpid()}
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                info["device"] = torch.cuda.get_device_name()
        except Exception as err:  # noqa: BLE001
            info["torch_error"] = repr(err)
        self.write({"event": "session_start", **info})

    def pytest_collection_modifyitems(self, session, config, items):
        done, started = set(), {}
        for rec in read_log(self.path):
            if rec["event"] in ("result", "start") and rec.get("stage") in self.skip_stages:
                done.add(rec["nodeid"])  # started there without a result: it hung or crashed, once is enough
            if rec.get("stage") != self.stage or not self.resume:
                continue
            if rec["event"] == "result":
                done.add(rec["nodeid"])
            elif rec["event"] == "start":
                started[rec["nodeid"]] = rec
        for nodeid, rec in started.items():
            if nodeid not in done:
                self.write({"event": "result", "nodeid": nodeid, "outcome": "crashed",
                            "crashed_in_attempt": rec.get("attempt"),
                            "message": "the process ended while this test ran (a hang killed by a timeout, "
                                       "or a crash): see that attempt's output in the pytest log"})
                done.add(nodeid)
        keep = [it for it in items if it.nodeid not in done]
        skipped = [it for it in items if it.nodeid in done]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = keep
            self.write({"event": "resumed", "already_done": len(skipped), "to_run": len(keep)})

    def pytest_runtest_logstart(self, nodeid, location):
        self.write({"event": "start", "nodeid": nodeid})

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        self.reports.setdefault(item.nodeid, []).append(report)
        if call.when == "call":
            self.locals.setdefault(item.nodeid, {})["env"] = {k: os.environ.get(k) for k in ENV_KEYS}
        if report.failed and call.excinfo is not None:
            self.locals.setdefault(item.nodeid, {})[call.when] = self._frames(call.excinfo)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        yield
        self._result(item)
        lost = cuda_context_error()
        if lost and not self.lost:
            self.lost = True
            self.write({"event": "cuda_context_lost", "after": item.nodeid, "error": lost})
            # Stops as -x does (the failures are still reported), and exits with RESUME_EXIT.
            item.session.shouldstop = (f"outcome_log: CUDA context unusable after {item.nodeid} ({lost}); the "
                                       f"remaining tests need a fresh process")

    def pytest_sessionfinish(self, session, exitstatus):
        if self.lost:
            session.exitstatus = RESUME_EXIT
        self.write({"event": "session_end", "exitstatus": int(session.exitstatus), "counts": self.counts})
        self.fh.close()

    # -- one test ----------------------------------------------------------------------------------
    def _frames(self, excinfo) -> List[Dict[str, Any]]:
        """The locals of the traceback's frames in this repository's tests: scalars as values, tensors
        as summaries (and kept, for the .pt file)."""
        frames = []
        for entry in excinfo.traceback:
            path = str(entry.path)
            if not path.startswith(self.rootdir) or "site-packages" in path:
                continue
            values, tensors = {}, {}
            for name, value in entry.frame.f_locals.items():
                if name.startswith("@") or name in ("self", "request", "monkeypatch"):
                    continue
                found = list(_tensors_in(name, value))
                if found:
                    for tname, t in found:
                        values[tname] = tensor_summary(t)
                        tensors[tname] = t
                elif not callable(value):
                    values[name] = _jsonable(value)
            frames.append({"where": f"{os.path.relpath(path, self.rootdir)}:{entry.lineno + 1} {entry.name}",
                           "locals": values, "_tensors": tensors})
        return frames

    def _result(self, item) -> None:
        reports = self.reports.pop(item.nodeid, [])
        extra = self.locals.pop(item.nodeid, {})
        phases = {r.when: {"outcome": r.outcome, "duration_s": round(r.duration, 4)} for r in reports}
        failed = [r for r in reports if r.failed]
        wasxfail = any(hasattr(r, "wasxfail") for r in reports)
        if failed:
            outcome = "failed" if failed[0].when == "call" else "error"
        elif any(r.skipped for r in reports):
            outcome = "xfailed" if wasxfail else "skipped"
        else:
            outcome = "xpassed" if wasxfail else "passed"
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        params = {}
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            params = {k: _jsonable(v) for k, v in callspec.params.items()}
        rec: Dict[str, Any] = {"event": "result", "nodeid": item.nodeid, "outcome": outcome,
                               "duration_s": round(sum(r.duration for r in reports), 4), "phases": phases,
                               "params": params}
        if "env" in extra:
            rec["env"] = {k: v for k, v in extra["env"].items() if v is not None}
        if failed:
            r = failed[0]
            crash = getattr(r.longrepr, "reprcrash", None)
            rec["message"] = _short(crash.message if crash is not None else str(r.longrepr).splitlines()[-1], 4000)
            rec["longrepr"] = _short(str(r.longrepr))
            rec["captured"] = {name: _short(text, 4000) for name, text in r.sections}
            frames = extra.get(r.when, [])
            rec["frames"] = [{k: v for k, v in f.items() if k != "_tensors"} for f in frames]
            if self.tensor_path:
                rec["tensors_saved"] = self._save_tensors(item.nodeid, frames)
        if outcome == "skipped":
            skip = next((r for r in reports if r.skipped), None)
            if skip is not None and isinstance(skip.longrepr, tuple):
                rec["message"] = skip.longrepr[2]
        self.write(rec)

    def _save_tensors(self, nodeid: str, frames) -> Any:
        """Adds this test's tensors (moved to the CPU) to the .pt file, within the size budgets. Returns
        the names saved, or why none were."""
        import torch

        chosen, size, seen = {}, 0, set()
        for f in frames:
            for name, t in f["_tensors"].items():
                if id(t) in seen:
                    continue
                seen.add(id(t))
                nbytes = t.numel() * t.element_size()
                if size + nbytes > PER_TEST_BYTES:
                    continue
                try:
                    chosen[f"{f['where'].split(' ')[-1]}:{name}"] = t.detach().to("cpu", copy=True)
                except Exception as err:  # noqa: BLE001
                    return f"not saved: {type(err).__name__}: {_short(str(err), 300)}"
                size += nbytes
        if not chosen:
            return []
        store = {}
        if os.path.exists(self.tensor_path):
            try:
                store = torch.load(self.tensor_path, weights_only=True)
            except Exception as err:  # noqa: BLE001
                return f"not saved: {self.tensor_path} unreadable ({err})"
        used = sum(t.numel() * t.element_size() for per in store.values() for t in per.values())
        if used + size > TOTAL_BYTES:
            return f"not saved: {self.tensor_path} would pass {TOTAL_BYTES >> 20} MiB"
        store[nodeid] = chosen
        tmp = self.tensor_path + ".tmp"
        torch.save(store, tmp)
        os.replace(tmp, self.tensor_path)  # a kill mid-write must not lose the earlier tests' tensors
        return sorted(chosen)


def cuda_context_error() -> Optional[str]:
    """None if CUDA is unused or still works; else the error a trivial CUDA call now raises."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    try:
        torch.cuda.synchronize()
        if torch.ones(1, device="cuda").add_(1).item() != 2.0:
            return "a trivial CUDA computation returned a wrong value"
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {_short(' '.join(str(err).split()), 500)}"
    return None


# -- reading the log ---------------------------------------------------------------------------------


def read_log(path: str) -> List[Dict[str, Any]]:
    """The records of a log; a last line cut short by a kill is ignored."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def finished(path: str, stage: str, attempt: int) -> bool:
    """Did that attempt end on its own (not killed, not stopped for a lost CUDA context)?"""
    for rec in read_log(path):
        if (rec["event"] == "session_end" and rec.get("stage") == stage and rec.get("attempt") == attempt):
            return rec["exitstatus"] != RESUME_EXIT
    return False


BAD_OUTCOMES = ("failed", "error", "crashed", "xpassed")


def verdict(path: str, stage: str, min_run: int = 0) -> bool:
    """True if the stage recorded at least one result and none bad, no test was left unfinished, and at
    least ``min_run`` tests ran (were not skipped)."""
    results, started = {}, set()
    for rec in read_log(path):
        if rec.get("stage") != stage:
            continue
        if rec["event"] == "result":
            results[rec["nodeid"]] = rec["outcome"]
        elif rec["event"] == "start":
            started.add(rec["nodeid"])
    ran = sum(o not in ("skipped", "xfailed") for o in results.values())
    return (bool(results) and started <= set(results) and ran >= min_run
            and not any(o in BAD_OUTCOMES for o in results.values()))


def summary(path: str, slowest: int = 8) -> str:
    """Per stage: the outcome counts, every test not passed or skipped with its message, the slowest."""
    stages: Dict[str, Dict[str, Dict[str, Any]]] = {}
    events: Dict[str, List[str]] = {}
    started: Dict[str, Dict[str, Any]] = {}
    for rec in read_log(path):
        st = rec.get("stage", "?")
        if rec["event"] == "start":
            started.setdefault(st, {})[rec["nodeid"]] = rec
        elif rec["event"] == "result":
            stages.setdefault(st, {})[rec["nodeid"]] = rec
        elif rec["event"] in ("cuda_context_lost", "resumed"):
            what = (f"CUDA context lost after {rec['after']}: {rec['error']}" if rec["event"] == "cuda_context_lost"
                    else f"attempt {rec['attempt']} resumed: {rec['already_done']} done, {rec['to_run']} to run")
            events.setdefault(st, []).append(what)
    for st, starts in started.items():  # no later attempt recorded these: the stage ran out of time
        for nodeid, rec in starts.items():
            if nodeid not in stages.setdefault(st, {}):
                stages[st][nodeid] = {"nodeid": nodeid, "outcome": "unfinished",
                                      "message": f"started in attempt {rec.get('attempt')}, no result: killed "
                                                 "(stage timeout or hang) or crashed"}
    lines = []
    for st, results in stages.items():
        counts: Dict[str, int] = {}
        for r in results.values():
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        lines.append(f"stage {st}: {len(results)} tests: "
                     + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        lines += [f"  {e}" for e in events.get(st, [])]
        for r in results.values():
            if r["outcome"] in BAD_OUTCOMES + ("unfinished",):
                msg = " ".join(str(r.get("message", "")).split())[:200]
                lines.append(f"  {r['outcome'].upper()} {r['nodeid']}: {msg}")
        timed = sorted((r for r in results.values() if r.get("duration_s", 0) >= 0.05), key=lambda r: -r["duration_s"])
        if timed:
            lines.append("  slowest: " + ", ".join(f"{r['nodeid'].split('::')[-1]} {r['duration_s']:.1f}s"
                                                  for r in timed[:slowest]))
    return "\n".join(lines) if lines else f"{path}: no test results"


def main(argv: List[str]) -> int:
    if len(argv) == 4 and argv[0] == "finished":
        return 0 if finished(argv[1], argv[2], int(argv[3])) else 1
    if len(argv) in (3, 4) and argv[0] == "verdict":
        return 0 if verdict(argv[1], argv[2], int(argv[3]) if len(argv) == 4 else 0) else 1
    if len(argv) == 2 and argv[0] == "summary":
        print(summary(argv[1]))
        return 0
    print(__doc__.split("\n\n")[-1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
