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
    if cfg.get("objective", "ddpm") != "ddpm":
        del cfg["timesteps"]  # a ddpm-only field
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


# -- EDM and flow matching: the continuous-time objectives ---------------------------------------------------------
from dgm.schedulers import EDMSchedule, FlowSchedule, ODEScheduler  # noqa: E402


def test_edm_preconditioning_is_the_papers():
    """Karras et al. 2022 table 1: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2),
    c_noise = ln(s)/4, lambda = (s^2+sd^2)/(s sd)^2; and what they are for: with data of std sd, the network's input
    c_in x and its target (x0 - c_skip x)/c_out both have unit variance at every sigma (their appendix B.6)."""
    sd = 0.5
    e = EDMSchedule(sigma_data=sd)
    for s in (0.002, 0.1, 0.5, 1.0, 7.0, 80.0):
        c_skip, c_out, c_in, c_noise = (float(v) for v in e.precondition(torch.tensor(s, dtype=torch.float64)))
        assert c_skip == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2), rel=1e-12)
        assert c_out == pytest.approx(s * sd / math.sqrt(s ** 2 + sd ** 2), rel=1e-12)
        assert c_in == pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2), rel=1e-12)
        assert c_noise == pytest.approx(math.log(s) / 4, rel=1e-12)
        lam = float(e.loss_weight(torch.tensor(s, dtype=torch.float64)))
        assert lam == pytest.approx((s ** 2 + sd ** 2) / (s * sd) ** 2, rel=1e-12)
        assert lam * c_out ** 2 == pytest.approx(1.0, rel=1e-12)  # so the loss on F has unit weight
    g = torch.Generator().manual_seed(0)
    x0, n = sd * torch.randn(200_000, generator=g, dtype=torch.float64), torch.randn(200_000, generator=g,
                                                                                      dtype=torch.float64)
    for s in (0.01, 0.5, 20.0):
        c_skip, c_out, c_in, _ = e.precondition(torch.tensor(s, dtype=torch.float64))
        x = x0 + s * n
        assert float((c_in * x).std()) == pytest.approx(1.0, abs=0.01)
        assert float(((x0 - c_skip * x) / c_out).std()) == pytest.approx(1.0, abs=0.01)
    # The sigma grid (eq. 5): sigma_max first, sigma_min last, rho-spaced, then 0.
    grid = e.grid(18)
    assert len(grid) == 19 and grid[0] == pytest.approx(80.0) and grid[17] == pytest.approx(0.002) and grid[18] == 0
    i = 5
    assert grid[i] == pytest.approx((80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7)


class Recorder(nn.Module):
    """A stand-in network: remembers its inputs, returns a fixed function of them."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append((x.clone(), t.clone()))
        return torch.sin(3 * x) + t.float().view(-1, 1, 1, 1) / 1000


def test_edm_model_wraps_the_network_in_the_preconditioning():
    m = tiny(objective="edm")
    m.net = Recorder()
    x = torch.randn(3, 1, 8, 8)
    sigma = 2.5
    d = m.model_output(x, sigma)
    c_skip, c_out, c_in, c_noise = (float(v) for v in m.schedule.precondition(torch.tensor(sigma, dtype=torch.float64)))
    xin, tin = m.net.seen[-1]
    torch.testing.assert_close(xin, c_in * x)
    torch.testing.assert_close(tin, torch.full((3,), 1000 * c_noise))
    torch.testing.assert_close(d, c_skip * x + c_out * (torch.sin(3 * c_in * x) + c_noise), atol=1e-5, rtol=1e-5)
    # The training loss is lambda(sigma) ||D - x0||^2 = ||F - (x0 - c_skip x)/c_out||^2 at the sampled sigma.
    torch.manual_seed(1)
    xb = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = m.loss((xb, None))
    xin, tin = m.net.seen[-1]
    sig = torch.exp(4 * tin.double() / 1000)  # back from c_noise
    x0 = xb.float() / 127.5 - 1
    cs, co, ci, _ = (v.view(-1, 1, 1, 1).float() for v in m.schedule.precondition(sig))
    x_noisy = xin / ci
    dhat = cs * x_noisy + co * (torch.sin(3 * xin) + (tin.float() / 1000).view(-1, 1, 1, 1))
    lam = m.schedule.loss_weight(sig).float()
    want = (lam * (dhat - x0).pow(2).flatten(1).mean(1)).mean()
    torch.testing.assert_close(out["loss"], want, atol=1e-4, rtol=1e-4)


def _gaussian_denoiser(kind, s):
    """The exact x0-predictor E[x0 | x] for data x0 ~ N(0, s^2): then the probability-flow ODE is linear in x."""
    if kind == "edm":
        return lambda x, sig: s ** 2 / (s ** 2 + sig ** 2) * x
    return lambda x, t: (1 - t) * s ** 2 / ((1 - t) ** 2 * s ** 2 + t ** 2) * x  # flow: x_t = (1-t) x0 + t z


def _solve(kind, method, calls, s=0.5, x_start=None):
    """Run the sampler with the exact Gaussian denoiser / velocity as the 'network'."""
    sched = EDMSchedule() if kind == "edm" else FlowSchedule()
    sch = ODEScheduler(sched, method, clip=None)
    sch.set_timesteps(calls)
    den = _gaussian_denoiser(kind, s)
    x = x_start.clone() * sch.init_noise_sigma
    for t in sch.timesteps:
        x0 = den(x, t)
        out = x0 if kind == "edm" else (x - x0) / t  # edm reads D, flow reads v
        x = sch.step(out, t, x).prev_sample
    return x, sch


def test_heun_step_matches_its_closed_form_on_a_linear_ode():
    """For dx/ds = a(s) x, one Heun step from s0 to s1 (h = s1 - s0) is x1 = x0 (1 + h/2 (a(s0) + a(s1)(1 + h a(s0))))
    exactly, an Euler step x0 (1 + h a(s0)); and the whole solve reaches the exact solution with second-order error
    (halving the step size divides it by ~4; Euler's by ~2)."""
    s = 0.5
    x = torch.tensor([[1.0, -2.0, 0.3]], dtype=torch.float64)
    e = EDMSchedule()
    a = lambda sig: sig / (s ** 2 + sig ** 2)  # noqa: E731  (x - D)/sigma with the Gaussian denoiser
    sch = ODEScheduler(e, "heun", clip=None)
    sch.set_timesteps(35)
    s0, s1 = sch.timesteps[0], sch.timesteps[1]
    assert sch.timesteps[2] == s1  # the corrector evaluates at s1, then the next interval starts there
    den = _gaussian_denoiser("edm", s)
    x_pred = sch.step(den(x, s0), s0, x).prev_sample
    h = s1 - s0
    torch.testing.assert_close(x_pred, x * (1 + h * a(s0)), rtol=1e-12, atol=1e-12)
    x1 = sch.step(den(x_pred, s1), s1, x_pred).prev_sample
    torch.testing.assert_close(x1, x * (1 + h / 2 * (a(s0) + a(s1) * (1 + h * a(s0)))), rtol=1e-12, atol=1e-12)
    # Whole solves. EDM: x(sigma) = x(sigma_max) sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2)); flow: x(0) = s x(1).
    z = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for kind, exact in (("edm", z * 80 * s / math.sqrt(s ** 2 + 80 ** 2)), ("flow", s * z)):
        err = {}
        for method in ("euler", "heun"):
            for calls in ((20, 40) if method == "euler" else (19, 39)):  # heun: 10 and 20 intervals
                xs, _ = _solve(kind, method, calls, s, z)
                err[method, calls] = float((xs - exact).abs().max())
        assert err["heun", 19] / err["heun", 39] > 3.0, (kind, err)          # second order
        assert 1.5 < err["euler", 20] / err["euler", 40] < 2.6, (kind, err)  # first order
        assert err["heun", 39] < err["euler", 40], (kind, err)
        fine, _ = _solve(kind, "heun", 399, s, z)  # 200 intervals: converged
        assert float((fine - exact).abs().max()) < 2e-3 * float(exact.abs().max()), kind


@pytest.mark.parametrize("method", ["heun", "euler"])
@pytest.mark.parametrize("kind", ["edm", "flow"])
def test_ode_sampler_makes_exactly_the_calls_asked(kind, method):
    sched = EDMSchedule() if kind == "edm" else FlowSchedule()
    for calls in range(1, 41):
        sch = ODEScheduler(sched, method, clip=None)
        sch.set_timesteps(calls)
        assert sch.num_steps == len(sch.timesteps) == calls
        assert sch.timesteps[0] == (80.0 if kind == "edm" else 1.0) and min(sch.timesteps) > 0
        x = torch.randn(2, 3)
        for t in sch.timesteps:
            x = sch.step(torch.zeros_like(x), t, x).prev_sample  # D = 0 / v = 0 both finish finite
        assert torch.isfinite(x).all()
        with pytest.raises(RuntimeError, match="all its steps"):
            sch.step(torch.zeros_like(x), 0.0, x)


def test_edm_churn_is_seeded_noise_and_raises_sigma():
    e = EDMSchedule()
    sch = ODEScheduler(e, "heun", clip=None, s_churn=40, s_tmin=0.05, s_tmax=50)
    sch.set_timesteps(35)
    gamma = min(40 / 18, math.sqrt(2) - 1)
    for s, hat in zip(sch.sigmas[:-1], sch.sigma_hat):
        assert hat == pytest.approx(s * (1 + gamma) if 0.05 <= s <= 50 else s)
    assert sch.sigma_hat[0] == 80.0 and sch.init_noise_sigma == 80.0  # sigma_max is above s_tmax: no churn
    m = tiny(objective="edm", s_churn=40, s_tmin=0.05, s_tmax=50)
    a, b = (m.sample(2, generator=torch.Generator().manual_seed(k)) for k in (0, 0))
    c = m.sample(2, generator=torch.Generator().manual_seed(0), s_churn=0.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="edm objective"):
        ODEScheduler(FlowSchedule(), "heun", s_churn=1.0)
    with pytest.raises(ValueError, match="edm objective"):
        tiny().sample(1, s_churn=1.0)


class FlowPointNet(nn.Module):
    """velocity model for 2-D points: MLP on [x, sinusoidal(1000 t)] (the UNet's time scaling)."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(2 + 32, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))

    def forward(self, x, t):
        return self.f(torch.cat([x, timestep_embedding((1000 * t).reshape(-1).expand(x.shape[0]), 32)], 1))


def test_flow_matching_learns_two_gaussians():
    """Regress v = x1 - x0 on straight paths between two blobs at (+-0.6, 0.3), std 0.1, and noise; Euler (and Heun)
    integration of the learnt ODE from t = 1 to 0 reproduces the y marginal and uses both blobs."""
    torch.manual_seed(0)
    fs = FlowSchedule("logit_normal")
    net = FlowPointNet()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    decay = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, 1000)
    centres = torch.tensor([[0.6, 0.3], [-0.6, 0.3]])
    for _ in range(1000):
        x0 = centres[torch.randint(0, 2, (256,))] + 0.1 * torch.randn(256, 2)
        t = fs.sample_train(256, "cpu")
        x1 = torch.randn_like(x0)
        loss = (net(fs.add_noise(x0, x1, t), t) - fs.target(x0, x1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    for method, calls in (("euler", 30), ("heun", 15)):
        sch = ODEScheduler(fs, method, clip=1.0)
        sch.set_timesteps(calls)
        x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            for t in sch.timesteps:
                x = sch.step(net(x, torch.tensor(t)), t, x).prev_sample
        assert abs(x[:, 1].mean() - 0.3) < 0.05 and 0.06 < x[:, 1].std() < 0.15, method  # noise: mean 0, std 1
        assert 0.3 < (x[:, 0] > 0).float().mean() < 0.7 and 0.4 < x[:, 0].abs().mean() < 0.8, method


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_continuous_objectives_train_save_load_and_sample_the_same(objective, tmp_path):
    from dgm.io import load, save
    m = tiny(objective=objective, conditional=True).train()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = m.loss((x, torch.arange(4)))
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["mse"])
    out["loss"].backward()
    assert all(p.grad is not None for p in m.net.parameters() if p.requires_grad)
    with torch.no_grad():  # weights that are not the zero-initialised output layer's
        for p in m.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.eval()
    save(m, tmp_path / "run")
    m2 = load(tmp_path / "run").eval()
    assert m2.config.objective == objective and m2.config.sampler == "heun" and m2.config.sample_steps == 5
    for kw in ({}, {"sampler": "euler", "steps": 4}, {"cond": 3, "guidance": 2.0}):
        a = m.sample(3, generator=torch.Generator().manual_seed(0), **kw)
        b = m2.sample(3, generator=torch.Generator().manual_seed(0), **kw)
        assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b), kw
    calls = []
    m.sample(2, steps=7, callback=lambda i, t, x_t, x0: calls.append((i, t, x0.shape)))
    assert [c[0] for c in calls] == list(range(7)) and all(c[2] == (2, 1, 8, 8) for c in calls)
    assert calls[0][1] == pytest.approx(80.0 if objective == "edm" else 1.0)


def test_capabilities_and_samplers_follow_the_objective():
    assert "bits_per_dim" in tiny().capabilities()
    for obj in ("edm", "flow"):
        m = tiny(objective=obj)
        assert "bits_per_dim" not in m.capabilities() and {"sample", "trajectory"} <= m.capabilities()
        with pytest.raises(NotImplementedError, match="ddpm objective"):
            m.bits_per_dim(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
        with pytest.raises(ValueError, match="is for the ddpm objective"):
            m.sample(1, sampler="ddim")
        with pytest.raises(ValueError, match="is for the ddpm objective"):
            tiny(objective=obj, sampler="dpm++2m")
    with pytest.raises(ValueError, match="edm and flow"):
        tiny().sample(1, sampler="heun")
    with pytest.raises(ValueError, match="objective"):
        tiny(objective="score")
    with pytest.raises(ValueError, match="prediction, min_snr_gamma configure"):
        tiny(objective="edm", prediction="v", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="flow_t"):
        tiny(objective="flow", flow_t="beta")
    with pytest.raises(ValueError, match="sigma_min"):
        tiny(objective="edm", sigma_min=100.0)
    # "" / 0 resolve to the objective's sampler and call count, written into the config.
    assert (tiny(sample_steps=0).config.sampler, tiny(sample_steps=0).config.sample_steps) == ("ddim", 50)
    assert (tiny(objective="edm", sample_steps=0).config.sample_steps) == 35


def test_studio_sampler_options_come_from_sample_signature():
    import dataclasses
    from dgm.serve.caps import sample_options
    for obj, sampler in (("ddpm", "ddim"), ("edm", "heun"), ("flow", "heun")):
        cfg = dataclasses.asdict(tiny(objective=obj).config)
        opts = {o["name"]: o for o in sample_options(Diffusion, cfg)}
        assert {"sampler", "steps", "eta", "guidance", "s_churn"} <= set(opts)
        assert opts["sampler"]["type"] == "choice" and opts["sampler"]["default"] == sampler
        assert {"ddpm", "ddim", "dpm++2m", "heun", "euler"} <= set(opts["sampler"]["choices"])
        assert opts["steps"]["default"] == 5 and opts["steps"]["type"] == "int"


def test_fresh_runs_get_the_default_objective_and_old_configs_stay_ddpm(monkeypatch):
    import dgm.models.diffusion as dm
    from dgm.io import build

    class Data:
        name = "fake"

        def model_fields(self):
            return {"channels": 1, "image_size": 8, "num_classes": 0}
    small = {"base_channels": 8, "channel_mults": (1, 2)}
    monkeypatch.setattr(dm, "DEFAULT_OBJECTIVE", "edm")
    assert Diffusion.for_data(Data(), small).config.objective == "edm"
    assert Diffusion.for_data(Data(), {**small, "objective": "flow"}).config.objective == "flow"
    # A config written before `objective` existed holds every ddpm field: it stays ddpm, fresh or loaded.
    old = dataclasses_asdict_without_objective(tiny())
    assert Diffusion.for_data(Data(), {k: v for k, v in old.items() if k not in Data().model_fields()}
                              ).config.objective == "ddpm"
    assert build({"family": "diffusion", "model": old}).config.objective == "ddpm"


def dataclasses_asdict_without_objective(m):
    import dataclasses
    d = dataclasses.asdict(m.config)
    del d["objective"]
    return d


def test_ddpm_sample_is_the_plain_scheduler_loop():
    """The ddpm objective's sample() is exactly the set_timesteps / step loop on the network's output (no scaling of
    the initial noise, no preconditioning): the same bits as before the continuous objectives existed."""
    m = tiny(conditional=False)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for sampler in ("ddim", "dpm++2m", "ddpm"):
        got = m.sample(3, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=5, eta=0.3)
        g = torch.Generator().manual_seed(0)
        x = torch.randn((3, 1, 8, 8), generator=g)
        sch = make_scheduler(sampler, m.schedule, "eps", 1.0, 5, 0.3, "small")
        with torch.inference_mode():
            for t in sch.timesteps:
                x = sch.step(m.net(x, torch.full((3,), t)).float(), t, x, g).prev_sample
        assert torch.equal(got, ((x + 1) / 2).clamp(0, 1)), sampler


def test_train_sample_cli_edm(tmp_path):
    from dgm.cli import main
    from dgm.tasks import train
    out = train("diffusion", "digits", steps=3, out=tmp_path / "run", progress=False,
                overrides={"objective": "edm", "base_channels": "8", "channel_mults": "1,2", "sample_steps": "5",
                           "batch_size": "16"})
    assert (out / "denoise.png").is_file() and (out / "samples.png").is_file()
    assert main(["sample", str(out), "-n", "4", "--sampler", "euler", "--steps", "3", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
