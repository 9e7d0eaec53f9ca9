"""Pixel statistics of samples against the real images: are a model's strokes as dark-or-bright as the data's?

MNIST's pixels are nearly binary (ink or background); a generator whose strokes carry a grey halo can score well on a
digit classifier's features (domain FID) and worse on Inception's, which see texture. This prints, per source, the
share of ink pixels (> 0.5), the share of faint pixels (0 < v <= 0.1: noise on the background), the share of grey pixels among all non-background ones (0.1 < v < 0.9 over v > 0.1)
and the mean edge strength (mean |horizontal and vertical pixel differences|), and draws the histograms. With
`--fid-n N` it also scores each run's samples by Inception FID against the seeded 10,000-image train reference twice:
as generated, and with the faint pixels set to 0 (does the background noise cost FID?).

    python benchmarks/pixel_stats.py --data mnist --data-dir ../shared/data --n 5000 \\
        --runs runs/bench_gan/mnist_recipe_epyc_ns-ema@90cpumin,runs/bench_gan/mnist_recipe_epyc_r3@90cpumin \\
        --out benchmarks/results/gan_mnist_pixel_stats
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dgm.data import load_dataset, to_float, to_uint8
from dgm.io import load

BINS = 16


def stats(x01: torch.Tensor) -> dict:
    """x01: (N, C, H, W) in [0, 1], quantised to uint8 first as every saved sample is."""
    v = to_float(to_uint8(x01))
    lit = v > 0.1
    grey = lit & (v < 0.9)
    edges = torch.cat([(v[..., 1:, :] - v[..., :-1, :]).abs().flatten(1),
                       (v[..., :, 1:] - v[..., :, :-1]).abs().flatten(1)], 1)
    return {"ink_share": round(float((v > 0.5).float().mean()), 4),
            "faint_share": round(float(((v > 0) & ~lit).float().mean()), 4),
            "grey_share_of_lit": round(float(grey.sum() / lit.sum().clamp_min(1)), 4),
            "edge_strength": round(float(edges.mean()), 4),
            "histogram": torch.histc(v, BINS, 0.0, 1.0).div(v.numel()).tolist()}


def faint_fid(a, x: torch.Tensor) -> dict:
    """Inception FID (N = len(x), uint8) as generated and with pixels <= 0.1 set to 0."""
    from dgm.metrics import fid
    ext = fid.load_inception(precision="fp32")
    ref = fid.reference_stats(a.data, ext, "train", 10000, data_dir=a.data_dir, image_size=x.shape[-1])
    score = lambda imgs: fid.frechet_distance(ref["mu"], ref["sigma"],  # noqa: E731
                                              *fid.feature_stats(fid.features(imgs, ext, 50, progress=False)))
    return {"n": len(x), "ref_n": 10000, "as_generated": round(score(x), 3),
            "faint_zeroed": round(score(torch.where(x <= 25, torch.zeros_like(x), x)), 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", required=True, help="comma list of run folders (each sampled with seed 0)")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--fid-n", type=int, default=0, help="also Inception FID on this many samples, as generated and "
                   "with faint pixels zeroed (fp32; the 10k train reference is cached per machine)")
    p.add_argument("--out", required=True, help="path stem: writes STEM.json and STEM.png")
    a = p.parse_args()
    runs = [Path(r) for r in a.runs.split(",")]
    for r in runs:  # fail before any work
        if not (r / "config.json").is_file():
            p.error(f"{r} is not a run folder (no config.json)")
    torch.set_num_threads(1)
    real = load_dataset(a.data, "train", data_dir=a.data_dir)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(real.images), generator=g)[:a.n]
    res = {f"{a.data} train (real)": stats(to_float(real.images[pick]))}
    with torch.inference_mode():
        for r in runs:
            model = load(r)
            x = model.sample(max(a.n, a.fid_n), generator=torch.Generator().manual_seed(0))
            res[r.name] = stats(x[:a.n])
            if a.fid_n:
                res[r.name]["inception_fid"] = faint_fid(a, to_uint8(x[:a.fid_n]))
                print(r.name, res[r.name]["inception_fid"], flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"n": a.n, "sources": res}, indent=1))
    print(f"| source (N = {a.n}) | ink share (> 0.5) | faint share (0 < v <= 0.1) | grey share of lit pixels | "
          "edge strength |\n|---|---|---|---|---|")
    for k, s in res.items():
        print(f"| {k} | {s['ink_share']:.4f} | {s['faint_share']:.4f} | {s['grey_share_of_lit']:.4f} | {s['edge_strength']:.4f} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.6))
    centres = [(i + 0.5) / BINS for i in range(BINS)]
    for i, (k, s) in enumerate(res.items()):
        ax.plot(centres, s["histogram"], "o-" if i == 0 else ".--", label=k, lw=2 if i == 0 else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("pixel value (uint8 / 255)")
    ax.set_ylabel(f"share of pixels ({BINS} bins, log)")
    ax.set_title("pixel histograms: real images against each run's samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(out.with_suffix(".png"))


if __name__ == "__main__":
    main()
