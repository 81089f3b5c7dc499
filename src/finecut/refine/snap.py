"""Edge snapping: the last step of finecut's refinement, closed-form matting in a thin band.

The CRM head decodes the mask from a stride-2 latent map; trained on a small budget (the shipped
model saw 25,600 crops, the paper's 540,000) it places the boundary within a few pixels of the
object's edge but not on it, so it raises IoU while CascadePSP's boundary accuracy (mBA, bands of
1 to (H + W) / 300 pixels) stays flat. Snapping solves closed-form matting (Levin et al., CVPR
2006, through pymatting, as :func:`finecut.refine.baselines.matting_refine`) in a band of
``band`` pixels on both sides of the refined boundary: the colour model of each 3x3 window then
moves the boundary onto the image edge, and the alpha it solves is the soft output. Measured on
ECSSD 801-830 (``docs/benchmarks.md``): the same matting applied to the coarse mask, with its
wider band, gains far less, because the coarse mask is not within a few pixels of the edge.

Snapping runs ``passes`` times (3 by default, :data:`SNAP_PASSES`) in bands halving to 1 px.

The band scales with the image, ``clip(round(fraction * (H + W)), min_band, max_band)``; the cap
bounds the cost on large images (the matting system grows with the band's area). The system is
solved in tiles of ``tile`` pixels (only tiles that hold band pixels; 256 px: on the 3492x2328
aeroplane one 8 px pass took 1.4 s in 256-px tiles against 4.5 s in 1024-px tiles, the same mask
to 6 pixels), each with a margin of context, so memory stays bounded at 8K: the closed-form
Laplacian couples only pixels within 3x3 windows, and a margin of twice the band keeps each
tile's band pixels far from its cut.
"""

from __future__ import annotations

import logging

import numpy as np

from finecut.refine.baselines import make_trimap, solve_alpha

log = logging.getLogger(__name__)

__all__ = ["SNAP_CF_EPSILON", "SNAP_PASSES", "snap_band", "snap_schedule", "snap_to_edges"]

#: Regulariser of the closed-form matting Laplacian in snapping. Chosen on ECSSD 0001-0060 (training
#: images) with the shipped model: mBA 71.5 at 1e-5 (the matting baseline's value), 73.0 at 1e-4,
#: 74.0 at 1e-3, 73.9 at 3e-3. A larger epsilon smooths alpha within colour-uniform windows, which
#: suits a band that is already close to the edge; the baseline, whose band must reach further
#: from a coarse mask, is better at 1e-5 (68.0 vs 67.8 mBA at 1e-3, same images).
SNAP_CF_EPSILON = 1e-3

#: Snapping passes, each in a band half as wide as the one before, the last 1 px wide
#: (:func:`snap_schedule`). One pass solves each band pixel from a colour model fitted to a band
#: that was placed by the CRM boundary; the next, narrower passes re-centre the band on the boundary
#: the previous pass found, so pixels near the new boundary get both sides as known neighbours.
#: Chosen on ECSSD 0001-0060 (training images), IoU / mBA: 1 pass 94.29 / 74.35, 2 passes
#: (b, b/2) 94.32 / 75.15, 3 passes (b, b/2, 1) 94.35 / 75.68, 4 passes 94.33 / 75.76; a wider
#: first band (0.009 or 0.012 of H + W) lowers both (73.35, 72.03 mBA at one pass).
SNAP_PASSES = 3


def snap_band(height: int, width: int, fraction: float, min_band: int, max_band: int) -> int:
    """Band half-width in pixels: ``clip(round(fraction * (H + W)), min_band, max_band)``."""
    if min_band < 1 or max_band < min_band:
        raise ValueError(f"need 1 <= min_band <= max_band, got {min_band}, {max_band}")
    return int(np.clip(round(fraction * (height + width)), min_band, max_band))


def snap_schedule(band: int, passes: int) -> tuple[int, ...]:
    """Band half-widths of ``passes`` snapping passes: ``band``, halved each pass, the last 1.

    >>> snap_schedule(8, 3), snap_schedule(4, 3), snap_schedule(2, 3), snap_schedule(5, 1)
    ((8, 4, 1), (4, 2, 1), (2, 1, 1), (5,))
    """
    if band < 1 or passes < 1:
        raise ValueError(f"need band >= 1 and passes >= 1, got {band}, {passes}")
    if passes == 1:
        return (band,)
    return (*(max(1, band >> k) for k in range(passes - 1)), 1)


def snap_to_edges(
    image: np.ndarray,
    prob: np.ndarray,
    band: int,
    tile: int = 256,
    epsilon: float = SNAP_CF_EPSILON,
    passes: int = 1,
) -> np.ndarray:
    """Alpha of closed-form matting in a band of ``band`` px around ``prob``'s 0.5 boundary.

    Outside the band the alpha is the thresholded ``prob`` (0 or 1). When the band leaves no
    definite foreground or background (a mask thinner than the band), ``prob`` is returned.
    With ``passes`` > 1, each further pass snaps the previous pass's alpha again in a narrower
    band (:func:`snap_schedule`); the result thresholds at 0.5 to the last pass's mask, and its
    soft values are the first pass's alpha wherever that lies on the same side of 0.5 (the
    wide matte), the last pass's elsewhere.

    Shape:
        image: (H, W, 3) uint8; prob: (H, W) float in [0, 1] -> (H, W) float32 in [0, 1].
    """
    schedule = snap_schedule(band, passes)
    if tile < 16:
        raise ValueError(f"need tile >= 16, got {tile}")
    first = alpha = _snap_once(image, prob, schedule[0], tile, epsilon)
    for narrower in schedule[1:]:
        alpha = _snap_once(image, alpha, narrower, tile, epsilon)
    if len(schedule) == 1:
        return first
    return np.where((first > 0.5) == (alpha > 0.5), first, alpha)


def _snap_once(
    image: np.ndarray, prob: np.ndarray, band: int, tile: int, epsilon: float
) -> np.ndarray:
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
            keep = unknown[y0:y1, x0:x1]
            if not ((crop_tri == 1.0).any() and (crop_tri == 0.0).any()):
                # Only one side is known here (a part thinner than the band, all unknown, with
                # no other foreground within the margin): nothing to fit a colour model to, so
                # the tile keeps the input probability, as a whole image without one side does.
                alpha[y0:y1, x0:x1][keep] = prob[y0:y1, x0:x1][keep]
                continue
            crop_img = image[cy0:cy1, cx0:cx1].astype(np.float64) / 255.0
            # Jacobi-preconditioned CG: the thin band's system converges fast, and building the
            # incomplete Cholesky factor took 58% of a pass (aeroplane, 3 passes: 3.2 s against
            # 4.0 s; ECSSD 1-60 IoU / mBA identical to two decimals, 94.81 / 76.78).
            solved = solve_alpha(
                crop_img, crop_tri.astype(np.float64), "cf", epsilon, preconditioner="jacobi"
            )
            inner = solved[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
            alpha[y0:y1, x0:x1][keep] = inner[keep]
    return np.clip(alpha, 0.0, 1.0)
