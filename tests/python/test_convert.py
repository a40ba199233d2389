"""Tests of sagan_attn.convert and SelfAttention2d.from_module / export_state_dict, and of the module's
call safety, spectral-norm options and odd-size pooling (python/sagan_attn/convert.py, modules.py).

Oracle: the foreign block itself (tests/python/codebase_blocks.py, bmm math and its own spectral norm):
the converted SelfAttention2d must give the same y, dL/dx and parameter gradients in train and eval mode,
step after step (so the spectral-norm state must move as the source's does).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import sagan_attn
from sagan_attn import SelfAttention2d, convert
from sagan_attn.models.layers import BmmSelfAttention2d

import codebase_blocks as cb
from codebase_blocks import TOL, assert_close as _assert_close  # noqa: F401

# Our role -> the foreign parameter path of each layout: the gradients are compared by role.
ROLE_OF = {
    layout: {name: role for role, name in convert.LAYOUTS[layout].conv_names().items()}
    for layout in convert.LAYOUTS
}


def _param_grads_by_role(module, layout, grads, ours):
    """{role.kind: grad}: kind 'weight' (the raw weight, before spectral norm), 'bias' or 'gamma'."""
    out = {}
    for (name, _), g in zip(module.named_parameters(), grads):
        parts = name.split(".")
        if ours:
            key = "gamma" if parts[0] == "gamma" else f"{parts[0]}.{'bias' if parts[-1] == 'bias' else 'weight'}"
        elif parts[0] == convert.LAYOUTS[layout].gamma:
            key = "gamma"
        else:
            key = f"{ROLE_OF[layout][parts[0]]}.{'bias' if parts[-1] == 'bias' else 'weight'}"
        out[key] = g.reshape(-1)
    return out


def _y_grads(module, x, grad_y):
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    y = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(y, [x, *module.parameters()], grad_y)
    return y.detach(), grads[0], grads[1:]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", sorted(cb.BLOCKS))
def test_from_module_matches_the_block_in_train_and_eval(kind, dtype):
    layout = cb.LAYOUT_OF[kind]
    block = cb.make_block(kind, 16, dtype)
    ours = SelfAttention2d.from_module(block)
    assert ours.pool_kv == convert.LAYOUTS[layout].pool_kv and ours.gamma.dtype == dtype
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 6, 8, generator=gen, dtype=torch.float64).to(dtype)
    for mode in ("train", "train", "eval", "train"):
        block.train(mode == "train")
        ours.train(mode == "train")
        grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
        y0, dx0, g0 = _y_grads(block, x, grad_y)
        y1, dx1, g1 = _y_grads(ours, x, grad_y)
        _assert_close(y1, y0, dtype, f"{kind} {mode} y")
        _assert_close(dx1, dx0, dtype, f"{kind} {mode} dx")
        theirs = _param_grads_by_role(block, layout, g0, ours=False)
        mine = _param_grads_by_role(ours, layout, g1, ours=True)
        assert theirs.keys() == mine.keys()
        for key in theirs:
            _assert_close(mine[key], theirs[key], dtype, f"{kind} {mode} d{key}")
    # ... and back: the block loads our export strictly and computes the same y.
    back = cb.make_block(kind, 16, dtype, seed=9)  # other weights, then ours loaded
    sn_format = "mimicry" if kind == "mimicry-own-sn" else None  # the layout's usual flavour otherwise
    back.load_state_dict(ours.export_state_dict(layout, sn_format=sn_format), strict=True)
    for mode in (False, True):
        back.train(mode)
        ours.train(mode)
        y_back = back(x)
        y_back = y_back[0] if isinstance(y_back, tuple) else y_back
        _assert_close(y_back.detach(), ours(x).detach(), dtype, f"{kind} export train={mode}")


@pytest.mark.parametrize("kind", ["biggan", "studiogan", "mimicry", "sagan", "notebook"])
def test_state_dict_loaders_detect_the_layout(kind):
    block = cb.make_block(kind)
    state = {f"G.blocks.3.{k}": v for k, v in block.state_dict().items()}
    with pytest.raises(ValueError, match="matches no known layout"):
        convert.convert_state_dict(state)  # the block sits under a prefix
    ours = convert.from_state_dict(state, prefix="G.blocks.3.")
    expected_layout = "biggan" if kind == "mimicry" else kind  # the two share their keys
    assert convert.detect_layout(block.state_dict()).name == expected_layout
    assert torch.equal(ours.gamma.detach(), block.state_dict()[convert.LAYOUTS[kind].gamma].reshape(1))
    fresh = SelfAttention2d(16, **{k: v for k, v in convert.convert_state_dict(block.state_dict())[1].items()
                                   if k != "in_channels"}).double()
    convert.load_state_dict(fresh, block.state_dict())
    block.eval()
    fresh.eval()
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64)
    y = block(x)
    _assert_close(fresh(x), y[0] if isinstance(y, tuple) else y, torch.float64, kind)


def test_foreign_state_dict_never_loads_nothing():
    studio = cb.make_block("studiogan").state_dict()
    # The naive swap: strict=False "succeeds" and loads nothing; the converters refuse instead.
    naive = SelfAttention2d(16, value_channels=8, out_conv=True, pool_kv=True, spectral_norm=True, bias=False)
    result = naive.load_state_dict(studio, strict=False)
    assert result.unexpected_keys and naive.gamma.detach().item() == 0.0
    with pytest.raises(ValueError, match="matches no known layout"):
        convert.convert_state_dict({"conv.weight": torch.zeros(4, 4, 1, 1)})
    with pytest.raises(ValueError, match="map to nothing"):
        convert.convert_state_dict({**studio, "conv1x1_extra.weight": torch.zeros(2, 16, 1, 1)})
    with pytest.raises(ValueError, match="does not fit"):
        convert.load_state_dict(SelfAttention2d(16), studio)
    partial = {k: v for k, v in studio.items() if not k.startswith("conv1x1_g.")}
    with pytest.raises(ValueError, match="conv1x1_g"):
        convert.convert_state_dict(partial, "studiogan")
    with pytest.raises(ValueError, match="layout must be one of"):
        convert.convert_state_dict(studio, "stylegan")


def test_biggan_u0_and_zero_d_gamma():
    block = cb.make_block("biggan")
    state, kwargs = convert.convert_state_dict(block.state_dict())
    assert state["gamma"].shape == (1,) and block.gamma.shape == ()
    assert kwargs["sn_power_order"] == "vu" and kwargs["sn_eval_power_step"] and kwargs["sn_eps"] == 1e-8
    assert torch.equal(state["f.parametrizations.weight.0._u"], block.theta.u0.reshape(-1))
    exported = convert.from_state_dict(block.state_dict()).export_state_dict("biggan")
    assert exported["gamma"].shape == () and exported["theta.u0"].shape == (1, 2)
    assert set(exported) == set(block.state_dict())


# -- SelfAttention2d: call safety, spectral-norm options, odd pooling ------------------------------------


def test_unexpected_positional_arguments_raise_clearly():
    attn = SelfAttention2d(16)
    x = torch.randn(2, 16, 4, 4)
    with pytest.raises(TypeError, match=r"one positional argument, x; got 2 .*tensor of shape \(2, 8\).*patch"):
        attn(x, torch.randn(2, 8))  # BigGAN-PyTorch's block(h, y)
    with pytest.raises(TypeError, match="return_attention is keyword-only"):
        attn(x, True)
    with pytest.warns(UserWarning, match="materialises"):
        y, beta = attn(x, return_attention=True)
    assert beta.shape == (2, 16, 16)


@pytest.mark.parametrize("order", ["uv", "vu"])
def test_spectral_norm_options_follow_torch_and_the_hook(order):
    """Order "uv" steps as torch's parametrization, "vu" as torch's hook: same weights, same y, 3 steps."""
    torch.manual_seed(0)
    ours = SelfAttention2d(16, spectral_norm=True, sn_power_order=order, sn_eps=1e-6).double()
    conv = nn.Conv2d(16, 2, 1).double()
    if order == "uv":
        conv = nn.utils.parametrizations.spectral_norm(conv, eps=1e-6)
        conv.load_state_dict(ours.f.state_dict())
    else:
        conv = nn.utils.spectral_norm(conv, eps=1e-6)
        sd = ours.f.state_dict()
        conv.load_state_dict({"bias": sd["bias"], "weight_orig": sd["parametrizations.weight.original"],
                              "weight_u": sd["parametrizations.weight.0._u"],
                              "weight_v": sd["parametrizations.weight.0._v"]})
    x = torch.randn(1, 16, 3, 3, dtype=torch.float64)
    for _ in range(3):
        torch.testing.assert_close(ours.f(x), conv(x), atol=1e-13, rtol=1e-12)
    with pytest.raises(ValueError, match="sn_power_order must be one of"):
        SelfAttention2d(16, spectral_norm=True, sn_power_order="vv")


def test_pool_floor_pools_odd_sizes_as_max_pool2d():
    kw = dict(value_channels=8, pool_kv=True, out_conv=True, pool_floor=True)
    torch.manual_seed(0)
    ours = SelfAttention2d(16, **kw).double()
    ref = BmmSelfAttention2d(16, **kw).double()
    ref.load_state_dict(ours.state_dict())
    with torch.no_grad():
        ours.gamma.fill_(0.5)
        ref.gamma.fill_(0.5)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), **TOL[torch.float64])
    assert ours.attention_rows(x, [(4, 6)]).shape == (2, 1, 2, 3)  # keys on the floored 2 x 3 grid
    with pytest.raises(ValueError, match="pool_floor=True"):
        SelfAttention2d(16, value_channels=8, pool_kv=True, out_conv=True)(x)


def test_patched_and_converted_agree():
    """Both routes from one BigGAN block give one y (eval mode, float64)."""
    block = cb.make_block("biggan").eval()
    ours = SelfAttention2d.from_module(block).eval()
    sagan_attn.patch(block)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    _assert_close(ours(x).detach(), block(x).detach(), torch.float64, "patched vs converted")
