"""Image grids and files from tensors: PIL only, no plotting library. Low in the house so the Trainer can write its
preview grids; plots with axes and labels live in dgm.figures."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (C, H', W') grid, `nrow` images per row, light separators."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    grid = torch.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    return grid


def to_pil(img: torch.Tensor, min_size: int = 0):
    """(C, H, W) in [0, 1] -> PIL image, upscaled with nearest neighbour to at least `min_size` pixels wide."""
    from PIL import Image
    arr = (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr)
    if min_size and pil.width < min_size:
        k = -(-min_size // pil.width)
        pil = pil.resize((pil.width * k, pil.height * k), Image.NEAREST)
    return pil


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, min_size: int = 512) -> Path:
    """Save a grid of images as PNG, scaled up so small digits are readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(images, nrow), min_size).save(path)
    return path


def font(size: int = 14):
    """PIL's bundled scalable font at `size` pixels (Pillow >= 10.1), else its small bitmap font."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: no sizes
        return ImageFont.load_default()


def labelled_grid(images: torch.Tensor, nrow: int = 8, *, title: str = "", row_labels: list[str] | None = None,
                  col_labels: list[str] | None = None, min_size: int = 512, pad: int = 2, font_size: int = 14,
                  label_width: int | None = None):
    """A grid of images (as `save_grid` draws it) framed with a title above, one label per row on the left and one
    per column on top. Returns a PIL image (RGB); labels that are None or empty leave their band out."""
    from PIL import Image, ImageDraw
    n, _, h, w = images.shape
    ncol = min(nrow, n)
    grid = to_pil(make_grid(images, ncol, pad), min_size).convert("RGB")
    k = grid.width / (ncol * (w + pad) + pad)  # the upscaling factor
    f, small = font(font_size), font(max(9, font_size - 3))
    draw0 = ImageDraw.Draw(grid)
    text_w = lambda t, fnt: draw0.textlength(t, font=fnt)  # noqa: E731
    left = 0
    if row_labels:
        left = label_width or int(max(text_w(t, small) for t in row_labels) + 12)
    col_h = int(font_size * 1.6) if col_labels else 0
    title_h = int(font_size * 2.0) if title else 0
    width = left + grid.width
    if title:
        # Wrap a long title to the canvas width (word by word).
        lines, line = [], ""
        for word in title.split():
            cand = f"{line} {word}".strip()
            if line and text_w(cand, f) > width - 12:
                lines.append(line)
                line = word
            else:
                line = cand
        lines.append(line)
        title_h = int(font_size * 1.35 * len(lines) + font_size * 0.7)
    canvas = Image.new("RGB", (width, title_h + col_h + grid.height), "white")
    canvas.paste(grid, (left, title_h + col_h))
    draw = ImageDraw.Draw(canvas)
    if title:
        for i, ln in enumerate(lines):
            draw.text((width / 2, font_size * 0.4 + i * font_size * 1.35), ln, fill="black", font=f, anchor="ma")
    if col_labels:
        for j, t in enumerate(col_labels[:ncol]):
            if t:
                x = left + (pad + j * (w + pad) + w / 2) * k
                draw.text((x, title_h + col_h - 3), str(t), fill=(60, 60, 60), font=small, anchor="md")
    if row_labels:
        rows = -(-n // ncol)
        for i, t in enumerate(row_labels[:rows]):
            if t:
                y = title_h + col_h + (pad + i * (h + pad) + h / 2) * k
                draw.text((left - 6, y), str(t), fill=(60, 60, 60), font=small, anchor="rm")
    return canvas


def save_labelled_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, **labels) -> Path:
    """`labelled_grid` written to a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(images, nrow, **labels).save(path)
    return path


def save_gif(frames: list[torch.Tensor], path: str | os.PathLike, duration_ms: int = 80, min_size: int = 256) -> Path:
    """Frames: list of (C, H, W) in [0, 1] -> looping animated GIF."""
    pils = [to_pil(f, min_size).convert("P") for f in frames]
    path = Path(path)
    pils[0].save(path, save_all=True, append_images=pils[1:], duration=duration_ms, loop=0)
    return path
