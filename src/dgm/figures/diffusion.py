"""Diffusion's own figures: denoise.png (rows: x_t and the model's x0 guess for a few samples, columns: steps from
noise to image) and denoise.gif (a 4x4 grid of samples being denoised)."""
from __future__ import annotations

from pathlib import Path

import torch

from dgm.figures.plots import pyplot
from dgm.figures.registry import figure
from dgm.grids import make_grid, save_gif


@figure("denoise", needs=("trajectory",))
def _denoise(model, run_dir, data):
    return write_denoise(model, run_dir)


def write_denoise(model, run_dir: Path) -> list[Path]:
    """denoise.png (rows: x_t and the model's x0 guess for a few samples, columns: steps from noise to image)
    and denoise.gif (a 4x4 grid of samples being denoised)."""
    frames, guesses = [], []
    g = torch.Generator().manual_seed(0)
    model.sample(16, generator=g, callback=lambda i, t, x, x0: (frames.append((t, x.clone())),
                                                                guesses.append(x0.clone())))
    to01 = lambda z: ((z.float() + 1) / 2).clamp(0, 1).cpu()  # noqa: E731
    gif = save_gif([make_grid(to01(x), nrow=4) for _, x in frames] + [make_grid(to01(frames[-1][1]), nrow=4)] * 12,
                   run_dir / "denoise.gif", duration_ms=80)
    cols = sorted(set(torch.linspace(0, len(frames) - 1, min(10, len(frames))).round().long().tolist()))
    rows = []
    for i in range(5):  # per sample: x_t row over x0-guess row
        rows.append(torch.stack([to01(frames[j][1][i]) for j in cols]))
        rows.append(torch.stack([to01(guesses[j][i]) for j in cols]))
    grid = make_grid(torch.cat(rows), nrow=len(cols))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 1.2, 1.0 * len(rows) + 0.8))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    h, w = model.config.image_size + 2, model.config.image_size + 2
    nxt = lambda j: _t(frames[j + 1][0]) if j + 1 < len(frames) else "clean"  # noqa: E731
    ax.set_xticks([2 + w * k + w / 2 - 1 for k in range(len(cols))],
                  [f"{_t(frames[j][0])}\u2192{nxt(j)}" for j in cols], fontsize=8)
    # The ddpm objective's t is a timestep index; edm's is the noise level sigma, flow's the time t in [0, 1].
    tname = {"edm": "sigma"}.get(getattr(model.config, "objective", "ddpm"), "t")
    ax.set_xlabel(f"network call at {tname} \u2192 next {tname} (from pure noise at the left to the sample at the "
                  "right)", fontsize=8)
    ax.set_yticks([2 + h * r + h / 2 - 1 for r in range(len(rows))], ["x_t", "x0 guess"] * 5, fontsize=8)
    sch = model.scheduler()
    ax.set_title(f"denoising with {sch.name}, {sch.num_steps} network calls: x_t after each and the model's x0 guess",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "denoise.png", dpi=110)
    plt.close(fig)
    return [run_dir / "denoise.png", gif]


def _t(t) -> str:
    """A timestep label: integers as they are, continuous times (sigma, flow t) to 3 significant digits."""
    return str(t) if isinstance(t, int) else f"{float(t):.3g}"
