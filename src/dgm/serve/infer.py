"""The studio's inference: plain functions on a loaded model, each under `torch.inference_mode`, chosen by capability.

The web layer checks the request's ranges; these functions check what depends on the model (latent size, classes).
"""
from __future__ import annotations

from typing import Any

import torch

from dgm.models.base import randn
from dgm.serve.runs import StudioError, trajectory_arg


def generator(seed: int) -> torch.Generator:
    # A CPU generator: the same seed gives the same picture on any device (dgm.models.base.randn).
    return torch.Generator().manual_seed(int(seed))


def prior_latent(model, n: int, seed: int) -> torch.Tensor:
    """(n, latent_dim) latent codes as the model's own sampler would draw them for this seed.

    A family may say how (`sample_latent(n, generator=)`); an AE draws from the Gaussian fitted to its codes
    (`code_mean`, `code_var`); otherwise N(0, I), the prior of a VAE or a GAN.
    """
    g = generator(seed)
    if hasattr(model, "sample_latent"):
        return model.sample_latent(n, generator=g)
    eps = randn((n, model.config.latent_dim), g, model.device)
    if hasattr(model, "code_mean") and hasattr(model, "code_var"):
        return model.code_mean + eps * model.code_var.clamp_min(0).sqrt()
    return eps


def _as_images(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise StudioError(500, f"the model returned {type(out).__name__}, not an image batch (N, C, H, W)")
    return out.float().cpu()


@torch.inference_mode()
def sample(model, n: int, seed: int, label: int | None = None, options: dict[str, Any] | None = None,
           trajectory: bool = False, conditional: bool = False) -> dict[str, Any]:
    """n samples for a seed; with `trajectory` also the intermediate images (a list of (n, C, H, W)) when the
    family's sampler can return them."""
    kw = dict(options or {})
    if conditional:
        if label is None:  # a random class per image, from the same seed
            cond = torch.randint(model.config.num_classes, (n,), generator=generator(seed + 1))
        else:
            cond = torch.full((n,), int(label), dtype=torch.long)
        kw["cond"] = cond.to(model.device)
    steps = None
    targ = trajectory_arg(type(model)) if trajectory else None
    if targ == "callback":
        frames = []

        def keep(*args):  # the first image batch among the callback's arguments is the current x_t
            x = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4), None)
            if x is not None:
                frames.append(x.detach().float().cpu().clone())
        images, steps = _split_trajectory((model.sample(n, generator=generator(seed), callback=keep, **kw), frames))
    elif targ:
        out = model.sample(n, generator=generator(seed), **kw, **{targ: True})
        images, steps = _split_trajectory(out)
    else:
        images = _as_images(model.sample(n, generator=generator(seed), **kw))
    cond = kw.get("cond")
    return {"images": images, "steps": steps, "labels": None if cond is None else cond.cpu().tolist()}


def _split_trajectory(out: Any) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """(images, trajectory) where the family returned a pair; the trajectory may be a list of (n, C, H, W) or one
    (T, n, C, H, W) tensor, in [0, 1] or [-1, 1]."""
    if isinstance(out, (tuple, list)) and len(out) == 2:
        images, traj = out
        if isinstance(traj, torch.Tensor) and traj.dim() == 5:
            traj = list(traj)
        if isinstance(traj, (list, tuple)) and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in traj):
            steps = [t.float().cpu() for t in traj]
            # Families that work in [-1, 1] (GAN, diffusion) hand back [-1, 1] intermediates; show them in [0, 1].
            if steps and min(float(t.min()) for t in steps) < -0.01:
                steps = [(t + 1) / 2 for t in steps]
            return _as_images(images), [t.clamp(0, 1) for t in steps]
    if isinstance(out, dict) and "images" in out:
        return _split_trajectory((out["images"], out.get("trajectory", out.get("steps"))))
    return _as_images(out), None


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
    import inspect
    try:
        return "cond" in inspect.signature(model.decode).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def decode(model, z: torch.Tensor, label: int | None = None) -> torch.Tensor:
    """z (N, latent_dim) -> images; a conditional decoder (e.g. a conditional GAN's) also gets the class `label`."""
    z = check_latent(model, z).to(model.device, torch.float32)
    if label is not None and _decode_takes_cond(model):
        return _as_images(model.decode(z, cond=torch.full((len(z),), int(label), dtype=torch.long,
                                                          device=model.device)))
    return _as_images(model.decode(z))


@torch.inference_mode()
def encode(model, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, latent_dim): the posterior mean for a VAE, the code for an AE."""
    out = model.encode(x.to(model.device))
    return (out[0] if isinstance(out, tuple) else out).float().cpu()


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
