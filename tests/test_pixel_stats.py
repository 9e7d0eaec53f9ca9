"""benchmarks/pixel_stats.py: the pixel statistics on an image small enough to count by hand."""
from __future__ import annotations

import sys

import pytest
import torch


def test_stats_of_a_two_by_two_image(bench_script):
    s = bench_script("pixel_stats.py").stats(torch.tensor([[[[0.0, 0.05], [0.5, 1.0]]]]))
    # uint8 first: 0, 13, 128, 255 (/255); ink > 0.5: two; faint (0, 0.1]: one; lit > 0.1: two, one of them grey.
    assert s["ink_share"] == 0.5
    assert s["faint_share"] == 0.25
    assert s["grey_share_of_lit"] == 0.5
    # |13 - 0|, |255 - 128| across; |128 - 0|, |255 - 13| down: (13 + 127 + 128 + 242) / 4 / 255
    assert s["edge_strength"] == pytest.approx(510 / 4 / 255, abs=1e-4)
    assert sum(s["histogram"]) == pytest.approx(1.0)


def test_a_folder_that_is_not_a_run_fails_before_any_work(bench_script, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pixel_stats.py", "--runs", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        bench_script("pixel_stats.py").main()
    assert "is not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_faint_fid_scores_the_samples_as_generated_then_with_faint_pixels_zeroed(bench_script,
                                                                                   monkeypatch):
    from types import SimpleNamespace

    from dgm.metrics import fid
    seen = []
    monkeypatch.setattr(fid, "load_inception", lambda precision: "ext")
    monkeypatch.setattr(fid, "reference_stats", lambda *a, **k: {"mu": 0, "sigma": 0})
    monkeypatch.setattr(fid, "features", lambda imgs, ext, bs, progress: seen.append(imgs.clone()) or imgs)
    monkeypatch.setattr(fid, "feature_stats", lambda f: (f.float().mean(), 0))
    monkeypatch.setattr(fid, "frechet_distance", lambda mu, sigma, m, s: float(m))
    x = torch.tensor([0, 10, 25, 26, 200, 255], dtype=torch.uint8).view(1, 1, 2, 3)
    res = bench_script("pixel_stats.py").faint_fid(SimpleNamespace(data="mnist", data_dir=None), x)
    assert torch.equal(seen[0], x)
    assert seen[1].flatten().tolist() == [0, 0, 0, 26, 200, 255]
    assert res["as_generated"] == pytest.approx(x.float().mean().item(), abs=1e-3)
    assert res["faint_zeroed"] == pytest.approx((26 + 200 + 255) / 6, abs=1e-3)
    assert res["n"] == 1
