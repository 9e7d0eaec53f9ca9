"""The studio's inference: plain functions on a loaded model, each under `torch.inference_mode`, chosen by the run's
capabilities (dgm.serve.caps), never by probing the model.

The web layer checks the request's ranges; these functions check what depends on the model (latent size, classes).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from dgm.serve.runs import StudioError


def generator(seed: int) -> torch.Generator:
    # A CPU generator: the same seed gives the same picture on any device (dgm.models.base.randn).
    return torch.Generator().manual_seed(int(seed))


def prior_latent(model, n: int, seed: int) -> torch.Tensor:
    """(n, latent_dim) codes as the model's own sampler draws them for this seed (`sample_latent`: the prior of a VAE
    or a GAN, the Gaussian fitted to an AE's codes)."""
    return model.sample_latent(n, generator=generator(seed))


def _as_images(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise StudioError(500, f"the model returned {type(out).__name__}, not an image batch (N, C, H, W)")
    return out.float().cpu()


def class_labels(model, n: int, seed: int, label: int | None) -> torch.Tensor:
    """n class labels: `label` for all, or a random class per image drawn from the same seed."""
    if label is None:
        return torch.randint(model.config.num_classes, (n,), generator=generator(seed + 1))
    return torch.full((n,), int(label), dtype=torch.long)


@torch.inference_mode()
def sample(model, n: int, seed: int, label: int | None = None, options: dict[str, Any] | None = None,
           trajectory: bool = False, conditional: bool = False) -> dict[str, Any]:
    """n samples for a seed; with `trajectory` (the "trajectory" ability: `sample(callback=fn)` calls
    fn(i, t, x_t, x0_hat) at every step) also the intermediate images x_t, a list of (n, C, H, W) in [0, 1]."""
    kw = dict(options or {})
    if conditional:
        kw["cond"] = class_labels(model, n, seed, label).to(model.device)
    frames: list[torch.Tensor] = []
    if trajectory:
        kw["callback"] = lambda i, t, x_t, x0_hat: frames.append(x_t.detach().float().cpu().clone())
    images = _as_images(model.sample(n, generator=generator(seed), **kw))
    cond = kw.get("cond")
    return {"images": images, "steps": _unit_range(frames) if frames else None,
            "labels": None if cond is None else cond.cpu().tolist()}


def _unit_range(steps: list[torch.Tensor]) -> list[torch.Tensor]:
    # Samplers that work in [-1, 1] (diffusion) hand back [-1, 1] intermediates; show them in [0, 1].
    if min(float(t.min()) for t in steps) < -0.01:
        steps = [(t + 1) / 2 for t in steps]
    return [t.clamp(0, 1) for t in steps]


def pick_steps(steps: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """At most k frames of a trajectory, evenly spaced, always keeping the first and the last."""
    if len(steps) <= k:
        return steps
    idx = torch.linspace(0, len(steps) - 1, k).round().long().tolist()
    return [steps[i] for i in idx]


def check_latent(model, z: torch.Tensor) -> torch.Tensor:
    d = model.config.latent_dim
    if z.dim() == 1:
        z = z.unsqueeze(0)
    if z.dim() != 2 or z.shape[1] != d:
        raise StudioError(422, f"z must have {d} numbers per code (this model's latent_dim), got shape "
                               f"{list(z.shape)}")
    return z


def _decode_takes_cond(model) -> bool:
    """A conditional decoder's option list (e.g. a conditional GAN's `decode(z, cond)`), read like `sample`'s."""
    try:
        return "cond" in inspect.signature(model.decode).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def decode(model, z: torch.Tensor, label: int | None = None) -> torch.Tensor:
    """z (N, latent_dim) -> images; a conditional decoder also gets the class `label`."""
    z = check_latent(model, z).to(model.device, torch.float32)
    if label is not None and _decode_takes_cond(model):
        return _as_images(model.decode(z, cond=torch.full((len(z),), int(label), dtype=torch.long,
                                                          device=model.device)))
    return _as_images(model.decode(z))


@torch.inference_mode()
def encode(model, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, latent_dim): the posterior mean for a VAE, the code for an AE."""
    return model.encode(x.to(model.device)).float().cpu()


@torch.inference_mode()
def reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    return _as_images(model.reconstruct(x.to(model.device)))


@torch.inference_mode()
def translate(model, x: torch.Tensor, direction: str) -> torch.Tensor:
    return _as_images(model.translate(x.to(model.device), direction=direction))


@torch.inference_mode()
def interpolate(model, za: torch.Tensor, zb: torch.Tensor, steps: int, label: int | None = None) -> torch.Tensor:
    """A straight line from za to zb in latent space, `steps` points including both ends -> (steps, C, H, W)."""
    za, zb = check_latent(model, za)[:1], check_latent(model, zb)[:1]
    t = torch.linspace(0, 1, steps).view(steps, 1)
    return decode(model, za * (1 - t) + zb * t, label)
