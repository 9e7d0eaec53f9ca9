"""Closed forms for diagonal Gaussians, shared by the VAE (its KL term and importance weights) and diffusion (the
terms of its variational bound)."""
from __future__ import annotations

import math

import torch

LOG2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, mu2: torch.Tensor | None = None,
                logvar2: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(mu2, exp(logvar2))) elementwise; N(0, 1) when mu2/logvar2 are omitted
    (Kingma & Welling 2014, appendix B)."""
    if mu2 is None and logvar2 is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    mu2 = torch.zeros_like(mu) if mu2 is None else mu2
    logvar2 = torch.zeros_like(logvar) if logvar2 is None else logvar2
    return 0.5 * (logvar2 - logvar + (logvar.exp() + (mu - mu2) ** 2) / logvar2.exp() - 1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * (LOG2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)
