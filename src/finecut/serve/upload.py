"""Reading a multipart upload as it streams in, into memory, with a size cap and a deadline.

Starlette's own form parser spools files over 1 MB to temporary files on disk and has no cap on
a file's size; this reader keeps every part in memory, counts the body's bytes as they arrive,
and refuses the request (413) the moment the count passes the limit, so no more than
``max_bytes`` of one request is ever held. Only the declared fields are taken: an unknown or
repeated field is refused by name (400), as are a non-multipart request (415) and a file part
declared as something other than an image (415).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from finecut.serve.problem import Problem

__all__ = ["Field", "Upload", "drain", "read_form", "request_body_schema"]

#: Part content types accepted for a file field (the bytes are checked by the image decoder).
_FILE_TYPES = ("", "application/octet-stream", "binary/octet-stream")
_MAX_TEXT = 1000  # bytes of one text field
_MAX_HEADERS = 16_384  # bytes of one part's headers


@dataclass(frozen=True)
class Field:
    """One form field an endpoint takes.

    Attributes:
        name: the form field's name.
        kind: ``file`` (bytes, e.g. an image) or ``text`` (a short string).
        description: what it is, for the OpenAPI description.
        required: refuse the request without it.
        schema: extra OpenAPI schema of a text field (``type``, ``enum``, ``default``...).
    """

    name: str
    kind: Literal["file", "text"]
    description: str
    required: bool = False
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass
class Upload:
    """A file part held in memory."""

    name: str
    filename: str
    content_type: str
    data: bytearray


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class _Collector:
    """python-multipart callbacks that keep the declared fields, in memory."""

    def __init__(self, fields: dict[str, Field], max_parts: int) -> None:
        self.fields = fields
        self.max_parts = max_parts
        self.values: dict[str, Upload | str] = {}
        self.ended = False
        self._parts = 0
        self._new_part()

    def _new_part(self) -> None:
        self._headers: dict[str, str] = {}
        self._header_size = 0
        self._hfield = bytearray()
        self._hvalue = bytearray()
        self._field: Field | None = None
        self._filename = ""
        self._ctype = ""
        self._data = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.max_parts:
            raise Problem(400, f"too many form fields (at most {self.max_parts})")
        self._new_part()

    def _grow_headers(self, n: int) -> None:
        self._header_size += n
        if self._header_size > _MAX_HEADERS:
            raise Problem(400, "a form part's headers are too long")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._grow_headers(end - start)
        self._hfield += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._grow_headers(end - start)
        self._hvalue += data[start:end]

    def _on_header_end(self) -> None:
        key = self._hfield.decode("latin-1").strip().lower()
        self._headers[key] = self._hvalue.decode("latin-1").strip()
        self._hfield = bytearray()
        self._hvalue = bytearray()

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise Problem(400, "a form part has no 'Content-Disposition: form-data; name=...'")
        key = name.decode("utf-8", "replace")
        spec = self.fields.get(key)
        if spec is None:
            known = ", ".join(self.fields)
            raise Problem(400, f"unknown form field {key!r} (this endpoint takes: {known})")
        if key in self.values:
            raise Problem(400, f"form field {key!r} is given twice")
        ctype = parse_options_header(self._headers.get("content-type"))[0].decode("latin-1")
        ctype = ctype.lower()
        if spec.kind == "file" and not (ctype in _FILE_TYPES or ctype.startswith("image/")):
            raise Problem(
                415,
                f"form field {key!r} is declared as {ctype!r}; send an image file "
                "(image/png, image/jpeg, ... or application/octet-stream)",
            )
        self._field = spec
        self._filename = params.get(b"filename", b"").decode("utf-8", "replace")
        self._ctype = ctype

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if self._field is not None and self._field.kind == "text" and len(self._data) > _MAX_TEXT:
            raise Problem(400, f"form field {self._field.name!r} is longer than {_MAX_TEXT} bytes")

    def _on_part_end(self) -> None:
        spec = self._field
        if spec is None:
            return
        if spec.kind == "file":
            self.values[spec.name] = Upload(spec.name, self._filename, self._ctype, self._data)
        else:
            try:
                self.values[spec.name] = self._data.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise Problem(400, f"form field {spec.name!r} is not UTF-8 text") from None
        self._new_part()

    def _on_end(self) -> None:
        self.ended = True


async def read_form(
    request: Request,
    fields: list[Field] | tuple[Field, ...],
    *,
    max_bytes: int,
    timeout_s: float,
) -> dict[str, Upload | str]:
    """Read a ``multipart/form-data`` body into memory: field name -> :class:`Upload` or text.

    Raises:
        Problem: 415 not multipart or a file declared as a non-image type; 413 a body larger
            than ``max_bytes`` (from Content-Length at once, or while streaming); 408 a body
            slower than ``timeout_s``; 400 a malformed body, an unknown, repeated or missing
            required field.
    """
    by_name = {f.name: f for f in fields}
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "no content type"
        raise Problem(
            415,
            f"send multipart/form-data with the fields {', '.join(by_name)}; got {shown}",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, f"invalid Content-Length {declared!r}")
        if int(declared) > max_bytes:
            raise Problem(
                413,
                f"the upload is {_mb(int(declared))}, more than the limit of {_mb(max_bytes)}",
            )
    collector = _Collector(by_name, max_parts=2 * len(by_name) + 2)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    raise Problem(413, f"the upload is more than the limit of {_mb(max_bytes)}")
                if chunk:
                    parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        raise Problem(408, f"the upload took more than {timeout_s:g} s") from None
    except ClientDisconnect:
        raise Problem(400, "the client disconnected during the upload") from None
    except MultipartParseError as exc:
        raise Problem(400, f"malformed multipart body ({exc})") from None
    if not collector.ended:
        raise Problem(400, "the multipart body is incomplete (no closing boundary)")
    for spec in fields:
        if spec.required and spec.name not in collector.values:
            raise Problem(400, f"missing form field {spec.name!r}: {spec.description}")
    return collector.values


async def drain(request: Request, *, max_bytes: int, timeout_s: float = 5.0) -> None:
    """Read and discard a body the server refuses before reading it (e.g. 503), so a client that
    sends its whole body before reading the answer sees the answer instead of a reset
    connection. Skipped when the client waits for ``100 Continue`` (it then sends nothing) or
    announces more than ``max_bytes``; bounded by ``timeout_s``; never raises."""
    if "100-continue" in request.headers.get("expect", "").lower():
        return
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    return
    except Exception:  # a client gone or slow: the answer is sent (or not) all the same
        return


def request_body_schema(fields: list[Field] | tuple[Field, ...]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a multipart endpoint taking ``fields``."""
    properties: dict[str, Any] = {}
    for spec in fields:
        if spec.kind == "file":
            prop: dict[str, Any] = {"type": "string", "format": "binary"}
        else:
            prop = {"type": "string", **spec.schema}
        prop["description"] = spec.description
        properties[spec.name] = prop
    encoding = {
        spec.name: {
            "contentType": "image/png, image/jpeg, image/tiff, image/webp, image/bmp, "
            "image/gif, application/octet-stream"
        }
        for spec in fields
        if spec.kind == "file"
    }
    media: dict[str, Any] = {
        "schema": {
            "type": "object",
            "required": [f.name for f in fields if f.required],
            "properties": properties,
        }
    }
    if encoding:
        media["encoding"] = encoding
    return {"required": True, "content": {"multipart/form-data": media}}
