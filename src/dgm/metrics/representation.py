"""How well latent codes organise the data: k-means cluster accuracy (Hungarian matching) and a linear probe."""
from __future__ import annotations

import numpy as np
import torch

from dgm.data import to_float


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
