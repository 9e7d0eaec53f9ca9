"""Framing a user's image like the training data: the one function `dgm translate` and the studio share.

A drawing or a photo rarely looks like a dataset image: a dark digit on white paper, off centre, in a large frame.
`frame` makes it look like one: it inverts a light background (one channel: MNIST-like data is light on dark),
crops to the object and pads it so that it fills the fraction of the frame the data's objects fill, then resizes.

    x = image_tensor(Image.open("digit.png"), channels=1)      # (1, H, W) in [0, 1]
    x = frame(x, 28)                                           # (1, 1, 28, 28), framed like MNIST
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

INVERT = ("auto", "yes", "no")
FIT = ("auto", "object", "square", "stretch")
DEFAULT_FRACTION = 0.8  # a digit's bounding box over the frame's side, when the data's own is not known


def check_framing(invert: str, fit: str) -> None:
    """ValueError (one line) for an unknown option: before any image is read."""
    if invert not in INVERT:
        raise ValueError(f"invert must be 'auto', 'yes' or 'no', got {invert!r:.80}")
    if fit not in FIT:
        raise ValueError(f"fit must be 'auto', 'object', 'square' or 'stretch', got {fit!r:.80}")


def image_tensor(img, channels: int, max_side: int = 1024) -> torch.Tensor:
    """A decoded PIL image -> (channels, H, W) float in [0, 1]. Transparency goes onto the colour that contrasts with
    the strokes; images larger than `max_side` are shrunk first (framing needs no more, and memory stays small)."""
    from PIL import Image, ImageOps
    img = ImageOps.exif_transpose(img)
    img.thumbnail((max_side, max_side), Image.BILINEAR)
    img = flatten_alpha(img).convert("L" if channels == 1 else "RGB")
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, -1)
    return x.permute(2, 0, 1).float().div(255.0)


def flatten_alpha(img):
    """Composite transparency onto the colour that contrasts with the opaque pixels (a black stroke on a transparent
    canvas becomes black on white, a white stroke white on black)."""
    import numpy as np
    from PIL import Image
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "LA"):
        return img
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    lum = np.asarray(rgba.convert("L"))
    opaque = lum[alpha > 127]
    bg = (0, 0, 0, 255) if opaque.size and opaque.mean() > 127 else (255, 255, 255, 255)
    base = Image.new("RGBA", rgba.size, bg)
    return Image.alpha_composite(base, rgba).convert("RGB")


def frame(x: torch.Tensor, size: int, *, invert: str = "auto", fit: str = "auto",
          content_fraction: float | None = None) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> (1, C, size, size) framed like the training data.

    invert: "auto" (one channel with a light border -> inverted, so a dark digit on white paper looks like MNIST's
    white on black), "yes", "no". fit: "auto" ("object" for one channel, "square" otherwise), "object" (crop to the
    object, pad it to fill `content_fraction` of a square), "square" (centre crop), "stretch" (resize as is).
    """
    check_framing(invert, fit)
    c = x.shape[0]
    if c == 1 and (invert == "yes" or (invert == "auto" and border_mean(x) > 0.5)):
        x = 1.0 - x
    if fit == "auto":
        fit = "object" if c == 1 else "square"
    x = _square(x, fit, content_fraction or DEFAULT_FRACTION)
    x = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=x.shape[-1] > size)
    return x.clamp(0, 1)


def border_mean(x: torch.Tensor) -> float:
    """Mean brightness of the one-pixel frame of a (C, H, W) image: the background's brightness."""
    return float(torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1).mean())


def _square(x: torch.Tensor, fit: str, fraction: float) -> torch.Tensor:
    """(C, H, W) -> a square (C, S, S) to be resized."""
    c, h, w = x.shape
    if fit == "stretch":
        return x
    if fit == "square":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return x[:, top:top + s, left:left + s]
    g = x.mean(0)
    on = g > 0.2 * float(g.max()) if float(g.max()) > 0.05 else None
    if on is None or not on.any():
        return _square(x, "square", fraction)
    ri, ci = on.any(1).nonzero().flatten(), on.any(0).nonzero().flatten()
    x = x[:, int(ri[0]):int(ri[-1]) + 1, int(ci[0]):int(ci[-1]) + 1]
    # Pad to a square whose side makes the object fill `fraction` of it, object centred.
    side = max(x.shape[1], x.shape[2])
    s = max(side, int(round(side / max(0.3, min(1.0, fraction)))))
    out = torch.zeros(c, s, s)
    top, left = (s - x.shape[1]) // 2, (s - x.shape[2]) // 2
    out[:, top:top + x.shape[1], left:left + x.shape[2]] = x
    return out


def content_fraction(x01: torch.Tensor) -> float:
    """How much of the frame a dataset's object fills (mean bounding-box side / image side), so drawn or uploaded
    images are framed like the training data (MNIST: a 20-pixel digit in a 28-pixel box, ~0.7)."""
    g = x01.mean(1)  # (N, H, W)
    on = g > 0.25 * g.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    rows, cols = on.any(2), on.any(1)  # (N, H), (N, W)
    fr = []
    for r, c in zip(rows, cols):
        if r.any() and c.any():
            ri, ci = r.nonzero().flatten(), c.nonzero().flatten()
            fr.append(max(int(ri[-1] - ri[0]) + 1, int(ci[-1] - ci[0]) + 1) / g.shape[-1])
    return float(sum(fr) / len(fr)) if fr else DEFAULT_FRACTION
