"""Coarse-mask families: shapes, determinism, and each family's defining property."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from finecut.metrics import iou
from finecut.train.coarse import (
    FAMILIES,
    brush_outline,
    identity,
    lowres_segmenter,
    polygon_outline,
    sam_like,
    sample_coarse,
)


def _disk(size: int = 200, r: float = 60) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r**2


def _boundary_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the boundary of ``mask`` (px)."""
    m = mask.astype(np.uint8)
    return np.maximum(cv2.distanceTransform(m, cv2.DIST_L2, 5),
                      cv2.distanceTransform(1 - m, cv2.DIST_L2, 5))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_deterministic_and_keeps_the_shape(family: str) -> None:
    gt = _disk()
    a, name = sample_coarse(gt, np.random.default_rng(5), family=family)
    b, _ = sample_coarse(gt, np.random.default_rng(5), family=family)
    assert name == family and a.dtype == bool and a.shape == gt.shape
    assert np.array_equal(a, b)
    assert iou(a, gt) > 0.6


def test_identity_is_the_input() -> None:
    gt = _disk()
    assert np.array_equal(identity(gt, np.random.default_rng(0)), gt)


def test_lowres_segmenter_loses_thin_parts_and_worsens_with_the_factor() -> None:
    gt = _disk()
    gt[10:190, 20:23] = True  # a 3-px pole
    ious = []
    for f in (4.0, 16.0):
        out = [lowres_segmenter(gt, np.random.default_rng(k), factor=f) for k in range(6)]
        ious.append(np.mean([iou(o, gt) for o in out]))
        if f == 16.0:
            assert all(not o[15:30, 15:28].all() for o in out)  # the pole is gone or broken
    assert ious[0] > ious[1]


def test_sam_like_errors_stay_near_the_boundary() -> None:
    gt = _disk()
    for k in range(5):
        out = sam_like(gt, np.random.default_rng(k), offset=2.0, p_thin=0, p_speck=0, p_hole=0)
        wrong = out != gt
        assert wrong.any()
        # bias up to 1 px plus noise of std 2 px (the cubic interpolation of N(0, 1) cells can
        # overshoot a little): every error lies within 12 px of the true boundary
        assert _boundary_distance(gt)[wrong].max() <= 12
        assert iou(out, gt) > 0.9


def test_sam_like_speck_adds_foreground_near_the_object() -> None:
    gt = _disk()
    out = sam_like(gt, np.random.default_rng(1), offset=0.5, p_thin=0, p_speck=1, p_hole=0)
    n, _ = cv2.connectedComponents(out.astype(np.uint8))
    clean = sam_like(gt, np.random.default_rng(1), offset=0.5, p_thin=0, p_speck=0, p_hole=0)
    assert (out & ~clean).sum() > 0


def test_polygon_outline_lies_within_its_tolerance() -> None:
    gt = _disk()
    out = polygon_outline(gt, np.random.default_rng(0), tolerance=3.0)
    contours, _ = cv2.findContours(out.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    # straight segments: the rasterised outline needs fewer vertices at 1 px than the disk's own
    # (20 for this disk)
    disk, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    n_out, n_disk = (len(cv2.approxPolyDP(c[0], 1.0, True)) for c in (contours, disk))
    assert 5 < n_out < n_disk
    assert _boundary_distance(gt)[out != gt].max() <= 3.0 + 1.5


def test_polygon_outline_keeps_holes() -> None:
    gt = _disk()
    gt[95:106, 95:106] = False
    out = polygon_outline(gt, np.random.default_rng(0), tolerance=1.0)
    assert not out[100, 100] and out[100, 80]


def test_brush_outline_covers_the_object_and_fills_narrow_gaps() -> None:
    gt = _disk()
    gt[:, 98:102] = False  # a 4 px gap
    out = brush_outline(gt, np.random.default_rng(0), radius=6)
    assert out[gt].all()
    assert out[100, 98:102].all()


def test_sample_coarse_draws_every_family_of_the_mix() -> None:
    gt = _disk(96, 30)
    seen = {sample_coarse(gt, np.random.default_rng(k))[1] for k in range(80)}
    assert seen == set(FAMILIES)
    with pytest.raises(ValueError, match="unknown coarse family"):
        sample_coarse(gt, np.random.default_rng(0), family="nope")


def test_sam_like_survives_an_object_that_the_offset_removes() -> None:
    # a 2-px object under a large inward bias: nothing is left for the thin-part step
    gt = np.zeros((40, 40), bool)
    gt[20:22, 20:22] = True
    for k in range(20):
        out = sam_like(gt, np.random.default_rng(k), offset=6.0, p_thin=1, p_speck=1, p_hole=1)
        assert out.shape == gt.shape
