"""dgm: deep generative models as a lecture teaches them (AE, VAE, beta-VAE, GAN, CycleGAN, diffusion).

    import dgm
    model = dgm.load("runs/vae_mnist-mini")  # any saved run
    x = model.sample(16)                     # (16, C, H, W) in [0, 1]
"""
__version__ = "0.1.0"

import os as _os

# OpenMP threads that wait for work sleep instead of spinning (unless the user chose otherwise): on a 2-core machine
# spinning made two threads slower than one, idle (12.8 s against 8.0 s for 60 VAE steps) and far more beside other
# work (28.8 s against 15.1 s); passive waiting gave 7.1 s and 11.8 s (benchmarks/threads.py). OpenMP reads it when
# torch loads, so it counts when dgm is imported before torch.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dgm.registry import get_family, families, register  # noqa: E402
from dgm.io import load, save  # noqa: E402

__all__ = ["load", "save", "register", "get_family", "families", "__version__"]
