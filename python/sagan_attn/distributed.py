"""Data-parallel training for ``sagan_attn.train`` on torch's own engine: ``torch.distributed`` process
groups (NCCL on GPUs, gloo on CPUs), ``DistributedDataParallel`` and ``SyncBatchNorm``.

``torchrun --nproc_per_node=N -m sagan_attn.train ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; without them (a plain ``python -m sagan_attn.train``) nothing here
starts a process group and training is the single-process run.

How a step is split, so that N ranks compute what one process computes on the same global batch:
- every rank seeds its generators alike and draws the random numbers of the whole global batch (latents,
  labels, WGAN-GP interpolation weights), then keeps its own contiguous slice ``DistContext.shard``;
  the draws are tiny, and the RNG states of all ranks stay equal, so rank 0's checkpoint restores all;
- the data are sharded the same way: the global batch of a step (``data.StepBatchSampler``, a
  permutation per epoch seeded with (seed, epoch)) is cut into ``WORLD_SIZE`` contiguous pieces;
- DDP averages the gradients, and every loss is a mean over the batch, so the update is that of the
  global mean. What differs by design: batch-norm statistics (G) are per rank unless ``--sync-bn``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

# Fault injection for the tests: "RANK:STEP" makes that rank raise at that step (a rank that fails must
# take the job down with a clear message, not leave the others hanging).
FAULT_ENV = "SAGAN_ATTN_FAIL_AT"


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job; ``world_size == 1`` is the single-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: Optional[str] = None
    owns_group: bool = False  # started the process group (and so ends it); False when the caller had one

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """This rank's contiguous slice of a global batch (divisibility is checked at start-up)."""
        local = global_batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def mean(self, values: Dict[str, float]) -> Dict[str, float]:
        """The mean over ranks of each value (of per-rank means over equal shards: the global mean)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(t)
        return {k: v / self.world_size for k, v in zip(keys, t.tolist())}

    def max(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def _reduce_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def environment() -> Dict[str, int]:
    """RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them (1 process, rank 0 when it did not)."""
    values = {}
    for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        text = os.environ.get(name, str(default))
        try:
            values[name] = int(text)
        except ValueError:
            raise SystemExit(f"error: environment variable {name} must be an integer, got {text!r}") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise SystemExit(f"error: RANK must be in [0, WORLD_SIZE), got RANK={values['RANK']}, "
                         f"WORLD_SIZE={values['WORLD_SIZE']}")
    return values


def local_device(device: torch.device, local_rank: int) -> torch.device:
    """Under torchrun each rank takes the GPU of its local rank; the CPU stays the CPU."""
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise SystemExit(f"error: LOCAL_RANK {local_rank} needs GPU {local_rank}, but torch sees "
                         f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init(device: torch.device, backend: str = "auto",
         timeout_s: float = 1800.0) -> Tuple[DistContext, torch.device]:
    """Starts the process group when torchrun started more than one process; returns the context and this
    rank's device (the GPU of its local rank). A single process gets ``DistContext()`` and ``device``.

    ``timeout_s`` bounds every collective: a rank that stops answering (rather than crashing, which
    torchrun sees at once and answers by stopping the others) fails the job after that long.
    """
    env = environment()
    if env["WORLD_SIZE"] == 1:
        return DistContext(), device
    device = local_device(device, env["LOCAL_RANK"])
    if dist.is_available() and dist.is_initialized():  # a program that runs several trainings in one job
        return DistContext(rank=dist.get_rank(), local_rank=env["LOCAL_RANK"], world_size=dist.get_world_size(),
                           backend=dist.get_backend()), device
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise SystemExit(f"error: --dist-backend nccl needs CUDA devices, got --device {device}")
    if not dist.is_available():
        raise SystemExit("error: this torch build has no torch.distributed; start a single process instead")
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    ctx = DistContext(rank=dist.get_rank(), local_rank=env["LOCAL_RANK"], world_size=dist.get_world_size(),
                      backend=backend, owns_group=True)
    return ctx, device


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(ctx: DistContext, batch_size: int) -> None:
    if batch_size % ctx.world_size:
        raise SystemExit(f"error: --batch-size is the global batch and must be a multiple of the {ctx.world_size} "
                         f"processes, got {batch_size}")


def convert_sync_bn(module: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    """Every batch norm of ``module`` (those inside conditional batch norm included) as a ``SyncBatchNorm``,
    whose statistics are those of the global batch. torch's SyncBatchNorm synchronises CUDA tensors only."""
    if ctx.enabled and device.type != "cuda":
        raise SystemExit(f"error: --sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on {device.type}); "
                         f"leave it out on CPUs: each rank then normalises over its own shard")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def wrap(module: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (every parameter gets a gradient each backward, so no
    ``find_unused_parameters``); the module itself in a single process."""
    if not ctx.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, output_device=device.index if ids else None)


class ShardedBatchSampler(Sampler[List[int]]):
    """This rank's contiguous piece of each global batch of ``batches``."""

    def __init__(self, batches: Sampler[List[int]], ctx: DistContext) -> None:
        self.batches = batches
        self.ctx = ctx

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.batches:
            yield batch[self.ctx.shard(len(batch))]

    def __len__(self) -> int:
        return len(self.batches)


def maybe_fail(ctx: DistContext, step: int) -> None:
    """Raises if ``SAGAN_ATTN_FAIL_AT`` names this rank and step (a test's stand-in for a crash)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, _, at = spec.partition(":")
    if int(rank) == ctx.rank and int(at) == step:
        raise RuntimeError(f"fault injected by {FAULT_ENV}={spec}")
