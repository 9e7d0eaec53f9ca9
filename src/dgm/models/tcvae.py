"""beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational Autoencoders").

The KL term of the ELBO, averaged over the data, splits into three parts (their eq. 2), with q(z) = (1/N) sum_n q(z|n)
the aggregate posterior over the N training images:

    E_x KL(q(z|x) || p(z)) = I_q(x; z)                              index-code mutual information
                           + KL(q(z) || prod_d q(z_d))               total correlation (TC)
                           + sum_d KL(q(z_d) || p(z_d))              dimension-wise KL

beta-TCVAE weights only the TC by beta (alpha = gamma = 1): loss = reconstruction + MI + beta TC + dimension-wise KL,
which equals the ELBO's loss plus (beta - 1) TC. Penalising the dependence between latents, not the information they
carry, is what lets beta grow without the blur a large beta-VAE beta costs.

q(z) and q(z_d) need all N images; `kl_decomposition` estimates them from the batch by stratified importance weights
(the idea of Chen et al.'s minibatch stratified sampling, written here in its simplest form): a batch member's own
posterior gets weight 1/N (its exact share of the mixture) and the B - 1 others share the remaining (N - 1) / N, as
stand-ins for the rest of the data. Unbiased for q(z) itself; exact when the batch is the whole dataset (B = N).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgm.models.vae import BetaVAE, BetaVAEConfig
from dgm.nn.distributions import LOG2PI, gaussian_kl
from dgm.registry import register


def kl_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int = 0
                     ) -> dict[str, torch.Tensor]:
    """Batch estimates of the three parts of the average KL (Chen et al. 2018, eq. 2), each a scalar in nats.

    z, mu, logvar: (B, D), z_i ~ q(z|x_i). dataset_size: N, the number of training images (0 or less than B: the batch
    is taken as the whole dataset). Returns mi, tc, dwkl and their sum kl = mean_i [log q(z_i|x_i) - log p(z_i)]
    (the one-sample Monte Carlo KL): the sum is exact, whatever the weights.
    """
    b = z.shape[0]
    n = max(int(dataset_size), b)
    # log q(z_i,d | x_j) for every pair (i, j) and dimension d: (B, B, D)
    lq = -0.5 * (LOG2PI + logvar[None] + (z[:, None] - mu[None]).pow(2) / logvar.exp()[None])
    if b > 1:
        other = math.log((n - 1) / (n * (b - 1)))
        log_w = torch.full((b, b), other, dtype=z.dtype, device=z.device)
        log_w.fill_diagonal_(-math.log(n))
    else:
        log_w = torch.zeros((1, 1), dtype=z.dtype, device=z.device)
    log_qz = torch.logsumexp(lq.sum(2) + log_w, 1)                          # log q(z_i)
    log_marginals = torch.logsumexp(lq + log_w[:, :, None], 1).sum(1)       # sum_d log q(z_i,d)
    log_qzx = lq.diagonal(dim1=0, dim2=1).sum(0)                            # log q(z_i | x_i)
    log_pz = (-0.5 * (LOG2PI + z.pow(2))).sum(1)
    mi, tc = (log_qzx - log_qz).mean(), (log_qz - log_marginals).mean()
    dwkl = (log_marginals - log_pz).mean()
    return {"mi": mi, "tc": tc, "dwkl": dwkl, "kl": (log_qzx - log_pz).mean()}


@dataclass
class BetaTCVAEConfig(BetaVAEConfig):
    """beta weighs the total correlation only; 6 is the middle of disentanglement_lib's sweep (1, 2, 4, 6, 8, 10)."""
    beta: float = 6.0
    dataset_size: int = 0    # N for the stratified weights; filled from the training data when a run starts


@register("beta-tcvae")
class BetaTCVAE(BetaVAE):
    """`dgm train beta-tcvae --data dsprites`: the beta-VAE's networks with the TC-weighted objective."""
    Config = BetaTCVAEConfig

    def __init__(self, config: BetaTCVAEConfig):
        if config.objective != "elbo" or config.capacity_max > 0 or config.prior != "normal" or config.z1_dim:
            raise ValueError("beta-tcvae has its own objective: leave objective (elbo), capacity_max (0), prior "
                             "(normal) and z1_dim (0) as they are")
        if config.beta < 0:
            raise ValueError(f"beta must be >= 0, got {config.beta}")
        super().__init__(config)

    def prepare_training(self, data, *, classifier=None) -> None:
        if self.config.dataset_size <= 0:
            self.config.dataset_size = len(data)

    def loss(self, batch, phase="main"):
        x = self.prepare(batch[0])
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = -self.log_likelihood(x, self.decoder(z)).mean()
        p = kl_decomposition(z, mu, logvar, self.config.dataset_size)
        loss = recon + p["mi"] + self.config.beta * p["tc"] + p["dwkl"]
        kl = gaussian_kl(mu, logvar).sum(1).mean().detach()  # the closed form, as the VAE logs it
        active = (mu.detach().var(0) > 0.01).sum() if len(mu) > 1 else torch.zeros(())
        return {"loss": loss, "recon": recon.detach(), "kl": kl, "mi": p["mi"].detach(), "tc": p["tc"].detach(),
                "dwkl": p["dwkl"].detach(), "elbo": -(recon.detach() + kl), "active_units": active.float()}
