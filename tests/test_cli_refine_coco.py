"""`finecut refine-coco`: a tiny synthetic COCO file in, refined RLE out, ids kept, resumable."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from finecut.cli import main
from finecut.refine.api import Refiner

api = pytest.importorskip("pycocotools.mask")

H, W = 64, 80


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = (rng.random((H, W, 3)) * 50).astype(np.uint8)
    cv2.circle(image, (22, 30), 14, (230, 160, 190), -1)
    cv2.circle(image, (56, 34), 13, (200, 220, 90), -1)
    return image


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _rle(mask: np.ndarray) -> dict:
    rle = api.encode(np.asfortranarray(mask))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [H, W], "counts": counts}


def _coco() -> dict:
    return {
        "info": {"description": "tiny synthetic set"},
        "licenses": [{"id": 1, "name": "CC0"}],
        "categories": [{"id": 1, "name": "disc"}, {"id": 3, "name": "blob"}],
        "images": [
            {"id": 1, "file_name": "one.png", "height": H, "width": W},
            {"id": 2, "file_name": "sub/two.png", "height": H, "width": W},
            {"id": 5, "file_name": "nothing.png", "height": H, "width": W},  # no annotations
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[6.0, 14.0, 38.0, 14.0, 38.0, 46.0, 6.0, 46.0]],
                "area": 1024.0,
                "bbox": [6, 14, 32, 32],
                "iscrowd": 0,
                "score": 0.9,
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "segmentation": _rle(_box(41, 19, 71, 49)),
                "iscrowd": 0,
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 1,
                "segmentation": _uncompressed(_box(6, 14, 38, 46)),
                "iscrowd": 0,
            },
            {
                "id": 13,
                "image_id": 2,
                "category_id": 3,
                "segmentation": _uncompressed(_box(40, 0, 80, 10)),
                "iscrowd": 1,
            },
        ],
    }


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(_image(0)).save(images / "one.png")
    Image.fromarray(_image(1)).save(images / "sub" / "two.png")
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(_coco()))
    return ann, images


def _run(capsys, ann: Path, images: Path, out: Path, weights: Path, *extra) -> tuple[int, str]:
    argv = ["refine-coco", ann, "--images", images, "-o", out, "--weights", weights]
    code = main([str(a) for a in [*argv, "--device", "cpu", "--no-snap", *extra]])
    return code, capsys.readouterr().err


def _decode(segmentation) -> np.ndarray:
    if isinstance(segmentation, list):
        return api.decode(api.merge(api.frPyObjects(segmentation, H, W))).astype(bool)
    if isinstance(segmentation["counts"], list):
        segmentation = api.frPyObjects(segmentation, H, W)
    return api.decode(segmentation).astype(bool)


def test_round_trip_keeps_ids_categories_and_fields(capsys, dataset, tmp_path, tiny_crm_weights):
    ann, images = dataset
    out = tmp_path / "refined.json"
    code, err = _run(capsys, ann, images, out, tiny_crm_weights)
    assert code == 0, err
    given, refined = _coco(), json.loads(out.read_text())
    for key in ("info", "licenses", "categories", "images"):
        assert refined[key] == given[key]
    assert len(refined["annotations"]) == len(given["annotations"])
    for before, after in zip(given["annotations"], refined["annotations"], strict=True):
        for field in ("id", "image_id", "category_id", "iscrowd"):
            assert after[field] == before[field]
        if before["iscrowd"]:
            assert after == before  # crowd regions are kept as given
            continue
        assert set(after["segmentation"]) == {"size", "counts"}
        assert isinstance(after["segmentation"]["counts"], str)  # compressed RLE
        mask = _decode(after["segmentation"])
        # untrained weights without snapping give the input masks back
        np.testing.assert_array_equal(mask, _decode(before["segmentation"]))
        assert after["area"] == mask.sum()
        assert after["bbox"] == [float(v) for v in api.toBbox(after["segmentation"])]
    assert refined["annotations"][0]["score"] == 0.9  # extra fields survive
    assert not (tmp_path / "refined.json.partial").exists()  # the journal is gone when done
    assert ann.read_text() == json.dumps(given)  # the input is untouched


def test_resume_skips_the_images_already_done(
    capsys, dataset, tmp_path, tiny_crm_weights, monkeypatch
):
    ann, images = dataset
    out = tmp_path / "refined.json"
    two = images / "sub" / "two.png"
    two.rename(tmp_path / "two.png")  # image 2 is missing: the first run fails on it
    code, err = _run(capsys, ann, images, out, tiny_crm_weights)
    assert code == 1
    assert "1 of 2 images failed" in err and "two.png" in err and "run the same command" in err
    assert not out.exists()
    journal = (tmp_path / "refined.json.partial").read_text().splitlines()
    assert len(journal) == 2 and json.loads(journal[1])["image_id"] == 1

    (tmp_path / "two.png").rename(two)
    seen: list[int] = []
    original = Refiner.refine_instances

    def counting(self, image, masks, **kwargs):
        seen.append(len(masks))
        return original(self, image, masks, **kwargs)

    monkeypatch.setattr(Refiner, "refine_instances", counting)
    code, err = _run(capsys, ann, images, out, tiny_crm_weights)
    assert code == 0, err
    assert seen == [1]  # only image 2 (one non-crowd annotation) was refined this time
    refined = json.loads(out.read_text())
    assert all(isinstance(a["segmentation"], dict) for a in refined["annotations"])
    assert not (tmp_path / "refined.json.partial").exists()


def test_skip_failed_writes_the_others(capsys, dataset, tmp_path, tiny_crm_weights):
    ann, images = dataset
    (images / "sub" / "two.png").write_bytes(b"not an image")
    out = tmp_path / "refined.json"
    code, err = _run(capsys, ann, images, out, tiny_crm_weights, "--skip-failed")
    assert code == 1 and "two.png" in err
    refined = json.loads(out.read_text())
    assert refined["annotations"][2] == _coco()["annotations"][2]  # kept as given
    assert isinstance(refined["annotations"][0]["segmentation"], dict)


def test_a_journal_of_other_options_is_refused(capsys, dataset, tmp_path, tiny_crm_weights):
    ann, images = dataset
    out = tmp_path / "refined.json"
    (tmp_path / "refined.json.partial").write_text('{"format": "something else"}\n')
    code, err = _run(capsys, ann, images, out, tiny_crm_weights)
    assert code == 2 and "another run" in err and "--overwrite" in err
    code, err = _run(capsys, ann, images, out, tiny_crm_weights, "--overwrite")
    assert code == 0, err


def test_overlapping_annotations_do_not_share_pixels(capsys, dataset, tmp_path, tiny_crm_weights):
    ann, images = dataset
    coco = _coco()
    extra = copy.deepcopy(coco["annotations"][1])
    extra["id"] = 99
    extra["segmentation"] = _rle(_box(30, 19, 71, 49))  # overlaps annotation 10 and 11
    coco["annotations"].append(extra)
    ann.write_text(json.dumps(coco))
    out = tmp_path / "refined.json"
    code, err = _run(capsys, ann, images, out, tiny_crm_weights)
    assert code == 0, err
    refined = json.loads(out.read_text())["annotations"]
    masks = [_decode(refined[i]["segmentation"]) for i in (0, 1, 4)]
    assert np.sum(masks, axis=0).max() == 1


# --------------------------------------------------------------------- refused before any work

FAIL_FAST = {
    "output is the input": (["ANN", "--images", "IMAGES", "-o", "ANN", "--overwrite"], "input"),
    "output exists": (["ANN", "--images", "IMAGES", "-o", "EXISTING"], "--overwrite"),
    "output is a folder": (["ANN", "--images", "IMAGES", "-o", "IMAGES"], "it is a folder"),
    "images not a folder": (["ANN", "--images", "EXISTING", "-o", "OUT"], "is not a folder"),
    "corrupt annotations": (["EXISTING", "--images", "IMAGES", "-o", "OUT"], "not valid JSON"),
    "missing annotations": (["MISSING", "--images", "IMAGES", "-o", "OUT"], "no such file"),
}


def test_bad_command_lines_fail_before_torch_loads(dataset, tmp_path) -> None:
    ann, images = dataset
    existing = tmp_path / "existing.json"
    existing.write_text("{oops")
    subst = {
        "ANN": ann,
        "IMAGES": images,
        "EXISTING": existing,
        "MISSING": tmp_path / "missing.json",
        "OUT": tmp_path / "out.json",
    }
    commands = [
        ["refine-coco", *(str(subst.get(a, a)) for a in argv)] for argv, _ in FAIL_FAST.values()
    ]
    # and pycocotools missing: the last command hides it
    missing_dep = ["refine-coco", str(ann), "--images", str(images), "-o", str(tmp_path / "o.json")]
    code = (
        "import sys\n"
        "from finecut.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    print(main(argv))\n"
        "sys.modules['pycocotools'] = None\n"
        f"print(main({missing_dep!r}))\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *codes, torch_loaded = proc.stdout.split("\n")[:-1]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("finecut: error:")]
    assert "Traceback" not in proc.stderr
    needles = [needle for _, needle in FAIL_FAST.values()] + ["pip install 'finecut[coco]'"]
    assert len(errors) == len(needles), proc.stderr
    for rc, error, needle in zip(codes, errors, needles, strict=True):
        assert rc == "2" and needle in error, (needle, error)
    assert torch_loaded == "False"
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "o.json").exists()
    assert existing.read_text() == "{oops"
