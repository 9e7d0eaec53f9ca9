"""Labelled figures (titles, row / column labels, class names) and the degenerate-run check (dgm.figures.health)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dgm.data import ImageData
from dgm.figures.health import last_line, log_problems, run_problems, sample_diversity
from dgm.figures.plots import CLASS_NAMES, class_names, plot_latent, pyplot
from dgm.grids import labelled_grid, make_grid, to_pil


def _images(n=16, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _ink(img: Image.Image, box) -> int:
    """Dark pixels (text) inside a box of a white-background image."""
    a = np.asarray(img.convert("L").crop(box))
    return int((a < 128).sum())


# -- labelled grids ----------------------------------------------------------------------------------------------
def test_a_labelled_grid_adds_a_title_band_and_label_columns_with_text_in_them():
    x = _images()
    plain = to_pil(make_grid(x, 4), 512)
    img = labelled_grid(x, 4, title="four by four", row_labels=["original", "reconstruction"] * 2,
                        col_labels=["a", "b", "c", "d"])
    assert img.width > plain.width and img.height > plain.height
    left, top = img.width - plain.width, img.height - plain.height
    assert _ink(img, (0, 0, img.width, top // 2)) > 20              # the title's letters
    assert _ink(img, (0, top, left, img.height)) > 50               # the row labels
    assert labelled_grid(x, 4).size == plain.size                   # nothing asked, nothing added
    # A title longer than the grid wraps onto more lines instead of running off the canvas.
    long = labelled_grid(x, 4, title="word " * 60)
    assert long.width == plain.width and long.height > labelled_grid(x, 4, title="short").height


def test_class_names_come_from_the_data_then_the_table_then_the_labels():
    lab = torch.arange(10)
    fashion = ImageData(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), lab, "fashion-mnist", 10)
    assert class_names(fashion)[9] == "Ankle boot" and class_names(fashion) == CLASS_NAMES["fashion-mnist"]
    assert class_names(ImageData(fashion.images, lab, "mnist", 10)) == [str(i) for i in range(10)]
    own = ImageData(fashion.images[:2], lab[:2], "folder:x", 2, class_names=["cat", "dog"])
    assert class_names(own) == ["cat", "dog"]
    assert class_names(ImageData(fashion.images, None, "x", None)) is None


def test_the_latent_legend_names_the_garments():
    plt = pyplot()
    fig, ax = plt.subplots()
    pts = np.random.default_rng(0).normal(size=(100, 2))
    plot_latent(pts, np.arange(100) % 10, None, "t", names=CLASS_NAMES["fashion-mnist"], ax=ax)
    texts = [t.get_text() for t in ax.get_legend().texts]
    plt.close(fig)
    assert "Ankle boot" in texts and "T-shirt/top" in texts and "0" not in texts


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    from dgm.tasks import train
    out = tmp_path_factory.mktemp("fig") / "ae"
    return train("ae", "digits", steps=80, out=out, image_size=8, progress=False,
                 overrides={"latent_dim": "2", "arch": "mlp", "mlp_hidden": "64", "batch_size": "32", "log_every": "20",
                            "lr": "3e-3"})


def test_training_writes_labelled_figures_and_the_latent_grid(ae_run):
    from dgm import load
    from dgm.figures.generic import write_latent_grid
    for name in ("samples.png", "reconstructions.png", "interpolation.png", "traversal.png", "latent_grid.png",
                 "latent.png"):
        with Image.open(ae_run / name) as im:
            im.verify()
    with Image.open(ae_run / "reconstructions.png") as im:
        recon = im.convert("RGB")
    # 32 test images in pairs of rows at 8 px, scaled to 512 wide, plus a title band and the row labels' column.
    assert recon.width > 512 and _ink(recon, (0, 40, recon.width - 512, recon.height)) > 100
    with Image.open(ae_run / "interpolation.png") as im:
        assert im.width > im.height  # 6 rows of 12: image A, ten decoded points, image B
    model = load(ae_run)
    model.config.latent_dim = 3
    with pytest.raises(ValueError, match="2-D latent"):
        write_latent_grid(model, ae_run / "x.png")


# -- the degenerate-run check ------------------------------------------------------------------------------------
def _rows(**last):
    first = {"step": 50, "loss": 200.0, "active_units": 4.0}
    return [first, {"step": 100, "loss": 150.0, "active_units": 4.0, **last}]


def test_the_log_check_names_collapse_no_progress_and_non_finite_values():
    assert log_problems(_rows()) == []
    assert "no active latent units" in log_problems(_rows(active_units=0.0))[0]
    assert "did not improve" in log_problems(_rows(loss=210.0))[0]
    assert "non-finite" in log_problems(_rows(recon=float("nan")))[0]
    assert "logged nothing" in log_problems([])[0]
    # Adversarial losses need not go down: a GAN whose G loss rose is not flagged for it.
    gan = [{"step": 50, "d/loss": 1.0, "g/loss": 0.7}, {"step": 100, "d/loss": 1.2, "g/loss": 2.0}]
    assert log_problems(gan) == []


class _Sampler(torch.nn.Module):
    """A stand-in model: `sample` returns copies of one image (collapsed) or real test images (healthy)."""

    def __init__(self, data, collapsed):
        super().__init__()
        self.data, self.collapsed = data, collapsed
        self.w = torch.nn.Parameter(torch.zeros(1))

    def capabilities(self):
        return frozenset({"sample"})

    def sample(self, n, generator=None):
        x = self.data.images[:n].float() / 255
        return x[:1].expand(n, -1, -1, -1).clone() if self.collapsed else x


def test_samples_all_alike_are_flagged_and_the_last_line_says_so(tmp_path):
    imgs = (torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    data = ImageData(imgs, torch.arange(64) % 10, "t", 10)
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    healthy, collapsed = _Sampler(data, False), _Sampler(data, True)
    assert sample_diversity(collapsed, data) < 0.01 and sample_diversity(healthy, data) > 0.5
    assert run_problems(tmp_path, healthy, data) == []
    probs = run_problems(tmp_path, collapsed, data)
    assert len(probs) == 1 and "all alike" in probs[0]
    line = last_line(tmp_path, collapsed, data)
    assert line.startswith(f"run written to {tmp_path}") and "degenerate" in line and "all alike" in line
    assert "degenerate" not in last_line(tmp_path, healthy, data)


def test_a_trained_run_that_learned_passes_and_a_collapsed_one_is_named(ae_run, tmp_path):
    from dgm import load
    from dgm.data import load_dataset
    test = load_dataset("digits", "test", image_size=8)
    model = load(ae_run)
    assert not any("alike" in p for p in run_problems(ae_run, model, test))
    # Zero the decoder's last layer: every code decodes to the same image.
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
    assert any("all alike" in p for p in run_problems(ae_run, model, test))
