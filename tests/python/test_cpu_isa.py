"""The CPU kernels exist in three builds on x86-64 (baseline, AVX2+FMA and AVX-512, the best the CPU has
picked at run time); each one this machine can run must agree with the reference, and give bitwise
the float32 results, rounded once, for bfloat16 inputs. A lower build is forced
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
# bfloat16 (read and written as it is, computed in float32): bitwise the float32 kernels' results on the
# widened inputs, rounded once; the number of elements that differ.
bf = torch.bfloat16
f, g, h, x, gamma, dy = (t.to(bf) for t in (f, g, h, x, gamma, dy))
y, o, lse = torch.ops.sagan.self_attn_fwd(f, g, h, x, gamma, 0.3)
y32, o32, lse32 = torch.ops.sagan.self_attn_fwd(f.float(), g.float(), h.float(), x.float(), gamma.float(), 0.3)
got = [y, o, *torch.ops.sagan.self_attn_backward(dy, f, g, h, o, lse, gamma, 0.3, [True] * 3)]
want = [y32, o32, *torch.ops.sagan.self_attn_backward(dy.float(), f.float(), g.float(), h.float(), o.float(),
                                                      lse, gamma.float(), 0.3, [True] * 3)]
print("bf16-mismatches", sum(int((a.view(torch.int16) != b.to(bf).view(torch.int16)).sum())
                             for a, b in zip(got, want)) + int((lse != lse32).sum()))
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
    assert errors["bf16-mismatches"] == 0, errors
