"""Data loading, verification, augmentation and batch order (no network access)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_lab.data import datasets as data
from jepa_lab.data import files as datafiles
from jepa_lab.data.datasets import Dataset, augment, batch_indices, load_dataset, normalise
from jepa_lab.data.files import DataError, search_roots
from jepa_lab.spec.data import AugmentSpec, Cifar10Spec, FashionMnistSpec, SyntheticSpec

REAL_FASHION = Path(__file__).parents[3] / "shared/data/fashion-mnist"
# read before the fixture below points it at a temporary folder
SYSTEM_ROOT = datafiles._SYSTEM_ROOT
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's cache, $JEPA_LAB_DATA and a system-wide copy out of every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JEPA_LAB_DATA", raising=False)
    monkeypatch.setattr(datafiles, "_SYSTEM_ROOT", tmp_path / "system")


# ----------------------------------------------------------------------------- fixtures


def write_cifar(folder: Path, n: int = 20, seed: int = 0) -> list[dict[bytes, object]]:
    """A tiny CIFAR-10 in the official layout: six pickled dicts with bytes keys."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = []
    for i, name in enumerate(CIFAR_FILES):
        batch: dict[bytes, object] = {
            b"batch_label": f"batch {i + 1}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        }
        # Protocol 4: Python 3's protocol 2 routes bytes through _codecs.encode, a global the
        # official (Python 2) files never contain and the loader refuses.
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
        batches.append(batch)
    return batches


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path) -> None:
    """Tiny, well-formed IDX files under the official names (so their checksums are wrong)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (6, 28, 28)),
        rng.integers(0, 10, 6),
        rng.integers(0, 256, (4, 28, 28)),
        rng.integers(0, 10, 4),
    ]
    for name, array in zip(FASHION_FILES, arrays, strict=True):
        (folder / name).write_bytes(gzip.compress(idx_bytes(array)))


# -------------------------------------------------------------------------------- CIFAR-10


def test_cifar_official_layout(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    # One image with a single bright pixel: green plane, row 5, column 7.
    marked = np.zeros(3072, dtype=np.uint8)
    marked[1 * 1024 + 5 * 32 + 7] = 200
    batches[1][b"data"][3] = marked  # type: ignore[index]
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(batches[1]))

    ds = load_dataset(Cifar10Spec(name="cifar10"), data_dir=tmp_path, download=False)
    assert ds.train_images.shape == (100, 3, 32, 32) and ds.test_images.shape == (20, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert torch.nonzero(ds.train_images[20 + 3]).tolist() == [[1, 5, 7]]
    first = batches[0][b"data"].reshape(20, 3, 32, 32)  # type: ignore[attr-defined]
    assert torch.equal(ds.train_images[:20], torch.from_numpy(first))
    labels = [label for batch in batches[:5] for label in batch[b"labels"]]  # type: ignore[attr-defined]
    assert ds.train_labels.tolist() == labels
    assert ds.test_labels.tolist() == batches[5][b"labels"]
    raw = b"".join((tmp_path / "cifar-10-batches-py" / f).read_bytes() for f in CIFAR_FILES)
    assert ds.digest == hashlib.sha256(raw).hexdigest()
    assert ds.source == str(tmp_path / "cifar-10-batches-py")
    assert ds.n_classes == 10 and len(ds.mean) == len(ds.std) == 3


def test_cifar_found_under_name_folder(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = load_dataset(Cifar10Spec(name="cifar10", subset=30), data_dir=tmp_path, download=False)
    assert ds.train_images.shape[0] == 30 and ds.test_images.shape[0] == 20


class _Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.sentinel}",)


def test_cifar_pickle_with_forbidden_global_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar(folder)
    sentinel = tmp_path / "pwned"
    evil = {**batches[5], b"data": _Evil(sentinel)}
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(DataError, match=r"test_batch: .*refusing to load global \w+\.system"):
        load_dataset(Cifar10Spec(name="cifar10"), data_dir=tmp_path, download=False)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (b"labels", [10] * 20, "labels"),
        (b"data", np.zeros((20, 3000), dtype=np.uint8), r"\(n, 3072\)"),
        (b"data", np.zeros((20, 3072), dtype=np.int64), "uint8"),
    ],
)
def test_cifar_bad_batches_are_refused(
    tmp_path: Path, key: bytes, value: object, match: str
) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({**batches[2], key: value}, protocol=4))
    with pytest.raises(DataError, match=f"data_batch_3.*{match}"):
        load_dataset(Cifar10Spec(name="cifar10"), data_dir=tmp_path, download=False)


def test_cifar_protocol5_pickles_load(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    for file, batch in zip(CIFAR_FILES, write_cifar(folder), strict=True):
        (folder / file).write_bytes(pickle.dumps(batch, protocol=5))
    ds = load_dataset(Cifar10Spec(name="cifar10"), data_dir=folder, download=False)
    assert ds.train_images.shape == (100, 3, 32, 32)


# --------------------------------------------------------------------------- Fashion-MNIST


def test_idx_parser_reads_header_and_data() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    assert np.array_equal(datafiles._parse_idx(idx_bytes(images), Path("x"), 3), images)
    assert np.array_equal(datafiles._parse_idx(idx_bytes(labels), Path("y"), 1), labels)


def test_idx_parser_rejects_wrong_magic_and_truncation() -> None:
    labels = idx_bytes(np.arange(5, dtype=np.uint8))
    with pytest.raises(DataError, match=r"some-file: .*magic 00000801, expected 00000803"):
        datafiles._parse_idx(labels, Path("some-file"), 3)
    with pytest.raises(DataError, match=r"some-file: .*truncated"):
        datafiles._parse_idx(labels[:-1], Path("some-file"), 1)


def test_fashion_checksum_rejects_a_wellformed_fake(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fashion-mnist")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: SHA-256 .* delete it"):
        load_dataset(FashionMnistSpec(name="fashion-mnist"), data_dir=tmp_path, download=False)


def test_fashion_wrong_magic_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "fm"  # found as the root itself
    write_fashion(folder)
    labels = (folder / "train-labels-idx1-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(labels)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not an IDX file"):
        load_dataset(FashionMnistSpec(name="fashion-mnist"), data_dir=folder, download=False)


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="real Fashion-MNIST files not present")
def test_real_fashion_mnist_loads() -> None:
    spec = FashionMnistSpec(name="fashion-mnist")
    ds = load_dataset(spec, data_dir=REAL_FASHION.parent, download=False)  # <root>/<name>
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (
        10000,
        1,
        28,
        28,
    )
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.n_classes == 10 and ds.source == str(REAL_FASHION)
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-3) and ds.std[0] == pytest.approx(
        0.3530, abs=1e-3
    )


# ------------------------------------------------------------------ finding and downloading


def test_search_roots_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Path("/usr/share/datasets") == SYSTEM_ROOT
    system = datafiles._SYSTEM_ROOT
    monkeypatch.setenv("JEPA_LAB_DATA", str(tmp_path / "env"))
    cache = tmp_path / "cache" / "jepa-lab"
    assert search_roots(tmp_path / "arg") == [tmp_path / "arg", cache, system]
    assert search_roots(str(tmp_path / "arg")) == [tmp_path / "arg", cache, system]
    assert search_roots(None) == [tmp_path / "env", cache, system]
    monkeypatch.delenv("JEPA_LAB_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert search_roots(None) == [tmp_path / "home" / ".cache" / "jepa-lab", system]


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_missing_dataset_without_download(tmp_path: Path, name: str) -> None:
    spec = Cifar10Spec(name="cifar10") if name == "cifar10" else FashionMnistSpec(name=name)
    with pytest.raises(DataError) as err:
        load_dataset(spec, data_dir=tmp_path / "mine", download=False)
    message = str(err.value)
    assert "\n" not in message and f"dataset '{name}' not found" in message
    looked = re.search(r"looked in: (.*?)\) and download is off", message)
    assert looked is not None and "--data-dir" in message
    roots = (tmp_path / "mine", tmp_path / "cache" / "jepa-lab", tmp_path / "system")
    assert looked.group(1).split(", ") == [str(p) for root in roots for p in (root / name, root)]


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_failed_download_is_one_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    def unreachable(url: str, dest: Path, verify: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(datafiles, "_download", unreachable)
    spec = Cifar10Spec(name="cifar10") if name == "cifar10" else FashionMnistSpec(name=name)
    with pytest.raises(DataError, match="downloading it failed \\(network is unreachable\\)"):
        load_dataset(spec, data_dir=tmp_path / "mine")
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


class _Broken(io.RawIOBase):
    """A response that sends a few bytes and then drops the connection."""

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if getattr(self, "sent", False):
            raise OSError("connection reset")
        self.sent = True
        buffer[:4] = b"abcd"
        return 4


def test_download_never_leaves_partial_or_unverified_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(datafiles.urllib.request, "urlopen", lambda url, timeout: _Broken())
    with pytest.raises(OSError, match="connection reset"):
        datafiles._download("http://x/f.gz", tmp_path / "f.gz", verify=lambda path: None)
    assert list(tmp_path.iterdir()) == []
    junk = gzip.compress(idx_bytes(np.zeros(3, dtype=np.uint8)))
    monkeypatch.setattr(datafiles.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(junk))
    stem = "train-labels-idx1-ubyte"
    with pytest.raises(DataError, match="SHA-256"):
        datafiles._download(
            "http://x/f.gz", tmp_path / "f.gz", partial(datafiles._read_idx, stem=stem)
        )
    assert list(tmp_path.iterdir()) == []


def _tar_of(folder: Path, extra: tarfile.TarInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


def test_cifar_download_extracts_into_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_cifar(tmp_path / "src")
    archive = _tar_of(tmp_path / "src")
    monkeypatch.setattr(datafiles, "_download", lambda url, dest, verify: dest.write_bytes(archive))
    ds = load_dataset(Cifar10Spec(name="cifar10"), data_dir=tmp_path / "mine")
    folder = tmp_path / "cache" / "jepa-lab" / "cifar10"
    assert ds.source == str(folder / "cifar-10-batches-py")
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py"]
    assert ds.train_images.shape == (100, 3, 32, 32)


@pytest.mark.parametrize(
    "member",
    [
        _member("cifar-10-batches-py/../../escaped"),
        _member("/tmp/escaped"),
        _member("cifar-10-batches-py/escaped", tarfile.SYMTYPE),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_cifar_download_refuses_unsafe_members(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    write_cifar(tmp_path / "src")
    archive = _tar_of(tmp_path / "src", member)
    monkeypatch.setattr(datafiles, "_download", lambda url, dest, verify: dest.write_bytes(archive))
    with pytest.raises(DataError, match=r"downloading it failed \(.*unexpected member"):
        load_dataset(Cifar10Spec(name="cifar10"), data_dir=tmp_path / "mine")
    assert not list(tmp_path.rglob("escaped"))
    assert list((tmp_path / "cache" / "jepa-lab" / "cifar10").iterdir()) == []


# ---------------------------------------------------------------------------- augmentation


def _images(b: int = 32, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, size, size), generator=generator, dtype=torch.uint8)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_normalise_values() -> None:
    images = _images()
    expected = (images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]
    out = normalise(images, MEAN, STD)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)


def test_augment_shape_dtype_and_determinism() -> None:
    images, spec = _images(), AugmentSpec()
    out = augment(images, spec, MEAN, STD, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.float32
    again = augment(images, spec, MEAN, STD, torch.Generator().manual_seed(1))
    other = augment(images, spec, MEAN, STD, torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.allclose(out, other)


def test_augment_none_is_normalise() -> None:
    images = _images()
    out = augment(images, None, MEAN, STD, torch.Generator().manual_seed(0))
    assert torch.equal(out, normalise(images, MEAN, STD))


def test_full_crop_with_flip_is_identity_or_mirror() -> None:
    images = _images()
    spec = AugmentSpec(crop_scale=(1, 1), crop_ratio=(1, 1), hflip=True)
    out = augment(images, spec, MEAN, STD, torch.Generator().manual_seed(3))
    base = normalise(images, MEAN, STD)
    same = [torch.allclose(o, x, atol=1e-4) for o, x in zip(out, base, strict=True)]
    mirror = [torch.allclose(o, x.flip(-1), atol=1e-4) for o, x in zip(out, base, strict=True)]
    assert all(s != m for s, m in zip(same, mirror, strict=True))  # exactly one of the two
    assert any(same) and any(mirror)
    unflipped = AugmentSpec(crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False)
    out = augment(images, unflipped, MEAN, STD, torch.Generator().manual_seed(3))
    assert torch.allclose(out, base, atol=1e-4)


def test_crop_magnifies_by_the_crop_side() -> None:
    # A horizontal ramp of 8 grey levels per pixel; a quarter-area square crop is half the
    # width, so after resizing neighbouring output pixels differ by 4 levels.
    ramp = (torch.arange(16) * 8).to(torch.uint8).expand(8, 1, 16, 16).contiguous()
    spec = AugmentSpec(crop_scale=(0.25, 0.25), crop_ratio=(1, 1), hflip=False)
    out = augment(ramp, spec, (0.0,), (1 / 255,), torch.Generator().manual_seed(0))
    # The outermost samples of a crop touching the image edge lie within half a pixel of it,
    # beyond the edge pixel's centre, where border padding flattens the ramp: skip them.
    steps = out.diff(dim=-1)[..., 1:-1]
    assert torch.allclose(steps, torch.full_like(steps, 4.0), atol=1e-3)
    assert torch.allclose(out.diff(dim=-2), torch.zeros(()), atol=1e-3)
    assert (out.amin(dim=(1, 2, 3)) >= 0).all() and (out.amax(dim=(1, 2, 3)) <= 120).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_on_device_matches_shapes() -> None:
    images = _images().cuda()
    out = augment(images, AugmentSpec(), MEAN, STD, torch.Generator("cuda").manual_seed(0))
    assert out.device == images.device and out.shape == images.shape


# ----------------------------------------------------------------------------- batch order


def test_batch_indices_pure_and_permutation_per_epoch() -> None:
    n, b = 103, 10  # 10 steps per epoch; 3 images left out of each epoch
    assert torch.equal(batch_indices(n, b, 7, seed=3), batch_indices(n, b, 7, seed=3))
    first = torch.cat([batch_indices(n, b, step, seed=3) for step in range(10)])
    second = torch.cat([batch_indices(n, b, step, seed=3) for step in range(10, 20)])
    for epoch in (first, second):
        assert epoch.dtype == torch.int64 and epoch.unique().numel() == 100
        assert int(epoch.min()) >= 0 and int(epoch.max()) < n
    assert not torch.equal(first, second)
    assert not torch.equal(batch_indices(n, b, 0, seed=3), batch_indices(n, b, 0, seed=4))


def test_batch_larger_than_dataset_is_refused() -> None:
    with pytest.raises(DataError, match="batch size 11 exceeds the 10 training images"):
        batch_indices(10, 11, 0, seed=0)


# ------------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_shapes_and_classes() -> None:
    spec = SyntheticSpec(name="synthetic", image_size=12, channels=3, n_classes=5, n_train=64)
    a, b = load_dataset(spec), load_dataset(spec)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.digest == b.digest and a.source == "generated"
    assert a.train_images.shape == (64, 3, 12, 12) and a.test_images.shape == (256, 3, 12, 12)
    assert a.train_images.dtype == torch.uint8 and a.train_labels.dtype == torch.int64
    assert set(a.train_labels.tolist()) == set(a.test_labels.tolist()) == set(range(5))
    assert a.n_classes == 5 and a.train_images.float().std() > 10  # not blank
    other = load_dataset(SyntheticSpec(name="synthetic", n_classes=6))
    assert other.digest != a.digest


def test_subset_and_channel_stats() -> None:
    full = load_dataset(SyntheticSpec(name="synthetic"))
    part = load_dataset(SyntheticSpec(name="synthetic", subset=100))
    assert torch.equal(part.train_images, full.train_images[:100])
    assert torch.equal(part.test_images, full.test_images)
    pixels = part.train_images.double() / 255
    assert part.mean[0] == pytest.approx(float(pixels.mean()), abs=1e-9)
    assert part.std[0] == pytest.approx(float(pixels.std(unbiased=False)), abs=1e-9)
    with pytest.raises(DataError, match=r"data\.subset 5000 exceeds the 1024 training images"):
        load_dataset(SyntheticSpec(name="synthetic", subset=5000))


def test_constant_images_get_floored_std_and_to_moves() -> None:
    ds = Dataset(
        "x", *(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)) * 2,
        digest="d", mean=(0.0,), std=(1.0,), source="s",
    )  # fmt: skip
    assert data._channel_stats(ds.train_images)[1] == (1e-3,)
    moved = ds.to("cpu")
    assert isinstance(moved, Dataset) and moved.digest == "d" and moved.n_classes == 1
