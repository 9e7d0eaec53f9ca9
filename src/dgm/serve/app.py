"""`dgm serve`: the studio's web app. A FastAPI app over `dgm.serve.runs.Studio`: a static page and a JSON/PNG API
(dgm.serve.routes), with the checks of dgm.serve.checks in front.

    from dgm.serve import create_app
    app = create_app("runs")          # uvicorn dgm.serve.app:... or `dgm serve runs`

Safety: run ids map to folders found at start-up (never to a path in a request); bodies are capped per route before
they are parsed and must arrive in time; n, steps, image size and every number are range-checked; inference runs in
worker threads, one at a time, with a bounded queue (a flood gets 503 instead of piling up), so the event loop keeps
answering. Every error is JSON ``{"error": "what is wrong"}`` on one line with a 4xx code (5xx only for a fault in the
model itself).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from dgm.serve import checks
from dgm.serve.checks import BODY_SECONDS, MAX_BODY, MAX_N, BodyLimit  # noqa: F401  (the limits, for callers)
from dgm.serve.routes import router
from dgm.serve.runs import Studio, StudioError, one_line

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'")


# -- errors: always JSON, one line -----------------------------------------------------------------------------------
def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message, 600) or "error"}, status_code=status)


async def on_studio_error(_, e: StudioError):
    return error(e.status, str(e))


def validation_message(e: RequestValidationError) -> str:
    parts = []
    for d in e.errors():
        if d.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({d.get('ctx', {}).get('error', 'parse error')})")
            continue
        # The field's path, without FastAPI's prefixes and pydantic's union-branch names ("list[float]").
        loc = ".".join(str(p) for p in d.get("loc", ()) if p not in ("body", "query", "path") and "[" not in str(p))
        parts.append(f"{loc or 'request'}: {d.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


async def on_validation_error(_, e: RequestValidationError):
    return error(422, validation_message(e))


async def on_http_error(_, e: HTTPException):
    return error(e.status_code, str(e.detail))


async def on_internal_error(_, e: Exception):
    return error(500, f"internal error: {type(e).__name__}: {e}")


# -- who may ask, and the headers of every answer ----------------------------------------------------------------------
async def guard(allowed_hosts: list[str] | None, request: Request, call_next):
    try:
        checks.check_host(request.headers.get("host"), allowed_hosts)
        checks.check_origin(request.method, request.headers)
    except StudioError as e:
        return error(e.status, str(e))
    response = await call_next(request)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.url.path in ("/", "/index.html"):
        response.headers["Content-Security-Policy"] = CSP
    return response


class Worker:
    """Runs inference in a worker thread, one at a time (the CPU is shared, memory stays bounded); refuses (503) when
    `max_pending` requests already wait. A model's ValueError or NotImplementedError is the request's fault: 422."""

    def __init__(self, max_pending: int = 16):
        self.limiter = anyio.CapacityLimiter(1)
        self.max_pending, self.pending = max_pending, 0

    async def __call__(self, fn, *args):
        if self.pending >= self.max_pending:
            raise StudioError(503, f"busy: {self.pending} requests are waiting; try again in a moment")
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except (ValueError, NotImplementedError) as e:
            raise StudioError(422, str(e) or type(e).__name__) from None
        finally:
            self.pending -= 1


async def index():
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(runs_dir: str | Path = "runs", *, device: str = "cpu", data_dir: str | None = None,
               allowed_hosts: list[str] | None = None, max_pending: int = 16, body_seconds: float = BODY_SECONDS):
    """The studio for the runs under `runs_dir` (found now; POST /api/rescan picks up new ones)."""
    studio = Studio(runs_dir, device=device, data_dir=data_dir)
    app = FastAPI(title="dgm studio", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.studio, app.state.work = studio, Worker(max_pending)
    app.add_exception_handler(StudioError, on_studio_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_internal_error)
    # The cap on bodies runs before anything parses them; the Host/Origin guard runs first of all.
    app.add_middleware(BodyLimit, limit=partial(checks.body_limit, studio=studio), seconds=body_seconds)
    app.middleware("http")(partial(guard, allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", index, include_in_schema=False)
    app.include_router(router)
    return app


def serve(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          data_dir: str | None = None) -> None:
    """Run the studio with uvicorn until interrupted (dgm.serve.server sets its timeouts and limits)."""
    from dgm.serve.server import run_server
    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = ["127.0.0.1", "localhost", "::1"] if loopback else None  # DNS-rebinding guard on a local studio
    app = create_app(runs_dir, device=device, data_dir=data_dir, allowed_hosts=hosts)
    runs = app.state.studio.runs.values()
    broken = sum(1 for r in runs if r.error)
    shown = f"[{host}]" if ":" in host else host
    print(f"dgm studio: {len(runs)} run(s) under {runs_dir}" + (f" ({broken} broken: see the page)" if broken else "")
          + f"; open http://{shown}:{port}/  (Ctrl-C to stop)")
    if not loopback:
        print("dgm studio: warning: listening beyond this machine; anyone who can reach it can use it")
    run_server(app, host, port)
