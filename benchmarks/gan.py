"""DCGAN on MNIST / Fashion-MNIST: sample quality against training time, throughput, and the D(x) plot.

    python benchmarks/gan.py --data mnist --configs ns,hinge-sn --minutes 25 --chunk-steps 500

Each configuration trains in chunks of `--chunk-steps` (resuming the same run exactly) until `--minutes` of training
wall time are spent; after every chunk, domain FID and mode coverage on `--curve-n` samples give the curve of quality
against training time (evaluation time is not counted as training). At the end: domain FID / KID / precision-recall /
mode coverage on `--final-n` samples, and Inception FID on `--fid-n` samples against `--fid-ref-n` training images
when `--fid-n` > 0 (the protocol is 10,000 vs 10,000; smaller N is biased upwards, the N is recorded).
Training images/s counts real images shown to D (n_critic x batch per step) over training wall time, and per CPU
second of this (single-threaded) process, which does not depend on what else the machine runs.
`--continue` extends existing runs and their curves; `--fid-only --fid-n 10000` adds Inception FID to finished runs
(with the floor: real test images against the same reference), e.g. on a GPU or overnight.
Writes benchmarks/results/gan_<data>.json / .md and copies each run's dx.png and samples.png beside them.
"""
from __future__ import annotations

import argparse
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

CONFIGS = {
    "ns": {"loss": "ns"},                                          # Radford et al. 2016 DCGAN, non-saturating loss
    "ns-ema": {"loss": "ns", "ema_decay": "0.999"},                # the same, sampled from an EMA of the weights
    "hinge-sn": {"loss": "hinge", "spectral_norm": "true"},        # Miyato et al. 2018 (SN, hinge), no BN in D
    "lsgan": {"loss": "lsgan"},
    "wgan-gp": {"loss": "wgan-gp", "lr": "1e-4", "betas": "0,0.9"},  # Gulrajani et al. 2017 settings
}


# Options left out of the recorded training command (paths, modes; an Inception FID records its own command).
NOT_IN_COMMAND = ("runs", "results", "data_dir", "dry", "cont", "fid_only", "speed", "no_fid_floor", "fid_configs")


def value(res: dict, key: str):
    return res[key]["value"] if key in res else None


def speed(batch: int = 64, width: int = 64, steps: int = 15) -> None:
    """Real images per CPU-second of this process (one thread), after 3 warm-up steps: one D and one G update per
    step on random uint8 MNIST-shaped batches. CPU time, so the number does not depend on the machine's load."""
    from dgm.models.gan import GAN, GANConfig
    from dgm.train import make_optimizer
    torch.set_num_threads(1)
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    print("| loss | fp32 real img / CPU-s | bf16 real img / CPU-s |\n|---|---|---|")
    for name, kw in [("ns", {}), ("hinge + SN", {"loss": "hinge", "spectral_norm": True}),
                     ("wgan-gp (per critic step)", {"loss": "wgan-gp", "n_critic": 1})]:
        res = []
        for prec in ("fp32", "bf16"):
            torch.manual_seed(0)
            m = GAN(GANConfig(channels=1, image_size=28, width=width, **kw))
            opts = {ph: make_optimizer(torch.optim.Adam, m.phase_parameters(ph), lr=2e-4, betas=(0.5, 0.999))
                    for ph in m.phases}  # as the Trainer builds them

            def step():
                for ph, o in opts.items():
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                        loss = m.loss((x, None), ph)["loss"]
                    o.zero_grad()
                    loss.backward()
                    o.step()
            for _ in range(3):
                step()
            c = time.process_time()
            for _ in range(steps):
                step()
            res.append(batch * steps / (time.process_time() - c))
        print(f"| {name} | {res[0]:.0f} | {res[1]:.0f} |", flush=True)


def real_floor(a) -> dict:
    """Inception FID of real test images against the same train reference at the same N: what a perfect generator
    would score at this sample size (FID is biased upwards at small N)."""
    from dgm.data import load_dataset
    from dgm.metrics import fid
    try:
        ext = fid.load_inception(precision=a.fid_precision)
        test = load_dataset(a.data, "test", data_dir=a.data_dir)
        # The same cache key as `dgm evaluate` uses (the run's image size), so the reference is computed once.
        ref = fid.reference_stats(a.data, ext, "train", a.fid_ref_n, data_dir=a.data_dir, image_size=test.shape[1])
        f_test = fid.features(test.images[:a.fid_n], ext, 50, progress=False)
        return {"value": fid.frechet_distance(ref["mu"], ref["sigma"], *fid.feature_stats(f_test)), "n": a.fid_n,
                "ref_n": a.fid_ref_n, "extractor": ext.name}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "n": a.fid_n, "ref_n": a.fid_ref_n}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist")
    p.add_argument("--configs", default="ns,hinge-sn", help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--minutes", type=float, default=25.0, help="training wall time per configuration")
    p.add_argument("--chunk-steps", type=int, default=500)
    p.add_argument("--max-steps", type=int, default=0, help="stop a configuration here even with time left")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--curve-n", type=int, default=2000)
    p.add_argument("--final-n", type=int, default=10_000)
    p.add_argument("--fid-n", type=int, default=0, help="Inception FID samples (0: skip; protocol 10000)")
    p.add_argument("--fid-ref-n", type=int, default=10_000)
    p.add_argument("--fid-precision", default="bf16", choices=("fp32", "bf16"),
                   help="Inception precision (bf16: checked against fp32 in benchmarks/fid_floor.py)")
    p.add_argument("--no-fid-floor", action="store_true",
                   help="skip the real-vs-real Inception floor (benchmarks/fid_floor.py measures it at 10k)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default="runs/bench_gan")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="extend existing runs (and their curves in the results JSON) instead of starting afresh")
    p.add_argument("--fid-only", action="store_true", help="only the Inception FID of the runs already in the JSON")
    p.add_argument("--fid-configs", default="", help="with --fid-only: just these runs (comma list; default all)")
    p.add_argument("--speed", action="store_true",
                   help="only the throughput table: CPU time per step of each loss, fp32 vs bf16, then exit")
    p.add_argument("--dry", action="store_true", help="tiny settings to check the script end to end")
    a = p.parse_args()
    if a.speed:
        return speed(a.batch_size, a.width)
    if 0 < a.fid_n <= 2048 or 0 < a.fid_ref_n <= 2048:
        raise SystemExit("Inception FID needs more than 2048 samples per set (a full-rank 2048-d covariance)")
    a.cont = a.cont or a.fid_only
    if a.dry:
        a.minutes, a.chunk_steps, a.curve_n, a.final_n, a.width = 0.05, 5, 300, 300, 8
    warnings.simplefilter("default")
    results_dir = Path(a.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads (shared)",
           "command": "python benchmarks/gan.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                                                           if k not in NOT_IN_COMMAND),
           "data": a.data, "runs": {}}
    json_path = results_dir / f"gan_{a.data}{'_dry' if a.dry else ''}.json"
    if a.cont and json_path.is_file():
        prev = json.loads(json_path.read_text())
        out["runs"] = prev["runs"]
        out["command"] = prev["command"] + " ; then " + out["command"] + " --continue"
    for name in [] if a.fid_only else a.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
        run = Path(a.runs) / f"{a.data}_{name}"
        over = {"precision": a.precision, "width": str(a.width), "batch_size": str(a.batch_size), "log_every": "25",
                "ckpt_every": str(a.chunk_steps), **CONFIGS[name]}
        if a.cont and name in out["runs"] and (run / "checkpoint.pt").is_file():
            rec = out["runs"][name]
            train_s, steps = rec["train_wall_s"], rec["steps"]
            cpu_s, cpu_steps = rec.get("train_cpu_s", 0.0), rec.get("cpu_steps", 0)
            start = train_s
        else:
            if run.exists():
                shutil.rmtree(run)
            rec = {"overrides": over, "curve": []}
            out["runs"][name] = rec
            train_s, cpu_s, cpu_steps, steps, start = 0.0, 0.0, 0, 0, 0.0
        while train_s - start < a.minutes * 60 and (not a.max_steps or steps < a.max_steps):
            first = steps == 0
            steps += a.chunk_steps
            t0, c0 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if first:
                    train("gan", a.data, steps=steps, out=run, overrides=over, data_dir=a.data_dir, progress=False,
                          figures=False)
                else:
                    train("gan", a.data, steps=steps, out=run, resume=True, data_dir=a.data_dir, progress=False,
                          figures=False)
            train_s += time.perf_counter() - t0
            cpu_s += time.process_time() - c0  # this process's CPU time: comparable across loads (1 thread)
            cpu_steps += a.chunk_steps
            t1 = time.perf_counter()
            try:
                res = evaluate(run, ["domain_fid", "mode_coverage"], n=a.curve_n, data_dir=a.data_dir)
                point = {"step": steps, "train_s": round(train_s, 1), "train_cpu_s": round(cpu_s, 1),
                         "domain_fid": value(res, "domain_fid"),
                         "mode_coverage": value(res, "mode_coverage"), "mode_kl": value(res, "mode_kl_uniform")}
            except Exception as e:  # a metric failing must not lose the training run
                point = {"step": steps, "train_s": round(train_s, 1), "error": f"{type(e).__name__}: {e}"}
            point["eval_s"] = round(time.perf_counter() - t1, 1)
            rec["curve"].append(point)
            print(name, point, flush=True)
            json_path.write_text(json.dumps(out, indent=1))
        rows = read_metrics(run)
        n_critic = 1
        rec.update({"steps": steps, "train_wall_s": round(train_s, 1), "train_cpu_s": round(cpu_s, 1),
                    "cpu_steps": cpu_steps,
                    "train_img_per_s": round(steps * n_critic * a.batch_size / train_s, 1),
                    "train_img_per_cpu_s": round(cpu_steps * n_critic * a.batch_size / cpu_s, 1) if cpu_s else None,
                    "epochs_of_d": round(steps * n_critic * a.batch_size / 60_000, 2),
                    "final_d_real": rows[-1].get("d/d_real"), "final_d_fake": rows[-1].get("d/d_fake"),
                    "final_d_auc": rows[-1].get("d/d_auc")})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_figures(run, load(run), run_data(run))
        rec["warnings"] = [str(w.message) for w in caught if "Collapse" in type(w.message).__name__]
        for f in ("dx.png", "samples.png"):
            if (run / f).is_file():
                shutil.copy(run / f, results_dir / f"gan_{a.data}_{name}_{f}")
        t1 = time.perf_counter()
        try:
            res = evaluate(run, ["domain_fid", "kid", "precision_recall", "mode_coverage"], n=a.final_n,
                           data_dir=a.data_dir)
            rec["final"] = {k: value(res, k) for k in ("domain_fid", "kid_domain", "precision_domain",
                                                        "recall_domain", "mode_coverage", "mode_kl_uniform")}
            rec["final"]["n"] = a.final_n
        except Exception as e:
            rec["final"] = {"error": f"{type(e).__name__}: {e}"}
        rec["final_eval_s"] = round(time.perf_counter() - t1, 1)
        json_path.write_text(json.dumps(out, indent=1))
        print(name, rec["final"], flush=True)
    if a.fid_n:
        if not a.no_fid_floor:
            out["inception_floor"] = real_floor(a)
            print("real test images vs reference:", out["inception_floor"], flush=True)
        for name, rec in out["runs"].items():
            wanted = (a.fid_configs or ",".join(out["runs"])) if a.fid_only else a.configs  # only what this call trained
            if name not in wanted.split(","):
                continue
            t1 = time.perf_counter()
            try:
                res = evaluate(Path(a.runs) / f"{a.data}_{name}", ["fid"], n=a.fid_n, data_dir=a.data_dir,
                               options={"ref_n": a.fid_ref_n, "precision": a.fid_precision})
                rec["inception_fid"] = {"value": value(res, "fid"), "n": a.fid_n, "ref_n": a.fid_ref_n,
                                        "precision": a.fid_precision,
                                        "command": f"python benchmarks/gan.py --data {a.data} --fid-only --fid-configs "
                                                   f"{name} --fid-n {a.fid_n} --fid-precision {a.fid_precision}",
                                        "seconds": round(time.perf_counter() - t1, 1)}
            except Exception as e:
                rec["inception_fid"] = {"error": f"{type(e).__name__}: {e}"}
            json_path.write_text(json.dumps(out, indent=1))
            print(name, rec["inception_fid"], flush=True)
    md = [f"DCGAN on {a.data} ({out['machine']}, {out['date']}); command: `{out['command']}`", "",
          "| config | steps | D epochs | train wall | train img/s (wall) | img per CPU-s | domain FID | KID (domain) | precision | recall | "
          "mode coverage | mode KL | Inception FID (N) | final D(x) / D(G(z)) / AUC |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, d=3: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    for name, r in out["runs"].items():
        fin = r.get("final", {})
        inc = r.get("inception_fid", {})
        md.append(f"| {name} | {r['steps']} | {r['epochs_of_d']} | {r['train_wall_s'] / 60:.1f} min | "
                  f"{r['train_img_per_s']} | {f(r.get('train_img_per_cpu_s'), 1)} | {f(fin.get('domain_fid'), 2)} | {f(fin.get('kid_domain'), 4)} | "
                  f"{f(fin.get('precision_domain'))} | {f(fin.get('recall_domain'))} | {f(fin.get('mode_coverage'), 2)} | "
                  f"{f(fin.get('mode_kl_uniform'))} | "
                  f"{f(inc.get('value'), 2)} ({inc.get('n', '-')} vs {inc.get('ref_n', '-')}) | "
                  f"{f(r['final_d_real'], 2)} / {f(r['final_d_fake'], 2)} / {f(r['final_d_auc'], 2)} |")
    if "inception_floor" in out:
        fl = out["inception_floor"]
        md += ["", f"Inception FID floor at this N: {fl['n']} real test images vs the {fl['ref_n']}-image train "
                   f"reference: {f(fl.get('value'), 2)}"]
    md += ["", "Domain FID against training time (curve N = %d):" % a.curve_n, "",
           "| config | step | train min | domain FID | mode coverage |", "|---|---|---|---|---|"]
    for name, r in out["runs"].items():
        for pt in r["curve"]:
            md.append(f"| {name} | {pt['step']} | {pt['train_s'] / 60:.1f} | {f(pt.get('domain_fid'), 2)} | "
                      f"{f(pt.get('mode_coverage'), 2)} |")
    text = "\n".join(md)
    json_path.write_text(json.dumps(out, indent=1))
    json_path.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
