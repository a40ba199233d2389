"""The SAGAN model family (Zhang et al., "Self-Attention Generative Adversarial Networks", 2018) on
``SelfAttention2d``: generator and discriminator for 32x32, 64x64 and 128x128 images, their losses and
the generator's weight average.

``attention="fused"`` puts the fused op in both networks, ``attention="notebook"`` the bmm baseline
(``BmmSelfAttention2d``); the parameters, and so the checkpoints, are the same.
"""
from __future__ import annotations

from .arch import RESOLUTIONS
from .discriminator import Discriminator
from .ema import ema_decay, ema_update
from .generator import Generator
from .layers import (
    ATTENTION_IMPLS,
    ATTENTION_VARIANTS,
    BmmSelfAttention2d,
    ConditionalBatchNorm2d,
    DBlock,
    GBlock,
    self_attention,
)
from .losses import LOSSES, discriminator_loss, generator_loss, gradient_penalty, r1_penalty

__all__ = [
    "RESOLUTIONS", "ATTENTION_IMPLS", "ATTENTION_VARIANTS", "LOSSES",
    "Generator", "Discriminator", "GBlock", "DBlock", "ConditionalBatchNorm2d", "BmmSelfAttention2d",
    "self_attention", "discriminator_loss", "generator_loss", "gradient_penalty", "r1_penalty", "ema_decay", "ema_update",
]
