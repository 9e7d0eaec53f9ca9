"""dSprites (Matthey et al. 2017), generated procedurally: 737,280 binary 64x64 images of one white sprite.

Factors, in the original order (the last one varies fastest):

    shape        3   square, ellipse, heart        (values 1, 2, 3 as in the original file)
    scale        6   linspace(0.5, 1, 6)
    orientation 40   2 pi k / 40, k = 0..39        (the original file used linspace(0, 2 pi, 40), so its first and
                                                    last orientations coincide; here the 40 values are distinct)
    posX        32   linspace(0, 1, 32)
    posY        32   linspace(0, 1, 32)

``ImageData.factors`` holds the class index of each factor, int64 ``(N, 5)``; :func:`factor_values` maps them to the
values above, :func:`flat_index` back to the row. The geometry (sprite sizes, the position range) is chosen to look like
the original dataset; it is not pixel-identical to DeepMind's file.

How the rasterisation is fast: positions move the sprite in steps of 1.5 pixels, so the offsets between pixel centres
and sprite centres lie on a grid of spacing 0.5. Each of the 720 (shape, scale, orientation) sprites is rasterised once
on that half-pixel grid (220 x 220 points); every image is then a strided gather from it, with no geometry per image.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

from dgm.data.base import DataError, ImageData, resize_images
from dgm.data.catalog import data_root, register_dataset

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
N_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
SIZE = 64
VERSION = 1  # bump when the geometry changes, so stale caches are regenerated

# Geometry in pixels (pixel centres at 0..63; the image centre is 31.5).
STEP = 1.5                      # sprite-centre step between neighbouring positions
C0 = 31.5 - STEP * 31 / 2       # centre at position 0: 8.25, so positions span [8.25, 54.75], symmetric
HALF = 9.0                      # square half-side at scale 1: an 18 x 18 square (324 pixels)
ELLIPSE = (12.0, 6.0)           # ellipse semi-axes at scale 1 (long axis horizontal at orientation 0)
HEART = 8.6                     # pixels per unit of the implicit heart curve at scale 1
# Offsets x - cx take the values -54.75 + 0.5 k, k = 0..219 (the fine grid below).
_FINE = 220
_OFF0 = -(SIZE - 1 - C0)        # most negative offset, -54.75


def factor_values(classes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class indices (n, 5) -> the factor values (n, 5) float64, as in the original ``latents_values``."""
    c = np.asarray(classes, dtype=np.int64)
    v = np.empty(c.shape, dtype=np.float64)
    v[:, 0] = c[:, 0] + 1
    v[:, 1] = np.linspace(0.5, 1.0, 6)[c[:, 1]]
    v[:, 2] = c[:, 2] * (2 * math.pi / 40)
    v[:, 3] = c[:, 3] / 31.0
    v[:, 4] = c[:, 4] / 31.0
    return v


def flat_index(classes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class indices (n, 5) -> row numbers in the full set (posY fastest, as in the original file)."""
    c = np.asarray(classes, dtype=np.int64)
    if c.ndim != 2 or c.shape[1] != 5:
        raise ValueError(f"factor classes must have shape (n, 5), got {c.shape}")
    if (c < 0).any() or (c >= np.array(FACTOR_SIZES)).any():
        raise ValueError(f"factor classes out of range; sizes are {FACTOR_SIZES}")
    return np.ravel_multi_index(tuple(c.T), FACTOR_SIZES)


def all_classes(start: int = 0, stop: int = N_IMAGES) -> np.ndarray:
    """Class indices of rows start..stop-1, (stop - start, 5) int64."""
    return np.stack(np.unravel_index(np.arange(start, stop), FACTOR_SIZES), axis=1).astype(np.int64)


def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    """n factor combinations drawn uniformly, (n, 5) int64."""
    return np.stack([rng.integers(0, k, n) for k in FACTOR_SIZES], axis=1)


def sample_fixed(n: int, factor: int, rng: np.random.Generator, value: int | None = None) -> np.ndarray:
    """n combinations sharing one value of ``factor`` (drawn uniformly unless given); the others vary uniformly.

    This is the sampler the BetaVAE and FactorVAE scores need (Higgins et al. 2017, sec. 3; Kim & Mnih 2018, sec. 4).
    """
    if not 0 <= factor < len(FACTOR_SIZES):
        raise ValueError(f"factor must be in 0..{len(FACTOR_SIZES) - 1} ({', '.join(FACTOR_NAMES)}), got {factor}")
    c = sample_factors(n, rng)
    c[:, factor] = rng.integers(0, FACTOR_SIZES[factor]) if value is None else value
    return c


def _inside(shape: int, u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    """Is the point (u, v) (sprite frame, pixels, v pointing down) inside the shape at scale s?"""
    if shape == 0:
        h = HALF * s
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == 1:
        a, b = ELLIPSE[0] * s, ELLIPSE[1] * s
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    # Heart: the implicit sextic (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 (y up), whose box is x in [-1.14, 1.14],
    # y in [-1, 1.24]; shifted by 0.12 so the box is centred on the sprite centre, pointing down at orientation 0.
    x, y = u / (HEART * s), -v / (HEART * s) + 0.118
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0


@functools.lru_cache(maxsize=1)
def _fine_sprites() -> np.ndarray:
    """All 720 sprites on the half-pixel offset grid, bool (3, 6, 40, 220, 220)."""
    off = _OFF0 + 0.5 * np.arange(_FINE)               # offsets x - cx (and y - cy)
    dy, dx = np.meshgrid(off, off, indexing="ij")      # (220, 220): rows are y, columns x
    out = np.zeros((3, 6, 40, _FINE, _FINE), dtype=bool)
    for k in range(40):
        t = 2 * math.pi * k / 40
        # Rotate the pixel offsets by -t, i.e. the sprite by +t (counter-clockwise on screen, y pointing down).
        u = math.cos(t) * dx - math.sin(t) * dy
        v = math.sin(t) * dx + math.cos(t) * dy
        for sh in range(3):
            for j, s in enumerate(np.linspace(0.5, 1.0, 6)):
                out[sh, j, k] = _inside(sh, u, v, float(s))
    return out


def render(classes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images of arbitrary factor combinations: classes (n, 5) -> uint8 (n, 1, 64, 64), pixels 0 or 255."""
    c = np.asarray(classes, dtype=np.int64)
    flat_index(c)  # validates shape and ranges
    fine = _fine_sprites().reshape(720, _FINE, _FINE)
    base = (c[:, 0] * 6 + c[:, 1]) * 40 + c[:, 2]
    # Fine-grid index of pixel x for position i: (x - C0 - STEP i - OFF0) / 0.5 = 2x + 93 - 3i.
    pix = 2 * np.arange(SIZE)
    k0 = int(round((-C0 - _OFF0) / 0.5))                    # 93
    rows = k0 - 3 * c[:, 4, None] + pix[None, :]            # (n, 64), from posY
    cols = k0 - 3 * c[:, 3, None] + pix[None, :]            # (n, 64), from posX
    img = fine[base[:, None, None], rows[:, :, None], cols[:, None, :]]  # (n, 64, 64) bool
    return torch.from_numpy(img.astype(np.uint8) * np.uint8(255)).unsqueeze(1)


def cache_path(root: Path) -> Path:
    return root / "dsprites" / f"dsprites_procedural_v{VERSION}.npz"


def generate(path: Path | None = None, chunk: int = 32_768, stop: int = N_IMAGES) -> np.ndarray:
    """The first ``stop`` (default all 737,280) images as packed bits, uint8 (n, 512) (np.packbits of each 64 x 64
    image, row-major); written compressed to ``path`` when given."""
    packed = np.empty((stop, SIZE * SIZE // 8), dtype=np.uint8)
    for i in range(0, stop, chunk):
        img = render(all_classes(i, min(stop, i + chunk))).numpy()
        packed[i:i + len(img)] = np.packbits(img.reshape(len(img), -1) > 0, axis=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, packed=packed, factor_sizes=np.array(FACTOR_SIZES), version=VERSION)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
    return packed


@functools.lru_cache(maxsize=1)
def _packed(root: str) -> np.ndarray:
    path = cache_path(Path(root))
    if path.is_file():
        try:
            with np.load(path) as f:
                if int(f["version"]) == VERSION and f["packed"].shape == (N_IMAGES, SIZE * SIZE // 8):
                    return f["packed"]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable or stale: generate again below
    try:
        return generate(path)
    except OSError:
        return generate(None)  # a read-only data root still gets the images, just uncached


def unpack(packed: np.ndarray, chunk: int = 65_536) -> torch.Tensor:
    """Packed bits (n, 512) -> uint8 (n, 1, 64, 64) with pixels 0/255, filled chunk by chunk (no 2nd full copy)."""
    out = torch.empty((len(packed), 1, SIZE, SIZE), dtype=torch.uint8)
    view = out.numpy().reshape(len(packed), -1)
    for i in range(0, len(packed), chunk):
        view[i:i + chunk] = np.unpackbits(packed[i:i + chunk], axis=1) * np.uint8(255)
    return out


TEST_SIZE = 10_000


@register_dataset("dsprites")
def load_dsprites(split, data_dir, image_size, download) -> ImageData:
    """dSprites as :class:`ImageData`: labels are the shape (0..2), ``factors`` the 5 class indices (N, 5).

    ``train``: all 737,280 images, generated once (about a minute) and cached compressed as
    ``<root>/dsprites/dsprites_procedural_v1.npz``. dSprites has no test split; ``test`` is a fixed random 10,000-image
    subset of the same images (seed 0), used for figures and quick checks, rendered directly without the cache.
    ``download`` is unused: nothing is downloaded.
    """
    if split == "test":
        idx = np.sort(np.random.default_rng(0).choice(N_IMAGES, TEST_SIZE, replace=False))
        classes = np.stack(np.unravel_index(idx, FACTOR_SIZES), 1).astype(np.int64)
        images = render(classes)
    else:
        root = data_root(data_dir)
        try:
            packed = _packed(str(root))
        except MemoryError as e:
            raise DataError("dsprites: not enough memory for the 737,280 images (3 GB as uint8)") from e
        images = unpack(packed)
        classes = all_classes()
    if image_size is not None and image_size != SIZE:
        images = resize_images(images, image_size)
    factors = torch.from_numpy(classes)
    return ImageData(images, factors[:, 0].clone(), "dsprites", 3, factors=factors,
                     class_names=list(SHAPES))
