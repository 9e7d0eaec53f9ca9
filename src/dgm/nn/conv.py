"""Convolutional encoder/decoder for any image size, and an MLP pair, shared by the AE and VAE families."""
from __future__ import annotations

import math

import torch
from torch import nn


def down_sizes(size: int, n: int) -> list[int]:
    """Spatial sizes after each of n stride-2 convs (k=3, p=1 gives ceil(s / 2)): 28 -> [28, 14, 7]."""
    sizes = [size]
    for _ in range(n):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim). Stride-2 3x3 convs, one per entry of `channels`, then a linear head."""

    def __init__(self, in_ch: int, size: int, channels: tuple[int, ...], out_dim: int, hidden: int = 256):
        super().__init__()
        layers, c = [], in_ch
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 3, stride=2, padding=1), nn.SiLU()]
            c = ch
        self.convs = nn.Sequential(*layers)
        s = down_sizes(size, len(channels))[-1]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, x):
        return self.head(self.convs(x))


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits. Mirrors ConvEncoder; each transposed conv exactly undoes one ceil-halving."""

    def __init__(self, in_dim: int, out_ch: int, size: int, channels: tuple[int, ...], hidden: int = 256):
        super().__init__()
        sizes = down_sizes(size, len(channels))  # e.g. [28, 14, 7]
        rev = list(reversed(channels))            # widest first
        self.start = (rev[0], sizes[-1], sizes[-1])
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(),
                                nn.Linear(hidden, rev[0] * sizes[-1] ** 2), nn.SiLU())
        layers = []
        outs = rev[1:] + [out_ch]
        for i, (cin, cout) in enumerate(zip(rev, outs)):
            s_in, s_out = sizes[-1 - i], sizes[-2 - i]
            # k=4 doubles exactly; k=3 gives 2s - 1 for odd targets (e.g. 15 from 8).
            k = 4 if s_out == 2 * s_in else 3
            layers.append(nn.ConvTranspose2d(cin, cout, k, stride=2, padding=1))
            if i < len(rev) - 1:
                layers.append(nn.SiLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z):
        return self.deconvs(self.fc(z).view(-1, *self.start))


class MLPEncoder(nn.Module):
    def __init__(self, in_ch: int, size: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        dims = [in_ch * size * size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class MLPDecoder(nn.Module):
    def __init__(self, in_dim: int, out_ch: int, size: int, hidden: tuple[int, ...]):
        super().__init__()
        dims = [in_dim, *reversed(hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(dims[-1], out_ch * size * size))
        self.net = nn.Sequential(*layers)
        self.shape = (out_ch, size, size)

    def forward(self, z):
        return self.net(z).view(-1, *self.shape)


def make_encoder_decoder(arch: str, channels_in: int, size: int, conv_channels: tuple[int, ...],
                         mlp_hidden: tuple[int, ...], enc_out: int, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    """The encoder maps to `enc_out` numbers (latent_dim for an AE, 2 * latent_dim for a Gaussian encoder)."""
    if arch == "conv":
        return (ConvEncoder(channels_in, size, conv_channels, enc_out),
                ConvDecoder(latent_dim, channels_in, size, conv_channels))
    if arch == "mlp":
        return (MLPEncoder(channels_in, size, mlp_hidden, enc_out),
                MLPDecoder(latent_dim, channels_in, size, mlp_hidden))
    raise ValueError(f"arch must be 'conv' or 'mlp', got {arch!r}")
