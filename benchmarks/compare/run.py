"""dgm against the libraries users would pick instead, on the same architectures and data, interleaved.

Anchors (each run by its own code): pythae 0.1.2's VAE with its MNIST benchmark conv nets, trained by its BaseTrainer
(DataLoader over its BaseDataset); diffusers 0.42.1's UNet2DModel + DDPMScheduler trained by the loop of its training
example (batches already in memory, so only the model and loop are compared), and its DDIMPipeline (50 steps, 64 images).
dgm: the same nets (configs below) trained by dgm's own Trainer, and Diffusion.sample(sampler="ddim").

Every measurement runs in a fresh subprocess, after waiting for an idle machine (1-minute load average below
--idle-load, at most --idle-timeout seconds; a warning and the load are recorded otherwise), and the tasks are
interleaved round by round; the table shows medians over rounds. FLOPs per image are counted with
torch.utils.flop_counter.FlopCounterMode (training: forward + backward; sampling: all network calls), and MFU is
img/s x FLOPs per image / the peak of a 2048^3 matmul in the run's precision, measured in every round.

Needs the separate environment from setup.sh (pythae, diffusers, dgm):
  bash benchmarks/compare/setup.sh
  benchmarks/compare/.venv-anchors/bin/python benchmarks/compare/run.py --rounds 3
  benchmarks/compare/.venv-anchors/bin/python benchmarks/compare/run.py --rounds 1 --vae-n 256 --unet-n 128 \\
      --ddim-n 8 --idle-timeout 0 --out runs/compare_smoke      # a quick smoke test
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# pythae's MNIST benchmark nets (Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST) as dgm VAE options, 17.2 M parameters.
DGM_VAE_PYTHAE = dict(latent_dim=16, conv_channels=(128, 256, 512, 1024), conv_kernel=4, deconv_kernel=3,
                      conv_norm="batch", conv_act="relu", conv_hidden=0, decoder_channels=(256, 512, 1024),
                      likelihood="gaussian")
# diffusers UNet2DModel(block_out_channels=(32, 64, 64), layers_per_block=1, attention at the middle level, attention
# head dim 8) as dgm Diffusion options, 1.11 M parameters.
DGM_UNET_DIFFUSERS = dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(1,), heads=8,
                          timesteps=1000)
DIFFUSERS_UNET = dict(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))

# dgm speed settings measured against each other: name -> (precision, channels_last, torch.compile, conv_gemm).
# torch.compile applies to the UNet training step (TrainConfig.compile: the loss function is compiled; the timed
# epoch comes after a warm-up epoch that pays the compile) and to DDIM sampling (compile=True: the UNet is compiled,
# the warm-up call pays it).
VARIANTS = {"fp32": ("fp32", False, False, False), "bf16": ("bf16", False, False, False),
            "bf16-cl": ("bf16", True, False, False), "bf16-gemm": ("bf16", False, False, True),
            "bf16-gemm-cl": ("bf16", True, False, True), "fp32-gemm": ("fp32", False, False, True),
            "fp32-compile": ("fp32", False, True, False), "bf16-compile": ("bf16", False, True, False),
            "bf16-cl-compile": ("bf16", True, True, False)}


# -- helpers ---------------------------------------------------------------------------------------------------
def mnist_uint8(n: int, data_dir: str | None):
    from dgm.data import load_dataset
    ds = load_dataset("mnist", "train", data_dir=data_dir)
    if n > len(ds.images):
        raise SystemExit(f"asked for {n} images, MNIST has {len(ds.images)}")
    return ds.images[:n], ds.labels[:n]


def count_flops(fn) -> int:
    """Total FLOPs (2 per multiply-add) of the matmuls/convolutions/attention fn() runs."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def nparams(module) -> int:
    return sum(p.numel() for p in module.parameters())


def autocast(precision: str):
    import torch
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


# -- workers: each prints one JSON line ------------------------------------------------------------------------
def w_peak(a):
    import torch
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
        x @ y
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            x @ y
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * 2048 ** 3 / best
    return {"peak_fp32": out["fp32"], "peak_bf16": out["bf16"]}


def w_vae_pythae(a):
    import logging
    import torch
    logging.disable(logging.WARNING)
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    x, _ = mnist_uint8(a.vae_n, a.data_dir)
    data = x.float() / 255.0  # pythae's data processor gives float images in [0, 1]
    cfg = VAEConfig(input_dim=(1, 28, 28), latent_dim=16, reconstruction_loss="mse")
    model = VAE(cfg, encoder=Encoder_Conv_VAE_MNIST(cfg), decoder=Decoder_Conv_AE_MNIST(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        tc = BaseTrainerConfig(output_dir=tmp, per_device_train_batch_size=128, learning_rate=1e-3, num_epochs=2,
                               no_cuda=True)
        trainer = BaseTrainer(model, BaseDataset(data, torch.zeros(len(data))), None, tc)
        trainer.prepare_training()
        trainer.train_step(1)  # warm-up epoch
        t = time.perf_counter()
        trainer.train_step(2)
        dt = time.perf_counter() - t
    xb = data[:8]

    def step():
        model.train()
        model({"data": xb}).loss.backward()
    return {"img_s": len(data) / dt, "params": nparams(model), "flops_per_img": count_flops(step) / len(xb),
            "precision": "fp32"}


def _dgm_train(model, x, y, steps_per_epoch, batch, tc_kw, precision, cl):
    import torch
    from dgm.data.base import ImageData
    from dgm.train import TrainConfig, Trainer
    if cl:
        model = model.to(memory_format=torch.channels_last)
    ds = ImageData(x, y, "mnist", 10)
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(steps=2 * steps_per_epoch, batch_size=batch, precision=precision, log_every=steps_per_epoch,
                         sample_every=10 ** 9, ckpt_every=10 ** 9, device="cpu", **tc_kw)
        Trainer(model, ds, tc, tmp, progress=False).fit()
        rows = [json.loads(ln) for ln in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["img_per_s"]  # the second epoch's window: dgm's own throughput log, after a warm-up epoch


def _dgm_result(model, xb, img_s: float, params: int, prec: str) -> dict:
    """A dgm training worker's record: its throughput plus the FLOPs of one training step per image."""
    def step():
        model.train()
        with autocast(prec):
            model.loss((xb, None))["loss"].backward()
    return {"img_s": img_s, "params": params, "flops_per_img": count_flops(step) / len(xb), "precision": prec}


def w_vae_dgm(a):
    import torch
    from dgm.models.vae import VAE, VAEConfig
    prec, cl, _, gemm = VARIANTS[a.variant]
    x, y = mnist_uint8(a.vae_n, a.data_dir)
    torch.manual_seed(0)
    model = VAE(VAEConfig(**DGM_VAE_PYTHAE, conv_gemm=gemm))
    p = nparams(model)
    img_s = _dgm_train(model, x, y, a.vae_n // 128, 128, {"lr": 1e-3, "optimizer": "adam"}, prec, cl)
    return _dgm_result(model, x[:8], img_s, p, prec)


def w_unet_diffusers_train(a):
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DModel
    x, _ = mnist_uint8(a.unet_n, a.data_dir)
    data = x.float() / 127.5 - 1  # in memory, [-1, 1]
    torch.manual_seed(0)
    unet = UNet2DModel(**DIFFUSERS_UNET)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    bs = 64

    def epoch():
        perm = torch.randperm(len(data))
        for i in range(0, len(data) - bs + 1, bs):
            clean = data[perm[i:i + bs]]
            noise = torch.randn_like(clean)
            t = torch.randint(0, 1000, (bs,))
            noisy = sched.add_noise(clean, noise, t)
            loss = F.mse_loss(unet(noisy, t).sample, noise)  # the diffusers train_unconditional example's loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            loss.item()
    unet.train()
    epoch()
    t0 = time.perf_counter()
    epoch()
    dt = time.perf_counter() - t0
    xb, tb = data[:8], torch.randint(0, 1000, (8,))
    fl = count_flops(lambda: unet(xb, tb).sample.pow(2).mean().backward())
    return {"img_s": (len(data) // bs * bs) / dt, "params": nparams(unet), "flops_per_img": fl / 8,
            "precision": "fp32"}


def w_unet_dgm_train(a):
    import torch
    from dgm.models.diffusion import Diffusion, DiffusionConfig
    prec, cl, comp, _ = VARIANTS[a.variant]
    x, y = mnist_uint8(a.unet_n, a.data_dir)
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(**DGM_UNET_DIFFUSERS))
    p = nparams(model)
    # The same work as the diffusers loop: AdamW 1e-4, no EMA, no clipping, no warm-up.
    img_s = _dgm_train(model, x, y, a.unet_n // 64, 64, {"lr": 1e-4, "optimizer": "adamw", "ema_decay": 0.0,
                                                         "grad_clip": 0.0, "warmup_steps": 0, "compile": comp},
                        prec, cl)
    return _dgm_result(model, x[:8], img_s, p, prec)


def w_ddim_diffusers(a):
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(**DIFFUSERS_UNET).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=a.ddim_n, num_inference_steps=2, output_type="np")  # warm-up
    t = time.perf_counter()
    pipe(batch_size=a.ddim_n, num_inference_steps=50, generator=torch.Generator().manual_seed(0), output_type="np")
    dt = time.perf_counter() - t
    xb, tb = torch.randn(8, 1, 28, 28), torch.full((8,), 500)
    with torch.no_grad():
        fl = count_flops(lambda: unet(xb, tb)) * 50 / 8
    return {"img_s": a.ddim_n / dt, "seconds": dt, "params": nparams(unet), "flops_per_img": fl, "precision": "fp32"}


def w_ddim_dgm(a):
    import torch
    from dgm.models.diffusion import Diffusion, DiffusionConfig
    prec, cl, comp, _ = VARIANTS[a.variant]
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(**DGM_UNET_DIFFUSERS)).eval()
    if cl:
        model = model.to(memory_format=torch.channels_last)
    kw = dict(sampler="ddim", steps=50, compile=comp)
    t = time.perf_counter()
    with autocast(prec):
        model.sample(a.ddim_n, generator=torch.Generator().manual_seed(1), **{**kw, "steps": 2})  # warm-up (+compile)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    with autocast(prec):
        model.sample(a.ddim_n, generator=torch.Generator().manual_seed(0), **kw)
    dt = time.perf_counter() - t
    xb, tb = torch.randn(8, 1, 28, 28), torch.full((8,), 500)
    with torch.inference_mode(), autocast(prec):
        fl = count_flops(lambda: model.net(xb, tb)) * 50 / 8
    return {"img_s": a.ddim_n / dt, "seconds": dt, "warmup_s": warm, "params": nparams(model), "flops_per_img": fl,
            "precision": prec}


WORKERS = {"peak": w_peak, "vae-pythae": w_vae_pythae, "vae-dgm": w_vae_dgm,
           "unet-diffusers": w_unet_diffusers_train, "unet-dgm": w_unet_dgm_train,
           "ddim-diffusers": w_ddim_diffusers, "ddim-dgm": w_ddim_dgm}


# -- the driver ------------------------------------------------------------------------------------------------
def wait_idle(limit: float, timeout: float) -> tuple[float, float]:
    """Wait until the 1-minute load average is below `limit` (at most `timeout` s); returns (load, waited seconds)."""
    t0 = time.time()
    while True:
        load = os.getloadavg()[0]
        if load < limit or time.time() - t0 >= timeout:
            if load >= limit:
                print(f"  WARNING: machine not idle (1-min load {load:.2f} >= {limit}) after {time.time() - t0:.0f}s; "
                      "measuring anyway", flush=True)
            return load, time.time() - t0
        time.sleep(10)


def run_worker(task: str, variant: str, a) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, "--variant", variant, "--vae-n", str(a.vae_n),
           "--unet-n", str(a.unet_n), "--ddim-n", str(a.ddim_n)]
    if a.data_dir:
        cmd += ["--data-dir", a.data_dir]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{task} {variant} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vae-n", type=int, default=1280, help="MNIST images per timed VAE epoch (multiple of 128)")
    ap.add_argument("--unet-n", type=int, default=640, help="MNIST images per timed UNet epoch (multiple of 64)")
    ap.add_argument("--ddim-n", type=int, default=64, help="images per DDIM sampling run (50 steps)")
    ap.add_argument("--vae-variants", default="fp32,bf16,bf16-gemm", help=f"dgm settings, from {', '.join(VARIANTS)}")
    ap.add_argument("--unet-variants", default="fp32,bf16,bf16-cl")
    ap.add_argument("--ddim-variants", default="fp32,bf16,bf16-cl,bf16-compile")
    ap.add_argument("--only", default="vae,unet,ddim", help="which comparisons (vae, unet, ddim)")
    ap.add_argument("--idle-load", type=float, default=1.5)
    ap.add_argument("--idle-timeout", type=float, default=600, help="max seconds to wait for idle before each run")
    ap.add_argument("--data-dir", help="dataset root (default: dgm's lookup)")
    ap.add_argument("--out", default=str(HERE.parent / "results" / "compare"), help="writes OUT.json and OUT.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return
    if a.vae_n % 128 or a.unet_n % 64 or a.vae_n < 128 or a.unet_n < 64:
        ap.error("--vae-n must be a multiple of 128 and --unet-n a multiple of 64")
    for v in a.vae_variants.split(",") + a.unet_variants.split(",") + a.ddim_variants.split(","):
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    only = set(a.only.split(","))
    plan = [("peak", "-")]
    if "vae" in only:
        plan += [("vae-pythae", "-")] + [("vae-dgm", v) for v in a.vae_variants.split(",")]
    if "unet" in only:
        plan += [("unet-diffusers", "-")] + [("unet-dgm", v) for v in a.unet_variants.split(",")]
    if "ddim" in only:
        plan += [("ddim-diffusers", "-")] + [("ddim-dgm", v) for v in a.ddim_variants.split(",")]
    import torch
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
            "args": {k: (os.path.relpath(v) if k == "out" else v) for k, v in vars(a).items()
                     if k not in ("worker", "variant")}}
    with contextlib.suppress(Exception):
        import importlib.metadata as md
        meta["pythae"], meta["diffusers"] = md.version("pythae"), md.version("diffusers")
    print(json.dumps(meta), flush=True)
    results: list[dict] = []
    for r in range(a.rounds):
        for task, variant in plan:
            load, waited = wait_idle(a.idle_load, a.idle_timeout)
            res = run_worker(task, variant, a)
            res.update(task=task, variant=variant, round=r, load=round(load, 2), waited_s=round(waited))
            results.append(res)
            print(json.dumps(res), flush=True)
    report(results, meta, Path(a.out))


def report(results: list[dict], meta: dict, out: Path) -> str:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    peak = {"fp32": med([r["peak_fp32"] for r in results if r["task"] == "peak"]),
            "bf16": med([r["peak_bf16"] for r in results if r["task"] == "peak"])}
    rows, groups = [], {}
    for r in results:
        if r["task"] != "peak":
            groups.setdefault((r["task"], r["variant"]), []).append(r)
    anchors = {"vae": "vae-pythae", "unet": "unet-diffusers", "ddim": "ddim-diffusers"}
    label = {"vae-pythae": "pythae VAE train", "vae-dgm": "dgm VAE train", "unet-diffusers": "diffusers UNet train",
             "unet-dgm": "dgm UNet train", "ddim-diffusers": "diffusers DDIMPipeline 50 steps",
             "ddim-dgm": "dgm DDIM 50 steps"}
    for (task, variant), rs in groups.items():
        kind = task.split("-")[0]
        anchor = groups.get((anchors[kind], "-"))
        img_s = med([r["img_s"] for r in rs])
        ratio = img_s / med([r["img_s"] for r in anchor]) if anchor else float("nan")
        # ratio of medians and the spread of per-round ratios (each round's pair ran back to back)
        per_round = sorted(r["img_s"] / a2["img_s"] for r in rs for a2 in (anchor or []) if a2["round"] == r["round"])
        flops = rs[0]["flops_per_img"]
        prec = rs[0]["precision"]
        row = {"what": label[task], "setting": variant if variant != "-" else "library default", "img_s": img_s,
               "img_s_all": [round(r["img_s"], 2) for r in rs], "ratio": ratio,
               "ratio_range": [round(per_round[0], 2), round(per_round[-1], 2)] if per_round else None,
               "params": rs[0]["params"], "gflop_per_img": flops / 1e9, "precision": prec,
               # MFU with the anchor's count (the same architecture, so the same model FLOPs for both libraries;
               # FlopCounterMode counts a fused attention backward differently from the explicit one)
               "mfu": img_s * (anchor[0]["flops_per_img"] if anchor else flops) / peak[prec],
               "max_load": max(r["load"] for r in rs)}
        if "seconds" in rs[0]:
            row["seconds"] = med([r["seconds"] for r in rs])
        if "warmup_s" in rs[0]:
            row["warmup_s"] = med([r["warmup_s"] for r in rs])
        rows.append(row)
    lines = [f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), "
             f"pythae {meta.get('pythae')}, diffusers {meta.get('diffusers')}; medians of "
             f"{max(r['round'] for r in results) + 1} interleaved rounds. Matmul peak (2048^3): "
             f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s.", "",
             "| what | setting | img/s | x anchor (per-round range) | params | GFLOP/img | MFU | s (sampling) | max load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for w in rows:
        rr = f" ({w['ratio_range'][0]}-{w['ratio_range'][1]})" if w["ratio_range"] and w["setting"] != "library default" \
            else ""
        secs = f"{w['seconds']:.1f}" if "seconds" in w else ""
        if "warmup_s" in w:
            secs += f" (+{w['warmup_s']:.0f} warm-up)"
        lines.append(f"| {w['what']} | {w['setting']} | {w['img_s']:.1f} | {w['ratio']:.2f}x{rr} | "
                     f"{w['params'] / 1e6:.2f} M | {w['gflop_per_img']:.3f} | {100 * w['mfu']:.0f}% ({w['precision']}) | "
                     f"{secs} | {w['max_load']:.1f} |")
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "peak": peak, "rows": rows, "raw": results},
                                                   indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
