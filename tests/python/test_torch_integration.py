"""torch integration of sagan::self_attn on every available device: opcheck (schema, autograd
registration, fake tensors, AOT dispatch), torch.compile (aot_eager and inductor) forward and backward
against eager, the fused backward kernel in the compiled backward graph, and double backward (WGAN-GP
gradient penalty) against the reference."""
from __future__ import annotations

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._functorch.aot_autograd import aot_module_simplified

from sagan_attn import reference

from op_testing import (
    INPUT_NAMES,
    OP,
    assert_rel_max_close,
    deterministic,
    leaves,
    make_inputs,
    random_grad,
    run_with_grads,
)

OPCHECK_CASES = [
    # (id, dtype, with_x, requires_grad, gamma_shape, sizes (B, Cqk, Cv, Nq, Nk), scale)
    ("f32_x_nograd", torch.float32, True, False, (), (2, 4, 6, 50, 30), 1.0),
    ("f32_nox_grad", torch.float32, False, True, (1,), (2, 4, 6, 50, 30), 0.7),
    ("f32_x_grad_tiles", torch.float32, True, True, (), (1, 3, 5, 70, 130), 1.0),
    ("f64_x_grad", torch.float64, True, True, (1,), (2, 4, 6, 50, 30), 0.5),
    ("f64_nox_nograd", torch.float64, False, False, (), (3, 1, 2, 9, 4), 2.0),
]


@pytest.mark.parametrize(
    "dtype,with_x,requires_grad,gamma_shape,sizes,scale",
    [c[1:] for c in OPCHECK_CASES],
    ids=[c[0] for c in OPCHECK_CASES],
)
def test_opcheck_self_attn(dtype, with_x, requires_grad, gamma_shape, sizes, scale, device):
    inputs = make_inputs(*sizes, dtype, with_x=with_x, gamma_shape=gamma_shape, requires_grad=requires_grad,
                         device=device)
    torch.library.opcheck(OP, (*inputs, scale))  # raises on any failing sub-test


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("with_x", [True, False], ids=["x", "nox"])
def test_opcheck_self_attn_fwd(dtype, with_x, device):
    inputs = make_inputs(2, 4, 6, 50, 30, dtype, with_x=with_x, device=device)
    torch.library.opcheck(torch.ops.sagan.self_attn_fwd, (*inputs, 0.8))


def test_opcheck_self_attn_backward(device):
    inputs = make_inputs(2, 4, 6, 50, 30, torch.float32, with_x=False, device=device)
    _, o, lse = torch.ops.sagan.self_attn_fwd(*inputs, 0.8)
    grad_y = random_grad(o.shape, torch.float32, device=device)
    torch.library.opcheck(
        torch.ops.sagan.self_attn_backward, (grad_y, inputs.f, inputs.g, inputs.h, o, lse, inputs.gamma, 0.8)
    )


# --------------------------------------------------------------------------------------------------
# torch.compile. The model is a small SAGAN-like block (the op between other ops) so the graph has
# something around the custom op. Compiled results are compared with eager ones bitwise where the
# same kernels run (aot_eager; on CUDA under deterministic algorithms, as the default backward sums
# grad_f with atomics) and with the float32 tolerance of op_testing (2e-5 of the scale) under inductor,
# which may fuse/reorder the surrounding elementwise ops.


def block(f, g, h, x, gamma):
    y = OP(torch.tanh(f), g * 0.5, h, x, gamma, 0.9)
    return y * 2.0 + 1.0


BACKENDS = ["aot_eager", "inductor"]  # inductor (default backend) compiles C++ with g++: ~15 s cold


def _exact_or_close(a, b, backend, what):
    if backend == "aot_eager":
        assert torch.equal(a, b), f"{what}: compiled (aot_eager) differs from eager"
    else:
        assert_rel_max_close(a, b, 2e-5, what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_forward_matches_eager(backend, device):
    torch._dynamo.reset()
    inputs = make_inputs(2, 8, 16, 97, 130, torch.float32, seed=40, device=device)
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    with torch.no_grad():
        _exact_or_close(compiled(*inputs), block(*inputs), backend, "y")
    # x = None is a different graph (Optional argument): also fine.
    with torch.no_grad():
        _exact_or_close(compiled(inputs.f, inputs.g, inputs.h, None, inputs.gamma),
                        block(inputs.f, inputs.g, inputs.h, None, inputs.gamma), backend, "y (x=None)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_forward_backward_matches_eager(backend, device):
    torch._dynamo.reset()
    inputs = make_inputs(2, 8, 16, 97, 130, torch.float32, seed=41, device=device)
    grad_y = random_grad((2, 16, 97), torch.float32, device=device)
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    with deterministic(device):
        got = run_with_grads(lambda *a: compiled(*a[:5]), inputs, None, grad_y)
        want = run_with_grads(lambda *a: block(*a[:5]), inputs, None, grad_y)
    for name, a, b in zip(("y",) + INPUT_NAMES, got, want):
        if name == "gamma" and backend == "inductor":
            # grad_gamma = sum over B Cv Nq terms 2 dy o that largely cancel (0.019 from terms ~1):
            # inductor's own tanh moves each o by an ulp or so, independently, so the difference is a
            # root-sum-square of ulp-sized changes of the terms: graded against 8 eps sqrt(sum term^2)
            # (about 3e-5 here, 1.6e-3 of the value), not against the small result itself.
            with torch.no_grad():
                _, o, _ = torch.ops.sagan.self_attn_fwd(torch.tanh(inputs.f), inputs.g * 0.5, inputs.h,
                                                        inputs.x, inputs.gamma, 0.9)
                rss = (2.0 * grad_y.double() * o.double()).square().sum().sqrt().item()
            err = (a.double() - b.double()).abs().max().item()
            tol = 8 * torch.finfo(torch.float32).eps * rss
            assert err <= tol, f"gamma: err {err:.3e} > 8 eps sqrt(sum term^2) = {tol:.3e}"
            continue
        _exact_or_close(a, b, backend, name)


def test_compile_dynamic_shapes_aot_eager(device):
    """The meta kernels use symbolic sizes: one dynamic-shape compilation serves several sizes."""
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True, dynamic=True)
    for sizes in [(2, 8, 16, 97, 130), (1, 8, 16, 65, 33), (3, 8, 16, 200, 50)]:
        inputs = make_inputs(*sizes, torch.float32, seed=sizes[3], device=device)
        grad_y = random_grad((sizes[0], sizes[2], sizes[3]), torch.float32, device=device)
        with deterministic(device):
            got = run_with_grads(lambda *a: compiled(*a[:5]), inputs, None, grad_y)
            want = run_with_grads(lambda *a: block(*a[:5]), inputs, None, grad_y)
        for name, a, b in zip(("y",) + INPUT_NAMES, got, want):
            assert torch.equal(a, b), f"{name} differs at sizes {sizes}"


def test_compiled_backward_uses_fused_kernel(device):
    """AOTAutograd's forward graph must call sagan.self_attn_fwd and its backward graph the fused
    sagan.self_attn_backward, never the composite (materialising) backward: no softmax, no bmm."""
    torch._dynamo.reset()
    graphs = {}

    def backend(gm, example_inputs):
        def capture(kind):
            def compiler(g, _):
                graphs[kind] = [str(n.target) for n in g.graph.nodes if n.op == "call_function"]
                return make_boxed_func(g.forward)
            return compiler
        return aot_module_simplified(gm, example_inputs, fw_compiler=capture("fw"), bw_compiler=capture("bw"))

    inputs = make_inputs(2, 8, 16, 97, 130, torch.float32, seed=42, requires_grad=True, device=device)
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    compiled(*inputs).sum().backward()
    assert all(t.grad is not None for t in inputs)
    assert "sagan.self_attn_fwd.default" in graphs["fw"], graphs["fw"]
    assert "sagan.self_attn_backward.default" in graphs["bw"], graphs["bw"]
    materialising = [t for t in graphs["fw"] + graphs["bw"] if "softmax" in t or "bmm" in t]
    assert not materialising, f"composite attention ops in the compiled graphs: {materialising}"


# --------------------------------------------------------------------------------------------------
# Double backward: the WGAN-GP gradient penalty differentiates the gradients themselves.

GP_CASES = [
    ("x_gamma()", True, (), 0.7, 1.0),
    ("nox_gamma(1,)_scale0.3", False, (1,), 1.3, 0.3),
    ("x_gamma0", True, (), 0.0, 1.0),
]


@pytest.mark.parametrize("with_x,gamma_shape,gamma,scale", [c[1:] for c in GP_CASES], ids=[c[0] for c in GP_CASES])
def test_gradient_penalty_double_backward_matches_reference(with_x, gamma_shape, gamma, scale, device):
    inputs = make_inputs(2, 4, 6, 70, 130, torch.float64, with_x=with_x, gamma=gamma, gamma_shape=gamma_shape, seed=50,
                         device=device)
    # A "critic" weighting of y, so the loss is not just a sum.
    w = random_grad((2, 6, 70), torch.float64, device=device)

    def penalty_grads(fn):
        ins = leaves(inputs)
        y = fn(*ins, scale)
        loss = (y * w).sum() + (y ** 2).sum() * 0.1
        wrt = [t for t in ins if t is not None and t is not ins.gamma]
        grads = torch.autograd.grad(loss, wrt, create_graph=True)
        penalty = sum((gr ** 2).sum() for gr in grads)
        penalty.backward()
        return penalty.detach(), [t.grad if t is not None else None for t in ins]

    p_op, g_op = penalty_grads(OP)
    p_ref, g_ref = penalty_grads(reference.self_attn)
    # float64 through two levels of differentiation (the op's composite double-backward path vs
    # autograd of the reference): same 1e-10-of-scale criterion as the first derivatives.
    assert_rel_max_close(p_op, p_ref, 1e-10, "penalty")
    for name, a, b in zip(INPUT_NAMES, g_op, g_ref):
        if b is None:
            assert a is None
            continue
        assert a is not None, f"penalty gradient of {name} missing"
        assert_rel_max_close(a, b, 1e-10, f"d penalty / d {name}")
    if gamma == 0.0:
        assert g_op[4].abs().item() > 0  # gamma still learns from the penalty at gamma = 0


def test_create_graph_first_derivatives_match_fused(device):
    """With create_graph=True the op takes its composite backward; its first derivatives must equal
    the fused kernel's (up to float64 rounding)."""
    inputs = make_inputs(2, 5, 7, 97, 130, torch.float64, seed=51, device=device)
    grad_y = random_grad((2, 7, 97), torch.float64, device=device)
    fused = run_with_grads(OP, inputs, 0.8, grad_y)
    ins = leaves(inputs)
    y = OP(*ins, 0.8)
    composite = torch.autograd.grad(y, list(ins), grad_y, create_graph=True)
    for name, a, b in zip(INPUT_NAMES, composite, fused[1:]):
        assert_rel_max_close(a.detach(), b, 1e-10, f"grad_{name}")
