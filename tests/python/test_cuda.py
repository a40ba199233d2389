"""CUDA kernels of torch.ops.sagan.self_attn: forward and all five gradients against the float64 oracle
on awkward shapes, both kernel families (tensor-core and SIMT), opcheck, torch.compile, CUDA graphs,
deterministic backward, memory growth. Skipped where no CUDA device is present.

Tolerances are those of test_op.py (see its docstring): float64 1e-10 and float32 2e-5 relative to the
tensor's scale, bf16/fp16 the style rule (at most 2x the error of the reference run in the same dtype
on the same device, plus one eps of the result's scale).
"""
from __future__ import annotations

import math

import pytest
import torch

import sagan_attn
from sagan_attn import reference

from conftest import (
    OP,
    Inputs,
    assert_rel_max_close,
    assert_style_rule,
    make_inputs,
    random_grad,
    run_with_grads,
)
from test_op import check_against_oracle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f64", "f32", "bf16", "f16"]


def cuda_inputs(*args, **kwargs) -> Inputs:
    cpu = make_inputs(*args, **kwargs)
    return Inputs(*[None if t is None else t.cuda() for t in cpu])


def cuda_grad(inputs: Inputs, dtype, seed=1234):
    B, Cv, Nq = inputs.h.shape[0], inputs.h.shape[1], inputs.f.shape[2]
    return random_grad((B, Cv, Nq), dtype, seed).cuda()


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
    check_against_oracle(inputs, scale, dtype, grad_y=cuda_grad(inputs, dtype), what=f"{kernels}: ")


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
        assert_rel_max_close(o, oracle_o, {torch.float64: 1e-10, torch.float32: 2e-5}[dtype], "o")


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
    check_against_oracle(inputs, 1.0, dtype, grad_y=cuda_grad(inputs, dtype))


def test_large_batch():
    inputs = cuda_inputs(300, 4, 8, 20, 24, torch.bfloat16, seed=9)
    check_against_oracle(inputs, 1.0, torch.bfloat16, grad_y=cuda_grad(inputs, torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_large_logits_and_nonfinite(dtype, kernels):
    inputs = cuda_inputs(1, 8, 16, 100, 70, dtype, seed=2, magnitude=12.0)  # logits ~ 1e3
    check_against_oracle(inputs, 1.0, dtype, grad_y=cuda_grad(inputs, dtype))
    f = inputs.f.clone()
    f[0, 0, 3] = float("nan")
    y = OP(f, inputs.g, inputs.h, inputs.x, inputs.gamma, 1.0)
    want = reference.self_attn(f.double(), inputs.g.double(), inputs.h.double(), inputs.x.double(),
                               inputs.gamma.double(), 1.0)
    assert torch.equal(torch.isnan(y), torch.isnan(want))


def test_deterministic_backward_bit_identical():
    inputs = cuda_inputs(2, 16, 128, 300, 260, torch.bfloat16, seed=4)
    grad_y = cuda_grad(inputs, torch.bfloat16)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [run_with_grads(OP, inputs, 1.0, grad_y) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(prev)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a is None or torch.equal(a, b)
    # The deterministic df kernel is as accurate as the default (atomic) one.
    oracle = run_with_grads(reference.self_attn, inputs, 1.0, grad_y, dtype=torch.float64)
    low = run_with_grads(reference.self_attn, inputs, 1.0, grad_y)
    assert_style_rule(runs[0][1], low[1], oracle[1], torch.bfloat16, "grad_f (deterministic)")


def test_opcheck_cuda():
    for dtype in (torch.float32, torch.bfloat16):
        inputs = cuda_inputs(2, 8, 16, 70, 50, dtype, requires_grad=True, seed=1)
        torch.library.opcheck(OP, (*inputs.as_list(), 1.0))
    inputs = cuda_inputs(2, 8, 16, 70, 50, torch.float32, seed=1)
    torch.library.opcheck(torch.ops.sagan.self_attn_fwd.default, (*inputs.as_list(), 0.5))


def test_compile_matches_eager():
    inputs = cuda_inputs(2, 8, 64, 256, 64, torch.bfloat16, requires_grad=True, seed=3)

    def block(f, g, h, x, gamma):
        return OP(f, g, h, x, gamma, 1.0).float().square().sum()

    compiled = torch.compile(block, fullgraph=True)
    eager_grads = torch.autograd.grad(block(*inputs.as_list()), inputs.as_list())
    comp_grads = torch.autograd.grad(compiled(*inputs.as_list()), inputs.as_list())
    for a, b in zip(eager_grads, comp_grads):
        assert torch.equal(a, b)


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
        grad_y = cuda_grad(inputs, torch.bfloat16)
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


def test_module_on_cuda_matches_cpu():
    torch.manual_seed(0)
    m = sagan_attn.SelfAttention2d(32)
    with torch.no_grad():
        m.gamma.fill_(0.5)
    x = torch.randn(2, 32, 9, 11)
    want = m(x)
    got = m.cuda()(x.cuda())
    assert_rel_max_close(got.cpu(), want, 2e-5, "y")
