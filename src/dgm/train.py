"""The one Trainer: every family's loop (phases, not subclasses).

A step runs each of the model's phases in order (e.g. "d" then "g" for a GAN), each with its own optimiser over
`model.phase_parameters(phase)`. Everything random is either a pure function of (seed, counter) (the batches) or lives
in the saved RNG state, so `resume` after a kill ends bit-identical to an uninterrupted run on CPU.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dgm.data import Batches
from dgm.io import atomic_write, save
from dgm.memory import tune_allocator
from dgm.grids import save_grid


@dataclass
class TrainConfig:
    steps: int = 0                 # total optimisation steps; 0 -> derived from epochs
    epochs: float = 0.0            # used when steps == 0 (default 1 epoch if both are 0)
    batch_size: int = 128          # global batch (split across processes under torchrun)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    optimizer: str = "adam"        # "adam" or "adamw"
    warmup_steps: int = 0
    lr_decay_start: float = 1.0    # fraction of training after which the lr decays linearly to 0 (1.0: constant)
    ema_decay: float = 0.0         # > 0: keep an EMA of the weights; it is what model.safetensors holds
    grad_clip: float = 0.0         # > 0: clip the global grad norm per phase
    seed: int = 0
    precision: str = "fp32"        # "fp32", "bf16" (autocast, CPU or GPU) or "fp16" (autocast + GradScaler, GPU)
    device: str = "auto"           # "auto", "cpu", "cuda", "cuda:1", ...
    log_every: int = 50
    sample_every: int = 0          # 0 -> about 8 grids over the run
    ckpt_every: int = 500
    compile: bool = False          # torch.compile the model (costs seconds up front)


class NonFiniteLoss(RuntimeError):
    """Raised when a loss becomes NaN/inf; the last good checkpoint is left as it was."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    """(rank, world_size) under torchrun, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def make_optimizer(cls, params, **options) -> torch.optim.Optimizer:
    """cls(params, fused=True, ...) where this torch supports it for these parameters (CPU since torch 2.4, CUDA), else
    the default implementation. Same update up to float rounding; on this 2-core CPU the fused Adam step over the 17 M
    parameters of benchmarks/compare's VAE takes 11 ms against 81 ms for the default per-parameter loop (one thread)."""
    params = list(params)
    try:
        return cls(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device/dtype without a fused kernel
        return cls(params, **options)


class Trainer:
    def __init__(self, model, data, config: TrainConfig, out_dir: str | os.PathLike,
                 extra_config: dict[str, Any] | None = None, progress: bool = True):
        self.cfg = c = config
        self.out = Path(out_dir)
        self.extra = extra_config or {}
        self.progress = progress
        self.device = resolve_device(c.device)
        if self.device.type == "cpu":
            tune_allocator()
        init_distributed(self.device)
        self.rank, self.world = dist_info()
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if c.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {c.precision!r}")
        if c.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 on CPU")
        if c.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {c.optimizer!r}")
        torch.manual_seed(c.seed)
        self.model = model.to(self.device)
        if self.world > 1:  # every process starts from rank 0's weights, as DistributedDataParallel does
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, 0)
        self.data = data
        make = getattr(data, "batches", None)  # a dataset may bring its own iterator (e.g. unpaired domains)
        self.batches = (make(c.batch_size, seed=c.seed, rank=self.rank, world_size=self.world) if make
                        else Batches(data, c.batch_size, seed=c.seed, rank=self.rank, world_size=self.world))
        draws_per_step = sum(model.phase_repeats.get(p, 1) for p in model.phases)
        self.total = c.steps or max(1, math.ceil((c.epochs or 1.0) * len(self.batches) / draws_per_step))
        self.opts = {}
        for phase in model.phases:
            o = {"lr": c.lr, "betas": tuple(c.betas), "weight_decay": c.weight_decay, **model.phase_options(phase)}
            cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
            self.opts[phase] = make_optimizer(cls, model.phase_parameters(phase), **o)
        self.base_lrs = {p: [g["lr"] for g in o.param_groups] for p, o in self.opts.items()}
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if c.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda") if c.precision == "fp16" else None
        self.step = 0
        self.draw = 0  # batches consumed so far (a phase may draw several per step)
        self.ckpt_path = self.out / "checkpoint.pt"
        self.fwd = torch.compile(model.loss) if c.compile else model.loss

    # -- pieces ----------------------------------------------------------------------------------------------
    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def lr_factor(self, step: int) -> float:
        c = self.cfg
        f = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        start = c.lr_decay_start * self.total
        if step >= start and c.lr_decay_start < 1.0:
            f *= max(0.0, 1.0 - (step - start) / max(1.0, self.total - start))
        return f

    def all_reduce_grads(self, params) -> None:
        """Average gradients over processes with one flat all-reduce (equal shards: same as the global batch)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        i = 0
        for g in grads:
            g.copy_(flat[i:i + g.numel()].view_as(g))
            i += g.numel()

    @torch.no_grad()
    def update_ema(self) -> None:
        # Warm-up (as in TF's ExponentialMovingAverage with num_updates): early on the average must not stay
        # anchored to the random initial weights.
        d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm, 1.0 - d)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    @property
    def eval_model(self):
        return self.ema if self.ema is not None else self.model

    def to_device(self, batch):
        return tuple(t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s = {"step": self.step, "draw": self.draw, "model": self.model.state_dict(),
             "opts": {p: o.state_dict() for p, o in self.opts.items()},
             "rng_cpu": torch.get_rng_state(), "train_config": json.dumps(dataclasses.asdict(self.cfg))}
        if torch.cuda.is_available() and self.device.type == "cuda":
            s["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.ema is not None:
            s["ema"] = self.ema.state_dict()
        if self.scaler is not None:
            s["scaler"] = self.scaler.state_dict()
        return s

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        atomic_write(self.ckpt_path, lambda tmp: torch.save(self.state(), tmp))
        save(self.eval_model, self.out, weights_only=True)

    def load_checkpoint(self) -> None:
        if not self.ckpt_path.is_file():
            raise FileNotFoundError(f"cannot resume: {self.ckpt_path} not found")
        try:
            s = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        except Exception as e:  # a truncated or foreign file
            raise RuntimeError(f"cannot resume: {self.ckpt_path} is unreadable ({e})") from None
        self.model.load_state_dict(s["model"])
        for p, o in self.opts.items():
            o.load_state_dict(s["opts"][p])
        if self.ema is not None and "ema" in s:
            self.ema.load_state_dict(s["ema"])
        if self.scaler is not None and "scaler" in s:
            self.scaler.load_state_dict(s["scaler"])
        torch.set_rng_state(s["rng_cpu"].cpu())
        if "rng_cuda" in s and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["rng_cuda"].cpu(), self.device)
        self.step, self.draw = int(s["step"]), int(s["draw"])
        # Drop log lines written after the checkpoint by the killed run, so metrics.jsonl has each step once.
        log = self.out / "metrics.jsonl"
        if log.is_file():
            keep = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
            atomic_write(log, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in keep)))

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_at: int | None = None):
        """Train to `config.steps`. `stop_at` ends early without a final checkpoint (tests use it to mimic a kill)."""
        c, model = self.cfg, self.model
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "samples").mkdir(exist_ok=True)
        if resume:  # before the save below, so a resumed run never has freshly initialised weights on disk
            self.load_checkpoint()
        if self.rank == 0:
            save(self.eval_model, self.out, extra={"train": dataclasses.asdict(c), **self.extra})
        sample_every = c.sample_every or max(1, self.total // 8)
        fixed = self.to_device(self.batches.get(0))  # same preview inputs throughout
        log_f = open(self.out / "metrics.jsonl", "a") if self.rank == 0 else None
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total, initial=self.step, desc=f"{model.family}", dynamic_ncols=True)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t0, seen = time.perf_counter(), 0
        model.train()
        try:
            while self.step < self.total:
                if stop_at is not None and self.step >= stop_at:
                    return model
                f = self.lr_factor(self.step)
                for p, o in self.opts.items():
                    for g, base in zip(o.param_groups, self.base_lrs[p]):
                        g["lr"] = base * f
                model.step = self.step
                for phase in model.phases:
                    for _ in range(model.phase_repeats.get(phase, 1)):
                        batch = self.to_device(self.batches.get(self.draw))
                        self.draw += 1
                        seen += batch[0].shape[0] * self.world
                        out = self.train_phase(phase, batch)
                        for k, v in out.items():
                            key = k if len(model.phases) == 1 else f"{phase}/{k}"
                            sums[key] = sums.get(key, 0.0) + float(v)
                            counts[key] = counts.get(key, 0) + 1
                if self.ema is not None:
                    self.update_ema()
                self.step += 1
                if self.step % c.log_every == 0 or self.step == self.total:
                    dt = time.perf_counter() - t0
                    row = {"step": self.step, "epoch": round(self.draw / len(self.batches), 4),
                           "lr": self.opts[model.phases[0]].param_groups[0]["lr"],
                           **{k: v / counts[k] for k, v in sums.items()},
                           "img_per_s": seen / dt if dt > 0 else 0.0}
                    if log_f:
                        log_f.write(json.dumps(row) + "\n")
                        log_f.flush()
                    if bar:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step", "epoch", "lr")})
                    sums, counts, t0, seen = {}, {}, time.perf_counter(), 0
                if self.rank == 0 and (self.step % sample_every == 0 or self.step == self.total):
                    self.write_preview(fixed)
                if self.step % c.ckpt_every == 0 or self.step == self.total:
                    self.save_checkpoint()
                if bar:
                    bar.update(1)
        finally:
            if bar:
                bar.close()
            if log_f:
                log_f.close()
        return model

    def train_phase(self, phase: str, batch) -> dict[str, float]:
        opt = self.opts[phase]
        with self.autocast():
            out = self.fwd(batch, phase)
        loss = out["loss"]
        if not torch.isfinite(loss):
            last = f"{self.ckpt_path} (step {self.last_ckpt_step()})" if self.ckpt_path.is_file() else "none yet"
            raise NonFiniteLoss(f"{phase} loss became {loss.item()} at step {self.step}; training stopped. "
                                f"Last good checkpoint: {last}. Try a lower lr (--set lr=...), grad_clip, or fp32.")
        opt.zero_grad(set_to_none=True)
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        else:
            loss.backward()
        if self.world > 1:
            self.all_reduce_grads(params)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        return {k: v.detach() for k, v in out.items()}

    def last_ckpt_step(self) -> int:
        try:
            return int(torch.load(self.ckpt_path, map_location="cpu", weights_only=True)["step"])
        except Exception:
            return -1

    def write_preview(self, fixed) -> None:
        # Preview noise comes from its own generator so drawing it never moves the training RNG.
        g = torch.Generator().manual_seed(1234)
        m = self.eval_model
        was = m.training
        m.eval()
        imgs = m.preview(fixed, g)
        m.train(was)
        save_grid(imgs, self.out / "samples" / f"step_{self.step:06d}.png")
