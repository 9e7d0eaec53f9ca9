"""Images in and out of the studio: a checked decoder for uploads (size, dimensions, type, corruption) that frames a
drawing or a photo like the training data, and PNG encoding of model outputs."""
from __future__ import annotations

import base64
import io

import torch

from dgm.serve.runs import StudioError

MAX_UPLOAD_BYTES = 4 * 1024 * 1024   # one uploaded image
MAX_SIDE = 4096                      # pixels on either side of an uploaded image
MAX_PIXELS = MAX_SIDE * MAX_SIDE     # pixels in all (PIL's own bomb limit is ~89 M; ours is lower)
# Decoders PIL may use on an upload: the common formats only, so an odd file never reaches a rarely used parser.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


def decode_upload(data: bytes, channels: int, size: int, *, invert: str = "auto", fit: str = "auto",
                  content_fraction: float | None = None) -> torch.Tensor:
    """Uploaded bytes -> (1, channels, size, size) float in [0, 1], or a StudioError (4xx) saying what is wrong.

    invert: "auto" (light background -> inverted, so a dark digit on white paper looks like MNIST's white on black),
    "yes", "no". fit: "auto" (crop to the object and frame it like the data for one channel, centre square otherwise),
    "object", "square" (centre crop), "stretch".
    """
    if invert not in ("auto", "yes", "no"):
        raise StudioError(422, f"invert must be 'auto', 'yes' or 'no', got {invert!r:.80}")
    if fit not in ("auto", "object", "square", "stretch"):
        raise StudioError(422, f"fit must be 'auto', 'object', 'square' or 'stretch', got {fit!r:.80}")
    x = pixels(data, channels)  # (C, H, W)
    if channels == 1 and (invert == "yes" or (invert == "auto" and _border_mean(x) > 0.5)):
        x = 1.0 - x
    if fit == "auto":
        fit = "object" if channels == 1 else "square"
    x = _frame(x, fit, content_fraction or 0.8)
    x = torch.nn.functional.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=x.shape[-1] > size)
    return x.clamp(0, 1)


def _bomb(w: int | None = None, h: int | None = None) -> StudioError:
    shown = f" is {w}x{h} pixels" if w else " declares too many pixels"
    return StudioError(413, f"the uploaded image{shown}; each side must be 1..{MAX_SIDE} "
                            f"(at most {MAX_PIXELS} pixels)")


def open_image(data: bytes):
    """The upload's first frame, opened with its size checked before any pixel is decoded (a small file may declare
    a huge image: a decompression bomb is 413, like any image over MAX_SIDE)."""
    import warnings
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise StudioError(400, "the uploaded file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise StudioError(413, f"the uploaded file has {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file's notices (corrupt EXIF, ...) are not the server's log
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb() from None
    except UnidentifiedImageError:
        raise StudioError(415, f"the uploaded file is not an image this server reads ({', '.join(FORMATS)})") from None
    except Exception as e:  # noqa: BLE001  (a parser's own error on malformed input, whatever its class)
        raise StudioError(400, f"the uploaded image cannot be read: {type(e).__name__}: {e}") from None
    w, h = img.size
    if w < 1 or h < 1 or w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise _bomb(w, h)
    return img


def pixels(data: bytes, channels: int) -> torch.Tensor:
    """Uploaded bytes -> (channels, H, W) float in [0, 1], at most 1024 pixels a side."""
    import warnings
    from PIL import Image
    img = open_image(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)
            img.load()  # the header was fine; this decodes the pixels and finds truncated or corrupt data
            # Framing needs no more than ~1000 pixels a side for a model input of at most a few hundred: shrink
            # first, so a 4096x4096 upload never becomes a 200 MB float tensor.
            img.thumbnail((1024, 1024), Image.BILINEAR)
            img = _flatten_alpha(img).convert("L" if channels == 1 else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb() from None
    except MemoryError:
        raise _bomb() from None
    except Exception as e:  # noqa: BLE001  (truncated or corrupt data, an odd mode: the parser's own errors)
        raise StudioError(400, f"the uploaded image is corrupt or truncated: {type(e).__name__}: {e}") from None
    if img.width < 1 or img.height < 1:
        raise _bomb(img.width, img.height)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, -1)
    return x.permute(2, 0, 1).float().div(255.0)


def _flatten_alpha(img):
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


def _border_mean(x: torch.Tensor) -> float:
    """Mean brightness of the one-pixel frame of a (C, H, W) image: the background's brightness."""
    return float(torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1).mean())


def _frame(x: torch.Tensor, fit: str, fraction: float) -> torch.Tensor:
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
        return _frame(x, "square", fraction)
    ri, ci = on.any(1).nonzero().flatten(), on.any(0).nonzero().flatten()
    x = x[:, int(ri[0]):int(ri[-1]) + 1, int(ci[0]):int(ci[-1]) + 1]
    # Pad to a square whose side makes the object fill `fraction` of it, object centred.
    side = max(x.shape[1], x.shape[2])
    s = max(side, int(round(side / max(0.3, min(1.0, fraction)))))
    out = torch.zeros(c, s, s)
    top, left = (s - x.shape[1]) // 2, (s - x.shape[2]) // 2
    out[:, top:top + x.shape[1], left:left + x.shape[2]] = x
    return out


def png_bytes(images: torch.Tensor, nrow: int = 8, pad: int = 0) -> bytes:
    """(N, C, H, W) or (C, H, W) in [0, 1] -> PNG bytes at native resolution (the page scales up, pixelated)."""
    from dgm.grids import make_grid, to_pil
    if images.dim() == 3:
        images = images.unsqueeze(0)
    images = torch.nan_to_num(images.detach().float().cpu(), nan=0.0)
    grid = images[0] if len(images) == 1 else make_grid(images, nrow=nrow, pad=pad if pad else 1)
    buf = io.BytesIO()
    to_pil(grid).save(buf, format="PNG")
    return buf.getvalue()


def data_url(images: torch.Tensor, nrow: int = 8) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(images, nrow)).decode("ascii")
