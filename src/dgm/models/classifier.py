"""Domain classifiers: a small CNN per dataset, the feature extractor behind "domain FID", the classifier-based
Inception Score, mode coverage and CycleGAN's label-preservation accuracy (docs/EVALUATION.md).

The network and where its cached copies live; training, finding and testing them is dgm.metrics.classifier:

    from dgm.metrics.classifier import get_classifier
    clf = get_classifier("mnist")                 # cached in <cache root>/classifiers/mnist/, trained if missing
    clf = get_classifier("usps", image_size=28)   # a classifier for USPS images resized to 28x28
    logits = clf(x01)                             # x01: float (B, C, H, W) in [0, 1] at clf's size -> (B, classes)
    feats = clf.features(x01)                     # (B, feature_dim) penultimate-layer features (domain FID)
    probs = clf.probs(x01)                        # softmax, (B, classes)
    pred = clf.predict(x01)                       # int64 (B,), batched under inference_mode
    clf.test_accuracy                             # float, measured on the dataset's test split after training

The cache root is ``$DGM_DATA``, else ``~/.cache/dgm`` (never the dataset folder, which may be read-only);
``dgm classifier train DATA`` trains one with the one Trainer. It is saved like any model (``dgm.load(dir)``
works) plus ``classifier.json`` holding its test accuracy.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm.data import to_float
from dgm.models.base import GenerativeModel, ImageConfig
from dgm.registry import register

INFO = "classifier.json"


@dataclass
class ClassifierConfig(ImageConfig):
    widths: tuple[int, ...] = (32, 64, 128)  # conv widths; a 2x2 max-pool follows every stage but the last
    feature_dim: int = 128                   # penultimate layer: what domain FID is computed on
    dropout: float = 0.3
    shift: int = 2                           # augmentation: random translation by up to this many pixels
    hflip: bool = False                      # augmentation: random horizontal flips (clothes yes, digits no)
    zoom: float = 0.0                        # augmentation: random zoom by a factor in [1/(1+zoom), 1+zoom] (0: off)
    label_smoothing: float = 0.0


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def random_shift(x: torch.Tensor, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image of (B, C, H, W) by an integer offset in [-s, s]^2, zero-filling (pad + random crop)."""
    if s <= 0:
        return x
    b, _, h, w = x.shape
    xp = F.pad(x, (s, s, s, s))
    dx = torch.randint(0, 2 * s + 1, (b,), generator=generator, device=generator.device if generator else "cpu")
    dy = torch.randint(0, 2 * s + 1, (b,), generator=generator, device=generator.device if generator else "cpu")
    dx, dy = dx.to(x.device), dy.to(x.device)
    # Gather rows/cols with index arithmetic: one crop per image without a Python loop.
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(-1, x.shape[1], -1, w + 2 * s)
    xp = xp.gather(2, rows)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return xp.gather(3, cols)


def random_zoom(x: torch.Tensor, z: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zoom each image of (B, C, H, W) about its centre by a log-uniform factor in [1/(1+z), 1+z] (bilinear,
    zero-filled): a classifier trained so reads digits drawn larger or smaller than its training set's, e.g. resized
    USPS digits that fill the frame where MNIST's sit in a 20x20 box."""
    if z <= 0:
        return x
    b = x.shape[0]
    u = torch.rand(b, generator=generator, device=generator.device if generator else "cpu").to(x.device)
    scale = torch.exp((2 * u - 1) * math.log1p(z))  # > 1 magnifies
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@register("classifier")
class Classifier(GenerativeModel):
    """conv-BN-ReLU stages (max-pooled between) -> global average pool -> Linear+ReLU (features) -> Linear (logits)."""
    Config = ClassifierConfig
    helper = True  # trained by `dgm classifier train DATA` for the domain metrics and CycleGAN's semantic loss
    train_defaults = {"lr": 2e-3, "batch_size": 128, "lr_decay_start": 0.3, "weight_decay": 1e-4,
                      "optimizer": "adamw"}

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        c = config
        if c.num_classes < 2:
            raise ValueError(f"a classifier needs a labelled dataset with >= 2 classes, got num_classes={c.num_classes}")
        layers, cin = [], c.channels
        for i, w in enumerate(c.widths):
            layers.append(_conv(cin, w))
            if i < len(c.widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(cin, c.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.feature_dim, c.num_classes))
        self.test_accuracy: float | None = None

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise ValueError(f"classifier expects images (B, {c.channels}, {c.image_size}, {c.image_size}) in [0, 1], "
                             f"got {tuple(x.shape)}; resize them or use get_classifier(..., image_size=...)")
        if x.dtype == torch.uint8:
            x = to_float(x)
        return (x.to(self.device, torch.float32) - 0.5) / 0.5

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> penultimate features (B, feature_dim)."""
        return self.fc(self.body(self._check(x01)))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.head(self.features(x01))

    logits = forward

    @torch.inference_mode()
    def probs(self, x01: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return torch.cat([F.softmax(self(x01[i:i + batch_size]).float(), 1).cpu()
                          for i in range(0, len(x01), batch_size)])

    @torch.inference_mode()
    def predict(self, x01: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return self.probs(x01, batch_size).argmax(1)

    def loss(self, batch, phase="main"):
        x, y = batch
        if y is None:
            raise ValueError("the classifier trains on labelled data; this dataset has no labels")
        x = to_float(x)
        if self.training:
            x = random_shift(random_zoom(x, self.config.zoom), self.config.shift)
            if self.config.hflip:
                flip = torch.rand(len(x), device=x.device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean().detach()}

    def preview(self, batch, generator):
        return to_float(batch[0][:64])


# -- where cached classifiers live (trained and found by dgm.metrics.classifier) --------------------------------------------------------------------------------------------
def _key(dataset: str, image_size: int | None) -> str:
    name = dataset.strip().lower().replace(":", "_").replace("/", "_")
    return f"{name}_{image_size}" if image_size else name


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where classifiers are stored: ``cache_dir``, else ``$DGM_DATA``, else ``~/.cache/dgm``; plus ``classifiers/``."""
    from dgm.data import data_root
    return Path(cache_dir).expanduser() if cache_dir else data_root(None) / "classifiers"


NATIVE = {"mnist": 28, "fashion-mnist": 28, "usps": 16, "digits": 16}


def classifier_dir(dataset: str, image_size: int | None = None, cache_dir=None) -> Path:
    """``<cache root>/<dataset>`` at the native size, ``<dataset>_<size>`` for resized images."""
    if image_size == NATIVE.get(dataset.strip().lower()):
        image_size = None
    return cache_root(cache_dir) / _key(dataset, image_size)
