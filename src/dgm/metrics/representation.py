"""How well latent codes organise the data: k-means cluster accuracy (Hungarian matching) and a linear probe; and
the reconstruction error. Registers the `recon` and `cluster` metrics."""
from __future__ import annotations

import numpy as np
import torch

from dgm.data import to_float
from dgm.metrics.registry import HIGHER, LOWER, col, metric


@torch.inference_mode()
def encode_all(model, images_uint8: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Codes (the posterior means of a VAE) of uint8 images, (n, d) float32 on the CPU, `batch` images at a time."""
    return torch.cat([model.encode(to_float(images_uint8[i:i + batch]).to(model.device)).float().cpu()
                      for i in range(0, len(images_uint8), batch)])


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Best one-to-one match of clusters to labels (scipy.optimize.linear_sum_assignment), as a share of points."""
    from scipy.optimize import linear_sum_assignment
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    k = int(max(labels.max(), clusters.max())) + 1
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(labels))


def kmeans_accuracy(z: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from sklearn.cluster import KMeans
    k = len(np.unique(labels))
    pred = KMeans(k, n_init=10, random_state=seed).fit_predict(z)
    return cluster_accuracy(labels, pred)


def linear_probe_accuracy(z_train, y_train, z_test, y_test) -> float:
    """Logistic regression on standardised codes, fitted on train, scored on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(z_train, y_train)
    return float(clf.score(z_test, y_test))


# -- `dgm evaluate` metrics ------------------------------------------------------------------------------------------
@metric("recon", needs=("reconstruct",), columns=(col("recon_mse", LOWER, rank=80),))
def _recon(model, ctx):
    """Per-pixel MSE of the reconstructions of the first ctx.n test images."""
    x = to_float(ctx.data("test").images[: ctx.n])
    with torch.inference_mode():
        err = torch.cat([((model.reconstruct(x[i:i + 500].to(model.device)).float().cpu() - x[i:i + 500]) ** 2)
                         .flatten(1).mean(1) for i in range(0, len(x), 500)])
    return {"recon_mse": {"value": float(err.mean()), "split": "test", "n": len(x),
                          "protocol": "per-pixel MSE of the decoded posterior mean, pixels in [0, 1]"}}


@metric("cluster", needs=("encode",),
        columns=(col("kmeans_acc", HIGHER, rank=90), col("linear_probe_acc", HIGHER, rank=91)))
def _cluster(model, ctx):
    """k-means accuracy and a linear probe on the codes (labelled data only)."""
    test = ctx.data("test")
    if test.labels is None:
        return {}
    z = encode_all(model, test.images[: ctx.n]).numpy()
    y = test.labels[: len(z)].numpy()
    train = ctx.data("train")
    zt = encode_all(model, train.images[: ctx.n]).numpy()
    return {"kmeans_acc": {"value": kmeans_accuracy(z, y, ctx.seed), "split": "test", "n": len(z),
                           "protocol": "k-means on latent means, Hungarian match to labels"},
            "linear_probe_acc": {"value": linear_probe_accuracy(zt, train.labels[: len(zt)].numpy(), z, y),
                                 "split": "train->test", "n": len(z),
                                 "protocol": "logistic regression on latent means"}}
