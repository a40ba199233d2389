"""The SAGAN discriminator: residual down-sampling blocks, spectral norm on every layer, self-attention at
a chosen resolution, and a projection head for class-conditional training."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch import D_ARCH, AttnRes, arch_for, attention_resolutions, block_resolutions
from .layers import DBlock, self_attention, sn_embedding, sn_linear


class Discriminator(nn.Module):
    """SAGAN discriminator for 32x32, 64x64 or 128x128 images, returning one logit per image.

    Residual blocks (``arch.D_ARCH``; the first one is SNGAN's "optimized" block) down-sample the image,
    a ``SelfAttention2d`` follows the first block whose output has the resolution ``attn_res``, then
    ReLU and a sum over positions give a feature vector phi(x). The output is
    ``linear(phi(x)) + <embed(y), phi(x)>`` (the projection discriminator of Miyato & Koyama 2018)
    when ``num_classes > 0``, ``linear(phi(x))`` otherwise.

    Args: as ``Generator``'s (``attn_res`` None: 16 for 32x32 images, 32 for 64x64, 64 for 128x128).
    """

    def __init__(self, resolution: int = 32, ch: int = 64, num_classes: int = 0, img_channels: int = 3,
                 attn_res: AttnRes = None, attn_variant: str = "paper", attention: str = "fused") -> None:
        super().__init__()
        arch = arch_for(D_ARCH, resolution, "Discriminator")
        self.resolution = resolution
        self.num_classes = num_classes
        self.img_channels = img_channels
        self.block_res = block_resolutions(arch, resolution, up=False)
        self.attn_res = attention_resolutions(attn_res, arch, self.block_res, "Discriminator")
        self.attn_variant = attn_variant
        self.attention_impl = attention

        in_channels = [img_channels] + [m * ch for m in arch.in_mult[1:]]
        self.blocks = nn.ModuleList(
            DBlock(i, o * ch, downsample=down, preactivation=k > 0)
            for k, (i, o, down) in enumerate(zip(in_channels, arch.out_mult, arch.resample))
        )
        # the attention block of a resolution follows the first block with that output resolution
        self.attn_after = {self.block_res.index(res): str(res) for res in self.attn_res}
        self.attention = nn.ModuleDict({
            str(res): self_attention(arch.out_mult[self.block_res.index(res)] * ch, attn_variant, attention)
            for res in self.attn_res
        })
        features = arch.out_mult[-1] * ch
        self.linear = sn_linear(features, 1)
        self.embed = sn_embedding(num_classes, features) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.num_classes > 0 and y is None:
            raise ValueError(f"Discriminator: class labels y are required (num_classes={self.num_classes})")
        h = x
        for k, block in enumerate(self.blocks):
            h = block(h)
            if k in self.attn_after:
                h = self.attention[self.attn_after[k]](h)
        phi = F.relu(h).sum(dim=(2, 3))
        out = self.linear(phi).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * phi).sum(dim=1)
        return out
