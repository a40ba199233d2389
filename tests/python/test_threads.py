"""Thread safety and determinism of torch.ops.sagan.self_attn on the CPU.

  * Concurrent calls from several Python threads (the dispatcher releases the GIL, so the kernels and
    their at::parallel_for really overlap), each with its own inputs, forward and backward, give
    bitwise the results of the same calls made one after another; so do threads sharing inputs, and
    threads with different thread-local state (autocast, no_grad, inference_mode).
  * Bitwise identical results for any torch.set_num_threads (1 to 4, more than this machine's cores
    included): the kernels split work by shape only (test_op.py checks 1 vs 2 threads at one shape;
    here more counts, shapes with one and with many batches, and every dtype).
  * Under torch.use_deterministic_algorithms(True) the op runs (it raises no nondeterminism alert:
    it has no atomics) and repeated runs are bitwise identical.
"""
from __future__ import annotations

import threading

import pytest
import torch

from op_testing import OP, assert_identical, make_inputs, random_grad, run_with_grads


def _run_threads(jobs, repeat=3):
    """Runs each job (a callable returning a result) in its own thread, all started together,
    `repeat` times in a row per thread; returns the results per job and re-raises any error."""
    results = [[] for _ in jobs]
    errors = []
    barrier = threading.Barrier(len(jobs))

    def worker(k):
        try:
            barrier.wait()
            for _ in range(repeat):
                results[k].append(jobs[k]())
        except BaseException as e:  # noqa: BLE001  (reported in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


# (B, Cqk, Cv, Nq, Nk, dtype): several query and key tiles each, all dtypes, with and without x.
THREAD_CASES = [
    (2, 8, 32, 300, 260, torch.float32, True),
    (1, 5, 16, 129, 700, torch.float64, False),
    (3, 4, 24, 97, 131, torch.bfloat16, True),
    (2, 12, 8, 200, 90, torch.float16, True),
]


def _job(case, seed):
    B, Cqk, Cv, Nq, Nk, dtype, with_x = case
    inputs = make_inputs(B, Cqk, Cv, Nq, Nk, dtype, with_x=with_x, seed=seed)
    grad_y = random_grad((B, Cv, Nq), dtype, seed=seed + 1)
    return lambda: run_with_grads(OP, inputs, 0.8, grad_y)


def test_concurrent_calls_match_serial():
    jobs = [_job(case, seed=100 + k) for k, case in enumerate(THREAD_CASES)]
    serial = [job() for job in jobs]
    concurrent = _run_threads(jobs)
    for k, runs in enumerate(concurrent):
        for r, res in enumerate(runs):
            assert_identical(res, serial[k], f"thread {k} ({THREAD_CASES[k][5]}), run {r}")


def test_concurrent_calls_sharing_inputs():
    """Four threads on the very same input tensors (read-only sharing, e.g. one model in several
    serving threads)."""
    job = _job(THREAD_CASES[0], seed=110)
    serial = job()
    for k, runs in enumerate(_run_threads([job] * 4)):
        for res in runs:
            assert_identical(res, serial, f"thread {k}")


def test_concurrent_calls_with_thread_local_state():
    """Autocast and grad mode are thread-local: a thread under CPU autocast gets bf16 results while
    its neighbours, running at the same time, keep float32 and their gradients."""
    inputs = make_inputs(2, 8, 16, 150, 140, torch.float32, seed=120)

    def plain():
        return run_with_grads(OP, inputs, 1.0, random_grad((2, 16, 150), torch.float32))

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return OP(*inputs, 1.0)

    def no_grad():
        with torch.no_grad():
            return OP(*inputs, 1.0)

    def inference():
        # Inference mode skips the Autograd key: the op's CompositeExplicitAutograd kernel runs.
        with torch.inference_mode():
            return OP(*inputs, 1.0)

    want_plain, want_autocast, want_no_grad = plain(), autocast(), no_grad()
    assert want_autocast.dtype == torch.bfloat16
    got = _run_threads([plain, autocast, no_grad, inference])
    for res in got[0]:
        assert_identical(res, want_plain, "plain thread")
    for res in got[3]:
        assert res.is_inference() and torch.equal(res, want_no_grad), "inference_mode thread"
    for res in got[1]:
        assert res.dtype == torch.bfloat16 and torch.equal(res, want_autocast), "autocast thread"
    for res in got[2]:
        assert res.dtype == torch.float32 and torch.equal(res, want_no_grad), "no_grad thread"


@pytest.mark.parametrize("case", THREAD_CASES, ids=[f"{c[5]}".replace("torch.", "") for c in THREAD_CASES])
def test_bitwise_identical_across_thread_counts(case, restore_threads):
    job = _job(case, seed=130)
    torch.set_num_threads(1)
    want = job()
    for n in (2, 3, 4):
        torch.set_num_threads(n)
        assert_identical(job(), want, f"{n} threads vs 1")


def test_many_batches_identical_across_thread_counts(restore_threads):
    """B = 40 > 32: the backward's key groups per batch drop to 1, a different work split."""
    job = _job((40, 4, 8, 70, 150, torch.float32, True), seed=140)
    torch.set_num_threads(1)
    want = job()
    torch.set_num_threads(3)
    assert_identical(job(), want, "3 threads vs 1")


@pytest.fixture
def deterministic_mode():
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_deterministic_mode_repeated_runs(dtype, deterministic_mode):
    """Under use_deterministic_algorithms(True) (errors, not warnings, on any nondeterministic op):
    forward, backward and double backward run and give bitwise the same results five times."""
    job = _job((2, 8, 32, 300, 700, dtype, True), seed=150)
    first = job()
    for r in range(4):
        assert_identical(job(), first, f"deterministic mode, run {r + 1}")
    if dtype == torch.float64:
        inputs = make_inputs(1, 3, 4, 20, 30, dtype, requires_grad=True, seed=151)
        y = OP(*inputs, 1.0)
        grads = torch.autograd.grad((y ** 2).sum(), inputs[:3], create_graph=True)
        sum(g.sum() for g in grads).backward()  # the composite double-backward path
