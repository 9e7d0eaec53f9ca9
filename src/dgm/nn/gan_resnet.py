"""Residual generator and discriminator for small GANs (28 / 32 / 64 px): `arch=resnet`.

The layout is the pre-activation ResNet GAN of Miyato et al. 2018 (SNGAN, appendix B.4, after Gulrajani et al.
2017): G maps z linearly to a (ch, s0, s0) map and doubles the size in each up block; D halves it in each down block,
adds one block at the smallest size, and sums its features over space. Blocks:

  G up block:    h = conv3x3(ReLU(norm(conv3x3(up2(ReLU(norm(x))))))),   out = h + up2(conv1x1(x))
  D down block:  h = avgpool2(conv3x3(LReLU(norm(conv3x3(LReLU(x)))))),  out = h + conv1x1(avgpool2(x))

(up2: nearest-neighbour x2; the shortcut's 1x1 conv commutes exactly with up2 / avgpool2, so it runs at the smaller
size; D's first block skips the leading activation, since its input is the image). Initialisation as in R3GAN
(Huang et al. 2024, sec. 4, after Fixup, Zhang et al. 2019): Kaiming-normal convolutions and a zero last conv in each
residual branch, so every block starts as its shortcut and the nets train without normalisation or spectral norm
when R1 / R2 regularise D.

Channels per size (width w, 28 px): G 2w x 7x7 -> w x 14x14 -> w/2 x 28x28 -> C; D C -> w x 14x14 -> 2w x 7x7 (x2
blocks) -> 2w features. Like the DCGAN bodies in dgm.nn.dcgan, D returns features (B, out_dim); the GAN adds the head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dgm.nn.dcgan import dcgan_levels, norm_layer


def _kaiming(conv: nn.Conv2d, slope: float) -> None:
    nn.init.kaiming_normal_(conv.weight, a=slope, nonlinearity="leaky_relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _zero(conv: nn.Conv2d) -> None:
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class GBlock(nn.Module):
    """Pre-activation residual block that doubles the size: (B, cin, s, s) -> (B, cout, 2s, 2s)."""

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__()
        self.n1 = norm_layer(norm, cin)
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=norm == "none")
        self.n2 = norm_layer(norm, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.sc = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        _kaiming(self.c1, 0.0)
        _zero(self.c2)
        if isinstance(self.sc, nn.Conv2d):
            _kaiming(self.sc, 1.0)  # gain 1: a linear shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.n1(x)), scale_factor=2, mode="nearest")
        h = self.c2(F.relu(self.n2(self.c1(h))))
        return h + F.interpolate(self.sc(x), scale_factor=2, mode="nearest")


class DBlock(nn.Module):
    """Pre-activation residual block, halving the size when `down`: (B, cin, s, s) -> (B, cout, s/2, s/2)."""

    def __init__(self, cin: int, cout: int, down: bool = True, first: bool = False, norm: str = "none",
                 slope: float = 0.2):
        super().__init__()
        self.down, self.first, self.slope = down, first, slope
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=norm == "none")
        self.n1 = norm_layer(norm, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.sc = nn.Conv2d(cin, cout, 1) if (cin != cout or first) else nn.Identity()
        _kaiming(self.c1, slope)
        _zero(self.c2)
        if isinstance(self.sc, nn.Conv2d):
            _kaiming(self.sc, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.leaky_relu(x, self.slope)
        h = self.c2(F.leaky_relu(self.n1(self.c1(h)), self.slope))
        s = x
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + self.sc(s)


def resnet_channels(size: int, width: int) -> tuple[int, int, list[int]]:
    """(s0, k, G's channels from s0 up to the full size): 28 px, width 32 -> (7, 2, [64, 32, 16])."""
    s0, k = dcgan_levels(size)
    return s0, k, [width * 2 ** (k - 1 - i) for i in range(k)] + [max(1, width // 2)]


class ResNetGenerator(nn.Module):
    """(B, in_dim) -> (B, C, H, W) in [-1, 1]: linear to (ch[0], s0, s0), k up blocks, norm, ReLU, conv3x3, Tanh."""

    def __init__(self, in_dim: int, out_ch: int, size: int, width: int = 32, norm: str = "batch"):
        super().__init__()
        s0, k, ch = resnet_channels(size, width)
        self.s0, self.c0 = s0, ch[0]
        self.fc = nn.Linear(in_dim, ch[0] * s0 * s0)
        nn.init.kaiming_normal_(self.fc.weight, nonlinearity="linear")
        nn.init.zeros_(self.fc.bias)
        self.blocks = nn.Sequential(*[GBlock(a, b, norm) for a, b in zip(ch[:-1], ch[1:])])
        self.out_norm = norm_layer(norm, ch[-1])
        self.out = nn.Conv2d(ch[-1], out_ch, 3, 1, 1)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.fc(z).view(-1, self.c0, self.s0, self.s0))
        return torch.tanh(self.out(F.relu(self.out_norm(h))))


class ResNetDiscriminator(nn.Module):
    """(B, C, H, W) -> features (B, out_dim): k down blocks (channels width, 2 width, ...), one more block at the
    smallest size, LeakyReLU, sum over space (SNGAN's global sum pooling)."""

    def __init__(self, in_ch: int, size: int, width: int = 32, norm: str = "none", slope: float = 0.2):
        super().__init__()
        s0, k, _ = resnet_channels(size, width)
        ch = [width * 2 ** i for i in range(k)]
        blocks = [DBlock(in_ch, ch[0], down=True, first=True, norm=norm, slope=slope)]
        blocks += [DBlock(a, b, down=True, norm=norm, slope=slope) for a, b in zip(ch[:-1], ch[1:])]
        blocks.append(DBlock(ch[-1], ch[-1], down=False, norm=norm, slope=slope))
        self.blocks = nn.Sequential(*blocks)
        self.slope = slope
        self.out_dim = ch[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.blocks(x), self.slope).sum((2, 3))
