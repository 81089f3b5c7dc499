"""COCO masks and the resume journal (finecut.data.coco)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from finecut.data.coco import (
    Journal,
    decode_segmentation,
    encode_mask,
    load_coco,
    mask_api,
    write_json,
)
from finecut.errors import DependencyError, ImageError

api = pytest.importorskip("pycocotools.mask")


def _mask() -> np.ndarray:
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    return mask


def test_encode_then_decode_is_exact() -> None:
    encoded = encode_mask(_mask(), api)
    assert isinstance(encoded["segmentation"]["counts"], str)  # JSON-ready
    assert encoded["segmentation"]["size"] == [6, 8]
    assert encoded["area"] == 15.0 and encoded["bbox"] == [2.0, 1.0, 5.0, 3.0]
    json.dumps(encoded)
    np.testing.assert_array_equal(decode_segmentation(encoded["segmentation"], 6, 8, api), _mask())


def test_polygon_and_uncompressed_rle() -> None:
    polygon = [[2, 1, 7, 1, 7, 4, 2, 4]]
    assert decode_segmentation(polygon, 6, 8, api).sum() > 0
    flat = _mask().flatten(order="F")  # COCO runs go down the columns
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    uncompressed = {"size": [6, 8], "counts": counts}
    np.testing.assert_array_equal(decode_segmentation(uncompressed, 6, 8, api), _mask())
    assert not decode_segmentation([], 6, 8, api).any()


@pytest.mark.parametrize(
    ("segmentation", "match"),
    [
        ({"size": [5, 8], "counts": "abc"}, "its RLE is 8x5 but the image is 8x6"),
        ("nonsense", "must be polygons or an RLE"),
        ([["a", "b", "c", "d", "e", "f"]], "cannot be decoded"),
    ],
)
def test_bad_segmentations_are_one_clear_error(segmentation, match) -> None:
    with pytest.raises(ImageError, match=match):
        decode_segmentation(segmentation, 6, 8, api, "annotation 7")


def test_missing_pycocotools_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(DependencyError, match=r"pip install 'finecut\[coco\]'"):
        mask_api()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"images": []}', "no 'annotations' list"),
        ('{"images": [{"id": 1}], "annotations": []}', r"images\[0\] needs 'id' and 'file_name'"),
        (
            '{"images": [], "annotations": [{"image_id": 1}]}',
            r"annotations\[0\] needs 'image_id' and 'segmentation'",
        ),
    ],
)
def test_load_coco_refuses_bad_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(ImageError, match=match):
        load_coco(path)
    with pytest.raises(ImageError, match="no such file"):
        load_coco(tmp_path / "missing.json")


def test_journal_resumes_and_ignores_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "out.json.partial"
    journal = Journal(path, {"annotations_sha256": "x"})
    journal.add(1, [[0, {"area": 1.0}]])
    journal.add("img-2", [])
    with open(path, "a") as fh:
        fh.write('{"image_id": 3, "resu')  # the process died mid-write
    again = Journal(path, {"annotations_sha256": "x"})
    assert again.is_done(1) and again.is_done("img-2") and not again.is_done(3)
    assert again.done["1"] == [[0, {"area": 1.0}]]
    again.add(3, [])  # appended after the torn line was cut off
    assert Journal(path, {"annotations_sha256": "x"}).is_done(3)


def test_journal_of_another_run_is_refused_unless_restarted(tmp_path: Path) -> None:
    path = tmp_path / "out.json.partial"
    Journal(path, {"annotations_sha256": "x"}).add(1, [])
    with pytest.raises(ImageError, match="another run.*--overwrite"):
        Journal(path, {"annotations_sha256": "y"})
    fresh = Journal(path, {"annotations_sha256": "y"}, restart=True)
    assert not fresh.done


def test_write_json_is_atomic_and_protects_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_text("{}")
    with pytest.raises(ImageError, match="it is the input"):
        write_json(src, {"a": 1}, protect=[src])
    assert src.read_text() == "{}"
    out = write_json(tmp_path / "sub" / "out.json", {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]  # no temporary file left
