"""Bad inputs of torch.ops.sagan.self_attn (and of the internal self_attn_backward) raise a clear
error of the right Python type whose message names the offending argument, on every available device:
ValueError for shapes / ranks / empty tensors / gamma's element count / scale, TypeError for dtypes,
RuntimeError for devices.

The error cases are built once, on the CPU, and each test moves them to its device (on_device)."""
from __future__ import annotations

import math
import re

import pytest
import torch

import sagan_attn

from op_testing import DEVICES, OP

B, CQK, CV, NQ, NK = 2, 4, 5, 10, 12


def t(*shape, dtype=torch.float32, device="cpu"):
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(*shape, dtype=torch.float64).to(dtype).to(device)
    return torch.ones(*shape, dtype=dtype, device=device)


def good(device="cpu", **override):
    """Valid (f, g, h, x, gamma, scale) on ``device``, with some replaced (overrides moved there too)."""
    args = dict(
        f=t(B, CQK, NQ), g=t(B, CQK, NK), h=t(B, CV, NK), x=t(B, CV, NQ), gamma=t(()), scale=1.0
    )
    args.update(override)
    return on_device(args, device)


def on_device(args, device):
    """The dict's tensors moved to ``device`` (the same tensors on the CPU); other values as they are."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def call(args):
    return OP(args["f"], args["g"], args["h"], args["x"], args["gamma"], args["scale"])


def test_valid_baseline_runs(device):
    # The error cases below differ from this one call in a single argument.
    assert call(good(device)).shape == (B, CV, NQ)
    assert call(good(device, x=None, gamma=t(1))).shape == (B, CV, NQ)


# (id, override, error type, regex the message must match). Every regex starts with the argument name.
ERROR_CASES = [
    # ranks
    ("f_rank2", dict(f=t(CQK, NQ)), ValueError, r"self_attn: f must be 3-D \(B, Cqk, Nq\), got 2-D"),
    ("f_rank4", dict(f=t(B, CQK, NQ, 1)), ValueError, r"self_attn: f must be 3-D .*got 4-D"),
    ("g_rank2", dict(g=t(CQK, NK)), ValueError, r"self_attn: g must be 3-D \(B, Cqk, Nk\), got 2-D"),
    ("g_rank1", dict(g=t(NK)), ValueError, r"self_attn: g must be 3-D .*got 1-D"),
    ("h_rank2", dict(h=t(CV, NK)), ValueError, r"self_attn: h must be 3-D \(B, Cv, Nk\), got 2-D"),
    ("h_rank4", dict(h=t(1, B, CV, NK)), ValueError, r"self_attn: h must be 3-D .*got 4-D"),
    ("x_rank2", dict(x=t(CV, NQ)), ValueError, r"self_attn: x must be 3-D \(B, Cv, Nq\), got 2-D"),
    ("x_rank4", dict(x=t(B, CV, NQ, 1)), ValueError, r"self_attn: x must be 3-D .*got 4-D"),
    # mismatched sizes between tensors
    ("g_batch", dict(g=t(B + 1, CQK, NK)), ValueError,
     r"self_attn: g must have shape \(B, Cqk, Nk\) = \(2, 4, \*\) to match f, got \[3, 4, 12\]"),
    ("g_cqk", dict(g=t(B, CQK + 1, NK)), ValueError,
     r"self_attn: g must have shape \(B, Cqk, Nk\) = \(2, 4, \*\) to match f, got \[2, 5, 12\]"),
    ("h_batch", dict(h=t(B + 1, CV, NK)), ValueError,
     r"self_attn: h must have shape \(B, Cv, Nk\) = \(2, \*, 12\) to match f and g, got \[3, 5, 12\]"),
    ("h_nk", dict(h=t(B, CV, NK + 1)), ValueError,
     r"self_attn: h must have shape \(B, Cv, Nk\) = \(2, \*, 12\) to match f and g, got \[2, 5, 13\]"),
    ("x_batch", dict(x=t(B + 1, CV, NQ)), ValueError,
     r"self_attn: x must have shape \(B, Cv, Nq\) = \(2, 5, 10\) to match f and h, got \[3, 5, 10\]"),
    ("x_cv", dict(x=t(B, CV + 1, NQ)), ValueError,
     r"self_attn: x must have shape \(B, Cv, Nq\) = \(2, 5, 10\) to match f and h, got \[2, 6, 10\]"),
    ("x_nq", dict(x=t(B, CV, NQ + 1)), ValueError,
     r"self_attn: x must have shape \(B, Cv, Nq\) = \(2, 5, 10\) to match f and h, got \[2, 5, 11\]"),
    ("x_nk_instead_of_nq", dict(x=t(B, CV, NK)), ValueError, r"self_attn: x must have shape"),
    # dtypes
    ("g_double", dict(g=t(B, CQK, NK, dtype=torch.float64)), TypeError,
     r"self_attn: g must have dtype Float like f, got Double"),
    ("h_bf16", dict(h=t(B, CV, NK, dtype=torch.bfloat16)), TypeError,
     r"self_attn: h must have dtype Float like f, got BFloat16"),
    ("x_half", dict(x=t(B, CV, NQ, dtype=torch.float16)), TypeError,
     r"self_attn: x must have dtype Float like f, got Half"),
    ("gamma_double", dict(gamma=t((), dtype=torch.float64)), TypeError,
     r"self_attn: gamma must have dtype Float like f, got Double"),
    ("h_int64", dict(h=t(B, CV, NK, dtype=torch.int64)), TypeError,
     r"self_attn: h must have dtype Float like f, got Long"),
    ("g_bool", dict(g=t(B, CQK, NK, dtype=torch.bool)), TypeError,
     r"self_attn: g must have dtype Float like f, got Bool"),
    ("gamma_int64", dict(gamma=torch.tensor(1)), TypeError,
     r"self_attn: gamma must have dtype Float like f, got Long"),
    # gamma's element count
    ("gamma_2_elements", dict(gamma=t(2)), ValueError,
     r"self_attn: gamma must have exactly one element \(a scalar, shape \(\) or \(1,\)\), got shape \[2\]"),
    ("gamma_0_elements", dict(gamma=t(0)), ValueError,
     r"self_attn: gamma must have exactly one element .*got shape \[0\]"),
    ("gamma_1x2", dict(gamma=t(1, 2)), ValueError, r"self_attn: gamma must have exactly one element"),
    # empty tensors
    ("B0", dict(f=t(0, CQK, NQ), g=t(0, CQK, NK), h=t(0, CV, NK), x=t(0, CV, NQ)), ValueError,
     r"self_attn: f is empty \(shape \[0, 4, 10\]\)"),
    ("Nq0", dict(f=t(B, CQK, 0), x=t(B, CV, 0)), ValueError, r"self_attn: f is empty \(shape \[2, 4, 0\]\)"),
    ("Nk0", dict(g=t(B, CQK, 0), h=t(B, CV, 0)), ValueError, r"self_attn: g is empty \(shape \[2, 4, 0\]\)"),
    ("Cqk0", dict(f=t(B, 0, NQ), g=t(B, 0, NK)), ValueError, r"self_attn: f is empty \(shape \[2, 0, 10\]\)"),
    ("Cv0", dict(h=t(B, 0, NK), x=t(B, 0, NQ)), ValueError, r"self_attn: h is empty \(shape \[2, 0, 12\]\)"),
    ("Cv0_nox", dict(h=t(B, 0, NK), x=None), ValueError, r"self_attn: h is empty"),
    # scale
    ("scale_nan", dict(scale=math.nan), ValueError, r"self_attn: scale must be finite, got nan"),
    ("scale_inf", dict(scale=math.inf), ValueError, r"self_attn: scale must be finite, got inf"),
    ("scale_neginf", dict(scale=-math.inf), ValueError, r"self_attn: scale must be finite, got -inf"),
]


@pytest.mark.parametrize("override,exc,pattern", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises_naming_the_argument(override, exc, pattern, device):
    with pytest.raises(exc, match=pattern):
        call(good(device, **override))


@pytest.mark.parametrize("override,exc,pattern", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises_with_requires_grad(override, exc, pattern, device):
    """The same errors through the autograd path (inputs requiring grad), not a crash or a later failure
    in backward."""
    args = {k: (v.requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in good(device, **override).items()}
    with pytest.raises(exc, match=pattern):
        call(args)


@pytest.mark.parametrize(
    "dtype,name",
    [(torch.int64, "Long"), (torch.int32, "Int"), (torch.bool, "Bool"), (torch.complex64, "ComplexFloat")],
    ids=["int64", "int32", "bool", "complex64"],
)
def test_non_float_dtype_of_f(dtype, name, device):
    """All tensors share one non-float dtype: the error is about f's dtype, listing what is supported."""
    args = good(
        device,
        f=t(B, CQK, NQ, dtype=dtype), g=t(B, CQK, NK, dtype=dtype), h=t(B, CV, NK, dtype=dtype),
        x=t(B, CV, NQ, dtype=dtype), gamma=t((), dtype=dtype),
    )
    pattern = (r"self_attn: f must have a floating dtype \(float32, float64, bfloat16 or float16\), got "
               + re.escape(name))
    with pytest.raises(TypeError, match=pattern):
        call(args)


# The device that mismatches the CPU: 'meta' (shape-only tensors) always, a GPU where there is one.
# Messages name the device as torch prints it: "cuda:0", hence the optional index in the patterns.
OTHER_DEVICES = ["meta"] + [d for d in DEVICES if d != "cpu"]


@pytest.mark.parametrize("other", OTHER_DEVICES)
@pytest.mark.parametrize("which", ["g", "h", "x", "gamma"])
def test_device_mismatch(which, other):
    args = good()
    args[which] = args[which].to(other)
    with pytest.raises(RuntimeError, match=rf"self_attn: {which} must be on device cpu like f, got {other}"):
        call(args)


@pytest.mark.parametrize("other", OTHER_DEVICES)
def test_device_mismatch_f_elsewhere(other):
    args = good()
    args["f"] = args["f"].to(other)
    with pytest.raises(RuntimeError, match=rf"self_attn: g must be on device {other}(:\d+)? like f, got cpu"):
        call(args)


def test_functional_wrapper_reports_the_same_errors(device):
    f, g, h = t(B, CQK, NQ, device=device), t(B, CQK, NK, device=device), t(B, CV, NK, device=device)
    with pytest.raises(ValueError, match=r"self_attn: h must have shape"):
        sagan_attn.self_attn(f, g, t(B, CV, NK + 1, device=device))
    with pytest.raises(TypeError, match=r"self_attn: g must have dtype Float like f, got Double"):
        sagan_attn.self_attn(f, t(B, CQK, NK, dtype=torch.float64, device=device), h, gamma=0.5)
    with pytest.raises(ValueError, match=r"self_attn: scale must be finite"):
        sagan_attn.self_attn(f, g, h, scale=float("nan"))


def test_internal_fwd_op_checks_too(device):
    args = good(device, x=t(B, CV + 1, NQ))
    with pytest.raises(ValueError, match=r"self_attn: x must have shape"):
        torch.ops.sagan.self_attn_fwd(args["f"], args["g"], args["h"], args["x"], args["gamma"], 1.0)


# --------------------------------------------------------------------------------------------------
# The internal fused backward op: its extra arguments grad_y, o and lse are checked as well.


def backward_args(device="cpu", dtype=torch.float32, **override):
    """Valid arguments of self_attn_backward on ``device``, with some replaced (moved there too)."""
    f, g, h = (t(*shape, dtype=dtype, device=device) for shape in [(B, CQK, NQ), (B, CQK, NK), (B, CV, NK)])
    gamma = t((), dtype=dtype, device=device)
    _, o, lse = torch.ops.sagan.self_attn_fwd(f, g, h, None, gamma, 1.0)
    args = dict(grad_y=t(B, CV, NQ, dtype=dtype, device=device), f=f, g=g, h=h, o=o, lse=lse, gamma=gamma, scale=1.0)
    args.update(on_device(override, device))
    return args


def call_backward(a):
    return torch.ops.sagan.self_attn_backward(a["grad_y"], a["f"], a["g"], a["h"], a["o"], a["lse"], a["gamma"], a["scale"])


def test_internal_backward_valid_baseline(device):
    grads = call_backward(backward_args(device))
    assert [tuple(gr.shape) for gr in grads] == [(B, CQK, NQ), (B, CQK, NK), (B, CV, NK), ()]


BACKWARD_ERROR_CASES = [
    ("grad_y_nq", dict(grad_y=t(B, CV, NQ + 1)), ValueError,
     r"self_attn_backward: grad_y must have shape \(B, Cv, Nq\) = \(2, 5, 10\), got \[2, 5, 11\]"),
    ("grad_y_cv", dict(grad_y=t(B, CV - 1, NQ)), ValueError,
     r"self_attn_backward: grad_y must have shape \(B, Cv, Nq\) = \(2, 5, 10\), got \[2, 4, 10\]"),
    ("grad_y_rank2", dict(grad_y=t(CV, NQ)), ValueError, r"self_attn_backward: grad_y must have shape .*got \[5, 10\]"),
    ("grad_y_double", dict(grad_y=t(B, CV, NQ, dtype=torch.float64)), TypeError,
     r"self_attn_backward: grad_y must have dtype Float like f, got Double"),
    ("o_shape", dict(o=t(B, CV, NQ - 1)), ValueError, r"self_attn_backward: o must have shape \(B, Cv, Nq\)"),
    ("lse_nq", dict(lse=t(B, NQ + 1)), ValueError,
     r"self_attn_backward: lse must have shape \(B, Nq\) = \(2, 10\), got \[2, 11\]"),
    ("lse_batch", dict(lse=t(B + 1, NQ)), ValueError, r"self_attn_backward: lse must have shape \(B, Nq\)"),
    ("lse_rank3", dict(lse=t(B, NQ, 1)), ValueError, r"self_attn_backward: lse must have shape \(B, Nq\) .*got \[2, 10, 1\]"),
    ("lse_float", dict(lse=t(B, NQ, dtype=torch.float32)), TypeError,
     r"self_attn_backward: lse must have dtype Double \(float64\), got Float"),
    ("scale_nan", dict(scale=math.nan), ValueError, r"self_attn: scale must be finite"),
]


@pytest.mark.parametrize(
    "override,exc,pattern", [c[1:] for c in BACKWARD_ERROR_CASES], ids=[c[0] for c in BACKWARD_ERROR_CASES]
)
def test_internal_backward_bad_input(override, exc, pattern, device):
    with pytest.raises(exc, match=pattern):
        call_backward(backward_args(device, **override))


def test_internal_backward_lse_must_be_float64_for_bf16(device):
    args = backward_args(device, dtype=torch.bfloat16)
    assert args["lse"].dtype == torch.float64
    call_backward(args)  # valid
    args["lse"] = args["lse"].to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"self_attn_backward: lse must have dtype Double \(float64\), got BFloat16"):
        call_backward(args)


# --------------------------------------------------------------------------------------------------
# Layouts, and scale / gamma checked as they are used.


def nested(*shapes, layout=torch.strided, device="cpu"):
    return torch.nested.nested_tensor([torch.randn(*s) for s in shapes], layout=layout, device=device)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "requires_grad"])
@pytest.mark.parametrize("which", ["f", "g", "h", "x"])
def test_nested_tensor_is_named(which, requires_grad, device):
    """A nested tensor used to reach 'Internal error: NestedTensorImpl doesn't support sizes'."""
    args = good(device)
    args[which] = nested((CQK, NQ), (CQK, NQ + 3), device=device).requires_grad_(requires_grad)
    with pytest.raises(ValueError, match=rf"self_attn: {which} is a nested tensor; self_attn takes dense"):
        call(args)


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged], ids=["nested_strided", "jagged"])
def test_nested_tensor_through_functional_and_autocast(layout, device):
    nt = nested((CQK, NQ), (CQK, NQ + 2), layout=layout, device=device)
    with pytest.raises(ValueError, match=r"self_attn: f is a nested tensor"):
        sagan_attn.self_attn(nt, t(B, CQK, NK, device=device), t(B, CV, NK, device=device))
    with torch.autocast(device, dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=r"self_attn: f is a nested tensor"):
            call(good(device, f=nt))


@pytest.mark.parametrize("which", ["f", "h", "gamma"])
def test_sparse_tensor_is_named(which, device):
    args = good(device)
    args[which] = args[which].to_sparse()
    with pytest.raises(ValueError, match=rf"self_attn: {which} must be a dense \(strided\) tensor, got layout Sparse"):
        call(args)


LOW_DTYPES = [(torch.float32, "Float"), (torch.bfloat16, "BFloat16"), (torch.float16, "Half")]


@pytest.mark.parametrize("dtype,name", LOW_DTYPES, ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("scale", [1e39, -1e39, 2.4e38])
def test_scale_beyond_float32_is_rejected(scale, dtype, name, device):
    """1e39 is a finite double but inf in float32, where these dtypes compute: it used to turn y into
    NaN. The bound is float32's max / log2(e) = 2.3587e38 (the kernels take the softmax in base 2)."""
    args = good(device, scale=scale, **{k: v.to(dtype) for k, v in good().items() if isinstance(v, torch.Tensor)})
    with pytest.raises(ValueError, match=rf"self_attn: scale must satisfy \|scale\| <= 2.3586\de\+38 for {name} inputs"):
        call(args)
    bwd = backward_args(device, dtype=dtype, scale=scale)
    with pytest.raises(ValueError, match=r"self_attn: scale must satisfy"):
        call_backward(bwd)


def test_scale_bound_is_inclusive_and_float64_has_its_own(device):
    bound = 3.4028234663852886e38 / 1.4426950408889634
    call(good(device, scale=bound * (1 - 1e-12)))
    args64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in good(device).items()}
    args64["scale"] = 1e39  # fine in float64: the float64 kernels compute in float64
    y = call(args64)
    assert not torch.isinf(y).all()
    # float64's own bound, float64's max / log2(e) = 1.2461e308: scale * log2(e) must stay finite there.
    args64["scale"] = 1.7976931348623157e308 / 1.4426950408889634 * (1 - 1e-12)
    call(args64)  # accepted (its logits overflow, as the reference's do)
    args64["scale"] = 1.3e308
    with pytest.raises(ValueError, match=r"self_attn: scale must satisfy \|scale\| <= 1.2460\de\+308 for Double inputs"):
        call(args64)


def fgh(device):
    """Valid f, g, h for the functional wrapper's argument checks."""
    return t(B, CQK, NQ, device=device), t(B, CQK, NK, device=device), t(B, CV, NK, device=device)


@pytest.mark.parametrize("scale", [10**400, -(10**400)], ids=["pos", "neg"])
def test_functional_scale_too_large_integer(scale, device):
    """float(10**400) raises OverflowError; ints are accepted, so the message says what range works."""
    with pytest.raises(ValueError, match=r"self_attn: scale must be finite, got an integer of 1329 bits"):
        sagan_attn.self_attn(*fgh(device), scale=scale)


@pytest.mark.parametrize("gamma,name", [([1.0], "list"), ("0.5", "str"), (None, "NoneType"), (True, "bool")])
def test_functional_gamma_type(gamma, name, device):
    with pytest.raises(TypeError, match=rf"self_attn: gamma must be a real number or a one-element tensor, got {name}"):
        sagan_attn.self_attn(*fgh(device), gamma=gamma)


@pytest.mark.parametrize("scale,name", [("2", "str"), (None, "NoneType"), ([1.0], "list")])
def test_functional_scale_type(scale, name, device):
    with pytest.raises(TypeError, match=rf"self_attn: scale must be a real number or a one-element tensor, got {name}"):
        sagan_attn.self_attn(*fgh(device), scale=scale)


def test_functional_scale_tensor_of_several_elements(device):
    with pytest.raises(ValueError, match=r"self_attn: scale must be a number or a one-element tensor, got a tensor of shape \(2,\)"):
        sagan_attn.self_attn(*fgh(device), scale=torch.ones(2, device=device))


def test_functional_scale_tensor_gets_its_gradient(device):
    """A scale tensor that requires grad (a learnable temperature) used to be turned into a float,
    silently dropping its gradient. It is now folded into the queries and gets the reference's
    gradient, in float64, along with every other input's."""
    from sagan_attn import reference

    f, g, h, x = (t(*s, dtype=torch.float64, device=device).requires_grad_()
                  for s in [(B, CQK, NQ), (B, CQK, NK), (B, CV, NK), (B, CV, NQ)])
    gamma = torch.tensor(0.7, dtype=torch.float64, device=device, requires_grad=True)
    scale = torch.tensor(0.6, dtype=torch.float64, device=device, requires_grad=True)
    y = sagan_attn.self_attn(f, g, h, x, gamma, scale)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, [f, g, h, x, gamma, scale], dy)
    y_ref = reference.self_attn(f, g, h, x, gamma, scale)
    want = torch.autograd.grad(y_ref, [f, g, h, x, gamma, scale], dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert float(got[-1].abs()) > 0


def test_functional_scale_tensor_without_grad_is_a_number(device):
    args = fgh(device)
    torch.testing.assert_close(sagan_attn.self_attn(*args, scale=torch.tensor(0.25, device=device)),
                               sagan_attn.self_attn(*args, scale=0.25), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"self_attn: scale must satisfy"):
        sagan_attn.self_attn(*args, scale=torch.tensor(1e39, dtype=torch.float64, device=device))
