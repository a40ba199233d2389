"""Functional API over ``torch.ops.sagan.self_attn``.

The op's schema, CPU kernels, meta (fake) kernels and autograd are all registered in C++ when the
compiled library loads (see csrc/); this module only gives it a Pythonic signature.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch


def self_attn(
    f: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    x: Optional[torch.Tensor] = None,
    gamma: Union[torch.Tensor, float] = 1.0,
    scale: Union[torch.Tensor, float] = 1.0,
) -> torch.Tensor:
    """Fused SAGAN self-attention, never materialising the (Nq x Nk) attention map.

    ``y[b, :, i] = gamma * sum_j softmax_j(scale * f[b, :, i] . g[b, :, j]) * h[b, :, j] (+ x[b, :, i])``

    Args:
        f: queries, (B, Cqk, Nq): the paper's f(x), channel-first as the 1x1 conv gives it.
        g: keys, (B, Cqk, Nk): g(x).
        h: values, (B, Cv, Nk): h(x).
        x: residual, (B, Cv, Nq), or None for no residual.
        gamma: the learnable scale of the attention branch; a one-element tensor or a number.
        scale: multiplies the logits; SAGAN uses 1.0 (no 1/sqrt(Cqk) scaling). A number, or a
            one-element tensor; a tensor that requires grad (a learnable temperature) gets its
            gradient: it is folded into the queries, ``(scale f)^T g``. Every dtype but float64
            computes in float32, so ``|scale|`` must be at most about 2.36e38 there.

    All tensors share one dtype (float32, float64, bfloat16, float16) and one device. Gradients
    flow to f, g, h, x and gamma, and second derivatives work (see the README for their memory).
    """
    if isinstance(gamma, torch.Tensor):
        pass  # the op checks its shape, dtype and device
    elif isinstance(gamma, numbers.Real) and not isinstance(gamma, bool):
        gamma = torch.tensor(float(gamma), dtype=f.dtype, device=f.device)
    else:
        raise TypeError(
            f"self_attn: gamma must be a real number or a one-element tensor, got {type(gamma).__name__}"
        )
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(
                f"self_attn: scale must be a number or a one-element tensor, got a tensor of shape "
                f"{tuple(scale.shape)}"
            )
        if scale.requires_grad and torch.is_grad_enabled():
            # A learnable temperature: scale * (f^T g) = (scale f)^T g, so folding it into the queries
            # keeps the whole computation in autograd and gives scale its gradient.
            return torch.ops.sagan.self_attn(f * scale.reshape(()).to(f.dtype), g, h, x, gamma, 1.0)
        scale = scale.item()
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(
            f"self_attn: scale must be a real number or a one-element tensor, got {type(scale).__name__}"
        )
    try:
        scale = float(scale)
    except OverflowError:
        raise ValueError(
            f"self_attn: scale must be finite, got an integer of {int(scale).bit_length()} bits that no "
            f"float can hold (|scale| <= about 2.36e38 for float32 inputs, 1.8e308 for float64)"
        ) from None
    return torch.ops.sagan.self_attn(f, g, h, x, gamma, scale)
