"""Tests of the SAGAN models (python/sagan_attn/models): shapes at every resolution, spectral norm, conditional
batch norm, the projection discriminator, the losses on known values, the EMA, and the fused attention
against the bmm (notebook) one on the same weights, the WGAN-GP double backward included.

The oracle for the attention is the bmm path (``BmmSelfAttention2d``, sagan_attn.reference's math), itself
checked against the notebook module (../shared/spec/notebook_self_attn.py) with the notebook's options.
Comparisons are in float64: there the fused op and bmm differ by rounding only (~1e-13 relative at these
sizes), while any real error (a wrong index, a lost term, a wrong gamma) is O(1e-3) or more.
"""
from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from sagan_attn import SelfAttention2d
from sagan_attn.models import (
    BmmSelfAttention2d,
    ConditionalBatchNorm2d,
    Discriminator,
    Generator,
    discriminator_loss,
    ema_decay,
    ema_update,
    generator_loss,
    gradient_penalty,
    self_attention,
)

NOTEBOOK_PATH = Path(__file__).resolve().parents[3] / "shared" / "spec" / "notebook_self_attn.py"
TOL64 = dict(atol=1e-10, rtol=1e-10)
VARIANTS = ("paper", "official")


@pytest.fixture(autouse=True)
def _one_thread(restore_threads):
    """Tiny models: one thread is as fast, and immune to the spinning of OpenMP threads on a busy machine."""
    torch.set_num_threads(1)


def _set_gamma(model: nn.Module, value: float) -> None:
    """Non-zero attention gammas: at their init value 0 the attention branch does not reach the output."""
    with torch.no_grad():
        for attn in model.attention.values():
            attn.gamma.fill_(value)


def _pair(cls, variant, dtype=torch.float64, **kwargs):
    """The same network with the fused and the bmm attention, on the same weights."""
    torch.manual_seed(0)
    fused = cls(attention="fused", attn_variant=variant, **kwargs).to(dtype)
    _set_gamma(fused, 0.7)
    notebook = cls(attention="notebook", attn_variant=variant, **kwargs).to(dtype)
    notebook.load_state_dict(fused.state_dict(), strict=True)
    return fused, notebook


# -- shapes and layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shapes_at_every_resolution(resolution):
    torch.manual_seed(0)
    G = Generator(resolution, ch=4, z_dim=16, num_classes=3, img_channels=3)
    D = Discriminator(resolution, ch=4, num_classes=3, img_channels=3)
    z, y = torch.randn(2, 16), torch.tensor([0, 2])
    with torch.no_grad():
        x = G(z, y)
        logits = D(x, y)
    assert x.shape == (2, 3, resolution, resolution)
    assert x.abs().max() <= 1.0  # tanh
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()
    # one attention block each, at the default resolution, fed a map of that size
    assert len(G.attention) == 1 and len(D.attention) == 1
    assert G.attn_res == ({32: 32, 64: 32, 128: 64}[resolution],)
    assert D.attn_res == ({32: 16, 64: 32, 128: 64}[resolution],)


def test_attention_resolution_is_configurable():
    G = Generator(64, ch=4, z_dim=8, attn_res=[16, 64])
    assert G.attn_res == (16, 64) and set(G.attention) == {"16", "64"}
    assert len(Generator(32, ch=4, z_dim=8, attn_res=0).attention) == 0
    assert len(Discriminator(32, ch=4, attn_res=()).attention) == 0
    with pytest.raises(ValueError, match="attention resolution 4 is not one of"):
        Generator(32, ch=4, attn_res=4)
    with pytest.raises(ValueError, match="resolution must be one of"):
        Discriminator(48, ch=4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_variants(variant):
    G = Generator(32, ch=16, z_dim=8, attn_variant=variant)
    attn = G.attention["32"]  # last block: ch channels
    assert isinstance(attn, SelfAttention2d) and not isinstance(attn, BmmSelfAttention2d)
    assert attn.spectral_norm and attn.attn_channels == 2
    if variant == "paper":
        assert (attn.value_channels, attn.pool_kv, attn.out_conv, attn.bias) == (16, False, False, True)
    else:
        assert (attn.value_channels, attn.pool_kv, attn.out_conv, attn.bias) == (8, True, True, False)
    assert isinstance(Generator(32, ch=16, z_dim=8, attention="notebook").attention["32"], BmmSelfAttention2d)
    with pytest.raises(ValueError, match="impl must be one of"):
        self_attention(16, impl="flash")


def test_spectral_norm_on_every_weight_layer():
    G = Generator(32, ch=8, z_dim=8, num_classes=4)
    D = Discriminator(32, ch=8, num_classes=4)
    for name, net in (("G", G), ("D", D)):
        layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
        assert layers
        for n, m in layers:
            if isinstance(m, nn.Embedding) and n.rsplit(".", 1)[-1] in ("gain", "bias"):
                continue  # conditional batch norm's per-class gains and biases (not spectrally normalised)
            assert parametrize.is_parametrized(m, "weight"), f"{name}.{n} has no spectral norm"
    assert parametrize.is_parametrized(D.embed, "weight")  # the projection


# -- conditioning ------------------------------------------------------------------------------------------


def test_conditional_batch_norm():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(3, num_classes=2)
    x = torch.randn(4, 3, 5, 5)
    y = torch.tensor([0, 1, 0, 1])
    plain = nn.functional.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(cbn(x, y), plain)  # gains 1, biases 0 at init
    with torch.no_grad():
        cbn.gain.weight[1] = torch.tensor([2.0, 3.0, 4.0])
        cbn.bias.weight[1] = torch.tensor([0.5, 0.0, -1.0])
    out = cbn(x, y)
    torch.testing.assert_close(out[0::2], plain[0::2])
    gain, bias = torch.tensor([2.0, 3.0, 4.0])[:, None, None], torch.tensor([0.5, 0.0, -1.0])[:, None, None]
    expected = plain[1::2] * gain + bias
    torch.testing.assert_close(out[1::2], expected)
    with pytest.raises(ValueError, match="labels y are required"):
        cbn(x)
    assert ConditionalBatchNorm2d(3).bn.affine  # unconditional: a plain affine batch norm


def test_generator_output_depends_on_the_class():
    torch.manual_seed(0)
    G = Generator(32, ch=4, z_dim=8, num_classes=3).eval()
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, ConditionalBatchNorm2d):
                m.gain.weight.normal_(1.0, 0.3)
                m.bias.weight.normal_(0.0, 0.3)
        z = torch.randn(1, 8).repeat(3, 1)
        x = G(z, torch.tensor([0, 1, 2]))
    assert (x[0] - x[1]).abs().max() > 1e-3 and (x[1] - x[2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="labels y are required"):
        G(z)


def test_projection_discriminator():
    """D(x, y) = linear(phi(x)) + <embed(y), phi(x)>: the class enters only through the inner product."""
    torch.manual_seed(0)
    D = Discriminator(32, ch=4, num_classes=5).double().eval()
    _set_gamma(D, 0.5)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    phis = []
    D.linear.register_forward_pre_hook(lambda module, args: phis.append(args[0]))
    y1, y2 = torch.tensor([0, 1, 2]), torch.tensor([4, 4, 3])
    out1, out2 = D(x, y1), D(x, y2)
    phi = phis[0]
    embed = D.embed.weight  # spectrally normalised
    torch.testing.assert_close(out1 - out2, ((embed[y1] - embed[y2]) * phi).sum(1), **TOL64)
    torch.testing.assert_close(out1, D.linear(phi).squeeze(1) + (embed[y1] * phi).sum(1), **TOL64)

    D0 = Discriminator(32, ch=4)  # unconditional: no projection, no labels needed
    assert D0.embed is None and D0(torch.randn(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="labels y are required"):
        D(x)


# -- fused vs notebook attention ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_and_notebook_have_the_same_state_dict(variant):
    for cls, kwargs in ((Generator, dict(z_dim=8, num_classes=3)), (Discriminator, dict(num_classes=3))):
        fused = cls(32, ch=8, attention="fused", attn_variant=variant, **kwargs)
        notebook = cls(32, ch=8, attention="notebook", attn_variant=variant, **kwargs)
        assert list(fused.state_dict()) == list(notebook.state_dict())
        notebook.load_state_dict(fused.state_dict(), strict=True)
        fused.load_state_dict(notebook.state_dict(), strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_generator_equals_notebook_generator(variant):
    """Same weights, same inputs, float64 (training mode: batch statistics and a power iteration)."""
    fused, notebook = _pair(Generator, variant, resolution=32, ch=4, z_dim=16, num_classes=3)
    no_attention = copy.deepcopy(notebook)
    _set_gamma(no_attention, 0.0)
    z = torch.randn(3, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    x_fused, x_notebook = fused(z, y), notebook(z, y)
    torch.testing.assert_close(x_fused, x_notebook, **TOL64)
    # the attention does reach the output: without it the images differ
    assert (no_attention(z, y) - x_fused).abs().max() > 1e-4
    # and the gradients agree
    x_fused.square().sum().backward()
    x_notebook.square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), notebook.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL64, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_penalty_through_fused_attention_equals_notebook(variant):
    """WGAN-GP: the penalty and its gradient w.r.t. D's parameters (a double backward through the fused op)
    equal those of the bmm discriminator on the same weights and inputs, in float64."""
    fused, notebook = _pair(Discriminator, variant, resolution=32, ch=8, num_classes=3)
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    fake = torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.tensor([2, 0, 1])
    eps = torch.rand(3, generator=gen, dtype=torch.float64)
    grads = []
    for D in (fused, notebook):
        gp = gradient_penalty(D, real, fake, y, eps=eps)
        # allow_unused: the input gradient, hence the penalty, does not depend on the last bias
        grads.append((gp.detach(), torch.autograd.grad(gp, list(D.parameters()), allow_unused=True)))
    (gp_f, g_f), (gp_n, g_n) = grads
    torch.testing.assert_close(gp_f, gp_n, **TOL64)
    names = [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, g_f, g_n):
        assert (a is None) == (b is None) == (name == "linear.bias"), name
        if a is not None:
            torch.testing.assert_close(a, b, **TOL64, msg=lambda m, name=name: f"d gp / d {name}: {m}")
    gamma_grads = [g for n, g in zip(names, g_f) if n.endswith("gamma")]
    assert gamma_grads and all(g.abs().max() > 0 for g in gamma_grads)  # the attention is in the penalty


@pytest.mark.skipif(not NOTEBOOK_PATH.exists(), reason=f"the notebook spec module is not at {NOTEBOOK_PATH}")
def test_bmm_attention_is_the_notebook_module():
    spec = importlib.util.spec_from_file_location("notebook_self_attn", NOTEBOOK_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    nb = module.self_attn(16, 2).double()
    with torch.no_grad():
        nb.gamma.fill_(0.5)
    ours = BmmSelfAttention2d(16, 2).double()
    ours.load_state_dict(nb.state_dict(), strict=True)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), nb(x)[0], **TOL64)


# -- losses ------------------------------------------------------------------------------------------------


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_losses_on_known_values():
    d_real = torch.tensor([2.0, 0.5])
    d_fake = torch.tensor([-2.0, 0.5])
    # hinge: mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, .5])) = .25 + .75
    assert discriminator_loss("hinge", d_real, d_fake).item() == pytest.approx(1.0)
    assert generator_loss("hinge", d_fake).item() == pytest.approx(0.75)
    ns_d = (_softplus(-2.0) + _softplus(-0.5)) / 2 + (_softplus(-2.0) + _softplus(0.5)) / 2
    assert discriminator_loss("nonsaturating", d_real, d_fake).item() == pytest.approx(ns_d)
    assert generator_loss("nonsaturating", d_fake).item() == pytest.approx((_softplus(2.0) + _softplus(-0.5)) / 2)
    assert discriminator_loss("wgan-gp", d_real, d_fake).item() == pytest.approx(-0.75 - 1.25)
    assert generator_loss("wgan-gp", d_fake).item() == pytest.approx(0.75)
    # low-precision logits give float32 losses
    assert discriminator_loss("hinge", d_real.bfloat16(), d_fake.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="loss must be one of"):
        generator_loss("lsgan", d_fake)


def test_gradient_penalty_of_a_linear_critic():
    """D(x) = <w, x> has gradient w everywhere: the penalty is (||w|| - 1)^2, whatever eps, and its
    gradient w.r.t. w is 2 (||w|| - 1) w / ||w||; a GradScaler-style grad_scale changes neither."""
    w = torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()

    def critic(x, y=None):
        return (x * w).sum(dim=(1, 2, 3))

    real, fake = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    norm = w.detach().norm()
    for scale in (1.0, 1024.0):
        gp = gradient_penalty(critic, real, fake, grad_scale=scale)
        assert gp.item() == pytest.approx((norm.item() - 1.0) ** 2, rel=1e-12)
        (dw,) = torch.autograd.grad(gp, w)
        torch.testing.assert_close(dw, 2 * (norm - 1) * w.detach() / norm, **TOL64)


# -- EMA ---------------------------------------------------------------------------------------------------


def test_ema_update():
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay(10**6, 0.999) == 0.999
    torch.manual_seed(0)
    G = Generator(32, ch=4, z_dim=8)
    G_ema = Generator(32, ch=4, z_dim=8)
    before = {n: p.detach().clone() for n, p in G_ema.named_parameters()}
    G(torch.randn(4, 8))  # updates G's batch-norm statistics and power-iteration vectors
    ema_update(G_ema, G, 0.9)
    for n, p in G_ema.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * dict(G.named_parameters())[n].detach())
    for (n, b), b_ema in zip(G.named_buffers(), G_ema.buffers()):
        assert torch.equal(b, b_ema), n
