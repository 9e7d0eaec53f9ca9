"""The contract every registered family keeps (ARCHITECTURE.md): each phase's loss is finite and trains that phase's
parameters, and save -> load rebuilds an identical model. Families written later are picked up automatically."""
import pytest
import torch

import dgm
from dgm.registry import config_from_dict, families, get_family


def batch_for(model, n=4):
    g = torch.Generator().manual_seed(0)
    c = model.config
    x = torch.randint(0, 256, (n, c.channels, c.image_size, c.image_size), dtype=torch.uint8, generator=g)
    if "translate" in model.capabilities():  # unpaired data: (images of A, images of B)
        cb = getattr(c, "channels_b", 0) or c.channels
        return x, torch.randint(0, 256, (n, cb, c.image_size, c.image_size), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("family", families())
def test_family_keeps_the_contract(family, tmp_path):
    cls = get_family(family)
    torch.manual_seed(0)
    model = cls(config_from_dict(cls.Config, {"channels": 1, "image_size": 16, "num_classes": 10}))
    batch = batch_for(model)
    assert model.phases and all(isinstance(p, str) for p in model.phases)
    for phase in model.phases:
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, phase)
        assert "loss" in out and out["loss"].ndim == 0 and torch.isfinite(out["loss"]), (phase, out)
        out["loss"].backward()
        params = model.phase_parameters(phase)
        assert params and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), phase
    dgm.save(model, tmp_path)
    back = dgm.load(tmp_path)
    assert type(back) is cls and back.config == model.config
    sd, sb = model.state_dict(), back.state_dict()
    assert sd.keys() == sb.keys() and all(torch.equal(sd[k], sb[k]) for k in sd)


def tiny(family, **extra):
    cls = get_family(family)
    torch.manual_seed(0)
    return cls(config_from_dict(cls.Config, {"channels": 1, "image_size": 16, "num_classes": 10, **extra})).eval()


@pytest.mark.parametrize("family", families())
def test_capabilities_are_declared_and_known(family):
    from dgm.models.base import CAPABILITIES
    model = tiny(family)
    caps = model.capabilities()
    assert isinstance(caps, frozenset) and caps <= set(CAPABILITIES), caps
    # From class and config alone: other weights, the same answer.
    other = tiny(family)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    assert other.capabilities() == caps


def _x(model, n=3):
    g = torch.Generator().manual_seed(1)
    c = model.config
    return torch.rand(n, c.channels, c.image_size, c.image_size, generator=g)


@pytest.mark.parametrize("family", families())
def test_every_declared_capability_runs(family, tmp_path):
    model = tiny(family)
    caps, c, x = model.capabilities(), model.config, _x(model)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with torch.inference_mode():
        if "sample" in caps:
            s = model.sample(5, generator=g())
            assert s.shape == (5, c.channels, c.image_size, c.image_size) and 0 <= s.min() and s.max() <= 1
        if "encode" in caps:
            z = model.encode(x)
            assert isinstance(z, torch.Tensor) and z.shape == (3, c.latent_dim)
        if "posterior" in caps:
            mu, logvar = model.posterior(x)
            assert torch.equal(mu, model.encode(x)) and logvar.shape == mu.shape
        if "decode" in caps:
            z = model.sample_latent(4, g())
            m, s = model.latent_moments()
            assert z.shape == (4, c.latent_dim) and m.shape == s.shape == (c.latent_dim,)
            assert model.decode(z).shape == (4, c.channels, c.image_size, c.image_size)
        if "reconstruct" in caps:
            assert model.reconstruct(x).shape == x.shape
        if "translate" in caps:
            assert model.translate(x, "AtoB").shape == x.shape and model.translate(x, "BtoA").shape == x.shape
        if "elbo" in caps:
            assert torch.isfinite(model.elbo(x.bernoulli(generator=g()))).all()
        if "nll" in caps:
            assert model.nll(x.bernoulli(generator=g()), k=4).shape == (3,)
        if "bits_per_dim" in caps:
            assert torch.isfinite(model.bits_per_dim((x * 255).to(torch.uint8), t_samples=2, generator=g())).all()
        if "trajectory" in caps:
            seen = []
            model.sample(2, generator=g(), callback=lambda i, t, xt, x0: seen.append(xt.shape))
            assert seen and seen[0][0] == 2
    missing = {"sample", "encode", "decode", "reconstruct", "translate"} - caps
    for name in missing:  # an ability the model does not declare is refused, not half-done
        with pytest.raises(NotImplementedError):
            getattr(model, name)(x) if name != "sample" else model.sample(2)


@pytest.mark.parametrize("family", families())
def test_save_load_gives_identical_outputs(family, tmp_path):
    model = tiny(family)
    dgm.save(model, tmp_path)
    back = dgm.load(tmp_path).eval()
    caps, x = model.capabilities(), _x(model)
    assert back.capabilities() == caps
    with torch.inference_mode():
        if "sample" in caps:
            a = model.sample(4, generator=torch.Generator().manual_seed(5))
            assert torch.equal(a, back.sample(4, generator=torch.Generator().manual_seed(5)))
        for name in ("encode", "reconstruct"):
            if name in caps:
                assert torch.equal(getattr(model, name)(x), getattr(back, name)(x)), name
        if "translate" in caps:
            assert torch.equal(model.translate(x), back.translate(x))


def test_conditional_is_a_capability_only_with_a_flag_and_classes():
    for family in ("gan", "diffusion"):
        assert "conditional" not in tiny(family).capabilities()
        m = tiny(family, conditional=True)
        assert "conditional" in m.capabilities()
        with torch.inference_mode():
            s = m.sample(3, cond=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
        assert s.shape[0] == 3
