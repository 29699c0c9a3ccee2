"""Datasets as uint8 tensors, batch order as a pure function of the step, on-device augmentation.

A dataset is loaded once into four uint8/int64 tensors (kept uint8 so it fits on the device as
airbench keeps CIFAR-10); each step indexes a global batch, and augmentation runs batched on the
device. Files are found in a fixed list of roots (see ``search_roots``), verified before use
(Fashion-MNIST by the SHA-256 of each decompressed file, CIFAR-10's pickles through an unpickler
that accepts numpy arrays only), and downloaded only when no root has them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from jepa_lab.seeds import derive_seed
from jepa_lab.spec import AugmentSpec, DataSpec, SyntheticSpec
from jepa_lab.synthetic import generate_synthetic


class DataError(Exception):
    """A dataset is missing, corrupt or unusable; the message says what, where, and the fix."""


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


# ------------------------------------------------------------------------------- locations

# SHA-256 of each official file's decompressed payload (the .gz bytes vary with the compressor).
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_FASHION_FILES = [f"{stem}.gz" for stem in _FASHION_SHA256]
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"  # the only checksum the authors publish
_TIMEOUT_S = 30
_SYSTEM_ROOT = Path("/usr/share/datasets")  # where Debian's dataset packages install
_WHAT = {
    "fashion-mnist": "four official Fashion-MNIST *-ubyte.gz files",
    "cifar10": f"official {_CIFAR_DIR} folder",
}


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jepa-lab"


def search_roots(data_dir: str | Path | None) -> list[Path]:
    """Roots searched for datasets, in order: ``data_dir`` (else $JEPA_LAB_DATA), cache, system.

    The cache is ($XDG_CACHE_HOME or ~/.cache)/jepa-lab, where downloads go; the system root is
    /usr/share/datasets.
    """
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    elif os.environ.get("JEPA_LAB_DATA"):
        roots.append(Path(os.environ["JEPA_LAB_DATA"]).expanduser())
    return [*roots, _cache_root(), _SYSTEM_ROOT]


def _candidates(name: str, roots: list[Path]) -> list[Path]:
    """Folders that may hold ``name``'s files: <root>/<name>, then the root itself."""
    return [folder for root in roots for folder in (root / name, root)]


def _find(name: str, roots: list[Path]) -> Path | None:
    """The first candidate folder holding every file of ``name``, or None."""
    for folder in _candidates(name, roots):
        if name == "fashion-mnist":
            options, files = [folder], _FASHION_FILES
        else:  # the official folder inside a candidate, or a candidate that is that folder
            options, files = [folder / _CIFAR_DIR, folder], _CIFAR_FILES
        for option in options:
            if all((option / file).is_file() for file in files):
                return option
    return None


def _locate(name: str, roots: list[Path], download: bool) -> Path:
    """The folder holding ``name``'s files, downloading them into the cache if none has them."""
    found = _find(name, roots)
    if found is not None:
        return found
    looked = ", ".join(str(folder) for folder in _candidates(name, roots))
    missing = f"dataset {name!r} not found (looked in: {looked})"
    fix = f"put the {_WHAT[name]} in one of those places, or pass --data-dir / set JEPA_LAB_DATA"
    if not download:
        raise DataError(f"{missing} and download is off: {fix}")
    try:
        fetch = _download_fashion if name == "fashion-mnist" else _download_cifar
        fetch(_cache_root() / name)
    except (OSError, DataError) as err:  # URLError and socket timeouts are OSErrors
        raise DataError(f"{missing} and downloading it failed ({err}): {fix}") from err
    found = _find(name, [_cache_root()])
    assert found is not None, "a completed download is always found"
    return found


# ------------------------------------------------------------------------------- downloads


def _download(url: str, dest: Path, verify: Callable[[Path], object]) -> None:
    """Fetch ``url`` under a temporary name, ``verify`` it, then rename it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out)
        verify(Path(tmp))
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _download_fashion(folder: Path) -> None:
    for stem in _FASHION_SHA256:
        if not (folder / f"{stem}.gz").is_file():
            _download(
                f"{_FASHION_URL}{stem}.gz", folder / f"{stem}.gz", partial(_read_idx, stem=stem)
            )


def _check_cifar_md5(path: Path) -> None:
    md5 = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if md5 != _CIFAR_MD5:
        raise DataError(f"{_CIFAR_URL} has MD5 {md5}, expected {_CIFAR_MD5}")


def _download_cifar(folder: Path) -> None:
    """Download the official archive, check its MD5, extract the batches (regular files only)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "cifar-10-python.tar.gz"
    _download(_CIFAR_URL, archive, _check_cifar_md5)
    scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".extract."))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                # Only plain files under the expected folder: no links, devices or '..' escapes.
                if member.isdir() and parts == (_CIFAR_DIR,):
                    continue
                plain = member.isfile() and len(parts) == 2 and parts[0] == _CIFAR_DIR
                if not plain or parts[1] == "..":
                    raise DataError(f"{archive} holds an unexpected member {member.name!r}")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has contents
                (scratch / parts[1]).write_bytes(source.read())
        # The batches appear all at once, so an interrupted extraction leaves nothing found.
        os.replace(scratch, folder / _CIFAR_DIR)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        archive.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- readers


def _parse_idx(payload: bytes, path: Path, ndim: int) -> np.ndarray:
    """Decompressed IDX bytes -> uint8 array of the header's dims.

    The header is two zero bytes, the type (0x08 = unsigned byte), the number of dims, then each
    dim as a big-endian uint32; the data follow in row-major order.
    """
    magic = 0x0800 + ndim
    start = 4 + 4 * ndim
    if len(payload) < start or int.from_bytes(payload[:4], "big") != magic:
        raise DataError(
            f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic {payload[:4].hex()}, "
            f"expected {magic:08x}): replace it with the official file"
        )
    dims = struct.unpack(f">{ndim}I", payload[4:start])
    if len(payload) - start != math.prod(dims):
        raise DataError(
            f"{path}: header promises {math.prod(dims)} bytes of data, the file has "
            f"{len(payload) - start}: it is truncated or corrupt; delete it and download it again"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=start).reshape(dims)


def _read_idx(path: Path, stem: str) -> tuple[np.ndarray, str]:
    """Official file ``stem``, gzipped at ``path``, verified -> its array and payload SHA-256."""
    expected = _FASHION_SHA256[stem]
    try:
        payload = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        msg = f"{path}: cannot decompress ({err}): delete it and download it again"
        raise DataError(msg) from err
    array = _parse_idx(payload, path, ndim=3 if "images" in stem else 1)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected:
        raise DataError(
            f"{path}: SHA-256 of the decompressed data is {digest}, expected {expected}: it is "
            f"not the official file; delete it and download it again"
        )
    return array, digest


def _read_fashion(folder: Path) -> tuple[list[torch.Tensor], str]:
    """The four verified files as tensors; the digest hashes their four payload SHA-256s."""
    arrays, digests = [], []
    for stem in _FASHION_SHA256:
        array, digest = _read_idx(folder / f"{stem}.gz", stem)
        arrays.append(torch.from_numpy(array.copy()))  # frombuffer arrays are read-only
        digests.append(digest)
    train_x, train_y, test_x, test_y = arrays
    tensors = [train_x[:, None], train_y.long(), test_x[:, None], test_y.long()]
    return tensors, hashlib.sha256("".join(digests).encode()).hexdigest()


_RECONSTRUCT = np.empty(0).__reduce__()[0]
_FROMBUFFER = np.empty(0).__reduce_ex__(5)[0]  # how protocol-5 pickles rebuild arrays
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy < 2, as the official files
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain data only: a pickle may otherwise run arbitrary code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return _PICKLE_GLOBALS[module, name]


def _parse_cifar_batch(raw: bytes, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch -> images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    fix = "replace it with the file from the official cifar-10-python.tar.gz"
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # malformed pickles raise almost any exception type
        raise DataError(f"{path}: not a CIFAR-10 python batch ({err}): {fix}") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: expected a dict with keys b'data' and b'labels': {fix}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (n, 3072): {fix}")
    n = data.shape[0]
    if n == 0 or data.shape[1] != 3 * 32 * 32 or labels.shape != (n,):
        shapes = f"b'data' {data.shape} and b'labels' {labels.shape}"
        raise DataError(f"{path}: expected shapes (n, 3072) and (n,), got {shapes}: {fix}")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: b'labels' must be integers in 0..9: {fix}")
    # Each row holds the R, G and B planes, each 32 rows of 32 pixels.
    images = torch.from_numpy(data.reshape(n, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _read_cifar(folder: Path) -> tuple[list[torch.Tensor], str]:
    sha = hashlib.sha256()
    batches = []
    for file in _CIFAR_FILES:
        raw = (folder / file).read_bytes()
        sha.update(raw)
        batches.append(_parse_cifar_batch(raw, folder / file))
    train, (test_x, test_y) = batches[:5], batches[5]
    train_x, train_y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    return [train_x, train_y, test_x, test_y], sha.hexdigest()


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
        folder = _locate(spec.name, search_roots(data_dir), download)
        read = _read_fashion if spec.name == "fashion-mnist" else _read_cifar
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
