"""dgm studio end to end in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python package; never a
downloaded browser). The page runs under its own Content-Security-Policy, so waits use Playwright locators, not eval.

Screenshots for the README: DGM_SCREENSHOTS=docs/img DGM_STUDIO_RUNS=path/to/runs pytest tests/test_browser.py -k shots
"""
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="dgm[serve] extra (fastapi) not installed")
pytest.importorskip("playwright", reason="playwright not installed (pip install -e '.[dev]')")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
if CHROMIUM is None:
    pytest.skip("chromium not found: install Debian's package (apt-get install chromium); the browser tests never "
                "download a browser", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from dgm.serve import create_app  # noqa: E402

TIMEOUT = 60_000  # ms; the CPU is shared, model loads are slow on a busy machine
expect.set_options(timeout=TIMEOUT)  # expect() has its own 5 s default, separate from the page's
TINY = {"latent_dim": "4", "conv_channels": "8,16", "batch_size": "64"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dgm.tasks import train
    root = tmp_path_factory.mktemp("browser") / "runs"
    train("vae", "digits", steps=20, out=root / "vae_digits", overrides=TINY, figures=False, progress=False)
    train("ae", "digits", steps=20, out=root / "ae_digits", overrides=TINY, figures=False, progress=False)
    return root


@pytest.fixture(scope="module")
def base(runs, serve_on_loopback):
    with serve_on_loopback(create_app(runs)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:  # a chromium that is found but does not start is a failure, not a skip
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 4" not in m.text else None)
    yield pg
    ctx.close()
    assert not errors, f"errors in the page: {errors}"


DATA = re.compile(r"^data:image/png;base64,")


def loaded(pg):
    expect(pg.locator("#sample-img")).to_have_attribute("src", DATA)
    expect(pg.locator("#decoded-img")).to_have_attribute("src", DATA)


def test_page_shows_a_sample_and_new_sample_changes_it(page, base):
    page.goto(f"{base}/?run=vae_digits&seed=5")
    loaded(page)
    expect(page.locator("#hero-title")).to_have_text("This digit does not exist")
    expect(page.locator("#seed-value")).to_have_text("5")
    first = page.locator("#sample-img").get_attribute("src")
    page.click("#new-sample")
    expect(page.locator("#seed-value")).not_to_have_text("5")
    expect(page.locator("#sample-img")).not_to_have_attribute("src", first)
    # The link with the seed reproduces the sample exactly.
    second = page.locator("#sample-img").get_attribute("src")
    href = page.locator("#seed-link").get_attribute("href")
    assert "seed=" in href and "run=vae_digits" in href
    page.goto(base + href)
    expect(page.locator("#sample-img")).to_have_attribute("src", second)
    # A plain reload is a new visit: a fresh sample, not the linked one.
    linked = re.search(r"seed=(\d+)", href).group(1)
    expect(page.locator("#sample-img")).to_have_attribute("data-seed", linked)
    assert "seed=" not in page.url  # the address bar keeps the run, not the seed
    page.reload()
    expect(page.locator("#sample-img")).to_have_attribute("data-seed", re.compile(r"^\d+$"))
    assert page.locator("#sample-img").get_attribute("data-seed") != linked


def test_slider_moves_the_decoded_image(page, base):
    page.goto(f"{base}/?run=vae_digits&seed=1")
    loaded(page)
    sliders = page.locator("#sliders input[type=range]")
    expect(sliders).to_have_count(4)
    before = page.locator("#decoded-img").get_attribute("src")
    sliders.first.focus()
    page.keyboard.press("End")  # to the top of the range: an input event, as a drag would send
    expect(page.locator("#decoded-img")).not_to_have_attribute("src", before)
    moved = page.locator("#decoded-img").get_attribute("src")
    page.keyboard.press("Home")
    expect(page.locator("#decoded-img")).not_to_have_attribute("src", moved)


def _digit_png(tmp_path) -> Path:
    from PIL import Image, ImageDraw
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).ellipse((60, 40, 140, 160), outline=0, width=14)  # a dark zero on white paper
    p = tmp_path / "zero.png"
    im.save(p)
    return p


def test_upload_reconstructs(page, base, tmp_path):
    page.goto(f"{base}/?run=vae_digits")
    loaded(page)
    page.set_input_files("#upload", str(_digit_png(tmp_path)))
    expect(page.locator("#seen-img")).to_have_attribute("src", DATA)
    expect(page.locator("#out-img")).to_have_attribute("src", DATA)
    expect(page.locator("#out-caption")).to_have_text("reconstruction")


def test_draw_then_reconstruct_and_interpolate(page, base):
    page.goto(f"{base}/?run=vae_digits")
    loaded(page)
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8, steps=8)
    page.mouse.up()
    page.click("#do-reconstruct")
    expect(page.locator("#out-img")).to_have_attribute("src", DATA)
    expect(page.locator("#interp-img")).to_have_attribute("src", DATA)
    before = page.locator("#interp-img").get_attribute("src")
    page.click("#use-a")
    expect(page.locator("#a-own")).to_be_visible()
    page.click("#do-interp")
    expect(page.locator("#interp-img")).not_to_have_attribute("src", before)


def test_bad_upload_shows_the_servers_message(browser, base, tmp_path):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT)
    pg.goto(f"{base}/?run=vae_digits")
    loaded(pg)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not really a png")
    pg.set_input_files("#upload", str(bad))
    expect(pg.locator("#toast")).to_be_visible()
    expect(pg.locator("#toast")).to_contain_text("not an image")
    pg.click("#new-sample")  # the page and the server go on
    expect(pg.locator("#sample-img")).to_have_attribute("src", DATA)
    ctx.close()


def test_switch_to_persian_and_back(page, base):
    page.goto(f"{base}/?run=vae_digits")
    loaded(page)
    page.click("#lang-toggle")
    html = page.locator("html")
    expect(html).to_have_attribute("dir", "rtl")
    expect(html).to_have_attribute("lang", "fa")
    expect(page.locator("#hero-title")).to_have_text("این رقم وجود ندارد")
    expect(page.locator("#new-sample")).to_have_text("نمونهٔ تازه")
    assert "lang=fa" in page.locator("#seed-link").get_attribute("href")
    page.reload()  # the choice is remembered
    expect(html).to_have_attribute("dir", "rtl")
    page.click("#lang-toggle")
    expect(html).to_have_attribute("dir", "ltr")
    expect(page.locator("#new-sample")).to_have_text("New sample")


def test_switching_runs(page, base):
    page.goto(f"{base}/?run=vae_digits")
    loaded(page)
    page.select_option("#run-select", "ae_digits")
    expect(page.locator("#run-meta")).to_contain_text("ae · digits")
    expect(page.locator("#explorer-hint")).to_contain_text("vary most")  # an AE's dims: by variance, not KL


def test_screenshots(browser, tmp_path, serve_on_loopback):
    """Not a check: writes the README's screenshots when DGM_SCREENSHOTS (and DGM_STUDIO_RUNS) are set: the page in
    English and Persian for DGM_STUDIO_RUN (default: the first run), and the translate / denoising cards of the first
    runs that can do those."""
    import json
    import urllib.request
    out, root = os.environ.get("DGM_SCREENSHOTS"), os.environ.get("DGM_STUDIO_RUNS")
    if not out or not root:
        pytest.skip("no screenshots requested: set DGM_SCREENSHOTS=docs/img and DGM_STUDIO_RUNS=RUNS_DIR to write them")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with serve_on_loopback(create_app(root)) as base:
        runs = json.load(urllib.request.urlopen(f"{base}/api/runs"))["runs"]
        run = os.environ.get("DGM_STUDIO_RUN") or runs[0]["id"]
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT * 3)
        pg.goto(f"{base}/?lang=en&seed={os.environ.get('DGM_STUDIO_SEED', '5')}&run={run}")
        loaded(pg)
        expect(pg.locator("#interp-img")).to_have_attribute("src", DATA)
        pg.set_input_files("#upload", str(_digit_png(tmp_path)))
        expect(pg.locator("#out-img")).to_have_attribute("src", DATA)
        pg.wait_for_timeout(800)
        pg.screenshot(path=str(out / "studio.png"))
        pg.click("#lang-toggle")
        expect(pg.locator("html")).to_have_attribute("dir", "rtl")
        pg.wait_for_timeout(500)
        pg.screenshot(path=str(out / "studio_fa.png"))
        pg.click("#lang-toggle")
        for cap, card, name in (("translate", "#draw", "studio_translate.png"), ("trajectory", "#hero", "studio_denoise.png")):
            r = next((r for r in runs if r["capabilities"].get(cap) and not r["error"]), None)
            if r is None:
                continue
            pg.goto(f"{base}/?lang=en&seed={os.environ.get('DGM_STUDIO_CARD_SEED', '3')}&run={r['id']}")
            expect(pg.locator("#run-meta")).not_to_be_empty()
            if cap == "translate":
                pg.set_input_files("#upload", str(_digit_png(tmp_path)))
                expect(pg.locator("#out-img")).to_have_attribute("src", DATA)
            else:
                expect(pg.locator("#strip-img")).to_have_attribute("src", DATA)
            pg.wait_for_timeout(500)
            pg.locator(card).screenshot(path=str(out / name))
        ctx.close()
