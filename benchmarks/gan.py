"""GANs on MNIST / Fashion-MNIST: sample quality against training time, throughput, and the D(x) plot.

    python benchmarks/gan.py --data mnist --configs ns,hinge-sn --minutes 25 --chunk-steps 500
    python benchmarks/gan.py --data mnist,fashion-mnist --configs ns-ema,r3 --cpu-minutes 30,90 \
        --fid-n 10000 --tag recipe                      # the recipe comparison (benchmarks/results/gan_recipe_plan.md)

Each configuration trains in chunks of `--chunk-steps` (resuming the same run exactly) until `--minutes` of training
wall time are spent; after every chunk, domain FID and mode coverage on `--curve-n` samples give the curve of quality
against training time (evaluation time is not counted as training). At the end: domain FID / KID / precision-recall /
mode coverage on `--final-n` samples, and Inception FID on `--fid-n` samples against `--fid-ref-n` training images
when `--fid-n` > 0 (the protocol is 10,000 vs 10,000; smaller N is biased upwards, the N is recorded).
Training images/s counts real images shown to D (n_critic x batch per step) over training wall time, and per CPU
second of this (single-threaded) process, which does not depend on what else the machine runs.
`--continue` extends existing runs and their curves; `--fid-only --fid-n 10000` adds Inception FID to finished runs
(with the floor: real test images against the same reference), e.g. on a GPU or overnight.
`--cpu-minutes 30,90` replaces the wall-time budget by milestones of *training CPU time* (the Trainer's own count of
this process's CPU seconds, carried over resumes, so neither evaluation nor other jobs on the machine count): chunks
are sized to end at each milestone (within about 2%), and at each one the weights are copied to RUN@<m>cpumin and
evaluated in full (domain FID / KID / precision-recall / mode coverage on `--final-n`, Inception FID on `--fid-n`),
so one run gives the 30- and the 90-minute numbers; `--defer-fid` leaves the Inception FIDs of the snapshots to a
later `--fid-only` (which may run elsewhere, `--eval-device cuda`). `--data` takes a comma list; `--precision auto` times a few DCGAN steps in fp32 and
bf16 and uses the faster (bf16 autocast is slower than fp32 on CPUs without native bf16, e.g. AVX2-only ones).
Writes benchmarks/results/gan_<data>[_<tag>].json / .md and _curve.png (the quality curves; `--plot-only` redraws it,
`--plot-also` adds earlier results files dashed) and copies each run's dx.png and samples.png beside them.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import platform
import shutil
import time
import warnings
from datetime import date
from pathlib import Path

import torch

from dgm.evaluate import evaluate
from dgm.figures import read_metrics, write_figures
from dgm.io import load
from dgm.tasks import run_data, train

RECIPE_REG = {"r1": "1", "r2": "1", "reg_every": "4"}  # R1 = R2 = gamma / 2 E||grad D||^2, gamma 1

CONFIGS = {
    "ns": {"loss": "ns"},                                          # Radford et al. 2016 DCGAN, non-saturating loss
    "ns-ema": {"loss": "ns", "ema_decay": "0.999"},                # the same, sampled from an EMA of the weights
    "hinge-sn": {"loss": "hinge", "spectral_norm": "true"},        # Miyato et al. 2018 (SN, hinge), no BN in D
    "lsgan": {"loss": "lsgan"},
    "wgan-gp": {"loss": "wgan-gp", "lr": "1e-4", "betas": "0,0.9"},  # Gulrajani et al. 2017 settings
    # Issue 18's recipe pieces on the DCGAN nets: R3GAN's objective (Huang et al. 2024: relativistic pairing loss,
    # R1 + R2), lazy every 4th step (StyleGAN2), EMA; no BatchNorm in D (a gradient-penalised D has none).
    "r3": {"loss": "rpgan", **RECIPE_REG, "ema_decay": "0.999"},
    "r3-g0.1": {"loss": "rpgan", "r1": "0.1", "r2": "0.1", "reg_every": "4", "ema_decay": "0.999"},  # gamma / 10
    "r3-aug": {"loss": "rpgan", **RECIPE_REG, "augment": "translation,cutout", "ema_decay": "0.999"},
    # ... and on the residual nets (dgm.nn.gan_resnet, width 32: about 2x the DCGAN's cost per step).
    "r3-resnet": {"arch": "resnet", "width": "32", "loss": "rpgan", **RECIPE_REG, "ema_decay": "0.999"},
    "r3-resnet-aug": {"arch": "resnet", "width": "32", "loss": "rpgan", **RECIPE_REG,
                      "augment": "translation,cutout", "ema_decay": "0.999"},
}


# Options left out of the recorded training command (paths, modes; an Inception FID records its own command).
NOT_IN_COMMAND = ("runs", "results", "data_dir", "dry", "cont", "fid_only", "speed", "no_fid_floor", "fid_configs",
                  "speed_rows", "speed_precisions", "defer_fid", "eval_device", "plot_also", "plot_only",
                  "fid_milestones")


def results_stem(a, data: str) -> str:
    return f"gan_{data}{'_' + a.tag if a.tag else ''}{'_dry' if a.dry else ''}"


def value(res: dict, key: str):
    return res[key]["value"] if key in res else None


SPEED_ROWS = [  # (label, GANConfig fields); width 64 unless given
    ("dcgan ns", {}),
    ("dcgan hinge + SN", {"loss": "hinge", "spectral_norm": True}),
    ("dcgan wgan-gp (per critic step)", {"loss": "wgan-gp", "n_critic": 1}),
    ("dcgan rpgan + R1 + R2 (every step)", {"loss": "rpgan", "r1": 1.0, "r2": 1.0}),
    ("dcgan rpgan + R1 + R2, reg_every 4", {"loss": "rpgan", "r1": 1.0, "r2": 1.0, "reg_every": 4}),
    ("dcgan rpgan + R1 + R2 / 4 + translation,cutout",
     {"loss": "rpgan", "r1": 1.0, "r2": 1.0, "reg_every": 4, "augment": "translation,cutout"}),
    ("resnet w32 ns", {"arch": "resnet", "width": 32}),
    ("resnet w32 rpgan + R1 + R2 (every step)", {"arch": "resnet", "width": 32, "loss": "rpgan", "r1": 1.0, "r2": 1.0}),
    ("resnet w32 rpgan + R1 + R2, reg_every 4",
     {"arch": "resnet", "width": 32, "loss": "rpgan", "r1": 1.0, "r2": 1.0, "reg_every": 4}),
    ("resnet w16 rpgan + R1 + R2, reg_every 4",
     {"arch": "resnet", "width": 16, "loss": "rpgan", "r1": 1.0, "r2": 1.0, "reg_every": 4}),
]


def speed(batch: int = 64, width: int = 64, steps: int = 16, rows: str = "", precisions: str = "fp32,bf16") -> None:
    """Real images per CPU-second of this process (one thread), after 4 warm-up steps: one D and one G update per
    step on random uint8 MNIST-shaped batches, the model's step counter advancing as in the Trainer (so lazy
    regularisation runs on every reg_every-th step). CPU time, so the number does not depend on the machine's load.
    `rows`: a comma-separated list of row numbers (0-based) of SPEED_ROWS, default all; `precisions`: fp32, bf16
    or both (bf16 autocast is only faster on CPUs with native bf16 instructions: check before a long run)."""
    from dgm.models.gan import GANConfig
    torch.set_num_threads(1)
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    pick = [SPEED_ROWS[int(i)] for i in rows.split(",")] if rows else SPEED_ROWS
    precs = precisions.split(",")
    print(f"| G / D, loss (batch {batch}) | params G / D | " + " | ".join(f"{p} real img / CPU-s" for p in precs)
          + " |\n|---|---|" + "---|" * len(precs), flush=True)
    for name, kw in pick:
        res = []
        for prec in precs:
            m, rate = timed_steps(GANConfig(channels=1, image_size=28, **{"width": width, **kw}), x, prec, 4, steps)
            res.append(rate)
        ng, nd = sum(p.numel() for p in m.G.parameters()), sum(p.numel() for p in m.d_params())
        print(f"| {name} | {ng / 1e6:.2f}M / {nd / 1e6:.2f}M | " + " | ".join(f"{r:.0f}" for r in res) + " |",
              flush=True)


def real_floor(a, data: str) -> dict:
    """Inception FID of real test images against the same train reference at the same N: what a perfect generator
    would score at this sample size (FID is biased upwards at small N)."""
    from dgm.data import load_dataset
    from dgm.metrics import fid
    try:
        ext = fid.load_inception(precision=a.fid_precision)
        test = load_dataset(data, "test", data_dir=a.data_dir)
        # The same cache key as `dgm evaluate` uses (the run's image size), so the reference is computed once.
        ref = fid.reference_stats(data, ext, "train", a.fid_ref_n, data_dir=a.data_dir, image_size=test.shape[1])
        f_test = fid.features(test.images[:a.fid_n], ext, 50, progress=False)
        return {"value": fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(f_test)), "n": a.fid_n,
                "ref_n": a.fid_ref_n, "extractor": ext.name}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "n": a.fid_n, "ref_n": a.fid_ref_n}


def timed_steps(cfg, x, prec: str, warmup: int, steps: int):
    """(model, real images per CPU-second) of `steps` GAN training steps after `warmup` untimed ones, every phase with
    its own Adam as the Trainer builds them, under bf16 autocast when prec == "bf16"."""
    from dgm.models.gan import GAN
    from dgm.train import make_optimizer
    torch.manual_seed(0)
    m = GAN(cfg)
    opts = {ph: make_optimizer(torch.optim.Adam, m.phase_parameters(ph), lr=2e-4, betas=(0.5, 0.999))
            for ph in m.phases}
    c = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            c = time.process_time()
        m.step = i
        for ph, o in opts.items():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                loss = m.loss((x, None), ph)["loss"]
            o.zero_grad()
            loss.backward()
            o.step()
    return m, x.shape[0] * steps / (time.process_time() - c)


def pick_precision(batch: int = 64, steps: int = 3) -> tuple[str, dict]:
    """'fp32' or 'bf16', whichever trains the ns DCGAN faster per CPU second here (3 timed steps after 1)."""
    from dgm.models.gan import GANConfig
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    rate = {prec: round(timed_steps(GANConfig(channels=1, image_size=28), x, prec, 1, steps)[1], 1)
            for prec in ("fp32", "bf16")}
    return max(rate, key=rate.get), rate


def trainer_cpu_s(run: Path) -> float:
    """Training CPU seconds of a run so far, as its Trainer counts them (config.json "progress")."""
    try:
        return float(json.loads((run / "config.json").read_text())["progress"]["cpu_seconds"])
    except (OSError, KeyError, ValueError, TypeError):
        return 0.0


def final_eval(a, run: Path) -> dict:
    t1 = time.perf_counter()
    try:
        res = evaluate(run, ["domain_fid", "kid", "precision_recall", "mode_coverage"], n=a.final_n,
                       data_dir=a.data_dir, device=a.eval_device)
        rec = {k: value(res, k) for k in ("domain_fid", "kid_domain", "precision_domain", "recall_domain",
                                          "mode_coverage", "mode_kl_uniform")}
        rec["n"] = a.final_n
    except Exception as e:
        rec = {"error": f"{type(e).__name__}: {e}"}
    rec["eval_s"] = round(time.perf_counter() - t1, 1)
    return rec


def snapshot(run: Path, key: str) -> Path:
    """A copy of the run's weights and config as they are at a milestone (RUN@<key>cpumin), to evaluate now or later
    (`--fid-only`, e.g. on a GPU with `--eval-device cuda`) while the run itself trains on."""
    snap = run.parent / f"{run.name}@{key}cpumin"
    snap.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(run / f, snap / f)
    return snap


def inception_fid(a, data: str, run: Path, name: str) -> dict:
    t1 = time.perf_counter()
    try:
        res = evaluate(run, ["fid"], n=a.fid_n, data_dir=a.data_dir, device=a.eval_device,
                       options={"ref_n": a.fid_ref_n, "precision": a.fid_precision})
        return {"value": value(res, "fid"), "n": a.fid_n, "ref_n": a.fid_ref_n, "precision": a.fid_precision,
                "command": f"python benchmarks/gan.py --data {data} --fid-only --fid-configs {name} --fid-n "
                           f"{a.fid_n} --fid-precision {a.fid_precision}" + (f" --tag {a.tag}" if a.tag else ""),
                "seconds": round(time.perf_counter() - t1, 1)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist", help="a dataset, or a comma list run one after the other")
    p.add_argument("--configs", default="ns,hinge-sn", help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--minutes", type=float, default=25.0, help="training wall time per configuration")
    p.add_argument("--cpu-minutes", default="",
                   help="comma list of training CPU-minute milestones (e.g. 30,90), each fully evaluated; "
                        "replaces --minutes")
    p.add_argument("--chunk-steps", type=int, default=500)
    p.add_argument("--max-steps", type=int, default=0, help="stop a configuration here even with time left")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "auto"))
    p.add_argument("--width", type=int, default=64, help="net width unless the config sets its own")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--curve-n", type=int, default=2000)
    p.add_argument("--final-n", type=int, default=10_000)
    p.add_argument("--fid-n", type=int, default=0, help="Inception FID samples (0: skip; protocol 10000)")
    p.add_argument("--fid-ref-n", type=int, default=10_000)
    p.add_argument("--fid-precision", default="bf16", choices=("fp32", "bf16", "auto"),
                   help="Inception precision (bf16: checked against fp32 in benchmarks/fid_floor.py; auto: the "
                        "faster one here, as --precision auto finds it)")
    p.add_argument("--no-fid-floor", action="store_true",
                   help="skip the real-vs-real Inception floor (benchmarks/fid_floor.py measures it at 10k)")
    p.add_argument("--defer-fid", action="store_true",
                   help="with --cpu-minutes: snapshot each milestone but leave its Inception FID to a later --fid-only")
    p.add_argument("--eval-device", default="cpu", help="device for every evaluation (e.g. cuda for --fid-only)")
    p.add_argument("--tag", default="", help="results go to gan_<data>_<tag>.* and runs to <data>_<tag>_<config>")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default="runs/bench_gan")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="extend existing runs (and their curves in the results JSON) instead of starting afresh")
    p.add_argument("--fid-only", action="store_true", help="only the Inception FID of the runs already in the JSON")
    p.add_argument("--fid-configs", default="", help="with --fid-only: just these runs (comma list; default all)")
    p.add_argument("--fid-milestones", default="",
                   help="with --fid-only: just these milestones (comma list of CPU-minutes, e.g. 90; default all)")
    p.add_argument("--speed", action="store_true",
                   help="only the throughput table: CPU time per step of each net and loss, then exit")
    p.add_argument("--speed-rows", default="", help="with --speed: row numbers of SPEED_ROWS (default all)")
    p.add_argument("--speed-precisions", default="fp32,bf16")
    p.add_argument("--plot-also", default="",
                   help="comma list of earlier results JSONs (another run of the same configs), dashed in the curve plot")
    p.add_argument("--plot-only", action="store_true", help="only redraw <stem>_curve.png from the results JSON")
    p.add_argument("--dry", action="store_true", help="tiny settings to check the script end to end")
    a = p.parse_args()
    if a.plot_only:
        for data in a.data.split(","):
            print(curve_plot(Path(a.results) / f"{results_stem(a, data)}.json", [Path(f) for f in a.plot_also.split(",") if f]))
        return
    if a.speed:
        return speed(a.batch_size, a.width, rows=a.speed_rows, precisions=a.speed_precisions)
    if a.fid_milestones and not a.fid_only:
        raise SystemExit("--fid-milestones goes with --fid-only (it picks which deferred milestones to score)")
    if 0 < a.fid_n <= 2048 or 0 < a.fid_ref_n <= 2048:
        raise SystemExit("Inception FID needs more than 2048 samples per set (a full-rank 2048-d covariance)")
    for name in [] if a.fid_only else a.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
    a.cont = a.cont or a.fid_only
    a.milestones = sorted(float(v) for v in a.cpu_minutes.split(",") if v.strip())
    if a.dry:
        a.minutes, a.chunk_steps, a.curve_n, a.final_n, a.width = 0.05, 5, 300, 300, 8
        a.milestones = [0.02 * (i + 1) for i in range(len(a.milestones))]
    a.precision_probe = None
    if "auto" in (a.precision, a.fid_precision):
        best, a.precision_probe = pick_precision(a.batch_size)
        a.precision = best if a.precision == "auto" else a.precision
        a.fid_precision = best if a.fid_precision == "auto" else a.fid_precision
        print(f"precision auto: {best} (DCGAN real img / CPU-s {a.precision_probe})", flush=True)
    warnings.simplefilter("default")
    for data in a.data.split(","):
        run_dataset(a, data)


def run_dataset(a, data: str) -> None:
    results_dir = Path(a.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    skip = (*NOT_IN_COMMAND, "milestones", "precision_probe", *(("minutes",) if a.milestones else ()))
    out = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads (shared)",
           "command": "python benchmarks/gan.py " + " ".join(
               f"--{k.replace('_', '-')} {data if k == 'data' else v}" for k, v in vars(a).items()
               if k not in skip and v not in ("", None)),
           "data": data, "runs": {}}
    if a.precision_probe:
        out["precision_probe"] = a.precision_probe
    stem = results_stem(a, data)
    json_path = results_dir / f"{stem}.json"
    if a.cont and json_path.is_file():
        prev = json.loads(json_path.read_text())
        out["runs"] = prev["runs"]
        out["command"] = prev["command"] + " ; then " + out["command"] + " --continue"

    if a.fid_milestones:  # a milestone no run has would score nothing, silently
        have = {k for r in out["runs"].values() for k in r.get("milestones", {})}
        unknown = sorted(set(a.fid_milestones.split(",")) - have)
        if unknown:
            raise SystemExit(f"--fid-milestones {','.join(unknown)}: {json_path} has milestones "
                             f"{','.join(sorted(have, key=float)) or 'none'}")
    owned = [] if a.fid_only else a.configs.split(",")  # the runs this process trains; the file may hold others

    def save(update=None):
        """Write the results, merged under a lock with what other processes wrote to the same file meanwhile
        (`--configs` split over two cores, or two --fid-only processes): this process's own runs replace theirs
        on disk, `update(results)` is applied last, and `out` becomes the merged copy."""
        with open(json_path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            runs = json.loads(json_path.read_text())["runs"] if json_path.is_file() else {}
            runs.update({n: out["runs"][n] for n in owned if n in out["runs"]})
            out["runs"] = runs
            if update is not None:
                update(out)
            json_path.write_text(json.dumps(out, indent=1))

    def chunk(name, run, over, rec, steps, n):
        """Train n more steps (resuming), then a curve point; returns the new step count."""
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if steps == 0:
                train("gan", data, steps=n, out=run, overrides=over, data_dir=a.data_dir, progress=False,
                      figures=False)
            else:
                train("gan", data, steps=steps + n, out=run, resume=True, data_dir=a.data_dir, progress=False,
                      figures=False)
        rec["train_wall_s"] = round(rec.get("train_wall_s", 0.0) + time.perf_counter() - t0, 1)
        rec["train_cpu_s"] = round(rec.get("train_cpu_s", 0.0) + time.process_time() - c0, 1)
        rec["cpu_steps"] = rec.get("cpu_steps", 0) + n
        steps += n
        rec["steps"] = steps
        t1 = time.perf_counter()
        point = {"step": steps, "train_s": rec["train_wall_s"], "train_cpu_s": round(trainer_cpu_s(run), 1)}
        try:
            res = evaluate(run, ["domain_fid", "mode_coverage"], n=a.curve_n, data_dir=a.data_dir,
                           device=a.eval_device)
            point.update(domain_fid=value(res, "domain_fid"), mode_coverage=value(res, "mode_coverage"),
                         mode_kl=value(res, "mode_kl_uniform"))
        except Exception as e:  # a metric failing must not lose the training run
            point["error"] = f"{type(e).__name__}: {e}"
        point["eval_s"] = round(time.perf_counter() - t1, 1)
        rec["curve"].append(point)
        print(data, name, point, flush=True)
        save()
        return steps

    def figures_and_copies(name, run, rec, suffix=""):
        rows = read_metrics(run)
        rec.update({"train_img_per_s": round(rec["steps"] * a.batch_size / rec["train_wall_s"], 1),
                    "train_img_per_cpu_s": round(rec["cpu_steps"] * a.batch_size / rec["train_cpu_s"], 1)
                    if rec.get("train_cpu_s") else None,
                    "epochs_of_d": round(rec["steps"] * a.batch_size / 60_000, 2),
                    "final_d_real": rows[-1].get("d/d_real"), "final_d_fake": rows[-1].get("d/d_fake"),
                    "final_d_auc": rows[-1].get("d/d_auc")})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_figures(run, load(run), run_data(run))
        rec["warnings"] = [str(w.message) for w in caught if "Collapse" in type(w.message).__name__]
        for f in ("dx.png", "samples.png"):
            if (run / f).is_file():
                shutil.copy(run / f, results_dir / f"{stem}_{name}{suffix}_{f}")

    for name in [] if a.fid_only else a.configs.split(","):
        run = Path(a.runs) / f"{data}_{a.tag + '_' if a.tag else ''}{name}"
        over = {"precision": a.precision, "width": str(a.width), "batch_size": str(a.batch_size), "log_every": "25",
                "ckpt_every": str(a.chunk_steps), **CONFIGS[name]}
        if a.cont and name in out["runs"] and (run / "checkpoint.pt").is_file():
            rec = out["runs"][name]
            steps = rec["steps"]
        else:
            if run.exists():
                shutil.rmtree(run)
            rec = {"overrides": over, "curve": []}
            out["runs"][name] = rec
            steps = 0
        this = out["command"].split(" ; then ")[-1]   # the command of this process, per run (several may share)
        rec["command"] = f"{rec['command']} ; then {this}" if "command" in rec else this
        if a.milestones:  # CPU-time milestones, each fully evaluated
            rec.setdefault("milestones", {})
            for ms in a.milestones:
                key = f"{ms:g}"
                if key in rec["milestones"]:
                    continue
                # Reached within 0.2% (a chunk that ends a hair short is not followed by a one-step chunk).
                while trainer_cpu_s(run) < ms * 60 * 0.998 and (not a.max_steps or steps < a.max_steps):
                    used = trainer_cpu_s(run)
                    n = a.chunk_steps
                    if steps and used > 0:  # size the chunk to end at the milestone, rather past it than short
                        n = min(n, max(5, int((ms * 60 - used) / (used / steps) * 1.02) + 1))
                    steps = chunk(name, run, over, rec, steps, n)
                figures_and_copies(name, run, rec, f"_{key}cpumin")
                snap = snapshot(run, key)
                m = {"step": steps, "train_cpu_s": round(trainer_cpu_s(run), 1), "snapshot": str(snap),
                     **final_eval(a, snap)}
                if a.fid_n and not a.defer_fid:
                    m["inception_fid"] = inception_fid(a, data, snap, name)
                rec["milestones"][key] = m
                rec["final"] = {k: v for k, v in m.items()
                                if k not in ("step", "train_cpu_s", "inception_fid", "snapshot")}
                if "inception_fid" in m:
                    rec["inception_fid"] = m["inception_fid"]
                print(data, name, f"{key} CPU-min:", m, flush=True)
                save()
            continue
        start = rec.get("train_wall_s", 0.0)
        while rec.get("train_wall_s", 0.0) - start < a.minutes * 60 and (not a.max_steps or steps < a.max_steps):
            steps = chunk(name, run, over, rec, steps, a.chunk_steps)
        figures_and_copies(name, run, rec)
        rec["final"] = final_eval(a, run)
        save()
        print(data, name, rec["final"], flush=True)
    if a.fid_n and not a.milestones:
        if not a.no_fid_floor:
            out["inception_floor"] = real_floor(a, data)
            print("real test images vs reference:", out["inception_floor"], flush=True)
        for name, rec in out["runs"].items():
            wanted = (a.fid_configs or ",".join(out["runs"])) if a.fid_only else a.configs  # only what this call trained
            if name not in wanted.split(","):
                continue
            if rec.get("milestones"):  # the snapshots whose Inception FID was deferred (or failed)
                for key, m in rec["milestones"].items():
                    if "value" in m.get("inception_fid", {}) or (
                            a.fid_milestones and key not in a.fid_milestones.split(",")):
                        continue
                    # A lock per snapshot: a second --fid-only process (another core) takes the next snapshot.
                    with open(Path(m["snapshot"]) / ".inception_fid.lock", "a+") as lock:
                        try:
                            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            print(name, key, "CPU-min: scored by another process", flush=True)
                            continue
                        disk = json.loads(json_path.read_text())["runs"][name]["milestones"][key]
                        if "value" in disk.get("inception_fid", {}):
                            continue  # scored by another process since this one read the results
                        fid_rec = inception_fid(a, data, Path(m["snapshot"]), name)
                        save(lambda o, n=name, k=key, f=fid_rec: (o["runs"][n]["milestones"][k].update(
                            inception_fid=f), o["runs"][n].update(inception_fid=f)))
                        print(name, key, "CPU-min:", fid_rec, flush=True)
                continue
            fid_rec = inception_fid(a, data, Path(a.runs) / f"{data}_{a.tag + '_' if a.tag else ''}{name}", name)
            save(lambda o, n=name, f=fid_rec: o["runs"][n].update(inception_fid=f))
            print(name, fid_rec, flush=True)
    elif a.fid_n and not a.no_fid_floor and "inception_floor" not in out:
        out["inception_floor"] = real_floor(a, data)
    save()
    text = markdown(out, a, data)
    json_path.with_suffix(".md").write_text(text + "\n")
    print(text)
    if any(r.get("curve") for r in out["runs"].values()):
        curve_plot(json_path, [Path(f) for f in a.plot_also.split(",") if f])


def curve_plot(json_path: Path, also: list[Path] = ()) -> Path:
    """<stem>_curve.png beside the results: domain FID after every chunk (left) and the Inception FID of each
    milestone (right) against training CPU-minutes, one colour per config; `also`: earlier results files of the
    same configs (another run of the same command), drawn dashed, so the run-to-run spread is in the picture."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {}
    for i, path in enumerate([json_path, *also]):
        res = json.loads(path.read_text())
        style = "-" if i == 0 else "--"
        for name, r in res["runs"].items():
            c = colours.setdefault(name, f"C{len(colours)}")
            label = name if i == 0 else f"{name} ({path.stem.split('_')[-1]})"
            pts = [(p["train_cpu_s"] / 60, p["domain_fid"]) for p in r.get("curve", [])
                   if p.get("train_cpu_s") is not None and p.get("domain_fid") is not None]
            if pts:
                ax1.plot(*zip(*pts), style, color=c, label=label)
            inc = sorted((m["train_cpu_s"] / 60, m["inception_fid"]["value"]) for m in r.get("milestones", {}).values()
                         if "value" in m.get("inception_fid", {}))
            if inc:
                ax2.plot(*zip(*inc), style, marker="o", color=c, label=label)
                for x, y in inc:
                    ax2.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set(xlabel="training CPU-minutes (one thread)", ylabel="domain FID (N = 2,000, log)", yscale="log",
            title="after every chunk")
    ax2.set(xlabel="training CPU-minutes (one thread)", ylabel="Inception FID (N = 10,000)",
            title="at each milestone")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    ax1.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 3, 5)))
    ax1.yaxis.set_major_formatter(ScalarFormatter())
    ax1.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax1, ax2):
        ax.set_xlim(0, max([1.0, *(x for line in ax.lines for x in line.get_xdata())]) * 1.08)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{json_path.stem}: quality against training CPU time")
    fig.tight_layout()
    out = json_path.with_name(json_path.stem + "_curve.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def markdown(out: dict, a, data: str) -> str:
    f = lambda v, d=3: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    # Each run records the command(s) that trained it; the file's own command mixes every process that wrote it.
    cmds = {n: r["command"] for n, r in out["runs"].items() if r.get("command")}
    md = [f"GANs on {data} ({out['machine']}, {out['date']}); "
          + ("commands, per run:" if cmds else f"command: `{out['command']}`"),
          *[f"- {n}: `{c}`" for n, c in cmds.items()], "",
          "| config | steps | D epochs | train wall | train img/s (wall) | img per CPU-s | domain FID | KID (domain) | "
          "precision | recall | mode coverage | mode KL | Inception FID (N) | final D(x) / D(G(z)) / AUC |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in out["runs"].items():
        if "steps" not in r:
            continue
        fin = r.get("final", {})
        inc = r.get("inception_fid", {})
        md.append(f"| {name} | {r['steps']} | {r.get('epochs_of_d')} | {r.get('train_wall_s', 0) / 60:.1f} min | "
                  f"{r.get('train_img_per_s')} | {f(r.get('train_img_per_cpu_s'), 1)} | {f(fin.get('domain_fid'), 2)} | "
                  f"{f(fin.get('kid_domain'), 4)} | {f(fin.get('precision_domain'))} | {f(fin.get('recall_domain'))} | "
                  f"{f(fin.get('mode_coverage'), 2)} | {f(fin.get('mode_kl_uniform'))} | "
                  f"{f(inc.get('value'), 2)} ({inc.get('n', '-')} vs {inc.get('ref_n', '-')}) | "
                  f"{f(r.get('final_d_real'), 2)} / {f(r.get('final_d_fake'), 2)} / {f(r.get('final_d_auc'), 2)} |")
    if any(r.get("milestones") for r in out["runs"].values()):
        md += ["", "At each training CPU-time milestone (Inception FID: N samples vs the seeded train reference; "
                   f"domain metrics on {a.final_n} samples):", "",
               "| config | CPU-min | steps | Inception FID (N) | domain FID | KID (domain) | precision | recall | "
               "mode coverage | mode KL |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in out["runs"].items():
            for key, m in r.get("milestones", {}).items():
                inc = m.get("inception_fid", {})
                md.append(f"| {name} | {key} ({m['train_cpu_s'] / 60:.2f}) | {m['step']} | {f(inc.get('value'), 2)} "
                          f"({inc.get('n', '-')}) | {f(m.get('domain_fid'), 2)} | {f(m.get('kid_domain'), 4)} | "
                          f"{f(m.get('precision_domain'))} | {f(m.get('recall_domain'))} | "
                          f"{f(m.get('mode_coverage'), 2)} | {f(m.get('mode_kl_uniform'))} |")
    if "inception_floor" in out:
        fl = out["inception_floor"]
        md += ["", f"Inception FID floor at this N: {fl['n']} real test images vs the {fl['ref_n']}-image train "
                   f"reference: {f(fl.get('value'), 2)}"]
    md += ["", "Domain FID against training time (curve N = %d):" % a.curve_n, "",
           "| config | step | train CPU-min | train wall min | domain FID | mode coverage |", "|---|---|---|---|---|---|"]
    for name, r in out["runs"].items():
        for pt in r["curve"]:
            cpu = pt.get("train_cpu_s")
            md.append(f"| {name} | {pt['step']} | {'-' if cpu is None else f'{cpu / 60:.1f}'} | "
                      f"{pt['train_s'] / 60:.1f} | {f(pt.get('domain_fid'), 2)} | {f(pt.get('mode_coverage'), 2)} |")
    return "\n".join(md)


if __name__ == "__main__":
    main()
