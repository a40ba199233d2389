"""The outcome_log plugin (scripts/gpu_verify.sh's record of a GPU test run), checked on the CPU on small
made-up suites run in a child pytest: every outcome recorded with its parameters, a failure's frames and
tensors, resuming after a process that died under a test, and stopping after a lost CUDA context
(simulated: there is no GPU here).

    python -m pytest tests/cuda/test_outcome_log.py -q
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import outcome_log  # noqa: E402

SUITE = """
import os
import pytest
import torch

@pytest.mark.parametrize("n,dtype", [(3, torch.float32), (5, torch.bfloat16)], ids=["n3", "n5"])
def test_param(n, dtype):
    y = torch.arange(n, dtype=dtype) * 2
    assert n == 3, f"y: n={n} is not 3"

def test_skipped():
    pytest.skip("no device here")

def test_dies():
    if os.environ.get("SUITE_DIE") == "1":
        os._exit(7)  # what a hang killed by a timeout, or a crash, looks like from the log

def test_loses_context():
    if os.environ.get("SUITE_LOSE_CONTEXT") == "1":
        import outcome_log
        outcome_log.cuda_context_error = lambda: "RuntimeError: simulated illegal memory access"

def test_last():
    pass
"""


def run_suite(tmp_path, attempt, stage="s", extra=(), **env):
    (tmp_path / "test_suite.py").write_text(textwrap.dedent(SUITE))
    log = tmp_path / "tests.jsonl"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "outcome_log",
           "--outcome-log", str(log), "--outcome-stage", stage, "--outcome-attempt", str(attempt),
           "--outcome-tensors", str(tmp_path / "failures.pt"), *extra, "test_suite.py"]
    full_env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    proc = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)
    return proc, str(log)


def results(log):
    return {r["nodeid"]: r for r in outcome_log.read_log(log) if r["event"] == "result"}


def test_outcomes_params_frames_and_tensors(tmp_path):
    proc, log = run_suite(tmp_path, 1)
    assert proc.returncode == 1, f"child pytest exit {proc.returncode}, expected 1 (one test fails)\n{proc.stdout}"
    res = results(log)
    assert res["test_suite.py::test_param[n3]"]["outcome"] == "passed"
    assert res["test_suite.py::test_skipped"]["outcome"] == "skipped"
    assert res["test_suite.py::test_skipped"]["message"].endswith("no device here")
    bad = res["test_suite.py::test_param[n5]"]
    assert bad["outcome"] == "failed"
    assert bad["params"] == {"n": 5, "dtype": "torch.bfloat16"}
    assert "y: n=5 is not 3" in bad["message"] and "test_param" in bad["longrepr"]
    frame = bad["frames"][0]
    assert frame["where"].startswith("test_suite.py:") and frame["where"].endswith("test_param")
    y = frame["locals"]["y"]
    assert (y["shape"], y["dtype"], y["min"], y["max"], y["nan"]) == ([5], "bfloat16", 0.0, 8.0, 0)
    saved = torch.load(tmp_path / "failures.pt", weights_only=True)
    assert list(saved) == ["test_suite.py::test_param[n5]"]
    want = torch.arange(5, dtype=torch.bfloat16) * 2
    assert torch.equal(saved["test_suite.py::test_param[n5]"]["test_param:y"], want)
    assert outcome_log.finished(log, "s", 1)
    assert not outcome_log.verdict(log, "s")
    assert "1 failed" in outcome_log.summary(log) and "FAILED test_suite.py::test_param[n5]" in outcome_log.summary(log)


def test_resume_after_a_dead_process(tmp_path):
    proc, log = run_suite(tmp_path, 1, SUITE_DIE="1")
    assert proc.returncode == 7, f"child exit {proc.returncode}, expected the test's os._exit(7)"
    assert not outcome_log.finished(log, "s", 1)
    assert "UNFINISHED test_suite.py::test_dies" in outcome_log.summary(log)
    proc, log = run_suite(tmp_path, 2)
    # Only the tests without a result run again, and they pass: a stage's verdict comes from the log.
    assert proc.returncode == 0, proc.stdout
    assert outcome_log.finished(log, "s", 2)
    attempt2 = [r for r in outcome_log.read_log(log) if r["event"] == "start" and r["attempt"] == 2]
    assert [r["nodeid"] for r in attempt2] == ["test_suite.py::test_loses_context", "test_suite.py::test_last"]
    res = results(log)
    assert res["test_suite.py::test_dies"]["outcome"] == "crashed"
    assert res["test_suite.py::test_dies"]["crashed_in_attempt"] == 1
    assert not outcome_log.verdict(log, "s")
    assert len(res) == 6


def test_stops_after_lost_cuda_context_and_resumes(tmp_path):
    proc, log = run_suite(tmp_path, 1, SUITE_LOSE_CONTEXT="1")
    assert proc.returncode == outcome_log.RESUME_EXIT, f"child exit {proc.returncode}\n{proc.stdout}"
    assert not outcome_log.finished(log, "s", 1)
    lost = [r for r in outcome_log.read_log(log) if r["event"] == "cuda_context_lost"]
    assert [r["after"] for r in lost] == ["test_suite.py::test_loses_context"]
    assert "test_suite.py::test_last" not in results(log)
    proc, log = run_suite(tmp_path, 2)
    assert outcome_log.finished(log, "s", 2)
    assert results(log)["test_suite.py::test_last"]["outcome"] == "passed"
    assert not outcome_log.verdict(log, "s")  # test_param[n5] failed in attempt 1
    assert "CUDA context lost after test_suite.py::test_loses_context" in outcome_log.summary(log)


def test_a_later_stage_skips_what_an_earlier_one_ran(tmp_path):
    run_suite(tmp_path, 1, SUITE_DIE="1")  # stage s records test_param[*] and test_skipped, then dies
    proc, log = run_suite(tmp_path, 1, stage="rest", extra=("--outcome-skip-stage", "s"))
    assert proc.returncode == 0, proc.stdout
    ran = [r["nodeid"] for r in outcome_log.read_log(log) if r["event"] == "start" and r["stage"] == "rest"]
    # test_dies started in stage s and killed its process: it is not run again.
    assert ran == ["test_suite.py::test_loses_context", "test_suite.py::test_last"]


def test_verdict_passes_a_clean_stage(tmp_path):
    log = tmp_path / "tests.jsonl"
    log.write_text('{"event": "start", "stage": "s", "nodeid": "t::a"}\n'
                   '{"event": "result", "stage": "s", "nodeid": "t::a", "outcome": "passed"}\n'
                   '{"event": "result", "stage": "s", "nodeid": "t::b", "outcome": "skipped"}\n'
                   '{"event": "start", "stage": "other", "nodeid": "t::c"}\n')
    assert outcome_log.verdict(str(log), "s")
    assert outcome_log.verdict(str(log), "s", 1)
    assert not outcome_log.verdict(str(log), "s", 2), "one test ran, one skipped: fewer than 2 ran"
    assert not outcome_log.verdict(str(log), "other"), "a test started without a result must not pass"
    assert not outcome_log.verdict(str(log), "missing"), "a stage with no results must not pass"


@pytest.mark.parametrize("args,rc", [(["finished"], 2), (["summary", "/nonexistent.jsonl"], 0),
                                     (["verdict", "/nonexistent.jsonl", "s"], 1)])
def test_command_line(args, rc):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "outcome_log.py"), *args],
                          capture_output=True, text=True)
    assert proc.returncode == rc, f"{args}: exit {proc.returncode}, expected {rc}: {proc.stderr}"
