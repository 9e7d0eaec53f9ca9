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
    if hasattr(model, "translate"):  # unpaired data: (images of A, images of B)
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
