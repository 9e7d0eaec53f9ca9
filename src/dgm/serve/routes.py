"""The studio's API routes: small functions over `dgm.serve.checks` (what a request may ask), `dgm.serve.infer` (what
the model does, in a worker thread) and `dgm.serve.images` (what goes back). The app (dgm.serve.app) puts the Studio
at `app.state.studio` and the worker queue at `app.state.work`.
"""
from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal, Union

import anyio
import torch
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dgm.serve import checks, infer
from dgm.serve import images as img
from dgm.serve.checks import MAX_INTERP, MAX_LATENT, MAX_N, MAX_OPTIONS, SEED_MAX
from dgm.serve.runs import Studio, StudioError

router = APIRouter(prefix="/api")


# -- request bodies (module level: FastAPI resolves their annotations here) ------------------------------------------
Option = Union[bool, int, float, Annotated[str, Field(max_length=256)], None]
Code = Annotated[list[float], Field(min_length=1, max_length=MAX_LATENT)]


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    label: int | None = Field(None, ge=0)
    options: dict[Annotated[str, Field(max_length=64)], Option] = Field(default_factory=dict, max_length=MAX_OPTIONS)
    trajectory: bool = False
    format: Literal["png", "json"] = "png"


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    z: Annotated[list[Code], Field(min_length=1, max_length=MAX_N)] | Code  # one code, or up to MAX_N codes
    label: int | None = Field(None, ge=0)
    format: Literal["png", "json"] = "png"


Format = Annotated[Literal["png", "json"], Form()]
Seed = Annotated[int | None, Form(ge=0, le=SEED_MAX)]


def _studio(request: Request) -> Studio:
    return request.app.state.studio


async def _work(request: Request, fn, *args):
    return await request.app.state.work(fn, *args)


def image_response(x: torch.Tensor, fmt: str, nrow: int = 8, extra: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None):
    if fmt == "json":
        return {"image": img.data_url(x, nrow), **(extra or {})}
    return Response(img.png_bytes(x, nrow), media_type="image/png",
                    headers={"Cache-Control": "no-store", **(headers or {})})


# -- read-only API ----------------------------------------------------------------------------------------------------
@router.get("/runs")
async def list_runs(request: Request):
    return {"runs": [r.summary() for r in _studio(request).runs.values()], "limits": checks.LIMITS}


@router.post("/rescan")
async def rescan(request: Request):
    await _work(request, _studio(request).rescan)
    return await list_runs(request)


@router.get("/runs/{run_id}")
async def run_detail(request: Request, run_id: str):
    """Everything about a run; loads its model (once) so a run whose weights do not load says so."""
    studio, load_error = _studio(request), None
    studio.run(run_id)  # unknown: 404; broken: 409
    try:
        await _work(request, studio.model, run_id)
    except StudioError as e:
        if e.status in (404, 503):
            raise
        load_error = str(e)
    return {**studio.summary(run_id), "load_error": load_error}


@router.get("/runs/{run_id}/latent")
async def latent(request: Request, run_id: str):
    checks.needs(_studio(request).run(run_id), "decode")
    return await _work(request, _studio(request).latent_stats, run_id)


@router.get("/runs/{run_id}/files/{name}")
async def run_file(request: Request, run_id: str, name: str):
    files = _studio(request).run(run_id).files()
    if name not in files:
        raise StudioError(404, f"no picture {name!r:.80} in run {run_id!r}; it has: {', '.join(files) or 'none'}")
    return FileResponse(files[name], headers={"Cache-Control": "no-cache"})


@router.get("/leaderboard")
async def leaderboard(request: Request):
    """Runs with eval.json numbers, grouped by dataset (numbers are only comparable on the same data). Read in a
    thread (files, and the metric registry's first import), not on the event loop."""
    from dgm.serve.board import board
    runs = list(_studio(request).runs.values())
    return {"datasets": await anyio.to_thread.run_sync(board, runs)}


# -- sampling and decoding --------------------------------------------------------------------------------------------
def _sample_json(out: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    if out.get("z") is not None:
        extra["z"] = out["z"]
    if out["steps"]:
        frames = infer.pick_steps(out["steps"], checks.MAX_FRAMES)
        strip = torch.stack(frames, 1).flatten(0, 1)  # (n * k, C, H, W): one row per sample
        extra["strip"] = img.data_url(strip, nrow=len(frames))
        extra["strip_frames"] = len(frames)
    return extra


@router.post("/runs/{run_id}/sample")
async def sample(request: Request, run_id: str, req: SampleRequest | None = None):
    req, studio = req or SampleRequest(), _studio(request)
    run = studio.run(run_id)
    caps = checks.needs(run, "sample")
    checks.check_label(run, req.label)
    checks.check_trajectory(run, req.trajectory)
    opts = checks.check_options(run, req.options, req.n)
    seed = req.seed if req.seed is not None else secrets.randbelow(SEED_MAX)

    def go():
        m = studio.model(run_id)
        out = infer.sample(m, req.n, seed, req.label, opts, req.trajectory, caps["conditional"])
        if caps["decode"] and req.format == "json":
            out["z"] = infer.prior_latent(m, req.n, seed).float().cpu().tolist()
        return out
    out = await _work(request, go)
    extra = {"seed": seed, "n": req.n, "label": req.label, "labels": out["labels"], "options": opts}
    if req.format == "json":
        extra = _sample_json(out, extra)
    return image_response(out["images"], req.format, extra=extra, headers={"X-Seed": str(seed)})


@router.post("/runs/{run_id}/decode")
async def decode(request: Request, run_id: str, req: DecodeRequest):
    studio = _studio(request)
    run = studio.run(run_id)
    checks.needs(run, "decode")
    label = checks.check_label(run, req.label)
    z = checks.check_z(req.z)
    x = await _work(request, lambda: infer.decode(studio.model(run_id), z, label))
    return image_response(x, req.format)


# -- uploads: encode, reconstruct, translate, interpolate ----------------------------------------------------------
Upload = Annotated[UploadFile | None, File()]
Invert = Annotated[Literal["auto", "yes", "no"], Form()]
Fit = Annotated[Literal["auto", "object", "square", "stretch"], Form()]
Direction = Annotated[Literal["AtoB", "BtoA"], Form()]


@router.post("/runs/{run_id}/encode")
async def encode(request: Request, run_id: str, file: Upload = None, invert: Invert = "auto", fit: Fit = "auto"):
    studio = _studio(request)
    checks.needs(studio.run(run_id), "encode")
    checks.check_framing(invert, fit)
    data = await checks.read_upload(file)

    def go():
        x = checks.to_input(studio, run_id, data, None, invert, fit)
        return x, infer.encode(studio.model(run_id), x)
    x, z = await _work(request, go)
    return {"input": img.data_url(x), "z": z[0].tolist()}


@router.post("/runs/{run_id}/reconstruct")
async def reconstruct(request: Request, run_id: str, file: Upload = None, invert: Invert = "auto",
                      fit: Fit = "auto", format: Format = "png"):
    studio = _studio(request)
    caps = checks.needs(studio.run(run_id), "reconstruct")
    checks.check_framing(invert, fit)
    data = await checks.read_upload(file)

    def go():
        x = checks.to_input(studio, run_id, data, None, invert, fit)
        m = studio.model(run_id)
        z = infer.encode(m, x)[0].tolist() if caps["encode"] else None
        return x, infer.reconstruct(m, x), z
    x, r, z = await _work(request, go)
    if format == "json":
        return {"input": img.data_url(x), "image": img.data_url(r), "z": z}
    return image_response(torch.cat([x, r]), "png", nrow=2)


@router.post("/runs/{run_id}/translate")
async def translate(request: Request, run_id: str, file: Upload = None, direction: Direction = "AtoB",
                    invert: Invert = "auto", fit: Fit = "auto", format: Format = "png"):
    studio = _studio(request)
    checks.needs(studio.run(run_id), "translate")
    checks.check_direction(direction)
    checks.check_framing(invert, fit)
    data = await checks.read_upload(file)

    def go():
        x = checks.to_input(studio, run_id, data, direction[0], invert, fit)
        return x, infer.translate(studio.model(run_id), x, direction)
    x, y = await _work(request, go)
    if format == "json":
        return {"input": img.data_url(x), "image": img.data_url(y), "direction": direction}
    if x.shape[1] != y.shape[1]:  # grey <-> colour: show both in colour side by side
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    return image_response(torch.cat([x, y]), "png", nrow=2)


def _line_ends(studio: Studio, run_id: str, ends: dict[str, Any], invert: str, fit: str) -> list[torch.Tensor]:
    """The two codes of an interpolation: an uploaded image's code, or the prior's code for a seed."""
    m = studio.model(run_id)
    return [infer.encode(m, checks.to_input(studio, run_id, v, None, invert, fit)) if isinstance(v, bytes)
            else infer.prior_latent(m, 1, v).float().cpu() for v in (ends["a"], ends["b"])]


@router.post("/runs/{run_id}/interpolate")
async def interpolate(request: Request, run_id: str, a: Upload = None, b: Upload = None, seed_a: Seed = None,
                      seed_b: Seed = None, steps: Annotated[int, Form(ge=2, le=MAX_INTERP)] = 8,
                      label: Annotated[int | None, Form(ge=0)] = None, invert: Invert = "auto",
                      fit: Fit = "auto", format: Format = "png"):
    studio = _studio(request)
    run = studio.run(run_id)
    checks.needs(run, "decode")
    checks.check_label(run, label)
    checks.check_framing(invert, fit)
    checks.check_ends(run, {"a": (a, seed_a), "b": (b, seed_b)})
    ends = {}
    for name, f, s in (("a", a, seed_a), ("b", b, seed_b)):
        ends[name] = await checks.read_upload(f, name) if f is not None else (
            s if s is not None else secrets.randbelow(SEED_MAX))

    def go():
        za, zb = _line_ends(studio, run_id, ends, invert, fit)
        return infer.interpolate(studio.model(run_id), za, zb, steps, label)
    x = await _work(request, go)
    seeds = {k: v for k, v in (("seed_a", ends["a"]), ("seed_b", ends["b"])) if isinstance(v, int)}
    if format == "json":
        return {"image": img.data_url(x, nrow=steps), "frames": [img.data_url(f) for f in x], **seeds}
    return image_response(x, "png", nrow=steps)
