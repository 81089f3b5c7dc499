"""evaluate_segment: known-answer mIoU with a stub model; predict: label map and overlay."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from finecut.errors import ImageError
from finecut.segment import colorize, evaluate_segment, format_segment_table, overlay, segment_image
from tests.segment._synthetic import CLASS_STEP, VOID, write_camvid


class ColourStub(nn.Module):
    """Reads the class from the red channel (``class * CLASS_STEP``); predicts ``remap[class]``."""

    def __init__(self, remap: dict[int, int] | None = None, num_classes: int = 11) -> None:
        super().__init__()
        table = torch.arange(num_classes)
        for src, dst in (remap or {}).items():
            table[src] = dst
        self.register_buffer("table", table)
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        cls = (image[:, 0] * 255 / CLASS_STEP).round().long().clamp(0, self.num_classes - 1)
        pred = self.table[cls]
        return nn.functional.one_hot(pred, self.num_classes).permute(0, 3, 1, 2).float()


def _write_one(root: Path, labels: np.ndarray, split: str = "test") -> None:
    (root / split / "images").mkdir(parents=True)
    (root / split / "labels").mkdir(parents=True)
    image = np.zeros((*labels.shape, 3), np.uint8)
    image[..., 0] = np.minimum(labels, 10) * CLASS_STEP
    Image.fromarray(image).save(root / split / "images" / "a.png")
    Image.fromarray(labels.astype(np.uint8)).save(root / split / "labels" / "a.png")
    (root / f"{split}.txt").write_text("a\n")


def test_known_answer_by_hand(tmp_path: Path) -> None:
    labels = np.array(
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, VOID, VOID], [2, 2, VOID, VOID]], dtype=np.uint8
    )
    _write_one(tmp_path, labels)
    # class 1 predicted as 0: IoU(0) = 4 / 8, IoU(1) = 0, IoU(2) = 1; void ignored
    result = evaluate_segment(
        tmp_path, "test", model=ColourStub({1: 0}), device="cpu", scales=(1.0,), flip=False
    )
    assert result.images == 1
    assert result.per_class[:3] == (0.5, 0.0, 1.0)
    assert all(math.isnan(v) for v in result.per_class[3:])
    assert result.miou == pytest.approx(0.5)
    assert result.confusion.sum() == 12
    table = format_segment_table(result)
    assert "Sky" in table and "n/a" in table and "50.0" in table


def test_matches_an_independent_count(tmp_path: Path) -> None:
    root = write_camvid(tmp_path / "camvid", {"test": 3}, size=(24, 40), seed=5)
    stub = ColourStub({3: 4, 7: 2})
    result = evaluate_segment(root, "test", model=stub, device="cpu", scales=(1.0,), flip=False)
    gts = [np.asarray(Image.open(p)) for p in sorted((root / "test" / "labels").iterdir())]
    table = np.arange(11)
    table[3], table[7] = 4, 2
    ious = []
    for k in range(11):
        inter = sum(int(((g == k) & (table[np.minimum(g, 10)] == k)).sum()) for g in gts)
        union = sum(
            int((((g == k) | (table[np.minimum(g, 10)] == k)) & (g != VOID)).sum()) for g in gts
        )
        ious.append(inter / union if union else math.nan)
    np.testing.assert_allclose(result.per_class, ious)
    assert result.miou == pytest.approx(np.nanmean(ious))
    assert result.images == 3


def test_missing_split_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="images/"):
        evaluate_segment(tmp_path, "test", model=ColourStub(), device="cpu")


def test_bad_label_ids_are_reported(tmp_path: Path) -> None:
    _write_one(tmp_path, np.full((4, 4), 40, np.uint8))
    with pytest.raises(ImageError, match="neither a class"):
        evaluate_segment(tmp_path, "test", model=ColourStub(), device="cpu")


def test_segment_image_and_overlay() -> None:
    labels = np.array([[0, 1, 2], [8, 9, 10]], dtype=np.uint8)
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = labels * CLASS_STEP
    out = segment_image(ColourStub({1: 0}), image, scales=(1.0,), flip=False)  # one plain pass
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, np.where(labels == 1, 0, labels))
    colours = colorize(out)
    assert colours.shape == (2, 3, 3) and tuple(colours[0, 0]) == (128, 128, 128)  # Sky
    blend = overlay(image, out, alpha=1.0)
    np.testing.assert_array_equal(blend, colours)
    np.testing.assert_array_equal(overlay(image, out, alpha=0.0), image)
    with pytest.raises(ImageError, match="uint8"):
        segment_image(ColourStub(), image.astype(np.float32))


def test_segment_image_downscales_large_inputs() -> None:
    stub = ColourStub()
    image = np.zeros((40, 80, 3), np.uint8)
    assert segment_image(stub, image, max_side=20).shape == (40, 80)


def test_test_time_augmentation_passes_and_cli(tmp_path: Path, capsys) -> None:
    """Scales and flip run one model pass each (a pixel-wise stub's answer is unchanged); the
    CLI takes --scales / --flip and refuses a bad scale list in one line."""
    from finecut.cli import main

    root = write_camvid(tmp_path / "camvid", {"test": 2}, size=(24, 40), seed=5)
    plain = evaluate_segment(
        root, "test", model=ColourStub({3: 4}), device="cpu", scales=(1.0,), flip=False
    )
    stub = ColourStub({3: 4})
    tta = evaluate_segment(root, "test", model=stub, device="cpu", scales=(1.0, 2.0), flip=True)
    assert stub.calls == 2 * 2 * 2  # 2 images, 2 scales, 2 mirrors
    assert tta.miou == pytest.approx(plain.miou)
    image = np.zeros((12, 16, 3), np.uint8)
    image[:, 8:, 0] = 2 * CLASS_STEP
    stub = ColourStub()
    out = segment_image(stub, image, scales=(1.0, 1.5), flip=True)
    assert stub.calls == 4 and (out[:, :8] == 0).all() and (out[:, 9:] == 2).all()
    with pytest.raises(SystemExit) as exc:
        main(["eval", "segment", "--data", str(root), "--scales", "1,x"])
    assert exc.value.code == 2
    assert "--scales: expected positive numbers" in capsys.readouterr().err
