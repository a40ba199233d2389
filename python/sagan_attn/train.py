"""Train a SAGAN: ``python -m sagan_attn.train`` (``--help`` for every option).

With no argument it trains a class-conditional SAGAN at 32x32 on scikit-learn's handwritten digits (shipped
with scikit-learn: nothing to download), on the GPU if there is one, else on the CPU; ``--data FOLDER``
trains on any folder of images. ``--attention fused|notebook`` picks the attention implementation (the fused
op or the bmm baseline; the same parameters, so checkpoints load into either) and the run reports images/s
and peak memory, in the progress bar and at the end.

The recipe is the paper's: hinge loss, TTUR (Adam, lr_G 1e-4, lr_D 4e-4, betas (0, 0.9)), one D step per
G step, spectral norm in both networks, conditional batch norm in G and a projection discriminator; plus an
EMA of G's weights, which draws the samples. The default width is small for the CPU (``--ch 16``; SAGAN
uses 64). On a CPU shared with other jobs, ``--threads 1`` avoids OpenMP threads spinning against them.

Several GPUs (or CPU processes): ``torchrun --nproc_per_node=N -m sagan_attn.train ...`` trains with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); ``--batch-size`` is the global batch, split over the
ranks; ``--sync-bn`` makes G's batch norms synchronised (GPUs only); the EMA, figures, checkpoints, logs
and FID live on rank 0 (see ``sagan_attn.distributed``). ``--fid-every K --fid-weights PATH`` computes the
FID of the EMA generator against the training data every K steps (torchmetrics, Inception weights from a
local file), logs it beside the losses and plots it at the end.

Output folder (``--out``):
    samples/step_NNNNNN.png     a grid of EMA-generator samples for a fixed set of latents (a column per
                                class when there are at most 16 classes)
    attention/step_NNNNNN.png   the generator's attention for a few query positions (paper, Fig. 1 style),
                                from attention rows only, never the full map
    checkpoints/last.pt         G, D, G_ema, both optimizers, AMP scalers, step, arguments, RNG states;
                                ``--resume out/checkpoints/last.pt`` continues the run
    log.jsonl, summary.json     losses, images/s and peak memory along the run (and FID), and at its end
    fid.png                     FID against step, with ``--fid-every``
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

import sagan_attn
from sagan_attn import distributed, figures
from sagan_attn.data import StepBatchSampler, load_dataset
from sagan_attn.measure import PeakMemory  # the run's peak: CUDA allocated, CPU VmHWM
from sagan_attn.models import (
    ATTENTION_IMPLS,
    ATTENTION_VARIANTS,
    LOSSES,
    RESOLUTIONS,
    Discriminator,
    Generator,
    discriminator_loss,
    ema_decay,
    ema_update,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)

CHECKPOINT_FORMAT = "sagan_attn.train/1"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Arguments that define the networks and the data: on --resume they come from the checkpoint unless given.
MODEL_ARGS = ("data", "unlabelled", "resolution", "ch", "z_dim", "g_attn_res", "d_attn_res", "attn_variant")
TIMING_SKIP = 5  # steps left out of the reported images/s (allocations, kernel selection, warm caches)


# -- arguments --------------------------------------------------------------------------------------------


def _attn_res(text: str) -> List[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected resolutions separated by commas (0: none), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sagan_attn.train",
        description="Train a SAGAN (self-attention GAN) with the fused attention op or the bmm baseline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn's digits, embedded, 10 classes) or a folder of images; a folder of "
                        "sub-folders gives one class per sub-folder")
    g.add_argument("--unlabelled", action="store_true", help="train unconditionally even if the data have classes")
    g.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS, help="image size")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")

    g = p.add_argument_group("model")
    g.add_argument("--ch", type=int, default=16,
                   help="base channel width of both networks (small, for the CPU; SAGAN: 64)")
    g.add_argument("--z-dim", type=int, default=128, help="latent size")
    g.add_argument("--attention", choices=ATTENTION_IMPLS, default="fused",
                   help="attention implementation: the fused op, or the notebook's bmm (same parameters)")
    g.add_argument("--attn-variant", choices=ATTENTION_VARIANTS, default="paper",
                   help="'paper': f, g C/8, h C; 'official': + values C/2, 2x2-pooled keys/values, output conv")
    g.add_argument("--g-attn-res", type=_attn_res, default=None,
                   help="G feature-map resolution(s) of attention, comma-separated, 0 for none "
                        "(default: 32 for 32/64 images, 64 for 128)")
    g.add_argument("--d-attn-res", type=_attn_res, default=None,
                   help="D feature-map resolution(s) of attention (default: half the image size, at most 64)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", choices=LOSSES, default="hinge")
    g.add_argument("--gp-weight", type=float, default=10.0, help="WGAN-GP penalty weight (lambda)")
    g.add_argument("--r1", type=float, default=0.0, metavar="GAMMA",
                   help="R1 penalty (gamma / 2) E||grad_x D(x_real)||^2 on real images, with any loss "
                        "(0: off); its second derivatives run through the fused double backward")
    g.add_argument("--r1-every", type=int, default=1, metavar="K",
                   help="lazy R1 as StyleGAN2 does: every K-th discriminator step, weighted by K")
    g.add_argument("--steps", type=int, default=1000, help="total generator steps (a resumed run continues to it)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--n-dis", type=int, default=1, help="discriminator steps per generator step")
    g.add_argument("--lr-g", type=float, default=1e-4)
    g.add_argument("--lr-d", type=float, default=4e-4)
    g.add_argument("--betas", type=float, nargs=2, default=(0.0, 0.9), metavar=("BETA1", "BETA2"))
    g.add_argument("--ema-decay", type=float, default=0.999, help="EMA of G's weights (with a warm-up)")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast dtype (fp16 also scales the losses with a GradScaler)")

    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1'")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs/sagan", help="output folder")
    g.add_argument("--sample-every", type=int, default=100, help="steps between sample and attention PNGs (0: never)")
    g.add_argument("--samples", type=int, default=100, help="images in a sample grid")
    g.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints (0: only at the end)")
    g.add_argument("--log-every", type=int, default=10, help="steps between lines of log.jsonl")
    g.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint; its arguments are used unless given again here")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = p.add_argument_group("several processes (under torchrun)")
    g.add_argument("--sync-bn", action="store_true",
                   help="synchronised batch norm in G (conditional ones included): statistics of the global batch; "
                        "CUDA only")
    g.add_argument("--dist-backend", choices=("auto", "nccl", "gloo"), default="auto",
                   help="torch.distributed backend (auto: NCCL on GPUs, gloo on CPUs)")
    g.add_argument("--dist-timeout", type=float, default=1800.0,
                   help="seconds a collective may wait for the other ranks before the job fails")

    g = p.add_argument_group("evaluation")
    g.add_argument("--fid-every", type=int, default=0, help="steps between FIDs of the EMA generator (0: never)")
    g.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="the FID Inception-v3 weights, a local file (torch-fidelity's "
                        "pt_inception-2015-12-05-6726825d.pth); nothing is downloaded")
    g.add_argument("--fid-samples", type=int, default=10000,
                   help="generated images per FID, and real images (all of the data if fewer)")
    g.add_argument("--fid-batch-size", type=int, default=100)
    g.add_argument("--inception-score", action="store_true",
                   help="also the Inception Score (a second Inception pass over the generated images)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses the command line; with --resume, the checkpoint's arguments fill in those not given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("ch", "z_dim", "batch_size", "n_dis", "samples", "fid_batch_size", "r1_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("steps", "workers", "sample_every", "ckpt_every", "log_every", "fid_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be at least 0, got {getattr(args, name)}")
    if not args.r1 >= 0.0:
        parser.error(f"--r1 must be at least 0, got {args.r1}")
    if not 0.0 <= args.ema_decay < 1.0:
        parser.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.fid_samples < 2:
        parser.error(f"--fid-samples must be at least 2 (FID needs a covariance), got {args.fid_samples}")
    if not args.dist_timeout > 0:
        parser.error(f"--dist-timeout must be positive, got {args.dist_timeout}")
    if args.resume is None:
        return args
    shadow = build_parser()
    for action in shadow._actions:
        action.default = argparse.SUPPRESS
    given = vars(shadow.parse_args(argv))
    saved = _load_checkpoint_file(args.resume)["args"]
    merged = vars(args)
    for key, value in saved.items():
        if key in merged and key not in given and key != "resume":
            merged[key] = tuple(value) if key == "betas" else value
    return argparse.Namespace(**merged)


# -- device, seeds, memory ----------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict[str, Any]:
    """Every random generator the run draws from, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _mib(n: int) -> float:
    return n / 2**20


# -- AMP ---------------------------------------------------------------------------------------------------


def autocast_factory(device: torch.device, amp: str) -> Callable[[], contextlib.AbstractContextManager]:
    if amp == "none":
        return contextlib.nullcontext
    dtype = AMP_DTYPES[amp]
    if not torch.amp.is_autocast_available(device.type):
        raise SystemExit(f"error: --amp {amp}: torch has no autocast for device type {device.type!r}")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise SystemExit("error: --amp bf16: this GPU does not support bfloat16; use --amp fp16")
    return lambda: torch.autocast(device.type, dtype=dtype)


# -- checkpoints -------------------------------------------------------------------------------------------


def _load_checkpoint_file(path) -> Dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: {path} is not a checkpoint of sagan_attn.train ({CHECKPOINT_FORMAT})")
    return ckpt


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# -- training ------------------------------------------------------------------------------------------------


class Trainer:
    """One SAGAN training run: data, G, D, G_ema, optimizers, the loop, figures and checkpoints.

    Under torchrun, one rank of a data-parallel run: ``G`` and ``D`` are the bare modules (state dicts, EMA),
    ``G_train`` and ``D_train`` their DistributedDataParallel wrappers; ``G_ema`` (None on other ranks),
    figures, checkpoints, logs and FID are rank 0's. ``fid_feature_extractor`` (and ``is_feature_extractor``)
    replace the Inception of ``--fid-weights``: any module from uint8 images (B, 3, H, W) to (B, d).
    """

    def __init__(self, args: argparse.Namespace, fid_feature_extractor: Optional[nn.Module] = None,
                 is_feature_extractor: Optional[nn.Module] = None) -> None:
        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        self.dist, self.device = distributed.init(pick_device(args.device), args.dist_backend, args.dist_timeout)
        distributed.check_batch(self.dist, args.batch_size)
        if args.fid_every and fid_feature_extractor is None and not args.fid_weights:
            raise SystemExit("error: --fid-every needs --fid-weights PATH, the Inception-v3 weights as a local file "
                             "(torch-fidelity's pt_inception-2015-12-05-6726825d.pth)")
        # Every rank seeds alike and draws the random numbers of the whole global batch (see distributed.py).
        seed_everything(args.seed)
        self.out = Path(args.out)

        self.dataset = load_dataset(args.data, args.resolution, labelled=not args.unlabelled)
        self.num_classes = self.dataset.num_classes
        common = dict(resolution=args.resolution, ch=args.ch, num_classes=self.num_classes,
                      img_channels=self.dataset.img_channels, attn_variant=args.attn_variant,
                      attention=args.attention)
        self.G = Generator(z_dim=args.z_dim, attn_res=args.g_attn_res, **common).to(self.device)
        self.D = Discriminator(attn_res=args.d_attn_res, **common).to(self.device)
        self.G_ema = Generator(z_dim=args.z_dim, attn_res=args.g_attn_res, **common).to(self.device)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.G_ema.requires_grad_(False).eval()
        if args.sync_bn:
            self.G = distributed.convert_sync_bn(self.G, self.device, self.dist)
        # Built on every rank all the same: building draws from the RNG, whose state must stay equal on all.
        if not self.dist.is_main:
            self.G_ema = None
        self.G_train = distributed.wrap(self.G, self.device, self.dist)
        self.D_train = distributed.wrap(self.D, self.device, self.dist)

        betas = tuple(args.betas)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=args.lr_g, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=args.lr_d, betas=betas)
        self.autocast = autocast_factory(self.device, args.amp)
        scale = args.amp == "fp16"
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=scale)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=scale)

        # The fixed latents of the sample grids, from their own generator (the run's RNG is untouched).
        fixed = torch.Generator().manual_seed(args.seed + 1)
        self.fixed_z = torch.randn(args.samples, args.z_dim, generator=fixed).to(self.device)
        self.fixed_y = (torch.arange(args.samples) % self.num_classes).to(self.device) if self.num_classes else None
        self.grid_rows = self.num_classes if 0 < self.num_classes <= 16 else 10

        self.fid = None
        if args.fid_every and self.dist.is_main:
            from sagan_attn import fid

            with torch.random.fork_rng(devices=[]):  # building the Inception draws initial weights: not the run's
                extractor = fid_feature_extractor or fid.load_inception(args.fid_weights)
                is_extractor = is_feature_extractor or (
                    fid.load_inception(args.fid_weights, "logits_unbiased") if args.inception_score else None)
            self.fid = fid.FidEvaluator(extractor.to(self.device), self.dataset, args.fid_samples, args.fid_batch_size,
                                        self.device, args.z_dim, self.num_classes, seed=args.seed,
                                        is_extractor=is_extractor.to(self.device) if is_extractor else None)

        self.step = 0
        self.memory = PeakMemory(self.device)
        if args.resume:
            self._restore(_load_checkpoint_file(args.resume))

    # -- state --

    def state(self) -> Dict[str, Any]:
        args = dict(vars(self.args), resume=None, betas=list(self.args.betas))
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "args": args,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler_G": self.scaler_G.state_dict(),
            "scaler_D": self.scaler_D.state_dict(),
            "rng": rng_state(self.device),
            "dataset": {"name": self.dataset.name, "num_classes": self.num_classes,
                        "img_channels": self.dataset.img_channels, "resolution": self.args.resolution},
            "versions": {"torch": str(torch.__version__), "sagan_attn": str(sagan_attn.__version__)},
        }

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            if module is None:
                continue
            try:
                module.load_state_dict(ckpt[name])
            except RuntimeError as err:
                raise SystemExit(f"error: the checkpoint's {name} does not fit the model built from the arguments "
                                 f"(a model argument differs from the checkpoint's?): {err}") from None
        self.opt_G.load_state_dict(ckpt["opt_G"])
        self.opt_D.load_state_dict(ckpt["opt_D"])
        if ckpt.get("scaler_G"):
            self.scaler_G.load_state_dict(ckpt["scaler_G"])
        if ckpt.get("scaler_D"):
            self.scaler_D.load_state_dict(ckpt["scaler_D"])
        self.step = int(ckpt["step"])
        set_rng_state(ckpt["rng"], self.device)

    def save_checkpoint(self) -> Path:
        path = self.out / "checkpoints" / "last.pt"
        _save_atomic(self.state(), path)
        return path

    # -- the two updates --

    def _labels(self, batch: int) -> Optional[torch.Tensor]:
        if not self.num_classes:
            return None
        return torch.randint(self.num_classes, (batch,), device=self.device)

    def d_step(self, real: torch.Tensor, y: Optional[torch.Tensor], d_index: int = 0) -> Dict[str, float]:
        """One discriminator update on a real batch and as many fakes (drawn with the real labels); under
        torchrun ``real`` and ``y`` are this rank's shard of the global batch. ``d_index`` counts the
        discriminator steps of the whole run (lazy R1 runs on every ``--r1-every``-th)."""
        args, batch, part = self.args, real.shape[0], self.dist.shard(self.args.batch_size)
        z = torch.randn(args.batch_size, args.z_dim, device=self.device)[part]
        with torch.no_grad(), self.autocast():
            fake = self.G(z, y)
        with self.autocast():
            logits = self.D_train(torch.cat([real, fake.to(real.dtype)]), None if y is None else torch.cat([y, y]))
        d_real, d_fake = logits[:batch], logits[batch:]
        loss = discriminator_loss(args.loss, d_real, d_fake)
        out = {"d_loss": loss.item(), "d_real": d_real.float().mean().item(), "d_fake": d_fake.float().mean().item()}
        if args.loss == "wgan-gp":
            scale = self.scaler_D.get_scale() if self.scaler_D.is_enabled() else 1.0
            eps = torch.rand(args.batch_size, device=self.device)[part]
            # Through DDP too: the penalty's own backward (create_graph) leaves .grad alone; the parameter
            # gradients of both terms meet in the one loss.backward() below, whose all-reduce DDP does.
            gp = gradient_penalty(self.D_train, real, fake.float(), y, eps=eps, grad_scale=scale,
                                  autocast=self.autocast)
            loss = loss + args.gp_weight * gp
            out["gp"] = gp.item()
        if args.r1 > 0 and d_index % args.r1_every == 0:
            scale = self.scaler_D.get_scale() if self.scaler_D.is_enabled() else 1.0
            r1 = r1_penalty(self.D_train, real, y, grad_scale=scale, autocast=self.autocast)
            loss = loss + (args.r1 / 2) * args.r1_every * r1
            out["r1"] = r1.item()
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler_D.scale(loss).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        return out

    def g_step(self, batch: int) -> Dict[str, float]:
        """One generator update on fresh latents and uniformly drawn classes (``batch`` is the global batch:
        this rank takes its shard), then the EMA update."""
        part = self.dist.shard(batch)
        z = torch.randn(batch, self.args.z_dim, device=self.device)[part]
        y = self._labels(batch)
        y = y[part] if y is not None else None
        self.D.requires_grad_(False)
        try:
            # D outside DDP: it gets no gradient here, so there is nothing of D's to all-reduce
            with self.autocast():
                d_fake = self.D(self.G_train(z, y), y)
            loss = generator_loss(self.args.loss, d_fake)
            self.opt_G.zero_grad(set_to_none=True)
            self.scaler_G.scale(loss).backward()
            self.scaler_G.step(self.opt_G)
            self.scaler_G.update()
        finally:
            self.D.requires_grad_(True)
        if self.G_ema is not None:
            ema_update(self.G_ema, self.G, ema_decay(self.step, self.args.ema_decay))
        return {"g_loss": loss.item()}

    # -- figures --

    def write_figures(self) -> Dict[str, str]:
        """Sample grid and attention figure of the EMA generator at the current step."""
        name = f"step_{self.step:06d}.png"
        paths = {}
        zs = self.fixed_z.split(50)
        ys = self.fixed_y.split(50) if self.fixed_y is not None else [None] * len(zs)
        with torch.no_grad():
            images = torch.cat([self.G_ema(z, y) for z, y in zip(zs, ys)])
        paths["samples_png"] = str(figures.save_image_grid(images, self.out / "samples" / name, nrow=self.grid_rows))
        if len(self.G_ema.attention):
            k = min(4, len(self.fixed_z))
            y = None if self.fixed_y is None else self.fixed_y[:k]
            images, rows, queries, attn_grid = figures.generate_with_attention(self.G_ema, self.fixed_z[:k], y)
            paths["attention_png"] = str(figures.attention_figure(images, rows, queries, attn_grid,
                                                              self.out / "attention" / name))
        return paths

    # -- the loop --

    def _batches(self):
        args = self.args
        sampler = StepBatchSampler(len(self.dataset), args.batch_size, seed=args.seed,
                                   start_step=self.step * args.n_dis, stop_step=args.steps * args.n_dis)
        if self.dist.enabled:
            sampler = distributed.ShardedBatchSampler(sampler, self.dist)
        # A generator of its own: the DataLoader draws a base seed from it, not from the run's RNG.
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=args.workers,
                                             generator=torch.Generator().manual_seed(args.seed),
                                             pin_memory=self.device.type == "cuda")
        return iter(loader)

    def _log(self, record: Dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")

    def _fid_plot(self) -> Optional[str]:
        """fid.png from every FID in log.jsonl (those of earlier runs of a resumed run included)."""
        log = self.out / "log.jsonl"
        points = [(r["step"], r["fid"]) for r in map(json.loads, log.read_text().splitlines()) if "fid" in r]
        if not points:
            return None
        steps, values = zip(*points)
        return str(figures.line_plot(steps, values, self.out / "fid.png", title="FID of the EMA generator",
                                     xlabel="step", ylabel="FID"))

    def train(self) -> Dict[str, Any]:
        from tqdm import tqdm

        args, main = self.args, self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.G.train()
        self.D.train()
        start_step = self.step
        figure_paths: Dict[str, str] = {}
        if main and args.sample_every and self.step == 0:
            figure_paths = self.write_figures()

        batches = self._batches()
        self.memory.start()
        step_times: List[float] = []
        recent = deque(maxlen=20)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        wall_start = time.perf_counter()
        ckpt_path = None
        last_fid: Dict[str, float] = {}
        bar = tqdm(total=args.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=args.no_progress or not main, desc=f"SAGAN {args.attention}")
        try:
            while self.step < args.steps:
                distributed.maybe_fail(self.dist, self.step + 1)
                t0 = time.perf_counter()
                stats: Dict[str, float] = {}
                for k in range(args.n_dis):
                    real, y = next(batches)
                    real = real.to(self.device, non_blocking=True)
                    y = y.to(self.device, non_blocking=True) if self.num_classes else None
                    stats.update(self.d_step(real, y, self.step * args.n_dis + k))
                stats.update(self.g_step(args.batch_size))
                sync()
                dt = time.perf_counter() - t0
                self.step += 1
                step_times.append(dt)
                recent.append(dt)
                stats = self.dist.mean(stats)  # each rank's loss is its shard's: log the global batch's
                images_per_s = args.batch_size * args.n_dis * len(recent) / sum(recent)
                peak = self.memory.peak()
                record = None
                if args.log_every and (self.step % args.log_every == 0 or self.step == args.steps):
                    record = {"step": self.step, **stats, "images_per_s": images_per_s, "peak_mib": _mib(peak)}
                if self.fid is not None and (self.step % args.fid_every == 0 or self.step == args.steps):
                    last_fid = self.fid(self.G_ema)
                    record = {**(record or {"step": self.step}), **last_fid}
                if main:
                    postfix = {"D": f"{stats['d_loss']:.3f}", "G": f"{stats['g_loss']:.3f}"}
                    if "gp" in stats:
                        postfix["gp"] = f"{stats['gp']:.3f}"
                    if last_fid:
                        postfix["FID"] = f"{last_fid['fid']:.2f}"
                    postfix.update({"img/s": f"{images_per_s:.1f}", "peak": f"{_mib(peak):.0f}MiB"})
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(1)
                    if record is not None:
                        self._log(record)
                    if args.sample_every and (self.step % args.sample_every == 0 or self.step == args.steps):
                        figure_paths = self.write_figures()
                    if (args.ckpt_every and self.step % args.ckpt_every == 0) or self.step == args.steps:
                        ckpt_path = self.save_checkpoint()
        finally:
            bar.close()
        wall = time.perf_counter() - wall_start
        steady = step_times[TIMING_SKIP:] if len(step_times) > 2 * TIMING_SKIP else step_times
        images = args.batch_size * args.n_dis
        images_per_s = images * len(steady) / sum(steady) if steady else None
        peak = self.dist.max(self.memory.peak())  # a collective: every rank, after the loop
        fid_png = self._fid_plot() if main and self.fid is not None else None
        summary = {
            "steps": self.step,
            "steps_this_run": self.step - start_step,
            "wall_s": wall,
            "train_s": sum(step_times),
            "images_per_s": images_per_s,
            "images_per_s_note": (f"real images through D per second of training steps, the first {TIMING_SKIP} "
                                  f"steps left out" if steady is not step_times else
                                  "real images through D per second of training steps"),
            "images_per_s_per_process": images_per_s / self.dist.world_size if images_per_s else None,
            "peak_memory_mib": _mib(peak),
            "baseline_memory_mib": _mib(self.memory.baseline),
            "memory_note": self.memory.what + (", the largest over the ranks" if self.dist.enabled else ""),
            "attention_impl": args.attention,
            "attn_variant": args.attn_variant,
            "loss": args.loss,
            "amp": args.amp,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "dist_backend": self.dist.backend,
            "sync_bn": bool(args.sync_bn),
            "threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "ch": args.ch,
            "resolution": args.resolution,
            "g_attn_res": list(self.G.attn_res),
            "d_attn_res": list(self.D.attn_res),
            "checkpoint": str(ckpt_path) if ckpt_path else None,
            **last_fid,
            **({"fid_png": fid_png} if fid_png else {}),
            **figure_paths,
        }
        if main:
            with open(self.out / "summary.json", "w") as f:
                json.dump(summary, f, indent=2)
        return summary


def _report(summary: Dict[str, Any]) -> str:
    ips = summary["images_per_s"]
    lines = [
        f"done: step {summary['steps']} ({summary['steps_this_run']} this run) in {summary['wall_s']:.1f} s "
        f"(training steps {summary['train_s']:.1f} s)",
        f"throughput: {ips:.1f} images/s ({summary['images_per_s_note']}); attention {summary['attention_impl']} "
        f"({summary['attn_variant']}), {summary['device']}, threads {summary['threads']}, amp {summary['amp']}"
        if ips else "throughput: no step run",
        f"peak memory: {summary['peak_memory_mib']:.1f} MiB ({summary['memory_note']}; "
        f"{summary['baseline_memory_mib']:.1f} MiB before the first step)",
    ]
    if summary["world_size"] > 1 and ips:
        lines.insert(2, f"processes: {summary['world_size']} ({summary['dist_backend']}), "
                        f"{summary['images_per_s_per_process']:.1f} images/s each; sync-bn {summary['sync_bn']}")
    if "fid" in summary:
        lines.append(f"FID: {summary['fid']:.3f}" + (f", IS {summary['is_mean']:.3f} +- {summary['is_std']:.3f}"
                                                     if "is_mean" in summary else ""))
    for key, what in (("samples_png", "samples"), ("attention_png", "attention"), ("fid_png", "FID plot"),
                      ("checkpoint", "checkpoint")):
        if summary.get(key):
            lines.append(f"{what}: {summary[key]}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, fid_feature_extractor: Optional[nn.Module] = None,
         is_feature_extractor: Optional[nn.Module] = None) -> int:
    """The command line; the extractors replace the Inception of ``--fid-weights`` (see ``Trainer``)."""
    args = parse_args(argv)
    trainer = Trainer(args, fid_feature_extractor, is_feature_extractor)
    ctx = trainer.dist
    try:
        if ctx.is_main:
            print(f"SAGAN {args.resolution}x{args.resolution} on {trainer.dataset.name} ({len(trainer.dataset)} "
                  f"images, {trainer.num_classes or 'no'} classes), {trainer.device}"
                  f"{f' x {ctx.world_size} processes ({ctx.backend})' if ctx.enabled else ''}; "
                  f"G {_count(trainer.G)} / D {_count(trainer.D)} parameters; attention {args.attention} "
                  f"({args.attn_variant}) at G {list(trainer.G.attn_res)}, D {list(trainer.D.attn_res)}; "
                  f"loss {args.loss}; from step {trainer.step} to {args.steps}", flush=True)
        try:
            summary = trainer.train()
        except Exception as err:
            if not ctx.enabled:
                raise
            # torchrun stops the other ranks and reports the first failure: say which rank, and where
            raise RuntimeError(f"rank {ctx.rank} of {ctx.world_size} failed at step {trainer.step + 1}: "
                               f"{type(err).__name__}: {err}") from err
        if ctx.is_main:
            print(_report(summary), flush=True)
    finally:
        distributed.shutdown(ctx)
    return 0


def _count(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    # record: under torchrun, a failing rank's traceback goes into the job's error report
    sys.exit(record(main)())
