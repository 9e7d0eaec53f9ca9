"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation between domains A and B.

Two generators G_AB: A -> B and G_BA: B -> A (ResNet, dgm.nn.resnet) and two PatchGAN discriminators D_A, D_B.
Objective (paper eq. 3, with the least-squares GAN loss of sec. 4 and the identity loss of sec. 5.2):
    L_G = (D_B(G_AB(a)) - 1)^2 + (D_A(G_BA(b)) - 1)^2                             adversarial (LSGAN, Mao et al. 2017)
        + lambda * (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)               cycle consistency, eq. 2
        + lambda * lambda_idt * (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)               identity mapping
        + w_sem * (CE(f_S(G_AB(a)), argmax f_S(a)) + CE(f_S(G_BA(b)), argmax f_S(b)))   optional, CyCADA eq. 4
    L_D = 0.5 * ((D(real) - 1)^2 + D(pool(fake))^2)  per discriminator, fakes drawn from a 50-image history (sec. 4)
lambda = 10, lambda_idt = 0.5, Adam 2e-4 (0.5, 0.999), lr constant for half the run then linear to 0
(the Trainer's `lr_decay_start`). f_S is a frozen classifier of domain A (Hoffman et al. 2018, CyCADA).

Phases ("g", "d"): the G phase caches its detached fakes and the D phase that follows in the same step scores them
through the pool, as the paper's code does; if D runs without a cache (e.g. first), it makes its own fakes.
Pixels are in [-1, 1] inside the model; translate() takes and returns [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm.data import to_float
from dgm.models.base import GenerativeModel, ImageConfig
from dgm.models.classifier import Classifier, ClassifierConfig
from dgm.nn.resnet import PatchDiscriminator, ResnetGenerator, auto_patch_layers, patch_receptive_field
from dgm.registry import register

DIRECTIONS = ("AtoB", "BtoA")


@dataclass
class CycleGANConfig(ImageConfig):
    channels_b: int = 0              # domain B's channels (0: same as domain A's `channels`); filled from the data
    gen_width: int = 64              # w in c7s1-w, d2w, d4w, R4w, ...
    gen_blocks: int = 6              # residual blocks (paper: 6 at 128 px, 9 at 256 px)
    disc_width: int = 64
    disc_layers: int = 0             # stride-2 layers of the PatchGAN (3: 70x70 patches); 0: deepest that fits
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5     # weight relative to lambda_cycle; 0 switches the identity loss off
    pool_size: int = 50              # history of generated images shown to D (0: off)
    semantic_weight: float = 0.0     # CyCADA semantic consistency (> 0 needs a classifier of domain A)
    semantic_classifier: str = ""    # f_S: a dataset whose cached classifier to use ("" -> domain A's dataset), or
                                     # the folder of a classifier trained with `dgm classifier train ... --out DIR`


def match_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, c, H, W): gray -> RGB by repetition, RGB -> gray by the channel mean."""
    if x.shape[1] == c:
        return x
    if c == 1:
        return x.mean(1, keepdim=True)
    if x.shape[1] == 1:
        return x.expand(-1, c, -1, -1)
    raise ValueError(f"cannot convert {x.shape[1]}-channel images to {c} channels")


class ImagePool(nn.Module):
    """Shrivastava et al. 2017 / Zhu et al. 2017 sec. 4: D sees a mix of current and past fakes.

    Until full, every image is stored and returned. Then each image is, with probability 1/2, swapped for a random
    stored one (which is returned in its place) or returned as it is. The history lives in buffers and the draws
    come from torch's global CPU generator, so both are in the checkpoint and resume stays exact.
    """

    def __init__(self, size: int, shape: tuple[int, int, int]):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))     # (size, C, H, W) in [-1, 1]
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return x
        x = x.detach()
        n = len(x)
        coin, slot = torch.rand(n), torch.randint(self.size, (n,))  # CPU draws: same on every device
        out = []
        filled = int(self.count)
        for i in range(n):
            if filled < self.size:
                self.images[filled] = x[i]
                filled += 1
                out.append(x[i])
            elif coin[i] < 0.5:
                j = int(slot[i])
                out.append(self.images[j].to(x.dtype).clone())
                self.images[j] = x[i]
            else:
                out.append(x[i])
        self.count.fill_(filled)
        return torch.stack(out)


def lsgan(scores: torch.Tensor, target: float) -> torch.Tensor:
    """Mean squared distance of every patch score to the target (1: real, 0: fake); Mao et al. 2017, eq. 2."""
    return (scores.float() - target).pow(2).mean()


@register("cyclegan")
class CycleGAN(GenerativeModel):
    Config = CycleGANConfig
    phases = ("g", "d")
    # Zhu et al. 2017 sec. 4: Adam 2e-4, beta1 0.5; lr constant for the first half, then linearly to 0.
    # Batch 1 in the paper; 16 here so a CPU step does useful work (instance norm is per image either way).
    train_defaults = {"lr": 2e-4, "betas": (0.5, 0.999), "lr_decay_start": 0.5, "batch_size": 16}
    default_minutes = 3.0

    def __init__(self, config: CycleGANConfig):
        super().__init__(config)
        c = config
        ca, cb, s = c.channels, c.channels_b or c.channels, c.image_size
        if s < 8:
            raise ValueError(f"CycleGAN needs images of at least 8x8 pixels, got image_size={s}")
        if min(c.gen_width, c.disc_width) < 1 or c.gen_blocks < 0 or c.pool_size < 0 or c.disc_layers < 0:
            raise ValueError("gen_width and disc_width must be >= 1; gen_blocks, pool_size, disc_layers >= 0")
        if min(c.lambda_cycle, c.lambda_identity, c.semantic_weight) < 0:
            raise ValueError("lambda_cycle, lambda_identity and semantic_weight must be >= 0")
        layers = c.disc_layers or auto_patch_layers(s)
        if s // 2 ** layers < 3:
            raise ValueError(f"disc_layers={layers} leaves no patch on {s}x{s} images "
                             f"(receptive field {patch_receptive_field(layers)} px); use fewer layers")
        self.cb = cb
        self.G_AB = ResnetGenerator(ca, cb, c.gen_width, c.gen_blocks)
        self.G_BA = ResnetGenerator(cb, ca, c.gen_width, c.gen_blocks)
        self.D_A = PatchDiscriminator(ca, c.disc_width, layers)
        self.D_B = PatchDiscriminator(cb, c.disc_width, layers)
        self.pool_a = ImagePool(c.pool_size, (ca, s, s))  # fakes of domain A, for D_A
        self.pool_b = ImagePool(c.pool_size, (cb, s, s))
        self.f_s = None
        if c.semantic_weight > 0:
            if c.num_classes < 2:
                raise ValueError("semantic_weight > 0 needs a labelled domain A (a classifier of A's classes)")
            # Weights: the cached classifier, loaded by prepare_training(); then they travel in this model's file.
            self.f_s = Classifier(ClassifierConfig(channels=ca, image_size=s, num_classes=c.num_classes))
            self.f_s.requires_grad_(False).eval()
        self._fakes: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- set-up ----------------------------------------------------------------------------------------------
    def needs_classifier(self, data) -> str | None:
        """f_S for the semantic loss: a dataset whose cached classifier to use, or a classifier's run folder."""
        if self.f_s is None:
            return None
        return self.config.semantic_classifier or getattr(data, "a_name", "") or data.name

    def prepare_training(self, data, *, classifier=None) -> None:
        """Before training: check the data is unpaired; copy the frozen source classifier f_S's weights in."""
        if getattr(data, "b", None) is None:
            raise ValueError(f"cyclegan trains on two domains: use --data unpaired:A,B (e.g. unpaired:mnist,usps) or "
                             f"unpaired:PATH with trainA/ trainB/ folders, not {getattr(data, 'name', data)!r}")
        if self.f_s is None:
            return
        if not isinstance(classifier, Classifier):
            raise ValueError(f"semantic_weight > 0 needs a classifier of domain A, got {type(classifier).__name__}")
        try:
            self.f_s.load_state_dict(classifier.state_dict())
        except RuntimeError as e:
            raise ValueError(f"the classifier for {self.needs_classifier(data)!r} does not fit this CycleGAN "
                             f"({self.config.channels} channels, {self.config.image_size} px): {e}") from None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.f_s is not None:
            self.f_s.eval()  # frozen: BatchNorm statistics and dropout stay as trained
        return self

    def phase_parameters(self, phase):
        nets = (self.D_A, self.D_B) if phase == "d" else (self.G_AB, self.G_BA)
        return [p for n in nets for p in n.parameters()]

    # -- the objective ---------------------------------------------------------------------------------------
    def _generate(self, a: torch.Tensor, b: torch.Tensor):
        fake_b, fake_a = self.G_AB(a), self.G_BA(b)
        return fake_a, fake_b

    def semantic_loss(self, a, b, fake_a, fake_b) -> torch.Tensor:
        """CyCADA eq. 4: f_S's labels of the inputs (pseudo-labels, no ground truth) must survive translation."""
        f, ca = self.f_s, self.config.channels
        with torch.no_grad():
            ya = f((match_channels(a, ca) + 1) / 2).argmax(1)
            yb = f((match_channels(b, ca) + 1) / 2).argmax(1)
        la = F.cross_entropy(f((match_channels(fake_b, ca).float() + 1) / 2), ya)
        lb = F.cross_entropy(f((fake_a.float() + 1) / 2), yb)
        return la + lb

    def loss(self, batch, phase):
        c = self.config
        if batch[1] is None or batch[1].dtype != torch.uint8:
            raise ValueError("CycleGAN batches are (images A, images B) from unpaired data (unpaired:A,B)")
        a, b = to_float(batch[0], "-11"), to_float(batch[1], "-11")  # (B, C_a, H, W), (B, C_b, H, W)
        # Only the phase's own networks need weight gradients; freezing the others saves backward work.
        for net in (self.G_AB, self.G_BA):
            net.requires_grad_(phase == "g")
        for net in (self.D_A, self.D_B):
            net.requires_grad_(phase == "d")
        if phase == "g":
            fake_a, fake_b = self._generate(a, b)
            rec_a, rec_b = self.G_BA(fake_b), self.G_AB(fake_a)
            adv = lsgan(self.D_B(fake_b), 1.0) + lsgan(self.D_A(fake_a), 1.0)
            cyc = F.l1_loss(rec_a.float(), a) + F.l1_loss(rec_b.float(), b)
            loss = adv + c.lambda_cycle * cyc
            out = {"adv": adv.detach(), "cycle": cyc.detach()}
            if c.lambda_identity > 0:
                # G_AB should leave a B image alone (and G_BA an A image); channels are matched when they differ.
                idt_b, idt_a = self.G_AB(match_channels(b, c.channels)), self.G_BA(match_channels(a, self.cb))
                idt = F.l1_loss(idt_b.float(), b) + F.l1_loss(idt_a.float(), a)
                loss = loss + c.lambda_cycle * c.lambda_identity * idt
                out["identity"] = idt.detach()
            if self.f_s is not None:
                sem = self.semantic_loss(a, b, fake_a, fake_b)
                loss = loss + c.semantic_weight * sem
                out["semantic"] = sem.detach()
            self._fakes = (fake_a.detach(), fake_b.detach())
            return {"loss": loss, **out}
        if phase != "d":
            raise ValueError(f"unknown phase {phase!r}; CycleGAN has 'g' and 'd'")
        if self._fakes is None or self._fakes[0].shape[0] != a.shape[0]:
            with torch.no_grad():
                self._fakes = self._generate(a, b)
        fake_a, fake_b = self._fakes
        self._fakes = None
        fake_a, fake_b = self.pool_a.query(fake_a), self.pool_b.query(fake_b)
        ra, rb = self.D_A(a), self.D_B(b)
        fa, fb = self.D_A(fake_a.to(a.dtype)), self.D_B(fake_b.to(b.dtype))
        d_a = 0.5 * (lsgan(ra, 1.0) + lsgan(fa, 0.0))
        d_b = 0.5 * (lsgan(rb, 1.0) + lsgan(fb, 0.0))
        return {"loss": d_a + d_b, "d_a": d_a.detach(), "d_b": d_b.detach(),
                "d_real": 0.5 * (ra.float().mean() + rb.float().mean()).detach(),
                "d_fake": 0.5 * (fa.float().mean() + fb.float().mean()).detach()}

    # -- what users call -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def translate(self, x01: torch.Tensor, direction: str = "AtoB", chunk: int = 256) -> torch.Tensor:
        """(N, C_src, H, W) in [0, 1] (or uint8) -> (N, C_dst, H, W) in [0, 1]. direction: "AtoB" or "BtoA".

        Any H, W >= 8 runs (the networks are fully convolutional), but the model knows its training size best.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        g, cin = (self.G_AB, self.config.channels) if direction == "AtoB" else (self.G_BA, self.cb)
        if x01.dim() != 4 or x01.shape[1] != cin or min(x01.shape[-2:]) < 8:
            raise ValueError(f"translate {direction} expects images (N, {cin}, H>=8, W>=8), got {tuple(x01.shape)}")
        x = to_float(x01) if x01.dtype == torch.uint8 else x01.float()
        out = [(g(x[i:i + chunk].to(self.device) * 2 - 1).float() + 1) / 2 for i in range(0, len(x), chunk)]
        return torch.cat(out).clamp_(0, 1)

    # No `sample`: CycleGAN maps images to images (capabilities() has no "sample"; figures skip it).

    def panel(self, a: torch.Tensor, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Rows for a figure from uint8 batches: real A | fake B | reconstructed A | identity, then the B side."""
        a01, b01 = to_float(a) if a.dtype == torch.uint8 else a, to_float(b) if b.dtype == torch.uint8 else b
        ca, cb = self.config.channels, self.cb
        fb = self.translate(a01, "AtoB")
        fa = self.translate(b01, "BtoA")
        rows = [("real A", a01), ("fake B = G_AB(A)", fb), ("rec. A = G_BA(fake B)", self.translate(fb, "BtoA")),
                ("identity G_BA(A)", self.translate(match_channels(a01, cb), "BtoA")),
                ("real B", b01), ("fake A = G_BA(B)", fa), ("rec. B = G_AB(fake A)", self.translate(fa, "AtoB")),
                ("identity G_AB(B)", self.translate(match_channels(b01, ca), "AtoB"))]
        c = max(ca, cb)  # one grid needs one channel count
        return [(name, match_channels(x.cpu(), c)) for name, x in rows]

    def preview(self, batch, generator):
        k = min(8, batch[0].shape[0], batch[1].shape[0])
        return torch.cat([x for _, x in self.panel(batch[0][:k], batch[1][:k])])
