"""Images in and out of the studio: a checked decoder for uploads (size, dimensions, type, corruption) that frames a
drawing or a photo like the training data, and PNG encoding of model outputs."""
from __future__ import annotations

import base64
import io

import torch

from dgm.data.framing import check_framing, frame, image_tensor
from dgm.serve.runs import StudioError

MAX_UPLOAD_BYTES = 4 * 1024 * 1024   # one uploaded image
MAX_SIDE = 4096                      # pixels on either side of an uploaded image
MAX_PIXELS = MAX_SIDE * MAX_SIDE     # pixels in all (PIL's own bomb limit is ~89 M; ours is lower)
# Decoders PIL may use on an upload: the common formats only, so an odd file never reaches a rarely used parser.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


def decode_upload(data: bytes, channels: int, size: int, *, invert: str = "auto", fit: str = "auto",
                  content_fraction: float | None = None) -> torch.Tensor:
    """Uploaded bytes -> (1, channels, size, size) float in [0, 1], or a StudioError (4xx) saying what is wrong.
    Framing (invert, fit) is dgm.data.framing's, the same as `dgm translate`'s."""
    try:
        check_framing(invert, fit)
    except ValueError as e:
        raise StudioError(422, str(e)) from None
    return frame(pixels(data, channels), size, invert=invert, fit=fit, content_fraction=content_fraction)


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
            # Framing needs no more than ~1000 pixels a side for a model input of at most a few hundred: shrunk
            # first, so a 4096x4096 upload never becomes a 200 MB float tensor.
            x = image_tensor(img, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb() from None
    except MemoryError:
        raise _bomb() from None
    except Exception as e:  # noqa: BLE001  (truncated or corrupt data, an odd mode: the parser's own errors)
        raise StudioError(400, f"the uploaded image is corrupt or truncated: {type(e).__name__}: {e}") from None
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise _bomb(x.shape[2], x.shape[1])
    return x


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
