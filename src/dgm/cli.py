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
  dgm train vae --out runs/vae_digits --resume    # continue a killed run exactly
  torchrun --nproc_per_node 2 -m dgm.cli train vae --data mnist   # data-parallel""",
    "sample": "example:\n  dgm sample runs/vae_digits -n 64 -o samples.png --seed 3",
    "evaluate": "examples:\n  dgm evaluate runs/vae_mnist\n  dgm evaluate runs/vae_mnist --metrics nll --k 5000 --n 10000",
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


def cmd_sample(a):
    from dgm import load
    from dgm.tasks import write_samples
    model = load(a.run, a.device)
    kw = {}
    if getattr(a, "class_", None) is not None:
        import torch
        kw["cond"] = torch.full((a.n,), a.class_, dtype=torch.long)
    p = write_samples(model, a.output or Path(a.run) / "samples.png", n=a.n, seed=a.seed, **kw)
    print(f"wrote {p}")


def cmd_reconstruct(a):
    from dgm import load
    from dgm.tasks import run_data, write_reconstructions
    model = load(a.run, a.device)
    if not hasattr(model, "reconstruct"):
        _fail(f"a {model.family} model cannot reconstruct (it has no encoder)")
    p = write_reconstructions(model, run_data(a.run, "test", a.data_dir), a.output or Path(a.run) / "reconstructions.png",
                              n=a.n)
    print(f"wrote {p}")


def cmd_interpolate(a):
    from dgm import load
    from dgm.tasks import run_data, write_interpolation
    model = load(a.run, a.device)
    if not hasattr(model, "decode"):
        _fail(f"a {model.family} model has no latent space to interpolate in")
    data = run_data(a.run, "test", a.data_dir) if hasattr(model, "encode") else None
    p = write_interpolation(model, a.output or Path(a.run) / "interpolation.png", data, pairs=a.pairs,
                            steps=a.steps, seed=a.seed)
    print(f"wrote {p}")


def cmd_latent(a):
    from dgm import load
    from dgm.tasks import run_data, write_latent
    model = load(a.run, a.device)
    if not hasattr(model, "encode"):
        _fail(f"a {model.family} model has no encoder")
    p = write_latent(model, run_data(a.run, "test", a.data_dir), a.output or Path(a.run) / "latent.png", n=a.n)
    print(f"wrote {p}")


def cmd_evaluate(a):
    from dgm.evaluate import evaluate, format_table
    opts = {"k": a.k}
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


def cmd_list(a):
    from dgm.data import dataset_names
    from dgm.registry import families
    print("families:", ", ".join(families()))
    print("datasets:", ", ".join(dataset_names()))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dgm", description="Deep generative models: train, look at and measure AE, VAE, beta-VAE, GAN, "
                                       "CycleGAN and diffusion models.", formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name, fn, help_):
        s = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG.get(name),
                           formatter_class=argparse.RawTextHelpFormatter)
        s.set_defaults(fn=fn)
        return s

    def run_args(s, output=True):
        s.add_argument("run", help="run folder (written by dgm train)")
        if output:
            s.add_argument("-o", "--output", help="output PNG (default: inside the run folder)")
        s.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
        s.add_argument("--data-dir", help="dataset root (default $DGM_DATA or ~/.cache/dgm)")

    s = add("train", cmd_train, "train a model and write a run folder")
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

    s = add("sample", cmd_sample, "draw samples from a trained model into a PNG grid")
    run_args(s)
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="class_", type=int, help="class label for a conditional model")

    s = add("reconstruct", cmd_reconstruct, "test images (odd rows) and their reconstructions (even rows)")
    run_args(s)
    s.add_argument("-n", type=int, default=32)

    s = add("interpolate", cmd_interpolate, "straight lines in latent space between pairs of images")
    run_args(s)
    s.add_argument("--pairs", type=int, default=6)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)

    s = add("latent", cmd_latent, "scatter of test-set latent means coloured by label (PCA above 2-D)")
    run_args(s)
    s.add_argument("-n", type=int, default=5000)

    s = add("evaluate", cmd_evaluate, "measure a run; results go to RUN/eval.json and a table")
    run_args(s, output=False)
    s.add_argument("--metrics", help="comma-separated metric names (default: all that apply)")
    s.add_argument("--n", type=int, default=10_000, help="test images / samples (default 10000)")
    s.add_argument("--k", type=int, default=5000, help="importance samples for the IWAE NLL (default 5000)")
    s.add_argument("--nll-n", type=int, help="test images for the NLL (default --n)")
    s.add_argument("--seed", type=int, default=0)

    s = add("demo", cmd_demo, "train a small VAE on the embedded digits and write every figure (~1 minute)")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--steps", type=int, default=1500)
    s.add_argument("-q", "--quiet", action="store_true")

    add("list", cmd_list, "model families and datasets")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    from dgm.data import DataError
    from dgm.io import RunError
    from dgm.tasks import UsageError
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
