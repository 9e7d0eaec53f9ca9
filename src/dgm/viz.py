"""Pictures: image grids with PIL, plots with matplotlib (Agg, imported lazily)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
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


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def plot_losses(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path | None:
    """One panel per logged quantity against step (loss.png)."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    keys = [k for k in rows[0] if k not in ("step", "epoch", "lr")]
    plt = _plt()
    cols = min(3, len(keys))
    nr = -(-len(keys) // cols)
    fig, axes = plt.subplots(nr, cols, figsize=(4.2 * cols, 3.0 * nr), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, k in zip(axes.flat, keys):
        ax.plot(steps, [r.get(k, np.nan) for r in rows], lw=1.5)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path or Path(run_dir) / "loss.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latent(points: np.ndarray, labels: np.ndarray | None, path: str | os.PathLike, title: str,
                axis_names: tuple[str, str] = ("z1", "z2")) -> Path:
    """2-D scatter of latent means coloured by label (the lecture's MNIST latent-space figure)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=5, alpha=0.7,
                        vmin=-0.5, vmax=9.5 if labels.max() < 10 else labels.max() + 0.5)
        cb = fig.colorbar(sc, ax=ax, ticks=sorted(set(labels.tolist()))[:20])
        cb.set_label("label")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
