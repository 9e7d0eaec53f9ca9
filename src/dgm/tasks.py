"""What the CLI does, as plain functions the tests call: train a family on a dataset into a run folder, read a
run's data, translate image files. Orchestration only: the maths is in models/, the loop in train.py, the pictures
in figures/, the measuring in metrics/."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgm.config import UsageError, config_from_dict, defaults_of, same_value, split_overrides
from dgm.data import ImageData, load_dataset
from dgm.data.folder import READ_ERRORS, TooLarge, image_files, open_image
from dgm.data.framing import check_framing, frame, image_tensor
from dgm.figures import write_figures
from dgm.grids import to_pil
from dgm.io import load, read_config
from dgm.metrics.classifier import domain_classifier
from dgm.models.classifier import Classifier
from dgm.registry import get_family
from dgm.train import RESUMABLE, ResumeMismatch, TrainConfig, Trainer

__all__ = ["UsageError", "train", "fresh_config", "run_data", "load_data", "translate_paths"]

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


DEFAULT_DATA = "mnist-mini"  # 12,000 real MNIST digits packaged with dgm: no download, a picture worth looking at
LENGTH = ("steps", "epochs", "minutes")  # how long a run trains; given on resume, they replace the saved ones


def _fresh_options(family: str, overrides: dict[str, Any], length: dict[str, Any], device: str | None):
    """(family class, model kwargs, train kwargs) for a fresh run."""
    try:
        cls = get_family(family)
    except KeyError as e:
        raise UsageError(str(e).strip("'\"")) from None
    kw = split_overrides({"model": cls.Config, "train": TrainConfig}, overrides, reserved=_FROM_DATA,
                         owner=cls.family)
    train_kw = {**cls.train_defaults, **kw["train"], **length}
    if not any(train_kw.get(k) for k in LENGTH):  # no length given anywhere: the family's default budget
        train_kw["minutes"] = cls.default_minutes
    if device:
        train_kw["device"] = device
    return cls, kw["model"], train_kw


def length_line(family: str, data: str, train_kw: dict[str, Any], default: bool) -> str:
    """The first line of a fresh `dgm train`: what trains on what, for how long."""
    how = "1 epoch"  # the Trainer's own default, when a length option was given as 0
    for key, unit in (("steps", "steps"), ("epochs", "epochs"), ("minutes", "CPU-min")):
        if train_kw.get(key):
            try:
                v = float(train_kw[key])
                how = f"{int(v):,} {unit}" if key == "steps" else f"{v:g} {unit}"
            except (TypeError, ValueError):  # checked by the config already; shown as given
                how = f"{train_kw[key]} {unit}"
            break
    line = f"training {family} on {data} for {how}"
    return line + (" (default; --steps/--epochs/--minutes to change)" if default else "")


def _resume_options(cfg: dict[str, Any], out: Path, overrides: dict[str, Any], length: dict[str, Any]):
    """(family class, model kwargs, train kwargs) for resuming the run in `out`: its own config, with the train
    options that may change on resume (dgm.train.RESUMABLE) applied from `overrides` and `length`; any other option
    is refused in one line naming it. A length given (--steps, --epochs, --minutes, or the same keys in --set)
    replaces the saved length, so `--steps 5000` or `--minutes 30` extends a run whatever it was first given."""
    cls = get_family(cfg["family"])
    kw = split_overrides({"model": cls.Config, "train": TrainConfig}, overrides, reserved=_FROM_DATA,
                         owner=cls.family)
    moved = sorted(k for k, v in kw["model"].items() if not same_value(v, cfg["model"].get(k)))
    if moved:
        k = moved[0]
        raise UsageError(f"--set {k}: a model option cannot change on resume (the checkpoint holds that model); "
                         f"train a fresh run into another --out, or with --overwrite")
    defaults = defaults_of(TrainConfig)
    fixed = sorted(k for k, v in kw["train"].items()
                   if k not in RESUMABLE and not same_value(v, cfg["train"].get(k, defaults.get(k))))
    if fixed:
        raise UsageError(f"--set {fixed[0]}: cannot change on resume (the checkpoint's batches, optimiser and RNG "
                         f"depend on it); these may: {', '.join(sorted(RESUMABLE))}")
    saved = dict(cfg["train"])
    changes = {**{k: v for k, v in kw["train"].items() if k in RESUMABLE}, **length}
    train_kw = dict(saved)
    if any(k in changes for k in LENGTH):
        train_kw.update(steps=0, epochs=0.0, minutes=0.0)
    train_kw.update(changes)
    at = (cfg.get("progress") or {}).get("checkpoint_step")
    if train_kw.get("steps") and at is not None and train_kw["steps"] < at:
        raise UsageError(f"--steps {train_kw['steps']}: {out} is already at step {at}; give more steps to extend it")
    # A field the saved config lacks (written before it existed) takes the dataclass default, as `load` gives it, not
    # the family's fresh-run recipe: the resumed model is the one that trained.
    return cls, {**defaults_of(cls.Config), **cfg["model"]}, train_kw


def _changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{k} {saved.get(k, 0)!r} -> {now[k]!r}" for k in sorted(now)
            if now[k] != saved.get(k, 0 if k in LENGTH else None)]


def _build(cls, model_kw: dict, train_kw: dict, ds: ImageData):
    """The train config and a freshly initialised model whose data fields come from the dataset."""
    try:
        tcfg = config_from_dict(TrainConfig, train_kw)
        torch.manual_seed(tcfg.seed)  # the initial weights too: same seed, same run
        return tcfg, cls.for_data(ds, model_kw)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def fresh_config(family: str, data: str | None = None, *, overrides: dict[str, Any] | None = None,
                 data_dir=None, image_size: int | None = None) -> dict[str, Any]:
    """The model and train configs (as config.json records them) that a fresh `train` of `family` on `data` with
    `overrides` would use: nothing is trained or written. Lets a caller check that an existing run follows the
    current defaults before continuing it (benchmarks/budget.py)."""
    cls, model_kw, train_kw = _fresh_options(family, dict(overrides or {}), {}, None)
    tcfg, model = _build(cls, model_kw, train_kw, load_data(data or DEFAULT_DATA, "train", data_dir, image_size))
    return json.loads(json.dumps({"model": dataclasses.asdict(model.config), "train": dataclasses.asdict(tcfg)}))


def default_run_folder(family: str, data: str) -> Path:
    """runs/FAMILY_DATA with DATA reduced to letters, digits, '.', '-' (a spec's ':', ',', '/' and spaces become
    '-'): readable, sortable by family, and safe in a shell. unpaired:mnist,usps -> runs/cyclegan_unpaired-mnist-usps."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(data).name if "/" in data and ":" not in data else data).strip("-.")
    return Path("runs") / f"{family}_{slug or 'data'}"


def frozen_classifier(source: str, image_size: int, data_dir=None):
    """The frozen classifier a family trains with: a classifier's run folder, or a dataset's cached classifier."""
    path = Path(source).expanduser()
    if path.is_dir():  # a classifier's folder (e.g. one trained with zoom augmentation)
        clf = load(path)
        if not isinstance(clf, Classifier):
            raise UsageError(f"classifier folder {source!r} holds a {type(clf).__name__}, not a classifier")
        return clf
    return domain_classifier(source, image_size, data_dir)


def train(family: str | None, data: str | None = None, *, steps: int = 0, epochs: float = 0.0, minutes: float = 0.0,
          out: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None, resume: bool = False,
          overwrite: bool = False, device: str | None = None, data_dir=None, image_size: int | None = None,
          progress: bool = True, figures: bool = True, stop_at: int | None = None, say=None) -> Path:
    """Train a family on a dataset (default mnist-mini) and write a run folder; returns its path.

    `minutes` > 0 trains for that much process CPU time (dgm.train); with no length at all (no steps, epochs or
    minutes, here or in `overrides`) a fresh run trains for the family's `default_minutes`, and `say` hears a first
    line saying so. A fresh run refuses a folder that already holds
    a run unless `overwrite`. `resume` continues the run in `out` with its own config: `family`, `data` and
    `image_size` may be given (None: the run's) and must then match it; `overrides` may only hold train options in
    dgm.train.RESUMABLE, and `steps` / `epochs` / `minutes` replace the run's length. `say(line)` hears what a resume
    changed. `device` (auto, cpu, cuda, cuda:N) is the train config's device."""
    length = {k: v for k, v in (("steps", steps), ("epochs", epochs), ("minutes", minutes)) if v}
    overrides = dict(overrides or {})
    if device:
        given = overrides.pop("device", None)
        if given is not None and given != device:
            raise UsageError(f"the device is given twice (--device {device}, --set device={given}); give it once")
    if resume and overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if resume:
        if out is None:
            raise UsageError("--resume needs the run folder: --out RUN")
        out = Path(out)
        cfg = read_config(out)
        d = cfg.get("data") or {}
        differ = [f"{what} {saved!r} (asked {asked!r})" for what, saved, asked in
                  (("family", cfg["family"], family), ("data", d.get("name"), data),
                   ("image size", d.get("image_size"), image_size)) if asked is not None and asked != saved]
        if differ:
            raise ResumeMismatch(f"cannot resume {out}: it holds a run with " + ", ".join(differ)
                                 + "; leave them out to resume it, or train a fresh run elsewhere")
        cls, model_kw, train_kw = _resume_options(cfg, out, overrides, length)
        if device:
            train_kw["device"] = device
        changed = _changes(cfg["train"], train_kw)
        data, image_size, data_dir = d["name"], d.get("image_size"), data_dir or d.get("data_dir")
    else:
        data = data or DEFAULT_DATA
        out = Path(out or default_run_folder(family, data))
        cls, model_kw, train_kw = _fresh_options(family, overrides, length, device)
        changed = []
    ds = load_data(data, "train", data_dir, image_size)
    tcfg, model = _build(cls, model_kw, train_kw, ds)
    # A family may check its data or need a frozen helper network first; resume restores that from the checkpoint.
    if not resume:
        source = model.needs_classifier(ds)
        model.prepare_training(ds, classifier=frozen_classifier(source, model.config.image_size, data_dir)
                               if source else None)
    extra = {"data": {"name": data, "image_size": ds.shape[1], "data_dir": str(data_dir) if data_dir else None}}
    if resume:
        said = (lambda: say(f"resuming {out} with " + ", ".join(changed))) if say and changed else None
    else:  # once the folder is ours: the first line says what trains, on what, for how long
        line = length_line(cls.family, data, train_kw, default=not (length or any(k in overrides for k in LENGTH)))
        said = (lambda: say(line)) if say else None
    trainer = Trainer(model, ds, tcfg, out, extra_config=extra, progress=progress, overwrite=overwrite,
                      on_start=said)
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


def translate_paths(run_dir, inputs: list[str], out, direction: str = "AtoB", device: str = "cpu", *,
                    invert: str = "auto", fit: str = "auto") -> list[Path]:
    """`dgm translate`: image files and/or folders (recursive) -> translated PNGs at the model's size.

    Each image is framed like the training data first, by dgm.data.framing (the studio's framing): `invert` (auto:
    a one-channel image on a light background is inverted, so a dark digit on paper looks like MNIST) and `fit`
    (auto: crop to the object and pad it for one channel, centre square for colour).
    One input file and an `out` ending in an image suffix: that file. Otherwise `out` is a folder; each result keeps
    its path relative to the folder it was found in (or its file name), with a .png suffix.
    """
    try:
        check_framing(invert, fit)
    except ValueError as e:
        raise UsageError(str(e)) from None
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
            x = image_tensor(open_image(f), cin)
        except TooLarge as e:
            raise UsageError(f"{f}: {e}") from None
        except READ_ERRORS as e:
            raise UsageError(f"{f}: not a readable PNG/JPEG/BMP/WEBP image ({e})") from None
        y = model.translate(frame(x, c.image_size, invert=invert, fit=fit).to(model.device), direction)[0]
        dest = out if single else out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        to_pil(y).save(dest)
        written.append(dest)
    return written
