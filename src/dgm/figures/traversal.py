"""Latent traversals (Higgins et al. 2017, fig. 1 and 7): change one latent dimension at a time, keep the rest at a seed
image's posterior mean, and decode. A disentangled model shows one factor (position, scale, shape...) per row.

    from dgm.figures.traversal import write_traversal
    write_traversal(model, "runs/x/traversal.png", data)   # also writes runs/x/traversal.gif
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dgm.data import ImageData, to_float
from dgm.grids import make_grid, save_gif, save_labelled_grid


@torch.inference_mode()
def latent_order(model, data: ImageData, n: int = 2000) -> tuple[list[int], list[float], str]:
    """Latent dimensions sorted by how much they are used, most first, with the score and its name.

    VAE: the average KL(q(z_d|x) || N(0, 1)) per dimension over n images (collapsed dimensions have KL ~ 0).
    AE (no posterior): the variance of the code over the images.
    """
    order, score, name, _ = _usage(model, data, n)
    return order, score, name


def _usage(model, data: ImageData, n: int):
    x = to_float(data.images[:n]).to(model.device)
    if "posterior" in model.capabilities():
        mu, logvar = (t.float() for t in model.posterior(x))
        score, name = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0), "KL"
    else:
        mu = model.encode(x).float()
        score, name = mu.var(0), "var"
    order = torch.argsort(score, descending=True)
    # The most typical image (code nearest the average code): a centred, mid-sized sprite on dSprites.
    typical = int((mu - mu.mean(0)).pow(2).sum(1).argmin())
    return order.tolist(), score[order].tolist(), name, typical


@torch.inference_mode()
def traversal_images(model, data: ImageData, seed_index: int | None = None, steps: int = 10, limit: float = 3.0,
                     dims: int | None = None) -> tuple[torch.Tensor, list[int], list[float], str, torch.Tensor]:
    """Decoded traversals, (rows, steps, C, H, W) in [0, 1], one row per latent dimension (sorted by use).

    Row d sets z_d to each of ``steps`` values in [-limit, limit] (prior standard deviations; for an AE, the code's
    running mean +- limit running std), the other dimensions to the seed image's posterior mean (or code). The seed
    image is ``data.images[seed_index]``; None picks the most typical of the first 2000 (code nearest their mean).
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if seed_index is not None and not 0 <= seed_index < len(data):
        raise ValueError(f"seed index {seed_index} outside the {len(data)} images of {data.name}")
    order, score, name, typical = _usage(model, data, 2000)
    seed_index = typical if seed_index is None else seed_index
    if dims is not None:
        if dims < 1:
            raise ValueError(f"dims must be >= 1, got {dims}")
        order, score = order[:dims], score[:dims]
    x = to_float(data.images[seed_index:seed_index + 1]).to(model.device)
    z0 = model.encode(x)[0].float()                                     # (D,)
    t = torch.linspace(-limit, limit, steps, device=z0.device)
    centre, spread = (m.float().to(z0.device) for m in model.latent_moments())
    rows = []
    for d in order:
        z = z0.repeat(steps, 1)                                          # (steps, D)
        z[:, d] = centre[d] + t * spread[d]
        rows.append(model.decode(z).float().cpu())
    return torch.stack(rows), order, score, name, x.cpu()[0]


def write_traversal(model, path: str | os.PathLike, data: ImageData, seed_index: int | None = None, steps: int = 10,
                    limit: float = 3.0, dims: int | None = None, gif: bool = True,
                    factors: bool | None = None) -> list[Path]:
    """Write the traversal grid (PNG: rows labelled with the dimension and its KL, columns with the value, a title
    saying what is held fixed) and an animated GIF beside it (each frame shows every dimension at one value,
    sweeping -limit -> limit -> -limit). Returns the paths.

    On data that renders its ground-truth factors (dSprites), each row also names the factor that dimension carries
    most and their normalised mutual information (dgm.metrics.disentanglement.latent_factors; `factors=False`
    leaves it out; True requires it)."""
    if not {"encode", "decode"} <= model.capabilities():
        raise ValueError(f"a {getattr(model, 'family', type(model).__name__)} model has no latent space to traverse")
    imgs, order, score, name, seed = traversal_images(model, data, seed_index, steps, limit, dims)
    rows, n, c, h, w = imgs.shape
    pad = 2
    labels = [f"z{d}  {name}={s:.2f}" for d, s in zip(order, score)]
    found = None
    if factors is not False:
        from dgm.metrics.disentanglement import rendered_factors
        found = rendered_factors(model, data.name, image_size=data.images.shape[-1])
        if found is None and factors:
            raise ValueError(f"{data.name!r} cannot render its factors of variation, so rows cannot be labelled")
        if found is not None:   # "-": the dimension carries no factor (normalised MI < 0.1)
            labels = [f"{lab}  {found[d][0] if found[d][1] >= 0.1 else '-'} MI={found[d][1]:.2f}"
                      for lab, d in zip(labels, order)]
    unit = "prior std" if "posterior" in model.capabilities() else "code std"
    cols = [f"{v:+.1f}" for v in torch.linspace(-limit, limit, n).tolist()]
    where = "a typical test image" if seed_index is None else f"test image {seed_index}"
    title = (f"{getattr(model, 'family', type(model).__name__)}: latent traversal around {where}: each row moves one "
             f"dimension from -{limit:g} to +{limit:g} {unit} (columns), the others stay at the image's code"
             + ("; then the factor it carries most, by normalised MI" if found is not None else ""))
    path = save_labelled_grid(imgs.flatten(0, 1), path, nrow=n, pad=pad, row_labels=labels, col_labels=cols,
                              title=title)
    out = [path]
    if gif:
        # Frame j: all traversed dimensions side by side at value t_j, the seed image first for reference.
        sweep = list(range(n)) + list(range(n - 2, 0, -1))
        frames = [make_grid(torch.cat([seed.unsqueeze(0), imgs[:, j]]), nrow=min(rows + 1, 11), pad=pad)
                  for j in sweep]
        out.append(save_gif(frames, path.with_suffix(".gif"), duration_ms=120, min_size=2 * frames[0].shape[-1]))
    return out
