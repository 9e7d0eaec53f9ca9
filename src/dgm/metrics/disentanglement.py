"""Disentanglement metrics on data with known factors of variation, following disentanglement_lib's protocol
(Locatello et al. 2019): BetaVAE score, FactorVAE score, MIG, DCI and SAP.

Each metric takes a *representation function* ``rep(classes) -> codes``: factor class indices, int ``(n, K)``, to the
representation of the image with those factors, float ``(n, d)`` (for a VAE: the posterior mean of the rendered image).
So the metrics need no images and can be checked with the factors themselves as the representation. ``factor_sizes``
gives the number of values of each factor (dSprites: 3, 6, 40, 32, 32). All randomness comes from ``seed``.

    from dgm.metrics.disentanglement import all_metrics, dsprites_representation
    scores = all_metrics(dsprites_representation(model), seed=0)
"""
from __future__ import annotations

import importlib
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from dgm.data import resize_images
from dgm.metrics.registry import HIGHER, col, metric
from dgm.metrics.representation import encode_all
from dgm.progress import progress, stderr_line

Rep = Callable[[np.ndarray], np.ndarray]

# Sample sizes of disentanglement_lib's configs (docs/EVALUATION.md), and a small set for tests and smoke runs.
PROTOCOL = {"beta_train": 10_000, "beta_eval": 5_000, "factor_var": 10_000, "factor_train": 10_000,
            "factor_eval": 5_000, "mig_n": 10_000, "dci_train": 10_000, "dci_test": 5_000, "sap_train": 10_000,
            "sap_test": 5_000, "batch_size": 64}
QUICK = {"beta_train": 300, "beta_eval": 200, "factor_var": 2_000, "factor_train": 300, "factor_eval": 200,
         "mig_n": 2_000, "dci_train": 1_000, "dci_test": 500, "sap_train": 1_000, "sap_test": 500, "batch_size": 32}


def _sample(sizes: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(0, k, n) for k in sizes], axis=1)


def _codes(rep: Rep, classes: np.ndarray) -> np.ndarray:
    z = np.asarray(rep(classes), dtype=np.float64)
    if z.ndim != 2 or len(z) != len(classes):
        raise ValueError(f"representation must return (n, d) codes for n factor rows; got {z.shape} for {len(classes)}")
    return z


# -- BetaVAE score (Higgins et al. 2017, sec. 3) -----------------------------------------------------------------
def _beta_vae_points(rep, sizes, n, batch, rng):
    """n training points: pick a factor k, draw `batch` pairs that share factor k's value (each pair its own value);
    the point is the mean over the batch of |z1 - z2| (d,), its label k."""
    K = len(sizes)
    k = rng.integers(0, K, n)                                   # (n,)
    a = _sample(sizes, n * batch, rng).reshape(n, batch, K)
    b = _sample(sizes, n * batch, rng).reshape(n, batch, K)
    b[np.arange(n), :, k] = a[np.arange(n), :, k]               # pair members share factor k
    za = _codes(rep, a.reshape(-1, K))
    zb = _codes(rep, b.reshape(-1, K))
    feats = np.abs(za - zb).reshape(n, batch, -1).mean(1)       # (n, d)
    return feats, k


def beta_vae_score(rep: Rep, factor_sizes: Sequence[int], *, seed: int = 0, n_train: int = 10_000,
                   n_eval: int = 5_000, batch_size: int = 64) -> dict[str, float]:
    """Accuracy of a linear classifier (logistic regression) that tells from mean |z1 - z2| which factor was fixed."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(seed)
    xt, yt = _beta_vae_points(rep, factor_sizes, n_train, batch_size, rng)
    xe, ye = _beta_vae_points(rep, factor_sizes, n_eval, batch_size, rng)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(xt, yt)
    return {"beta_vae_score": float(clf.score(xe, ye)), "beta_vae_train_accuracy": float(clf.score(xt, yt))}


# -- FactorVAE score (Kim & Mnih 2018, sec. 4) -------------------------------------------------------------------
def _factor_votes(rep, sizes, n, batch, scale, active, rng):
    """For each of n votes: fix one factor k (one value for the whole batch), and vote for the active dimension with
    the lowest variance after dividing by its global std. Returns vote counts (d, K)."""
    K = len(sizes)
    k = rng.integers(0, K, n)
    c = _sample(sizes, n * batch, rng).reshape(n, batch, K)
    c[np.arange(n), :, k] = np.array([rng.integers(0, sizes[j]) for j in k])[:, None]
    z = _codes(rep, c.reshape(-1, K)).reshape(n, batch, -1)[:, :, active] / scale[active]
    dims = np.var(z, axis=1, ddof=1).argmin(1)                  # (n,) index into the active dimensions
    votes = np.zeros((int(active.sum()), K), dtype=np.int64)
    np.add.at(votes, (dims, k), 1)
    return votes


def factor_vae_score(rep: Rep, factor_sizes: Sequence[int], *, seed: int = 0, n_var: int = 10_000,
                     n_train: int = 10_000, n_eval: int = 5_000, batch_size: int = 64,
                     prune_std: float = 0.05) -> dict[str, float]:
    """Majority-vote classifier from "dimension of least normalised variance" to the fixed factor; eval accuracy.

    Dimensions whose global std is below ``prune_std`` (collapsed to the prior) are pruned, as disentanglement_lib does.
    """
    rng = np.random.default_rng(seed)
    z = _codes(rep, _sample(factor_sizes, n_var, rng))
    scale = z.std(0, ddof=1)
    active = scale > prune_std
    if not active.any():
        return {"factor_vae_score": 0.0, "factor_vae_train_accuracy": 0.0, "factor_vae_active_dims": 0}
    vt = _factor_votes(rep, factor_sizes, n_train, batch_size, scale, active, rng)
    ve = _factor_votes(rep, factor_sizes, n_eval, batch_size, scale, active, rng)
    cls = vt.argmax(1)                                          # each active dimension -> its majority factor
    rows = np.arange(len(cls))
    return {"factor_vae_score": float(ve[rows, cls].sum() / ve.sum()),
            "factor_vae_train_accuracy": float(vt[rows, cls].sum() / vt.sum()),
            "factor_vae_active_dims": int(active.sum())}


# -- MIG (Chen et al. 2018, eq. 4) -------------------------------------------------------------------------------
def _discretize(z: np.ndarray, bins: int) -> np.ndarray:
    """Each column into `bins` equal-width bins over its range (disentanglement_lib's histogram discretiser)."""
    out = np.zeros(z.shape, dtype=np.int64)
    for i in range(z.shape[1]):
        edges = np.histogram(z[:, i], bins)[1]
        out[:, i] = np.digitize(z[:, i], edges[:-1])
    return out


def _mutual_info(zd: np.ndarray, y: np.ndarray) -> np.ndarray:
    """I(z_i; v_k) in nats for every discrete code column i and factor k, (d, K)."""
    from sklearn.metrics import mutual_info_score
    return np.array([[mutual_info_score(y[:, k], zd[:, i]) for k in range(y.shape[1])] for i in range(zd.shape[1])])


def mig(rep: Rep, factor_sizes: Sequence[int], *, seed: int = 0, n: int = 10_000, bins: int = 20) -> dict[str, float]:
    """Mutual information gap: per factor, (largest - second largest I(z_i; v_k)) / H(v_k), averaged over factors."""
    from sklearn.metrics import mutual_info_score
    rng = np.random.default_rng(seed)
    y = _sample(factor_sizes, n, rng)
    z = _codes(rep, y)
    mi = _mutual_info(_discretize(z, bins), y)                 # (d, K)
    h = np.array([mutual_info_score(y[:, k], y[:, k]) for k in range(y.shape[1])])
    top = np.sort(mi, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros_like(top[0])
    per = (top[0] - second) / h
    return {"mig": float(per.mean()), **{f"mig_factor{k}": float(v) for k, v in enumerate(per)}}


def latent_factors(rep: Rep, factor_sizes: Sequence[int], factor_names: Sequence[str], *, seed: int = 0,
                   n: int = 10_000, bins: int = 20) -> list[tuple[str, float]]:
    """Per latent dimension, the factor it carries most: (its name, I(z_i; v_k) / H(v_k)), the normalised mutual
    information MIG is made of (same sample, bins and seed). A value near 0: the dimension tracks no factor."""
    from sklearn.metrics import mutual_info_score
    if len(factor_names) != len(factor_sizes):
        raise ValueError(f"{len(factor_names)} factor names for {len(factor_sizes)} factors")
    y = _sample(factor_sizes, n, np.random.default_rng(seed))
    mi = _mutual_info(_discretize(_codes(rep, y), bins), y)
    mi = mi / np.array([mutual_info_score(y[:, k], y[:, k]) for k in range(y.shape[1])])
    return [(factor_names[int(k)], float(row[k])) for row, k in zip(mi, mi.argmax(1))]


# -- DCI (Eastwood & Williams 2018) ------------------------------------------------------------------------------
def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    p = np.clip(p, 1e-11, None)
    return -(p * np.log(p)).sum(axis) / np.log(base)


def dci(rep: Rep, factor_sizes: Sequence[int], *, seed: int = 0, n_train: int = 10_000,
        n_test: int = 5_000, n_estimators: int = 100) -> dict[str, float]:
    """Disentanglement, completeness and informativeness from gradient-boosted-tree feature importances.

    R[i, k] = importance of code i for predicting factor k (sklearn GradientBoostingClassifier, as disentanglement_lib).
    D = sum_i rho_i (1 - H_K(R[i, :] / sum_k R[i, k])), rho_i = share of code i in the total importance;
    C = sum_k w_k (1 - H_d(R[:, k] / sum_i R[i, k])), w_k = share of factor k; I = mean test accuracy.
    ``n_estimators``: boosting stages (sklearn's and disentanglement_lib's default 100; fewer only for quick tests).
    """
    from sklearn.ensemble import GradientBoostingClassifier
    rng = np.random.default_rng(seed)
    yt, ye = _sample(factor_sizes, n_train, rng), _sample(factor_sizes, n_test, rng)
    zt, ze = _codes(rep, yt), _codes(rep, ye)
    d, K = zt.shape[1], len(factor_sizes)
    R = np.zeros((d, K))
    train_acc, test_acc = [], []
    for k in range(K):
        clf = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed).fit(zt, yt[:, k])
        R[:, k] = np.abs(clf.feature_importances_)
        train_acc.append(clf.score(zt, yt[:, k]))
        test_acc.append(clf.score(ze, ye[:, k]))
    total = R.sum()
    if total == 0:  # constant codes: nothing is explained
        dis = comp = 0.0
    else:
        per_code = 1.0 - _entropy(R / np.clip(R.sum(1, keepdims=True), 1e-11, None), K, axis=1)
        dis = float((per_code * R.sum(1) / total).sum())
        per_factor = 1.0 - _entropy(R / np.clip(R.sum(0, keepdims=True), 1e-11, None), d, axis=0) if d > 1 \
            else np.ones(K)
        comp = float((per_factor * R.sum(0) / total).sum())
    return {"dci_disentanglement": dis, "dci_completeness": comp,
            "dci_informativeness": float(np.mean(test_acc)), "dci_informativeness_train": float(np.mean(train_acc))}


# -- SAP (Kumar et al. 2018, sec. 3) -----------------------------------------------------------------------------
def sap(rep: Rep, factor_sizes: Sequence[int], *, seed: int = 0, n_train: int = 10_000, n_test: int = 5_000,
        continuous_factors: bool = False) -> dict[str, float]:
    """Separated attribute predictability: S[i, k] = how well code i alone predicts factor k; SAP = mean over factors
    of the gap between the best and the second-best code.

    ``continuous_factors=False`` (disentanglement_lib's default, its published numbers): S is the test accuracy of a
    linear SVM (C = 0.01, balanced) on the one code. A 1-d linear classifier cannot carve a many-valued factor into
    its classes, so even the true factors score far below 1 (about 0.1 on dSprites). ``True`` (Kumar's choice for
    ordered factors): S is the R^2 of a linear fit, cov(z_i, v_k)^2 / (var z_i var v_k), on the training points.
    """
    rng = np.random.default_rng(seed)
    yt, ye = _sample(factor_sizes, n_train, rng), _sample(factor_sizes, n_test, rng)
    zt = _codes(rep, yt)
    d, K = zt.shape[1], len(factor_sizes)
    S = np.zeros((d, K))
    if continuous_factors:
        zc, yc = zt - zt.mean(0), yt - yt.mean(0)
        cov = zc.T @ yc / (len(zt) - 1)                                   # (d, K)
        var_z, var_y = zt.var(0, ddof=1), yt.var(0, ddof=1)
        ok = var_z > 1e-12
        S[ok] = cov[ok] ** 2 / (var_z[ok, None] * np.clip(var_y[None, :], 1e-12, None))
    else:
        from sklearn.svm import LinearSVC
        ze = _codes(rep, ye)
        for i in range(d):
            for k in range(K):
                if np.ptp(zt[:, i]) == 0:  # a constant code predicts only the majority class
                    S[i, k] = np.mean(ye[:, k] == np.bincount(yt[:, k]).argmax())
                    continue
                clf = LinearSVC(C=0.01, class_weight="balanced", random_state=seed).fit(zt[:, i:i + 1], yt[:, k])
                S[i, k] = clf.score(ze[:, i:i + 1], ye[:, k])
    top = np.sort(S, axis=0)[::-1]
    gap = top[0] - (top[1] if d > 1 else 0.0)
    return {"sap_continuous" if continuous_factors else "sap": float(gap.mean())}


def all_metrics(rep: Rep, factor_sizes: Sequence[int] | None = None, *, seed: int = 0, log=None,
                **sizes) -> dict[str, float]:
    """All five metrics with disentanglement_lib's sample sizes (PROTOCOL), each overridable by name; `log(line)`
    hears each metric as it starts and its time (a full protocol takes minutes)."""
    if factor_sizes is None:
        from dgm.data.dsprites import FACTOR_SIZES
        factor_sizes = FACTOR_SIZES
    s = {**PROTOCOL, **sizes}
    unknown = set(s) - set(PROTOCOL)
    if unknown:
        raise ValueError(f"unknown sample-size option(s) {sorted(unknown)}; valid: {sorted(PROTOCOL)}")
    steps = [
        ("BetaVAE score", lambda: beta_vae_score(rep, factor_sizes, seed=seed, n_train=s["beta_train"],
                                                 n_eval=s["beta_eval"], batch_size=s["batch_size"])),
        ("FactorVAE score", lambda: factor_vae_score(rep, factor_sizes, seed=seed, n_var=s["factor_var"],
                                                     n_train=s["factor_train"], n_eval=s["factor_eval"],
                                                     batch_size=s["batch_size"])),
        ("MIG", lambda: mig(rep, factor_sizes, seed=seed, n=s["mig_n"])),
        ("DCI", lambda: dci(rep, factor_sizes, seed=seed, n_train=s["dci_train"], n_test=s["dci_test"])),
        ("SAP", lambda: sap(rep, factor_sizes, seed=seed, n_train=s["sap_train"], n_test=s["sap_test"])),
        ("SAP (continuous)", lambda: sap(rep, factor_sizes, seed=seed, n_train=s["sap_train"],
                                         continuous_factors=True)),
    ]
    out = {}
    for i, (name, run) in enumerate(steps, 1):
        t0 = time.perf_counter()
        out.update(run())
        if log is not None:
            log(f"disentanglement {i}/{len(steps)}: {name} done in {time.perf_counter() - t0:.0f} s")
    return out


# -- representations of a trained model --------------------------------------------------------------------------
# Datasets that render any factor combination on demand: a module with FACTOR_SIZES, N_IMAGES, render(classes) -> uint8
# images, all_classes(start, stop) and flat_index(classes). Other data with factors is measured on its own images
# (`lookup_representation`), which then must hold every combination of factor values.
RENDERERS = {"dsprites": "dgm.data.dsprites"}


def encode_means(model, images_uint8: torch.Tensor, batch: int = 2048) -> np.ndarray:
    """Posterior means (or AE codes) of uint8 images, (n, d) float32, in batches."""
    return encode_all(model, images_uint8, batch).numpy()


def rendered_representation(model, source, table: bool = True, chunk: int = 8192,
                            image_size: int | None = None, log=stderr_line) -> Rep:
    """rep(classes): the code of the image `source` renders for those factors (resized to `image_size` when given).

    ``table=True`` encodes every combination once (rendered chunk by chunk, never all in memory) and then looks codes
    up; for dSprites the default protocol asks for ~3 million encodings of 737,280 images, so the table is 4x cheaper
    and gives identical codes."""
    def enc(c):
        x = source.render(c)
        return encode_means(model, x if image_size in (None, x.shape[-1]) else resize_images(x, image_size))
    if not table:
        return lambda c: np.concatenate([enc(c[i:i + chunk]) for i in range(0, len(c), chunk)])
    n = source.N_IMAGES
    starts = progress(range(0, n, chunk), math.ceil(n / chunk), "encoding every factor combination", unit="chunk",
                      what=f"{n:,} images", log=log)
    codes = np.concatenate([enc(source.all_classes(i, min(n, i + chunk))) for i in starts])
    return lambda c: codes[source.flat_index(c)]


def rendered_factors(model, data_name: str, n: int = 10_000, image_size: int | None = None
                     ) -> list[tuple[str, float]] | None:
    """latent_factors of a model on data that can render any factor combination (dSprites), else None."""
    if data_name not in RENDERERS:
        return None
    source = importlib.import_module(RENDERERS[data_name])
    rep = rendered_representation(model, source, table=False, image_size=image_size)
    return latent_factors(rep, source.FACTOR_SIZES, source.FACTOR_NAMES, n=n)


def dsprites_representation(model, table: bool = True, chunk: int = 8192, image_size: int | None = None) -> Rep:
    """rep(classes) for a model trained on dSprites: the posterior mean of the rendered image."""
    from dgm.data import dsprites as ds
    return rendered_representation(model, ds, table, chunk, image_size)


def lookup_representation(model, data) -> tuple[Rep, tuple[int, ...]]:
    """(rep, factor sizes) from a dataset's own images and factor classes ``data.factors`` (N, K), which must hold
    every combination of factor values (a full grid, as disentanglement_lib's datasets do)."""
    f = data.factors.long().numpy()
    sizes = tuple(int(v) + 1 for v in f.max(0))
    flat = np.ravel_multi_index(f.T, sizes)
    total = int(np.prod(sizes))
    if len(np.unique(flat)) != total:
        raise ValueError(f"{data.name}: disentanglement metrics need every combination of its factor values "
                         f"({total} for factor sizes {sizes}), the data holds {len(np.unique(flat))}")
    row = np.empty(total, dtype=np.int64)
    row[flat] = np.arange(len(f))
    codes = encode_means(model, data.images)
    return (lambda c: codes[row[np.ravel_multi_index(np.asarray(c).T, sizes)]]), sizes


def planned_encodings(sizes: dict[str, int]) -> int:
    """How many images the five metrics encode with these sample sizes (decides between the table and direct)."""
    b = sizes["batch_size"]
    return (2 * b * (sizes["beta_train"] + sizes["beta_eval"]) + sizes["factor_var"]
            + b * (sizes["factor_train"] + sizes["factor_eval"]) + sizes["mig_n"]
            + 2 * (sizes["dci_train"] + sizes["dci_test"] + sizes["sap_train"] + sizes["sap_test"]))


# -- `dgm evaluate RUN --metrics disentanglement` ----------------------------------------------------------------
@metric("disentanglement", needs=("encode",),
        columns=tuple(col(k, HIGHER, rank=100 + i) for i, k in enumerate(
            ("beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "dci_completeness",
             "dci_informativeness", "sap", "sap_continuous", "mig_factor*"))))
def _disentanglement(model, ctx):
    """All five metrics on data with ground-truth factors (``ImageData.factors``); other data is skipped (with a
    warning when the metric was named).

    ctx.options["disentanglement_sizes"] may override PROTOCOL's sample sizes (e.g. QUICK for a smoke test)."""
    test = ctx.data("test")
    if test.factors is None:
        if "disentanglement" in ctx.named:
            import warnings
            warnings.warn(f"disentanglement metrics need ground-truth factors of variation; {test.name!r} has "
                          f"none: skipped", stacklevel=2)
        return {}
    sizes = {**PROTOCOL, **ctx.options.get("disentanglement_sizes", {})}
    model.eval()
    if test.name in RENDERERS:
        source = importlib.import_module(RENDERERS[test.name])
        rep = rendered_representation(model, source, table=planned_encodings(sizes) > source.N_IMAGES,
                                      image_size=test.shape[1], log=ctx.log)
        factor_sizes, what = source.FACTOR_SIZES, f"{test.name}, rendered, all {source.N_IMAGES:,} factor combinations"
    else:
        train = ctx.data("train")
        rep, factor_sizes = lookup_representation(model, train)
        what = f"{train.name} train split, all {len(train):,} images"
    res = all_metrics(rep, factor_sizes, seed=ctx.seed, log=ctx.log, **sizes)
    proto = {"data": what, "representation": "posterior mean", "seed": ctx.seed,
             "sizes": " ".join(f"{k}={v}" for k, v in sizes.items()),
             "protocol": "disentanglement_lib (Locatello et al. 2019)"}
    notes = {"sap": "discrete factors: 1-d LinearSVC accuracy (disentanglement_lib default)",
             "sap_continuous": "R^2 of a linear fit per code and factor (Kumar et al. 2018, ordered factors)",
             "mig": "20-bin histograms, normalised by factor entropy"}
    return {k: {"value": v, **proto, **({"note": notes[k]} if k in notes else {})} for k, v in res.items()}
