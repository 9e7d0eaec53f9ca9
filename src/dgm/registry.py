"""Name -> model class. Families register themselves; nothing branches on a family's name."""
from __future__ import annotations

import importlib

from dgm.config import config_from_dict  # noqa: F401  (re-exported: configs are built where families are found)

_FAMILIES: dict[str, type] = {}
# Modules imported on first look-up, so `import dgm` stays light and every family is found.
_MODULES = ("dgm.models.ae", "dgm.models.vae", "dgm.models.tcvae", "dgm.models.factorvae", "dgm.models.gan",
            "dgm.models.cyclegan", "dgm.models.diffusion", "dgm.models.classifier")


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
