"""What the sagan-attn Python tests share, on any device: the op's inputs (make_inputs, leaves,
random_grad), gradient runners (run_with_grads), error metrics and criteria (assert_rel_max_close,
assert_style_rule, assert_same_nonfinite, assert_identical), the comparison of y and all five
gradients with the float64 oracle (check_against_oracle), and the devices the tests run on (DEVICES,
deterministic). Test files import from here, never from one another.

Every comparison goes against ``sagan_attn.reference`` (the project's one oracle), run in float64 on
the very same (dtype-rounded) inputs and on the same device, so the only difference measured is the
kernel's arithmetic, never the rounding of the inputs.

Tolerances (check_against_oracle; "max abs error <= rtol * max |reference|" per tensor, see
assert_rel_max_close), the same on every device:
  float64:  1e-10. eps = 2.2e-16; the kernel's observed error is ~1e-15 relative on the test shapes
            (sums of <= 1025 terms, logits of std <= 5). 1e-10 leaves a 1e4 margin for accumulation-order
            noise while anything structurally wrong (a missed or doubled key tile, a wrong row of the
            softmax, a stale padded column) costs >= 1e-4.
  float32:  2e-5 (~170 eps). Logit errors are ~Cqk * eps * |f||g| and enter the output through the
            softmax as relative errors of p; gradients add one more cancellation (ds = p (dp - D)).
            The same reference run in float32 shows up to ~1e-6 relative on these shapes, and so does
            the CPU kernel (worst seen ~2e-6, for dg with Cv = 512): 2e-5 is a 10x margin over that.
  bf16/fp16: the style rule (assert_style_rule): at most 2x the error of the reference run in that
            dtype on the same device, plus one eps(dtype) of the result's scale for the unavoidable
            output rounding. It holds whether a kernel rounds once at the end (CPU: float32 throughout)
            or also rounds the probabilities before the value product (CUDA tensor cores), since the
            reference in that dtype does the same.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence

import torch

import sagan_attn  # noqa: F401  (registers torch.ops.sagan)
from sagan_attn import reference

OP = torch.ops.sagan.self_attn

# cuBLAS refuses deterministic mode (deterministic() below) unless this is set before it starts; set
# here, at the tests' first import, so that the oracle's bmm and the modules' layers may run inside it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# The devices every device-parametrised test runs on: the CPU always, CUDA when a GPU is visible, so the
# day one is there the whole matrix runs on it (and no CUDA case is collected, or skipped, without one).
DEVICES: List[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

INPUT_NAMES = ("f", "g", "h", "x", "gamma")
RESULT_NAMES = ("y",) + tuple(f"grad_{n}" for n in INPUT_NAMES)

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f64", "f32", "bf16", "f16"]
LOW_PRECISION = (torch.bfloat16, torch.float16)
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}  # why these values: the module docstring


class Inputs(NamedTuple):
    f: torch.Tensor
    g: torch.Tensor
    h: torch.Tensor
    x: Optional[torch.Tensor]
    gamma: torch.Tensor

    def as_list(self) -> List[Optional[torch.Tensor]]:
        return [self.f, self.g, self.h, self.x, self.gamma]


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
    device: str = "cpu",
) -> Inputs:
    """Random (f, g, h, x, gamma) of the given sizes, drawn in float64 from a seeded CPU generator,
    rounded to ``dtype`` and moved to ``device`` (so every device sees the same values); leaves there
    when ``requires_grad``. ``magnitude`` multiplies f and g (the logits grow with its square)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, mult=1.0):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * mult).to(dtype).to(device)
        return t.requires_grad_(requires_grad)

    f = rnd(B, Cqk, Nq, mult=magnitude)
    g = rnd(B, Cqk, Nk, mult=magnitude)
    h = rnd(B, Cv, Nk)
    x = rnd(B, Cv, Nq) if with_x else None
    gam = torch.full(tuple(gamma_shape), gamma, dtype=dtype, device=device).requires_grad_(requires_grad)
    return Inputs(f, g, h, x, gam)


def leaves(inputs: Sequence[Optional[torch.Tensor]], dtype: Optional[torch.dtype] = None) -> Inputs:
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
    (None for an absent x), on fresh leaves cast to ``dtype``; grad_y follows y's dtype and device.
    Returns [y, gf, gg, gh, gx, ggamma]."""
    ins = leaves(inputs, dtype)
    y = fn(*ins, scale)
    present = [t for t in ins if t is not None]
    grads = torch.autograd.grad(y, present, grad_y.to(device=y.device, dtype=y.dtype))
    it = iter(grads)
    full = [next(it) if t is not None else None for t in ins]
    return [y.detach()] + full


def random_grad(shape, dtype, seed=1234, device="cpu"):
    """A seeded random tensor (drawn in float64 on the CPU, so the same on every device)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def random_grad_y(inputs: Inputs, dtype, seed=1234):
    """random_grad of y's shape (B, Cv, Nq), on the inputs' device."""
    B, Cv, Nq = inputs.h.shape[0], inputs.h.shape[1], inputs.f.shape[2]
    return random_grad((B, Cv, Nq), dtype, seed, device=inputs.f.device)


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


def assert_identical(a, b, what: str, names: Sequence[str] = RESULT_NAMES):
    """Two result lists ([y, grad_f, ...], None for an absent x) are bitwise equal, dtype included."""
    for name, u, v in zip(names, a, b):
        if u is None or v is None:
            assert u is None and v is None, f"{what}: {name} present on one side only"
            continue
        assert u.dtype == v.dtype, f"{what}: {name} has dtype {u.dtype} on one side, {v.dtype} on the other"
        assert torch.equal(u, v), (
            f"{what}: {name} differs (max abs diff {(u.double() - v.double()).abs().max():.3e})"
        )


def check_against_oracle(inputs: Inputs, scale, dtype, grad_y=None, what=""):
    """Runs the op and the reference (float64 oracle; plus the reference in ``dtype`` for bf16/fp16)
    on the same inputs and device, and compares y and all five gradients with the dtype's criterion
    (module docstring). grad_y defaults to random_grad_y(inputs). Returns (op results, oracle's)."""
    if grad_y is None:
        grad_y = random_grad_y(inputs, dtype)
    got = run_with_grads(OP, inputs, scale, grad_y)
    oracle = run_with_grads(reference.self_attn, inputs, scale, grad_y, dtype=torch.float64)
    low = run_with_grads(reference.self_attn, inputs, scale, grad_y) if dtype in LOW_PRECISION else None
    for k, name in enumerate(RESULT_NAMES):
        a, e = got[k], oracle[k]
        if e is None:  # no residual: no grad_x on either side
            assert a is None, f"{what}{name}: op returned a gradient for an absent x"
            continue
        assert a.dtype == dtype, f"{what}{name}: dtype {a.dtype}, expected {dtype}"
        assert a.shape == e.shape, f"{what}{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        if dtype in LOW_PRECISION:
            assert_style_rule(a, low[k], e, dtype, what=f"{what}{name}")
        else:
            assert_rel_max_close(a, e, RTOL[dtype], what=f"{what}{name}")
    return got, oracle


@contextlib.contextmanager
def deterministic(device: str) -> Iterator[None]:
    """Bitwise reproducibility where the device offers it. The CPU kernels split work by shape only
    and use no atomics: deterministic in any mode, so nothing changes there. The CUDA backward sums
    grad_f with atomics unless torch.use_deterministic_algorithms(True) picks its deterministic
    kernel, so that mode is on inside (cuBLAS works there thanks to CUBLAS_WORKSPACE_CONFIG, above)."""
    if torch.device(device).type == "cpu":
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
