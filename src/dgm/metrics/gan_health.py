"""Is the GAN game healthy? Collapse checks on a trained generator and its training log (gan_health.json).

- D winning outright: P(D(x) > D(G(z))) > 0.99 over the last fifth of training (G then gets no useful signal);
- sample diversity: mean pairwise distance of samples / of real images (a collapsed G repeats itself: ratio << 1);
- mode coverage: the classes a cached domain classifier finds in the samples (never trained here: too slow).
"""
from __future__ import annotations

import torch

from dgm.data import to_float
from dgm.metrics.classifier import get_classifier
from dgm.metrics.sample_quality import class_histogram_stats
from dgm.train import log_key


class GANCollapseWarning(UserWarning):
    """The generator seems to have collapsed (low sample diversity, missing modes, or D winning outright)."""


def gan_health(model, rows: list[dict], data=None, n: int = 500) -> dict:
    """{"warnings": [...], "d_auc_last_fifth", "diversity_ratio", "mode_coverage", ...} for a GAN and its log rows."""
    res: dict = {"warnings": []}
    auc = log_key(model.phases, "d", "d_auc")
    rows = [r for r in rows if auc in r]
    if len(rows) >= 5:
        tail = rows[-max(3, len(rows) // 5):]
        res["d_auc_last_fifth"] = sum(r[auc] for r in tail) / len(tail)
        span = tail[-1]["step"] - tail[0]["step"]
        # A long stretch only: every GAN starts with D winning for the first hundred or so steps.
        if min(r[auc] for r in tail) > 0.99 and span >= 200:
            res["warnings"].append(f"D won outright (P(D(x) > D(G(z))) > 0.99) over the last {span} steps: "
                                   "G gets no useful signal and has probably collapsed; try loss=hinge "
                                   "with spectral_norm=true, a lower d_lr, or a smaller width")
    if data is not None and len(data) >= 2:
        g = torch.Generator().manual_seed(0)
        fake = model.sample(min(n, len(data)), generator=g).flatten(1).cpu()
        real = to_float(data.images[torch.randperm(len(data), generator=g)[:len(fake)]]).flatten(1)
        ratio = float(torch.pdist(fake).mean() / torch.pdist(real).mean().clamp_min(1e-8))
        res["diversity_ratio"] = ratio
        if ratio < 0.5:
            res["warnings"].append(f"low sample diversity: generated images are {ratio:.2f}x as far apart as "
                                   "real ones (mode collapse)")
        _mode_check(model, res, data, n)
    return res


def _mode_check(model, res: dict, data, n: int) -> None:
    """Mode coverage with the dataset's cached domain classifier, when one is cached."""
    if data.labels is None or "conditional" in model.capabilities():
        return
    try:
        clf = get_classifier(data.name, train_if_missing=False, image_size=data.shape[1])
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return
    k = clf.config.num_classes
    x = model.sample(max(n, 100 * k), generator=torch.Generator().manual_seed(1)).cpu()
    share, kl, counts = class_histogram_stats(clf.predict(x), k)
    res.update(mode_coverage=share, mode_kl_uniform=kl, class_counts=counts)
    if share < 0.9 or kl > 0.5:
        res["warnings"].append(f"mode collapse: the domain classifier finds {share:.0%} of the {k} classes in "
                               f"{len(x)} samples (KL to uniform {kl:.2f} nats; counts {counts})")
