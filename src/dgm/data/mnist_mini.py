"""`mnist-mini`: 12,000 real MNIST digits shipped with dgm (src/dgm/data/mnist_mini.npz, 2 MB), so the demo and
the README's examples show 28x28 handwriting with no download.

Contents: 10,000 training images (1,000 per digit) drawn from MNIST's 60,000 training images and 2,000 test images
(200 per digit) from its 10,000 test images, uint8 28x28, in their original order within each split; labels 0-9.
The subset is fixed (numpy default_rng(0), per class, without replacement); `python -m dgm.data.mnist_mini
--build DATA_DIR` rebuilds the same file from the original IDX files in DATA_DIR/mnist/.

MNIST: Yann LeCun and Corinna Cortes (with Christopher J.C. Burges), http://yann.lecun.com/exdb/mnist/, licensed
under Creative Commons Attribution-Share Alike 3.0 (CC BY-SA 3.0); this subset is distributed under the same
licence. Cite: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 86(11), 1998.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from dgm.data.base import DataError, ImageData, resize_images
from dgm.data.catalog import register_dataset

FILE = Path(__file__).with_name("mnist_mini.npz")
PER_CLASS = {"train": 1000, "test": 200}
CREDIT = "MNIST (Yann LeCun and Corinna Cortes, CC BY-SA 3.0)"


@functools.lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    try:
        with np.load(FILE) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{FILE}: the packaged mnist-mini file is missing or unreadable ({e}); reinstall dgm") from e


@register_dataset("mnist-mini")
def load_mnist_mini(split, data_dir, image_size, download) -> ImageData:
    """The packaged subset (no files to find, nothing to download; `data_dir` and `download` are ignored)."""
    a = _arrays()
    x = torch.from_numpy(a[f"{split}_images"].copy()).unsqueeze(1)
    y = torch.from_numpy(a[f"{split}_labels"].astype(np.int64))
    if image_size and image_size != x.shape[-1]:
        x = resize_images(x, image_size)
    return ImageData(x, y, "mnist-mini", 10)


def build(data_dir: str, out: Path = FILE) -> Path:
    """Write the subset from the original MNIST files in `data_dir`/mnist/ (dgm.data.load_dataset("mnist"))."""
    from dgm.data.catalog import load_dataset
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per in PER_CLASS.items():
        d = load_dataset("mnist", split, data_dir=data_dir, download=False)
        y = d.labels.numpy()
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in range(10)]))
        arrays[f"{split}_images"] = d.images.numpy()[idx, 0]
        arrays[f"{split}_labels"] = y[idx].astype(np.uint8)
        arrays[f"{split}_index"] = idx.astype(np.int32)  # positions in the original IDX file
    np.savez_compressed(out, **arrays)
    return out


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="rebuild src/dgm/data/mnist_mini.npz from the original MNIST files")
    p.add_argument("--build", metavar="DATA_DIR", required=True, help="folder holding mnist/*.gz")
    print(f"wrote {build(p.parse_args().build)}")
