"""GAN losses on the discriminator's logits: hinge (SAGAN's default), non-saturating, WGAN-GP.

Each loss is a pair: the discriminator's loss on (D(real), D(fake)) and the generator's on D(fake); all
are means over the batch. WGAN-GP adds ``gradient_penalty``, which differentiates D with respect to its
input with ``create_graph=True`` and so backpropagates twice through every layer of D, the fused
attention included.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("hinge", "nonsaturating", "wgan-gp")


def d_hinge(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def g_hinge(d_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -d_fake.mean()


def d_nonsaturating(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """-E[log sigmoid(D(x))] - E[log(1 - sigmoid(D(G(z))))], i.e. softplus(-D(x)) + softplus(D(G(z)))."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def g_nonsaturating(d_fake: torch.Tensor) -> torch.Tensor:
    """-E[log sigmoid(D(G(z)))] = E[softplus(-D(G(z)))] (Goodfellow et al.'s non-saturating loss)."""
    return F.softplus(-d_fake).mean()


def d_wasserstein(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)]: the critic's loss, to which WGAN-GP adds the gradient penalty."""
    return d_fake.mean() - d_real.mean()


def g_wasserstein(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


_PAIRS: Dict[str, Tuple[Callable, Callable]] = {
    "hinge": (d_hinge, g_hinge),
    "nonsaturating": (d_nonsaturating, g_nonsaturating),
    "wgan-gp": (d_wasserstein, g_wasserstein),
}


def _pair(loss: str) -> Tuple[Callable, Callable]:
    if loss not in _PAIRS:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return _PAIRS[loss]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for bfloat16 / float16 (autocast) values, float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def discriminator_loss(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss (without WGAN-GP's penalty, see ``gradient_penalty``), in float32 or wider."""
    return _pair(loss)[0](_wide(d_real), _wide(d_fake))


def generator_loss(loss: str, d_fake: torch.Tensor) -> torch.Tensor:
    return _pair(loss)[1](_wide(d_fake))


def gradient_penalty(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    *,
    eps: Optional[torch.Tensor] = None,
    grad_scale: float = 1.0,
    autocast: Optional[Callable] = None,
) -> torch.Tensor:
    """WGAN-GP's penalty E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = eps * real + (1 - eps) * fake
    (Gulrajani et al. 2017), differentiable with respect to D's parameters (``create_graph=True``).

    Args:
        eps: (B,) interpolation weights; drawn from U(0, 1) with the global generator if None.
        grad_scale: the current GradScaler scale under fp16 autocast: D's output is multiplied by it
            before the input gradient is taken (so small gradients do not underflow), and the gradient
            is divided by it again before the norm, as PyTorch's AMP recipe for penalties does.
        autocast: a context-manager factory for D's forward (the training loop's autocast); the norm
            and the penalty are computed in float32 (or float64) outside it.
    """
    batch = real.shape[0]
    if eps is None:
        eps = torch.rand(batch, device=real.device)
    eps = eps.to(real.dtype).view(batch, *([1] * (real.dim() - 1)))
    x_hat = eps * real.detach() + (1.0 - eps) * fake.detach()
    grad = _input_gradient(discriminator, x_hat, y, grad_scale, autocast)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def r1_penalty(
    discriminator: nn.Module,
    real: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    *,
    grad_scale: float = 1.0,
    autocast: Optional[Callable] = None,
) -> torch.Tensor:
    """R1's penalty E[||grad_x D(x)||_2^2] on real images (Mescheder et al. 2018; StyleGAN2 weighs it
    by gamma / 2), differentiable with respect to D's parameters (``create_graph=True``: the attention
    blocks' second derivatives run through the fused double backward). ``grad_scale`` and ``autocast``
    as in ``gradient_penalty``."""
    grad = _input_gradient(discriminator, real.detach(), y, grad_scale, autocast)
    return grad.flatten(1).square().sum(1).mean()


def _input_gradient(discriminator, x, y, grad_scale, autocast):
    """grad_x of sum D(x), kept in the graph (create_graph=True), in float32 or wider."""
    x = x.requires_grad_(True)
    if autocast is None:
        out = discriminator(x, y)
    else:
        with autocast():
            out = discriminator(x, y)
    (grad,) = torch.autograd.grad(_wide(out).sum() * grad_scale, x, create_graph=True)
    return _wide(grad) / grad_scale
