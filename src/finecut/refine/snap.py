"""Edge snapping: the last step of finecut's refinement, closed-form matting in a thin band.

The CRM head decodes the mask from a stride-2 latent map; trained on a small budget (the shipped
model saw 25,600 crops, the paper's 540,000) it places the boundary within a few pixels of the
object's edge but not on it, so it raises IoU while CascadePSP's boundary accuracy (mBA, bands of
1 to (H + W) / 300 pixels) stays flat. Snapping solves closed-form matting (Levin et al., CVPR
2006, through pymatting, as :func:`finecut.refine.baselines.matting_refine`) in a band of
``band`` pixels on both sides of the refined boundary: the colour model of each 3x3 window then
moves the boundary onto the image edge, and the alpha it solves is the soft output. The system
is pymatting's, built for the band's pixels only (:mod:`finecut.refine.band_matting`). Measured on
ECSSD 801-830 (``docs/benchmarks.md``): the same matting applied to the coarse mask, with its
wider band, gains far less, because the coarse mask is not within a few pixels of the edge.

Snapping runs ``passes`` times (3 by default, :data:`SNAP_PASSES`) in bands halving to 1 px.

The band scales with the image, ``clip(round(fraction * (H + W)), min_band, max_band)``; the cap
bounds the cost on large images (the matting system grows with the band's area). The whole band
is one system, built in chunks of windows, so memory stays bounded at 8K. (Until 2026-12-02 it was
solved with pymatting in 256-px tiles with margins: 2.3-3.0 s for the three passes on the
3492x2328 aeroplane, against about 1.5 s for the band system in the same runs, which also has no
seams between tiles.)
"""

from __future__ import annotations

import logging

import numpy as np

from finecut.refine.band_matting import solve_band_alpha
from finecut.refine.baselines import known_sides

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
    epsilon: float = SNAP_CF_EPSILON,
    passes: int = 1,
) -> np.ndarray:
    """Alpha of closed-form matting in a band of ``band`` px around ``prob``'s 0.5 boundary.

    Outside the band the alpha is the thresholded ``prob`` (0 or 1). When the band leaves no
    definite foreground or background (a mask thinner than the band), ``prob`` is returned; a part
    of the band that touches only one known side (a thin part away from the rest) keeps ``prob``.
    With ``passes`` > 1, each further pass snaps the previous pass's alpha again in a narrower
    band (:func:`snap_schedule`); the result thresholds at 0.5 to the last pass's mask, and its
    soft values are the first pass's alpha wherever that lies on the same side of 0.5 (the
    wide matte), the last pass's elsewhere.

    Shape:
        image: (H, W, 3) uint8; prob: (H, W) float in [0, 1] -> (H, W) float32 in [0, 1].
    """
    schedule = snap_schedule(band, passes)
    first = alpha = _snap_once(image, prob, schedule[0], epsilon)
    for narrower in schedule[1:]:
        alpha = _snap_once(image, alpha, narrower, epsilon)
    if len(schedule) == 1:
        return first
    return np.where((first > 0.5) == (alpha > 0.5), first, alpha)


def _snap_once(image: np.ndarray, prob: np.ndarray, band: int, epsilon: float) -> np.ndarray:
    fg, bg = known_sides(prob > 0.5, band)
    if not (fg.any() and bg.any()):
        log.debug("snap: the %d px band leaves no definite foreground or background; skipped", band)
        return prob.astype(np.float32)
    # Solve in the bounding box of the band, 2 px wider: every 3x3 window that touches a band
    # pixel lies in it, so the system is the whole image's (and full-size work is a few masks).
    unknown = ~(fg | bg)
    rows, cols = np.flatnonzero(unknown.any(axis=1)), np.flatnonzero(unknown.any(axis=0))
    h, w = unknown.shape
    crop = np.s_[
        max(0, rows[0] - 2) : min(h, rows[-1] + 3), max(0, cols[0] - 2) : min(w, cols[-1] + 3)
    ]
    trimap = fg[crop] + 0.5 * unknown[crop]
    alpha = fg.astype(np.float32)
    # The whole band is one system (finecut.refine.band_matting builds only its rows), started
    # from the probability; a band component with one known side keeps the probability.
    alpha[crop] = solve_band_alpha(image[crop], trimap, epsilon, x0=prob[crop], fallback=prob[crop])
    return alpha
