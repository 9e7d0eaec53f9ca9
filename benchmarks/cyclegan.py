"""CycleGAN MNIST <-> USPS at 28x28: label preservation both ways, plain and with CyCADA's semantic loss.

    OMP_NUM_THREADS=1 python benchmarks/cyclegan.py [--data-dir DIR] [--steps 2000] [--batch-size 8] [--identity 0] [--n 2000]
        [--source-zoom 0.5] [--variants plain,semantic]

Protocol (docs/EVALUATION.md, "Translation"): USPS is resized 16 -> 28 (bilinear). Each direction's translations of
the first --n source test images (MNIST test has 10,000, USPS test 2,007) are classified by a classifier trained only
on the target's training split (dgm.models.classifier, cached); beside them the source-only baseline (that classifier
on the raw source test images) and the target ceiling (on the target's test split), plus the domain FID (classifier
features, not Inception). Two runs from the same seed: plain CycleGAN and CycleGAN + semantic consistency (f_S = the
MNIST classifier, pseudo-labels, Hoffman et al. 2018). A small generator (width 16, 3 residual blocks, PatchGAN width
32 with 16x16 patches) no identity loss (see --identity) and 2000 steps of 8 pairs keep the whole job near an hour on one (shared) CPU thread. Writes
benchmarks/results/cyclegan.{json,md} and translation panels.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from dgm.evaluate import evaluate
from dgm.metrics.classifier import domain_classifier
from dgm.tasks import train

HERE = Path(__file__).resolve().parent
PUBLISHED = {"A2B": {"source_only": 0.822, "cycada": 0.956, "ceiling": 0.963}}  # CyCADA Table 2 (not re-checked)


def wait_for_classifier(name: str, cache: Path, limit_s: float = 1800) -> None:
    """Another job may be training this classifier into the shared cache right now: wait for it, never race it."""
    d = cache / name
    t0 = time.time()
    while (d / "metrics.jsonl").is_file() and not (d / "classifier.json").is_file():
        if time.time() - (d / "metrics.jsonl").stat().st_mtime > 300 or time.time() - t0 > limit_s:
            return  # abandoned or too slow: train it ourselves
        print(f"waiting for {d} (being trained by another job) ...", flush=True)
        time.sleep(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--gen-width", type=int, default=16)
    ap.add_argument("--gen-blocks", type=int, default=3)
    ap.add_argument("--disc-width", type=int, default=32)
    ap.add_argument("--semantic-weight", type=float, default=1.0)
    # Off by default here: the identity loss pulls G toward the identity map, while MNIST -> USPS needs a geometric
    # change (MNIST digits sit in a 20x20 box, resized USPS digits fill the frame). Zhu et al. use it for colour.
    ap.add_argument("--identity", type=float, default=0.0, help="lambda_identity (model default 0.5)")
    ap.add_argument("--n", type=int, default=2000, help="source test images per direction (default 2000)")
    ap.add_argument("--source-zoom", type=float, default=0.0,
                    help="> 0: f_S is an MNIST classifier trained with random zoom in [1/(1+z), 1+z] (MNIST labels "
                         "only), so it reads USPS-sized digits too; 0: the cached MNIST domain classifier")
    ap.add_argument("--variants", default="plain,semantic", help="which runs: plain, semantic or both")
    ap.add_argument("--runs", default="runs/bench_cyclegan")
    ap.add_argument("--out", default=str(HERE / "results" / "cyclegan"))
    ap.add_argument("--dry", action="store_true", help="a seconds-long check of the script (tiny, meaningless)")
    a = ap.parse_args()
    t_all = time.perf_counter()
    from dgm.metrics.classifier import train_classifier
    from dgm.models.classifier import cache_root
    if a.dry:  # stand-in classifiers in a private cache so the real ones are never touched
        import os
        os.environ["DGM_DATA"] = str(Path(a.runs) / "cache")
        for name, size in (("mnist", None), ("usps", 28)):
            train_classifier(name, data_dir=a.data_dir, image_size=size, epochs=0.02, progress=False)
    t0 = time.perf_counter()
    clf_u = domain_classifier("usps", 28, a.data_dir)  # USPS resized to 28 px: trained here on first use
    t_clf = time.perf_counter() - t0
    print(f"classifier usps@28: {clf_u.test_accuracy:.4f} ({t_clf:.0f} s)", flush=True)
    clf_m = None

    common = {"gen_width": a.gen_width, "gen_blocks": a.gen_blocks, "disc_width": a.disc_width,
              "lambda_identity": a.identity, "batch_size": a.batch_size, "log_every": 50, "seed": 0}
    results, f_s_info = {}, None
    if a.source_zoom > 0:  # a zoom-robust source classifier for the semantic loss, trained on MNIST labels only
        from dgm.data import load_dataset
        from dgm.io import load
        from dgm.metrics.classifier import test_accuracy
        t0 = time.perf_counter()
        f_s_dir = Path(a.runs) / f"f_s_zoom{a.source_zoom:g}"
        train_classifier("mnist", data_dir=a.data_dir, out=f_s_dir, overrides={"zoom": str(a.source_zoom)},
                         epochs=0.02 if a.dry else None, progress=False)
        f_s = load(f_s_dir)
        f_s_info = {"zoom": a.source_zoom, "folder": str(f_s_dir), "seconds": round(time.perf_counter() - t0, 1),
                    "mnist_test_acc": test_accuracy(f_s, load_dataset("mnist", "test", data_dir=a.data_dir)),
                    "usps28_test_acc": test_accuracy(f_s, load_dataset("usps", "test", data_dir=a.data_dir,
                                                                       image_size=28))}
        common["semantic_classifier"] = str(f_s_dir)
        print("f_S", json.dumps(f_s_info), flush=True)
    plan = {"plain": 0.0, "semantic": a.semantic_weight}
    for variant, w in [(v, plan[v]) for v in a.variants.split(",")]:
        run = Path(a.runs) / variant
        if run.exists():
            shutil.rmtree(run)
        t0 = time.perf_counter()
        train("cyclegan", "unpaired:mnist,usps", steps=a.steps, out=run, overrides={**common, "semantic_weight": w},
              data_dir=a.data_dir, image_size=28, progress=False)
        t_train = time.perf_counter() - t0
        if clf_m is None:  # the MNIST classifier (native 28 px) may still be in training by the classifiers job
            t0 = time.perf_counter()
            wait_for_classifier("mnist", cache_root())
            clf_m = domain_classifier("mnist", 28, a.data_dir)
            t_clf += time.perf_counter() - t0
            print(f"classifier mnist: {clf_m.test_accuracy:.4f}", flush=True)
        t0 = time.perf_counter()
        ev = evaluate(run, ["translation"], n=a.n, data_dir=a.data_dir)
        t_eval = time.perf_counter() - t0
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        ips = sorted(r["img_per_s"] for r in rows[1:] or rows)
        results[variant] = {"semantic_weight": w, "train_seconds": round(t_train, 1), "eval_seconds": round(t_eval, 1),
                            "pairs_per_s": round(a.steps * a.batch_size / t_train, 2),
                            "trainer_img_per_s_median": round(ips[len(ips) // 2], 2),
                            **{k: round(v["value"], 4) for k, v in ev.items()}}
        panel = run / "translations.png"
        if panel.is_file():
            shutil.copy(panel, f"{a.out}_{variant}_panel.png")
        print(variant, json.dumps(results[variant]), flush=True)

    lines = ["| direction | source only | " + " | ".join(f"CycleGAN {v} (w_sem={r['semantic_weight']})"
                                                      for v, r in results.items())
             + " | target ceiling | domain FID " + " / ".join(results) + " |", "|---" * (4 + len(results)) + "|"]
    first = next(iter(results.values()))
    for key, name in (("A2B", "MNIST -> USPS"), ("B2A", "USPS -> MNIST")):
        lines.append(f"| {name} | {first[f'label_acc_{key}_source_only']:.2%} | "
                     + " | ".join(f"{r[f'label_acc_{key}']:.2%}" for r in results.values())
                     + f" | {first[f'label_acc_{key}_ceiling']:.2%} | "
                     + " / ".join(f"{r[f'domain_fid_{key}']:.2f}" if f"domain_fid_{key}" in r else "-"
                                  for r in results.values()) + " |")
    pub = PUBLISHED["A2B"]
    lines.append(f"| MNIST -> USPS, CyCADA (published; plain CycleGAN not reported) | {pub['source_only']:.1%} | "
                 + " | ".join(f"{pub['cycada']:.1%}" if v == "semantic" else "-" for v in results)
                 + f" | {pub['ceiling']:.1%} | - |")
    if f_s_info:
        lines += ["", f"f_S for the semantic loss: MNIST classifier trained with zoom {f_s_info['zoom']:g} "
                      f"(MNIST labels only): MNIST test {f_s_info['mnist_test_acc']:.2%}, USPS@28 test "
                      f"{f_s_info['usps28_test_acc']:.2%} ({f_s_info['seconds']} s)"]
    lines += ["", "| run | steps x batch | train s | pairs/s | eval s |", "|---|---|---|---|---|"]
    for v, r in results.items():
        lines.append(f"| {v} (w_sem={r['semantic_weight']}) | {a.steps} x {a.batch_size} | {r['train_seconds']} | "
                     f"{r['pairs_per_s']} | {r['eval_seconds']} |")
    md = "\n".join(lines)
    print(md)
    meta = {"steps": a.steps, "batch_size": a.batch_size, "gen_width": a.gen_width, "gen_blocks": a.gen_blocks,
            "disc_width": a.disc_width, "lambda_identity": a.identity, "image_size": 28, "threads": torch.get_num_threads(),
            "classifier_test_acc": {"mnist": clf_m.test_accuracy, "usps_28": clf_u.test_accuracy},
            "classifier_seconds": round(t_clf, 1), "total_seconds": round(time.perf_counter() - t_all, 1),
            "dry": a.dry, "f_s": f_s_info}
    Path(a.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    Path(a.out + ".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
