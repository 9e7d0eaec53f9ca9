"""dgm studio: nothing crashes, no one in. Damaged run folders are listed as broken and never stop the studio,
`Origin: null` and other sites are refused, bodies are capped per route before parsing, slow clients are cut off,
decompression bombs are 413. The runs are untrained tiny models written with dgm.io.save (no training)."""
import io
import json
import socket
import struct
import time
import warnings
import zlib

import pytest
import torch

pytest.importorskip("fastapi", reason="dgm[serve] extra (fastapi) not installed")
pytest.importorskip("multipart", reason="dgm[serve] extra (python-multipart) not installed")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from dgm.serve import create_app  # noqa: E402
from dgm.serve import images as simg  # noqa: E402
from dgm.serve.checks import MAX_N, body_limit  # noqa: E402

DATA = {"name": "digits", "image_size": 16}
SMALL = {"channels": 1, "image_size": 16, "latent_dim": 4, "conv_channels": (8, 16)}


def save_run(root, name, family="vae", model=None):
    from dgm.io import save
    from dgm.registry import config_from_dict, get_family
    cls = get_family(family)
    torch.manual_seed(0)
    return save(cls(config_from_dict(cls.Config, model or SMALL)), root / name, extra={"data": DATA})


def deep(n):
    return "[" * n + "]" * n


# (folder, what config.json holds, a word the reason must contain)
BROKEN = [
    ("format-string", lambda c: {**c, "format": "1"}, "format"),
    ("format-future", lambda c: {**c, "format": 99}, "newer"),
    ("family-list", lambda c: {**c, "family": ["vae"]}, "family"),
    ("family-unknown", lambda c: {**c, "family": "no-such-family"}, "unknown model family"),
    ("model-list", lambda c: {**c, "model": [1]}, "model"),
    ("data-string", lambda c: {**c, "data": "digits"}, "data"),
    ("data-name-number", lambda c: {**c, "data": {"name": 7}}, "data.name"),
    ("latent-negative", lambda c: {**c, "model": {**c["model"], "latent_dim": -1}}, "build"),
    ("latent-huge", lambda c: {**c, "model": {**c["model"], "latent_dim": 10**9}}, "parameters"),
    ("latent-string", lambda c: {**c, "model": {**c["model"], "latent_dim": "four"}}, "build"),
    ("unknown-option", lambda c: {**c, "model": {**c["model"], "no_such_option": 1}}, "no_such_option"),
    ("nested-50", lambda c: {**c, "extra": json.loads(deep(50))}, "nested"),
    ("nested-100k", lambda c: deep(100_000), "nested"),
    ("not-json", lambda c: "{nope", "JSON"),
    ("json-list", lambda c: [c], "object"),
    ("too-large", lambda c: {**c, "pad": "x" * (2 << 20)}, "larger"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety") / "runs"
    good = save_run(root, "vae")
    save_run(root, "ae", "ae")
    cfg = json.loads((good / "config.json").read_text())
    for name, make, _ in BROKEN:
        d = root / "broken" / name
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
        content = make(cfg)
        (d / "config.json").write_text(content if isinstance(content, str) else json.dumps(content))
    other = root / "hf-model"  # another tool's folder with the same two file names: not a dgm run
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["Bert"]}))
    (other / "model.safetensors").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs)) as c:
        yield c


def err(r, status):
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg
    return msg


# -- broken run folders ---------------------------------------------------------------------------------------------
def test_broken_runs_are_listed_with_their_reason(client):
    r = client.get("/api/runs")
    assert r.status_code == 200
    by_id = {x["id"]: x for x in r.json()["runs"]}
    assert "hf-model" not in by_id
    assert by_id["vae"]["error"] is None and by_id["ae"]["error"] is None
    for name, _, word in BROKEN:
        run = by_id[f"broken.{name}"]
        assert run["error"] and word.lower() in run["error"].lower(), (name, run["error"])
        assert "\n" not in run["error"] and len(run["error"]) <= 300
        assert run["capabilities"] == {}


@pytest.mark.parametrize("name", [b[0] for b in BROKEN])
def test_broken_run_routes_answer_409(client, name):
    rid = f"broken.{name}"
    one = png(Image.new("L", (16, 16)))
    err(client.get(f"/api/runs/{rid}"), 409)
    err(client.get(f"/api/runs/{rid}/latent"), 409)
    err(client.get(f"/api/runs/{rid}/files/x.png"), 409)
    err(client.post(f"/api/runs/{rid}/sample", json={}), 409)
    err(client.post(f"/api/runs/{rid}/decode", json={"z": [0, 0, 0, 0]}), 409)
    err(client.post(f"/api/runs/{rid}/reconstruct", files={"file": ("a.png", one, "image/png")}), 409)
    err(client.post(f"/api/runs/{rid}/interpolate", data={"seed_a": "1", "seed_b": "2"}), 409)


def test_dgm_serve_starts_with_broken_runs(runs, monkeypatch, capsys):
    """`dgm serve` builds the app (finding every run) and hands it to uvicorn; broken runs are counted, not fatal."""
    from dgm.serve import app as app_module
    from dgm.serve import server
    started = []
    monkeypatch.setattr(server, "run_server", lambda app, host, port: started.append((app, host, port)))
    app_module.serve(runs, port=8765)
    assert started and started[0][1:] == ("127.0.0.1", 8765)
    assert f"({len(BROKEN)} broken" in capsys.readouterr().out


def test_leaderboard_and_rescan_survive_broken_runs(client, runs):
    (runs / "broken" / "format-string" / "eval.json").write_text(json.dumps([1, 2]))
    (runs / "broken" / "model-list" / "eval.json").write_text(deep(100_000))
    (runs / "vae" / "metrics.jsonl").write_text('[1, 2]\n')
    assert client.get("/api/leaderboard").status_code == 200
    assert client.post("/api/rescan").status_code == 200
    assert client.get("/api/runs").status_code == 200


def test_a_config_that_builds_on_meta_but_not_on_load_is_409(runs, tmp_path):
    """Weights that do not match the config: the run is listed, and using it says why (409), never 500."""
    root = tmp_path / "r"
    save_run(root, "vae")
    (root / "vae" / "model.safetensors").write_bytes(b"\x00" * (1 << 22))
    with TestClient(create_app(root)) as c:
        assert c.get("/api/runs").json()["runs"][0]["error"] is None
        assert "load_error" in c.get("/api/runs/vae").json()
        err(c.post("/api/runs/vae/sample", json={}), 409)


# -- who may post --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{"origin": "null"}, {"origin": "NULL"}, {"origin": "https://evil.example"},
                                     {"origin": "http://testserver.evil.example"}, {"sec-fetch-site": "cross-site"}])
def test_cross_site_and_null_origin_posts_refused(client, headers):
    assert "cross-site" in err(client.post("/api/runs/vae/sample", json={}, headers=headers), 403)
    assert client.get("/api/runs", headers=headers).status_code == 200  # reading is not state-changing


def test_same_origin_post_passes(client):
    r = client.post("/api/runs/vae/sample", json={}, headers={"origin": "http://testserver",
                                                               "sec-fetch-site": "same-origin"})
    assert r.status_code == 200


# -- bodies: capped per route before parsing --------------------------------------------------------------------------
def test_oversized_json_z_is_413_before_parsing(client):
    body = b'{"z": [' + b"0.125, " * ((8 << 20) // 7 + 1) + b'0]}'
    assert len(body) > 8 << 20
    t = time.perf_counter()
    assert "too large" in err(client.post("/api/runs/vae/decode", content=body,
                                          headers={"content-type": "application/json"}), 413)
    assert time.perf_counter() - t < 5  # the declared length is refused at once, nothing parsed
    chunks = (b"0.125, " * 4096 for _ in range(400))  # streamed (chunked), no declared length
    assert "too large" in err(client.post("/api/runs/vae/decode", content=chunks,
                                          headers={"content-type": "application/json"}), 413)


def test_body_limits_per_route(client, runs):
    studio = client.app.state.studio
    decode = body_limit("/api/runs/vae/decode", studio)
    assert decode < 64 * 1024  # latent_dim 4: a few KiB
    assert body_limit("/api/runs/vae/sample", studio) == 16 * 1024
    assert body_limit("/api/runs/vae/reconstruct", studio) > simg.MAX_UPLOAD_BYTES
    z = [[0.1234567890123456] * 4] * MAX_N
    ok = json.dumps({"z": z, "format": "json"}).encode()
    assert len(ok) < decode
    r = client.post("/api/runs/vae/decode", content=ok, headers={"content-type": "application/json"})
    assert r.status_code == 200
    err(client.post("/api/runs/vae/sample", content=b" " * (17 * 1024), headers={"content-type": "application/json"}),
        413)
    err(client.post("/api/runs/vae/decode", json={"z": [0.0] * 10000}), 413)
    msg = err(client.post("/api/runs/vae/sample", json={"options": {f"o{i}": 1 for i in range(17)}}), 422)
    assert "options" in msg


def test_slow_body_is_408(runs, serve_on_loopback):
    with serve_on_loopback(create_app(runs, body_seconds=0.5)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /api/runs/vae/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"z\": [")
            t, reply = time.perf_counter(), b""
            while b"}" not in reply and time.perf_counter() - t < 5:
                part = s.recv(65536)
                if not part:
                    break
                reply += part
            assert time.perf_counter() - t < 5
        assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply, reply[:200]


def test_dribbled_headers_are_cut_off(runs):
    """uvicorn has no deadline for a request's headers; dgm.serve.server adds one."""
    import threading

    import uvicorn

    from dgm.serve.server import server_config
    server = uvicorn.Server(server_config(create_app(runs), "127.0.0.1", 0, header_seconds=0.5, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /api/runs HTTP/1.1\r\n")
            t, closed = time.perf_counter(), False
            while time.perf_counter() - t < 5:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed = True
                    break
                s.settimeout(0.2)
                try:
                    if s.recv(1024) == b"":
                        closed = True
                        break
                except socket.timeout:
                    pass
            assert closed and time.perf_counter() - t < 3
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a prompt client is answered
            s.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        th.join(10)


# -- decompression bombs ------------------------------------------------------------------------------------------------
def png(img: Image.Image, fmt="PNG") -> bytes:
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue()


def png_declaring(w: int, h: int) -> bytes:
    """A tiny PNG file whose header declares w x h pixels (grey), with a little compressed data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = zlib.compress(b"\x00" * 4096)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def gif_declaring(w: int, h: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + struct.pack("<HH", w, h) \
        + b"\x00\x02\x02\x44\x01\x00;"


@pytest.mark.parametrize("data", [png_declaring(20000, 20000), png_declaring(10000, 10000),
                                  png_declaring(4096, 4097), png_declaring(2**31 - 1, 1), gif_declaring(65535, 65535)],
                         ids=["png-400M", "png-100M", "png-side", "png-2G-wide", "gif-4G"])
def test_decompression_bombs_are_413(client, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning must not escape either
        with pytest.raises(simg.StudioError) as e:
            simg.decode_upload(data, 1, 16)
    assert e.value.status == 413
    err(client.post("/api/runs/vae/reconstruct", files={"file": ("bomb.png", data, "image/png")}), 413)


def test_a_large_real_image_within_limits_decodes():
    x = simg.decode_upload(png(Image.new("L", (2000, 1500), 30)), 1, 16)
    assert x.shape == (1, 1, 16, 16)
