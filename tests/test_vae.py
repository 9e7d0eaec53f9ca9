"""The maths of the AE and VAE: KL, reparameterisation, beta, IWAE."""
import math

import pytest
import torch

from dgm.models.ae import AE, AEConfig
from dgm.models.vae import VAE, VAEConfig, gaussian_kl, gaussian_log_prob


def tiny_vae(**kw):
    torch.manual_seed(0)
    return VAE(VAEConfig(channels=1, image_size=8, latent_dim=4, conv_channels=(8, 16), **kw))


def assert_elbo_is_the_one_sample_weight_and_the_bound_tightens(m) -> torch.Tensor:
    """The ELBO (with its KL as the model computes it) and the k = 1 importance weight agree in expectation on 6
    binary 8x8 images, and k = 200 tightens the bound; returns the images (m is left in eval mode)."""
    m.eval()
    xb = torch.rand(6, 1, 8, 8).bernoulli(generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    elbo = torch.stack([m.elbo(xb) for _ in range(400)]).mean(0)
    torch.manual_seed(4)
    iw1 = torch.stack([m.importance_terms(xb, 1)["log_w"][0] for _ in range(400)]).mean(0)
    assert (elbo - iw1).abs().max() < 1.0          # two Monte Carlo means of the same quantity
    assert (m.nll(xb, k=200) <= -elbo + 0.5).all()   # the bound tightens with k
    return xb


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5) * 0.5
    z = mu + torch.randn(200_000, 3, 5) * (0.5 * logvar).exp()
    mc = (gaussian_log_prob(z, mu, logvar) - gaussian_log_prob(z, torch.zeros(5), torch.zeros(5))).mean(0)
    analytic = gaussian_kl(mu, logvar).sum(1)
    assert torch.allclose(mc, analytic, atol=0.03), (mc, analytic)
    assert (analytic >= 0).all()


def test_kl_zero_only_at_prior():
    assert gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0
    assert gaussian_kl(torch.full((1, 3), 0.1), torch.zeros(1, 3)).sum() > 0


def test_gradients_flow_through_reparameterised_sample():
    m = tiny_vae(binarize=False)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    xs = m.prepare(x)
    mu, logvar = m.posterior(xs)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    recon = -m.log_likelihood(xs, m.decoder(z)).mean()
    recon.backward()  # the reconstruction term alone: its gradient reaches the encoder only through z
    g = [p.grad for p in m.encoder.parameters()]
    assert all(gi is not None for gi in g) and sum(gi.abs().sum() for gi in g) > 0


def test_beta_changes_the_loss_by_beta_times_kl():
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    out = {}
    for beta in (1.0, 4.0):
        m = tiny_vae(beta=beta)
        torch.manual_seed(1)
        out[beta] = m.loss((x, None))
    assert out[1.0]["recon"] == pytest.approx(out[4.0]["recon"].item())
    assert (out[4.0]["loss"] - out[1.0]["loss"]).item() == pytest.approx(3 * out[1.0]["kl"].item(), rel=1e-4)


def test_capacity_objective_anneals():
    m = tiny_vae(capacity_max=25.0, capacity_steps=100, gamma=10.0)
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    losses = []
    for step in (0, 100):
        m.step = step
        torch.manual_seed(1)
        out = m.loss((x, None))
        losses.append((out["loss"] - out["recon"]).item())
        assert losses[-1] == pytest.approx(10.0 * abs(out["kl"].item() - 25.0 * min(1, step / 100)), rel=1e-4)


def test_iwae_k1_is_elbo_in_expectation_and_tightens_with_k():
    m = tiny_vae()
    with torch.no_grad():  # a deliberately poor, wide posterior (logvar = 3) so the ELBO is loose
        m.encoder.head[-1].bias[4:] = 3.0
    torch.manual_seed(0)
    x = (torch.rand(16, 1, 8, 8) > 0.5).float()
    r = 300  # repeats, done as one batch: x repeated r times
    xr = x.repeat(r, 1, 1, 1)
    torch.manual_seed(1)
    elbo = m.elbo(xr).view(r, -1).mean(0)
    torch.manual_seed(2)
    nll1 = m.nll(xr, k=1).view(r, -1).mean(0)
    # per example the estimator is noisy (wide posterior); over 16 x 300 draws the means agree
    assert (-nll1).mean().item() == pytest.approx(elbo.mean().item(), abs=1.0)
    torch.manual_seed(3)
    x20 = x.repeat(20, 1, 1, 1)  # average 20 independent estimates per image
    bounds = [-m.nll(x20, k=k, chunk=50).mean().item() for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2], bounds


def test_gaussian_likelihood_is_a_density():
    m = tiny_vae(likelihood="gaussian")
    x = torch.rand(4, 1, 8, 8)
    logits = torch.zeros(4, 1, 8, 8)
    sigma = m.log_sigma.exp().item()
    expected = torch.distributions.Normal(0.5, sigma).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(m.log_likelihood(x, logits), expected, atol=1e-4)


def test_shapes_for_many_sizes_and_archs():
    for size in (8, 15, 28):
        for arch in ("conv", "mlp"):
            m = VAE(VAEConfig(channels=3, image_size=size, latent_dim=2, arch=arch, conv_channels=(8, 16)))
            x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
            assert torch.isfinite(m.loss((x, None))["loss"])
            assert m.sample(3).shape == (3, 3, size, size)
            a = AE(AEConfig(channels=3, image_size=size, latent_dim=2, arch=arch, conv_channels=(8, 16)))
            assert a.reconstruct(torch.rand(2, 3, size, size)).shape == (2, 3, size, size)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="likelihood"):
        VAE(VAEConfig(likelihood="poisson"))
    with pytest.raises(ValueError, match="arch"):
        AE(AEConfig(arch="transformer"))


def test_sample_is_reproducible_with_a_generator():
    m = tiny_vae()
    a = m.sample(4, generator=torch.Generator().manual_seed(7))
    b = m.sample(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not math.isclose(a.sum().item(), m.sample(4, generator=torch.Generator().manual_seed(8)).sum().item())


def test_vamp_prior_is_the_mixture_of_posteriors_at_the_pseudo_inputs(tmp_path):
    """log p(z) = logsumexp_k log q(z | u_k) - log K (Tomczak & Welling 2018, eq. 9), its moments and samples, the
    Monte Carlo KL, gradients into the pseudo-inputs, and save -> load -> the same samples."""
    import dgm
    torch.manual_seed(0)
    m = VAE(VAEConfig(channels=1, image_size=8, arch="mlp", mlp_hidden=(32,), latent_dim=3, prior="vamp",
                      vamp_components=7)).eval()
    z = torch.randn(5, 3)
    mu, lv = m.prior_components()
    direct = torch.stack([-0.5 * (math.log(2 * math.pi) + lv[k] + (z - mu[k]) ** 2 / lv[k].exp()).sum(1)
                          for k in range(7)], 1)
    assert torch.allclose(m.log_prior(z), torch.logsumexp(direct, 1) - math.log(7), atol=1e-4)
    assert m.log_prior(z.expand(4, 5, 3)).shape == (4, 5)
    draws = m.sample_latent(40_000, generator=torch.Generator().manual_seed(1))
    mean, std = m.latent_moments()
    assert torch.allclose(draws.mean(0), mean, atol=0.03) and torch.allclose(draws.std(0), std, rtol=0.03)
    x = (torch.rand(6, 1, 8, 8) * 255).to(torch.uint8)
    m.train()
    out = m.loss((x, None))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.pseudo_inputs.grad.abs().sum() > 0
    # The ELBO's KL is log q(z|x) - log p(z) at the sampled z: equal to the importance weight's at k = 1.
    xb = assert_elbo_is_the_one_sample_weight_and_the_bound_tightens(m)
    dgm.save(m, tmp_path)
    back = dgm.load(tmp_path).eval()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(m.sample(4, generator=g()), back.sample(4, generator=g()))
    with pytest.raises(ValueError, match="prior"):
        VAE(VAEConfig(prior="flat"))


def test_two_layer_vae_weights_add_both_layers_and_its_kl_is_the_monte_carlo_one(tmp_path):
    """z1_dim > 0 (Tomczak & Welling 2018's two-layer VAE): the ELBO's KL (closed form for z1 given the drawn z) and
    the k = 1 importance weight agree in expectation, the bound tightens with k, the explicit joint
    log p(x|z1, z) + log p(z1|z) + log p(z) - log q(z|x) - log q(z1|x, z) is the weight, gradients reach both MLPs,
    the studio's pieces keep latent_dim, and save -> load -> the same samples."""
    import dgm
    torch.manual_seed(0)
    m = VAE(VAEConfig(channels=1, image_size=8, arch="mlp", mlp_hidden=(32,), latent_dim=2, z1_dim=3,
                      z1_hidden=16))
    x8 = (torch.rand(6, 1, 8, 8) * 255).to(torch.uint8)
    out = m.loss((x8, None))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.q1[0].weight.grad.abs().sum() > 0 and m.p1[0].weight.grad.abs().sum() > 0
    xb = assert_elbo_is_the_one_sample_weight_and_the_bound_tightens(m)
    # the weight, rebuilt from the same draws by hand
    torch.manual_seed(5)
    t = m.importance_terms(xb, 2)
    torch.manual_seed(5)
    mu, lv, feats = m._encoded(xb)
    z = mu + (0.5 * lv).exp() * torch.randn((2,) + mu.shape)
    qm, qv = m._lower_posterior(feats, z)
    z1 = qm + (0.5 * qv).exp() * torch.randn_like(qm)
    pm, pv = m._gaussian(m.p1, z)
    logits = m.decoder(torch.cat([z1, z], -1).flatten(0, 1)).unflatten(0, (2, 6))
    by_hand = (m.log_likelihood(xb, logits) + gaussian_log_prob(z1, pm, pv) + gaussian_log_prob(z, 0 * z, 0 * z)
               - gaussian_log_prob(z, mu, lv) - gaussian_log_prob(z1, qm, qv))
    assert torch.allclose(t["log_w"], by_hand, atol=1e-4)
    assert m.encode(xb.float()).shape == (6, 2) and m.decode(torch.zeros(4, 2)).shape == (4, 1, 8, 8)
    assert m.reconstruct(xb.float()).shape == (6, 1, 8, 8)
    dgm.save(m, tmp_path)
    back = dgm.load(tmp_path).eval()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(m.sample(4, generator=g()), back.sample(4, generator=g()))
    with pytest.raises(ValueError, match="z1_dim"):
        VAE(VAEConfig(z1_dim=-1))


def test_a_fresh_vae_run_takes_the_recipe_and_the_disentanglement_families_do_not():
    """`dgm train vae` trains the measured recipe (VampPrior 100, two layers, lr decayed over the second half);
    each part can be set back; the beta-VAE family and its kin keep the factorised N(0, I); VAEConfig() is the
    textbook VAE."""
    from dgm.tasks import fresh_config
    c = fresh_config("vae", "digits")
    assert (c["model"]["prior"], c["model"]["vamp_components"], c["model"]["z1_dim"], c["train"]["lr_decay_start"]) \
        == ("vamp", 100, 32, 0.5)
    t = fresh_config("vae", "digits", overrides={"prior": "normal", "z1_dim": "0", "lr_decay_start": "1"})
    assert (t["model"]["prior"], t["model"]["z1_dim"], t["train"]["lr_decay_start"]) == ("normal", 0, 1.0)
    for family in ("beta-vae", "beta-tcvae", "factor-vae"):
        m = fresh_config(family, "digits")["model"]
        assert (m["prior"], m["z1_dim"]) == ("normal", 0), family
    assert (VAEConfig().prior, VAEConfig().z1_dim) == ("normal", 0)
