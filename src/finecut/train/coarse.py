"""Coarse masks as users have them: one function per family, for training and benchmarks.

The refiner meets masks from very different sources, and each leaves its own kind of error. A
model trained on one generator (``finecut.refine.perturb``, CascadePSP's polygon and morphology
degradations tuned to IoU 0.8-1.0) meets the others as strangers. The families here:

* :func:`lowres_segmenter`: a segmenter run at low resolution and upsampled to the photo (the
  mask area-downsampled by ``factor``, bilinear up, Gaussian blur of ``factor / 2``, thresholded
  at a random level, then dilated or eroded by 1 to ``factor / 2`` px): rounded corners, lost thin
  parts, an edge that wanders by up to half a cell.
* :func:`sam_like`: a near-perfect mask (SAM, a good segmenter, a careful annotator) with small
  local errors: a boundary offset of a few px that varies smoothly along the outline, sometimes a
  thin part missing, a speck of false foreground, a small hole.
* :func:`polygon_outline`: a polygon annotation (LabelMe, CVAT, COCO polygons): the outline
  simplified to straight segments a few px off the true edge.
* :func:`brush_outline`: a brush painting: concavities filled by the brush's round tip, the edge
  overshooting by part of the brush radius.
* ``perturb``: CascadePSP/CRM's boundary perturbation (:func:`finecut.refine.perturb.perturb_mask`).
* ``identity``: the mask already right; the refiner's target is to leave it alone.

Lengths are in pixels of the mask as given: a caller that degrades an upsampled photo passes the
upsampling factor through ``scale`` of :func:`sample_coarse`, so a segmenter's cell or a
polygon's tolerance grows with the photo as it does for real masks.

All functions take an (H, W) bool (or 0/1, 0/255 integer) mask and a numpy Generator and return
an (H, W) bool mask; each is a deterministic function of (mask, generator state, arguments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

from finecut.refine.perturb import perturb_mask

__all__ = [
    "FAMILIES",
    "brush_outline",
    "identity",
    "lowres_segmenter",
    "polygon_outline",
    "sam_like",
    "sample_coarse",
    "seeded_coarse",
]

#: family names in :func:`sample_coarse` and the benchmark tables
FAMILIES = ("lowres", "sam", "polygon", "brush", "perturb", "identity")


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return mask.astype(bool) if mask.dtype != bool else mask


def _disk(radius: int) -> np.ndarray:
    d = 2 * max(0, int(radius)) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


def _morph(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    if radius <= 0:
        return mask
    op = cv2.dilate if dilate else cv2.erode
    return op(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8),
              _disk(radius)).astype(bool)


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the boundary, positive inside, negative outside (float32, px)."""
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5)
    return inside - outside


def _smooth_field(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise of unit standard deviation varying over about ``cell`` px (float32)."""
    h, w = shape
    gh, gw = max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def lowres_segmenter(
    mask: np.ndarray, rng: np.random.Generator, factor: float | None = None
) -> np.ndarray:
    """A low-resolution segmenter's output upsampled to the mask's size.

    Area-downsample by ``factor`` (default drawn from {8, 12, 16}), bilinear upsampling, Gaussian
    blur of sigma ``factor / 2``, a threshold drawn from U(0.35, 0.65), then a dilation or
    erosion by 1 to ``factor / 2`` px.
    """
    x = _as_bool(mask)
    h, w = x.shape
    f = float(factor if factor is not None else rng.choice([8.0, 12.0, 16.0]))
    if f < 1:
        raise ValueError(f"factor must be >= 1, got {f}")
    sh, sw = max(1, round(h / f)), max(1, round(w / f))
    small = cv2.resize(x.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    sigma = f / 2
    up = cv2.GaussianBlur(up, (0, 0), sigmaX=sigma, sigmaY=sigma)
    out = up > rng.uniform(0.35, 0.65)
    radius = int(rng.integers(1, max(1, int(f / 2)) + 1))
    return _morph(out, radius, dilate=bool(rng.random() < 0.5))


def sam_like(
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    offset: float | None = None,
    p_thin: float = 0.35,
    p_speck: float = 0.35,
    p_hole: float = 0.15,
) -> np.ndarray:
    """A near-perfect mask with small local errors, as SAM or a good segmenter gives.

    The boundary moves by a smoothly varying offset (a bias in +-``offset / 2`` plus noise of
    standard deviation ``offset`` varying over 16-96 px; ``offset`` drawn from U(0.5, 3) px);
    with probability ``p_thin`` the thin parts (2-6 px wide) in one region are lost; with
    ``p_speck`` a speck of false foreground (radius 1-6 px) appears near the object; with
    ``p_hole`` a small hole is punched into it.
    """
    x = _as_bool(mask)
    h, w = x.shape
    if not x.any() or x.all():
        return x.copy()
    a = float(offset if offset is not None else rng.uniform(0.5, 3.0))
    field = _smooth_field((h, w), rng.uniform(16, 96), rng) * a + rng.uniform(-a / 2, a / 2)
    out = (_signed_distance(x) + field) > 0
    # (a small object can vanish under the offset: the later steps then have nothing to work on)
    if rng.random() < p_thin and out.any():
        width = int(rng.integers(2, 7))
        opened = cv2.morphologyEx(out.view(np.uint8), cv2.MORPH_OPEN, _disk(width // 2 + 1)) > 0
        # only in one region: a disk around a random foreground pixel
        ys, xs = np.nonzero(out)
        k = int(rng.integers(len(ys)))
        region = np.zeros((h, w), np.uint8)
        cv2.circle(region, (int(xs[k]), int(ys[k])), int(rng.uniform(0.1, 0.4) * max(h, w)), 1, -1)
        out = np.where(region > 0, opened, out)
    if rng.random() < p_speck:
        near = _morph(x, int(rng.integers(3, 30)), dilate=True) & ~x
        ys, xs = np.nonzero(near)
        if len(ys):
            k = int(rng.integers(len(ys)))
            cv2.circle(out.view(np.uint8), (int(xs[k]), int(ys[k])), int(rng.integers(1, 7)), 1, -1)
    if rng.random() < p_hole:
        inner = _morph(x, 8, dilate=False)
        ys, xs = np.nonzero(inner)
        if len(ys):
            k = int(rng.integers(len(ys)))
            cv2.circle(out.view(np.uint8), (int(xs[k]), int(ys[k])), int(rng.integers(1, 5)), 0, -1)
    return out


def polygon_outline(
    mask: np.ndarray, rng: np.random.Generator, tolerance: float | None = None
) -> np.ndarray:
    """A polygon annotation: each outline simplified (Douglas-Peucker) to ``tolerance`` px.

    ``tolerance`` defaults to U(1, 4) px plus 0.5-1.5% of the object's equivalent radius, so a
    large object gets a polygon of a few dozen vertices, as annotators draw. Holes stay holes;
    outlines shorter than 3 vertices after simplification are dropped.
    """
    x = _as_bool(mask)
    if not x.any():
        return x.copy()
    radius = math.sqrt(x.sum() / math.pi)
    if tolerance is None:
        tolerance = rng.uniform(1, 4) + rng.uniform(0.005, 0.015) * radius
    tol = float(tolerance)
    contours, hierarchy = cv2.findContours(x.astype(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_NONE)
    out = np.zeros(x.shape, np.uint8)
    if hierarchy is None:
        return x.copy()
    for contour, info in zip(contours, hierarchy[0], strict=True):
        poly = cv2.approxPolyDP(contour, tol, closed=True)
        if len(poly) < 3:
            continue
        # outer outlines (no parent) are foreground; holes (with a parent) background
        cv2.fillPoly(out, [poly], 1 if info[3] < 0 else 0)
    return out.astype(bool)


def brush_outline(
    mask: np.ndarray, rng: np.random.Generator, radius: float | None = None
) -> np.ndarray:
    """A brush painting: a closing by the brush tip, then an overshoot of part of its radius.

    ``radius`` (the brush tip, px) defaults to U(2, 6) px plus 2-6% of the object's equivalent
    radius; the closing fills gaps and concavities narrower than the tip, and the painted edge
    overshoots the object by U(0, 0.6) of the radius, varying along the outline.
    """
    x = _as_bool(mask)
    if not x.any():
        return x.copy()
    obj = math.sqrt(x.sum() / math.pi)
    r = float(radius if radius is not None else rng.uniform(2, 6) + rng.uniform(0.02, 0.06) * obj)
    closed = cv2.morphologyEx(x.astype(np.uint8), cv2.MORPH_CLOSE, _disk(round(r))) > 0
    over = rng.uniform(0, 0.6) * r
    field = np.abs(_smooth_field(x.shape, max(8.0, 4 * r), rng)) * over
    return (_signed_distance(closed) + field) > 0


def identity(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # noqa: ARG001
    """The mask as it is: an input that is already right."""
    return _as_bool(mask).copy()


def _perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return perturb_mask(mask, rng)


_FAMILY_FNS = {
    "lowres": lambda m, rng, s: lowres_segmenter(m, rng, float(rng.choice([8, 12, 16])) * s),
    "sam": lambda m, rng, s: sam_like(m, rng, offset=rng.uniform(0.5, 3.0) * max(1.0, s**0.5)),
    "polygon": lambda m, rng, s: polygon_outline(m, rng),
    "brush": lambda m, rng, s: brush_outline(m, rng),
    "perturb": lambda m, rng, s: _perturb(m, rng),
    "identity": lambda m, rng, s: identity(m, rng),
}

#: the training mix: low-resolution segmenters and SAM-like masks are what users bring most
DEFAULT_MIX: Mapping[str, float] = {
    "lowres": 0.3,
    "sam": 0.25,
    "polygon": 0.1,
    "brush": 0.1,
    "perturb": 0.15,
    "identity": 0.1,
}


def sample_coarse(
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
    family: str | None = None,
    mix: Mapping[str, float] = DEFAULT_MIX,
) -> tuple[np.ndarray, str]:
    """A coarse mask of one family (drawn from ``mix`` unless ``family`` is given).

    Args:
        mask: (H, W) ground truth, bool or integer.
        rng: numpy Generator.
        scale: how many times the photo was upsampled after the mask's source would have made
            its errors (a segmenter's cell, a SAM-like offset grow with it; 1 for a photo at its
            own size).
        family: one of :data:`FAMILIES`, or None to draw one from ``mix``.
        mix: family -> probability (normalised here).

    Returns:
        ((H, W) bool coarse mask, family name).
    """
    if family is None:
        names = list(mix)
        p = np.array([mix[n] for n in names], dtype=np.float64)
        family = names[int(rng.choice(len(names), p=p / p.sum()))]
    if family not in _FAMILY_FNS:
        raise ValueError(f"unknown coarse family {family!r}; choose from {', '.join(FAMILIES)}")
    return _FAMILY_FNS[family](_as_bool(mask), rng, float(scale)), family


def seeded_coarse(mask: np.ndarray, stem: str, family: str, seed: int = 0) -> np.ndarray:
    """The benchmark's fixed coarse mask of one image: ``family`` with a generator seeded by
    (``seed``, the family's index, the stem as a number or its CRC-32), so every method and
    every run sees the same input (``bench/refine_quality.py``, the embedded-weights tests)."""
    import zlib

    if family not in FAMILIES:
        raise ValueError(f"unknown coarse family {family!r}; choose from {', '.join(FAMILIES)}")
    key = int(stem) if stem.isdigit() else zlib.crc32(stem.encode())
    rng = np.random.default_rng([seed, FAMILIES.index(family), key])
    return sample_coarse(mask, rng, family=family)[0]
