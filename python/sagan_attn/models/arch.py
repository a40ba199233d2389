"""The layout of the SAGAN networks per image resolution: one table, read by both networks.

Channel widths are multiples of the base width ``ch``, as in BigGAN's PyTorch code (the SAGAN official
code has the same residual layout): the generator starts from a 4x4 map and doubles the resolution in
every block; the discriminator halves it in every block but the last ones.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Sequence, Tuple, Union

RESOLUTIONS = (32, 64, 128)
G_BOTTOM = 4  # the generator's first feature map is G_BOTTOM x G_BOTTOM


class Arch(NamedTuple):
    in_mult: Tuple[int, ...]    # input channels of each block, in units of ch (D's first block: the image)
    out_mult: Tuple[int, ...]   # output channels of each block, in units of ch
    resample: Tuple[bool, ...]  # G: upsample x2; D: downsample x2
    default_attn_res: int       # feature-map resolution of the attention block by default


G_ARCH: Dict[int, Arch] = {
    32: Arch((4, 4, 2), (4, 2, 1), (True,) * 3, 32),
    64: Arch((16, 8, 4, 2), (8, 4, 2, 1), (True,) * 4, 32),
    128: Arch((16, 16, 8, 4, 2), (16, 8, 4, 2, 1), (True,) * 5, 64),
}
D_ARCH: Dict[int, Arch] = {
    32: Arch((0, 1, 2, 4), (1, 2, 4, 4), (True, True, False, False), 16),
    64: Arch((0, 1, 2, 4, 8), (1, 2, 4, 8, 16), (True, True, True, True, False), 32),
    128: Arch((0, 1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 16), (True, True, True, True, True, False), 64),
}

AttnRes = Union[None, int, Sequence[int]]


def arch_for(table: Dict[int, Arch], resolution: int, who: str) -> Arch:
    if resolution not in table:
        raise ValueError(f"{who}: resolution must be one of {tuple(table)}, got {resolution!r}")
    return table[resolution]


def block_resolutions(arch: Arch, start: int, up: bool) -> Tuple[int, ...]:
    """The feature-map resolution after each block, the first block being fed a start x start map."""
    res, out = start, []
    for resample in arch.resample:
        if resample:
            res = res * 2 if up else res // 2
        out.append(res)
    return tuple(out)


def attention_resolutions(attn_res: AttnRes, arch: Arch, available: Sequence[int], who: str) -> Tuple[int, ...]:
    """The resolutions that get an attention block: None = the arch's default, an int or ints, 0 or () = none."""
    if attn_res is None:
        wanted = (arch.default_attn_res,)
    elif isinstance(attn_res, int):
        wanted = (attn_res,) if attn_res else ()
    else:
        wanted = tuple(int(r) for r in attn_res if int(r))
    for res in wanted:
        if res not in available:
            raise ValueError(
                f"{who}: attention resolution {res} is not one of its feature-map resolutions "
                f"{tuple(sorted(set(available)))}"
            )
    return tuple(sorted(set(wanted)))
