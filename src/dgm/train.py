"""The one Trainer: every family's loop (phases, not subclasses).

A step runs each of the model's phases in order (e.g. "d" then "g" for a GAN), each with its own optimiser over
`model.phase_parameters(phase)`. Everything random is either a pure function of (seed, counter) (the batches) or lives
in the saved RNG state, so `resume` after a kill ends bit-identical to an uninterrupted run on CPU.

A run folder has one owner: `fit` holds an exclusive lock on RUN/train.lock (dgm.io.RunLock) for its whole life, so a
second trainer on the same folder fails at once naming the first one's pid; the OS drops the lock when the process dies.
config.json says what state the run is in ("status": "unfinished" | "finished", and "progress": the step of the last
checkpoint, the CPU and wall seconds, the budget, what stopped it). SIGTERM and Ctrl-C (SIGINT) finish the step under
way, write a checkpoint and raise `Interrupted`; a second Ctrl-C stops at once. Weights are written only at
checkpoints, so a run stopped before its first one has none, and `dgm.load` refuses it.

Time budgets (`minutes` > 0): the run trains until it has used `minutes` of *process CPU time* (`time.process_time`:
the CPU seconds of this process, all its threads together, since the run started, carried over `--resume` through the
checkpoint), then ends exactly as a step-count run does (a final log line, preview grid and checkpoint). CPU time, not
wall time, so a loaded machine (other jobs on the same cores) does not shorten the training a budget buys; with T busy
threads it runs about T times faster than the wall clock. With `steps` or `epochs` also set, whichever ends first
stops the run. Under torchrun every process stops at the same step (the largest CPU time of the processes counts).

The schedule of a budget run is defined on the elapsed fraction of the budget, p = CPU seconds used / budget, read
before each step: the learning rate decays linearly from `lr_decay_start` * budget to 0 at the end of the budget (the
same rule a step-count run applies to step / steps; with both a budget and a step count, the lower factor), and
default preview grids (`sample_every=0`) are drawn at each eighth of the budget. `warmup_steps` stays in steps, and the
EMA warm-up, decay = min(ema_decay, (1 + step) / (10 + step)), depends on the step alone, so neither needs the length
of the run. A budget run is therefore not repeatable step for step (the step a fraction is reached depends on the
machine), but it resumes exactly where its checkpoint left it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dgm.data import Batches
from dgm.grids import save_grid
from dgm.io import (CONFIG, FINISHED, LOCK, UNFINISHED, WEIGHTS, RunError, RunLock, atomic_write, check_device_name,
                    model_config_dict, resolve_device, save, write_config)
from dgm.hardware import resolve_precision
from dgm.memory import tune_allocator
from dgm.progress import bar_interval

__all__ = ["TrainConfig", "Trainer", "NonFiniteLoss", "Interrupted", "ResumeMismatch", "RESUMABLE", "log_key",
           "resolve_device", "make_optimizer", "dist_info"]

# The clocks a time budget and the logs read; module attributes so tests can drive them deterministically.
_cpu_clock = time.process_time
_wall_clock = time.perf_counter


@dataclass
class TrainConfig:
    """Training options. Every field is range-checked on construction (ValueError naming the field), so a bad value
    is refused before anything is built or trained."""
    steps: int = 0                 # total optimisation steps; 0 -> derived from epochs (or from the budget)
    epochs: float = 0.0            # used when steps == 0 (default 1 epoch if steps, epochs and minutes are 0)
    minutes: float = 0.0           # > 0: train for this many minutes of process CPU time (module docstring)
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
    precision: str = "fp32"        # "fp32", "bf16" (autocast, CPU or GPU), "fp16" (autocast + GradScaler, GPU) or
                                   # "auto": bf16 where the device runs it in hardware (dgm.hardware), else fp32
    device: str = "auto"           # "auto", "cpu", "cuda", "cuda:1", ...
    log_every: int = 50
    sample_every: int = 0          # 0 -> about 8 grids over the run
    ckpt_every: int = 500
    compile: bool = False          # torch.compile the model (costs seconds up front)

    def __post_init__(self):
        def bad(name, what):
            raise ValueError(f"train option {name} must be {what}, got {getattr(self, name)!r}")

        def integer(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                bad(name, f"an integer >= {lo}")

        def number(name, ok, what):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                bad(name, what)
            setattr(self, name, float(v))

        for name in ("steps", "warmup_steps", "sample_every"):
            integer(name, 0)
        for name in ("batch_size", "log_every", "ckpt_every"):
            integer(name, 1)
        integer("seed", 0)
        number("epochs", lambda v: v >= 0, "a finite number >= 0")
        number("minutes", lambda v: v >= 0, "a finite number >= 0 (minutes of process CPU time)")
        number("lr", lambda v: v > 0, "a finite number > 0")
        number("weight_decay", lambda v: v >= 0, "a finite number >= 0")
        number("lr_decay_start", lambda v: 0 <= v <= 1, "in [0, 1] (a fraction of the run)")
        number("ema_decay", lambda v: 0 <= v < 1, "in [0, 1) (0: no EMA)")
        number("grad_clip", lambda v: v >= 0, "a finite number >= 0 (0: no clipping)")
        b = self.betas
        if (not isinstance(b, (tuple, list)) or len(b) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b)):
            bad("betas", "two numbers in [0, 1), e.g. 0.9,0.999")
        self.betas = (float(b[0]), float(b[1]))
        if self.optimizer not in ("adam", "adamw"):
            bad("optimizer", "'adam' or 'adamw'")
        if self.precision not in ("fp32", "bf16", "fp16", "auto"):
            bad("precision", "fp32, bf16, fp16 or auto")
        if not isinstance(self.device, str):
            bad("device", "a string: auto, cpu, cuda or cuda:N")
        try:
            check_device_name(self.device)
        except ValueError:
            bad("device", "auto, cpu, cuda or cuda:N")
        if not isinstance(self.compile, bool):
            bad("compile", "true or false")


# Train options a resumed run may change (the schedule, its length and how often it writes); every other option
# shapes the saved state (batches, optimiser, EMA, RNG) and must match the checkpoint.
RESUMABLE = frozenset({"steps", "epochs", "minutes", "lr", "warmup_steps", "lr_decay_start", "grad_clip", "log_every",
                       "sample_every", "ckpt_every", "device", "compile"})


class NonFiniteLoss(RuntimeError):
    """Raised when a loss becomes NaN/inf; the last good checkpoint is left as it was."""


class ResumeMismatch(RunError):
    """`resume` was asked with a model, dataset or train option that differs from the checkpoint's."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or Ctrl-C stopped training at a step boundary, after a checkpoint (when any step had finished since
    the last one). A KeyboardInterrupt, so `except Exception` does not swallow it; `signum` is the signal's number."""

    def __init__(self, signum: int, step: int, checkpoint_step: int | None, out: Path):
        self.signum, self.step, self.checkpoint_step, self.out = signum, step, checkpoint_step, out
        name = signal.Signals(signum).name
        if checkpoint_step is None:
            msg = (f"stopped by {name} before the first step finished: nothing was trained, {out} is marked "
                   f"unfinished")
        else:
            msg = f"stopped by {name} at step {step}: checkpoint at step {checkpoint_step} in {out}; continue with --resume"
        super().__init__(msg)


def log_key(phases: tuple[str, ...], phase: str, name: str) -> str:
    """The metrics.jsonl key of a logged loss entry: the name alone for one-phase families, else "phase/name".
    Figures and health checks build keys with this, never by hand."""
    return name if len(phases) == 1 else f"{phase}/{name}"


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
    the default implementation. Same update up to float rounding, several times faster on a CPU
    (benchmarks/results/history.md, "Speed notes")."""
    params = list(params)
    try:
        return cls(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device/dtype without a fused kernel
        return cls(params, **options)


# What a run folder holds that a fresh run replaces (with overwrite=True), besides the figures (*.png, *.gif).
RUN_FILES = (CONFIG, WEIGHTS, "checkpoint.pt", "metrics.jsonl", "eval.json")


def _normal(obj):
    """JSON round trip: tuples -> lists, so configs compare as they are stored."""
    return json.loads(json.dumps(obj, default=str))


def _diff(saved: dict, now: dict, keys=None) -> list[str]:
    keys = sorted(set(saved) | set(now)) if keys is None else keys
    return [f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in keys if saved.get(k) != now.get(k)]


class Trainer:
    """Train `model` on `data` into the run folder `out_dir` (see the module docstring for the folder's life).

    A fresh run (`fit()` without resume) refuses a folder that already holds a run (config.json, weights, checkpoint
    or metrics.jsonl) unless `overwrite=True`, which first removes that run's files: config.json, model.safetensors,
    checkpoint.pt, metrics.jsonl, eval.json, samples/step_*.png and the figures (*.png, *.gif) beside them. Other
    files in the folder are left alone."""

    def __init__(self, model, data, config: TrainConfig, out_dir: str | os.PathLike,
                 extra_config: dict[str, Any] | None = None, progress: bool = True, overwrite: bool = False,
                 on_start=None):
        self.cfg = c = config
        self.on_start = on_start  # called once the folder is locked and checked and the run is about to train
        self.out = Path(out_dir)
        self.extra = extra_config or {}
        self.progress = progress
        self.overwrite = overwrite
        self.device = resolve_device(c.device)
        if self.device.type == "cpu":
            tune_allocator()
        init_distributed(self.device)
        self.rank, self.world = dist_info()
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if c.precision == "auto":  # settled here, once: config.json records what ran, so a resume runs the same
            c.precision = resolve_precision("auto", self.device)
        if c.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 on CPU")
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
        # The step count that ends the run; None for a time budget alone (minutes > 0, no steps or epochs).
        self.budget = c.minutes * 60.0 if c.minutes > 0 else None
        if c.steps:
            self.total = c.steps
        elif c.epochs or self.budget is None:
            self.total = max(1, math.ceil((c.epochs or 1.0) * len(self.batches) / draws_per_step))
        else:
            self.total = None
        self.opts = {}
        for phase in model.phases:
            o = {"lr": c.lr, "betas": tuple(c.betas), "weight_decay": c.weight_decay, **model.phase_options(phase)}
            o["lr"] = o["lr"] * o.pop("lr_scale", 1.0)  # a phase may scale the train lr instead of replacing it
            cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
            self.opts[phase] = make_optimizer(cls, model.phase_parameters(phase), **o)
        self.base_lrs = {p: [g["lr"] for g in o.param_groups] for p, o in self.opts.items()}
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if c.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda") if c.precision == "fp16" else None
        self.step = 0
        self.draw = 0  # batches consumed so far (a phase may draw several per step)
        self.cpu_seconds = 0.0   # process CPU time spent training, over all resumes (what a budget counts)
        self.wall_seconds = 0.0  # wall time spent training, over all resumes
        self.ckpt_step: int | None = None  # step of the last checkpoint written or loaded
        self.stopped_by: str | None = None  # "steps", "budget" or a signal's name, once the loop has ended
        self.ckpt_path = self.out / "checkpoint.pt"
        self.fwd = torch.compile(model.loss) if c.compile else model.loss
        self._signal: int | None = None

    # -- pieces ----------------------------------------------------------------------------------------------
    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def budget_fraction(self) -> float:
        """Share of the time budget used so far (0 without a budget)."""
        return min(1.0, self.cpu_seconds / self.budget) if self.budget else 0.0

    def lr_factor(self, step: int) -> float:
        c = self.cfg
        f = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        if c.lr_decay_start < 1.0:
            decay = 1.0
            if self.total is not None:
                start = c.lr_decay_start * self.total
                if step >= start:
                    decay = max(0.0, 1.0 - (step - start) / max(1.0, self.total - start))
            if self.budget is not None:
                p = self.budget_fraction()
                if p >= c.lr_decay_start:
                    decay = min(decay, max(0.0, 1.0 - (p - c.lr_decay_start) / (1.0 - c.lr_decay_start)))
            f *= decay
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

    # -- the run folder --------------------------------------------------------------------------------------
    def holds_run(self) -> list[str]:
        """The files of an earlier run in the folder (empty when there are none)."""
        return [n for n in RUN_FILES if (self.out / n).exists()]

    def clear_run(self) -> None:
        """Remove the files an earlier run wrote here (overwrite=True); nothing else."""
        doomed = [self.out / n for n in RUN_FILES]
        doomed += sorted((self.out / "samples").glob("step_*.png")) if (self.out / "samples").is_dir() else []
        doomed += sorted(self.out.glob("*.png")) + sorted(self.out.glob("*.gif")) + [self.out / "gan_health.json"]
        for p in doomed:
            if p.is_file():
                p.unlink()

    def progress_info(self) -> dict[str, Any]:
        return {"checkpoint_step": self.ckpt_step, "steps": self.total, "cpu_seconds": round(self.cpu_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3),
                "budget_cpu_seconds": self.budget, "stopped_by": self.stopped_by}

    def write_run_config(self, status: str) -> None:
        """config.json: the model, the train config, the caller's extra (data), the run's status and progress."""
        if self.rank == 0:
            write_config(self.model, self.out, {"train": dataclasses.asdict(self.cfg), **self.extra,
                                                "status": status, "progress": self.progress_info()})

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s = {"step": self.step, "draw": self.draw, "model": self.model.state_dict(),
             "opts": {p: o.state_dict() for p, o in self.opts.items()},
             "rng_cpu": torch.get_rng_state(), "train_config": json.dumps(dataclasses.asdict(self.cfg)),
             "cpu_seconds": float(self.cpu_seconds), "wall_seconds": float(self.wall_seconds),
             "run_config": json.dumps({**model_config_dict(self.model), "data": self.extra.get("data")}, default=str)}
        if torch.cuda.is_available() and self.device.type == "cuda":
            s["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.ema is not None:
            s["ema"] = self.ema.state_dict()
        if self.scaler is not None:
            s["scaler"] = self.scaler.state_dict()
        return s

    def save_checkpoint(self) -> None:
        """checkpoint.pt, then the weights, then config.json (status unfinished, this step), each written atomically.
        A kill between them leaves the previous, consistent files."""
        self.ckpt_step = self.step
        if self.rank != 0:
            return
        atomic_write(self.ckpt_path, lambda tmp: torch.save(self.state(), tmp))
        save(self.eval_model, self.out, weights_only=True)
        self.write_run_config(UNFINISHED)

    def check_resume(self, s: dict[str, Any]) -> None:
        """The checkpoint must come from the same family, model config and dataset, and agree on every train option
        outside RESUMABLE; otherwise a ResumeMismatch says what differs."""
        if "run_config" in s:
            saved = json.loads(s["run_config"])
        else:  # a checkpoint from before dgm stored this: compare with config.json
            try:
                saved = json.loads((self.out / CONFIG).read_text())
            except (OSError, ValueError):
                saved = {}
        now = _normal({**model_config_dict(self.model), "data": self.extra.get("data")})
        what = []
        if saved.get("family", now["family"]) != now["family"]:
            what.append(f"family {saved['family']!r} (now {now['family']!r})")
        elif "model" in saved:
            # fields both know: a field added to a family later (with its default) does not block old runs
            what += [f"model {d}" for d in _diff(saved["model"], now["model"],
                                                 sorted(set(saved["model"]) & set(now["model"])))]
        if saved.get("data") and now["data"]:
            keys = [k for k in ("name", "image_size") if k in saved["data"] or k in now["data"]]
            what += [f"data {d}" for d in _diff(saved["data"], now["data"], keys)]
        train_saved = json.loads(s.get("train_config", "{}"))
        train_now = _normal(dataclasses.asdict(self.cfg))
        fixed = [k for k in train_now if k not in RESUMABLE and k in train_saved]
        what += [f"train {d}" for d in _diff(train_saved, train_now, fixed)]
        if what:
            raise ResumeMismatch(f"cannot resume {self.out}: its checkpoint was trained with " + "; ".join(what)
                                 + (f"; only {', '.join(sorted(RESUMABLE))} may change on resume" if any(
                                     w.startswith("train ") for w in what) else "")
                                 + "; start a fresh run (overwrite) or use another folder")

    def load_checkpoint(self) -> None:
        if not self.ckpt_path.is_file():
            if (self.out / CONFIG).is_file():
                raise RunError(f"cannot resume {self.out}: it has no checkpoint (the run stopped before its first "
                               f"one); start it again with overwrite")
            raise RunError(f"cannot resume: {self.ckpt_path} not found")
        try:
            s = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        except Exception as e:  # a truncated or foreign file
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise RunError(f"cannot resume: {self.ckpt_path} is unreadable, truncated or not a dgm checkpoint "
                           f"({why})") from None
        self.check_resume(s)
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
        self.cpu_seconds = float(s.get("cpu_seconds", 0.0))
        self.wall_seconds = float(s.get("wall_seconds", 0.0))
        self.ckpt_step = self.step
        if self.rank == 0:
            self.truncate_log()

    def truncate_log(self) -> None:
        """Keep only the metrics.jsonl lines up to the checkpoint's step (the killed run's later lines would make the
        loss curves zig-zag), dropping a torn last line (a kill mid-write) with a warning."""
        log = self.out / "metrics.jsonl"
        if not log.is_file():
            return
        lines = log.read_bytes().decode("utf-8", "replace").splitlines()
        keep, torn = [], []
        for i, ln in enumerate(lines, 1):
            if not ln.strip():
                continue
            try:
                row = json.loads(ln)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                torn.append(i)
                continue
            if step <= self.step:
                keep.append(ln)
        if torn:
            where = "its last line" if torn == [len(lines)] else f"line{'s' if len(torn) > 1 else ''} " + \
                ", ".join(map(str, torn[:5]))
            warnings.warn(f"{log}: dropped {where}, not a complete JSON row (torn by a kill mid-write)",
                          RuntimeWarning, stacklevel=3)
        atomic_write(log, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in keep)))

    # -- signals ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stop_on_signals(self):
        """While training, SIGTERM and SIGINT ask the loop to stop at the next step boundary (after a checkpoint);
        a second SIGINT raises KeyboardInterrupt at once. Main thread only (Python's rule); handlers are restored. A
        signal the process was started ignoring stays ignored (Unix custom: `cmd &` in a script ignores SIGINT)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._signal = signum
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)
                    if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)

    def _tick(self, clock: bool = True) -> bool:
        """Update the CPU/wall counters (once per step) and agree across processes on them and on a stop request."""
        if clock:
            self.cpu_seconds = self._cpu_base + (_cpu_clock() - self._cpu0)
            self.wall_seconds = self._wall_base + (_wall_clock() - self._wall0)
        stop = self._signal is not None
        if self.world > 1:
            dev = self.device if self.device.type == "cuda" else torch.device("cpu")
            t = torch.tensor([self.cpu_seconds, float(stop)], dtype=torch.float64, device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            self.cpu_seconds, stop = float(t[0]), bool(t[1] > 0)
        return stop

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_at: int | None = None):
        """Train to `config.steps` (or the epochs, or the time budget). `stop_at` ends early without a final
        checkpoint (tests use it to mimic a kill). Raises RunLocked when another trainer holds the folder,
        RunError for a folder that holds a run (fresh, without overwrite) or has nothing to resume, ResumeMismatch,
        NonFiniteLoss, and Interrupted after SIGTERM / Ctrl-C."""
        lock, self._signal = None, None
        if resume and not self.out.is_dir():
            raise RunError(f"cannot resume: run folder not found: {self.out}")
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            lock = RunLock(self.out).acquire()
        try:
            with self.stop_on_signals():
                return self._fit(resume, stop_at)
        finally:
            if lock is not None:
                lock.release()

    def _start(self, resume: bool) -> None:
        """Claim the folder (refuse to replace a run without overwrite), restore a checkpoint, mark the run unfinished."""
        if self.rank == 0 and not resume:
            old = self.holds_run()
            if old and not self.overwrite:
                raise RunError(f"{self.out} already holds a run ({', '.join(old)}); continue it with --resume, "
                               f"or replace it with --overwrite (overwrite=True)")
            if old:
                self.clear_run()
        if self.rank == 0:
            (self.out / "samples").mkdir(exist_ok=True)
        if resume:
            self.load_checkpoint()
        self.stopped_by = None
        self.write_run_config(UNFINISHED)
        if resume and self.rank == 0:  # the weights on disk are the checkpoint's (a kill may have come between)
            save(self.eval_model, self.out, weights_only=True)
        if self.on_start is not None and self.rank == 0:
            self.on_start()

    def _train_step(self, sums: dict[str, float], counts: dict[str, int]) -> int:
        """One optimisation step over every phase (learning rate, phases, EMA); returns the images it saw."""
        model, seen = self.model, 0
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
                    key = log_key(model.phases, phase, k)
                    sums[key] = sums.get(key, 0.0) + float(v)
                    counts[key] = counts.get(key, 0) + 1
        if self.ema is not None:
            self.update_ema()
        self.step += 1
        return seen

    def _stop_reason(self, stop: bool) -> str | None:
        """Why the loop ends before the next step (a signal, the step count, the budget), or None to go on."""
        if stop:
            return signal.Signals(self._signal or signal.SIGTERM).name
        if self.total is not None and self.step >= self.total:
            return "steps"
        if self.budget is not None and self.cpu_seconds >= self.budget:
            return "budget"
        return None

    def _fit(self, resume: bool, stop_at: int | None):
        c, model = self.cfg, self.model
        self._start(resume)
        budget, total = self.budget, self.total
        sample_every = c.sample_every or (max(1, total // 8) if total is not None and budget is None else 0)
        next_grid = math.floor(self.budget_fraction() * 8 + 1e-9) + 1  # budget runs: the next eighth for a grid
        fixed = self.to_device(self.batches.get(0))  # same preview inputs throughout
        log_f = open(self.out / "metrics.jsonl", "a") if self.rank == 0 else None
        bar = self._bar()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t0, seen = time.perf_counter(), 0
        self._cpu_base, self._wall_base = self.cpu_seconds, self.wall_seconds
        self._cpu0, self._wall0 = _cpu_clock(), _wall_clock()
        last_grid, start_step = None, self.step
        model.train()
        try:
            stop = self._tick(clock=False)  # a signal during set-up
            while True:
                self.stopped_by = self._stop_reason(stop)
                if self.stopped_by:
                    break
                if stop_at is not None and self.step >= stop_at:
                    return model
                seen += self._train_step(sums, counts)
                stop = self._tick()
                if self.step % c.log_every == 0:
                    self._log(log_f, bar, sums, counts, seen, time.perf_counter() - t0)
                    sums, counts, t0, seen = {}, {}, time.perf_counter(), 0
                grid_due = (self.step % sample_every == 0) if sample_every else self.budget_fraction() * 8 >= next_grid
                if grid_due:
                    next_grid = math.floor(self.budget_fraction() * 8 + 1e-9) + 1
                    if self.rank == 0:
                        self.write_preview(fixed)
                        last_grid = self.step
                if self.step % c.ckpt_every == 0:
                    self.save_checkpoint()
                self._bar_update(bar)
            if stop:
                if self.step > (self.ckpt_step if self.ckpt_step is not None else 0):
                    self.save_checkpoint()
                self.write_run_config(UNFINISHED)
                raise Interrupted(self._signal or signal.SIGTERM, self.step, self.ckpt_step, self.out)
            # The end, by steps or budget: the same final log line, grid and checkpoint either way.
            if counts:
                self._log(log_f, bar, sums, counts, seen, time.perf_counter() - t0)
            if self.rank == 0 and self.step > start_step and last_grid != self.step:
                self.write_preview(fixed)
            if self.ckpt_step != self.step:
                self.save_checkpoint()
            self.write_run_config(FINISHED)
        except NonFiniteLoss:
            self.stopped_by = "non-finite loss"
            self.write_run_config(UNFINISHED)
            raise
        finally:
            if bar:
                bar.close()
            if log_f:
                log_f.close()
        return model

    def _log(self, log_f, bar, sums, counts, seen, dt) -> None:
        row = {"step": self.step, "epoch": round(self.draw / len(self.batches), 4),
               "lr": self.opts[self.model.phases[0]].param_groups[0]["lr"],
               **{k: v / counts[k] for k, v in sums.items()},
               "img_per_s": seen / dt if dt > 0 else 0.0,
               "cpu_s": round(self.cpu_seconds, 3), "wall_s": round(self.wall_seconds, 3)}
        if log_f:
            log_f.write(json.dumps(row) + "\n")
            log_f.flush()
        if bar:
            skip = ("step", "epoch", "lr", "cpu_s", "wall_s")
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in skip} | (
                {"step": self.step} if self.budget is not None else {}), refresh=False)

    def _bar(self):
        """tqdm: steps done of the total, or for a time budget CPU seconds used of the budget and the time left."""
        if not (self.progress and self.rank == 0):
            return None
        from tqdm.auto import tqdm
        if self.budget is None:
            return tqdm(total=self.total, initial=self.step, desc=f"{self.model.family}", dynamic_ncols=True,
                        mininterval=bar_interval())
        return tqdm(total=round(self.budget, 1), initial=round(min(self.cpu_seconds, self.budget), 1),
                    desc=f"{self.model.family}", unit="cpu-s", dynamic_ncols=True, mininterval=bar_interval(),
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} CPU s, {remaining} left{postfix}")

    def _bar_update(self, bar) -> None:
        if bar is None:
            return
        if self.budget is None:
            bar.update(1)
        else:
            bar.update(round(min(self.cpu_seconds, self.budget), 1) - bar.n)

    def train_phase(self, phase: str, batch) -> dict[str, float]:
        opt = self.opts[phase]
        with self.autocast():
            out = self.fwd(batch, phase)
        loss = out["loss"]
        if not torch.isfinite(loss):
            last = f"{self.ckpt_path} (step {self.ckpt_step})" if self.ckpt_step is not None else "none yet"
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
