"""``finecut serve``: a local web page and HTTP API on finecut's embedded models.

Why FastAPI with its own page, not Gradio: the server has to enforce limits that Gradio hides
(a streaming cap on the request body, a header check of the image size before decoding, a
bounded queue that answers 503 with Retry-After, one-line JSON errors), and the page must work
offline: Gradio pulls a large front-end and fonts, and its queue and upload handling are its own.
A FastAPI app is a few hundred lines we control and test with its TestClient, gives a meaningful
OpenAPI description at ``/openapi.json``, and the page is three static files (HTML, JS, CSS:
canvas drawing, no framework, no CDN) shipped as package data; its Content-Security-Policy only
allows the server itself.

Layout (one idea per module; this package imports finecut's public API only and nothing in
finecut imports it):

==============  ===============================================================================
``config``      :class:`ServeConfig`, every limit
``upload``      streaming multipart reader: in memory, size cap, deadline, declared fields only
``queue``       :class:`WorkQueue`: admission (503 when full), worker threads, progress
``hints``       box / brush strokes -> coarse mask (OpenCV GrabCut)
``jobs``        the work of each endpoint: bytes in, PNG / zip bytes out
``models``      the refiner and embedding network, loaded once
``app``         the FastAPI app: routes, OpenAPI, one-line errors
``server``      bind, print the address, run uvicorn until Ctrl-C
``static/``     the page
==============  ===============================================================================

Needs the ``serve`` extras: ``pip install 'finecut[serve]'`` (fastapi, uvicorn,
python-multipart).
"""

from __future__ import annotations

import importlib.util

from finecut.serve.config import ServeConfig

__all__ = ["REQUIREMENTS", "ServeConfig", "create_app", "missing_requirements", "run"]

#: import name -> pip name of what the server needs beyond finecut.
REQUIREMENTS = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def missing_requirements() -> list[str]:
    """pip names of the server's packages that are not installed."""
    return [pip for mod, pip in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]


def create_app(*args, **kwargs):
    """:func:`finecut.serve.app.create_app` (imported on use: fastapi loads only here)."""
    from finecut.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def run(config: ServeConfig) -> None:
    """:func:`finecut.serve.server.run`."""
    from finecut.serve.server import run as _run

    _run(config)
