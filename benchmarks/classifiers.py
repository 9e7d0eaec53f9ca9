"""Train the domain classifiers (mnist, fashion-mnist, usps, digits) and record their test accuracies.

    OMP_NUM_THREADS=1 python benchmarks/classifiers.py [--data-dir DIR] [--datasets mnist,usps] [--cache-dir DIR]

Writes benchmarks/results/classifiers.json and .md; the classifiers land in the cache root (see
dgm.models.classifier), where `get_classifier` finds them. Targets (issue 3): MNIST 99%, Fashion-MNIST 91%, USPS 95%.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dgm.metrics.classifier import RECIPES, train_classifier

TARGET = {"mnist": 0.99, "fashion-mnist": 0.91, "usps": 0.95, "digits": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir")
    ap.add_argument("--cache-dir", help="where to store the classifiers (default: the cache root)")
    ap.add_argument("--datasets", default="mnist,fashion-mnist,usps,digits")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "classifiers"))
    a = ap.parse_args()
    rows = []
    for ds in a.datasets.split(","):
        t0 = time.perf_counter()
        d = train_classifier(ds, data_dir=a.data_dir, cache_dir=a.cache_dir, progress=False)
        dt = time.perf_counter() - t0
        info = json.loads((d / "classifier.json").read_text())
        logs = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        ips = sorted(r["img_per_s"] for r in logs)[len(logs) // 2] if logs else float("nan")
        rows.append({"dataset": ds, "test_accuracy": info["test_accuracy"], "n_test": info["n_test"],
                     "target": TARGET.get(ds), "epochs": RECIPES.get(ds, {}).get("epochs"), "train_seconds": round(dt, 1),
                     "train_img_per_s_median": round(ips, 1), "image_size": info["image_size"], "folder": str(d),
                     "threads": torch.get_num_threads()})
        print(rows[-1], flush=True)
        Path(a.out + ".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| dataset | size | epochs | test accuracy | target | train time (s) | train img/s (median) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = f"{r['target']:.0%}" if r["target"] else "-"
        lines.append(f"| {r['dataset']} | {r['image_size']} | {r['epochs']} | {r['test_accuracy']:.2%} "
                     f"(n={r['n_test']}) | {tgt} | {r['train_seconds']} | {r['train_img_per_s_median']} |")
    md = "\n".join(lines)
    print(md)
    Path(a.out + ".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
