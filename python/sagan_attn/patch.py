"""``patch(model)``: run the SAGAN blocks of existing codebases on the fused op, keeping everything else.

A block is found by its structure (attribute names and 1x1 convs, see ``sagan_attn.convert.LAYOUTS``),
never by importing its project. Only the bmm-softmax-bmm core is replaced: the block keeps its own
convs (and their spectral norm), parameter names, state_dict, class (``isinstance`` checks hold: the
patched class is a subclass of the original) and call convention (BigGAN-PyTorch's ``block(h, y)``,
Self-Attention-GAN's ``out, attention = block(x)``). Before patching, each block is checked on a small
random input in eval mode (gamma set to 1 for the check, then restored): a block whose math differs
(a softmax over the queries, an extra term) is reported and left alone, never half-patched.

``(y, attention)`` blocks return an ``AttentionMap`` as their map: a tensor that computes the
(B, N, Nk) map only when something reads it (detached from autograd: for looking at, not for
training through).

A patched model pickles (``torch.save(model)``) as the unpatched one, so it loads without sagan_attn;
``copy.deepcopy`` keeps the patch.
"""
from __future__ import annotations

import copy
import copyreg
import inspect
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from . import reference
from ._ops import self_attn
from .convert import LAYOUTS, Layout
from .modules import SelfAttention2d

_ORIGINAL = "_sagan_attn_original_class"
_LAYOUT = "_sagan_attn_layout"


# -- the lazy attention map -------------------------------------------------------------------------


class AttentionMap(torch.Tensor):
    """The (B, N, Nk) attention map of a patched ``(y, attention)`` block, computed on first use.

    Any torch operation on it (indexing, ``.cpu()``, ``.sum()``, plotting code's ``.detach()``) builds
    the map once with ``sagan_attn.reference`` and works on that; ``materialize()`` returns it. Until
    then it holds only f(x) and g(x) (O(B C N)).
    """

    @staticmethod
    def __new__(cls, f: torch.Tensor, g: torch.Tensor, scale: float = 1.0):
        shape = (f.shape[0], f.shape[2], g.shape[2])
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=f.dtype, device=f.device)

    def __init__(self, f: torch.Tensor, g: torch.Tensor, scale: float = 1.0):
        self._fg = (f.detach(), g.detach())
        self._scale = scale
        self._value: Optional[torch.Tensor] = None

    def materialize(self) -> torch.Tensor:
        if self._value is None:
            with torch.no_grad():
                self._value = reference.attention_map(*self._fg, self._scale)
            self._fg = None
        return self._value

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(t):
            return t.materialize() if isinstance(t, AttentionMap) else t

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))

    def numpy(self, *, force: bool = False):
        return self.materialize().numpy(force=force)

    def __deepcopy__(self, memo):
        return self.materialize().clone()

    def __reduce_ex__(self, protocol):
        return self.materialize().__reduce_ex__(protocol)

    def __repr__(self) -> str:
        state = "computed" if self._value is not None else "not computed yet"
        return f"AttentionMap(shape={tuple(self.shape)}, dtype={self.dtype}, {state})"


# -- detection ----------------------------------------------------------------------------------------


def _is_1x1_conv(m) -> bool:
    return (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1)
            and tuple(m.padding) == (0, 0) and tuple(m.dilation) == (1, 1) and m.groups == 1)


def _forward_arity(cls) -> int:
    """Positional parameters of cls.forward after self (a *args counts as many)."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def match_layout(module: nn.Module) -> Tuple[Optional[Layout], str]:
    """(the layout of a known SAGAN block, "") or (None, why not)."""
    if isinstance(module, SelfAttention2d):
        return None, "already a sagan_attn.SelfAttention2d"
    reasons = []
    for layout in LAYOUTS.values():
        if layout.name == "mimicry":
            continue  # BigGAN's names: told apart below by the call convention
        convs = {role: getattr(module, name, None) for role, name in layout.conv_names().items()}
        gamma = getattr(module, layout.gamma, None)
        if not any(isinstance(c, nn.Module) for c in convs.values()):
            continue
        bad = [layout.conv_names()[r] for r, c in convs.items() if not _is_1x1_conv(c)]
        if bad:
            reasons.append(f"{layout.block} names, but {bad} are not 1x1 stride-1 Conv2d")
            continue
        if not isinstance(gamma, nn.Parameter) or gamma.numel() != 1:
            reasons.append(f"{layout.block} names, but {layout.gamma!r} is not a one-element parameter")
            continue
        c = convs["f"].in_channels
        ok = (convs["g"].in_channels == c and convs["h"].in_channels == c
              and convs["f"].out_channels == convs["g"].out_channels)
        if convs.get("o") is not None:
            ok = ok and convs["o"].in_channels == convs["h"].out_channels and convs["o"].out_channels == c
        else:
            ok = ok and convs["h"].out_channels == c
        if not ok:
            reasons.append(f"{layout.block} names, but the conv channels do not chain (C -> C', C -> C)")
            continue
        arity = _forward_arity(type(module))
        if layout.name == "biggan" and arity == 1:
            layout = LAYOUTS["mimicry"]
        elif arity != 1 and not layout.takes_labels:
            reasons.append(f"{layout.block} names, but forward takes {arity} arguments where it takes x")
            continue
        return layout, ""
    if reasons:
        return None, "; ".join(reasons)
    return None, "no known SAGAN block layout (attribute names)"


def _looks_like_attention(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    if "attn" in name or "attention" in name:
        return True
    names = set(dict(module.named_children())) | set(dict(module.named_parameters(recurse=False)))
    return len(names & {"theta", "phi", "query_conv", "key_conv", "value_conv", "conv1x1_theta", "gamma"}) >= 2


# -- the fused forward --------------------------------------------------------------------------------


def _fused(module: nn.Module, layout: Layout, x: torch.Tensor):
    """(y, f(x), g(x)): the block's y with its own convs and the fused op."""
    if x.dim() != 4:
        raise ValueError(f"{type(module).__name__} (sagan_attn-patched): x must be (B, C, H, W), got "
                         f"shape {tuple(x.shape)}")
    batch, _, height, width = x.shape
    fx = getattr(module, layout.f)(x).flatten(2)
    gx, hx = getattr(module, layout.g)(x), getattr(module, layout.h)(x)
    if layout.pool_kv:
        gx, hx = F.max_pool2d(gx, 2), F.max_pool2d(hx, 2)
    gx, hx = gx.flatten(2), hx.flatten(2)
    gamma = getattr(module, layout.gamma)
    if layout.o is None:
        y = self_attn(fx, gx, hx, x.flatten(2), gamma.reshape(1).to(fx.dtype)).view(x.shape)
    else:
        attn = self_attn(fx, gx, hx, None, fx.new_ones(1)).view(batch, -1, height, width)
        y = x + gamma * getattr(module, layout.o)(attn)  # their order of terms
    return y, fx, gx


def _make_forward(layout: Layout):
    if layout.returns_map:
        def forward(self, x):
            y, fx, gx = _fused(self, layout, x)
            return y, AttentionMap(fx, gx)
    elif layout.takes_labels:
        def forward(self, x, y=None):  # BigGAN-PyTorch passes the class embedding; the block ignores it
            return _fused(self, layout, x)[0]
    else:
        def forward(self, x):
            return _fused(self, layout, x)[0]
    forward.__doc__ = f"{layout.block}'s forward with its bmm-softmax-bmm core on torch.ops.sagan.self_attn."
    return forward


_CLASSES = {}


def _patched_class(original: type, layout: Layout) -> type:
    key = (original, layout.name)
    if key not in _CLASSES:
        def __reduce_ex__(self, protocol):
            # Pickles as the original class, through the standard library only: loads without sagan_attn.
            return copyreg._reconstructor, (original, object, None), self.__getstate__()

        def __deepcopy__(self, memo):
            patched = type(self)
            self.__class__ = original
            try:
                new = copy.deepcopy(self, memo)
            finally:
                self.__class__ = patched
            new.__class__ = patched
            return new

        namespace = {
            "forward": _make_forward(layout),
            "__reduce_ex__": __reduce_ex__,
            "__deepcopy__": __deepcopy__,
            "__module__": original.__module__,
            "__qualname__": original.__qualname__,
            _ORIGINAL: original,
            _LAYOUT: layout,
        }
        _CLASSES[key] = type(original.__name__, (original,), namespace)
    return _CLASSES[key]


# -- the check before patching ------------------------------------------------------------------------

_CHECK_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}  # relative to the attention branch's size


def _check(module: nn.Module, layout: Layout) -> str:
    """"" if the block's own forward and the fused one agree on a random input, else why not."""
    conv_f = getattr(module, layout.f)
    param = next(conv_f.parameters())  # not .weight: torch's hook spectral norm keeps a stale one there
    dtype, device = param.dtype, param.device
    gen = torch.Generator().manual_seed(0)
    # 6 x 6 (pooled 3 x 3): two channels per image are enough to tell the softmax axis apart.
    x = torch.randn(2, conv_f.in_channels, 6, 6, generator=gen, dtype=torch.float64).to(device, dtype)
    modes = [(m, m.training) for m in module.modules()]
    gamma = getattr(module, layout.gamma)
    saved = gamma.detach().clone()
    try:
        module.eval()  # no spectral-norm state moves in eval mode, in any of the known flavours
        with torch.no_grad():
            gamma.fill_(1.0)  # with gamma = 0 the block is the identity and the check would see nothing
            out = type(module).__dict__.get(_ORIGINAL, type(module)).forward(module, x)
            y_ref = out[0] if isinstance(out, tuple) else out
            y, fx, gx = _fused(module, layout, x)
            if layout.returns_map:
                if not (isinstance(out, tuple) and len(out) == 2):
                    return "its forward does not return (y, attention map)"
                map_err = (out[1].double() - reference.attention_map(fx, gx).double()).abs().max().item()
            else:
                map_err = 0.0
    except Exception as e:  # its own forward failing on a plain input is a reason not to patch
        return f"the check call failed: {type(e).__name__}: {e}"
    finally:
        with torch.no_grad():
            gamma.copy_(saved)
        for m, mode in modes:
            m.training = mode
    if not isinstance(y_ref, torch.Tensor) or y_ref.shape != y.shape:
        return f"its forward returns {type(y_ref).__name__} of another shape than y = {tuple(y.shape)}"
    size = (y_ref - x).abs().max().item() + 1e-30
    err = (y_ref - y).abs().max().item() / size
    tol = _CHECK_TOL.get(dtype, 2e-2)
    if err > tol or map_err > tol:
        return (f"its output differs from the fused op's by {err:.2e} (attention map {map_err:.2e}; "
                f"tolerance {tol:.0e}): the math is not SAGAN's softmax over the keys")
    return ""


# -- patch / unpatch ----------------------------------------------------------------------------------


@dataclass
class PatchReport:
    """What ``patch`` did: ``patched`` (module name, layout name) and ``skipped`` (module name, why)."""

    patched: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.patched)

    def __str__(self) -> str:
        lines = [f"patched {name or '(model)'}: {layout}" for name, layout in self.patched]
        lines += [f"skipped {name or '(model)'}: {why}" for name, why in self.skipped]
        return "\n".join(lines) or "no SAGAN attention block found"


def is_patched(module: nn.Module) -> bool:
    return _ORIGINAL in type(module).__dict__


def patch(model: nn.Module, *, check: bool = True, strict: bool = False) -> PatchReport:
    """Run every known SAGAN block in ``model`` (or ``model`` itself) on the fused op, in place.

    Args:
        model: any module.
        check: compare each block's own forward with the fused one on a small random input first
            (eval mode, gamma 1 for the check) and skip blocks that differ.
        strict: raise if an attention-like module (by class or attribute names) is skipped.

    Returns:
        a ``PatchReport``; skipped attention-like modules are also warned about.
    """
    report = PatchReport()
    for name, module in model.named_modules():
        if is_patched(module):
            report.skipped.append((name, "already patched"))
            continue
        layout, reason = match_layout(module)
        if layout is None:
            if _looks_like_attention(module) and not isinstance(module, SelfAttention2d):
                report.skipped.append((name, reason))
            continue
        if check:
            reason = _check(module, layout)
            if reason:
                report.skipped.append((name, f"{layout.block} layout, but {reason}"))
                continue
        module.__class__ = _patched_class(type(module), layout)
        report.patched.append((name, layout.name))
    problems = [(n, why) for n, why in report.skipped if why != "already patched"]
    if problems:
        text = "; ".join(f"{n or '(model)'}: {why}" for n, why in problems)
        if strict:
            raise ValueError(f"sagan_attn.patch: attention-like modules left unpatched: {text}")
        warnings.warn(f"sagan_attn.patch: attention-like modules left unpatched: {text}", UserWarning,
                      stacklevel=2)
    return report


def unpatch(model: nn.Module) -> List[str]:
    """Undo ``patch``: every patched block in ``model`` gets its original class back. Returns their names."""
    names = []
    for name, module in model.named_modules():
        if is_patched(module):
            module.__class__ = type(module).__dict__[_ORIGINAL]
            names.append(name)
    return names


__all__ = ["patch", "unpatch", "is_patched", "match_layout", "PatchReport", "AttentionMap"]
