"""Hostile and broken requests: each is a 4xx with one line {"error": ...}, the server unharmed."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def _refused(r, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"]
    message = body["error"]
    assert "\n" not in message and "Traceback" not in message and len(message) < 400
    for word in words:
        assert word in message, message
    return message


def _png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT: a bomb by its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _zlib_bomb_png(side: int) -> bytes:
    """A real side x side grey PNG of zeros: a few kB that decode to side**2 bytes."""
    return _png_bytes(np.zeros((side, side), np.uint8))


@pytest.fixture()
def files(photo_png, mask_png):
    return {"image": ("a.png", photo_png, "image/png"), "mask": ("m.png", mask_png, "image/png")}


def test_upload_over_the_limit_by_content_length(client, mask_png):
    big = b"\0" * 2_100_000
    r = client.post("/api/refine", files={"image": ("a.png", big), "mask": ("m.png", mask_png)})
    _refused(r, 413, "more than the limit of 2.0 MB")


def test_upload_over_the_limit_while_streaming(client, photo_png, mask_png):
    """No Content-Length (chunked): counted as it arrives (TestClient hands the app the whole
    body; test_load checks on a real server that the rest is not read)."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()

    def body():
        yield head
        for _ in range(100):  # 100 x 64 kB = 6.4 MB
            yield b"\0" * 65536

    r = client.post(
        "/api/refine",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    _refused(r, 413, "more than the limit")


def test_not_an_image(client, mask_png):
    r = client.post(
        "/api/refine",
        files={"image": ("notes.png", b"hello, world\n" * 20), "mask": ("m.png", mask_png)},
    )
    _refused(r, 400, "notes.png", "text file, not an image")


def test_random_bytes(client, mask_png):
    junk = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    r = client.post("/api/refine", files={"image": ("x.jpg", junk), "mask": ("m.png", mask_png)})
    _refused(r, 400, "x.jpg")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_image(client, photo_png, photo_jpeg, mask_png, keep):
    for name, data in (("a.png", photo_png), ("a.jpg", photo_jpeg)):
        cut = data[: int(len(data) * keep)]
        r = client.post("/api/refine", files={"image": (name, cut), "mask": ("m.png", mask_png)})
        _refused(r, 400, name)


def test_empty_file(client, mask_png):
    r = client.post("/api/refine", files={"image": ("a.png", b""), "mask": ("m.png", mask_png)})
    _refused(r, 400, "empty")


def test_bomb_by_header_is_refused_before_decoding(client, mask_png):
    r = client.post(
        "/api/refine",
        files={
            "image": ("bomb.png", _png_header_only(100_000, 100_000)),
            "mask": ("m.png", mask_png),
        },
    )
    _refused(r, 413, "too large")


def test_zlib_bomb_over_max_pixels(client, mask_png):
    bomb = _zlib_bomb_png(2100)  # 4.4 MP of zeros in a few kB; the client's limit is 4 MP
    assert len(bomb) < 20_000
    r = client.post("/api/refine", files={"image": ("bomb.png", bomb), "mask": ("m.png", mask_png)})
    _refused(r, 413, "4,410,000 pixels", "4,000,000")


def test_mask_bomb(client, photo_png):
    r = client.post(
        "/api/refine",
        files={"image": ("a.png", photo_png), "mask": ("m.png", _png_header_only(70_000, 70_000))},
    )
    _refused(r, 413, "too large")


def test_mismatched_mask_size(client, photo_png):
    r = client.post(
        "/api/refine",
        files={
            "image": ("a.png", photo_png),
            "mask": ("m.png", _png_bytes(np.zeros((20, 30), np.uint8))),
        },
    )
    _refused(r, 400, "30x20", "300x200", "resize_mask")


def test_wrong_request_content_type(client):
    r = client.post("/api/refine", json={"image": "a.png"})
    _refused(r, 415, "multipart/form-data", "application/json")
    r = client.post("/api/refine", data={"image": "x"})  # urlencoded
    _refused(r, 415, "application/x-www-form-urlencoded")


def test_wrong_part_content_type(client, photo_png, mask_png):
    r = client.post(
        "/api/refine",
        files={"image": ("a.png", photo_png, "text/html"), "mask": ("m.png", mask_png)},
    )
    _refused(r, 415, "'image'", "text/html")


def test_missing_unknown_and_repeated_fields(client, files, photo_png):
    _refused(
        client.post("/api/refine", files={"image": files["image"]}),
        400,
        "missing form field 'mask'",
    )
    _refused(
        client.post("/api/refine", files={**files, "evil": ("x", b"1")}),
        400,
        "unknown form field 'evil'",
    )
    repeated = [("image", ("a.png", photo_png)), ("image", ("b.png", photo_png))]
    _refused(client.post("/api/refine", files=repeated), 400, "'image' is given twice")


def test_bad_option_values(client, files, photo_png):
    _refused(client.post("/api/refine", files=files, data={"soft": "maybe"}), 400, "'soft'")
    _refused(client.post("/api/refine", files=files, data={"format": "tar"}), 400, "'format'")
    _refused(
        client.post("/api/soft", files={"image": files["image"]}, data={"layers": "99"}),
        400,
        "'layers'",
        "1..10",
    )
    _refused(
        client.post("/api/soft", files={"image": files["image"]}, data={"max_side": "9999"}),
        400,
        "'max_side'",
    )
    _refused(
        client.post("/api/soft", files={"image": files["image"]}, data={"layers": "x"}),
        400,
        "integer",
    )
    _refused(client.post("/api/grabcut", files={"image": files["image"]}), 400, "box")
    _refused(
        client.post("/api/grabcut", files={"image": files["image"]}, data={"box": "1,2,3"}),
        400,
        "box",
    )
    _refused(client.post("/api/refine", files=files, data={"soft": "x" * 2000}), 400, "longer")


def test_malformed_multipart(client):
    headers = {"content-type": "multipart/form-data; boundary=zz"}
    _refused(client.post("/api/refine", content=b"not multipart at all", headers=headers), 400)
    body = b'--zz\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc'  # no end
    _refused(client.post("/api/refine", content=body, headers=headers), 400, "incomplete")
    _refused(
        client.post(
            "/api/refine", content=b"--zz--\r\n", headers={"content-type": "multipart/form-data"}
        ),
        400,
        "boundary",
    )
    no_name = b"--zz\r\nContent-Type: image/png\r\n\r\nabc\r\n--zz--\r\n"
    _refused(client.post("/api/refine", content=no_name, headers=headers), 400, "form-data")


def test_unknown_paths_and_methods(client):
    _refused(client.get("/nope"), 404, "/nope")
    _refused(client.get("/api/refine"), 405, "GET", "POST")
    _refused(client.get("/static/nope.js"), 404)


def test_foreign_host_header_is_refused(client):
    r = client.get("/healthz", headers={"host": "evil.example:8000"})
    _refused(r, 400, "Host")


def test_unexpected_failure_is_one_line_500(client, files, monkeypatch):
    from finecut.serve import jobs

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nwith a second line")

    monkeypatch.setattr(jobs, "refine_job", broken)
    message = _refused(client.post("/api/refine", files=files), 500, "internal error")
    assert "boom" not in message


def test_server_unharmed_after_all_that(client, files):
    assert client.get("/healthz").json()["queue"]["running"] == 0
    assert client.post("/api/refine", files=files).status_code == 200
    stats = client.get("/healthz").json()["queue"]
    assert stats["running"] == stats["queued"] == stats["uploading"] == 0
