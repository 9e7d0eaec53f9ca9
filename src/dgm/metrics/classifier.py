"""Domain classifiers as measuring instruments: train one with the Trainer, cache it, find it, test it.

    from dgm.metrics.classifier import get_classifier
    clf = get_classifier("mnist")                 # cached in <cache root>/classifiers/mnist/, trained if missing
    clf = get_classifier("usps", image_size=28)   # a classifier for USPS images resized to 28x28
    pred = clf.predict(x01)                       # int64 (B,); clf.features(x01) for domain FID
    clf.test_accuracy                             # measured on the dataset's test split after training

The network itself is dgm.models.classifier.Classifier; the cache root is ``$DGM_DATA``, else ``~/.cache/dgm``
(never the dataset folder, which may be read-only). ``dgm classifier train DATA`` calls `train_classifier`.
Registers the `test_accuracy` metric (for classifier runs).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dgm.config import split_overrides
from dgm.data import load_dataset, to_float
from dgm.io import load, write_json
from dgm.metrics.registry import HIGHER, col, metric
from dgm.models.classifier import INFO, NATIVE, Classifier, classifier_dir
from dgm.progress import stderr_line
from dgm.train import TrainConfig, Trainer

# Per-dataset training recipes that reach the accuracy targets of docs/EVALUATION.md (BENCHMARKS.md has the numbers):
# epochs, and the augmentation that suits the data (mirrored clothes are still clothes; mirrored digits are not).
RECIPES = {"mnist": {"epochs": 4}, "fashion-mnist": {"epochs": 15, "hflip": "true"}, "usps": {"epochs": 15},
           "digits": {"epochs": 40}}
DEFAULT_EPOCHS = 10


@torch.inference_mode()
def test_accuracy(model: Classifier, data) -> float:
    """Share of a labelled ImageData the classifier gets right."""
    x = to_float(data.images)
    return float((model.predict(x) == data.labels).float().mean())


def train_classifier(dataset: str, *, data_dir=None, image_size: int | None = None, epochs: float | None = None,
                     out: str | os.PathLike | None = None, cache_dir=None, overrides: dict | None = None,
                     progress: bool = True, device: str = "auto") -> Path:
    """Train a domain classifier with the one Trainer, measure its test accuracy, return its folder."""
    out = Path(out) if out else classifier_dir(dataset, image_size, cache_dir)
    recipe = dict(RECIPES.get(dataset, {}))
    ep = epochs if epochs is not None else recipe.pop("epochs", DEFAULT_EPOCHS)
    recipe.pop("epochs", None)
    kw = split_overrides({"model": Classifier.Config, "train": TrainConfig},
                         {"device": device, **recipe, **(overrides or {})},
                         reserved={k: "taken from the dataset" for k in ("channels", "image_size", "num_classes")},
                         owner="classifier")
    ds = load_dataset(dataset, "train", data_dir=data_dir, image_size=image_size)
    tcfg = TrainConfig(**{**Classifier.train_defaults, **kw["train"], "epochs": ep})
    torch.manual_seed(tcfg.seed)
    model = Classifier.for_data(ds, kw["model"])
    extra = {"data": {"name": dataset, "image_size": ds.shape[1], "data_dir": str(data_dir) if data_dir else None}}
    Trainer(model, ds, tcfg, out, extra_config=extra, progress=progress, overwrite=True).fit()
    model = load(out)
    test = load_dataset(dataset, "test", data_dir=data_dir, image_size=image_size)
    acc = test_accuracy(model, test)
    info = {"dataset": dataset, "image_size": image_size or test.shape[1], "test_accuracy": acc,
            "n_test": len(test), "epochs": ep, "feature_dim": model.config.feature_dim}
    write_json(out / INFO, info)
    write_json(out / "eval.json", {"test_accuracy": {"value": acc, "split": "test", "n": len(test),
                                                     "protocol": "top-1 accuracy"}})
    return out


def get_classifier(dataset: str, data_dir=None, train_if_missing: bool = True, image_size: int | None = None,
                   cache_dir=None, device: str = "cpu", progress: bool = False) -> Classifier:
    """The cached domain classifier for ``dataset`` (at ``image_size``, default the native size), in eval mode.

    Trains and caches one when missing and ``train_if_missing`` (minutes on a CPU); otherwise raises FileNotFoundError
    saying how to make it.
    """
    d = classifier_dir(dataset, image_size, cache_dir)
    if not (d / INFO).is_file():
        if not train_if_missing:
            size = f" --image-size {image_size}" if image_size else ""
            raise FileNotFoundError(f"no domain classifier for {dataset!r} in {d}; train it with "
                                    f"`dgm classifier train {dataset}{size}` (a few minutes on a CPU)")
        epochs = RECIPES.get(dataset.strip().lower(), {}).get("epochs", DEFAULT_EPOCHS)
        stderr_line(f"dgm: no cached domain classifier for {dataset}: training one first ({epochs} epochs, minutes on "
                    f"a CPU; once: cached in {d}, or train it ahead with `dgm classifier train {dataset}`)")
        train_classifier(dataset, data_dir=data_dir, image_size=image_size, cache_dir=cache_dir, progress=progress)
    model = load(d, device)
    model.test_accuracy = json.loads((d / INFO).read_text())["test_accuracy"]
    model.requires_grad_(False)
    return model


def domain_classifier(name: str, size: int | None = None, data_dir=None, device: str = "cpu", cache_dir=None,
                      progress: bool = True) -> Classifier:
    """The cached classifier of dataset `name` for `size` px images (None: the native size): the native-size one
    when the sizes agree, else one trained on the resized images; trained and cached on first use (minutes on a CPU).
    The one look-up behind the sample-quality metrics, label preservation and CyCADA's frozen f_S."""
    if size is not None:
        native = NATIVE.get(name.strip().lower())
        if native is None:  # a dataset without a known native size (e.g. folder:PATH): read it from the test split
            native = load_dataset(name, "test", data_dir=data_dir).shape[1]
        size = None if size == native else size
    return get_classifier(name, data_dir=data_dir, image_size=size, device=device, cache_dir=cache_dir,
                          progress=progress)


@metric("test_accuracy", applies=lambda m: isinstance(m, Classifier), columns=(col("test_accuracy", HIGHER),))
def _test_accuracy(model, ctx):
    """Top-1 accuracy of a domain classifier on its dataset's test split."""
    test = ctx.data("test")
    if test.labels is None:
        return {}
    return {"test_accuracy": {"value": test_accuracy(model, test), "split": "test", "n": len(test),
                              "protocol": "top-1 accuracy"}}
