"""Did a finished run learn anything? Plain checks on a run folder, so that `dgm train` (and `dgm demo`) can end
with a warning instead of only "run written" when the model is degenerate:

- a non-finite number in metrics.jsonl;
- a VAE with no active latent units at the end (posterior collapse: the decoder ignores z);
- a one-phase model whose loss did not improve (the first logged loss is no higher than the last);
- samples all alike: their mean pairwise distance is under `ALIKE` of that of real test images;
- the GAN health check's own warnings (gan_health.json: D winning outright, mode collapse).

    from dgm.figures.health import run_problems, last_line
    run_problems("runs/vae_mnist")      # [] or ["no active latent units ...", ...]
    print(last_line("runs/vae_mnist"))  # "run written to ..." plus a warning when there is a problem
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from dgm.data import DataError, load_dataset, to_float
from dgm.figures.plots import read_metrics
from dgm.io import load, read_config

ALIKE = 0.25       # samples closer together than this fraction of real images' distances are "all alike"
N_SAMPLES = 32


def _loss_key(rows: list[dict]) -> str | None:
    keys = [k for k in rows[0] if k == "loss" or k.endswith("/loss")]
    return "loss" if keys == ["loss"] else None  # adversarial losses (several phases) need not go down


def log_problems(rows: list[dict]) -> list[str]:
    """What metrics.jsonl rows say is wrong (no model needed)."""
    if not rows:
        return ["metrics.jsonl is empty: the run logged nothing (fewer steps than log_every?)"]
    out = []
    bad = sorted({k for r in rows for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)})
    if bad:
        out.append(f"non-finite values logged for {', '.join(bad)}")
    last = rows[-1]
    if "active_units" in last and last["active_units"] < 0.5:
        out.append("no active latent units at the end (posterior collapse: the decoder ignores z, every sample "
                   "looks the same); try a lower beta, a KL warm-up or more steps")
    key = _loss_key(rows)
    if key and len(rows) >= 2 and all(key in r for r in (rows[0], rows[-1])):
        first, end = rows[0][key], rows[-1][key]
        if math.isfinite(first) and math.isfinite(end) and end >= first:
            out.append(f"the loss did not improve (first logged {first:.4g} at step {rows[0]['step']}, last "
                       f"{end:.4g} at step {last['step']}); try a lower lr or more steps")
    return out


@torch.inference_mode()
def sample_diversity(model, data, n: int = N_SAMPLES, seed: int = 0) -> float | None:
    """Mean pairwise L2 distance of `n` samples over that of `n` random test images (1: as varied as the data,
    ~0: every sample the same); None when the model does not sample or there are too few images."""
    if "sample" not in model.capabilities() or data is None or len(data) < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(data))
    fake = model.sample(n, generator=g).float().flatten(1).cpu()
    real = to_float(data.images[torch.randperm(len(data), generator=g)[:n]]).flatten(1)
    if fake.shape[1] != real.shape[1]:
        return None
    return float(torch.pdist(fake).mean() / torch.pdist(real).mean().clamp_min(1e-8))


def _test_data(run_dir: Path):
    d = read_config(run_dir).get("data", {})
    try:
        return load_dataset(d["name"], "test", data_dir=d.get("data_dir"), image_size=d.get("image_size"),
                            download=False)
    except (DataError, KeyError, OSError, ValueError):
        return None


def run_problems(run_dir: str | os.PathLike, model=None, data=None) -> list[str]:
    """Every problem the checks above find in a finished run folder ([] when none). `model` (else loaded from the
    folder) and `data` (its test split, else loaded as config.json names it) save the loading when at hand."""
    run_dir = Path(run_dir)
    out = log_problems(read_metrics(run_dir))
    health = run_dir / "gan_health.json"
    if health.is_file():
        try:
            out += [str(w) for w in json.loads(health.read_text()).get("warnings", [])]
        except (OSError, ValueError):
            pass
    if model is None:
        model = load(run_dir)
    model.eval()
    if "sample" in model.capabilities():
        ratio = sample_diversity(model, data if data is not None else _test_data(run_dir))
        if ratio is not None and ratio < ALIKE and not any("diversity" in p for p in out):
            out.append(f"the samples are all alike (mean pairwise distance {ratio:.2f}x that of real test "
                       f"images)")
    return out


def last_line(run_dir: str | os.PathLike, model=None, data=None) -> str:
    """The line `dgm train` ends with: where the run is, and what looks degenerate about it, if anything."""
    run_dir = Path(run_dir)
    done = f"run written to {run_dir}  (figures: {run_dir}/*.png, weights: {run_dir}/model.safetensors)"
    problems = run_problems(run_dir, model, data)
    if not problems:
        return done
    return (f"run written to {run_dir}, but the model looks degenerate: " + "; ".join(problems)
            + f" (see {run_dir}/loss.png and samples.png)")
