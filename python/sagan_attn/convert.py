"""Weights of other codebases' SAGAN blocks in ``SelfAttention2d`` and back.

Every codebase names the same block differently, and the names cross: BigGAN-PyTorch's ``g`` is the
values (our ``h``), its ``phi`` the keys (our ``g``). ``LAYOUTS`` is the one table of those names:

========== =========================================== ============ ====== ========= ============
layout     block                                       f, g, h, o   gamma  keys/vals  returns
========== =========================================== ============ ====== ========= ============
notebook   the notebook's ``self_attn``                f, g, h, -   (1,)   N          (y, map)
sagan      Self-Attention-GAN ``Self_Attn``            query_conv,  (1,)   N          (y, map)
                                                       key_conv,
                                                       value_conv, -
biggan     BigGAN-PyTorch ``layers.Attention``         theta, phi,  ()     N/4 pooled y; (x, y=None)
                                                       g, o
mimicry    mimicry ``SelfAttention``                   as biggan    ()     N/4 pooled y
studiogan  StudioGAN ``ops.SelfAttention``             conv1x1_     sigma  N/4 pooled y
                                                       theta, phi,  (1,)
                                                       g, attn
========== =========================================== ============ ====== ========= ============

Spectral norm comes in four flavours, each kept exactly (``SelfAttention2d``'s ``sn_*`` options):
torch's parametrization (``parametrizations.weight.original``, ``..._u``, ``..._v``: order "uv"), torch's
older hook (``weight_orig``, ``weight_u``, ``weight_v``: order "vu"; StudioGAN with eps 1e-6, mimicry),
BigGAN-PyTorch's own (``weight``, ``u0``, ``sv0``: order "vu" and a power step in eval mode too; its
``--SN_eps`` defaults to 1e-8) and mimicry's own (``weight``, ``sn_u``, ``sn_sigma``: as BigGAN's).
BigGAN's single vector ``u0`` becomes our (u, v) with u = u0: its step (v from u, then u from v) then
runs in train and eval mode exactly as it does there.

A state_dict that maps to nothing, or leaves keys unmapped, raises: nothing is loaded half-way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.nn.utils.spectral_norm import SpectralNorm as _HookSpectralNorm

from .modules import SelfAttention2d, SpectralNormWeight

ROLES = ("f", "g", "h", "o")


@dataclass(frozen=True)
class Layout:
    """Where one codebase keeps the pieces of the SAGAN block, and how it calls and pools."""

    name: str
    block: str  # what users know it as
    f: str
    g: str
    h: str
    o: Optional[str]
    gamma: str
    gamma_shape: Tuple[int, ...]
    pool_kv: bool  # 2x2 max-pooled keys and values (floored for odd sizes by F.max_pool2d)
    returns_map: bool  # forward returns (y, attention map)
    takes_labels: bool  # forward(x, y=None): BigGAN-PyTorch passes the class embedding
    hook_sn_eps: float  # eps of its torch-hook spectral norm when a bare state_dict cannot say

    def conv_names(self) -> Dict[str, str]:
        """Our role -> their attribute, for the convolutions it has."""
        names = {"f": self.f, "g": self.g, "h": self.h, "o": self.o}
        return {role: name for role, name in names.items() if name is not None}


LAYOUTS: Dict[str, Layout] = {
    "notebook": Layout("notebook", "the notebook's self_attn", "f", "g", "h", None, "gamma", (1,),
                       False, True, False, 1e-12),
    "sagan": Layout("sagan", "Self-Attention-GAN Self_Attn", "query_conv", "key_conv", "value_conv", None,
                    "gamma", (1,), False, True, False, 1e-12),
    "biggan": Layout("biggan", "BigGAN-PyTorch layers.Attention", "theta", "phi", "g", "o", "gamma", (),
                     True, False, True, 1e-12),
    "mimicry": Layout("mimicry", "mimicry SelfAttention", "theta", "phi", "g", "o", "gamma", (),
                      True, False, False, 1e-12),
    "studiogan": Layout("studiogan", "StudioGAN ops.SelfAttention", "conv1x1_theta", "conv1x1_phi",
                        "conv1x1_g", "conv1x1_attn", "sigma", (1,), True, False, False, 1e-6),
}

BIGGAN_SN_EPS = 1e-8  # BigGAN-PyTorch's --SN_eps default

# Spectral-norm flavours: the keys under one conv, and our (order, eval_power_step).
_SN_FLAVOURS = {
    "none": (("weight",), None),
    "parametrizations": (("parametrizations.weight.original", "parametrizations.weight.0._u",
                          "parametrizations.weight.0._v"), ("uv", False)),
    "hook": (("weight_orig", "weight_u", "weight_v"), ("vu", False)),
    "biggan": (("weight", "u0", "sv0"), ("vu", True)),
    "mimicry": (("weight", "sn_u", "sn_sigma"), ("vu", True)),
}


def _layout(layout) -> Layout:
    if isinstance(layout, Layout):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"sagan_attn.convert: layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout]


# -- detection ------------------------------------------------------------------------------------


def detect_layout(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> Layout:
    """The layout whose conv and gamma names the keys of ``state_dict`` (under ``prefix``) use."""
    keys = {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
    tops = {k.split(".", 1)[0] for k in keys}
    found = []
    for layout in LAYOUTS.values():
        if layout.name == "mimicry":
            continue  # its keys are BigGAN's; the two load the same way
        if set(layout.conv_names().values()) | {layout.gamma} <= tops:
            found.append(layout)
    if len(found) == 1:
        return found[0]
    sample = sorted(keys)[:8]
    if not found:
        raise ValueError(
            f"sagan_attn.convert: the state_dict (prefix {prefix!r}) matches no known layout "
            f"({', '.join(sorted(LAYOUTS))}); its first keys are {sample}. Pass prefix= for a block "
            f"inside a bigger model"
        )
    raise ValueError(
        f"sagan_attn.convert: the state_dict matches several layouts "
        f"({', '.join(l.name for l in found)}); pass layout="
    )


def _conv_flavour(keys: set, where: str) -> str:
    for flavour in ("parametrizations", "hook", "biggan", "mimicry", "none"):
        if set(_SN_FLAVOURS[flavour][0]) <= keys:
            return flavour
    raise ValueError(f"sagan_attn.convert: {where}: no weight among its keys {sorted(keys)}")


# -- foreign -> ours --------------------------------------------------------------------------------


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layout=None,
    *,
    prefix: str = "",
    sn_eps: Optional[float] = None,
) -> Tuple[Dict[str, torch.Tensor], dict]:
    """A foreign block's state_dict as ``SelfAttention2d`` keys, and the constructor options it needs.

    Args:
        state_dict: the block's state (``block.state_dict()``), or a whole model's with ``prefix``.
        layout: a name in ``LAYOUTS`` (or None: detected from the keys).
        prefix: the block's key prefix in a model's state_dict, e.g. ``"G.attn."``.
        sn_eps: eps of its spectral norm; default: what the codebase uses (StudioGAN 1e-6, BigGAN's
            ``--SN_eps`` 1e-8, torch's 1e-12 otherwise). Only train-mode steps and BigGAN's eval
            step depend on it.

    Returns:
        (our state_dict, kwargs for ``SelfAttention2d(**kwargs)``).

    Raises:
        ValueError: if nothing maps, a key is left over, a conv is missing or not 1x1, the convs
            mix spectral-norm flavours or bias / no bias.
    """
    layout = _layout(layout) if layout is not None else detect_layout(state_dict, prefix)
    local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    used = set()
    out: Dict[str, torch.Tensor] = {}
    flavours, biases, weights = {}, {}, {}
    for role, name in layout.conv_names().items():
        keys = {k[len(name) + 1:] for k in local if k.startswith(name + ".")}
        if not keys:
            raise ValueError(
                f"sagan_attn.convert: layout {layout.name!r} needs the conv {name!r} (our {role!r}); "
                f"no key starts with {prefix + name + '.'!r}"
            )
        flavour = _conv_flavour(keys, f"conv {prefix + name!r}")
        flavours[role] = flavour
        sn_keys, order = _SN_FLAVOURS[flavour]
        used.update(f"{name}.{k}" for k in sn_keys)
        w = local[f"{name}.{sn_keys[0]}"]
        if w.dim() != 4 or tuple(w.shape[2:]) != (1, 1):
            raise ValueError(
                f"sagan_attn.convert: conv {prefix + name!r} must be a 1x1 Conv2d weight "
                f"(out, in, 1, 1), got shape {tuple(w.shape)}"
            )
        weights[role] = w
        biases[role] = "bias" in keys
        if biases[role]:
            out[f"{role}.bias"] = local[f"{name}.bias"]
            used.add(f"{name}.bias")
        if flavour == "none":
            out[f"{role}.weight"] = w
            continue
        base = f"{role}.parametrizations.weight"
        out[f"{base}.original"] = w
        if flavour == "parametrizations":
            u, v = local[f"{name}.{sn_keys[1]}"], local[f"{name}.{sn_keys[2]}"]
        elif flavour == "hook":
            u, v = local[f"{name}.weight_u"], local[f"{name}.weight_v"]
        else:
            # BigGAN / mimicry keep u only (shape (1, out)); their step computes v from it, and so does
            # ours with order "vu". v is stored as that step gives it, only to have a consistent pair.
            u = local[f"{name}.{sn_keys[1]}"].reshape(-1)
            v = F.normalize(torch.mv(w.flatten(1).t(), u), dim=0, eps=1e-12)
        out[f"{base}.0._u"], out[f"{base}.0._v"] = u, v
    if len(set(flavours.values())) != 1:
        raise ValueError(
            f"sagan_attn.convert: the convs of one block must share a spectral-norm flavour, got "
            f"{ {layout.conv_names()[r]: fl for r, fl in flavours.items()} }"
        )
    if len(set(biases.values())) != 1:
        raise ValueError(
            f"sagan_attn.convert: SelfAttention2d gives all convs a bias or none; the state_dict has "
            f"biases on {[layout.conv_names()[r] for r, b in biases.items() if b]} only"
        )
    if layout.gamma not in local:
        raise ValueError(f"sagan_attn.convert: layout {layout.name!r} needs {prefix + layout.gamma!r}")
    gamma = local[layout.gamma]
    if gamma.numel() != 1:
        raise ValueError(
            f"sagan_attn.convert: {prefix + layout.gamma!r} must have one element, got shape "
            f"{tuple(gamma.shape)}"
        )
    out["gamma"] = gamma.reshape(1)
    used.add(layout.gamma)
    left = sorted(set(local) - used)
    if left:
        raise ValueError(
            f"sagan_attn.convert: keys {[prefix + k for k in left]} map to nothing in SelfAttention2d "
            f"(layout {layout.name!r}); refusing to load part of the block"
        )
    flavour = next(iter(flavours.values()))
    wf, wh = weights["f"], weights["h"]
    kwargs = dict(
        in_channels=int(wf.shape[1]),
        attn_channels=int(wf.shape[0]),
        value_channels=int(wh.shape[0]),
        pool_kv=layout.pool_kv,
        pool_floor=layout.pool_kv,
        out_conv=layout.o is not None,
        bias=next(iter(biases.values())),
        spectral_norm=flavour != "none",
    )
    if flavour != "none":
        order, eval_step = _SN_FLAVOURS[flavour][1]
        if sn_eps is None:
            sn_eps = {"hook": layout.hook_sn_eps, "biggan": BIGGAN_SN_EPS}.get(flavour, 1e-12)
        kwargs.update(sn_eps=float(sn_eps), sn_power_order=order, sn_eval_power_step=eval_step)
    return out, kwargs


def from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layout=None,
    *,
    prefix: str = "",
    sn_eps: Optional[float] = None,
    cls: Type[SelfAttention2d] = SelfAttention2d,
    **overrides,
) -> SelfAttention2d:
    """A ``SelfAttention2d`` built for, and loaded with, a foreign block's state_dict (see convert_state_dict)."""
    converted, kwargs = convert_state_dict(state_dict, layout, prefix=prefix, sn_eps=sn_eps)
    kwargs.update(overrides)
    module = cls(**kwargs)
    w = converted.get("f.weight", converted.get("f.parametrizations.weight.original"))
    module.to(dtype=w.dtype, device=w.device)
    module.load_state_dict(converted, strict=True)
    return module


_CONFIG_FIELDS = ("in_channels", "attn_channels", "value_channels", "pool_kv", "out_conv", "bias",
                  "spectral_norm")


def load_state_dict(module: SelfAttention2d, state_dict: Mapping[str, torch.Tensor], layout=None, *,
                    prefix: str = "") -> SelfAttention2d:
    """Load a foreign block's state_dict into an existing ``SelfAttention2d`` (strict).

    Raises ValueError if the module's shape options differ from what the state_dict needs. The
    module's own ``sn_*`` options are kept: a different power-iteration order than the source's
    changes train-mode numbers (see ``from_state_dict`` for the source's).
    """
    converted, kwargs = convert_state_dict(state_dict, layout, prefix=prefix)
    wrong = {k: (getattr(module, k), kwargs[k]) for k in _CONFIG_FIELDS if getattr(module, k) != kwargs[k]}
    if wrong:
        raise ValueError(
            "sagan_attn.convert.load_state_dict: the module does not fit the state_dict: "
            + ", ".join(f"{k}={have!r} where it needs {need!r}" for k, (have, need) in wrong.items())
        )
    module.load_state_dict(converted, strict=True)
    return module


# -- modules ----------------------------------------------------------------------------------------


def _module_sn_eps(conv: nn.Module, where: str) -> Optional[float]:
    """eps of a conv's spectral norm, whatever its flavour (None without one); one power iteration only."""
    iters, eps = 1, None
    if nn.utils.parametrize.is_parametrized(conv, "weight"):
        p = conv.parametrizations.weight[0]
        eps, iters = p.eps, getattr(p, "n_power_iterations", 1)
        if isinstance(p, SpectralNormWeight):
            raise ValueError(f"sagan_attn.convert: {where} already uses SpectralNormWeight; convert it by hand")
    for hook in conv._forward_pre_hooks.values():
        if isinstance(hook, _HookSpectralNorm):
            eps, iters = hook.eps, hook.n_power_iterations
    if hasattr(conv, "u0") or hasattr(conv, "sn_u"):
        eps = float(conv.eps)
        iters = getattr(conv, "num_itrs", getattr(conv, "num_iters", 1))
        if getattr(conv, "num_svs", 1) != 1:
            raise ValueError(f"sagan_attn.convert: {where} tracks num_svs={conv.num_svs} singular values; "
                             f"SelfAttention2d tracks 1")
    if iters != 1:
        raise ValueError(f"sagan_attn.convert: {where} runs {iters} power iterations per step; "
                         f"SelfAttention2d runs 1")
    return eps


def from_module(module: nn.Module, *, cls: Type[SelfAttention2d] = SelfAttention2d, **overrides) -> SelfAttention2d:
    """``SelfAttention2d`` equal to a foreign block (weights, spectral-norm state and flavour, train mode)."""
    from .patch import match_layout

    layout, reason = match_layout(module)
    if layout is None:
        raise ValueError(f"sagan_attn.convert.from_module: {type(module).__name__}: {reason}")
    eps = {_module_sn_eps(getattr(module, name), f"{type(module).__name__}.{name}")
           for name in layout.conv_names().values()}
    if len(eps) != 1:
        raise ValueError(f"sagan_attn.convert.from_module: the convs use different spectral-norm eps {eps}")
    out = from_state_dict(module.state_dict(), layout, sn_eps=eps.pop(), cls=cls, **overrides)
    return out.train(module.training)


# -- ours -> foreign --------------------------------------------------------------------------------


def export_state_dict(module: SelfAttention2d, layout, *, sn_format: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """``module``'s state in a foreign layout's keys, loadable with ``strict=True`` by that block.

    ``sn_format`` (with spectral norm): ``"hook"`` (weight_orig/_u/_v; the default for StudioGAN and
    mimicry), ``"biggan"`` (weight, u0, sv0; BigGAN's default), ``"mimicry"`` (weight, sn_u, sn_sigma)
    or ``"parametrizations"``. The foreign block then computes the same y when its spectral norm's
    order and eval behaviour are the module's ``sn_*`` options (as ``from_module`` sets them).
    """
    layout = _layout(layout)
    if (layout.o is not None) != module.out_conv or layout.pool_kv != module.pool_kv:
        raise ValueError(
            f"sagan_attn.convert.export_state_dict: layout {layout.name!r} has out_conv="
            f"{layout.o is not None}, pool_kv={layout.pool_kv}; the module has out_conv={module.out_conv}, "
            f"pool_kv={module.pool_kv}"
        )
    if sn_format is None:
        sn_format = {"biggan": "biggan", "studiogan": "hook", "mimicry": "hook"}.get(layout.name, "parametrizations")
    if sn_format not in ("hook", "biggan", "mimicry", "parametrizations"):
        raise ValueError(f"export_state_dict: sn_format must be hook, biggan, mimicry or parametrizations, "
                         f"got {sn_format!r}")
    state = module.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for role, name in layout.conv_names().items():
        if f"{role}.bias" in state:
            out[f"{name}.bias"] = state[f"{role}.bias"].clone()
        if not module.spectral_norm:
            out[f"{name}.weight"] = state[f"{role}.weight"].clone()
            continue
        base = f"{role}.parametrizations.weight"
        w, u, v = (state[f"{base}.original"].clone(), state[f"{base}.0._u"].clone(),
                   state[f"{base}.0._v"].clone())
        if sn_format == "parametrizations":
            out.update({f"{name}.{k}": t for k, t in zip(_SN_FLAVOURS["parametrizations"][0], (w, u, v))})
        elif sn_format == "hook":
            out.update({f"{name}.weight_orig": w, f"{name}.weight_u": u, f"{name}.weight_v": v})
        else:
            sigma = torch.dot(u, torch.mv(w.flatten(1), v)).reshape(1)  # their logged estimate
            keys = ("u0", "sv0") if sn_format == "biggan" else ("sn_u", "sn_sigma")
            out.update({f"{name}.weight": w, f"{name}.{keys[0]}": u.reshape(1, -1), f"{name}.{keys[1]}": sigma})
    out[layout.gamma] = state["gamma"].reshape(layout.gamma_shape).clone()
    return out


__all__ = ["LAYOUTS", "Layout", "detect_layout", "convert_state_dict", "from_state_dict", "load_state_dict",
           "from_module", "export_state_dict"]
