"""Generative adversarial networks (Goodfellow et al. 2014) with a DCGAN, ResNet or MLP body and the losses that work.

The game: a discriminator D tells training images from a generator's images G(z), z ~ N(0, I), and G learns to fool
it. One training step runs the phases ("d", "g"): `n_critic` discriminator updates, then one generator update.
With D's logits r = D(x) on real and f = D(G(z)) on generated images (per example; means over the batch):

  minimax   (Goodfellow 2014, eq. 1)   L_D = softplus(-r) + softplus(f)       L_G = -softplus(f) = log(1 - sigmoid(f))
  ns        (Goodfellow 2014, sec. 3)  L_D as minimax                         L_G = softplus(-f) = -log sigmoid(f)
  lsgan     (Mao et al. 2017, eq. 2)   L_D = ((r - 1)^2 + f^2) / 2           L_G = (f - 1)^2 / 2
  hinge     (Lim & Ye 2017; Miyato 2018) L_D = relu(1 - r) + relu(1 + f)     L_G = -f
  wgan-gp   (Gulrajani et al. 2017, alg. 1) L_D = f - r + lambda (||grad_xhat D(xhat)|| - 1)^2,
            xhat = eps x + (1 - eps) G(z), eps ~ U[0, 1]                      L_G = -f
  rpgan     (Huang et al. 2024, R3GAN eq. 2; Jolicoeur-Martineau 2019) pairs the i-th real with the i-th generated
            image:                     L_D = softplus(f_i - r_i)              L_G = softplus(r_i - f_i)

The minimax G loss saturates (its gradient vanishes when D rejects fakes confidently): the non-saturating form has the
same fixed point and strong gradients early, hence the default. Stabilisers: spectral normalisation of D's layers
(Miyato et al. 2018), separate learning rates (g_lr / d_lr; Heusel et al. 2017's TTUR), an EMA of the weights
(the Trainer's `ema_decay`; only G's average is used to sample), class conditioning (one-hot label appended to z in G;
projection discriminator of Miyato & Koyama 2018 in D).

Regularising D (Mescheder et al. 2018): R1 = gamma_1 / 2 E_x ||grad_x D(x)||^2 on real images (`r1=gamma_1`) and R2,
the same on generated ones (`r2=gamma_2`), both zero-centred, added to L_D; R3GAN = rpgan + R1 + R2. Lazy
regularisation (Karras et al. 2020, StyleGAN2 sec. 3.1): with `reg_every=k` the penalties are computed only at steps
divisible by k and weighted by k, which saves most of their double backward. DiffAugment (Zhao et al. 2020,
dgm.nn.diffaugment): `augment=translation,cutout` transforms real and generated images alike before every D call (in
both phases, differentiably), never when sampling. `arch=resnet` is the residual G / D of dgm.nn.gan_resnet.

Watching the game: the "d" phase logs d_real / d_fake (mean D(x) and D(G(z)): probabilities for minimax / ns, which head
to 0.5 when D can no longer tell; raw outputs for the other losses) and d_auc = P(D(x) > D(G(z))) over all real/fake
pairs of the batch (0.5: cannot tell; 1: D wins outright), whatever the loss; with R1 / R2 also grad2_real / grad2_fake
= E||grad_x D||^2 (on the steps that compute them). `figures` draws them in dx.png and warns
when the generator collapses (dgm.figures.gan, dgm.metrics.gan_health).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm.data import to_float
from dgm.models.base import GenerativeModel, ImageConfig, randn
from dgm.nn.dcgan import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, dcgan_init,
                          kaiming_init)
from dgm.nn.diffaugment import diff_augment, parse_policy
from dgm.nn.gan_resnet import ResNetDiscriminator, ResNetGenerator
from dgm.registry import register

LOSSES = ("minimax", "ns", "lsgan", "hinge", "wgan-gp", "rpgan")
PROBABILITY_LOSSES = ("minimax", "ns")  # D's output is a logit of P(real): report sigmoid(D)
RELATIVISTIC_LOSSES = ("rpgan",)  # only D(x) - D(G(z)) counts: the raw d_real / d_fake drift together
ARCHS = ("dcgan", "resnet", "mlp")


@dataclass
class GANConfig(ImageConfig):
    arch: str = "dcgan"                      # "dcgan" (28, 32, 64 px, ...), "resnet" (same sizes) or "mlp"
    latent_dim: int = 100
    # Defaults: the best of the candidates at `dgm train gan`'s 3 CPU-minutes on mnist-mini (BENCHMARKS.md
    # "Defaults": domain FID 13.6 against 32.4 for width 64 with one lr and no EMA): width 32, G's lr four times D's
    # (two time-scale updates: ttur=4, set by for_data for fresh runs), EMA 0.99.
    width: int = 32                          # DCGAN / ResNet: channels of D's first level; doubled per level
    mlp_hidden: tuple[int, ...] = (256, 512, 1024)  # MLP G's hidden sizes (D uses them reversed)
    loss: str = "ns"                         # one of LOSSES
    gp_weight: float = 10.0                  # lambda of WGAN-GP
    n_critic: int = 0                        # D updates per G update; 0: 5 for wgan-gp, else 1
    spectral_norm: bool = False              # spectral normalisation of every D layer (Miyato et al. 2018)
    d_norm: str = "auto"                     # "batch", "layer", "none"; auto: none with SN or WGAN-GP, else batch
    g_norm: str = "batch"                    # normalisation inside G ("none" for the MLP G of Goodfellow 2014)
    d_dropout: float = 0.0                   # dropout in the MLP discriminator
    g_lr: float = 0.0                        # > 0: G's lr (else from the train lr and ttur)
    d_lr: float = 0.0                        # > 0: D's lr (else from the train lr and ttur)
    ttur: float = 1.0                        # G's lr / D's lr around the train lr: G lr*sqrt(ttur), D lr/sqrt(ttur)
    conditional: bool = False                # class-conditional G and D (needs a labelled dataset)
    r1: float = 0.0                          # gamma of R1 = gamma / 2 E||grad_x D(x)||^2 on real images (0: off)
    r2: float = 0.0                          # gamma of R2: the same on generated images (0: off)
    reg_every: int = 1                       # lazy regularisation: R1 / R2 every k-th step, weighted by k
    augment: str = ""                        # DiffAugment policy, e.g. "translation,cutout" ("" or none: off)
    d_init: str = "auto"                     # DCGAN / MLP D: "dcgan" N(0, 0.02) or "kaiming"; auto: kaiming with
                                             # R1 / R2 (no BatchNorm then), else dcgan. ResNet: its own (auto only)


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
    if kind == "rpgan":  # relativistic pairing: -log sigmoid(r_i - f_i)
        return F.softplus(fake - real).mean()
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def g_loss(kind: str, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Generator loss from D's logits on generated images (B,) (and, for rpgan, on real images (B,))."""
    if kind == "rpgan":
        if real is None:
            raise ValueError("the rpgan generator loss pairs generated with real logits: pass real=")
        return F.softplus(real - fake).mean()
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


def zero_centred_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over the batch (Mescheder et al. 2018, R1 on real inputs, R2 on generated ones): `logits`
    (B,) computed from `inputs` (B, ...), which must require grad. create_graph=True so the penalty trains D.
    Per example only when D treats examples independently (no BatchNorm), hence no BatchNorm in a regularised D."""
    grad, = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.float().flatten(1).pow(2).sum(1).mean()


def pairwise_auc(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """P(D(x) > D(G(z))) over all real/fake pairs (ties count half): 0.5 when D cannot tell, 1 when it wins outright."""
    r, f = real.detach().float()[:, None], fake.detach().float()[None, :]
    return (r > f).float().mean() + 0.5 * (r == f).float().mean()


@register("gan")
class GAN(GenerativeModel):
    Config = GANConfig
    phases = ("d", "g")
    # Radford et al. 2016: Adam lr 2e-4, beta1 0.5, batch 128 (64 here: more updates per CPU second).
    train_defaults = {"lr": 2e-4, "betas": (0.5, 0.999), "batch_size": 64, "ema_decay": 0.99}
    default_minutes = 3.0

    def __init__(self, config: GANConfig):
        super().__init__(config)
        c = config
        if c.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
        if c.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {c.arch!r}")
        if not (math.isfinite(c.ttur) and c.ttur > 0):
            raise ValueError(f"ttur must be a positive number (G's lr / D's lr), got {c.ttur}")
        if c.conditional and c.num_classes < 2:
            raise ValueError("conditional=true needs a labelled dataset (num_classes >= 2)")
        if c.latent_dim < 1 or c.n_critic < 0 or c.gp_weight < 0 or c.width < 1:
            raise ValueError("latent_dim and width must be >= 1, n_critic and gp_weight >= 0")
        if not (c.r1 >= 0 and c.r2 >= 0) or c.reg_every < 1:
            raise ValueError(f"r1 and r2 must be >= 0 and reg_every >= 1, got r1={c.r1}, r2={c.r2}, "
                             f"reg_every={c.reg_every}")
        self.policy = parse_policy(c.augment)
        penalised = c.loss == "wgan-gp" or c.r1 > 0 or c.r2 > 0
        d_norm = c.d_norm
        if d_norm == "auto":  # Gulrajani 2017 sec. 4: no BatchNorm in a gradient-penalised critic; SNGAN D has none
            d_norm = "none" if (c.spectral_norm or penalised or c.arch == "resnet") else "batch"
        elif penalised and d_norm == "batch":
            raise ValueError(f"{'wgan-gp' if c.loss == 'wgan-gp' else 'r1 / r2'}: BatchNorm in the critic breaks the "
                             "per-example gradient penalty; use d_norm=layer or none")
        if c.d_init not in ("auto", "dcgan", "kaiming") or (c.arch == "resnet" and c.d_init != "auto"):
            raise ValueError(f"d_init must be auto, dcgan or kaiming (auto only for arch=resnet), got {c.d_init!r}")
        # The N(0, 0.02) init suits a D with BatchNorm (Radford 2016); without it the signal shrinks at every layer,
        # and a D regularised by R1 / R2 (no BatchNorm) then learns far more slowly (the 8-Gaussian ring test).
        self.d_init = c.d_init if c.d_init != "auto" else (
            "kaiming" if c.arch != "resnet" and (c.r1 > 0 or c.r2 > 0) else "own")
        n_cls = c.num_classes if c.conditional else 0
        g_in = c.latent_dim + n_cls
        if c.arch == "dcgan":
            self.G = DCGANGenerator(g_in, c.channels, c.image_size, c.width, c.g_norm)
            self.D = DCGANDiscriminator(c.channels, c.image_size, c.width, d_norm)
        elif c.arch == "resnet":
            self.G = ResNetGenerator(g_in, c.channels, c.image_size, c.width, c.g_norm)
            self.D = ResNetDiscriminator(c.channels, c.image_size, c.width, d_norm)
        else:
            self.G = MLPGenerator(g_in, c.channels, c.image_size, c.mlp_hidden, c.g_norm)
            self.D = MLPDiscriminator(c.channels, c.image_size, tuple(reversed(c.mlp_hidden)), d_norm, c.d_dropout)
        self.d_head = nn.Linear(self.D.out_dim, 1)
        # Projection discriminator: D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018, eq. 3).
        self.d_embed = nn.Embedding(n_cls, self.D.out_dim) if n_cls else None
        dcgan_init(self.d_head)
        if self.d_embed is not None:
            dcgan_init(self.d_embed)
        if self.d_init == "kaiming":  # the head too, with gain 1 (std 1 / sqrt(fan_in))
            kaiming_init(self.D)
            kaiming_init(self.d_head, slope=1.0)
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
        # The head in fp32 even under autocast: the rpgan loss sees only r - f, so D's logits drift freely (to ~15 in
        # 600 MNIST steps) and bf16 would round their differences (to 1/16 at 16, 1/2 at 128).
        with torch.autocast(x.device.type, enabled=False):
            h = h.float()
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
        """G's and D's learning rates: g_lr / d_lr when set, else the train lr scaled by ttur (Heusel et al. 2017's
        two time-scale rule; the geometric mean stays the train lr)."""
        c = self.config
        lr = c.d_lr if phase == "d" else c.g_lr
        if lr > 0:
            return {"lr": lr}
        if c.ttur != 1.0:
            return {"lr_scale": math.sqrt(c.ttur) if phase == "g" else 1 / math.sqrt(c.ttur)}
        return {}

    @classmethod
    def for_data(cls, data, options=None):
        """A fresh model: ttur = 4 (the default recipe) unless the options set ttur, g_lr or d_lr; a saved config
        from before `ttur` existed loads with 1, the single lr it was trained with."""
        options = dict(options or {})
        if not any(k in options for k in ("ttur", "g_lr", "d_lr")):
            options["ttur"] = 4.0
        return super().for_data(data, options)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees of a batch in training: DiffAugment's transform with the configured policy (identity if
        none). Only `loss` calls it; `critic` and `sample` never augment."""
        return diff_augment(x, self.policy) if self.policy else x

    def reg_due(self) -> bool:
        """Lazy regularisation: R1 / R2 at the steps divisible by reg_every (the Trainer sets self.step)."""
        return (self.config.r1 > 0 or self.config.r2 > 0) and int(self.step) % self.config.reg_every == 0

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
            fake_logits = self.critic(self.augment(self.generate(z, y)), y)
            real_logits = None
            if c.loss == "rpgan":  # the pairing needs D on real images too (D is frozen here: no graph)
                with torch.no_grad():
                    real_logits = self.critic(self.augment(x), y)
            return {"loss": g_loss(c.loss, fake_logits, real_logits)}
        with torch.no_grad():
            fake = self.generate(z, y)
        reg = self.reg_due()
        r1, r2 = reg and c.r1 > 0, reg and c.r2 > 0
        # R1 / R2 differentiate D(T(x)) with respect to the image x before the augmentation T.
        if r1:
            x = x.detach().requires_grad_(True)
        if r2:
            fake = fake.detach().requires_grad_(True)
        real_logits, fake_logits = self.critic(self.augment(x), y), self.critic(self.augment(fake), y)
        loss = d_loss(c.loss, real_logits, fake_logits)
        out = {}
        if c.loss == "wgan-gp":
            gp = gradient_penalty(lambda t: self.critic(self.augment(t), y), x.detach(), fake.detach().to(x.dtype))
            out = {"gp": gp.detach(), "w_dist": (real_logits.mean() - fake_logits.mean()).detach()}
            loss = loss + c.gp_weight * gp
        if r1:  # logged: E||grad D||^2 itself; the loss adds gamma / 2 of it, times k when lazy
            pen = zero_centred_penalty(real_logits, x)
            loss = loss + c.reg_every * c.r1 / 2 * pen
            out["grad2_real"] = pen.detach()
        if r2:
            pen = zero_centred_penalty(fake_logits, fake)
            loss = loss + c.reg_every * c.r2 / 2 * pen
            out["grad2_fake"] = pen.detach()
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
