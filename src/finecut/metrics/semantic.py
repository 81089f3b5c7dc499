"""Semantic-segmentation metrics: confusion matrix and mean IoU (the VOC / CamVid protocol).

Used for the SparseMask (Wu et al., ICCV 2019) and P-pooling (Wei et al., CVPR 2019) experiments:
per-class IoU = TP / (TP + FP + FN) from a confusion matrix summed over the whole dataset.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from finecut.metrics.binary import as_array, check_same_shape

__all__ = ["confusion_matrix", "miou"]


def _as_labels(x: Any, name: str) -> np.ndarray:
    arr = as_array(x, name)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    return arr


def _check_range(values: np.ndarray, num_classes: int, name: str) -> None:
    if values.size == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} has class ids outside [0, {num_classes}) (min {lo}, max {hi}) "
            "on pixels that are not ignored"
        )


def confusion_matrix(
    pred: Any, gt: Any, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """Confusion matrix of a label map against the ground truth (rows gt, columns pred).

    Pixels whose gt equals ``ignore_index`` are skipped, whatever their prediction. On the other
    pixels both gt and pred must lie in ``[0, num_classes)``, else ValueError. Matrices of several
    images add up: sum them, then call :func:`miou`.

    Args:
        pred: predicted class ids (integer or bool dtype).
        gt: ground-truth class ids, same shape.
        num_classes: K, the number of classes.
        ignore_index: gt value to skip (255 in VOC; 11 for CamVid's void), or None.

    Returns:
        ``cm`` with ``cm[g, p]`` = number of pixels of gt class g predicted as p, int64.

    Shape:
        pred, gt: any shape, identical. Output: (K, K).
    """
    num_classes = operator.index(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index {ignore_index} is a valid class id in [0, {num_classes}); "
            "choose a value outside that range"
        )
    pred_a = _as_labels(pred, "pred")
    gt_a = _as_labels(gt, "gt")
    check_same_shape(pred_a, gt_a)
    pred_v = pred_a.ravel()
    gt_v = gt_a.ravel()
    if ignore_index is not None:
        keep = gt_v != ignore_index
        if not keep.all():
            pred_v = pred_v[keep]
            gt_v = gt_v[keep]
    _check_range(gt_v, num_classes, "gt")
    _check_range(pred_v, num_classes, "pred")
    index = gt_v.astype(np.int64) * num_classes + pred_v.astype(np.int64)
    counts = np.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def miou(cm: Any) -> tuple[float, np.ndarray]:
    """Mean IoU and per-class IoU of a confusion matrix.

    Per-class IoU = ``cm[k, k] / (sum(cm[k, :]) + sum(cm[:, k]) - cm[k, k])``. A class absent
    from both gt and pred (empty union) has IoU NaN and is left out of the mean; the mean is NaN
    when every class is absent.

    Args:
        cm: a (K, K) confusion matrix, rows gt, columns pred (from :func:`confusion_matrix`).

    Returns:
        ``(mean, per_class)``: a float and a float64 array of K values.

    Shape:
        cm: (K, K). per_class: (K,).
    """
    cm_a = as_array(cm, "cm")
    if cm_a.ndim != 2 or cm_a.shape[0] != cm_a.shape[1]:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {cm_a.shape}")
    if cm_a.dtype == np.bool_ or not np.issubdtype(cm_a.dtype, np.number):
        raise TypeError(f"cm must hold pixel counts, got dtype {cm_a.dtype}")
    if cm_a.size and cm_a.min() < 0:
        raise ValueError("cm must not hold negative counts")
    cm_f = cm_a.astype(np.float64)
    tp = np.diag(cm_f)
    union = cm_f.sum(axis=0) + cm_f.sum(axis=1) - tp
    per_class = np.full(tp.shape, np.nan)
    present = union > 0
    per_class[present] = tp[present] / union[present]
    mean = float(per_class[present].mean()) if present.any() else float("nan")
    return mean, per_class
