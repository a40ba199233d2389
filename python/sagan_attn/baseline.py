"""The baseline every comparison is made against: the widely shared SAGAN notebook's ``self_attn`` module,
as the package's own bmm module on ``sagan_attn.reference``.

Same 1x1 convolutions and parameters as the notebook (``f``, ``g``, ``h``, ``gamma``), same math (bmm,
softmax, bmm, ``gamma * o + x``), and like the notebook it returns ``(y, attention_map)``. The demo times
it against the fused ``SelfAttention2d``; the benchmarks use the same math at the op level
(``sagan_attn.reference.self_attn``).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from sagan_attn import reference


class NotebookSelfAttention(nn.Module):
    """The notebook's ``self_attn`` module, on ``sagan_attn.reference``: bmm, softmax, bmm.

    Same parameters (``f``, ``g``, ``h``, ``gamma``) as ``SelfAttention2d``'s defaults, so one
    ``state_dict`` serves both; like the notebook it returns ``(y, attention_map)``.
    """

    def __init__(self, in_channels: int, attn_channels: int) -> None:
        super().__init__()
        self.f = nn.Conv2d(in_channels, attn_channels, kernel_size=1)
        self.g = nn.Conv2d(in_channels, attn_channels, kernel_size=1)
        self.h = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch, channels, height, width = x.shape
        y, beta = reference.self_attn_with_map(
            self.f(x).flatten(2), self.g(x).flatten(2), self.h(x).flatten(2), x.flatten(2), self.gamma
        )
        return y.view(batch, channels, height, width), beta
