"""Image grids and files from tensors: PIL only, no plotting library. Low in the house so the Trainer can write its
preview grids; plots with axes and labels live in dgm.figures."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (C, H', W') grid, `nrow` images per row, light separators."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    grid = torch.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid


def to_pil(img: torch.Tensor, min_size: int = 0):
    """(C, H, W) in [0, 1] -> PIL image, upscaled with nearest neighbour to at least `min_size` pixels wide."""
    from PIL import Image
    arr = (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr)
    if min_size and pil.width < min_size:
        k = -(-min_size // pil.width)
        pil = pil.resize((pil.width * k, pil.height * k), Image.NEAREST)
    return pil


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, min_size: int = 512) -> Path:
    """Save a grid of images as PNG, scaled up so small digits are readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(images, nrow), min_size).save(path)
    return path


def save_gif(frames: list[torch.Tensor], path: str | os.PathLike, duration_ms: int = 80, min_size: int = 256) -> Path:
    """Frames: list of (C, H, W) in [0, 1] -> looping animated GIF."""
    pils = [to_pil(f, min_size).convert("P") for f in frames]
    path = Path(path)
    pils[0].save(path, save_all=True, append_images=pils[1:], duration=duration_ms, loop=0)
    return path
