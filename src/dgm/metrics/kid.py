"""Kernel Inception Distance and improved precision/recall, on any features (Inception or domain classifier).

    from dgm.metrics.kid import kid, precision_recall
    mean, std = kid(real_feats, fake_feats)                 # (N, D) arrays; unbiased MMD^2, cubic kernel
    p, r = precision_recall(real_feats, fake_feats, k=3)    # Kynkaanniemi et al. 2019
"""
from __future__ import annotations

import numpy as np
import torch


def _check(a, b, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"{name}: features contain NaN or inf values")
    return torch.from_numpy(a).double(), torch.from_numpy(b).double()


def polynomial_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with the KID kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al.
    2018, sec. 3): the means of k over distinct pairs within x and within y, minus twice the mean over x-y pairs."""
    m, n, d = len(x), len(y), x.shape[1]
    # Products in float32 (4x cheaper on 2048-d Inception features), kernels and sums in float64.
    x, y = x.float(), y.float()
    kxx = ((x @ x.T).double() / d + 1) ** 3
    kyy = ((y @ y.T).double() / d + 1) ** 3
    kxy = ((x @ y.T).double() / d + 1) ** 3
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over ``subsets`` random subsets of ``subset_size`` of
    each set (each subset drawn without replacement; smaller sets use all their points)."""
    x, y = _check(real, fake, "KID")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    g = torch.Generator().manual_seed(seed)
    vals = [polynomial_mmd2_unbiased(x[torch.randperm(len(x), generator=g)[:m]],
                                     y[torch.randperm(len(y), generator=g)[:m]]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def _kth_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of every point of x to its k-th nearest other point of x, (N,)."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        # k + 1 smallest: the point itself is at distance 0.
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> float:
    """Share of `points` inside at least one ball (centre_j, radius_j)."""
    inside = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres)
        inside.append((d <= radii.unsqueeze(0)).any(1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2). The manifold of a set is the union of balls
    around its points, each reaching to the point's k-th nearest neighbour. Precision: share of fake points inside the
    real manifold (fidelity). Recall: share of real points inside the fake manifold (diversity)."""
    x, y = _check(real, fake, "precision/recall")
    if min(len(x), len(y)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(x)} and {len(y)}")
    x, y = x.float(), y.float()
    precision = _coverage(y, x, _kth_radius(x, k))
    recall = _coverage(x, y, _kth_radius(y, k))
    return precision, recall
