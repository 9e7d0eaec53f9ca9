"""Save and load: config.json + model.safetensors, never pickle."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from dgm.registry import config_from_dict, get_family

FORMAT = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"


class RunError(Exception):
    """A run folder or its files are missing or unreadable."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then rename over `path`: a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
    atomic_write(path, w)


def model_config_dict(model) -> dict[str, Any]:
    return {"family": model.family, **{"model": dataclasses.asdict(model.config)}}


def save(model, run_dir: str | os.PathLike, extra: dict[str, Any] | None = None, weights_only: bool = False) -> Path:
    """Write `config.json` (family, model config, dgm version, plus `extra` such as train/data) and the weights."""
    from dgm import __version__
    run_dir = Path(run_dir)
    if not weights_only:
        cfg = {"format": FORMAT, "dgm_version": __version__, **model_config_dict(model), **(extra or {})}
        write_json(run_dir / CONFIG, cfg)
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


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild any saved model from `config.json` + `model.safetensors`, in eval mode."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    try:
        model = build(cfg)
    except (KeyError, ValueError, TypeError) as e:
        raise RunError(f"{run_dir / CONFIG}: cannot build the model: {e}") from None
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RunError(f"{weights} is missing (the run may not have reached its first checkpoint)")
    try:
        missing, unexpected = load_model(model, weights, strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise RunError(f"{weights} is corrupt or does not match config.json: {e}") from None
    if missing or unexpected:
        raise RunError(f"{weights} does not match config.json: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    model.run_config = cfg
    return model.to(device).eval()
