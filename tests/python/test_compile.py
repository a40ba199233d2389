"""torch.compile of a SAGAN block (SelfAttention2d around the fused op), on every available device:
fullgraph, dynamic shapes with B and N varying compiled once, no graph breaks (torch._dynamo.explain),
compiled == eager forward and backward, also under autocast.

test_torch_integration.py covers the op alone (opcheck, aot_eager/inductor at one shape, the fused
backward in the compiled graph, a dynamic-shape op block); this file covers the module, compile
counts and explain, inductor with dynamic shapes, and autocast inside a compiled region. The number of
compilations is counted by wrapping the backend: dynamo calls it once per graph it compiles, so a
recompilation for a new shape shows as another call.

Comparisons: aot_eager runs the very kernels eager runs, so its results must be bitwise equal (on CUDA
under deterministic algorithms, op_testing.deterministic: the default backward sums grad_f with
atomics); inductor generates its own code for the convolutions' neighbours (bias adds, views, the
residual), so it gets the float32 criterion of op_testing (2e-5 of each tensor's scale).
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from sagan_attn import SelfAttention2d

from op_testing import OP, assert_rel_max_close, deterministic, make_inputs, random_grad, run_with_grads

# (B, H, W): B and N = H * W all different. Square maps, as GANs use them (dynamo's duck sizing
# unifies H and W when the first call has H == W, so a later non-square map would recompile once);
# no size 1 (dynamo specialises 0 and 1); B < 16 (the fake convolution guards on B < 16 to pick a
# memory format, a torch choice outside this op).
SHAPES = [(2, 8, 8), (3, 6, 6), (5, 12, 12)]
C = 16


class CountingBackend:
    """A torch.compile backend that counts the graphs handed to it and delegates to a real one.

    Dynamo may call it twice for the very first compilation: it traces SelfAttention2d.scale (a
    Python float) as a symbolic float, the op's float argument specialises it, and dynamo restarts
    the analysis once. So the tests count the calls made *after* the first shape: a recompilation for
    a new shape would show up there."""

    def __init__(self, name: str):
        self.name = name
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.calls += 1
        if self.name == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.name)(gm, example_inputs)


def _block(seed=0, device="cpu", **kwargs):
    torch.manual_seed(seed)
    m = SelfAttention2d(C, **kwargs)
    with torch.no_grad():
        m.gamma.fill_(0.6)  # not the initial 0, where y == x whatever the attention does
    return m.to(device)


def _inputs(B, H, W, seed, device="cpu"):
    """x and grad_y, drawn on the CPU (the same values on every device)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=gen).to(device), torch.randn(B, C, H, W, generator=gen).to(device)


def _y_and_grads(fn, m, x, grad_y):
    """{name: tensor} for y and the gradients of <y, grad_y> w.r.t. x and every parameter."""
    x = x.detach().requires_grad_(True)
    y = fn(x)
    names = ["y", "grad_x"] + [f"grad_{n}" for n, _ in m.named_parameters()]
    grads = torch.autograd.grad(y, [x, *m.parameters()], grad_y.to(y.dtype))
    return dict(zip(names, [y.detach(), *grads]))


def _assert_match(got, want, backend, what):
    for name, a in got.items():
        b = want[name]
        assert a.dtype == b.dtype, f"{what} {name}: dtype {a.dtype} != {b.dtype}"
        if backend == "aot_eager":
            assert torch.equal(a, b), f"{what} {name}: compiled (aot_eager) differs from eager"
        elif name == "grad_g.bias":
            # Exactly 0 in exact arithmetic (a bias on every key shifts each softmax row by a
            # constant): rounding noise only, graded against the scale of the g weights' gradient.
            assert torch.isfinite(a).all(), f"{what} {name}: not finite"
            assert (a - b).abs().max() <= 2e-5 * want["grad_g.weight"].abs().max(), f"{what} {name}"
        else:
            assert_rel_max_close(a, b, 2e-5, f"{what} {name}")


def _compile_once(backend_name, fn, m, shapes, compare_backend=None, seed=0, device="cpu"):
    """Compiles fn with fullgraph and dynamic shapes, runs every shape forward and backward against
    eager, and asserts that no shape after the first compiled anything."""
    torch._dynamo.reset()
    counters.clear()
    backend = CountingBackend(backend_name)
    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=True)
    after_first = None
    for B, H, W in shapes:
        x, grad_y = _inputs(B, H, W, seed=seed + B * 100 + H * W, device=device)
        with deterministic(device):
            got = _y_and_grads(compiled, m, x, grad_y)
            want = _y_and_grads(fn, m, x, grad_y)
        _assert_match(got, want, compare_backend or backend_name, f"shape {(B, H, W)}:")
        if after_first is None:
            after_first = backend.calls
    assert backend.calls == after_first, (
        f"{backend.calls - after_first} recompilations for {len(shapes) - 1} new shapes (expected 0)"
    )
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    return got


BLOCKS = [
    ("notebook", dict()),
    ("official", dict(value_channels=8, pool_kv=True, out_conv=True, bias=False)),
]


@pytest.mark.parametrize("kwargs", [b[1] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_dynamic_shapes_compile_once_aot_eager(kwargs, device):
    """fullgraph + dynamic=True: one compilation serves every (B, N), forward and backward, and each
    result equals eager bitwise."""
    m = _block(device=device, **kwargs)
    _compile_once("aot_eager", m, m, SHAPES, device=device)


def test_dynamic_shapes_op_nq_nk_compile_once(device):
    """The op between other ops, B, Nq and Nk all varying independently (Nq != Nk), compiled once."""
    torch._dynamo.reset()
    counters.clear()
    backend = CountingBackend("aot_eager")

    def fn(f, g, h, x, gamma):
        return OP(torch.tanh(f), g, h, x, gamma, 0.7) * 2.0

    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=True)
    after_first = None
    for B, Nq, Nk in [(2, 97, 130), (3, 50, 40), (5, 200, 77)]:  # sizes distinct from Cqk = 4, Cv = 6
        inputs = make_inputs(B, 4, 6, Nq, Nk, torch.float32, seed=Nq, device=device)
        with torch.no_grad():
            assert torch.equal(compiled(*inputs), fn(*inputs)), (B, Nq, Nk)
        if after_first is None:
            after_first = backend.calls
    assert backend.calls == after_first, f"recompiled {backend.calls - after_first} times"
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_automatic_dynamic_recompiles_at_most_once(device):
    """Without dynamic=True (the default: static first, then automatically dynamic) a block that sees
    new shapes recompiles once, never once per shape."""
    torch._dynamo.reset()
    m = _block(device=device)
    backend = CountingBackend("aot_eager")
    compiled = torch.compile(m, backend=backend, fullgraph=True)
    with torch.no_grad():
        for B, H, W in SHAPES + [(5, 9, 9)]:
            x, _ = _inputs(B, H, W, seed=B, device=device)
            assert torch.equal(compiled(x), m(x))
    assert backend.calls <= 2, f"{backend.calls} compilations for {len(SHAPES) + 1} shapes"


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_explain_no_graph_breaks(dynamic, device):
    """torch._dynamo.explain: the block is one graph, no break, with the fused op inside it."""
    torch._dynamo.reset()
    m = _block(device=device)
    x, _ = _inputs(2, 8, 8, seed=1, device=device)
    if dynamic:
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(x, 2)
    explanation = torch._dynamo.explain(m)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    code = "\n".join(g.code for g in explanation.graphs)
    assert "sagan.self_attn" in code, code


def test_explain_no_graph_breaks_op_with_optional_residual(device):
    torch._dynamo.reset()

    def fn(f, g, h, x, gamma):
        y1 = OP(f, g, h, x, gamma, 0.5)
        y2 = OP(f, g, h, None, gamma, 1.0)  # x = None: the optional argument
        return y1 + y2

    gen = torch.Generator().manual_seed(2)
    args = [torch.randn(2, 4, 30, generator=gen), torch.randn(2, 4, 40, generator=gen),
            torch.randn(2, 8, 40, generator=gen), torch.randn(2, 8, 30, generator=gen), torch.tensor(0.5)]
    args = [a.to(device) for a in args]
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_dynamic_shapes_compile_once_inductor_op(device):
    """Inductor (the default backend; C++ code generation on the CPU): the op between elementwise ops,
    forward and backward, compiled once for three (B, Nq, Nk); within the float32 criterion (inductor
    fuses the neighbours its own way)."""
    torch._dynamo.reset()
    counters.clear()
    backend = CountingBackend("inductor")

    def fn(f, g, h, x, gamma):
        return OP(torch.tanh(f), g * 0.5, h, x, gamma, 0.9) * 2.0 + 1.0

    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=True)
    after_first = None
    for B, Nq, Nk in [(2, 97, 130), (3, 50, 40), (5, 200, 77)]:
        inputs = make_inputs(B, 4, 6, Nq, Nk, torch.float32, seed=Nq, device=device)
        grad_y = random_grad((B, 6, Nq), torch.float32, device=device)
        got = run_with_grads(lambda *a: compiled(*a[:5]), inputs, None, grad_y)
        want = run_with_grads(lambda *a: fn(*a[:5]), inputs, None, grad_y)
        for name, a, b in zip(("y", "grad_f", "grad_g", "grad_h", "grad_x", "grad_gamma"), got, want):
            assert_rel_max_close(a, b, 2e-5, f"{(B, Nq, Nk)} {name}")
        if after_first is None:
            after_first = backend.calls
    assert backend.calls == after_first, f"recompiled {backend.calls - after_first} times"


def test_dynamic_shapes_compile_once_inductor_module_forward(device):
    """The whole block under inductor, forward (inference), compiled once for three (B, N).

    Forward only: with gradients, inductor's lowering of the convolutions' backward specialises the
    spatial size (a guard H * W == 64 from torch/_inductor/kernel/conv.py, torch 2.13), so the 1x1
    convs, not this op, recompile a training step per feature-map size under inductor; aot_eager
    (test_dynamic_shapes_compile_once_aot_eager) and the op alone (above) do not."""
    m = _block(device=device)
    torch._dynamo.reset()
    counters.clear()
    backend = CountingBackend("inductor")
    compiled = torch.compile(m, backend=backend, fullgraph=True, dynamic=True)
    after_first = None
    with torch.no_grad():
        for B, H, W in SHAPES:
            x, _ = _inputs(B, H, W, seed=B, device=device)
            assert_rel_max_close(compiled(x), m(x), 2e-5, f"{(B, H, W)} y")
            if after_first is None:
                after_first = backend.calls
    assert backend.calls == after_first, f"recompiled {backend.calls - after_first} times"


def test_compiled_block_under_autocast_matches_eager(device):
    """bf16 autocast inside the compiled region: the op's autocast kernel runs at trace time and
    its casts become graph nodes. Forward equals eager autocast bitwise; gradients within bf16
    rounding (0.4 eps(bf16) of the scale): AOTAutograd may sum the three convolutions' input-gradient
    contributions in another order and dtype than eager autograd (seen on the CPU: 2e-3 of the scale
    for grad_x)."""
    m = _block(device=device)

    def step(x):
        with torch.autocast(device, dtype=torch.bfloat16):
            return m(x)

    torch._dynamo.reset()
    counters.clear()
    backend = CountingBackend("aot_eager")
    compiled = torch.compile(step, backend=backend, fullgraph=True, dynamic=True)
    for B, H, W in SHAPES:
        x, grad_y = _inputs(B, H, W, seed=B, device=device)
        with deterministic(device):
            got, want = _y_and_grads(compiled, m, x, grad_y), _y_and_grads(step, m, x, grad_y)
        assert got["y"].dtype == torch.bfloat16
        assert torch.equal(got["y"], want["y"]), f"{(B, H, W)}: y differs from eager autocast"
        for name in got:
            if name not in ("y", "grad_g.bias"):
                assert got[name].dtype == torch.float32
                assert_rel_max_close(got[name], want[name], 0.4 * torch.finfo(torch.bfloat16).eps,
                                     f"{(B, H, W)}: {name}")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
