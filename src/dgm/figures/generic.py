"""The figures every family with the matching ability gets: samples, reconstructions, the latent scatter,
traversals, interpolations (and loss curves, written last by dgm.figures.write_figures)."""
from __future__ import annotations

from pathlib import Path

import torch

from dgm.data import ImageData, to_float
from dgm.figures.plots import plot_latent
from dgm.figures.registry import figure
from dgm.figures.traversal import write_traversal
from dgm.grids import save_grid
from dgm.metrics.representation import encode_all


def sample_images(model, n: int = 64, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return model.sample(n, generator=g, **kw)


def write_samples(model, path, n: int = 64, seed: int = 0, nrow: int = 8, **kw) -> Path:
    return save_grid(sample_images(model, n, seed, **kw), path, nrow=nrow)


def write_reconstructions(model, data: ImageData, path, n: int = 32) -> Path:
    """Pairs of rows: originals above their reconstructions."""
    x = to_float(data.images[:n]).to(model.device)
    with torch.inference_mode():
        r = model.reconstruct(x)
    rows = []
    for i in range(0, n, 8):
        rows += [x[i:i + 8], r[i:i + 8]]
    return save_grid(torch.cat(rows), path, nrow=8)


def write_interpolation(model, path, data: ImageData | None = None, pairs: int = 6, steps: int = 10,
                        seed: int = 0) -> Path:
    """Each row walks a straight line in latent space between two endpoints (test images if the model encodes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        if "encode" in model.capabilities() and data is not None:
            idx = torch.randperm(len(data), generator=g)[: 2 * pairs]
            z = model.encode(to_float(data.images[idx]).to(model.device))
        else:
            z = torch.randn(2 * pairs, model.config.latent_dim, generator=g).to(model.device)
        a, b = z[:pairs], z[pairs:]
        t = torch.linspace(0, 1, steps, device=z.device).view(1, steps, 1)
        zs = (a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t).flatten(0, 1)
        imgs = model.decode(zs)
    return save_grid(imgs, path, nrow=steps)


def write_latent(model, data: ImageData, path, n: int = 5000) -> Path:
    """Test-set latent means as a 2-D scatter coloured by label; PCA when the latent has more than two dimensions."""
    z = encode_all(model, data.images[:n]).numpy()
    labels = data.labels[:n].numpy() if data.labels is not None else None
    if z.shape[1] == 2:
        pts, names, how = z, ("z1", "z2"), "latent means"
    else:
        from sklearn.decomposition import PCA
        pca = PCA(2).fit(z)
        pts = pca.transform(z)
        ev = pca.explained_variance_ratio_
        names, how = (f"PC1 ({ev[0]:.0%} var.)", f"PC2 ({ev[1]:.0%} var.)"), f"PCA of {z.shape[1]}-d latent means"
    return plot_latent(pts, labels, path, f"{data.name} test set: {how}", names)


# -- registered in the order they are written ------------------------------------------------------------------
@figure("samples", needs=("sample",))
def _samples(model, run_dir, data):
    return [write_samples(model, run_dir / "samples.png")]


@figure("reconstructions", needs=("reconstruct",))
def _reconstructions(model, run_dir, data):
    return [write_reconstructions(model, data, run_dir / "reconstructions.png")]


@figure("latent", needs=("encode", "decode"))
def _latent(model, run_dir, data):
    # The scatter, then one traversal row per latent dimension (beta-VAE's figure).
    return [write_latent(model, data, run_dir / "latent.png")] + write_traversal(model, run_dir / "traversal.png", data)


@figure("interpolation", needs=("decode",))
def _interpolation(model, run_dir, data):
    return [write_interpolation(model, run_dir / "interpolation.png", data)]
