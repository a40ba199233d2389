"""Mixed precision on every available device: sagan::self_attn under torch.autocast runs in the
autocast dtype as matmul does (csrc/autocast), and mixed input dtypes outside autocast are refused
with a message naming the argument.

Under autocast every floating input but a float64 one is cast to the autocast dtype and the op runs on
the cast tensors, so the result must be *bitwise* the op's result on explicitly cast inputs, and the
gradients of float32 leaves bitwise those of the cast leaves, cast back (the casts are plain,
differentiable ATen ops). Against the float64 oracle the style rule of op_testing applies (at most 2x
the error of the reference computed in that dtype, plus one eps of the result's scale).

Autocast dtypes: bf16 and fp16 for the cast equalities; for the oracle and module cases bf16 on the
CPU, whose kernels compute bf16 and fp16 alike in float32, and both on CUDA, where each has its own
tensor-core kernels (AUTOCAST_CASES); bf16 for the checks of autocast's rules (float64 left alone,
mixed dtypes unified, casts cached), which do not depend on the dtype.
"""
from __future__ import annotations

import copy

import pytest
import torch

from sagan_attn import SelfAttention2d, reference

from op_testing import (
    DEVICES,
    INPUT_NAMES,
    OP,
    RESULT_NAMES,
    Inputs,
    assert_rel_max_close,
    assert_style_rule,
    deterministic,
    leaves,
    make_inputs,
    random_grad,
    run_with_grads,
)

LOW = [torch.bfloat16, torch.float16]
LOW_IDS = ["bf16", "f16"]

# (device, autocast dtype) of the cases that the CPU runs in bf16 only: see the module docstring.
AUTOCAST_CASES = [("cpu", torch.bfloat16)] + [(d, dt) for d in DEVICES if d != "cpu" for dt in LOW]
AUTOCAST_IDS = [f"{d}-{dict(zip(LOW, LOW_IDS))[dt]}" for d, dt in AUTOCAST_CASES]


def _cast(inputs, dtype):
    return Inputs(*(None if t is None else t.detach().to(dtype) for t in inputs))


def _autocast_run(inputs, scale, grad_y, device_type, dtype):
    """y and the five gradients (of float32 leaves) with the op called under autocast."""
    ins = leaves(inputs)
    with torch.autocast(device_type, dtype=dtype):
        y = OP(*ins, scale)
    present = [t for t in ins if t is not None]
    grads = iter(torch.autograd.grad(y, present, grad_y))
    return [y.detach()] + [next(grads) if t is not None else None for t in ins]


def _check_autocast_matches_cast_inputs(inputs, scale, device_type, dtype):
    B, Cv, Nq = inputs.h.shape[0], inputs.h.shape[1], inputs.f.shape[2]
    grad_y = random_grad((B, Cv, Nq), dtype).to(inputs.f.device)
    with deterministic(device_type):  # bitwise comparisons below (CUDA: no atomics in the backward)
        got = _autocast_run(inputs, scale, grad_y, device_type, dtype)
        want = run_with_grads(OP, _cast(inputs, dtype), scale, grad_y)
    assert got[0].dtype == dtype, f"y has dtype {got[0].dtype} under autocast({dtype})"
    assert torch.equal(got[0], want[0]), "y under autocast differs from the op on cast inputs"
    for k in range(1, 6):
        name, a, b = RESULT_NAMES[k], got[k], want[k]
        if b is None:
            assert a is None, f"{name}: gradient for an absent x"
            continue
        assert a.dtype == inputs[k - 1].dtype, f"{name}: dtype {a.dtype}, leaf is {inputs[k - 1].dtype}"
        assert torch.equal(a, b.to(a.dtype)), f"{name}: differs from the gradient of the cast inputs"
    return got, grad_y


# -- the op under autocast --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("with_x", [True, False], ids=["x", "nox"])
def test_autocast_runs_in_autocast_dtype(dtype, with_x, device):
    # Ragged tiles (Nq 97 = 64 + 33, Nk 130 = 128 + 2) and a (1,) gamma, as a module parameter has it.
    inputs = make_inputs(2, 8, 32, 97, 130, torch.float32, with_x=with_x, gamma_shape=(1,), seed=60, device=device)
    _check_autocast_matches_cast_inputs(inputs, 0.8, device, dtype)


@pytest.mark.parametrize("device,dtype", AUTOCAST_CASES, ids=AUTOCAST_IDS)
def test_autocast_matches_oracle(device, dtype):
    """The bf16/fp16 rule against the float64 oracle on the rounded inputs the op actually sees."""
    inputs = make_inputs(2, 8, 32, 97, 130, torch.float32, seed=61, device=device)
    got, grad_y = _check_autocast_matches_cast_inputs(inputs, 1.0, device, dtype)
    rounded = _cast(inputs, dtype)
    oracle = run_with_grads(reference.self_attn, rounded, 1.0, grad_y, dtype=torch.float64)
    low = run_with_grads(reference.self_attn, rounded, 1.0, grad_y)
    for k, name in enumerate(RESULT_NAMES):
        assert_style_rule(got[k], low[k], oracle[k], dtype, what=name)


def test_autocast_self_attn_fwd(device):
    inputs = make_inputs(2, 4, 16, 70, 40, torch.float32, seed=62, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        y, o, lse = torch.ops.sagan.self_attn_fwd(*inputs, 0.5)
    want = torch.ops.sagan.self_attn_fwd(*_cast(inputs, torch.bfloat16), 0.5)
    assert y.dtype == o.dtype == torch.bfloat16 and lse.dtype == torch.float64
    for name, a, b in zip(("y", "o", "lse"), (y, o, lse), want):
        assert torch.equal(a, b), f"self_attn_fwd under autocast: {name} differs"


def test_autocast_leaves_float64_alone(device):
    """As for matmul, float64 inputs are not autocast: the op runs in float64, bitwise as outside."""
    inputs = make_inputs(2, 4, 8, 30, 20, torch.float64, seed=63, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        assert (inputs.f.transpose(1, 2) @ inputs.g).dtype == torch.float64  # what matmul does
        y = OP(*inputs, 1.0)
    assert y.dtype == torch.float64
    assert torch.equal(y, OP(*inputs, 1.0))


def test_autocast_unifies_mixed_dtypes(device):
    """float32 and float16 inputs together: autocast casts all of them, so the call is valid (like
    torch.mm(float32, float16) under autocast) and equals the op on all-bf16 inputs."""
    inputs = make_inputs(2, 4, 8, 30, 20, torch.float32, seed=64, device=device)
    mixed = Inputs(inputs.f, inputs.g.half(), inputs.h, inputs.x.half(), inputs.gamma)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = OP(*mixed, 1.0)
    assert torch.equal(y, OP(*_cast(mixed, torch.bfloat16), 1.0))


def test_autocast_cast_is_cached_for_parameters(device):
    """Two calls in one autocast region with the same float32 parameter: autocast's weight cache may
    reuse the cast; gradients still accumulate on the float32 leaf, twice the single-call gradient."""
    inputs = make_inputs(1, 4, 8, 30, 20, torch.float32, seed=65, device=device)
    gamma = torch.nn.Parameter(torch.tensor([0.7], device=device))
    with deterministic(device), torch.autocast(device, dtype=torch.bfloat16):
        y1 = OP(inputs.f, inputs.g, inputs.h, None, gamma, 1.0)
        y2 = OP(inputs.f, inputs.g, inputs.h, None, gamma, 1.0)
    with deterministic(device):
        (y1.float().sum() + y2.float().sum()).backward()
    twice = gamma.grad.clone()
    gamma.grad = None
    with deterministic(device), torch.autocast(device, dtype=torch.bfloat16):
        OP(inputs.f, inputs.g, inputs.h, None, gamma, 1.0).float().sum().backward()
    assert gamma.grad.dtype == torch.float32
    assert torch.equal(twice, 2 * gamma.grad)


# -- mixed dtypes outside autocast: a clear error ---------------------------------------------------

MIXED_CASES = [
    # (id, dtype of f, name of the odd argument, its dtype, message)
    ("bf16_f_f32_g", torch.bfloat16, "g", torch.float32, r"self_attn: g must have dtype BFloat16 like f, got Float"),
    ("f32_f_bf16_h", torch.float32, "h", torch.bfloat16, r"self_attn: h must have dtype Float like f, got BFloat16"),
    ("f16_f_f32_x", torch.float16, "x", torch.float32, r"self_attn: x must have dtype Half like f, got Float"),
    ("bf16_f_f32_gamma", torch.bfloat16, "gamma", torch.float32,
     r"self_attn: gamma must have dtype BFloat16 like f, got Float"),
]


def _mixed(f_dtype, odd, odd_dtype, device):
    inputs = make_inputs(2, 4, 8, 30, 20, f_dtype, seed=66, device=device)
    return Inputs(*(t.to(odd_dtype) if n == odd else t for n, t in zip(INPUT_NAMES, inputs)))


@pytest.mark.parametrize("f_dtype,odd,odd_dtype,pattern", [c[1:] for c in MIXED_CASES], ids=[c[0] for c in MIXED_CASES])
def test_mixed_dtypes_outside_autocast_raise(f_dtype, odd, odd_dtype, pattern, device):
    args = _mixed(f_dtype, odd, odd_dtype, device)
    with pytest.raises(TypeError, match=pattern):
        OP(*args, 1.0)
    with pytest.raises(TypeError, match=pattern):
        torch.ops.sagan.self_attn_fwd(*args, 1.0)
    # ... also with autocast switched off inside an autocast region, and for leaves requiring grad.
    with torch.autocast(device, dtype=torch.bfloat16), torch.autocast(device, enabled=False):
        with pytest.raises(TypeError, match=pattern):
            OP(*leaves(args), 1.0)


def test_mixed_dtypes_in_backward_op_raise(device):
    inputs = make_inputs(2, 4, 8, 30, 20, torch.bfloat16, with_x=False, seed=67, device=device)
    _, o, lse = torch.ops.sagan.self_attn_fwd(*inputs, 1.0)
    grad_y = torch.ones(o.shape, dtype=torch.float32, device=device)
    with pytest.raises(TypeError, match=r"self_attn_backward: grad_y must have dtype BFloat16 like f, got Float"):
        torch.ops.sagan.self_attn_backward(grad_y, inputs.f, inputs.g, inputs.h, o, lse, inputs.gamma, 1.0)


# -- the module under autocast --------------------------------------------------------------------


def _explicit_casts(m, x, dtype):
    """SelfAttention2d's forward with the casts autocast makes spelled out: convolutions under
    autocast, the op outside it on inputs cast by hand. Must equal the module under autocast bitwise."""
    with torch.autocast(x.device.type, dtype=dtype):
        fx = m._queries(x)
        gx, hx = m._keys_values(x)
    gamma = m.gamma.to(dtype)
    if m.o is None:
        return OP(fx, gx, hx, x.flatten(2).to(dtype), gamma, m.scale).view_as(x)
    attn = OP(fx, gx, hx, None, fx.new_ones(1), m.scale).view(x.shape[0], m.value_channels, *x.shape[2:])
    with torch.autocast(x.device.type, dtype=dtype):
        return gamma * m.o(attn) + x


def _module_y_and_grads(fn, m, x, grad_y, autocast_dtype=None):
    x = x.detach().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        y = fn(x)
    grads = torch.autograd.grad(y, [x, *m.parameters()], grad_y.to(y.dtype))
    return [y.detach()] + list(grads)


# The notebook block's y is the op's output (autocast dtype: the residual is cast with the other
# inputs); with out_conv the module adds the residual after the output conv, which promotes to float32
# as any residual addition under autocast does.
MODULE_CASES = [
    ("notebook", dict()),
    ("official", dict(value_channels=8, pool_kv=True, out_conv=True, bias=False)),
]


def _check_module_under_autocast(kwargs, device, dtype):
    torch.manual_seed(0)
    m = SelfAttention2d(16, **kwargs).to(device)
    with torch.no_grad():
        m.gamma.fill_(0.8)
    gen = torch.Generator().manual_seed(68)
    x = torch.randn(2, 16, 10, 12, generator=gen).to(device)
    grad_y = torch.randn(2, 16, 10, 12, generator=gen).to(device)
    with deterministic(device):  # bitwise comparisons below (CUDA: no atomics in the backward)
        got = _module_y_and_grads(m, m, x, grad_y, dtype)
        want = _module_y_and_grads(lambda t: _explicit_casts(m, t, dtype), m, x, grad_y)
    names = ["y", "grad_x"] + [f"grad_{n}" for n, _ in m.named_parameters()]
    assert got[0].dtype == (torch.float32 if m.out_conv else dtype), f"y has dtype {got[0].dtype}"
    for name, a, b, leaf in zip(names, got, want, [None, x] + list(m.parameters())):
        if leaf is not None:
            assert a.dtype == leaf.dtype == torch.float32, f"{name}: dtype {a.dtype}"
        assert torch.equal(a, b), f"{name}: module under autocast differs from the explicit casts"
    return m, x, grad_y, names, got


@pytest.mark.parametrize("device,dtype", AUTOCAST_CASES, ids=AUTOCAST_IDS)
@pytest.mark.parametrize("kwargs", [c[1] for c in MODULE_CASES], ids=[c[0] for c in MODULE_CASES])
def test_module_float32_params_under_autocast(kwargs, device, dtype):
    """SelfAttention2d with float32 parameters under bf16 (CPU; CUDA also fp16) autocast: exactly the
    explicit casts, gradients in float32 on the parameters; and (notebook block) close to the float64
    module.

    Accuracy bound: 0.05 of each tensor's scale, ~6 bf16 eps (~50 fp16 eps): the convolutions, the
    op's inputs and its output are each rounded to bf16 (the worst seen on the CPU over 10 seeds is
    0.017, for grad f.bias); a wrong or missing gradient path is off by O(1). Not graded: grad g.bias,
    whose exact value is 0 (a bias on every key shifts each softmax row by a constant), so it is pure
    rounding noise; and the official variant, whose 2x2 max-pool routes gradients to whichever value
    rounding made largest."""
    m, x, grad_y, names, got = _check_module_under_autocast(kwargs, device, dtype)
    if m.out_conv:
        return
    m64 = copy.deepcopy(m).double()
    oracle = _module_y_and_grads(m64, m64, x.double(), grad_y.double())
    for name, a, e in zip(names, got, oracle):
        if name != "grad_g.bias":
            assert_rel_max_close(a, e, 0.05, name)
