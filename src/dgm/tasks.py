"""What the CLI does, as plain functions the tests call: train a family on a dataset into a run folder, read a
run's data, translate image files. Orchestration only: the maths is in models/, the loop in train.py, the pictures
in figures/, the measuring in metrics/."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgm.config import UsageError, config_from_dict, split_overrides
from dgm.data import ImageData, load_dataset
from dgm.data.folder import READ_ERRORS, image_files, read_image
from dgm.figures import write_figures
from dgm.grids import to_pil
from dgm.io import load, read_config
from dgm.metrics.classifier import domain_classifier
from dgm.models.classifier import Classifier
from dgm.registry import get_family
from dgm.train import TrainConfig, Trainer

__all__ = ["UsageError", "train", "run_data", "load_data", "translate_paths"]

# Model fields the dataset fixes (the CLI's --image-size sets the size).
_FROM_DATA = {k: "taken from the dataset (use --image-size for the size)" for k in ("channels", "image_size",
                                                                                     "num_classes")}


def load_data(name: str, split: str, data_dir=None, image_size: int | None = None) -> ImageData:
    return load_dataset(name, split, data_dir=data_dir, image_size=image_size)


def run_data(run_dir, split: str = "test", data_dir=None) -> ImageData:
    """The dataset a run was trained on (its `split`), as config.json names it."""
    cfg = read_config(run_dir)
    d = cfg.get("data", {})
    return load_data(d["name"], split, data_dir or d.get("data_dir"), d.get("image_size"))


def _run_options(family: str, resume: bool, out: Path, overrides: dict[str, Any], steps: int, epochs: float):
    """(family class, model kwargs, train kwargs, data name, image size, data dir) for a fresh or resumed run."""
    if resume:
        cfg = read_config(out)
        cls = get_family(cfg["family"])
        model_kw, train_kw = cfg["model"], dict(cfg["train"])
        if steps:
            train_kw["steps"] = steps
        d = cfg["data"]
        return cls, model_kw, train_kw, d["name"], d.get("image_size"), d.get("data_dir")
    try:
        cls = get_family(family)
    except KeyError as e:
        raise UsageError(str(e).strip("'\"")) from None
    kw = split_overrides({"model": cls.Config, "train": TrainConfig}, overrides, reserved=_FROM_DATA,
                         owner=cls.family)
    train_kw = {**cls.train_defaults, **kw["train"]}
    if steps:
        train_kw["steps"] = steps
    if epochs:
        train_kw["epochs"] = epochs
    return cls, kw["model"], train_kw, None, None, None


def _build(cls, model_kw: dict, train_kw: dict, ds: ImageData):
    """The train config and a freshly initialised model whose data fields come from the dataset."""
    try:
        tcfg = config_from_dict(TrainConfig, train_kw)
        torch.manual_seed(tcfg.seed)  # the initial weights too: same seed, same run
        return tcfg, cls.for_data(ds, model_kw)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def frozen_classifier(source: str, image_size: int, data_dir=None):
    """The frozen classifier a family trains with: a classifier's run folder, or a dataset's cached classifier."""
    path = Path(source).expanduser()
    if path.is_dir():  # a classifier's folder (e.g. one trained with zoom augmentation)
        clf = load(path)
        if not isinstance(clf, Classifier):
            raise UsageError(f"classifier folder {source!r} holds a {type(clf).__name__}, not a classifier")
        return clf
    return domain_classifier(source, image_size, data_dir)


def train(family: str, data: str = "digits", *, steps: int = 0, epochs: float = 0.0, out: str | os.PathLike | None = None,
          overrides: dict[str, Any] | None = None, resume: bool = False, data_dir=None, image_size: int | None = None,
          progress: bool = True, figures: bool = True, stop_at: int | None = None) -> Path:
    """Train a family on a dataset and write a run folder; returns its path."""
    out = Path(out or Path("runs") / f"{family}_{data.replace(':', '_').replace('/', '_')}")
    cls, model_kw, train_kw, saved_data, saved_size, saved_dir = _run_options(family, resume, out, overrides or {},
                                                                               steps, epochs)
    if resume:
        data, image_size, data_dir = saved_data, saved_size, data_dir or saved_dir
    ds = load_data(data, "train", data_dir, image_size)
    tcfg, model = _build(cls, model_kw, train_kw, ds)
    # A family may check its data or need a frozen helper network first; resume restores that from the checkpoint.
    if not resume:
        source = model.needs_classifier(ds)
        model.prepare_training(ds, classifier=frozen_classifier(source, model.config.image_size, data_dir)
                               if source else None)
    extra = {"data": {"name": data, "image_size": ds.shape[1], "data_dir": str(data_dir) if data_dir else None}}
    trainer = Trainer(model, ds, tcfg, out, extra_config=extra, progress=progress)
    trainer.fit(resume=resume, stop_at=stop_at)
    if figures and trainer.rank == 0 and stop_at is None:
        write_figures(out, trainer.eval_model, run_data(out, "test"))
    return out


# -- translation (CycleGAN) ---------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _translation_jobs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(input file, output path relative to the output folder) for image files and folders (recursive)."""
    jobs: list[tuple[Path, Path]] = []
    for s in inputs:
        p = Path(s).expanduser()
        if p.is_dir():
            jobs += [(f, f.relative_to(p).with_suffix(".png")) for f in image_files(p)
                     if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            jobs.append((p, Path(p.stem + ".png")))
        else:
            raise UsageError(f"input not found: {s}")
    if not jobs:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return jobs


def translate_paths(run_dir, inputs: list[str], out, direction: str = "AtoB", device: str = "cpu") -> list[Path]:
    """`dgm translate`: image files and/or folders (recursive) -> translated PNGs at the model's size.

    One input file and an `out` ending in an image suffix: that file. Otherwise `out` is a folder; each result keeps
    its path relative to the folder it was found in (or its file name), with a .png suffix.
    """
    model = load(run_dir, device)
    if "translate" not in model.capabilities():
        raise UsageError(f"a {model.family} model cannot translate images (train a cyclegan)")
    jobs = _translation_jobs(inputs)
    out = Path(out)
    single = len(jobs) == 1 and out.suffix.lower() in IMAGE_SUFFIXES
    c = model.config
    cin = c.channels if direction == "AtoB" else (c.channels_b or c.channels)
    written = []
    for f, rel in jobs:
        try:
            arr = read_image(f, c.image_size)  # (S, S, 3) uint8: shorter side resized to the model's size, centre crop
        except READ_ERRORS as e:
            raise UsageError(f"{f}: not a readable PNG/JPEG/BMP/WEBP image ({e})") from None
        x = torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 255.0
        if cin == 1:
            x = x.mean(1, keepdim=True)
        y = model.translate(x, direction)[0]
        dest = out if single else out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        to_pil(y).save(dest)
        written.append(dest)
    return written
