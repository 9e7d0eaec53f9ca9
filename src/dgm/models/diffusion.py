"""Denoising diffusion models (Ho et al. 2020; Nichol & Dhariwal 2021), with DDPM / DDIM / DPM-Solver++ sampling.

Training: pick t ~ U{0..T-1} and noise eps ~ N(0, I), form x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and regress the
network's output on eps, x_0 or v = alpha eps - sigma x_0 (Salimans & Ho 2022) with a plain MSE ("L_simple", Ho eq. 14),
optionally weighted by min-SNR-gamma (Hang et al. 2023). A class-conditional model drops its label with probability
`cond_drop` so one network is both p(x | y) and p(x), which classifier-free guidance (Ho & Salimans 2022) combines:
out = out_uncond + w (out_cond - out_uncond).

Likelihood: the variational bound of Ho et al. 2020 eq. 5, L = L_T + sum_{t>1} L_{t-1} + L_0, with the discretised
Gaussian decoder L_0 over the 256 pixel levels (sec. 3.3), in bits per dimension: -log2 P(x) / D of the 8-bit data.
Pixels live in [-1, 1]; the network (dgm.nn.unet) is separate from the samplers (dgm.schedulers).

Objectives (`objective`), all on the same UNet and the same sampling loop:
- "ddpm": the above (discrete t = 0..T-1; samplers ddpm, ddim, dpm++2m; the only one with bits/dim);
- "edm" (Karras et al. 2022): the network F inside the preconditioned denoiser D(x; sigma) = c_skip x +
  c_out F(c_in x; c_noise), log-normal training sigmas, loss lambda(sigma) ||D - x0||^2 (dgm.schedulers.EDMSchedule);
  samplers heun (2nd order, default) and euler on the rho = 7 sigma grid, optional stochastic churn (s_churn);
- "flow" (flow matching / rectified flow, Lipman et al. 2023; Liu et al. 2023): x_t = (1 - t) x0 + t eps, regress
  v = eps - x0 (dgm.schedulers.FlowSchedule), t uniform or logit-normal (Esser et al. 2024); samplers euler, heun.
The UNet's sinusoidal embedding was sized for DDPM's t in [0, 1000), so the continuous objectives feed it
TIME_SCALE times their time variable (1000 c_noise for EDM, 1000 t for flow): the same span of embedding phases.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from dgm.data import to_float
from dgm.memory import tune_allocator
from dgm.models.base import GenerativeModel, ImageConfig, randn
from dgm.nn.distributions import gaussian_kl
from dgm.nn.unet import UNet
from dgm.registry import register
from dgm.schedulers import (PREDICTIONS, EDMSchedule, FlowSchedule, NoiseSchedule,
                            make_scheduler)

OBJECTIVES = ("ddpm", "edm", "flow")
# What a fresh `dgm train diffusion` trains (DiffusionConfig keeps "ddpm" so that configs written before `objective`
# existed still load as what they are); see Diffusion.for_data.
DEFAULT_OBJECTIVE = "flow"  # best FID per CPU-minute of the three (benchmarks/results/diffusion_objectives.md)
DDPM_ONLY = ("timesteps", "schedule", "prediction", "min_snr_gamma", "variance")  # fields only "ddpm" reads
TIME_SCALE = 1000.0  # network time input = TIME_SCALE * c_noise (edm) or TIME_SCALE * t (flow)
DEFAULT_SAMPLER = {"ddpm": ("ddim", 50), "edm": ("heun", 35), "flow": ("heun", 35)}  # (sampler, network calls)


@dataclass
class DiffusionConfig(ImageConfig):
    objective: str = "ddpm"                  # "ddpm" (eps/x0/v on a discrete schedule), "edm" or "flow" (see above)
    timesteps: int = 1000
    schedule: str = "linear"                 # "linear" (Ho et al. 2020) or "cosine" (Nichol & Dhariwal 2021)
    prediction: str = "eps"                  # what the network outputs: "eps", "x0" or "v"
    min_snr_gamma: float = 0.0               # > 0: min-SNR-gamma loss weights (Hang et al. 2023; 5 is their choice)
    base_channels: int = 24                  # UNet width at full resolution (default: ~0.6M parameters, CPU-sized)
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_levels: tuple[int, ...] = (-1,)     # UNet levels with self-attention (-1: the lowest resolution)
    heads: int = 1
    dropout: float = 0.0
    conditional: bool = False                # class-conditional (needs labels); enables classifier-free guidance
    cond_drop: float = 0.1                   # label dropout probability while training a conditional model
    variance: str = "small"                  # reverse-process variance: beta_tilde ("small") or beta ("large")
    sampler: str = ""                        # default sampler for sample() and previews ("": ddim for ddpm, heun else)
    sample_steps: int = 0                    # default sampling steps = network calls (0: 50 for ddpm, 35 else;
                                             # the ddpm sampler uses all T unless told)
    clip: bool = True                        # clip the predicted x0 to [-1, 1] while sampling
    # EDM (Karras et al. 2022, table 1 and algorithm 2); sigma_data 0.5 is theirs for data in [-1, 1].
    sigma_data: float = 0.5
    p_mean: float = -1.2                     # training: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    sigma_min: float = 0.002                 # sampling grid (eq. 5)
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float = 0.0                     # > 0: stochastic sampling (algorithm 2) for sigma in [s_tmin, s_tmax]
    s_tmin: float = 0.0
    s_tmax: float = 1e9
    s_noise: float = 1.0
    # Flow matching: the training distribution of t in (0, 1).
    flow_t: str = "logit_normal"             # "uniform" or "logit_normal" (t = sigmoid(N(flow_t_mean, flow_t_std^2)))
    flow_t_mean: float = 0.0
    flow_t_std: float = 1.0


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of 8-bit data in [-1, 1] under N(mean, exp(log_scale)^2) integrated over the pixel's bin of width 2/255,
    the outermost bins reaching to -inf / +inf (Ho et al. 2020 eq. 13). float64, elementwise."""
    x, mean, inv = x.double(), mean.double(), torch.exp(-log_scale.double())
    lo = (x - mean - 1 / 255) * inv
    hi = (x - mean + 1 / 255) * inv
    log_cdf_hi = torch.special.log_ndtr(hi)
    log_sf_lo = torch.special.log_ndtr(-lo)  # log(1 - Phi(lo))
    # log(Phi(hi) - Phi(lo)) computed on the side of 0 where it does not cancel: Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi).
    upper = lo > 0
    a = torch.where(upper, -lo, hi)
    b = torch.where(upper, -hi, lo)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    mid = la + torch.log1p(-torch.exp((lb - la).clamp(max=0)).clamp(max=1 - 1e-12))
    return torch.where(x < -0.999, log_cdf_hi, torch.where(x > 0.999, log_sf_lo, mid))


@register("diffusion")
class Diffusion(GenerativeModel):
    Config = DiffusionConfig
    sample_trajectory = True  # sample(callback=...) sees every step (the denoise figure, the studio)
    # The objectives pilot's settings (benchmarks/diffusion_objectives.py): small batches, a high lr, EMA; bf16 where
    # the device runs it in hardware (a Xeon with AMX: 1.6x the fp32 steps per CPU-minute, the same loss at step 300;
    # BENCHMARKS.md, "Diffusion").
    train_defaults = {"lr": 1e-3, "batch_size": 32, "ema_decay": 0.999, "grad_clip": 1.0, "warmup_steps": 100,
                      "precision": "auto"}
    default_minutes = 8.0

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        c = config
        for name, val, ok in [("objective", c.objective, OBJECTIVES), ("prediction", c.prediction, PREDICTIONS),
                              ("variance", c.variance, ("small", "large")),
                              ("schedule", c.schedule, ("linear", "cosine"))]:
            if val not in ok:
                raise ValueError(f"{name} must be one of {', '.join(ok)}; got {val!r}")
        if c.conditional and c.num_classes < 1:
            raise ValueError("conditional=true needs a labelled dataset (this one has no classes)")
        if not 0 <= c.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {c.cond_drop}")
        if c.objective != "ddpm":
            fields = {f.name: f.default for f in dataclasses.fields(DiffusionConfig)}
            odd = [k for k in DDPM_ONLY if getattr(c, k) != fields[k]]
            if odd:
                raise ValueError(f"{', '.join(odd)} configure(s) the ddpm objective; objective={c.objective} "
                                 "does not read them")
        # "" / 0 mean the objective's default sampler and call count; written back so config.json says what it is.
        c.sampler = c.sampler or DEFAULT_SAMPLER[c.objective][0]
        c.sample_steps = c.sample_steps or DEFAULT_SAMPLER[c.objective][1]
        if c.objective == "ddpm":
            self.schedule = NoiseSchedule(c.schedule, c.timesteps)  # float64 tables, not parameters
        elif c.objective == "edm":
            self.schedule = EDMSchedule(c.sigma_data, c.sigma_min, c.sigma_max, c.rho, c.p_mean, c.p_std)
        else:
            self.schedule = FlowSchedule(c.flow_t, c.flow_t_mean, c.flow_t_std)
        self.scheduler()  # fail early on a bad sampler name or one that does not fit the objective
        self.n_classes = c.num_classes if c.conditional else 0
        self.net = UNet(c.channels, c.channels, c.base_channels, c.channel_mults, c.num_res_blocks, c.attn_levels,
                        c.dropout, self.n_classes, c.heads)
        self._compiled = None

    @classmethod
    def for_data(cls, data, options=None):
        """A fresh model: `objective` defaults to DEFAULT_OBJECTIVE unless the options set it, or set a field only the
        ddpm objective reads (a saved config from before `objective` existed has them all, so it stays ddpm)."""
        options = dict(options or {})
        if "objective" not in options and not any(k in options for k in DDPM_ONLY):
            options["objective"] = DEFAULT_OBJECTIVE
        return super().for_data(data, options)

    def capabilities(self):
        """The likelihood bound is the DDPM objective's (Ho et al. eq. 5): the other objectives have no bits/dim."""
        have = super().capabilities()
        return have if self.config.objective == "ddpm" else have - {"bits_per_dim"}

    # -- training ----------------------------------------------------------------------------------------------
    def _labels(self, batch, b, device):
        if not self.n_classes:
            return None
        if batch[1] is None:
            raise ValueError("a conditional diffusion model needs labels in every batch")
        drop = torch.rand(b, device=device) < self.config.cond_drop
        return torch.where(drop, torch.full_like(batch[1], self.n_classes), batch[1])

    def loss(self, batch, phase="main"):
        c = self.config
        x0 = to_float(batch[0], "-11")
        b = x0.shape[0]
        if c.objective == "edm":
            return self._loss_edm(x0, self._labels(batch, b, x0.device))
        if c.objective == "flow":
            return self._loss_flow(x0, self._labels(batch, b, x0.device))
        t = torch.randint(0, c.timesteps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, noise, t)
        y = self._labels(batch, b, x0.device)
        out = self.net(x_t, t, y).float()
        mse = (out - self.schedule.target(c.prediction, x0, noise, t)).pow(2).flatten(1).mean(1)  # (B,)
        if c.min_snr_gamma > 0:
            # min-SNR-gamma (Hang et al. 2023 sec. 3.4): the x0-space weight min(SNR, g), moved into each target's space.
            snr = self.schedule.snr(t)
            w = snr.clamp(max=c.min_snr_gamma) / {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[c.prediction]
            loss = (w.to(mse) * mse).mean()
        else:
            loss = mse.mean()
        return {"loss": loss, "mse": mse.mean().detach()}

    def _loss_edm(self, x0, y):
        """lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 = ||F(c_in x; c_noise) - (x0 - c_skip x) / c_out||^2
        (Karras et al. 2022 eq. 2 and 8), ln(sigma) ~ N(P_mean, P_std^2)."""
        sigma = self.schedule.sample_train(x0.shape[0], x0.device)
        x = self.schedule.add_noise(x0, torch.randn_like(x0), sigma)
        c_skip, c_out, c_in, c_noise = (v.view(-1, 1, 1, 1) for v in self.schedule.precondition(sigma))
        out = self.net(c_in * x, TIME_SCALE * c_noise.flatten(), y).float()
        err = (out - (x0 - c_skip * x) / c_out).pow(2).flatten(1).mean(1)  # (B,), = lambda * D-space error
        with torch.no_grad():
            d_mse = (c_out.flatten() ** 2 * err).mean()  # the unweighted ||D - x0||^2, for the log
        return {"loss": err.mean(), "mse": d_mse}

    def _loss_flow(self, x0, y):
        """||v(x_t, t) - (x1 - x0)||^2 on x_t = (1 - t) x0 + t x1, x1 ~ N(0, I) (Lipman et al. 2023 eq. 23)."""
        t = self.schedule.sample_train(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        out = self.net(self.schedule.add_noise(x0, noise, t), TIME_SCALE * t, y).float()
        mse = (out - self.schedule.target(x0, noise)).pow(2).flatten(1).mean(1)
        return {"loss": mse.mean(), "mse": mse.mean().detach()}

    # -- sampling ----------------------------------------------------------------------------------------------
    def model_output(self, x: torch.Tensor, t: int | float | torch.Tensor, cond: torch.Tensor | None = None,
                     guidance: float = 1.0, net=None) -> torch.Tensor:
        """What the objective's samplers read at (x_t, t): the network's eps/x0/v (ddpm, integer t), the denoiser
        D(x; sigma) (edm, t = sigma > 0) or the velocity v (flow, t in (0, 1]); with classifier-free guidance when
        `guidance` != 1 (both halves in one batch of 2B). Guidance is linear in the network's output, and D and v are
        affine in it, so it is the same whatever the objective or prediction."""
        net = self.net if net is None else net
        obj = self.config.objective
        if obj == "ddpm":
            tt, xin = torch.as_tensor(t, device=x.device).expand(x.shape[0]), x
        else:
            tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
            if obj == "edm":
                c_skip, c_out, c_in, c_noise = (v.to(x.device, x.dtype).view(-1, 1, 1, 1)
                                                for v in self.schedule.precondition(tt))
                xin, tt = c_in * x, TIME_SCALE * c_noise.flatten()
            else:
                xin, tt = x, (TIME_SCALE * tt).to(x.device, torch.float32)
        if cond is None or guidance == 1.0:
            out = net(xin, tt, cond).float()
        else:
            null = torch.full_like(cond, self.n_classes)
            both = net(torch.cat([xin, xin]), torch.cat([tt, tt]), torch.cat([cond, null])).float()
            oc, ou = both.chunk(2)
            out = ou + guidance * (oc - ou)
        return c_skip * x + c_out * out if obj == "edm" else out

    def _check_cond(self, n, cond, guidance):
        if cond is not None:
            if not self.n_classes:
                raise ValueError("this diffusion model was trained without labels; train with --set conditional=true "
                                 "to sample a class")
            cond = torch.as_tensor(cond, dtype=torch.long, device=self.device).reshape(-1)
            if cond.numel() == 1:
                cond = cond.expand(n).clone()
            if cond.shape != (n,) or cond.min() < 0 or cond.max() >= self.n_classes:
                raise ValueError(f"cond must hold {n} class labels in [0, {self.n_classes}), got {tuple(cond.shape)} "
                                 f"values {cond.min().item()}..{cond.max().item()}")
        if guidance != 1.0 and cond is None:
            raise ValueError("guidance needs a class to guide towards (cond / --class)")
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        return cond

    def scheduler(self, sampler: str | None = None, steps: int | None = None, eta: float = 0.0,
                  s_churn: float | None = None):
        """A fresh sampler of this model's schedule and prediction type (default: the config's sampler and steps)."""
        c = self.config
        sampler = sampler or c.sampler
        clip = 1.0 if c.clip else None
        if c.objective != "ddpm":
            churn = c.s_churn if s_churn is None else s_churn
            ode = dict(s_churn=churn, s_tmin=c.s_tmin, s_tmax=c.s_tmax, s_noise=c.s_noise) if churn else {}
            return make_scheduler(sampler, self.schedule, clip=clip, steps=steps or c.sample_steps, **ode)
        if s_churn:
            raise ValueError("s_churn (stochastic sampling) is for the edm objective; use eta with ddim")
        if steps is None and sampler != "ddpm":
            steps = min(c.sample_steps, c.timesteps)
        return make_scheduler(sampler, self.schedule, c.prediction, clip, steps, eta, c.variance)

    @torch.inference_mode()
    def sample(self, n, *, cond=None, generator=None, sampler: str | None = None, steps: int | None = None,
               eta: float = 0.0, guidance: float = 1.0, s_churn: float | None = None, batch_size: int = 500,
               compile: bool = False, callback=None, progress: bool = False):
        """(n, C, H, W) in [0, 1]. `sampler`: for the ddpm objective "ddpm" (all T steps unless `steps`), "ddim"
        (`eta` 0: deterministic) or "dpm++2m"; for edm and flow "heun" or "euler", `steps` counting network calls
        (edm: `s_churn` > 0 for stochastic sampling). `guidance` > 1 strengthens the class `cond` (classifier-free
        guidance). A seeded `generator` gives the same images every time. `callback(i, t, x_t, x0_hat)` sees every
        network call (figures use it). `progress`: a bar over the sampler's steps, and the estimated time first when
        sampling is long (DDPM's 1000 steps), naming the cheaper sampler."""
        c = self.config
        cond = self._check_cond(n, cond, guidance)
        if self.device.type == "cpu":
            tune_allocator()
        net = self.net
        if compile:  # torch.compile pays off for long sampling runs (seconds of compile, then faster steps)
            if self._compiled is None:
                self._compiled = torch.compile(self.net, dynamic=False)
            net = self._compiled
        x_all = randn((n, c.channels, c.image_size, c.image_size), generator, self.device)
        outs = []
        bar = self._progress(n, batch_size, sampler, steps, eta, s_churn) if progress else None
        for start in range(0, n, batch_size):
            sch = self.scheduler(sampler, steps, eta, s_churn)
            x = x_all[start:start + batch_size]
            scale = getattr(sch, "init_noise_sigma", 1.0)  # EDM starts at sigma_max: x = sigma_max z
            if scale != 1.0:
                x = scale * x
            y = cond[start:start + batch_size] if cond is not None else None
            for i, t in enumerate(sch.timesteps):
                out = self.model_output(x, t, y, guidance, net)
                x, x0 = sch.step(out, t, x, generator)
                if callback is not None:
                    callback(i, t, x, x0)
                if bar is not None:
                    bar.update()
            outs.append(x)
        if bar is not None:
            bar.close()
        return ((torch.cat(outs) + 1) / 2).clamp(0, 1)

    def _progress(self, n, batch_size, sampler, steps, eta, s_churn):
        from dgm.progress import Progress
        sch = self.scheduler(sampler, steps, eta, s_churn)
        per, name = len(sch.timesteps), sampler or self.config.sampler
        cheaper = ("--sampler ddim --steps 50" if name == "ddpm" else
                   f"--steps {max(2, per // 4)}" if per > 8 else "")
        return Progress(per * math.ceil(n / batch_size), "sampling", unit="step", cheaper=cheaper,
                        what=f"{n} samples, {per} network calls each ({name})")

    def preview(self, batch, generator):
        """Training grids: 36 samples with 10 DPM-Solver++ steps, cheap enough to draw often on a CPU."""
        if self.config.objective != "ddpm":
            return self.sample(36, generator=generator, steps=9)
        return self.sample(36, generator=generator, sampler="dpm++2m", steps=min(10, self.config.timesteps))

    # -- likelihood --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def vlb_terms(self, x_uint8: torch.Tensor, t_samples: int | None = None,
                  generator: torch.Generator | None = None, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Terms of the variational bound (Ho et al. 2020 eq. 5) per image, in nats, float64 (B,), for both
        reverse variances ("small": beta_tilde, "large": beta) from the same network outputs:
        prior = KL(q(x_T|x_0) || N(0, I)); decoder = -log p(x_0 | x_1) (discretised Gaussian, eq. 13);
        diffusion = sum over t = 2..T of KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)). With `t_samples` = K the sum
        is estimated without bias from K stratified timesteps per image (one uniform draw in each of K equal strata,
        each weighted by its stratum's size) instead of all T-1. DDPM objective only."""
        c, s = self.config, self.schedule
        if c.objective != "ddpm":
            raise NotImplementedError(f"the variational bound is the ddpm objective's; this model is {c.objective}")
        x0 = to_float(x_uint8.to(self.device), "-11")
        b, T = x0.shape[0], c.timesteps
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x0d = x0.double()
        ab_T = s.alphas_cumprod[-1].item()
        prior = gaussian_kl(math.sqrt(ab_T) * x0d, torch.full_like(x0d, math.log(1 - ab_T)), torch.zeros_like(x0d),
                            torch.zeros_like(x0d)).flatten(1).sum(1)
        small_var = s.posterior_var.clone()
        small_var[0] = s.posterior_var[1] if T > 1 else s.betas[0]  # beta_tilde_1 = 0: use the next one at t = 1
        large_var = torch.cat([small_var[:1], s.betas[1:]])

        def x0_hat(t):  # (B,) timesteps -> the network's clipped x0 guess at a fresh x_t ~ q(x_t | x_0), float64
            noise = torch.randn(x0.shape, generator=g).to(x0)
            x_t = s.add_noise(x0, noise, t)
            out = self.model_output(x_t, t, cond)
            xh, _ = s.convert(c.prediction, out, x_t, t)
            return (xh.clamp(-1, 1) if c.clip else xh).double(), x_t.double()

        # L_0: decoder at the first step; its mean is the posterior mean at x0_hat, which at t = 1 is x0_hat itself.
        t0 = torch.zeros(b, dtype=torch.long)
        xh, _ = x0_hat(t0)
        dec = {k: -discretized_gaussian_log_prob(x0d, xh, 0.5 * torch.log(v[0]).expand_as(xh)).flatten(1).sum(1)
               for k, v in (("small", small_var), ("large", large_var))}
        # L_{t-1} for 0-based t = 1..T-1: KL between the true posterior and the model's; the means differ only in x0.
        if t_samples is None or t_samples >= T - 1:
            grid = [(torch.full((b,), t, dtype=torch.long), 1.0) for t in range(1, T)]
        else:
            edges = torch.linspace(1, T, t_samples + 1, dtype=torch.float64)
            grid = []
            for k in range(t_samples):
                lo, hi = int(edges[k].round()), int(edges[k + 1].round())
                grid.append((torch.randint(lo, hi, (b,), generator=g), float(hi - lo)))
        diff = {"small": torch.zeros(b, dtype=torch.float64, device=x0.device), "large": None}
        diff["large"] = diff["small"].clone()
        for t, weight in grid:
            xh, x_t = x0_hat(t)
            shape = (-1,) + (1,) * (x0.dim() - 1)
            c0 = s.posterior_c0[t].to(x0.device).view(shape)
            mean_q = c0 * x0d + s.posterior_ct[t].to(x0.device).view(shape) * x_t
            mean_p = mean_q + c0 * (xh - x0d)
            vq = s.posterior_var[t].to(x0.device).view(shape)
            for k, v in (("small", small_var), ("large", large_var)):
                kl = gaussian_kl(mean_q, vq.log(), mean_p, v[t].to(x0.device).view(shape).log()).flatten(1).sum(1)
                diff[k] += weight * kl
        return {"prior": prior, "decoder_small": dec["small"], "decoder_large": dec["large"],
                "diffusion_small": diff["small"], "diffusion_large": diff["large"],
                "total_small": prior + dec["small"] + diff["small"], "total_large": prior + dec["large"] + diff["large"]}

    def bits_per_dim(self, x_uint8: torch.Tensor, t_samples: int | None = None, generator=None,
                     variance: str | None = None) -> torch.Tensor:
        """Upper bound on -log2 P(x) / D per image (B,) for 8-bit images (B, C, H, W); the same number as bits/dim of
        uniformly dequantised data on [0, 256)^D. `variance` defaults to the model's."""
        terms = self.vlb_terms(x_uint8, t_samples, generator)
        return terms[f"total_{variance or self.config.variance}"] / (x_uint8[0].numel() * math.log(2))
