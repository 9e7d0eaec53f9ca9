"""The in-memory image container and the pixel conversions every model shares."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class DataError(Exception):
    """A dataset cannot be found, read or downloaded; the message says what to do about it."""


@dataclass
class ImageData:
    """A whole dataset split held in memory.

    ``images`` is uint8 ``(N, C, H, W)``, contiguous; ``labels`` is int64 ``(N,)`` or None.
    ``num_classes`` is 10 for the digit sets, the number of class subfolders for labelled folders,
    None when there are no labels. ``factors`` holds optional ground-truth factors ``(N, K)``
    (e.g. dSprites); ``class_names`` optionally names the label values (folder datasets).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    num_classes: int | None
    factors: torch.Tensor | None = None
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        # Checked once here so every consumer can rely on the layout without re-checking.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageData.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.images = self.images.contiguous()
        n = self.images.shape[0]
        if self.labels is not None:
            if self.labels.shape != (n,):
                raise ValueError(f"ImageData.labels must have shape ({n},), got {tuple(self.labels.shape)}")
            self.labels = self.labels.to(torch.int64).contiguous()
        if self.factors is not None and self.factors.shape[0] != n:
            raise ValueError(f"ImageData.factors must have {n} rows, got {self.factors.shape[0]}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def model_fields(self) -> dict[str, int]:
        """Model config fields this data fixes (the Trainer's caller fills them): channels, size, classes."""
        c, h, _ = self.shape
        return {"channels": c, "image_size": h, "num_classes": self.num_classes or 0}

    def batches(self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        """The Trainer's batch iterator over this data (dgm.data.batches.Batches; unpaired data brings its own)."""
        from dgm.data.batches import Batches  # batches.py imports this module
        return Batches(self, batch_size, seed=seed, rank=rank, world_size=world_size)


def to_float(x_uint8: torch.Tensor, value_range: str = "01") -> torch.Tensor:
    """uint8 pixels -> float32 in ``[0, 1]`` (``value_range="01"``) or ``[-1, 1]`` (``"-11"``)."""
    # A float input here almost always means the data was converted twice; fail loudly.
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {x_uint8.dtype}")
    x = x_uint8.to(torch.float32)
    if value_range == "01":
        return x.div_(255.0)
    if value_range == "-11":
        return x.div_(127.5).sub_(1.0)
    raise ValueError(f"value_range must be '01' or '-11', got {value_range!r}")


def binarize(x01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarisation: each pixel is an independent Bernoulli(x) draw, returned as 0./1. floats."""
    return torch.bernoulli(x01.clamp(0.0, 1.0), generator=generator)


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` -> uint8 (clamped, rounded); NaN becomes 0."""
    x = torch.nan_to_num(x01.detach().float(), nan=0.0)
    return x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 ``(N, C, H, W)`` to ``size x size``: bilinear, antialiased when shrinking.

    Works in chunks so a 60k-image set never needs a full float copy at once.
    """
    if size < 1:
        raise ValueError(f"image_size must be positive, got {size}")
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    # Antialiasing only matters (and is only defined as a filter) when shrinking.
    antialias = size < h or size < w
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].to(torch.float32)
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        out[i:i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
