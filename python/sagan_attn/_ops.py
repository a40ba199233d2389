"""Functional API over ``torch.ops.sagan.self_attn``.

The op's schema, CPU kernels, meta (fake) kernels and autograd are all registered in C++ when the
compiled library loads (see csrc/); this module only gives it a Pythonic signature.
"""
from __future__ import annotations

from typing import Optional, Union

import torch


def self_attn(
    f: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    x: Optional[torch.Tensor] = None,
    gamma: Union[torch.Tensor, float] = 1.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Fused SAGAN self-attention, never materialising the (Nq x Nk) attention map.

    ``y[b, :, i] = gamma * sum_j softmax_j(scale * f[b, :, i] . g[b, :, j]) * h[b, :, j] (+ x[b, :, i])``

    Args:
        f: queries, (B, Cqk, Nq): the paper's f(x), channel-first as the 1x1 conv gives it.
        g: keys, (B, Cqk, Nk): g(x).
        h: values, (B, Cv, Nk): h(x).
        x: residual, (B, Cv, Nq), or None for no residual.
        gamma: the learnable scale of the attention branch; a one-element tensor or a number.
        scale: multiplies the logits; SAGAN uses 1.0 (no 1/sqrt(Cqk) scaling).

    All tensors share one dtype (float32, float64, bfloat16, float16) and one device. Gradients
    flow to f, g, h, x and gamma, and second derivatives work (see the README for their memory).
    """
    if not isinstance(gamma, torch.Tensor):
        gamma = torch.tensor(float(gamma), dtype=f.dtype, device=f.device)
    return torch.ops.sagan.self_attn(f, g, h, x, gamma, float(scale))
