"""The anchors of benchmarks/budget.py: pythae's VAE and diffusers' DDPM, each trained by its own library for a budget
of process CPU-minutes, then scored by dgm's own metrics (IWAE NLL, Inception FID) through a small wrapper.

Runs in benchmarks/compare's separate environment (bash benchmarks/compare/setup.sh: pythae 0.1.2, diffusers 0.42.1,
dgm editable, the same torch pin); dgm never imports either library.

  PY=benchmarks/compare/.venv-anchors/bin/python
  OMP_NUM_THREADS=1 $PY benchmarks/compare/budget_anchors.py train --anchor pythae-vae --minutes 5 --data mnist \\
      --data-dir ../shared/data --out runs/budget_mnist/pythae-vae_5min
  OMP_NUM_THREADS=1 $PY benchmarks/compare/budget_anchors.py eval --run runs/budget_mnist/pythae-vae_5min \\
      --metric nll --n 10000 --options '{"k": 1000, "nll_n": 10000}' --data-dir ../shared/data

pythae-vae      VAE(VAEConfig(latent_dim=16, reconstruction_loss="bce")) with pythae's MNIST benchmark nets
                (Encoder_Conv_VAE_MNIST, Decoder_Conv_AE_MNIST; 17.2 M parameters), trained by its TrainingPipeline
                (BaseTrainer, Adam lr 1e-3, batch 128) on one fixed binarisation of the training images (seed 0; pythae
                has no dynamic binarisation, and its own MNIST reproductions use static binarisation). A
                TrainingCallback stops it when the process CPU time since on_train_begin reaches the budget (the
                callback raises out of the step loop; the weights are those of the last finished step).
                Samples: z ~ N(0, I) -> decoder Bernoulli means. NLL: log p(x|z) Bernoulli on the decoder's probs.
diffusers-ddpm  UNet2DModel (block_out_channels (32, 64, 64), one attention level; 1.11 M parameters, the architecture
                of benchmarks/compare/run.py) + DDPMScheduler(1000, linear), the train_unconditional example's loop:
                eps-prediction MSE, AdamW(lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8), 500 warm-up
                steps then a constant rate (the example's cosine needs the step count, which a budget does not fix),
                EMAModel (inv_gamma 1, power 3/4, max decay 0.9999), batch 64, data in [-1, 1]; stopped on the budget
                between steps. Samples: DDIMPipeline(EMA UNet, DDIMScheduler from the DDPM config), 50 steps, eta 0.

A killed diffusers-ddpm training continues from its last checkpoint (RUN/anchor_ckpt.pt, every 5 CPU-minutes) when the
same command runs again; a killed pythae-vae training (its TrainingPipeline keeps no resumable state) starts again.
`budget_anchors.py samples --run RUN` writes RUN/samples.png, a seeded grid of 64 samples to look at.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VAE_ARGS = dict(latent_dim=16, lr=1e-3, batch=128)
UNET = dict(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
DDPM_ARGS = dict(lr=1e-4, batch=64, warmup=500, timesteps=1000, ema_inv_gamma=1.0, ema_power=0.75, ema_max=0.9999)


class BudgetReached(Exception):
    pass


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def train_images(data: str, data_dir):
    from dgm.data import load_dataset
    ds = load_dataset(data, "train", data_dir=data_dir)
    return ds.images  # (N, 1, H, W) uint8


# -- pythae ----------------------------------------------------------------------------------------------------
def pythae_model(image_size: int = 28):
    from pythae.models import VAE, VAEConfig
    from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST
    cfg = VAEConfig(input_dim=(1, image_size, image_size), latent_dim=VAE_ARGS["latent_dim"],
                    reconstruction_loss="bce")
    return VAE(cfg, encoder=Encoder_Conv_VAE_MNIST(cfg), decoder=Decoder_Conv_AE_MNIST(cfg))


def train_pythae(a, out: Path) -> dict:
    import logging
    logging.getLogger("pythae").setLevel(logging.WARNING)
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback
    from dgm.data import binarize
    x = train_images(a.data, a.data_dir).float() / 255.0
    x = binarize(x, torch.Generator().manual_seed(0))  # one static binarisation (seed 0)
    torch.manual_seed(a.seed)
    model = pythae_model(x.shape[-1])
    budget = a.minutes * 60.0
    info = {"steps": 0}

    class CpuBudget(TrainingCallback):
        def on_train_begin(self, training_config, **kw):
            info["cpu0"], info["wall0"] = time.process_time(), time.perf_counter()

        def on_train_step_end(self, training_config, **kw):
            info["steps"] += 1
            if time.process_time() - info["cpu0"] >= budget:
                raise BudgetReached

    tc = BaseTrainerConfig(output_dir=str(out / "pythae"), per_device_train_batch_size=VAE_ARGS["batch"],
                           learning_rate=VAE_ARGS["lr"], num_epochs=10_000, no_cuda=True, steps_saving=None,
                           seed=a.seed)
    pipe = TrainingPipeline(model=model, training_config=tc)
    try:
        pipe(train_data=x, eval_data=None, callbacks=[CpuBudget()])
        stopped = "epochs"
    except BudgetReached:
        stopped = "budget"
    cpu, wall = time.process_time() - info["cpu0"], time.perf_counter() - info["wall0"]
    torch.save(model.state_dict(), out / "anchor_state.pt")
    return {"steps": info["steps"], "cpu_seconds": cpu, "wall_seconds": wall, "stopped_by": stopped,
            "epochs": info["steps"] * VAE_ARGS["batch"] / len(x),
            "library": "pythae 0.1.2 TrainingPipeline", "model": {"latent_dim": VAE_ARGS["latent_dim"],
            "nets": "Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST", "reconstruction_loss": "bce",
            "params": sum(p.numel() for p in model.parameters())},
            "train": {"lr": VAE_ARGS["lr"], "batch_size": VAE_ARGS["batch"], "optimizer": "Adam (pythae default)",
                      "data": "static binarisation (seed 0)"}}


class PythaeWrapper:
    """pythae's VAE behind the methods dgm's metrics call (nll, sample)."""
    family = "pythae-vae"

    def __init__(self, model, image_size: int):
        from types import SimpleNamespace
        self.m = model.eval().to(memory_format=torch.channels_last)  # the same function; its deconvs 1.2x faster
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(likelihood="bernoulli", binarize=True, image_size=image_size, channels=1,
                                      latent_dim=VAE_ARGS["latent_dim"])
        self.rows = 512  # decoder rows per call (its 1024-channel deconvs are large)

    def capabilities(self):
        return frozenset({"nll", "sample"})

    def state_dict(self):  # what dgm's NLL hashes to continue a killed estimate (RUN/.nll_partial.pt)
        return self.m.state_dict()

    def eval(self):
        return self

    @torch.no_grad()
    def sample(self, n: int, generator=None, **kw):
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        return torch.cat([self.m.decoder(z[i:i + self.rows]).reconstruction for i in range(0, n, self.rows)])

    @torch.no_grad()
    def nll(self, x, k: int = 1):
        """IWAE -log p(x) per image (B,) with k importance samples from q(z|x); Bernoulli decoder."""
        e = self.m.encoder(x)
        mu, logvar = e.embedding, e.log_covariance
        b, d = mu.shape
        xf = x.flatten(1)
        per = max(1, self.rows // b)
        logw = []
        for s in range(0, k, per):
            m = min(per, k - s)
            eps = torch.randn(m, b, d)
            z = mu + (0.5 * logvar).exp() * eps
            p = self.m.decoder(z.reshape(-1, d)).reconstruction.reshape(m, b, -1)
            log_px = -F.binary_cross_entropy(p, xf.expand(m, b, -1), reduction="none").sum(-1)
            log_pz = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)
            log_q = -0.5 * (eps ** 2 + math.log(2 * math.pi) + logvar).sum(-1)
            logw.append(log_px + log_pz - log_q)
        return -(torch.logsumexp(torch.cat(logw), 0) - math.log(k))


# -- diffusers ---------------------------------------------------------------------------------------------------
def train_diffusers(a, out: Path) -> dict:
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    data = train_images(a.data, a.data_dir).float() / 127.5 - 1  # in memory, [-1, 1]
    torch.manual_seed(a.seed)
    unet = UNet2DModel(**{**UNET, "sample_size": data.shape[-1]})
    sched = DDPMScheduler(num_train_timesteps=DDPM_ARGS["timesteps"])
    opt = torch.optim.AdamW(unet.parameters(), lr=DDPM_ARGS["lr"], betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_sched = get_scheduler("constant_with_warmup", optimizer=opt, num_warmup_steps=DDPM_ARGS["warmup"])
    ema = EMAModel(unet.parameters(), decay=DDPM_ARGS["ema_max"], use_ema_warmup=True,
                   inv_gamma=DDPM_ARGS["ema_inv_gamma"], power=DDPM_ARGS["ema_power"], model_cls=UNet2DModel,
                   model_config=unet.config)
    bs, budget = DDPM_ARGS["batch"], a.minutes * 60.0
    g = torch.Generator().manual_seed(a.seed)
    # A checkpoint every --ckpt-cpu-seconds of CPU time (and at the end): a killed training continues from it with
    # everything restored (weights, AdamW, lr schedule, EMA, the generator, the epoch's permutation and position), so
    # the resumed run takes the same steps as an uninterrupted one; the budget counts the CPU time of every leg.
    ckpt = out / "anchor_ckpt.pt"
    step, losses, perm, pos, used_before, wall_before = 0, [], None, 0, 0.0, 0.0
    if ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        if st["minutes"] != a.minutes or st["seed"] != a.seed:
            raise SystemExit(f"{ckpt} is of another run (minutes {st['minutes']}, seed {st['seed']}); "
                             f"remove it or use another --out")
        unet.load_state_dict(st["unet"])
        opt.load_state_dict(st["opt"])
        lr_sched.load_state_dict(st["lr_sched"])
        ema.load_state_dict(st["ema"])
        g.set_state(st["generator"])
        step, losses, perm, pos = st["step"], st["losses"], st["perm"], st["pos"]
        used_before, wall_before = st["cpu_seconds"], st["wall_seconds"]
        print(f"resumed from {ckpt} at step {step} ({used_before / 60:.1f} CPU-min used)", flush=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def used() -> float:
        return used_before + time.process_time() - cpu0

    def save() -> None:
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"minutes": a.minutes, "seed": a.seed, "unet": unet.state_dict(), "opt": opt.state_dict(),
                    "lr_sched": lr_sched.state_dict(), "ema": ema.state_dict(), "generator": g.get_state(),
                    "step": step, "losses": losses[-200:], "perm": perm, "pos": pos, "cpu_seconds": used(),
                    "wall_seconds": wall_before + time.perf_counter() - wall0}, tmp)
        os.replace(tmp, ckpt)

    last_save = used()
    unet.train()
    while used() < budget and not (a.max_steps and step >= a.max_steps):
        if perm is None or pos > len(data) - bs:
            perm, pos = torch.randperm(len(data), generator=g), 0
        clean = data[perm[pos:pos + bs]]
        pos += bs
        noise = torch.randn(clean.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (bs,), generator=g)
        noisy = sched.add_noise(clean, noise, t)
        loss = F.mse_loss(unet(noisy, t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)  # the example's accelerator.clip_grad_norm_
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
        if used() - last_save >= a.ckpt_cpu_seconds:
            save()
            last_save = used()
    save()
    cpu, wall = used(), wall_before + time.perf_counter() - wall0
    ema.copy_to(unet.parameters())
    unet.save_pretrained(out / "unet_ema")
    sched.save_pretrained(out / "scheduler")
    tail = losses[-200:]
    stopped = "steps" if a.max_steps and step >= a.max_steps else "budget"
    return {"steps": step, "cpu_seconds": cpu, "wall_seconds": wall, "stopped_by": stopped,
            "epochs": step * bs / len(data), "final_loss_mean200": sum(tail) / max(1, len(tail)),
            "library": "diffusers 0.42.1 (train_unconditional loop)",
            "model": {**{k: list(v) if isinstance(v, tuple) else v for k, v in UNET.items()},
                      "params": sum(p.numel() for p in unet.parameters())},
            "train": {"lr": DDPM_ARGS["lr"], "batch_size": bs, "optimizer": "AdamW (0.95, 0.999), wd 1e-6",
                      "lr_schedule": "constant_with_warmup 500", "ema": "EMAModel inv_gamma 1, power 3/4, max 0.9999",
                      "grad_clip": 1.0}}


class DiffusersWrapper:
    """diffusers' EMA UNet + DDIMPipeline (50 steps, eta 0) behind dgm's sample(n, generator)."""
    family = "diffusers-ddpm"

    def __init__(self, run: Path, steps: int = 50, batch: int = 250):
        from types import SimpleNamespace
        from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
        unet = UNet2DModel.from_pretrained(run / "unet_ema").eval()
        ddim = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(run / "scheduler").config)
        self.pipe = DDIMPipeline(unet=unet, scheduler=ddim)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.batch = steps, batch
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(image_size=unet.config.sample_size, channels=1)

    def capabilities(self):
        return frozenset({"sample"})

    def eval(self):
        return self

    @torch.no_grad()
    def sample(self, n: int, generator=None, **kw):
        out = []
        for i in range(0, n, self.batch):
            m = min(self.batch, n - i)
            im = self.pipe(batch_size=m, generator=generator, num_inference_steps=self.steps, eta=0.0,
                           output_type="np").images  # (m, H, W, 1) in [0, 1]
            out.append(torch.from_numpy(im).permute(0, 3, 1, 2).float())
        return torch.cat(out)


# -- commands --------------------------------------------------------------------------------------------------
def cmd_train(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    info = train_pythae(a, out) if a.anchor == "pythae-vae" else train_diffusers(a, out)
    from dgm.data import load_dataset
    size = load_dataset(a.data, "test", data_dir=a.data_dir).images.shape[-1]
    cfg = {"family": a.anchor, "library": info.pop("library"), "model": info.pop("model"), "train":
           {**info.pop("train"), "minutes": a.minutes}, "data": {"name": a.data, "image_size": size,
                                                                 "data_dir": a.data_dir},
           "status": "finished", "torch_threads": torch.get_num_threads(),
           "progress": {"checkpoint_step": info["steps"], "cpu_seconds": round(info["cpu_seconds"], 3),
                        "wall_seconds": round(info["wall_seconds"], 3), "budget_cpu_seconds": a.minutes * 60.0,
                        "stopped_by": info["stopped_by"], **{k: v for k, v in info.items() if k not in
                                                              ("steps", "cpu_seconds", "wall_seconds", "stopped_by")}}}
    write_json(cfg_path, cfg)
    print(json.dumps(cfg["progress"]))


def cmd_eval(a) -> None:
    from dgm.evaluate import evaluate
    run = Path(a.run)
    res = evaluate(run, [a.metric], n=a.n, data_dir=a.data_dir, options=json.loads(a.options), model=load_anchor(run))
    print(json.dumps({k: v for k, v in res.items()}, default=str)[:2000])


def load_anchor(run: Path):
    """The trained anchor in `run` behind dgm's model interface (sample, and nll for the VAE)."""
    cfg = json.loads((run / "config.json").read_text())
    if cfg["family"] == "pythae-vae":
        model = pythae_model(cfg["data"]["image_size"])
        model.load_state_dict(torch.load(run / "anchor_state.pt", map_location="cpu", weights_only=True))
        return PythaeWrapper(model, cfg["data"]["image_size"])
    return DiffusersWrapper(run)


def cmd_samples(a) -> None:
    """RUN/samples.png: a seeded grid of the anchor's samples, titled with its budget and steps, to look at."""
    from dgm.grids import labelled_grid
    run = Path(a.run)
    cfg = json.loads((run / "config.json").read_text())
    with torch.inference_mode():
        x = load_anchor(run).sample(a.n, generator=torch.Generator().manual_seed(a.seed)).clamp(0, 1)
    title = (f"{cfg['family']}: {cfg['train']['minutes']:g} CPU-min, {cfg['progress']['checkpoint_step']:,} steps "
             f"(seed {a.seed})")
    labelled_grid(x, nrow=8, title=title).save(run / "samples.png")
    print(run / "samples.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--anchor", required=True, choices=("pythae-vae", "diffusers-ddpm"))
    t.add_argument("--minutes", type=float, required=True, help="budget in process CPU-minutes")
    t.add_argument("--data", default="mnist")
    t.add_argument("--data-dir")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-steps", type=int, default=0, help="diffusers-ddpm: stop after this many steps too (tests)")
    t.add_argument("--ckpt-cpu-seconds", type=float, default=300.0,
                   help="diffusers-ddpm: checkpoint every this many CPU-seconds (a killed run resumes from it)")
    e = sub.add_parser("eval")
    e.add_argument("--run", required=True)
    e.add_argument("--metric", required=True, choices=("nll", "fid", "domain_fid"))
    e.add_argument("--n", type=int, required=True)
    e.add_argument("--options", default="{}")
    e.add_argument("--data-dir")
    g = sub.add_parser("samples", help="write RUN/samples.png (a seeded grid of samples)")
    g.add_argument("--run", required=True)
    g.add_argument("--n", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    {"train": cmd_train, "eval": cmd_eval, "samples": cmd_samples}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
