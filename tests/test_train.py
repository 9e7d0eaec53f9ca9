"""The Trainer: exact resume, non-finite losses, data-parallel equivalence, save/load."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import dgm
from dgm.data import load_dataset
from dgm.io import RunError
from dgm.models.ae import AE, AEConfig
from dgm.models.vae import VAE, VAEConfig
from dgm.train import NonFiniteLoss, TrainConfig, Trainer

TINY_VAE = dict(channels=1, image_size=8, latent_dim=4, conv_channels=(8, 16))


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("digits", "train", image_size=8)


def run(tmp, data, steps, stop_at=None, resume=False, **kw):
    torch.manual_seed(123)  # a different init must not matter: the Trainer seeds itself
    model = VAE(VAEConfig(**TINY_VAE))
    cfg = TrainConfig(steps=steps, batch_size=32, ckpt_every=4, log_every=2, ema_decay=0.9, seed=5, **kw)
    t = Trainer(model, data, cfg, tmp, progress=False)
    t.fit(resume=resume, stop_at=stop_at)
    return t


def test_resume_after_kill_is_bit_identical(tmp_path, digits8):
    full = run(tmp_path / "full", digits8, 12)
    run(tmp_path / "killed", digits8, 12, stop_at=10)      # checkpoint at step 8; steps 9-10 are lost work
    assert json.loads((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 10
    resumed = run(tmp_path / "killed", digits8, 12, resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # each logged step once
    assert (tmp_path / "killed" / "samples").is_dir()


def test_extending_a_finished_run_is_the_longer_run(tmp_path, digits8):
    """A finished run continued to a longer length ends where one run of that length ends (at a constant lr nothing
    depends on the length): what lets benchmarks/budget.py continue its 15-minute run to 60 minutes."""
    longer = run(tmp_path / "long", digits8, 20)
    run(tmp_path / "short", digits8, 12)
    extended = run(tmp_path / "short", digits8, 20, resume=True)
    for (k, a), b in zip(longer.model.state_dict().items(), extended.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(longer.ema.state_dict().values(), extended.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, digits8):
    model = VAE(VAEConfig(**TINY_VAE))
    real_loss = model.loss

    def loss(batch, phase="main"):
        out = real_loss(batch, phase)
        if model.step >= 6:
            out["loss"] = out["loss"] * float("nan")
        return out
    model.loss = loss
    t = Trainer(model, digits8, TrainConfig(steps=20, batch_size=32, ckpt_every=4), tmp_path, progress=False)
    with pytest.raises(NonFiniteLoss, match="step 6.*step 4"):
        t.fit()
    s = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert s["step"] == 4
    m = dgm.load(tmp_path)  # the saved weights are the last good ones and load
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    for model in (VAE(VAEConfig(**TINY_VAE, likelihood="gaussian")), AE(AEConfig(**TINY_VAE, arch="mlp"))):
        dgm.save(model, tmp_path / model.family)
        back = dgm.load(tmp_path / model.family)
        assert type(back) is type(model) and back.config == model.config
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        assert torch.equal(model.eval().sample(5, generator=g()), back.sample(5, generator=g()))
        x = torch.rand(3, 1, 8, 8)
        assert torch.equal(model.reconstruct(x), back.reconstruct(x))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(RunError, match="not found"):
        dgm.load(tmp_path / "nope")
    d = tmp_path / "run"
    dgm.save(VAE(VAEConfig(**TINY_VAE)), d)
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunError, match="corrupt"):
        dgm.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        dgm.load(d)
    (d / "config.json").write_text(json.dumps({"family": "vae", "model": {"latent_dimm": 3}}))
    with pytest.raises(RunError, match="latent_dimm"):
        dgm.load(d)


def test_resume_with_corrupt_checkpoint_is_a_clear_error(tmp_path, digits8):
    run(tmp_path, digits8, 4)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(RunError, match="unreadable"):
        run(tmp_path, digits8, 8, resume=True)


DDP_SCRIPT = """
import sys, torch
from dgm.data import load_dataset
from dgm.models.ae import AE, AEConfig
from dgm.train import TrainConfig, Trainer
data = load_dataset("digits", "train", image_size=8)
torch.manual_seed(int(sys.argv[2]))  # different inits: rank 0 broadcasts its own
model = AE(AEConfig(channels=1, image_size=8, latent_dim=3, arch="mlp", mlp_hidden=(32,)))
t = Trainer(model, data, TrainConfig(steps=6, batch_size=16, lr=1e-2, seed=3, device="cpu"), sys.argv[1], progress=False)
t.fit()
"""


def test_two_process_data_parallel_equals_single_process(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, str(tmp_path / "single"), "0"], check=True, env=env, timeout=300)
    # --standalone: torchrun picks a free port itself (a fixed port can be taken by another run on the machine)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "ddp"), "0"],
                         env=env, timeout=300, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    a, b = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    params = [k for k in a if not k.startswith("code_")]  # code_* are running statistics of each rank's shard
    assert params
    for k in params:
        assert torch.allclose(a[k], b[k], atol=1e-6), (k, (a[k] - b[k]).abs().max())
    start = AE(AEConfig(channels=1, image_size=8, latent_dim=3, arch="mlp", mlp_hidden=(32,)))
    assert not torch.allclose(a[params[0]], start.state_dict()[params[0]])  # it did train


def test_same_seed_same_run(tmp_path):
    from dgm.tasks import train
    kw = dict(image_size=8, progress=False, figures=False,
              overrides={"latent_dim": "2", "conv_channels": "4,8", "steps": "3", "batch_size": "16"})
    a, b = train("vae", "digits", out=tmp_path / "a", **kw), train("vae", "digits", out=tmp_path / "b", **kw)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_optimizer_is_fused_where_supported_and_takes_the_same_step():
    from dgm.train import make_optimizer
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(50)), torch.nn.Parameter(torch.randn(3, 4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused = make_optimizer(torch.optim.AdamW, a, lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1, foreach=False)
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):  # the CPU kernel came in torch 2.4
        assert fused.defaults.get("fused") is True
    start = [p.detach().clone() for p in a]
    for _ in range(5):
        for p, q in zip(a, b):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    assert all((p - s).abs().min() > 1e-3 for p, s in zip(a, start))  # it moved every parameter


def _python(code: str, **env) -> list[str]:
    """Run code in a fresh interpreter (the allocator setting is per process); its printed words."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.split()


def test_allocator_tuning_applies_once_and_can_be_turned_off():
    import platform
    code = ("import dgm.memory as t; assert t._ALLOCATOR_TUNED is None; a = t.tune_allocator(); "
            "print(a, t.tune_allocator(), t._ALLOCATOR_TUNED)")
    assert _python(code, DGM_MALLOC_TUNE="0") == ["False", "False", "False"]
    on = _python(code, DGM_MALLOC_TUNE="1")
    assert on[0] == on[1] == on[2]  # idempotent: the second call reports the first call's outcome
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert on[0] == "True"


def test_a_cpu_trainer_tunes_the_allocator(tmp_path):
    code = ("import dgm.memory as t; from dgm.tasks import train; "
            f"train('vae', 'digits', steps=2, out={str(tmp_path / 'r')!r}, progress=False, figures=False); "
            "print(t._ALLOCATOR_TUNED)")
    assert _python(code, DGM_MALLOC_TUNE="1")[-1] in ("True", "False")  # None: the Trainer never asked


def test_precision_auto_is_settled_by_the_hardware_and_recorded(tmp_path, digits8, monkeypatch):
    """precision "auto" trains bf16 where the device multiplies bf16 in hardware and fp32 elsewhere; config.json
    records what ran (so a resume, or a reader, sees the settled precision), and the run resumes exactly."""
    from dgm import hardware
    for native, want in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(hardware, "native_bf16", lambda device, native=native: native)
        t = run(tmp_path / want, digits8, 4, precision="auto")
        assert t.cfg.precision == want
        assert json.loads((tmp_path / want / "config.json").read_text())["train"]["precision"] == want
    ran_bf16 = run(tmp_path / "bf16-set", digits8, 4, precision="bf16")
    for a, b in zip(t.model.state_dict().values(), ran_bf16.model.state_dict().values()):
        assert torch.equal(a, b)                       # "auto" on bf16 hardware is the bf16 run, bit for bit
    with pytest.raises(ValueError, match="precision must be fp32, bf16, fp16 or auto"):
        TrainConfig(precision="int8")
