"""Run folders: time budgets, one owner (the lock), status, signals, kill -9 + resume, overwrite, durable writes,
refused weights, config checks and devices (issues 16.1 and 21)."""
import itertools
import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file

import dgm
import dgm.io as dio
import dgm.train as dtrain
from dgm.data import load_dataset
from dgm.io import RunError, RunLock, RunLocked, atomic_write
from dgm.models.ae import AE, AEConfig
from dgm.models.vae import VAE, VAEConfig
from dgm.train import ResumeMismatch, TrainConfig, Trainer

TINY_VAE = dict(channels=1, image_size=8, latent_dim=4, conv_channels=(8, 16))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    """Runs compared bit for bit with a child process (ENV: one thread) train in one thread here too: a matmul split
    over two threads rounds differently, so on an idle 2-core machine the reference and the resumed run differed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("digits", "train", image_size=8)


def trainer(out, data, model=None, extra=None, overwrite=False, progress=False, **kw):
    torch.manual_seed(123)
    model = model if model is not None else VAE(VAEConfig(**TINY_VAE))
    cfg = TrainConfig(**{**dict(batch_size=32, ckpt_every=4, log_every=2, ema_decay=0.9, seed=5), **kw})
    return Trainer(model, data, cfg, out, extra_config=extra, progress=progress, overwrite=overwrite)


def rows(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def config(run):
    return json.loads((run / "config.json").read_text())


def same_weights(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def fake_cpu_clock(monkeypatch):
    """Process CPU time that advances exactly one second each time the Trainer reads it (once at the start of a fit,
    once after each step), so a budget of B seconds is exactly B steps."""
    def install():
        ticks = itertools.count()
        monkeypatch.setattr(dtrain, "_cpu_clock", lambda: float(next(ticks)))
    install()
    return install


# -- issue 16.1: training on a time budget --------------------------------------------------------------------------
def test_a_budget_run_stops_on_its_budget_and_finishes_like_a_step_run(tmp_path, digits8, fake_cpu_clock):
    t = trainer(tmp_path, digits8, minutes=0.25, lr=1e-3, lr_decay_start=0.5, log_every=1, ckpt_every=100)
    assert t.total is None and t.budget == 15.0
    t.fit()
    assert t.step == 15 and t.stopped_by == "budget"
    cfg = config(tmp_path)
    assert cfg["status"] == "finished" and cfg["train"]["minutes"] == 0.25
    p = cfg["progress"]
    assert p["checkpoint_step"] == 15 and p["cpu_seconds"] == 15.0 and p["budget_cpu_seconds"] == 15.0
    assert p["stopped_by"] == "budget" and p["wall_seconds"] > 0
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 15
    log = rows(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 16)) and [r["cpu_s"] for r in log] == [float(k) for k in
                                                                                          range(1, 16)]
    # The schedule is on the budget's elapsed fraction p = (CPU s before the step) / budget: linear decay after 0.5.
    for r in log:
        p = (r["step"] - 1) / 15
        assert r["lr"] == pytest.approx(1e-3 * (1.0 if p < 0.5 else 1 - (p - 0.5) / 0.5)), r
    # Default grids: one at each eighth of the budget, the last at its end.
    grids = sorted(int(f.stem[5:]) for f in (tmp_path / "samples").glob("step_*.png"))
    assert grids == [k for k in range(1, 16) if (8 * k) // 15 > (8 * (k - 1)) // 15] and grids[-1] == 15
    assert len(grids) == 8
    m = dgm.load(tmp_path)
    assert m.run_config["status"] == "finished"


def test_a_budget_run_resumes_counting_from_its_checkpoint(tmp_path, digits8, fake_cpu_clock):
    kw = dict(minutes=0.25, lr_decay_start=0.3)
    trainer(tmp_path / "full", digits8, **kw).fit()
    fake_cpu_clock()
    trainer(tmp_path / "cut", digits8, **kw).fit(stop_at=9)           # checkpoint at 8 (8 CPU s), then "killed"
    s = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert s["step"] == 8 and s["cpu_seconds"] == 8.0
    fake_cpu_clock()                                                   # a new process: its own CPU clock from 0
    t = trainer(tmp_path / "cut", digits8, **kw)
    t.fit(resume=True)
    assert t.step == 15 and t.cpu_seconds == 15.0                      # 7 more steps, not 15
    assert same_weights(tmp_path / "full", tmp_path / "cut")          # and the same ones, lr schedule included
    log = rows(tmp_path / "cut")
    assert [r["step"] for r in log] == [2, 4, 6, 8, 10, 12, 14, 15]
    assert [r["cpu_s"] for r in log] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 15.0]
    # A larger budget on resume extends the run.
    fake_cpu_clock()
    t = trainer(tmp_path / "cut", digits8, **{**kw, "minutes": 0.5})
    t.fit(resume=True)
    assert t.step == 30 and config(tmp_path / "cut")["progress"]["cpu_seconds"] == 30.0
    assert config(tmp_path / "cut")["train"]["minutes"] == 0.5


def test_a_budget_on_the_real_cpu_clock_and_a_step_cap(tmp_path, digits8):
    t = trainer(tmp_path / "b", digits8, minutes=0.002, ckpt_every=1000)   # 0.12 CPU seconds
    t.fit()
    p = config(tmp_path / "b")["progress"]
    assert t.stopped_by == "budget" and p["stopped_by"] == "budget" and t.step >= 1
    assert p["cpu_seconds"] >= p["budget_cpu_seconds"] == pytest.approx(0.12)
    assert p["checkpoint_step"] == t.step == rows(tmp_path / "b")[-1]["step"]
    dgm.load(tmp_path / "b")
    t = trainer(tmp_path / "s", digits8, minutes=60, steps=3)             # whichever comes first
    t.fit()
    assert t.step == 3 and t.stopped_by == "steps" and config(tmp_path / "s")["status"] == "finished"


def test_the_progress_bar_of_a_budget_run_shows_the_time_left(tmp_path, digits8, fake_cpu_clock, capsys):
    trainer(tmp_path, digits8, minutes=0.1, progress=True).fit()
    err = capsys.readouterr().err
    assert "/6 CPU s" in err and "left" in err and "step=6" in err


# -- issue 21: one owner per run folder -----------------------------------------------------------------------------
def test_a_second_trainer_on_a_locked_folder_fails_at_once(tmp_path, digits8):
    with RunLock(tmp_path):
        assert (tmp_path / "train.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunLocked, match=rf"in use by another trainer \(pid {os.getpid()}\)") as e:
            trainer(tmp_path, digits8, steps=2).fit()
        assert "\n" not in str(e.value)
        assert not (tmp_path / "config.json").exists()  # refused before writing anything
    trainer(tmp_path, digits8, steps=2).fit()              # released: it trains
    with RunLock(tmp_path):                                # and fit released it too
        pass


FAMILY_KILL_SCRIPT = """
import sys, time, torch
from dgm.data import load_dataset
from dgm.registry import get_family
from dgm.train import TrainConfig, Trainer
TINY = {"vae": {"latent_dim": 4, "conv_channels": (8, 16)},
        "ae": {"latent_dim": 2, "conv_channels": (4, 8)}, "beta-vae": {"latent_dim": 2, "conv_channels": (4, 8)},
        "gan": {"width": 8, "latent_dim": 4}, "diffusion": {"base_channels": 8, "channel_mults": (1, 2)},
        "cyclegan": {"gen_width": 4, "gen_blocks": 1, "disc_width": 4, "pool_size": 4}}

def trainer(family, out, hold=False):
    data = load_dataset("unpaired:digits,digits" if family == "cyclegan" else "digits", "train", image_size=16)
    torch.manual_seed(123)
    model = get_family(family).for_data(data, TINY[family])
    if hold:
        real = model.loss
        def loss(batch, phase="main"):
            if model.step == 6:
                print("HOLD", flush=True)
                time.sleep(600)
            return real(batch, phase)
        model.loss = loss
    cfg = TrainConfig(steps=12, batch_size=8, ckpt_every=4, log_every=2, ema_decay=0.9, seed=5)
    return Trainer(model, data, cfg, out, progress=False)

if sys.argv[1] == "hold":  # hold FAMILY OUT: train OUT, hang inside step 6 (checkpoint at 4) until killed
    trainer(sys.argv[2], sys.argv[3], hold=True).fit()
else:  # resume ROOT FAMILIES: per family an uninterrupted reference in ROOT/F/full, then ROOT/F/killed resumed
    for family in sys.argv[3].split(","):
        trainer(family, f"{sys.argv[2]}/{family}/full").fit()
        t = trainer(family, f"{sys.argv[2]}/{family}/killed")
        t.fit(resume=True)
        print(family, t.step, flush=True)
"""
KILLED_FAMILIES = ("vae", "ae", "beta-vae", "gan", "diffusion", "cyclegan")


def test_kill_9_then_resume_is_exact_for_every_family(tmp_path):
    """Every family (tiny nets, 16x16 digits), killed with SIGKILL inside step 6 (checkpoint at 4) and resumed by a
    fresh process, ends with the weights of an uninterrupted run, bit for bit; while the killed trainer lives, a
    second one on its folder is refused, naming it. The killed trainers run side by side and the resumes share one
    process: a few interpreter starts in all."""
    script = tmp_path / "kill.py"
    script.write_text(FAMILY_KILL_SCRIPT)
    children = {f: subprocess.Popen([sys.executable, str(script), "hold", f, str(tmp_path / f / "killed")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                for f in KILLED_FAMILIES}
    try:
        for f, child in children.items():
            assert child.stdout.readline().strip() == "HOLD", (f, child.stderr.read()[-3000:])
        with pytest.raises(RunLocked, match=f"pid {children['vae'].pid}"):
            trainer(tmp_path / "vae" / "killed", load_dataset("digits", "train", image_size=8), steps=12).fit(
                resume=True)
    finally:
        for child in children.values():
            child.kill()
            child.wait(60)
    for f, child in children.items():
        run = tmp_path / f / "killed"
        assert child.returncode == -signal.SIGKILL, f
        assert config(run)["status"] == "unfinished" and config(run)["progress"]["checkpoint_step"] == 4, f
        assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4, f
        assert [r["step"] for r in rows(run)] == [2, 4, 6], f
        dgm.load(run)                                   # the step-4 weights load; the OS dropped the dead lock
    done = subprocess.run([sys.executable, str(script), "resume", str(tmp_path), ",".join(KILLED_FAMILIES)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [w for f in KILLED_FAMILIES for w in (f, "12")]
    for f in KILLED_FAMILIES:
        run = tmp_path / f / "killed"
        assert config(run)["status"] == "finished", f
        assert same_weights(tmp_path / f / "full", run), f
        assert [r["step"] for r in rows(run)] == [2, 4, 6, 8, 10, 12], f


SIGNAL_SCRIPT = """
import json, os, signal, sys, torch
from dgm.data import load_dataset
from dgm.models.vae import VAE, VAEConfig
from dgm.train import Interrupted, TrainConfig, Trainer
data = load_dataset("digits", "train", image_size=8)

# As an interactive process has them: a test suite started in the background (`pytest &`) passes SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

def run(out, sig, at_step, ckpt_every):
    torch.manual_seed(123)
    model = VAE(VAEConfig(channels=1, image_size=8, latent_dim=4, conv_channels=(8, 16)))
    cfg = TrainConfig(steps=12, batch_size=32, ckpt_every=ckpt_every, log_every=2, ema_decay=0.9, seed=5)
    if at_step is not None:  # inside that step's loss
        real = model.loss
        def loss(batch, phase="main"):
            if model.step == at_step:
                os.kill(os.getpid(), sig)
            return real(batch, phase)
        model.loss = loss
    t = Trainer(model, data, cfg, out, progress=False)
    if at_step is None:  # during set-up: the first batch fetched (the preview batch), before any step
        get = t.batches.get
        def first(i, _get=get):
            t.batches.get = _get
            os.kill(os.getpid(), sig)
            return _get(i)
        t.batches.get = first
    try:
        t.fit()
        res = {"finished": True}
    except Interrupted as e:
        res = {"signum": e.signum, "step": e.step, "checkpoint_step": e.checkpoint_step, "message": str(e)}
    res["restored"] = (signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
                       and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    print(json.dumps(res), flush=True)

root = sys.argv[1]
run(root + "/setup", signal.SIGTERM, None, 100)
run(root + "/term", signal.SIGTERM, 6, 100)
run(root + "/int", signal.SIGINT, 2, 4)
"""


def test_a_signal_ignored_at_start_stays_ignored(tmp_path, digits8):
    """`dgm train ... &` in a script starts with SIGINT ignored, `nohup` with SIGHUP: such a trainer keeps training
    through the ignored signal and leaves the disposition as it found it (this was the suite's flaky test: run in
    the background, it saw SIGINT restored to "ignored", not to Python's default handler)."""
    torch.manual_seed(123)
    model = VAE(VAEConfig(**TINY_VAE))
    real = model.loss

    def loss(batch, phase="main"):
        if model.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(batch, phase)
    model.loss = loss
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        t = trainer(tmp_path, digits8, model=model, steps=6)
        t.fit()
        assert t.step == 6 and t.stopped_by == "steps" and config(tmp_path)["status"] == "finished"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


def test_sigterm_and_ctrl_c_checkpoint_then_stop_and_before_any_step_leave_an_unfinished_run(tmp_path, digits8):
    (tmp_path / "sig.py").write_text(SIGNAL_SCRIPT)
    out = subprocess.run([sys.executable, str(tmp_path / "sig.py"), str(tmp_path)], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    setup, term, intr = (json.loads(ln) for ln in out.stdout.splitlines())
    assert all(r["restored"] for r in (setup, term, intr)), out.stdout
    assert setup["signum"] == signal.SIGTERM and setup["checkpoint_step"] is None and setup["step"] == 0
    assert term["signum"] == signal.SIGTERM and term["step"] == term["checkpoint_step"] == 7
    assert intr["signum"] == signal.SIGINT and intr["step"] == intr["checkpoint_step"] == 3
    assert "\n" not in term["message"] and "--resume" in term["message"]

    # SIGTERM before any step: marked unfinished, no weights (no step-0 model.safetensors), refused by dgm.load.
    run = tmp_path / "setup"
    cfg = config(run)
    assert cfg["status"] == "unfinished" and cfg["progress"]["checkpoint_step"] is None
    assert cfg["progress"]["stopped_by"] == "SIGTERM"
    assert not (run / "model.safetensors").exists() and not (run / "checkpoint.pt").exists()
    with pytest.raises(RunError, match="never reached its first checkpoint") as e:
        dgm.load(run)
    assert "\n" not in str(e.value)
    with pytest.raises(RunError, match="no checkpoint"):
        trainer(run, digits8, steps=12, ckpt_every=100).fit(resume=True)
    with pytest.raises(RunError, match="already holds a run"):
        trainer(run, digits8, steps=12, ckpt_every=100).fit()
    trainer(run, digits8, steps=2, overwrite=True).fit()
    assert config(run)["status"] == "finished"

    # SIGTERM at step 6 with no checkpoint due until 100: the step finishes, a checkpoint at 7, and resume is exact.
    run = tmp_path / "term"
    cfg = config(run)
    assert cfg["status"] == "unfinished" and cfg["progress"]["checkpoint_step"] == 7
    assert dgm.load(run).run_config["progress"]["stopped_by"] == "SIGTERM"
    trainer(tmp_path / "full", digits8, steps=12, ckpt_every=100).fit()
    trainer(run, digits8, steps=12, ckpt_every=100).fit(resume=True)
    assert same_weights(tmp_path / "full", run) and config(run)["status"] == "finished"
    assert torch.load(tmp_path / "int" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_resume_truncates_the_log_to_the_checkpoint_and_drops_a_torn_line(tmp_path, digits8):
    trainer(tmp_path / "full", digits8, steps=12).fit()
    run = tmp_path / "cut"
    trainer(run, digits8, steps=12).fit(stop_at=10)        # checkpoint at 8; rows at 2..10
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "loss": 12.')                   # a kill mid-write
    with pytest.warns(RuntimeWarning, match="dropped its last line"):
        trainer(run, digits8, steps=12).fit(resume=True)
    full, cut = rows(tmp_path / "full"), rows(run)
    assert [r["step"] for r in cut] == [2, 4, 6, 8, 10, 12]  # no zig-zag: rows 9-10 of the killed run are gone
    timing = ("img_per_s", "cpu_s", "wall_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in cut] == \
           [{k: v for k, v in r.items() if k not in timing} for r in full]


def test_resume_refuses_another_model_family_dataset_or_fixed_option(tmp_path, digits8):
    data = {"data": {"name": "digits", "image_size": 8, "data_dir": None}}
    trainer(tmp_path, digits8, steps=4, extra=data).fit()
    before = (tmp_path / "metrics.jsonl").read_text()
    cases = [
        (dict(model=VAE(VAEConfig(**{**TINY_VAE, "latent_dim": 3}))), "model latent_dim=4 \\(now 3\\)"),
        (dict(model=AE(AEConfig(**TINY_VAE))), "family 'vae' \\(now 'ae'\\)"),
        (dict(extra={"data": {**data["data"], "name": "mnist"}}), "data name='digits' \\(now 'mnist'\\)"),
        (dict(batch_size=16), "train batch_size=32 \\(now 16\\).*may change on resume"),
        (dict(ema_decay=0.5), "train ema_decay=0.9 \\(now 0.5\\)"),
    ]
    for kw, msg in cases:
        with pytest.raises(ResumeMismatch, match=msg) as e:
            trainer(tmp_path, digits8, steps=6, **{"extra": data, **kw}).fit(resume=True)
        assert "\n" not in str(e.value)
    assert (tmp_path / "metrics.jsonl").read_text() == before  # a refused resume leaves the run as it was
    t = trainer(tmp_path, digits8, steps=6, lr=5e-4, log_every=1, extra=data)  # lr, steps, log_every may change
    t.fit(resume=True)
    assert t.step == 6 and rows(tmp_path)[-1]["lr"] == 5e-4


def test_a_fresh_run_refuses_a_folder_with_a_run_unless_overwrite(tmp_path, digits8):
    run = tmp_path / "run"
    trainer(run, digits8, steps=12, sample_every=2).fit()
    for name in ("samples.png", "loss.png", "training.gif", "eval.json"):
        (run / name).write_bytes(b"x")
    (run / "notes.txt").write_text("mine")
    listing = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(RunError, match="already holds a run .*--resume.*--overwrite") as e:
        trainer(run, digits8, steps=4).fit()
    assert "\n" not in str(e.value) and sorted(p.name for p in run.rglob("*")) == listing
    trainer(run, digits8, steps=4, sample_every=2, overwrite=True).fit()
    assert [r["step"] for r in rows(run)] == [2, 4]
    assert sorted(p.name for p in (run / "samples").glob("step_*.png")) == ["step_000002.png", "step_000004.png"]
    for name in ("samples.png", "loss.png", "training.gif", "eval.json"):
        assert not (run / name).exists(), name
    assert (run / "notes.txt").read_text() == "mine"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    # A folder with other files but no run is not refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    trainer(other, digits8, steps=2).fit()
    assert (other / "notes.txt").read_text() == "mine"


# -- durable writes -------------------------------------------------------------------------------------------------
def test_atomic_write_renames_only_after_fsync_and_fsyncs_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(a, b):
        calls.append("replace")
        real_replace(a, b)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dio.write_json(tmp_path / "a.json", {"x": 1})
    assert calls == ["fsync file", "replace", "fsync folder"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}

    def failing(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output"):
        dio.write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}   # never renamed over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]    # and its temp file is gone


STALE_SCRIPT = """
import os, signal, sys
from dgm.io import atomic_write
def write(tmp):
    open(tmp, "w").write("half")
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "state.json"
    (tmp_path / "stale.py").write_text(STALE_SCRIPT)
    out = subprocess.run([sys.executable, str(tmp_path / "stale.py"), str(target)], env=ENV, timeout=120)
    assert out.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.glob(".state.json.*.tmp")]
    assert len(stale) == 1 and not target.exists()
    # A temp file of a writer that is still running (here: the pytest process's parent) is left alone.
    live = tmp_path / f".state.json.{os.getppid()}.abcd1234.tmp"
    live.write_text("in progress")
    other = tmp_path / ".other.json.1.abcd.tmp"  # another file's temp: not this write's business
    other.write_text("x")
    atomic_write(target, lambda tmp: open(tmp, "w").write("whole"))
    assert target.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted([live.name, other.name])


# -- refused weights ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weights_are_refused_at_load(tmp_path, bad):
    dgm.save(VAE(VAEConfig(**TINY_VAE)), tmp_path)
    w = load_file(tmp_path / "model.safetensors")
    name = sorted(k for k in w if w[k].is_floating_point())[3]
    w[name].view(-1)[1] = bad
    save_file(w, tmp_path / "model.safetensors")
    with pytest.raises(RunError, match=rf"NaN or inf values in 1 tensor \(first: {name}\)") as e:
        dgm.load(tmp_path)
    assert "\n" not in str(e.value)


def test_every_family_saves_finite_weights_that_load(tmp_path):
    from dgm.models.diffusion import Diffusion, DiffusionConfig
    from dgm.models.gan import GAN, GANConfig
    for m in (VAE(VAEConfig(**TINY_VAE)), AE(AEConfig(**TINY_VAE)), GAN(GANConfig(image_size=8, arch="mlp", mlp_hidden=(16,))),
              Diffusion(DiffusionConfig(image_size=8, base_channels=8, channel_mults=(1,), attn_levels=()))):
        dgm.save(m, tmp_path / m.family)
        assert dio.non_finite_tensors(dgm.load(tmp_path / m.family)) == []


# -- config checks and devices --------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("steps", -1), ("steps", 2.5), ("steps", True), ("epochs", -0.5), ("epochs", float("nan")), ("minutes", -1),
    ("minutes", float("inf")), ("batch_size", 0), ("lr", 0), ("lr", -1e-3), ("lr", float("nan")),
    ("weight_decay", -1), ("warmup_steps", -1), ("lr_decay_start", 1.5), ("ema_decay", 1.0), ("ema_decay", -0.1),
    ("grad_clip", -1), ("seed", -1), ("log_every", 0), ("sample_every", -1), ("ckpt_every", 0),
    ("betas", (0.9,)), ("betas", (0.9, 1.0)), ("optimizer", "sgd"), ("precision", "fp8"), ("device", "gpu"),
    ("device", "cpu:1"), ("compile", "yes"),
])
def test_train_config_refuses_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^train option {field} must be") as e:
        TrainConfig(**{field: value})
    assert "\n" not in str(e.value)


def test_train_config_accepts_the_edges_of_each_range():
    TrainConfig(steps=0, epochs=0, minutes=0, ema_decay=0.0, lr_decay_start=0.0, warmup_steps=0, grad_clip=0,
                seed=0, sample_every=0)
    c = TrainConfig(steps=0, epochs=2, minutes=0.5, ema_decay=0.0, lr_decay_start=1.0, betas=[0.0, 0.999],
                    device="cuda:1", log_every=1, ckpt_every=1, sample_every=0)
    assert c.betas == (0.0, 0.999) and isinstance(c.epochs, float) and c.minutes == 0.5


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10)))
def test_lr_and_ema_decay_are_refused_exactly_outside_their_ranges(v):
    lr_ok = math.isfinite(v) and v > 0
    ema_ok = math.isfinite(v) and 0 <= v < 1
    for field, ok in (("lr", lr_ok), ("ema_decay", ema_ok)):
        if ok:
            assert getattr(TrainConfig(**{field: v}), field) == v
        else:
            with pytest.raises(ValueError, match=field):
                TrainConfig(**{field: v})


def test_resolve_device_says_in_one_line_why_a_device_is_not_there(monkeypatch):
    assert dio.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dio.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        dio.resolve_device("gpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    with pytest.raises(dio.DeviceError, match="^cuda requested but this torch has no CUDA"):
        dio.resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(dio.DeviceError, match="^cuda:0 requested but no CUDA device is visible"):
        dio.resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dio.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(dio.DeviceError, match=r"^cuda:2 requested but only 2 CUDA devices are visible") as e:
        dio.resolve_device("cuda:2")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_trainer_on_a_missing_cuda_device_fails_before_training(tmp_path, digits8):
    msg = "this torch has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
    with pytest.raises(dio.DeviceError, match=msg):
        trainer(tmp_path, digits8, steps=2, device="cuda")
    assert not tmp_path.joinpath("config.json").exists()
    dgm.save(VAE(VAEConfig(**TINY_VAE)), tmp_path / "r")
    with pytest.raises(dio.DeviceError, match=msg):
        dgm.load(tmp_path / "r", "cuda")


DDP_SCRIPT = """
import itertools, json, os, signal, sys, torch
import dgm.train as dtrain
from dgm.data import load_dataset
from dgm.models.ae import AE, AEConfig
from dgm.train import Interrupted, TrainConfig, Trainer
data = load_dataset("digits", "train", image_size=8)
rank = int(os.environ["RANK"])
ticks = itertools.count()
dtrain._cpu_clock = lambda: float(next(ticks)) * (1 + rank)  # rank 1's CPU clock runs twice as fast
def model():
    torch.manual_seed(0)
    return AE(AEConfig(channels=1, image_size=8, latent_dim=3, arch="mlp", mlp_hidden=(32,)))
t = Trainer(model(), data, TrainConfig(minutes=10 / 60, batch_size=16, seed=3, device="cpu", log_every=1),
            sys.argv[1] + "/budget", progress=False)
t.fit()
res = {"budget_step": t.step, "cpu": t.cpu_seconds}
m = model()
real = m.loss
def loss(batch, phase="main"):
    if rank == 1 and m.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # only one process is told to stop
    return real(batch, phase)
m.loss = loss
t = Trainer(m, data, TrainConfig(steps=50, batch_size=16, seed=3, device="cpu", ckpt_every=100), sys.argv[1] + "/sig",
            progress=False)
try:
    t.fit()
except Interrupted as e:
    res.update(sig_step=e.step, sig_ckpt=e.checkpoint_step)
print("RESULT", rank, json.dumps(res), flush=True)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
os._exit(0)  # past the results: gloo's threads can abort a normal exit ("terminate called"), which is not under test
"""


def test_data_parallel_processes_stop_together_on_a_budget_or_one_processs_signal(tmp_path):
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "ddp.py"), str(tmp_path)], env=ENV, timeout=300, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = {int(ln.split()[1]): json.loads(ln.split(maxsplit=2)[2]) for ln in out.stdout.splitlines()
           if ln.startswith("RESULT")}
    # The largest CPU time counts: rank 1 reaches 10 s after 5 steps, and rank 0 stops with it.
    assert res[0] == res[1] == {"budget_step": 5, "cpu": 10.0, "sig_step": 3, "sig_ckpt": 3}
    assert [r["step"] for r in rows(tmp_path / "budget")] == [1, 2, 3, 4, 5]
    assert torch.load(tmp_path / "sig" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_resume_of_a_missing_folder_is_refused_without_creating_it(tmp_path, digits8):
    with pytest.raises(RunError, match="run folder not found"):
        trainer(tmp_path / "nope", digits8, steps=2).fit(resume=True)
    assert not (tmp_path / "nope").exists()
