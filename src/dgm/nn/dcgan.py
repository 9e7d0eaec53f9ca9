"""Generator / discriminator bodies for GANs: DCGAN (Radford et al. 2016) and the MLP of Goodfellow et al. 2014.

DCGAN guidelines (Radford et al. 2016, sec. 3): strided convolutions instead of pooling, BatchNorm in both nets except
the generator's output and the discriminator's input, ReLU in G with Tanh at the output, LeakyReLU(0.2) in D, and
weights drawn from N(0, 0.02). Discriminator bodies return a flat feature vector (B, out_dim); the GAN puts the
scalar head (and the class projection, if conditional) on top, so one head serves both architectures.
"""
from __future__ import annotations

import torch
from torch import nn


def dcgan_levels(size: int) -> tuple[int, int]:
    """(start size s0, number of stride-2 levels k) with s0 * 2**k == size and 3 <= s0 <= 7: 28 -> (7, 2),
    32 -> (4, 3), 64 -> (4, 4)."""
    s, k = size, 0
    while s % 2 == 0 and s // 2 >= 4:
        s, k = s // 2, k + 1
    if k == 0 or s > 7:
        raise ValueError(f"DCGAN needs an image size of s0 * 2^k with s0 in 3..7 and k >= 1 (e.g. 28, 32, 64), "
                         f"got {size}; use --image-size or arch=mlp")
    return s, k


def norm_layer(kind: str, ch: int, dim: int = 2) -> nn.Module:
    """'batch' (BatchNorm), 'layer' (LayerNorm over all features: GroupNorm with one group), or 'none'."""
    if kind == "batch":
        return nn.BatchNorm2d(ch) if dim == 2 else nn.BatchNorm1d(ch)
    if kind == "layer":
        return nn.GroupNorm(1, ch) if dim == 2 else nn.LayerNorm(ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {kind!r}")


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2016: all weights from N(0, 0.02); normalisation scales from N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def kaiming_init(module: nn.Module, slope: float = 0.2) -> None:
    """He et al. 2015 (fan-in, for LeakyReLU(slope)) for every conv / linear layer, biases 0: keeps the signal's scale
    through a discriminator without normalisation, where N(0, 0.02) shrinks it at every layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """(B, in_dim) -> (B, C, H, W) in [-1, 1]. z is projected to (width * 2^(k-1), s0, s0) by a transposed conv with
    kernel s0 (a linear layer on a 1x1 map), then k stride-2 transposed convs (kernel 4) double the size while
    halving the channels: 28 px, width 64: 100 -> 128x7x7 -> 64x14x14 -> Cx28x28."""

    def __init__(self, in_dim: int, out_ch: int, size: int, width: int = 64, norm: str = "batch"):
        super().__init__()
        s0, k = dcgan_levels(size)
        chans = [width * 2 ** i for i in reversed(range(k))]  # widest first, e.g. [128, 64]
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, chans[0], s0, 1, 0, bias=norm == "none"),
                                   norm_layer(norm, chans[0]), nn.ReLU(True)]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=norm == "none"), norm_layer(norm, b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chans[-1], out_ch, 4, 2, 1), nn.Tanh()]  # no norm at G's output
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """(B, C, H, W) -> features (B, out_dim): k stride-2 convs (kernel 4) doubling channels from `width`, LeakyReLU 0.2,
    no normalisation on the first (input) layer. 28 px, width 64: Cx28x28 -> 64x14x14 -> 128x7x7 -> 6272."""

    def __init__(self, in_ch: int, size: int, width: int = 64, norm: str = "batch"):
        super().__init__()
        s0, k = dcgan_levels(size)
        chans = [width * 2 ** i for i in range(k)]
        layers: list[nn.Module] = [nn.Conv2d(in_ch, chans[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=norm == "none"), norm_layer(norm, b), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = chans[-1] * s0 * s0
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPGenerator(nn.Module):
    """Goodfellow et al. 2014's fully connected generator (ReLU hidden layers; Tanh output for data in [-1, 1])."""

    def __init__(self, in_dim: int, out_ch: int, size: int, hidden: tuple[int, ...] = (256, 512, 1024),
                 norm: str = "none"):
        super().__init__()
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), norm_layer(norm, b, dim=1), nn.ReLU(True)]
        layers += [nn.Linear(dims[-1], out_ch * size * size), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.shape = (out_ch, size, size)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    """Fully connected discriminator body (Goodfellow et al. 2014 used maxout units and dropout; LeakyReLU 0.2 here,
    dropout optional). (B, C, H, W) -> (B, hidden[-1])."""

    def __init__(self, in_ch: int, size: int, hidden: tuple[int, ...] = (1024, 512, 256), norm: str = "none",
                 dropout: float = 0.0):
        super().__init__()
        dims = [in_ch * size * size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [nn.Linear(a, b), norm_layer(norm if i else "none", b, dim=1), nn.LeakyReLU(0.2, True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
