"""``SelfAttention2d``: the SAGAN self-attention block for (B, C, H, W) feature maps, on the fused op.

It is a drop-in for the bmm-based module users have today (the notebook's ``self_attn``, kept as a
specification in ``../shared/spec/notebook_self_attn.py``): same constructor arguments, same parameter
names, its ``state_dict`` loads with ``strict=True`` and gives the same y, but the (N x N) attention map
is never materialised unless asked for.

Names follow the paper (Zhang et al., "Self-Attention Generative Adversarial Networks", 2018), as the
notebook uses them: ``f(x)`` are the queries, ``g(x)`` the keys, ``h(x)`` the values (1x1 convolutions),
``beta`` the attention map ``beta[i, j] = softmax_j(f(x_i)^T g(x_j))`` (one row per query position i, a
distribution over the key positions j), ``gamma`` the learnable scale of the attention branch,
initialised to 0, and ``y = gamma * o + x`` with ``o_i = sum_j beta[i, j] h(x_j)``.
"""
from __future__ import annotations

import math
import operator
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import reference
from ._ops import self_attn

QueryPositions = Union[torch.Tensor, Sequence[Tuple[int, int]]]


def _format_bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


class SelfAttention2d(nn.Module):
    r"""SAGAN self-attention over the H x W positions of a feature map, fused (no N x N map in memory).

    ``y = gamma * o + x``, ``o[:, i] = sum_j beta[i, j] h(x)[:, j]``,
    ``beta[i, j] = softmax_j(scale * f(x)[:, i] . g(x)[:, j])``, for every position i of the H x W grid
    and every key position j (all N = H * W positions, or the N / 4 of the 2x2 max-pooled grid with
    ``pool_kv``). The paper's names: ``f`` queries, ``g`` keys, ``h`` values, ``beta`` the attention map,
    ``gamma`` the learnable scale, initialised to 0 so the block starts as the identity.

    With the defaults this is a drop-in replacement for the notebook module
    (``../shared/spec/notebook_self_attn.py``, ``self_attn(in_channels, attn_channels)``): the parameters
    ``f``, ``g``, ``h`` (1x1 ``nn.Conv2d`` with bias: C -> attn_channels, attn_channels, C) and ``gamma``
    (shape (1,)) have its names and shapes, so its ``state_dict`` loads with ``strict=True`` and the
    output is the same. ``forward(x, return_attention=True)`` returns its ``(y, attention_map)`` pair.

    The keyword-only options give the variant of the official SAGAN / BigGAN code (there: ``theta`` =
    ``f``, ``phi`` = ``g``, ``g`` = ``h``, ``o`` = ``o``), e.g.
    ``SelfAttention2d(C, C // 8, value_channels=C // 2, pool_kv=True, out_conv=True,
    spectral_norm=True, bias=False)``.

    Args:
        in_channels: C, channels of the input feature map (and of y).
        attn_channels: Cqk, channels of the queries f(x) and keys g(x); default ``in_channels // 8``
            (at least 1), as in the paper.
        value_channels: Cv, channels of the values h(x); default ``in_channels`` as in the notebook.
            Any other value needs ``out_conv=True`` to map the attention output back to C channels.
        pool_kv: 2x2 max-pool the keys and values after their convolutions (Nk = N / 4), as the
            official code does; H and W must then be even.
        out_conv: add a 1x1 convolution ``o`` (value_channels -> C) applied to the attention output
            before gamma: ``y = gamma * o(attn) + x``.
        spectral_norm: wrap every convolution in
            ``torch.nn.utils.parametrizations.spectral_norm``. The weights are then stored as
            ``f.parametrizations.weight.original`` (plus the power-iteration vectors
            ``f.parametrizations.weight.0._u`` and ``..._v``) instead of ``f.weight``, so a notebook
            state_dict loads only without spectral norm. In training mode every forward runs one
            power iteration, as spectral_norm always does.
        bias: give the convolutions a bias (the notebook has one; the official code has none). A
            notebook state_dict loads only with ``bias=True``.
        scale: multiplies the logits ``f^T g``; SAGAN uses 1.0 (no ``1 / sqrt(Cqk)``).

    Shape:
        x: (B, C, H, W), y: (B, C, H, W); all of one floating dtype, that of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        attn_channels: Optional[int] = None,
        *,
        value_channels: Optional[int] = None,
        pool_kv: bool = False,
        out_conv: bool = False,
        spectral_norm: bool = False,
        bias: bool = True,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if attn_channels is None:
            attn_channels = max(1, in_channels // 8)
        if value_channels is None:
            value_channels = in_channels
        for name, value in (
            ("in_channels", in_channels),
            ("attn_channels", attn_channels),
            ("value_channels", value_channels),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SelfAttention2d: {name} must be a positive int, got {value!r}")
        if value_channels != in_channels and not out_conv:
            raise ValueError(
                f"SelfAttention2d: value_channels={value_channels} differs from "
                f"in_channels={in_channels}, so the attention output cannot be added to x; pass "
                f"out_conv=True to map it back to {in_channels} channels with a 1x1 conv 'o'"
            )
        if not math.isfinite(scale):
            raise ValueError(f"SelfAttention2d: scale must be finite, got {scale!r}")

        self.in_channels = in_channels
        self.attn_channels = attn_channels
        self.value_channels = value_channels
        self.pool_kv = bool(pool_kv)
        self.spectral_norm = bool(spectral_norm)
        self.bias = bool(bias)
        self.scale = float(scale)

        def conv(c_in: int, c_out: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias)
            if spectral_norm:
                layer = nn.utils.parametrizations.spectral_norm(layer)
            return layer

        self.f = conv(in_channels, attn_channels)
        self.g = conv(in_channels, attn_channels)
        self.h = conv(in_channels, value_channels)
        self.o = conv(value_channels, in_channels) if out_conv else None
        self.gamma = nn.Parameter(torch.zeros(1))

    @property
    def out_conv(self) -> bool:
        return self.o is not None

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, attn_channels={self.attn_channels}, "
            f"value_channels={self.value_channels}, pool_kv={self.pool_kv}, "
            f"out_conv={self.out_conv}, spectral_norm={self.spectral_norm}, bias={self.bias}, "
            f"scale={self.scale}"
        )

    # -- the pieces -------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SelfAttention2d: x must have shape (B, C, H, W) with C = in_channels = "
                f"{self.in_channels}, got {tuple(x.shape)}"
            )
        if self.pool_kv and (x.shape[2] % 2 or x.shape[3] % 2):
            raise ValueError(
                f"SelfAttention2d(pool_kv=True): H and W must be even for the 2x2 max-pool of keys "
                f"and values, got H={x.shape[2]}, W={x.shape[3]}"
            )

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) flattened: (B, Cqk, N)."""
        return self.f(x).flatten(2)

    def _key_value_positions(self, t: torch.Tensor) -> torch.Tensor:
        """A key or value map, 2x2 max-pooled with pool_kv, flattened: (B, C', Nk)."""
        return (F.max_pool2d(t, 2) if self.pool_kv else t).flatten(2)

    def _keys_values(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """g(x) and h(x) at the key positions: (B, Cqk, Nk), (B, Cv, Nk)."""
        return self._key_value_positions(self.g(x)), self._key_value_positions(self.h(x))

    def _key_grid(self, height: int, width: int) -> Tuple[int, int]:
        return (height // 2, width // 2) if self.pool_kv else (height, width)

    # -- forward ----------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """y = gamma * o + x for x of shape (B, C, H, W).

        With ``return_attention=True`` returns the notebook's pair ``(y, attention_map)``, the map being
        beta of shape (B, N, Nk) (row i: the softmax over the keys for query position i, N = H * W).
        It is computed with the plain-PyTorch reference and takes B * N * Nk elements of memory (a
        warning says how much); y is still the fused op's. To look at a few positions only, use
        ``attention_rows``.
        """
        self._check_input(x)
        batch, channels, height, width = x.shape
        fx = self._queries(x)
        gx, hx = self._keys_values(x)
        gamma = self.gamma.to(fx.dtype)
        if self.o is None:
            # The default (notebook) path: one fused op call, gamma and the residual included.
            y = self_attn(fx, gx, hx, x.flatten(2), gamma, self.scale).view(batch, channels, height, width)
        else:
            attn = self_attn(fx, gx, hx, None, fx.new_ones(1), self.scale)
            attn = attn.view(batch, self.value_channels, height, width)
            y = gamma * self.o(attn) + x
        if not return_attention:
            return y
        n, nk = fx.shape[2], gx.shape[2]
        size = batch * n * nk * fx.element_size()
        warnings.warn(
            f"SelfAttention2d(return_attention=True) materialises the (B, N, Nk) = ({batch}, {n}, {nk}) "
            f"attention map in {fx.dtype}: {_format_bytes(size)}, plus as much again while it is "
            f"computed; use attention_rows() to look at a few query positions",
            UserWarning,
            stacklevel=4,  # the caller of module(x), past nn.Module's __call__ wrappers
        )
        return y, reference.attention_map(fx, gx, self.scale)

    # -- visualisation ----------------------------------------------------------------------------

    def _flat_positions(self, query_positions: QueryPositions, height: int, width: int) -> torch.Tensor:
        n = height * width
        if isinstance(query_positions, torch.Tensor):
            dtype = query_positions.dtype
            if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
                raise TypeError(
                    f"attention_rows: query_positions must be an integer tensor of flat indices, got "
                    f"dtype {query_positions.dtype}"
                )
            if query_positions.dim() != 1:
                raise ValueError(
                    f"attention_rows: query_positions must be a 1-D tensor of flat indices in [0, N), "
                    f"got shape {tuple(query_positions.shape)}"
                )
            idx = query_positions.to(torch.long)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise IndexError(
                    f"attention_rows: flat query positions must lie in [0, N) = [0, {n}) for H x W = "
                    f"{height} x {width}, got min {int(idx.min())}, max {int(idx.max())}"
                )
            return idx
        if not isinstance(query_positions, (list, tuple)):
            raise ValueError(
                f"attention_rows: query_positions must be a 1-D integer tensor of flat indices or a list "
                f"of (row, col) int pairs, got {type(query_positions).__name__}"
            )
        flat = []
        for k, pos in enumerate(query_positions):
            try:
                if isinstance(pos, (str, bytes)) or len(pos) != 2 or any(isinstance(p, bool) for p in pos):
                    raise TypeError
                row, col = (operator.index(p) for p in pos)  # ints, numpy ints, 0-d int tensors
            except TypeError:
                raise ValueError(
                    f"attention_rows: query_positions must be a 1-D integer tensor of flat indices or a "
                    f"list of (row, col) int pairs; item {k} is {pos!r}"
                ) from None
            if not (0 <= row < height and 0 <= col < width):
                raise IndexError(
                    f"attention_rows: query position {k} = (row {row}, col {col}) is outside the "
                    f"H x W = {height} x {width} grid"
                )
            flat.append(row * width + col)
        return torch.tensor(flat, dtype=torch.long)

    def attention_rows(self, x: torch.Tensor, query_positions: QueryPositions) -> torch.Tensor:
        """The attention map's rows for a few query positions, as the paper's figures show them.

        Computes only the Q x Nk scores ``softmax_j(scale * f(x)[:, q] . g(x)[:, j])`` of the chosen
        positions, never the full (N x Nk) map.

        Args:
            x: (B, C, H, W).
            query_positions: a 1-D integer tensor of flat positions ``row * W + col`` in [0, H * W), or
                a list of ``(row, col)`` pairs.

        Returns:
            (B, Q, Hk, Wk): for each query, a distribution over the keys' grid, which is (H, W), or
            (H / 2, W / 2) with ``pool_kv``.
        """
        self._check_input(x)
        height, width = x.shape[2], x.shape[3]
        idx = self._flat_positions(query_positions, height, width).to(x.device)
        fq = self._queries(x).index_select(2, idx)  # (B, Cqk, Q)
        gx = self._key_value_positions(self.g(x))  # (B, Cqk, Nk)
        rows = reference.attention_map(fq, gx, self.scale)  # (B, Q, Nk)
        return rows.view(x.shape[0], idx.numel(), *self._key_grid(height, width))
