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
    assert main(["train", "vae", "--data", "digits", "--steps", "40", "--out", str(out), "-q", "--set", "latent_dim=3",
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
    (["train", "nosuchfamily", "--data", "digits"], 2, "unknown model family"),
    (["train", "vae", "--data", "digits", "--set", "latent_dimm=3"], 2, "unknown option 'latent_dimm'"),
    (["train", "vae", "--data", "digits", "--set", "latent_dim=abc"], 2, "expected int"),
    (["train", "vae", "--data", "digits", "--set", "novalue"], 2, "key=value"),
    (["train", "vae", "--data", "nosuchdata"], 1, "nosuchdata"),
    (["train", "vae", "--data", "digits", "--epochs", "1", "--steps", "3"], 2, "not allowed with"),
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
    assert main(["demo", "--out", str(tmp_path / "demo"), "--only", "ae", "--steps", "2", "--jobs", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "index.html" in out and "dgm serve" in out  # the page to open, and the studio over the same runs
    assert (tmp_path / "demo" / "index.html").is_file() and (tmp_path / "demo" / "summary.png").is_file()


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


# -- time budgets, overwrite, resume options, devices, one-line errors (issues 16.1 and 21) ------------------------
TINY_TRAIN = ["-q", "--image-size", "8", "--set", "latent_dim=2", "--set", "conv_channels=4,8", "--set",
              "batch_size=32", "--set", "log_every=1", "--set", "ckpt_every=100"]


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _cfg(run):
    return json.loads((run / "config.json").read_text())


def _exit(argv, capsys):
    """(exit code, stderr) of a command expected to fail with one line and no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return e.value.code, err


def test_train_minutes_overwrite_and_resume_options(tmp_path, monkeypatch, capsys):
    import itertools
    import dgm.train as dtrain
    ticks = itertools.count()  # process CPU time: one second per read (once per fit, once per step)
    monkeypatch.setattr(dtrain, "_cpu_clock", lambda: float(next(ticks)))
    out = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--minutes", "0.1", "--out", str(out), *TINY_TRAIN]) == 0   # 6 CPU seconds
    cfg = _cfg(out)
    assert cfg["status"] == "finished" and cfg["train"]["minutes"] == 0.1 and cfg["progress"]["stopped_by"] == "budget"
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6] and (out / "samples.png").is_file()
    # --resume --minutes extends the budget, counting on from the checkpoint's 6 seconds.
    ticks = itertools.count()
    monkeypatch.setattr(dtrain, "_cpu_clock", lambda: float(next(ticks)))
    assert main(["train", "vae", "--out", str(out), "--resume", "--minutes", "0.2", "-q"]) == 0
    assert _rows(out)[-1]["step"] == 12 and _cfg(out)["progress"]["cpu_seconds"] == 12.0
    capsys.readouterr()
    # A fresh run into it is refused; --overwrite replaces it.
    code, err = _exit(["train", "vae", "--data", "digits", "--steps", "3", "--out", str(out), *TINY_TRAIN], capsys)
    assert code == 1 and "already holds a run" in err and "--overwrite" in err
    assert main(["train", "vae", "--data", "digits", "--steps", "3", "--out", str(out), "--overwrite", *TINY_TRAIN]) == 0
    assert [r["step"] for r in _rows(out)] == [1, 2, 3] and _cfg(out)["train"]["minutes"] == 0.0
    capsys.readouterr()
    # Resume options that may change are applied and said in one line; --steps replaces the length.
    assert main(["train", "vae", "--out", str(out), "--resume", "--steps", "5", "--set", "lr=1e-4", "-q"]) == 0
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "resuming" in said and "lr " in said and "-> 0.0001" in said and "steps 3 -> 5" in said
    # the new lr, decayed as the VAE's recipe does over the second half of the 5 steps (step index 4: 1 - 1.5 / 2.5)
    assert _rows(out)[-1]["step"] == 5 and _rows(out)[-1]["lr"] == pytest.approx(1e-4 * 0.4)
    refused = [
        (["--set", "batch_size=16"], 2, "--set batch_size: cannot change on resume"),
        (["--set", "latent_dim=3"], 2, "--set latent_dim: a model option cannot change on resume"),
        (["--steps", "2"], 2, "already at step 5"),
        (["--overwrite"], 2, "give one of them"),
        (["--data", "mnist"], 1, "data 'digits' (asked 'mnist')"),
        (["--set", "lr=nan"], 2, "--set lr=nan: expected a finite float"),
        (["--set", "lr=-1"], 2, "train option lr must be a finite number > 0"),
    ]
    for extra, code, msg in refused:
        got, err = _exit(["train", "vae", "--out", str(out), "--resume", "-q", *extra], capsys)
        assert (got, msg in err) == (code, True), (extra, err)
    got, err = _exit(["train", "gan", "--out", str(out), "--resume", "-q"], capsys)
    assert got == 1 and "family 'vae' (asked 'gan')" in err
    assert _rows(out)[-1]["step"] == 5  # nothing refused touched the run


@pytest.mark.parametrize("argv, msg", [
    (["train", "vae", "--data", "digits", "--steps", "-1"], "argument --steps: must be >= 1, got -1"),
    (["train", "vae", "--data", "digits", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["train", "vae", "--data", "digits", "--minutes", "-2"], "argument --minutes: must be > 0, got -2"),
    (["train", "vae", "--data", "digits", "--epochs", "inf"], "argument --epochs: must be a finite number"),
    (["train", "vae", "--data", "digits", "--device", "gpu"], "argument --device: expected auto, cpu, cuda or cuda:N"),
    (["train", "vae", "--data", "digits", "--device", "cpu", "--set", "device=cuda"], "the device is given twice"),
    (["sample", "/no/run", "-n", "0"], "argument -n: must be >= 1, got 0"),
    (["sample", "/no/run", "--eta", "nan"], "argument --eta: must be a finite number, got 'nan'"),
    (["sample", "/no/run", "--steps", "x"], "argument --steps: expected an integer, got 'x'"),
    (["sample", "/no/run", "-o", "grid.txt"], "argument -o/--output: must be an image file name"),
    (["evaluate", "/no/run", "--k", "0"], "argument --k: must be >= 1, got 0"),
    (["interpolate", "/no/run", "--steps", "1"], "argument --steps: must be >= 2, got 1"),
    (["traverse", "/no/run", "--limit", "-1"], "argument --limit: must be > 0"),
    (["serve", "--port", "70000"], "argument --port: must be 1..65535, got 70000"),
])
def test_bad_numbers_and_names_are_refused_by_argparse_in_one_line(argv, msg, capsys):
    code, err = _exit(argv, capsys)
    assert code == 2 and msg in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_a_device_that_is_not_here_is_one_line(capsys):
    import torch
    msg = "cuda requested but this torch has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
    for argv in (["sample", "/no/run", "--device", "cuda"], ["train", "vae", "--device", "cuda:1", "--steps", "1"]):
        code, err = _exit(argv, capsys)
        assert code == 2 and msg.replace("cuda ", argv[-1 if argv[0] == "sample" else 3] + " ", 1) in err, err


def test_os_errors_on_output_paths_and_run_states_are_one_line(vae_run, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, err = _exit(["sample", str(vae_run), "-n", "4", "-o", str(tmp_path / "file" / "s.png")], capsys)
    assert code == 1 and f"{tmp_path / 'file'}: " in err  # the path and the OS's reason (File exists / Not a dir)
    from dgm.io import RunLock
    with RunLock(vae_run):
        code, err = _exit(["train", "vae", "--out", str(vae_run), "--resume", "--steps", "60", "-q"], capsys)
    assert code == 1 and "in use by another trainer (pid" in err


def test_signals_exit_with_128_plus_the_signal_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import signal
    import dgm.registry
    import dgm.tasks
    from dgm.train import Interrupted

    def stopped(*a, **k):
        raise Interrupted(signal.SIGTERM, 7, 7, "runs/x")
    monkeypatch.setattr(dgm.tasks, "train", stopped)
    code, err = _exit(["train", "vae", "--data", "digits"], capsys)
    assert code == 143 and "stopped by SIGTERM at step 7" in err and "--resume" in err

    def bug():
        return {}["no such key"] + 1
    monkeypatch.setattr(dgm.registry, "families", bug)
    with pytest.raises(SystemExit) as e:
        main(["list"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" in err and "KeyError" in err
    assert "internal error, a bug in dgm" in err.strip().splitlines()[-1]

    def library_value_error():
        return int("twelve")  # a ValueError raised outside dgm's code is a bug too, not a usage error
    monkeypatch.setattr(dgm.registry, "families", library_value_error)
    with pytest.raises(SystemExit) as e:
        main(["list"])
    assert e.value.code == 1 and "bug in dgm" in capsys.readouterr().err


def test_sigterm_stops_dgm_train_after_a_checkpoint_and_resume_finishes_it(tmp_path, capsys):
    import signal
    import time
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "dgm.cli", "train", "vae", "--data", "digits", "--steps", "100000",
                              "--out", str(out),
                              *TINY_TRAIN[:-2], "--set", "ckpt_every=5"], stderr=subprocess.PIPE, text=True,
                             env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "checkpoint.pt").is_file():
                break
            time.sleep(0.1)
        assert (out / "checkpoint.pt").is_file(), child.stderr.read()[-2000:] if child.poll() is not None else ""
        child.send_signal(signal.SIGTERM)
        err = child.communicate(timeout=120)[1]
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    lines = err.strip().splitlines()  # the first line (what trains), then the one line of the stop
    assert lines[0] == "dgm: training vae on digits for 100,000 steps" and len(lines) == 2, err[-2000:]
    assert "stopped by SIGTERM at step" in lines[1] and "Traceback" not in err
    cfg = _cfg(out)
    at = cfg["progress"]["checkpoint_step"]
    assert cfg["status"] == "unfinished" and at >= 5 and cfg["progress"]["stopped_by"] == "SIGTERM"
    assert main(["train", "vae", "--out", str(out), "--resume", "--steps", str(at + 2), "-q"]) == 0
    assert _cfg(out)["status"] == "finished" and _rows(out)[-1]["step"] == at + 2


# -- issue 22: a default length that gives a result, said in the first line --------------------------------------
def test_no_length_trains_for_the_familys_default_budget(monkeypatch, tmp_path, capsys):
    from dgm.models.ae import AE
    from dgm.tasks import _fresh_options
    from dgm.registry import families, get_family
    assert _fresh_options("vae", {}, {}, None)[2]["minutes"] == get_family("vae").default_minutes > 0
    assert "minutes" not in _fresh_options("vae", {}, {"steps": 5}, None)[2]
    assert "minutes" not in _fresh_options("vae", {"epochs": "2"}, {}, None)[2]
    # The help states each family's default budget (it is written out there: keep it in step with the classes).
    helps = {f: f"{f} {get_family(f).default_minutes:g}" for f in ("ae", "vae", "gan", "cyclegan", "diffusion")}
    code, out = _help(["train", "--help"], capsys)
    flat = " ".join(out.split())
    assert all(h in flat for h in helps.values()), helps
    monkeypatch.setattr(AE, "default_minutes", 0.002)
    out_dir = tmp_path / "ae"
    assert main(["train", "ae", "--data", "digits", "--out", str(out_dir), "--image-size", "8", "-q",
                 "--set", "latent_dim=2", "--set", "conv_channels=4,8"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "dgm: training ae on digits for 0.002 CPU-min (default; --steps/--epochs/--minutes to change)"
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["train"]["minutes"] == 0.002 and cfg["progress"]["stopped_by"] == "budget"
    assert main(["train", "ae", "--data", "digits", "--out", str(tmp_path / "s"), "--image-size", "8", "-q",
                 "--steps", "2", "--set", "conv_channels=4,8"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "dgm: training ae on digits for 2 steps"


def test_dgm_list_shows_the_classifier_apart_from_the_families(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    fams = next(ln for ln in out if ln.startswith("families:"))
    assert "vae" in fams and "diffusion" in fams and "classifier" not in fams
    assert any(ln.startswith("helper networks: classifier") for ln in out)


def _help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().out
