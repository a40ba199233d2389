"""Minimal stand-ins for the SAGAN blocks of other codebases, written for the tests from their published
structure (attribute names, shapes, pooling, softmax axis, gamma shape, spectral-norm flavour), not
copied: each computes what the original computes, in the original's order of operations, and is called
the way the original's models call it. sagan_attn must patch and convert these without importing them.

- NotebookAttn: the notebook's block: convs f, g, h (bias), gamma (1,), returns (y, map).
- SaganSelfAttn: Self-Attention-GAN's Self_Attn(in_dim, activation): query_conv / key_conv /
  value_conv (bias), gamma (1,), returns (out, attention).
- BigGANAttention: BigGAN-PyTorch layers.Attention(ch, which_conv): theta, phi (C/8), g (C/2), o
  (C/2 -> C), no bias, 2x2 max-pooled phi and g, 0-d gamma, forward(x, y=None); its SNConv2d keeps u0,
  sv0 and runs one power step (v from u, then u from v) in train and eval mode, storing it in train.
- MimicrySelfAttention: mimicry's SelfAttention(num_feat): BigGAN's layout with torch's hook spectral
  norm (weight_orig, weight_u, weight_v), or its own (sn_u, sn_sigma; BigGAN's step), forward(x).
- StudioGANSelfAttention: StudioGAN ops.SelfAttention(in_channels, is_generator, MODULES):
  conv1x1_theta / _phi / _g / _attn, a MaxPool2d(2) module, sigma (1,), hook spectral norm with eps 1e-6.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F


def _plain_attention(q, k, v, softmax_dim=-1):
    """bmm-softmax-bmm as all five write it: q (B, Cqk, N), k (B, Cqk, Nk), v (B, Cv, Nk) -> (B, Cv, N)."""
    beta = torch.softmax(torch.bmm(q.permute(0, 2, 1), k), dim=softmax_dim)
    return torch.bmm(v, beta.permute(0, 2, 1)), beta


class NotebookAttn(nn.Module):
    def __init__(self, in_channels, attn_channels):
        super().__init__()
        self.f = nn.Conv2d(in_channels, attn_channels, 1)
        self.g = nn.Conv2d(in_channels, attn_channels, 1)
        self.h = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, hh, ww = x.shape
        o, beta = _plain_attention(self.f(x).view(b, -1, hh * ww), self.g(x).view(b, -1, hh * ww),
                                   self.h(x).view(b, c, hh * ww))
        return self.gamma * o.view(b, c, hh, ww) + x, beta


class SaganSelfAttn(nn.Module):
    softmax_dim = -1

    def __init__(self, in_dim, activation):
        super().__init__()
        self.chanel_in = in_dim
        self.activation = activation
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=self.softmax_dim)

    def forward(self, x):
        b, c, w, h = x.shape
        q = self.query_conv(x).view(b, -1, w * h).permute(0, 2, 1)
        energy = torch.bmm(q, self.key_conv(x).view(b, -1, w * h))
        attention = self.softmax(energy)
        out = torch.bmm(self.value_conv(x).view(b, -1, w * h), attention.permute(0, 2, 1))
        return self.gamma * out.view(b, c, w, h) + x, attention


class QuerySoftmaxSelfAttn(SaganSelfAttn):
    """Self_Attn's names with the softmax over the queries: not SAGAN's math, must not be patched."""

    softmax_dim = 1


class BigGANSNConv2d(nn.Conv2d):
    """BigGAN-PyTorch's SNConv2d with one singular value and one power iteration."""

    def __init__(self, *args, num_svs=1, num_itrs=1, eps=1e-12, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_svs, self.num_itrs, self.eps = num_svs, num_itrs, eps
        self.register_buffer("u0", torch.randn(1, self.out_channels))
        self.register_buffer("sv0", torch.ones(1))

    def sn_weight(self):
        w = self.weight.view(self.weight.size(0), -1)
        with torch.no_grad():
            v = F.normalize(torch.matmul(self.u0, w), eps=self.eps)
            u = F.normalize(torch.matmul(v, w.t()), eps=self.eps)
            if self.training:
                self.u0[:] = u
        sv = torch.squeeze(torch.matmul(torch.matmul(v, w.t()), u.t()))
        if self.training:
            with torch.no_grad():
                self.sv0[:] = sv
        return self.weight / sv

    def forward(self, x):
        return F.conv2d(x, self.sn_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class MimicrySNConv2d(nn.Conv2d):
    """mimicry's own SNConv2d (its non-default spectral norm): buffers sn_u (1, out) and sn_sigma."""

    def __init__(self, *args, num_iters=1, eps=1e-12, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_iters, self.eps = num_iters, eps
        self.register_buffer("sn_u", torch.randn(1, self.out_channels))
        self.register_buffer("sn_sigma", torch.ones(1))

    def forward(self, x):
        w = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = F.normalize(torch.matmul(self.sn_u, w), eps=self.eps)
            u = F.normalize(torch.matmul(v, w.t()), eps=self.eps)
        sigma = torch.mm(u, torch.mm(w, v.t()))
        if self.training:
            with torch.no_grad():
                self.sn_sigma[:] = sigma
                self.sn_u[:] = u
        return F.conv2d(x, self.weight / sigma, self.bias, self.stride, self.padding)


class BigGANAttention(nn.Module):
    def __init__(self, ch, which_conv=BigGANSNConv2d, name="attention"):
        super().__init__()
        self.ch = ch
        self.which_conv = which_conv
        self.theta = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.phi = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.g = which_conv(ch, ch // 2, kernel_size=1, padding=0, bias=False)
        self.o = which_conv(ch // 2, ch, kernel_size=1, padding=0, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0), requires_grad=True)

    def forward(self, x, y=None):
        n = x.shape[2] * x.shape[3]
        theta = self.theta(x).view(-1, self.ch // 8, n)
        phi = F.max_pool2d(self.phi(x), [2, 2]).view(-1, self.ch // 8, n // 4)
        g = F.max_pool2d(self.g(x), [2, 2]).view(-1, self.ch // 2, n // 4)
        o, _ = _plain_attention(theta, phi, g)
        return self.gamma * self.o(o.view(-1, self.ch // 2, x.shape[2], x.shape[3])) + x


def hook_sn_conv(*args, eps=1e-12, **kwargs):
    return nn.utils.spectral_norm(nn.Conv2d(*args, **kwargs), eps=eps)


class MimicrySelfAttention(nn.Module):
    def __init__(self, num_feat, spectral_norm=True):
        super().__init__()
        self.num_feat = num_feat
        self.spectral_norm = spectral_norm
        conv = {True: hook_sn_conv, False: nn.Conv2d, "own": MimicrySNConv2d}[spectral_norm]
        self.theta = conv(num_feat, num_feat >> 3, 1, 1, padding=0, bias=False)
        self.phi = conv(num_feat, num_feat >> 3, 1, 1, padding=0, bias=False)
        self.g = conv(num_feat, num_feat >> 1, 1, 1, padding=0, bias=False)
        self.o = conv(num_feat >> 1, num_feat, 1, 1, padding=0, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0), requires_grad=True)

    def forward(self, x):
        b, c, h, w = x.shape
        theta = self.theta(x).view(b, c >> 3, h * w)
        phi = F.max_pool2d(self.phi(x), [2, 2], stride=2).view(b, c >> 3, (h * w) >> 2)
        g = F.max_pool2d(self.g(x), [2, 2], stride=2).view(b, c >> 1, (h * w) >> 2)
        o, _ = _plain_attention(theta, phi, g)
        return x + self.gamma * self.o(o.view(b, c >> 1, h, w))


def studiogan_modules(spectral_norm=True):
    """StudioGAN's MODULES namespace: which conv G and D use."""
    if spectral_norm:
        conv = lambda *a, **k: hook_sn_conv(*a, eps=1e-6, **k)  # noqa: E731
    else:
        conv = nn.Conv2d
    return SimpleNamespace(g_conv2d=conv, d_conv2d=conv)


class StudioGANSelfAttention(nn.Module):
    def __init__(self, in_channels, is_generator, MODULES):
        super().__init__()
        self.in_channels = in_channels
        conv = MODULES.g_conv2d if is_generator else MODULES.d_conv2d
        kw = dict(kernel_size=1, stride=1, padding=0, bias=False)
        self.conv1x1_theta = conv(in_channels=in_channels, out_channels=in_channels // 8, **kw)
        self.conv1x1_phi = conv(in_channels=in_channels, out_channels=in_channels // 8, **kw)
        self.conv1x1_g = conv(in_channels=in_channels, out_channels=in_channels // 2, **kw)
        self.conv1x1_attn = conv(in_channels=in_channels // 2, out_channels=in_channels, **kw)
        self.maxpool = nn.MaxPool2d(2, stride=2, padding=0)
        self.softmax = nn.Softmax(dim=-1)
        self.sigma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        _, ch, h, w = x.size()
        theta = self.conv1x1_theta(x).view(-1, ch // 8, h * w)
        phi = self.maxpool(self.conv1x1_phi(x)).view(-1, ch // 8, h * w // 4)
        attn = self.softmax(torch.bmm(theta.permute(0, 2, 1), phi))
        g = self.maxpool(self.conv1x1_g(x)).view(-1, ch // 2, h * w // 4)
        attn_g = torch.bmm(g, attn.permute(0, 2, 1)).view(-1, ch // 2, h, w)
        return x + self.sigma * self.conv1x1_attn(attn_g)


class UnknownAttention(nn.Module):
    """An attention block of no known layout (q, k, v names): must be reported, not patched."""

    def __init__(self, c):
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(c, c // 8, 1), nn.Conv2d(c, c // 8, 1), nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        o, _ = _plain_attention(self.q(x).flatten(2), self.k(x).flatten(2), self.v(x).flatten(2))
        return self.gamma * o.view(b, c, h, w) + x


# -- blocks of each codebase, ready for a test: (name, factory(C) -> block) ------------------------------

BLOCKS = {
    "notebook": lambda c: NotebookAttn(c, c // 8),
    "sagan": lambda c: SaganSelfAttn(c, "relu"),
    "biggan": lambda c: BigGANAttention(c),
    "biggan-plain": lambda c: BigGANAttention(c, which_conv=nn.Conv2d),
    "mimicry": lambda c: MimicrySelfAttention(c),
    "mimicry-plain": lambda c: MimicrySelfAttention(c, spectral_norm=False),
    "mimicry-own-sn": lambda c: MimicrySelfAttention(c, spectral_norm="own"),
    "studiogan": lambda c: StudioGANSelfAttention(c, True, studiogan_modules()),
    "studiogan-plain": lambda c: StudioGANSelfAttention(c, False, studiogan_modules(False)),
}
LAYOUT_OF = {"notebook": "notebook", "sagan": "sagan", "biggan": "biggan", "biggan-plain": "biggan",
             "mimicry": "mimicry", "mimicry-plain": "mimicry", "mimicry-own-sn": "mimicry",
             "studiogan": "studiogan",
             "studiogan-plain": "studiogan"}


def make_block(kind, channels=16, dtype=torch.float64, seed=0):
    """A block with random weights and a non-zero gamma (at 0 the block is the identity, hiding errors)."""
    torch.manual_seed(seed)
    block = BLOCKS[kind](channels)
    gamma_name = "sigma" if kind.startswith("studiogan") else "gamma"
    with torch.no_grad():
        getattr(block, gamma_name).fill_(0.7)
    return block.to(dtype)


# -- toy models, called the way each codebase's models call their block -----------------------------


class BigGANStyleG(nn.Module):
    """Blocks called as block(h, y) in one loop, attention included (BigGAN-PyTorch's G)."""

    class ConvBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x, y):
            return F.relu(self.conv(x)) + y.view(y.shape[0], -1, 1, 1)

    def __init__(self, c=16):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleList([self.ConvBlock(c)]),
                                     nn.ModuleList([BigGANAttention(c)]),
                                     nn.ModuleList([self.ConvBlock(c)])])

    def forward(self, z, y):
        h = z
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h, y)
        return h


class StudioGANStyleG(nn.Module):
    """isinstance(block, SelfAttention) decides the call: block(h) or block(h, affine) (StudioGAN's G)."""

    class AffineBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x, affine):
            return F.relu(self.conv(x)) * (1 + affine.view(affine.shape[0], -1, 1, 1))

    def __init__(self, c=16):
        super().__init__()
        self.blocks = nn.ModuleList([self.AffineBlock(c),
                                     StudioGANSelfAttention(c, True, studiogan_modules()),
                                     self.AffineBlock(c)])

    def forward(self, z, affine):
        h = z
        for block in self.blocks:
            h = block(h) if isinstance(block, StudioGANSelfAttention) else block(h, affine)
        return h


class SaganStyleG(nn.Module):
    """out, p1 = self.attn1(out): the block's (out, attention) pair (Self-Attention-GAN's Generator)."""

    def __init__(self, c=16):
        super().__init__()
        self.l1 = nn.Conv2d(c, c, 3, padding=1)
        self.attn1 = SaganSelfAttn(c, "relu")
        self.l2 = nn.Conv2d(c, c, 3, padding=1)
        self.attn2 = SaganSelfAttn(c, "relu")

    def forward(self, z):
        out = F.relu(self.l1(z))
        out, p1 = self.attn1(out)
        out = self.l2(out)
        out, p2 = self.attn2(out)
        return torch.tanh(out), p1, p2


class MimicryStyleD(nn.Module):
    """A plain sequence of blocks, attention among them (mimicry's SAGAN discriminator)."""

    def __init__(self, c=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), MimicrySelfAttention(c),
                                  nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return self.body(x).sum(dim=(1, 2, 3))


class NotebookStyleModel(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.attn = NotebookAttn(c, c // 8)

    def forward(self, x):
        y, _ = self.attn(F.relu(self.conv(x)))
        return y


def set_gammas(model, value=0.6):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("sigma"):
                p.fill_(value)
    return model


# Tolerances of the patch and convert tests.
# float64: the fused op and bmm differ by rounding only (~1e-15 relative per term, sums over <= 64 keys):
# 1e-10 leaves wide margin and still catches a wrong axis or term (O(1e-2) here).
# float32: rounding ~1e-7 per term, accumulated over 64 keys and through the 1x1 convs' backward: 1e-4
# relative to the tensor's scale; a real error is O(1e-2) or more.
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-4, rtol=1e-4)}


def assert_close(a, b, dtype, what):
    tol = TOL[dtype]
    scale = max(b.abs().max().item(), 1.0)
    err = (a - b).abs().max().item()
    assert err <= tol["atol"] + tol["rtol"] * scale, f"{what}: max error {err:.3e} at scale {scale:.3e}"
