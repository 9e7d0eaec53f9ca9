"""What the studio knows about runs: discovery at start-up, capabilities read from each family's `capabilities()`
(dgm.serve.caps), lazily loaded models, and the statistics the sliders need. No web framework here, so tests and other
front ends can call it directly.

A run folder whose config.json is damaged (not JSON, wrong types, nested too deep, a config the family refuses) is
listed as broken with its one-line reason; it never stops discovery, and its own routes answer 409.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dgm.data.framing import content_fraction
from dgm.io import CONFIG, FORMAT, WEIGHTS, RunError, load
from dgm.serve.caps import BuildError, describe

MAX_DEPTH = 4              # how deep under RUNS_DIR to look for run folders
MAX_LOADED = 6             # models kept in memory at once (least recently used is dropped)
MAX_JSON_BYTES = 1 << 20   # config.json / eval.json read at most (a run's are a few KiB)
MAX_NESTING = 16           # levels of nesting in a run's JSON files (a config has three)


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
    caps: dict[str, Any] = field(default_factory=dict)
    _stats: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def model_config(self) -> dict[str, Any]:
        mc = self.config.get("model")
        return mc if isinstance(mc, dict) else {}

    @property
    def family(self) -> str | None:
        f = self.config.get("family")
        return f if isinstance(f, str) else None

    @property
    def dataset(self) -> str:
        d = self.config.get("data")
        name = d.get("name") if isinstance(d, dict) else None
        return name if isinstance(name, str) else "?"

    def capabilities(self) -> dict[str, Any]:
        """What the page may offer for this run (from the family's capabilities(), found at discovery)."""
        return self.caps

    def files(self) -> dict[str, Path]:
        """Pictures in the run folder (top level), by file name: the only files a request can reach."""
        try:
            return {p.name: p for p in sorted(self.path.iterdir())
                    if p.suffix.lower() in (".png", ".gif") and p.is_file() and not p.is_symlink()}
        except OSError:
            return {}

    def eval_results(self) -> dict[str, Any]:
        """eval.json's metrics ({"value": finite number, ...}); anything else in the file is left out."""
        try:
            res = read_json(self.path / "eval.json")
        except (OSError, ValueError):
            return {}
        if not isinstance(res, dict):
            return {}
        return {k: finite(v) for k, v in res.items() if isinstance(v, dict) and _number(v.get("value"))}

    def last_log(self) -> dict[str, Any]:
        """The last line of metrics.jsonl (step, losses), read from the end so large logs stay cheap."""
        try:
            with open(self.path / "metrics.jsonl", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            last = parse_json(lines[-1]) if lines else {}
        except (OSError, ValueError, IndexError):
            return {}
        return finite(last) if isinstance(last, dict) else {}

    @property
    def step(self) -> int | None:
        """The last logged training step."""
        s = self.last_log().get("step")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "family": self.family, "dataset": self.dataset,
                "error": self.error, "capabilities": self.caps, "eval": self.eval_results(), "step": self.step}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- reading a run's JSON files defensively ----------------------------------------------------------------------
def _depth_ok(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def parse_json(text: str | bytes) -> Any:
    """json.loads that refuses deep nesting (ValueError), whatever the parser's own recursion limit."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_NESTING} levels") from None
    if not _depth_ok(obj, MAX_NESTING):
        raise ValueError(f"nested deeper than {MAX_NESTING} levels")
    return obj


def read_json(path: Path) -> Any:
    """A small JSON file (at most MAX_JSON_BYTES); a missing file is {}; OSError or ValueError say what is wrong."""
    if not path.is_file():
        return {}
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
    try:
        return parse_json(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON ({e})") from None


def check_config(cfg: Any) -> str | None:
    """Why a parsed config.json cannot be a dgm run (the types `dgm.io.save` writes), or None when it can."""
    if not isinstance(cfg, dict):
        return f"{CONFIG} must hold a JSON object, not {type(cfg).__name__}"
    fmt = cfg.get("format", FORMAT)
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        return f"{CONFIG}: 'format' must be a whole number, got {fmt!r:.40}"
    if fmt > FORMAT:
        return f"{CONFIG} has format {fmt}, newer than this dgm understands ({FORMAT}); upgrade dgm"
    if not isinstance(cfg.get("family"), str):
        return f"{CONFIG}: 'family' must be a name, got {cfg.get('family')!r:.40}"
    if not isinstance(cfg.get("model"), dict):
        return f"{CONFIG}: 'model' must be an object, got {cfg.get('model')!r:.40}"
    for key in ("data", "train"):
        if key in cfg and not isinstance(cfg[key], dict):
            return f"{CONFIG}: '{key}' must be an object, got {cfg[key]!r:.40}"
    name = cfg.get("data", {}).get("name", "?")
    if not isinstance(name, str):
        return f"{CONFIG}: 'data.name' must be a name, got {name!r:.40}"
    return None


# -- discovery --------------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def inspect_run(path: Path) -> tuple[dict[str, Any], type | None, dict[str, Any], str | None] | None:
    """(config, family class, capabilities, error) for a folder with config.json and weights; None when the config is
    another tool's (a JSON object with neither 'family' nor 'model'). Never raises: a damaged run has an error."""
    from dgm.registry import get_family
    try:
        cfg = read_json(path / CONFIG)
    except (OSError, ValueError) as e:
        return {}, None, {}, one_line(f"{CONFIG}: {e}")
    if isinstance(cfg, dict) and "family" not in cfg and "model" not in cfg:
        return None
    why = check_config(cfg)
    if why:
        return (cfg if isinstance(cfg, dict) else {}), None, {}, one_line(why)
    try:
        cls = get_family(cfg["family"])
    except KeyError as e:
        return cfg, None, {}, one_line(str(e).strip("'\""))
    try:
        size = (path / WEIGHTS).stat().st_size
        return cfg, cls, describe(cls, cfg["model"], size), None
    except (BuildError, OSError) as e:
        return cfg, cls, {}, one_line(e)


def _walk(root: Path):
    """Folders at or under root (at most MAX_DEPTH levels down) holding config.json and model.safetensors."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
        if CONFIG in filenames and WEIGHTS in filenames:
            dirnames[:] = []  # a run's own subfolders (samples/) hold no runs
            yield here


def find_runs(root: str | os.PathLike) -> dict[str, Run]:
    """Every run folder (config.json + model.safetensors) at or under `root`, by id; damaged ones with an error."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise RunError(f"runs folder not found: {root}")
    found: dict[str, Run] = {}
    for here in _walk(root):
        info = inspect_run(here)
        if info is None:
            continue
        rel = here.relative_to(root).as_posix()
        name = rel if rel != "." else here.name
        rid, k = _slug(name.replace("/", ".")), 2
        while rid in found:
            rid, k = f"{_slug(name.replace('/', '.'))}-{k}", k + 1
        cfg, cls, caps, err = info
        found[rid] = Run(rid, name, here, cfg, cls, err, caps)
    return found


# -- the studio: runs + loaded models ----------------------------------------------------------------------------
class Studio:
    """Runs found under `root`, models loaded on first use (at most MAX_LOADED kept), and the sliders' statistics."""

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
            old = self.runs.get(rid)
            if old is not None and old.path == run.path and old.config == run.config and old.error == run.error:
                new[rid] = old  # unchanged: keeps its loaded model and slider statistics
        with self._lock:
            stale = [r for r in self._models if new.get(r) is not self.runs.get(r)]
            self.runs = new
            for rid in stale:
                del self._models[rid]

    def run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise StudioError(404, one_line(f"unknown run {run_id!r}; known runs: "
                                             f"{', '.join(sorted(self.runs)) or 'none'}"))
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
            raise StudioError(409, one_line(e)) from None
        except Exception as e:  # noqa: BLE001  (a config that builds on the meta device but not for real)
            raise StudioError(409, one_line(f"run {run_id!r} cannot be loaded: {type(e).__name__}: {e}")) from None
        with self._lock:
            self._models[run_id] = m
            while len(self._models) > MAX_LOADED:
                self._models.popitem(last=False)
        return m

    def test_images(self, run: Run, n: int = 256) -> torch.Tensor | None:
        """A few test images of the run's dataset in [0, 1], or None when the data cannot be read here."""
        try:
            from dgm.data import to_float
            from dgm.tasks import run_data
            data = run_data(run.path, "test", self.data_dir)
            return to_float(data.images[:n])
        except Exception:  # noqa: BLE001  (optional: without test images the sliders use the model's own prior)
            return None

    def latent_stats(self, run_id: str) -> dict[str, Any]:
        """Per-dimension statistics for the sliders, computed once per run (see `latent_statistics`)."""
        run = self.run(run_id)
        if run._stats is None:
            model = self.model(run_id)
            x = self.test_images(run) if run.caps.get("encode") else None
            run._stats = finite(latent_statistics(model, run.caps, x))
        return run._stats

    def summary(self, run_id: str) -> dict[str, Any]:
        run = self.run(run_id)
        s = run.summary()
        s.update(config=finite(run.config), figures=sorted(run.files()), last_log=run.last_log())
        return s


@torch.inference_mode()
def latent_statistics(model, caps: dict[str, Any], x: torch.Tensor | None) -> dict[str, Any]:
    """Slider order and ranges. With a posterior q(z|x) = N(mu, diag(exp(logvar))) the dimensions are sorted by their
    average KL(q(z_d|x) || N(0, 1)) over test images (the dimensions the model uses first, Burgess et al. 2018 sec. 4);
    with a plain code they are sorted by the code's variance over the test images. Slider ranges are mean +- 3 std of
    the codes (the prior's +-3 for a posterior model, the codes `sample_latent` draws without test images)."""
    d = caps["latent_dim"]
    mean, std, score, how, margin = torch.zeros(d), torch.ones(d), torch.zeros(d), "index", None
    if x is not None and caps.get("posterior"):
        mu, logvar = (t.float().cpu() for t in model.posterior(x.to(model.device)))
        score, how = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0), "kl"  # K&W 2014, app. B
    elif x is not None:
        mu = model.encode(x.to(model.device)).float().cpu()
        mean, std = mu.mean(0), mu.std(0).clamp_min(1e-3)
        score, how = mu.var(0), "variance"
    else:
        z = model.sample_latent(1024, generator=torch.Generator().manual_seed(0)).float().cpu()
        mean, std = z.mean(0), z.std(0).clamp_min(1e-3)
    if x is not None:
        margin = content_fraction(x)
    order = torch.argsort(score, descending=True, stable=True).tolist()
    return {"order": order, "score": [float(score[i]) for i in order], "sorted_by": how,
            "mean": mean.tolist(), "std": std.tolist(), "content_fraction": margin}


def finite(obj: Any) -> Any:
    """A copy with NaN and infinities as None: JSON has no such numbers (a diverged run's log may hold them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
