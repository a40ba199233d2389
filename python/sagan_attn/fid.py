"""FID (and optionally IS) of the EMA generator during training, through torchmetrics.

The metric is torchmetrics' ``FrechetInceptionDistance`` (and ``InceptionScore``); the feature extractor
is the FID Inception-v3 of torch-fidelity, loaded by torchmetrics' ``NoTrainInceptionV3`` from a local
weights file (``--fid-weights PATH``; nothing is downloaded at run time), or any ``nn.Module`` mapping
uint8 images (B, 3, H, W) to features (B, d) (the tests use a tiny conv net through the same code).

Real statistics come from ``num_samples`` training images (a fixed subset; all of them if fewer), computed
once; each evaluation draws ``num_samples`` images from the generator with fixed latents and balanced
classes. Nothing here draws from the training run's random generators, so an evaluation changes neither
the run nor a resumed run.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # the file torch-fidelity's FID Inception loads
INSTALL_HINT = "pip install torchmetrics torch-fidelity (and the torchvision that matches your torch)"


def _torchmetrics():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
    except ImportError as err:
        raise SystemExit(f"error: FID needs torchmetrics ({err}); pip install 'torchmetrics>=1.4'") from None
    return FrechetInceptionDistance, InceptionScore


def load_inception(weights: str, feature: str = "2048") -> nn.Module:
    """torch-fidelity's FID Inception-v3 (``feature``: "2048" pool features for FID, "logits_unbiased" for
    IS) with the weights of the local file ``weights``, through torchmetrics' loader."""
    path = Path(weights)
    if not path.is_file():
        raise SystemExit(f"error: --fid-weights {weights}: no such file; FID needs the Inception-v3 weights as a "
                         f"local file (torch-fidelity's {INCEPTION_WEIGHTS}; nothing is downloaded at run time)")
    _torchmetrics()
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        import torch_fidelity  # noqa: F401  (torchmetrics only defines the Inception when this imports)
    except Exception as err:  # torch-fidelity imports torchvision, which may not import beside this torch
        raise SystemExit(f"error: the FID Inception needs torch-fidelity, which did not import ({err}); "
                         f"{INSTALL_HINT}") from None
    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature],
                                  feature_extractor_weights_path=str(path))
    except Exception as err:
        raise SystemExit(f"error: --fid-weights {weights}: not the FID Inception-v3 weights ({err})") from None


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, 3, H, W) uint8 in [0, 255], grey repeated to RGB (Inception's input)."""
    images = images.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FidEvaluator:
    """FID (and IS when ``is_extractor`` is given) of a generator against a dataset of real images."""

    def __init__(self, extractor: nn.Module, dataset, num_samples: int, batch_size: int, device: torch.device,
                 z_dim: int, num_classes: int, seed: int = 0, is_extractor: Optional[nn.Module] = None) -> None:
        FrechetInceptionDistance, InceptionScore = _torchmetrics()
        self.dataset = dataset
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.device = device
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.seed = seed
        self.real_done = False
        # Only the process that evaluates calls compute(): never wait for other ranks there.
        kwargs = dict(sync_on_compute=False)
        size = tuple(dataset[0][0].shape[1:])
        # torchmetrics probes a custom extractor with a random image: keep that off the run's generators
        with torch.random.fork_rng(devices=[]):
            self.fid = FrechetInceptionDistance(feature=extractor.eval(), reset_real_features=False,
                                                input_img_size=(3, *size), **kwargs).to(device)
            with warnings.catch_warnings():  # it keeps the logits of num_samples images (40 MiB at 10k): fine
                warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
                self.inception_score = (InceptionScore(feature=is_extractor.eval(), **kwargs).to(device)
                                        if is_extractor is not None else None)

    def _real_batches(self):
        count = min(self.num_samples, len(self.dataset))
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed))[:count]
        for chunk in order.split(self.batch_size):
            yield torch.stack([self.dataset[int(k)][0] for k in chunk])

    @torch.no_grad()
    def __call__(self, generator: nn.Module) -> Dict[str, float]:
        """Evaluates ``generator`` (in eval mode, as the EMA generator is); returns {"fid"[, "is_mean", "is_std"]}."""
        if not self.real_done:
            for real in self._real_batches():
                self.fid.update(to_uint8_rgb(real).to(self.device), real=True)
            self.real_done = True
        latents = torch.Generator().manual_seed(self.seed + 2)  # the same latents at every evaluation
        labels = torch.arange(self.num_samples) % self.num_classes if self.num_classes else None
        for start in range(0, self.num_samples, self.batch_size):
            n = min(self.batch_size, self.num_samples - start)
            z = torch.randn(n, self.z_dim, generator=latents).to(self.device)
            y = labels[start:start + n].to(self.device) if labels is not None else None
            images = to_uint8_rgb(generator(z, y))
            self.fid.update(images, real=False)
            if self.inception_score is not None:
                self.inception_score.update(images)
        out = {"fid": float(self.fid.compute())}
        self.fid.reset()  # the fake statistics only: reset_real_features=False keeps the real ones
        if self.inception_score is not None:
            with torch.random.fork_rng(devices=[]):  # InceptionScore shuffles with the global generator
                mean, std = self.inception_score.compute()
            out.update(is_mean=float(mean), is_std=float(std))
            self.inception_score.reset()
        return out
