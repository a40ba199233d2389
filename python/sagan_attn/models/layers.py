"""The building blocks of the SAGAN networks: spectrally normalised layers, conditional batch norm,
residual blocks, and the self-attention block in its two variants and two implementations.

Spectral normalisation is ``torch.nn.utils.parametrizations.spectral_norm`` (the one that
``SelfAttention2d(spectral_norm=True)`` uses too): one power iteration per forward in training mode.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import reference
from ..modules import SelfAttention2d, _reject_positional

ATTENTION_IMPLS = ("fused", "notebook")
ATTENTION_VARIANTS = ("paper", "official")


def _sn(layer: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer)


def sn_conv2d(in_channels: int, out_channels: int, kernel_size: int = 3, padding: Optional[int] = None,
              bias: bool = True) -> nn.Module:
    """A conv (stride 1, 'same' padding by default) with Xavier-uniform weights, spectrally normalised."""
    if padding is None:
        padding = kernel_size // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
    nn.init.xavier_uniform_(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    return _sn(conv)


def sn_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    linear = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_uniform_(linear.weight)
    if bias:
        nn.init.zeros_(linear.bias)
    return _sn(linear)


def sn_embedding(num_embeddings: int, embedding_dim: int) -> nn.Module:
    embedding = nn.Embedding(num_embeddings, embedding_dim)
    nn.init.xavier_uniform_(embedding.weight)
    return _sn(embedding)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are looked up per class: ``gain[y] * BN(x) + bias[y]``.

    With ``num_classes == 0`` it is a plain ``BatchNorm2d`` (learned affine) and ignores ``y``. Gains start
    at 1 and biases at 0, so at initialisation every class gets the unconditional batch norm.
    """

    def __init__(self, num_features: int, num_classes: int = 0, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=num_classes == 0)
        if num_classes > 0:
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.bn(x)
        if self.num_classes == 0:
            return out
        if y is None:
            raise ValueError(f"ConditionalBatchNorm2d: class labels y are required (num_classes={self.num_classes})")
        return self.gain(y)[:, :, None, None] * out + self.bias(y)[:, :, None, None]


class GBlock(nn.Module):
    """Generator residual block (BigGAN / SNGAN): BN-ReLU-up-conv3-BN-ReLU-conv3, shortcut up-conv1."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int = 0, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.bn1 = ConditionalBatchNorm2d(in_channels, num_classes)
        self.conv1 = sn_conv2d(in_channels, out_channels, 3)
        self.bn2 = ConditionalBatchNorm2d(out_channels, num_classes)
        self.conv2 = sn_conv2d(out_channels, out_channels, 3)
        self.shortcut = sn_conv2d(in_channels, out_channels, 1) if in_channels != out_channels or upsample else None

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(self._up(F.relu(self.bn1(x, y))))
        h = self.conv2(F.relu(self.bn2(h, y)))
        skip = self._up(x)
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        return h + skip


class DBlock(nn.Module):
    """Discriminator residual block: (ReLU-)conv3-ReLU-conv3(-avgpool), shortcut conv1(-avgpool).

    ``preactivation=False`` is the "optimized" first block of SNGAN / SAGAN, which sees the image itself:
    no ReLU before its first conv, and its shortcut pools before the 1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True, preactivation: bool = True):
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = sn_conv2d(in_channels, out_channels, 3)
        self.conv2 = sn_conv2d(out_channels, out_channels, 3)
        self.shortcut = sn_conv2d(in_channels, out_channels, 1) if in_channels != out_channels or downsample else None

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self._down(self.conv2(F.relu(self.conv1(h))))
        skip = x
        if self.shortcut is not None:
            skip = self._down(self.shortcut(skip)) if self.preactivation else self.shortcut(self._down(skip))
        return h + skip


class BmmSelfAttention2d(SelfAttention2d):
    """``SelfAttention2d`` computed as the notebook module does: bmm, softmax, bmm (the (N x Nk) map in memory).

    The baseline of ``--attention notebook``: the same constructor, parameters and ``state_dict`` keys as
    ``SelfAttention2d`` (it is a subclass), with the attention itself done by ``sagan_attn.reference``,
    the notebook's math. With the notebook's options (no spectral norm, bias, no pooling, no output conv)
    it computes exactly the notebook module's ``y``, and a checkpoint of either implementation loads into
    the other.
    """

    def forward(self, x: torch.Tensor, *args, return_attention: bool = False):
        if args:  # the same call safety as SelfAttention2d.forward
            _reject_positional(type(self).__name__, args)
        if return_attention:
            raise ValueError("BmmSelfAttention2d: use attention_rows() to look at the attention map")
        self._check_input(x)
        batch, channels, height, width = x.shape
        fx = self._queries(x)
        gx, hx = self._keys_values(x)
        gamma = self.gamma.to(fx.dtype)
        if self.o is None:
            y = reference.self_attn(fx, gx, hx, x.flatten(2), gamma, self.scale)
            return y.view(batch, channels, height, width)
        attn = reference.self_attn(fx, gx, hx, None, fx.new_ones(1), self.scale)
        return gamma * self.o(attn.view(batch, self.value_channels, height, width)) + x


def self_attention(channels: int, variant: str = "paper", impl: str = "fused") -> SelfAttention2d:
    """The SAGAN attention block for a ``channels``-channel feature map, spectrally normalised.

    variant: ``"paper"``: queries and keys C/8, values C, no pooling (the paper's Eq. 1-3, the notebook
        module's layout, with bias); ``"official"``: the official SAGAN / BigGAN code: values C/2, 2x2
        max-pooled keys and values, an output 1x1 conv ``o``, no biases.
    impl: ``"fused"`` (``SelfAttention2d``, the fused op) or ``"notebook"`` (``BmmSelfAttention2d``).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"self_attention: impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"self_attention: variant must be one of {ATTENTION_VARIANTS}, got {variant!r}")
    cls = SelfAttention2d if impl == "fused" else BmmSelfAttention2d
    attn_channels = max(1, channels // 8)
    if variant == "paper":
        return cls(channels, attn_channels, spectral_norm=True)
    return cls(channels, attn_channels, value_channels=max(1, channels // 2), pool_kv=True, out_conv=True,
               spectral_norm=True, bias=False)
