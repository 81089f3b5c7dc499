"""The FastAPI app: the page, the JSON/PNG API, limits, and one-line errors.

Every refusal is ``{"error": "<one line>"}`` with a 4xx/5xx status; no traceback is ever sent
(an unexpected failure is logged on the server in one line, with the traceback only at debug
level, and answered 500).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from finecut import __version__
from finecut.errors import FinecutError
from finecut.serve import jobs
from finecut.serve.config import ServeConfig
from finecut.serve.models import Models
from finecut.serve.problem import Problem, one_line, problem_from_error
from finecut.serve.queue import QueueFull, WorkQueue
from finecut.serve.upload import Field, Upload, drain, read_form, request_body_schema

log = logging.getLogger(__name__)

__all__ = ["ErrorBody", "create_app"]

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


class ErrorBody(BaseModel):
    """Every refusal: one line saying what was wrong."""

    error: str


@dataclass
class _State:
    config: ServeConfig
    queue: WorkQueue
    models: Models
    page: bytes
    static: dict[str, bytes]


# ----------------------------------------------------------------------------------- fields
_IMAGE = Field(
    "image",
    "file",
    "the photo: PNG, JPEG, TIFF, WebP, BMP or GIF (EXIF orientation applied; 16-bit, grey and "
    "RGBA accepted, RGBA composited over white)",
    required=True,
)
_MASK = Field(
    "mask",
    "file",
    "the rough mask, the photo's size: grey (> 127 is the object), or an RGBA cut-out whose "
    "alpha is the mask (finecut.data.io.read_mask's rules)",
    required=True,
)
_BOOL = {"type": "boolean"}
_SNAP = Field(
    "snap",
    "text",
    "edge snapping after CRM (matting in a thin band)",
    schema={**_BOOL, "default": True},
)
_RESIZE = Field(
    "resize_mask",
    "text",
    "resize a mask of another size to the photo instead of refusing it",
    schema={**_BOOL, "default": False},
)
REFINE_FIELDS = (
    _IMAGE,
    _MASK,
    Field(
        "soft",
        "text",
        "answer the soft alpha (round(255 * probability)) instead of the binary mask",
        schema={**_BOOL, "default": False},
    ),
    _SNAP,
    _RESIZE,
    Field(
        "format",
        "text",
        "png: one grey PNG; zip: mask.png, alpha.png, cutout.png and "
        "cutout_soft.png together (entries stored)",
        schema={"enum": ["png", "zip"], "default": "png"},
    ),
)
CUTOUT_FIELDS = (
    _IMAGE,
    _MASK,
    Field(
        "soft",
        "text",
        "use the soft alpha as the cut-out's alpha instead of the binary mask",
        schema={**_BOOL, "default": False},
    ),
    _SNAP,
    _RESIZE,
)
GRABCUT_FIELDS = (
    _IMAGE,
    Field(
        "box",
        "text",
        "a box around the object, 'x0,y0,x1,y1' in photo pixels",
        schema={"example": "120,40,480,360"},
    ),
    Field(
        "fg",
        "file",
        "strokes over the object: a mask of any size (> 127 or opaque alpha "
        "marks; resized to the photo, nearest)",
    ),
    Field("bg", "file", "strokes over the background, as fg"),
    Field(
        "method",
        "text",
        "grabcut: GrabCut seeded by the box and strokes; direct: the strokes or the box as painted",
        schema={"enum": ["grabcut", "direct"], "default": "grabcut"},
    ),
)


def _soft_fields(config: ServeConfig) -> tuple[Field, ...]:
    return (
        _IMAGE,
        Field(
            "layers",
            "text",
            "number of soft layers, 1..10",
            schema={"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
        ),
        Field(
            "max_side",
            "text",
            "solve at this longer side at most (the layers are upsampled "
            f"to the photo's size); the server allows up to {config.soft_max_side}",
            schema={
                "type": "integer",
                "minimum": 64,
                "maximum": config.soft_max_side,
                "default": config.soft_max_side,
            },
        ),
    )


def _bool(form: dict[str, Any], name: str, default: bool) -> bool:
    text = form.get(name)
    if text is None or text == "":
        return default
    value = str(text).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise Problem(400, f"form field {name!r} must be true or false, got {str(text)[:40]!r}")


def _int(form: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    text = form.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(str(text))
    except ValueError:
        raise Problem(
            400, f"form field {name!r} must be an integer, got {str(text)[:40]!r}"
        ) from None
    if not lo <= value <= hi:
        raise Problem(400, f"form field {name!r} must be in {lo}..{hi}, got {value}")
    return value


def _choice(form: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    text = form.get(name)
    if text is None or text == "":
        return choices[0]
    if text not in choices:
        raise Problem(
            400, f"form field {name!r} must be one of {', '.join(choices)}, got {str(text)[:40]!r}"
        )
    return str(text)


# ----------------------------------------------------------------------------------- answers
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


_PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
_ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "unreadable, truncated or non-image file, a mask of another size, a bad or missing "
        "field",
        408: "the upload took longer than the server's upload timeout",
        413: "the upload is over --max-upload-mb, or the image over --max-pixels (checked from "
        "its header before decoding)",
        415: "not multipart/form-data, or a file part declared as a non-image type",
        500: "an unexpected failure (logged on the server)",
        503: "the queue is full: retry after the Retry-After header's seconds",
    }
    answers: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text[code]} for code in codes
    }
    if 503 in answers:
        answers[503]["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        }
    return answers


_ALL_REFUSALS = _refusals(400, 408, 413, 415, 500, 503)
_RESULT_HEADERS = {
    "X-Finecut-Size": {"description": "the photo's size, WxH", "schema": {"type": "string"}},
    "X-Finecut-Seconds": {
        "description": "seconds from arrival to answer (upload, queue wait, work)",
        "schema": {"type": "number"},
    },
    "X-Finecut-Warning": {
        "description": "present when the result needs a word, e.g. an empty mask returned "
        "unchanged",
        "schema": {"type": "string"},
    },
}


async def _handle(
    request: Request,
    fields: tuple[Field, ...],
    prepare: Callable[[_State, dict[str, Any]], Callable[..., jobs.Result]],
) -> Response:
    """Admit, read the upload, run the work on the queue, answer; every failure -> one line."""
    state: _State = request.app.state.finecut
    cfg = state.config
    job_id = request.headers.get("x-finecut-job")
    job_id = job_id if job_id and _JOB_ID.match(job_id) else None
    t0 = time.perf_counter()
    try:
        ticket = state.queue.admit(job_id)
    except QueueFull as full:
        await drain(request, max_bytes=cfg.max_upload_bytes)
        return _error(
            503,
            f"the server is busy ({cfg.workers} running, {cfg.queue} waiting); retry in "
            f"{full.retry_after} s",
            {"Retry-After": str(full.retry_after)},
        )
    problem: Problem | None = None
    try:
        form = await read_form(
            request, fields, max_bytes=cfg.max_upload_bytes, timeout_s=cfg.upload_timeout_s
        )
        work = prepare(state, form)
        result = await state.queue.run(ticket, work)
    except Problem as exc:
        problem = exc
    except FinecutError as exc:
        problem = problem_from_error(exc)
    except MemoryError:
        problem = Problem(503, "not enough memory for this image now; try a smaller one")
    except Exception as exc:  # a bug: logged here in one line, never shown to the client
        log.error(
            "%s %s failed: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            one_line(str(exc)),
        )
        log.debug("traceback", exc_info=True)
        problem = Problem(500, "internal error (the server's log has the details)")
    finally:
        if not ticket.submitted:
            state.queue.release(ticket)
    if problem is not None:
        if problem.status not in (408, 413):
            await drain(request, max_bytes=cfg.max_upload_bytes)
        return _error(problem.status, problem.message, problem.headers)
    headers = {
        "Content-Disposition": f'attachment; filename="{result.filename}"',
        "Cache-Control": "no-store",
        "X-Finecut-Size": f"{result.size[0]}x{result.size[1]}",
        "X-Finecut-Seconds": f"{time.perf_counter() - t0:.3f}",
    }
    if result.warning:
        headers["X-Finecut-Warning"] = one_line(result.warning).encode("ascii", "replace").decode()
    return Response(result.body, media_type=result.media_type, headers=headers)


def _upload(form: dict[str, Any], name: str) -> Upload | None:
    value = form.get(name)
    return value if isinstance(value, Upload) else None


def _prepare_refine(output: str | None) -> Callable[[_State, dict[str, Any]], Callable]:
    def prepare(state: _State, form: dict[str, Any]) -> Callable[..., jobs.Result]:
        soft = _bool(form, "soft", False)
        if output is None:  # /api/refine
            fmt = _choice(form, "format", ("png", "zip"))
            out = "zip" if fmt == "zip" else ("alpha" if soft else "mask")
        else:
            out = "cutout_soft" if soft else "cutout"
        snap = _bool(form, "snap", True)
        resize = _bool(form, "resize_mask", False)
        image, mask = _upload(form, "image"), _upload(form, "mask")

        def work(report) -> jobs.Result:
            return jobs.refine_job(
                state.models,
                image,
                mask,
                output=out,
                snap=snap,
                resize_mask=resize,
                max_pixels=state.config.max_pixels,
                report=report,
            )

        return work

    return prepare


def _prepare_grabcut(state: _State, form: dict[str, Any]) -> Callable[..., jobs.Result]:
    method = _choice(form, "method", ("grabcut", "direct"))
    box = form.get("box") or None
    fg, bg = _upload(form, "fg"), _upload(form, "bg")
    if box is None and fg is None:
        raise Problem(400, "give a box ('x0,y0,x1,y1') and/or fg strokes over the object")
    image = _upload(form, "image")

    def work(report) -> jobs.Result:
        return jobs.grabcut_job(
            image,
            box=box,
            fg=fg,
            bg=bg,
            method=method,
            max_pixels=state.config.max_pixels,
            report=report,
        )

    return work


def _prepare_soft(state: _State, form: dict[str, Any]) -> Callable[..., jobs.Result]:
    cfg = state.config
    layers = _int(form, "layers", 5, 1, 10)
    max_side = _int(form, "max_side", cfg.soft_max_side, 64, cfg.soft_max_side)
    image = _upload(form, "image")

    def work(report) -> jobs.Result:
        return jobs.soft_job(
            state.models,
            image,
            layers=layers,
            max_side=max_side,
            max_pixels=cfg.max_pixels,
            report=report,
        )

    return work


# ------------------------------------------------------------------------------------- hosts
class _LoopbackHostOnly:
    """Refuse requests whose Host is not a loopback name (a server bound to loopback only):
    a web page elsewhere cannot reach it through a rebound DNS name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = ""
            for key, value in scope.get("headers", []):
                if key == b"host":
                    host = value.decode("latin-1")
                    break
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host and name.lower() not in _LOOPBACK_NAMES:
                response = _error(
                    400,
                    f"unexpected Host {host[:80]!r}: this server answers "
                    "loopback names only (localhost, 127.0.0.1, [::1])",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# --------------------------------------------------------------------------------------- app
_DESCRIPTION = """\
Turn a rough mask into a crisp full-resolution cut-out (finecut's CRM refiner with edge
snapping), make a rough mask from a box or brush strokes (GrabCut), and split a photo into soft
layers (semantic soft segmentation).

Uploads are `multipart/form-data`. Results are PNG (or zip of PNGs). Every refusal is
`{"error": "<one line>"}` with a 4xx/5xx status. Work runs in a bounded queue: when it is
full the answer is 503 with a `Retry-After` header. A client may send a header
`X-Finecut-Job: <id>` (letters, digits, `-`, `_`) and poll `GET /api/progress/<id>` meanwhile.
"""


def create_app(config: ServeConfig | None = None, *, models: Models | None = None) -> FastAPI:
    """The server's ASGI app.

    Args:
        config: limits and model settings (default :class:`ServeConfig`).
        models: already-built models to share (default: a new :class:`Models`; the refiner is
            loaded on first use unless the caller preloaded it).
    """
    config = config or ServeConfig()
    models = models or Models(config)
    package = resources.files("finecut.serve").joinpath("static")
    state = _State(
        config=config,
        queue=WorkQueue(config.workers, config.queue),
        models=models,
        page=package.joinpath("index.html").read_bytes(),
        static={name: package.joinpath(name).read_bytes() for name in _STATIC},
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.queue.shutdown()

    app = FastAPI(
        title="finecut serve",
        version=__version__,
        description=_DESCRIPTION,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN; the page never does
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.finecut = state
    if _is_loopback(config.host):
        app.add_middleware(_LoopbackHostOnly)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"not found: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}" + (
                f" (use {allowed})" if allowed else ""
            )
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"invalid request: {where} {first.get('msg', '')}".strip())

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return _error(500, "internal error (the server's log has the details)")

    page_headers = {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(state.page, media_type="text/html; charset=utf-8", headers=page_headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in state.static:
            return _error(404, f"not found: /static/{name[:80]}")
        return Response(state.static[name], media_type=_STATIC[name], headers=page_headers)

    @app.get(
        "/healthz",
        summary="Liveness, models and queue",
        response_description="status, version, which models are loaded, queue counts, limits",
        tags=["server"],
    )
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "models": models.status(),
            "queue": state.queue.stats(),
            "limits": {
                "max_upload_mb": config.max_upload_mb,
                "max_pixels": config.max_pixels,
                "soft_max_side": config.soft_max_side,
            },
        }

    @app.get(
        "/api/progress/{job_id}",
        summary="Progress of a request sent with X-Finecut-Job",
        tags=["server"],
        responses={404: {"model": ErrorBody, "description": "no such request in the queue"}},
    )
    async def progress(job_id: str) -> Any:
        found = state.queue.progress(job_id)
        if found is None:
            return _error(404, f"no request {job_id[:64]!r} is waiting or running")
        return found

    def post(
        path: str,
        fields: tuple[Field, ...],
        summary: str,
        description: str,
        ok: dict[str, Any],
        prepare: Callable,
    ) -> None:
        async def endpoint(request: Request) -> Response:
            return await _handle(request, fields, prepare)

        endpoint.__name__ = path.strip("/").replace("/", "_")
        app.post(
            path,
            summary=summary,
            description=description,
            tags=["finecut"],
            response_class=Response,
            responses={200: {**ok, "headers": _RESULT_HEADERS}, **_ALL_REFUSALS},
            openapi_extra={"requestBody": request_body_schema(fields)},
        )(endpoint)

    post(
        "/api/refine",
        REFINE_FIELDS,
        "Refine a rough mask",
        "The refined mask at the photo's full resolution: a grey PNG, 0/255 (the refiner's "
        "probability > 0.5), or with soft=true the soft alpha (0..255). format=zip answers "
        "mask.png, alpha.png, cutout.png and cutout_soft.png in one zip.",
        {
            "description": "the mask or alpha (PNG), or all results (zip)",
            "content": {**_PNG["content"], **_ZIP},
        },
        _prepare_refine(None),
    )
    post(
        "/api/cutout",
        CUTOUT_FIELDS,
        "Cut the object out",
        "The photo as an RGBA PNG whose alpha is the refined mask (or, with soft=true, the "
        "soft alpha).",
        {"description": "RGBA PNG, the photo's size", **_PNG},
        _prepare_refine("cutout"),
    )
    post(
        "/api/grabcut",
        GRABCUT_FIELDS,
        "A rough mask from a box or brush strokes",
        "OpenCV's GrabCut seeded by the box and/or strokes (finecut.serve.hints: it runs at a "
        "512-pixel longer side and is upsampled), or with method=direct the strokes or box as "
        "painted. Feed the answer to /api/refine as the mask.",
        {"description": "grey PNG, 0/255, the photo's size", **_PNG},
        _prepare_grabcut,
    )
    post(
        "/api/soft",
        _soft_fields(config),
        "Soft layers",
        "Semantic soft segmentation (fast mode, finecut's embedding network): a zip of "
        "layer_K.png (the photo with layer K's alpha, RGBA) and composite.png (the layers "
        "colour-coded), at the photo's size; the alphas sum to 255 +- rounding at every pixel.",
        {"description": "zip of PNGs", "content": _ZIP},
        _prepare_soft,
    )
    return app
