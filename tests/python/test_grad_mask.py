"""Only the gradients autograd needs are computed: sagan::self_attn_backward takes an output_mask
(grad_f, grad_g, grad_h), the autograd passes which inputs need a gradient, and a gradient not asked
for is returned as None without being computed (the backward of h alone skips the logits' gradient,
dp = dy^T h, and the df and dg products). Every computed gradient is bitwise the one of the full
backward: the mask removes work, never changes the arithmetic of what remains."""
from __future__ import annotations

import itertools

import pytest
import torch

import sagan_attn  # noqa: F401

from conftest import make_inputs, random_grad

BWD = torch.ops.sagan.self_attn_backward
MASKS = list(itertools.product([False, True], repeat=3))


def forward(inputs, scale=0.8):
    f, g, h, x, gamma = inputs
    _, o, lse = torch.ops.sagan.self_attn_fwd(f, g, h, x, gamma, scale)
    return o, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("mask", MASKS, ids=["".join("1" if m else "0" for m in mk) for mk in MASKS])
def test_masked_backward_op_equals_full_bitwise(mask, dtype):
    inputs = make_inputs(2, 5, 37, 131, 150, dtype, seed=7)  # ragged query and key tiles
    o, lse = forward(inputs)
    dy = random_grad((2, 37, 131), dtype)
    args = (dy, inputs.f, inputs.g, inputs.h, o, lse, inputs.gamma, 0.8)
    full = BWD(*args)
    part = BWD(*args, list(mask))
    for k, wanted in enumerate(mask):
        if wanted:
            assert torch.equal(part[k], full[k]), f"output {k} differs from the full backward"
        else:
            assert part[k] is None, f"output {k} was not asked for but came back"
    assert torch.equal(part[3], full[3]), "grad_gamma differs"


@pytest.mark.parametrize("needs", [("h",), ("f",), ("g",), ("f", "g"), ("gamma",), ("x",), ("h", "gamma")])
def test_autograd_computes_only_what_is_needed(needs):
    """Leaves that do not require grad: their gradients are neither returned nor computed, and the
    ones that are match the all-inputs backward bitwise."""
    names = ("f", "g", "h", "x", "gamma")
    inputs = make_inputs(2, 8, 16, 97, 70, torch.float32, seed=3)
    dy = random_grad((2, 16, 97), torch.float32)
    full_leaves = [t.detach().clone().requires_grad_() for t in inputs]
    torch.ops.sagan.self_attn(*full_leaves, 1.0).backward(dy)
    leaves = [t.detach().clone().requires_grad_(n in needs) for n, t in zip(names, inputs)]
    torch.ops.sagan.self_attn(*leaves, 1.0).backward(dy)
    for n, t, ref in zip(names, leaves, full_leaves):
        if n in needs:
            assert torch.equal(t.grad, ref.grad), f"grad of {n} differs from the full backward"
        else:
            assert t.grad is None


def test_masked_backward_meta_and_opcheck():
    inputs = make_inputs(1, 3, 8, 20, 30, torch.float32, seed=5)
    o, lse = forward(inputs)
    dy = random_grad((1, 8, 20), torch.float32)
    for mask in ([False, False, True], [True, False, False], [False, True, True]):
        args = (dy, inputs.f, inputs.g, inputs.h, o, lse, inputs.gamma, 0.8, mask)
        torch.library.opcheck(BWD, args)
        meta = BWD(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        real = BWD(*args)
        for m, r in zip(meta, real):
            assert (m is None) == (r is None)
            if r is not None:
                assert m.shape == r.shape and m.dtype == r.dtype
