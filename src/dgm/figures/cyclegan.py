"""CycleGAN's own figure: translations.png, labelled rows of test images and what each generator makes of them."""
from __future__ import annotations

from pathlib import Path

import torch

from dgm.figures.plots import pyplot
from dgm.figures.registry import figure
from dgm.grids import make_grid


@figure("translations", needs=("translate",))
def _translations(model, run_dir, data):
    if data is None or getattr(data, "b", None) is None:
        return []
    return [plot_panel(model.panel(data.images[:8], data.b.images[:8]), run_dir / "translations.png",
                       f"CycleGAN {data.name} (test images)")]


def plot_panel(rows: list[tuple[str, torch.Tensor]], path, title: str = "") -> Path:
    """One labelled row of images per (name, (n, C, H, W) in [0, 1]) entry."""
    plt = pyplot()
    n = len(rows)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.1 * n + 0.5), squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], rows):
        g = make_grid(x, nrow=len(x)).permute(1, 2, 0).numpy()
        ax.imshow(g[..., 0] if g.shape[2] == 1 else g, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        ax.text(-0.02, 0.5, name, transform=ax.transAxes, ha="right", va="center", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.21, right=0.99, top=1 - 0.45 / (1.1 * n + 0.5), bottom=0.01, hspace=0.08)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
