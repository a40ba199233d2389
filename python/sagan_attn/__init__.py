"""sagan-attn: fused, memory-frugal self-attention for GANs (SAGAN), as the torch op
``torch.ops.sagan.self_attn``.

``import sagan_attn`` loads the compiled library, which registers the op, its CPU and meta (fake,
for torch.compile) kernels and its autograd, all in C++; this package adds the functional API, the
plain-PyTorch reference and the ``SelfAttention2d`` module.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (loading it registers the sagan ops)
from ._ops import self_attn
from . import reference
from .modules import SelfAttention2d
from . import convert
from .patch import patch, unpatch

__version__ = _C.__version__


def build_info() -> dict:
    """What this build of the extension holds: version, torch it was built against, CUDA, archs."""
    return dict(_C.build_info())


__all__ = ["self_attn", "reference", "build_info", "__version__", "SelfAttention2d"]
__all__ += ["convert", "patch", "unpatch"]
