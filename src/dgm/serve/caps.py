"""What a run can do, from its family's `capabilities()` alone (dgm.models.base), read from a model built on the meta
device: no weights are read and no memory is spent, and a config that does not build is a broken run with its reason.

The page's view of a run (`describe`) adds the shapes it needs (latent size, classes, channels, image size, the two
domains of a translation model) and the keyword options of `sample` (its option list, not an ability).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import typing
from typing import Any

import torch

# Keyword arguments of `sample` that the studio sets itself, or that tune speed rather than the picture; any other
# keyword with a default is a sampler option shown on the page. (`callback` is the "trajectory" ability's hook.)
OWN_SAMPLE_ARGS = {"self", "n", "cond", "generator", "callback", "batch_size", "chunk", "compile"}
COND_ONLY = ("guidance",)  # classifier-free guidance: only with a class to steer towards
MAX_PARAMS = 2**31         # parameters + buffers of a model the studio will load (8 GiB in float32)


class BuildError(Exception):
    """The run's config does not make a model; the message is the one-line reason shown for the run."""


def build_meta(cls: type, model_config: dict[str, Any]):
    """(the model built on the meta device, True), or (an instance never constructed, holding only its config, False)
    where the family's constructor cannot run on the meta device."""
    from dgm.registry import config_from_dict
    try:
        config = config_from_dict(cls.Config, model_config)
    except Exception as e:  # noqa: BLE001  (any config the dataclass refuses is a broken run, never a crash)
        raise BuildError(f"config.json: {e}") from None
    try:
        with torch.device("meta"):
            return cls(config), True
    except NotImplementedError as e:
        if "meta" not in str(e):
            raise BuildError(f"cannot build the model: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise BuildError(f"cannot build the model: {type(e).__name__}: {e}") from None
    # The family's constructor needs real numbers (e.g. a noise schedule read back with .tolist()): its abilities still
    # depend only on the class and the config, so ask an instance that was never constructed; loading checks the rest.
    bare = cls.__new__(cls)
    object.__setattr__(bare, "config", config)
    return bare, False


def abilities(model_or_bare) -> frozenset[str]:
    from dgm.models.base import CAPABILITIES
    try:
        have = model_or_bare.capabilities()
    except Exception as e:  # noqa: BLE001
        raise BuildError(f"capabilities() failed: {type(e).__name__}: {e}") from None
    return frozenset(c for c in have if c in CAPABILITIES)


def check_size(model, weights_bytes: int | None) -> None:
    """Refuse a model whose config asks for more parameters than its weights file can hold (each takes >= 1 byte), or
    more than the studio loads: a config.json edited to latent_dim=10**9 must not allocate gigabytes."""
    n = sum(t.numel() for t in model.parameters())
    if n + sum(t.numel() for t in model.buffers()) > MAX_PARAMS:
        raise BuildError(f"the model has {n} parameters, more than the studio loads ({MAX_PARAMS})")
    if weights_bytes is not None and n > weights_bytes:
        raise BuildError(f"config.json asks for {n} parameters but model.safetensors has only {weights_bytes} bytes")


def describe(cls: type, model_config: dict[str, Any], weights_bytes: int | None = None) -> dict[str, Any]:
    """The page's capabilities of a run: the abilities plus the shapes and sampler options they need."""
    if not isinstance(model_config, dict):
        raise BuildError("config.json: 'model' must be an object")
    model, built = build_meta(cls, model_config)
    if built:
        check_size(model, weights_bytes)
    have = abilities(model)
    config = model.config
    mc = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
    latent = mc.get("latent_dim") if "decode" in have else None
    channels = _int(mc.get("channels"), 1)
    caps = {name: name in have for name in ("sample", "encode", "decode", "reconstruct", "translate", "posterior",
                                            "conditional", "trajectory")}
    caps.update({
        "abilities": sorted(have),
        "latent_dim": latent if isinstance(latent, int) and latent > 0 else None,
        "num_classes": _int(mc.get("num_classes"), 0),
        "sample_options": sample_options(cls, mc) if "sample" in have else [],
        "channels": channels,
        "image_size": _int(mc.get("image_size"), 28),
        "domains": {"A": channels, "B": _int(mc.get("channels_b"), 0) or channels} if "translate" in have else None,
    })
    if caps["decode"] and caps["latent_dim"] is None:
        raise BuildError(f"the model decodes but its config has no positive latent_dim ({latent!r})")
    if not caps["conditional"]:
        caps["sample_options"] = [o for o in caps["sample_options"] if o["name"] not in COND_ONLY]
    return caps


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


# -- the keyword options of `sample` --------------------------------------------------------------------------------
def _choices(cls: type, name: str, annotation: Any) -> list[Any] | None:
    """Allowed values of a sample option: a Literal annotation, or a registry named after it (`SAMPLERS` for
    `sampler`) on the class, in the family's module, or in the shared dgm.schedulers."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    homes = [cls, sys.modules.get(cls.__module__)]
    try:
        homes.append(importlib.import_module("dgm.schedulers"))
    except ImportError:
        pass
    for home in homes:
        v = getattr(home, name.upper() + "S", None)
        if isinstance(v, (tuple, list)) and v and all(isinstance(c, (str, int)) for c in v):
            return list(v)
        if isinstance(v, dict) and v and all(isinstance(c, str) for c in v):
            return list(v)
    return None


def _kind(default: Any, annotation: Any, choices: list[Any] | None) -> str:
    if choices:
        return "choice"
    if default is None:
        ann = str(annotation)
        return "int" if "int" in ann else "float" if "float" in ann else "str"
    return ("bool" if isinstance(default, bool) else "int" if isinstance(default, int)
            else "float" if isinstance(default, float) else "str")


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
        if name in OWN_SAMPLE_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is p.empty:
            continue
        default = p.default if p.default is not None else mc.get(name, mc.get(f"sample_{name}"))
        ann = hints.get(name)
        if callable(default) or "Callable" in str(ann):
            continue
        choices = _choices(cls, name, ann)
        out.append({"name": name, "type": _kind(default, ann, choices), "default": default, "choices": choices})
    return out
