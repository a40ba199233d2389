"""The shapes of the benchmark: attention blocks of published GANs, and a scaling sweep over N.

Everything is measured at the op level: f (B, Cqk, Nq), g (B, Cqk, Nk), h (B, Cv, Nk) and the residual
x (B, Cv, Nq) are given, as the block's 1x1 convolutions would produce them. Those convolutions cost the
same for every implementation, so they are left out.

C is the block's input channels and Cqk = C / 8 in every variant. Two variants of the block exist:
  paper   (Zhang et al. 2018, the notebook module): values Cv = C, keys and values at every position,
          Nk = Nq = H * W;
  pooled  (the official SAGAN code and BigGAN): values Cv = C / 2, keys and values 2x2 max-pooled,
          Nk = Nq / 4 (followed by an output 1x1 conv back to C, outside the op);
and a mix of the two, for a CPU target:
  kv-pooled  the paper's values (Cv = C) with keys and values 2x2 max-pooled, Nk = Nq / 4
             (``SelfAttention2d(C, pool_kv=True)``).
Each row of the tables says which variant it is.

Groups (for --only): models (the GAN blocks), cpu-target (the CPU targets, CPU runs only), scaling.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Iterable, List, Sequence

PAPER = "paper"
POOLED = "pooled"
KV_POOLED = "kv-pooled"
GROUPS = ("models", "cpu-target", "scaling")


@dataclass(frozen=True)
class Shape:
    name: str  # letters, digits and '-': used in tables, plots and --only
    model: str  # where the shape comes from, in words
    group: str  # one of GROUPS
    B: int
    C: int  # the block's input channels
    H: int
    W: int
    variant: str  # PAPER, POOLED or KV_POOLED

    @property
    def Cqk(self) -> int:
        return max(1, self.C // 8)

    @property
    def Cv(self) -> int:
        return self.C // 2 if self.variant == POOLED else self.C

    @property
    def Nq(self) -> int:
        return self.H * self.W

    @property
    def Nk(self) -> int:
        return (self.H // 2) * (self.W // 2) if self.variant in (POOLED, KV_POOLED) else self.Nq

    @property
    def features(self) -> str:
        return f"{self.H}x{self.W}"

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        return cls(d["name"], d["model"], d["group"], d["B"], d["C"], d["H"], d["W"], d["variant"])

    def describe(self) -> dict:
        return {
            "name": self.name, "model": self.model, "group": self.group, "variant": self.variant,
            "B": self.B, "C": self.C, "H": self.H, "W": self.W,
            "Cqk": self.Cqk, "Cv": self.Cv, "Nq": self.Nq, "Nk": self.Nk,
        }


# The attention block of each model, at the batch size it trains with on a GPU.
MODEL_SHAPES: List[Shape] = [
    Shape("sagan128-g-pooled", "SAGAN ImageNet-128 G", "models", 64, 256, 32, 32, POOLED),
    Shape("sagan128-g", "SAGAN ImageNet-128 G", "models", 64, 256, 32, 32, PAPER),
    Shape("biggan128-g-pooled", "BigGAN-128 G", "models", 32, 192, 64, 64, POOLED),
    Shape("biggan-deep-pooled", "BigGAN-deep-128 G", "models", 32, 256, 64, 64, POOLED),
    Shape("biggan-deep", "BigGAN-deep-128 G", "models", 32, 256, 64, 64, PAPER),
    Shape("biggan256-128-pooled", "BigGAN-256 G at 128x128", "models", 8, 192, 128, 128, POOLED),
    Shape("biggan256-128", "BigGAN-256 G at 128x128", "models", 8, 192, 128, 128, PAPER),
    Shape("small-d", "small-d discriminator (Cqk=12)", "models", 64, 96, 64, 64, PAPER),
]

# The CPU targets, float32, at 64x64 features (N = 4096): issue 4's B=4, C=64 (Cqk 8, Cv 64), and issue 14's
# two more, the same with keys and values pooled (Nk = 1024) and B=1, C=128 (Cqk 16, Cv 128). The first
# keeps the name "cpu-target": the CPU targets of issue 4 are evaluated on it.
CPU_TARGET = Shape("cpu-target", "CPU target (issue 4)", "cpu-target", 4, 64, 64, 64, PAPER)
CPU_TARGETS: List[Shape] = [
    CPU_TARGET,
    Shape("cpu-target-kv-pooled", "CPU target, keys and values pooled (issue 14)", "cpu-target", 4, 64, 64, 64,
          KV_POOLED),
    Shape("cpu-target-c128", "CPU target, C=128 (issue 14)", "cpu-target", 1, 128, 64, 64, PAPER),
]

# On a CPU the same blocks run at a 16th of the batch (at least 1): a CPU step at the GPU batch would
# take minutes per shape, and what is compared (the implementations against each other) does not
# depend on B.
CPU_BATCH_DIVISOR = 16

SCALING_B, SCALING_C = 1, 128
SCALING_MIN_N = 1024
# GPU: past the 65536, to find where the notebook module runs out of memory.
DEFAULT_MAX_N = {"cuda": 262144, "cpu": 16384}
QUICK_MAX_N = {"cuda": 16384, "cpu": 4096}
QUICK_MODEL_SHAPES = ("sagan128-g-pooled", "sagan128-g", "biggan-deep-pooled")


def _square_ish(n: int) -> tuple:
    """H, W with H * W = n for a power of two n: square, or W = 2 H."""
    h = 1
    while h * h * 4 <= n:
        h *= 2
    return h, n // h


def scaling_shapes(max_n: int, min_n: int = SCALING_MIN_N) -> List[Shape]:
    """N = min_n, 2 min_n, ..., max_n (powers of two) at B=1, C=128, paper variant (Cqk=16, Cv=128)."""
    shapes = []
    n = min_n
    while n <= max_n:
        h, w = _square_ish(n)
        shapes.append(Shape(f"scaling-N{n}", f"scaling B={SCALING_B} C={SCALING_C}", "scaling",
                            SCALING_B, SCALING_C, h, w, PAPER))
        n *= 2
    return shapes


def shapes_for(device: str, quick: bool = False, max_n: int = 0) -> List[Shape]:
    """The sweep's shapes for a device: the models (the CPU ones at a smaller B, plus the CPU targets),
    then the scaling sweep up to max_n (0: the device's default)."""
    models = list(MODEL_SHAPES)
    if quick:
        models = [s for s in models if s.name in QUICK_MODEL_SHAPES]
    if device == "cpu":
        models = [replace(s, B=max(1, s.B // CPU_BATCH_DIVISOR)) for s in models]
        if quick:
            models = [replace(s, B=1) for s in models]
        models += CPU_TARGETS
    limit = max_n or (QUICK_MAX_N if quick else DEFAULT_MAX_N)[device]
    scaling = scaling_shapes(limit, min_n=256 if quick else SCALING_MIN_N)
    return [s for s in models if s.Nq <= limit] + scaling


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select(shapes: Sequence[Shape], patterns: Sequence[str]) -> List[Shape]:
    """The shapes whose name or group matches one of the glob patterns (all of them if none does)."""
    if not patterns:
        return list(shapes)
    return [s for s in shapes if matches(s.name, patterns) or matches(s.group, patterns)]
