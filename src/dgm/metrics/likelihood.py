"""Likelihood metrics: the test ELBO, the IWAE estimate of -log p(x) (Burda et al. 2015) and diffusion bits/dim.

Protocol presets (``evaluate(protocol=...)``; ``eval.json`` records the one used as ``"preset"``):

  default   IWAE with k = 1000 importance samples on a seeded random 1,000-image subset of the test split;
            bits/dim on 1,000 test images with 50 stratified timesteps each. 10^6 decoder rows: 40 s of one thread
            of a Xeon with AMX for the conv VAE on MNIST (bf16; fp32 takes 1.7x that).
  paper     IWAE with k = 5000 on the whole test split (Burda et al. 2015, sec. 5); bits/dim on the whole test split
            with every timestep (Ho et al. 2020). 5 x 10^7 rows: 33 CPU-minutes there (25,000 rows per CPU-second;
            BENCHMARKS.md, "VAE, MNIST"). An AVX2 CPU without bf16 units runs fp32: 4 hours on one before the kept
            allocator and the output layer's GEMM, which made fp32 1.6x faster on the Xeon (not re-measured there).

Why the default is k = 1000 on 1,000 images (measured on a small MNIST VAE, one thread): for the same 10^6 rows,
k = 1000 is 0.63 +- 0.17 nats above k = 5000 (40 images) and 1,000 of 10,000 images add a sampling error of
0.8 nats (per-image sd 27.5), about 1.0 nats in all; k = 5000 on 200 images has 1.8 nats of sampling error, and
k = 100 on all 10,000 a bias of 1.2 +- 0.3 nats. The record's "stderr" is the sampling error over images.

Options override a preset's numbers (``k``, ``nll_n``, ``bpd_t``; the record then says ``"preset": "custom"``).

How the IWAE estimate is computed (`iwae_nll`): images go through ``model.nll(x, k=m)`` in calls of ``m`` importance
samples for ``b`` images at a time (b x m decoder rows per call, large batches under ``inference_mode``; on a CPU
through a channels_last copy of the model, `channels_last`), and the chunks are combined exactly:
log p(x) ~= logsumexp_j(log m_j - nll_j(x)) - log k, in float64. Chunks of independent draws give the same estimator
as one call with all k samples. A tqdm bar shows the running estimate and its standard
error over images; the time the whole estimate will take is printed after the first call. Each batch of images
draws its noise from its own seed, and `dgm evaluate` keeps the finished batches in RUN/.nll_partial.pt, so a killed
estimate (the paper protocol's hours) continues where it stopped with the same numbers, and the file goes at the end.
"""
from __future__ import annotations

import copy
import hashlib
import math
from contextlib import nullcontext
from pathlib import Path

import torch

from dgm.data import binarize, to_float
from dgm.hardware import resolve_precision
from dgm.memory import tune_allocator
from dgm.metrics.registry import HIGHER, LOWER, col, metric
from dgm.nn.conv import GemmConvTranspose2d
from dgm.progress import Progress

# IWAE (k, test images) and bits/dim (test images, timesteps per image; 0 = all) of each preset; None = the whole split.
PRESETS = {"default": {"k": 1000, "nll_n": 1000, "bpd_n": 1000, "bpd_t": 50},
           "paper": {"k": 5000, "nll_n": None, "bpd_n": None, "bpd_t": 0}}
# Decoder rows per model.nll call (images x samples). With the allocator kept (dgm.memory.tune_allocator) a call's
# activations are reused when each is under glibc's 32 MiB mmap limit: for the default MNIST conv VAE (32 x 14 x 14
# floats per row) that is up to ~1,300 rows. Measured per row, one thread: 4,000 rows 105 us (untuned), 1,000 rows 80.
ROWS = 1000


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"protocol must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def subset(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random n-image subset (all images when n is None or >= n_total). Not the first n:
    a test split's first images need not be typical (MNIST's first 300 have an ELBO 2.9 nats better than the rest)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def fixed_binarisation(x01: torch.Tensor, seed: int) -> torch.Tensor:
    """One binarisation of a test set drawn with a fixed seed (docs/EVALUATION.md), the same every time."""
    return binarize(x01, torch.Generator().manual_seed(seed))


def prepared_test_set(model, ctx, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """The test images the likelihood is defined on: for a Bernoulli likelihood trained on binarised data, one fixed
    binarisation of the whole split (seed ctx.seed), so a subset's images are binarised as in the full set."""
    x = to_float(ctx.data("test").images)
    c = model.config
    if getattr(c, "likelihood", None) == "bernoulli" and getattr(c, "binarize", False):
        x, how = fixed_binarisation(x, ctx.seed), f"fixed binarisation (seed {ctx.seed})"
    else:
        how = "grayscale intensities in [0, 1]"
    return (x if idx is None else x[idx]), how


# The decoder's precision (option nll_precision): "auto" (the default) is bf16 autocast where the device runs bf16
# matrix products natively (dgm.hardware.native_bf16) and fp32 elsewhere. bf16
# moved the mean estimate by 0.008 nats on 300 MNIST test images (k = 100, the same noise; at most 0.20 on one image)
# and runs 2x faster on a CPU with AMX, but 10.8x slower on an AVX2 CPU without bf16 units. The log-weights are
# computed in float32 from the logits, and the chunks are combined in float64, at every precision.
def _autocast(device: torch.device, precision: str):
    return nullcontext() if precision == "fp32" else torch.autocast(device.type, dtype=torch.bfloat16)


def channels_last(model):
    """A copy of `model` for the IWAE's many decoder passes on a CPU, the same function up to float rounding: its
    4-d weights in channels_last memory format (oneDNN's convolutions run faster so; rows per CPU-second with
    `iwae_nll`, one thread, on an AVX2 CPU: default conv VAE 28 px 2547 -> 3464, beta-VAE 64 px 507 -> 851), and each
    transposed conv with at most 4 output channels (a decoder's output layer) as its GEMM twin, which oneDNN's
    transposed conv is slow beside with so few channels (32 -> 1 channels at 14 -> 28 px: 28 against 11 us per
    image, 1,000 images, one thread of a Xeon with AMX). Training keeps the plain layer (its step is no faster)."""
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for parent in list(fast.modules()):
        for name, m in parent.named_children():
            if type(m) is torch.nn.ConvTranspose2d and m.out_channels <= 4 and m.groups == 1 and \
                    m.dilation == (1, 1) and m.padding_mode == "zeros":
                twin = GemmConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                           m.output_padding, bias=m.bias is not None)
                twin.load_state_dict(m.state_dict())
                setattr(parent, name, twin)
    return fast


def iwae_nll(model, x: torch.Tensor, k: int, *, chunk: int = 500, batch: int | None = None, precision: str = "fp32",
             progress: bool = True, log=None, desc: str = "", cheaper: str = "", seed: int | None = None,
             partial=None) -> torch.Tensor:
    """Per-image IWAE estimate of -log p(x) in nats, float64 (N,), from `model.nll` calls of `chunk` samples for
    `batch` images (default: ROWS // chunk); see the module docstring. Noise: torch's global generator, or with
    `seed` each batch of images from its own seed (seed, batch index), so that the estimate does not depend on where
    it was interrupted. `partial` (a file path, needs `seed`): the finished batches are saved there as they finish,
    and a later call with the same model, images and settings continues from them; the file is removed at the end."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if partial is not None and seed is None:
        raise ValueError("a partial file needs a seed (each batch's noise must not depend on where a run stopped)")
    tune_allocator()
    precision = resolve_precision(precision, model.device, "nll precision")
    chunk = max(1, min(chunk, k))
    batch = batch or max(1, ROWS // chunk)
    sizes = [min(chunk, k - s) for s in range(0, k, chunk)]
    calls = math.ceil(len(x) / batch) * len(sizes)
    out = torch.empty(len(x), dtype=torch.float64)
    start, key = 0, None
    if partial is not None:
        key = _partial_key(model, x, k, chunk, batch, precision, seed)
        start = _load_partial(partial, key, out)
        if start and log is not None:
            log(f"IWAE k={k}: continuing from image {start} of {len(x)} ({partial})")
    bar = Progress(calls, desc or f"IWAE k={k}", unit="call", log=log, enabled=progress, say_after=0,
                   what=f"k={k} on {len(x)} images ({calls} calls of {min(batch, len(x))}x{sizes[0]} decoder rows)",
                   cheaper=cheaper, initial=start // batch * len(sizes))
    with torch.inference_mode(), _autocast(model.device, precision):
        for i in range(start, len(x), batch):
            if seed is not None:
                torch.manual_seed(seed * 1_000_003 + i // batch)
            xb = x[i:i + batch].to(model.device)
            parts = []
            for m in sizes:
                parts.append(math.log(m) - model.nll(xb, k=m).double().cpu())
                bar.update()
            out[i:i + len(xb)] = -(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
            seen = out[:i + len(xb)]
            if len(seen) > 1:
                bar.set_postfix(f"nll {seen.mean():.2f} ± {seen.std() / math.sqrt(len(seen)):.2f}")
            if partial is not None and i + len(xb) < len(x):
                _save_partial(partial, key, out[:i + len(xb)])
    bar.close()
    if partial is not None:
        Path(partial).unlink(missing_ok=True)
    return out


def _partial_key(model, x, k, chunk, batch, precision, seed) -> str:
    """What a partial IWAE file must match to be continued: the weights, the images and every setting."""
    h = hashlib.sha256()
    for t in list(model.state_dict().values()) + [x]:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(repr((k, chunk, batch, precision, seed, tuple(x.shape))).encode())
    return h.hexdigest()[:32]


def _load_partial(path, key: str, out: torch.Tensor) -> int:
    """Fill `out` from a partial file that matches `key`; returns how many images it holds (0: none or stale)."""
    path = Path(path)
    if not path.is_file():
        return 0
    try:
        saved = torch.load(path, weights_only=True)
        done = saved["values"]
        if saved["key"] != key or done.dtype != torch.float64 or len(done) > len(out):
            return 0
    except Exception:  # a damaged or foreign file: start again (it is overwritten by the first batch)
        return 0
    out[:len(done)] = done
    return len(done)


def _save_partial(path, key: str, done: torch.Tensor) -> None:
    from dgm.io import atomic_write
    atomic_write(path, lambda tmp: torch.save({"key": key, "values": done.clone()}, tmp))


def _stats(vals: torch.Tensor) -> dict:
    v = vals.double()
    return {"value": float(v.mean()), "stderr": float(v.std() / math.sqrt(len(v))) if len(v) > 1 else None}


@metric("elbo", needs=("elbo",), columns=(col("test_elbo", HIGHER, "nats", rank=71),))
def _elbo(model, ctx):
    """Test ELBO, one z per image, on the first ctx.n test images."""
    x, how = prepared_test_set(model, ctx)
    x = x[: ctx.n]
    torch.manual_seed(ctx.seed)
    vals = torch.cat([model.elbo(x[i:i + 500].to(model.device)).double().cpu() for i in range(0, len(x), 500)])
    return {"test_elbo": {**_stats(vals), "unit": "nats", "split": "test", "n": len(x), "data": how,
                          "protocol": "one z sample per image"}}


def nll_plan(ctx, n_test: int) -> dict:
    """k, the number of test images and the preset's name ("custom" when an option or a smaller ctx.n changed one
    of its numbers) that the nll metric uses."""
    p = preset(ctx.preset)
    k = int(ctx.options.get("k") or p["k"])
    n_preset = min(n_test, p["nll_n"] or n_test)
    n = min(n_test, int(ctx.options["nll_n"])) if ctx.options.get("nll_n") else min(n_preset, ctx.n)
    return {"k": k, "n": n, "preset": ctx.preset if (k, n) == (p["k"], n_preset) else "custom"}


def _which(idx, n_test: int, seed: int) -> str:
    return "the whole test split" if len(idx) == n_test else f"a seeded random subset of {len(idx)} (seed {seed})"


@metric("nll", needs=("nll",), columns=(col("test_nll", LOWER, "nats", rank=70),))
def _nll(model, ctx):
    """IWAE estimate of the test NLL with the context's preset (module docstring)."""
    n_test = len(ctx.data("test"))
    plan = nll_plan(ctx, n_test)
    idx = subset(n_test, plan["n"], ctx.seed)
    x, how = prepared_test_set(model, ctx, idx)
    precision = resolve_precision(ctx.options.get("nll_precision", "auto"), model.device, "nll precision")
    # A model that is not an nn.Module (benchmarks/compare's wrapper of another library's VAE) is used as it is:
    # no channels_last copy, and a partial file only if it has a state_dict (the file's key hashes the weights)
    fast = ctx.options.get("nll_channels_last", isinstance(model, torch.nn.Module) and model.device.type == "cpu")
    # A killed estimate (the paper protocol takes hours) continues from the batches it finished: run/.nll_partial.pt
    vals = iwae_nll(channels_last(model) if fast else model, x, plan["k"], chunk=int(ctx.options.get("nll_chunk", 500)),
                    batch=ctx.options.get("nll_batch"), precision=precision,
                    progress=ctx.options.get("progress", True), log=ctx.log, seed=ctx.seed,
                    partial=ctx.run_dir / ".nll_partial.pt" if hasattr(model, "state_dict") else None,
                    cheaper="" if plan["k"] <= 100 else f"--k 100 (or --nll-n {max(100, plan['n'] // 10)})")
    rec = {**_stats(vals), "unit": "nats", "split": "test", "n": len(idx), "k": plan["k"], "preset": plan["preset"],
           "images": _which(idx, n_test, ctx.seed), "data": how,
           "protocol": "IWAE estimate (Burda et al. 2015); stderr over images", "precision": precision}
    return {"test_nll": rec}


@metric("bpd", needs=("bits_per_dim",),
        columns=(col("bpd", LOWER, "bits/dim", rank=72), col("bpd_small", LOWER, "bits/dim", rank=73),
                 col("bpd_large", LOWER, "bits/dim", rank=74)))
def _bpd(model, ctx):
    """Variational bound in bits/dim on the test split; K stratified timesteps per image (all T with bpd_t=0)."""
    p = preset(ctx.preset)
    test = ctx.data("test")
    n_preset = min(len(test), p["bpd_n"] or len(test))
    n = min(len(test), int(ctx.options["nll_n"])) if ctx.options.get("nll_n") else min(n_preset, ctx.n)
    t = int(ctx.options.get("bpd_t", p["bpd_t"]))
    k = t or None
    name = ctx.preset if (n, t) == (n_preset, p["bpd_t"]) else "custom"
    idx = subset(len(test), n, ctx.seed)
    x = test.images[idx]
    g = torch.Generator().manual_seed(ctx.seed)
    parts = [model.vlb_terms(x[i:i + 250], k, g) for i in range(0, len(x), 250)]
    d = x[0].numel() * math.log(2)
    out = {}
    for var in ("small", "large"):
        tot = torch.cat([q[f"total_{var}"] for q in parts]).cpu() / d
        out[f"bpd_{var}"] = {**_stats(tot), "unit": "bits/dim", "split": "test", "n": len(tot), "preset": name,
                             "images": _which(idx, len(test), ctx.seed),
                             "timesteps": f"{k} stratified per image" if k else "all",
                             "prior_bpd": float(torch.cat([q["prior"] for q in parts]).mean() / d),
                             "decoder_bpd": float(torch.cat([q[f"decoder_{var}"] for q in parts]).mean() / d),
                             "protocol": f"variational bound (Ho et al. 2020 eq. 5), reverse variance {var}, "
                                         "discretised Gaussian decoder on 8-bit data"}
    best = min(("small", "large"), key=lambda v: out[f"bpd_{v}"]["value"])
    out["bpd"] = {**out[f"bpd_{best}"], "variance": best}
    return out
