"""A plain port of CascadePSP's mBA, step by step, as the reference the fast path must equal.

Follows github.com/hkchengrex/CascadePSP ``util/compute_boundary_acc.py::compute_boundary_acc``
(the ``seg`` half): uint8 masks, five radii, ``cv2.MORPH_GRADIENT`` with an ellipse kernel over the
full image, accuracy counted as ``gt*seg + (1-gt)*(1-seg)`` inside the band, mean over radii.
Kept out of the library on purpose; bench/metrics.py loads it from this file.
"""

from __future__ import annotations

import cv2
import numpy as np


def reference_band(gt: np.ndarray, radius: int) -> np.ndarray:
    """``morphologyEx(gt, MORPH_GRADIENT, ellipse of radius) > 0`` for a 0/1 uint8 ``gt``."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (radius * 2 + 1, radius * 2 + 1))
    return cv2.morphologyEx(gt, cv2.MORPH_GRADIENT, kernel) > 0


def reference_mba(seg: np.ndarray, gt: np.ndarray) -> float:
    """CascadePSP's boundary accuracy of ``seg`` against ``gt`` (both bool (H, W) arrays)."""
    gt = gt.astype(np.uint8)
    seg = seg.astype(np.uint8)
    h, w = gt.shape
    min_radius = 1
    max_radius = (w + h) / 300
    num_steps = 5
    seg_acc = [None] * num_steps
    for i in range(num_steps):
        curr_radius = min_radius + int((max_radius - min_radius) / num_steps * i)
        boundary_region = reference_band(gt, curr_radius)
        gt_in_bound = gt[boundary_region]
        seg_in_bound = seg[boundary_region]
        num_edge_pixels = boundary_region.sum()
        num_seg_gd_pix = (gt_in_bound * seg_in_bound + (1 - gt_in_bound) * (1 - seg_in_bound)).sum()
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN as in CascadePSP
            seg_acc[i] = num_seg_gd_pix / num_edge_pixels
    return sum(seg_acc) / num_steps
