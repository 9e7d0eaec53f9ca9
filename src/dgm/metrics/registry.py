"""The metric registry: what a metric is, which models it applies to, what its numbers mean, and what it is given.

A metric is ``fn(model, ctx) -> {key: {"value": float, **protocol}}`` registered with :func:`metric`. Registration
declares, once, everything the rest of dgm reads about it:

- ``needs``: the capabilities (dgm.models.base.CAPABILITIES) a model must have, read from ``model.capabilities()``;
  ``applies``: an extra predicate for what capabilities cannot say (e.g. "is a domain classifier");
- ``default``: whether `dgm evaluate RUN` runs it when no metric is named;
- ``columns``: for each result key (or ``fnmatch`` pattern such as ``"mig_factor*"``) the direction (``LOWER`` or
  ``HIGHER`` is better), the unit and the leaderboard position (``rank``, smaller first; unranked keys follow by
  name). dgm.metrics.leaderboard and the studio read these, not tables of their own.

Metrics are registered by importing the modules in ``MODULES`` (a fixed list; a module that fails to import is an
error, never skipped) on the first look-up. Those modules import this one, never dgm.evaluate.
"""
from __future__ import annotations

import fnmatch
import importlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dgm.data import ImageData, load_dataset
from dgm.io import read_config
from dgm.models.base import CAPABILITIES

LOWER, HIGHER = "lower", "higher"

# The modules that register metrics (imported on first look-up, in this order; the order is `dgm evaluate`'s).
MODULES = ("dgm.metrics.likelihood", "dgm.metrics.representation", "dgm.metrics.sample_quality",
           "dgm.metrics.translation", "dgm.metrics.disentanglement", "dgm.metrics.classifier")


@dataclass(frozen=True)
class Column:
    """How to read one result key: ``better`` is LOWER, HIGHER or None (no direction), ``rank`` orders leaderboards."""
    key: str
    better: str | None = None
    unit: str = ""
    rank: float = math.inf

    def __post_init__(self):
        if self.better not in (LOWER, HIGHER, None):
            raise ValueError(f"column {self.key!r}: better must be {LOWER!r}, {HIGHER!r} or None, got {self.better!r}")

    @property
    def pattern(self) -> bool:
        return any(ch in self.key for ch in "*?[")


def col(key: str, better: str | None = None, unit: str = "", rank: float = math.inf) -> Column:
    return Column(key, better, unit, rank)


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Any, "EvalContext"], dict[str, dict]]
    needs: frozenset[str] = frozenset()
    predicate: Callable[[Any], bool] | None = None
    default: bool = True
    columns: tuple[Column, ...] = ()
    doc: str = ""

    def applies(self, model) -> bool:
        """Does this metric make sense for `model`? Its capabilities first, then the extra predicate."""
        if not self.needs <= model.capabilities():
            return False
        return self.predicate is None or bool(self.predicate(model))

    def __call__(self, model, ctx: "EvalContext") -> dict[str, dict]:
        return self.fn(model, ctx)


_METRICS: dict[str, Metric] = {}
_loaded = False


def metric(name: str, *, needs: tuple[str, ...] | frozenset[str] = (), applies: Callable[[Any], bool] | None = None,
           default: bool = True, columns: tuple[Column, ...] = ()):
    """Decorator registering ``fn(model, ctx)`` as metric `name` (see the module docstring for the fields)."""
    unknown = sorted(set(needs) - set(CAPABILITIES))
    if unknown:
        raise ValueError(f"metric {name!r} needs unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")

    def deco(fn):
        old = _METRICS.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"metric {name!r} registered twice ({old.fn.__module__} and {fn.__module__})")
        _METRICS[name] = Metric(name, fn, frozenset(needs), applies, default, tuple(columns),
                                (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        for mod in MODULES:
            importlib.import_module(mod)
        _loaded = True


def metrics() -> dict[str, Metric]:
    """Every registered metric by name, in registration order."""
    _load()
    return dict(_METRICS)


def get(name: str) -> Metric:
    _load()
    if name not in _METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(_METRICS))}")
    return _METRICS[name]


def columns() -> list[Column]:
    """Every declared column, exact keys before patterns (a key's own declaration wins over a pattern's)."""
    cols = [c for m in metrics().values() for c in m.columns]
    return [c for c in cols if not c.pattern] + [c for c in cols if c.pattern]


def column(key: str) -> Column | None:
    """The declaration that governs result key `key`, or None when no metric declares it."""
    for c in columns():
        if c.key == key if not c.pattern else fnmatch.fnmatchcase(key, c.key):
            return c
    return None


def column_order(keys) -> list[str]:
    """Result keys in leaderboard order: declared ranks first (ties by name), then the rest by name."""
    def rank(k):
        c = column(k)
        return (c.rank if c is not None else math.inf, k)
    return sorted(set(keys), key=rank)


# -- what a metric is given -------------------------------------------------------------------------------------------
def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class EvalContext:
    """One `evaluate` call: the run, its config, the sample size and seed, options, the protocol preset
    ("default" or "paper", see dgm.metrics.likelihood.PRESETS) and a memo that metrics share (e.g. samples)."""
    run_dir: Path
    config: dict[str, Any]
    n: int = 10_000
    seed: int = 0
    data_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    named: frozenset[str] = frozenset()  # the metrics the caller named (empty: the defaults run)
    log: Callable[[str], None] = _stderr
    _cache: dict[str, ImageData] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(cls, run_dir, **kw) -> "EvalContext":
        return cls(Path(run_dir), read_config(run_dir), **kw)

    def data_info(self) -> dict[str, Any]:
        d = self.config.get("data") or {}
        if "name" not in d:
            raise ValueError(f"{self.run_dir}: config.json records no dataset; this metric needs one")
        return d

    def data(self, split: str) -> ImageData:
        """The split of the dataset the run was trained on, at the run's image size (loaded once per call)."""
        if split not in self._cache:
            d = self.data_info()
            self._cache[split] = load_dataset(d["name"], split, data_dir=self.data_dir or d.get("data_dir"),
                                              image_size=d.get("image_size"))
        return self._cache[split]
