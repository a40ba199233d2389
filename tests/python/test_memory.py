"""Memory of the fused op: forward + backward at N = 16384 must stay far below the N x N map.

Measured in a fresh subprocess (so nothing this pytest process did earlier pollutes the numbers) by the
package's meter, sagan_attn.measure.cpu_peak_bytes: the peak resident set (VmHWM) is reset through
/proc/self/clear_refs just before the measured call, and the growth is VmHWM after the call minus VmRSS
before it. The same script first proves that the meter sees an allocation of the size it is meant to catch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

N = 16384
NXN_BYTES = N * N * 4  # one float32 attention map: 1 GiB

SCRIPT = textwrap.dedent(
    r"""
    import json, sys
    import torch
    import sagan_attn
    from sagan_attn import reference
    from sagan_attn.measure import cpu_peak_bytes  # VmHWM after the call - VmRSS before it

    N, B, Cqk, Cv = int(sys.argv[1]), 1, 8, 64
    op = torch.ops.sagan.self_attn

    def inputs(n, seed):
        gen = torch.Generator().manual_seed(seed)
        mk = lambda *s: torch.randn(*s, generator=gen).requires_grad_(True)
        return (mk(B, Cqk, n), mk(B, Cqk, n), mk(B, Cv, n), mk(B, Cv, n),
                torch.tensor(0.5, requires_grad=True))

    # Warm-up at a small size: thread pool, allocator, autograd machinery, lazily loaded code.
    w = inputs(300, 0)
    op(*w, 1.0).backward(torch.randn(B, Cv, 300))

    f, g, h, x, gamma = inputs(N, 1)
    grad_y = torch.randn(B, Cv, N, generator=torch.Generator().manual_seed(2))

    # Control: the meter must see a 256 MiB allocation once it is touched.
    control = cpu_peak_bytes(lambda: torch.ones(64, 1024, 1024))  # 256 MiB of float32

    out = {}

    def step():
        out["y"] = op(f, g, h, x, gamma, 1.0)
        out["y"].backward(grad_y)

    growth = cpu_peak_bytes(step)
    y = out["y"]

    # The big-N results are right too: 64 query columns against the float64 reference.
    with torch.no_grad():
        cols = torch.arange(0, N, N // 64)
        y_ref = reference.self_attn(f[:, :, cols].double(), g.double(), h.double(), x[:, :, cols].double(),
                                    gamma.double(), 1.0)
        y_err = ((y[:, :, cols].double() - y_ref).abs().max() / y_ref.abs().max()).item()
    finite = all(bool(torch.isfinite(t.grad).all()) for t in (f, g, h, x, gamma))
    print(json.dumps(dict(growth=growth, control=control, y_err=y_err, grads_finite=finite)))
    """
)


@pytest.mark.slow
def test_forward_backward_memory_at_16k():
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(N)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])

    # The meter works: a touched 256 MiB tensor shows up (within page-granularity slack).
    assert res["control"] >= 240 * 2**20, f"peak-RSS meter missed a 256 MiB allocation: {res}"

    # Bound: 10% of the N x N float32 map (~102 MiB). What the op legitimately needs is O(N * C):
    # f, g (8 x 16384 floats: 0.5 MiB each); h, x, grad_y, y, o, and the grads of h and x
    # (64 x 16384: 4 MiB each); the backward's per-key-group partial df (<= 32 groups x Cqk x N:
    # 16 MiB) and per-thread tile workspaces (O(64 x 128 + C x 128) floats, < 1 MiB per thread).
    # That is ~50 MiB at most; any implementation holding even a tenth of one N x N map fails.
    assert res["growth"] < 0.1 * NXN_BYTES, (
        f"peak RSS grew by {res['growth'] / 2**20:.1f} MiB during forward+backward at N={N} "
        f"(limit {0.1 * NXN_BYTES / 2**20:.0f} MiB)"
    )
    assert res["grads_finite"]
    # float32 output, sums over 16384 keys: the 2e-5-of-scale float32 criterion of op_testing.
    assert res["y_err"] <= 2e-5, res
