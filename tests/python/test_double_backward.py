"""Second derivatives of torch.ops.sagan.self_attn (gradient penalties: R1, WGAN-GP) through the fused
double backward, sagan::self_attn_double_backward (tile by tile, O(N) memory: the CPU kernels, and the
CUDA SIMT kernels).

Oracles: torch.autograd.gradgradcheck (finite differences) in float64 on awkward shapes, and the second
derivatives of the composite reference (sagan_attn.reference, autograd of bmm-softmax-bmm) on larger
ones, in float64 and float32, and bfloat16/float16 under the style rule. Tests that take the `device`
fixture run on the CPU and, where a GPU is visible, on CUDA. A memory test runs an R1-style step at
N = 16384 in a fresh process (CPU).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import sagan_attn
from sagan_attn import reference
from sagan_attn.measure import cpu_memory_env

from conftest import make_inputs
from op_testing import assert_style_rule

OP = torch.ops.sagan.self_attn
DBWD = torch.ops.sagan.self_attn_double_backward


def second_derivatives(fn, inputs, scale, seed=0, round_to=None):
    """d/d(inputs) of L = sum_k <grad_k, w_k>, grad_k the first derivatives (create_graph) of
    <fn(inputs), dy>, with fixed random dy and w_k (drawn on the CPU, rounded to ``round_to`` first if
    given, so that runs in several dtypes differentiate the same L): one vector-Hessian product of
    every input, on the inputs' device."""
    gen = torch.Generator().manual_seed(seed)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    present = [t for t in leaves if t is not None]
    y = fn(*leaves, scale)

    def draw(like):
        r = torch.randn(like.shape, generator=gen, dtype=torch.float64)
        if round_to is not None:
            r = r.to(round_to)
        return r.to(device=like.device, dtype=like.dtype)

    dy = draw(y)
    grads = torch.autograd.grad(y, present, dy, create_graph=True)
    loss = sum((gr * draw(gr)).sum() for gr in grads)
    out = torch.autograd.grad(loss, present, allow_unused=True)
    return [torch.zeros_like(t) if o is None else o for t, o in zip(present, out)]


# (id, B, Cqk, Cv, Nq, Nk, with_x, gamma, scale)
GRADGRAD_CASES = [
    ("Nprime7_Cqk3", 1, 3, 4, 7, 7, True, 0.7, 1.0),
    ("Nk_ne_Nq_Cqk1_B3", 3, 1, 2, 5, 9, False, 0.6, 0.8),
    ("Cqk12_nox", 1, 12, 3, 6, 4, False, -1.2, 0.3),
    ("gamma0_x", 2, 3, 5, 4, 5, True, 0.0, 1.0),
]


@pytest.mark.parametrize("B,Cqk,Cv,Nq,Nk,with_x,gamma,scale", [c[1:] for c in GRADGRAD_CASES],
                         ids=[c[0] for c in GRADGRAD_CASES])
def test_gradgradcheck(B, Cqk, Cv, Nq, Nk, with_x, gamma, scale, device):
    inputs = make_inputs(B, Cqk, Cv, Nq, Nk, torch.float64, with_x=with_x, gamma=gamma, requires_grad=True, seed=3,
                         device=device)
    present = tuple(t for t in inputs if t is not None)

    def fn(*a):
        it = iter(a)
        args = [next(it) if t is not None else None for t in inputs]
        return OP(*args, scale)

    # gradgradcheck runs the backward twice and wants the same result: bitwise on the CPU; on CUDA the
    # first backward (applied to d_dy on the way back) sums grad_f with float64 atomics outside
    # deterministic mode, as in test_op.py's gradgradcheck: 1e-12 there.
    assert torch.autograd.gradgradcheck(fn, present, nondet_tol=0.0 if device == "cpu" else 1e-12)


# Larger, tile-crossing shapes (CPU: query tiles of 64, key tiles of 128; CUDA: 64 x 64 tiles, channel
# chunks of 64 or 128), against the composite reference.
LARGE_CASES = [
    ("N97prime_Cv256", 1, 8, 256, 97, 97, True, 0.7, 1.0),
    ("Nq131_Nk300_Cqk3_B3", 3, 3, 16, 131, 300, False, 1.1, 0.5),
    ("Cqk12_Nq200_Nk70", 2, 12, 24, 200, 70, True, -0.4, 0.25),
    ("Cqk1", 2, 1, 5, 65, 129, True, 0.9, 2.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,Cqk,Cv,Nq,Nk,with_x,gamma,scale", [c[1:] for c in LARGE_CASES],
                         ids=[c[0] for c in LARGE_CASES])
def test_second_derivatives_match_composite_reference(B, Cqk, Cv, Nq, Nk, with_x, gamma, scale, dtype, device):
    inputs = make_inputs(B, Cqk, Cv, Nq, Nk, dtype, with_x=with_x, gamma=gamma, seed=11, device=device)
    got = second_derivatives(OP, inputs, scale)
    want = second_derivatives(reference.self_attn, [None if t is None else t.double() for t in inputs], scale)
    # float64: rounding only. float32: the fused passes sum O(Nk (Cqk + Cv)) float32 products per
    # entry, as the first backward does (2e-5 of the tensor's scale in test_op.py); the second
    # derivative combines three such sums (R, P, Q) before its own products, so 1e-4 of the scale.
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    for k, (a, e) in enumerate(zip(got, want)):
        err = (a.double() - e).abs().max().item()
        top = e.abs().max().item()
        assert err <= rtol * max(top, 1e-30), f"input {k}: max abs err {err:.3e} > {rtol:.0e} * {top:.3e}"


LOW_CASES = [
    ("N97_Cv40", 1, 8, 40, 97, 97, True, 0.7, 1.0),
    ("Nq70_Nk130_Cqk1_B2", 2, 1, 12, 70, 130, False, -0.9, 0.5),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("B,Cqk,Cv,Nq,Nk,with_x,gamma,scale", [c[1:] for c in LOW_CASES],
                         ids=[c[0] for c in LOW_CASES])
def test_second_derivatives_low_precision(B, Cqk, Cv, Nq, Nk, with_x, gamma, scale, dtype, device):
    """bfloat16 / float16 (computed in float32, CPU and CUDA): the style rule against the float64 oracle
    on the same rounded inputs and cotangents, next to the reference's own second derivatives in dtype."""
    inputs = make_inputs(B, Cqk, Cv, Nq, Nk, dtype, with_x=with_x, gamma=gamma, seed=12, device=device)
    got = second_derivatives(OP, inputs, scale, round_to=dtype)
    as64 = [None if t is None else t.double() for t in inputs]
    oracle = second_derivatives(reference.self_attn, as64, scale, round_to=dtype)
    low = second_derivatives(reference.self_attn, inputs, scale, round_to=dtype)
    for k, (a, e, r) in enumerate(zip(got, oracle, low)):
        assert a.dtype == dtype, f"input {k}: dtype {a.dtype}"
        assert_style_rule(a, r, e, dtype, what=f"input {k}")


def test_double_backward_op_equals_reference_formula_and_opcheck(device):
    """The op itself (the fused kernel of the device) against the closed form's autograd, and opcheck."""
    inputs = make_inputs(2, 5, 7, 70, 140, torch.float64, seed=4, device=device)
    f, g, h, x, gamma = inputs
    _, o, lse = torch.ops.sagan.self_attn_fwd(f, g, h, x, gamma, 0.9)
    gen = torch.Generator().manual_seed(5)
    rnd = lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device)
    dy = rnd(o)
    uf, ug, uh = rnd(f), rnd(g), rnd(h)
    ugamma = torch.tensor(0.3, dtype=torch.float64, device=device)
    args = (uf, ug, uh, ugamma, dy, f, g, h, o, lse, gamma, 0.9)
    got = DBWD(*args)
    leaves = [t.clone().requires_grad_() for t in (dy, f, g, h, gamma)]
    first = torch.autograd.grad(reference.self_attn(*leaves[1:4], None, leaves[4], 0.9), leaves[1:], leaves[0],
                                create_graph=True)
    loss = sum((a * u).sum() for a, u in zip(first, (uf, ug, uh, ugamma)))
    want = torch.autograd.grad(loss, leaves)
    for k, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11, msg=f"output {k}")
    torch.library.opcheck(DBWD, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_double_backward_op_is_bitwise_reproducible(dtype, device):
    """Two calls of the op give bitwise equal results outside deterministic mode too: every output
    element is summed in a fixed order (CPU: work split by shape only; CUDA: one block per element, no
    atomics, d_gamma by one block)."""
    f, g, h, x, gamma = make_inputs(2, 8, 72, 97, 150, dtype, seed=13, device=device)
    _, o, lse = torch.ops.sagan.self_attn_fwd(f, g, h, x, gamma, 0.8)
    gen = torch.Generator().manual_seed(14)
    rnd = lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    args = (rnd(f), rnd(g), rnd(h), torch.tensor(0.4, dtype=dtype, device=device), rnd(o), f, g, h, o, lse,
            gamma, 0.8)
    first, second = DBWD(*args), DBWD(*args)
    for k, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"output {k}: max abs diff {(a.double() - b.double()).abs().max():.3e}"


def test_first_backward_under_create_graph_is_fused_and_equal():
    """With create_graph=True the first derivatives come from the fused backward (not the composite):
    bitwise the same as without create_graph."""
    inputs = make_inputs(2, 8, 16, 97, 130, torch.float32, seed=6)
    dy = torch.randn(2, 16, 97)
    a = [t.clone().requires_grad_() for t in inputs]
    g1 = torch.autograd.grad(OP(*a, 1.0), a, dy)
    b = [t.clone().requires_grad_() for t in inputs]
    g2 = torch.autograd.grad(OP(*b, 1.0), b, dy, create_graph=True)
    for u, v in zip(g1, g2):
        assert torch.equal(u, v.detach())


def test_third_derivative_falls_back_to_composite():
    """A third derivative works (the composite closed form is differentiable): gradgradcheck of the
    gradient's gradient, on a tiny float64 case."""
    inputs = make_inputs(1, 2, 3, 4, 5, torch.float64, requires_grad=True, seed=8)

    def first_grads(f, g, h, x, gamma):
        y = OP(f, g, h, x, gamma, 0.7)
        return torch.autograd.grad((y * y).sum(), (f, g, h, gamma), create_graph=True)

    assert torch.autograd.gradgradcheck(first_grads, tuple(inputs))


def test_penalties_of_the_sagan_discriminator_match_the_notebook():
    """R1 and WGAN-GP penalties of the SAGAN discriminator: D-parameter gradients through the fused
    double backward equal the notebook (bmm) discriminator's, in float64."""
    from sagan_attn.models import Discriminator
    from sagan_attn.models.losses import r1_penalty, gradient_penalty

    torch.manual_seed(0)
    kwargs = dict(resolution=32, ch=8, num_classes=0)
    d_fused = Discriminator(**kwargs, attention="fused").double()
    d_book = Discriminator(**kwargs, attention="notebook").double()
    d_book.load_state_dict(d_fused.state_dict())
    for m in list(d_fused.modules()) + list(d_book.modules()):
        if hasattr(m, "gamma") and isinstance(m.gamma, torch.nn.Parameter):
            with torch.no_grad():
                m.gamma.fill_(0.8)  # gamma = 0 (SAGAN's start) would hide the attention's terms
    real = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    fake = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    eps = torch.rand(3, dtype=torch.float64)
    for name, penalty in [("r1", lambda d: r1_penalty(d, real)),
                          ("wgan-gp", lambda d: gradient_penalty(d, real, fake, eps=eps))]:
        d_fused.zero_grad()
        d_book.zero_grad()
        penalty(d_fused).backward()
        penalty(d_book).backward()
        for (n, pa), (_, pb) in zip(d_fused.named_parameters(), d_book.named_parameters()):
            if pb.grad is None:
                assert pa.grad is None or not pa.grad.any(), f"{name}: {n}"
                continue
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-12, msg=f"{name}: {n}")


MEMORY_SCRIPT = textwrap.dedent(
    r"""
    import json, sys
    import torch
    import sagan_attn
    from sagan_attn.measure import cpu_peak_bytes  # the package's one CPU peak-memory meter

    N, B, Cqk, Cv = int(sys.argv[1]), 1, 8, 64
    op = torch.ops.sagan.self_attn
    state = {}

    def r1_step(n, seed):
        gen = torch.Generator().manual_seed(seed)
        mk = lambda *s: torch.randn(*s, generator=gen).requires_grad_(True)
        f, g, h, x = mk(B, Cqk, n), mk(B, Cqk, n), mk(B, Cv, n), mk(B, Cv, n)
        gamma = torch.tensor(0.5, requires_grad=True)
        y = op(f, g, h, x, gamma, 1.0)
        grads = torch.autograd.grad(y.square().sum(), (f, g, h, x), create_graph=True)
        penalty = sum(gr.square().sum() for gr in grads)
        penalty.backward()
        state["value"] = float(penalty)

    r1_step(300, 0)  # warm-up
    control = cpu_peak_bytes(lambda: torch.ones(64, 1024, 1024))  # the meter must see 256 MiB
    growth = cpu_peak_bytes(lambda: r1_step(N, 1))
    print(json.dumps({"growth": growth, "control": control, "finite": state["value"] == state["value"]}))
    """
)


def test_r1_step_memory_is_linear_at_n16384():
    """An R1-style step (forward, first backward with create_graph, penalty backward) at N = 16384
    stays under 10% of one N x N float32 map (1 GiB): the composite path would hold several."""
    n = 16384
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n)], capture_output=True, text=True,
                         timeout=600, env=cpu_memory_env())
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["control"] >= 200 * 2**20, f"the meter did not see a 256 MiB block: {res}"
    assert res["finite"]
    budget = 0.10 * n * n * 4
    assert res["growth"] < budget, f"R1 step grew {res['growth'] / 2**20:.0f} MiB > {budget / 2**20:.0f} MiB"


def test_double_backward_bitwise_for_any_thread_count(restore_threads):
    inputs = make_inputs(2, 8, 16, 150, 270, torch.float32, seed=9)
    results = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        results.append(second_derivatives(OP, inputs, 1.0))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_compiled_penalty_step_matches_eager_or_refuses_clearly():
    """torch.compile of a penalty step (double backward inside the compiled region): either it runs
    and matches eager, or torch refuses with its own error; never a silently different gradient."""
    inputs = make_inputs(1, 4, 8, 40, 50, torch.float32, seed=10)

    def step(f, g, h, x, gamma):
        y = OP(f, g, h, x, gamma, 1.0)
        grads = torch.autograd.grad(y.square().sum(), (f, g, h), create_graph=True)
        return sum(gr.square().sum() for gr in grads)

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        loss = fn(*leaves)
        return [loss.detach()] + list(torch.autograd.grad(loss, leaves))

    eager = run(step)
    torch._dynamo.reset()
    try:
        compiled = run(torch.compile(step, backend="aot_eager"))
    except Exception as err:  # torch's own refusal of double backward in a compiled graph
        assert "double backward" in str(err), str(err)
        return
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
