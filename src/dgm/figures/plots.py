"""Plots with axes (matplotlib, Agg, imported lazily): the loss curves and the latent scatter; the names of a
dataset's classes for legends and labels."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


# Class names of datasets whose loader gives none (ImageData.class_names wins where it is set). Digit sets: 0-9.
CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


def class_names(data) -> list[str] | None:
    """Names of the label values of `data` (an ImageData): its own `class_names`, else the table above by dataset
    name, else the label numbers ("0".."9"); None for unlabelled data."""
    if data is None or getattr(data, "labels", None) is None:
        return None
    own = getattr(data, "class_names", None)
    if own:
        return [str(c) for c in own]
    if data.name in CLASS_NAMES:
        return list(CLASS_NAMES[data.name])
    n = int(data.num_classes or (int(data.labels.max()) + 1 if len(data.labels) else 0))
    return [str(i) for i in range(n)]


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
    keys = [k for k in rows[0] if k not in ("step", "epoch", "lr", "cpu_s", "wall_s")]  # clocks: not curves
    plt = pyplot()
    cols = min(3, len(keys))
    nr = -(-len(keys) // cols)
    fig, axes = plt.subplots(nr, cols, figsize=(4.2 * cols, 3.0 * nr), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, k in zip(axes.flat, keys):
        ax.plot(steps, [r.get(k, np.nan) for r in rows], lw=1.5, marker="o" if len(steps) < 20 else None, ms=3)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    # Fixed margins in inches (tight_layout measures every tick label: most of this figure's drawing time).
    h = 3.0 * nr
    fig.subplots_adjust(left=0.75 / (4.2 * cols), right=1 - 0.15 / (4.2 * cols), bottom=0.55 / h, top=1 - 0.35 / h,
                        wspace=0.3, hspace=0.45)
    path = Path(path or Path(run_dir) / "loss.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latent(points: np.ndarray, labels: np.ndarray | None, path: str | os.PathLike, title: str,
                axis_names: tuple[str, str] = ("z1", "z2"), names: list[str] | None = None, ax=None) -> Path | None:
    """2-D scatter of latent means coloured by label (the lecture's MNIST latent-space figure). `names` label the
    classes in the legend (index = label value); up to 20 classes get a legend, more a colour bar. With `ax` the
    scatter is drawn there (a panel of a larger figure) and nothing is saved."""
    plt = pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7.6 if labels is not None else 6.4, 6))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        present = sorted(set(labels.tolist()))
        names = names or [str(i) for i in range(max(present) + 1)]
        if len(present) <= 20:
            cmap = plt.get_cmap("tab10" if max(present) < 10 else "tab20")
            for c in present:
                m = labels == c
                ax.scatter(points[m, 0], points[m, 1], s=5, alpha=0.7, color=cmap(c % cmap.N),
                           label=names[c] if c < len(names) else str(c))
            leg = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=3, frameon=False,
                            title="class" if any(not n.isdigit() for n in names) else "digit", title_fontsize=8)
            for h in getattr(leg, "legend_handles", None) or getattr(leg, "legendHandles", []):
                h.set_alpha(1)
        else:
            sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="viridis", s=5, alpha=0.7)
            ax.figure.colorbar(sc, ax=ax).set_label("label")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if not own:
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
