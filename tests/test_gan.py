"""GAN family: losses, gradient penalty, spectral norm, EMA, architectures, a small learning test, CLI."""
import math
import warnings

import pytest
import torch

from dgm.data import ImageData
from dgm.metrics.gan_health import GANCollapseWarning, gan_health
from dgm.models.gan import GAN, LOSSES, GANConfig, d_loss, g_loss, gradient_penalty, pairwise_auc
from dgm.train import TrainConfig, Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    # These tiny models gain nothing from a second thread, and on a loaded machine every op waits for it.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def grads(fn, *vals):
    ts = [torch.tensor([v], requires_grad=True) for v in vals]
    out = fn(*ts)
    out.backward()
    return out.item(), [t.grad.item() for t in ts]


# -- losses on hand-made logits ------------------------------------------------------------------------------------
def test_loss_values_match_their_definitions():
    r, f = 2.0, -1.0
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    rt, ft = torch.tensor([r]), torch.tensor([f])
    # Goodfellow eq. 1: D maximises log D(x) + log(1 - D(G(z))).
    bce = -math.log(sig(r)) - math.log(1 - sig(f))
    assert d_loss("minimax", rt, ft).item() == pytest.approx(bce, rel=1e-6)
    assert d_loss("ns", rt, ft).item() == pytest.approx(bce, rel=1e-6)
    assert g_loss("minimax", ft).item() == pytest.approx(math.log(1 - sig(f)), rel=1e-6)
    assert g_loss("ns", ft).item() == pytest.approx(-math.log(sig(f)), rel=1e-6)
    assert d_loss("lsgan", rt, ft).item() == pytest.approx(0.5 * ((r - 1) ** 2 + f ** 2))
    assert g_loss("lsgan", ft).item() == pytest.approx(0.5 * (f - 1) ** 2)
    assert d_loss("hinge", torch.tensor([0.5]), torch.tensor([-2.0])).item() == pytest.approx(0.5)  # 0.5 + relu(-1)
    assert g_loss("hinge", ft).item() == pytest.approx(1.0)
    assert d_loss("wgan-gp", rt, ft).item() == pytest.approx(f - r)
    assert g_loss("wgan-gp", ft).item() == pytest.approx(-f)
    with pytest.raises(ValueError, match="loss must be one of"):
        d_loss("nope", rt, ft)


@pytest.mark.parametrize("kind", LOSSES)
def test_gradient_signs(kind):
    # D pushes its output up on real and down on fake images; G pushes D's output on its fakes up.
    _, (gr, gf) = grads(lambda r, f: d_loss(kind, r, f), 0.3, 0.1)
    assert gr < 0 and gf > 0
    _, (gg,) = grads(lambda f: g_loss(kind, f), 0.1)
    assert gg < 0


def test_minimax_generator_loss_saturates_and_ns_does_not():
    # When D confidently rejects a fake (logit -8), the minimax gradient nearly vanishes (Goodfellow 2014, sec. 3).
    _, (mm,) = grads(lambda f: g_loss("minimax", f), -8.0)
    _, (ns,) = grads(lambda f: g_loss("ns", f), -8.0)
    assert abs(mm) < 1e-3 and abs(ns) > 0.99


def test_hinge_ignores_confident_examples():
    _, (gr, gf) = grads(lambda r, f: d_loss("hinge", r, f), 1.5, -1.5)
    assert gr == 0 and gf == 0


def test_gradient_penalty_equals_its_definition():
    torch.manual_seed(0)
    # Linear critic: grad is w everywhere, so the penalty is (||w|| - 1)^2 exactly.
    w = torch.randn(3, 4, 4)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake)
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    # Quadratic critic sum(x^2): grad = 2 xhat at xhat = eps x + (1 - eps) x_fake.
    eps = torch.rand(5, 1, 1, 1)
    gp = gradient_penalty(lambda x: x.pow(2).flatten(1).sum(1), real, fake, eps=eps)
    xhat = eps * real + (1 - eps) * fake
    want = ((2 * xhat).flatten(1).norm(dim=1) - 1).pow(2).mean()
    assert gp.item() == pytest.approx(want.item(), rel=1e-5)


def test_gradient_penalty_is_differentiable_wrt_critic():
    w = torch.randn(8, requires_grad=True)
    gp = gradient_penalty(lambda x: (x * w).sum(1), torch.randn(4, 8), torch.randn(4, 8))
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    n = w.detach().norm()
    assert torch.allclose(w.grad, 2 * (n - 1) * w.detach() / n, atol=1e-5)


def test_pairwise_auc():
    assert pairwise_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])).item() == 1.0
    assert pairwise_auc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])).item() == pytest.approx(0.5)


# -- the model ------------------------------------------------------------------------------------------------------
def tiny(**kw):
    base = dict(channels=1, image_size=28, latent_dim=8, width=4)
    return GAN(GANConfig(**{**base, **kw}))


@pytest.mark.parametrize("size,ch", [(28, 1), (32, 3), (64, 1)])
def test_dcgan_shapes_and_range(size, ch):
    m = tiny(image_size=size, channels=ch).eval()
    x = m.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, ch, size, size) and x.min() >= 0 and x.max() <= 1
    assert m.critic(torch.zeros(3, ch, size, size)).shape == (3,)


def test_dcgan_follows_radford_guidelines():
    m = tiny(image_size=32)
    convs = [l for l in m.D.net if isinstance(l, torch.nn.Conv2d)]
    assert all(c.stride == (2, 2) for c in convs)
    assert not any(isinstance(l, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for l in m.modules())
    assert not isinstance(m.D.net[1], torch.nn.BatchNorm2d)                  # no BN at D's input
    assert isinstance(m.G.net[-1], torch.nn.Tanh) and not isinstance(m.G.net[-2], torch.nn.BatchNorm2d)
    assert abs(convs[1].weight.std().item() - 0.02) < 0.005                  # N(0, 0.02) init


def test_invalid_options_are_clear_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        tiny(loss="wgan")
    with pytest.raises(ValueError, match="BatchNorm"):
        tiny(loss="wgan-gp", d_norm="batch")
    with pytest.raises(ValueError, match="image size"):
        tiny(image_size=30 * 3)
    with pytest.raises(ValueError, match="labelled"):
        tiny(conditional=True)
    with pytest.raises(ValueError, match="unconditional"):
        tiny().sample(2, cond=torch.tensor([1, 2]))


def test_phase_repeats_per_instance():
    assert tiny(loss="wgan-gp").phase_repeats == {"d": 5}
    assert tiny(loss="hinge", n_critic=2).phase_repeats == {"d": 2}
    assert tiny().phase_repeats == {"d": 1} and GAN.phase_repeats == {}
    assert tiny(loss="wgan-gp").phase_options("d") == {}
    assert tiny(d_lr=4e-4, g_lr=1e-4).phase_options("d") == {"lr": 4e-4}


def test_phase_parameters_split_g_and_d():
    m = tiny(conditional=True, num_classes=10)
    g, d = set(map(id, m.phase_parameters("g"))), set(map(id, m.phase_parameters("d")))
    assert not g & d and len(g) + len(d) == len(list(m.parameters()))


def test_spectral_norm_bounds_largest_singular_value():
    torch.manual_seed(0)
    m = tiny(spectral_norm=True, width=8)
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    for _ in range(30):  # power iteration runs once per forward pass in train mode
        m.loss((x, None), "d")
    layers = [l for l in m.modules() if isinstance(l, (torch.nn.Conv2d, torch.nn.Linear))
              and hasattr(l, "parametrizations")]
    assert len(layers) == 3  # two convs + head
    for l in layers:
        sigma = torch.linalg.matrix_norm(l.weight.detach().flatten(1), ord=2).item()
        raw = torch.linalg.matrix_norm(l.parametrizations.weight.original.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05) and raw != pytest.approx(1.0, abs=0.05)
    assert not any(isinstance(l, torch.nn.BatchNorm2d) for l in m.D.modules())  # no BatchNorm with SN (auto)


def test_conditional_sampling_uses_the_labels():
    m = tiny(conditional=True, num_classes=10).eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = m.sample(4, cond=torch.tensor([1, 1, 1, 1]), generator=g())
    b = m.sample(4, cond=torch.tensor([2, 2, 2, 2]), generator=g())
    assert not torch.allclose(a, b)
    assert torch.allclose(a, m.sample(4, cond=1, generator=g()))
    with pytest.raises(ValueError, match="class labels"):
        m.sample(2, cond=torch.tensor([0, 10]))
    out = m.loss((torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2, 3])), "d")
    assert {"loss", "d_real", "d_fake", "d_auc"} <= set(out)


def test_wgan_gp_logs_penalty_and_distance():
    m = tiny(loss="wgan-gp")
    out = m.loss((torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8), None), "d")
    assert out["gp"] >= 0 and "w_dist" in out
    out["loss"].backward()
    assert m.d_head.weight.grad is not None and all(p.grad is None for p in m.G.parameters())


def test_ema_update(tmp_path):
    torch.manual_seed(0)
    data = ImageData(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), None, "rand", None)
    m = tiny()
    p0 = [p.detach().clone() for p in m.parameters()]
    tr = Trainer(m, data, TrainConfig(steps=1, batch_size=16, ema_decay=0.9, log_every=1, ckpt_every=100), tmp_path,
                 progress=False)
    tr.fit()
    d = min(0.9, (1 + 0) / (10 + 0))  # the Trainer's EMA warm-up at step 0
    for pe, pm, q in zip(tr.ema.parameters(), m.parameters(), p0):
        assert torch.allclose(pe, d * q + (1 - d) * pm.detach(), atol=1e-6)
    assert any(not torch.equal(pm.detach(), q) for pm, q in zip(m.G.parameters(), p0))


# -- learning test: a 2-D mixture of 8 Gaussians as 2-channel 1x1 "images" -------------------------------------------
def ring_data(n=4096, modes=8, radius=0.7, std=0.03, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, modes, (n,), generator=g)
    ang = 2 * math.pi * k / modes
    pts = torch.stack([ang.cos(), ang.sin()], 1) * radius + std * torch.randn(n, 2, generator=g)
    u8 = ((pts.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).view(n, 2, 1, 1)
    return ImageData(u8, k, "ring", modes), radius, modes


def mode_coverage(samples01, radius, modes, std=0.03):
    pts = samples01.view(-1, 2) * 2 - 1
    centres = torch.stack([torch.tensor([math.cos(2 * math.pi * i / modes), math.sin(2 * math.pi * i / modes)])
                           for i in range(modes)]) * radius
    d = torch.cdist(pts, centres)
    near = d.min(1).values < 4 * std
    hit = torch.bincount(d.argmin(1)[near], minlength=modes)
    return int((hit >= 0.2 * len(pts) / modes).sum()), float(near.float().mean())


def test_tiny_gan_covers_most_modes_of_a_2d_mixture(tmp_path):
    torch.manual_seed(0)
    data, radius, modes = ring_data()
    m = GAN(GANConfig(channels=2, image_size=1, arch="mlp", latent_dim=8, mlp_hidden=(64, 64), g_norm="none"))
    tr = Trainer(m, data, TrainConfig(steps=600, batch_size=128, lr=1e-3, betas=(0.5, 0.999), log_every=100,
                                      ckpt_every=10_000), tmp_path, progress=False)
    tr.fit()
    covered, good = mode_coverage(m.eval().sample(2000, generator=torch.Generator().manual_seed(0)), radius, modes)
    assert covered >= 6 and good > 0.5, (covered, good)


# -- figures and CLI ------------------------------------------------------------------------------------------------
def test_health_warns_when_d_wins_for_long():
    m = tiny()
    rows = [{"step": s, "d/d_auc": 1.0} for s in range(100, 2100, 100)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gan_health(m, rows[:3])["warnings"] == []
    assert "D won outright" in gan_health(m, rows)["warnings"][0]
    ok = [{"step": s, "d/d_auc": 0.7} for s in range(100, 2100, 100)]
    assert gan_health(m, ok)["warnings"] == []


def test_cli_train_sample_interpolate(tmp_path):
    from dgm.cli import main
    run = tmp_path / "g"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GANCollapseWarning)
        main(["train", "gan", "--data", "digits", "--steps", "4", "--out", str(run), "-q", "--set", "loss=hinge",
              "--set", "spectral_norm=true", "--set", "width=4", "--set", "log_every=1", "--set", "latent_dim=8"])
    for f in ("dx.png", "samples.png", "interpolation.png", "gan_health.json", "training.gif", "model.safetensors"):
        assert (run / f).is_file(), f
    main(["sample", str(run), "-n", "8", "-o", str(tmp_path / "s.png")])
    main(["interpolate", str(run), "-o", str(tmp_path / "i.png"), "--pairs", "2", "--steps", "4"])
    assert (tmp_path / "s.png").is_file() and (tmp_path / "i.png").is_file()
    with pytest.raises(SystemExit) as e:
        main(["train", "gan", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "x"), "-q",
              "--set", "loss=bogus"])
    assert e.value.code == 2


def test_conditional_train_and_class_sampling(tmp_path):
    from dgm.cli import main
    from dgm.io import load
    from dgm.tasks import train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GANCollapseWarning)
        run = train("gan", "digits", steps=3, out=tmp_path / "c", progress=False,
                    overrides={"conditional": "true", "width": "4", "latent_dim": "8", "loss": "lsgan"})
    m = load(run)
    assert m.config.conditional and m.config.num_classes == 10
    main(["sample", str(run), "-n", "4", "--class", "3", "-o", str(tmp_path / "c3.png")])
    with pytest.raises(SystemExit) as e:
        main(["sample", str(run), "-n", "4", "--class", "12", "-o", str(tmp_path / "bad.png")])
    assert e.value.code == 2
