"""The variational autoencoder (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017; Burgess et al. 2018).

loss = reconstruction + beta * KL(q(z|x) || N(0, I)), each summed over dimensions per example and averaged over the
batch. The sample z = mu + sigma * eps (the reparameterisation trick, K&W sec. 2.4) lets the error flow back into the
encoder through a random draw.

`objective="iwae"` trains on the importance-weighted bound instead (Burda et al. 2015, eq. 8):
L_k = log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) reparameterised, k = `iwae_k`; L_1 is the one-sample ELBO
(with a Monte Carlo KL), and L_k tightens as k grows. The same importance weights give `nll` (k = 5000 by default).

`prior="vamp"` replaces N(0, I) by the VampPrior (Tomczak & Welling 2018, eq. 9): p(z) = (1/K) sum_k q(z | u_k), the
encoder's posteriors at K learned pseudo-inputs u_k (`vamp_components`, pixels kept in [0, 1]), trained with the rest.
The KL has no closed form then and is estimated from the sample, log q(z|x) - log p(z); sampling picks a component
and draws from it.

`z1_dim > 0` adds a second, lower stochastic layer z1 under the code z (the hierarchical VAE of Tomczak & Welling
2018, sec. 3.3, whose two layers bought 2.5 nats over one on MNIST): q(z|x) q(z1|x, z) infers, p(z) p(z1|z) p(x|z1, z)
generates, the two conditionals small MLPs. z stays "the latent" (encode, decode, the sliders, traversals, the 2-D
figure); decode(z) and the samples use the mean of p(z1|z), and the importance weights add both layers' terms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm.data import binarize, to_float
from dgm.models.base import GenerativeModel, ImageConfig, randn
from dgm.nn.conv import make_encoder_decoder
from dgm.nn.distributions import LOG2PI, gaussian_kl, gaussian_log_prob
from dgm.registry import register

@dataclass
class VAEConfig(ImageConfig):
    latent_dim: int = 16
    arch: str = "conv"                       # "conv" or "mlp"
    conv_channels: tuple[int, ...] = (32, 64)
    mlp_hidden: tuple[int, ...] = (512, 256)
    # Conv-net shape (defaults: dgm's nets; see dgm.nn.conv.make_encoder_decoder for pythae's MNIST nets).
    conv_kernel: int = 3                     # encoder kernel, 3 or 4 (stride 2, padding 1)
    deconv_kernel: int = 0                   # decoder kernel: 0 automatic (4 where the size doubles), or 3
    conv_norm: str = "none"                  # "none" or "batch" (BatchNorm after each conv but the last deconv)
    conv_act: str = "silu"                   # "silu" or "relu"
    conv_hidden: int = 256                   # hidden layer between convs and latent; 0: one linear map
    decoder_channels: tuple[int, ...] = ()   # () mirrors conv_channels
    conv_gemm: bool = False                  # small-output convs as matrix products (same maths; faster bf16 on CPU)
    likelihood: str = "bernoulli"            # "bernoulli" (binary pixels) or "gaussian" (continuous pixels)
    binarize: bool = True                    # dynamic binarisation of training batches (Bernoulli likelihood)
    beta: float = 1.0                        # beta > 1: beta-VAE (Higgins et al. 2017)
    capacity_max: float = 0.0                # > 0: Burgess et al. 2018 objective gamma * |KL - C|, C annealed to this
    capacity_steps: int = 100_000            # steps over which C grows linearly from 0 to capacity_max
    gamma: float = 1000.0
    objective: str = "elbo"                  # "elbo" or "iwae" (the k-sample bound of Burda et al. 2015 as the loss)
    iwae_k: int = 5                          # importance samples per image for objective="iwae"
    prior: str = "normal"                    # "normal" (N(0, I)) or "vamp" (Tomczak & Welling 2018)
    vamp_components: int = 500               # K pseudo-inputs of the VampPrior
    z1_dim: int = 0                          # > 0: a lower stochastic layer z1 of this size (two-layer VAE)
    z1_hidden: int = 256                     # width of the MLPs of q(z1|x, z) and p(z1|z)
    logvar_max: float = 20.0                 # smooth upper bound on log Var q(z|x) (bounded_logvar)


def bounded_logvar(raw: torch.Tensor, hi: float) -> torch.Tensor:
    """The encoder's raw log-variance, floored at -30 and bounded above by `hi` smoothly: hi - softplus(hi - raw),
    which is raw itself well below hi (exactly, in float32, 20 nats below) and never has a zero gradient, so a
    variance pushed to the bound can come back (a hard clamp there stops its gradient and leaves it stuck)."""
    return hi - F.softplus(hi - raw.clamp_min(-30.0))


@register("vae")
class VAE(GenerativeModel):
    """`dgm train vae`: a fresh model takes RECIPE for the options it leaves unset, and the lr decays to 0 over the
    second half of the run: the recipe that bought most nats per CPU-minute on MNIST (VampPrior with 100
    pseudo-inputs, a second stochastic layer; BENCHMARKS.md, "VAE, MNIST"). VAEConfig() itself is the textbook VAE
    (N(0, I), one layer): `--set prior=normal --set z1_dim=0 --set lr_decay_start=1` trains that."""
    Config = VAEConfig
    RECIPE = {"prior": "vamp", "vamp_components": 100, "z1_dim": 32}
    train_defaults = {"lr_decay_start": 0.5}

    @classmethod
    def for_data(cls, data, options=None):
        return super().for_data(data, {**cls.RECIPE, **(options or {})})

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        if c.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {c.likelihood!r}")
        if c.objective not in ("elbo", "iwae"):
            raise ValueError(f"objective must be 'elbo' or 'iwae', got {c.objective!r}")
        if c.prior not in ("normal", "vamp") or c.vamp_components < 1:
            raise ValueError(f"prior must be 'normal' or 'vamp' with vamp_components >= 1, got {c.prior!r}, "
                             f"{c.vamp_components}")
        if c.objective == "iwae" and (c.iwae_k < 1 or c.beta != 1.0 or c.capacity_max > 0):
            raise ValueError(f"objective='iwae' is the bound itself: it needs iwae_k >= 1 (got {c.iwae_k}) and no "
                             f"beta or capacity (got beta={c.beta}, capacity_max={c.capacity_max})")
        if not -30.0 < c.logvar_max <= 20.0:
            raise ValueError(f"logvar_max must be in (-30, 20], got {c.logvar_max}")
        if c.z1_dim < 0 or c.z1_hidden < 1:
            raise ValueError(f"z1_dim must be >= 0 and z1_hidden >= 1, got {c.z1_dim}, {c.z1_hidden}")
        d1 = c.z1_dim
        # The encoder also emits 2 * z1_dim features of x for q(z1|x, z); the decoder reads (z1, z).
        self.encoder, self.decoder = make_encoder_decoder(
            c.arch, c.channels, c.image_size, c.conv_channels, c.mlp_hidden, 2 * (c.latent_dim + d1), c.latent_dim + d1,
            conv_kernel=c.conv_kernel, deconv_kernel=c.deconv_kernel, conv_norm=c.conv_norm, conv_act=c.conv_act,
            conv_hidden=c.conv_hidden, decoder_channels=c.decoder_channels, conv_gemm=c.conv_gemm)
        if d1:
            self.q1 = nn.Sequential(nn.Linear(2 * d1 + c.latent_dim, c.z1_hidden), nn.SiLU(),
                                    nn.Linear(c.z1_hidden, 2 * d1))
            self.p1 = nn.Sequential(nn.Linear(c.latent_dim, c.z1_hidden), nn.SiLU(), nn.Linear(c.z1_hidden, 2 * d1))
        if c.likelihood == "gaussian":
            # One learned noise level for all pixels: a proper density, so the ELBO is a bound on log p(x).
            self.log_sigma = nn.Parameter(torch.tensor(-1.0))
        if c.prior == "vamp":   # pseudo-inputs start as mid-grey noise (T&W initialise them randomly too)
            g = torch.Generator().manual_seed(0)
            self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(
                (c.vamp_components, c.channels, c.image_size, c.image_size), generator=g))

    # -- the model's pieces ----------------------------------------------------------------------------------
    def prepare(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> the data the likelihood is defined on (binarised for Bernoulli when asked)."""
        x = to_float(x_uint8)
        if self.config.likelihood == "bernoulli" and self.config.binarize:
            x = binarize(x, generator)
        return x

    def _encoded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> mu, logvar of q(z|x) and the features of x that q(z1|x, z) reads ((B, 0) with one layer)."""
        out = self.encoder(x)
        d = self.config.latent_dim
        return out[:, :d], bounded_logvar(out[:, d:2 * d], self.config.logvar_max), out[:, 2 * d:]

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> (mu, logvar) of q(z|x), each (B, latent_dim)."""
        return self._encoded(x)[:2]

    @staticmethod
    def _gaussian(net: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = net(h).chunk(2, dim=-1)
        return mu, bounded_logvar(logvar, 20.0)

    def _lower_posterior(self, feats: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z1|x, z): x's features (B, 2 d1) and codes (..., B, D) -> mu, logvar (..., B, d1)."""
        return self._gaussian(self.q1, torch.cat([feats.to(z.dtype).expand(z.shape[:-1] + feats.shape[-1:]), z], -1))

    def _logits(self, z1: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """Decoder logits for codes (..., B, D) (and z1 (..., B, d1) with two layers) -> (..., B, C, H, W)."""
        zz = z if z1 is None else torch.cat([z1, z], -1)
        return self.decoder(zz.flatten(0, -2)).unflatten(0, zz.shape[:-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] -> the posterior mean (B, latent_dim)."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> mean image (B, C, H, W) in [0, 1] (at the mean of p(z1|z) with two layers)."""
        return torch.sigmoid(self._logits(self._gaussian(self.p1, z)[0] if self.config.z1_dim else None, z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.z1_dim:
            return self.decode(self.encode(x))
        mu, _, feats = self._encoded(x)
        return torch.sigmoid(self._logits(self._lower_posterior(feats, mu)[0], mu))

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels: x (B, C, H, W), logits (..., B, C, H, W) -> (..., B), broadcast over the
        leading dimensions (importance samples) without copying x."""
        if self.config.likelihood == "bernoulli":  # x l - softplus(l) = -BCE(l, x)
            return (x * logits - F.softplus(logits)).flatten(-3).sum(-1)
        mean, ls = torch.sigmoid(logits), self.log_sigma
        return (-0.5 * (LOG2PI + 2 * ls + ((x - mean) / ls.exp()).pow(2))).flatten(-3).sum(-1)

    # -- the prior ----------------------------------------------------------------------------------------------
    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """VampPrior: (mu, logvar) of q(z | u_k) at the K pseudo-inputs, each (K, D)."""
        return self.posterior(self.pseudo_inputs.clamp(0.0, 1.0))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for codes (..., D) -> (...): N(0, I), or the VampPrior's mixture computed as matrix products
        (sum_d of (z_d - mu_kd)^2 / var_kd expanded), never materialising (..., K, D)."""
        if self.config.prior == "normal":
            zero = torch.zeros((), device=z.device)
            return gaussian_log_prob(z, zero, zero)
        mu, logvar = (t.float() for t in self.prior_components())
        inv = (-logvar).exp()                                                # (K, D)
        flat = z.reshape(-1, z.shape[-1]).float()
        quad = flat.pow(2) @ inv.T - 2 * flat @ (mu * inv).T + (mu.pow(2) * inv).sum(1)   # (N, K)
        log_k = -0.5 * (z.shape[-1] * LOG2PI + logvar.sum(1) + quad)
        return (torch.logsumexp(log_k, 1) - math.log(len(mu))).reshape(z.shape[:-1])

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.config.prior == "normal":
            return super().sample_latent(n, generator)
        with torch.no_grad():
            mu, logvar = self.prior_components()
        pick = (torch.randint(len(mu), (n,), generator=generator, device=generator.device) if generator is not None
                else torch.randint(len(mu), (n,), device=mu.device)).to(mu.device)
        eps = randn((n, self.config.latent_dim), generator, self.device)
        return mu[pick] + (0.5 * logvar[pick]).exp() * eps

    def latent_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.prior == "normal":
            return super().latent_moments()
        with torch.no_grad():
            mu, logvar = self.prior_components()
            mean = mu.mean(0)
            return mean, (logvar.exp() + mu.pow(2)).mean(0).sub(mean.pow(2)).clamp_min(0).sqrt()

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example ELBO terms: recon = -log p(x|z) at one reparameterised z, kl (B,) (closed form for N(0, I),
        log q(z|x) - log p(z) at the same z for the VampPrior; with two layers plus KL(q(z1|x, z) || p(z1|z)) at
        the drawn z), and mu (B, D)."""
        mu, logvar, feats = self._encoded(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation trick
        if self.config.prior == "normal":
            kl = gaussian_kl(mu, logvar).sum(1)
        else:
            kl = gaussian_log_prob(z, mu, logvar) - self.log_prior(z)
        z1 = None
        if self.config.z1_dim:   # + KL(q(z1|x, z) || p(z1|z)) at the drawn z, in closed form
            qm, qv = self._lower_posterior(feats, z)
            z1 = qm + torch.randn_like(qm) * (0.5 * qv).exp()
            kl = kl + gaussian_kl(qm, qv, *self._gaussian(self.p1, z)).sum(1)
        recon = -self.log_likelihood(x, self._logits(z1, z))
        return {"recon": recon, "kl": kl, "mu": mu}

    def importance_terms(self, x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """k reparameterised draws z_i ~ q(z|x) per example: log_w = log p(x|z_i) + log p(z_i) - log q(z_i|x) and
        log_px = log p(x|z_i), each (k, B), float32 also under autocast; and mu, logvar (B, D). With two layers each
        draw also takes z1_i ~ q(z1|x, z_i), and log p(z1_i|z_i) - log q(z1_i|x, z_i) joins log_w."""
        mu, logvar, feats = (t.float() for t in self._encoded(x))
        z = mu + (0.5 * logvar).exp() * torch.randn((k,) + mu.shape, device=mu.device)   # (k, B, D)
        log_pz, log_qz, z1 = self.log_prior(z), gaussian_log_prob(z, mu, logvar), None
        if self.config.z1_dim:   # log p(z1|z) - log q(z1|x, z) joins the weight
            qm, qv = (t.float() for t in self._lower_posterior(feats, z))
            z1 = qm + (0.5 * qv).exp() * torch.randn_like(qm)
            log_pz = log_pz + gaussian_log_prob(z1, *(t.float() for t in self._gaussian(self.p1, z)))
            log_qz = log_qz + gaussian_log_prob(z1, qm, qv)
        log_px = self.log_likelihood(x, self._logits(z1, z).float())
        log_w = log_px + log_pz - log_qz
        return {"log_w": log_w, "log_px": log_px, "mu": mu, "logvar": logvar}

    # -- the contract ----------------------------------------------------------------------------------------
    def loss(self, batch, phase="main"):
        c = self.config
        x = self.prepare(batch[0])
        if c.objective == "iwae":
            return self.iwae_loss(x, c.iwae_k)
        t = self.terms(x)
        recon, kl = t["recon"].mean(), t["kl"].mean()
        if c.capacity_max > 0:
            cap = c.capacity_max * min(1.0, self.step / max(1, c.capacity_steps))
            loss = recon + c.gamma * (kl - cap).abs()
        else:
            loss = recon + c.beta * kl
        # Active units (Burda et al. 2015): dimensions whose posterior mean varies over the data, Var_x[mu] > 0.01.
        active = (t["mu"].detach().var(0) > 0.01).sum() if len(t["mu"]) > 1 else torch.zeros(())
        return {"loss": loss, "recon": recon.detach(), "kl": kl.detach(), "elbo": -(recon + kl).detach(),
                "active_units": active.float()}

    def iwae_loss(self, x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """-L_k averaged over the batch (Burda et al. 2015, eq. 8), plus the usual logs from the same draws."""
        t = self.importance_terms(x, k)
        bound = torch.logsumexp(t["log_w"], 0) - math.log(k)                     # (B,)
        kl = (t["log_px"] - t["log_w"]).mean() if self.config.prior == "vamp" or self.config.z1_dim else \
            gaussian_kl(t["mu"], t["logvar"]).sum(1).mean()
        active = (t["mu"].detach().var(0) > 0.01).sum() if len(x) > 1 else torch.zeros(())
        return {"loss": -bound.mean(), "iwae": bound.mean().detach(), "recon": -t["log_px"].mean().detach(),
                "kl": kl.detach(), "elbo": t["log_w"].mean().detach(), "active_units": active.float()}

    @torch.inference_mode()
    def sample(self, n, *, cond=None, generator=None):
        """decode(z) for z from the prior: the mean image of p(x|z), with two layers at the mean of p(z1|z) too, so
        that a sample's code decodes to the same picture (the studio's explorer starts there)."""
        return self.decode(self.sample_latent(n, generator))

    def preview(self, batch, generator):
        x = to_float(batch[0][:32])
        with torch.inference_mode():
            return torch.cat([x, self.reconstruct(x), self.sample(32, generator=generator)])

    @torch.inference_mode()
    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example ELBO (nats, one z sample) on data already prepared (e.g. a fixed binarisation)."""
        t = self.terms(x)
        return -(t["recon"] + t["kl"])

    @torch.inference_mode()
    def nll(self, x: torch.Tensor, k: int = 5000, chunk: int = 500) -> torch.Tensor:
        """Importance-weighted estimate of -log p(x) (IWAE, Burda et al. 2015, eq. 8) per example, nats, (B,).

        log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k, z_i ~ q(z|x). With k = 1 it is the
        ELBO in expectation; it tightens as k grows. The k samples are processed `chunk` at a time (chunk x B decoder
        rows), the chunks combined in float64.
        """
        parts = [torch.logsumexp(self.importance_terms(x, min(chunk, k - s))["log_w"].double(), 0)
                 for s in range(0, k, chunk)]
        return -(torch.logsumexp(torch.stack(parts), 0) - math.log(k)).float()


@dataclass
class BetaVAEConfig(VAEConfig):
    """beta-VAE defaults for 64x64 binary sprites (Higgins et al. 2017, sec. 4 and appendix A.1: 10 latents, beta = 4,
    conv 32-32-64-64 with stride 2, a 256-unit layer). dSprites pixels are already 0/1, so no binarisation."""
    latent_dim: int = 10
    conv_channels: tuple[int, ...] = (32, 32, 64, 64)
    binarize: bool = False
    beta: float = 4.0


@register("beta-vae")
class BetaVAE(VAE):
    """`dgm train beta-vae --data dsprites`: the VAE with beta > 1 (or, with capacity_max > 0, Burgess et al.'s
    gamma * |KL - C| objective, C annealed linearly over capacity_steps)."""
    Config = BetaVAEConfig
    # The disentanglement objectives penalise the KL to a factorised N(0, I) with one layer (no VAE recipe), and a
    # fresh model bounds Var q(z|x) at 1, the prior's variance (the config's default stays 20 so that runs saved
    # before the bound load as they trained). A variance above the prior's carries no information about x, yet it
    # buys KL: below its target C the capacity objective rewards exactly that, and d KL / d logvar = (e^logvar - 1)/2
    # feeds back on itself. On dSprites at lr 1e-3 single images' logvar ran to the old hard clamp (20) and the batch
    # KL to 10^7 nats within one step, again and again (BENCHMARKS.md, "beta-VAE"); bounded at 0 it cannot.
    RECIPE: dict = {"logvar_max": 0.0}
    # The lr decays linearly to 0 over the last third: at a constant lr the capacity objective's held target
    # C is not a stable place late in training (a 200k-step run at 1e-3 diverged after 140k steps; at 3e-3 the
    # KL exploded at step 9,650 where the decayed run went on improving: BENCHMARKS.md, "beta-VAE").
    train_defaults = {"lr": 5e-4, "batch_size": 64, "lr_decay_start": 0.667}
