"""Noise schedules and samplers for diffusion models, separate from any network.

Notation (Ho et al. 2020): q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 0 .. T-1 (0-based: index 0 is the
first noising step), alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t). Every schedule is computed in float64 and
only cast to the sample's dtype at the last moment, because 1 - abar_t near t = 0 is ~1e-4 and loses digits in float32.

A sampler is a `Scheduler`: `set_timesteps(steps)` picks the timesteps to visit (descending), `step(out, t, x)` maps
x_t and the network output to x_{prev}, `add_noise(x0, noise, t)` draws from q(x_t | x_0). The network output can be
eps, x0 or v (Salimans & Ho 2022); `convert` turns any of them into (x0, eps) exactly.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

PREDICTIONS = ("eps", "x0", "v")


def make_betas(kind: str, T: int) -> torch.Tensor:
    """beta_1..beta_T, float64 (T,). "linear": Ho et al. 2020 (1e-4 .. 0.02 at T = 1000, scaled by 1000/T for other T);
    "cosine": Nichol & Dhariwal 2021 eq. 17, abar(t) = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008, betas <= 0.999."""
    if T < 1:
        raise ValueError(f"timesteps must be >= 1, got {T}")
    if kind == "linear":
        scale = 1000.0 / T
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), T, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {kind!r}")


class NoiseSchedule:
    """The forward process q for a beta schedule; all tensors float64 on the CPU, (T,)."""

    def __init__(self, kind: str = "linear", T: int = 1000):
        self.kind, self.T = kind, T
        self.betas = make_betas(kind, T)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)                        # abar_t
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(c0 x_0 + ct x_t, beta_tilde) (Ho et al. 2020 eq. 6-7).
        self.posterior_var = self.betas * (1 - self.abar_prev) / (1 - self.alphas_cumprod)
        self.posterior_c0 = self.betas * self.abar_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_ct = (1 - self.abar_prev) * (1 - self.betas).sqrt() / (1 - self.alphas_cumprod)

    def abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """abar_t for each t, shaped (B, 1, ..., 1) to broadcast against `like`, in its dtype and device.
        t = -1 means "clean data" (abar = 1)."""
        t = torch.as_tensor(t).long().cpu().reshape(-1)
        a = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return a.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar), float64 (B,)."""
        a = self.alphas_cumprod[t.long().cpu()]
        return a / (1 - a)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0): sqrt(abar) x0 + sqrt(1 - abar) noise (Ho et al. 2020 eq. 4)."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, prediction: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for this (x0, noise, t): eps, x0, or v = alpha eps - sigma x0."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            a = self.abar(t, x0)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")

    def convert(self, prediction: str, out: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output of any kind -> (x0, eps), using x_t = alpha x0 + sigma eps (exact, no clipping)."""
        a = self.abar(t, x_t)
        al, si = a.sqrt(), (1 - a).sqrt()
        if prediction == "eps":
            return (x_t - si * out) / al, out
        if prediction == "x0":
            return out, (x_t - al * out) / si
        if prediction == "v":  # v = al eps - si x0  =>  x0 = al x_t - si v, eps = si x_t + al v
            return al * x_t - si * out, si * x_t + al * out
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor  # x at the next (smaller) timestep
    pred_x0: torch.Tensor      # the model's current guess of the clean image


class Scheduler:
    """Common parts: the timesteps to visit and the (x0, eps) the network output implies."""
    name = "base"

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip: float | None = 1.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.schedule, self.prediction, self.clip = schedule, prediction, clip
        self.set_timesteps(schedule.T)

    def set_timesteps(self, steps: int) -> None:
        """Visit `steps` timesteps, evenly spaced and always starting at the noisiest one, T-1: round(T - i T/steps) - 1
        ("trailing" spacing, Lin et al. 2024 table 2); the last step goes from the smallest of them to clean data.
        steps = T visits every timestep T-1 .. 0."""
        T = self.schedule.T
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be between 1 and {T} (the training timesteps), got {steps}")
        ts = (torch.linspace(T, 0, steps + 1, dtype=torch.float64)[:-1].round() - 1).long()
        self.timesteps = ts.tolist()
        self._prev = {t: (self.timesteps[i + 1] if i + 1 < steps else -1) for i, t in enumerate(self.timesteps)}
        self.num_steps = steps

    def prev_timestep(self, t: int) -> int:
        return self._prev[t]

    def predict(self, out: torch.Tensor, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps); with `clip`, x0 is clipped to the data range and eps recomputed to stay consistent with x_t."""
        x0, eps = self.schedule.convert(self.prediction, out, x, t)
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
            a = self.schedule.abar(t, x)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return x0, eps

    def add_noise(self, x0, noise, t):
        return self.schedule.add_noise(x0, noise, t)

    def step(self, out: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator | None = None) -> StepOutput:
        raise NotImplementedError


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(like)
    return torch.randn(like.shape, generator=generator, device=generator.device).to(like.device, like.dtype)


class DDPMScheduler(Scheduler):
    """Ancestral sampling from p(x_{t-1} | x_t) = N(posterior mean at x0_hat, var) (Ho et al. 2020, algorithm 2).

    var = beta_tilde ("small") or beta ("large"). With fewer steps than T the betas are respaced over the visited
    timesteps (Nichol & Dhariwal 2021 sec. 4): beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}}.
    """
    name = "ddpm"

    def __init__(self, schedule, prediction="eps", clip=1.0, variance: str = "small"):
        if variance not in ("small", "large"):
            raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
        self.variance = variance
        super().__init__(schedule, prediction, clip)

    def step(self, out, t, x, generator=None):
        s = self.prev_timestep(t)
        x0, _ = self.predict(out, t, x)
        a_t = self.schedule.alphas_cumprod[t].item()
        a_s = self.schedule.alphas_cumprod[s].item() if s >= 0 else 1.0
        beta = 1 - a_t / a_s
        # Posterior mean and variance (Ho et al. 2020 eq. 7) for the (respaced) step t -> s, float64 scalars.
        c0 = beta * math.sqrt(a_s) / (1 - a_t)
        ct = (1 - a_s) * math.sqrt(1 - beta) / (1 - a_t)
        mean = c0 * x0 + ct * x
        if s < 0:  # the last step returns the mean (no noise is added at t = 0)
            return StepOutput(mean, x0)
        var = beta * (1 - a_s) / (1 - a_t) if self.variance == "small" else beta
        return StepOutput(mean + math.sqrt(var) * _noise(x, generator), x0)


class DDIMScheduler(Scheduler):
    """DDIM (Song et al. 2021, eq. 12): x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (eq. 16). eta = 0: deterministic;
    eta = 1 over all T steps: the DDPM posterior with beta_tilde variance."""
    name = "ddim"

    def __init__(self, schedule, prediction="eps", clip=1.0, eta: float = 0.0):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta
        super().__init__(schedule, prediction, clip)

    def step(self, out, t, x, generator=None):
        s = self.prev_timestep(t)
        x0, eps = self.predict(out, t, x)
        a_t = self.schedule.alphas_cumprod[t].item()
        a_s = self.schedule.alphas_cumprod[s].item() if s >= 0 else 1.0
        sigma = self.eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        x_s = math.sqrt(a_s) * x0 + math.sqrt(max(0.0, 1 - a_s - sigma ** 2)) * eps
        if sigma > 0:
            x_s = x_s + sigma * _noise(x, generator)
        return StepOutput(x_s, x0)


class DPMSolverPPScheduler(Scheduler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2): a multistep second-order solver of the
    diffusion ODE in data-prediction form. With lambda = log(alpha / sigma) and h = lambda_s - lambda_t,
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h;
    the first step and the last (into clean data) are first order (= DDIM), which keeps few-step sampling stable."""
    name = "dpm++2m"

    def set_timesteps(self, steps):
        super().set_timesteps(steps)
        self._x0_prev, self._h_prev = None, None

    def _alpha_sigma_lambda(self, t):
        a = self.schedule.alphas_cumprod[t].item() if t >= 0 else 1.0
        al, si = math.sqrt(a), math.sqrt(1 - a)
        return al, si, (math.log(al / si) if si > 0 else math.inf)

    def step(self, out, t, x, generator=None):
        s = self.prev_timestep(t)
        x0, _ = self.predict(out, t, x)
        al_t, si_t, lam_t = self._alpha_sigma_lambda(t)
        al_s, si_s, lam_s = self._alpha_sigma_lambda(s)
        if s < 0:  # into clean data (sigma = 0): x_s = x0
            x_s = x0
        else:
            h = lam_s - lam_t
            d = x0
            if self._x0_prev is not None:
                r = self._h_prev / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * self._x0_prev
            x_s = (si_s / si_t) * x - al_s * math.expm1(-h) * d
            self._h_prev = h
        self._x0_prev = x0
        return StepOutput(x_s, x0)


SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++2m": DPMSolverPPScheduler}


def make_scheduler(name: str, schedule: NoiseSchedule, prediction: str = "eps", clip: float | None = 1.0,
                   steps: int | None = None, eta: float = 0.0, variance: str = "small") -> Scheduler:
    """A sampler by name ("ddpm", "ddim", "dpm++2m"; "dpm" and "dpmsolver++" are accepted for the last), ready to
    run `steps` steps (default: all T for DDPM, 50 otherwise)."""
    key = {"dpm": "dpm++2m", "dpmsolver++": "dpm++2m", "dpm-solver++": "dpm++2m", "dpm++": "dpm++2m"}.get(name, name)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if key == "ddpm":
        sch = DDPMScheduler(schedule, prediction, clip, variance)
    elif key == "ddim":
        sch = DDIMScheduler(schedule, prediction, clip, eta)
    else:
        sch = DPMSolverPPScheduler(schedule, prediction, clip)
    sch.set_timesteps(steps or (schedule.T if key == "ddpm" else min(50, schedule.T)))
    return sch
