"""Binary-mask metrics: the binarisation rule, IoU per image and IoU over a dataset.

The binarisation rule follows CascadePSP's evaluation (Cheng et al., CVPR 2020, the protocol CRM,
Shen et al., CVPR 2022, reports on): ``eval_post.py`` thresholds 8-bit PNG masks with ``> 128``
and ``util/metrics_compute.py`` thresholds float predictions with ``> 0.5``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from finecut.data.masks import binary_mask

__all__ = ["IoUAccumulator", "binarize", "dataset_iou", "iou", "iou_counts"]

#: uint8 masks are foreground where ``value > UINT8_THRESHOLD`` (CascadePSP ``eval_post.py``).
UINT8_THRESHOLD = 128
#: float masks are foreground where ``value > FLOAT_THRESHOLD`` (CascadePSP ``metrics_compute.py``).
FLOAT_THRESHOLD = 0.5
_LABEL_HINT = "compare one label at a time (mask == k) or use finecut.metrics.miou"


def as_array(x: Any, name: str) -> np.ndarray:
    """``np.asarray`` that names the argument when the conversion fails (e.g. a CUDA tensor)."""
    try:
        return np.asarray(x)
    except (TypeError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be a numpy array or a CPU tensor without grad, got {type(x).__name__}: "
            f"{err}"
        ) from err


def check_same_shape(pred: np.ndarray, gt: np.ndarray, *, ndim: int | None = None) -> None:
    """Raise ValueError unless ``pred`` and ``gt`` have one shape (and ``ndim`` dims, if given)."""
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}"
        )
    if ndim is not None and gt.ndim != ndim:
        raise ValueError(f"expected masks of shape (H, W), got pred and gt of shape {gt.shape}")
    if gt.size == 0:
        raise ValueError(f"masks must not be empty, got shape {gt.shape}")


def binarize(mask: Any, name: str = "mask") -> np.ndarray:
    """Turn a mask into a bool array with CascadePSP's evaluation thresholds.

    Rules, by dtype (the integer rules are :mod:`finecut.data.masks`', shared with the CLI and
    ``Refiner.refine``):

    - ``bool``: used as is.
    - ``uint8`` whose values are all 0 or 1: a 0/1 binary mask, 1 is foreground.
    - ``uint8`` holding other values, none above 64 (:data:`finecut.data.masks.LABEL_MAX`): a
      label map, ValueError (compare one label at a time, ``mask == k``, or use :func:`miou`).
    - other ``uint8``: foreground where ``value > 128`` (CascadePSP ``eval_post.py``; a 0/255
      PNG mask or an 8-bit soft mask).
    - floating point: foreground where ``value > 0.5`` (CascadePSP ``util/metrics_compute.py``);
      NaN raises ValueError.
    - any other integer dtype: must hold only 0 and 1 (a label map), else ValueError.

    Args:
        mask: array-like (numpy array, CPU torch tensor, nested lists).
        name: argument name used in error messages.

    Returns:
        A bool array of the same shape (the input itself when it is already a bool ndarray).

    Shape:
        any shape in, the same shape out.
    """
    arr = as_array(mask, name)
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN")
        return arr > FLOAT_THRESHOLD
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.uint8 and arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                f"{name} has dtype {arr.dtype} and values outside {{0, 1}} "
                f"(min {arr.min()}, max {arr.max()}); integer masks other than uint8 must be 0/1"
            )
        return binary_mask(arr, name=name, hint=_LABEL_HINT, uint8_threshold=UINT8_THRESHOLD)
    raise TypeError(f"{name} must have a bool, integer or float dtype, got {arr.dtype}")


def iou_counts(pred: Any, gt: Any) -> tuple[int, int]:
    """Intersection and union pixel counts of two binary masks (binarised by :func:`binarize`).

    Args:
        pred: predicted mask.
        gt: ground-truth mask of the same shape.

    Returns:
        ``(intersection, union)`` as Python ints.

    Shape:
        pred, gt: any shape, identical.
    """
    pred_b = binarize(pred, "pred")
    gt_b = binarize(gt, "gt")
    check_same_shape(pred_b, gt_b)
    intersection = int(np.count_nonzero(pred_b & gt_b))
    union = int(np.count_nonzero(pred_b | gt_b))
    return intersection, union


def _ratio(intersection: int, union: int) -> float:
    # Empty union (both masks empty): a perfect prediction of nothing, IoU 1.0.
    return 1.0 if union == 0 else intersection / union


def iou(pred: Any, gt: Any) -> float:
    """Intersection over union of two binary masks; 1.0 when both are empty.

    Args:
        pred: predicted mask (see :func:`binarize` for the accepted dtypes).
        gt: ground-truth mask of the same shape.

    Returns:
        ``|pred & gt| / |pred | gt|`` in [0, 1].

    Shape:
        pred, gt: any shape, identical.
    """
    return _ratio(*iou_counts(pred, gt))


class IoUAccumulator:
    """Dataset-level IoU as CascadePSP and CRM report it: ``sum(I) / sum(U)`` over images.

    This weights images by their size, unlike the mean of per-image IoUs. An accumulator that saw
    only empty unions (or nothing) reports 1.0, like :func:`iou`.
    """

    def __init__(self) -> None:
        self.intersection = 0
        self.union = 0
        self.count = 0

    def update(self, pred: Any, gt: Any) -> None:
        """Add one image's intersection and union."""
        i, u = iou_counts(pred, gt)
        self.intersection += i
        self.union += u
        self.count += 1

    def value(self) -> float:
        """``sum(I) / sum(U)`` over the images seen so far."""
        return _ratio(self.intersection, self.union)

    def reset(self) -> None:
        """Forget every image seen."""
        self.intersection = self.union = self.count = 0


def dataset_iou(pairs: Iterable[tuple[Any, Any]]) -> float:
    """Dataset-level IoU, ``sum(I) / sum(U)``, of an iterable of ``(pred, gt)`` pairs.

    Args:
        pairs: ``(pred, gt)`` mask pairs; each pair must share a shape, pairs may differ.

    Returns:
        The pooled IoU; 1.0 for an empty iterable or when every union is empty.
    """
    acc = IoUAccumulator()
    for pred, gt in pairs:
        acc.update(pred, gt)
    return acc.value()
