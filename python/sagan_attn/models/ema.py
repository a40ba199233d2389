"""Exponential moving average of the generator's weights (used for samples and evaluation, as in
BigGAN and most SAGAN re-implementations)."""
from __future__ import annotations

import torch
import torch.nn as nn


def ema_decay(step: int, decay: float) -> float:
    """The decay used at ``step``: ``min(decay, (1 + step) / (10 + step))``.

    The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) keeps the average close to
    the current weights early on, so a short run's EMA generator is not still mostly its random
    initialisation (with a constant 0.999, 74% of it after 300 steps).
    """
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """``p_ema <- decay * p_ema + (1 - decay) * p`` for every parameter; buffers (batch-norm running
    statistics, spectral-norm power-iteration vectors) are copied."""
    params = dict(model.named_parameters())
    for name, p_ema in ema_model.named_parameters():
        p_ema.lerp_(params[name].detach().to(p_ema.dtype), 1.0 - decay)
    buffers = dict(model.named_buffers())
    for name, b_ema in ema_model.named_buffers():
        b_ema.copy_(buffers[name])
