"""Sample-quality metrics for `dgm evaluate`: every model that can sample gets them (docs/EVALUATION.md).

Registered metrics (each writes records with its protocol: N, reference split, extractor):
  domain_fid        Frechet distance on the domain classifier's penultimate features        (default)
  kid               KID on domain features, or Inception features with --set features=inception (default)
  precision_recall  improved precision/recall, k = 3, on the same features as kid          (default)
  inception_score   classifier-based Inception Score (10 splits) with the domain classifier (default)
  mode_coverage     share of classes found in the samples, KL of the class histogram to uniform (default)
  fid               Inception FID (TF 2015-12-05 weights; slow on a CPU: ~1-5 images/s)    (named only)

Samples: ``ctx.n`` images drawn once per `evaluate` call (seed ``ctx.seed``) and shared by all metrics. Reference:
a fixed seeded subset of ``options["ref_n"]`` (default 10,000) training images, statistics cached (dgm.metrics.fid).
Options (``evaluate(options=...)`` / CLI): inception (weights path), precision ("fp32"/"bf16", Inception only),
features ("domain"/"inception" for kid and precision_recall), ref_n, batch_size.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dgm.metrics.classifier import domain_classifier
from dgm.metrics.registry import HIGHER, LOWER, col, metric
from dgm.progress import progress


def can_sample(model) -> bool:
    return "sample" in model.capabilities()


# -- shared pieces -------------------------------------------------------------------------------------------------
def generated(model, ctx, batch_size: int = 500) -> torch.Tensor:
    """ctx.n samples as uint8 (N, C, H, W), drawn once per evaluate call from one seeded generator."""
    if "samples" not in ctx.memo:
        from dgm.metrics.fid import to_uint8_images
        g = torch.Generator().manual_seed(ctx.seed)
        out = []
        with torch.inference_mode():
            for i in progress(range(0, ctx.n, batch_size), math.ceil(ctx.n / batch_size), "sampling",
                              unit="batch", what=f"{ctx.n} samples", log=ctx.log,
                              cheaper=f"--n {max(2, ctx.n // 4)}"):
                x = model.sample(min(batch_size, ctx.n - i), generator=g)
                out.append(to_uint8_images(x.float().cpu()))
        ctx.memo["samples"] = torch.cat(out)
    return ctx.memo["samples"]


def data_info(ctx) -> tuple[str, int]:
    d = ctx.config.get("data", {})
    if "name" not in d:
        raise ValueError(f"{ctx.run_dir}: config.json records no dataset; sample metrics need one")
    return d["name"], d.get("image_size")


def run_classifier(model, ctx):
    """The run's dataset's domain classifier at the run's image size (dgm.metrics.classifier.domain_classifier:
    trained and cached when missing), memoised per evaluate call; None when the dataset has no labels."""
    if "classifier" not in ctx.memo:
        name, size = data_info(ctx)
        if ctx.data("train").labels is None:
            ctx.memo["classifier"] = None
        else:
            data_dir = ctx.data_dir or ctx.config.get("data", {}).get("data_dir")
            ctx.memo["classifier"] = domain_classifier(name, size, data_dir, device=str(model.device))
    return ctx.memo["classifier"]


def extractor(kind: str, model, ctx):
    """("domain" | "inception") -> a feature extractor (see dgm.metrics.fid), memoised per evaluate call."""
    key = f"extractor_{kind}"
    if key not in ctx.memo:
        from dgm.metrics import fid
        if kind == "inception":
            ctx.memo[key] = fid.load_inception(ctx.options.get("inception"), device=str(model.device),
                                               precision=ctx.options.get("precision", "fp32"))
        elif kind == "domain":
            clf = run_classifier(model, ctx)
            ctx.memo[key] = fid.DomainExtractor(clf) if clf is not None else None
        else:
            raise ValueError(f"features must be 'domain' or 'inception', got {kind!r}")
    return ctx.memo[key]


def feature_sets(kind: str, model, ctx) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(reference features, sample features, protocol) on a seeded subset of the training split."""
    key = f"features_{kind}"
    if key not in ctx.memo:
        from dgm.metrics import fid
        ext = extractor(kind, model, ctx)
        if ext is None:
            return None
        bs = int(ctx.options.get("batch_size", 50 if kind == "inception" else 500))
        train = ctx.data("train")
        ref_n = int(ctx.options.get("ref_n", 10_000))
        idx = fid.reference_subset(len(train), ref_n, ctx.seed)
        ref = fid.features(train.images[idx], ext, bs, desc=f"{kind} features (reference)", log=ctx.log,
                           cheaper=f"--ref-n {max(2, ref_n // 4)}")
        fake = fid.features(generated(model, ctx), ext, bs, desc=f"{kind} features (samples)", log=ctx.log,
                            cheaper=f"--n {max(2, ctx.n // 4)}")
        ctx.memo[key] = (ref, fake, protocol(ext, ctx, len(ref), len(fake)))
    return ctx.memo[key]


def protocol(ext, ctx, n_ref: int, n_fake: int) -> dict:
    name, size = data_info(ctx)
    return {"n": n_fake, "reference": f"{name} train, seeded subset of {n_ref}", "image_size": size,
            "extractor": ext.name, "extractor_sha256": ext.checksum, "seed": ctx.seed}


def fid_record(kind: str, model, ctx) -> dict:
    from dgm.metrics import fid
    name, size = data_info(ctx)
    ref_n = int(ctx.options.get("ref_n", 10_000))
    # Inception's size is known before its weights are loaded: check N first, it is the cheaper mistake to catch.
    ext = None if kind == "inception" else extractor(kind, model, ctx)
    dim = fid.InceptionExtractor.dim if kind == "inception" else ext.dim if ext is not None else 0
    n_ref = min(ref_n, len(ctx.data("train")))
    if dim and min(ctx.n, n_ref) <= dim:  # fewer samples than dimensions: a singular covariance, a meaningless number
        raise ValueError(f"{kind} FID on {dim}-d features needs more than {dim} samples and reference images; "
                         f"got --n {ctx.n} and {n_ref} reference images ({name} train, --ref-n {ref_n})")
    ext = ext or extractor(kind, model, ctx)
    if ext is None:
        return {}
    bs = int(ctx.options.get("batch_size", 50 if kind == "inception" else 500))
    ref = fid.reference_stats(name, ext, "train", ref_n, data_dir=ctx.data_dir, image_size=size, seed=ctx.seed,
                              batch_size=bs, log=ctx.log)
    fake = fid.features(generated(model, ctx), ext, bs, desc=f"{kind} features (samples)", log=ctx.log,
                        cheaper=f"--n {max(dim + 1, ctx.n // 4)}")
    value = fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(fake))
    rec = {"value": value, **protocol(ext, ctx, ref["n"], len(fake))}
    if kind == "inception" and ext.precision != "fp32":
        rec["precision"] = ext.precision
    return rec


# -- the metrics -----------------------------------------------------------------------------------------------------
@metric("fid", needs=("sample",), default=False, columns=(col("fid", LOWER, rank=10),))
def _fid(model, ctx):
    rec = fid_record("inception", model, ctx)
    return {"fid": {**rec, "protocol": "Inception FID (Heusel 2017), samples quantised to uint8, 299x299"}}


@metric("domain_fid", needs=("sample",), columns=(col("domain_fid", LOWER, rank=20),))
def _domain_fid(model, ctx):
    rec = fid_record("domain", model, ctx)
    if not rec:
        return {}
    return {"domain_fid": {**rec, "protocol": "domain FID: Frechet distance on the domain classifier's features "
                                              "(not comparable with Inception FID)"}}


@metric("kid", needs=("sample",), columns=(col("kid_inception", LOWER, rank=30), col("kid_domain", LOWER, rank=31)))
def _kid(model, ctx):
    from dgm.metrics.kid import kid
    kind = ctx.options.get("features", "domain")
    sets = feature_sets(kind, model, ctx)
    if sets is None:
        return {}
    ref, fake, proto = sets
    mean, std = kid(ref, fake, subsets=100, subset_size=1000, seed=ctx.seed)
    return {f"kid_{kind}": {"value": mean, "std": std, **proto,
                            "protocol": "KID (Binkowski 2018): unbiased MMD^2, kernel (x.y/d+1)^3, 100 subsets of 1000"}}


@metric("precision_recall", needs=("sample",),
        columns=(col("precision_inception", HIGHER, rank=40), col("recall_inception", HIGHER, rank=41),
                 col("precision_domain", HIGHER, rank=42), col("recall_domain", HIGHER, rank=43)))
def _precision_recall(model, ctx):
    from dgm.metrics.kid import precision_recall
    kind = ctx.options.get("features", "domain")
    sets = feature_sets(kind, model, ctx)
    if sets is None:
        return {}
    ref, fake, proto = sets
    p, r = precision_recall(ref, fake, k=3)
    how = "improved precision/recall (Kynkaanniemi 2019), k=3"
    return {f"precision_{kind}": {"value": p, **proto, "protocol": how},
            f"recall_{kind}": {"value": r, **proto, "protocol": how}}


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), mean and std over `splits` equal chunks."""
    if probs.dim() != 2 or len(probs) < splits:
        raise ValueError(f"inception_score needs (N >= {splits}, classes) probabilities, got {tuple(probs.shape)}")
    p = probs.double().clamp_min(1e-12)
    scores = []
    for chunk in torch.tensor_split(p, splits):
        py = chunk.mean(0, keepdim=True)
        scores.append(math.exp(float((chunk * (chunk.log() - py.log())).sum(1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


def class_histogram_stats(pred: torch.Tensor, num_classes: int) -> tuple[float, float, list[int]]:
    """(share of classes predicted at least once, KL(histogram || uniform) in nats, counts)."""
    counts = torch.bincount(pred, minlength=num_classes).double()
    p = counts / counts.sum()
    nz = p > 0
    kl = float((p[nz] * (p[nz] * num_classes).log()).sum())
    return float(nz.double().mean()), kl, [int(c) for c in counts]


@metric("inception_score", needs=("sample",), columns=(col("inception_score_domain", HIGHER, rank=50),))
def _inception_score(model, ctx):
    clf = run_classifier(model, ctx)
    if clf is None:
        return {}
    x = generated(model, ctx).float().div_(255.0)
    mean, std = inception_score(clf.probs(x))
    real = ctx.data("test")
    real_mean, _ = inception_score(clf.probs(real.images[: ctx.n].float().div_(255.0)))
    name, _ = data_info(ctx)
    return {"inception_score_domain": {
        "value": mean, "std": std, "n": len(x), "splits": 10, "real_test_value": real_mean,
        "extractor": f"domain classifier ({name}, test accuracy {clf.test_accuracy:.4f})",
        "protocol": "classifier-based Inception Score (Salimans 2016) with the domain classifier; max = classes"}}


@metric("mode_coverage", needs=("sample",),
        columns=(col("mode_coverage", HIGHER, rank=60), col("mode_kl_uniform", LOWER, "nats", rank=61)))
def _mode_coverage(model, ctx):
    clf = run_classifier(model, ctx)
    if clf is None:
        return {}
    x = generated(model, ctx).float().div_(255.0)
    k = clf.config.num_classes
    share, kl, counts = class_histogram_stats(clf.predict(x), k)
    name, _ = data_info(ctx)
    ext = f"domain classifier ({name}, test accuracy {clf.test_accuracy:.4f})"
    return {"mode_coverage": {"value": share, "n": len(x), "classes": k, "counts": counts, "extractor": ext,
                              "protocol": "share of classes predicted for at least one sample"},
            "mode_kl_uniform": {"value": kl, "n": len(x), "unit": "nats", "extractor": ext,
                                "protocol": "KL(predicted class histogram || uniform); 0 = balanced"}}
