"""Readers for the built-in digit datasets: digits (scikit-learn), MNIST, Fashion-MNIST, USPS."""
from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from dgm.data.base import DataError, ImageData, resize_images
from dgm.data.catalog import data_root, register_dataset, search_roots
from dgm.data.download import fetch

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Official md5s of the .gz files (torchvision's MNIST.resources; the Fashion-MNIST README);
# the copies in shared/data match them byte for byte.
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}
USPS_FILES = {"train": "zip.train.gz", "test": "zip.test.gz"}
USPS_ROWS = {"train": 7291, "test": 2007}
USPS_MIRROR = "https://hastie.su.domains/ElemStatLearn/datasets/"


def _stat_key(*paths: Path) -> tuple:
    # Part of the cache key, so a file replaced on disk is read again.
    return tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e}); delete it and download it again") from e


def _idx_array(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one IDX file (big-endian uint32 header: magic, then ``ndim`` sizes; then uint8 data)."""
    raw = _gunzip(path)
    head = 4 * (1 + ndim)
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {head})")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise DataError(f"{path}: bad IDX magic number {int(header[0])}, expected {magic}")
    dims = tuple(int(d) for d in header[1:])
    if len(raw) != head + int(np.prod(dims)):
        raise DataError(f"{path}: IDX size mismatch: header says {dims} = {int(np.prod(dims))} values, "
                        f"file holds {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


@functools.lru_cache(maxsize=8)
def _read_idx_pair(images_key: tuple, labels_key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    img_path, lbl_path = Path(images_key[0][0]), Path(labels_key[0][0])
    x = _idx_array(img_path, 2051, 3)
    y = _idx_array(lbl_path, 2049, 1)
    if len(x) != len(y):
        raise DataError(f"{img_path} holds {len(x)} images but {lbl_path} holds {len(y)} labels")
    if len(y) and y.max() > 9:
        raise DataError(f"{lbl_path}: label {int(y.max())} out of range 0..9")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def _find_files(name: str, files: tuple[str, ...], data_dir) -> Path | None:
    """The first ``<root>/<name>/`` among the search roots that holds all ``files``."""
    for root in search_roots(data_dir):
        folder = root / name
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def _missing_error(name: str, all_files, folder: Path, data_dir, why: str) -> DataError:
    looked = ", ".join(str(r / name) for r in search_roots(data_dir))
    return DataError(
        f"{name}: files not found ({why}). Put {', '.join(all_files)} in {folder} "
        f"(or set $DGM_DATA / --data-dir to a folder holding {name}/). Looked in: {looked}")


def _idx_loader(name: str):
    def load(split, data_dir, image_size, download) -> ImageData:
        files = IDX_FILES[split]
        folder = _find_files(name, files, data_dir)
        if folder is None:
            all_files = [f for pair in IDX_FILES.values() for f in pair]
            folder = data_root(data_dir) / name
            if not download:
                raise _missing_error(name, all_files, folder, data_dir, "download=False")
            try:
                for f in files:
                    if not (folder / f).is_file():
                        fetch([m + f for m in MIRRORS[name]], folder / f, md5=MD5[name][f])
            except OSError as e:
                raise _missing_error(name, all_files, folder, data_dir, str(e)) from e
        x, y = _read_idx_pair(_stat_key(folder / files[0]), _stat_key(folder / files[1]))
        return ImageData(_sized_copy(x, image_size), y.clone(), name, 10)
    load.__name__ = load.__qualname__ = f"load_{name.replace('-', '_')}"
    return load


def _sized_copy(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    # Never hand out the cached tensor itself: a caller editing in place would corrupt later loads.
    y = resize_images(x, image_size) if image_size else x
    return y.clone() if y is x else y


register_dataset("mnist")(_idx_loader("mnist"))
register_dataset("fashion-mnist")(_idx_loader("fashion-mnist"))


def _parse_esl(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse an ESL ``zip.*.gz`` file: per line a label, then 256 values in [-1, 1] (16x16, row-major)."""
    try:
        with gzip.open(path, "rt", encoding="ascii") as f:
            a = np.loadtxt(f, dtype=np.float32, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid ESL zip-code file ({e})") from e
    if a.shape[1] != 257 or len(a) == 0:
        raise DataError(f"{path}: expected rows of 257 numbers (label + 16x16), got shape {a.shape}")
    labels, values = a[:, 0], a[:, 1:]
    if not (np.all(labels == np.round(labels)) and labels.min() >= 0 and labels.max() <= 9):
        raise DataError(f"{path}: labels must be integers 0..9")
    if values.min() < -1.001 or values.max() > 1.001:
        raise DataError(f"{path}: pixel values must lie in [-1, 1]")
    # Same mapping as usps.npz in shared/data: background -1 -> 0, ink +1 -> 255 (bright ink, like MNIST).
    x = np.clip(np.round((values + 1.0) * 127.5), 0, 255).astype(np.uint8).reshape(-1, 1, 16, 16)
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


@functools.lru_cache(maxsize=4)
def _read_esl(key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    return _parse_esl(Path(key[0][0]))


def _verify_usps(split: str):
    def verify(tmp: Path) -> None:
        # No official md5 exists for the ESL files, so a full parse with the known row count is the check.
        n = len(_parse_esl(tmp)[1])
        if n != USPS_ROWS[split]:
            raise ValueError(f"expected {USPS_ROWS[split]} rows, got {n}")
    return verify


@register_dataset("usps")
def load_usps(split, data_dir, image_size, download) -> ImageData:
    """USPS 16x16 digits from the ESL files ``<root>/usps/zip.train.gz`` (7291) / ``zip.test.gz`` (2007)."""
    fname = USPS_FILES[split]
    folder = _find_files("usps", (fname,), data_dir)
    if folder is None:
        folder = data_root(data_dir) / "usps"
        if not download:
            raise _missing_error("usps", list(USPS_FILES.values()), folder, data_dir, "download=False")
        try:
            fetch([USPS_MIRROR + fname], folder / fname, verify=_verify_usps(split))
        except OSError as e:
            raise _missing_error("usps", list(USPS_FILES.values()), folder, data_dir, str(e)) from e
    x, y = _read_esl(_stat_key(folder / fname))
    return ImageData(_sized_copy(x, image_size), y.clone(), "usps", 10)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return torch.from_numpy(x), torch.from_numpy(d.target.astype(np.int64))


def digits_test_mask(labels: torch.Tensor) -> torch.Tensor:
    """True for test images: within each class, every 5th image in file order (ranks 4, 9, ...)."""
    # Rank of each image among the images of its class, without a Python loop:
    # stable sort by label, then position in the sorted order minus the start of its class block.
    order = torch.sort(labels, stable=True).indices
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(len(labels)) - starts[labels[order]]
    return rank % 5 == 4


@register_dataset("digits")
def load_digits_dataset(split, data_dir, image_size, download) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255), upscaled to 16x16 by default.

    ``image_size=None`` means 16 (bilinear upscale from 8x8); any other size is a bilinear resize.
    Split: stratified and deterministic; within each class every 5th image (in file order) is test
    (~20%: 355 images), the rest (1,442) train. Needs no files and no network.
    """
    x, y = _digits()
    keep = digits_test_mask(y) if split == "test" else ~digits_test_mask(y)
    x = resize_images(x[keep], image_size or 16)
    return ImageData(x, y[keep], "digits", 10)
