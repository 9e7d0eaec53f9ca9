"""The autoencoder: encoder -> low-dimensional code -> decoder (the lecture's first model)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dgm.data import to_float
from dgm.models.base import GenerativeModel, ImageConfig, randn
from dgm.nn.conv import make_encoder_decoder
from dgm.registry import register


@dataclass
class AEConfig(ImageConfig):
    latent_dim: int = 16
    arch: str = "conv"                       # "conv" or "mlp"
    conv_channels: tuple[int, ...] = (32, 64)
    mlp_hidden: tuple[int, ...] = (512, 256)
    recon: str = "bce"                       # "bce" (pixels in [0, 1] as probabilities) or "mse"
    code_momentum: float = 0.01              # running mean/var of codes, used to sample (an AE has no prior)


@register("ae")
class AE(GenerativeModel):
    default_minutes = 1.0
    Config = AEConfig

    def __init__(self, config: AEConfig):
        super().__init__(config)
        c = config
        if c.recon not in ("bce", "mse"):
            raise ValueError(f"recon must be 'bce' or 'mse', got {c.recon!r}")
        self.encoder, self.decoder = make_encoder_decoder(c.arch, c.channels, c.image_size, c.conv_channels,
                                                          c.mlp_hidden, c.latent_dim, c.latent_dim)
        # An AE's codes follow no known distribution. To draw "samples" we fit a diagonal Gaussian to the training
        # codes as they go by; the poor samples this gives are the lecture's argument for the VAE.
        self.register_buffer("code_mean", torch.zeros(c.latent_dim))
        self.register_buffer("code_var", torch.ones(c.latent_dim))

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        return self.encoder(x01)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def reconstruct(self, x01: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x01))

    def loss(self, batch, phase="main"):
        x = to_float(batch[0])
        z = self.encoder(x)
        logits = self.decoder(z)
        if self.config.recon == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            rec = (torch.sigmoid(logits) - x) ** 2
        rec = rec.flatten(1).sum(1).mean()  # summed over pixels, averaged over the batch
        if self.training:
            with torch.no_grad():
                m = self.config.code_momentum
                zf = z.detach().float()
                self.code_mean.lerp_(zf.mean(0), m)
                self.code_var.lerp_(zf.var(0, unbiased=False) if len(zf) > 1 else self.code_var, m)
        return {"loss": rec, "recon": rec.detach()}

    def sample_latent(self, n, generator=None):
        """Codes from the diagonal Gaussian fitted to the training codes."""
        eps = randn((n, self.config.latent_dim), generator, self.device)
        return self.code_mean + eps * self.code_var.sqrt()

    def latent_moments(self):
        return self.code_mean, self.code_var.sqrt()

    @torch.inference_mode()
    def sample(self, n, *, cond=None, generator=None):
        return self.decode(self.sample_latent(n, generator))

    def preview(self, batch, generator):
        x = to_float(batch[0][:32])
        with torch.inference_mode():
            return torch.cat([x, self.reconstruct(x)])
