"""Diffusion on MNIST: train a small UNet for a wall-clock CPU budget, then compare samplers.

Rows: DDIM 10/20/50/100 (eta 0), DPM-Solver++(2M) 10/20 and DDPM (all 1000 steps), each from the same seeded initial
noise. Columns: domain FID (dgm.metrics.fid on the MNIST domain classifier's 128-d features; reference: the cached
seeded 10,000-image subset of the training split; needs N > 128), sampling milliseconds per image and per network call.
Plus the variational bound in bits/dim on test images and the training throughput. Inception FID (bf16 Inception, the
cached seeded 10,000-image train reference that `dgm evaluate` uses) for the samplers named in --inception-rows, at
N > 2048 (protocol: 10,000; ~11 min of one CPU thread per 10,000 images).
Writes benchmarks/results/diffusion.{json,md} (rewritten after every row) and sample grids into the run folder.

    nohup env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py --stage train --minutes 50 \
        > benchmarks/results/diffusion_train.log 2>&1 &
    nohup env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion.py --stage eval --n 150 --n-ddpm 16 \
        > benchmarks/results/diffusion_eval.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def probe_speed(model, data, batch_size: int, precision: str, steps: int = 6) -> float:
    """Training images/second for a few steps (after one warm-up), on a throwaway copy of the optimiser state."""
    import copy
    from dgm.train import make_optimizer
    m = copy.deepcopy(model).train()
    opt = make_optimizer(torch.optim.Adam, m.parameters(), lr=1e-4)  # as the Trainer builds it
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
    from dgm.figures import write_figures
    from dgm.tasks import run_data, train
    data = load_dataset(a.data, "train", data_dir=a.data_dir)
    c, h, _ = data.shape
    model = Diffusion(DiffusionConfig(channels=c, image_size=h, base_channels=a.base))
    prev = json.loads((Path(a.out) / "bench_train.json").read_text()) if a.resume else None
    if prev:  # continue an earlier budget: same precision, add to its steps and seconds
        speeds, prec, step0 = prev["probe_img_per_s"], prev["precision"], prev["steps"]
    else:
        speeds = {p: probe_speed(model, data, a.batch_size, p) for p in ("fp32", "bf16")}
        prec = a.precision if a.precision != "auto" else max(speeds, key=speeds.get)
        step0 = 0
    print(f"probe img/s {speeds}; training in {prec} for {a.minutes} min from step {step0}, chunks of {a.chunk} steps",
          flush=True)
    t0, step = time.perf_counter(), step0
    while time.perf_counter() - t0 < a.minutes * 60 and (not a.steps or step < a.steps):
        step += a.chunk
        train("diffusion", a.data, steps=step, out=a.out, data_dir=a.data_dir, progress=False, figures=False,
              resume=step > a.chunk,
              overrides={"base_channels": str(a.base), "batch_size": str(a.batch_size), "precision": prec,
                         "lr": str(a.lr), "ema_decay": str(a.ema), "warmup_steps": "100", "log_every": "50",
                         "ckpt_every": str(a.chunk), "sample_every": str(10 * a.chunk)})
        print(f"step {step}  {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    secs = time.perf_counter() - t0 + (prev["train_seconds"] if prev else 0.0)
    # A resumed run keeps its own config (lr, EMA decay, width), whatever this command's flags say: record those.
    saved, trained = json.loads((Path(a.out) / "config.json").read_text()), load(a.out)
    bs = saved["train"]["batch_size"]
    info = {"steps": step, "batch_size": bs, "precision": prec, "lr": saved["train"]["lr"],
            "ema_decay": saved["train"]["ema_decay"], "base_channels": saved["model"]["base_channels"],
            "probe_img_per_s": speeds, "train_seconds": round(secs, 1),
            "img_per_s_overall": round(step * bs / secs, 2), "params": trained.num_parameters(),
            "epochs": round(step * bs / len(data), 3),
            **({"earlier": {k: prev[k] for k in ("steps", "train_seconds", "ema_decay", "note") if k in prev}}
               if prev else {})}
    (Path(a.out) / "bench_train.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)
    write_figures(a.out, trained, run_data(a.out))


def domain_fid_setup(a, model):
    from dgm.metrics import fid
    from dgm.metrics.classifier import get_classifier
    clf = get_classifier(a.data, data_dir=a.data_dir, progress=False)
    ext = fid.DomainExtractor(clf)
    ref = fid.reference_stats(a.data, ext, "train", 10_000, data_dir=a.data_dir, seed=0, batch_size=500, progress=False)
    return ext, ref, clf.test_accuracy


def stage_eval(a):
    """Bits/dim first (cheap), then one row per sampler, fastest first; results are rewritten after every row, so a
    run cut short still leaves what it measured."""
    from dgm.data import load_dataset
    from dgm.io import load
    from dgm.metrics import fid
    from dgm.grids import save_grid
    model = load(a.out)
    res = {"data": a.data, "run": str(a.out), "train": json.loads((Path(a.out) / "bench_train.json").read_text()),
           "sample_precision": a.sample_precision, "domain_ref": f"{a.data} train, seeded subset of 10,000", "rows": []}
    ext, ref, res["domain_classifier_test_accuracy"] = domain_fid_setup(a, model)
    test = load_dataset(a.data, "test", data_dir=a.data_dir)
    # Real test images through the same pipeline: what a perfect sampler would score at this sample count.
    ft = fid.features(test.images[: a.n], ext, 500, progress=False)
    res["test_floor"] = {"n": a.n, "domain_fid": round(fid.frechet_distance(ref["mu"], ref["sigma"],
                                                                            *fid.feature_stats(ft)), 3)}
    # Bits/dim: the variational bound on the first bpd_n test images, bpd_t stratified timesteps per image.
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    terms = [model.vlb_terms(test.images[i:min(i + 50, a.bpd_n)], a.bpd_t or None, g) for i in range(0, a.bpd_n, 50)]
    d = test.images[0].numel() * math.log(2)
    res["bpd"] = {"n": a.bpd_n, "timesteps_per_image": a.bpd_t or "all", "seconds": round(time.perf_counter() - t0, 1)}
    for var in ("small", "large"):
        tot = torch.cat([t[f"total_{var}"] for t in terms]) / d
        res["bpd"][var] = {"bpd": round(float(tot.mean()), 4), "stderr": round(float(tot.std() / math.sqrt(len(tot))), 4),
                           "decoder_bpd": round(float(torch.cat([t[f"decoder_{var}"] for t in terms]).mean() / d), 4),
                           "prior_bpd": float(torch.cat([t["prior"] for t in terms]).mean() / d)}
    print("bpd", json.dumps(res["bpd"]), "floor", json.dumps(res["test_floor"]), flush=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.sample_precision == "bf16")
    rows = [(r.rsplit("-", 1)[0], int(r.rsplit("-", 1)[1])) for r in a.rows.split(",")]
    inception = None  # (extractor, cached train reference), for --inception-rows
    for sampler, steps in rows:
        n = a.n_ddpm if sampler == "ddpm" else a.n
        name = f"{sampler}-{steps}"
        g = torch.Generator().manual_seed(0)  # the same initial noise for every sampler
        t0 = time.perf_counter()
        with ctx:
            x = model.sample(n, generator=g, sampler=sampler, steps=steps, batch_size=a.batch)
        secs = time.perf_counter() - t0
        save_grid(x[:64], Path(a.out) / f"bench_{name}.png")
        row = {"sampler": name, "n": n, "network_calls": steps, "ms_per_image": round(1000 * secs / n, 2),
               "ms_per_image_step": round(1000 * secs / n / steps, 4), "domain_fid": None}
        if n > ext.dim:  # a covariance needs more samples than feature dimensions
            f = fid.features(fid.to_uint8_images(x), ext, 500, progress=False)
            row["domain_fid"] = round(fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(f)), 3)
        if name in a.inception_rows.split(",") and n > 2048:  # Inception FID: the cached bf16 train reference
            t1 = time.perf_counter()
            if inception is None:  # loaded once, for the first row that needs it
                inc = fid.load_inception(precision=a.inception_precision)
                inception = (inc, fid.reference_stats(a.data, inc, "train", 10_000, data_dir=a.data_dir, seed=0,
                                                       progress=False))
            inc, iref = inception
            fi = fid.features(fid.to_uint8_images(x), inc, 50, progress=False)
            row["inception_fid"] = round(fid.frechet_distance(iref["mu"], iref["sigma"], *fid.feature_stats(fi)), 3)
            row["inception"] = {"n": n, "ref": f"{a.data} train, seeded subset of {iref['n']}", "extractor": inc.name,
                                "seconds": round(time.perf_counter() - t1, 1)}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_results(res, a)
    print(table(res, a))


ROWS = "ddim-50,dpm++2m-20,ddim-10,dpm++2m-10,ddim-20,ddim-100,ddpm-1000"


def write_results(res, a):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(res, indent=2))
    (RESULTS / f"{a.name}.md").write_text(table(res, a))


def table(res, a) -> str:
    lines = ["| sampler | network calls | N | domain FID | Inception FID | ms / image | ms / image / call |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        dom = f"{r['domain_fid']:.2f}" if r["domain_fid"] is not None else "- (N too small)"
        inc = f"{r['inception_fid']:.2f}" if r.get("inception_fid") is not None else "-"
        lines.append(f"| {r['sampler']} | {r['network_calls']} | {r['n']} | {dom} | {inc} | {r['ms_per_image']:.1f} | "
                     f"{r['ms_per_image_step']:.3f} |")
    f = res["test_floor"]
    lines.append(f"| real test images | - | {f['n']} | {f['domain_fid']:.2f} | - | - | - |")
    b = res["bpd"]
    lines.append("")
    lines.append(f"bits/dim (test, first {b['n']} images, {b['timesteps_per_image']} stratified timesteps each): "
                 f"{b['small']['bpd']:.3f} +- {b['small']['stderr']:.3f} (variance beta_tilde), "
                 f"{b['large']['bpd']:.3f} +- {b['large']['stderr']:.3f} (variance beta)")
    t = res["train"]
    lines.append(f"training: {t['steps']} steps x batch {t['batch_size']} ({t['epochs']} epochs), {t['precision']}, "
                 f"base width {t.get('base_channels')}, {t['params']} params, {t['train_seconds'] / 60:.1f} min, "
                 f"{t['img_per_s_overall']} img/s overall; sampling in {res['sample_precision']}")
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
    p.add_argument("--resume", action="store_true", help="continue the run in --out for --minutes more")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="auto", help="fp32, bf16 or auto (the faster in a probe)")
    p.add_argument("--n", type=int, default=150, help="samples per fast sampler")
    p.add_argument("--n-ddpm", type=int, default=16, help="samples for 1000-step DDPM (domain FID needs > 128)")
    p.add_argument("--batch", type=int, default=250, help="sampling batch")
    p.add_argument("--sample-precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--name", default="diffusion", help="results file name under benchmarks/results/")
    p.add_argument("--rows", default=ROWS, help="samplers to compare, in order (SAMPLER-STEPS,...)")
    p.add_argument("--inception-rows", default="", help="samplers (SAMPLER-STEPS,...) that also get Inception FID "
                   "(needs N > 2048; protocol N = 10,000)")
    p.add_argument("--inception-precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--bpd-n", type=int, default=50)
    p.add_argument("--bpd-t", type=int, default=20, help="stratified timesteps per image for the bound (0: all)")
    a = p.parse_args()
    if a.stage in ("train", "all"):
        stage_train(a)
    if a.stage in ("eval", "all"):
        stage_eval(a)


if __name__ == "__main__":
    main()
