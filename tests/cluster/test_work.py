"""One item's work and RefineBatch, without Ray: what a worker does with each row."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
from PIL import Image

from finecut.cluster.work import RESULT_COLUMNS, RefineBatch, load_pair
from finecut.data.io import encode_mask, write_mask
from finecut.errors import ImageError

H, W = 72, 96


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (rng.random((H, W, 3)) * 50).astype(np.uint8)
    cv2.circle(image, (W // 2, H // 2), H // 3, (230, 210, 190), -1)
    mask = np.zeros((H, W), np.uint8)
    cv2.rectangle(mask, (W // 2 - 20, H // 2 - 22), (W // 2 + 22, H // 2 + 19), 255, -1)
    return image, mask


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def batch(tiny_crm_weights: Path) -> RefineBatch:
    return RefineBatch(weights=str(tiny_crm_weights), device="cpu", threads=1, snap=False)


def _rows(*triples: tuple[str, str, str]) -> dict[str, np.ndarray]:
    return {
        name: np.array([t[k] for t in triples], dtype=object)
        for k, name in enumerate(("image", "mask", "output"))
    }


def test_batch_writes_masks_and_records_failures(batch: RefineBatch, tmp_path: Path) -> None:
    image, mask = _scene()
    Image.fromarray(image).save(tmp_path / "good.png")
    Image.fromarray(mask).save(tmp_path / "good_mask.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(mask[:40, :50]).save(tmp_path / "small_mask.png")
    out = tmp_path / "out"
    rows = batch(
        _rows(
            (str(tmp_path / "good.png"), str(tmp_path / "good_mask.png"), str(out / "good.png")),
            (str(tmp_path / "corrupt.jpg"), str(tmp_path / "good_mask.png"), str(out / "c.png")),
            (str(tmp_path / "good.png"), str(tmp_path / "small_mask.png"), str(out / "s.png")),
            (str(tmp_path / "gone.png"), str(tmp_path / "good_mask.png"), str(out / "g.png")),
        )
    )
    assert set(rows) == set(RESULT_COLUMNS) and all(len(v) == 4 for v in rows.values())
    assert rows["ok"].tolist() == [True, False, False, False]
    assert rows["error"][0] == "" and rows["seconds"][0] > 0
    assert "cannot read image" in rows["error"][1] and "corrupt.jpg" in rows["error"][1]
    assert "is 50x40 but image" in rows["error"][2] and "--resize-mask" in rows["error"][2]
    assert "no such file" in rows["error"][3]
    assert all("\n" not in e for e in rows["error"])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "good.png")), mask)  # tiny weights
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]  # nothing for the failures


def test_batch_on_memory_fs(batch: RefineBatch) -> None:
    """Read and write through fsspec: the output is write_mask's PNG, byte for byte."""
    image, mask = _scene(1)
    root = f"memory://work-{uuid.uuid4().hex}"
    fs, base = fsspec.core.url_to_fs(root)
    fs.pipe_file(f"{base}/a.png", _png(image))
    fs.pipe_file(f"{base}/a_mask.png", _png(mask))
    rows = batch(_rows((f"{root}/a.png", f"{root}/a_mask.png", f"{root}/out/x/a.png")))
    assert rows["ok"].tolist() == [True], rows["error"]
    assert fs.cat_file(f"{base}/out/x/a.png") == encode_mask(mask)


def test_empty_mask_is_a_warning_not_a_failure(batch: RefineBatch, tmp_path: Path) -> None:
    image, mask = _scene()
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(np.zeros_like(mask)).save(tmp_path / "m.png")
    rows = batch(_rows((str(tmp_path / "a.png"), str(tmp_path / "m.png"), str(tmp_path / "o.png"))))
    assert rows["ok"].tolist() == [True] and "empty" in rows["warning"][0]


def test_load_pair_resizes_when_asked(tmp_path: Path) -> None:
    image, mask = _scene()
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(cv2.resize(mask, (W // 2, H // 2))).save(tmp_path / "m.png")
    with pytest.raises(ImageError, match="--resize-mask"):
        load_pair(str(tmp_path / "a.png"), str(tmp_path / "m.png"))
    rgb, coarse = load_pair(str(tmp_path / "a.png"), str(tmp_path / "m.png"), resize_mask=True)
    assert rgb.shape == (H, W, 3) and coarse.shape == (H, W) and coarse.dtype == bool


def test_encode_mask_is_what_write_mask_writes(tmp_path: Path) -> None:
    _, mask = _scene()
    for name in ("m.png", "m.tif", "m.webp"):
        write_mask(tmp_path / name, mask)
        assert encode_mask(mask, name) == (tmp_path / name).read_bytes()
    with pytest.raises(ImageError, match="JPEG is lossy"):
        encode_mask(mask, "m.jpg")


def test_a_worker_without_its_weights_fails_each_row(tmp_path: Path) -> None:
    batch = RefineBatch(weights=str(tmp_path / "missing.safetensors"), device="cpu")
    rows = batch(_rows(("a.png", "a_mask.png", str(tmp_path / "o.png")), ("b", "c", "d")))
    assert rows["ok"].tolist() == [False, False]
    assert all(
        e.startswith("the worker could not load the refiner: weights file") for e in rows["error"]
    )
