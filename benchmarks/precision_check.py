"""Does bf16 autocast cost quality? Same seed, same budget, fp32 vs bf16: test ELBO and training img/s.

    python benchmarks/precision_check.py --data mnist --epochs 2

Writes benchmarks/results/precision_check.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dgm.evaluate import evaluate
from dgm.tasks import train
from dgm.figures import read_metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--family", default="vae")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results", default="benchmarks/results/precision_check.json")
    a = p.parse_args()
    rows = []
    for prec in ("fp32", "bf16"):
        t0 = time.perf_counter()
        run = train(a.family, a.data, epochs=a.epochs, out=f"runs/precision_{prec}", data_dir=a.data_dir, progress=False,
                    figures=False, overrides={"precision": prec, "latent_dim": "32", "log_every": "100", "seed": "0"})
        wall = time.perf_counter() - t0
        ips = sorted(r["img_per_s"] for r in read_metrics(run)[1:])
        res = evaluate(run, ["elbo"], data_dir=a.data_dir)
        rows.append({"precision": prec, "test_elbo": res["test_elbo"]["value"], "img_per_s": ips[len(ips) // 2],
                     "wall_s": wall})
    Path(a.results).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    print(f"| precision | test ELBO (nats, {a.data}, {a.epochs} epochs) | train img/s (median) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['test_elbo']:.2f} | {r['img_per_s']:.0f} |")


if __name__ == "__main__":
    main()
