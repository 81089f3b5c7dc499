"""Boundary metrics: mean boundary accuracy (mBA) and the boundary F-measure.

mBA is CascadePSP's metric (Cheng et al., "CascadePSP: Toward Class-Agnostic and Very
High-Resolution Segmentation via Global and Local Refinement", CVPR 2020), which CRM (Shen et al.,
CVPR 2022) reports next to IoU. The definition followed here is
``util/compute_boundary_acc.py::compute_boundary_acc`` of github.com/hkchengrex/CascadePSP:

- radii ``r_i = 1 + int((r_max - 1) / 5 * i)`` for ``i = 0..4`` with ``r_max = (H + W) / 300``
  (that exact float expression; ``int`` truncates toward zero, so when ``r_max < 1``, i.e.
  ``H + W < 300``, every radius is 1);
- the kernel is ``cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2r + 1, 2r + 1))``, which is NOT a
  Euclidean disk (row ``dy`` spans ``|dx| <= round(sqrt(r^2 - dy^2))``, so it is not even
  transpose-symmetric);
- the band is ``cv2.morphologyEx(gt, cv2.MORPH_GRADIENT, kernel) > 0``: pixels whose kernel
  footprint, clipped to the image (OpenCV's default border is neutral for dilation and erosion),
  holds both a foreground and a background gt pixel;
- the accuracy at a radius is the share of band pixels where pred equals gt; mBA is the plain
  mean of the five accuracies (a dataset's mBA is the mean over images).

A gt with no foreground or no background has empty bands; CascadePSP then divides 0 by 0 and gets
NaN, and so does :func:`mba` (use ``np.nanmean`` over a dataset if such images may occur).

Speed trick (exact, not an approximation). The reference runs five morphological gradients with
kernels up to 45x45 over the whole image (about 0.8 s at 4096x4096 on two cores). Instead:

1. Let ``d(p)`` be the Euclidean distance from pixel p to the nearest gt pixel of the other class
   (two exact distance transforms, ``cv2.DIST_MASK_PRECISE``, one per class). p is in the band
   of kernel K iff some pixel of the other class lies at an offset in K.
2. For each kernel, from its actual pixels, ``inner`` is the largest squared length such that
   every integer offset at most that long is in K, and ``outer`` the largest squared length of an
   offset in K (for the cv2 ellipse: ``inner = r^2``, ``outer <= r^2 + r``). Then
   ``d^2 <= inner`` means p is in the band, ``d^2 > outer`` means it is not, and only pixels with
   ``inner < d^2 <= outer`` (a shell about half a pixel thick) are checked exactly, against the
   few "shell" offsets of K longer than ``sqrt(inner)`` (44 of the 1561 offsets at r = 22): no
   pixel of the other class is nearer than ``sqrt(inner)``, so only those offsets can hit one.
3. One pair of distance transforms serves all five radii, and it runs only on the bounding box
   of the gt boundary pixels (pixels with a 4-neighbour of the other class) grown by
   ``ceil(sqrt(max outer))`` pixels. The nearest pixel of the other class is always such a
   boundary pixel, so distances inside the box are exact; pixels outside it are farther than
   any kernel reaches and are in no band.

tests/metrics/test_boundary.py checks the band pixels against ``cv2.morphologyEx`` and ``mba``
against a line-by-line port of CascadePSP on random and hand-made masks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy.spatial import cKDTree

from finecut.metrics.binary import binarize, check_same_shape

__all__ = ["boundary_f", "mask_boundary", "mba", "mba_radii"]

#: DAVIS's default boundary tolerance: this fraction of the image diagonal, rounded up.
DAVIS_TOLERANCE_FRACTION = 0.008


def mba_radii(height: int, width: int) -> tuple[int, ...]:
    """The five band radii CascadePSP's mBA uses for an image of ``height x width``.

    ``r_i = 1 + int((r_max - 1) / 5 * i)``, ``r_max = (height + width) / 300``, ``i = 0..4``
    (written in CascadePSP's operation order, so float rounding matches).

    Args:
        height: image height H in pixels.
        width: image width W in pixels.

    Returns:
        Five non-decreasing radii, each >= 1.
    """
    min_radius, num_steps = 1, 5
    max_radius = (width + height) / 300
    return tuple(
        min_radius + int((max_radius - min_radius) / num_steps * i) for i in range(num_steps)
    )


@dataclass(frozen=True)
class _Kernel:
    """An OpenCV ellipse kernel described by offset lengths (see the module docstring)."""

    radius: int
    inner_sq: int  # every integer offset with dy^2 + dx^2 <= inner_sq is in the kernel
    outer_sq: int  # every offset of the kernel has dy^2 + dx^2 <= outer_sq
    shell: np.ndarray  # (M, 2) int64 offsets (dy, dx) of the kernel longer than sqrt(inner_sq)


@functools.lru_cache(maxsize=128)
def _ellipse_kernel(radius: int) -> _Kernel:
    size = 2 * radius + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)).astype(bool)
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    length_sq = dy * dy + dx * dx
    # Offsets outside the (2r+1)^2 box are at least (r+1)^2 long and not in the kernel.
    inner_sq = (radius + 1) ** 2 - 1
    if (~kernel).any():
        inner_sq = min(inner_sq, int(length_sq[~kernel].min()) - 1)
    outer_sq = int(length_sq[kernel].max())
    in_shell = kernel & (length_sq > inner_sq)
    shell = np.stack([dy[in_shell], dx[in_shell]], axis=1).astype(np.int64)
    shell.setflags(write=False)
    return _Kernel(radius, inner_sq, outer_sq, shell)


def _opposite_distance_sq(gt: np.ndarray, max_sq: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels whose nearest gt pixel of the other class is at squared distance <= ``max_sq``.

    Returns ``(flat, dist_sq)``: flat indices into ``gt`` and their exact squared distances
    (int64), or None when gt has a single class.
    """
    h, w = gt.shape
    horizontal = gt[:, 1:] != gt[:, :-1]
    vertical = gt[1:, :] != gt[:-1, :]
    rows = np.zeros(h, dtype=bool)
    cols = np.zeros(w, dtype=bool)
    rows |= horizontal.any(axis=1)
    cols |= vertical.any(axis=0)
    pair_rows = vertical.any(axis=1)
    rows[:-1] |= pair_rows
    rows[1:] |= pair_rows
    pair_cols = horizontal.any(axis=0)
    cols[:-1] |= pair_cols
    cols[1:] |= pair_cols
    if not rows.any():
        return None
    row_ids = np.flatnonzero(rows)
    col_ids = np.flatnonzero(cols)
    margin = math.isqrt(max_sq) + 1  # margin^2 > max_sq
    y0, y1 = max(int(row_ids[0]) - margin, 0), min(int(row_ids[-1]) + margin + 1, h)
    x0, x1 = max(int(col_ids[0]) - margin, 0), min(int(col_ids[-1]) + margin + 1, w)
    crop = np.ascontiguousarray(gt[y0:y1, x0:x1]).view(np.uint8)
    # Zero pixels are the targets: the first transform measures fg pixels to the nearest bg
    # pixel and is 0 on bg, the second the converse, so their sum is the distance to the
    # nearest pixel of the other class everywhere.
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist += cv2.distanceTransform(crop ^ 1, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    local = np.flatnonzero(dist < margin)
    near = dist.ravel()[local].astype(np.float64)
    # cv2 returns float32 square roots of integer squared distances; rounding the square
    # recovers the integer exactly (relative error ~1e-7 at values far below 2^20).
    dist_sq = np.rint(near * near).astype(np.int64)
    keep = dist_sq <= max_sq
    local, dist_sq = local[keep], dist_sq[keep]
    crop_w = x1 - x0
    flat = (local // crop_w + y0) * w + (local % crop_w + x0)
    return flat, dist_sq


def _band_members(
    gt_flat: np.ndarray, shape: tuple[int, int], flat: np.ndarray, dist_sq: np.ndarray, k: _Kernel
) -> np.ndarray:
    """Which candidate pixels lie in the morphological-gradient band of kernel ``k``."""
    member = dist_sq <= k.inner_sq
    ambiguous = np.flatnonzero((dist_sq > k.inner_sq) & (dist_sq <= k.outer_sq))
    if ambiguous.size == 0 or k.shell.size == 0:
        return member
    h, w = shape
    pixels = flat[ambiguous]
    y, x = pixels // w, pixels % w
    own = gt_flat[pixels]
    hit = np.zeros(ambiguous.size, dtype=bool)
    for dy, dx in k.shell:
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        other = gt_flat[np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)] != own
        hit |= inside & other
    member[ambiguous[hit]] = True
    return member


def _gradient_band(gt: np.ndarray, radius: int) -> np.ndarray:
    """The band ``cv2.morphologyEx(gt, MORPH_GRADIENT, ellipse(radius)) > 0`` by the fast path.

    For tests; ``gt`` is a 2-D bool array.
    """
    k = _ellipse_kernel(radius)
    band = np.zeros(gt.size, dtype=bool)
    found = _opposite_distance_sq(gt, k.outer_sq)
    if found is not None:
        flat, dist_sq = found
        band[flat[_band_members(gt.ravel(), gt.shape, flat, dist_sq, k)]] = True
    return band.reshape(gt.shape)


def mba(pred: Any, gt: Any) -> float:
    """Mean boundary accuracy (mBA) of CascadePSP: pixel accuracy in five bands around gt's edge.

    CascadePSP, Cheng et al., CVPR 2020; ``util/compute_boundary_acc.py::compute_boundary_acc``.
    See the module docstring for the exact definition and the (exact) speed-up.

    Args:
        pred: predicted mask, binarised by :func:`finecut.metrics.binarize` (uint8 ``> 128``,
            float ``> 0.5``, bool as is).
        gt: ground-truth mask, same shape and rule.

    Returns:
        mBA in [0, 1]; NaN when gt is all foreground or all background (empty band), as in
        CascadePSP. A dataset's mBA is the mean over its images.

    Shape:
        pred, gt: (H, W).
    """
    pred_b = binarize(pred, "pred")
    gt_b = binarize(gt, "gt")
    check_same_shape(pred_b, gt_b, ndim=2)
    h, w = gt_b.shape
    kernels = [_ellipse_kernel(r) for r in mba_radii(h, w)]
    found = _opposite_distance_sq(gt_b, max(k.outer_sq for k in kernels))
    if found is None:
        return float("nan")
    flat, dist_sq = found
    gt_flat = np.ascontiguousarray(gt_b).ravel()
    correct = np.ravel(pred_b)[flat] == gt_flat[flat]
    accuracies = []
    for k in kernels:
        member = _band_members(gt_flat, (h, w), flat, dist_sq, k)
        accuracies.append(int(np.count_nonzero(correct & member)) / int(np.count_nonzero(member)))
    return sum(accuracies) / len(accuracies)


def mask_boundary(mask: Any) -> np.ndarray:
    """Inner boundary of a binary mask: foreground pixels with a 4-neighbour in the background.

    Only neighbours inside the image count, so the image border is not a boundary (a mask that
    fills the image has none).

    Args:
        mask: binary mask, binarised by :func:`finecut.metrics.binarize`.

    Returns:
        bool array, True on boundary pixels.

    Shape:
        mask: (H, W). Output: (H, W).
    """
    m = binarize(mask, "mask")
    if m.ndim != 2:
        raise ValueError(f"expected a mask of shape (H, W), got shape {m.shape}")
    interior = m.copy()
    interior[1:, :] &= m[:-1, :]
    interior[:-1, :] &= m[1:, :]
    interior[:, 1:] &= m[:, :-1]
    interior[:, :-1] &= m[:, 1:]
    return m & ~interior


def _matched(dist: np.ndarray, tolerance: float) -> int:
    """How many distances are <= tolerance; squared distances are integers, compared exactly."""
    dist = dist.astype(np.float64)
    return int(np.count_nonzero(np.rint(dist * dist) <= math.floor(tolerance * tolerance + 1e-9)))


def _shares_by_distance_transform(
    pred_edge: np.ndarray, gt_edge: np.ndarray, tolerance: float
) -> tuple[float, float]:
    """(precision, recall) from exact distance transforms of each edge map (dense edges)."""
    shares = []
    for source, target in ((pred_edge, gt_edge), (gt_edge, pred_edge)):
        zeros_at_target = np.ascontiguousarray(~target).view(np.uint8)
        dist = cv2.distanceTransform(zeros_at_target, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        near = dist[source]
        shares.append(_matched(near, tolerance) / near.size)
    return shares[0], shares[1]


def _shares_by_kdtree(
    pred_edge: np.ndarray, gt_edge: np.ndarray, tolerance: float
) -> tuple[float, float]:
    """(precision, recall) from nearest-neighbour queries between edge pixels (sparse edges)."""
    pred_pts, gt_pts = np.argwhere(pred_edge), np.argwhere(gt_edge)
    shares = []
    for source, target in ((pred_pts, gt_pts), (gt_pts, pred_pts)):
        # Pixels farther than the bound come back as inf and are not matched.
        dist, _ = cKDTree(target).query(source, distance_upper_bound=tolerance + 0.5)
        shares.append(_matched(dist, tolerance) / len(source))
    return shares[0], shares[1]


#: boundary_f uses the k-d tree when edge pixels are fewer than this share of the box area.
_KDTREE_MAX_EDGE_SHARE = 1 / 64


def boundary_f(pred: Any, gt: Any, tolerance: float | None = None) -> float:
    """Boundary F-measure (DAVIS, Perazzi et al. CVPR 2016; after BSDS, Martin et al. 2004).

    Boundaries are :func:`mask_boundary` (inner boundary, 4-connectivity, image border not a
    boundary). Precision is the share of predicted boundary pixels within Euclidean distance
    ``tolerance`` (inclusive) of some gt boundary pixel, recall the share of gt boundary pixels
    within ``tolerance`` of some predicted one, and ``F = 2PR / (P + R)`` (0 when both are 0).
    Pixels are matched by distance, not one-to-one (as in DAVIS, unlike BSDS's bipartite match).
    Empty boundaries: both empty gives 1.0 (e.g. two empty masks); exactly one empty gives 0.0.
    Distances are exact: k-d tree queries between edge pixels when edges are sparse, exact
    distance transforms (``cv2.DIST_MASK_PRECISE``) on the edges' bounding box otherwise.

    Args:
        pred: predicted mask, binarised by :func:`finecut.metrics.binarize`.
        gt: ground-truth mask, same shape.
        tolerance: matching distance in pixels, >= 0. None uses DAVIS's default,
            ``ceil(0.008 * sqrt(H^2 + W^2))`` (e.g. 8 px at 480x854, 47 px at 4096x4096).

    Returns:
        F in [0, 1].

    Shape:
        pred, gt: (H, W).
    """
    pred_b = binarize(pred, "pred")
    gt_b = binarize(gt, "gt")
    check_same_shape(pred_b, gt_b, ndim=2)
    if tolerance is None:
        tolerance = math.ceil(DAVIS_TOLERANCE_FRACTION * math.hypot(*gt_b.shape))
    tolerance = float(tolerance)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance}")
    pred_edge = mask_boundary(pred_b)
    gt_edge = mask_boundary(gt_b)
    has_pred, has_gt = bool(pred_edge.any()), bool(gt_edge.any())
    if not (has_pred or has_gt):
        return 1.0
    if not (has_pred and has_gt):
        return 0.0
    # Every pixel either measurement needs lies in the bounding box of both boundaries.
    both = pred_edge | gt_edge
    rows = np.flatnonzero(both.any(axis=1))
    cols = np.flatnonzero(both.any(axis=0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pred_edge, gt_edge = pred_edge[box], gt_edge[box]
    # Two exact ways to the same numbers: nearest-neighbour queries cost O(n log n) in the edge
    # pixels, distance transforms O(area); use the cheaper one.
    n_edge = np.count_nonzero(pred_edge) + np.count_nonzero(gt_edge)
    if n_edge < _KDTREE_MAX_EDGE_SHARE * pred_edge.size:
        precision, recall = _shares_by_kdtree(pred_edge, gt_edge, tolerance)
    else:
        precision, recall = _shares_by_distance_transform(pred_edge, gt_edge, tolerance)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
