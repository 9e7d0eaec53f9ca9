"""What the CLI does, as plain functions the tests call: train, sample, reconstruct, interpolate, latent, figures."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgm.data import ImageData, load_dataset, to_float
from dgm.io import load, read_config
from dgm.registry import config_from_dict, get_family
from dgm.train import TrainConfig, Trainer
from dgm.viz import plot_latent, plot_losses, save_grid


class UsageError(ValueError):
    """A bad option or argument; the CLI prints it in one line and exits with code 2."""


def parse_value(field: dataclasses.Field, text: Any) -> Any:
    """'--set key=value' text -> the field's type (int, float, bool, str, tuple of numbers)."""
    if not isinstance(text, str):
        return text
    t = str(field.type)
    try:
        if "tuple" in t:
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            num = float if "float" in t else int
            return tuple(num(p) for p in parts)
        if t in ("bool", "<class 'bool'>"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if t in ("int", "<class 'int'>"):
            return int(float(text)) if float(text).is_integer() else int(text)
        if t in ("float", "<class 'float'>"):
            return float(text)
    except ValueError:
        raise UsageError(f"--set {field.name}={text}: expected {t}") from None
    return text


def split_overrides(model_cls: type, overrides: dict[str, Any]) -> tuple[dict, dict]:
    """Route each key=value to the model config or the train config; unknown keys are an error."""
    mfields = {f.name: f for f in dataclasses.fields(model_cls.Config)}
    tfields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    model_kw, train_kw = {}, {}
    for k, v in overrides.items():
        if k in ("channels", "image_size", "num_classes"):
            raise UsageError(f"--set {k}: taken from the dataset (use --image-size for the size)")
        if k in mfields:
            model_kw[k] = parse_value(mfields[k], v)
        elif k in tfields:
            train_kw[k] = parse_value(tfields[k], v)
        else:
            names = sorted(set(mfields) | set(tfields) - {"channels", "image_size", "num_classes"})
            raise UsageError(f"unknown option {k!r} for {model_cls.family}; valid: {', '.join(names)}")
    return model_kw, train_kw


def load_data(name: str, split: str, data_dir=None, image_size: int | None = None) -> ImageData:
    return load_dataset(name, split, data_dir=data_dir, image_size=image_size)


def train(family: str, data: str = "digits", *, steps: int = 0, epochs: float = 0.0, out: str | os.PathLike | None = None,
          overrides: dict[str, Any] | None = None, resume: bool = False, data_dir=None, image_size: int | None = None,
          progress: bool = True, figures: bool = True, stop_at: int | None = None) -> Path:
    """Train a family on a dataset and write a run folder; returns its path."""
    out = Path(out or Path("runs") / f"{family}_{data.replace(':', '_').replace('/', '_')}")
    if resume:
        cfg = read_config(out)
        family, data = cfg["family"], cfg["data"]["name"]
        image_size = cfg["data"].get("image_size")
        data_dir = data_dir or cfg["data"].get("data_dir")
        cls = get_family(family)
        model_kw, train_kw = cfg["model"], dict(cfg["train"])
        if steps:
            train_kw["steps"] = steps
    else:
        try:
            cls = get_family(family)
        except KeyError as e:
            raise UsageError(str(e).strip("'\"")) from None
        model_kw, train_kw = split_overrides(cls, overrides or {})
        train_kw = {**cls.train_defaults, **train_kw}
        if steps:
            train_kw["steps"] = steps
        if epochs:
            train_kw["epochs"] = epochs
    ds = load_data(data, "train", data_dir, image_size)
    c, h, _ = ds.shape
    # A dataset may fix more model fields than (channels, size, classes), e.g. unpaired data: B's channels.
    fields = ds.model_fields() if hasattr(ds, "model_fields") else {
        "channels": c, "image_size": h, "num_classes": ds.num_classes or 0}
    extra_fields = sorted(set(fields) - {f.name for f in dataclasses.fields(cls.Config)})
    if extra_fields:
        raise UsageError(f"dataset {data!r} needs a model with {', '.join(extra_fields)} "
                         f"(e.g. cyclegan for unpaired data); {family} has none")
    model_kw = {**model_kw, **fields}
    try:
        tcfg = config_from_dict(TrainConfig, train_kw)
        torch.manual_seed(tcfg.seed)  # the initial weights too: same seed, same run
        model = cls(config_from_dict(cls.Config, model_kw))
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    # A family may check its data or fetch a frozen helper network first; resume restores that from the checkpoint.
    if hasattr(model, "prepare_training") and not resume:
        model.prepare_training(ds, data_dir=data_dir)
    extra = {"data": {"name": data, "image_size": h, "data_dir": str(data_dir) if data_dir else None}}
    trainer = Trainer(model, ds, tcfg, out, extra_config=extra, progress=progress)
    trainer.fit(resume=resume, stop_at=stop_at)
    if figures and trainer.rank == 0 and stop_at is None:
        write_figures(out, trainer.eval_model)
    return out


# -- figures ------------------------------------------------------------------------------------------------------
def run_data(run_dir, split: str = "test", data_dir=None) -> ImageData:
    cfg = read_config(run_dir)
    d = cfg.get("data", {})
    return load_data(d["name"], split, data_dir or d.get("data_dir"), d.get("image_size"))


def latent_means(model, x01: torch.Tensor) -> torch.Tensor:
    """Encoder output used as the representation: the posterior mean for a VAE, the code for an AE."""
    out = model.encode(x01)
    return out[0] if isinstance(out, tuple) else out


def sample_images(model, n: int = 64, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return model.sample(n, generator=g, **kw)


def write_samples(model, path, n: int = 64, seed: int = 0, nrow: int = 8, **kw) -> Path:
    return save_grid(sample_images(model, n, seed, **kw), path, nrow=nrow)


def write_reconstructions(model, data: ImageData, path, n: int = 32) -> Path:
    """Pairs of rows: originals above their reconstructions."""
    x = to_float(data.images[:n]).to(model.device)
    with torch.inference_mode():
        r = model.reconstruct(x)
    rows = []
    for i in range(0, n, 8):
        rows += [x[i:i + 8], r[i:i + 8]]
    return save_grid(torch.cat(rows), path, nrow=8)


def write_interpolation(model, path, data: ImageData | None = None, pairs: int = 6, steps: int = 10,
                        seed: int = 0) -> Path:
    """Each row walks a straight line in latent space between two endpoints (test images if the model encodes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        if hasattr(model, "encode") and data is not None:
            idx = torch.randperm(len(data), generator=g)[: 2 * pairs]
            z = latent_means(model, to_float(data.images[idx]).to(model.device))
        else:
            z = torch.randn(2 * pairs, model.config.latent_dim, generator=g).to(model.device)
        a, b = z[:pairs], z[pairs:]
        t = torch.linspace(0, 1, steps, device=z.device).view(1, steps, 1)
        zs = (a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t).flatten(0, 1)
        imgs = model.decode(zs)
    return save_grid(imgs, path, nrow=steps)


def write_latent(model, data: ImageData, path, n: int = 5000) -> Path:
    """Test-set latent means as a 2-D scatter coloured by label; PCA when the latent has more than two dimensions."""
    x = to_float(data.images[:n]).to(model.device)
    with torch.inference_mode():
        z = torch.cat([latent_means(model, x[i:i + 1000]) for i in range(0, len(x), 1000)]).float().cpu().numpy()
    labels = data.labels[:n].numpy() if data.labels is not None else None
    if z.shape[1] == 2:
        pts, names, how = z, ("z1", "z2"), "latent means"
    else:
        from sklearn.decomposition import PCA
        pca = PCA(2).fit(z)
        pts = pca.transform(z)
        ev = pca.explained_variance_ratio_
        names, how = (f"PC1 ({ev[0]:.0%} var.)", f"PC2 ({ev[1]:.0%} var.)"), f"PCA of {z.shape[1]}-d latent means"
    return plot_latent(pts, labels, path, f"{data.name} test set: {how}", names)


def write_figures(run_dir, model=None, data: ImageData | None = None) -> list[Path]:
    """Every figure the model's capabilities allow, plus the family's own (`model.figures`)."""
    run_dir = Path(run_dir)
    model = model if model is not None else load(run_dir)
    model.eval()
    data = data if data is not None else run_data(run_dir, "test")
    out = []
    if hasattr(model, "sample"):
        try:
            out.append(write_samples(model, run_dir / "samples.png"))
        except NotImplementedError:
            pass
    if hasattr(model, "reconstruct"):
        out.append(write_reconstructions(model, data, run_dir / "reconstructions.png"))
    if hasattr(model, "encode") and hasattr(model, "decode"):
        out.append(write_latent(model, data, run_dir / "latent.png"))
        from dgm.traversal import write_traversal  # one row per latent dimension (beta-VAE's figure)
        out += write_traversal(model, run_dir / "traversal.png", data)
    if hasattr(model, "decode"):
        out.append(write_interpolation(model, run_dir / "interpolation.png", data))
    if hasattr(model, "figures"):
        out += list(model.figures(run_dir, data))
    p = plot_losses(run_dir)
    if p:
        out.append(p)
    return out


# -- translation (CycleGAN) ---------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def translate_paths(run_dir, inputs: list[str], out, direction: str = "AtoB", device: str = "cpu") -> list[Path]:
    """`dgm translate`: image files and/or folders (recursive) -> translated PNGs at the model's size.

    One input file and an `out` ending in an image suffix: that file. Otherwise `out` is a folder; each result keeps
    its path relative to the folder it was found in (or its file name), with a .png suffix.
    """
    from dgm.data.folder import _READ_ERRORS, _files, _read
    model = load(run_dir, device)
    if not hasattr(model, "translate"):
        raise UsageError(f"a {model.family} model cannot translate images (train a cyclegan)")
    jobs: list[tuple[Path, Path]] = []  # (input file, output path relative to out)
    for s in inputs:
        p = Path(s).expanduser()
        if p.is_dir():
            jobs += [(f, f.relative_to(p).with_suffix(".png")) for f in _files(p) if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            jobs.append((p, Path(p.stem + ".png")))
        else:
            raise UsageError(f"input not found: {s}")
    if not jobs:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    out = Path(out)
    single = len(jobs) == 1 and out.suffix.lower() in IMAGE_SUFFIXES
    c = model.config
    cin = c.channels if direction == "AtoB" else (c.channels_b or c.channels)
    written = []
    for f, rel in jobs:
        try:
            arr = _read(f, c.image_size)  # (S, S, 3) uint8: shorter side resized to the model's size, centre crop
        except _READ_ERRORS as e:
            raise UsageError(f"{f}: not a readable PNG/JPEG/BMP/WEBP image ({e})") from None
        x = torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 255.0
        if cin == 1:
            x = x.mean(1, keepdim=True)
        y = model.translate(x, direction)[0]
        dest = out if single else out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        from dgm.viz import to_pil
        to_pil(y).save(dest)
        written.append(dest)
    return written
