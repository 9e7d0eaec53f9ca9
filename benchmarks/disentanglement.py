"""VAE (beta = 1) vs beta-VAE (beta = 4) on procedural dSprites under the same step budget; five disentanglement
metrics for both (disentanglement_lib protocol) and their traversal grids.

    OMP_NUM_THREADS=1 python benchmarks/disentanglement.py                 # train both, then measure (~60 min, 1 core)
    python benchmarks/disentanglement.py --stage eval                        # measure runs already trained
    python benchmarks/disentanglement.py --steps 300 --quick                 # smoke test: tiny budget, small metric samples

Writes benchmarks/results/disentanglement.{json,md} and runs/bench_dis_{vae,beta-vae}/ (traversal.png, traversal.gif).
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
          "batch_size": "64", "lr": "1e-3"}
MODELS = {"vae": ("vae", {"beta": "1"}), "beta-vae": ("beta-vae", {"beta": "4"}),
          # Burgess et al. 2018: gamma |KL - C|, C annealed 0 -> 25 nats (their dSprites settings), over --steps
          "beta-vae-c": ("beta-vae", {"capacity_max": "25", "gamma": "1000"}),
          "beta-vae-c35": ("beta-vae", {"capacity_max": "35", "gamma": "1000"}),  # room for shape as well?
          "beta-vae-c50": ("beta-vae", {"capacity_max": "50", "gamma": "1000"})}
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
                             "lr_decay_start": str(args.lr_decay_start),
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
                   help="steps over which C is annealed for the capacity models (default: --steps)")
    p.add_argument("--lr-decay-start", type=float, default=1.0,
                   help="fraction of --steps after which the lr decays linearly to 0 (1: constant lr)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--seed", type=int, default=0, help="the metrics' seed")
    p.add_argument("--train-seed", type=int, default=0, help="initialisation and batch order")
    p.add_argument("--resume", action="store_true", help="continue runs that have a checkpoint")
    p.add_argument("--quick", action="store_true", help="small metric sample sizes (smoke test)")
    p.add_argument("--runs", default="runs")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--models", default="vae,beta-vae", help=f"comma list from {', '.join(MODELS)}")
    p.add_argument("--tag", default="", help="run folders are runs/bench_dis<TAG>_<model>")
    args = p.parse_args(argv)
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
