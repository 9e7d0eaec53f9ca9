"""Conv VAE on MNIST (dynamic binarisation): test NLL (IWAE), test ELBO, training img/s and wall time.

    python benchmarks/vae_mnist.py --epochs 40 --precision bf16                   # NLL: the default preset
    python benchmarks/vae_mnist.py --epochs 40 --precision bf16 --protocol paper  # k = 5000, all 10,000 images

Protocol (docs EVALUATION.md): train on the 60k training images, each batch binarised afresh; test on one fixed
binarisation (seed 0) of the test set; NLL = IWAE estimate with k importance samples (Burda et al. 2015), nats, on
the preset's images (dgm.metrics.likelihood.PRESETS: default k = 1000 on a seeded random 1,000; paper k = 5000 on
all) unless --k / --nll-n set them.
Writes benchmarks/results/vae_mnist.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from dgm.evaluate import evaluate
from dgm.tasks import train
from dgm.figures import read_metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=float, default=40)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--channels", default="64,128")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--protocol", default="default", choices=["default", "paper"], help="the NLL preset")
    p.add_argument("--k", type=int, default=None, help="importance samples (default: the preset's)")
    p.add_argument("--nll-n", type=int, default=None, help="test images for the IWAE NLL (default: the preset's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench_vae_mnist")
    p.add_argument("--results", default="benchmarks/results/vae_mnist.json")
    a = p.parse_args()
    t0 = time.perf_counter()
    run = train("vae", "mnist", epochs=a.epochs, out=a.out, data_dir=a.data_dir, progress=False,
                overrides={"latent_dim": a.latent, "conv_channels": a.channels, "precision": a.precision,
                           "lr": a.lr, "lr_decay_start": "0.5", "batch_size": "128", "log_every": "200",
                           "ckpt_every": "2000"})
    wall = time.perf_counter() - t0
    rows = read_metrics(run)
    ips = sorted(r["img_per_s"] for r in rows[1:])  # first window includes warm-up
    t1 = time.perf_counter()
    res = evaluate(run, ["elbo", "recon"], n=10_000, data_dir=a.data_dir)
    opts = {k: v for k, v in (("k", a.k), ("nll_n", a.nll_n)) if v}
    res.update(evaluate(run, ["nll"], n=10_000, data_dir=a.data_dir, options=opts, protocol=a.protocol))
    out = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "command": "python benchmarks/vae_mnist.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                                                              if k not in ("out", "results", "data_dir")),
           "epochs": a.epochs, "train_wall_s": round(wall, 1), "eval_wall_s": round(time.perf_counter() - t1, 1),
           "train_img_per_s_median": round(ips[len(ips) // 2], 1) if ips else None,
           "test_nll_nats": res["test_nll"]["value"], "test_nll_stderr": res["test_nll"]["stderr"],
           "nll_n": res["test_nll"]["n"], "k": res["test_nll"]["k"], "nll_preset": res["test_nll"]["preset"],
           "test_elbo_nats": res["test_elbo"]["value"], "recon_mse": res["recon_mse"]["value"],
           "curve": [{"step": r["step"], "epoch": r["epoch"], "elbo": r["elbo"]} for r in rows]}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text(json.dumps(out, indent=1))
    print("| test NLL (IWAE) | test ELBO | train img/s | train wall |")
    print("|---|---|---|---|")
    print(f"| {out['test_nll_nats']:.2f} ± {out['test_nll_stderr']:.2f} nats (k={out['k']}, {out['nll_n']} test images) | {out['test_elbo_nats']:.2f} nats "
          f"| {out['train_img_per_s_median']} | {wall / 60:.1f} min |")


if __name__ == "__main__":
    main()
