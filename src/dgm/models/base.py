"""The contract every family keeps (docs/ARCHITECTURE.md, "The contract").

Required: `loss(batch, phase)` for each phase in `phases`. Everything else is optional and declared here with a
default, so a new family's author reads one file to know which names exist:

- the Trainer calls `loss`, `phase_parameters`, `phase_options`, `preview` and, before a fresh run,
  `prepare_training`; it sets `self.step` (the global step, an int) before each `loss` call;
- users, figures, metrics and the studio call the abilities below and decide which ones a model has from
  `capabilities()` alone (never `hasattr`): a family has an ability when it overrides the method.

Abilities: sample, encode, decode, reconstruct, translate, posterior, elbo, nll, bits_per_dim; and two properties of
sampling: "conditional" (`sample(cond=labels)` steers to a class) and "trajectory" (`sample(callback=...)` sees every
denoising step). Nothing here branches on a family's name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dgm.config import config_from_dict

# Methods whose override declares an ability (the method's name is the capability's name).
ABILITIES = ("sample", "encode", "decode", "reconstruct", "translate", "posterior", "elbo", "nll", "bits_per_dim")
CAPABILITIES = ABILITIES + ("conditional", "trajectory")


@dataclass
class ImageConfig:
    """Fields every family shares; the Trainer fills them from the dataset (shape and class count)."""
    channels: int = 1
    image_size: int = 28
    num_classes: int = 0  # 0: unconditional / no labels


class GenerativeModel(nn.Module):
    family: ClassVar[str]
    Config: ClassVar[type]
    phases: ClassVar[tuple[str, ...]] = ("main",)
    phase_repeats: ClassVar[dict[str, int]] = {}
    # Train options this family prefers unless the user sets them (e.g. GAN: lr 2e-4, betas (0.5, 0.999)).
    train_defaults: ClassVar[dict[str, Any]] = {}
    # True when `sample(callback=fn)` calls fn(i, t, x_t, x0_hat) at every step of an iterative sampler.
    sample_trajectory: ClassVar[bool] = False
    # `dgm train FAMILY` with no length (--steps/--epochs/--minutes) trains this many minutes of process CPU time:
    # what gives a recognisable picture on the default data (mnist-mini) with the family's default recipe.
    default_minutes: ClassVar[float] = 2.0
    # A helper network other families train with (the classifier), listed apart by `dgm list`.
    helper: ClassVar[bool] = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.step = 0

    @classmethod
    def for_data(cls, data, options: dict[str, Any] | None = None) -> GenerativeModel:
        """A freshly initialised model for a dataset: `options` (model config fields) plus the fields the data fixes
        (channels, size, classes; unpaired data also B's channels). Seed torch first for reproducible weights."""
        fields = data.model_fields()
        extra = sorted(set(fields) - {f.name for f in dataclasses.fields(cls.Config)})
        if extra:
            raise ValueError(f"dataset {data.name!r} needs a model with {', '.join(extra)} "
                             f"(e.g. cyclegan for unpaired data); {cls.family} has none")
        return cls(config_from_dict(cls.Config, {**(options or {}), **fields}))

    # -- what a model can do ---------------------------------------------------------------------------------
    def capabilities(self) -> frozenset[str]:
        """The abilities this model has, from its class and config only (never its weights), so the studio can ask a
        model built on the meta device. A family overrides this only to take an ability away for some configs."""
        cls = type(self)
        have = {name for name in ABILITIES if getattr(cls, name) is not getattr(GenerativeModel, name)}
        if "sample" in have and self.conditional:
            have.add("conditional")
        if "sample" in have and cls.sample_trajectory:
            have.add("trajectory")
        return frozenset(have)

    @property
    def conditional(self) -> bool:
        """Does `sample(cond=...)` steer to a class? Needs a config flag *and* classes: the Trainer fills
        `num_classes` from every labelled dataset, also for unconditional models."""
        return bool(getattr(self.config, "conditional", False)) and int(self.config.num_classes or 0) > 0

    # -- what the Trainer uses -------------------------------------------------------------------------------
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor | None], phase: str) -> dict[str, torch.Tensor]:
        """batch = (x uint8 (B, C, H, W), y int64 (B,) or None) on the model's device. Must return {"loss": ...};
        the other entries are logged under "<phase>/<name>" (dgm.train.log_key)."""
        raise NotImplementedError

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def phase_options(self, phase: str) -> dict[str, Any]:
        """Optimiser overrides for a phase, e.g. {"lr": 4e-4}, or {"lr_scale": 2.0} to multiply the train lr; empty
        means the train config's values."""
        return {}

    def prepare_training(self, data, *, classifier: GenerativeModel | None = None) -> None:
        """Called once before a fresh (not resumed) run: check the data, load frozen helpers. `classifier` is the
        cached classifier that `needs_classifier` asked for (the caller fetches it; models never train one)."""

    def needs_classifier(self, data) -> str | None:
        """The dataset name (or a classifier's run folder) of a frozen classifier this model trains with, or None."""
        return None

    def preview(self, batch, generator: torch.Generator) -> torch.Tensor:
        """Images for the periodic grid during training (default: samples from fixed noise)."""
        return self.sample(min(64, batch[0].shape[0]), generator=generator)

    # -- abilities (override the ones the family has) ---------------------------------------------------------
    def sample(self, n: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, C, H, W) float in [0, 1]; `cond` (n,) class labels for a conditional model."""
        raise NotImplementedError(f"a {self.family} model does not sample")

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, latent_dim): the code (AE) or the posterior mean (VAE)."""
        raise NotImplementedError(f"a {self.family} model has no encoder")

    def posterior(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) in [0, 1] -> (mu, logvar) of a diagonal Gaussian q(z|x), each (B, latent_dim)."""
        raise NotImplementedError(f"a {self.family} model has no posterior")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, C, H, W) in [0, 1]."""
        raise NotImplementedError(f"a {self.family} model has no decoder")

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, latent_dim) codes that `decode` turns into samples (default: the standard normal prior)."""
        return randn((n, self.config.latent_dim), generator, self.device)

    def latent_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (each (latent_dim,)) of the codes `sample_latent` draws: the prior's 0 and 1
        by default; traversals and the studio's sliders span mean +- a few std."""
        d = self.config.latent_dim
        return torch.zeros(d, device=self.device), torch.ones(d, device=self.device)

    def reconstruct(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> its reconstruction, same shape and range."""
        raise NotImplementedError(f"a {self.family} model does not reconstruct")

    def translate(self, x01: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        """Images of one domain in [0, 1] -> the other domain's ("AtoB" or "BtoA")."""
        raise NotImplementedError(f"a {self.family} model does not translate")

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example evidence lower bound in nats (B,), on data prepared as the likelihood expects."""
        raise NotImplementedError(f"a {self.family} model has no ELBO")

    def nll(self, x: torch.Tensor, k: int = 5000) -> torch.Tensor:
        """Per-example estimate of -log p(x) in nats (B,)."""
        raise NotImplementedError(f"a {self.family} model has no likelihood")

    def bits_per_dim(self, x_uint8: torch.Tensor, **options) -> torch.Tensor:
        """Per-example negative log-likelihood bound in bits per dimension (B,)."""
        raise NotImplementedError(f"a {self.family} model has no likelihood")

    # -- helpers -----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise that is the same for a seeded CPU generator whatever the model's device."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)
