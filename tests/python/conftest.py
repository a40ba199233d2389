"""Shared helpers of the sagan-attn Python tests: input factories, gradient runners, error metrics.

Every comparison in the suite goes against ``sagan_attn.reference`` (the project's one oracle), run in
float64 on the very same (dtype-rounded) inputs, so the only difference measured is the kernel's
arithmetic, never the rounding of the inputs.
"""
from __future__ import annotations

import math

from typing import Callable, List, NamedTuple, Optional, Sequence

import pytest
import torch

import sagan_attn  # noqa: F401  (registers torch.ops.sagan)
from sagan_attn import reference

OP = torch.ops.sagan.self_attn


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a long-running test (still part of the default run; deselect with -m 'not slow')"
    )


class Inputs(NamedTuple):
    f: torch.Tensor
    g: torch.Tensor
    h: torch.Tensor
    x: Optional[torch.Tensor]
    gamma: torch.Tensor

    def as_list(self) -> List[Optional[torch.Tensor]]:
        return [self.f, self.g, self.h, self.x, self.gamma]


INPUT_NAMES = ("f", "g", "h", "x", "gamma")


def make_inputs(
    B: int,
    Cqk: int,
    Cv: int,
    Nq: int,
    Nk: int,
    dtype: torch.dtype = torch.float32,
    *,
    with_x: bool = True,
    gamma: float = 0.7,
    gamma_shape: Sequence[int] = (),
    requires_grad: bool = False,
    seed: int = 0,
    magnitude: float = 1.0,
) -> Inputs:
    """Random (f, g, h, x, gamma) of the given sizes, drawn in float64 from a seeded generator and
    rounded to ``dtype``. ``magnitude`` multiplies f and g (the logits grow with its square)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, mult=1.0):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * mult).to(dtype)
        return t.requires_grad_(requires_grad)

    f = rnd(B, Cqk, Nq, mult=magnitude)
    g = rnd(B, Cqk, Nk, mult=magnitude)
    h = rnd(B, Cv, Nk)
    x = rnd(B, Cv, Nq) if with_x else None
    gam = torch.full(tuple(gamma_shape), gamma, dtype=dtype).requires_grad_(requires_grad)
    return Inputs(f, g, h, x, gam)


def leaves(inputs: Sequence[Optional[torch.Tensor]], dtype: Optional[torch.dtype] = None):
    """Fresh leaf copies (requires_grad=True) of the inputs, optionally cast to ``dtype``."""
    out = []
    for t in inputs:
        if t is None:
            out.append(None)
        else:
            u = t.detach().to(dtype) if dtype is not None else t.detach()
            out.append(u.clone().requires_grad_(True))
    return Inputs(*out)


def run_with_grads(
    fn: Callable,
    inputs: Sequence[Optional[torch.Tensor]],
    scale: float,
    grad_y: torch.Tensor,
    dtype: Optional[torch.dtype] = None,
):
    """y = fn(f, g, h, x, gamma, scale) and the gradients of <y, grad_y> w.r.t. all five inputs
    (None for an absent x), on fresh leaves cast to ``dtype``. Returns [y, gf, gg, gh, gx, ggamma]."""
    ins = leaves(inputs, dtype)
    y = fn(*ins, scale)
    present = [t for t in ins if t is not None]
    grads = torch.autograd.grad(y, present, grad_y.to(y.dtype))
    it = iter(grads)
    full = [next(it) if t is not None else None for t in ins]
    return [y.detach()] + full


def random_grad(shape, dtype, seed=1234):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def max_abs_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item()


def max_abs(t: torch.Tensor) -> float:
    return t.double().abs().max().item()


def assert_rel_max_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = ""):
    """max |actual - expected| <= rtol * max |expected|: the error relative to the tensor's scale.

    An element-wise relative tolerance is not usable for gradients: entries near zero come from
    cancellations (softmax backward subtracts the row mean) and carry the absolute error of the
    large entries, so the scale of the whole tensor is the meaningful yardstick. If the expected
    tensor is exactly zero the actual one must be too."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in the op's result"
    err = max_abs_err(actual, expected)
    ref = max_abs(expected)
    assert err <= rtol * ref, f"{what}: max abs err {err:.3e} > {rtol:.1e} * max|ref| ({ref:.3e})"


def assert_style_rule(
    actual: torch.Tensor,
    low_ref: torch.Tensor,
    oracle: torch.Tensor,
    dtype: torch.dtype,
    what: str = "",
    extra: float = 0.0,
):
    """The bf16/fp16 rule: the op's error against the float64 oracle is at most twice the error of the
    reference computed in ``dtype`` itself, plus a rounding floor of one ulp of the result's scale.

    Floor: the op computes in float32 but must hand its result back in ``dtype``, a rounding of up to
    half an ulp (eps/2 relative) that no implementation can avoid; the backward also consumes the
    saved attention output o, itself rounded to ``dtype`` (another half ulp of |o| ~ |y|). So one
    eps(dtype) * max|oracle| is the least error a correct low-precision kernel can be held to, even
    where the low-precision reference happens to be lucky (e.g. a single rounded scalar like dgamma).
    ``extra`` is an additional absolute allowance, for callers that justify one. A reference that is
    not even finite in ``dtype`` (fp16 logits overflow) bounds nothing: its error counts as infinite,
    and only the finiteness of the op's result is checked."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in the op's result"
    err = max_abs_err(actual, oracle)
    ref_err = max_abs_err(low_ref, oracle)
    if not math.isfinite(ref_err):
        ref_err = math.inf
    floor = torch.finfo(dtype).eps * max_abs(oracle) + extra
    assert err <= 2.0 * ref_err + floor, (
        f"{what}: op error {err:.3e} > 2 x reference-in-{dtype} error {ref_err:.3e} + floor {floor:.3e}"
    )


def assert_same_nonfinite(actual: torch.Tensor, expected: torch.Tensor, what: str = ""):
    """Same NaN mask, same +-inf positions and signs; returns the mask of finite entries."""
    a, e = actual.double(), expected.double()
    assert torch.equal(torch.isnan(a), torch.isnan(e)), (
        f"{what}: NaN masks differ ({int(torch.isnan(a).sum())} NaN in op vs {int(torch.isnan(e).sum())} in reference)"
    )
    assert torch.equal(torch.isposinf(a), torch.isposinf(e)), f"{what}: +inf masks differ"
    assert torch.equal(torch.isneginf(a), torch.isneginf(e)), f"{what}: -inf masks differ"
    return torch.isfinite(e)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
