"""Edge snapping: the last step of finecut's refinement, closed-form matting in a thin band.

The CRM head decodes the mask from a stride-2 latent map; trained on a small budget (the shipped
model saw 13,600 crops, the paper's 540,000) it places the boundary within a few pixels of the
object's edge but not on it, so it raises IoU while CascadePSP's boundary accuracy (mBA, bands of
1 to (H + W) / 300 pixels) stays flat. Snapping solves closed-form matting (Levin et al., CVPR
2006, through pymatting, as :func:`finecut.refine.baselines.matting_refine`) in a band of
``band`` pixels on both sides of the refined boundary: the colour model of each 3x3 window then
moves the boundary onto the image edge, and the alpha it solves is the soft output. Measured on
ECSSD 801-830 (``docs/benchmarks.md``): the same matting applied to the coarse mask, with its
wider band, gains far less, because the coarse mask is not within a few pixels of the edge.

The band scales with the image, ``clip(round(fraction * (H + W)), min_band, max_band)``; the cap
bounds the cost on large images (the matting system grows with the band's area). The system is
solved in tiles of ``tile`` pixels (only tiles that hold band pixels), each with a margin of
context, so memory stays bounded at 8K: the closed-form Laplacian couples only pixels within
3x3 windows, and a margin of twice the band keeps each tile's band pixels far from its cut.
"""

from __future__ import annotations

import logging

import numpy as np

from finecut.refine.baselines import make_trimap, solve_alpha

log = logging.getLogger(__name__)

__all__ = ["SNAP_CF_EPSILON", "snap_band", "snap_to_edges"]

#: Regulariser of the closed-form matting Laplacian in snapping. Chosen on ECSSD 0001-0060 (training
#: images) with the shipped model: mBA 71.5 at 1e-5 (the matting baseline's value), 73.0 at 1e-4,
#: 74.0 at 1e-3, 73.9 at 3e-3. A larger epsilon smooths alpha within colour-uniform windows, which
#: suits a band that is already close to the edge; the baseline, whose band must reach further
#: from a coarse mask, is better at 1e-5 (68.0 vs 67.8 mBA at 1e-3, same images).
SNAP_CF_EPSILON = 1e-3


def snap_band(height: int, width: int, fraction: float, min_band: int, max_band: int) -> int:
    """Band half-width in pixels: ``clip(round(fraction * (H + W)), min_band, max_band)``."""
    if min_band < 1 or max_band < min_band:
        raise ValueError(f"need 1 <= min_band <= max_band, got {min_band}, {max_band}")
    return int(np.clip(round(fraction * (height + width)), min_band, max_band))


def snap_to_edges(
    image: np.ndarray,
    prob: np.ndarray,
    band: int,
    tile: int = 1024,
    epsilon: float = SNAP_CF_EPSILON,
) -> np.ndarray:
    """Alpha of closed-form matting in a band of ``band`` px around ``prob``'s 0.5 boundary.

    Outside the band the alpha is the thresholded ``prob`` (0 or 1). When the band leaves no
    definite foreground or background (a mask thinner than the band), ``prob`` is returned.

    Shape:
        image: (H, W, 3) uint8; prob: (H, W) float in [0, 1] -> (H, W) float32 in [0, 1].
    """
    if band < 1 or tile < 16:
        raise ValueError(f"need band >= 1 and tile >= 16, got {band}, {tile}")
    mask = prob > 0.5
    trimap = make_trimap(mask, band)
    if not ((trimap == 1.0).any() and (trimap == 0.0).any()):
        log.debug("snap: the %d px band leaves no definite foreground or background; skipped", band)
        return prob.astype(np.float32)
    unknown = trimap == 0.5
    alpha = trimap.astype(np.float32)
    h, w = mask.shape
    margin = 2 * band + 8
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            if not unknown[y0:y1, x0:x1].any():
                continue
            cy0, cx0 = max(0, y0 - margin), max(0, x0 - margin)
            cy1, cx1 = min(h, y1 + margin), min(w, x1 + margin)
            crop_tri = trimap[cy0:cy1, cx0:cx1]
            if not (crop_tri != 0.5).any():  # pragma: no cover - the margin exceeds the band
                continue
            crop_img = image[cy0:cy1, cx0:cx1].astype(np.float64) / 255.0
            solved = solve_alpha(crop_img, crop_tri.astype(np.float64), "cf", epsilon)
            inner = solved[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
            keep = unknown[y0:y1, x0:x1]
            alpha[y0:y1, x0:x1][keep] = inner[keep]
    return np.clip(alpha, 0.0, 1.0)
