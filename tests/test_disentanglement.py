"""Disentanglement metrics (perfect factors ~1, mixed factors or noise low), the beta-VAE preset, traversals and the
`disentanglement` evaluate metric / `dgm traverse` command on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dgm.metrics import disentanglement as D

SIZES = (3, 4, 5, 8)
S = np.array(SIZES, dtype=float)
# Every code is +-1/2 of every standardised factor: a rotation that mixes all factors equally (normalised Hadamard).
H = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
TINY = {"beta_train": 200, "beta_eval": 150, "factor_var": 1000, "factor_train": 200, "factor_eval": 150,
        "mig_n": 2000, "dci_train": 300, "dci_test": 200, "sap_train": 500, "sap_test": 300, "batch_size": 32}


def standardised(c):
    return (c - (S - 1) / 2) / np.sqrt((S ** 2 - 1) / 12)   # uniform discrete factors -> mean 0, variance 1


REPS = {
    "factors": standardised,
    "mixed": lambda c: standardised(c) @ H.T,
    "noise": lambda c: np.random.default_rng(len(c) + int(c.sum())).normal(size=(len(c), 4)),
}
CALLS = {
    "beta_vae_score": lambda r, s: D.beta_vae_score(r, SIZES, seed=s, n_train=200, n_eval=150, batch_size=32),
    "factor_vae_score": lambda r, s: D.factor_vae_score(r, SIZES, seed=s, n_var=1000, n_train=200, n_eval=150,
                                                        batch_size=32),
    "mig": lambda r, s: D.mig(r, SIZES, seed=s, n=2000),
    "dci_disentanglement": lambda r, s: D.dci(r, SIZES, seed=s, n_train=300, n_test=200, n_estimators=25),
    "sap": lambda r, s: D.sap(r, SIZES, seed=s, n_train=500, n_test=300),
    "sap_continuous": lambda r, s: D.sap(r, SIZES, seed=s, n_train=500, continuous_factors=True),
}
# Ground truth as the representation -> at least; mixed / noise -> at most. BetaVAE and FactorVAE scores are known to
# be lenient towards rotations (a linear classifier still reads the fixed factor), so "mixed" is only held below the
# truth there. Discrete SAP (1-d linear SVM accuracy) cannot reach 1 even for the true factors.
EXPECT = {  # metric: (factors >=, mixed <=, noise <=)
    "beta_vae_score": (0.97, 0.9, 0.45),
    "factor_vae_score": (0.97, 0.55, 0.45),
    "mig": (0.95, 0.15, 0.05),
    "dci_disentanglement": (0.9, 0.4, 0.1),
    "sap": (0.2, 0.1, 0.05),
    "sap_continuous": (0.9, 0.15, 0.05),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_metric_separates_truth_from_mixing_and_noise(name):
    vals = {k: CALLS[name](rep, 0)[name] for k, rep in REPS.items()}
    lo, mixed_hi, noise_hi = EXPECT[name]
    assert vals["factors"] >= lo, vals
    assert vals["mixed"] <= mixed_hi and vals["mixed"] < vals["factors"] - 0.05, vals
    assert vals["noise"] <= noise_hi, vals


def test_metrics_are_reproducible_with_a_seed():
    rep = lambda c: standardised(c) @ H.T + 0.3 * np.sin(7 * c[:, :1])  # noqa: E731
    for name in ("beta_vae_score", "factor_vae_score", "mig", "sap"):
        assert CALLS[name](rep, 3) == CALLS[name](rep, 3)


def test_dci_completeness_and_informativeness():
    r = D.dci(REPS["factors"], SIZES, n_train=300, n_test=200, n_estimators=25)
    assert r["dci_completeness"] > 0.9 and r["dci_informativeness"] > 0.95
    # Two copies of each factor: still disentangled (each code explains one factor) but not complete.
    dup = D.dci(lambda c: np.repeat(standardised(c), 2, axis=1), SIZES, n_train=300, n_test=200, n_estimators=25)
    assert dup["dci_disentanglement"] > 0.85 and dup["dci_completeness"] < 0.75


def test_bad_representation_and_options():
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        D.mig(lambda c: np.zeros(len(c)), SIZES, n=100)
    with pytest.raises(ValueError, match="unknown sample-size"):
        D.all_metrics(REPS["factors"], SIZES, mig_samples=10)
    collapsed = D.factor_vae_score(lambda c: np.zeros((len(c), 3)), SIZES, n_var=200, n_train=20, n_eval=20)
    assert collapsed["factor_vae_score"] == 0.0
    assert D.planned_encodings(D.PROTOCOL) > 737_280 > D.planned_encodings(D.QUICK)


# -- the model side: beta-VAE preset, dSprites representation, evaluate, traversal, CLI ---------------------------
def tiny_beta_vae(**kw):
    from dgm.registry import config_from_dict, get_family
    cls = get_family("beta-vae")
    cfg = {"channels": 1, "image_size": 64, "arch": "mlp", "mlp_hidden": (32,), "latent_dim": 4, **kw}
    torch.manual_seed(0)
    return cls(config_from_dict(cls.Config, cfg))


def test_beta_vae_preset_defaults_and_objectives():
    from dgm.models.vae import VAE
    from dgm.registry import get_family
    cls = get_family("beta-vae")
    assert issubclass(cls, VAE) and cls.family == "beta-vae" and get_family("vae").family == "vae"
    c = cls.Config()
    assert (c.beta, c.latent_dim, c.likelihood, c.binarize) == (4.0, 10, "bernoulli", False)
    assert c.conv_channels == (32, 32, 64, 64)
    from dgm.data import dsprites as ds
    x = ds.render(ds.sample_factors(8, np.random.default_rng(0)))
    m = tiny_beta_vae()
    torch.manual_seed(1)
    out = m.loss((x, None))
    assert torch.allclose(out["loss"], out["recon"] + 4.0 * out["kl"], rtol=1e-5)
    # Burgess et al. 2018: gamma * |KL - C|, C = capacity_max * step / capacity_steps.
    mc = tiny_beta_vae(capacity_max=20.0, capacity_steps=100, gamma=10.0)
    mc.step = 50
    torch.manual_seed(1)
    o = mc.loss((x, None))
    assert torch.allclose(o["loss"], o["recon"] + 10.0 * (o["kl"] - 10.0).abs(), rtol=1e-5)
    conv = cls(cls.Config(channels=1, image_size=64))             # the default conv net fits 64x64
    assert conv.decode(torch.zeros(2, 10)).shape == (2, 1, 64, 64)


def test_dsprites_representation_table_equals_direct(monkeypatch):
    from dgm.data import dsprites as ds
    m = tiny_beta_vae().eval()
    direct = D.dsprites_representation(m, table=False, chunk=50)
    c = ds.sample_factors(120, np.random.default_rng(0))
    z = direct(c)
    assert z.shape == (120, 4)
    # The table path on a shrunken grid (the first 3000 rows), checked against direct encoding of the same rows.
    monkeypatch.setattr(ds, "N_IMAGES", 3000)
    table = D.dsprites_representation(m, table=True, chunk=1000)
    rows = ds.all_classes(0, 3000)[::97]
    assert np.allclose(table(rows), direct(rows), atol=1e-5)


def saved_run(tmp_path, model):
    from dgm.io import save
    run = tmp_path / "run"
    save(model, run, extra={"data": {"name": "dsprites", "image_size": 64, "data_dir": None}})
    return run


def test_evaluate_disentanglement_metric(tmp_path, monkeypatch):
    from dgm.evaluate import evaluate
    real_dci = D.dci
    # Gradient boosting over dSprites' 113 factor classes is the slow part; fewer stages keep the plumbing test fast.
    monkeypatch.setattr(D, "dci", lambda *a, **k: real_dci(*a, **{**k, "n_estimators": 5}))
    m = tiny_beta_vae()
    run = saved_run(tmp_path, m)
    res = evaluate(run, ["disentanglement"], options={"disentanglement_sizes": TINY}, model=m)
    for k in ("beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "sap"):
        assert 0.0 <= res[k]["value"] <= 1.0 and res[k]["representation"] == "posterior mean"
    assert json.loads((run / "eval.json").read_text())["mig"]["value"] == res["mig"]["value"]
    # A run on other data has no factors: skipped with a warning, not an error. (The metric reads the data's factors,
    # so the other data must load offline: the embedded digits, not MNIST, which tests cannot download.)
    from dgm.io import save
    other = tmp_path / "other"
    save(m, other, extra={"data": {"name": "digits", "image_size": 64, "data_dir": None}})
    with pytest.warns(UserWarning, match="ground-truth factors"):
        assert "mig" not in evaluate(other, ["disentanglement"], model=m)


def small_data(n=40):
    from dgm.data import ImageData
    from dgm.data import dsprites as ds
    c = ds.sample_factors(n, np.random.default_rng(0))
    return ImageData(ds.render(c), torch.from_numpy(c[:, 0]), "dsprites", 3, factors=torch.from_numpy(c))


def test_traversal_grid_rows_sorted_by_kl(tmp_path):
    from PIL import Image
    from dgm.figures import latent_order, traversal_images, write_traversal
    m = tiny_beta_vae().eval()
    data = small_data()
    order, score, name = latent_order(m, data)
    assert name == "KL" and sorted(order) == [0, 1, 2, 3] and score == sorted(score, reverse=True)
    imgs, order2, *_ = traversal_images(m, data, seed_index=3, steps=5, limit=2.0)
    assert imgs.shape == (4, 5, 1, 64, 64) and order2 == order and 0 <= imgs.min() and imgs.max() <= 1
    png, gif = write_traversal(m, tmp_path / "t.png", data, steps=6, dims=2)
    assert Image.open(png).size[1] > 2 * 64 and Image.open(gif).n_frames == 6 + 4
    with pytest.raises(ValueError, match="seed index"):
        write_traversal(m, tmp_path / "bad.png", data, seed_index=999)
    ae_cls = __import__("dgm.registry", fromlist=["get_family"]).get_family("ae")
    ae = ae_cls(ae_cls.Config(channels=1, image_size=64, arch="mlp", mlp_hidden=(16,), latent_dim=3)).eval()
    assert latent_order(ae, data)[2] == "var" and traversal_images(ae, data, steps=3)[0].shape[:2] == (3, 3)


def test_cli_traverse(tmp_path, capsys):
    from dgm.cli import main
    run = saved_run(tmp_path, tiny_beta_vae())
    assert main(["traverse", str(run), "--steps", "4", "--no-gif"]) == 0
    assert (run / "traversal.png").is_file() and not (run / "traversal.gif").exists()
    with pytest.raises(SystemExit) as e:
        main(["traverse", str(run), "--steps", "1"])
    assert e.value.code == 2 and "--steps: must be >= 2" in capsys.readouterr().err


def test_latent_factors_names_the_factor_each_dimension_carries():
    def rep(c):
        noise = np.random.default_rng(len(c)).normal(size=(len(c), 1))
        return np.concatenate([standardised(c)[:, [3, 1]], noise], 1)
    found = D.latent_factors(rep, SIZES, ("a", "b", "c", "d"), n=3000)
    assert [f[0] for f in found[:2]] == ["d", "b"] and found[0][1] > 0.8 and found[1][1] > 0.8
    assert found[2][1] < 0.05                   # the noise dimension carries nothing
    with pytest.raises(ValueError, match="factor names"):
        D.latent_factors(rep, SIZES, ("a",))


def test_traversal_rows_name_their_factor_on_dsprites(tmp_path, monkeypatch):
    from dgm.figures import traversal
    m = tiny_beta_vae().eval()
    seen = {}
    real = traversal.save_labelled_grid
    monkeypatch.setattr(traversal, "save_labelled_grid",
                        lambda *a, **k: seen.update(k) or real(*a, **k))
    traversal.write_traversal(m, tmp_path / "t.png", small_data(), steps=3, dims=2, gif=False)
    names = {"shape", "scale", "orientation", "posX", "posY", "-"}
    assert len(seen["row_labels"]) == 2 and all(lab.split("  ")[2].split(" MI=")[0] in names
                                                 for lab in seen["row_labels"]), seen["row_labels"]
    assert "normalised MI" in seen["title"]
    traversal.write_traversal(m, tmp_path / "u.png", small_data(), steps=3, dims=2, gif=False, factors=False)
    assert len(seen["row_labels"][0].split("  ")) == 2
