"""The variational autoencoder (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017; Burgess et al. 2018).

loss = reconstruction + beta * KL(q(z|x) || N(0, I)), each summed over dimensions per example and averaged over the
batch. The sample z = mu + sigma * eps (the reparameterisation trick, K&W sec. 2.4) lets the error flow back into the
encoder through a random draw.
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


@register("vae")
class VAE(GenerativeModel):
    Config = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        if c.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {c.likelihood!r}")
        self.encoder, self.decoder = make_encoder_decoder(
            c.arch, c.channels, c.image_size, c.conv_channels, c.mlp_hidden, 2 * c.latent_dim, c.latent_dim,
            conv_kernel=c.conv_kernel, deconv_kernel=c.deconv_kernel, conv_norm=c.conv_norm, conv_act=c.conv_act,
            conv_hidden=c.conv_hidden, decoder_channels=c.decoder_channels, conv_gemm=c.conv_gemm)
        if c.likelihood == "gaussian":
            # One learned noise level for all pixels: a proper density, so the ELBO is a bound on log p(x).
            self.log_sigma = nn.Parameter(torch.tensor(-1.0))

    # -- the model's pieces ----------------------------------------------------------------------------------
    def prepare(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> the data the likelihood is defined on (binarised for Bernoulli when asked)."""
        x = to_float(x_uint8)
        if self.config.likelihood == "bernoulli" and self.config.binarize:
            x = binarize(x, generator)
        return x

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> (mu, logvar) of q(z|x), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] -> the posterior mean (B, latent_dim)."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> mean image (B, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels, (B,)."""
        if self.config.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        mean, ls = torch.sigmoid(logits), self.log_sigma
        return (-0.5 * (LOG2PI + 2 * ls + ((x - mean) / ls.exp()).pow(2))).flatten(1).sum(1)

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example ELBO terms: recon = -log p(x|z) at one reparameterised z, kl (B,), and mu (B, D)."""
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation trick
        recon = -self.log_likelihood(x, self.decoder(z))
        return {"recon": recon, "kl": gaussian_kl(mu, logvar).sum(1), "mu": mu}

    # -- the contract ----------------------------------------------------------------------------------------
    def loss(self, batch, phase="main"):
        c = self.config
        t = self.terms(self.prepare(batch[0]))
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

    @torch.inference_mode()
    def sample(self, n, *, cond=None, generator=None):
        return self.decode(randn((n, self.config.latent_dim), generator, self.device))

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
        ELBO in expectation; it tightens as k grows. The k samples are processed `chunk` at a time.
        """
        mu, logvar = self.posterior(x)
        std = (0.5 * logvar).exp()
        parts = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            z = mu.unsqueeze(0) + std.unsqueeze(0) * torch.randn(m, *mu.shape, device=mu.device)  # (m, B, D)
            zf = z.flatten(0, 1)
            logits = self.decoder(zf)
            log_px = self.log_likelihood(x.repeat(m, 1, 1, 1), logits).view(m, -1)
            log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
            log_qz = gaussian_log_prob(z, mu.unsqueeze(0), logvar.unsqueeze(0))
            parts.append(torch.logsumexp(log_px + log_pz - log_qz, dim=0))  # (B,)
        return -(torch.logsumexp(torch.stack(parts), dim=0) - math.log(k))


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
    train_defaults = {"lr": 5e-4, "batch_size": 64}
