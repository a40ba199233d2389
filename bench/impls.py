"""The implementations under test, each a function y = impl(f, g, h, x, gamma) on (B, C, N) tensors.

  notebook         the SAGAN notebook module's math, as the package's bmm reference
                   ``sagan_attn.reference``: bmm, softmax, bmm, ``gamma * o + x``; keeps the N x N map.
  sdpa-<backend>   ``F.scaled_dot_product_attention(scale=1.0)`` with one backend forced through
                   ``torch.nn.attention.sdpa_kernel``: q = f^T, k = g^T, v = h^T as (B, 1, N, C), the
                   output transposed back to (B, Cv, Nq) and the gamma residual added. The transposes are
                   views; a backend that needs its inputs contiguous gets ``.contiguous()`` copies, inside
                   the timed region.
  sdpa-flash-pad   the flash backend on q and k zero-padded from Cqk to Cv channels (the dot products
                   are unchanged): the way to use flash, which wants one head size for q, k and v, when
                   Cqk != Cv. The padding is inside the timed region.
  flex             FlexAttention, ``torch.nn.attention.flex_attention.flex_attention`` under
                   ``torch.compile`` (no mask, no score_mod, scale=1.0), on the same (B, 1, N, C) views as
                   SDPA, with the same transpose back and residual outside the compiled call. It takes
                   Cqk != Cv as it is (torch 2.13 on the CPU); where it refuses them, q and k are
                   zero-padded to Cv as for sdpa-flash-pad. Compiled afresh for each shape, by the first
                   call (the correctness check), so compilation is never timed. The CPU has no
                   FlexAttention backward: there its bwd and fwd+bwd read "n/a (...)".
  sagan-attn       ``torch.ops.sagan.self_attn``, the fused op.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sagan_attn  # noqa: F401  (registers torch.ops.sagan)
from sagan_attn import reference
from sagan_attn.measure import is_oom

from .shapes import Shape

SCALE = 1.0  # SAGAN does not scale its logits
GAMMA = 0.5  # non-zero, so y depends on the attention branch
FUSED = "sagan-attn"
NOTEBOOK = "notebook"
SDPA_BACKENDS = {  # name -> backend, in the order of the tables
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
}
FLEX = "flex"
IMPLS: List[str] = [NOTEBOOK] + [f"sdpa-{b}" for b in SDPA_BACKENDS] + ["sdpa-flash-pad", FLEX, FUSED]
# The implementations compiled by their first call on a shape (warm-up calls must precede timing and
# memory measurements).
COMPILED = {FLEX}
# The layouts resolve() tries, in order, for the implementations that have several.
FLEX_LAYOUTS = ["views", "q, k padded to Cv"]
# The implementations that build the (B, Nq, Nk) map, with the maps a forward+backward holds at its peak
# (the notebook: s, beta, dbeta, ds; asked 5 for headroom) for the memory estimate that skips them.
MATERIALISING = {NOTEBOOK: 5, "sdpa-math": 5}

Impl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor], torch.Tensor]


def flops(shape: Shape) -> Dict[str, float]:
    """Useful floating-point operations, the same count for every implementation: 2 Nq Nk (Cqk + Cv)
    per image forward (f^T g and the h-weighted sum), 2.5x that for the backward."""
    fwd = 2.0 * shape.B * shape.Nq * shape.Nk * (shape.Cqk + shape.Cv)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}


def map_bytes(shape: Shape, dtype: torch.dtype) -> int:
    """One (B, Nq, Nk) attention map in dtype."""
    return shape.B * shape.Nq * shape.Nk * torch.empty((), dtype=dtype).element_size()


def input_bytes(shape: Shape, dtype: torch.dtype) -> int:
    """f, g, h, x, gamma and dy: what is allocated before any step."""
    s = shape
    elems = s.B * (s.Cqk * (s.Nq + s.Nk) + s.Cv * s.Nk + 2 * s.Cv * s.Nq) + 1
    return elems * torch.empty((), dtype=dtype).element_size()


def estimated_bytes(impl: str, shape: Shape, dtype: torch.dtype) -> int:
    """What a forward+backward of impl needs beyond its inputs, roughly (0: O(B C N), not estimated)."""
    return MATERIALISING.get(impl, 0) * map_bytes(shape, dtype)


# -- inputs and the oracle -----------------------------------------------------------------------------


def make_inputs(shape: Shape, dtype: torch.dtype, device: str, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """f, g, h, x, gamma and the output gradient dy: drawn in float64 from a seeded generator (the same
    numbers on every device), rounded to dtype. gamma is a one-element tensor."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    s = shape
    f, g, h, x = rnd(s.B, s.Cqk, s.Nq), rnd(s.B, s.Cqk, s.Nk), rnd(s.B, s.Cv, s.Nk), rnd(s.B, s.Cv, s.Nq)
    gamma = torch.full((1,), GAMMA, dtype=dtype, device=device)
    dy = rnd(s.B, s.Cv, s.Nq)
    return f, g, h, x, gamma, dy


def check_rows(nq: int, count: int = 128) -> torch.Tensor:
    """The query positions the correctness check looks at: all of them, or `count` spread evenly."""
    if nq <= count:
        return torch.arange(nq)
    return torch.linspace(0, nq - 1, count).round().long().unique()


def oracle_rows(inputs: Tuple[torch.Tensor, ...], rows: torch.Tensor) -> torch.Tensor:
    """y at the chosen query positions, by the reference math in float64 on the same (rounded) inputs.
    A query row needs only its own f column, so this holds a (B, rows, Nk) map, never (B, Nq, Nk)."""
    f, g, h, x, gamma = (t.double() for t in inputs[:5])
    rows = rows.to(f.device)
    return reference.self_attn(f[:, :, rows], g, h, x[:, :, rows], gamma, SCALE)


def tolerance(dtype: torch.dtype) -> float:
    """Largest accepted max|y - oracle| / max|oracle| at the checked rows: loose enough for the rounding
    of any correct implementation in dtype (the notebook in bfloat16 rounds its logits), tight enough to
    catch a wrong one (a transposed operand or softmax axis is off by tens of percent)."""
    return {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]


def relative_error(y: torch.Tensor, expected: torch.Tensor, rows: torch.Tensor) -> float:
    got = y[:, :, rows.to(y.device)].double()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


# -- the implementations -------------------------------------------------------------------------------


def notebook(f, g, h, x, gamma):
    return reference.self_attn(f, g, h, x, gamma, SCALE)


def fused(f, g, h, x, gamma):
    return torch.ops.sagan.self_attn(f, g, h, x, gamma, SCALE)


def _as_heads(t: torch.Tensor, contiguous: bool) -> torch.Tensor:
    """(B, C, N) -> (B, 1, N, C): a view, or a copy with the channels last in memory."""
    t = t.transpose(1, 2)
    if contiguous:
        t = t.contiguous()
    return t.unsqueeze(1)


def _heads(f, g, h, contiguous: bool, pad: bool):
    """q, k, v as (B, 1, N, C) heads; with pad, q and k zero-padded from Cqk to Cv channels."""
    q, k, v = _as_heads(f, contiguous), _as_heads(g, contiguous), _as_heads(h, contiguous)
    if pad and q.shape[-1] < v.shape[-1]:
        q = F.pad(q, (0, v.shape[-1] - q.shape[-1]))
        k = F.pad(k, (0, v.shape[-1] - k.shape[-1]))
    return q, k, v


def _output(o: torch.Tensor, x: Optional[torch.Tensor], gamma: torch.Tensor) -> torch.Tensor:
    """(B, 1, Nq, Cv) heads back to y = gamma o + x in the (B, Cv, Nq) layout the other implementations return."""
    y = gamma * o.squeeze(1).transpose(1, 2)
    if x is not None:
        y = y + x
    return y.contiguous()


def sdpa(backend: str, contiguous: bool, pad: bool = False) -> Impl:
    """One forced SDPA backend on the (B, C, N) layout: transposes in, transpose out, residual added."""
    kind = SDPA_BACKENDS[backend]

    def run(f, g, h, x, gamma):
        q, k, v = _heads(f, g, h, contiguous, pad)
        with sdpa_kernel(kind):
            o = F.scaled_dot_product_attention(q, k, v, scale=SCALE)  # (B, 1, Nq, Cv)
        return _output(o, x, gamma)

    return run


def flex(pad: bool = False) -> Impl:
    """FlexAttention compiled by torch.compile, on the (B, C, N) layout as sdpa() does it.

    Each call of flex() compiles afresh (torch._dynamo.reset()): the sweep builds it once per shape, so
    every shape gets a kernel specialised to its sizes (dynamic=False), and a sweep of many shapes never
    reaches Dynamo's recompile limit (past which it would run FlexAttention uncompiled, unfused)."""
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(f, g, h, x, gamma):
        q, k, v = _heads(f, g, h, contiguous=False, pad=pad)
        if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            # torch 2.13 has no FlexAttention backward on the CPU. Not attempted: under torch.compile the
            # failed attempt would leave flex_attention uncompiled (unfused, N x N maps) for later calls.
            raise NotImplementedError(f"FlexAttention does not support backward on CPU (torch {torch.__version__})")
        return _output(compiled(q, k, v, scale=SCALE), x, gamma)

    return run


def step_fns(fn: Impl, inputs: Tuple[torch.Tensor, ...]) -> Dict[str, Callable[[], object]]:
    """The timed steps of an implementation on (f, g, h, x, gamma, dy):
      fwd      an inference forward, under no_grad;
      fwd+bwd  a forward and y.backward(dy), with gradients for f, g, h, x and gamma (set to None first);
      clear    drops the gradients of the last fwd+bwd (before a memory measurement);
    and the backward alone is backward_fn's.
    """
    f, g, h, x, gamma, dy = inputs
    leaves = [t.detach().requires_grad_(True) for t in (f, g, h, x, gamma)]

    def fwd():
        with torch.no_grad():
            return fn(f, g, h, x, gamma)

    def clear():
        for t in leaves:
            t.grad = None

    def fwd_bwd():
        clear()
        fn(*leaves).backward(dy)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "clear": clear}


def backward_fn(fn: Impl, inputs: Tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """The backward alone: one forward builds the graph, each call differentiates it again (retain_graph)."""
    f, g, h, x, gamma, dy = inputs
    leaves = [t.detach().requires_grad_(True) for t in (f, g, h, x, gamma)]
    y = fn(*leaves)

    def bwd():
        return torch.autograd.grad(y, leaves, dy, retain_graph=True)

    return bwd


@dataclass
class Resolved:
    """An implementation made ready for one shape: the function, or why it cannot run that shape."""

    name: str
    fn: Optional[Impl]
    layout: str = ""  # SDPA: "views" or "contiguous copies" (what the backend accepted)
    reason: str = ""  # why fn is None


def build(name: str, layout: str = "") -> Impl:
    """The function of an implementation; for SDPA, with the layout found by resolve()."""
    if name == NOTEBOOK:
        return notebook
    if name == FUSED:
        return fused
    if name == FLEX:
        return flex(pad=layout == FLEX_LAYOUTS[1])
    backend = name[len("sdpa-"):]
    pad = backend.endswith("-pad")
    backend = backend[: -len("-pad")] if pad else backend
    return sdpa(backend, contiguous=(layout == "contiguous copies"), pad=pad)


def _refusal(err: BaseException, caught: List[warnings.WarningMessage]) -> str:
    """Why an SDPA backend refused: its most specific warning (PyTorch explains there), else the error."""
    texts = [str(w.message).split(" (Triggered internally")[0] for w in caught]
    specific = [t for t in texts if "not used because" not in t and "Memory efficient kernel not used" not in t]
    text = (specific or texts or [str(err)])[-1]
    return " ".join(text.split())[:200]


def resolve(name: str, shape: Shape, inputs: Tuple[torch.Tensor, ...]) -> Tuple[Resolved, Optional[torch.Tensor]]:
    """Runs impl once (no grad) on the inputs and returns it with its output y, or with the reason it
    cannot run this shape (y None). SDPA backends are tried on transposed views first, then on contiguous
    copies; flex as it is, then with q and k padded to Cv (its first call compiles it: any error there,
    a compiler's included, is a reason). Out-of-memory errors propagate to the caller."""
    f, g, h, x, gamma = inputs[:5]
    if name == "sdpa-flash-pad" and shape.Cqk >= shape.Cv:
        return Resolved(name, None, reason="Cqk >= Cv: nothing to pad (see sdpa-flash)"), None
    if name.startswith("sdpa-"):
        layouts = ["views", "contiguous copies"]
    elif name == FLEX:
        layouts = FLEX_LAYOUTS if shape.Cqk < shape.Cv else FLEX_LAYOUTS[:1]
    else:
        layouts = [""]
    # flex: torch.compile runs a compiler, whose failures come in many types; they are reasons too.
    refusals = Exception if name == FLEX else (RuntimeError, NotImplementedError)
    reason = ""
    for layout in layouts:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fn = build(name, layout)
                with torch.no_grad():
                    y = fn(f, g, h, x, gamma)
                return Resolved(name, fn, layout), y
            except refusals as err:
                if is_oom(err):
                    raise
                reason = _refusal(err, caught) if name.startswith("sdpa-") else " ".join(str(err).split())[:200]
    if f.device.type == "cpu" and name in ("sdpa-efficient", "sdpa-cudnn"):
        reason = "CUDA-only backend: " + reason
    return Resolved(name, None, reason=reason), None
