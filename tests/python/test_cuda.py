"""What only CUDA has, for torch.ops.sagan.self_attn: both kernel families (tensor-core and SIMT) on
shapes chosen for the CUDA tiles (forward, all five gradients, o and lse against the float64 oracle),
strided inputs that rule out vector loads, large logits, B = 300, the deterministic backward, bf16
opcheck (tensor cores), CUDA graphs, memory growth, autocast across devices. Skipped where no CUDA
device is present.

The device-independent matrix (test_op, test_errors, test_torch_integration, test_compile,
test_autocast, test_module, test_nonfinite_tiles) runs on CUDA too, through the `device` fixture; what
it covers is not repeated here (float32 opcheck and self_attn_fwd opcheck, torch.compile against
eager, the module on CUDA against the CPU).

Tolerances are those of op_testing (see its docstring): float64 1e-10 and float32 2e-5 relative to the
tensor's scale, bf16/fp16 the style rule (at most 2x the error of the reference run in the same dtype
on the same device, plus one eps of the result's scale).
"""
from __future__ import annotations

import math

import pytest
import torch

import sagan_attn
from sagan_attn import reference

from op_testing import (
    DTYPE_IDS,
    DTYPES,
    OP,
    RTOL,
    Inputs,
    assert_identical,
    assert_rel_max_close,
    assert_style_rule,
    check_against_oracle,
    deterministic,
    make_inputs,
    random_grad_y,
    run_with_grads,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def cuda_inputs(*args, **kwargs) -> Inputs:
    return make_inputs(*args, device="cuda", **kwargs)


@pytest.fixture(params=["auto", "simt"])
def kernels(request, monkeypatch):
    """Runs a test with the default kernel choice (tensor cores for bf16/fp16) and with the SIMT kernels
    forced, so both families are checked on the same inputs."""
    if request.param == "simt":
        monkeypatch.setenv("SAGAN_ATTN_CUDA_KERNELS", "simt")
    else:
        monkeypatch.delenv("SAGAN_ATTN_CUDA_KERNELS", raising=False)
    return request.param


def test_build_has_cuda():
    assert sagan_attn.build_info()["cuda"] in ("true", True), (
        "a CUDA device is present but sagan-attn was built without CUDA kernels: rebuild against a CUDA torch"
    )


# (id, B, Cqk, Cv, Nq, Nk, with_x, scale). Tiles are 64 x 64 with value chunks of 64 and Cqk padded to
# 16/32/64/128 on tensor cores: the sizes hit ragged tiles, every Cqk padding, Cqk past the tensor-core
# limit (SIMT fallback), odd N (element loads instead of 16-byte cp.async) and large Cv.
SHAPE_CASES = [
    ("sagan_Cqk8_N64", 2, 8, 64, 64, 64, True, 1.0),
    ("N97prime", 2, 8, 16, 97, 97, True, 1.0),
    ("Cqk1_Cv1_odd", 3, 1, 1, 129, 131, True, 2.0),
    ("Cqk10_pooled", 2, 10, 80, 256, 64, True, 1.0),
    ("Cqk12_Nk300>Nq65", 2, 12, 24, 65, 300, False, 0.125),
    ("Cqk20_Cv512", 1, 20, 512, 70, 130, False, 1 / math.sqrt(20)),
    ("Cqk24_Cv130", 2, 24, 130, 200, 136, True, 0.5),
    ("Cqk33_Cv1030", 1, 33, 1030, 72, 40, True, 0.3),
    ("Cqk64_N256", 2, 64, 64, 256, 256, True, 0.125),
    ("Cqk128_Cv256", 1, 128, 256, 160, 96, True, 1 / math.sqrt(128)),
    ("Cqk130_simt_fallback", 1, 130, 16, 50, 40, True, 0.1),
    ("Nq1", 2, 3, 5, 1, 200, True, 1.0),
    ("Nk1", 2, 10, 7, 200, 1, True, 1.0),
    ("all_sizes_1", 1, 1, 1, 1, 1, True, 1.0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "B,Cqk,Cv,Nq,Nk,with_x,scale", [c[1:] for c in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES]
)
def test_forward_and_grads_match_reference(B, Cqk, Cv, Nq, Nk, with_x, scale, dtype, kernels):
    inputs = cuda_inputs(B, Cqk, Cv, Nq, Nk, dtype, with_x=with_x, seed=B * 1000 + Nq)
    check_against_oracle(inputs, scale, dtype, grad_y=random_grad_y(inputs, dtype), what=f"{kernels}: ")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_lse_and_o_match_reference(dtype, kernels):
    inputs = cuda_inputs(2, 12, 40, 150, 90, dtype, seed=5)
    y, o, lse = torch.ops.sagan.self_attn_fwd(inputs.f, inputs.g, inputs.h, inputs.x, inputs.gamma, 0.5)
    f, g = inputs.f.double(), inputs.g.double()
    want_lse = torch.logsumexp(0.5 * torch.einsum("bci,bcj->bij", f, g), dim=-1)
    assert lse.dtype == torch.float64 and lse.shape == (2, 150)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (lse - want_lse).abs().max().item() <= tol * max(1.0, want_lse.abs().max().item())
    one = torch.ones((), dtype=dtype, device="cuda")
    oracle_o = reference.self_attn(f, g, inputs.h.double(), None, one.double(), 0.5)
    if dtype in (torch.bfloat16, torch.float16):
        low_o = reference.self_attn(inputs.f, inputs.g, inputs.h, None, one, 0.5)
        assert_style_rule(o, low_o, oracle_o, dtype, "o")
    else:
        assert_rel_max_close(o, oracle_o, RTOL[dtype], "o")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_strided_inputs(dtype, kernels):
    """Channel slices of one projection (batch stride 3 C N), a transposed-memory input (N stride != 1,
    copied by the glue), and an odd pointer offset that rules out 16-byte loads."""
    B, C, N = 2, 64, 99
    fgh = torch.randn(B, 3 * C, N + 1, device="cuda", dtype=dtype)
    f, g, h = fgh[:, :8, 1:], fgh[:, 8:16, 1:], fgh[:, 16:16 + C, 1:]
    x = torch.randn(B, N, C, device="cuda", dtype=dtype).transpose(1, 2)
    gamma = torch.tensor(0.7, device="cuda", dtype=dtype)
    inputs = Inputs(f, g, h, x, gamma)
    check_against_oracle(inputs, 1.0, dtype, grad_y=random_grad_y(inputs, dtype))


def test_large_batch():
    inputs = cuda_inputs(300, 4, 8, 20, 24, torch.bfloat16, seed=9)
    check_against_oracle(inputs, 1.0, torch.bfloat16, grad_y=random_grad_y(inputs, torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_large_logits_and_nonfinite(dtype, kernels):
    inputs = cuda_inputs(1, 8, 16, 100, 70, dtype, seed=2, magnitude=12.0)  # logits ~ 1e3
    check_against_oracle(inputs, 1.0, dtype, grad_y=random_grad_y(inputs, dtype))
    f = inputs.f.clone()
    f[0, 0, 3] = float("nan")
    y = OP(f, inputs.g, inputs.h, inputs.x, inputs.gamma, 1.0)
    want = reference.self_attn(f.double(), inputs.g.double(), inputs.h.double(), inputs.x.double(),
                               inputs.gamma.double(), 1.0)
    assert torch.equal(torch.isnan(y), torch.isnan(want))


def test_deterministic_backward_bit_identical():
    inputs = cuda_inputs(2, 16, 128, 300, 260, torch.bfloat16, seed=4)
    grad_y = random_grad_y(inputs, torch.bfloat16)
    with deterministic("cuda"):
        runs = [run_with_grads(OP, inputs, 1.0, grad_y) for _ in range(3)]
    for k, other in enumerate(runs[1:]):
        assert_identical(runs[0], other, f"deterministic run {k + 2} vs 1")
    # The deterministic df kernel is as accurate as the default (atomic) one.
    oracle = run_with_grads(reference.self_attn, inputs, 1.0, grad_y, dtype=torch.float64)
    low = run_with_grads(reference.self_attn, inputs, 1.0, grad_y)
    assert_style_rule(runs[0][1], low[1], oracle[1], torch.bfloat16, "grad_f (deterministic)")


def test_opcheck_bf16_tensor_cores():
    """bf16 takes the tensor-core kernels on CUDA (float32 and float64 opcheck run on every device in
    test_torch_integration.py)."""
    inputs = cuda_inputs(2, 8, 16, 70, 50, torch.bfloat16, requires_grad=True, seed=1)
    torch.library.opcheck(OP, (*inputs.as_list(), 1.0))


def test_cuda_graph_capture_and_replay():
    inputs = cuda_inputs(2, 8, 64, 130, 100, torch.bfloat16, seed=6)
    static = [t.clone() for t in inputs.as_list()]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up outside the graph
        for _ in range(2):
            OP(*static, 1.0)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = OP(*static, 1.0)
    fresh = cuda_inputs(2, 8, 64, 130, 100, torch.bfloat16, seed=7)
    for dst, src in zip(static, fresh.as_list()):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, OP(*fresh.as_list(), 1.0))


def test_peak_memory_linear_in_n():
    """Forward+backward at B=8, C=256 (Cqk=32, Cv=256): the memory beyond the inputs grows like N, not
    N^2. A materialised map at 128x128 features would be 8 x 16384^2 x 2 bytes = 4 GiB."""
    extra = {}
    for side in (64, 128):
        N = side * side
        inputs = cuda_inputs(8, 32, 256, N, N, torch.bfloat16, requires_grad=True, seed=8)
        grad_y = random_grad_y(inputs, torch.bfloat16)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = OP(*inputs.as_list(), 1.0)
        y.backward(grad_y)
        torch.cuda.synchronize()
        extra[N] = torch.cuda.max_memory_allocated() - base
        del y, inputs, grad_y
    ratio = extra[16384] / extra[4096]
    assert ratio < 4 * 1.25, f"peak extra memory grew {ratio:.2f}x for 4x the positions: {extra}"
    assert extra[16384] < 2**30, f"{extra[16384] / 2**20:.0f} MiB at 128x128"


def test_cuda_autocast_leaves_cpu_tensors_alone():
    """CUDA autocast does not touch CPU tensors (nor CPU autocast CUDA ones), as for matmul."""
    inputs = make_inputs(1, 4, 8, 30, 20, torch.float32, seed=71)
    with torch.autocast("cuda", dtype=torch.float16):
        y = OP(*inputs, 1.0)
    assert y.dtype == torch.float32 and torch.equal(y, OP(*inputs, 1.0))
    cuda = cuda_inputs(1, 4, 8, 30, 20, torch.float32, seed=71)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = OP(*cuda, 1.0)
    assert y.dtype == torch.float32 and torch.equal(y, OP(*cuda, 1.0))
