"""Procedural dSprites: factor order, geometry of known factor combinations, sampler, cache, loader (never the full set
in the fast tier)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgm.data import DataError, load_dataset
from dgm.data import dsprites as ds


def count(classes) -> int:
    return int((ds.render(np.array([classes])) > 0).sum())


def test_factor_grid_and_order():
    assert ds.FACTOR_SIZES == (3, 6, 40, 32, 32) and ds.N_IMAGES == 737_280
    c = ds.all_classes(0, 70)
    assert c[0].tolist() == [0, 0, 0, 0, 0]
    assert c[1].tolist() == [0, 0, 0, 0, 1]          # posY varies fastest
    assert c[32].tolist() == [0, 0, 0, 1, 0]         # then posX
    assert ds.all_classes(ds.N_IMAGES - 1)[0].tolist() == [2, 5, 39, 31, 31]
    rng = np.random.default_rng(0)
    rows = rng.integers(0, ds.N_IMAGES, 500)
    cls = np.stack(np.unravel_index(rows, ds.FACTOR_SIZES), 1)
    assert np.array_equal(ds.flat_index(cls), rows)
    with pytest.raises(ValueError, match="out of range"):
        ds.flat_index(np.array([[3, 0, 0, 0, 0]]))


def test_factor_values_match_spec():
    v = ds.factor_values(np.array([[0, 0, 0, 0, 0], [2, 5, 39, 31, 31], [1, 2, 10, 16, 1]]))
    assert v[0].tolist() == [1, 0.5, 0, 0, 0]
    assert v[1, 0] == 3 and v[1, 1] == pytest.approx(1.0) and v[1, 3] == v[1, 4] == pytest.approx(1.0)
    assert v[1, 2] == pytest.approx(2 * math.pi * 39 / 40) and v[1, 2] < 2 * math.pi
    assert v[2, 1] == pytest.approx(0.7) and v[2, 2] == pytest.approx(math.pi / 2)


def test_known_combinations_have_expected_pixel_counts():
    img = ds.render(np.array([[0, 5, 0, 15, 16]]))
    assert img.dtype == torch.uint8 and img.shape == (1, 1, 64, 64)
    assert set(img.unique().tolist()) <= {0, 255}
    assert count([0, 5, 0, 15, 16]) == 18 * 18                               # centred square, scale 1
    assert count([0, 0, 0, 15, 16]) == 9 * 9                                 # scale 0.5: a quarter of the area
    ell = math.pi * ds.ELLIPSE[0] * ds.ELLIPSE[1]
    assert abs(count([1, 5, 0, 15, 16]) - ell) < 0.08 * ell
    heart = count([2, 5, 0, 15, 16])
    assert 0.6 * 324 < heart < 1.2 * 324                                     # comparable to the square
    # Rotation keeps the area (within rasterisation error): square at 45 degrees, heart at 90.
    assert abs(count([0, 5, 5, 15, 16]) - 324) < 0.08 * 324
    assert abs(count([2, 5, 10, 15, 16]) - heart) < 0.08 * heart


def test_orientation_and_position_move_the_sprite():
    flat = ds.render(np.array([[1, 5, 0, 15, 15]]))[0, 0] > 0             # ellipse, long axis horizontal
    rows, cols = flat.nonzero(as_tuple=True)
    assert np.ptp(cols.numpy()) > 1.7 * np.ptp(rows.numpy())
    upright = ds.render(np.array([[1, 5, 10, 15, 15]]))[0, 0] > 0          # 90 degrees: vertical
    rows, cols = upright.nonzero(as_tuple=True)
    assert np.ptp(rows.numpy()) > 1.7 * np.ptp(cols.numpy())
    # Two position steps move a sprite by exactly 3 pixels (STEP = 1.5), in x for posX and y for posY.
    a = ds.render(np.array([[2, 2, 7, 10, 12]]))[0, 0]
    bx = ds.render(np.array([[2, 2, 7, 12, 12]]))[0, 0]
    by = ds.render(np.array([[2, 2, 7, 10, 14]]))[0, 0]
    assert torch.equal(a[:, :-3], bx[:, 3:]) and torch.equal(a[:-3], by[3:])
    # Extremes stay in the image: the sprite's centre of mass spans most of the width.
    left = ds.render(np.array([[0, 0, 0, 0, 15]]))[0, 0].nonzero()[:, 1].float().mean()
    right = ds.render(np.array([[0, 0, 0, 31, 15]]))[0, 0].nonzero()[:, 1].float().mean()
    assert left < 12 and right > 51


def test_samplers():
    rng = np.random.default_rng(0)
    c = ds.sample_factors(2000, rng)
    assert c.shape == (2000, 5) and (c.min(0) == 0).all() and (c.max(0) == np.array(ds.FACTOR_SIZES) - 1).all()
    f = ds.sample_fixed(300, 2, np.random.default_rng(1))
    assert len(np.unique(f[:, 2])) == 1 and all(len(np.unique(f[:, k])) > 1 for k in (0, 1, 3, 4))
    assert (ds.sample_fixed(10, 0, rng, value=2)[:, 0] == 2).all()
    with pytest.raises(ValueError, match="factor must be"):
        ds.sample_fixed(10, 5, rng)
    again = ds.sample_factors(50, np.random.default_rng(5))
    assert np.array_equal(again, ds.sample_factors(50, np.random.default_rng(5)))   # deterministic given the seed


def test_generate_packs_and_caches(tmp_path):
    path = tmp_path / "dsprites" / "cache.npz"
    packed = ds.generate(path, chunk=1000, stop=2500)
    assert packed.shape == (2500, 512) and path.is_file()
    with np.load(path) as f:
        assert np.array_equal(f["packed"], packed) and int(f["version"]) == ds.VERSION
    assert torch.equal(ds.unpack(packed, chunk=700), ds.render(ds.all_classes(0, 2500)))
    assert path.stat().st_size < packed.nbytes / 5                      # compressed


def test_test_split_loader_is_deterministic_and_consistent():
    d = load_dataset("dsprites", "test")
    assert d.images.shape == (ds.TEST_SIZE, 1, 64, 64) and d.factors.shape == (ds.TEST_SIZE, 5)
    assert d.num_classes == 3 and torch.equal(d.labels, d.factors[:, 0]) and d.class_names == list(ds.SHAPES)
    assert torch.equal(d.images[:20], ds.render(d.factors[:20].numpy()))
    assert torch.equal(load_dataset("dsprites", "test").factors, d.factors)
    small = load_dataset("dsprites", "test", image_size=32)
    assert small.images.shape[-1] == 32
    with pytest.raises(DataError, match="takes no"):
        load_dataset("dsprites:foo")


@pytest.mark.slow
def test_full_train_split(tmp_path):
    """Generates all 737,280 images (minutes, 3 GB), then loads them again from the cache."""
    d = load_dataset("dsprites", "train", data_dir=tmp_path)
    assert len(d) == ds.N_IMAGES and ds.cache_path(tmp_path).is_file()
    idx = np.array([0, 1, 12345, ds.N_IMAGES - 1])
    assert torch.equal(d.images[idx], ds.render(d.factors[idx].numpy()))
    assert torch.equal(d.factors[idx], torch.from_numpy(ds.all_classes()[idx]))
