"""Tests of sagan_attn.patch / unpatch (python/sagan_attn/patch.py) on stand-ins of each codebase's block.

The oracle is the block's own bmm forward (tests/python/codebase_blocks.py): a patched copy must give
the same y, dL/dx and dL/dparameter for every parameter, and move its spectral-norm state the same way,
in train and eval mode, in float64 and float32.
"""
from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch

import sagan_attn
from sagan_attn import patch, unpatch
from sagan_attn.patch import AttentionMap, is_patched

import codebase_blocks as cb
from codebase_blocks import TOL, assert_close as _assert_close  # noqa: F401  (TOL: see codebase_blocks)


def _run(block, x, grad_y, *args):
    x = x.detach().clone().requires_grad_(True)
    out = block(x, *args)
    y = out[0] if isinstance(out, tuple) else out
    params = [p for _, p in block.named_parameters()]
    grads = torch.autograd.grad(y, [x, *params], grad_y)
    return y.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", sorted(cb.BLOCKS))
def test_patched_block_matches_its_own_forward_and_gradients(kind, dtype):
    block = cb.make_block(kind, 16, dtype)
    patched = copy.deepcopy(block)
    report = patch(patched)
    assert report.patched == [("", cb.LAYOUT_OF[kind])], str(report)
    assert isinstance(patched, type(block)) and is_patched(patched)
    assert patched.state_dict().keys() == block.state_dict().keys()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 8, 6, generator=gen, dtype=torch.float64).to(dtype)
    for mode in ("train", "eval", "train"):  # the second train step starts from the updated SN state
        block.train(mode == "train")
        patched.train(mode == "train")
        grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
        y0, g0 = _run(block, x, grad_y)
        y1, g1 = _run(patched, x, grad_y)
        _assert_close(y1, y0, dtype, f"{kind} {mode} y")
        names = ["x"] + [n for n, _ in block.named_parameters()]
        assert len(g0) == len(g1) == len(names)
        for name, a, b in zip(names, g1, g0):
            _assert_close(a, b, dtype, f"{kind} {mode} d{name}")
        for (name, b0), (_, b1) in zip(block.named_buffers(), patched.named_buffers()):
            _assert_close(b1, b0, dtype, f"{kind} {mode} buffer {name}")


def test_biggan_block_keeps_its_call_with_labels():
    block = cb.make_block("biggan")
    patch(block)
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    y = block(x, torch.randn(2, 8, dtype=torch.float64))  # BigGAN-PyTorch: block(h, y)
    assert y.shape == x.shape


def test_sagan_block_returns_a_lazy_attention_map():
    block = cb.make_block("sagan")
    ref = copy.deepcopy(block)
    patch(block)
    x = torch.randn(2, 16, 6, 4, dtype=torch.float64)
    out, p1 = block(x)  # B = 2: still the (out, attention) pair, not the batch unpacked
    assert out.shape == x.shape
    assert isinstance(p1, AttentionMap) and p1._value is None, "the map was built before anyone used it"
    assert p1.shape == (2, 24, 24)
    _, beta = ref(x)
    assert p1._value is None
    torch.testing.assert_close(p1.detach(), beta.detach(), atol=1e-12, rtol=1e-12)
    assert p1._value is not None
    assert p1[0].sum(-1).sub(1).abs().max() < 1e-12  # rows are distributions over the keys
    assert p1.numpy().shape == (2, 24, 24)


def test_unsupported_math_is_reported_and_left_alone():
    block = cb.QuerySoftmaxSelfAttn(16, "relu").double()
    with pytest.warns(UserWarning, match="softmax over the keys"):
        report = patch(block)
    assert report.patched == [] and not is_patched(block)
    assert "differs from the fused op" in report.skipped[0][1]
    with pytest.raises(ValueError, match="left unpatched"):
        patch(block, strict=True)


def test_unknown_attention_like_modules_are_reported():
    model = torch.nn.Sequential(cb.UnknownAttention(16), cb.NotebookAttn(16, 2))
    with pytest.warns(UserWarning, match="UnknownAttention|0:"):
        report = patch(model)
    assert report.patched == [("1", "notebook")]
    assert [name for name, _ in report.skipped] == ["0"]


def test_unpatch_pickle_and_deepcopy():
    block = cb.make_block("studiogan")
    original_cls = type(block)
    patch(block)
    assert type(block) is not original_cls and isinstance(block, original_cls)
    assert is_patched(copy.deepcopy(block)), "deepcopy (EMA copies of G) must keep the patch"
    buf = io.BytesIO()
    torch.save(block, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is original_cls, "a pickled patched block loads as the original class"
    assert type(pickle.loads(pickle.dumps(block))) is original_cls
    again = patch(block)
    assert again.patched == [] and again.skipped == [("", "already patched")]
    assert unpatch(block) == [""] and type(block) is original_cls


def test_our_own_module_is_not_patched():
    report = patch(torch.nn.Sequential(sagan_attn.SelfAttention2d(16)))
    assert report.patched == [] and report.skipped == []


# -- whole toy models of each style ----------------------------------------------------------------------


def _model_case(style):
    c = 16
    gen = torch.Generator().manual_seed(3)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    if style == "biggan":
        return cb.BigGANStyleG(c), (rnd(2, c, 6, 6), rnd(2, c))
    if style == "studiogan":
        return cb.StudioGANStyleG(c), (rnd(2, c, 6, 6), rnd(2, c))
    if style == "sagan":
        return cb.SaganStyleG(c), (rnd(2, c, 5, 6),)
    if style == "mimicry":
        return cb.MimicryStyleD(c), (rnd(2, c, 6, 4),)
    return cb.NotebookStyleModel(c), (rnd(2, c, 5, 5),)


@pytest.mark.parametrize("style", ["biggan", "studiogan", "sagan", "mimicry", "notebook"])
def test_whole_toy_model_of_each_style(style):
    torch.manual_seed(0)
    model, inputs = _model_case(style)
    model = cb.set_gammas(model.double())
    patched = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every attention block must be recognised
        report = patch(patched)
    n_attn = 2 if style == "sagan" else 1
    assert len(report.patched) == n_attn and not report.skipped, str(report)
    for mode in (True, False):
        model.train(mode)
        patched.train(mode)
        outs = [m(*inputs) for m in (model, patched)]
        ys = [o[0] if isinstance(o, tuple) else o for o in outs]
        _assert_close(ys[1], ys[0], torch.float64, f"{style} y")
        grads = [torch.autograd.grad(y.sum(), list(m.parameters())) for y, m in zip(ys, (model, patched))]
        for (name, _), a, b in zip(model.named_parameters(), grads[1], grads[0]):
            _assert_close(a, b, torch.float64, f"{style} d{name}")
        if style == "sagan":
            _assert_close(outs[1][1].materialize(), outs[0][1].detach(), torch.float64, "p1")
    assert unpatch(patched) == [name for name, _ in report.patched]
