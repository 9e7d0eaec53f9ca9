"""The command line end to end on the embedded digits data, and its errors (one line, exit code 2 or 1)."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from dgm.cli import main


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "vae"
    assert main(["train", "vae", "--steps", "40", "--out", str(out), "-q", "--set", "latent_dim=3",
                 "--set", "batch_size=64", "--set", "conv_channels=8,16", "--image-size", "8"]) == 0
    return out


def test_train_writes_a_complete_run(vae_run):
    cfg = json.loads((vae_run / "config.json").read_text())
    assert cfg["family"] == "vae" and cfg["model"]["latent_dim"] == 3 and cfg["model"]["conv_channels"] == [8, 16]
    assert cfg["train"]["batch_size"] == 64 and cfg["data"]["name"] == "digits"
    for f in ("model.safetensors", "checkpoint.pt", "metrics.jsonl", "samples.png", "reconstructions.png",
              "latent.png", "interpolation.png", "loss.png"):
        assert (vae_run / f).is_file(), f
    assert list((vae_run / "samples").glob("step_*.png"))
    with Image.open(vae_run / "samples.png") as im:
        assert im.width >= 512  # scaled up so 8x8 digits are visible


def test_commands_on_a_run(vae_run, tmp_path, capsys):
    assert main(["sample", str(vae_run), "-n", "16", "-o", str(tmp_path / "s.png"), "--seed", "3"]) == 0
    assert main(["reconstruct", str(vae_run), "-o", str(tmp_path / "r.png")]) == 0
    assert main(["interpolate", str(vae_run), "-o", str(tmp_path / "i.png"), "--pairs", "3", "--steps", "5"]) == 0
    assert main(["latent", str(vae_run), "-o", str(tmp_path / "l.png")]) == 0
    for f in "sril":
        assert (tmp_path / f"{f}.png").stat().st_size > 0
    assert main(["evaluate", str(vae_run), "--metrics", "elbo,nll,recon,cluster", "--k", "20", "--n", "200"]) == 0
    res = json.loads((vae_run / "eval.json").read_text())
    assert res["test_nll"]["k"] == 20 and res["test_nll"]["n"] == 200
    assert res["test_nll"]["value"] <= -res["test_elbo"]["value"] + 5  # the IWAE bound is at least as tight
    assert 0.1 <= res["kmeans_acc"]["value"] <= 1.0
    assert "| test_nll |" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "vae" in capsys.readouterr().out


def test_resume_continues_a_run(vae_run):
    assert main(["train", "vae", "--out", str(vae_run), "--resume", "--steps", "50", "-q"]) == 0
    rows = [json.loads(x) for x in (vae_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 50


@pytest.mark.parametrize("argv, code, msg", [
    (["train", "nosuchfamily"], 2, "unknown model family"),
    (["train", "vae", "--set", "latent_dimm=3"], 2, "unknown option 'latent_dimm'"),
    (["train", "vae", "--set", "latent_dim=abc"], 2, "expected int"),
    (["train", "vae", "--set", "novalue"], 2, "key=value"),
    (["train", "vae", "--data", "nosuchdata"], 1, "nosuchdata"),
    (["train", "vae", "--epochs", "1", "--steps", "3"], 2, "not allowed with"),
    (["sample", "/nonexistent/run"], 1, "not found"),
    (["evaluate", "/nonexistent/run"], 1, "not found"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_bad_arguments_give_one_line_and_an_exit_code(argv, code, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_metric_name(vae_run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(vae_run), "--metrics", "nosuch"])
    assert e.value.code == 2 and "unknown metric" in capsys.readouterr().err


def test_console_script_help_has_examples():
    out = subprocess.run([sys.executable, "-m", "dgm.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "examples:" in out.stdout


def test_demo_runs_small(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "30", "-q"]) == 0
    assert "pictures are in" in capsys.readouterr().out
    assert (tmp_path / "demo" / "latent.png").is_file() and (tmp_path / "demo" / "eval.json").is_file()


def test_learning_improves_test_elbo(tmp_path):
    """300 steps on digits (8x8) must improve the test ELBO by at least 15 nats over the untrained model."""
    from dgm.evaluate import evaluate
    from dgm.tasks import train
    out = train("vae", "digits", steps=0, out=tmp_path / "v0", image_size=8, progress=False, figures=False,
                overrides={"latent_dim": "4", "conv_channels": "8,16", "lr": "3e-3", "steps": "1"})
    before = evaluate(out, ["elbo"])["test_elbo"]["value"]
    out = train("vae", "digits", out=tmp_path / "v1", image_size=8, progress=False, figures=False,
                overrides={"latent_dim": "4", "conv_channels": "8,16", "lr": "3e-3", "steps": "300"})
    after = evaluate(out, ["elbo"])["test_elbo"]["value"]
    assert after > before + 15, (before, after)
