"""Diffusion: schedules, the forward process, the three samplers, guidance, the likelihood bound, a 2-D learning test,
and the train -> sample -> evaluate path through the CLI. Tiny configs throughout (8x8 images, T <= 100)."""
import math

import pytest
import torch
from torch import nn

from dgm.models.diffusion import Diffusion, DiffusionConfig, discretized_gaussian_log_prob
from dgm.nn.unet import UNet, timestep_embedding
from dgm.schedulers import (DDIMScheduler, DDPMScheduler, DPMSolverPPScheduler, NoiseSchedule, make_betas,
                            make_scheduler)


def tiny(**kw) -> Diffusion:
    cfg = dict(channels=1, image_size=8, num_classes=10, base_channels=8, channel_mults=(1, 2), timesteps=50,
               sample_steps=5)
    cfg.update(kw)
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(**cfg)).eval()


# -- schedules and the forward process ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_properties(kind):
    s = NoiseSchedule(kind, 1000)
    ab = s.alphas_cumprod
    assert ab.dtype == torch.float64 and s.betas.dtype == torch.float64
    assert (s.betas > 0).all() and (s.betas < 1).all()
    assert (ab[1:] < ab[:-1]).all()                     # alpha-bar strictly decreasing
    assert ab[0] > 0.999 and ab[-1] < 1e-4              # starts near the data, ends near pure noise
    assert s.posterior_var[0] == 0 and (s.posterior_var[1:] > 0).all()


def test_linear_schedule_endpoints_and_bad_names():
    b = make_betas("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    with pytest.raises(ValueError, match="schedule"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="timesteps"):
        make_betas("linear", 0)


def test_add_noise_statistics():
    s = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    for t in (0, 300, 999):
        xt = s.add_noise(x0, torch.randn(x0.shape, generator=g), t)
        ab = s.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.03 * (1 - ab) + 1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_targets_convert_exactly(prediction):
    s = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    xt = s.add_noise(x0, eps, t)
    x0_back, eps_back = s.convert(prediction, s.target(prediction, x0, eps, t), xt, t)
    torch.testing.assert_close(x0_back, x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(eps_back, eps, atol=1e-6, rtol=1e-6)


# -- samplers ---------------------------------------------------------------------------------------------------------
def test_timesteps_start_noisy_and_cover_all():
    s = NoiseSchedule("linear", 1000)
    sch = DDIMScheduler(s)
    sch.set_timesteps(1000)
    assert sch.timesteps == list(range(999, -1, -1))
    sch.set_timesteps(10)
    assert sch.timesteps[0] == 999 and len(sch.timesteps) == 10 and sch.timesteps == sorted(sch.timesteps)[::-1]
    with pytest.raises(ValueError, match="steps"):
        sch.set_timesteps(0)
    with pytest.raises(ValueError, match="sampler"):
        make_scheduler("euler", s)


def test_ddim_eta0_is_deterministic():
    s = NoiseSchedule("linear", 1000)
    sch = DDIMScheduler(s, clip=None, eta=0.0)
    sch.set_timesteps(20)
    x, out = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    a = sch.step(out, sch.timesteps[3], x, torch.Generator().manual_seed(0)).prev_sample
    b = sch.step(out, sch.timesteps[3], x, torch.Generator().manual_seed(99)).prev_sample
    assert torch.equal(a, b)


def test_ddim_all_steps_matches_ddpm_posterior():
    """DDIM with eta = 1 over all T steps is the DDPM posterior (mean Ho eq. 7, variance beta_tilde): with the same
    noise draw both samplers give the same x_{t-1}."""
    s = NoiseSchedule("linear", 1000)
    ddpm, ddim1, ddim0 = DDPMScheduler(s, clip=None), DDIMScheduler(s, clip=None, eta=1.0), DDIMScheduler(s, clip=None)
    g = torch.Generator().manual_seed(0)
    x, eps_hat = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64), torch.randn(3, 1, 6, 6, generator=g,
                                                                                      dtype=torch.float64)
    for t in (999, 500, 10, 1):
        a = ddpm.step(eps_hat, t, x, torch.Generator().manual_seed(t)).prev_sample
        b = ddim1.step(eps_hat, t, x, torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        # Independent check against the posterior coefficients of the schedule (Ho eq. 7).
        x0 = (x - (1 - s.alphas_cumprod[t]).sqrt() * eps_hat) / s.alphas_cumprod[t].sqrt()
        mean = s.posterior_c0[t] * x0 + s.posterior_ct[t] * x
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t)).double()
        torch.testing.assert_close(a, mean + s.posterior_var[t].sqrt() * z, atol=1e-10, rtol=1e-10)
        # eta = 0 drops the noise and puts its variance back on eps: the means differ by exactly
        # (sqrt(1 - abar_s) - sqrt(1 - abar_s - beta_tilde)) eps, which is O(beta_tilde / sqrt(1 - abar_s)).
        m0 = ddim0.step(eps_hat, t, x).prev_sample
        a_s, bt = s.abar_prev[t], s.posterior_var[t]
        torch.testing.assert_close(m0 - mean, ((1 - a_s).sqrt() - (1 - a_s - bt).sqrt()) * eps_hat)
    # The last step (t = 0) of every sampler returns the x0 estimate.
    for sch in (ddpm, ddim1, ddim0):
        assert torch.allclose(sch.step(eps_hat, 0, x).prev_sample, sch.predict(eps_hat, 0, x)[0])


def test_dpm_solver_first_step_is_ddim_and_multistep_differs():
    s = NoiseSchedule("linear", 1000)
    dpm, ddim = DPMSolverPPScheduler(s, clip=None), DDIMScheduler(s, clip=None)
    dpm.set_timesteps(10)
    ddim.set_timesteps(10)
    x, out = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t0, t1 = dpm.timesteps[:2]
    x1 = dpm.step(out, t0, x).prev_sample
    torch.testing.assert_close(x1, ddim.step(out, t0, x).prev_sample)  # first order = DDIM (Lu et al. 2022)
    out2 = torch.randn_like(out)
    assert not torch.allclose(dpm.step(out2, t1, x1).prev_sample, ddim.step(out2, t1, x1).prev_sample)


# -- the model --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction,gamma", [("eps", 0.0), ("x0", 5.0), ("v", 5.0)])
def test_loss_backward(prediction, gamma):
    m = tiny(prediction=prediction, min_snr_gamma=gamma, conditional=True).train()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = m.loss((x, torch.arange(4)))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in m.net.parameters() if p.requires_grad)


def test_unet_any_size_and_embedding():
    net = UNet(3, base=8, channel_mults=(1, 2, 2), attn_levels=(1, -1), num_classes=4)
    y = net(torch.randn(2, 3, 7, 7), torch.tensor([0, 999]), torch.tensor([1, 4]))
    assert y.shape == (2, 3, 7, 7)
    e = timestep_embedding(torch.tensor([0.0, 10.0]), 9)
    assert e.shape == (2, 9) and torch.isfinite(e).all()
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(1, base=8, channel_mults=(1, 2), attn_levels=(5,))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_sample_seeded_and_in_range(sampler):
    m = tiny()
    a = m.sample(3, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=5, eta=0.5)
    b = m.sample(3, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=5, eta=0.5)
    assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)


def test_guidance_mixes_conditional_and_unconditional():
    m = tiny(conditional=True)
    with torch.no_grad():  # give the label embedding some effect (it starts random but the output layer is zero)
        for p in m.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    with torch.inference_mode():
        cond, uncond = m.net(x, torch.full((3,), 20), y), m.net(x, torch.full((3,), 20), None)
        torch.testing.assert_close(m.model_output(x, 20, y, 1.0), cond)
        torch.testing.assert_close(m.model_output(x, 20, y, 0.0), uncond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.model_output(x, 20, y, 3.0), uncond + 3 * (cond - uncond), atol=1e-5, rtol=1e-5)
    assert m.sample(3, cond=7, guidance=2.0).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="guidance needs a class"):
        m.sample(2, guidance=3.0)
    with pytest.raises(ValueError, match="class labels"):
        m.sample(2, cond=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="without labels"):
        tiny().sample(2, cond=3)


def test_bad_configs():
    for kw, msg in [(dict(prediction="score"), "prediction"), (dict(variance="huge"), "variance"),
                    (dict(sampler="euler"), "sampler"), (dict(conditional=True, num_classes=0), "labelled"),
                    (dict(cond_drop=1.0), "cond_drop")]:
        with pytest.raises(ValueError, match=msg):
            tiny(**kw)


# -- the likelihood bound ---------------------------------------------------------------------------------------------
def test_discretised_decoder_sums_to_one():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_s in [(0.0, -3.0), (0.93, -6.0), (-1.2, 0.5)]:
        lp = discretized_gaussian_log_prob(levels, torch.full_like(levels, mean), torch.full_like(levels, log_s))
        assert torch.isfinite(lp).all()
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_bound_terms_finite_prior_zero_and_estimator_unbiased():
    m = tiny(timesteps=1000)
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    terms = m.vlb_terms(x, t_samples=4)
    for k, v in terms.items():
        assert v.shape == (2,) and torch.isfinite(v).all(), k
    assert (terms["prior"] / 64 < 1e-4).all()                    # q(x_T | x_0) ~ N(0, I) for a long schedule
    assert (terms["diffusion_small"] >= 0).all() and (terms["decoder_small"] > 0).all()
    # Stratified timestep sampling is unbiased. With a network that always guesses x0 = 0 each term is a fixed
    # number per t (no dependence on the noise), so: K = T-1 strata reproduce the full sum exactly, and the average
    # of K = 4 estimates over many draws approaches it.
    class Zero(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1))  # the model reads its device from its parameters

        def forward(self, x, t, y=None):
            return torch.zeros_like(x)
    m = tiny(timesteps=13, prediction="x0", clip=False)
    m.net = Zero()
    full = m.vlb_terms(x)["diffusion_large"]
    torch.testing.assert_close(m.vlb_terms(x, 12)["diffusion_large"], full)
    est = torch.stack([m.vlb_terms(x, 4, torch.Generator().manual_seed(s))["diffusion_large"] for s in range(1000)])
    assert torch.allclose(est.mean(0), full, rtol=0.05), (est.mean(0), full)
    m = tiny(timesteps=13)
    bpd = m.bits_per_dim(x)
    assert bpd.shape == (2,) and (bpd > 0).all()


# -- a learning test on 2-D data ---------------------------------------------------------------------------------------
class PointNet(nn.Module):
    """eps-model for 2-D points: MLP on [x, sinusoidal(t)]."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(2 + 32, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))

    def forward(self, x, t):
        return self.f(torch.cat([x, timestep_embedding(t.expand(x.shape[0]), 32)], 1))


def test_learns_two_gaussians():
    """Train an eps-model on two blobs at (+-0.6, 0.3) with std 0.1; DDPM, DDIM and DPM-Solver++ samples reproduce
    the y marginal N(0.3, 0.1^2) and use both blobs (a short run still bridges the blobs a little in x)."""
    torch.manual_seed(0)
    s = NoiseSchedule("linear", 1000)
    net = PointNet()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    decay = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, 1000)
    centres = torch.tensor([[0.6, 0.3], [-0.6, 0.3]])
    for _ in range(1000):
        x0 = centres[torch.randint(0, 2, (256,))] + 0.1 * torch.randn(256, 2)
        t = torch.randint(0, s.T, (256,))
        eps = torch.randn_like(x0)
        loss = (net(s.add_noise(x0, eps, t), t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    for name, steps in (("ddpm", 100), ("ddim", 50), ("dpm++2m", 20)):
        sch = make_scheduler(name, s, "eps", clip=1.0, steps=steps)
        x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            for t in sch.timesteps:
                x = sch.step(net(x, torch.tensor(t)), t, x, torch.Generator().manual_seed(t)).prev_sample
        assert abs(x[:, 1].mean() - 0.3) < 0.05 and 0.07 < x[:, 1].std() < 0.15, name  # noise: mean 0, std 1
        assert 0.3 < (x[:, 0] > 0).float().mean() < 0.7 and 0.35 < x[:, 0].abs().mean() < 0.8, name


# -- train -> figures -> sample -> evaluate ---------------------------------------------------------------------------
def test_train_sample_evaluate_cli(tmp_path):
    from dgm.cli import main
    from dgm.evaluate import evaluate
    from dgm.tasks import train
    out = train("diffusion", "digits", steps=3, out=tmp_path / "run", progress=False,
                overrides={"base_channels": "8", "channel_mults": "1,2", "timesteps": "20", "sample_steps": "4",
                           "conditional": "true", "batch_size": "16"})
    assert (out / "denoise.png").is_file() and (out / "denoise.gif").is_file() and (out / "samples.png").is_file()
    assert main(["sample", str(out), "-n", "4", "--sampler", "dpm++2m", "--steps", "3", "--class", "7",
                 "--guidance", "2", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    with pytest.raises(SystemExit) as e:
        main(["sample", str(out), "--sampler", "nope"])
    assert e.value.code == 2
    res = evaluate(out, ["bpd"], n=4, options={"bpd_t": 3})
    assert res["bpd"]["value"] > 0 and res["bpd"]["n"] == 4
