"""The SAGAN generator: z (and a class) -> image, residual up-sampling blocks with conditional batch norm,
spectral norm on every layer, and self-attention at a chosen feature-map resolution."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch import G_ARCH, G_BOTTOM, AttnRes, arch_for, attention_resolutions, block_resolutions
from .layers import GBlock, self_attention, sn_conv2d, sn_linear


class Generator(nn.Module):
    """SAGAN generator (Zhang et al. 2018) for 32x32, 64x64 or 128x128 images.

    ``z`` (B, z_dim) goes through a linear layer to a 4x4 map, then residual blocks each double the
    resolution (``arch.G_ARCH``), then BN-ReLU-conv3-tanh gives the image in [-1, 1]. Batch norms are
    class-conditional when ``num_classes > 0``. A ``SelfAttention2d`` follows the block whose output has
    the resolution ``attn_res``.

    Args:
        resolution: image size, 32, 64 or 128.
        ch: base channel width (the last block has ``ch`` channels).
        z_dim: size of the latent vector.
        num_classes: number of classes for conditional batch norm; 0 for an unconditional generator.
        img_channels: channels of the image (3 for RGB, 1 for grey).
        attn_res: feature-map resolution(s) of the attention block(s); None: the default of the
            resolution (32 for 32 and 64, 64 for 128); 0 or (): no attention.
        attn_variant: ``"paper"`` or ``"official"`` (see ``layers.self_attention``).
        attention: ``"fused"`` (the fused op) or ``"notebook"`` (bmm); same parameters either way.

    The attention blocks are ``self.attention[str(res)]``; their ``state_dict`` keys do not depend on
    ``attention``, so a checkpoint of one implementation loads into the other.
    """

    def __init__(self, resolution: int = 32, ch: int = 64, z_dim: int = 128, num_classes: int = 0,
                 img_channels: int = 3, attn_res: AttnRes = None, attn_variant: str = "paper",
                 attention: str = "fused") -> None:
        super().__init__()
        arch = arch_for(G_ARCH, resolution, "Generator")
        self.resolution = resolution
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.img_channels = img_channels
        self.block_res = block_resolutions(arch, G_BOTTOM, up=True)
        self.attn_res = attention_resolutions(attn_res, arch, self.block_res, "Generator")
        self.attn_variant = attn_variant
        self.attention_impl = attention

        self.bottom_channels = arch.in_mult[0] * ch
        self.linear = sn_linear(z_dim, self.bottom_channels * G_BOTTOM * G_BOTTOM)
        self.blocks = nn.ModuleList(
            GBlock(i * ch, o * ch, num_classes, upsample=up)
            for i, o, up in zip(arch.in_mult, arch.out_mult, arch.resample)
        )
        # the attention block of a resolution follows the first block with that output resolution
        self.attn_after = {self.block_res.index(res): str(res) for res in self.attn_res}
        self.attention = nn.ModuleDict({
            str(res): self_attention(arch.out_mult[self.block_res.index(res)] * ch, attn_variant, attention)
            for res in self.attn_res
        })
        self.out_bn = nn.BatchNorm2d(arch.out_mult[-1] * ch)
        self.out_conv = sn_conv2d(arch.out_mult[-1] * ch, img_channels, 3)

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.num_classes > 0 and y is None:
            raise ValueError(f"Generator: class labels y are required (num_classes={self.num_classes})")
        h = self.linear(z).view(z.shape[0], self.bottom_channels, G_BOTTOM, G_BOTTOM)
        for k, block in enumerate(self.blocks):
            h = block(h, y)
            if k in self.attn_after:
                h = self.attention[self.attn_after[k]](h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))

    def sample_latent(self, batch: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """z ~ N(0, I), (batch, z_dim)."""
        return torch.randn(batch, self.z_dim, device=device, generator=generator)
