"""The likelihood metrics: the chunked IWAE estimate equals the model's own, tightens with k, and `dgm evaluate`
records which protocol preset it used; the IWAE training objective. Tiny MLP VAEs on 8x8 or 16x16 images throughout
(seconds on one thread)."""
import json
import math

import pytest
import torch

from dgm.metrics import likelihood as L
from dgm.models.vae import VAE, VAEConfig


def tiny_vae(size=8, latent=3, seed=0):
    torch.manual_seed(seed)
    return VAE(VAEConfig(channels=1, image_size=size, arch="mlp", mlp_hidden=(32,), latent_dim=latent)).eval()


def images(n=6, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g).bernoulli(generator=g)


def test_chunked_estimate_equals_the_models_own_nll():
    m, x = tiny_vae(), images()
    torch.manual_seed(0)
    slow = m.nll(x, k=600, chunk=200)                         # one call, the model's own chunks
    torch.manual_seed(0)
    fast = L.iwae_nll(m, x, 600, chunk=200, batch=len(x), progress=False)   # three calls, combined in float64
    assert fast.dtype == torch.float64 and fast.shape == (len(x),)
    assert torch.allclose(fast, slow.double(), atol=1e-4)     # the same noise: the same estimate
    # Other batchings draw other noise: the same estimator, so equal within its Monte Carlo error (~0.03 nats per
    # image at k = 4000 on this model; 0.1 is more than three of its standard deviations).
    torch.manual_seed(1)
    a = L.iwae_nll(m, x, 4000, chunk=500, batch=len(x), progress=False)
    torch.manual_seed(2)
    b = L.iwae_nll(m, x, 4000, chunk=64, batch=4, progress=False)
    assert (a - b).abs().max() < 0.1 and (a - fast).abs().max() < 0.3
    with pytest.raises(ValueError, match="k must be >= 1"):
        L.iwae_nll(m, x, 0, progress=False)


def test_an_interrupted_estimate_continues_to_the_same_numbers(tmp_path, monkeypatch):
    """With a seed, each batch has its own noise; a partial file keeps finished batches, and a continued estimate
    equals an unbroken one exactly. A stale file (other weights) is ignored."""
    m, x = tiny_vae(), images(10)
    whole = L.iwae_nll(m, x, 300, chunk=100, batch=3, progress=False, seed=4)
    part = tmp_path / ".nll_partial.pt"
    calls = {"n": 0}
    real = m.nll

    def dying(xb, k):   # the job is killed in its third batch of images
        calls["n"] += 1
        if calls["n"] == 3 * 2 + 1:
            raise KeyboardInterrupt
        return real(xb, k=k)
    monkeypatch.setattr(m, "nll", dying)
    with pytest.raises(KeyboardInterrupt):
        L.iwae_nll(m, x, 300, chunk=100, batch=3, progress=False, seed=4, partial=part)
    assert part.is_file() and len(torch.load(part, weights_only=True)["values"]) == 6
    monkeypatch.setattr(m, "nll", real)
    lines = []
    again = L.iwae_nll(m, x, 300, chunk=100, batch=3, progress=False, seed=4, partial=part, log=lines.append)
    assert torch.equal(again, whole) and not part.exists()
    assert any("continuing from image 6 of 10" in ln for ln in lines)
    # Other weights: the partial file does not match and is not used.
    L._save_partial(part, "not-this-model", whole[:6] + 100)
    assert torch.equal(L.iwae_nll(m, x, 300, chunk=100, batch=3, progress=False, seed=4, partial=part), whole)
    with pytest.raises(ValueError, match="needs a seed"):
        L.iwae_nll(m, x, 300, progress=False, partial=part)


def test_the_bound_tightens_as_k_grows():
    # E[-L_k] decreases in k (Burda et al. 2015, theorem 1). Averaged over 40 images and 10 seeds, the steps between
    # these k are many standard errors wide, so the fixed seeds make this deterministic and not fragile.
    m, x = tiny_vae(), images(40)
    with torch.no_grad():  # a sharper decoder than at initialisation: log-weights that vary, so the gaps are wide
        for p in m.decoder.parameters():
            p.mul_(4)
    means, errs = [], []
    for k in (1, 4, 32, 256):
        reps = []
        for s in range(10):
            torch.manual_seed(s)
            reps.append(float(L.iwae_nll(m, x, k, chunk=64, progress=False).mean()))
        r = torch.tensor(reps, dtype=torch.float64)
        means.append(float(r.mean()))
        errs.append(float(r.std() / math.sqrt(len(r))))
    for a, b, ea, eb in zip(means, means[1:], errs, errs[1:]):
        assert a - b > 3 * math.hypot(ea, eb), (means, errs)


def test_presets_and_subsets():
    assert L.PRESETS["paper"]["k"] == 5000 and L.PRESETS["paper"]["nll_n"] is None
    s = L.subset(10_000, 1000, seed=0)
    assert len(s) == 1000 and torch.equal(s, s.sort().values) and torch.equal(s, L.subset(10_000, 1000, seed=0))
    assert s.max() > 5000 and not torch.equal(s, torch.arange(1000))   # spread over the split, not its first images
    assert torch.equal(L.subset(300, None, 0), torch.arange(300)) and torch.equal(L.subset(300, 500, 0),
                                                                                  torch.arange(300))
    from dgm.metrics.registry import EvalContext
    ctx = lambda preset="default", n=10_000, **o: EvalContext(None, {}, n=n, options=o, preset=preset)  # noqa: E731
    assert L.nll_plan(ctx("paper"), 10_000) == {"k": 5000, "n": 10_000, "preset": "paper"}
    assert L.nll_plan(ctx(), 10_000) == {"k": 1000, "n": 1000, "preset": "default"}
    assert L.nll_plan(ctx(), 355) == {"k": 1000, "n": 355, "preset": "default"}        # a small test split: all of it
    assert L.nll_plan(ctx(k=20), 10_000)["preset"] == "custom"
    assert L.nll_plan(ctx(n=200), 10_000) == {"k": 1000, "n": 200, "preset": "custom"}
    assert L.nll_plan(ctx("paper", nll_n=300), 10_000) == {"k": 5000, "n": 300, "preset": "custom"}
    with pytest.raises(ValueError, match="protocol must be one of"):
        L.preset("fast")


def test_evaluate_records_the_default_protocol(tmp_path):
    import dgm
    from dgm.data import load_dataset
    from dgm.evaluate import evaluate
    run = dgm.save(tiny_vae(size=16, latent=2), tmp_path / "r", extra={"data": {"name": "digits", "image_size": 16}})
    lines = []
    res = evaluate(run, ["nll", "elbo"], options={"progress": False}, log=lines.append)
    n_test = len(load_dataset("digits", "test"))
    rec = json.loads((run / "eval.json").read_text())["test_nll"]
    assert rec == res["test_nll"]
    assert rec["preset"] == "default" and rec["k"] == L.PRESETS["default"]["k"]
    assert rec["n"] == min(n_test, L.PRESETS["default"]["nll_n"]) and rec["images"] == "the whole test split"
    assert math.isfinite(rec["value"]) and rec["stderr"] > 0 and rec["unit"] == "nats"
    # The ELBO bounds the same likelihood from below: its NLL is at least the IWAE one (k = 1000 vs 1 sample).
    assert -res["test_elbo"]["value"] > rec["value"]
    assert any("estimated" in ln and "min" in ln for ln in lines), lines
    res = evaluate(run, ["nll"], protocol="paper", options={"k": 7, "progress": False}, log=lines.append)
    assert res["test_nll"]["preset"] == "custom" and res["test_nll"]["k"] == 7
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate(run, ["nll"], protocol="quick")


def test_the_fast_copy_is_the_same_function():
    """The IWAE's CPU copy (channels_last weights, the few-channel output layer as a GEMM) decodes and scores as the
    model does, and leaves the model itself untouched."""
    from dgm.nn.conv import GemmConvTranspose2d
    torch.manual_seed(0)
    m = VAE(VAEConfig(channels=1, image_size=16, conv_channels=(8, 16), conv_hidden=32, latent_dim=3)).eval()
    fast = L.channels_last(m)
    assert type(fast.decoder.deconvs[-1]) is GemmConvTranspose2d
    assert type(m.decoder.deconvs[-1]) is torch.nn.ConvTranspose2d
    assert type(fast.decoder.deconvs[0]) is torch.nn.ConvTranspose2d          # 16 -> 8 channels: the plain layer
    z, x = torch.randn(7, 3), images(5, size=16)
    with torch.inference_mode():
        assert torch.allclose(fast.decoder(z), m.decoder(z), atol=1e-5)
    a = L.iwae_nll(m, x, 300, progress=False, seed=2, precision="fp32")
    b = L.iwae_nll(fast, x, 300, progress=False, seed=2, precision="fp32")
    assert (a - b).abs().max() < 1e-3


def test_the_decoder_precision_follows_the_hardware_and_is_recorded(tmp_path, monkeypatch):
    """nll_precision "auto" is bf16 only where the device runs bf16 in hardware; bf16 gives the fp32 estimate (the
    same noise) within a few hundredths of a nat, and eval.json says which precision it used."""
    import dgm
    from dgm import hardware
    from dgm.evaluate import evaluate
    cpu = torch.device("cpu")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(hardware, "native_bf16", lambda device, native=native: native)
        assert hardware.resolve_precision("auto", cpu) == want
        assert hardware.resolve_precision("fp32", cpu) == "fp32" and hardware.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        hardware.resolve_precision("fp16", cpu)
    m, x = tiny_vae(size=16, latent=2), images(20, size=16)
    est = {p: L.iwae_nll(m, x, 200, progress=False, seed=3, precision=p) for p in ("fp32", "bf16")}
    assert not torch.equal(est["fp32"], est["bf16"])                       # bf16 really ran
    assert abs(float(est["fp32"].mean() - est["bf16"].mean())) < 0.05
    run = dgm.save(m, tmp_path / "r", extra={"data": {"name": "digits", "image_size": 16}})
    rec = evaluate(run, ["nll"], options={"progress": False, "k": 5, "nll_n": 20})["test_nll"]
    assert rec["precision"] == "fp32"                                      # native_bf16 is patched to False here
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    rec = evaluate(run, ["nll"], options={"progress": False, "k": 5, "nll_n": 20})["test_nll"]
    assert rec["precision"] == "bf16" and json.loads((run / "eval.json").read_text())["test_nll"] == rec


def test_evaluate_scores_a_model_that_is_not_a_module(tmp_path):
    """benchmarks/compare scores other libraries' VAEs through a plain object with nll(): the NLL metric must not
    assume an nn.Module (its channels_last copy), and gives the wrapped model's own numbers."""
    import dgm
    from dgm.evaluate import evaluate
    vae = tiny_vae(size=16, latent=2)
    run = dgm.save(vae, tmp_path / "r", extra={"data": {"name": "digits", "image_size": 16}})

    class Wrapper:  # what benchmarks/compare/budget_anchors.py's wrappers offer: no .to, no parameters
        device, config = torch.device("cpu"), vae.config

        def capabilities(self):
            return frozenset({"nll"})

        def eval(self):
            return self

        def nll(self, x, k=1):
            return vae.nll(x, k)

    opts = {"progress": False, "k": 5, "nll_n": 20}
    wrapped = evaluate(run, ["nll"], options=opts, model=Wrapper())["test_nll"]
    own = evaluate(run, ["nll"], options={**opts, "nll_channels_last": False})["test_nll"]
    assert wrapped["n"] == 20 and wrapped["value"] == pytest.approx(own["value"], rel=1e-6)


# -- the IWAE training objective (Burda et al. 2015, eq. 8) ----------------------------------------------------------
def test_iwae_objective_with_one_sample_is_the_elbo():
    batch = ((images(256, size=8, seed=3) * 255).to(torch.uint8), None)
    elbo = tiny_vae()
    iwae = VAE(VAEConfig(**{**elbo.config.__dict__, "objective": "iwae", "iwae_k": 1})).eval()
    iwae.load_state_dict(elbo.state_dict())
    torch.manual_seed(0)
    a = elbo.loss(batch)
    torch.manual_seed(0)
    b = iwae.loss(batch)
    # The same noise: the same z, so the same reconstruction term and KL, and L_1 is the one-sample ELBO exactly.
    assert torch.equal(a["recon"], b["recon"]) and torch.allclose(a["kl"], b["kl"])
    assert torch.allclose(b["loss"], -b["elbo"], atol=1e-5)
    # L_1 uses a Monte Carlo KL, log q(z|x) - log p(z), where the ELBO loss has the closed form: equal in expectation.
    x = iwae.prepare(batch[0])
    torch.manual_seed(1)
    t = iwae.importance_terms(x, 64)
    from dgm.nn.distributions import gaussian_kl
    mc = (t["log_px"] - t["log_w"]).double()                               # (64, B) per-draw KL estimates
    gap = mc.mean(0) - gaussian_kl(t["mu"], t["logvar"]).sum(1).double()
    assert gap.mean().abs() < 4 * gap.std() / math.sqrt(len(gap)) + 1e-6


def test_iwae_objective_tightens_and_trains():
    batch = ((images(32, size=8, seed=4) * 255).to(torch.uint8), None)
    m = VAE(VAEConfig(**{**tiny_vae().config.__dict__, "objective": "iwae", "iwae_k": 8}))
    torch.manual_seed(0)
    out = m.loss(batch)
    assert out["iwae"] >= out["elbo"]            # log of a mean >= mean of logs, on the same draws (Jensen)
    out["loss"].backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="objective must be"):
        VAE(VAEConfig(objective="iw"))
    with pytest.raises(ValueError, match="no beta or capacity"):
        VAE(VAEConfig(objective="iwae", beta=4.0))
