"""Save and load: config.json + model.safetensors, never pickle; durable writes; one owner per run folder."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from dgm.registry import config_from_dict, get_family

FORMAT = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
LOCK = "train.lock"
# config.json "status": "unfinished" while a run trains, or after it was stopped before its end (kill, signal, error);
# "finished" once it reached its last step or its time budget. "progress" says how far it got, e.g.
# {"checkpoint_step": 40, "cpu_seconds": ..., "wall_seconds": ..., "budget_cpu_seconds": ..., "stopped_by": ...};
# checkpoint_step null: no checkpoint yet, so no trained weights to load.
UNFINISHED, FINISHED = "unfinished", "finished"


class RunError(Exception):
    """A run folder or its files are missing, unreadable, or in a state that does not allow what was asked."""


class RunLocked(RunError):
    """Another trainer holds the run folder's lock."""


class DeviceError(ValueError):
    """The requested device does not exist on this machine or in this torch build."""


# -- durable writes -------------------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; where directories cannot be opened this is a no-op)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems do not support fsync on a directory
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except (OverflowError, ValueError):  # not a pid this system can have
        return False
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove `.NAME.<pid>.<random>.tmp` files a killed writer of `path` left behind (their pid no longer runs), and
    `.NAME.<random>.tmp` files of the earlier naming (which carried no pid)."""
    pat = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)\.)?[A-Za-z0-9_-]+\.tmp$")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pat.match(name)
        if not m or (m.group(1) is not None and _pid_alive(int(m.group(1)))):
            continue
        try:
            os.remove(path.parent / name)
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then rename over `path`: a kill or a power cut never leaves a half-written file.

    The temp file `.NAME.<pid>.<random>.tmp` sits beside `path`; it is fsynced before the rename and the folder after
    it, so once this returns the new content survives a crash. Temp files of earlier writers of `path` that were killed
    mid-write (their process no longer exists) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            break
        except FileExistsError:
            continue
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
    atomic_write(path, w)


# -- one owner per run folder ---------------------------------------------------------------------------------------
class RunLock:
    """An exclusive `fcntl.flock` on RUN/train.lock, which holds the owner's pid. The OS drops it when the process dies
    (also on kill -9), so a stale lock file never blocks a later run. A second lock on the same folder, from another
    process or this one, fails at once with a RunLocked error naming the holder."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"{self.path.parent} is in use by another trainer (pid {holder}); wait for it to "
                                f"finish or train into another folder") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# -- devices --------------------------------------------------------------------------------------------------------
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def check_device_name(name: str) -> str:
    """Syntax only: auto, cpu, mps, cuda or cuda:N. Raises ValueError naming the valid forms."""
    m = _DEVICE.match(str(name))
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA when there is one, else the CPU), 'cpu', 'mps', 'cuda', 'cuda:N' -> a torch.device that exists
    here; a DeviceError with one line saying why not otherwise."""
    if isinstance(name, torch.device):
        name = str(name)
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("mps requested but this machine or torch has no MPS (Apple GPU) backend")
        return torch.device("mps")
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise DeviceError(f"{name} requested but this torch has no CUDA (a CPU build, {torch.__version__}); "
                          f"use --device cpu or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise DeviceError(f"{name} requested but no CUDA device is visible (torch.cuda.is_available() is False; "
                          f"check the driver and CUDA_VISIBLE_DEVICES)")
    dev = torch.device(name)
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise DeviceError(f"{name} requested but only {n} CUDA device{'s' if n != 1 else ''} "
                          f"{'are' if n != 1 else 'is'} visible (cuda:0..cuda:{n - 1})")
    return dev


# -- config and weights ---------------------------------------------------------------------------------------------
def model_config_dict(model) -> dict[str, Any]:
    return {"family": model.family, **{"model": dataclasses.asdict(model.config)}}


def write_config(model, run_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `config.json`: format, dgm version, family, model config, plus `extra` (train, data, status, ...)."""
    from dgm import __version__
    cfg = {"format": FORMAT, "dgm_version": __version__, **model_config_dict(model), **(extra or {})}
    path = Path(run_dir) / CONFIG
    write_json(path, cfg)
    return path


def save(model, run_dir: str | os.PathLike, extra: dict[str, Any] | None = None, weights_only: bool = False) -> Path:
    """Write `config.json` (family, model config, dgm version, plus `extra` such as train/data) and the weights."""
    run_dir = Path(run_dir)
    if not weights_only:
        write_config(model, run_dir, extra)
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_model(model, tmp))
    return run_dir


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    if not path.is_file():
        raise RunError(f"{path} is missing: not a dgm run folder (expected {CONFIG} and {WEIGHTS})")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or "family" not in cfg or "model" not in cfg:
        raise RunError(f"{path} lacks 'family' or 'model': not a dgm run config")
    if cfg.get("format", FORMAT) > FORMAT:
        raise RunError(f"{path} has format {cfg['format']}, newer than this dgm understands ({FORMAT}); upgrade dgm")
    return cfg


def build(cfg: dict[str, Any]):
    """A fresh (untrained) model from a config dict as written by `save`."""
    cls = get_family(cfg["family"])
    return cls(config_from_dict(cls.Config, cfg["model"]))


def never_checkpointed(cfg: dict[str, Any]) -> bool:
    """True for a run the Trainer started but that stopped before its first checkpoint (no trained weights)."""
    progress = cfg.get("progress") or {}
    return cfg.get("status") == UNFINISHED and progress.get("checkpoint_step") is None


def non_finite_tensors(model) -> list[str]:
    """Names of the floating-point parameters and buffers that hold NaN or inf."""
    bad = []
    for name, t in model.state_dict().items():
        if torch.is_tensor(t) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild any saved model from `config.json` + `model.safetensors`, in eval mode.

    Refuses (RunError, one line) a run that never reached its first checkpoint and weights that hold NaN or inf."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if never_checkpointed(cfg):
        raise RunError(f"{run_dir} never reached its first checkpoint (status unfinished): it has no trained weights; "
                       f"train it again, or with a smaller ckpt_every")
    try:
        model = build(cfg)
    except (KeyError, ValueError, TypeError) as e:
        raise RunError(f"{run_dir / CONFIG}: cannot build the model: {e}") from None
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RunError(f"{weights} is missing (the run may not have reached its first checkpoint)")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    try:
        missing, unexpected = load_model(model, weights, strict=False, device=str(dev))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise RunError(f"{weights} is corrupt or does not match config.json: {e}".replace("\n", " ")) from None
    if missing or unexpected:
        raise RunError(f"{weights} does not match config.json: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    bad = non_finite_tensors(model)
    if bad:
        raise RunError(f"{weights} holds NaN or inf values in {len(bad)} tensor{'s' if len(bad) > 1 else ''} "
                       f"(first: {bad[0]}): the run diverged; retrain with a lower lr or grad_clip")
    model.run_config = cfg
    return model.to(dev).eval()
