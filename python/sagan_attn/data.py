"""Training data for the SAGAN example: an embedded dataset that needs no download, any folder of images,
and a batch order that depends only on the seed and the step (so a resumed run sees the same batches).

Images are float32 tensors (C, H, W) in [-1, 1] (the generator's tanh range), labels int64.

- ``digits``: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``, shipped inside the
  package: 1,797 grey 8x8 images, 10 classes), resized with Pillow (bicubic) to the training resolution.
- a folder: every image below it (read with Pillow, converted to RGB, shorter side resized to the
  resolution, centre-cropped). If the folder holds only sub-folders, each sub-folder is a class
  (sorted by name, as torchvision's ImageFolder does); otherwise the data are unlabelled.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGITS = "digits"


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """A Pillow image (L or RGB) as a (C, H, W) float32 tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).div_(127.5).sub_(1.0)


def resize_and_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution`` (bicubic), then the centred resolution x resolution square."""
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, Image.BICUBIC)
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class TensorImageDataset(Dataset):
    """Images and labels held in memory: ``images`` (N, C, H, W) in [-1, 1], ``labels`` (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, name: str) -> None:
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.img_channels = images.shape[1]
        self.resolution = images.shape[-1]
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


@functools.lru_cache(maxsize=4)
def _digits_tensors(resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.clip(bunch.images / 16.0 * 255.0, 0, 255).round().astype(np.uint8)  # values 0..16
    images = torch.stack([
        _to_tensor(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC)) for img in raw
    ])
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def digits(resolution: int = 32, labelled: bool = True) -> TensorImageDataset:
    """scikit-learn's digits (1,797 grey images, classes 0-9), resized from 8x8, white digits on black.

    The resized tensors are cached per resolution (shared, never written to); ``labelled=False`` gives
    every image the label 0 and ``num_classes`` 0.
    """
    images, labels = _digits_tensors(resolution)
    if not labelled:
        return TensorImageDataset(images, torch.zeros_like(labels), num_classes=0, name=DIGITS)
    return TensorImageDataset(images, labels, num_classes=10, name=DIGITS)


class ImageFolderDataset(Dataset):
    """Every image file below ``root``, loaded lazily (one file per item) as RGB at ``resolution``.

    Labels come from the top-level sub-folders when ``root`` holds no image itself and ``labelled`` is
    True; otherwise every label is 0 and ``num_classes`` is 0.
    """

    def __init__(self, root, resolution: int, labelled: bool = True) -> None:
        self.root = Path(root)
        self.resolution = resolution
        self.img_channels = 3
        self.name = str(self.root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"image folder {str(self.root)!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        at_top = any(p.parent == self.root for p in files)
        top_folders = sorted({p.relative_to(self.root).parts[0] for p in files}) if labelled and not at_top else []
        self.classes: List[str] = top_folders if len(top_folders) > 1 else []
        index = {name: k for k, name in enumerate(self.classes)}
        self.labels = [index.get(p.relative_to(self.root).parts[0], 0) for p in files]
        self.num_classes = len(self.classes)
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.files[index]) as image:
            image = resize_and_crop(image.convert("RGB"), self.resolution)
        return _to_tensor(image), torch.tensor(self.labels[index], dtype=torch.long)


def load_dataset(spec: str, resolution: int, labelled: bool = True) -> Dataset:
    """``"digits"`` (the embedded dataset) or the path of an image folder. The returned dataset has
    ``num_classes`` (0: unlabelled), ``img_channels``, ``resolution`` and ``name``."""
    if spec == DIGITS:
        return digits(resolution, labelled)
    return ImageFolderDataset(spec, resolution, labelled=labelled)


class StepBatchSampler(Sampler[List[int]]):
    """Batches of indices for the steps ``start_step, start_step + 1, ...`` (endless).

    Step s reads batch ``s % per_epoch`` of epoch ``s // per_epoch``, each epoch being a permutation drawn
    from a generator seeded with (seed, epoch): the order depends on nothing else, so a run resumed at
    step k reads exactly the batches the uninterrupted run read from step k on. The last partial batch of
    an epoch is dropped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, start_step: int = 0,
                 stop_step: Optional[int] = None) -> None:
        if batch_size < 1 or num_items < batch_size:
            raise ValueError(f"the dataset has {num_items} images, fewer than one batch of {batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.stop_step = stop_step
        self.per_epoch = num_items // batch_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return torch.randperm(self.num_items, generator=gen)

    def __iter__(self) -> Iterator[List[int]]:
        step, epoch, perm = self.start_step, None, None
        while self.stop_step is None or step < self.stop_step:
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                perm = self._permutation(epoch)
            k = step % self.per_epoch
            yield perm[k * self.batch_size:(k + 1) * self.batch_size].tolist()
            step += 1

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("StepBatchSampler is endless without stop_step")
        return max(0, self.stop_step - self.start_step)

