"""Dataset names -> loader functions, and where data lives on disk."""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

from dgm.data.base import DataError, ImageData, resize_images

Loader = Callable[..., ImageData]

_LOADERS: dict[str, Loader] = {}
_PATH_LOADERS: set[str] = set()  # loaders addressed as "name:PATH"
# Optional modules that register more datasets; imported on first look-up so `import dgm.data`
# stays light and a module not written yet is simply absent.
_PLUGINS = ("dgm.data.dsprites", "dgm.data.unpaired", "dgm.data.mnist_mini")
SPLITS = ("train", "test")


def register_dataset(name: str):
    """Decorator registering ``fn(split, data_dir, image_size, download) -> ImageData`` under ``name``.

    A loader that also takes a ``path`` keyword is a *prefix* loader: ``load_dataset("folder:imgs/cats")``
    calls the loader registered as ``"folder"`` with ``path="imgs/cats"``. The loader receives
    ``image_size`` as given (possibly None) and must return images at that size when it is set.
    """
    key = name.strip().lower()
    if not key or ":" in key:
        raise ValueError(f"dataset name must be non-empty and contain no ':', got {name!r}")

    def deco(fn: Loader) -> Loader:
        old = _LOADERS.get(key)
        # Re-importing a module (reload, notebooks) registers an equal function again: allow that.
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"dataset {key!r} registered twice ({old.__module__} and {fn.__module__})")
        _LOADERS[key] = fn
        if "path" in inspect.signature(fn).parameters:
            _PATH_LOADERS.add(key)
        else:
            _PATH_LOADERS.discard(key)
        return fn
    return deco


def _import_plugins() -> None:
    from dgm.registry import import_modules
    import_modules(_PLUGINS)


def dataset_names() -> list[str]:
    """Known dataset names, sorted; prefix loaders appear as ``"folder:PATH"``."""
    _import_plugins()
    return sorted(f"{k}:PATH" if k in _PATH_LOADERS else k for k in _LOADERS)


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where datasets are stored and downloaded: ``data_dir``, else ``$DGM_DATA``, else ``~/.cache/dgm``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("DGM_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dgm"


def find_shared_data(start: str | os.PathLike | None = None) -> Path | None:
    """The first ``shared/data`` folder in ``start`` (default: the working directory) or a parent.

    This lets a checkout's tests and benchmarks use a data folder that sits beside it
    (a checkout at ``X/main`` finds ``X/shared/data``) with no configuration.
    """
    here = Path(start if start is not None else os.getcwd()).resolve()
    for p in (here, *here.parents):
        cand = p / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Roots to look in, in order. An explicit ``data_dir`` or ``$DGM_DATA`` is the only root;
    otherwise ``~/.cache/dgm`` and then a ``shared/data`` found by :func:`find_shared_data`."""
    roots = [data_root(data_dir)]
    if data_dir is None and not os.environ.get("DGM_DATA"):
        shared = find_shared_data()
        if shared is not None and shared not in roots:
            roots.append(shared)
    return roots


def load_dataset(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, download: bool = True) -> ImageData:
    """Load a whole split into memory as :class:`ImageData` (uint8 ``(N, C, H, W)``).

    ``name``: one of :func:`dataset_names` (``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"usps"``,
    ``"folder:PATH"``, ...). ``split``: ``"train"`` or ``"test"``. ``image_size``: when given and different
    from the native size, images are resized to ``image_size x image_size`` (bilinear on floats,
    antialiased when shrinking, re-quantised to uint8). ``download``: fetch missing files from the
    official mirrors; otherwise a missing file raises :class:`DataError`.
    """
    base, sep, rest = name.partition(":")
    key = base.strip().lower().replace("_", "-")
    if key not in _LOADERS:
        _import_plugins()
    if key not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive int or None, got {image_size!r}")
    kwargs = {}
    if key in _PATH_LOADERS:
        if not rest:
            raise DataError(f"dataset {key!r} needs a path: use '{key}:PATH'")
        kwargs["path"] = rest
    elif sep:
        raise DataError(f"dataset {key!r} takes no ':PATH' part (got {name!r})")
    data = _LOADERS[key](split, data_dir, image_size, download, **kwargs)
    if not isinstance(data, ImageData):
        raise TypeError(f"loader for {key!r} returned {type(data).__name__}, not ImageData")
    # Safety net for loaders that ignore image_size: the contract is that the result has that size.
    if image_size is not None and data.shape[1:] != (image_size, image_size):
        data.images = resize_images(data.images, image_size)
    return data
