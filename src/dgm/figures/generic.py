"""The figures every family with the matching ability gets: samples, reconstructions, the latent scatter,
traversals, interpolations (and loss curves, written last by dgm.figures.write_figures)."""
from __future__ import annotations

from pathlib import Path

import torch

from dgm.data import ImageData, to_float
# The packaged MNIST subset registers itself as `mnist-mini` on import. Imported here because every command that
# reads a run's data (tasks, the studio) imports dgm.figures; remove once dgm.data.catalog._PLUGINS lists it.
from dgm.data import mnist_mini as _mnist_mini  # noqa: F401
from dgm.figures.plots import class_names, plot_latent
from dgm.figures.registry import figure
from dgm.figures.traversal import write_traversal
from dgm.grids import save_labelled_grid
from dgm.metrics.representation import encode_all


def _name(model) -> str:
    return getattr(model, "family", type(model).__name__)


def sample_images(model, n: int = 64, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return model.sample(n, generator=g, **kw)


def write_samples(model, path, n: int = 64, seed: int = 0, nrow: int = 8, title: str | None = None, **kw) -> Path:
    """A grid of `n` samples under a title that says what they are (family, seed, class when `cond` is given)."""
    x = sample_images(model, n, seed, **kw)
    if title is None:
        what = f"{_name(model)}: {n} samples from noise (seed {seed}"
        cond = kw.get("cond")
        if cond is not None and len(cond) and bool((cond == cond[0]).all()):
            what += f", class {int(cond[0])}"
        opts = ", ".join(f"{k} {v}" for k, v in kw.items() if k in ("sampler", "steps", "eta", "guidance"))
        title = what + (f", {opts}" if opts else "") + ")"
    return save_labelled_grid(x, path, nrow=nrow, title=title)


def write_reconstructions(model, data: ImageData, path, n: int = 32) -> Path:
    """Pairs of rows: test images ("original") above their reconstructions ("reconstruction")."""
    n = min(n, len(data))
    x = to_float(data.images[:n]).to(model.device)
    with torch.inference_mode():
        r = model.reconstruct(x)
    rows, labels = [], []
    for i in range(0, n, 8):
        rows += [x[i:i + 8], r[i:i + 8]]
        labels += ["original", "reconstruction"]
    return save_labelled_grid(torch.cat(rows), path, nrow=min(8, n), row_labels=labels,
                              title=f"{_name(model)}: {data.name} test images and their reconstructions")


def write_interpolation(model, path, data: ImageData | None = None, pairs: int = 6, steps: int = 10,
                        seed: int = 0) -> Path:
    """Each row walks a straight line in latent space between two endpoints: two encoded test images (shown
    beside the row as "image A" / "image B") if the model encodes, else two random codes. Columns are t = 0..1."""
    g = torch.Generator().manual_seed(seed)
    ends = None
    with torch.inference_mode():
        if "encode" in model.capabilities() and data is not None:
            idx = torch.randperm(len(data), generator=g)[: 2 * pairs]
            pairs = len(idx) // 2
            x = to_float(data.images[idx[: 2 * pairs]]).to(model.device)
            z = model.encode(x)
            ends = x.cpu()
        else:
            z = model.sample_latent(2 * pairs, generator=g).to(model.device)
        a, b = z[:pairs], z[pairs:2 * pairs]
        t = torch.linspace(0, 1, steps, device=z.device).view(1, steps, 1)
        zs = (a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t).flatten(0, 1)
        imgs = model.decode(zs).float().cpu()
    cols = [f"t={v:.2g}" for v in torch.linspace(0, 1, steps).tolist()]
    if ends is not None:
        grid = imgs.view(pairs, steps, *imgs.shape[1:])
        imgs = torch.cat([ends[:pairs, None], grid, ends[pairs:, None]], 1).flatten(0, 1)
        cols, steps = ["image A"] + cols + ["image B"], steps + 2
        how = "decoded points on the straight line between the codes of test images A and B"
    else:
        how = "decoded points on the straight line between two random codes"
    return save_labelled_grid(imgs, path, nrow=steps, col_labels=cols, title=f"{_name(model)}: {how}")


def write_latent(model, data: ImageData, path, n: int = 5000) -> Path:
    """Test-set latent means as a 2-D scatter coloured by label; PCA when the latent has more than two dimensions."""
    z = encode_all(model, data.images[:n]).numpy()
    labels = data.labels[:n].numpy() if data.labels is not None else None
    what = "latent means" if "posterior" in model.capabilities() else "latent codes"
    if z.shape[1] == 2:
        pts, names, how = z, ("z1", "z2"), what
    else:
        from sklearn.decomposition import PCA
        pca = PCA(2).fit(z)
        pts = pca.transform(z)
        ev = pca.explained_variance_ratio_
        names, how = (f"PC1 ({ev[0]:.0%} var.)", f"PC2 ({ev[1]:.0%} var.)"), f"PCA of {z.shape[1]}-d {what}"
    return plot_latent(pts, labels, path, f"{_name(model)}, {data.name} test set: {how}", names,
                       names=class_names(data))


def write_latent_grid(model, path, steps: int = 12, limit: float = 2.5) -> Path:
    """A 2-D latent space decoded on a regular grid (Kingma & Welling 2014, fig. 4): z1 left to right, z2 bottom to
    top, each from the centre of the codes `sample_latent` draws to +-`limit` of their spread (the prior's N(0, 1)
    for a VAE, the fitted Gaussian for an AE), so the gaps in an AE's code space show as blots."""
    if model.config.latent_dim != 2:
        raise ValueError(f"a latent grid needs a 2-D latent space, this model has {model.config.latent_dim}")
    centre, spread = (m.float().cpu() for m in model.latent_moments())
    t = torch.linspace(-limit, limit, steps)
    z1, z2 = torch.meshgrid(t, t.flip(0), indexing="xy")  # rows top -> bottom: z2 from +limit down to -limit
    z = torch.stack([centre[0] + z1.flatten() * spread[0], centre[1] + z2.flatten() * spread[1]], 1)
    with torch.inference_mode():
        imgs = model.decode(z.to(model.device)).float().cpu()
    unit = "prior std" if "posterior" in model.capabilities() else "std of the fitted Gaussian"
    vals = [f"{v:+.1f}" for v in t.tolist()]
    return save_labelled_grid(imgs, path, nrow=steps, col_labels=vals, row_labels=vals[::-1],
                              title=f"{_name(model)}: the 2-D latent plane decoded on a grid, -{limit:g} to +{limit:g} "
                                    f"{unit} along z1 (columns) and z2 (rows)")


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


@figure("latent_grid", needs=("decode",))
def _latent_grid(model, run_dir, data):
    return [write_latent_grid(model, run_dir / "latent_grid.png")] if getattr(model.config, "latent_dim", 0) == 2 else []


@figure("interpolation", needs=("decode",))
def _interpolation(model, run_dir, data):
    return [write_interpolation(model, run_dir / "interpolation.png", data)]
