"""Every check a request passes before a model sees it: the limits, the request's values against the run's
capabilities, uploads, who may ask (Host, Origin), and the body cap per route (an ASGI middleware that counts and
times the bytes before any parser runs). Each failure is a StudioError with a 4xx code and a one-line message.
"""
from __future__ import annotations

import json
import math
from typing import Any

import anyio
import torch

from dgm.serve import images as img
from dgm.serve.runs import Run, Studio, StudioError

MAX_N = 64                 # images per request
MAX_STEPS = 1000           # sampler steps (diffusion's full DDPM chain)
MAX_WORK = 64 * 100        # n x steps: a request's sampling cost, ~64 images at 100 steps
MAX_INTERP = 16            # points on an interpolation line
MAX_ABS = 1e4              # any float option or latent coordinate
MAX_LATENT = 4096          # numbers in one code
MAX_OPTIONS = 16           # sampler options in one request
MAX_BODY = img.MAX_UPLOAD_BYTES * 2 + 64 * 1024   # the largest request body: two images and form fields
SMALL_BODY = 16 * 1024     # a JSON request without codes (sample) or a POST without a body
FORM_SLACK = 64 * 1024     # multipart headers and form fields beside the files
JSON_NUMBER = 32           # bytes one number of `z` may take in JSON ("-1.2345678901234567e-05, ")
BODY_SECONDS = 30.0        # a request body must arrive within this (a slow client is answered 408)
MAX_FRAMES = 10            # denoising steps shown in a strip
SEED_MAX = 2**31 - 1
STEP_OPTION = "steps"      # the sampler option whose value is the work per image
FRAMINGS = {"invert": ("auto", "yes", "no"), "fit": ("auto", "object", "square", "stretch")}
DIRECTIONS = ("AtoB", "BtoA")
LIMITS = {"n": MAX_N, "steps": MAX_STEPS, "work": MAX_WORK, "interpolate": MAX_INTERP,
          "upload_bytes": img.MAX_UPLOAD_BYTES, "image_side": img.MAX_SIDE}


# -- a request against the run's capabilities ---------------------------------------------------------------------
def needs(run: Run, *caps: str) -> dict[str, Any]:
    have = run.capabilities()
    missing = [c for c in caps if not have.get(c)]
    if missing:
        raise StudioError(422, f"a {run.family} run cannot {' or '.join(missing)}")
    return have


def check_label(run: Run, label: int | None) -> int | None:
    caps = run.capabilities()
    if label is None:
        return None
    if not caps["conditional"]:
        raise StudioError(422, f"run {run.id!r} is not class-conditional; leave out 'label'")
    if label >= caps["num_classes"]:
        raise StudioError(422, f"label must be 0..{caps['num_classes'] - 1}, got {label}")
    return label


def check_trajectory(run: Run, trajectory: bool) -> None:
    if trajectory and not run.capabilities()["trajectory"]:
        raise StudioError(422, f"a {run.family} run has no intermediate steps to show")


def _option_value(k: str, o: dict[str, Any], v: Any) -> Any:
    """One sampler option's value, checked against its declared type or choices."""
    if o["choices"] is not None:
        if v not in o["choices"]:
            raise StudioError(422, f"{k} must be one of {o['choices']}, got {v!r:.80}")
    elif o["type"] in ("int", "float"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > MAX_ABS:
            raise StudioError(422, f"{k} must be a finite number, got {v!r:.80}")
        if o["type"] == "int":
            if float(v) != int(v):
                raise StudioError(422, f"{k} must be a whole number, got {v!r}")
            v = int(v)
    elif o["type"] == "bool" and not isinstance(v, bool):
        raise StudioError(422, f"{k} must be true or false, got {v!r:.80}")
    elif o["type"] == "str" and not (isinstance(v, str) and len(v) <= 64):
        raise StudioError(422, f"{k} must be a short string, got {v!r:.80}")
    return v


def check_work(spec: dict[str, dict[str, Any]], out: dict[str, Any], n: int) -> None:
    """The work a request asks for: `steps` given, else the default the page showed, times n."""
    k = STEP_OPTION
    v = out.get(k, spec.get(k, {}).get("default"))
    if k in spec and isinstance(v, (int, float)) and not isinstance(v, bool):
        if not 1 <= v <= MAX_STEPS:
            raise StudioError(422, f"{k} must be 1..{MAX_STEPS}, got {v}")
        if n * v > MAX_WORK:
            raise StudioError(422, f"n x {k} = {n * v} is more work than one request may ask ({MAX_WORK}); "
                                   f"lower n or {k}")
        out.setdefault(k, int(v))


def check_options(run: Run, opts: dict[str, Any], n: int) -> dict[str, Any]:
    spec = {o["name"]: o for o in run.capabilities()["sample_options"]}
    out = {}
    for k, v in opts.items():
        if k not in spec:
            raise StudioError(422, f"unknown sampler option {k!r:.80} for a {run.family} run; "
                                   f"valid: {', '.join(spec) or 'none'}")
        out[k] = _option_value(k, spec[k], v)
    check_work(spec, out, n)
    return out


def check_z(z: Any) -> torch.Tensor:
    """The codes of a /decode request as a float tensor: equal lengths, finite, within +-MAX_ABS, at most MAX_N."""
    try:
        t = torch.tensor(z, dtype=torch.float32)
    except (ValueError, TypeError):
        raise StudioError(422, "z: every code must have the same length") from None
    if t.numel() == 0:
        raise StudioError(422, "z: a code needs numbers")
    if not torch.isfinite(t).all() or t.abs().max() > MAX_ABS:
        raise StudioError(422, f"z must hold finite numbers within +-{MAX_ABS:g}")
    if t.dim() == 2 and t.shape[0] > MAX_N:
        raise StudioError(422, f"z: at most {MAX_N} codes per request, got {t.shape[0]}")
    return t


def check_framing(invert: str, fit: str) -> None:
    for name, value in (("invert", invert), ("fit", fit)):
        if value not in FRAMINGS[name]:
            allowed = ", ".join(repr(v) for v in FRAMINGS[name])
            raise StudioError(422, f"{name} must be one of {allowed}, got {value!r:.80}")


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise StudioError(422, f"direction must be 'AtoB' or 'BtoA', got {direction!r:.80}")
    return direction


def check_ends(run: Run, ends: dict[str, tuple[Any, int | None]]) -> None:
    """Each end of an interpolation: an image or a seed, not both; an image needs an encoder."""
    for name, (f, s) in ends.items():
        if f is not None and s is not None:
            raise StudioError(422, f"give either an image or a seed for end {name!r}, not both")
        if f is not None and not run.capabilities()["encode"]:
            raise StudioError(422, f"a {run.family} run has no encoder: give seed_{name}")


# -- uploads ---------------------------------------------------------------------------------------------------------
async def read_upload(f, what: str = "file") -> bytes:
    if f is None:
        raise StudioError(422, f"{what}: an image file is required")
    data = await f.read(img.MAX_UPLOAD_BYTES + 1)
    if len(data) > img.MAX_UPLOAD_BYTES:
        raise StudioError(413, f"{what}: larger than the upload limit of {img.MAX_UPLOAD_BYTES} bytes")
    return data


def to_input(studio: Studio, run_id: str, data: bytes, domain: str | None, invert: str, fit: str) -> torch.Tensor:
    """An upload framed like the run's training data, (1, C, S, S) in [0, 1] (call from a worker thread)."""
    caps = studio.run(run_id).capabilities()
    ch = caps["domains"][domain] if domain else caps["channels"]
    img.open_image(data)  # a file that is no image, or a bomb, is refused before the statistics are computed
    frac = None
    if ch == 1 and caps["encode"] and caps["decode"] and fit in ("auto", "object"):
        frac = studio.latent_stats(run_id).get("content_fraction")
    return img.decode_upload(data, ch, caps["image_size"], invert=invert, fit=fit, content_fraction=frac)


# -- who may ask -------------------------------------------------------------------------------------------------------
def check_host(host_header: str | None, allowed: list[str] | None) -> None:
    """DNS rebinding: a local studio answers only requests addressed to a loopback name."""
    if allowed is None:
        return
    host = (host_header or "").rsplit(":", 1)[0].strip("[]")
    if host not in allowed:
        raise StudioError(400, f"host {host!r:.80} not allowed (this studio answers {', '.join(allowed)})")


def check_origin(method: str, headers) -> None:
    """CSRF: a state-changing request from another site's page (its Origin, or `Origin: null` from a sandboxed frame,
    a data: URL or a file) is refused; browsers always say whence. Requests without Origin (curl, scripts) pass
    unless the browser marks them cross-site (Sec-Fetch-Site)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = headers.get("origin")
    if origin is not None:
        if origin.strip().lower() == "null" or origin.split("://", 1)[-1] != headers.get("host", ""):
            raise StudioError(403, f"cross-site request from {origin:.80} refused")
    elif headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        raise StudioError(403, "cross-site request refused (Sec-Fetch-Site)")


# -- request bodies: the cap per route, before parsing ---------------------------------------------------------------
def body_limit(path: str, studio: Studio | None = None) -> int:
    """The most bytes a POST to `path` may send: a code's numbers for /decode (latent_dim of the run when known),
    one image for encode/reconstruct/translate, two for interpolate, a few KiB for anything else."""
    parts = path.strip("/").split("/")
    action = parts[3] if len(parts) == 4 and parts[:2] == ["api", "runs"] else None
    if action == "decode":
        run = studio.runs.get(parts[2]) if studio is not None else None
        d = (run.caps.get("latent_dim") if run is not None else None) or MAX_LATENT
        return SMALL_BODY + MAX_N * (min(d, MAX_LATENT) * JSON_NUMBER + 8)
    if action in ("encode", "reconstruct", "translate"):
        return img.MAX_UPLOAD_BYTES + FORM_SLACK
    if action == "interpolate":
        return MAX_BODY
    return SMALL_BODY


class BodyLimit:
    """ASGI middleware: read a request body up to the route's limit and refuse it (413) beyond, whether the size is
    declared or streamed, before any parser sees it; a body that does not arrive within `seconds` is answered 408.
    The app then reads the buffered body. `limit(path) -> bytes`."""

    def __init__(self, app, limit, seconds: float = BODY_SECONDS):
        self.app, self.limit, self.seconds = app, limit, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = min(int(self.limit(scope["path"])), MAX_BODY)
        too_big = f"request body too large (limit {limit} bytes for this route)"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await send_json(send, 413, too_big)
        try:
            with anyio.fail_after(self.seconds):
                body = await read_body(receive, limit)
        except TimeoutError:
            return await send_json(send, 408, f"request body not received within {self.seconds:g} s")
        if body is None:
            return None  # the client went away
        if len(body) > limit:
            return await send_json(send, 413, too_big)
        return await self.app(scope, replay(body, receive), send)


async def read_body(receive, limit: int) -> bytes | None:
    """The body's bytes, stopping once past `limit` (so at most limit + one chunk); None on disconnect."""
    chunks, size, more = [], 0, True
    while more and size <= limit:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        more = msg.get("more_body", False)
    return b"".join(chunks)


def replay(body: bytes, receive):
    """A `receive` that hands the buffered body to the app once, then waits on the real one (for disconnects)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


async def send_json(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
