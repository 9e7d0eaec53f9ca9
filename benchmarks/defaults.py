"""Issue 22: the defaults of `dgm train FAMILY` (no options: mnist-mini, the family's default CPU budget) and the
candidates tried against them at the same budget, scored by domain FID (the cached MNIST classifier's penultimate
features; N generated samples against all 10,000 mnist-mini training images; one thread).

    OMP_NUM_THREADS=1 python benchmarks/defaults.py runs/defaults/gan runs/defaults/gan_w32_ttur --n 2000 \\
        --out benchmarks/results/defaults_gan.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import dgm
from dgm.data import load_dataset
from dgm.metrics import fid
from dgm.metrics.classifier import domain_classifier


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ext = fid.DomainExtractor(domain_classifier("mnist", 28, data_dir=a.data_dir))
    ref = fid.features(load_dataset("mnist-mini", "train").images, ext, 500, progress=False)
    rows = []
    for run in a.runs:
        cfg = json.loads(open(f"{run}/config.json").read())
        model = dgm.load(run)
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = model.sample(a.n, generator=torch.Generator().manual_seed(0))
        sample_s = time.perf_counter() - t0
        f = fid.features(fid.to_uint8_images(x), ext, 500, progress=False)
        set_ = {k: v for k, v in cfg["model"].items()}
        rows.append({"run": run, "family": cfg["family"], "domain_fid": round(fid.fid_from_features(ref, f), 3),
                     "n": a.n, "steps": cfg["progress"]["checkpoint_step"],
                     "cpu_min": round(cfg["progress"]["cpu_seconds"] / 60, 2), "sample_s": round(sample_s, 1),
                     "train": {k: cfg["train"][k] for k in ("batch_size", "lr", "ema_decay")},
                     "model": {k: set_[k] for k in ("width", "g_lr", "d_lr", "loss", "r1", "r2", "base_channels",
                                                   "objective", "latent_dim", "arch") if k in set_}})
        print(json.dumps(rows[-1]), flush=True)
    with open(a.out, "w") as fh:
        json.dump({"protocol": f"domain FID: mnist classifier features, N={a.n} samples (seed 0) vs the 10,000 "
                               "mnist-mini training images", "date": time.strftime("%Y-%m-%d"), "rows": rows},
                  fh, indent=1)


if __name__ == "__main__":
    main()
