"""Every picture dgm writes. Writers register like metrics (dgm.figures.registry) and decide from a model's
`capabilities()` whether they apply; `write_figures` runs them all after training.

    from dgm.figures import write_figures, write_samples
    write_figures("runs/vae_mnist")            # samples.png, reconstructions.png, latent.png, traversal.png, ...
"""
from __future__ import annotations

from pathlib import Path

from dgm.figures.registry import FIGURES, figure, run_figures
# The modules register their writers at import, in the order the figures are written.
from dgm.figures import generic as _generic  # noqa: F401
from dgm.figures import gan as _gan, cyclegan as _cyclegan, diffusion as _diffusion  # noqa: F401,E401
from dgm.figures.generic import (encode_all, sample_images, write_interpolation, write_latent, write_reconstructions,
                                 write_samples)
from dgm.figures.plots import plot_latent, plot_losses, pyplot, read_metrics
from dgm.figures.traversal import latent_order, traversal_images, write_traversal

__all__ = ["FIGURES", "figure", "write_figures", "write_samples", "write_reconstructions", "write_interpolation",
           "write_latent", "write_traversal", "latent_order", "traversal_images", "sample_images", "encode_all",
           "plot_latent", "plot_losses", "pyplot", "read_metrics"]


def write_figures(run_dir, model, data) -> list[Path]:
    """Every registered figure that applies to `model` (trained, in eval mode) on `data` (its test split), then the
    loss curves (loss.png). Returns the paths written."""
    run_dir = Path(run_dir)
    model.eval()
    out = run_figures(model, run_dir, data)
    p = plot_losses(run_dir)
    if p:
        out.append(p)
    return out
