"""Plots with axes (matplotlib, Agg, imported lazily): the loss curves and the latent scatter."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def pyplot():
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
    plt = pyplot()
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
    plt = pyplot()
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
