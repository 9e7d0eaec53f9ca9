"""The GAN's own figures: dx.png (the game over training), training.gif (fixed-noise grids), and the health check
(gan_health.json, with a GANCollapseWarning for each problem it finds)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from dgm.figures.plots import pyplot, read_metrics
from dgm.figures.registry import figure
from dgm.metrics.gan_health import GANCollapseWarning, gan_health
from dgm.models.gan import PROBABILITY_LOSSES, RELATIVISTIC_LOSSES
from dgm.train import log_key


@figure("gan", families=("gan",))
def _gan(model, run_dir, data):
    rows = read_metrics(run_dir)
    out = []
    if rows and log_key(model.phases, "d", "d_real") in rows[0]:
        out.append(plot_dx(rows, run_dir / "dx.png", model.config.loss, model.phases))
    out.append(fixed_noise_gif(run_dir))
    health = gan_health(model, rows, data)
    (run_dir / "gan_health.json").write_text(json.dumps(health, indent=2) + "\n")
    for w in health["warnings"]:
        warnings.warn(w, GANCollapseWarning, stacklevel=2)
    return out


def plot_dx(rows: list[dict], path, loss: str, phases: tuple[str, ...] = ("d", "g")) -> Path:
    """The lecture's picture of the game: mean D(x) on real and generated batches over training, and D's pairwise
    real-vs-fake accuracy (0.5 = D cannot tell them apart)."""
    plt = pyplot()
    key = lambda name: log_key(phases, "d", name)  # noqa: E731
    steps = [r["step"] for r in rows]
    prob = loss in PROBABILITY_LOSSES
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    if loss in RELATIVISTIC_LOSSES:   # only the difference counts; the raw outputs drift together
        a1.plot(steps, [r[key("d_real")] - r[key("d_fake")] for r in rows], color="tab:purple",
                label="D(x) - D(G(z)), batch means")
        a1.axhline(0.0, color="gray", ls="--", lw=1, label="0 (cannot tell)")
    else:
        a1.plot(steps, [r[key("d_real")] for r in rows], label="real images: D(x)", color="tab:blue")
        a1.plot(steps, [r[key("d_fake")] for r in rows], label="generated: D(G(z))", color="tab:red")
    if prob:
        a1.axhline(0.5, color="gray", ls="--", lw=1, label="0.5 (cannot tell)")
        a1.set_ylim(-0.02, 1.02)
    a1.set_ylabel("mean D output" + (" (probability 'real')" if prob else " gap (relativistic: only it counts)"
                                     if loss in RELATIVISTIC_LOSSES else f" ({loss} critic value)"))
    a1.set_title(f"discriminator outputs ({loss} loss)")
    auc = [r[key("d_auc")] for r in rows]
    a2.plot(steps, auc, color="tab:purple")
    a2.axhline(0.5, color="gray", ls="--", lw=1, label="0.5: cannot tell")
    a2.axhline(1.0, color="black", ls=":", lw=1, label="1: D wins outright")
    a2.set_ylim(min(0.4, min(auc) - 0.02), 1.02)   # below 0.5: D ranks generated images above real ones
    a2.set_ylabel("P(D(x) > D(G(z)))")
    a2.set_title("how well D separates real from generated")
    for a in (a1, a2):
        a.set_xlabel("training step")
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def fixed_noise_gif(run_dir: Path) -> Path | None:
    """The preview grids (same noise every time) as one animation: training.gif."""
    frames = sorted((run_dir / "samples").glob("step_*.png"))
    if len(frames) < 2:
        return None
    from PIL import Image
    ims = [Image.open(f).convert("P") for f in frames]
    path = run_dir / "training.gif"
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=400, loop=0)
    return path
