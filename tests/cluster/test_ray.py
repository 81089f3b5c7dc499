"""`finecut refine-dataset` on a local Ray (2 workers) against `finecut refine` on the same files.

ECSSD 801-806 (never trained on) with low-resolution coarse masks when ../shared/data is
present, synthetic scenes otherwise; the embedded weights, one torch thread per worker.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from finecut.cli import main
from tests.conftest import SHARED_DATA

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

STEMS = ("0801", "0802", "0803", "0804", "0805", "0806")


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module: refine-dataset joins it instead of starting its own."""
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def _coarse(mask: np.ndarray) -> np.ndarray:
    """A low-resolution segmenter's mask: 1/8 size, upsampled, thresholded."""
    h, w = mask.shape
    small = cv2.resize(mask, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
    return np.where(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 127, 255, 0)


def _synthetic(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (rng.random((200, 240, 3)) * 60).astype(np.uint8)
    mask = np.zeros((200, 240), np.uint8)
    cv2.ellipse(mask, (120 + seed, 100), (70, 50 - seed), 15 * seed, 0, 360, 255, -1)
    image[mask > 0] = (220, 200, 170)
    return image, mask


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/{4 files, sub/2 files}, masks/ the same tree with coarse masks."""
    root = tmp_path_factory.mktemp("dataset")
    ecssd = SHARED_DATA / "ecssd"
    for k, stem in enumerate(STEMS):
        rel = Path("sub") if k >= 4 else Path()
        (root / "images" / rel).mkdir(parents=True, exist_ok=True)
        (root / "masks" / rel).mkdir(parents=True, exist_ok=True)
        if (ecssd / "images" / f"{stem}.jpg").is_file():
            shutil.copy(ecssd / "images" / f"{stem}.jpg", root / "images" / rel)
            truth = np.asarray(Image.open(ecssd / "masks" / f"{stem}.png").convert("L"))
        else:
            image, truth = _synthetic(k)
            Image.fromarray(image).save(root / "images" / rel / f"{stem}.png")
        Image.fromarray(_coarse(truth).astype(np.uint8)).save(root / "masks" / rel / f"{stem}.png")
    return root


def _cli_refine(images: Path, masks: Path, out: Path) -> None:
    code = main(["refine", str(images), "--mask", str(masks), "-o", str(out), "--threads", "1"])
    assert code == 0


def test_same_masks_as_the_cli_and_a_rerun_skips_all(
    local_ray, dataset: Path, tmp_path: Path, capsys, caplog
) -> None:
    cli_out = tmp_path / "cli"
    _cli_refine(dataset / "images", dataset / "masks", cli_out)
    _cli_refine(dataset / "images" / "sub", dataset / "masks" / "sub", cli_out / "sub")

    ray_out, failures = tmp_path / "ray", tmp_path / "failures.csv"
    argv = ["refine-dataset", str(dataset / "images"), "--mask", str(dataset / "masks")]
    argv += ["-o", str(ray_out), "--workers", "2", "--batch-size", "1", "--device", "cpu"]
    assert main([*argv, "--failures", str(failures)]) == 0, capsys.readouterr().err
    written = sorted(p.relative_to(ray_out) for p in ray_out.rglob("*.png"))
    assert len(written) == len(STEMS)
    assert written == sorted(p.relative_to(cli_out) for p in cli_out.rglob("*.png"))
    for rel in written:
        assert (ray_out / rel).read_bytes() == (cli_out / rel).read_bytes(), rel
    assert list(csv.reader(failures.open())) == [["image", "mask", "output", "error"]]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="finecut"):
        assert main(argv) == 0
    assert "6 of 6 items are done" in caplog.text and "nothing to refine" in caplog.text


def test_a_corrupt_item_is_a_row_of_the_failure_table(
    local_ray, dataset: Path, tmp_path: Path, capsys
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = next((dataset / "images").glob("0801.*"))
    shutil.copy(image, images / image.name)
    shutil.copy(dataset / "masks" / "0801.png", images / "0801_mask.png")
    (images / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    shutil.copy(dataset / "masks" / "0801.png", images / "bad_mask.png")
    out, failures = tmp_path / "out", tmp_path / "f.csv"
    out.mkdir()
    (out / "0801.png").write_bytes(b"done before")  # skipped: only bad.jpg runs
    code = main(["refine-dataset", str(images), "-o", str(out), "--failures", str(failures)])
    err = capsys.readouterr().err
    assert code == 1
    assert "finecut: 1 of 1 items failed:" in err and "Traceback" not in err
    assert f"  {images / 'bad.jpg'}: cannot read image" in err
    rows = list(csv.DictReader(failures.open()))
    assert [r["image"] for r in rows] == [str(images / "bad.jpg")]
    assert "cannot read image" in rows[0]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["0801.png"]
