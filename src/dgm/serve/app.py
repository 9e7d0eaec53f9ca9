"""`dgm serve`: the studio's web app. A FastAPI app over `dgm.serve.runs.Studio`: a static page and a JSON/PNG API.

    from dgm.serve import create_app
    app = create_app("runs")          # uvicorn dgm.serve.app:... or `dgm serve runs`

Safety: run ids map to folders found at start-up (never to a path in a request); bodies are capped before they are
parsed; n, steps, image size and every number are range-checked; inference runs in worker threads, one at a time, with
a bounded queue (a flood gets 503 instead of piling up), so the event loop keeps answering. Every error is JSON
``{"error": "what is wrong"}`` with a 4xx code (5xx only for a fault in the model itself).
"""
import json
import math
import secrets
from pathlib import Path
from typing import Any, Literal, Union

import anyio
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from dgm.serve import images as img
from dgm.serve import infer
from dgm.serve.runs import Studio, StudioError

STATIC = Path(__file__).parent / "static"
MAX_N = 64                 # images per request
MAX_STEPS = 1000           # sampler steps (diffusion's full DDPM chain)
MAX_WORK = 64 * 100        # n x steps: a request's sampling cost, ~64 images at 100 steps
MAX_INTERP = 16            # points on an interpolation line
MAX_ABS = 1e4              # any float option or latent coordinate
MAX_BODY = img.MAX_UPLOAD_BYTES * 2 + 64 * 1024   # a request body: two images and form fields
MAX_FRAMES = 10            # denoising steps shown in a strip
SEED_MAX = 2**31 - 1
STEP_OPTIONS = ("steps", "num_steps", "sampling_steps", "timesteps", "num_inference_steps")


# -- request bodies (module level: FastAPI resolves their annotations here) ------------------------------------
Option = Union[bool, int, float, str, None]


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    label: int | None = Field(None, ge=0)
    options: dict[str, Option] = Field(default_factory=dict)
    trajectory: bool = False
    format: Literal["png", "json"] = "png"


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    z: list[list[float]] | list[float] = Field(..., min_length=1)  # one code, or up to MAX_N codes
    label: int | None = Field(None, ge=0)
    format: Literal["png", "json"] = "png"


def create_app(runs_dir: str | Path = "runs", *, device: str = "cpu", data_dir: str | None = None,
               allowed_hosts: list[str] | None = None, max_pending: int = 16):
    """The studio for the runs under `runs_dir` (found now; POST /api/rescan picks up new ones)."""
    studio = Studio(runs_dir, device=device, data_dir=data_dir)
    app = FastAPI(title="dgm studio", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.studio = studio
    limiter = anyio.CapacityLimiter(1)  # one inference at a time: the CPU is shared, and memory stays bounded
    queue = {"pending": 0}

    # -- errors: always JSON with a message ---------------------------------------------------------------------
    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StudioError)
    async def _studio_error(_, e: StudioError):
        return error(e.status, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, e: RequestValidationError):
        parts = []
        for d in e.errors():
            if d.get("type") == "json_invalid":
                parts.append(f"the body is not valid JSON ({d.get('ctx', {}).get('error', 'parse error')})")
                continue
            loc = ".".join(str(p) for p in d.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{loc or 'request'}: {d.get('msg', 'invalid')}")
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http_error(_, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _internal(_, e: Exception):
        return error(500, f"internal error: {type(e).__name__}: {e}")

    app.add_middleware(BodyLimit, limit=MAX_BODY)  # a cap on bodies, applied before anything parses them

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        if allowed_hosts is not None:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in allowed_hosts:
                return error(400, f"host {host!r} not allowed (this studio answers {', '.join(allowed_hosts)})")
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin and origin != "null":
            # Another web page's form or script posting to this local studio (CSRF): browsers always say whence.
            if origin.split("://", 1)[-1] != request.headers.get("host", ""):
                return error(403, f"cross-site request from {origin} refused")
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path in ("/", "/index.html"):
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                "connect-src 'self'; frame-ancestors 'none'")
        return response

    async def work(fn, *args):
        """Run inference in a worker thread, one at a time; refuse when too many wait."""
        if queue["pending"] >= max_pending:
            raise StudioError(503, f"busy: {queue['pending']} requests are waiting; try again in a moment")
        queue["pending"] += 1
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
        except (ValueError, NotImplementedError) as e:  # the model refused the arguments: say why
            raise StudioError(422, str(e) or type(e).__name__) from None
        finally:
            queue["pending"] -= 1

    def image_response(x: torch.Tensor, fmt: str, nrow: int = 8, extra: dict[str, Any] | None = None,
                       headers: dict[str, str] | None = None):
        if fmt == "json":
            return {"image": img.data_url(x, nrow), **(extra or {})}
        return Response(img.png_bytes(x, nrow), media_type="image/png",
                        headers={"Cache-Control": "no-store", **(headers or {})})

    def check_options(run, opts: dict[str, Any], n: int) -> dict[str, Any]:
        spec = {o["name"]: o for o in run.capabilities()["sample_options"]}
        out = {}
        for k, v in opts.items():
            if k not in spec:
                raise StudioError(422, f"unknown sampler option {k!r} for a {run.config['family']} run; "
                                       f"valid: {', '.join(spec) or 'none'}")
            o = spec[k]
            if o["choices"] is not None:
                if v not in o["choices"]:
                    raise StudioError(422, f"{k} must be one of {o['choices']}, got {v!r}")
            elif o["type"] in ("int", "float"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > MAX_ABS:
                    raise StudioError(422, f"{k} must be a finite number, got {v!r}")
                if o["type"] == "int":
                    if float(v) != int(v):
                        raise StudioError(422, f"{k} must be a whole number, got {v!r}")
                    v = int(v)
            elif o["type"] == "bool" and not isinstance(v, bool):
                raise StudioError(422, f"{k} must be true or false, got {v!r}")
            elif o["type"] == "str" and not (isinstance(v, str) and len(v) <= 64):
                raise StudioError(422, f"{k} must be a short string, got {v!r}")
            out[k] = v
        for k in STEP_OPTIONS:  # the work a request asks for: given steps, else the default the page showed
            v = out.get(k, spec.get(k, {}).get("default"))
            if k in spec and isinstance(v, (int, float)):
                if not 1 <= v <= MAX_STEPS:
                    raise StudioError(422, f"{k} must be 1..{MAX_STEPS}, got {v}")
                if n * v > MAX_WORK:
                    raise StudioError(422, f"n x {k} = {n * v} is more work than one request may ask "
                                           f"({MAX_WORK}); lower n or {k}")
                out.setdefault(k, int(v))
        return out

    def check_label(run, label: int | None) -> int | None:
        caps = run.capabilities()
        if label is None:
            return None
        if not caps["conditional"]:
            raise StudioError(422, f"run {run.id!r} is not class-conditional; leave out 'label'")
        if label >= caps["num_classes"]:
            raise StudioError(422, f"label must be 0..{caps['num_classes'] - 1}, got {label}")
        return label

    def needs(run, *caps: str):
        have = run.capabilities()
        missing = [c for c in caps if not have.get(c)]
        if missing:
            raise StudioError(422, f"a {run.config.get('family')} run cannot {' or '.join(missing)}")
        return have

    def check_framing(invert: str, fit: str) -> None:
        if invert not in ("auto", "yes", "no"):
            raise StudioError(422, f"invert must be 'auto', 'yes' or 'no', got {invert!r}")
        if fit not in ("auto", "object", "square", "stretch"):
            raise StudioError(422, f"fit must be 'auto', 'object', 'square' or 'stretch', got {fit!r}")

    async def read_upload(f: UploadFile | None, what: str = "file") -> bytes:
        if f is None:
            raise StudioError(422, f"{what}: an image file is required")
        data = await f.read(img.MAX_UPLOAD_BYTES + 1)
        if len(data) > img.MAX_UPLOAD_BYTES:
            raise StudioError(413, f"{what}: larger than the upload limit of {img.MAX_UPLOAD_BYTES} bytes")
        return data

    def to_input(run_id: str, data: bytes, domain: str | None, invert: str, fit: str) -> torch.Tensor:
        run = studio.run(run_id)
        caps = run.capabilities()
        ch = caps["domains"][domain] if domain else caps["channels"]
        frac = None
        if ch == 1 and caps.get("encode") and caps.get("decode") and fit in ("auto", "object"):
            frac = studio.latent_stats(run_id).get("content_fraction")
        return img.decode_upload(data, ch, caps["image_size"], invert=invert, fit=fit, content_fraction=frac)

    # -- pages and read-only API -----------------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/runs")
    async def list_runs():
        return {"runs": [r.summary() for r in studio.runs.values()],
                "limits": {"n": MAX_N, "steps": MAX_STEPS, "work": MAX_WORK, "interpolate": MAX_INTERP,
                           "upload_bytes": img.MAX_UPLOAD_BYTES, "image_side": img.MAX_SIDE}}

    @app.post("/api/rescan")
    async def rescan():
        await work(studio.rescan)
        return await list_runs()

    @app.get("/api/runs/{run_id}")
    async def run_detail(run_id: str):
        """Everything about a run; loads its model (once) so the capabilities are what the model really does."""
        load_error = None
        try:
            await work(studio.model, run_id)
        except StudioError as e:
            if e.status == 404:
                raise
            load_error = str(e)
        return {**studio.summary(run_id), "load_error": load_error}

    @app.get("/api/runs/{run_id}/latent")
    async def latent(run_id: str):
        needs(studio.run(run_id), "decode")
        return await work(studio.latent_stats, run_id)

    @app.get("/api/runs/{run_id}/files/{name}")
    async def run_file(run_id: str, name: str):
        files = studio.run(run_id).files()
        if name not in files:
            raise StudioError(404, f"no picture {name!r} in run {run_id!r}; it has: {', '.join(files) or 'none'}")
        return FileResponse(files[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/leaderboard")
    async def leaderboard():
        """Runs with eval.json numbers, grouped by dataset (numbers are only comparable on the same data)."""
        from dgm.metrics.leaderboard import BETTER, ORDER, PROTOCOL_KEYS  # `dgm leaderboard`'s column order
        groups: dict[str, dict[str, Any]] = {}
        protocols: dict[tuple[str, str], set[str]] = {}
        for r in studio.runs.values():
            ev = r.eval_results()
            if not ev:
                continue
            g = groups.setdefault(r.dataset, {"columns": {}, "rows": []})
            for k, v in ev.items():
                g["columns"].setdefault(k, {"unit": v.get("unit"), "protocol": v.get("protocol"),
                                            "better": BETTER.get(k)})
                protocols.setdefault((r.dataset, k), set()).add(
                    json.dumps({p: v.get(p) for p in PROTOCOL_KEYS if p in v}, sort_keys=True, default=str))
            g["rows"].append({"id": r.id, "name": r.name, "family": r.config.get("family"),
                              "step": r.last_log().get("step"), "values": {k: v["value"] for k, v in ev.items()}})
        rank = {k: i for i, k in enumerate(ORDER)}
        for ds, g in groups.items():
            cols = sorted(g["columns"], key=lambda k: (rank.get(k, len(rank)), k))
            g["columns"] = {k: {**g["columns"][k], "comparable": len(protocols[(ds, k)]) == 1} for k in cols}
        return {"datasets": groups}

    # -- inference API ---------------------------------------------------------------------------------------------
    @app.post("/api/runs/{run_id}/sample")
    async def sample(run_id: str, req: SampleRequest | None = None):
        req = req or SampleRequest()
        run = studio.run(run_id)
        caps = needs(run, "sample")
        check_label(run, req.label)
        if req.trajectory and not caps["trajectory"]:
            raise StudioError(422, f"a {run.config['family']} run has no intermediate steps to show")
        opts = check_options(run, req.options, req.n)
        seed = req.seed if req.seed is not None else secrets.randbelow(SEED_MAX)

        def go():
            m = studio.model(run_id)
            if not run.capabilities()["sample"]:
                raise StudioError(422, f"a {run.config['family']} run does not sample from noise")
            out = infer.sample(m, req.n, seed, req.label, opts, req.trajectory, caps["conditional"])
            if caps["decode"] and req.format == "json":
                out["z"] = infer.prior_latent(m, req.n, seed).float().cpu().tolist()
            return out
        out = await work(go)
        x = out["images"]
        extra = {"seed": seed, "n": req.n, "label": req.label, "labels": out["labels"], "options": opts}
        if req.format == "json":
            if out.get("z") is not None:
                extra["z"] = out["z"]
            if out["steps"]:
                frames = infer.pick_steps(out["steps"], MAX_FRAMES)
                strip = torch.stack(frames, 1).flatten(0, 1)  # (n * k, C, H, W): one row per sample
                extra["strip"] = img.data_url(strip, nrow=len(frames))
                extra["strip_frames"] = len(frames)
        return image_response(x, req.format, extra=extra, headers={"X-Seed": str(seed)})

    @app.post("/api/runs/{run_id}/decode")
    async def decode(run_id: str, req: DecodeRequest):
        run = studio.run(run_id)
        needs(run, "decode")
        label = check_label(run, req.label)
        try:
            z = torch.tensor(req.z, dtype=torch.float32)
        except ValueError:
            raise StudioError(422, "z: every code must have the same length") from None
        if z.numel() == 0:
            raise StudioError(422, "z: a code needs numbers")
        if not torch.isfinite(z).all() or z.abs().max() > MAX_ABS:
            raise StudioError(422, f"z must hold finite numbers within +-{MAX_ABS:g}")
        if z.dim() == 2 and z.shape[0] > MAX_N:
            raise StudioError(422, f"z: at most {MAX_N} codes per request, got {z.shape[0]}")
        x = await work(lambda: infer.decode(studio.model(run_id), z, label))
        return image_response(x, req.format)

    @app.post("/api/runs/{run_id}/encode")
    async def encode(run_id: str, file: UploadFile | None = File(None), invert: str = Form("auto"),
                     fit: str = Form("auto")):
        needs(studio.run(run_id), "encode")
        check_framing(invert, fit)
        data = await read_upload(file)

        def go():
            x = to_input(run_id, data, None, invert, fit)
            return x, infer.encode(studio.model(run_id), x)
        x, z = await work(go)
        return {"input": img.data_url(x), "z": z[0].tolist()}

    @app.post("/api/runs/{run_id}/reconstruct")
    async def reconstruct(run_id: str, file: UploadFile | None = File(None), invert: str = Form("auto"),
                          fit: str = Form("auto"), format: Literal["png", "json"] = Form("png")):
        run = studio.run(run_id)
        caps = needs(run, "reconstruct")
        check_framing(invert, fit)
        data = await read_upload(file)

        def go():
            x = to_input(run_id, data, None, invert, fit)
            m = studio.model(run_id)
            z = infer.encode(m, x)[0].tolist() if caps["encode"] else None
            return x, infer.reconstruct(m, x), z
        x, r, z = await work(go)
        if format == "json":
            return {"input": img.data_url(x), "image": img.data_url(r), "z": z}
        return image_response(torch.cat([x, r]), "png", nrow=2)

    @app.post("/api/runs/{run_id}/translate")
    async def translate(run_id: str, file: UploadFile | None = File(None), direction: str = Form("AtoB"),
                        invert: str = Form("auto"), fit: str = Form("auto"),
                        format: Literal["png", "json"] = Form("png")):
        needs(studio.run(run_id), "translate")
        if direction not in ("AtoB", "BtoA"):
            raise StudioError(422, f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        check_framing(invert, fit)
        data = await read_upload(file)

        def go():
            x = to_input(run_id, data, direction[0], invert, fit)
            return x, infer.translate(studio.model(run_id), x, direction)
        x, y = await work(go)
        if format == "json":
            return {"input": img.data_url(x), "image": img.data_url(y), "direction": direction}
        if x.shape[1] != y.shape[1]:  # grey <-> colour: show both in colour side by side
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return image_response(torch.cat([x, y]), "png", nrow=2)

    @app.post("/api/runs/{run_id}/interpolate")
    async def interpolate(run_id: str, a: UploadFile | None = File(None), b: UploadFile | None = File(None),
                          seed_a: int | None = Form(None, ge=0, le=SEED_MAX),
                          seed_b: int | None = Form(None, ge=0, le=SEED_MAX),
                          steps: int = Form(8, ge=2, le=MAX_INTERP), label: int | None = Form(None, ge=0),
                          invert: str = Form("auto"),
                          fit: str = Form("auto"), format: Literal["png", "json"] = Form("png")):
        run = studio.run(run_id)
        caps = needs(run, "decode")
        check_label(run, label)
        check_framing(invert, fit)
        ends = {}
        for name, f, s in (("a", a, seed_a), ("b", b, seed_b)):
            if f is not None and s is not None:
                raise StudioError(422, f"give either an image or a seed for end {name!r}, not both")
            if f is not None:
                if not caps["encode"]:
                    raise StudioError(422, f"a {run.config['family']} run has no encoder: give seed_{name}")
                ends[name] = await read_upload(f, name)
            else:
                ends[name] = s if s is not None else secrets.randbelow(SEED_MAX)

        def go():
            m = studio.model(run_id)
            zs = []
            for v in (ends["a"], ends["b"]):
                if isinstance(v, bytes):
                    zs.append(infer.encode(m, to_input(run_id, v, None, invert, fit)))
                else:
                    zs.append(infer.prior_latent(m, 1, v).float().cpu())
            return infer.interpolate(m, zs[0], zs[1], steps, label)
        x = await work(go)
        seeds = {k: v for k, v in (("seed_a", ends["a"]), ("seed_b", ends["b"])) if isinstance(v, int)}
        if format == "json":
            return {"image": img.data_url(x, nrow=steps), "frames": [img.data_url(f) for f in x], **seeds}
        return image_response(x, "png", nrow=steps)

    return app


class BodyLimit:
    """ASGI middleware: read a request body up to `limit` bytes and refuse it (413) beyond, whether the size is
    declared or streamed, before any parser sees it; the app then reads the buffered body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = f"request body too large (limit {self.limit} bytes)"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _send_json(send, 413, too_big)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await _send_json(send, 413, too_big)
            more = msg.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


async def _send_json(send, status: int, message: str) -> None:
    import json
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          data_dir: str | None = None) -> None:
    """Run the studio with uvicorn until interrupted."""
    import uvicorn
    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = ["127.0.0.1", "localhost", "::1"] if loopback else None  # DNS-rebinding guard on a local studio
    app = create_app(runs_dir, device=device, data_dir=data_dir, allowed_hosts=hosts)
    n = len(app.state.studio.runs)
    shown = f"[{host}]" if ":" in host else host
    print(f"dgm studio: {n} run(s) under {runs_dir}; open http://{shown}:{port}/  (Ctrl-C to stop)")
    if not loopback:
        print("dgm studio: warning: listening beyond this machine; anyone who can reach it can use it")
    uvicorn.run(app, host=host, port=port, log_level="warning")
