"""`dgm evaluate`: a registry of metrics; each applies to the models that have what it needs, and reports its protocol.

A metric is fn(model, ctx) -> {name: {"value": float, **protocol}}. Results are merged into the run's eval.json.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dgm.data import ImageData, binarize, load_dataset, to_float
from dgm.io import load, read_config, write_json

METRICS: dict[str, tuple[Callable, Callable, bool]] = {}
# Modules that register more metrics, imported when metrics are first needed (a module not written yet is absent).
_PLUGINS = ("dgm.metrics.sample_quality", "dgm.metrics.disentanglement")


def _import_plugins() -> None:
    from dgm.registry import import_modules
    import_modules(_PLUGINS)


def metric(name: str, applies: Callable = lambda m: True, default: bool = True):
    """Register a metric; `applies(model)` says whether it makes sense for that model, `default` whether it runs
    when the user names none."""
    def deco(fn):
        METRICS[name] = (fn, applies, default)
        return fn
    return deco


@dataclass
class EvalContext:
    run_dir: Path
    config: dict[str, Any]
    n: int = 10_000
    seed: int = 0
    data_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, ImageData] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)  # things metrics share in one call (e.g. generated samples)

    def data(self, split: str) -> ImageData:
        if split not in self._cache:
            d = self.config.get("data", {})
            self._cache[split] = load_dataset(d["name"], split, data_dir=self.data_dir or d.get("data_dir"),
                                              image_size=d.get("image_size"))
        return self._cache[split]


def fixed_binarisation(x01: torch.Tensor, seed: int) -> torch.Tensor:
    """One binarisation of a test set drawn with a fixed seed (EVALUATION.md), the same every time."""
    return binarize(x01, torch.Generator().manual_seed(seed))


def prepared_test_set(model, ctx: EvalContext) -> tuple[torch.Tensor, str]:
    x = to_float(ctx.data("test").images[: ctx.n])
    c = model.config
    if getattr(c, "likelihood", None) == "bernoulli" and getattr(c, "binarize", False):
        return fixed_binarisation(x, ctx.seed), f"fixed binarisation (seed {ctx.seed})"
    return x, "grayscale intensities in [0, 1]"


@metric("elbo", applies=lambda m: "elbo" in m.capabilities())
def _elbo(model, ctx):
    x, how = prepared_test_set(model, ctx)
    torch.manual_seed(ctx.seed)
    vals = torch.cat([model.elbo(x[i:i + 500].to(model.device)).cpu() for i in range(0, len(x), 500)])
    return {"test_elbo": {"value": float(vals.mean()), "unit": "nats", "split": "test", "n": len(x), "data": how,
                          "protocol": "one z sample per image"}}


@metric("nll", applies=lambda m: "nll" in m.capabilities())
def _nll(model, ctx):
    k = int(ctx.options.get("k", 5000))
    n = int(ctx.options.get("nll_n", ctx.n))
    x, how = prepared_test_set(model, ctx)
    x = x[:n]
    torch.manual_seed(ctx.seed)
    bs = max(1, 20_000 // max(1, min(k, 500)))  # keep (chunk x batch) decoder calls bounded
    from tqdm.auto import tqdm
    vals = torch.cat([model.nll(x[i:i + bs].to(model.device), k=k).cpu()
                      for i in tqdm(range(0, len(x), bs), desc=f"IWAE k={k}", leave=False)])
    return {"test_nll": {"value": float(vals.mean()), "unit": "nats", "split": "test", "n": len(x), "k": k,
                         "data": how, "protocol": "IWAE estimate (Burda et al. 2015)"}}





@metric("bpd", applies=lambda m: "bits_per_dim" in m.capabilities())
def _bpd(model, ctx):
    """Variational bound in bits/dim on the test split; K stratified timesteps per image (all T with bpd_t=0)."""
    n = int(ctx.options.get("nll_n") or min(ctx.n, 1000))
    k = int(ctx.options.get("bpd_t", 50)) or None
    x = ctx.data("test").images[:n]
    g = torch.Generator().manual_seed(ctx.seed)
    parts = [model.vlb_terms(x[i:i + 250], k, g) for i in range(0, len(x), 250)]
    d = x[0].numel() * math.log(2)
    out = {}
    for var in ("small", "large"):
        tot = torch.cat([p[f"total_{var}"] for p in parts]).cpu() / d
        out[f"bpd_{var}"] = {"value": float(tot.mean()), "stderr": float(tot.std() / math.sqrt(len(tot))),
                             "unit": "bits/dim", "split": "test", "n": len(tot),
                             "timesteps": f"{k} stratified per image" if k else "all",
                             "prior_bpd": float(torch.cat([p["prior"] for p in parts]).mean() / d),
                             "decoder_bpd": float(torch.cat([p[f"decoder_{var}"] for p in parts]).mean() / d),
                             "protocol": f"variational bound (Ho et al. 2020 eq. 5), reverse variance {var}, "
                                         "discretised Gaussian decoder on 8-bit data"}
    best = min(("small", "large"), key=lambda v: out[f"bpd_{v}"]["value"])
    out["bpd"] = {**out[f"bpd_{best}"], "variance": best}
    return out


@metric("recon", applies=lambda m: "reconstruct" in m.capabilities())
def _recon(model, ctx):
    x = to_float(ctx.data("test").images[: ctx.n])
    with torch.inference_mode():
        err = torch.cat([((model.reconstruct(x[i:i + 500].to(model.device)).cpu() - x[i:i + 500]) ** 2)
                         .flatten(1).mean(1) for i in range(0, len(x), 500)])
    return {"recon_mse": {"value": float(err.mean()), "split": "test", "n": len(x),
                          "protocol": "per-pixel MSE of the decoded posterior mean, pixels in [0, 1]"}}


def _codes(model, data: ImageData, n: int) -> np.ndarray:
    from dgm.metrics.representation import encode_all
    return encode_all(model, data.images[:n]).numpy()


@metric("cluster", applies=lambda m: "encode" in m.capabilities())
def _cluster(model, ctx):
    from dgm.metrics.representation import kmeans_accuracy, linear_probe_accuracy
    test = ctx.data("test")
    if test.labels is None:
        return {}
    z = _codes(model, test, ctx.n)
    y = test.labels[: len(z)].numpy()
    train = ctx.data("train")
    zt = _codes(model, train, ctx.n)
    return {"kmeans_acc": {"value": kmeans_accuracy(z, y, ctx.seed), "split": "test", "n": len(z),
                           "protocol": "k-means on latent means, Hungarian match to labels"},
            "linear_probe_acc": {"value": linear_probe_accuracy(zt, train.labels[: len(zt)].numpy(), z, y),
                                 "split": "train->test", "n": len(z),
                                 "protocol": "logistic regression on latent means"}}


@metric("translation", applies=lambda m: "translate" in m.capabilities())
def _translation(model, ctx):
    from dgm.metrics.translation import translation_metric  # label preservation both ways + domain FID
    return translation_metric(model, ctx)


def evaluate(run_dir, metrics: list[str] | None = None, n: int = 10_000, seed: int = 0, data_dir=None,
             device: str = "cpu", options: dict[str, Any] | None = None, model=None) -> dict[str, Any]:
    """Run the named (or default applicable) metrics on a run and merge the results into its eval.json."""
    run_dir = Path(run_dir)
    model = model if model is not None else load(run_dir, device)
    ctx = EvalContext(run_dir, read_config(run_dir), n=n, seed=seed, data_dir=data_dir, options=options or {})
    _import_plugins()
    if metrics:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(sorted(METRICS))}")
        wrong = [m for m in metrics if not METRICS[m][1](model)]
        if wrong:
            raise ValueError(f"metric(s) {', '.join(wrong)} do not apply to a {model.family} model")
        names = metrics
    else:
        names = [m for m, (_, applies, default) in METRICS.items() if default and applies(model)]
    path = run_dir / "eval.json"
    import json
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        t0 = time.perf_counter()
        for key, rec in METRICS[name][0](model, ctx).items():
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            results[key] = rec
    write_json(path, results)
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = ["| metric | value | protocol |", "|---|---|---|"]
    for k, r in results.items():
        proto = ", ".join(f"{a}={b}" for a, b in r.items() if a not in ("value", "seconds"))
        lines.append(f"| {k} | {r['value']:.4g} | {proto} |")
    return "\n".join(lines)
