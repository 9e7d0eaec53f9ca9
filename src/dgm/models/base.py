"""The contract every family keeps (see docs/ARCHITECTURE.md).

The Trainer only ever calls `loss(batch, phase)` for each phase in `phases`, takes parameters from
`phase_parameters(phase)` and per-phase optimiser overrides from `phase_options(phase)`, and sets `self.step`
(the global step, an int) before each call. Nothing in the Trainer branches on the family's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


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

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.step = 0

    # -- what the Trainer uses -------------------------------------------------------------------------------
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor | None], phase: str) -> dict[str, torch.Tensor]:
        """batch = (x uint8 (B, C, H, W), y int64 (B,) or None) on the model's device. Must return {"loss": ...}."""
        raise NotImplementedError

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def phase_options(self, phase: str) -> dict[str, Any]:
        """Optimiser overrides for a phase, e.g. {"lr": 4e-4}; empty means the train config's values."""
        return {}

    # -- what users and figures use ---------------------------------------------------------------------------
    def sample(self, n: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, C, H, W) float in [0, 1]."""
        raise NotImplementedError

    def preview(self, batch, generator: torch.Generator) -> torch.Tensor:
        """Images for the periodic grid during training (default: samples from fixed noise)."""
        return self.sample(min(64, batch[0].shape[0]), generator=generator)

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
