"""The figure registry: a writer draws one kind of picture for the models it applies to, like a metric.

A writer is fn(model, run_dir, data) -> list of paths written. `applies(model)` decides from the model's
`capabilities()` (or, for a family's own pictures, its family name), never from attributes it happens to have.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Figure:
    name: str
    write: Callable
    applies: Callable


FIGURES: list[Figure] = []


def figure(name: str, *, needs: tuple[str, ...] = (), families: tuple[str, ...] = ()):
    """Register a figure writer for models that have every capability in `needs` (and, if given, one of
    `families`). Writers run in registration order."""
    def applies(model) -> bool:
        return set(needs) <= model.capabilities() and (not families or model.family in families)

    def deco(fn):
        if any(f.name == name for f in FIGURES):
            raise ValueError(f"figure {name!r} registered twice")
        FIGURES.append(Figure(name, fn, applies))
        return fn
    return deco


def run_figures(model, run_dir, data) -> list[Path]:
    out: list[Path] = []
    for f in FIGURES:
        if f.applies(model):
            out += [Path(p) for p in f.write(model, Path(run_dir), data) if p]
    return out
