"""Convolutional encoder/decoder for any image size, and an MLP pair, shared by the AE and VAE families."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def down_sizes(size: int, n: int) -> list[int]:
    """Spatial sizes after each of n stride-2 convs (k=3, p=1 gives ceil(s / 2)): 28 -> [28, 14, 7]."""
    sizes = [size]
    for _ in range(n):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


GEMM_MAX_SIZE = 8  # gemm=True: layers whose output is at most 8x8 run as one matrix product


def conv_out(size: int, kernel: int) -> int:
    """Spatial size after a stride-2, padding-1 conv: (s + 2 - k) // 2 + 1 (k=3: ceil(s / 2), k=4: floor(s / 2))."""
    return (size + 2 - kernel) // 2 + 1


def _act(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"conv_act must be 'silu' or 'relu', got {name!r}")


def _norm(name: str, ch: int) -> list[nn.Module]:
    if name == "none":
        return []
    if name == "batch":
        return [nn.BatchNorm2d(ch)]
    raise ValueError(f"conv_norm must be 'none' or 'batch', got {name!r}")


class GemmConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters) computed as one matrix product over im2col patches: y = W (B, Cin k k, L) patches.
    For small outputs (a few positions, many channels) this is a plain GEMM, which bf16 autocast runs on the CPU's
    matrix units, while the direct convolution's backward is up to ~7x slower there (benchmarks/compare: 512 -> 1024
    channels, 3x3 -> 1x1). Same results up to float rounding. groups = dilation = 1 only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            raise ValueError("GemmConv2d supports groups=1, dilation=1, zero padding only")

    def forward(self, x):
        b, _, h, w = x.shape
        (k1, k2), (s1, s2), (p1, p2) = self.kernel_size, self.stride, self.padding
        ho, wo = (h + 2 * p1 - k1) // s1 + 1, (w + 2 * p2 - k2) // s2 + 1
        if ho == wo == 1:  # one output position: a linear map of the top-left k1 x k2 window of the padded input
            win = F.pad(x, (p2, p2, p1, p1))[:, :, :k1, :k2]  # no im2col, and no col2im in the backward
            return F.linear(win.flatten(1), self.weight.flatten(1), self.bias).view(b, -1, 1, 1)
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (B, Cin k k, L)
        y = torch.matmul(self.weight.flatten(1), cols)                                  # (B, Cout, L)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view(b, -1, ho, wo)


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters) as one matrix product then col2im: cols = W^T x (B, Cout k k, H W), folded
    (overlaps summed) into the output. The GEMM twin of GemmConv2d, used where the output is small."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1):
            raise ValueError("GemmConvTranspose2d supports groups=1, dilation=1 only")

    def forward(self, x):
        b, _, h, w = x.shape
        (k1, k2), (s1, s2), (p1, p2) = self.kernel_size, self.stride, self.padding
        op1, op2 = self.output_padding
        ho, wo = (h - 1) * s1 - 2 * p1 + k1 + op1, (w - 1) * s2 - 2 * p2 + k2 + op2
        cols = torch.matmul(self.weight.flatten(1).t(), x.flatten(2))                  # (B, Cout k k, H W)
        # fold onto the padded canvas, then crop the padding (output_padding adds rows/columns at the far end)
        y = F.fold(cols, (ho + 2 * p1, wo + 2 * p2), self.kernel_size, stride=self.stride)  # (h-1)s + k + op
        y = y[:, :, p1:p1 + ho, p2:p2 + wo]
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim). Stride-2 convs (kernel 3 by default), one per entry of `channels`, each followed by
    an optional BatchNorm and the activation, then a linear head (through a `hidden`-unit layer; hidden=0: one linear
    map, as in pythae's benchmark nets)."""

    def __init__(self, in_ch: int, size: int, channels: tuple[int, ...], out_dim: int, hidden: int = 256,
                 kernel: int = 3, norm: str = "none", act: str = "silu", gemm: bool = False):
        super().__init__()
        if kernel not in (3, 4):
            raise ValueError(f"conv_kernel must be 3 or 4, got {kernel}")
        layers, c, s = [], in_ch, size
        for ch in channels:
            conv = GemmConv2d if gemm and conv_out(s, kernel) <= GEMM_MAX_SIZE else nn.Conv2d
            layers += [conv(c, ch, kernel, stride=2, padding=1), *_norm(norm, ch), _act(act)]
            c, s = ch, conv_out(s, kernel)
            if s < 1:
                raise ValueError(f"{len(channels)} stride-2 convs with kernel {kernel} shrink {size}px images to nothing")
        self.convs = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        head += [nn.Linear(c * s * s, hidden), _act(act), nn.Linear(hidden, out_dim)] if hidden else \
            [nn.Linear(c * s * s, out_dim)]
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.convs(x))


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits. Mirrors ConvEncoder: one transposed conv per entry of `channels` (widest
    first), each exactly undoing one ceil-halving. kernel=0: k=4 where the size doubles, else 3; kernel=3: always 3, with
    output_padding 1 where the size doubles (pythae's MNIST nets). hidden=0: a single linear map from z, no activation."""

    def __init__(self, in_dim: int, out_ch: int, size: int, channels: tuple[int, ...], hidden: int = 256,
                 kernel: int = 0, norm: str = "none", act: str = "silu", gemm: bool = False):
        super().__init__()
        if kernel not in (0, 3):
            raise ValueError(f"deconv_kernel must be 0 (automatic) or 3, got {kernel}")
        sizes = down_sizes(size, len(channels))  # e.g. [28, 14, 7]
        rev = list(reversed(channels))            # widest first
        self.start = (rev[0], sizes[-1], sizes[-1])
        flat = rev[0] * sizes[-1] ** 2
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), _act(act), nn.Linear(hidden, flat), _act(act)) if hidden \
            else nn.Linear(in_dim, flat)
        layers = []
        outs = rev[1:] + [out_ch]
        for i, (cin, cout) in enumerate(zip(rev, outs)):
            s_in, s_out = sizes[-1 - i], sizes[-2 - i]
            deconv = GemmConvTranspose2d if gemm and s_out <= GEMM_MAX_SIZE else nn.ConvTranspose2d
            if kernel == 3:  # (s_in - 1) * 2 - 2 + 3 + op = 2 s_in - 1 + op
                layers.append(deconv(cin, cout, 3, stride=2, padding=1, output_padding=s_out - 2 * s_in + 1))
            else:
                # k=4 doubles exactly; k=3 gives 2s - 1 for odd targets (e.g. 15 from 8).
                k = 4 if s_out == 2 * s_in else 3
                layers.append(deconv(cin, cout, k, stride=2, padding=1))
            if i < len(rev) - 1:
                layers += [*_norm(norm, cout), _act(act)]
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
                         mlp_hidden: tuple[int, ...], enc_out: int, latent_dim: int, *, conv_kernel: int = 3,
                         deconv_kernel: int = 0, conv_norm: str = "none", conv_act: str = "silu", conv_hidden: int = 256,
                         decoder_channels: tuple[int, ...] = (), conv_gemm: bool = False) -> tuple[nn.Module, nn.Module]:
    """The encoder maps to `enc_out` numbers (latent_dim for an AE, 2 * latent_dim for a Gaussian encoder).
    The conv_* options shape the conv nets (defaults: dgm's own); `decoder_channels` () mirrors `conv_channels`.
    pythae's MNIST benchmark nets: conv_channels (128, 256, 512, 1024), conv_kernel 4, deconv_kernel 3, conv_norm "batch",
    conv_act "relu", conv_hidden 0, decoder_channels (256, 512, 1024). conv_gemm: compute the convolutions with outputs of
    at most 8x8 as matrix products (GemmConv2d; same parameters and results, faster under bf16 on CPUs)."""
    if arch == "conv":
        return (ConvEncoder(channels_in, size, conv_channels, enc_out, conv_hidden, conv_kernel, conv_norm, conv_act,
                            conv_gemm),
                ConvDecoder(latent_dim, channels_in, size, tuple(decoder_channels) or conv_channels, conv_hidden,
                            deconv_kernel, conv_norm, conv_act, conv_gemm))
    if arch == "mlp":
        return (MLPEncoder(channels_in, size, mlp_hidden, enc_out),
                MLPDecoder(latent_dim, channels_in, size, mlp_hidden))
    raise ValueError(f"arch must be 'conv' or 'mlp', got {arch!r}")
