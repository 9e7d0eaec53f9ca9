"""Do dgm's fast settings cost quality? Same-seed fp32 vs bf16 runs of the two comparison architectures.

1. The VAE with pythae's MNIST nets: train fp32 and bf16 (autocast) from the same initial weights on the same batches;
   compare the loss curves and the test ELBO (nats, Gaussian likelihood, one z sample per image, fixed seed), each model
   evaluated in fp32.
2. The diffusers-shaped UNet: the same for Diffusion (loss curves, test bits/dim with K stratified timesteps), then
   sampling from one trained model with fp32, bf16 autocast and torch.compile: the per-pixel difference to the fp32
   samples from the same noise, next to the difference between two fp32 models' samples (what training noise alone gives).

Runs in dgm's own environment (no anchors needed):
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare/quality.py --vae-steps 200 --unet-steps 300
Writes benchmarks/results/compare_quality.json / .md and compare_quality.png (the loss curves).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dgm.data import load_dataset
from dgm.models.diffusion import Diffusion, DiffusionConfig
from dgm.models.vae import VAE, VAEConfig
from dgm.train import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
VAE_KW = dict(latent_dim=16, conv_channels=(128, 256, 512, 1024), conv_kernel=4, deconv_kernel=3, conv_norm="batch",
              conv_act="relu", conv_hidden=0, decoder_channels=(256, 512, 1024), likelihood="gaussian")
UNET_KW = dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(1,), heads=8)


def train(model, ds, steps, batch, precision, tc_kw, seed=0):
    """Train with dgm's Trainer; returns (model, [(step, loss)], seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(steps=steps, batch_size=batch, precision=precision, log_every=10, sample_every=10 ** 9,
                         ckpt_every=10 ** 9, seed=seed, device="cpu", **tc_kw)
        t = time.perf_counter()
        Trainer(model, ds, tc, tmp, progress=False).fit()
        dt = time.perf_counter() - t
        rows = [json.loads(ln) for ln in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return model.eval(), [(r["step"], r["loss"]) for r in rows], dt


def vae_elbo(model, x_uint8) -> float:
    torch.manual_seed(123)  # the same z draws for every model
    from dgm.data import to_float
    return float(torch.cat([model.elbo(to_float(x_uint8[i:i + 500])) for i in range(0, len(x_uint8), 500)]).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae-steps", type=int, default=200)
    ap.add_argument("--unet-steps", type=int, default=300)
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--bpd-n", type=int, default=200)
    ap.add_argument("--sample-n", type=int, default=64)
    ap.add_argument("--vae-runs", default="fp32,bf16-gemm", help="VAE settings: fp32, bf16, bf16-gemm (conv_gemm=true)")
    ap.add_argument("--unet-runs", default="fp32,bf16,fp32-seed1", help="UNet runs: fp32, bf16, fp32-seed1")
    ap.add_argument("--compile", action="store_true", help="also compare torch.compile'd sampling (slow to compile)")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(HERE.parent / "results" / "compare_quality"))
    a = ap.parse_args(argv)
    tr = load_dataset("mnist", "train", data_dir=a.data_dir)
    te = load_dataset("mnist", "test", data_dir=a.data_dir).images[:a.test_n]
    res: dict = {"args": vars(a), "vae": {}, "unet": {}}
    curves = {}

    # 1. VAE, pythae's nets: fp32 vs bf16 from the same weights and batches.
    for prec in a.vae_runs.split(","):
        torch.manual_seed(0)
        m, curve, dt = train(VAE(VAEConfig(**VAE_KW, conv_gemm=prec.endswith("gemm"))), tr, a.vae_steps, 128,
                             prec.split("-")[0], {"lr": 1e-3})
        res["vae"][prec] = {"test_elbo": vae_elbo(m, te), "final_loss": curve[-1][1], "train_s": dt}
        curves[f"VAE {prec}"] = curve
        print("vae", prec, res["vae"][prec], flush=True)

    # 2. Diffusion UNet: fp32 vs bf16 training, then the samplers on the fp32 model.
    models = {}
    for prec in a.unet_runs.split(","):
        seed = 1 if prec.endswith("seed1") else 0
        torch.manual_seed(seed)
        m, curve, dt = train(Diffusion(DiffusionConfig(**UNET_KW)), tr, a.unet_steps, 64, prec.split("-")[0],
                             {"lr": 2e-4, "optimizer": "adamw", "ema_decay": 0.0, "grad_clip": 1.0, "warmup_steps": 50},
                             seed=seed)
        models[prec] = m
        entry = {"final_loss": curve[-1][1], "train_s": dt}
        if prec != "fp32-seed1":
            bpd = m.bits_per_dim(te[:a.bpd_n], t_samples=20, generator=torch.Generator().manual_seed(0))
            entry["test_bpd"] = float(bpd.mean())
            curves[f"UNet {prec}"] = curve
        res["unet"][prec] = entry
        print("unet", prec, entry, flush=True)

    def draw(m, prec, compile=False):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else torch.autocast("cpu", enabled=False)
        with ctx:
            return m.sample(a.sample_n, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=50,
                            compile=compile)
    ref = draw(models["fp32"], "fp32")
    diffs = {"bf16 autocast": draw(models["fp32"], "bf16")}
    if a.compile:
        diffs.update({"fp32 compiled": draw(models["fp32"], "fp32", True),
                      "bf16 autocast compiled": draw(models["fp32"], "bf16", True)})
    if "fp32-seed1" in models:
        diffs["another fp32 model (seed 1)"] = draw(models["fp32-seed1"], "fp32")
    res["sampling_vs_fp32"] = {k: {"mean_abs_diff": float((v - ref).abs().mean()),
                                   "max_abs_diff": float((v - ref).abs().max())} for k, v in diffs.items()}
    print("sampling", res["sampling_vs_fp32"], flush=True)

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    from dgm.figures import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, fam in zip(axes, ("VAE", "UNet")):
        for k, c in curves.items():
            if k.startswith(fam):
                ax.plot([st for st, _ in c], [val for _, val in c], label=k.split()[1], lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean over 10 steps)")
        ax.set_yscale("log")
        ax.set_title(f"{'VAE, pythae MNIST nets' if fam == 'VAE' else 'diffusion UNet, diffusers shape'}: same seed")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    v, u, s = res["vae"], res["unet"], res["sampling_vs_fp32"]
    md = ["| check | setting | value | final train loss |", "|---|---|---:|---:|"]
    md += [f"| VAE test ELBO (nats, {a.test_n} test images, {a.vae_steps} steps) | {k} | {e['test_elbo']:.2f} | "
           f"{e['final_loss']:.2f} |" for k, e in v.items()]
    md += [f"| UNet test bits/dim ({a.bpd_n} images, 20 timesteps, {a.unet_steps} steps) | {k} | "
           f"{e.get('test_bpd', float('nan')):.3f} | {e['final_loss']:.4f} |" for k, e in u.items()]
    md += ["", "| DDIM-50 samples vs fp32 eager, same model and noise | mean abs pixel diff | max |", "|---|---:|---:|"]
    md += [f"| {k} | {d['mean_abs_diff']:.4f} | {d['max_abs_diff']:.3f} |" for k, d in s.items()]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
