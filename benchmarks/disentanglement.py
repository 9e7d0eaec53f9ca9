"""VAE (beta = 1) vs beta-VAE (beta = 4) on procedural dSprites under the same step budget; five disentanglement
metrics for both (disentanglement_lib protocol) and their traversal grids.

    OMP_NUM_THREADS=1 python benchmarks/disentanglement.py                 # train both, then measure (~60 min, 1 core)
    python benchmarks/disentanglement.py --stage eval                        # measure runs already trained
    python benchmarks/disentanglement.py --steps 300 --quick                 # smoke test: tiny budget, small metric samples

Writes benchmarks/results/disentanglement.{json,md} and runs/bench_dis_{vae,beta-vae}/ (traversal.png, traversal.gif).

The study (issue 20; Locatello et al. 2019's design at a CPU's scale): every model of STUDY x --seeds, each cell one
run folder under --runs/study_dis<TAG>/ holding its metrics (study.json), resumable, one thread per process, and two
processes may share the cells (a lock per cell); each finished cell's record is also kept in
benchmarks/results/disentanglement_study<TAG>_cells/ (tracked), and a cell with a record there is done:

    OMP_NUM_THREADS=1 nohup taskset -c 0 python benchmarks/disentanglement.py --study --steps 20000 > study0.log 2>&1 &
    OMP_NUM_THREADS=1 nohup taskset -c 1 python benchmarks/disentanglement.py --study --steps 20000 > study1.log 2>&1 &
    python benchmarks/disentanglement.py --study --report     # the table and plots of the cells done so far

Writes benchmarks/results/disentanglement_study<TAG>.{json,md,png} and ..._curves.png (reconstruction and KL of
every run against steps: a diverging run shows there, and the table flags it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# Same network for both: an MLP 4096-256-256-(2x10) encoder and its mirror (Higgins et al. 2017 used an MLP for
# dSprites too, 1200-1200). A smaller net lets a 2-core CPU take ~10k steps per model inside the hour.
COMMON = {"arch": "mlp", "mlp_hidden": "256,256", "latent_dim": "10", "binarize": "false", "likelihood": "bernoulli",
          "batch_size": "64", "lr": "1e-3", "prior": "normal", "z1_dim": "0"}   # the factorised N(0, I) prior
MODELS = {"vae": ("vae", {"beta": "1"}), "beta-vae": ("beta-vae", {"beta": "4"}),
          # Burgess et al. 2018: gamma |KL - C|, C annealed 0 -> 25 nats (their dSprites settings), over --steps
          "beta-vae-c": ("beta-vae", {"capacity_max": "25", "gamma": "1000"}),
          "beta-vae-c35": ("beta-vae", {"capacity_max": "35", "gamma": "1000"}),  # room for shape as well?
          "beta-vae-c50": ("beta-vae", {"capacity_max": "50", "gamma": "1000"}),
          # the divergence study (issue 20): a tenth of the pull towards C
          "beta-vae-c-g100": ("beta-vae", {"capacity_max": "25", "gamma": "100"})}
# The study's cells: disentanglement_lib's models at the hyperparameters. Same MLP for all (COMMON); the
# FactorVAE discriminator is 6 x 256 instead of Kim & Mnih's 6 x 1000, which would make its steps 4x dearer here.
STUDY = {"vae": ("vae", {"beta": "1"}),
         "beta-vae-4": ("beta-vae", {"beta": "4"}),
         "beta-vae-16": ("beta-vae", {"beta": "16"}),
         "beta-tcvae-6": ("beta-tcvae", {"beta": "6"}),
         "factor-vae-40": ("factor-vae", {"gamma": "40", "disc_hidden": "256"}),
         "annealed-vae-25": ("beta-vae", {"capacity_max": "25", "gamma": "1000"})}
# Probes beyond the study's design (named with --models only): the batch TC estimate from 4x the samples; the
# disentanglement_lib conv nets (4 convs 32-32-64-64, kernel 4, stride 2, ReLU, a 256 hidden layer, and the mirror)
# in place of the MLP (~5x the CPU per training step here, and 7 more CPU-minutes to encode dSprites).
DL_CONV = {"arch": "conv", "conv_channels": "32,32,64,64", "conv_kernel": "4", "conv_act": "relu", "conv_hidden": "256"}
PROBES = {"beta-tcvae-6-b256": ("beta-tcvae", {"beta": "6", "batch_size": "256"}),
          "beta-tcvae-6-conv": ("beta-tcvae", {"beta": "6", **DL_CONV})}
STUDY_METRICS = ["beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "sap_continuous"]
METRIC_KEYS = ["beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "dci_completeness",
               "dci_informativeness", "sap", "sap_continuous"]


def train_stage(args, runs: Path) -> dict:
    from dgm.tasks import train
    info = {}
    for name in args.models.split(","):
        family, over = MODELS[name]
        out = runs / f"bench_dis{args.tag}_{name}"
        t0 = time.perf_counter()
        if args.resume and (out / "checkpoint.pt").is_file():  # constant lr: a resumed run equals an unbroken one
            train(family, steps=args.steps, out=out, resume=True, data_dir=args.data_dir, progress=False)
        else:
            train(family, "dsprites", steps=args.steps, out=out, data_dir=args.data_dir, progress=False,
                  overrides={**COMMON, **over, "precision": args.precision, "seed": str(args.train_seed),
                             "lr_decay_start": str(args.lr_decay_start), "lr": str(args.lr or COMMON["lr"]),
                             **({"capacity_steps": str(args.capacity_steps or args.steps)}
                                if "capacity_max" in over else {})})
        info[name] = {"train_seconds": round(time.perf_counter() - t0, 1)}
        print(f"trained {name}: {info[name]['train_seconds']} s", flush=True)
    return info


def eval_stage(args, runs: Path) -> dict:
    from dgm import load
    from dgm.metrics.disentanglement import PROTOCOL, QUICK, all_metrics, dsprites_representation
    from dgm.tasks import run_data
    from dgm.figures import write_traversal
    sizes = QUICK if args.quick else PROTOCOL
    out = {}
    for name in args.models.split(","):
        run = runs / f"bench_dis{args.tag}_{name}"
        model = load(run).eval()
        t0 = time.perf_counter()
        rep = dsprites_representation(model, table=not args.quick)
        t_enc = time.perf_counter() - t0
        res = all_metrics(rep, seed=args.seed, **sizes)
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        last = rows[-1]
        # Training time from the log (robust to a run resumed in pieces): each row covers log_every steps of 64 images.
        prev, t_train = 0, 0.0
        for r in rows:
            t_train += (r["step"] - prev) * 64 / r["img_per_s"] if r.get("img_per_s") else 0.0
            prev = r["step"]
        data = run_data(run, "test", args.data_dir)
        paths = write_traversal(model, run / "traversal.png", data)
        out[name] = {**res, "encode_seconds": round(t_enc, 1), "metric_seconds": round(time.perf_counter() - t0, 1),
                     "train_seconds_from_log": round(t_train, 1), "final_recon": last.get("recon"), "final_kl": last.get("kl"), "steps": last["step"],
                     "active_units": last.get("active_units"), "traversal": [str(p) for p in paths],
                     "protocol": "quick" if args.quick else "disentanglement_lib"}
        print(name, {k: round(v, 3) for k, v in res.items() if k in METRIC_KEYS}, flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["all", "train", "eval"], default="all")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--capacity-steps", type=int, default=None,
                   help="steps over which C is annealed for the capacity models (default: --steps; the study: two "
                        "thirds of --steps)")
    p.add_argument("--lr-decay-start", type=float, default=1.0,
                   help="fraction of --steps after which the lr decays linearly to 0 (1: constant lr)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--lr", type=float, default=None, help=f"Adam lr (default {COMMON['lr']}; not in --study)")
    p.add_argument("--seed", type=int, default=0, help="the metrics' seed")
    p.add_argument("--train-seed", type=int, default=0, help="initialisation and batch order")
    p.add_argument("--resume", action="store_true", help="continue runs that have a checkpoint")
    p.add_argument("--quick", action="store_true", help="small metric sample sizes (smoke test)")
    p.add_argument("--runs", default="runs")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--models", default=None,
                   help=f"comma list from {', '.join(MODELS)} (default vae,beta-vae); --study: from {', '.join(STUDY)} "
                        f"(default all) or the probes {', '.join(PROBES)}")
    p.add_argument("--tag", default="", help="run folders are runs/bench_dis<TAG>_<model>")
    p.add_argument("--study", action="store_true", help="the study: STUDY models x --seeds (see the top)")
    p.add_argument("--seeds", default="0,1,2", help="study: training seeds")
    p.add_argument("--report", action="store_true", help="study: only write the table and plots of finished cells")
    args = p.parse_args(argv)
    if args.study:
        return study(args, p)
    args.models = args.models or "vae,beta-vae"
    runs = Path(args.runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; known: {', '.join(MODELS)}")
    jpath = RESULTS / f"disentanglement{args.tag}.json"
    info = {"steps": args.steps, "capacity_steps": args.capacity_steps or args.steps,
            "lr_decay_start": args.lr_decay_start, "precision": args.precision,
            "train_seed": args.train_seed, "config": COMMON, "torch_threads":
            torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}

    def save(key: str, new: dict) -> dict:
        # Re-read just before writing: several of these commands may run at once (one per core), each adding models.
        result = json.loads(jpath.read_text()) if jpath.is_file() else {}
        result.update(info)
        result[key] = {**result.get(key, {}), **new}
        jpath.write_text(json.dumps(result, indent=2))
        return result
    if args.stage in ("all", "train"):
        save("train", train_stage(args, runs))
    if args.stage in ("all", "eval"):
        write_table(save("eval", eval_stage(args, runs)), jpath.with_suffix(".md"))
    return 0


# -- the study -------------------------------------------------------------------------------------------------
def study(args, parser) -> int:
    import fcntl
    models = args.models.split(",") if args.models else list(STUDY)
    unknown = set(models) - set(STUDY) - set(PROBES)
    if unknown:
        parser.error(f"unknown study model(s) {sorted(unknown)}; known: {', '.join([*STUDY, *PROBES])}")
    seeds = [int(v) for v in args.seeds.split(",")]
    root = Path(args.runs) / f"study_dis{args.tag}"
    root.mkdir(parents=True, exist_ok=True)
    records = RESULTS / f"disentanglement_study{args.tag}_cells"   # tracked: a finished cell survives the machine
    if not args.report:
        for seed in seeds:           # seed-major: a partial study has every model at its first seeds
            for name in models:
                cell = root / f"{name}_s{seed}"
                if (records / f"{cell.name}.json").is_file():
                    continue
                with open(root / f".{cell.name}.lock", "a+") as lock:
                    try:
                        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue     # the other process has it
                    if not (cell / "study.json").is_file():
                        study_cell(args, name, seed, cell)
                    records.mkdir(parents=True, exist_ok=True)
                    (records / f"{cell.name}.json").write_text((cell / "study.json").read_text())
    study_report(args, records, models, seeds)
    return 0


def study_protocol(args) -> dict:
    probes = {m: PROBES[m][1] for m in (args.models or "").split(",") if m in PROBES}   # their own options
    return {"data": "dsprites (procedural, all 737,280 factor combinations)", "steps": args.steps,
            "net": "MLP 4096-256-256-(2x10), Bernoulli decoder, batch 64" + (", unless a probe's options say "
                   "otherwise" if probes else ""), "optimiser":
            f"Adam lr {COMMON['lr']}, constant, then linearly to 0 over the last third (lr_decay_start 0.667)",
            "capacity": (f"C annealed 0 -> C_max over the first {args.capacity_steps} steps" if args.capacity_steps
                         else "C annealed 0 -> C_max over the first two thirds") + ", then held",
            "metrics": "disentanglement_lib sample sizes (PROTOCOL), posterior means, the metrics' seed = the "
                       "training seed", "precision": args.precision, "threads": 1, **({"probes": probes} if probes else {})}


def study_cell(args, name: str, seed: int, out: Path) -> None:
    from dgm import load
    from dgm.io import atomic_write
    from dgm.metrics.disentanglement import PROTOCOL, QUICK, all_metrics, dsprites_representation
    from dgm.tasks import train
    family, over = {**STUDY, **PROBES}[name]
    cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else None
    t0 = time.process_time()
    if cfg is None or cfg.get("status") != "finished":
        print(f"{out.name}: {'resuming' if cfg else 'training'} to {args.steps} steps", flush=True)
        if cfg is not None:
            train(family, steps=args.steps, out=out, resume=True, data_dir=args.data_dir, progress=False,
                  figures=False)
        else:
            anneal = str(args.capacity_steps or max(1, args.steps * 2 // 3))
            train(family, "dsprites", steps=args.steps, out=out, data_dir=args.data_dir, progress=False,
                  figures=False,
                  overrides={**COMMON, **over, "precision": args.precision, "seed": str(seed),
                             "lr_decay_start": "0.667", "log_every": "100", "ckpt_every": "1000",
                             **({"capacity_steps": anneal} if "capacity_max" in over else {})})
    model = load(out).eval()
    t1 = time.process_time()
    sizes = QUICK if args.quick else PROTOCOL
    rep = dsprites_representation(model, table=not args.quick)
    res = all_metrics(rep, seed=seed, log=lambda line: print(f"{out.name}: {line}", flush=True), **sizes)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]

    def series(key):
        return [[r["step"], r[k]] for r in rows for k in (key, f"main/{key}") if k in r]
    prog = json.loads((out / "config.json").read_text())["progress"]
    result = {"model": name, "family": family, "seed": seed, "options": over, **res,
              "recon": series("recon"), "kl": series("kl"), "steps": prog["steps"],
              "train_cpu_minutes": round(prog["cpu_seconds"] / 60, 2),
              "metric_cpu_minutes": round((time.process_time() - t1) / 60, 2),
              "this_process_cpu_minutes": round((time.process_time() - t0) / 60, 2),
              "protocol": "quick" if args.quick else "disentanglement_lib"}
    atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(result)))
    print(f"{out.name}: " + ", ".join(f"{k} {res[k]:.3f}" for k in STUDY_METRICS), flush=True)


def kl_peak(kl: list, skip: float = 0.1) -> float:
    """The largest logged KL (nats) after the first `skip` of the run's logged steps: the early transient of a
    fresh encoder is left out, a KL explosion later on (orders of magnitude above the final KL) is not."""
    v = [k for _, k in kl]
    return float(max(v[int(len(v) * skip):] or v or [0.0]))


def divergence(recon: list, window: int = 10) -> float:
    """How far the reconstruction term rose above its best (nats): the last window's median minus the lowest
    window median (windows of `window` logged values); a stable run gives ~0."""
    import numpy as np
    v = np.array([r for _, r in recon], dtype=float)
    if len(v) < 2 * window:
        return 0.0
    med = [float(np.median(v[i:i + window])) for i in range(0, len(v) - window + 1, window)]
    return max(0.0, med[-1] - min(med))


def study_report(args, records: Path, models: list[str], seeds: list[int]) -> None:
    import numpy as np
    cells = [json.loads((records / f"{m}_s{s}.json").read_text()) for m in models for s in seeds
             if (records / f"{m}_s{s}.json").is_file()]
    if not cells:
        print(f"no finished cells in {records} yet")
        return
    base = RESULTS / f"disentanglement_study{args.tag}"
    lines = [f"Protocol: {json.dumps(study_protocol(args))}", "",
             "| model | seeds | " + " | ".join(STUDY_METRICS) + " | recon (nats) | KL (nats) | max recon rise | "
             "peak KL | train CPU-min |", "|---|---|" + "---|" * (len(STUDY_METRICS) + 5)]
    summary = {}
    for m in models:
        cs = [c for c in cells if c["model"] == m]
        if not cs:
            continue
        row = {}
        for k in STUDY_METRICS:
            v = np.array([c[k] for c in cs])
            row[k] = {"median": float(np.median(v)), "q1": float(np.percentile(v, 25)),
                      "q3": float(np.percentile(v, 75)), "values": v.tolist()}
        rises = [divergence(c["recon"]) for c in cs]
        row.update(seeds=[c["seed"] for c in cs], max_recon_rise=max(rises),
                   peak_kl=max(kl_peak(c["kl"]) for c in cs),
                   recon=float(np.median([c["recon"][-1][1] for c in cs])),
                   kl=float(np.median([c["kl"][-1][1] for c in cs])),
                   train_cpu_minutes=float(np.median([c["train_cpu_minutes"] for c in cs])))
        summary[m] = row
        cellv = [f"{row[k]['median']:.3f} [{row[k]['q1']:.2f}-{row[k]['q3']:.2f}]" for k in STUDY_METRICS]
        lines.append(f"| {m} | {len(cs)} | " + " | ".join(cellv) + f" | {row['recon']:.1f} | {row['kl']:.1f} | "
                     f"{row['max_recon_rise']:.1f} | {row['peak_kl']:,.0f} | {row['train_cpu_minutes']:.1f} |")
    lines += ["", "Each cell: median [inter-quartile range] over the seeds done; max recon rise: the largest rise of "
              "a run's reconstruction term above its best (window medians of 10 logged batches); peak KL: the "
              "largest logged KL of any seed after the first tenth of its steps (a KL explosion shows here even "
              "when the run recovers); a stable run has ~0 rise and a peak near its final KL."]
    (base.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    (base.with_suffix(".json")).write_text(json.dumps({"protocol": study_protocol(args), "summary": summary,
                                                       "cells": [{k: v for k, v in c.items()
                                                                  if k not in ("recon", "kl")} for c in cells]},
                                                      indent=2))
    print("\n".join(lines))
    study_plots(cells, [m for m in models if m in summary], base)


def study_plots(cells: list[dict], models: list[str], base: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(STUDY_METRICS), figsize=(3.2 * len(STUDY_METRICS), 3.6), sharey=False)
    for ax, k in zip(axes, STUDY_METRICS):
        data = [[c[k] for c in cells if c["model"] == m] for m in models]
        ax.boxplot(data, widths=0.6, showfliers=False)
        for i, v in enumerate(data, 1):
            ax.scatter([i] * len(v), v, s=14, zorder=3, alpha=0.8)
        ax.set_xticks(range(1, len(models) + 1), models, rotation=60, ha="right", fontsize=8)
        ax.set_title(k.replace("_", " "), fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Disentanglement on dSprites: each dot one seed, boxes over seeds (Locatello et al. 2019's design)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(base.with_suffix(".png"), dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    for c in cells:
        for ax, key in zip(axes, ("recon", "kl")):
            s, v = zip(*c[key])
            ax.plot(s, v, color=colours[c["model"]], lw=0.8, alpha=0.8,
                    label=c["model"] if c["seed"] == min(d["seed"] for d in cells if d["model"] == c["model"])
                    else None)
    axes[0].set_ylabel("reconstruction (nats, per batch)")
    axes[1].set_ylabel("KL (nats)")
    for ax in axes:      # log scales: a KL explosion (10^5 nats) and the runs' ordinary 10-25 nats both show
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.suptitle("Every study run's training curves (one line per seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(base.with_name(base.name + "_curves.png"), dpi=100)
    plt.close(fig)


def write_table(result: dict, path: Path) -> None:
    ev = result["eval"]
    lines = ["| model | " + " | ".join(METRIC_KEYS) + " | recon (nats) | KL (nats) | train s |",
             "|---|" + "---|" * (len(METRIC_KEYS) + 3)]
    for name in [m for m in MODELS if m in ev]:
        r = ev[name]
        tr = r.get("train_seconds_from_log", "")
        label = f"{name} (quick)" if r.get("protocol") == "quick" else name
        lines.append(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k in METRIC_KEYS)
                     + f" | {r['final_recon']:.1f} | {r['final_kl']:.1f} | {tr} |")
    text = "\n".join(lines)
    print(text)
    path.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
