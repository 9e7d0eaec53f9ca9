"""dgm: deep generative models as a lecture teaches them (AE, VAE, beta-VAE, GAN, CycleGAN, diffusion).

    import dgm
    model = dgm.load("runs/vae_digits")      # any saved run
    x = model.sample(16)                     # (16, C, H, W) in [0, 1]
"""
__version__ = "0.1.0"

from dgm.registry import get_family, families, register  # noqa: E402
from dgm.io import load, save  # noqa: E402

__all__ = ["load", "save", "register", "get_family", "families", "__version__"]
