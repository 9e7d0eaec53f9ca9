"""Name -> model class. Families register themselves; nothing branches on a family's name."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

_FAMILIES: dict[str, type] = {}
# Modules imported on first look-up, so `import dgm` stays light and every family is found.
_MODULES = ("dgm.models.ae", "dgm.models.vae", "dgm.models.gan", "dgm.models.cyclegan", "dgm.models.diffusion",
            "dgm.models.classifier")


def register(name: str):
    """Class decorator: ``@register("vae")`` on a GenerativeModel subclass with a ``Config`` dataclass."""
    def deco(cls):
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"family {name!r} registered twice")
        cls.family = name
        _FAMILIES[name] = cls
        return cls
    return deco


def import_modules(names: tuple[str, ...]) -> None:
    """Import the modules that register families, datasets or metrics (on first look-up, so `import dgm` is light)."""
    for mod in names:
        importlib.import_module(mod)


def _import_all() -> None:
    import_modules(_MODULES)


def families() -> list[str]:
    _import_all()
    return sorted(_FAMILIES)


def get_family(name: str) -> type:
    _import_all()
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def config_from_dict(cls: type, d: dict[str, Any]):
    """Build a config dataclass from a dict, rejecting unknown keys (a typo must not pass silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            # JSON turns tuples into lists; give tuple-typed fields their tuple back.
            if isinstance(v, list) and "tuple" in str(f.type):
                v = tuple(v)
            kwargs[f.name] = v
    return cls(**kwargs)
