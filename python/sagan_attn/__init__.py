"""sagan-attn: fused, memory-frugal self-attention for GANs (SAGAN), as the torch op
``torch.ops.sagan.self_attn``.

``import sagan_attn`` loads the compiled library, which registers the op, its CPU and meta (fake,
for torch.compile) kernels and its autograd, all in C++; this package adds the functional API, the
plain-PyTorch reference and the ``SelfAttention2d`` module.

The op library is ``libsagan_attn.so`` beside ``_C`` (which links it, RPATH ``$ORIGIN``): the same
file a C++ (LibTorch) program links. ``torch.ops.load_library(sagan_attn.library_path())`` before or
after ``import sagan_attn`` is a no-op for the loader, and another file of the library (an installed
C++ package) loaded into the same process registers nothing: the first one loaded serves the ops.
"""
from __future__ import annotations

import warnings

import torch  # loads libtorch before the extension

try:
    from . import _C  # noqa: F401  (loading it registers the sagan ops)
except ImportError as err:  # typically undefined symbols (built against another torch) or no libsagan_attn.so
    raise ImportError(
        f"sagan_attn: the compiled extension does not load with the installed torch {torch.__version__}; "
        "it must be built against the torch it runs with, and libsagan_attn.so must lie beside _C: "
        "reinstall it with `pip install --no-build-isolation .` (or -e .) in this environment. "
        "Loader error: " + str(err)
    ) from err


def _check_torch_version() -> None:
    built = str(dict(_C.build_info()).get("torch", ""))
    if built.split(".")[:2] != torch.__version__.split("+")[0].split(".")[:2]:
        warnings.warn(
            f"sagan_attn was built against torch {built} but runs with torch {torch.__version__}: C++ "
            "extensions are tied to the torch they are built with; reinstall it with "
            "`pip install --no-build-isolation .` in this environment",
            RuntimeWarning,
            stacklevel=3,
        )


_check_torch_version()
from ._ops import self_attn
from . import reference
from .modules import SelfAttention2d
from . import convert
from .patch import patch, unpatch

__version__ = _C.__version__


def build_info() -> dict:
    """What this build of the extension holds: version, torch it was built against, CUDA, archs."""
    return dict(_C.build_info())


def library_path() -> str:
    """The file of the op library (libsagan_attn.so) that this package loaded: the one to pass to
    ``torch.ops.load_library`` in code that loads the ops by path."""
    return _C.library_path()


__all__ = ["self_attn", "reference", "build_info", "library_path", "__version__", "SelfAttention2d"]
__all__ += ["convert", "patch", "unpatch"]
