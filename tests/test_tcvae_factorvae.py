"""beta-TCVAE's KL decomposition and FactorVAE's permutation and discriminator (issue 20); save/load and the contract
are covered for both by tests/test_contract.py, which picks up every registered family."""
from __future__ import annotations

import math

import pytest
import torch

import dgm
from dgm.models.factorvae import permute_dims
from dgm.models.tcvae import kl_decomposition
from dgm.registry import config_from_dict, get_family


def gaussian_tc(cov: torch.Tensor) -> float:
    """KL(N(0, C) || prod_d N(0, C_dd)) = (sum_d log C_dd - log det C) / 2."""
    return 0.5 * float(cov.diagonal().log().sum() - torch.logdet(cov))


def aggregate(n, cov_mu, s, seed=0):
    """A 'dataset' of n posteriors N(mu_j, s^2 I), mu_j ~ N(0, cov_mu): q(z) -> N(0, cov_mu + s^2 I) as n grows."""
    g = torch.Generator().manual_seed(seed)
    d = cov_mu.shape[0]
    mu = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_mu).T
    logvar = torch.full((n, d), 2 * math.log(s), dtype=torch.float64)
    z = mu + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z, mu, logvar


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.9])
def test_tc_estimate_matches_the_closed_form_of_a_correlated_gaussian(rho):
    s = 0.5
    cov_mu = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    z, mu, logvar = aggregate(3000, cov_mu, s)
    tc = float(kl_decomposition(z, mu, logvar, dataset_size=3000)["tc"])  # batch = dataset: the weights are exact
    truth = gaussian_tc(cov_mu + s ** 2 * torch.eye(2, dtype=torch.float64))
    assert abs(tc - truth) < 0.01, (tc, truth)


def test_decomposition_sums_to_the_monte_carlo_kl_and_mi_is_bounded():
    z, mu, logvar = aggregate(256, torch.eye(3, dtype=torch.float64) + 0.3, 0.3, seed=1)
    for n in (0, 256, 60_000):
        p = kl_decomposition(z, mu, logvar, dataset_size=n)
        log_qzx = (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp())).sum(1)
        log_pz = (-0.5 * (math.log(2 * math.pi) + z ** 2)).sum(1)
        assert torch.allclose(p["mi"] + p["tc"] + p["dwkl"], p["kl"])
        assert torch.allclose(p["kl"], (log_qzx - log_pz).mean())
        # The index-code MI of N images is at most log N (here an estimate, so with a little room).
        assert p["mi"] <= math.log(max(n, 256)) + 0.1


def test_stratified_weights_give_an_unbiased_aggregate_density():
    """Averaged over random batches (each holding item 0), the weighted sum estimates q(z_0) over the full dataset."""
    z, mu, logvar = aggregate(400, torch.eye(2, dtype=torch.float64), 0.4, seed=2)
    lq = (-0.5 * (math.log(2 * math.pi) + logvar + (z[0] - mu) ** 2 / logvar.exp())).sum(1)   # log q(z_0 | x_j)
    exact = torch.logsumexp(lq, 0) - math.log(400)
    g = torch.Generator().manual_seed(0)
    b, est = 16, []
    for _ in range(3000):
        others = 1 + torch.randperm(399, generator=g)[:b - 1]
        w = torch.cat([lq[:1] - math.log(400), lq[others] + math.log(399 / (400 * (b - 1)))])
        est.append(torch.logsumexp(w, 0).exp())
    assert abs(float(torch.stack(est).mean().log() - exact)) < 0.02


def test_beta_tcvae_with_beta_1_is_the_elbo_loss():
    cls = get_family("beta-tcvae")
    torch.manual_seed(0)
    m = cls(config_from_dict(cls.Config, {"channels": 1, "image_size": 16, "arch": "mlp", "beta": 1.0,
                                          "dataset_size": 1000}))
    x = (torch.rand(8, 1, 16, 16) * 255).to(torch.uint8)
    torch.manual_seed(1)
    out = m.loss((x, None))
    # beta = 1: recon + mi + tc + dwkl = recon + the Monte Carlo KL, whose expectation is the closed-form KL.
    assert torch.allclose(out["loss"], out["recon"] + out["mi"] + out["tc"] + out["dwkl"])
    m6 = cls(config_from_dict(cls.Config, {"channels": 1, "image_size": 16, "arch": "mlp", "beta": 6.0,
                                           "dataset_size": 1000}))
    m6.load_state_dict(m.state_dict())
    torch.manual_seed(1)
    out6 = m6.loss((x, None))
    assert torch.allclose(out6["loss"] - out["loss"], 5 * out["tc"], atol=1e-4)


def test_beta_tcvae_takes_the_dataset_size_when_a_run_starts(tmp_path):
    from dgm.tasks import train
    run = train("beta-tcvae", "digits", steps=2, out=tmp_path / "r", progress=False, figures=False,
                overrides={"arch": "mlp", "batch_size": "8", "log_every": "1"})
    back = dgm.load(run)
    assert back.config.dataset_size == len(dgm.data.load_dataset("digits", "train"))


def test_permute_dims_keeps_every_marginal_and_breaks_dependence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, generator=g)
    z = torch.cat([x, x + 0.1 * torch.randn(2000, 1, generator=g), torch.randn(2000, 1, generator=g)], 1)
    p = permute_dims(z, torch.Generator().manual_seed(1))
    assert torch.equal(p.sort(0).values, z.sort(0).values)          # each column is a permutation of itself
    assert torch.corrcoef(z.T)[0, 1] > 0.99 and abs(torch.corrcoef(p.T)[0, 1]) < 0.1
    assert torch.equal(p, permute_dims(z, torch.Generator().manual_seed(1)))


def tiny_factor(**extra):
    cls = get_family("factor-vae")
    torch.manual_seed(0)
    return cls(config_from_dict(cls.Config, {"channels": 1, "image_size": 16, "arch": "mlp", "disc_hidden": 32,
                                             "disc_layers": 2, **extra}))


def test_factor_vae_phases_train_their_own_networks():
    m = tiny_factor(gamma=10.0)
    x = (torch.rand(16, 1, 16, 16) * 255).to(torch.uint8)
    d_ids = {id(p) for p in m.discriminator.parameters()}
    assert d_ids == {id(p) for p in m.phase_parameters("d")}
    assert not d_ids & {id(p) for p in m.phase_parameters("main")}
    assert len(m.phase_parameters("main")) + len(d_ids) == len(list(m.parameters()))
    assert m.phase_options("d") == {"lr": 1e-4, "betas": (0.5, 0.9)} and m.phase_options("main") == {}
    for phase in m.phases:
        m.zero_grad(set_to_none=True)
        out = m.loss((x, None), phase)
        out["loss"].backward()
        own = m.phase_parameters(phase)
        other = m.phase_parameters("main" if phase == "d" else "d")
        assert all(p.grad is not None for p in own) and all(p.grad is None for p in other), phase
    # The TC term: gamma times D's mean logit on the codes, on top of the VAE's loss.
    torch.manual_seed(2)
    a = m.loss((x, None), "main")
    assert torch.allclose(a["loss"], a["recon"] + a["kl"] + 10.0 * a["tc"], atol=1e-4)


def test_factor_vae_discriminator_learns_dependent_from_permuted_codes():
    """With the encoder fixed to correlated codes, D's logit becomes a TC estimate close to the Gaussian's."""
    m = tiny_factor(latent_dim=2, disc_hidden=64)
    opt = torch.optim.Adam(m.discriminator.parameters(), 1e-3, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    chol = torch.linalg.cholesky(cov)
    for _ in range(1500):
        z = torch.randn(256, 2, generator=g) @ chol.T
        joint, prod = m.tc_logits(z), m.tc_logits(permute_dims(z, g))
        loss = torch.nn.functional.softplus(-joint).mean() + torch.nn.functional.softplus(prod).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        est = float(m.tc_logits(torch.randn(20_000, 2, generator=g) @ chol.T).mean())
    truth = gaussian_tc(cov.double())
    assert abs(est - truth) < 0.15, (est, truth)   # a density-ratio estimate: rougher than the closed form


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="own objective"):
        tiny_factor(capacity_max=25.0)
    with pytest.raises(ValueError, match="disc_layers"):
        tiny_factor(disc_layers=0)
    cls = get_family("beta-tcvae")
    with pytest.raises(ValueError, match="own objective"):
        cls(config_from_dict(cls.Config, {"objective": "iwae"}))
    with pytest.raises(ValueError, match="beta"):
        cls(config_from_dict(cls.Config, {"beta": -1.0}))
