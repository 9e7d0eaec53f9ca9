"""dgm studio API (`dgm serve`): every endpoint, every bad input, path traversal, limits, and a bounded flood of bad
requests against a real server on 127.0.0.1. Runs are tiny AE/VAE models trained for a few steps on `digits`."""
import io
import json
import shutil
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="dgm[serve] extra (fastapi) not installed")
pytest.importorskip("multipart", reason="dgm[serve] extra (python-multipart) not installed")
with warnings.catch_warnings():  # starlette's notice that its TestClient will move to httpx2: not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from dgm.serve import create_app  # noqa: E402
from dgm.serve import images as simg  # noqa: E402
from dgm.serve.app import MAX_BODY, MAX_N  # noqa: E402
from dgm.serve.caps import sample_options  # noqa: E402

TINY = {"latent_dim": "4", "conv_channels": "8,16", "batch_size": "64"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder: a VAE (with a figure and eval.json), an AE one level down, a run of an unknown family,
    a folder that is not a run, and a secret file beside the runs that no request may reach."""
    from dgm.figures import write_samples
    from dgm.tasks import train
    root = tmp_path_factory.mktemp("studio") / "runs"
    vae = train("vae", "digits", steps=20, out=root / "vae_digits", overrides=TINY, figures=False, progress=False)
    ae = train("ae", "digits", steps=20, out=root / "sweep" / "ae_digits", overrides=TINY, figures=False,
               progress=False)
    from dgm import load
    write_samples(load(vae), vae / "samples.png", n=16)
    (vae / "eval.json").write_text(json.dumps({"test_elbo": {"value": -123.4, "unit": "nats", "n": 100},
                                               "recon_mse": {"value": 0.02, "n": 100},
                                               "junk": "not a metric", "diverged": {"value": float("nan")}}))
    (ae / "eval.json").write_text(json.dumps({"test_elbo": {"value": -150.0, "n": 50},
                                              "recon_mse": {"value": 0.01, "n": 100}}))
    with open(ae / "metrics.jsonl", "a") as f:  # a diverged step: JSON has no NaN, the API must still answer
        f.write('{"step": 21, "loss": NaN}\n')
    alien = root / "alien"
    alien.mkdir()
    shutil.copy(vae / "model.safetensors", alien / "model.safetensors")
    cfg = json.loads((vae / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**cfg, "family": "no-such-family"}))
    (root / "notes").mkdir()
    (root / "notes" / "config.json").write_text("{not json")
    (root.parent / "secret.txt").write_text("root:x:0:0")
    return root


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs)) as c:
        yield c


def png(img: Image.Image, fmt="PNG") -> bytes:
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue()


def digit_on_paper() -> bytes:
    """A dark '1' on white paper, larger than the model's input, as a phone photo would be."""
    im = Image.new("RGB", (120, 90), (250, 250, 245))
    for y in range(20, 75):
        for x in range(55, 63):
            im.putpixel((x, y), (20, 20, 30))
    return png(im)


def err(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg
    return msg


# -- discovery and read-only API -----------------------------------------------------------------------------------
def test_runs_found_with_capabilities(client):
    data = client.get("/api/runs").json()
    by_id = {r["id"]: r for r in data["runs"]}
    assert set(by_id) == {"vae_digits", "sweep.ae_digits", "alien"}  # "notes" has no weights: not a run
    vae = by_id["vae_digits"]
    assert vae["family"] == "vae" and vae["dataset"] == "digits" and vae["step"] == 20
    c = vae["capabilities"]
    assert c["sample"] and c["encode"] and c["decode"] and c["reconstruct"] and not c["translate"]
    assert c["latent_dim"] == 4 and c["image_size"] == 16 and c["channels"] == 1
    assert not c["conditional"] and c["sample_options"] == [] and not c["trajectory"]
    assert vae["eval"] == {"test_elbo": {"value": -123.4, "unit": "nats", "n": 100},  # non-metrics dropped
                           "recon_mse": {"value": 0.02, "n": 100}}
    assert "unknown model family" in by_id["alien"]["error"]
    assert by_id["sweep.ae_digits"]["step"] == 21
    assert client.get("/api/runs/sweep.ae_digits").json()["last_log"] == {"step": 21, "loss": None}
    assert data["limits"]["n"] == MAX_N


def test_run_detail_figures_and_leaderboard(client):
    d = client.get("/api/runs/vae_digits").json()
    assert d["figures"] == ["samples.png"] and d["config"]["family"] == "vae"
    r = client.get("/api/runs/vae_digits/files/samples.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    err(client.get("/api/runs/vae_digits/files/config.json"), 404)  # only pictures are served
    board = client.get("/api/leaderboard").json()["datasets"]["digits"]
    assert sorted(row["id"] for row in board["rows"]) == ["sweep.ae_digits", "vae_digits"]
    assert {row["id"]: row["values"]["recon_mse"] for row in board["rows"]} == {"vae_digits": 0.02,
                                                                               "sweep.ae_digits": 0.01}
    cols = board["columns"]
    assert list(cols) == ["test_elbo", "recon_mse"]  # dgm leaderboard's column order
    assert cols["recon_mse"]["better"] == "down" and cols["recon_mse"]["comparable"]
    assert not cols["test_elbo"]["comparable"]  # n = 100 vs n = 50: not the same protocol


def test_index_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and "dgm studio" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    assert "فارسی" in r.text  # the language switch


def test_unknown_run_and_broken_run(client):
    assert "unknown run 'nope'" in err(client.post("/api/runs/nope/sample", json={}), 404)
    assert "no-such-family" in err(client.post("/api/runs/alien/sample", json={}), 409)


@pytest.mark.parametrize("url", [
    "/api/runs/..%2F..%2Fsecret.txt",
    "/api/runs/%2E%2E/files/secret.txt",
    "/api/runs/vae_digits/files/..%2F..%2Fsecret.txt",
    "/api/runs/vae_digits/files/%2E%2E%2F%2E%2E%2Fsecret.txt",
    "/api/runs/vae_digits/files/..\\..\\secret.txt",
    "/api/runs/%2Fetc%2Fpasswd/files/passwd",
    "/static/..%2F..%2F..%2Fsecret.txt",
    "/static/%2E%2E/app.py",
])
def test_path_traversal_is_refused(client, url):
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code)
    assert "root:x" not in r.text and "import" not in r.text


# -- sampling --------------------------------------------------------------------------------------------------------
def test_sample_png_is_reproducible_from_its_seed(client):
    a = client.post("/api/runs/vae_digits/sample", json={"n": 4, "seed": 7})
    b = client.post("/api/runs/vae_digits/sample", json={"n": 4, "seed": 7})
    c = client.post("/api/runs/vae_digits/sample", json={"n": 4, "seed": 8})
    assert a.headers["content-type"] == "image/png" and a.headers["x-seed"] == "7"
    assert a.content == b.content != c.content
    assert Image.open(io.BytesIO(a.content)).size[0] > 16  # a grid of 4


def test_sample_without_seed_returns_the_seed_it_used(client):
    r = client.post("/api/runs/vae_digits/sample", json={"format": "json"}).json()
    again = client.post("/api/runs/vae_digits/sample", json={"format": "json", "seed": r["seed"]}).json()
    assert r["image"].startswith("data:image/png;base64,") and r["image"] == again["image"]
    assert client.post("/api/runs/vae_digits/sample").status_code == 200  # no body at all


def test_sample_z_decodes_to_the_sample(client):
    """The explorer starts at the sample's own code: decoding it gives the same picture."""
    r = client.post("/api/runs/vae_digits/sample", json={"seed": 3, "format": "json"}).json()
    assert len(r["z"]) == 1 and len(r["z"][0]) == 4
    d = client.post("/api/runs/vae_digits/decode", json={"z": r["z"], "format": "json"}).json()
    assert d["image"] == r["image"]
    ae = client.post("/api/runs/sweep.ae_digits/sample", json={"seed": 3, "format": "json"}).json()
    d = client.post("/api/runs/sweep.ae_digits/decode", json={"z": ae["z"], "format": "json"}).json()
    assert d["image"] == ae["image"]


@pytest.mark.parametrize("body, needle", [
    ({"n": 0}, "n"), ({"n": MAX_N + 1}, "n"), ({"n": "many"}, "n"), ({"seed": -1}, "seed"),
    ({"seed": 2**31}, "seed"), ({"seed": 1.5}, "seed"), ({"label": 3}, "not class-conditional"),
    ({"label": -1}, "label"), ({"options": {"steps": 10}}, "unknown sampler option 'steps'"),
    ({"trajectory": True}, "no intermediate steps"), ({"format": "gif"}, "format"), ({"colour": 1}, "colour"),
    ([1, 2], "request"), ("text", "request"),
])
def test_sample_bad_inputs(client, body, needle):
    assert needle in err(client.post("/api/runs/vae_digits/sample", json=body), 422)


def test_invalid_json_body(client):
    r = client.post("/api/runs/vae_digits/sample", content=b"{nope", headers={"content-type": "application/json"})
    assert "JSON" in err(r, 422)


# -- latent explorer --------------------------------------------------------------------------------------------------
def test_latent_sorted_by_kl_for_vae_and_variance_for_ae(client):
    v = client.get("/api/runs/vae_digits/latent").json()
    assert v["sorted_by"] == "kl" and sorted(v["order"]) == [0, 1, 2, 3]
    assert v["score"] == sorted(v["score"], reverse=True) and all(s >= 0 for s in v["score"])
    a = client.get("/api/runs/sweep.ae_digits/latent").json()
    assert a["sorted_by"] == "variance" and all(s > 0 for s in a["std"])
    assert 0.3 < v["content_fraction"] <= 1.0


def test_decode(client):
    r = client.post("/api/runs/vae_digits/decode", json={"z": [0.0, 0.5, -1.0, 2.0]})
    assert r.headers["content-type"] == "image/png" and Image.open(io.BytesIO(r.content)).size == (16, 16)
    r = client.post("/api/runs/vae_digits/decode", json={"z": [[0.0] * 4] * 3, "format": "json"})
    assert r.json()["image"].startswith("data:image/png")


@pytest.mark.parametrize("z, needle", [
    ([0.0] * 3, "4 numbers"), ([[0.0] * 5], "4 numbers"), ([], "z"), ([[0.0] * 4] * (MAX_N + 1), "z"),
    ([1e9, 0, 0, 0], "finite"), ("abc", "z"), ([[0.0, "x", 0, 0]], "z"), ([[0.0] * 4, [0.0] * 3], "same length"),
    ([[]], "z"),
])
def test_decode_bad_inputs(client, z, needle):
    assert needle in err(client.post("/api/runs/vae_digits/decode", json={"z": z}), 422)


def test_decode_nan_refused(client):
    body = b'{"z": [NaN, 0, 0, 0]}'  # Python's json reads NaN; the studio must not decode it
    r = client.post("/api/runs/vae_digits/decode", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422


# -- uploads: reconstruct, encode, interpolate --------------------------------------------------------------------------
def test_reconstruct_upload_is_framed_like_the_data(client):
    r = client.post("/api/runs/vae_digits/reconstruct", files={"file": ("one.png", digit_on_paper(), "image/png")},
                    data={"format": "json"})
    out = r.json()
    assert r.status_code == 200 and len(out["z"]) == 4
    import base64
    seen = Image.open(io.BytesIO(base64.b64decode(out["input"].split(",", 1)[1])))
    assert seen.size == (16, 16)
    px = torch.from_numpy(np.asarray(seen, dtype=np.float32)) / 255
    assert px.mean() < 0.5, "dark-on-white paper is inverted to a light digit on black"
    assert px[:, 7:9].mean() > px[:, :3].mean() + 0.3, "the stroke is centred"
    r = client.post("/api/runs/vae_digits/reconstruct", files={"file": ("a.jpg", png(Image.new("RGB", (40, 30)), "JPEG"),
                                                                        "image/jpeg")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"  # input | reconstruction


def test_encode_and_transparent_canvas(client):
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    for y in range(10, 54):
        im.putpixel((30, y), (0, 0, 0, 255))  # black stroke on a transparent background
    r = client.post("/api/runs/vae_digits/encode", files={"file": ("c.png", png(im), "image/png")})
    assert r.status_code == 200 and len(r.json()["z"]) == 4


def _big_png() -> bytes:
    # Incompressible noise: a valid PNG over the upload limit.
    g = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (1300, 1300, 3), generator=g, dtype=torch.uint8).numpy()
    return png(Image.fromarray(arr))


@pytest.mark.parametrize("make, status, needle", [
    (lambda: b"", 400, "empty"),
    (lambda: b"this is not an image at all", 415, "not an image"),
    (lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "not an image"),
    (lambda: png(Image.new("L", (64, 64), 128))[:80], 400, "corrupt"),
    (lambda: png(Image.new("L", (5000, 2))), 413, "5000x2"),
    (lambda: _big_png(), 413, "limit"),
])
def test_bad_uploads(client, make, status, needle):
    data = make()
    r = client.post("/api/runs/vae_digits/reconstruct", files={"file": ("x.png", data, "image/png")})
    assert needle in err(r, status)


@pytest.mark.parametrize("form, needle", [({"invert": "maybe"}, "invert"), ({"fit": "zoom"}, "fit"),
                                          ({"format": "bmp"}, "format")])
def test_bad_upload_options(client, form, needle):
    r = client.post("/api/runs/vae_digits/reconstruct", files={"file": ("one.png", digit_on_paper(), "image/png")},
                    data=form)
    assert needle in err(r, 422)


def test_missing_file_and_wrong_capability(client):
    assert "file" in err(client.post("/api/runs/vae_digits/reconstruct"), 422)
    r = client.post("/api/runs/vae_digits/translate", files={"file": ("one.png", digit_on_paper(), "image/png")})
    assert "cannot translate" in err(r, 422)


def test_interpolate_between_seeds_and_images(client):
    r = client.post("/api/runs/vae_digits/interpolate", data={"seed_a": "1", "seed_b": "2", "steps": "5"})
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] > 4 * 16
    one = digit_on_paper()
    r = client.post("/api/runs/vae_digits/interpolate", files={"a": ("a.png", one, "image/png"),
                                                               "b": ("b.png", one, "image/png")},
                    data={"steps": "3", "format": "json"}).json()
    assert len(r["frames"]) == 3 and r["frames"][0] == r["frames"][-1]  # same image at both ends


@pytest.mark.parametrize("form, files, needle", [
    ({"steps": "1"}, None, "steps"), ({"steps": "999"}, None, "steps"), ({"seed_a": "-4"}, None, "seed_a"),
    ({"seed_a": "x"}, None, "seed_a"), ({"seed_a": "1"}, {"a": ("a.png", b"\x89PNG", "image/png")}, "not both"),
    ({"label": "2"}, None, "not class-conditional"), ({"invert": "x", "seed_a": "1"}, None, "invert"),
])
def test_interpolate_bad_inputs(client, form, files, needle):
    r = client.post("/api/runs/vae_digits/interpolate", data=form, files=files)
    assert needle in err(r, 422)


# -- limits, robustness -----------------------------------------------------------------------------------------------------
def test_body_cap(client):
    r = client.post("/api/runs/vae_digits/decode", content=b"x" * (MAX_BODY + 1),
                    headers={"content-type": "application/json"})
    assert "too large" in err(r, 413)
    r = client.post("/api/runs/vae_digits/decode", content=b"{}",
                    headers={"content-type": "application/json", "content-length": "99999999999"})
    assert r.status_code == 413


def test_queue_bound_gives_503(runs):
    with TestClient(create_app(runs, max_pending=0)) as c:
        assert "busy" in err(c.post("/api/runs/vae_digits/sample", json={}), 503)
        assert c.get("/api/runs").status_code == 200


def test_model_fault_is_json_500_and_server_goes_on(runs, monkeypatch):
    from dgm.serve import infer

    def broken(*a, **k):
        raise RuntimeError("boom")
    with TestClient(create_app(runs), raise_server_exceptions=False) as c:
        monkeypatch.setattr(infer, "decode", broken)
        assert "boom" in err(c.post("/api/runs/vae_digits/decode", json={"z": [0, 0, 0, 0]}), 500)
        monkeypatch.undo()
        assert c.post("/api/runs/vae_digits/decode", json={"z": [0, 0, 0, 0]}).status_code == 200


def test_models_load_lazily_and_once(runs):
    app = create_app(runs)
    studio = app.state.studio
    assert not studio._models
    with TestClient(app) as c:
        c.post("/api/runs/vae_digits/sample", json={})
        m = studio._models["vae_digits"]
        c.post("/api/runs/vae_digits/sample", json={})
        assert studio._models["vae_digits"] is m and list(studio._models) == ["vae_digits"]


def test_rescan_finds_new_runs(runs, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    with TestClient(create_app(root)) as c:
        assert c.get("/api/runs").json()["runs"] == []
        shutil.copytree(runs / "vae_digits", root / "late")
        assert [r["id"] for r in c.post("/api/rescan").json()["runs"]] == ["late"]


def test_cross_site_posts_refused(client):
    r = client.post("/api/runs/vae_digits/sample", json={}, headers={"origin": "https://evil.example"})
    assert "cross-site" in err(r, 403)
    r = client.post("/api/runs/vae_digits/sample", json={}, headers={"origin": "http://testserver"})
    assert r.status_code == 200  # the page's own origin


def test_serving_one_run_folder(runs):
    with TestClient(create_app(runs / "vae_digits")) as c:
        assert [r["id"] for r in c.get("/api/runs").json()["runs"]] == ["vae_digits"]


def test_allowed_hosts(runs):
    app = create_app(runs, allowed_hosts=["127.0.0.1", "localhost"])
    assert "not allowed" in err(TestClient(app).get("/api/runs"), 400)  # Host: testserver (DNS rebinding)
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/runs").status_code == 200


@pytest.fixture(scope="module")
def live(runs, serve_on_loopback):
    """The studio under uvicorn on 127.0.0.1 (a free port), for what needs real concurrency."""
    with serve_on_loopback(create_app(runs)) as url:
        yield url


def test_flood_of_bad_requests_on_loopback(live):
    """~300 bad requests from 8 threads at a real server on 127.0.0.1; it still answers good ones."""
    import httpx
    garbage = b"\x89PNG\r\n\x1a\n" + b"\x00" * 500
    bad = [
        lambda c: c.post("/api/runs/vae_digits/sample", json={"n": 10**6}),
        lambda c: c.post("/api/runs/vae_digits/sample", content=b"{{{", headers={"content-type": "application/json"}),
        lambda c: c.post("/api/runs/../../etc/passwd/sample"),
        lambda c: c.post("/api/runs/vae_digits/reconstruct", files={"file": ("x.png", garbage, "image/png")}),
        lambda c: c.post("/api/runs/vae_digits/decode", json={"z": [1] * 99}),
        lambda c: c.post("/api/runs/vae_digits/decode", content=b"x" * (MAX_BODY + 10)),
        lambda c: c.get("/api/runs/vae_digits/files/..%2F..%2Fsecret.txt"),
    ]
    with httpx.Client(base_url=live, timeout=60) as c:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: bad[i % len(bad)](c).status_code, range(294)))
        assert all(400 <= s < 500 for s in codes), sorted(set(codes))
        assert c.get("/api/runs").status_code == 200
        r = c.post("/api/runs/vae_digits/sample", json={"seed": 1})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_inference_does_not_block_the_server(live, monkeypatch):
    """While a model is busy, the server still answers: inference runs in a worker thread."""
    import httpx
    from dgm.serve import infer
    started, release = threading.Event(), threading.Event()
    real = infer.decode

    def slow(*a, **k):
        started.set()
        assert release.wait(60)
        return real(*a, **k)
    monkeypatch.setattr(infer, "decode", slow)
    with httpx.Client(base_url=live, timeout=30) as c, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(c.post, "/api/runs/vae_digits/decode", json={"z": [0, 0, 0, 0]})
        assert started.wait(30)
        assert c.get("/api/runs").status_code == 200  # answered while decode is still held
        assert not pending.done()
        release.set()
        assert pending.result().status_code == 200


# -- pieces -----------------------------------------------------------------------------------------------------------
def test_upload_framing_centres_a_small_object():
    x = torch.zeros(200, 300)
    x[10:30, 250:260] = 1.0  # a small stroke in a corner
    im = Image.fromarray((x * 255).to(torch.uint8).numpy())
    out = simg.decode_upload(png(im), 1, 28, content_fraction=0.7)[0, 0]
    assert out.shape == (28, 28)
    rows, cols = out.sum(1), out.sum(0)
    cy = float((rows * torch.arange(28)).sum() / rows.sum())
    cx = float((cols * torch.arange(28)).sum() / cols.sum())
    assert abs(cy - 13.5) < 1.5 and abs(cx - 13.5) < 1.5
    assert (out.sum(1) > 0.1).sum() >= 17  # object spans ~70% of the height


def test_capabilities_of_a_family_written_later():
    """A sampler's keyword options and their choices are read from the signature; that it shows its steps comes from
    capabilities() ("trajectory": `sample(callback=...)`), never from a guessed argument name."""
    from typing import Literal

    from dgm.models.base import GenerativeModel, ImageConfig

    class Fake(GenerativeModel):
        SAMPLERS = ("ddpm", "ddim")
        sample_trajectory = True

        def sample(self, n, *, cond=None, generator=None, sampler: str = "ddim", steps: int = 50,
                   guidance: float = 1.0, eta: float = 0.0, clip: Literal["on", "off"] = "on", callback=None):
            pass
    opts = {o["name"]: o for o in sample_options(Fake)}
    assert list(opts) == ["sampler", "steps", "guidance", "eta", "clip"]
    assert opts["sampler"]["choices"] == ["ddpm", "ddim"] and opts["steps"]["type"] == "int"
    assert opts["guidance"]["type"] == "float" and opts["clip"]["choices"] == ["on", "off"]
    assert "trajectory" in Fake(ImageConfig()).capabilities()


def test_cli_serve_errors(tmp_path, capsys):
    from dgm.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path / "nowhere")])
    assert e.value.code == 1 and "runs folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path), "--port", "70000"])
    assert e.value.code == 2 and "--port" in capsys.readouterr().err


def test_every_registered_family_appears(tmp_path):
    """Families written after the studio appear in it by capability: each registered family, built with its default
    config at 16x16 (untrained weights), is listed, loads, and does what its capabilities say."""
    from dgm.io import save
    from dgm.registry import config_from_dict, families, get_family
    root = tmp_path / "runs"
    built = []
    import dataclasses
    for name in families():
        cls = get_family(name)
        base = {"channels": 1, "image_size": 16, "num_classes": 10}
        variants = [(name, base)]
        if "conditional" in {f.name for f in dataclasses.fields(cls.Config)}:
            variants.append((f"{name}-cond", {**base, "conditional": True}))
        for run_name, cfg in variants:
            try:
                model = cls(config_from_dict(cls.Config, cfg))
            except (TypeError, ValueError):
                continue
            save(model, root / run_name, extra={"data": {"name": "digits", "image_size": 16}})
            built.append(run_name)
    assert {"ae", "vae"} <= set(built)
    one = digit_on_paper()
    with TestClient(create_app(root)) as c:
        assert sorted(r["id"] for r in c.get("/api/runs").json()["runs"]) == sorted(built)
        for name in built:
            d = c.get(f"/api/runs/{name}").json()
            assert d["load_error"] is None, (name, d["load_error"])
            caps = d["capabilities"]
            label = 3 if caps["conditional"] else None
            if caps["sample"]:
                opts = {o["name"]: 2 for o in caps["sample_options"] if o["name"] == "steps"}
                if any(o["name"] == "guidance" for o in caps["sample_options"]):
                    opts["guidance"] = 2.0  # shown only for conditional models
                body = {"seed": 0, "format": "json", "options": opts, "trajectory": caps["trajectory"], "label": label}
                r = c.post(f"/api/runs/{name}/sample", json=body)
                assert r.status_code == 200, (name, r.text)
                assert ("strip" in r.json()) == caps["trajectory"], name
                assert r.json()["labels"] == ([3] if label is not None else None), name
            if caps["decode"]:
                z = [0.0] * caps["latent_dim"]
                r = c.post(f"/api/runs/{name}/decode", json={"z": z, "label": label})
                assert r.status_code == 200, (name, r.text)
            if caps["reconstruct"]:
                r = c.post(f"/api/runs/{name}/reconstruct", files={"file": ("1.png", one, "image/png")})
                assert r.status_code == 200, (name, r.text)
            if caps["translate"]:
                for direction in ("AtoB", "BtoA"):
                    r = c.post(f"/api/runs/{name}/translate", files={"file": ("1.png", one, "image/png")},
                               data={"direction": direction})
                    assert r.status_code == 200, (name, direction, r.text)


def test_every_text_has_english_and_persian():
    """Each key in the page's English dictionary has a Persian text, and each data-i18n key in the page exists."""
    import re
    from dgm.serve.app import STATIC
    js = (STATIC / "app.js").read_text()
    en = js[js.index("  en: {"):js.index("  fa: {")]
    fa = js[js.index("  fa: {"):js.index("\n};")]
    keys = lambda block: set(re.findall(r"\b([a-z_]+): \"", block))  # noqa: E731
    assert keys(en) and keys(en) == keys(fa), keys(en) ^ keys(fa)
    assert all(re.search(r"[\u0600-\u06FF]", v) for k, v in re.findall(r"\b([a-z_]+): \"([^\"]*)\"", fa)
               if k not in ("lang_button",))
    used = set(re.findall(r'data-i18n="([a-z_]+)"', (STATIC / "index.html").read_text()))
    assert used <= keys(en), used - keys(en)
