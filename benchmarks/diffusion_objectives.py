"""Diffusion objectives on MNIST at equal CPU budgets: EDM (Karras et al. 2022) and flow matching against DDPM.

Every run: the same UNet (width 24, 627k parameters, as benchmarks/diffusion.py's DDPM run), batch 32, lr 1e-3
constant after 100 warm-up steps, EMA 0.999, grad clip 1, fp32 (--precision), one thread; trained by the Trainer
(`dgm.tasks.train`, so `--resume` continues exactly) for a step count. The budget is the run's process CPU time as the
Trainer records it (config.json "progress": "cpu_seconds", previews included).
Evaluation: samples from seeded noise (seed 0), bf16, the sampler and network-call count of each row; Inception FID
(Inception in --precision, against a cached seeded MNIST train reference of --ref-n images; 10,000 is what
`dgm evaluate` uses).
Results go to benchmarks/results/<name>.{json,md}, rewritten after every row.

    # pilot: two short runs, FID at N = 2,000 with 35 network calls each
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/diffusion_objectives.py train --objective edm \
        --steps 1850 --out runs/diffusion_edm
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/diffusion_objectives.py eval --run runs/diffusion_edm \
        --rows heun-35:2000 --name diffusion_pilot
    # a longer run: the same command with more --steps resumes the run in --out exactly
"""
from __future__ import annotations

import argparse
import fcntl
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cmd_train(a):
    from dgm.tasks import train
    out = Path(a.out)
    resume = (out / "config.json").is_file()
    t0 = time.process_time()
    train("diffusion", a.data, steps=a.steps, out=out, data_dir=a.data_dir, progress=False, figures=a.figures,
          resume=resume,
          overrides={"objective": a.objective, "base_channels": str(a.base), "batch_size": str(a.batch_size),
                     "precision": a.precision, "lr": str(a.lr), "ema_decay": str(a.ema), "warmup_steps": "100",
                     "log_every": "50", "ckpt_every": "250", **dict(kv.split("=", 1) for kv in a.set)})
    prog = json.loads((out / "config.json").read_text())["progress"]
    print(json.dumps({"run": str(out), "steps": prog["steps"], "cpu_minutes": round(prog["cpu_seconds"] / 60, 2),
                      "this_process_cpu_minutes": round((time.process_time() - t0) / 60, 2)}), flush=True)


def cmd_eval(a):
    from dgm.io import load
    from dgm.metrics import fid
    run = Path(a.run)
    model = load(run).eval()
    cfg = json.loads((run / "config.json").read_text())
    # the steps trained: "steps" is the planned length, None for a run that trained to a CPU-time budget
    steps = cfg["progress"]["steps"] or cfg["progress"]["checkpoint_step"]
    path = RESULTS / f"{a.name}.json"
    res = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    if a.check_fp32 and a.check_fp32 <= 2048:
        raise SystemExit("--check-fp32 N needs N > 2048 (Inception features are 2048-d)")
    inc = fid.load_inception(precision=a.precision)
    if a.chunks_only:   # a helper process: make chunks beside the main one, record nothing
        for row in a.rows.split(","):
            spec, n = row.split(":")
            sampler, calls = spec.rsplit("-", 1)
            sample_features(model, inc, run / "bench_cache" / f"{spec}_step{steps}", sampler,
                            int(calls), int(n), a.precision, a.chunk, chunks_only=True)
        return
    t0 = time.process_time()
    ref = fid.reference_stats(a.data, inc, "train", a.ref_n, data_dir=a.data_dir, seed=0, progress=False)
    print(f"reference ready ({(time.process_time() - t0) / 60:.1f} CPU-min)", flush=True)
    for row in a.rows.split(","):
        spec, n = row.split(":")
        if spec == "real":   # the floor: the real test split against the same reference
            t0 = time.process_time()
            test = fid.reference_stats(a.data, inc, "test", int(n), data_dir=a.data_dir, seed=0, progress=False)
            record(a, res, path, {"run": "real test images", "sampler": "-", "network_calls": 0, "n": test["n"],
                                  "inception_fid": round(float(fid.frechet_distance(ref["mu"], ref["sigma"],
                                                                                     test["mu"], test["sigma"])), 3),
                                  "fid_cpu_seconds": round(time.process_time() - t0),
                                  "protocol": f"Inception FID ({a.precision} Inception) of {a.data}'s test split "
                                              f"(seeded subset of {test['n']}) against the train reference "
                                              f"(seeded subset of {ref['n']}); 1 thread"})
            continue
        sampler, calls = spec.rsplit("-", 1)
        n, calls = int(n), int(calls)
        cache = run / "bench_cache" / f"{spec}_step{steps}"
        f, t_sample, t_feat = sample_features(model, inc, cache, sampler, calls, n, a.precision, a.chunk)
        score = fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(f))
        r = {"run": str(run), "objective": cfg["model"].get("objective", "ddpm"), "sampler": sampler,
             "network_calls": calls, "n": n, "inception_fid": round(float(score), 3),
             "train_steps": steps, "train_cpu_minutes": round(cfg["progress"]["cpu_seconds"] / 60, 2),
             "epochs": round(steps * cfg["train"]["batch_size"] / 60_000, 2),
             "sample_ms_per_image": round(1000 * t_sample / n, 1), "fid_cpu_seconds": round(t_feat),
             "protocol": f"Inception FID ({a.precision} Inception), N = {n} samples in chunks of {a.chunk}, chunk i "
                         f"from seed i ({a.precision} sampling), reference: {a.data} train seeded subset of {ref['n']}; "
                         f"1 thread"}
        record(a, res, path, r)
        if a.check_fp32:
            check_fp32(a, res, path, r, cache, calls)


def record(a, res: dict, path: Path, r: dict) -> None:
    res["rows"].append(r)
    print(json.dumps(r), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2))
    (RESULTS / f"{a.name}.md").write_text(table(res))


def check_fp32(a, res: dict, path: Path, row: dict, cache: Path, calls: int) -> None:
    """bf16 against fp32 Inception on the same images: the row's first --check-fp32 samples against as many test
    images, FID both ways at that N (biased upwards by the small N, the same way for both)."""
    import numpy as np
    from dgm.data import load_dataset
    from dgm.metrics import fid
    n = a.check_fp32
    imgs = np.concatenate([np.load(p)["images"] for p in sorted(cache.glob(f"*_{calls}_{a.chunk}.npz"))])[:n]
    real = load_dataset(a.data, "test", data_dir=a.data_dir).images[fid.reference_subset(10_000, n, 1)]
    out = {}
    for prec in ("fp32", "bf16"):
        inc = fid.load_inception(precision=prec)
        t0 = time.process_time()
        fs, fr = (fid.features(torch.from_numpy(imgs) if isinstance(imgs, np.ndarray) else imgs, inc, 50,
                               progress=False), fid.features(real, inc, 50, progress=False))
        fid_n = fid.frechet_distance(*fid.feature_stats(fs), *fid.feature_stats(fr))
        out[prec] = {"fid": round(float(fid_n), 3), "cpu_s": round(time.process_time() - t0)}
    row["fp32_check"] = {"n": n, "against": f"{n} {a.data} test images (seeded)", **out}
    print(json.dumps(row["fp32_check"]), flush=True)
    path.write_text(json.dumps(res, indent=2))
    (RESULTS / f"{a.name}.md").write_text(table(res))


def sample_features(model, inc, cache: Path, sampler: str, calls: int, n: int, precision: str,
                    chunk: int = 500, chunks_only: bool = False):
    """Inception features of n samples, made and measured in chunks of `chunk` (chunk i from seed i), each chunk's
    uint8 images, float32 features and CPU times saved under `cache` as it finishes, so a killed evaluation continues
    where it stopped, and a second process (`chunks_only`) can make chunks at the same time (a lock per chunk).
    Returns (features (n, 2048) float64, sampling CPU-s, feature CPU-s), the times over all chunks; None when
    `chunks_only`."""
    import numpy as np
    from dgm.grids import save_grid
    cache.mkdir(parents=True, exist_ok=True)
    chunks = (n + chunk - 1) // chunk
    path = [cache / f"{i:04d}_{calls}_{chunk}.npz" for i in range(chunks)]

    def make(i: int, wait: bool) -> None:
        with open(cache / f".{i:04d}.lock", "a+") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return          # another process is making it
            if not path[i].is_file():
                make_chunk(model, inc, path[i], i, sampler, calls, chunk, precision)
    for i in range(chunks):     # every chunk nobody else is making
        make(i, wait=False)
    if chunks_only:
        return None
    feats, t_sample, t_feat = [], 0.0, 0.0
    for i in range(chunks):     # then the ones another process held, waiting for it
        if not path[i].is_file():
            make(i, wait=True)
        z = np.load(path[i])
        if i == 0:
            save_grid(torch.from_numpy(z["images"][:64]).float() / 255,
                      cache.parent.parent / f"bench_{cache.name.split('_')[0]}.png")
        feats.append(z["features"].astype(np.float64))
        t_sample, t_feat = t_sample + float(z["sample_cpu_s"]), t_feat + float(z["feature_cpu_s"])
    scale = n / (chunks * chunk)  # the last chunk may hold more than n needs
    return np.concatenate(feats)[:n], t_sample * scale, t_feat * scale


def make_chunk(model, inc, path: Path, i: int, sampler: str, calls: int, chunk: int, precision: str) -> None:
    """Chunk i: `chunk` samples from seed i, their uint8 images, float32 Inception features and CPU times."""
    import numpy as np
    from dgm.metrics import fid
    t0 = time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        x = model.sample(chunk, generator=torch.Generator().manual_seed(i), sampler=sampler, steps=calls,
                         batch_size=chunk)
    u8 = fid.to_uint8_images(x)
    t1 = time.process_time()
    f = fid.features(u8, inc, 50, progress=False)
    with open(path.with_suffix(".tmp"), "wb") as fh:
        np.savez(fh, images=u8.numpy(), features=f.astype(np.float32), sample_cpu_s=t1 - t0,
                 feature_cpu_s=time.process_time() - t1)
    path.with_suffix(".tmp").replace(path)
    print(f"{path.parent.name}: chunk {i} ({t1 - t0:.0f} + {time.process_time() - t1:.0f} CPU-s)", flush=True)


def table(res) -> str:
    cols = ("run", "objective", "sampler", "network_calls", "n", "inception_fid", "train_steps", "epochs",
            "train_cpu_minutes", "sample_ms_per_image")
    lines = ["| run | objective | sampler | network calls | N | Inception FID | train steps | epochs | train CPU-min | "
             "ms / image | fp32 check (FID fp32 / bf16 Inception, N) |", "|---" * (len(cols) + 1) + "|"]
    for r in res["rows"]:
        c = r.get("fp32_check")
        check = f"{c['fp32']['fid']:.2f} / {c['bf16']['fid']:.2f} (N={c['n']})" if c else ""
        lines.append("| " + " | ".join(f"{r[k]:.2f}" if k == "inception_fid" else str(r.get(k, "-")) for k in cols)
                     + f" | {check} |")
    lines.append("")
    lines += [f"Protocol: {p}" for p in dict.fromkeys(r["protocol"] for r in res["rows"])]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--objective", default="edm", choices=("ddpm", "edm", "flow"))
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--base", type=int, default=24)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--ema", type=float, default=0.999)
    t.add_argument("--figures", action="store_true")
    t.add_argument("--set", action="append", default=[], help="extra key=value model/train options (fresh runs)")
    e = sub.add_parser("eval")
    e.add_argument("--run", required=True)
    e.add_argument("--rows", default="heun-35:2000", help="SAMPLER-CALLS:N,...")
    e.add_argument("--name", default="diffusion_objectives")
    e.add_argument("--chunk", type=int, default=500, help="samples per seeded, cached chunk (chunk i: seed i)")
    e.add_argument("--chunks-only", action="store_true",
                   help="only make chunks, beside a main eval of the same rows (a second core), and record nothing")
    e.add_argument("--check-fp32", type=int, default=0, metavar="N",
                   help="also FID of each row's first N samples against N test images with fp32 and bf16 Inception")
    e.add_argument("--ref-n", type=int, default=10_000, help="reference images (seeded train subset, cached)")
    for s in (t, e):
        s.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                       help="fp32: this machine's CPU has no bf16 instructions (AVX2 only), where bf16 is ~8x slower")
        s.add_argument("--data", default="mnist")
        s.add_argument("--data-dir", default="../shared/data")
    a = p.parse_args()
    {"train": cmd_train, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
