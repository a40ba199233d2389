"""Tests of SelfAttention2d (python/sagan_attn/modules.py), forward and backward on every available
device, and of the demo's command line.

The oracles: the notebook module (../shared/spec/notebook_self_attn.py, imported by path, the module we
must be a drop-in for) and, for the options the notebook lacks, a plain-PyTorch composition of the
module's own convolutions with sagan_attn.reference (the notebook's math: bmm, softmax, bmm).
"""
from __future__ import annotations

import copy
import importlib.util
import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import sagan_attn
from sagan_attn import SelfAttention2d, reference

SPEC_DIR = Path(__file__).resolve().parents[3] / "shared" / "spec"
NOTEBOOK_PATH = SPEC_DIR / "notebook_self_attn.py"

# float64: inputs O(1), sums over at most a few hundred keys, so the fused op and the bmm reference differ
# by a few hundred ulps at most (~1e-13); 1e-10 leaves margin and still catches any real error (a wrong
# index, a missing term or a wrong scale is O(1e-3) or more at these sizes).
TOL64 = dict(atol=1e-10, rtol=1e-10)


@pytest.fixture(scope="module")
def notebook_cls():
    if not NOTEBOOK_PATH.exists():
        pytest.skip(f"the notebook spec module is not at {NOTEBOOK_PATH} (../shared/spec, outside the repo)")
    spec = importlib.util.spec_from_file_location("notebook_self_attn", NOTEBOOK_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.self_attn


def _randn(*shape, dtype=torch.float64, seed=0, device="cpu"):
    """Seeded normal values, drawn on the CPU (the same on every device)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def _notebook_and_ours(notebook_cls, channels, attn_channels, dtype, device="cpu"):
    torch.manual_seed(0)
    nb = notebook_cls(channels, attn_channels)
    with torch.no_grad():
        nb.gamma.fill_(0.5)  # non-zero: with the init value 0, y == x whatever the attention does
    nb = nb.to(device, dtype)
    ours = SelfAttention2d(channels, attn_channels).to(device, dtype)
    ours.load_state_dict(nb.state_dict(), strict=True)
    return nb, ours


def _y_and_grads_of(fn, params, x, grad_y):
    """y = fn(x) (the first output if a tuple) and the gradients of <y, grad_y> w.r.t. x and params."""
    x = x.detach().requires_grad_(True)
    out = fn(x)
    y = out[0] if isinstance(out, tuple) else out
    return y.detach(), torch.autograd.grad(y, [x, *params], grad_y)


def _y_and_grads(module, x, grad_y):
    """As _y_and_grads_of, for every parameter of module in named_parameters order."""
    return _y_and_grads_of(module, [p for _, p in module.named_parameters()], x, grad_y)


# -- drop-in for the notebook ---------------------------------------------------------------------------


def test_parameters_match_the_notebook(notebook_cls):
    nb = notebook_cls(32, 4)
    ours = SelfAttention2d(32, 4)
    assert {k: v.shape for k, v in nb.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert ours.gamma.detach().tolist() == [0.0]
    assert SelfAttention2d(64).attn_channels == 8  # default in_channels // 8, as the paper
    assert SelfAttention2d(4).attn_channels == 1  # ... but at least 1


def test_notebook_state_dict_loads_and_y_matches_float64(notebook_cls, device):
    nb, ours = _notebook_and_ours(notebook_cls, 16, 2, torch.float64, device)
    assert ours.gamma.detach().tolist() == [0.5]
    x, grad_y = _randn(2, 16, 6, 10, device=device), _randn(2, 16, 6, 10, seed=1, device=device)
    y_nb, grads_nb = _y_and_grads(nb, x, grad_y)
    y, grads = _y_and_grads(ours, x, grad_y)
    torch.testing.assert_close(y, y_nb, **TOL64)
    assert (y - x).abs().max() > 1e-2  # the attention branch contributes, so the match is not just y == x
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    assert names[1:] == [n for n, _ in nb.named_parameters()]
    for name, g, g_nb in zip(names, grads, grads_nb):
        torch.testing.assert_close(g, g_nb, **TOL64, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_notebook_state_dict_loads_and_y_matches_float32(notebook_cls, device):
    # House rule (STYLE.md, as flash-attention): in float32 our error against the float64 oracle must be
    # at most 2x the notebook's own float32 error, plus a floor of a few ulps of the largest value.
    nb32, ours32 = _notebook_and_ours(notebook_cls, 16, 2, torch.float32, device)
    nb64, _ = _notebook_and_ours(notebook_cls, 16, 2, torch.float64, device)
    # Inputs drawn in float32 and widened for the oracle: all three see the same values (and the same
    # weights: nb64 is nb32's float32 init widened), so the rounding of x does not mask the computation's.
    x, grad_y = (_randn(2, 16, 8, 12, dtype=torch.float32, seed=seed, device=device) for seed in (0, 1))
    y64, grads64 = _y_and_grads(nb64, x.double(), grad_y.double())
    y_nb, grads_nb = _y_and_grads(nb32, x, grad_y)
    y, grads = _y_and_grads(ours32, x, grad_y)
    eps = torch.finfo(torch.float32).eps
    for name, ours_t, nb_t, ref_t in [("y", y, y_nb, y64)] + [
        (f"grad {i}", a, b, c) for i, (a, b, c) in enumerate(zip(grads, grads_nb, grads64))
    ]:
        err = (ours_t.double() - ref_t).abs().max().item()
        nb_err = (nb_t.double() - ref_t).abs().max().item()
        # inputs and weights are O(1), so values of O(1) enter every sum: the floor is a few float32 ulps of
        # max(1, |ref|)
        floor = 4 * eps * max(1.0, ref_t.abs().max().item())
        if ref_t.abs().max().item() < 1e-9:
            # 0 analytically (g.bias's: the softmax ignores a constant added to a query's scores), so both
            # values are pure rounding noise of a sum over B N = 192 positions of O(1) terms, about
            # sqrt(192) = 14 ulps for a random walk. The notebook's softmax backward subtracts sum_j p dp from
            # its own p dp and cancels closer (3 ulps); ours subtracts D = sum_c dy o, as FlashAttention
            # does: 6 ulps in the baseline build, 11 with AVX2's fused multiply-adds.
            floor = 16 * eps
        assert err <= 2 * nb_err + floor, f"{name}: fused error {err:.3g}, notebook float32 error {nb_err:.3g}"


def test_return_attention_matches_the_notebook_map_and_warns(notebook_cls, device):
    nb, ours = _notebook_and_ours(notebook_cls, 8, 2, torch.float64, device)
    x = _randn(2, 8, 32, 32, device=device)
    y_nb, map_nb = nb(x)
    with pytest.warns(UserWarning, match="attention map") as record:
        y, beta = ours(x, return_attention=True)
    message = str(record[0].message)
    # B * N * Nk * 8 bytes = 2 * 1024 * 1024 * 8 = 16 MiB
    assert "(2, 1024, 1024)" in message and "16.0 MiB" in message, message
    assert beta.shape == map_nb.shape == (2, 1024, 1024)
    torch.testing.assert_close(beta, map_nb, **TOL64)
    torch.testing.assert_close(y, y_nb, **TOL64)
    torch.testing.assert_close(y, ours(x), **TOL64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without return_attention
        ours(x)


def test_demo_baseline_is_the_notebook(notebook_cls):
    # The demo times a copy of the notebook built on sagan_attn.reference; it must be the same module.
    from sagan_attn.baseline import NotebookSelfAttention

    nb, _ = _notebook_and_ours(notebook_cls, 16, 2, torch.float64)
    baseline = NotebookSelfAttention(16, 2).double()
    baseline.load_state_dict(nb.state_dict(), strict=True)
    x = _randn(2, 16, 6, 7)
    for a, b in zip(baseline(x), nb(x)):
        torch.testing.assert_close(a, b, **TOL64)


# -- attention rows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool_kv", [False, True], ids=["full", "pooled"])
def test_attention_rows_are_rows_of_the_full_map(pool_kv, device):
    torch.manual_seed(0)
    m = SelfAttention2d(16, 4, pool_kv=pool_kv, scale=0.7).to(device, torch.float64)
    height, width = 6, 10  # not square, so a row/col mix-up shows
    x = _randn(2, 16, height, width, device=device)
    with pytest.warns(UserWarning):
        _, full = m(x, return_attention=True)
    key_grid = (3, 5) if pool_kv else (6, 10)
    assert full.shape == (2, height * width, key_grid[0] * key_grid[1])

    positions = [(0, 0), (5, 9), (2, 7), (3, 1), (2, 7)]
    flat = torch.tensor([r * width + c for r, c in positions])
    rows = m.attention_rows(x, positions)
    assert rows.shape == (2, len(positions), *key_grid)
    torch.testing.assert_close(rows, full[:, flat].reshape(2, len(positions), *key_grid), **TOL64)
    torch.testing.assert_close(m.attention_rows(x, flat), rows, **TOL64)
    ones = torch.ones(2, len(positions), dtype=torch.float64, device=device)
    torch.testing.assert_close(rows.sum(dim=(2, 3)), ones, **TOL64)


def test_attention_rows_match_the_notebook_map(notebook_cls, device):
    _, ours = _notebook_and_ours(notebook_cls, 16, 2, torch.float64, device)
    nb, _ = _notebook_and_ours(notebook_cls, 16, 2, torch.float64, device)
    x = _randn(1, 16, 5, 9, device=device)
    _, map_nb = nb(x)
    rows = ours.attention_rows(x, [(4, 8), (1, 3)])
    torch.testing.assert_close(rows[0, 0].flatten(), map_nb[0, 4 * 9 + 8], **TOL64)
    torch.testing.assert_close(rows[0, 1].flatten(), map_nb[0, 1 * 9 + 3], **TOL64)


# -- every option against a plain-PyTorch composition -------------------------------------------------


def _composed(m, x):
    """The block from m's own convolutions and sagan_attn.reference, pooling written independently."""
    batch, _, height, width = x.shape
    f = m.f(x).flatten(2)
    g, h = m.g(x), m.h(x)
    if m.pool_kv:
        g = g.unflatten(2, (height // 2, 2)).unflatten(4, (width // 2, 2)).amax(dim=(3, 5))
        h = h.unflatten(2, (height // 2, 2)).unflatten(4, (width // 2, 2)).amax(dim=(3, 5))
    ones = torch.ones(1, dtype=x.dtype, device=x.device)
    o = reference.self_attn(f, g.flatten(2), h.flatten(2), None, ones, m.scale).view(batch, -1, height, width)
    if m.o is not None:
        o = m.o(o)
    return m.gamma * o + x


OPTIONS = list(
    itertools.product(
        [False, True],  # pool_kv
        [(None, False), (None, True), ("half", True)],  # (value_channels, out_conv)
        [False, True],  # spectral_norm
        [True, False],  # bias
        [1.0, 0.3],  # scale
    )
)


@pytest.mark.parametrize(
    "pool_kv,values,spectral_norm,bias,scale",
    OPTIONS,
    ids=[f"pool{int(p)}-v{v[0] or 'C'}-o{int(v[1])}-sn{int(s)}-b{int(b)}-s{sc}" for p, v, s, b, sc in OPTIONS],
)
def test_options_match_composition(pool_kv, values, spectral_norm, bias, scale, device):
    channels = 8
    value_channels, out_conv = values
    torch.manual_seed(0)
    m = SelfAttention2d(
        channels,
        2,
        value_channels=channels // 2 if value_channels == "half" else None,
        pool_kv=pool_kv,
        out_conv=out_conv,
        spectral_norm=spectral_norm,
        bias=bias,
        scale=scale,
    ).to(device, torch.float64)
    with torch.no_grad():
        m.gamma.fill_(0.5)
    x, grad_y = _randn(2, channels, 4, 6, device=device), _randn(2, channels, 4, 6, seed=1, device=device)

    m.train()  # a training step runs (spectral norm's power iteration included) and reaches every parameter
    y_train, grads_train = _y_and_grads(m, x, grad_y)
    assert y_train.shape == x.shape
    for (name, _), grad in zip(m.named_parameters(), grads_train[1:]):
        assert grad.abs().max() > 0, f"no gradient reaches {name}"

    m.eval()  # spectral norm then uses its stored vectors, so both sides see the same weights
    params = [p for _, p in m.named_parameters()]
    y, grads = _y_and_grads_of(m, params, x, grad_y)
    y_ref, grads_ref = _y_and_grads_of(lambda t: _composed(m, t), params, x, grad_y)
    torch.testing.assert_close(y, y_ref, **TOL64)
    assert (y - x).abs().max() > 1e-3
    for (name, _), g, g_ref in zip([("x", None), *m.named_parameters()], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **TOL64, msg=lambda msg, name=name: f"grad of {name}: {msg}")


def test_official_variant_state_dict_round_trip(device):
    torch.manual_seed(0)
    kwargs = dict(value_channels=16, pool_kv=True, out_conv=True, spectral_norm=True, bias=False)
    a = SelfAttention2d(32, 4, **kwargs).to(device, torch.float64)
    with torch.no_grad():
        a.gamma.fill_(0.25)
    a.train()
    a(_randn(1, 32, 4, 4, device=device))  # one power iteration, so the stored vectors are not the init ones
    keys = set(a.state_dict())
    assert "f.parametrizations.weight.original" in keys and "o.parametrizations.weight.0._u" in keys
    assert not any(k.endswith(".bias") for k in keys)
    torch.manual_seed(1)
    b = SelfAttention2d(32, 4, **kwargs).to(device, torch.float64)
    b.load_state_dict(a.state_dict(), strict=True)
    a.eval(), b.eval()
    x = _randn(2, 32, 6, 8, device=device)
    torch.testing.assert_close(b(x), a(x), **TOL64)
    text = repr(a)
    for item in ("in_channels=32", "attn_channels=4", "value_channels=16", "pool_kv=True", "out_conv=True",
                 "spectral_norm=True", "bias=False", "scale=1.0"):
        assert item in text, text


# -- errors -----------------------------------------------------------------------------------------------


def test_errors_in_construction():
    with pytest.raises(ValueError, match="out_conv=True"):
        SelfAttention2d(16, value_channels=8)
    with pytest.raises(ValueError, match="attn_channels"):
        SelfAttention2d(16, 0)
    with pytest.raises(ValueError, match="in_channels"):
        SelfAttention2d(0)


def test_errors_in_forward(device):
    m = SelfAttention2d(8, 2, pool_kv=True).to(device)
    with pytest.raises(ValueError, match="even"):
        m(torch.randn(1, 8, 5, 6, device=device))
    with pytest.raises(ValueError, match="even"):
        m(torch.randn(1, 8, 6, 7, device=device))
    with pytest.raises(ValueError, match="even"):
        m.attention_rows(torch.randn(1, 8, 5, 6, device=device), [(0, 0)])
    with pytest.raises(ValueError, match=r"C = in_channels = 8"):
        m(torch.randn(1, 4, 6, 6, device=device))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(torch.randn(8, 6, 6, device=device))


@pytest.mark.parametrize(
    "positions,error,match",
    [
        (torch.tensor([0, 24]), IndexError, r"\[0, 24\)"),  # N = 4 * 6 = 24
        (torch.tensor([-1]), IndexError, r"\[0, 24\)"),
        ([(4, 0)], IndexError, "outside"),
        ([(0, 6)], IndexError, "outside"),
        ([(0, -1)], IndexError, "outside"),
        (torch.tensor([[0, 1]]), ValueError, "1-D"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer"),
        ([(1, 2, 3)], ValueError, r"\(row, col\)"),
        ([5], ValueError, r"\(row, col\)"),
        ([(1.0, 2)], ValueError, r"\(row, col\)"),
        (7, ValueError, r"\(row, col\)"),
    ],
)
def test_bad_query_positions(positions, error, match, device):
    m = SelfAttention2d(8, 2).to(device)
    with pytest.raises(error, match=match):
        m.attention_rows(torch.randn(1, 8, 4, 6, device=device), positions)


# -- torch.compile ----------------------------------------------------------------------------------------


OFFICIAL = dict(value_channels=4, pool_kv=True, out_conv=True, spectral_norm=True, bias=False)


@pytest.mark.parametrize(
    "kwargs,train",
    [({}, False), (OFFICIAL, False), (OFFICIAL, True)],
    ids=["notebook", "official-eval", "official-train"],
)
def test_torch_compile_fullgraph(kwargs, train, device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = SelfAttention2d(8, 2, **kwargs).to(device, torch.float64).train(train)
    with torch.no_grad():
        m.gamma.fill_(0.5)
    eager = copy.deepcopy(m)  # in training mode each forward updates spectral norm's vectors: one copy each
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x, grad_y = _randn(2, 8, 4, 6, device=device), _randn(2, 8, 4, 6, seed=1, device=device)
    for _ in range(2):
        y, grads = _y_and_grads_of(compiled, list(m.parameters()), x, grad_y)
        y_eager, grads_eager = _y_and_grads_of(eager, list(eager.parameters()), x, grad_y)
        torch.testing.assert_close(y, y_eager, **TOL64)
        for g, g_eager in zip(grads, grads_eager):
            torch.testing.assert_close(g, g_eager, **TOL64)
        for (name, buf), buf_eager in zip(m.named_buffers(), eager.buffers()):
            torch.testing.assert_close(buf, buf_eager, **TOL64, msg=lambda msg, name=name: f"{name}: {msg}")


# -- the command line -------------------------------------------------------------------------------------


def _run_cli(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "sagan_attn", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_info():
    proc = _run_cli("--info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for heading in ("sagan_attn build info", "version:", "cuda_archs:", "cpu_isa:", "runtime", "device:"):
        assert heading in out, out
    assert sagan_attn.__version__ in out and torch.__version__ in out


def test_cli_quick_demo():
    proc = _run_cli("--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for heading in ("accuracy at 16x16", "y (module)", "dL/d(f, g, h) (op)", "time: median ms", "peak memory:",
                    "verdict: PASS", "16x16", "24x24"):
        assert heading in out, out
    assert "FAIL" not in out and "worker failed" not in out, out
