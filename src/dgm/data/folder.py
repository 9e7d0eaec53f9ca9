"""``folder:PATH``: any folder of PNG/JPEG/BMP/WEBP images as an in-memory dataset."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dgm.data.base import DataError, ImageData
from dgm.data.catalog import register_dataset

FORMATS = {"PNG", "JPEG", "BMP", "WEBP"}
DEFAULT_SIZE = 64
# What PIL raises on unreadable, truncated or hostile files; anything else is a bug and should surface.
READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
MAX_PIXELS = 4096 * 4096  # larger images are refused before their pixels are decoded (a 13000x13000 PNG is 500 MB)


class TooLarge(ValueError):
    """An image whose header declares more than MAX_PIXELS pixels."""


def image_files(folder: Path, unreadable: list[str] | None = None) -> list[Path]:
    """All non-hidden files below ``folder``, in a deterministic order. Subfolders that cannot be listed (no
    permission) are skipped; their paths go to ``unreadable`` when given."""
    out = []

    def skipped(e: OSError):
        if unreadable is not None and not isinstance(e, FileNotFoundError):  # absent (e.g. a class not in a split)
            unreadable.append(str(e.filename or e))
    for dirpath, dirnames, filenames in os.walk(folder, onerror=skipped):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # skips .git, .ipynb_checkpoints, ...
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out)


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit grayscale: PIL's own convert would clip at 255 instead of rescaling.
        a = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, the usual choice for sprite/icon sets.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def open_image(path: Path) -> Image.Image:
    """A PNG/JPEG/BMP/WEBP file decoded, upright (EXIF); its size checked against MAX_PIXELS before any pixel is
    decoded (TooLarge). Raises one of READ_ERRORS for a file that is no readable image."""
    with Image.open(path) as im:
        if im.format not in FORMATS:
            raise ValueError(f"unsupported format {im.format}")
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise TooLarge(f"{w}x{h} pixels, above the limit of {MAX_PIXELS:,} (4096x4096)")
        im.load()  # decodes now, so a truncated file fails here rather than half-read
        return ImageOps.exif_transpose(im)


def read_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 ``(size, size, 3)``: shorter side resized to ``size`` (antialiased), centre-cropped."""
    im = _to_rgb(open_image(path))
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)  # PIL widens the filter when shrinking
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


@register_dataset("folder")
def load_folder(split, data_dir, image_size, download, *, path: str) -> ImageData:
    """Every image below ``path`` (recursive), resized to ``image_size`` (default 64) and centre-cropped.

    Labels: when the folder has subfolders, each is a class (sorted names, ``class_names``); files
    lying beside the class folders are skipped. Without subfolders labels are None.
    Split: when ``path`` holds ``train/`` and ``test/`` folders, ``split`` picks one (classes are the
    union of their subfolders); otherwise the whole folder is returned for both splits.
    Channels: 1 when every image is grayscale (R = G = B after conversion), else 3 (RGB); RGBA and
    palette images are converted, transparency composited onto white.
    Unreadable files (not an image, truncated) and images of more than MAX_PIXELS (4096x4096) pixels are skipped,
    before their pixels are decoded, with one warning counting them.
    ``data_dir`` and ``download`` are unused; a relative ``path`` is relative to the working directory.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"folder:{path}: not a directory")
    size = image_size or DEFAULT_SIZE
    base = root
    candidates: list[tuple[Path, int]] = []
    outside, unreadable = 0, []
    try:  # a folder without read permission: one DataError, not a traceback
        if (root / "train").is_dir() and (root / "test").is_dir():
            base = root / split
            classes = sorted(set(_subdirs(root / "train")) | set(_subdirs(root / "test")))
        else:
            classes = _subdirs(root)
        if classes:
            for i, c in enumerate(classes):  # a class absent from this split adds nothing
                candidates.extend((f, i) for f in image_files(base / c, unreadable))
            outside = sum(1 for p in base.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            candidates = [(f, -1) for f in image_files(base, unreadable)]
    except OSError as e:
        raise DataError(f"folder:{root}: cannot read {e.filename or base}: {e.strerror or e}") from None
    if unreadable and not candidates:
        raise DataError(f"folder:{root}: cannot list {unreadable[0]} (permission denied?)")

    arrays, labels, bad, large = [], [], [], []
    for f, label in candidates:
        try:
            arrays.append(read_image(f, size))
        except TooLarge:
            large.append(f.name)
            continue
        except READ_ERRORS:
            bad.append(f.name)
            continue
        labels.append(label)
    if bad or large or outside or unreadable:
        parts = []
        if bad:
            parts.append(f"{len(bad)} file(s) that are not readable PNG/JPEG/BMP/WEBP images "
                         f"(e.g. {', '.join(bad[:3])})")
        if large:
            parts.append(f"{len(large)} image(s) of more than {MAX_PIXELS:,} pixels (e.g. {', '.join(large[:3])})")
        if outside:
            parts.append(f"{outside} file(s) outside the class subfolders")
        if unreadable:
            parts.append(f"{len(unreadable)} folder(s) it cannot list (e.g. {unreadable[0]})")
        warnings.warn(f"folder:{root}: skipped {' and '.join(parts)}", stacklevel=3)
    if not arrays:
        raise DataError(f"folder:{root}: no readable images (PNG/JPEG/BMP/WEBP) found in {base}")

    x = np.stack(arrays)  # (N, size, size, 3)
    gray = bool(np.all(x[..., 0] == x[..., 1]) and np.all(x[..., 1] == x[..., 2]))
    x = x[..., :1] if gray else x
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y = torch.tensor(labels, dtype=torch.int64) if classes else None
    return ImageData(images, y, f"folder:{root.resolve()}", len(classes) if classes else None,
                     class_names=classes or None)
