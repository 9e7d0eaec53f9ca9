"""dgm studio: a browser page over trained runs (`dgm serve RUNS_DIR`); needs the `serve` extra (FastAPI, uvicorn).

    from dgm.serve import create_app, serve
    serve("runs", port=8000)                 # http://127.0.0.1:8000/
"""
from __future__ import annotations


def create_app(runs_dir="runs", **kw):
    """The FastAPI app for the runs under `runs_dir` (see dgm.serve.app.create_app)."""
    from dgm.serve.app import create_app as _create
    return _create(runs_dir, **kw)


def serve(runs_dir="runs", host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    from dgm.serve.app import serve as _serve
    _serve(runs_dir, host=host, port=port, **kw)


__all__ = ["create_app", "serve"]
