"""PNG figures of the training script: sample grids, and the generator's attention for a few query
positions, as the SAGAN paper's figures show it.

The attention figure never builds the (N x Nk) map: a forward pre-hook keeps the input of the
generator's attention block, and ``SelfAttention2d.attention_rows`` computes only the rows of the chosen
query positions. Pillow draws everything; no plotting library is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

# Query positions as fractions (row, col) of the attention map's height and width: three on the
# object, one in the background corner.
DEFAULT_QUERIES = ((0.3, 0.5), (0.5, 0.3), (0.7, 0.65), (0.1, 0.1))
QUERY_COLOURS = ((0, 255, 255), (0, 255, 0), (255, 0, 255), (255, 255, 0), (255, 128, 0), (0, 128, 255))
# A perceptually ordered dark-to-bright colour map (anchors sampled from matplotlib's 'inferno').
_CMAP_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8 (grey images repeated to RGB)."""
    images = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).numpy()


def _upscale(cell: np.ndarray, scale: int) -> np.ndarray:
    return cell.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else cell


def grid(cells: Sequence[np.ndarray], nrow: int, padding: int = 2, pad_value: int = 32) -> np.ndarray:
    """Tiles (H, W, 3) uint8 cells of one size, ``nrow`` per row, into one (H', W', 3) array."""
    height, width = cells[0].shape[:2]
    rows = (len(cells) + nrow - 1) // nrow
    out = np.full((padding + rows * (height + padding), padding + nrow * (width + padding), 3), pad_value, np.uint8)
    for k, cell in enumerate(cells):
        r, c = divmod(k, nrow)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        out[top:top + height, left:left + width] = cell
    return out


def save_image_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 1) -> Path:
    """Saves (B, C, H, W) images in [-1, 1] as one PNG grid, ``nrow`` images per row, each upscaled
    ``scale`` times (nearest neighbour). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = [_upscale(img, scale) for img in to_uint8(images)]
    Image.fromarray(grid(cells, nrow)).save(path, optimize=True)
    return path


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape -> uint8 RGB of shape (..., 3)."""
    pos = np.clip(values, 0.0, 1.0) * (len(_CMAP_ANCHORS) - 1)
    xs = np.arange(len(_CMAP_ANCHORS))
    rgb = np.stack([np.interp(pos, xs, _CMAP_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def query_positions(height: int, width: int, fractions: Sequence[Tuple[float, float]] = DEFAULT_QUERIES):
    """(row, col) positions on an height x width grid from fractions of its size."""
    return [(min(height - 1, int(fr * height)), min(width - 1, int(fc * width))) for fr, fc in fractions]


@torch.no_grad()
def generate_with_attention(generator: nn.Module, z: torch.Tensor, y: Optional[torch.Tensor],
                            queries: Optional[Sequence[Tuple[int, int]]] = None, res: Optional[int] = None):
    """Runs the generator and returns ``(images, rows, queries, grid)``.

    ``rows`` (B, Q, Hk, Wk) is the attention of the block at resolution ``res`` (default: the first)
    for the query positions ``queries`` ((row, col) on that block's H x W map; default: four positions
    from ``DEFAULT_QUERIES``), computed from the block's input with ``attention_rows``; ``grid`` is
    (H, W).
    """
    if not len(generator.attention):
        raise ValueError("generate_with_attention: the generator has no attention block")
    key = str(res) if res is not None else next(iter(generator.attention.keys()))
    attn = generator.attention[key]
    captured: List[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        images = generator(z, y)
    finally:
        handle.remove()
    x = captured[0]
    height, width = x.shape[2], x.shape[3]
    if queries is None:
        queries = query_positions(height, width)
    rows = attn.attention_rows(x, list(queries))
    return images, rows, list(queries), (height, width)


def _mark(draw: ImageDraw.ImageDraw, centre: Tuple[float, float], colour, radius: float) -> None:
    cy, cx = centre
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=(0, 0, 0), width=1,
                 fill=colour)


def attention_figure(images: torch.Tensor, rows: torch.Tensor, queries: Sequence[Tuple[int, int]],
                     attn_grid: Tuple[int, int], path, cell: int = 128) -> Path:
    """One row per image: the image with its query positions marked, then for each query the attention
    over the image (its row of the attention map, upsampled, as a heat map over the greyed image).

    images (B, C, H, W) in [-1, 1]; rows (B, Q, Hk, Wk); queries: (row, col) on the attn_grid (H, W)
    of the attention block's input.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = to_uint8(images)
    scale = max(1, cell // pictures.shape[1])
    height_a, width_a = attn_grid
    rows = rows.detach().float().cpu()
    radius = max(2.5, cell / 40)
    cells = []
    for b, picture in enumerate(pictures):
        base = Image.fromarray(_upscale(picture, scale))
        size_y, size_x = base.size[1], base.size[0]
        centres = [((r + 0.5) * size_y / height_a, (c + 0.5) * size_x / width_a) for r, c in queries]
        marked = base.copy()
        draw = ImageDraw.Draw(marked)
        for q, centre in enumerate(centres):
            _mark(draw, centre, QUERY_COLOURS[q % len(QUERY_COLOURS)], radius)
        cells.append(np.asarray(marked))
        grey = np.asarray(base.convert("L").convert("RGB"), dtype=np.float64)
        for q, centre in enumerate(centres):
            weights = rows[b, q].numpy()
            heat = Image.fromarray(colormap(weights / max(weights.max(), 1e-12)))
            heat = np.asarray(heat.resize((size_x, size_y), Image.BILINEAR), dtype=np.float64)
            blended = Image.fromarray((0.35 * grey + 0.65 * heat).round().astype(np.uint8))
            _mark(ImageDraw.Draw(blended), centre, QUERY_COLOURS[q % len(QUERY_COLOURS)], radius)
            cells.append(np.asarray(blended))
    Image.fromarray(grid(cells, nrow=1 + len(queries))).save(path, optimize=True)
    return path


def line_plot(xs: Sequence[float], ys: Sequence[float], path, title: str = "", xlabel: str = "",
              ylabel: str = "", size: Tuple[int, int] = (640, 400)) -> Path:
    """A line chart of ``ys`` against ``xs`` with marked points and labelled axes (e.g. FID against step)."""
    if not xs or len(xs) != len(ys):
        raise ValueError(f"line_plot: xs and ys must be non-empty and of one length, got {len(xs)} and {len(ys)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    left, right, top, bottom = 70, 20, 30, 50
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x_lo, x_hi = float(min(xs)), float(max(xs))
    y_lo, y_hi = float(min(ys)), float(max(ys))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = (y_hi - y_lo) * 0.05 or max(abs(y_hi) * 0.05, 1e-3)  # a flat line still gets a visible range
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def at(x: float, y: float) -> Tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),
                height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom))

    draw.rectangle((left, top, width - right, height - bottom), outline=(0, 0, 0))
    for k in range(5):  # ticks and grid lines
        x = x_lo + (x_hi - x_lo) * k / 4
        y = y_lo + (y_hi - y_lo) * k / 4
        px, _ = at(x, y_lo)
        _, py = at(x_lo, y)
        draw.line((px, top, px, height - bottom), fill=(225, 225, 225))
        draw.line((left, py, width - right, py), fill=(225, 225, 225))
        draw.text((px, height - bottom + 6), f"{x:.4g}", fill=(0, 0, 0), anchor="ma")
        draw.text((left - 6, py), f"{y:.3g}", fill=(0, 0, 0), anchor="rm")
    points = [at(float(x), float(y)) for x, y in zip(xs, ys)]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=2)
    for px, py in points:
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(31, 119, 180))
    draw.text((width / 2, 8), title, fill=(0, 0, 0), anchor="ma")
    draw.text((width / 2, height - 18), xlabel, fill=(0, 0, 0), anchor="ma")
    draw.text((8, top - 22), ylabel, fill=(0, 0, 0))
    image.save(path, optimize=True)
    return path
