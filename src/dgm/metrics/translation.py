"""Does a translation keep its content? Label preservation for CycleGAN (docs/EVALUATION.md, "Translation").

For A -> B: translate A's test set, classify the results with a classifier trained only on B's training split and
count how often it finds A's label. Beside it: the source-only baseline (the same classifier on the untranslated A
test images, at the model's size and channels) and the target ceiling (that classifier on B's own test split).
B -> A is the mirror image. Also the domain FID (Frechet distance on that classifier's penultimate features) between
the translations and the target test split: a cheap style measure, never to be read as Inception FID.
Registers the `translation` metric of `dgm evaluate`.
"""
from __future__ import annotations

import torch

from dgm.data import ImageData, to_float
from dgm.metrics.classifier import domain_classifier
from dgm.metrics.registry import HIGHER, LOWER, col, metric
from dgm.models.cyclegan import match_channels


def _accuracy(clf, x01: torch.Tensor, labels: torch.Tensor) -> float:
    return float((clf.predict(x01) == labels).float().mean())


def label_preservation(model, test: ImageData, clf_a, clf_b, n: int | None = None,
                       domain_fid: bool = True) -> dict[str, dict]:
    """Both directions' accuracy, source-only baseline and ceiling on unpaired test data (`test.b` is domain B).

    clf_a / clf_b: classifiers of A and B at the model's size (callables (B, C, H, W) in [0, 1] -> logits with
    `.predict`; `.features` for the domain FID). Returns eval.json records.
    """
    out: dict[str, dict] = {}
    sides = {"A": (test.images, test.labels, f"A ({getattr(test, 'a_name', '') or test.name})"),
             "B": (test.b.images, test.b.labels, f"B ({test.b.name})")}
    for src, dst, clf, direction in (("A", "B", clf_b, "AtoB"), ("B", "A", clf_a, "BtoA")):
        xs, ys, src_name = sides[src]
        xt, yt, dst_name = sides[dst]
        if ys is None or yt is None or clf is None:
            continue
        xs, ys = xs[:n], ys[:n]
        c_dst = xt.shape[1]
        x01 = to_float(xs)
        fake = model.translate(x01, direction)
        proto = (f"{src_name} test set translated {direction} (n={len(xs)}), classified by a classifier trained on "
                 f"{dst_name}'s train split only")
        key = f"{src}2{dst}"
        out[f"label_acc_{key}"] = {"value": _accuracy(clf, fake, ys), "split": "test", "n": len(xs),
                                   "protocol": proto}
        out[f"label_acc_{key}_source_only"] = {
            "value": _accuracy(clf, match_channels(x01, c_dst), ys), "split": "test", "n": len(xs),
            "protocol": f"the same {dst_name} classifier on the untranslated {src_name} test images (resized, "
                        f"channels matched)"}
        out[f"label_acc_{key}_ceiling"] = {
            "value": _accuracy(clf, to_float(xt), yt), "split": "test", "n": len(xt),
            "protocol": f"the {dst_name} classifier on its own test split"}
        dim = getattr(getattr(clf, "config", None), "feature_dim", 0)
        if domain_fid and hasattr(clf, "features") and min(len(fake), len(xt)) > dim:  # full-rank covariances only
            from dgm.metrics.fid import fid_from_features
            with torch.inference_mode():
                f1 = torch.cat([clf.features(fake[i:i + 1000]).float().cpu() for i in range(0, len(fake), 1000)])
                f2 = torch.cat([clf.features(to_float(xt[i:i + 1000])).float().cpu() for i in range(0, len(xt), 1000)])
            out[f"domain_fid_{key}"] = {
                "value": fid_from_features(f1.double().numpy(), f2.double().numpy()), "split": "test",
                "n": len(fake),
                "protocol": f"domain FID (not Inception FID): Frechet distance on the {dst_name} classifier's "
                            f"penultimate features, translations vs its test split (n={len(xt)})"}
    return out


@metric("translation", needs=("translate",), default=True,
        columns=(col("label_acc_A2B", HIGHER, rank=110), col("label_acc_B2A", HIGHER, rank=111),
                 col("domain_fid_A2B", LOWER, rank=112), col("domain_fid_B2A", LOWER, rank=113),
                 col("label_acc_*", HIGHER, rank=114)))
def translation_metric(model, ctx) -> dict[str, dict]:
    """`dgm evaluate RUN --metrics translation`: label preservation both ways on the run's unpaired test data."""
    test = ctx.data("test")
    if getattr(test, "b", None) is None:
        raise ValueError(f"the translation metric needs unpaired data (unpaired:A,B), got {test.name}")
    size = model.config.image_size
    data_dir = ctx.data_dir or ctx.config.get("data", {}).get("data_dir")
    names = [getattr(test, "a_name", ""), test.b.name]
    clfs = []
    for name, labels in zip(names, (test.labels, test.b.labels)):
        clfs.append(domain_classifier(name, size, data_dir, device=str(model.device))
                    if labels is not None and name else None)
    if clfs[0] is None and clfs[1] is None:
        raise ValueError("label preservation needs labelled domains (e.g. unpaired:mnist,usps)")
    return label_preservation(model, test, clfs[0], clfs[1], n=ctx.n)
