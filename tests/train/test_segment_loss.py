"""Segment losses: median-frequency weights, weighted cross-entropy, OHEM's selection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from finecut.errors import ImageError
from finecut.train.segment_data import SegmentItem, class_pixel_counts
from finecut.train.segment_loss import (
    median_frequency_weights,
    ohem_keep,
    segment_loss,
)
from tests.segment._synthetic import VOID


def _items(tmp_path: Path, maps: list[list[list[int]]]) -> list[SegmentItem]:
    items = []
    for k, labels in enumerate(maps):
        path = tmp_path / f"{k}.png"
        Image.fromarray(np.array(labels, dtype=np.uint8)).save(path)
        items.append(SegmentItem(tmp_path / f"{k}.jpg", path))  # only the labels are read
    return items


def test_median_frequency_weights_known_answer(tmp_path: Path) -> None:
    # A: three 0s and a 1 (4 labelled px); B: a 0, a 2 and two void px (2 labelled px)
    items = _items(tmp_path, [[[0, 0], [0, 1]], [[0, 2], [VOID, VOID]]])
    class_pixels, present_pixels = class_pixel_counts(items, num_classes=4, void=VOID)
    assert class_pixels.tolist() == [4, 1, 1, 0]
    assert present_pixels.tolist() == [6, 4, 2, 0]  # void pixels are not counted
    # freq = 4/6, 1/4, 1/2 (class 3 absent); median 1/2
    weights = median_frequency_weights(class_pixels, present_pixels)
    np.testing.assert_allclose(weights, [0.75, 2.0, 1.0, 0.0])


def test_median_frequency_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no class has any pixel"):
        median_frequency_weights([0, 0], [0, 0])
    with pytest.raises(ValueError, match=r"must\s+both be \(K,\)"):
        median_frequency_weights([1, 2], [3])
    with pytest.raises(ImageError, match="neither a class"):
        class_pixel_counts(_items(tmp_path, [[[0, 7]]]), num_classes=4, void=VOID)


def test_weighted_loss_is_torch_weighted_mean() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, :2] = VOID
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    expected = F.cross_entropy(logits, labels, weight=weight, ignore_index=VOID)
    torch.testing.assert_close(segment_loss(logits, labels, VOID, weight), expected)
    torch.testing.assert_close(
        segment_loss(logits, labels, VOID), F.cross_entropy(logits, labels, ignore_index=VOID)
    )
    all_void = torch.full_like(labels, VOID)
    assert float(segment_loss(logits, all_void, VOID, weight)) == 0.0


def _two_class_logits(true_probs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, 1, N) logits whose class-0 probability is each of ``true_probs``; labels 0."""
    p = torch.tensor(true_probs, dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(p), torch.log((1 - p) / p)]).float()
    return logits.view(1, 2, 1, -1), torch.zeros(1, 1, len(true_probs), dtype=torch.int64)


def test_ohem_keeps_pixels_below_threshold_and_at_least_min_kept() -> None:
    probs = [0.9, 0.1, 0.95, 0.5, 0.8, 0.3, 0.6]
    logits, labels = _two_class_logits(probs)
    labels[0, 0, 6] = VOID  # the 0.6 pixel is void: never kept

    def kept(thresh: float, min_kept: int) -> list[int]:
        keep = ohem_keep(logits, labels, VOID, thresh=thresh, min_kept=min_kept)
        return torch.nonzero(keep[0, 0]).flatten().tolist()

    assert kept(0.7, 2) == [1, 3, 5]  # 0.1, 0.5, 0.3 are below 0.7
    assert kept(0.7, 4) == [1, 3, 4, 5]  # the 4th hardest (0.8) raises the threshold
    assert kept(0.7, 5) == [0, 1, 3, 4, 5]
    assert kept(0.7, 6) == [0, 1, 2, 3, 4, 5]  # min_kept >= valid pixels: all valid
    assert kept(0.2, 0) == [1]


def test_ohem_loss_is_mean_over_kept_pixels() -> None:
    probs = [0.9, 0.1, 0.95, 0.5, 0.8, 0.3]
    logits, labels = _two_class_logits(probs)
    expected = -sum(math.log(p) for p in (0.1, 0.5, 0.3)) / 3
    keep = ohem_keep(logits, labels, VOID, thresh=0.7, min_kept=2)
    loss = segment_loss(logits, labels, VOID, keep=keep)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    logits.requires_grad_(True)
    segment_loss(logits, labels, VOID, keep=keep).backward()
    assert logits.grad is not None and float(logits.grad[0, :, 0, 0].abs().sum()) == 0.0
