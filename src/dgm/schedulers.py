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


# -- continuous-time objectives: EDM (Karras et al. 2022) and flow matching (Lipman et al. 2023; Liu et al. 2023) ---
class EDMSchedule:
    """The EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

    x_sigma = x0 + sigma n, n ~ N(0, I) (their VE form, sigma(t) = t, s(t) = 1), so the probability-flow ODE is
    dx/dsigma = (x - D(x; sigma)) / sigma (eq. 1 with table 1's EDM column) for a denoiser D. The network F is wrapped
    as D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with (table 1, "network and preconditioning")
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = ln(sigma) / 4 (sd = sigma_data); training draws ln(sigma) ~ N(P_mean, P_std^2) and weights the squared
    error of D by lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2, so F regresses on
    (x0 - c_skip x) / c_out with unit weight. Sampling visits sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) -
    smax^(1/rho)))^rho, i < N, then sigma_N = 0 (eq. 5). Python floats and float64 throughout."""
    kind = "edm"

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 p_mean: float = -1.2, p_std: float = 1.2):
        if not 0 < sigma_min < sigma_max or sigma_data <= 0 or rho <= 0 or p_std <= 0:
            raise ValueError("EDM needs 0 < sigma_min < sigma_max, sigma_data > 0, rho > 0 and P_std > 0; got "
                             f"sigma_min {sigma_min}, sigma_max {sigma_max}, sigma_data {sigma_data}, rho {rho}, "
                             f"P_std {p_std}")
        self.sigma_data, self.sigma_min, self.sigma_max, self.rho = sigma_data, sigma_min, sigma_max, rho
        self.p_mean, self.p_std = p_mean, p_std

    def precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for sigma > 0, each shaped like `sigma` (float64 recommended)."""
        sd2, s2 = self.sigma_data ** 2, sigma ** 2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1 / (s2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, the weight of ||D - x0||^2 (table 1)."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def sample_train(self, b: int, device) -> torch.Tensor:
        """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2), float32 (B,)."""
        return (self.p_mean + self.p_std * torch.randn(b, device=device)).exp()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        return x0 + _col(sigma, x0) * noise

    def grid(self, n: int) -> list[float]:
        """The n sigmas of eq. 5 (sigma_max first, sigma_min last; n = 1: sigma_max) followed by 0: n + 1 floats."""
        if n == 1:
            return [self.sigma_max, 0.0]
        a, b = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        return [(a + i / (n - 1) * (b - a)) ** self.rho for i in range(n)] + [0.0]

    def to_x0(self, out: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
        return out  # the model's output is already the denoiser D(x; sigma)

    def velocity(self, out: torch.Tensor, x: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
        """dx/dsigma = (x - D) / sigma, with D the (possibly clipped) x0 estimate."""
        return (x - x0) / sigma


class FlowSchedule:
    """Flow matching / rectified flow on straight paths (Lipman et al. 2023; Liu et al. 2023), in diffusion's naming:
    x_0 is data, x_1 ~ N(0, I) noise, x_t = (1 - t) x_0 + t x_1 for t in [0, 1], and the network regresses the
    constant velocity v = x_1 - x_0 = dx_t/dt. Sampling integrates dx/dt = v from t = 1 (noise) down to t = 0 on a
    uniform grid. Training t: uniform, or logit-normal t = sigmoid(m + s n), n ~ N(0, 1) (Esser et al. 2024, sec. 3.1,
    their best setting m = 0, s = 1)."""
    kind = "flow"

    def __init__(self, t_sampling: str = "logit_normal", t_mean: float = 0.0, t_std: float = 1.0):
        if t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"flow_t must be 'uniform' or 'logit_normal', got {t_sampling!r}")
        if t_std <= 0:
            raise ValueError(f"flow_t_std must be > 0, got {t_std}")
        self.t_sampling, self.t_mean, self.t_std = t_sampling, t_mean, t_std

    def sample_train(self, b: int, device) -> torch.Tensor:
        if self.t_sampling == "uniform":
            return torch.rand(b, device=device)
        return torch.sigmoid(self.t_mean + self.t_std * torch.randn(b, device=device))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        t = _col(t, x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def grid(self, n: int) -> list[float]:
        return [1 - i / n for i in range(n)] + [0.0]

    def to_x0(self, out: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        return x - t * out  # x_t - t v = x_0 on a straight path

    def velocity(self, out: torch.Tensor, x: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """dx/dt = v; when x0 was clipped, the velocity that points at the clipped x0, v + (x0_raw - x0) / t
        (= (x - x0) / t; exactly v where nothing was clipped)."""
        shift = self.to_x0(out, x, t) - x0
        return out if not bool(shift.any()) else out + shift / t


def _col(v, like: torch.Tensor) -> torch.Tensor | float:
    """A per-example (B,) tensor as (B, 1, ..., 1) in `like`'s dtype; python numbers pass through."""
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        return v.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return float(v)


class ODEScheduler:
    """Euler or Heun (2nd order) integration of the probability-flow ODE of an EDM or flow schedule, as one network
    call per `step`, so the sampling loop is the same as for DDPM/DDIM: `for t in timesteps: x = step(net(x, t), t, x)`.

    `set_timesteps(calls)` takes the number of network calls. Euler: `calls` intervals. Heun (Karras et al. 2022,
    algorithm 1): each interval i from s_i to s_{i+1} takes an Euler step to s_{i+1}, evaluates the network there and
    averages the two slopes, x_{i+1} = x_i + (s_{i+1} - s_i) (d_i + d'_{i+1}) / 2; the last interval (into s = 0,
    where the EDM slope is undefined) is a plain Euler step, so N intervals cost 2N - 1 calls (18 intervals: 35 calls,
    their CIFAR-10 setting). An even number of calls makes the first interval Euler too (at sigma_max the ODE is
    nearly straight). `timesteps` lists every evaluation point, so a Heun run visits s_{i+1} twice.

    Stochastic churn (algorithm 2, EDM only): with s_churn > 0, each interval whose sigma lies in [s_tmin, s_tmax]
    first raises the noise to sigma_hat = sigma (1 + gamma), gamma = min(s_churn / N, sqrt(2) - 1), adding
    N(0, (sigma_hat^2 - sigma^2) s_noise^2) noise; the network is then evaluated at sigma_hat."""

    def __init__(self, schedule, method: str = "heun", clip: float | None = 1.0, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
        if method not in ("euler", "heun"):
            raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
        if s_churn < 0 or s_noise < 0:
            raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn}, {s_noise}")
        if s_churn > 0 and getattr(schedule, "kind", "") != "edm":
            raise ValueError("stochastic churn (s_churn) is defined for the edm objective only")
        self.schedule, self.name, self.clip = schedule, method, clip
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise
        self.set_timesteps(18 if method == "heun" else 35)

    def set_timesteps(self, steps: int) -> None:
        """Plan `steps` network calls (see the class docstring)."""
        if steps < 1:
            raise ValueError(f"steps (network calls) must be >= 1, got {steps}")
        if self.name == "euler":
            n, heun = steps, [False] * steps
        else:
            n = steps // 2 + 1
            heun = [True] * (n - 1) + [False]
            if steps % 2 == 0:
                heun[0] = False
        self.sigmas = self.schedule.grid(n)
        gamma = min(self.s_churn / n, math.sqrt(2) - 1) if self.s_churn > 0 else 0.0
        self.sigma_hat = [s * (1 + gamma) if gamma > 0 and self.s_tmin <= s <= self.s_tmax else s
                          for s in self.sigmas[:-1]]
        self._plan = []  # (interval, "predict" | "correct") per network call
        for i in range(n):
            self._plan.append((i, "predict"))
            if heun[i]:
                self._plan.append((i, "correct"))
        self.timesteps = [self.sigma_hat[i] if kind == "predict" else self.sigmas[i + 1] for i, kind in self._plan]
        self.num_steps = len(self.timesteps)  # network calls
        self.init_noise_sigma = self.sigma_hat[0] if self.schedule.kind == "edm" else 1.0
        self._k, self._saved = 0, None

    def add_noise(self, x0, noise, t):
        return self.schedule.add_noise(x0, noise, t)

    def _x0_and_slope(self, out, x, s):
        x0 = self.schedule.to_x0(out, x, s)
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return x0, self.schedule.velocity(out, x, s, x0)

    def _churn(self, x, i, generator):
        """x at sigma_i -> x at sigma_hat_i (algorithm 2, lines 4-6), for the interval i that comes next."""
        if i >= len(self.sigma_hat) or self.sigma_hat[i] == self.sigmas[i]:
            return x
        return x + math.sqrt(self.sigma_hat[i] ** 2 - self.sigmas[i] ** 2) * self.s_noise * _noise(x, generator)

    def step(self, out: torch.Tensor, t, x: torch.Tensor, generator: torch.Generator | None = None) -> StepOutput:
        if self._k >= len(self._plan):
            raise RuntimeError("this scheduler has taken all its steps; call set_timesteps again")
        i, kind = self._plan[self._k]
        self._k += 1
        s_hat, s_next = self.sigma_hat[i], self.sigmas[i + 1]
        x0, d = self._x0_and_slope(out, x, s_hat if kind == "predict" else s_next)  # = t, from the plan
        if kind == "predict":
            x_next = x + (s_next - s_hat) * d
            if self._k < len(self._plan) and self._plan[self._k][1] == "correct":
                self._saved = (x, d)
                return StepOutput(x_next, x0)  # the next call evaluates the slope at this Euler guess
        else:
            x_i, d_i = self._saved
            x_next = x_i + (s_next - s_hat) * (0.5 * d_i + 0.5 * d)
            self._saved = None
        return StepOutput(self._churn(x_next, i + 1, generator), x0)


SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++2m": DPMSolverPPScheduler,
            "heun": ODEScheduler, "euler": ODEScheduler}
DDPM_SAMPLERS = ("ddpm", "ddim", "dpm++2m")   # for NoiseSchedule (the DDPM objective)
ODE_SAMPLERS = ("heun", "euler")              # for EDMSchedule and FlowSchedule


def make_scheduler(name: str, schedule, prediction: str = "eps", clip: float | None = 1.0,
                   steps: int | None = None, eta: float = 0.0, variance: str = "small", **ode) -> Scheduler:
    """A sampler by name, ready to run `steps` steps. A NoiseSchedule (the DDPM objective) takes "ddpm" (default: all
    T steps), "ddim", "dpm++2m" ("dpm" and "dpmsolver++" are accepted for the last; default 50 steps); an EDMSchedule or
    FlowSchedule takes "heun" or "euler", `steps` counting network calls (default 35), and `ode` (s_churn, s_tmin,
    s_tmax, s_noise: EDM's stochastic churn)."""
    key = {"dpm": "dpm++2m", "dpmsolver++": "dpm++2m", "dpm-solver++": "dpm++2m", "dpm++": "dpm++2m"}.get(name, name)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if not isinstance(schedule, NoiseSchedule):
        if key not in ODE_SAMPLERS:
            raise ValueError(f"sampler {name!r} is for the ddpm objective; a {schedule.kind} model samples with "
                             f"{' or '.join(ODE_SAMPLERS)}")
        sch = ODEScheduler(schedule, key, clip, **ode)
        sch.set_timesteps(steps or 35)
        return sch
    if key not in DDPM_SAMPLERS:
        raise ValueError(f"sampler {name!r} is for the edm and flow objectives; a ddpm model samples with "
                         f"{', '.join(DDPM_SAMPLERS)}")
    if key == "ddpm":
        sch = DDPMScheduler(schedule, prediction, clip, variance)
    elif key == "ddim":
        sch = DDIMScheduler(schedule, prediction, clip, eta)
    else:
        sch = DPMSolverPPScheduler(schedule, prediction, clip)
    sch.set_timesteps(steps or (schedule.T if key == "ddpm" else min(50, schedule.T)))
    return sch
