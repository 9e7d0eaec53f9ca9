"""What the studio knows about runs: discovery at start-up, capabilities read from the family's class, lazily loaded
models, and the inference the page asks for. No web framework here, so tests and other front ends can call it directly.

Everything is decided by capability (``hasattr(model, "decode")``, ``config.latent_dim``, the keyword arguments of
``sample``), never by a family's name, so a family added later appears in the studio with no change here.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import threading
import typing
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dgm.io import CONFIG, WEIGHTS, RunError, load, read_config

# Keyword arguments of `sample` that the studio sets itself, or that tune speed rather than the picture; any other
# keyword with a default is a sampler option shown on the page.
_OWN_SAMPLE_ARGS = {"self", "n", "cond", "generator", "batch_size", "chunk", "compile", "device", "progress"}
# How a family's sampler can show its intermediate images (e.g. diffusion's denoising steps): a flag that makes it
# return (images, steps), or a per-step callback whose first 4-D tensor argument is the current x_t.
_TRAJECTORY_ARGS = ("return_trajectory", "trajectory", "return_steps", "callback")
# Options that only make sense with a class to steer towards (classifier-free guidance).
_COND_ONLY = ("guidance", "guidance_scale", "cfg_scale")
MAX_DEPTH = 4          # how deep under RUNS_DIR to look for run folders
MAX_LOADED = 6         # models kept in memory at once (least recently used is dropped)


class StudioError(Exception):
    """A request the studio cannot serve; `status` is the HTTP code, the message says what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Run:
    """One run folder found at start-up. `id` is what requests name; the path never comes from a request."""
    id: str
    name: str
    path: Path
    config: dict[str, Any]
    family_cls: type | None
    error: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    _stats: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def model_config(self) -> dict[str, Any]:
        return self.config.get("model", {})

    @property
    def dataset(self) -> str:
        return str(self.config.get("data", {}).get("name", "?"))

    def capabilities(self) -> dict[str, Any]:
        """What the page may offer for this run, from the family's class and the saved config (no weights loaded)."""
        cls, mc = self.family_cls, self.model_config
        if cls is None:
            return {}
        from dgm.models.base import GenerativeModel
        can_sample = callable(getattr(cls, "sample", None)) and cls.sample is not GenerativeModel.sample
        latent = mc.get("latent_dim")
        caps = {
            "sample": can_sample,
            "encode": hasattr(cls, "encode"),
            "decode": hasattr(cls, "decode") and isinstance(latent, int),
            "reconstruct": hasattr(cls, "reconstruct"),
            "translate": hasattr(cls, "translate"),
            "latent_dim": latent if isinstance(latent, int) else None,
            "num_classes": int(mc.get("num_classes") or 0),
            "conditional": is_conditional(cls, mc),
            "sample_options": sample_options(cls, mc) if can_sample else [],
            "trajectory": trajectory_arg(cls) is not None,
            "channels": int(mc.get("channels", 1)),
            "image_size": int(mc.get("image_size", 28)),
            "domains": domain_channels(mc) if hasattr(cls, "translate") else None,
        }
        if not caps["conditional"]:
            caps["sample_options"] = [o for o in caps["sample_options"] if o["name"] not in _COND_ONLY]
        caps.update(self.runtime)  # what loading the model found out (e.g. it cannot sample from noise)
        return caps

    def files(self) -> dict[str, Path]:
        """Pictures in the run folder (top level), by file name: the only files a request can reach."""
        try:
            return {p.name: p for p in sorted(self.path.iterdir())
                    if p.suffix.lower() in (".png", ".gif") and p.is_file() and not p.is_symlink()}
        except OSError:
            return {}

    def eval_results(self) -> dict[str, Any]:
        p = self.path / "eval.json"
        try:
            res = json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, ValueError):
            return {}
        return {k: finite(v) for k, v in res.items() if isinstance(v, dict) and isinstance(v.get("value"), (int, float))
                and math.isfinite(v["value"])}

    def last_log(self) -> dict[str, Any]:
        """The last line of metrics.jsonl (step, losses), read from the end so large logs stay cheap."""
        p = self.path / "metrics.jsonl"
        try:
            with open(p, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            return finite(json.loads(lines[-1])) if lines else {}
        except (OSError, ValueError, IndexError):
            return {}

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "family": self.config.get("family"), "dataset": self.dataset,
                "error": self.error, "capabilities": self.capabilities(), "eval": self.eval_results(),
                "step": self.last_log().get("step")}


# -- capabilities from the class ---------------------------------------------------------------------------------
def is_conditional(cls: type, model_config: dict[str, Any]) -> bool:
    """A model takes a class label when its config says so. `num_classes` alone is not enough: the Trainer fills it
    from every labelled dataset, also for unconditional families."""
    for key in ("conditional", "class_conditional", "class_cond", "cond"):
        if key in model_config:
            return bool(model_config[key]) and int(model_config.get("num_classes") or 0) > 0
    return bool(getattr(cls, "conditional", False)) and int(model_config.get("num_classes") or 0) > 0


def _choices(cls: type, name: str, annotation: Any) -> list[Any] | None:
    """Allowed values of a sample option: a Literal annotation, or a registry such as SAMPLERS / samplers on the class,
    in the family's module, or in the shared dgm.schedulers."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    import importlib
    import sys
    homes = [cls, sys.modules.get(cls.__module__)]
    try:
        homes.append(importlib.import_module("dgm.schedulers"))
    except ImportError:
        pass
    for home in homes:
        for attr in (name.upper() + "S", name + "s", name.upper() + "_CHOICES", name + "_choices"):
            v = getattr(home, attr, None)
            if isinstance(v, (tuple, list)) and v and all(isinstance(c, (str, int)) for c in v):
                return list(v)
            if isinstance(v, dict) and v and all(isinstance(c, str) for c in v):
                return list(v)
    return None


def sample_options(cls: type, model_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The extra keyword arguments of `cls.sample` (sampler, steps, guidance, ...) with their type and default.
    A default of None means "the config's value": it is looked up as `name` or `sample_name` in the model config."""
    mc = model_config or {}
    try:
        sig = inspect.signature(cls.sample)
    except (TypeError, ValueError):
        return []
    try:
        hints = typing.get_type_hints(cls.sample)
    except Exception:  # noqa: BLE001  (an annotation that does not resolve: fall back to the defaults' types)
        hints = {}
    out = []
    for name, p in sig.parameters.items():
        if name in _OWN_SAMPLE_ARGS or name in _TRAJECTORY_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty:
            continue
        default = p.default
        if default is None:
            default = mc.get(name, mc.get(f"sample_{name}"))
        choices = _choices(cls, name, hints.get(name))
        kind = "choice" if choices else ("bool" if isinstance(default, bool) else "int" if isinstance(default, int)
                                         else "float" if isinstance(default, float) else "str")
        ann = hints.get(name)
        if callable(default) or "Callable" in str(ann):
            continue
        if default is None and not choices:
            kind = "int" if "int" in str(ann) else "float" if "float" in str(ann) else "str"
        out.append({"name": name, "type": kind, "default": default, "choices": choices})
    return out


def trajectory_arg(cls: type) -> str | None:
    try:
        params = inspect.signature(cls.sample).parameters
    except (TypeError, ValueError):
        return None
    return next((a for a in _TRAJECTORY_ARGS if a in params), None)


def domain_channels(mc: dict[str, Any]) -> dict[str, int]:
    """Channels of the two domains of a translation model (channels_a/channels_b if the config has them)."""
    c = int(mc.get("channels", 1))
    return {"A": int(mc.get("channels_a") or c), "B": int(mc.get("channels_b") or c)}  # 0: same as A


# -- discovery --------------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def find_runs(root: str | os.PathLike) -> dict[str, Run]:
    """Every run folder (config.json + model.safetensors) at or under `root`, at most MAX_DEPTH levels down, by id."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise RunError(f"runs folder not found: {root}")
    from dgm.registry import get_family
    found: dict[str, Run] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
        if CONFIG not in filenames or WEIGHTS not in filenames:
            continue
        dirnames[:] = []  # a run's own subfolders (samples/) hold no runs
        try:
            cfg = read_config(here)
        except RunError:
            continue  # not a dgm run (another tool's config.json)
        rel = here.relative_to(root).as_posix()
        name = rel if rel != "." else here.name
        rid = _slug(name.replace("/", "."))
        k = 2
        while rid in found:
            rid, k = f"{_slug(name.replace('/', '.'))}-{k}", k + 1
        try:
            cls, err = get_family(cfg["family"]), None
        except KeyError as e:
            cls, err = None, str(e).strip("'\"")
        found[rid] = Run(rid, name, here, cfg, cls, err)
    return found


# -- the studio: runs + loaded models ----------------------------------------------------------------------------
class Studio:
    """Runs found under `root`, models loaded on first use (at most MAX_LOADED kept), and inference on them."""

    def __init__(self, root: str | os.PathLike, device: str = "cpu", data_dir: str | None = None):
        self.root = Path(root)
        self.device = device
        self.data_dir = data_dir
        self.runs = find_runs(root)
        self._models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def rescan(self) -> None:
        """Pick up runs written since start-up (the same root; a request never names a folder)."""
        new = find_runs(self.root)
        for rid, run in new.items():
            if rid in self.runs and self.runs[rid].path == run.path:
                new[rid] = self.runs[rid]
        with self._lock:
            self.runs = new
            for rid in [r for r in self._models if r not in new]:
                del self._models[rid]

    def run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise StudioError(404, f"unknown run {run_id!r}; known runs: {', '.join(sorted(self.runs)) or 'none'}")
        if run.error:
            raise StudioError(409, f"run {run_id!r} cannot be used: {run.error}")
        return run

    def model(self, run_id: str):
        """The run's model, loaded once (call from a worker thread: loading reads the weights)."""
        run = self.run(run_id)
        with self._lock:
            if run_id in self._models:
                self._models.move_to_end(run_id)
                return self._models[run_id]
        try:
            m = load(run.path, self.device)
        except RunError as e:
            raise StudioError(409, str(e)) from None
        if run.capabilities().get("sample"):
            # Some families implement `sample` only for an input (CycleGAN maps images to images): ask with n = 0.
            try:
                with torch.inference_mode():
                    m.sample(0, generator=torch.Generator().manual_seed(0))
            except NotImplementedError:
                run.runtime["sample"] = False
            except Exception:  # noqa: BLE001  (anything else: the real request will say what is wrong)
                pass
        with self._lock:
            self._models[run_id] = m
            while len(self._models) > MAX_LOADED:
                self._models.popitem(last=False)
        return m

    def test_images(self, run: Run, n: int = 256) -> torch.Tensor | None:
        """A few test images of the run's dataset in [0, 1], or None when the data cannot be read here."""
        from dgm.data import DataError, to_float
        from dgm.tasks import run_data
        try:
            data = run_data(run.path, "test", self.data_dir)
        except (DataError, KeyError, OSError, ValueError):
            return None
        return to_float(data.images[:n])

    def latent_stats(self, run_id: str) -> dict[str, Any]:
        """Per-dimension statistics for the sliders, computed once per run.

        With a VAE-style encoder (mu, logvar) the dimensions are sorted by their average KL(q(z_d|x) || N(0, 1))
        over test images (the dimensions the model uses first, Burgess et al. 2018 sec. 4); with a plain code they are
        sorted by the code's variance over the test images. Slider ranges are mean +- 3 std of the codes (the prior's
        +-3 for a VAE).
        """
        run = self.run(run_id)
        if run._stats is not None:
            return run._stats
        model = self.model(run_id)
        d = run.model_config["latent_dim"]
        x = self.test_images(run) if hasattr(model, "encode") else None
        mean, std, score, how = torch.zeros(d), torch.ones(d), torch.zeros(d), "index"
        margin = None
        if x is not None:
            with torch.inference_mode():
                out = model.encode(x.to(model.device))
            if isinstance(out, tuple) and len(out) == 2:
                mu, logvar = (t.float().cpu() for t in out)
                score = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0)  # KL per dim (K&W 2014, app. B)
                how = "kl"
            else:
                mu = (out[0] if isinstance(out, tuple) else out).float().cpu()
                mean, std = mu.mean(0), mu.std(0).clamp_min(1e-3)
                score, how = mu.var(0), "variance"
            margin = content_fraction(x)
        elif hasattr(model, "code_mean") and hasattr(model, "code_var"):
            mean, std = model.code_mean.float().cpu(), model.code_var.float().cpu().sqrt().clamp_min(1e-3)
        order = torch.argsort(score, descending=True, stable=True).tolist()
        run._stats = finite({"order": order, "score": [float(score[i]) for i in order], "sorted_by": how,
                             "mean": mean.tolist(), "std": std.tolist(), "content_fraction": margin})
        return run._stats

    def summary(self, run_id: str) -> dict[str, Any]:
        run = self.run(run_id)
        s = run.summary()
        s.update(config=finite(run.config), figures=sorted(run.files()), last_log=run.last_log())
        return s


def finite(obj: Any) -> Any:
    """A copy with NaN and infinities as None: JSON has no such numbers (a diverged run's log may hold them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def content_fraction(x01: torch.Tensor) -> float:
    """How much of the frame a dataset's object fills (mean bounding-box side / image side), so drawn or uploaded
    images are framed like the training data (MNIST: a 20-pixel digit in a 28-pixel box, ~0.7)."""
    g = x01.mean(1)  # (N, H, W)
    on = g > 0.25 * g.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    rows, cols = on.any(2), on.any(1)  # (N, H), (N, W)
    fr = []
    for r, c in zip(rows, cols):
        if r.any() and c.any():
            ri, ci = r.nonzero().flatten(), c.nonzero().flatten()
            fr.append(max(int(ri[-1] - ri[0]) + 1, int(ci[-1] - ci[0]) + 1) / g.shape[-1])
    return float(sum(fr) / len(fr)) if fr else 0.8
