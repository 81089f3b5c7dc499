"""The API on good input: /api/refine, /api/cutout, /api/grabcut, /api/soft, /healthz, the page
and the OpenAPI description (FastAPI's TestClient, the real embedded models)."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def _png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["queue"]["capacity"] == 2 and body["queue"]["workers"] == 1
    assert body["limits"]["max_pixels"] == 4_000_000


def test_refine_returns_the_mask_at_full_size(client, photo, photo_jpeg, mask_png):
    image, coarse = photo
    r = client.post(
        "/api/refine",
        files={
            "image": ("cup.jpg", photo_jpeg, "image/jpeg"),
            "mask": ("cup.png", mask_png, "image/png"),
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-finecut-size"] == "300x200"
    assert 'filename="cup_mask.png"' in r.headers["content-disposition"]
    mask = np.asarray(_png(r.content))
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    # refined, not copied: close to the coarse mask but not equal to it
    assert 0.8 < _iou(mask > 127, coarse > 127) < 1.0


def test_refine_soft_and_zip_agree(client, photo_png, mask_png):
    files = {"image": ("cup.png", photo_png), "mask": ("m.png", mask_png)}
    alpha = np.asarray(_png(client.post("/api/refine", files=files, data={"soft": "true"}).content))
    assert len(np.unique(alpha)) > 2  # soft values along the edge
    r = client.post("/api/refine", files=files, data={"format": "zip"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        got = {n: _png(zf.read(n)) for n in names}
    assert names == ["mask.png", "alpha.png", "cutout.png", "cutout_soft.png"]
    np.testing.assert_array_equal(np.asarray(got["alpha.png"]), alpha)
    mask = np.asarray(got["mask.png"])
    np.testing.assert_array_equal(mask, np.where(alpha > 127, 255, 0))
    assert got["cutout.png"].mode == "RGBA" and got["cutout_soft.png"].mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(got["cutout.png"])[:, :, 3], mask)
    np.testing.assert_array_equal(np.asarray(got["cutout_soft.png"])[:, :, 3], alpha)


def test_cutout_is_the_photo_with_an_alpha(client, photo, photo_png, mask_png):
    r = client.post(
        "/api/cutout",
        files={"image": ("cup.png", photo_png), "mask": ("m.png", mask_png)},
        data={"soft": "1"},
    )
    assert r.status_code == 200, r.text
    cut = _png(r.content)
    assert cut.mode == "RGBA" and cut.size == (300, 200)
    rgba = np.asarray(cut)
    np.testing.assert_array_equal(rgba[:, :, :3], photo[0])
    assert len(np.unique(rgba[:, :, 3])) > 2


def test_empty_mask_is_returned_with_a_warning(client, photo_png):
    empty = np.zeros((200, 300), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(empty).save(buf, "PNG")
    r = client.post(
        "/api/refine", files={"image": ("a.png", photo_png), "mask": ("e.png", buf.getvalue())}
    )
    assert r.status_code == 200
    assert "empty" in r.headers["x-finecut-warning"]
    assert not np.asarray(_png(r.content)).any()


def test_resize_mask(client, photo, photo_png):
    small = Image.fromarray(photo[1]).resize((150, 100), Image.NEAREST)
    buf = io.BytesIO()
    small.save(buf, "PNG")
    files = {"image": ("a.png", photo_png), "mask": ("m.png", buf.getvalue())}
    assert client.post("/api/refine", files=files).status_code == 400
    r = client.post("/api/refine", files=files, data={"resize_mask": "true"})
    assert r.status_code == 200 and _png(r.content).size == (300, 200)


def test_grabcut_from_a_box_and_from_strokes(client, photo, photo_png):
    coarse = photo[1] > 127
    ys, xs = np.nonzero(coarse)
    box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    r = client.post("/api/grabcut", files={"image": ("a.png", photo_png)}, data={"box": box})
    assert r.status_code == 200, r.text
    from_box = np.asarray(_png(r.content)) > 127
    assert from_box.shape == (200, 300) and _iou(from_box, coarse) > 0.7
    # strokes drawn at another size (a page's canvas), as an RGBA PNG: opaque = marked
    strokes = np.zeros((100, 150, 4), np.uint8)
    strokes[35:65, 50:100] = 255
    buf = io.BytesIO()
    Image.fromarray(strokes).save(buf, "PNG")
    r = client.post(
        "/api/grabcut", files={"image": ("a.png", photo_png), "fg": ("fg.png", buf.getvalue())}
    )
    assert r.status_code == 200, r.text
    from_strokes = np.asarray(_png(r.content)) > 127
    # the strokes stay in, GrabCut grows them to the cup and saucer
    assert from_strokes[70:130, 100:200].all()
    assert _iou(from_strokes, coarse) > 0.6 and not from_strokes[:30, :60].any()
    r = client.post(
        "/api/grabcut",
        files={"image": ("a.png", photo_png)},
        data={"box": "10,10,50,40", "method": "direct"},
    )
    direct = np.asarray(_png(r.content)) > 127
    assert direct.sum() == 40 * 30 and direct[10:40, 10:50].all()


def test_soft_layers_zip(client, photo_png):
    r = client.post(
        "/api/soft", files={"image": ("a.png", photo_png)}, data={"layers": "3", "max_side": "160"}
    )
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        layers = [np.asarray(_png(zf.read(n))) for n in names if n.startswith("layer_")]
        composite = _png(zf.read("composite.png"))
    assert "composite.png" in names and 1 <= len(layers) <= 3
    assert composite.size == (300, 200)
    assert all(layer.shape == (200, 300, 4) for layer in layers)
    total = sum(layer[:, :, 3].astype(int) for layer in layers)
    assert np.abs(total - 255).max() <= len(layers)  # alphas sum to one, up to rounding


def test_progress_of_an_unknown_job_is_404_json(client):
    r = client.get("/api/progress/nope")
    assert r.status_code == 404 and "error" in r.json()


def test_page_and_static_files_are_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    texts = [page.text] + [
        client.get(f"/static/{n}").text for n in ("app.js", "style.css", "favicon.svg")
    ]
    for text in texts:
        # nothing is fetched from elsewhere: the only absolute URL is the SVG namespace
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert 'src="/static/app.js"' in page.text
    assert client.get("/static/../pyproject.toml").status_code == 404


def test_openapi_describes_the_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "finecut serve"
    for path in ("/api/refine", "/api/cutout", "/api/grabcut", "/api/soft"):
        op = spec["paths"][path]["post"]
        body = op["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert "image" in body["required"] and body["properties"]["image"]["format"] == "binary"
        assert op["summary"] and op["description"]
        assert {"200", "400", "413", "415", "503"} <= set(op["responses"])
        assert "image/png" in op["responses"]["200"]["content"] or path == "/api/soft"
    refine = spec["paths"]["/api/refine"]["post"]["requestBody"]["content"]
    props = refine["multipart/form-data"]["schema"]["properties"]
    assert props["soft"]["type"] == "boolean" and props["format"]["enum"] == ["png", "zip"]
    assert "/healthz" in spec["paths"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load a CDN's scripts
