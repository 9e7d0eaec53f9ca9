"""``unpaired:A,B``: two image domains without pairing, for CycleGAN.

Two forms:
  * ``unpaired:mnist,usps`` (any two dataset names, ``folder:PATH`` included): each side is loaded with
    :func:`load_dataset` for the requested split;
  * ``unpaired:PATH`` where PATH holds the official CycleGAN layout ``trainA/ trainB/ testA/ testB/``.

Both domains end up at one square size (``image_size``, else the larger of the two native sizes); each keeps its
own channel count (grayscale on one side, RGB on the other is fine). Domains of unequal size are sampled
independently, each through its own seeded permutations, so every image of the smaller domain is seen as often
as every image of the larger one (no bias toward the larger), and batch k stays a pure function of (seed, k).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dgm.data.base import DataError, ImageData, resize_images
from dgm.data.batches import Batches
from dgm.data.catalog import load_dataset, register_dataset

_B_SEED_OFFSET = 7_919  # domain B's permutations come from another seed than A's


@dataclass
class UnpairedData(ImageData):
    """Domain A as the ImageData fields (so generic code sees a normal dataset) plus domain B in ``b``."""
    b: ImageData | None = None
    a_name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.b is None:
            raise ValueError("UnpairedData needs a domain B")

    @property
    def a(self) -> ImageData:
        return ImageData(self.images, self.labels, self.a_name or self.name, self.num_classes,
                         class_names=self.class_names)

    def model_fields(self) -> dict[str, int]:
        """Model config fields this data fixes: A's channels and classes, B's channels, the common size."""
        c, h, _ = self.shape
        return {"channels": c, "channels_b": self.b.shape[0], "image_size": h, "num_classes": self.num_classes or 0}

    def batches(self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> "UnpairedBatches":
        return UnpairedBatches(self, batch_size, seed=seed, rank=rank, world_size=world_size)


class UnpairedBatches:
    """Batch k = (x_a uint8 (b, C_a, H, W), x_b uint8 (b, C_b, H, W)), each domain through its own seeded permutation.

    One "epoch" is a pass over the larger domain (as in the CycleGAN code); the smaller one simply starts its next
    permutation sooner.
    """

    def __init__(self, data: UnpairedData, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        try:
            self.a = Batches(data, batch_size, seed=seed, rank=rank, world_size=world_size)
            self.b = Batches(data.b, batch_size, seed=seed + _B_SEED_OFFSET, rank=rank, world_size=world_size)
        except ValueError as e:
            raise ValueError(f"unpaired data {data.name} (A: {len(data)} images, B: {len(data.b)}): {e}") from None

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a.get(k)[0], self.b.get(k)[0]


def _split_names(spec: str) -> tuple[str, str]:
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"unpaired:{spec}: expected 'unpaired:A,B' with two dataset names (e.g. unpaired:mnist,usps) "
                        f"or 'unpaired:PATH' with trainA/ trainB/ testA/ testB/ folders")
    return parts[0], parts[1]


@register_dataset("unpaired")
def load_unpaired(split, data_dir, image_size, download, *, path: str) -> UnpairedData:
    """Load both domains of ``unpaired:A,B`` or ``unpaired:PATH`` (official layout) for ``split``."""
    root = Path(path).expanduser()
    if root.is_dir():
        missing = [d for d in (f"{split}A", f"{split}B") if not (root / d).is_dir()]
        if missing:
            raise DataError(f"unpaired:{path}: missing folder(s) {', '.join(missing)} "
                            f"(expected trainA/ trainB/ testA/ testB/)")
        names = (f"folder:{root / (split + 'A')}", f"folder:{root / (split + 'B')}")
        # Folder images are read at one size; default 64 like folder:, otherwise the requested size.
        a, b = (load_dataset(n, "train", data_dir=data_dir, image_size=image_size, download=download) for n in names)
        label = f"unpaired:{root}"
        a.name, b.name = f"{root}/{split}A", f"{root}/{split}B"
    else:
        if "," not in path:
            raise DataError(f"unpaired:{path}: not a folder, and not two dataset names 'A,B'")
        na, nb = _split_names(path)
        if na.startswith("unpaired") or nb.startswith("unpaired"):
            raise DataError(f"unpaired:{path}: a domain cannot itself be unpaired data")
        a = load_dataset(na, split, data_dir=data_dir, image_size=image_size, download=download)
        b = load_dataset(nb, split, data_dir=data_dir, image_size=image_size, download=download)
        label = f"unpaired:{na},{nb}"
    size = image_size or max(a.shape[1], b.shape[1])
    xa, xb = resize_images(a.images, size), resize_images(b.images, size)
    b = ImageData(xb, b.labels, b.name, b.num_classes, class_names=b.class_names)
    return UnpairedData(xa, a.labels, label, a.num_classes, class_names=a.class_names, b=b,
                        a_name=a.name)
