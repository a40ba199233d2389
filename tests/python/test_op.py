"""Numerics of torch.ops.sagan.self_attn on every available device: forward and the five gradients
against the float64 oracle (sagan_attn.reference), gradcheck / gradgradcheck, strided inputs, extreme
and non-finite inputs, determinism.

Tolerances: those of op_testing (its docstring says why), on every device: max abs error <= rtol * max
|reference| per tensor with rtol 1e-10 in float64 and 2e-5 in float32; bf16/fp16 the style rule (at
most 2x the error of the reference run in that dtype, plus one eps of the result's scale).
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
    INPUT_NAMES,
    LOW_PRECISION,
    OP,
    RESULT_NAMES,
    RTOL,
    Inputs,
    assert_identical,
    assert_rel_max_close,
    assert_same_nonfinite,
    assert_style_rule,
    check_against_oracle,
    deterministic,
    leaves,
    make_inputs,
    random_grad,
    run_with_grads,
)


# --------------------------------------------------------------------------------------------------
# Forward + all gradients over awkward shapes, every dtype.
# (id, B, Cqk, Cv, Nq, Nk, with_x, gamma_shape, scale). Tiles are 64 queries x 128 keys and register
# blocks 6 x 16 (x 8 in float64): the sizes below hit ragged tiles and ragged register blocks. The CPU
# forward's work items hold groups of 4, 2 or 1 query tiles (forward_query_group in
# kernels/cpu/self_attn_cpu_traits.h): the fwd_groups cases have each size with a ragged last group
# (bfloat16 takes up to 8: test_cpu_bfloat16_is_float32_rounded_once's groups8 case).
# The CPU backward splits each image's key tiles (192 keys) into min(ceil(32 / B), tiles) key groups
# whose sizes differ by at most one: bwd_groups has 7 key tiles in 2 groups, 3 + 4.
SHAPE_CASES = [
    ("N97prime_B2", 2, 8, 16, 97, 97, True, (), 1.0),
    ("N1025prime_B1_nox", 1, 3, 8, 1025, 1025, False, (1,), 1.0),
    ("pooled_Nk=Nq/4", 2, 10, 32, 256, 64, True, (1,), 1.0),
    ("pooled_Nq389_Nk97_nox", 1, 12, 20, 389, 97, False, (), 0.5),
    ("Nk300>Nq65", 2, 12, 24, 65, 300, True, (), 0.125),
    ("Cqk1_Cv1_B3", 3, 1, 1, 129, 131, True, (1,), 2.0),
    ("Cqk20_Cv512_nox", 1, 20, 512, 70, 130, False, (), 1 / math.sqrt(20)),
    ("Cqk3_Nq1", 2, 3, 5, 1, 200, True, (), 1.0),
    ("Cqk10_Nk1", 2, 10, 7, 200, 1, True, (1,), 1.0),
    ("tile_multiples_Nq128_Nk256", 2, 8, 16, 128, 256, False, (), -0.5),
    ("all_sizes_1", 1, 1, 1, 1, 1, True, (), 1.0),
    ("B5_Cqk12_Cv100_Nk37", 5, 12, 100, 150, 37, True, (), 0.3),
    ("fwd_groups4_Nq4155", 1, 5, 24, 4155, 97, True, (), 1.0),  # 65 query tiles: 16 groups of 4, then 1
    ("fwd_groups2_Nq2055_nox", 1, 3, 16, 2055, 130, False, (1,), 0.5),  # 33 tiles: groups of 2, then 1
    ("fwd_groups4_B16_Nq100", 16, 4, 8, 100, 50, True, (), 1.0),  # 2 tiles per image, in groups of 4
    ("bwd_groups_B16_Nk1201", 16, 4, 8, 30, 1201, True, (), 1.0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "B,Cqk,Cv,Nq,Nk,with_x,gamma_shape,scale", [c[1:] for c in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES]
)
def test_forward_and_grads_match_reference(B, Cqk, Cv, Nq, Nk, with_x, gamma_shape, scale, dtype, device):
    inputs = make_inputs(B, Cqk, Cv, Nq, Nk, dtype, with_x=with_x, gamma_shape=gamma_shape, seed=B * 1000 + Nq,
                         device=device)
    got, _ = check_against_oracle(inputs, scale, dtype)
    assert got[5].shape == inputs.gamma.shape  # grad of gamma keeps gamma's shape, () or (1,)


SCALES = [0.0, 0.125, 1.0, 3.0, -1.0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("scale", SCALES, ids=[f"scale{s:g}" for s in SCALES])
def test_scale_values(scale, dtype, device):
    inputs = make_inputs(2, 8, 16, 150, 140, dtype, seed=7, device=device)
    got, oracle = check_against_oracle(inputs, scale, dtype)
    if scale == 0.0:
        # Uniform attention: the logits, hence f and g, have no influence at all.
        assert torch.count_nonzero(got[1]) == 0 and torch.count_nonzero(got[2]) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("gamma_shape", [(), (1,)], ids=["gamma_shape()", "gamma_shape(1,)"])
@pytest.mark.parametrize("with_x", [True, False], ids=["x", "nox"])
def test_gamma_zero(with_x, gamma_shape, dtype, device):
    """SAGAN starts from gamma = 0: y is exactly x (or 0), f, g, h get exactly zero gradient, and
    gamma still gets the right, nonzero gradient sum(dy * o)."""
    inputs = make_inputs(2, 8, 16, 97, 150, dtype, with_x=with_x, gamma=0.0, gamma_shape=gamma_shape, seed=3,
                         device=device)
    got, oracle = check_against_oracle(inputs, 1.0, dtype)
    y, gf, gg, gh, gx, ggamma = got
    if with_x:
        assert torch.equal(y, inputs.x)
    else:
        assert torch.count_nonzero(y) == 0
    for name, t in (("f", gf), ("g", gg), ("h", gh)):
        assert torch.count_nonzero(t) == 0, f"grad_{name} must vanish at gamma = 0"
    assert ggamma.shape == inputs.gamma.shape
    assert abs(oracle[5].item()) > 1.0  # the check above is not vacuous: dgamma is far from 0


def test_functional_wrapper_matches_op(device):
    inputs = make_inputs(2, 8, 16, 97, 50, torch.float32, seed=11, device=device)
    want = OP(inputs.f, inputs.g, inputs.h, inputs.x, torch.tensor(0.7, device=device), 1.0)
    got = sagan_attn.self_attn(inputs.f, inputs.g, inputs.h, inputs.x, gamma=0.7)  # float gamma, default scale
    assert torch.equal(got, want)
    got_s = sagan_attn.self_attn(inputs.f, inputs.g, inputs.h, gamma=inputs.gamma, scale=0.5)
    assert_rel_max_close(got_s, reference.self_attn(inputs.f, inputs.g, inputs.h, None, inputs.gamma, 0.5), 2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
def test_internal_fwd_outputs(dtype, device):
    """self_attn_fwd's o (attention output before gamma) and lse (row log-sum-exp of the scaled logits,
    float64 for every input dtype), which the fused backward relies on."""
    inputs = make_inputs(2, 10, 24, 201, 259, dtype, seed=5, device=device)
    scale = 0.4
    y, o, lse = torch.ops.sagan.self_attn_fwd(*inputs, scale)
    assert y.dtype == dtype and o.dtype == dtype and lse.dtype == torch.float64
    assert lse.shape == (2, 201) and o.shape == (2, 24, 201)
    f64 = [t.double() for t in inputs]
    s = torch.bmm(f64[0].transpose(1, 2), f64[1]) * scale
    one64 = torch.tensor(1.0, dtype=torch.float64, device=device)
    o_ref = reference.self_attn(f64[0], f64[1], f64[2], None, one64, scale)
    y_ref = reference.self_attn(*f64, scale)
    lse_ref = torch.logsumexp(s, -1)
    if dtype in LOW_PRECISION and device != "cpu":
        # The CUDA tensor-core kernels also round the probabilities to bf16 before the value product
        # (the CPU computes in float32 and rounds once): o and y get the style rule against the
        # reference run in bf16; lse as on the CPU.
        one = torch.ones((), dtype=dtype, device=device)
        assert_style_rule(o, reference.self_attn(inputs.f, inputs.g, inputs.h, None, one, scale), o_ref, dtype, "o")
        assert_style_rule(y, reference.self_attn(*inputs, scale), y_ref, dtype, "y")
        assert_rel_max_close(lse, lse_ref, 2e-5, "lse")
        return
    if dtype == torch.bfloat16:
        # o and y are rounded to bf16 once (half an ulp, eps/2 relative); lse is float64 but comes
        # from float32 scores and sums: 2e-5 is ~100 float32 ulp, as for float32 inputs below.
        tol_o, tol_lse = torch.finfo(dtype).eps, 2e-5
    else:
        tol_o = tol_lse = RTOL[dtype]
    assert_rel_max_close(o, o_ref, tol_o, "o")
    assert_rel_max_close(y, y_ref, tol_o, "y")
    assert_rel_max_close(lse, lse_ref, tol_lse, "lse")


def _bits(t):
    """t's bfloat16 bits as int16, every NaN the same (NaN payloads carry no meaning)."""
    return torch.where(t.isnan(), torch.full_like(t, float("nan")), t).view(torch.int16)


@pytest.mark.parametrize("case", ["odd", "strided", "nonfinite", "nox", "ties", "groups8"])
def test_cpu_bfloat16_is_float32_rounded_once(case):
    """The CPU forward and backward read and write bfloat16 as it is (no float32 copies) and compute in
    float32, widening each element as they read it and rounding each result once as they write it: the
    results must be bitwise those of the float32 kernels on the widened inputs, rounded to bfloat16 by
    torch. Odd sizes (ragged query and key tiles, ragged register blocks), channel-strided views, a NaN
    key and an inf query at tile boundaries, no residual, and results that are exact ties between two
    bfloat16 values (one key, so o = h and dh = the sum of dy: y and dh are 1 + k 2^-7 + 2^-8, rounded
    to even); every gradient mask of the backward. groups8: the bfloat16 forward's query groups of 8
    tiles (float32 takes 4; forward_max_query_group in kernels/cpu/self_attn_cpu_traits.h), 10 tiles per
    image in groups of 8 + 2, the last tile ragged, and a ragged last key tile, whose h lines the forward
    prefetches while it works on the tile before."""
    bf = torch.bfloat16
    B, Cqk, Cv, Nq, Nk = {"strided": (3, 8, 64, 65, 257), "groups8": (16, 3, 20, 600, 300)}.get(case, (2, 5, 37, 131, 200))
    gen = torch.Generator().manual_seed(11)
    rnd = lambda *size: torch.randn(*size, generator=gen).to(bf)  # noqa: E731
    f, g, h, x = rnd(B, Cqk, Nq), rnd(B, Cqk, Nk), rnd(B, Cv, Nk), rnd(B, Cv, Nq)
    if case == "strided":
        f, h = rnd(B, Cqk + 3, Nq)[:, 2:Cqk + 2], rnd(B, 2 * Cv, Nk)[:, ::2]
    if case == "nonfinite":
        g[0, 1, 127], g[1, 0, 128], f[1, 2, 64] = float("nan"), float("-inf"), float("inf")
    if case == "nox":
        x = None
    if case == "ties":
        B, Cqk, Cv, Nq, Nk = 1, 1, 128, 2, 1
        f, g = rnd(B, Cqk, Nq), rnd(B, Cqk, Nk)
        k = (1 + torch.arange(Cv) / 128) * (1 - 2 * (torch.arange(Cv) % 2))  # exact in bfloat16
        h = k.view(1, Cv, 1).to(bf)
        x = (torch.sign(k) * 2.0**-8).view(1, Cv, 1).expand(B, Cv, Nq).to(bf)
    gamma, dy, scale = torch.tensor([0.7]).to(bf), rnd(B, Cv, Nq), 0.3
    if case == "ties":
        gamma, dy = torch.ones(1, dtype=bf), torch.cat([h, x[:, :, :1]], 2)
    wide = lambda t: None if t is None else t.float()  # noqa: E731
    y, o, lse = torch.ops.sagan.self_attn_fwd(f, g, h, x, gamma, scale)
    y32, o32, lse32 = torch.ops.sagan.self_attn_fwd(wide(f), wide(g), wide(h), wide(x), wide(gamma), scale)
    assert y.dtype == o.dtype == bf
    if case == "ties":  # y's and dh's float32 values lie halfway between two bfloat16 values
        halfway = lambda t: int((t.view(torch.int32) & 0xFFFF == 0x8000).sum())  # noqa: E731
        assert halfway(y32) == B * Cv * Nq
        assert halfway(torch.ops.sagan.self_attn_backward(wide(dy), wide(f), wide(g), wide(h), o32, lse32,
                                                          wide(gamma), scale, [False, False, True])[2]) == Cv
    assert torch.equal(_bits(y), _bits(y32.to(bf))) and torch.equal(_bits(o), _bits(o32.to(bf)))
    assert torch.equal(lse.isnan(), lse32.isnan()) and torch.equal(lse.nan_to_num(), lse32.nan_to_num())
    if case == "nonfinite":
        assert o.isnan().any() and o.isfinite().any()  # the NaN reached some queries, not all
    for mask in ([True, True, True], [True, False, False], [False, True, False], [False, False, True]):
        got = torch.ops.sagan.self_attn_backward(dy, f, g, h, o, lse, gamma, scale, mask)
        want = torch.ops.sagan.self_attn_backward(wide(dy), wide(f), wide(g), wide(h), wide(o), lse,
                                                  wide(gamma), scale, mask)
        for name, a, b in zip(("grad_f", "grad_g", "grad_h"), got[:3], want[:3]):
            assert (a is None) == (b is None), name
            if a is not None:
                assert a.dtype == bf, name
                assert torch.equal(_bits(a), _bits(b.to(bf))), f"{name}, mask {mask}"
        assert got[3].dtype == bf and torch.equal(_bits(got[3]), _bits(want[3].to(bf))), "grad_gamma"


# --------------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck in float64 (finite differences against the op's analytic gradients).
# gradcheck also runs the backward twice and wants the same result: bitwise on the CPU; on CUDA the
# backward sums grad_f with float64 atomics (outside deterministic mode), whose order changes the last
# bits of O(1) entries, so 1e-12 there: ~1e4 eps, and 1e7 below gradcheck's own atol of 1e-5.


def nondet_tol(device):
    return 0.0 if device == "cpu" else 1e-12


GC_CASES = [
    ("x_gamma()", True, ()),
    ("nox_gamma(1,)", False, (1,)),
]


@pytest.mark.parametrize("with_x,gamma_shape", [c[1:] for c in GC_CASES], ids=[c[0] for c in GC_CASES])
def test_gradcheck_small(with_x, gamma_shape, device):
    inputs = make_inputs(2, 3, 4, 5, 7, torch.float64, with_x=with_x, gamma_shape=gamma_shape, requires_grad=True,
                         device=device)
    assert torch.autograd.gradcheck(lambda *a: OP(*a, 0.7), tuple(inputs), nondet_tol=nondet_tol(device))


@pytest.mark.parametrize("with_x", [True, False], ids=["x", "nox"])
def test_gradcheck_across_tiles_fast_mode(with_x, device):
    # Nq = 70 > 64 and Nk = 130 > 128: two ragged query tiles and two key tiles (one of 2 keys).
    # fast_mode projects the Jacobian on random vectors, so this stays cheap at ~2800 inputs.
    inputs = make_inputs(2, 3, 4, 70, 130, torch.float64, with_x=with_x, requires_grad=True, seed=2, device=device)
    assert torch.autograd.gradcheck(lambda *a: OP(*a, 0.9), tuple(inputs), fast_mode=True,
                                    nondet_tol=nondet_tol(device))


@pytest.mark.parametrize("with_x,gamma_shape", [c[1:] for c in GC_CASES], ids=[c[0] for c in GC_CASES])
def test_gradgradcheck_small(with_x, gamma_shape, device):
    inputs = make_inputs(2, 3, 4, 5, 6, torch.float64, with_x=with_x, gamma_shape=gamma_shape, requires_grad=True,
                         device=device)
    assert torch.autograd.gradgradcheck(lambda *a: OP(*a, 0.7), tuple(inputs), nondet_tol=nondet_tol(device))


# --------------------------------------------------------------------------------------------------
# Strided inputs give exactly the contiguous result: the glue only copies when the N stride is not 1
# and otherwise passes strides through, and the arithmetic order does not depend on the layout, so
# equality is bitwise (any difference means a stride was misread). On CUDA that needs the deterministic
# backward (op_testing.deterministic): the default one sums grad_f with atomics.


def _grads_and_y(inputs, scale=1.0, grad_y=None, seed=99):
    ins = leaves(inputs)
    y = OP(*ins, scale)
    if grad_y is None:
        grad_y = random_grad(y.shape, y.dtype, seed=seed, device=y.device)
    y.backward(grad_y)
    return [y.detach()] + [t.grad if t is not None else None for t in ins]


def _grads_of_views(tensors, scale=1.0, seed=99):
    """Like _grads_and_y, but passes the tensors to the op as they are: views of a leaf keep their
    strides (leaves() would clone them into contiguous tensors)."""
    y = OP(*tensors, scale)
    grad_y = random_grad(y.shape, y.dtype, seed=seed, device=y.device)
    present = [t for t in tensors if t is not None]
    grads = iter(torch.autograd.grad(y, present, grad_y))
    return [y.detach()] + [next(grads) if t is not None else None for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_channel_slices_of_one_projection(dtype, device):
    """f, g, h as channel slices of one fused 1x1-conv output (B, 2*Cqk + Cv, N): N-contiguous, with
    channel and batch strides that differ from the contiguous ones."""
    B, Cqk, Cv, N = 2, 8, 24, 150
    gen = torch.Generator().manual_seed(4)
    fused = torch.randn(B, 2 * Cqk + Cv, N, generator=gen, dtype=torch.float64).to(dtype).to(device)
    fused.requires_grad_(True)
    f, g, h = fused[:, :Cqk], fused[:, Cqk : 2 * Cqk], fused[:, 2 * Cqk :]
    x = torch.randn(B, Cv, N, generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_(True)
    gamma = torch.tensor(0.6, dtype=dtype, device=device, requires_grad=True)
    assert not f.is_contiguous() and f.stride(2) == 1 and f.stride(0) == (2 * Cqk + Cv) * N
    with deterministic(device):
        strided = _grads_of_views((f, g, h, x, gamma))
        contiguous = _grads_and_y(tuple(t.detach().contiguous() for t in (f, g, h, x, gamma)))
    assert_identical(strided, contiguous, "channel slices")
    check_against_oracle(Inputs(f, g, h, x, gamma), 1.0, dtype, what="channel slices: ")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_transposed_memory_inputs(dtype, device):
    """Tensors stored (B, N, C) and viewed as (B, C, N): last-dim stride != 1 for f, g, h, x."""
    B, Cqk, Cv, Nq, Nk = 2, 6, 10, 97, 131
    gen = torch.Generator().manual_seed(8)

    def t(C, N):
        return torch.randn(B, N, C, generator=gen, dtype=torch.float64).to(dtype).to(device).transpose(1, 2)

    f, g, h, x = t(Cqk, Nq), t(Cqk, Nk), t(Cv, Nk), t(Cv, Nq)
    gamma = torch.tensor([1.3], dtype=dtype, device=device)
    assert f.stride(2) != 1 and h.stride(2) != 1 and x.stride(2) != 1
    with deterministic(device):
        strided = _grads_and_y((f, g, h, x, gamma), scale=0.5)
        contiguous = _grads_and_y((f.contiguous(), g.contiguous(), h.contiguous(), x.contiguous(), gamma), scale=0.5)
    assert_identical(strided, contiguous, "transposed memory")


def test_batch_and_channel_broadcast_inputs(device):
    """Expanded inputs (stride 0): keys/values shared over the batch, f broadcast over channels."""
    B, Cqk, Cv, Nq, Nk = 3, 5, 9, 80, 140
    gen = torch.Generator().manual_seed(9)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(True)

    f = leaf(B, 1, Nq).expand(B, Cqk, Nq)
    g = leaf(1, Cqk, Nk).expand(B, Cqk, Nk)
    h = leaf(1, Cv, Nk).expand(B, Cv, Nk)
    x = leaf(B, Cv, Nq)
    gamma = torch.tensor(0.8, device=device, requires_grad=True)
    assert g.stride(0) == 0 and f.stride(1) == 0
    with deterministic(device):
        strided = _grads_of_views((f, g, h, x, gamma))
        contiguous = _grads_and_y(tuple(t.detach().contiguous() for t in (f, g, h, x, gamma)))
    assert_identical(strided, contiguous, "expanded inputs")


def test_size_one_n_with_odd_stride(device):
    """Nq = 1 and Nk = 1 taken with a step: the N stride is 2, which is irrelevant for one element."""
    gen = torch.Generator().manual_seed(10)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)

    f = rnd(2, 4, 2)[:, :, ::2]
    g = rnd(2, 4, 2)[:, :, 1::2]
    h = rnd(2, 3, 2)[:, :, ::2]
    x = rnd(2, 3, 2)[:, :, ::2]
    gamma = torch.tensor(0.5, dtype=torch.float64, device=device)
    assert f.stride(2) == 2 and f.shape[2] == 1
    with deterministic(device):
        strided = _grads_and_y((f, g, h, x, gamma))
        contiguous = _grads_and_y((f.contiguous(), g.contiguous(), h.contiguous(), x.contiguous(), gamma))
    assert_identical(strided, contiguous, "size-1 N")


@pytest.mark.parametrize("with_x", [True, False], ids=["x", "nox"])
def test_expanded_grad_output_from_sum(with_x, device):
    """y.sum().backward() hands the backward an expanded (all-stride-0) grad_y."""
    inputs = make_inputs(2, 8, 16, 97, 130, torch.float32, with_x=with_x, seed=12, device=device)
    a = leaves(inputs)
    b = leaves(inputs)
    with deterministic(device):
        OP(*a, 1.0).sum().backward()
        yb = OP(*b, 1.0)
        yb.backward(torch.ones_like(yb))
    for name, u, v in zip(INPUT_NAMES, a, b):
        if u is None:
            continue
        assert torch.equal(u.grad, v.grad), f"grad_{name} differs between expanded and materialised grad_y"
    # ... and it is the right gradient.
    ones = torch.ones(2, 16, 97, dtype=torch.float32, device=device)
    oracle = run_with_grads(reference.self_attn, inputs, 1.0, ones, dtype=torch.float64)
    for k, t in enumerate(a):
        if t is not None:
            assert_rel_max_close(t.grad, oracle[k + 1], RTOL[torch.float32], f"grad_{INPUT_NAMES[k]}")


# --------------------------------------------------------------------------------------------------
# Extreme and non-finite inputs.


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_logits(dtype, device):
    """f and g scaled x100 and scale = 1: logits of order 1e5, far beyond exp's range; the online
    softmax must subtract its running maximum and stay finite.

    What is graded, and how:
      * everything must be finite;
      * y in float64: the usual 1e-10;
      * y in float32/bf16/fp16: the style rule against the reference run in that dtype. Even float32
        cannot do better: ulp(1e5) ~ 0.008, so rounding the logits alone moves the weight of a
        runner-up key whose logit is within a few units of the maximum by ~1% (seed 1 has such rows;
        the float32 reference is off by 3.8e-4 relative there, exactly as much as the op);
      * grad of h, x, gamma: float64 1e-10 (observed ~1e-12); lower precisions the style rule with no
        extra allowance: lse is saved in float64 and split into float hi + lo parts, so the
        backward's recomputed p = exp((s - hi) - lo) is as exact as the forward's, whatever |s|;
      * grad of f and g: finite only. Through a saturated softmax they are differences of nearly
        equal terms (p_j (dp_j - sum_k p_k dp_k) with p one-hot up to ~1e-10): relative condition
        number ~|logit| ~ 1e5, so even two float64 evaluations in different orders disagree by up to
        ~1e-4 relative and no oracle here can grade them."""
    inputs = make_inputs(2, 8, 16, 200, 150, dtype, magnitude=100.0, seed=1, device=device)
    grad_y = random_grad((2, 16, 200), dtype, device=device)
    got = run_with_grads(OP, inputs, 1.0, grad_y)
    oracle = run_with_grads(reference.self_attn, inputs, 1.0, grad_y, dtype=torch.float64)
    low = run_with_grads(reference.self_attn, inputs, 1.0, grad_y)
    for t, name in zip(got, RESULT_NAMES):
        assert torch.isfinite(t).all(), f"{name} is not finite"
    f64 = [t.double() for t in inputs]
    max_logit = torch.bmm(f64[0].transpose(1, 2), f64[1]).abs().max().item()
    assert max_logit > 1e4  # the case is what it claims to be
    for k in (0, 3, 4, 5):  # y, grad_h, grad_x, grad_gamma
        name = RESULT_NAMES[k]
        if dtype == torch.float64:
            assert_rel_max_close(got[k], oracle[k], RTOL[dtype], name)
        else:
            assert_style_rule(got[k], low[k], oracle[k], dtype, name)


NONFINITE_CASES = [
    # (id, input name, index, value)
    ("nan_in_f", "f", (0, 1, 5), math.nan),
    ("nan_in_g", "g", (1, 0, 7), math.nan),
    ("nan_in_h", "h", (0, 2, 3), math.nan),
    ("nan_in_x", "x", (1, 0, 4), math.nan),
    ("inf_in_f", "f", (0, 0, 5), math.inf),
    ("neginf_in_g", "g", (1, 2, 3), -math.inf),
    ("inf_in_h", "h", (0, 1, 2), math.inf),
    ("neginf_in_x", "x", (0, 0, 0), -math.inf),
    ("nan_gamma", "gamma", (), math.nan),
    ("inf_gamma", "gamma", (), math.inf),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,index,value", [c[1:] for c in NONFINITE_CASES], ids=[c[0] for c in NONFINITE_CASES])
def test_nonfinite_inputs_propagate_like_reference(name, index, value, dtype, device):
    """A NaN/inf in one input: same NaN/+inf/-inf masks as the float64 reference in y and in all five
    gradients, and the finite entries agree. Inputs are kept small (logits |s| < ~10) so no
    probability underflows to 0, where 0 * inf would be an arithmetic accident, not a semantic one."""
    B, Cqk, Cv, Nq, Nk = 2, 4, 6, 70, 140  # two query tiles, two key tiles
    inputs = make_inputs(B, Cqk, Cv, Nq, Nk, dtype, magnitude=0.5, seed=21, device=device)
    tensors = dict(zip(INPUT_NAMES, [t.clone() for t in inputs]))
    tensors[name][index] = value
    inputs = Inputs(*(tensors[n] for n in INPUT_NAMES))
    grad_y = random_grad((B, Cv, Nq), dtype, device=device)
    got = run_with_grads(OP, inputs, 1.0, grad_y)
    oracle = run_with_grads(reference.self_attn, inputs, 1.0, grad_y, dtype=torch.float64)
    assert not torch.isfinite(got[0]).all(), "the non-finite input did not reach y"
    for k, rname in enumerate(RESULT_NAMES):
        if name == "gamma" and math.isinf(value) and k in (1, 2, 3):
            # gamma = inf, grads of f, g, h: the kernel applies gamma once, after its reductions
            # (inf * sum_i dy_i p_ij = +-inf), the reference first forms inf * dy and then sums
            # +inf and -inf terms (NaN). Both are non-finite everywhere; only that much is required.
            finite = torch.isfinite(oracle[k])
            assert torch.equal(torch.isfinite(got[k]), finite), f"{rname}: non-finite masks differ"
        else:
            finite = assert_same_nonfinite(got[k], oracle[k], rname)
        if finite.any():
            a, e = got[k].double()[finite], oracle[k][finite]
            # Finite entries: float32 is graded against the scale of the finite reference entries.
            assert (a - e).abs().max() <= RTOL[dtype] * e.abs().max(), f"{rname}: finite entries differ"


# --------------------------------------------------------------------------------------------------
# Determinism. CPU: no atomics, work split independent of the thread count, in any mode. CUDA: under
# torch.use_deterministic_algorithms(True) only (op_testing.deterministic); the thread count is the
# CPU's and changes nothing there.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_deterministic_across_calls_and_threads(dtype, device, restore_threads):
    # B = 2, Nq = 300 (5 query tiles), Nk = 700 (6 key tiles, several backward key groups).
    inputs = make_inputs(2, 8, 32, 300, 700, dtype, seed=31, device=device)
    grad_y = random_grad((2, 32, 300), dtype, device=device)
    with deterministic(device):
        torch.set_num_threads(2)
        first = run_with_grads(OP, inputs, 0.7, grad_y)
        second = run_with_grads(OP, inputs, 0.7, grad_y)
        torch.set_num_threads(1)
        single = run_with_grads(OP, inputs, 0.7, grad_y)
    assert_identical(first, second, "two calls")
    assert_identical(first, single, "1 vs 2 threads")
