"""The plain-PyTorch oracle for ``sagan::self_attn``: the notebook module's math, in any dtype.

This is the one reference implementation of the project (tests, benchmarks and the demo use it).
It materialises the (B, Nq, Nk) attention map, exactly as the bmm-based module users have today (the
widely shared SAGAN notebook's ``self_attn``: bmm, softmax, bmm), so keep it to sizes where that fits
in memory.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def attention_map(f: torch.Tensor, g: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """beta = softmax_j(scale * f^T g): (B, Nq, Nk), each row a distribution over the keys."""
    s = torch.bmm(f.transpose(1, 2), g)  # (B, Nq, Nk)
    if scale != 1.0:
        s = s * scale
    return torch.softmax(s, dim=-1)


def self_attn_with_map(
    f: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    x: Optional[torch.Tensor],
    gamma: torch.Tensor,
    scale: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, beta) with y = gamma * h beta^T (+ x): y is (B, Cv, Nq), beta (B, Nq, Nk)."""
    beta = attention_map(f, g, scale)
    o = torch.bmm(h, beta.transpose(1, 2))  # (B, Cv, Nq)
    y = gamma.reshape(()) * o
    if x is not None:
        y = y + x
    return y, beta


def self_attn(
    f: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    x: Optional[torch.Tensor],
    gamma: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """y = gamma * sum_j softmax_j(scale * f^T g)[:, j] h[:, j] (+ x), computed with bmm."""
    return self_attn_with_map(f, g, h, x, gamma, scale)[0]
