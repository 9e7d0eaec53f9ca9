"""`dgm demo` on tiny budgets: the page, every figure it links, the summary, the families it names; the packaged
mnist-mini data it trains on."""
import re
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

from dgm.cli import main
from dgm.config import UsageError
from dgm.data import load_dataset
from dgm.demo import PART_NAMES, PARTS, SECTIONS, run_demo


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.hrefs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a":
            self.hrefs.append(a["href"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(page):
    p = _Links()
    p.feed(page.read_text())
    return p


def test_mnist_mini_is_packaged_balanced_and_real():
    tr, te = load_dataset("mnist-mini", "train"), load_dataset("mnist-mini", "test")
    assert tr.images.shape == (10000, 1, 28, 28) and te.images.shape == (2000, 1, 28, 28)
    assert torch.bincount(tr.labels).tolist() == [1000] * 10 and torch.bincount(te.labels).tolist() == [200] * 10
    assert 0.10 < tr.images.float().mean().item() / 255 < 0.16  # MNIST's mean ink, 0.13
    assert load_dataset("mnist-mini", "test", image_size=16).images.shape[-1] == 16


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    lines = []
    page = run_demo(out, steps=3, jobs=1, say=lines.append)
    return out, page, lines


def test_the_demo_page_links_only_figures_that_exist_and_names_the_families(demo):
    out, page, lines = demo
    assert page == out / "index.html"
    p = _parse(page)
    assert len(p.imgs) >= 1 + sum(len(row) for *_, rows in SECTIONS for row in rows)  # the summary + every figure
    for src in p.imgs + [h for h in p.hrefs if h.endswith(".png")]:
        with Image.open(out / src) as im:
            im.verify()
    text = " ".join(p.text)
    named = [f for f in ("Autoencoder", "VAE", "beta-VAE", "GAN", "CycleGAN", "Diffusion") if f in text]
    assert len(named) >= 4, named
    assert "not run" not in text and "FAILED" not in " ".join(lines)
    assert f"dgm serve {out}" in text
    # Each figure has the lecture's sentence beside it.
    assert "D can no longer tell fake from real" in text and "pure noise" in text
    assert all(f"{p.name}: " in " ".join(lines) for p in PARTS)


def test_the_summary_picture_is_a_labelled_panel(demo):
    out, _, _ = demo
    with Image.open(out / "summary.png") as im:
        assert im.width > 1000 and im.height > 700 and im.width > im.height


def test_dgm_demo_trains_in_worker_processes_and_says_where_the_page_is(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), "--only", "ae,vae", "--steps", "2", "--jobs", "2"]) == 0
    said = capsys.readouterr().out
    assert f"dgm serve {out}" in said and str(out / "index.html") in said
    assert (out / "logs" / "ae.log").is_file() and (out / "vae" / "latent.png").is_file()
    page = (out / "index.html").read_text()
    assert "not part of this demo run" in page  # the parts left out say so instead of a broken image
    # Again into the same folder: the earlier demo runs are replaced, not refused.
    assert main(["demo", "--out", str(out), "--only", "ae", "--steps", "2", "--jobs", "1", "-q"]) == 0


def test_bad_demo_options_are_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown demo part 'nope'"):
        run_demo(tmp_path, parts=["nope"])
    with pytest.raises(UsageError, match="jobs"):
        run_demo(tmp_path, jobs=0)
    (tmp_path / "ae").mkdir()
    (tmp_path / "ae" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a run folder"):
        run_demo(tmp_path, parts=["ae"], steps=1)
    assert (tmp_path / "ae" / "notes.txt").read_text() == "mine"


def test_every_part_has_a_command_that_names_its_budget():
    for p in PARTS:
        cmd = " ".join(p.command(__import__("pathlib").Path("runs/demo")))
        assert re.search(r"--set minutes=[0-9.]+", cmd) and f"--out runs/demo/{p.name}" in cmd
    assert set(PART_NAMES) == {"ae", "vae", "beta_vae", "gan", "cyclegan", "diffusion"}


def test_screenshot_of_the_demo_page():
    """`DGM_SCREENSHOTS=docs/img DGM_DEMO=runs/demo pytest tests/test_demo.py -k screenshot` writes
    docs/img/demo_page.png (the page's first section) and copies the demo's summary.png to docs/img/demo_summary.png."""
    import os
    import shutil
    from pathlib import Path
    dest, demo_dir = os.environ.get("DGM_SCREENSHOTS"), os.environ.get("DGM_DEMO")
    if not (dest and demo_dir):
        pytest.skip("set DGM_SCREENSHOTS (output folder) and DGM_DEMO (a finished demo folder) to take it")
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if chromium is None:
        pytest.skip("chromium not found: apt-get install chromium (never playwright install)")
    from playwright.sync_api import sync_playwright
    page_file = (Path(demo_dir) / "index.html").resolve()
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        pg = b.new_page(viewport={"width": 1280, "height": 1500})
        pg.goto(page_file.as_uri())
        pg.wait_for_load_state("load")
        # Every image on the page loaded (a broken link has naturalWidth 0).
        assert pg.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        # The first section: figures side by side, each with the lecture's sentence under it.
        top = pg.locator("h2").first.bounding_box()["y"] - 16
        pg.screenshot(path=str(out / "demo_page.png"), full_page=True,
                      clip={"x": 0, "y": top, "width": 1280, "height": 1500})
        b.close()
    shutil.copyfile(Path(demo_dir) / "summary.png", out / "demo_summary.png")
    with Image.open(out / "demo_page.png") as im:
        assert im.size == (1280, 1500)
