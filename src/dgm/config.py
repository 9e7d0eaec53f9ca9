"""Configs are stdlib dataclasses. This module builds them from dicts (config.json, `--set key=value` text) and
rejects what does not fit: an unknown key, a value of the wrong type. Nothing here knows a family."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


class UsageError(ValueError):
    """A bad option or argument; the CLI prints it in one line and exits with code 2."""


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


def defaults_of(cls: type) -> dict[str, Any]:
    """Each field's default (what a config.json written before the field existed loads as)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equal as config.json holds them (a tuple and the list JSON turns it into are the same value)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(text)
    return v


def parse_value(field: dataclasses.Field, text: Any) -> Any:
    """'--set key=value' text -> the field's type (int, float, bool, str, tuple of numbers). Numbers must be finite
    (nan and inf are refused for every config: no option of any family means anything with them)."""
    if not isinstance(text, str):
        return text
    t = str(field.type)
    try:
        if "tuple" in t:
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            num = _finite if "float" in t else int
            return tuple(num(p.strip()) for p in parts)
        if t in ("bool", "<class 'bool'>"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if t in ("int", "<class 'int'>"):
            return int(float(text)) if float(text).is_integer() else int(text)
        if t in ("float", "<class 'float'>"):
            return _finite(text)
    except ValueError:
        raise UsageError(f"--set {field.name}={text}: expected {'a finite ' if 'float' in t else ''}{t}") from None
    return text


def split_overrides(targets: dict[str, type], overrides: dict[str, Any], *, reserved: dict[str, str] | None = None,
                    owner: str = "") -> dict[str, dict[str, Any]]:
    """Route each key=value to the first config class in `targets` ({"model": ModelConfig, "train": TrainConfig})
    that has the field, parsed to its type. A key in `reserved` is refused with its reason; an unknown key is an
    error that lists the valid ones."""
    reserved = reserved or {}
    fields = {name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in targets.items()}
    out: dict[str, dict[str, Any]] = {name: {} for name in targets}
    for k, v in overrides.items():
        if k in reserved:
            raise UsageError(f"--set {k}: {reserved[k]}")
        home = next((name for name, fs in fields.items() if k in fs), None)
        if home is None:
            names = sorted(set().union(*fields.values()) - set(reserved))
            raise UsageError(f"unknown option {k!r}{' for ' + owner if owner else ''}; valid: {', '.join(names)}")
        out[home][k] = parse_value(fields[home][k], v)
    return out
