"""Image-to-image blocks: the ResNet generator and the PatchGAN discriminator that CycleGAN uses.

Both follow Zhu et al. 2017 (appendix 7.2), who take the generator from Johnson et al. 2016 and the discriminator
from Isola et al. 2017 (pix2pix). Instance normalisation (Ulyanov et al. 2016) throughout, no affine parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """N(0, 0.02) weights and zero biases for every conv, as in the CycleGAN paper's code."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResnetBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, IN, ReLU, reflect-pad, 3x3 conv, IN)(x); shape-preserving (B, ch, h, w)."""

    def __init__(self, ch: int):
        super().__init__()
        # No bias: instance norm removes any per-channel constant anyway.
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False), nn.InstanceNorm2d(ch),
                                  nn.ReLU(inplace=True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False), nn.InstanceNorm2d(ch))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(B, in_ch, H, W) in [-1, 1] -> (B, out_ch, H, W) in [-1, 1], for any H, W >= 8.

    Layout (Zhu et al. 2017, 7.2, with w = width and n = blocks): c7s1-w, d2w, d4w, n x R4w, u2w, uw, c7s1-out_ch,
    tanh. The paper uses n = 6 for 128 px and n = 9 for 256 px. Two stride-2 convs need sides divisible by 4; other
    sizes are reflect-padded up to the next multiple of 4 and the output cropped back, so any size works.
    """

    def __init__(self, in_ch: int, out_ch: int, width: int = 64, blocks: int = 6):
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, w, 7, bias=False), nn.InstanceNorm2d(w),
                                   nn.ReLU(inplace=True)]
        for m in (1, 2):  # d2w, d4w: H -> H/2 -> H/4
            layers += [nn.Conv2d(w * m, w * m * 2, 3, stride=2, padding=1, bias=False), nn.InstanceNorm2d(w * m * 2),
                       nn.ReLU(inplace=True)]
        layers += [ResnetBlock(4 * w) for _ in range(blocks)]
        for m in (4, 2):  # u2w, uw: H/4 -> H/2 -> H (output_padding makes each exactly double)
            layers += [nn.ConvTranspose2d(w * m, w * m // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
                       nn.InstanceNorm2d(w * m // 2), nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, out_ch, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % 4, -w % 4
        if ph or pw:  # (B, C, h, w) -> (B, C, h + ph, w + pw); reflection keeps the border statistics natural
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.net(x)[..., :h, :w]


def patch_receptive_field(layers: int) -> int:
    """Receptive field in pixels of one PatchGAN output: 16, 34, 70 for 1, 2, 3 stride-2 layers."""
    rf = 4  # final 4x4 stride-1 conv
    rf = rf + 3  # the stride-1 C(w*2^layers) conv before it
    for _ in range(layers):
        rf = (rf - 1) * 2 + 4
    return rf


def auto_patch_layers(image_size: int) -> int:
    """The deepest PatchGAN whose patches still fit the image (3 -> the paper's 70x70 on 70 px and larger)."""
    n = 1
    while n < 3 and patch_receptive_field(n + 1) <= image_size:
        n += 1
    return n


class PatchDiscriminator(nn.Module):
    """(B, in_ch, H, W) -> (B, 1, h', w') real/fake scores, one per overlapping patch (Isola et al. 2017).

    `layers` stride-2 4x4 convs (C64-C128-C256 for the paper's 3, no norm on the first), a stride-1 C(w*2^layers),
    then a 1-channel 4x4 conv. 3 layers give 70x70 patches; fewer layers scale it down to small images.
    """

    def __init__(self, in_ch: int, width: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"PatchGAN needs at least 1 layer, got {layers}")
        seq: list[nn.Module] = [nn.Conv2d(in_ch, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for n in range(1, layers + 1):
            out = width * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=False), nn.InstanceNorm2d(out),
                    nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        seq.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
