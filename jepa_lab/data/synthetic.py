"""Synthetic labelled images: procedurally generated, deterministic, any size (for fast tests)."""

from __future__ import annotations

import hashlib
import math

import torch

from jepa_lab.data.seeds import derive_seed
from jepa_lab.spec.data import SyntheticSpec

_SYNTHETIC_SEED = 20240601
_CHUNK = 4096  # images generated at once: bounds the float temporaries


def _synthetic_split(
    spec: SyntheticSpec, n: int, classes: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, C, S, S) uint8 and balanced labels (n,) int64.

    Each image is a soft ellipse filled with a grating; the class sets the grating's orientation
    and frequency and the ellipse's elongation (``classes``, (K, 3)). Position, size, phase,
    contrast, brightness, tint and pixel noise are random, so raw pixels are only partly linearly
    separable while the class stays plain to a small encoder.
    """
    k, size = spec.n_classes, spec.image_size
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=generator)]
    coords = (torch.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    chunks = []
    for part in labels.split(_CHUNK):
        m = part.shape[0]
        r = torch.rand(m, 8, generator=generator)[:, :, None, None]
        angle, freq, elong = classes[part].T[:, :, None, None]
        angle = angle + (r[:, 0] - 0.5) * 0.3
        dx = coords[None, None, :] - (r[:, 1] - 0.5) * 0.8
        dy = coords[None, :, None] - (r[:, 2] - 0.5) * 0.8
        u = dx * angle.cos() + dy * angle.sin()
        v = dy * angle.cos() - dx * angle.sin()
        half = 0.3 + 0.35 * r[:, 3]  # ellipse half-size, in image half-widths
        radius = ((u / (half * elong)) ** 2 + (v * elong / half) ** 2).sqrt()
        envelope = torch.sigmoid((1 - radius) * 8)
        grating = torch.cos(math.pi * freq * (0.9 + 0.2 * r[:, 4]) * u + 2 * math.pi * r[:, 5])
        fg = (envelope * (0.5 + 0.5 * grating) * (0.4 + 0.6 * r[:, 6]))[:, None]
        tint = 0.5 + 0.5 * torch.rand(m, spec.channels, 1, 1, generator=generator)
        noise = 0.08 * torch.randn(m, spec.channels, size, size, generator=generator)
        image = 0.1 + 0.35 * r[:, 7, None] + fg * tint + noise
        chunks.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(chunks), labels


def generate_synthetic(spec: SyntheticSpec) -> tuple[list[torch.Tensor], str]:
    fields = (spec.image_size, spec.channels, spec.n_classes, spec.n_train, spec.n_test)
    generator = torch.Generator().manual_seed(derive_seed(_SYNTHETIC_SEED, *fields))
    k = spec.n_classes
    # Orientations evenly spread over [0, pi) (a grating repeats after pi), frequencies in cycles
    # per image width below the Nyquist limit of small images, elongations from round to 2.5:1.
    angle = (torch.arange(k) + 0.3 * torch.rand(k, generator=generator)) * math.pi / k
    top = max(1.0, min(4.0, spec.image_size / 4))
    freq = 1.0 + (top - 1.0) * torch.rand(k, generator=generator)
    elong = 1.0 + 1.5 * torch.rand(k, generator=generator)
    classes = torch.stack([angle, freq, elong], dim=1)
    train = _synthetic_split(spec, spec.n_train, classes, generator)
    test = _synthetic_split(spec, spec.n_test, classes, generator)
    tensors = [*train, *test]
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.numpy().tobytes())
    return tensors, sha.hexdigest()
