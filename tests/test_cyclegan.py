"""CycleGAN: losses, history pool, LR schedule, odd sizes / mixed channels, unpaired data, translate, save/load,
resume, semantic loss and the label-preservation metric. Tiny networks, a few steps: seconds on a CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dgm.data import DataError, ImageData, load_dataset, to_float
from dgm.data.unpaired import UnpairedData
from dgm.io import load
from dgm.models.cyclegan import CycleGAN, CycleGANConfig, ImagePool, match_channels
from dgm.tasks import UsageError, train, translate_paths

TINY = {"gen_width": "4", "gen_blocks": "1", "disc_width": "4", "batch_size": "4", "log_every": "1",
        "sample_every": "1000"}


def tiny(**kw) -> CycleGAN:
    cfg = dict(channels=1, image_size=12, gen_width=4, gen_blocks=1, disc_width=4, pool_size=4)
    cfg.update(kw)
    torch.manual_seed(0)
    return CycleGAN(CycleGANConfig(**cfg))


def batch(m: CycleGAN, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, s = m.config, m.config.image_size
    return (torch.randint(0, 256, (n, c.channels, s, s), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (n, m.cb, s, s), generator=g, dtype=torch.uint8))


@pytest.fixture
def folder_pair(tmp_path):
    """Official layout: grayscale 20x20 in A (6 train), RGB 17x23 in B (9 train: unequal sizes), 2 test each."""
    rng = np.random.default_rng(0)
    for split, n in (("trainA", 6), ("trainB", 9), ("testA", 2), ("testB", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            if split.endswith("A"):
                Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(tmp_path / split / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), "RGB").save(
                    tmp_path / split / f"{i}.png")
    return tmp_path


# -- the objective -------------------------------------------------------------------------------------------------
def test_cycle_and_identity_losses_follow_their_definitions():
    m = tiny()
    a_u8, b_u8 = batch(m)
    out = m.loss((a_u8, b_u8), "g")
    a, b = to_float(a_u8, "-11"), to_float(b_u8, "-11")
    with torch.no_grad():
        cyc = F.l1_loss(m.G_BA(m.G_AB(a)), a) + F.l1_loss(m.G_AB(m.G_BA(b)), b)
        idt = F.l1_loss(m.G_AB(b), b) + F.l1_loss(m.G_BA(a), a)
        adv = ((m.D_B(m.G_AB(a)) - 1) ** 2).mean() + ((m.D_A(m.G_BA(b)) - 1) ** 2).mean()
    assert torch.allclose(out["cycle"], cyc, atol=1e-6)
    assert torch.allclose(out["identity"], idt, atol=1e-6)
    assert torch.allclose(out["adv"], adv, atol=1e-6)
    # lambda = 10, identity weight 0.5 * lambda (Zhu et al. 2017)
    assert torch.allclose(out["loss"], adv + 10 * cyc + 5 * idt, atol=1e-5)
    off = tiny(lambda_identity=0.0).loss((a_u8, b_u8), "g")
    assert "identity" not in off and torch.allclose(off["loss"], off["adv"] + 10 * off["cycle"], atol=1e-5)


def test_d_phase_is_lsgan_and_only_the_phase_networks_get_gradients():
    m = tiny(pool_size=0)
    a_u8, b_u8 = batch(m)
    m.loss((a_u8, b_u8), "g")["loss"].backward()
    assert all(p.grad is None for p in m.D_A.parameters()) and any(p.grad is not None for p in m.G_AB.parameters())
    fa, fb = m._fakes
    out = m.loss((a_u8, b_u8), "d")
    a, b = to_float(a_u8, "-11"), to_float(b_u8, "-11")
    with torch.no_grad():
        want = 0.5 * (((m.D_A(a) - 1) ** 2).mean() + (m.D_A(fa) ** 2).mean()) \
            + 0.5 * (((m.D_B(b) - 1) ** 2).mean() + (m.D_B(fb) ** 2).mean())
    assert torch.allclose(out["loss"], want, atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in m.D_B.parameters())


def test_pool_returns_old_images_half_the_time_once_full():
    torch.manual_seed(0)
    pool = ImagePool(10, (1, 2, 2))
    first = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    assert torch.equal(pool.query(first), first)  # filling: returned as given
    assert int(pool.count) == 10
    new = -1.0 - torch.arange(4000.0).view(4000, 1, 1, 1).expand(4000, 1, 2, 2)  # every image distinct
    out = pool.query(new)
    old = (out[:, 0, 0, 0] != new[:, 0, 0, 0]).float().mean().item()  # swapped for a stored one
    assert abs(old - 0.5) < 0.04, old
    assert "images" in dict(pool.named_buffers()) and "count" in dict(pool.named_buffers())
    assert torch.equal(ImagePool(0, (1, 2, 2)).query(new[:3]), new[:3])


def test_pool_state_is_in_the_state_dict():
    m = tiny()
    m.loss(batch(m), "d")
    sd = m.state_dict()
    assert int(sd["pool_a.count"]) == 3 and sd["pool_b.images"].shape == (4, 1, 12, 12)


# -- shapes --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,ca,cb", [(13, 1, 3), (15, 3, 1), (16, 3, 3), (9, 1, 1)])
def test_odd_sizes_and_mixed_channels(size, ca, cb):
    m = tiny(image_size=size, channels=ca, channels_b=cb)
    a_u8, b_u8 = batch(m, n=2)
    assert a_u8.shape[1:] == (ca, size, size) and b_u8.shape[1:] == (cb, size, size)
    for phase in m.phases:
        assert torch.isfinite(m.loss((a_u8, b_u8), phase)["loss"])
    fb = m.translate(to_float(a_u8), "AtoB")
    fa = m.translate(to_float(b_u8), "BtoA")
    assert fb.shape == (2, cb, size, size) and fa.shape == (2, ca, size, size)
    assert fb.min() >= 0 and fb.max() <= 1
    assert len(m.preview((a_u8, b_u8), torch.Generator())) == 16  # 8 panel rows of 2


def test_bad_configs_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least 8x8"):
        tiny(image_size=6)
    with pytest.raises(ValueError, match="leaves no patch"):
        tiny(image_size=12, disc_layers=3)
    with pytest.raises(ValueError, match="labelled domain A"):
        tiny(semantic_weight=1.0, num_classes=0)
    m = tiny()
    with pytest.raises(ValueError, match="direction"):
        m.translate(torch.rand(1, 1, 12, 12), "AB")
    with pytest.raises(ValueError, match="expects images"):
        m.translate(torch.rand(1, 3, 12, 12), "AtoB")
    with pytest.raises(NotImplementedError):  # no sampling from noise: it translates
        m.sample(4)
    assert match_channels(torch.rand(2, 3, 4, 4), 1).shape == (2, 1, 4, 4)


# -- data ----------------------------------------------------------------------------------------------------------
def test_unpaired_names_and_balanced_sampling():
    d = load_dataset("unpaired:digits,digits", "test", image_size=12)
    assert isinstance(d, UnpairedData) and d.shape == (1, 12, 12) and d.b.shape == (1, 12, 12)
    assert d.model_fields() == {"channels": 1, "channels_b": 1, "image_size": 12, "num_classes": 10}
    a = ImageData(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 8, 8).clone(), None, "a", None)
    b = ImageData(torch.arange(30, dtype=torch.uint8).view(30, 1, 1, 1).expand(30, 1, 8, 8).clone(), None, "b", None)
    u = UnpairedData(a.images, None, "unpaired:a,b", None, b=b)
    bt = u.batches(5, seed=1)
    assert len(bt) == 6  # an epoch is a pass over the larger domain
    xa = torch.cat([bt.get(k)[0][:, 0, 0, 0] for k in range(6)])
    xb = torch.cat([bt.get(k)[1][:, 0, 0, 0] for k in range(6)])
    assert torch.bincount(xa.long(), minlength=10).tolist() == [3] * 10  # the small domain: each image 3 times
    assert torch.bincount(xb.long(), minlength=30).tolist() == [1] * 30
    assert torch.equal(u.batches(5, seed=1).get(4)[1], bt.get(4)[1])  # a pure function of (seed, k)
    for bad in ("unpaired:digits", "unpaired:digits,", "unpaired:digits,unpaired:digits"):
        with pytest.raises(DataError):
            load_dataset(bad)


def test_official_folder_layout(folder_pair):
    d = load_dataset(f"unpaired:{folder_pair}", "train", image_size=13)
    assert (len(d), len(d.b)) == (6, 9) and d.shape == (1, 13, 13) and d.b.shape == (3, 13, 13)
    assert len(load_dataset(f"unpaired:{folder_pair}", "test", image_size=13)) == 2
    (folder_pair / "testB").rename(folder_pair / "other")
    with pytest.raises(DataError, match="testB"):
        load_dataset(f"unpaired:{folder_pair}", "test")


def test_unpaired_data_and_cyclegan_go_together(tmp_path):
    with pytest.raises(UsageError, match="channels_b"):
        train("ae", "unpaired:digits,digits", steps=1, out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="unpaired:A,B"):
        train("cyclegan", "digits", steps=1, out=tmp_path / "c", overrides=TINY, progress=False)


# -- training, translate, save/load, resume ------------------------------------------------------------------------
def test_train_translate_save_load_round_trip(folder_pair, tmp_path):
    run = train("cyclegan", f"unpaired:{folder_pair}", steps=4, out=tmp_path / "run", overrides=TINY,
                image_size=13, progress=False)
    assert (run / "translations.png").is_file() and (run / "loss.png").is_file()
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"g/cycle", "g/identity", "d/d_a"} <= set(rows[0])
    m = load(run)
    assert (m.config.channels, m.config.channels_b, m.config.image_size) == (1, 3, 13)
    x = torch.rand(3, 1, 13, 13)
    y = m.translate(x, "AtoB")
    back = m.translate(y, "BtoA")
    assert y.shape == (3, 3, 13, 13) and back.shape == x.shape
    # the file holds what was trained: a second load translates identically
    assert torch.equal(load(run).translate(x, "AtoB"), y)
    outs = translate_paths(run, [str(folder_pair / "testA"), str(folder_pair / "trainA" / "0.png")],
                           tmp_path / "out", direction="AtoB")
    assert len(outs) == 3 and Image.open(outs[0]).size == (13, 13) and Image.open(outs[0]).mode == "RGB"
    one = translate_paths(run, [str(folder_pair / "testB" / "1.png")], tmp_path / "single.png", direction="BtoA")
    assert one == [tmp_path / "single.png"] and Image.open(one[0]).mode == "L"
    with pytest.raises(UsageError, match="not found"):
        translate_paths(run, [str(tmp_path / "missing.png")], tmp_path / "o")


def test_lr_constant_then_linear_decay(tmp_path):
    run = train("cyclegan", "unpaired:digits,digits", steps=8, out=tmp_path / "r", overrides=TINY, image_size=12,
                progress=False, figures=False)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["lr_decay_start"] == 0.5 and cfg["train"]["betas"] == [0.5, 0.999]
    lrs = [json.loads(ln)["lr"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    # step s uses 2e-4 * min(1, 1 - (s - 4) / 4): constant for the first half, then linearly toward 0
    want = [2e-4 * min(1.0, 1 - (s - 4) / 4) for s in range(8)]
    assert np.allclose(lrs, want, rtol=1e-6), lrs


def test_resume_is_exact_with_the_pool(tmp_path):
    kw = dict(steps=4, overrides={**TINY, "pool_size": "3", "ckpt_every": "2"}, image_size=12, progress=False,
              figures=False)
    torch.manual_seed(0)  # tasks.train builds the model before the Trainer seeds: same init for both runs
    full = train("cyclegan", "unpaired:digits,digits", out=tmp_path / "full", **kw)
    torch.manual_seed(0)
    train("cyclegan", "unpaired:digits,digits", out=tmp_path / "cut", stop_at=2, **kw)
    cut = train("cyclegan", "unpaired:digits,digits", out=tmp_path / "cut", resume=True, **kw)
    sa = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    sb = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert int(sa["pool_a.count"]) == 3
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- semantic loss and the metric ----------------------------------------------------------------------------------
def test_semantic_loss_uses_a_frozen_classifier():
    m = tiny(semantic_weight=1.0, num_classes=10)
    before = {k: v.clone() for k, v in m.f_s.state_dict().items()}
    m.train()
    assert not m.f_s.training and not any(p.requires_grad for p in m.f_s.parameters())
    assert all(p not in set(m.phase_parameters("g")) | set(m.phase_parameters("d")) for p in m.f_s.parameters())
    out = m.loss(batch(m), "g")
    assert "semantic" in out and out["semantic"] > 0
    out["loss"].backward()
    plain = tiny(num_classes=10).loss(batch(m), "g")
    assert torch.allclose(out["loss"], plain["loss"] + out["semantic"], atol=1e-5)  # same init, same images
    assert all(torch.equal(v, m.f_s.state_dict()[k]) for k, v in before.items())


def test_semantic_classifier_from_a_folder(tmp_path):
    """semantic_classifier may name a classifier's folder (e.g. one trained with zoom augmentation); a folder holding
    another kind of model is a clear error."""
    from dgm.data import load_dataset
    from dgm.io import save
    from dgm.models.classifier import Classifier, ClassifierConfig
    torch.manual_seed(1)
    clf = Classifier(ClassifierConfig(channels=1, image_size=12, num_classes=10))  # f_S has the default layers
    save(clf, tmp_path / "f_s")
    m = tiny(semantic_weight=1.0, num_classes=10, semantic_classifier=str(tmp_path / "f_s"))
    from dgm.tasks import frozen_classifier
    data = load_dataset("unpaired:digits,digits", "train", image_size=12)
    m.prepare_training(data, classifier=frozen_classifier(m.needs_classifier(data), 12))
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in m.f_s.state_dict().items())
    save(tiny(), tmp_path / "not_a_classifier")
    m = tiny(semantic_weight=1.0, num_classes=10, semantic_classifier=str(tmp_path / "not_a_classifier"))
    with pytest.raises(ValueError, match="not a classifier"):
        m.prepare_training(data, classifier=frozen_classifier(m.needs_classifier(data), 12))


def test_label_preservation_wiring():
    from dgm.metrics.translation import label_preservation
    from dgm.models.classifier import Classifier, ClassifierConfig

    class Identity:  # a "translator" that changes nothing: its accuracy must equal the source-only baseline
        def translate(self, x, direction):
            return x

    torch.manual_seed(0)
    d = load_dataset("unpaired:digits,digits", "test", image_size=12)
    clf = Classifier(ClassifierConfig(channels=1, image_size=12, num_classes=10)).eval()
    res = label_preservation(Identity(), d, clf, clf, n=200)
    for key in ("A2B", "B2A"):
        assert res[f"label_acc_{key}"]["value"] == res[f"label_acc_{key}_source_only"]["value"]
        assert 0 <= res[f"label_acc_{key}_ceiling"]["value"] <= 1 and res[f"label_acc_{key}"]["n"] == 200
        assert np.isfinite(res[f"domain_fid_{key}"]["value"])


# -- framing: the CLI and the studio frame an image the same way (issue 22) ---------------------------------------
def test_translate_frames_a_dark_digit_on_paper_like_the_studio(tmp_path):
    import io as _io
    from dgm import save
    from dgm.serve.images import decode_upload
    m = tiny(image_size=12).eval()
    save(m, tmp_path / "run")
    paper = np.full((60, 40), 250, np.uint8)    # white paper, a dark stroke off centre
    paper[10:40, 8:14] = 10
    f = tmp_path / "drawn.png"
    Image.fromarray(paper, "L").save(f)
    out = translate_paths(tmp_path / "run", [str(f)], tmp_path / "t.png")[0]
    buf = _io.BytesIO()
    Image.fromarray(paper, "L").save(buf, "PNG")
    x = decode_upload(buf.getvalue(), 1, 12)
    assert x[0, 0, 0, 0] == 0 and x.max() > 0.5        # inverted (light on dark) and cropped to the stroke
    with torch.inference_mode():
        want = (m.translate(x, "AtoB")[0, 0] * 255).round().clamp(0, 255).to(torch.uint8)
    got = torch.from_numpy(np.array(Image.open(out)))
    assert (got.int() - want.int()).abs().max() <= 1   # the same input: the same translation (PNG rounding)
    raw = translate_paths(tmp_path / "run", [str(f)], tmp_path / "raw.png", invert="no", fit="stretch")[0]
    assert not np.array_equal(np.array(Image.open(raw)), got.numpy())
    with pytest.raises(UsageError, match="invert must be"):
        translate_paths(tmp_path / "run", [str(f)], tmp_path / "x.png", invert="maybe")


def test_default_run_folders_are_readable_names():
    from dgm.tasks import default_run_folder
    assert default_run_folder("cyclegan", "unpaired:mnist,usps").as_posix() == "runs/cyclegan_unpaired-mnist-usps"
    assert default_run_folder("vae", "mnist-mini").as_posix() == "runs/vae_mnist-mini"
    assert default_run_folder("gan", "folder:/data/my faces").as_posix() == "runs/gan_folder-data-my-faces"
