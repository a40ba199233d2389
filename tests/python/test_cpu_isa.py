"""The CPU kernels exist in three builds on x86-64 (baseline, AVX2+FMA and AVX-512, the best the CPU has
picked at run time); each one this machine can run must agree with the reference. A lower build is forced
in a subprocess with SAGAN_ATTN_CPU_ISA=default or avx2."""
import os
import subprocess
import sys

import pytest

import sagan_attn

SCRIPT = r"""
import torch, sagan_attn
from sagan_attn import reference
print(sagan_attn.build_info()["cpu_isa"])
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    B, Cqk, Cv, Nq, Nk = 2, 5, 37, 131, 67
    f, g = torch.randn(B, Cqk, Nq, dtype=torch.float64), torch.randn(B, Cqk, Nk, dtype=torch.float64)
    h, x = torch.randn(B, Cv, Nk, dtype=torch.float64), torch.randn(B, Cv, Nq, dtype=torch.float64)
    gamma = torch.tensor([0.6], dtype=torch.float64)
    ins = [t.to(dtype).requires_grad_() for t in (f, g, h, x, gamma)]
    y = sagan_attn.self_attn(*ins)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, ins, dy)
    refs = [t.detach().requires_grad_() for t in (f, g, h, x, gamma)]
    y_ref = reference.self_attn(*refs)
    grads_ref = torch.autograd.grad(y_ref, refs, dy.double())
    err = max(float((a.double() - b).abs().max() / (1 + b.abs().max()))
              for a, b in zip([y, *grads], [y_ref, *grads_ref]))
    print(dtype, err)
"""


def run_with_isa(isa):
    env = dict(os.environ)
    if isa is None:
        env.pop("SAGAN_ATTN_CPU_ISA", None)
    else:
        env["SAGAN_ATTN_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    return lines[0], {l.split()[0]: float(l.split()[1]) for l in lines[1:] if l.strip()}


@pytest.mark.parametrize("isa", ["default", "avx2", None], ids=["baseline-build", "avx2-build", "auto"])
def test_isa_builds_match_reference(isa):
    best = sagan_attn.build_info()["cpu_isa"]
    if isa == "avx2" and best not in ("avx2", "avx512"):
        pytest.skip(f"this CPU runs no AVX2 build (best: {best})")
    picked, errors = run_with_isa(isa)
    assert picked == (best if isa is None else isa)
    # float32 accumulation over ~100-term sums of unit inputs: 1e-5 relative is ~100 ulp of
    # headroom; float64 must be exact to rounding.
    assert errors["torch.float32"] < 1e-5, errors
    assert errors["torch.float64"] < 1e-12, errors
