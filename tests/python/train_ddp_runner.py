"""Started by tests/python/test_train_ddp.py under torchrun (2 CPU processes, gloo): three training runs in
one job, so the job's start-up (torch imported by 3 processes on a small machine) is paid once.

    python -m torch.distributed.run --standalone --nproc_per_node=2 train_ddp_runner.py OUT ARG...

ARG... are the training arguments shared by the runs; the runs are
    OUT/grads.pt   the gradients of D and G after one D step and one G step (learning rates 0), rank 0's
    OUT/straight   --steps 4, with an FID every 2 steps on rank 0 (a stand-in feature extractor)
    OUT/split      --steps 2, then --resume to --steps 4
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

from sagan_attn import train


class TinyFeatures(nn.Module):
    """A stand-in for the FID Inception: uint8 images (B, 3, H, W) -> (B, 8) features of a fixed random
    conv net (enough to exercise the FID plumbing; its values mean nothing about image quality)."""

    num_features = 8

    def __init__(self, seed: int = 123) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)  # its own generator: building it leaves the run's RNG alone
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        return torch.tanh(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))


def first_gradients(argv: list, trainer_class=train.Trainer) -> dict:
    """D's gradients after the first D step and G's after the first G step (as all-reduced, under DDP)."""
    trainer = trainer_class(train.parse_args([*argv, "--lr-d", "0", "--lr-g", "0"]))
    real, y = next(trainer._batches())
    trainer.d_step(real, y)
    trainer.g_step(trainer.args.batch_size)  # leaves D's gradients alone (D is frozen there)
    return {net: {k: p.grad.clone() for k, p in module.named_parameters()}
            for net, module in (("D", trainer.D), ("G", trainer.G))}


def main(out: str, args: list) -> None:
    # One process group for the three runs (train.main leaves a group it did not start): ending one and
    # starting another in the same torchrun job is not supported.
    torch.distributed.init_process_group("gloo")
    torch.save(first_gradients([*args, "--out", f"{out}/grads"]), f"{out}/grads.pt")
    train.main([*args, "--steps", "4", "--out", f"{out}/straight", "--fid-every", "2", "--fid-samples", "16",
                "--fid-batch-size", "8"], fid_feature_extractor=TinyFeatures())
    train.main([*args, "--steps", "2", "--out", f"{out}/split"])
    train.main([*args, "--steps", "4", "--out", f"{out}/split", "--resume", f"{out}/split/checkpoints/last.pt"])
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
