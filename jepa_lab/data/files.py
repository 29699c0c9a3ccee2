"""Dataset files on disk: where they are looked for, downloading them, reading them verified.

Files are found in a fixed list of roots (see ``search_roots``), verified before use
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
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import torch


class DataError(Exception):
    """A dataset is missing, corrupt or unusable; the message says what, where, and the fix."""


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


def locate(name: str, roots: list[Path], download: bool) -> Path:
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


def read_fashion(folder: Path) -> tuple[list[torch.Tensor], str]:
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


def read_cifar(folder: Path) -> tuple[list[torch.Tensor], str]:
    """The five training batches and the test batch as tensors; the digest hashes their bytes."""
    sha = hashlib.sha256()
    batches = []
    for file in _CIFAR_FILES:
        raw = (folder / file).read_bytes()
        sha.update(raw)
        batches.append(_parse_cifar_batch(raw, folder / file))
    train, (test_x, test_y) = batches[:5], batches[5]
    train_x, train_y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    return [train_x, train_y, test_x, test_y], sha.hexdigest()
