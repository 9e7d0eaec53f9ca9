"""dgm studio under generated input: a schemathesis run against the studio's own OpenAPI schema (in-process, over ASGI;
bounded examples, no 5xx, every error a one-line JSON body), and hypothesis properties of the upload decoder
(arbitrary or damaged bytes -> a 4xx StudioError or a valid image tensor, never another exception)."""
import io
import json
import warnings

import pytest

pytest.importorskip("fastapi", reason="dgm[serve] extra (fastapi) not installed")
pytest.importorskip("multipart", reason="dgm[serve] extra (python-multipart) not installed")
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed (pip install -e '.[dev]')")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from dgm.serve import create_app  # noqa: E402
from dgm.serve import images as simg  # noqa: E402
from dgm.serve.runs import StudioError  # noqa: E402

FAST = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from dgm.io import save
    from dgm.registry import config_from_dict, get_family
    root = tmp_path_factory.mktemp("fuzz") / "runs"
    for name, family in (("vae", "vae"), ("ae", "ae")):
        cls = get_family(family)
        m = cls(config_from_dict(cls.Config, {"channels": 1, "image_size": 16, "latent_dim": 4,
                                              "conv_channels": (8, 16)}))
        save(m, root / name, extra={"data": {"name": "digits", "image_size": 16}})
    bad = root / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"family": ["vae"], "model": [1]}))
    (bad / "model.safetensors").write_bytes(b"")
    return create_app(root)


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/api/openapi.json", app)


def _operations():
    """(method, path, mode) for every API route, read from the router (no app needed at collection time): schema-valid
    cases for each, and cases that break the schema where there is a body or a query to break (a path parameter is
    any string)."""
    from dgm.serve.routes import router
    out = []
    for r in router.routes:
        breakable = bool(r.dependant.body_params or r.dependant.query_params)
        out += [(m, r.path, mode) for m in sorted(r.methods) for mode in ("positive", "negative")[:1 + breakable]]
    return sorted(out)


RUN_IDS = ["vae", "ae", "bad"]  # plus the generated ones (unknown runs)


def _check_response(case, r) -> None:
    assert r.status_code < 500, (case.method, case.formatted_path, r.status_code, r.text[:300])
    if r.status_code >= 400:
        ct = {k.lower(): v for k, v in r.headers.items()}.get("content-type")
        ct = ct[0] if isinstance(ct, list) else ct
        assert ct and ct.startswith("application/json"), (r.status_code, r.headers)
        msg = r.json()["error"]
        assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("method, path, mode", _operations())
def test_api_never_5xx(api_schema, method, path, mode):
    """schemathesis cases for one operation (schema-valid ones, or ones that break the schema): no 5xx, ever."""
    op = api_schema[path][method]
    gen = schemathesis.GenerationMode(mode)
    strategies = [op.as_strategy(generation_mode=gen)]
    if "{run_id}" in path:  # most cases at real runs, so they reach the checks behind the id
        strategies += [op.as_strategy(generation_mode=gen, path_parameters={"run_id": rid}) for rid in RUN_IDS]

    @given(case=st.one_of(strategies))
    @settings(FAST, max_examples=30)
    def run(case):
        _check_response(case, case.call())
    run()


def test_schema_is_served(app):
    from fastapi.testclient import TestClient
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = TestClient(app).get("/api/openapi.json").json()
    assert "/api/runs/{run_id}/decode" in spec["paths"] and "/api/runs/{run_id}/sample" in spec["paths"]


# -- the upload decoder ------------------------------------------------------------------------------------------------
def _valid(fmt: str, mode: str, w: int, h: int) -> bytes:
    b = io.BytesIO()
    img = Image.new(mode, (w, h))
    img.putdata([(i * 37) % 256 if mode in ("L", "P") else ((i * 37) % 256,) * len(mode) for i in range(w * h)])
    img.save(b, fmt)
    return b.getvalue()


SEEDS = [_valid(f, m, w, h) for f, m in (("PNG", "L"), ("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "L"),
                                         ("JPEG", "RGB"), ("WEBP", "RGB"), ("PNG", "P"), ("TIFF", "RGBA"))
         for w, h in ((7, 5), (16, 16))]
MAGIC = [b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"BM", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff", b"RIFF"]


def _check(data: bytes, channels: int, fit: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            x = simg.decode_upload(data, channels, 16, fit=fit)
        except StudioError as e:
            assert 400 <= e.status < 500 and str(e) and "\n" not in str(e).strip(), (e.status, str(e))
            return
    assert x.shape == (1, channels, 16, 16) and x.dtype.is_floating_point
    assert bool(x.isfinite().all()) and float(x.min()) >= 0 and float(x.max()) <= 1


@given(data=st.binary(max_size=4096), channels=st.sampled_from([1, 3]))
@settings(FAST, max_examples=150)
def test_decoder_on_arbitrary_bytes(data, channels):
    _check(data, channels, "auto")


@given(magic=st.sampled_from(MAGIC), rest=st.binary(max_size=2048), channels=st.sampled_from([1, 3]))
@settings(FAST, max_examples=150)
def test_decoder_on_bytes_behind_a_format_signature(magic, rest, channels):
    _check(magic + rest, channels, "auto")


@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000),
       st.integers(0, 255)), max_size=8), channels=st.sampled_from([1, 3]),
       fit=st.sampled_from(["auto", "object", "square", "stretch"]))
@settings(FAST, max_examples=250)
def test_decoder_on_damaged_real_images(seed, cut, flips, channels, fit):
    b = bytearray(seed)
    for pos, val in flips:
        b[pos % len(b)] = val
    _check(bytes(b[:max(1, cut % (len(b) + 1))]) if cut % 3 else bytes(b), channels, fit)


def test_the_seeds_decode():
    for s in SEEDS:
        assert simg.decode_upload(s, 1, 16).shape == (1, 1, 16, 16)
