"""Generative adversarial networks (Goodfellow et al. 2014) with a DCGAN or MLP body and the losses that work.

The game: a discriminator D tells training images from a generator's images G(z), z ~ N(0, I), and G learns to fool
it. One training step runs the phases ("d", "g"): `n_critic` discriminator updates, then one generator update.
With D's logits r = D(x) on real and f = D(G(z)) on generated images (per example; means over the batch):

  minimax   (Goodfellow 2014, eq. 1)   L_D = softplus(-r) + softplus(f)       L_G = -softplus(f) = log(1 - sigmoid(f))
  ns        (Goodfellow 2014, sec. 3)  L_D as minimax                         L_G = softplus(-f) = -log sigmoid(f)
  lsgan     (Mao et al. 2017, eq. 2)   L_D = ((r - 1)^2 + f^2) / 2           L_G = (f - 1)^2 / 2
  hinge     (Lim & Ye 2017; Miyato 2018) L_D = relu(1 - r) + relu(1 + f)     L_G = -f
  wgan-gp   (Gulrajani et al. 2017, alg. 1) L_D = f - r + lambda (||grad_xhat D(xhat)|| - 1)^2,
            xhat = eps x + (1 - eps) G(z), eps ~ U[0, 1]                      L_G = -f

The minimax G loss saturates (its gradient vanishes when D rejects fakes confidently): the non-saturating form has the
same fixed point and strong gradients early, hence the default. Stabilisers: spectral normalisation of D's layers
(Miyato et al. 2018), separate learning rates (g_lr / d_lr; Heusel et al. 2017's TTUR), an EMA of the weights
(the Trainer's `ema_decay`; only G's average is used to sample), class conditioning (one-hot label appended to z in G;
projection discriminator of Miyato & Koyama 2018 in D).

Watching the game: the "d" phase logs d_real / d_fake (mean D(x) and D(G(z)): probabilities for minimax / ns, which head
to 0.5 when D can no longer tell; raw outputs for the other losses) and d_auc = P(D(x) > D(G(z))) over all real/fake
pairs of the batch (0.5: cannot tell; 1: D wins outright), whatever the loss. `figures` draws them in dx.png and warns
when the generator collapses (dgm.figures.gan, dgm.metrics.gan_health).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm.data import to_float
from dgm.models.base import GenerativeModel, ImageConfig, randn
from dgm.nn.dcgan import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, dcgan_init)
from dgm.registry import register

LOSSES = ("minimax", "ns", "lsgan", "hinge", "wgan-gp")
PROBABILITY_LOSSES = ("minimax", "ns")  # D's output is a logit of P(real): report sigmoid(D)


@dataclass
class GANConfig(ImageConfig):
    arch: str = "dcgan"                      # "dcgan" (28, 32, 64 px, ...) or "mlp" (Goodfellow et al. 2014)
    latent_dim: int = 100
    width: int = 64                          # DCGAN: channels of D's first / G's last conv; doubled per level
    mlp_hidden: tuple[int, ...] = (256, 512, 1024)  # MLP G's hidden sizes (D uses them reversed)
    loss: str = "ns"                         # one of LOSSES
    gp_weight: float = 10.0                  # lambda of WGAN-GP
    n_critic: int = 0                        # D updates per G update; 0: 5 for wgan-gp, else 1
    spectral_norm: bool = False              # spectral normalisation of every D layer (Miyato et al. 2018)
    d_norm: str = "auto"                     # "batch", "layer", "none"; auto: none with SN or WGAN-GP, else batch
    g_norm: str = "batch"                    # normalisation inside G ("none" for the MLP G of Goodfellow 2014)
    d_dropout: float = 0.0                   # dropout in the MLP discriminator
    g_lr: float = 0.0                        # 0: the train lr
    d_lr: float = 0.0                        # 0: the train lr
    conditional: bool = False                # class-conditional G and D (needs a labelled dataset)


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss (without WGAN-GP's penalty) from logits on real (B,) and generated (B,) images."""
    if kind in PROBABILITY_LOSSES:  # -log D(x) - log(1 - D(G(z))), D = sigmoid(logit)
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "lsgan":
        return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss from D's logits on generated images (B,)."""
    if kind == "minimax":
        return -F.softplus(fake).mean()    # = mean log(1 - sigmoid(f)), minimised by G
    if kind == "ns":
        return F.softplus(-fake).mean()    # = -mean log sigmoid(f)
    if kind == "lsgan":
        return 0.5 * (fake - 1).pow(2).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """Gulrajani et al. 2017, eq. 3: E[(||grad D(xhat)||_2 - 1)^2] at xhat = eps x + (1 - eps) x_fake, eps ~ U[0, 1]
    per example. `critic` maps (B, ...) -> (B,). create_graph=True so the penalty itself is differentiated."""
    if eps is None:
        eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    xhat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    grad, = torch.autograd.grad(critic(xhat).sum(), xhat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def pairwise_auc(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """P(D(x) > D(G(z))) over all real/fake pairs (ties count half): 0.5 when D cannot tell, 1 when it wins outright."""
    r, f = real.detach().float()[:, None], fake.detach().float()[None, :]
    return (r > f).float().mean() + 0.5 * (r == f).float().mean()


@register("gan")
class GAN(GenerativeModel):
    Config = GANConfig
    phases = ("d", "g")
    # Radford et al. 2016: Adam lr 2e-4, beta1 0.5, batch 128 (64 here: more updates per CPU second).
    train_defaults = {"lr": 2e-4, "betas": (0.5, 0.999), "batch_size": 64}

    def __init__(self, config: GANConfig):
        super().__init__(config)
        c = config
        if c.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
        if c.arch not in ("dcgan", "mlp"):
            raise ValueError(f"arch must be 'dcgan' or 'mlp', got {c.arch!r}")
        if c.conditional and c.num_classes < 2:
            raise ValueError("conditional=true needs a labelled dataset (num_classes >= 2)")
        if c.latent_dim < 1 or c.n_critic < 0 or c.gp_weight < 0 or c.width < 1:
            raise ValueError("latent_dim and width must be >= 1, n_critic and gp_weight >= 0")
        d_norm = c.d_norm
        if d_norm == "auto":  # Gulrajani 2017 sec. 4: no BatchNorm in a gradient-penalised critic; SNGAN D has none
            d_norm = "none" if (c.spectral_norm or c.loss == "wgan-gp") else "batch"
        elif c.loss == "wgan-gp" and d_norm == "batch":
            raise ValueError("wgan-gp: BatchNorm in the critic breaks the per-example gradient penalty; "
                             "use d_norm=layer or none")
        n_cls = c.num_classes if c.conditional else 0
        g_in = c.latent_dim + n_cls
        if c.arch == "dcgan":
            self.G = DCGANGenerator(g_in, c.channels, c.image_size, c.width, c.g_norm)
            self.D = DCGANDiscriminator(c.channels, c.image_size, c.width, d_norm)
        else:
            self.G = MLPGenerator(g_in, c.channels, c.image_size, c.mlp_hidden, c.g_norm)
            self.D = MLPDiscriminator(c.channels, c.image_size, tuple(reversed(c.mlp_hidden)), d_norm, c.d_dropout)
        self.d_head = nn.Linear(self.D.out_dim, 1)
        # Projection discriminator: D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018, eq. 3).
        self.d_embed = nn.Embedding(n_cls, self.D.out_dim) if n_cls else None
        dcgan_init(self.d_head)
        if self.d_embed is not None:
            dcgan_init(self.d_embed)
        if c.spectral_norm:
            from torch.nn.utils.parametrizations import spectral_norm
            for m in [*self.D.modules(), self.d_head, *([self.d_embed] if n_cls else [])]:
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    spectral_norm(m)
        # Per instance (shadows the class default): n critic updates per generator update.
        self.phase_repeats = {"d": c.n_critic or (5 if c.loss == "wgan-gp" else 1)}

    # -- pieces ----------------------------------------------------------------------------------------------
    def d_params(self) -> list[nn.Parameter]:
        return [*self.D.parameters(), *self.d_head.parameters(),
                *(self.d_embed.parameters() if self.d_embed is not None else [])]

    def critic(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """D's logit (B,) for images x in [-1, 1] (and labels y when conditional)."""
        h = self.D(x)
        out = self.d_head(h).squeeze(1)
        if self.d_embed is not None:
            out = out + (self.d_embed(y) * h).sum(1)
        return out

    def labels_for(self, n: int, cond: torch.Tensor | None) -> torch.Tensor | None:
        """Class labels for n samples: `cond` (an int or (n,) ints) if given, else 0, 1, ..., K-1, 0, 1, ..."""
        if self.d_embed is None:
            if cond is not None:
                raise ValueError("this GAN is unconditional; train with --set conditional=true to pass a class")
            return None
        k = self.config.num_classes
        if cond is None:
            return torch.arange(n, device=self.device) % k
        cond = torch.as_tensor(cond, device=self.device).long().expand(n) if torch.as_tensor(cond).dim() == 0 \
            else torch.as_tensor(cond, device=self.device).long()
        if cond.shape != (n,) or cond.min() < 0 or cond.max() >= k:
            raise ValueError(f"cond must be {n} class labels in 0..{k - 1}")
        return cond

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent_dim) -> images (B, C, H, W) in [-1, 1]."""
        if y is not None:
            z = torch.cat([z, F.one_hot(y, self.config.num_classes).to(z.dtype)], 1)
        return self.G(z)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent_dim) -> images in [0, 1] (used by `dgm interpolate`)."""
        return (self.generate(z, self.labels_for(z.shape[0], cond)) + 1) / 2

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    # -- the contract ----------------------------------------------------------------------------------------
    def phase_parameters(self, phase):
        return self.d_params() if phase == "d" else list(self.G.parameters())

    def phase_options(self, phase):
        lr = self.config.d_lr if phase == "d" else self.config.g_lr
        return {"lr": lr} if lr > 0 else {}

    def loss(self, batch, phase):
        c = self.config
        x = to_float(batch[0], "-11")
        y = batch[1] if self.d_embed is not None else None
        if self.d_embed is not None and y is None:
            raise ValueError("conditional GAN needs labelled batches")
        b = x.shape[0]
        z = torch.randn(b, c.latent_dim, device=x.device)
        # Only the phase's own network needs weight gradients; freezing the other saves a third of the backward.
        self.G.requires_grad_(phase == "g")
        for p in self.d_params():
            p.requires_grad_(phase == "d")
        if phase == "g":
            fake_logits = self.critic(self.generate(z, y), y)
            return {"loss": g_loss(c.loss, fake_logits)}
        with torch.no_grad():
            fake = self.generate(z, y)
        real_logits, fake_logits = self.critic(x, y), self.critic(fake, y)
        loss = d_loss(c.loss, real_logits, fake_logits)
        out = {}
        if c.loss == "wgan-gp":
            gp = gradient_penalty(lambda t: self.critic(t, y), x, fake.to(x.dtype))
            out = {"gp": gp.detach(), "w_dist": (real_logits.mean() - fake_logits.mean()).detach()}
            loss = loss + c.gp_weight * gp
        show = torch.sigmoid if c.loss in PROBABILITY_LOSSES else (lambda t: t)
        return {"loss": loss, "d_real": show(real_logits.detach().float()).mean(),
                "d_fake": show(fake_logits.detach().float()).mean(),
                "d_auc": pairwise_auc(real_logits, fake_logits), **out}

    @torch.inference_mode()
    def sample(self, n, *, cond=None, generator=None, chunk: int = 1000):
        z = randn((n, self.config.latent_dim), generator, self.device)
        y = self.labels_for(n, cond)
        return torch.cat([self.decode(z[i:i + chunk], None if y is None else y[i:i + chunk])
                          for i in range(0, n, chunk)]).float()
