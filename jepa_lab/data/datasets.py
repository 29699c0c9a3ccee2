"""Datasets as uint8 tensors, batch order as a pure function of the step, on-device augmentation.

A dataset is loaded once into four uint8/int64 tensors (kept uint8 so it fits on the device as
airbench keeps CIFAR-10); each step indexes a global batch, and augmentation runs batched on the
device. Its files are found, downloaded and verified by :mod:`jepa_lab.data.files`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from jepa_lab.data.files import DataError, locate, read_cifar, read_fashion, search_roots
from jepa_lab.data.seeds import derive_seed
from jepa_lab.data.synthetic import generate_synthetic
from jepa_lab.spec.data import AugmentSpec, DataSpec, SyntheticSpec


@dataclass(frozen=True)
class Dataset:
    """Both splits as tensors: images (N, C, H, W) uint8, labels (N,) int64.

    ``digest`` identifies the source payload before ``subset`` (the spec records the subset);
    ``mean``/``std`` are per channel, in [0, 1] units, of the training images actually used.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    digest: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with its four tensors on ``device``."""
        names = ("train_images", "train_labels", "test_images", "test_labels")
        return replace(self, **{name: getattr(self, name).to(device) for name in names})

    @property
    def n_classes(self) -> int:
        """Number of classes (largest label + 1; reads the labels back if they are on a device)."""
        return int(torch.maximum(self.train_labels.max(), self.test_labels.max())) + 1


# ---------------------------------------------------------------------------------- loading


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (floored at 1e-3) of uint8 (N, C, H, W) images, in [0, 1] units.

    Exact and light: a 256-bin histogram per channel instead of a float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        mean = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(max(math.sqrt(var), 1e-3))
    return tuple(means), tuple(stds)


def load_dataset(
    spec: DataSpec, data_dir: str | Path | None = None, download: bool = True
) -> Dataset:
    """The dataset ``spec`` names, on the CPU, its train split cut to ``spec.subset`` images.

    Files are looked for in ``search_roots(data_dir)`` and downloaded into the cache only when
    none has them and ``download`` is true; synthetic data is generated from the spec alone.
    """
    if isinstance(spec, SyntheticSpec):
        tensors, digest = generate_synthetic(spec)
        source = "generated"
    else:
        folder = locate(spec.name, search_roots(data_dir), download)
        read = read_fashion if spec.name == "fashion-mnist" else read_cifar
        tensors, digest = read(folder)
        source = str(folder)
    train_x, train_y, test_x, test_y = tensors
    if spec.subset is not None:
        if spec.subset > train_x.shape[0]:
            raise DataError(
                f"data.subset {spec.subset} exceeds the {train_x.shape[0]} training images of "
                f"{spec.name!r}: lower it or set it to null"
            )
        train_x, train_y = train_x[: spec.subset].clone(), train_y[: spec.subset].clone()
    mean, std = _channel_stats(train_x)
    return Dataset(spec.name, train_x, train_y, test_x, test_y, digest, mean, std, source)


# ------------------------------------------------------------------------ batches and views


def normalise(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (B, C, H, W) on any device -> float32 (B, C, H, W), (x / 255 - mean) / std."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalise expects uint8 images, got {images.dtype}")
    return _rescale(images.float(), mean, std)


def _rescale(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Float (B, C, H, W) in [0, 255] -> (x / 255 - mean) / std, per channel."""
    scale = [1 / (255 * s) for s in std]
    shift = [-m / s for m, s in zip(mean, std, strict=True)]
    # A small host tensor copied without blocking: no wait on the device's queued work.
    coef = torch.tensor([scale, shift], dtype=torch.float32).to(pixels.device, non_blocking=True)
    return pixels * coef[0, :, None, None] + coef[1, :, None, None]


def augment(
    images: torch.Tensor,
    spec: AugmentSpec | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    """Random resized crop and horizontal flip of uint8 (B, C, H, W) -> float32 normalised.

    Per image: area fraction uniform in ``crop_scale``, aspect ratio (w/h) log-uniform in
    ``crop_ratio``, position uniform, resized back to H x W; flipped with probability 1/2. All
    images are resampled by one ``grid_sample`` (bilinear) with a per-image affine ``theta``,
    drawn with ``generator`` on the images' device, so nothing reads back to the host. Where
    scale and ratio ask for a side longer than the image, the side is clipped to the image.
    """
    if spec is None:
        return normalise(images, mean, std)
    b, c, h, w = images.shape
    r = torch.rand(b, 5, generator=generator, device=images.device)
    log_lo, log_hi = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    area = spec.crop_scale[0] + (spec.crop_scale[1] - spec.crop_scale[0]) * r[:, 0]
    ratio = torch.exp(log_lo + (log_hi - log_lo) * r[:, 1])
    # Crop sides as fractions of the image's width and height.
    crop_w = (area * ratio).sqrt().clamp(max=1.0)
    crop_h = (area / ratio).sqrt().clamp(max=1.0)
    flip = (r[:, 3] < 0.5) if spec.hflip else torch.zeros_like(r[:, 3], dtype=torch.bool)
    sign = 1.0 - 2.0 * flip.float()
    # affine_grid maps output coordinates in [-1, 1] to input ones, x_in = sx * x_out + cx: a
    # crop of width fraction crop_w has its centre cx within [-(1 - crop_w), 1 - crop_w].
    cx, cy = (1 - crop_w) * (2 * r[:, 2] - 1), (1 - crop_h) * (2 * r[:, 4] - 1)
    zero = torch.zeros_like(cx)
    theta = torch.stack([sign * crop_w, zero, cx, zero, crop_h, cy], dim=1).view(b, 2, 3)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    # Border padding: a crop's outermost samples fall between the edge pixels' centres and the
    # edge, where zero padding would darken the rim.
    sampled = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return _rescale(sampled, mean, std)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """(batch_size,) int64 CPU indices of the global batch at training step ``step``.

    Each epoch of ``n // batch_size`` steps is a fresh permutation seeded by (seed, epoch), and
    the last incomplete batch is dropped, so a batch is a pure function of the arguments and a
    run resumed at any step sees exactly the batches it would have seen.
    """
    if batch_size > n:
        msg = f"batch size {batch_size} exceeds the {n} training images: lower optim.batch_size"
        raise DataError(msg)
    if batch_size < 1 or step < 0:
        raise ValueError(f"need batch_size >= 1 and step >= 0, got {batch_size} and {step}")
    epoch, index = divmod(step, n // batch_size)
    generator = torch.Generator().manual_seed(derive_seed("batches", seed, epoch))
    order = torch.randperm(n, generator=generator)
    return order[index * batch_size : (index + 1) * batch_size]
