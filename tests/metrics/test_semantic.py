from __future__ import annotations

import math

import numpy as np
import pytest

from finecut.metrics import confusion_matrix, miou


def _loop_confusion(pred: np.ndarray, gt: np.ndarray, k: int, ignore: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if g != ignore:
            cm[g, p] += 1
    return cm


def test_confusion_matrix_hand_made_with_ignore_pixels() -> None:
    gt = np.array([[0, 0, 1], [1, 255, 2], [2, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2], [0, 2, 200]], dtype=np.uint8)
    cm = confusion_matrix(pred, gt, num_classes=3)
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    assert cm.sum() == 7  # 9 pixels minus 2 ignored (one of them has the out-of-range pred 200)


def test_confusion_matrix_matches_loop_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(37, 23))
    gt[rng.random(gt.shape) < 0.1] = 11
    pred = rng.integers(0, 6, size=(37, 23)).astype(np.int32)
    cm = confusion_matrix(pred, gt, num_classes=6, ignore_index=11)
    np.testing.assert_array_equal(cm, _loop_confusion(pred, gt, 6, 11))
    # Matrices add up over images.
    both = confusion_matrix(np.stack([pred, pred]), np.stack([gt, gt]), 6, ignore_index=11)
    np.testing.assert_array_equal(both, 2 * cm)


def test_confusion_matrix_without_ignore_index() -> None:
    gt = np.array([0, 1, 1], dtype=np.int64)
    pred = np.array([True, True, False])
    np.testing.assert_array_equal(
        confusion_matrix(pred, gt, 2, ignore_index=None), [[0, 1], [1, 1]]
    )


def test_confusion_matrix_range_errors() -> None:
    gt = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"pred has class ids outside \[0, 3\) \(min 0, max 3\)"):
        confusion_matrix(np.array([0, 1, 3]), gt, 3)
    with pytest.raises(ValueError, match=r"pred has class ids outside \[0, 3\) \(min -1"):
        confusion_matrix(np.array([-1, 1, 2]), gt, 3)
    with pytest.raises(ValueError, match=r"gt has class ids outside \[0, 2\)"):
        confusion_matrix(np.array([0, 1, 1]), gt, 2)
    with pytest.raises(ValueError, match="ignore_index 1 is a valid class id"):
        confusion_matrix(gt, gt, 3, ignore_index=1)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        confusion_matrix(gt, gt, 0)


def test_confusion_matrix_type_and_shape_errors() -> None:
    with pytest.raises(TypeError, match="pred must hold integer class ids, got dtype float32"):
        confusion_matrix(np.zeros(3, np.float32), np.zeros(3, np.int64), 2)
    with pytest.raises(ValueError, match=r"got pred \(2, 3\) and gt \(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2)


def test_miou_with_an_absent_class() -> None:
    # Class 0: TP 3, FN 1, FP 1 -> 3/5.  Class 1: TP 2, FN 1, FP 1 -> 2/4.
    # Class 2: absent from gt and pred -> NaN, left out of the mean.
    cm = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    mean, per_class = miou(cm)
    np.testing.assert_allclose(per_class[:2], [0.6, 0.5])
    assert math.isnan(per_class[2])
    assert mean == pytest.approx(0.55)


def test_miou_class_only_predicted_counts_as_zero() -> None:
    # Class 1 never in gt but predicted once: IoU 0, and it stays in the mean.
    mean, per_class = miou(np.array([[4, 1], [0, 0]]))
    np.testing.assert_allclose(per_class, [0.8, 0.0])
    assert mean == pytest.approx(0.4)


def test_miou_all_absent_and_errors() -> None:
    mean, per_class = miou(np.zeros((2, 2), dtype=np.int64))
    assert math.isnan(mean) and np.isnan(per_class).all()
    with pytest.raises(ValueError, match=r"square \(K, K\) matrix, got shape \(2, 3\)"):
        miou(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        miou(np.array([[1, -1], [0, 1]]))
