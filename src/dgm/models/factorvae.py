"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising").

The VAE's loss plus gamma times the total correlation KL(q(z) || prod_d q(z_d)) of the aggregate posterior, which
has no closed form; a discriminator D estimates it by the density-ratio trick. D learns to tell codes z ~ q(z) (one
per image of a batch) from codes of prod_d q(z_d), which `permute_dims` makes by shuffling each latent dimension
across a batch on its own (their Algorithm 1). With D's logit l(z) = log D(z) / (1 - D(z)), the TC is ~ E_q(z) l(z).

Two phases, each on its own batch, as in Algorithm 1: "main" trains encoder and decoder on
recon + beta KL + gamma E l(z) with D frozen; "d" trains D by binary cross-entropy, codes detached. D is their
6-layer MLP of 1000 LeakyReLU(0.2) units with Adam (lr 1e-4, betas (0.5, 0.9)), both configurable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm.models.vae import BetaVAE, BetaVAEConfig
from dgm.nn.distributions import gaussian_kl
from dgm.registry import register


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, D) codes -> (B, D) with each column permuted on its own: every marginal kept, the dependence broken."""
    noise = torch.rand(z.shape, generator=generator) if generator is not None else torch.rand(z.shape, device=z.device)
    return z.gather(0, noise.to(z.device).argsort(0))


@dataclass
class FactorVAEConfig(BetaVAEConfig):
    """gamma weighs the TC: 30-40 sit in the middle of disentanglement_lib's sweep (10, 20, 30, 40, 50, 100); beta
    stays 1 as in the paper."""
    beta: float = 1.0
    gamma: float = 40.0
    disc_hidden: int = 1000
    disc_layers: int = 6
    disc_lr: float = 1e-4
    disc_betas: tuple[float, ...] = (0.5, 0.9)


@register("factor-vae")
class FactorVAE(BetaVAE):
    """`dgm train factor-vae --data dsprites`: the beta-VAE's networks, a TC penalty, and a discriminator on codes."""
    Config = FactorVAEConfig
    phases = ("main", "d")

    def __init__(self, config: FactorVAEConfig):
        c = config
        if c.objective != "elbo" or c.capacity_max > 0 or c.prior != "normal" or c.z1_dim:
            raise ValueError("factor-vae has its own objective: leave objective (elbo), capacity_max (0), prior "
                             "(normal) and z1_dim (0) as they are")
        if c.disc_layers < 1 or c.disc_hidden < 1 or c.gamma < 0:
            raise ValueError(f"need disc_layers >= 1, disc_hidden >= 1 and gamma >= 0, got {c.disc_layers}, "
                             f"{c.disc_hidden}, {c.gamma}")
        super().__init__(config)
        layers, width = [], c.latent_dim
        for _ in range(c.disc_layers):
            layers += [nn.Linear(width, c.disc_hidden), nn.LeakyReLU(0.2)]
            width = c.disc_hidden
        self.discriminator = nn.Sequential(*layers, nn.Linear(width, 1))

    def tc_logits(self, z: torch.Tensor) -> torch.Tensor:
        """D's logit log D(z) / (1 - D(z)), (B,): positive where z looks like a code of q(z) rather than prod q(z_d)."""
        return self.discriminator(z).squeeze(1)

    def phase_parameters(self, phase):
        d = list(self.discriminator.parameters())
        return d if phase == "d" else [p for p in self.parameters() if all(p is not q for q in d)]

    def phase_options(self, phase):
        return {"lr": self.config.disc_lr, "betas": tuple(self.config.disc_betas)} if phase == "d" else {}

    def loss(self, batch, phase="main"):
        x = self.prepare(batch[0])
        self.discriminator.requires_grad_(phase == "d")
        if phase == "d":
            with torch.no_grad():
                mu, logvar = self.posterior(x)
                z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            joint, product = self.tc_logits(z), self.tc_logits(permute_dims(z))
            loss = 0.5 * (F.binary_cross_entropy_with_logits(joint, torch.ones_like(joint))
                          + F.binary_cross_entropy_with_logits(product, torch.zeros_like(product)))
            accuracy = 0.5 * ((joint > 0).float().mean() + (product < 0).float().mean())
            return {"loss": loss, "accuracy": accuracy.detach()}
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = -self.log_likelihood(x, self.decoder(z)).mean()
        kl = gaussian_kl(mu, logvar).sum(1).mean()
        tc = self.tc_logits(z).mean()
        active = (mu.detach().var(0) > 0.01).sum() if len(mu) > 1 else torch.zeros(())
        return {"loss": recon + self.config.beta * kl + self.config.gamma * tc, "recon": recon.detach(),
                "kl": kl.detach(), "tc": tc.detach(), "elbo": -(recon + kl).detach(), "active_units": active.float()}
