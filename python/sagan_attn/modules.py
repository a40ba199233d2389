"""``SelfAttention2d``: the SAGAN self-attention block for (B, C, H, W) feature maps, on the fused op.

It is a drop-in for the bmm-based module users have today (the widely shared notebook's ``self_attn``:
1x1 convs ``f``, ``g``, ``h`` with bias, ``gamma`` of shape (1,), ``bmm``, softmax over the keys,
``bmm``; the package's own ``sagan_attn.models.layers.BmmSelfAttention2d`` computes it that way): same
constructor arguments, same parameter names, its ``state_dict`` loads with ``strict=True`` and gives the
same y, but the (N x N) attention map is never materialised unless asked for. Blocks of other codebases
(BigGAN-PyTorch, StudioGAN, Self-Attention-GAN, mimicry) convert with ``from_module`` and
``sagan_attn.convert``, or keep their own modules with ``sagan_attn.patch``.

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


SN_POWER_ORDERS = ("uv", "vu")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def _reject_positional(name: str, args: tuple) -> None:
    raise TypeError(
        f"{name}.forward takes one positional argument, x; got {1 + len(args)} (extra: "
        f"{', '.join(_describe(a) for a in args)}). return_attention is keyword-only; a codebase that "
        f"calls its attention block with more arguments (BigGAN-PyTorch's block(h, y), StudioGAN's "
        f"block(h, affine)) can keep its block and call sagan_attn.patch(model) instead"
    )


class SpectralNormWeight(nn.Module):
    """Spectral-norm parametrization with the power-iteration order and eval behaviour of a chosen codebase.

    W / sigma with sigma = u^T W v, u and v from power iteration (no gradient through them), as
    ``torch.nn.utils.parametrizations.spectral_norm``, and with its state_dict keys (``_u``, ``_v``).
    It exists because checkpoints of other codebases continue exactly only with their own step:
    ``order="uv"`` (torch's parametrization: u = normalize(W v), then v = normalize(W^T u)) or ``"vu"``
    (torch's older hook, BigGAN-PyTorch, mimicry: v first, then u); ``eval_power_step`` runs one step in
    eval mode as well, without storing it (BigGAN-PyTorch, mimicry's own spectral norm).
    """

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12, order: str = "uv",
                 eval_power_step: bool = False) -> None:
        super().__init__()
        if order not in SN_POWER_ORDERS:
            raise ValueError(f"SpectralNormWeight: order must be one of {SN_POWER_ORDERS}, got {order!r}")
        self.eps = float(eps)
        self.order = order
        self.eval_power_step = bool(eval_power_step)
        w = weight.detach().flatten(1)
        u = F.normalize(w.new_empty(w.shape[0]).normal_(), dim=0, eps=self.eps)
        v = F.normalize(w.new_empty(w.shape[1]).normal_(), dim=0, eps=self.eps)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        with torch.no_grad():
            for _ in range(15):  # start near the top singular pair, as torch's spectral_norm does
                self._step(w, self._u, self._v)

    def _step(self, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> None:
        """One power step on u and v, in place."""
        if self.order == "uv":
            u.copy_(F.normalize(torch.mv(w, v), dim=0, eps=self.eps))
            v.copy_(F.normalize(torch.mv(w.t(), u), dim=0, eps=self.eps))
        else:
            v.copy_(F.normalize(torch.mv(w.t(), u), dim=0, eps=self.eps))
            u.copy_(F.normalize(torch.mv(w, v), dim=0, eps=self.eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.flatten(1)
        with torch.no_grad():
            if self.training:
                self._step(w, self._u, self._v)
                u, v = self._u.clone(), self._v.clone()
            else:
                u, v = self._u.clone(), self._v.clone()
                if self.eval_power_step:
                    self._step(w, u, v)
        return weight / torch.dot(u, torch.mv(w, v))

    def extra_repr(self) -> str:
        return f"eps={self.eps}, order={self.order!r}, eval_power_step={self.eval_power_step}"


class SelfAttention2d(nn.Module):
    r"""SAGAN self-attention over the H x W positions of a feature map, fused (no N x N map in memory).

    ``y = gamma * o + x``, ``o[:, i] = sum_j beta[i, j] h(x)[:, j]``,
    ``beta[i, j] = softmax_j(scale * f(x)[:, i] . g(x)[:, j])``, for every position i of the H x W grid
    and every key position j (all N = H * W positions, or the N / 4 of the 2x2 max-pooled grid with
    ``pool_kv``). The paper's names: ``f`` queries, ``g`` keys, ``h`` values, ``beta`` the attention map,
    ``gamma`` the learnable scale, initialised to 0 so the block starts as the identity.

    With the defaults this is a drop-in replacement for the notebook module
    (``self_attn(in_channels, attn_channels)``, the bmm math of ``BmmSelfAttention2d``): the parameters
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
        sn_eps: the ``eps`` of the power iteration's normalisations (torch's default 1e-12;
            StudioGAN uses 1e-6, BigGAN-PyTorch its ``SN_eps``).
        sn_power_order: ``"uv"`` (torch.nn.utils.parametrizations: u = W v, then v = W^T u) or
            ``"vu"`` (the older ``torch.nn.utils.spectral_norm`` hook, BigGAN-PyTorch, mimicry: v = W^T u,
            then u = W v). The order changes the numbers of every train-mode step, so a checkpoint
            continues exactly only with the order it was trained with.
        sn_eval_power_step: also run one power step in eval mode, without storing it (BigGAN-PyTorch
            and mimicry's own spectral norm do; torch's never does).
            With ``sn_eps``, ``sn_power_order`` and ``sn_eval_power_step`` at their defaults the
            convolutions use torch's own parametrization; otherwise ``SpectralNormWeight``, which has
            the same state_dict keys.
        pool_floor: with ``pool_kv``, accept odd H or W and drop the last row or column, as
            ``F.max_pool2d`` does (BigGAN-PyTorch, StudioGAN and mimicry pool this way); the default
            raises on odd sizes.
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
        sn_eps: float = 1e-12,
        sn_power_order: str = "uv",
        sn_eval_power_step: bool = False,
        pool_floor: bool = False,
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
        if sn_power_order not in SN_POWER_ORDERS:
            raise ValueError(
                f"SelfAttention2d: sn_power_order must be one of {SN_POWER_ORDERS}, got {sn_power_order!r}"
            )
        if not (math.isfinite(sn_eps) and sn_eps > 0):
            raise ValueError(f"SelfAttention2d: sn_eps must be a positive finite float, got {sn_eps!r}")

        self.in_channels = in_channels
        self.attn_channels = attn_channels
        self.value_channels = value_channels
        self.pool_kv = bool(pool_kv)
        self.spectral_norm = bool(spectral_norm)
        self.bias = bool(bias)
        self.scale = float(scale)
        self.sn_eps = float(sn_eps)
        self.sn_power_order = sn_power_order
        self.sn_eval_power_step = bool(sn_eval_power_step)
        self.pool_floor = bool(pool_floor)
        torch_sn = (self.sn_eps, sn_power_order, self.sn_eval_power_step) == (1e-12, "uv", False)

        def conv(c_in: int, c_out: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias)
            if spectral_norm and torch_sn:
                layer = nn.utils.parametrizations.spectral_norm(layer)
            elif spectral_norm:
                nn.utils.parametrize.register_parametrization(
                    layer, "weight",
                    SpectralNormWeight(layer.weight, self.sn_eps, sn_power_order, self.sn_eval_power_step),
                )
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
            + (f", sn_eps={self.sn_eps}, sn_power_order={self.sn_power_order!r}, "
               f"sn_eval_power_step={self.sn_eval_power_step}" if self.spectral_norm else "")
            + (", pool_floor=True" if self.pool_floor else "")
        )

    # -- other codebases --------------------------------------------------------------------------

    @classmethod
    def from_module(cls, module: nn.Module, **overrides) -> "SelfAttention2d":
        """A ``SelfAttention2d`` with the weights, spectral-norm state and options of another codebase's block.

        ``module``: the notebook block, BigGAN-PyTorch ``layers.Attention``, StudioGAN
        ``ops.SelfAttention``, Self-Attention-GAN ``Self_Attn`` or mimicry ``SelfAttention`` (patched or
        not). The result computes the same y in train and eval mode (spectral-norm order, eps and eval
        step follow the source); ``overrides`` go to the constructor (e.g. ``pool_floor=False``). See
        ``sagan_attn.convert``.
        """
        from .convert import from_module

        return from_module(module, cls=cls, **overrides)

    def export_state_dict(self, layout: str, *, sn_format: Optional[str] = None) -> dict:
        """This module's state in another codebase's key layout (see ``sagan_attn.convert.export_state_dict``)."""
        from .convert import export_state_dict

        return export_state_dict(self, layout, sn_format=sn_format)

    # -- the pieces -------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SelfAttention2d: x must have shape (B, C, H, W) with C = in_channels = "
                f"{self.in_channels}, got {tuple(x.shape)}"
            )
        if self.pool_kv and self.pool_floor and (x.shape[2] < 2 or x.shape[3] < 2):
            raise ValueError(
                f"SelfAttention2d(pool_kv=True): H and W must be at least 2 for the 2x2 max-pool of keys "
                f"and values, got H={x.shape[2]}, W={x.shape[3]}"
            )
        if self.pool_kv and not self.pool_floor and (x.shape[2] % 2 or x.shape[3] % 2):
            raise ValueError(
                f"SelfAttention2d(pool_kv=True): H and W must be even for the 2x2 max-pool of keys "
                f"and values, got H={x.shape[2]}, W={x.shape[3]}; pass pool_floor=True to drop the last "
                f"row or column as F.max_pool2d does"
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
        self, x: torch.Tensor, *args, return_attention: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """y = gamma * o + x for x of shape (B, C, H, W).

        ``x`` is the only positional argument; ``return_attention`` is keyword-only, so a block call
        of another codebase (BigGAN-PyTorch's ``block(h, y)``) fails with a clear error instead of
        taking its labels for a flag.

        With ``return_attention=True`` returns the notebook's pair ``(y, attention_map)``, the map being
        beta of shape (B, N, Nk) (row i: the softmax over the keys for query position i, N = H * W).
        It is computed with the plain-PyTorch reference and takes B * N * Nk elements of memory (a
        warning says how much); y is still the fused op's. To look at a few positions only, use
        ``attention_rows``.
        """
        if args:
            _reject_positional(type(self).__name__, args)
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
