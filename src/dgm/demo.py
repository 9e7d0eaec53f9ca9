"""`dgm demo`: the lecture in about five minutes on two CPU cores, offline.

Short runs of the families the lecture draws, each on a budget of process CPU time (the Trainer's `minutes`), on the
12,000 real MNIST digits packaged with dgm (`mnist-mini`), two at a time in two processes of one thread each; then one
static page, RUN/index.html, that puts every figure beside the sentence of the lecture it illustrates, and one
labelled summary picture, RUN/summary.png. `dgm serve RUN` opens the studio over the same runs.

    from dgm.demo import run_demo
    page = run_demo("runs/demo")                     # 6.7 CPU-minutes of training in all
    page = run_demo("runs/demo_quick", steps=5, jobs=1)   # a few steps each, in this process (tests)

The runs, their budgets and options are PARTS; what the page says about them is SECTIONS.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgm.config import UsageError
from dgm.data import load_dataset, to_float
from dgm.figures.health import run_problems
from dgm.figures.plots import class_names, plot_latent, pyplot, read_metrics
from dgm.grids import make_grid
from dgm.io import RunError, load, read_config

DATA = "mnist-mini"


@dataclass(frozen=True)
class Part:
    """One run of the demo: a family trained on `data` for `minutes` of CPU time with `options` (--set)."""
    name: str
    family: str
    minutes: float
    options: dict[str, str] = field(default_factory=dict)
    data: str = DATA
    image_size: int | None = None
    title: str = ""

    def command(self, out: Path, scale: float = 1.0, steps: int | None = None) -> list[str]:
        """The `dgm train` arguments of this run (what the page prints, and what a worker process runs)."""
        args = ["train", self.family, "--data", self.data, "--out", str(out / self.name), "-q"]
        if self.image_size:
            args += ["--image-size", str(self.image_size)]
        if steps:
            args += ["--steps", str(steps)]
        else:
            args += ["--set", f"minutes={self.minutes * scale:.4g}"]
        for k, v in self.options.items():
            args += ["--set", f"{k}={v}"]
        return args


# Longest first: two workers take the next run as they finish, so the two cores end at about the same time.
PARTS: tuple[Part, ...] = (
    # A small UNet on 16x16 digits, v-prediction on the cosine schedule: cleaner samples than eps at this budget.
    Part("diffusion", "diffusion", 2.5, {"base_channels": "16", "channel_mults": "1,2", "attn_levels": "",
                                         "prediction": "v", "schedule": "cosine", "batch_size": "32", "lr": "2e-3",
                                         "warmup_steps": "0", "ema_decay": "0.995", "sampler": "dpm++2m",
                                         "sample_steps": "20"},
         image_size=16, title="Diffusion"),
    # Two time-scale learning rates (G faster than D) keep D from winning outright at this budget.
    Part("gan", "gan", 1.5, {"width": "32", "g_lr": "4e-4", "d_lr": "1e-4", "ema_decay": "0.99"}, title="GAN (DCGAN)"),
    Part("cyclegan", "cyclegan", 1.0, {"gen_width": "16", "gen_blocks": "3", "disc_width": "16"},
         data=f"unpaired:{DATA},digits", image_size=28, title="CycleGAN"),
    Part("beta_vae", "beta-vae", 0.7, {"arch": "mlp", "latent_dim": "8", "beta": "4", "batch_size": "128",
                                       "lr": "1e-3"}, title="beta-VAE (beta = 4)"),
    Part("ae", "ae", 0.5, {"arch": "mlp", "latent_dim": "2"}, title="Autoencoder (2-D code)"),
    Part("vae", "vae", 0.5, {"arch": "mlp", "latent_dim": "2"}, title="VAE (2-D latent)"),
)
PART_NAMES = tuple(p.name for p in PARTS)


# -- what the page says: (heading, lecture slide, lead, rows of (part, figure file, caption)) --------------------
SECTIONS = [
    ("Autoencoder and VAE: the latent space", "slides 4-5",
     "Both models squeeze each 28x28 digit into two numbers and decode it again. The VAE adds one term to the loss, "
     "KL(q(z|x) || N(0, I)), and that term decides whether the latent space can be sampled.",
     [[("ae", "latent.png", "The autoencoder's codes of the test digits, coloured by digit: clusters, as on the "
                           "lecture's slide, but spread over an arbitrary, lopsided region with empty gaps between "
                           "them, because nothing in its loss says where codes should lie."),
       ("vae", "latent.png", "The VAE's posterior means of the same digits: the KL term pulls every code towards "
                             "N(0, I), so the digits sit side by side in one round cloud around 0, with no gaps: "
                             "nearby points mean similar digits.")],
      [("ae", "samples.png", "Samples from the autoencoder: it has no prior, so dgm draws codes from a Gaussian "
                             "fitted to its training codes. Codes that land in the gaps decode to blots, not "
                             "digits: an autoencoder is not a generative model."),
       ("vae", "samples.png", "Samples from the VAE: z ~ N(0, I), the very distribution its codes were pulled "
                              "towards, so every random point decodes to a digit (blurry: two latent numbers and "
                              "half a CPU-minute of training).")],
      [("ae", "latent_grid.png", "The autoencoder's latent plane decoded on a regular grid: where no training code "
                                 "lies, the decoder was never told what to draw."),
       ("vae", "latent_grid.png", "The VAE's latent plane on the same kind of grid: one digit morphs smoothly "
                                  "into the next everywhere, the picture of Kingma & Welling (2014, fig. 4).")],
      [("ae", "reconstructions.png", "Both reconstruct well enough (test digits, odd rows, above their "
                                     "reconstructions): reconstruction alone is not what makes a model "
                                     "generative."),
       ("vae", "interpolation.png", "A straight line between the codes of two test images (left and right) "
                                    "decodes to a path of plausible digits, because the VAE's latent space has no "
                                    "holes.")]]),
    ("beta-VAE: disentangled factors", "slide 8",
     "Weighting the KL term by beta > 1 (here 4) makes each latent dimension costly, so the model keeps only a few "
     "and each tends to control one property of the image.",
     [[("beta_vae", "traversal.png", "Each row changes one latent dimension from -3 to +3 and keeps the others "
                                     "at a test digit's code; rows are sorted by how much the dimension is used "
                                     "(its KL). The most used rows morph the digit into another (on MNIST the "
                                     "largest factor is which digit it is) or change its thickness or slant; the "
                                     "rows with a KL near 0 were switched off by the heavier KL term and change "
                                     "nothing.")]]),
    ("GAN: the generator against the discriminator", "slide 7",
     "Two networks play: the generator G turns noise into images, the discriminator D tells real images from "
     "generated ones, and G learns only from D's verdicts.",
     [[("gan", "samples.png", "Samples G(z) from 64 noise vectors: digits the generator has never seen; it never "
                              "looked at a training image, only at D's gradient."),
       ("gan", "dx.png", "D's mean output P(real) on real images (blue) and on generated ones (red). G keeps "
                         "pulling the red curve up towards the blue one, and both close in on 0.5: the end of the "
                         "game, where D can no longer tell fake from real. Right: how often D ranks a real image "
                         "above a generated one (1: D wins outright, 0.5: a coin toss).")]]),
    ("CycleGAN: translation without pairs", "slide 8",
     "Two generators translate between two domains that share no paired examples, here real MNIST digits (A) and "
     "the blocky 8x8 scikit-learn digits (B); the cycle loss asks that A -> B -> A returns the image it started "
     "from.",
     [[("cyclegan", "translations.png", "Rows: test images of each domain, their translation, the translation "
                                        "translated back (the cycle) and the identity check. With a minute of "
                                        "training the style moves (thin strokes become blocky and back) while "
                                        "the digit mostly stays.")]]),
    ("Diffusion: denoising from pure noise", "slide 8",
     "A diffusion model is trained to remove a little Gaussian noise from a noisy image; sampling starts from pure "
     "noise and applies it step after step.",
     [[("diffusion", "denoise.png", "Columns: sampling steps from pure noise (left) to the sample (right). For "
                                    "each sample, the upper row is the current noisy image x_t and the lower row "
                                    "the network's guess of the clean image at that step: the digit appears "
                                    "out of the noise."),
       ("diffusion", "samples.png", "Samples from the diffusion model (16x16 digits, a 164k-parameter UNet, 2.5 "
                                    "CPU-minutes of training): strokes on their way to digits. Diffusion models "
                                    "need many more epochs than a GAN; BENCHMARKS.md has one trained for hours.")]]),
]


# -- running the parts -----------------------------------------------------------------------------------------
def _clear(run: Path) -> None:
    """Remove an earlier demo run in `run` (a fresh run refuses a folder that holds one); refuse anything else."""
    if not run.exists():
        return
    if run.is_dir() and ((run / "config.json").is_file() or not any(run.iterdir())):
        shutil.rmtree(run)
        return
    raise UsageError(f"{run} exists and is not a run folder; the demo will not delete it (choose another --out)")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def _train_in_process(part: Part, out: Path, scale: float, steps: int | None) -> None:
    from dgm.tasks import train  # the demo sits beside tasks in the house's layers
    opts = dict(part.options)
    if not steps:
        opts["minutes"] = f"{part.minutes * scale:.4g}"
    train(part.family, part.data, steps=steps or 0, out=out / part.name, overrides=opts,
          image_size=part.image_size, progress=False)


def _train_subprocess(part: Part, out: Path, scale: float, steps: int | None) -> None:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dgm.cli", *part.command(out, scale, steps)]
    with open(logs / f"{part.name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_worker_env()).returncode
    if rc != 0:
        tail = (logs / f"{part.name}.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"exit code {rc}: {tail[0] if tail else 'no output'} (log: {logs / part.name}.log)")


def _run_part(part: Part, out: Path, scale: float, steps: int | None, jobs: int, say) -> dict:
    t0 = time.perf_counter()
    res = {"part": part, "error": None}
    try:
        (_train_in_process if jobs == 1 else _train_subprocess)(part, out, scale, steps)
    except Exception as e:  # one failed run should not take the page with it
        res["error"] = f"{type(e).__name__}: {e}"
    res["wall_s"] = time.perf_counter() - t0
    if res["error"]:
        say(f"  {part.name}: FAILED ({res['error']})")
    else:
        prog = read_config(out / part.name).get("progress", {})
        say(f"  {part.name}: {prog.get('checkpoint_step', '?')} steps, {prog.get('cpu_seconds', 0):.0f} CPU-s "
            f"of training, {res['wall_s']:.0f} s wall")
    return res


def _check(res: dict, out: Path) -> None:
    """Progress numbers from config.json and the degenerate-run checks, into `res`."""
    part = res["part"]
    run = out / part.name
    if res["error"]:
        return
    try:
        cfg = read_config(run)
        res["progress"] = cfg.get("progress", {})
        res["problems"] = run_problems(run)
    except (RunError, OSError, ValueError) as e:
        res["error"] = f"{type(e).__name__}: {e}"


def run_demo(out: str | os.PathLike = "runs/demo", *, jobs: int = 2, scale: float = 1.0, steps: int | None = None,
             parts: list[str] | None = None, say=print) -> Path:
    """Train the demo's runs into `out`/<part>/ and write `out`/index.html and `out`/summary.png; returns the page.

    `jobs`: runs trained at once, each in its own process with one thread (1: one after another, in this process).
    `scale` multiplies every run's CPU-time budget; `steps` replaces the budgets by a step count (quick checks).
    `parts`: a subset of PART_NAMES. Runs that fail are reported on the page and by `say`; the rest go on."""
    out = Path(out)
    if jobs < 1:
        raise UsageError(f"jobs must be >= 1, got {jobs}")
    if not scale > 0:
        raise UsageError(f"scale must be > 0, got {scale}")
    if steps is not None and steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    unknown = sorted(set(parts or ()) - set(PART_NAMES))
    if unknown:
        raise UsageError(f"unknown demo part {unknown[0]!r}; parts: {', '.join(PART_NAMES)}")
    todo = [p for p in PARTS if parts is None or p.name in parts]
    for p in todo:
        _clear(out / p.name)
    out.mkdir(parents=True, exist_ok=True)
    budget = "" if steps else f" on {sum(p.minutes for p in todo) * scale:.1f} CPU-minutes in all"
    say(f"dgm demo: training {len(todo)} runs ({', '.join(p.name for p in todo)}) on the packaged MNIST digits"
        f"{budget}, {min(jobs, len(todo))} at a time...")
    t0, c0 = time.perf_counter(), _cpu_now()
    if jobs == 1:
        results = [_run_part(p, out, scale, steps, 1, say) for p in todo]
    else:
        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(lambda p: _run_part(p, out, scale, steps, jobs, say), todo))
    say("checking the runs and writing the page...")
    for r in results:
        _check(r, out)
    summary = write_summary(out, results)
    return write_page(out, results, summary, wall_s=time.perf_counter() - t0, cpu_s=_cpu_now() - c0, steps=steps,
                      scale=scale)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def _cpu_now() -> float:
    """CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# -- the summary picture ---------------------------------------------------------------------------------------
def _ok(results: list[dict], name: str) -> bool:
    return any(r["part"].name == name and not r["error"] for r in results)


def _imshow(ax, images: torch.Tensor, nrow: int) -> None:
    g = make_grid(images, nrow=nrow).permute(1, 2, 0).numpy()
    ax.imshow(g[..., 0] if g.shape[2] == 1 else g, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _missing(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\n(not run)", ha="center", va="center", fontsize=10, color="gray")
    ax.axis("off")


@torch.inference_mode()
def write_summary(out: Path, results: list[dict]) -> Path:
    """summary.png: a labelled 2x3 panel of the lecture's key pictures, drawn afresh from the trained models."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.6))
    (a_ae, a_vae, a_smp), (a_gan, a_dx, a_dif) = axes
    test = load_dataset(DATA, "test")
    names = class_names(test)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for ax, name, what in ((a_ae, "ae", "codes"), (a_vae, "vae", "posterior means")):
        if not _ok(results, name):
            _missing(ax, name)
            continue
        model = load(out / name)
        z = model.encode(to_float(test.images)).float().numpy()
        title = ("(a) Autoencoder: 2-D codes of test digits\nclusters with gaps, no prior" if name == "ae" else
                 "(b) VAE: 2-D posterior means\npulled towards N(0, I) by the KL term")
        plot_latent(z, test.labels.numpy(), None, title, names=names, ax=ax)
        ax.set_xlabel(f"z1 ({what})")
    if _ok(results, "ae") and _ok(results, "vae"):
        ae, vae = load(out / "ae"), load(out / "vae")
        size = ae.config.image_size
        gap = torch.ones(6, ae.config.channels, size, size)
        both = torch.cat([ae.sample(18, generator=g()), gap, vae.sample(18, generator=g())])
        _imshow(a_smp, both, nrow=6)
        a_smp.set_title("(c) Random latent points decoded:\nautoencoder (blots in its gaps) vs VAE")
        h = size + 2
        a_smp.set_yticks([2 + 1.5 * h, 2 + 5.5 * h], ["AE", "VAE"], fontsize=11)
    else:
        _missing(a_smp, "ae / vae samples")
    if _ok(results, "gan"):
        _imshow(a_gan, load(out / "gan").sample(36, generator=g()), nrow=6)
        a_gan.set_title("(d) GAN: samples G(z) from noise")
        rows = read_metrics(out / "gan")
        steps = [r["step"] for r in rows]
        a_dx.plot(steps, [r["d/d_real"] for r in rows], color="tab:blue", label="D(x) on real images")
        a_dx.plot(steps, [r["d/d_fake"] for r in rows], color="tab:red", label="D(G(z)) on generated images")
        a_dx.axhline(0.5, color="gray", ls="--", lw=1, label="0.5: D cannot tell")
        a_dx.set_ylim(-0.02, 1.02)
        a_dx.set_xlabel("training step")
        a_dx.set_ylabel("mean P(real) from the discriminator")
        a_dx.set_title("(e) GAN: D's P(real) on real and generated\nimages closes in on 0.5 (D cannot tell)")
        a_dx.legend(fontsize=8, loc="best")
        a_dx.grid(alpha=0.3)
    else:
        _missing(a_gan, "gan")
        _missing(a_dx, "gan")
    if _ok(results, "diffusion"):
        model = load(out / "diffusion")
        frames = []
        model.sample(4, generator=g(), callback=lambda i, t, x, x0: frames.append(x.clone()))
        cols = torch.linspace(0, len(frames) - 1, 8).round().long().tolist()
        strip = torch.stack([((frames[j] + 1) / 2).clamp(0, 1) for j in cols], 1).flatten(0, 1)
        _imshow(a_dif, strip, nrow=len(cols))
        a_dif.set_title("(f) Diffusion: denoising from pure noise\n(left) to a digit (right), 4 samples")
        a_dif.set_xlabel("sampling steps \u2192")
    else:
        _missing(a_dif, "diffusion")
    fig.suptitle("dgm demo: what the lecture's generative models learn from 10,000 MNIST digits in minutes of CPU",
                 fontsize=13)
    fig.tight_layout()
    path = out / "summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- the page --------------------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd} .slide{color:#777;font-size:.8em;font-weight:normal}
.row{display:flex;gap:1.5em;flex-wrap:wrap;margin:1em 0} figure{flex:1 1 480px;margin:0}
figure img{width:100%;border:1px solid #eee} figcaption{font-size:.92em;margin-top:.3em}
.missing{color:#a00} code,pre{background:#f5f5f5;border-radius:3px;padding:.1em .3em} pre{padding:.6em;overflow-x:auto}
table{border-collapse:collapse;font-size:.88em} td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
.warn{color:#a60}"""


def _figure(out: Path, results: dict, part: str, file: str, caption: str) -> str:
    r = results.get(part)
    title = html.escape(r["part"].title if r else part)
    if r is None:
        return f'<figure><p class="missing">{title}: not part of this demo run.</p></figure>'
    if r["error"] or not (out / part / file).is_file():
        why = html.escape(r["error"] or f"{file} was not written")
        return f'<figure><p class="missing">{title}: {why}</p><figcaption>{html.escape(caption)}</figcaption></figure>'
    src = html.escape(f"{part}/{file}")
    return (f'<figure><a href="{src}"><img src="{src}" alt="{title}: {html.escape(file)}"></a>'
            f"<figcaption><b>{title}.</b> {html.escape(caption)}</figcaption></figure>")


def _run_table(results: list[dict], out: Path, steps: int | None, scale: float) -> str:
    rows = []
    for r in results:
        p, prog = r["part"], r.get("progress", {})
        status = (f'<span class="missing">{html.escape(r["error"])}</span>' if r["error"] else
                  "<br>".join(f'<span class="warn">{html.escape(w)}</span>' for w in r.get("problems", []))
                  or "ok")
        cmd = "dgm " + " ".join(p.command(out, scale, steps))
        rows.append(f"<tr><td><a href=\"{html.escape(p.name)}/\">{html.escape(p.name)}</a></td>"
                    f"<td>{html.escape(p.family)}</td><td>{html.escape(p.data)}</td>"
                    f"<td>{prog.get('checkpoint_step', '-')}</td><td>{prog.get('cpu_seconds', 0):.0f}</td>"
                    f"<td>{status}</td><td><code>{html.escape(cmd)}</code></td></tr>")
    return ("<table><tr><th>run</th><th>family</th><th>data</th><th>steps</th><th>CPU s</th><th>health</th>"
            "<th>command</th></tr>" + "".join(rows) + "</table>")


def write_page(out: Path, results: list[dict], summary: Path | None, wall_s: float = 0.0, cpu_s: float = 0.0,
               steps: int | None = None, scale: float = 1.0) -> Path:
    """index.html: the summary, then one section per lecture point (each figure with its sentence), then the runs."""
    by_name = {r["part"].name: r for r in results}
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dgm demo</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>dgm demo: the lecture's generative models, trained in minutes</h1>",
             f"<p>{len(results)} short runs on <code>{DATA}</code>, 10,000 real MNIST training digits packaged with "
             "dgm (MNIST: Yann LeCun and Corinna Cortes, CC BY-SA 3.0), each on a budget of CPU time, two at a "
             f"time. This demo took {wall_s / 60:.1f} minutes ({cpu_s / 60:.1f} CPU-minutes; load average at the end "
             f"{_load()}). Open the studio over "
             f"the same runs with <code>dgm serve {html.escape(str(out))}</code>.</p>"]
    if summary is not None and summary.is_file():
        parts.append(f'<figure><img src="{html.escape(summary.name)}" alt="summary of the demo"></figure>')
    for heading, slide, lead, rows in SECTIONS:
        parts.append(f"<h2>{html.escape(heading)} <span class=\"slide\">lecture {html.escape(slide)}</span></h2>"
                     f"<p>{html.escape(lead)}</p>")
        for row in rows:
            parts.append('<div class="row">' + "".join(_figure(out, by_name, *f) for f in row) + "</div>")
    parts.append("<h2>The runs</h2><p>Every run folder holds its config, weights, metrics.jsonl and more figures "
                 "(loss.png, samples/step_*.png during training). Health: the checks of "
                 "<code>dgm.figures.health</code> (no active units, loss not improved, samples all alike, GAN "
                 "collapse).</p>" + _run_table(results, out, steps, scale))
    parts.append("</body></html>\n")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
