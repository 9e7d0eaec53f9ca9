"""Differentiable augmentation for GAN discriminators (DiffAugment, Zhao et al. 2020).

D sees T(x) for real and T(G(z)) for generated images, with T drawn afresh per example from one policy, in both the D
and the G update; G's gradient flows back through T, so every T here is differentiable in its input (pixel copies
and masks; the random parameters themselves carry no gradient). Because both sides are transformed alike, D cannot
use the transform to tell them apart, and G is pushed towards the untransformed distribution: sampling never applies
T. The transforms and their strengths follow Zhao et al. 2020 (sec. 3, "color + translation + cutout"):

- ``translation``: shift by an integer number of pixels in [-H/8, H/8] (rounded) per axis, filling with 0 (the middle
  of the [-1, 1] range, as in the paper);
- ``cutout``: zero a square of half the image side at a uniformly random centre (clipped at the border);
- ``color``: brightness (+ U[-0.5, 0.5]), saturation (deviation from the channel mean x U[0, 2]; a no-op on one
  channel), contrast (deviation from the image mean x U[0.5, 1.5]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")  # applied in this order, as in the paper


def parse_policy(text: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout') in the order they are applied; '' or 'none' -> ()."""
    if text is None:
        return ()
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    parts = [p for p in parts if p != "none"]
    bad = [p for p in parts if p not in POLICIES]
    if bad:
        raise ValueError(f"augment must be a comma-separated list of {', '.join(POLICIES)} (or none), got {text!r}")
    return tuple(p for p in POLICIES if p in parts)


def _rand(shape, generator, device) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(lo: int, hi: int, shape, generator, device) -> torch.Tensor:
    """Integers in [lo, hi] (both ends included)."""
    if generator is None:
        return torch.randint(lo, hi + 1, shape, device=device)
    return torch.randint(lo, hi + 1, shape, generator=generator, device=generator.device).to(device)


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Shift image b by (dx[b], dy[b]) whole pixels (right, down): out[b, :, i, j] = x[b, :, i - dy[b], j - dx[b]],
    `fill` where that falls outside. Differentiable in x (each output pixel is one input pixel or the fill)."""
    b, _, h, w = x.shape
    s = int(max(dx.abs().max(), dy.abs().max())) if b else 0
    if s == 0:
        return x
    xp = F.pad(x, (s, s, s, s), value=fill)
    rows = torch.arange(h, device=x.device)[None, :] + s - dy.to(x.device)[:, None]   # (B, H) rows of xp
    cols = torch.arange(w, device=x.device)[None, :] + s - dx.to(x.device)[:, None]   # (B, W)
    idx = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices split by a slice put their dimensions first: (B, H, W, C).
    return xp[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout_mask(shape, cy: torch.Tensor, cx: torch.Tensor, size: int, device=None) -> torch.Tensor:
    """(B, 1, H, W) mask, 0 inside the size x size square whose top-left corner is (cy - size // 2, cx - size // 2),
    1 elsewhere."""
    b, _, h, w = shape
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    y0, x0 = (cy - size // 2).to(device)[:, None, None], (cx - size // 2).to(device)[:, None, None]
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    return (~inside)[:, None]


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> torch.Tensor:
    """x (B, C, H, W) in about [-1, 1] -> T(x), one random draw per example for each transform in `policy`."""
    if not policy or x.shape[0] == 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    if "color" in policy:
        x = x + (_rand((b, 1, 1, 1), generator, dev) - 0.5).to(x.dtype)
        if c > 1:
            m = x.mean(1, keepdim=True)
            x = (x - m) * (2 * _rand((b, 1, 1, 1), generator, dev)).to(x.dtype) + m
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * (_rand((b, 1, 1, 1), generator, dev) + 0.5).to(x.dtype) + m
    if "translation" in policy:
        sy, sx = int(h * translation_ratio + 0.5), int(w * translation_ratio + 0.5)
        dy = _randint(-sy, sy, (b,), generator, dev)
        dx = _randint(-sx, sx, (b,), generator, dev)
        x = translate(x, dx, dy)
    if "cutout" in policy:
        size = max(1, int(min(h, w) * cutout_ratio + 0.5))
        cy = _randint(0, h - 1, (b,), generator, dev)
        cx = _randint(0, w - 1, (b,), generator, dev)
        x = x * cutout_mask(x.shape, cy, cx, size, dev).to(x.dtype)
    return x
