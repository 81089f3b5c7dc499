"""Edge snapping: matting in a thin band moves a nearly-right boundary onto the image edge."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from finecut.metrics import iou
from finecut.refine.baselines import make_trimap
from finecut.refine.snap import snap_band, snap_to_edges


def _disk_scene(shift: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured bright disk on a dark textured background, its truth, and a shifted guess."""
    rng = np.random.default_rng(0)
    h, w = 96, 128
    truth = np.zeros((h, w), np.uint8)
    cv2.circle(truth, (64, 48), 28, 1, -1)
    image = np.where(truth[..., None] > 0, (220, 180, 60), (30, 50, 90)).astype(np.float64)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    guess = np.roll(truth, shift, axis=1).astype(np.float32)
    return image, truth.astype(bool), cv2.GaussianBlur(guess, (5, 5), 0)


@pytest.mark.parametrize(
    ("h", "w", "expected"), [(300, 400, 4), (30, 40, 2), (4000, 6000, 16), (1200, 1600, 17)]
)
def test_snap_band_scales_and_clips(h: int, w: int, expected: int) -> None:
    assert snap_band(h, w, 0.006, 2, 16 if expected <= 16 else 32) == expected


def test_snap_band_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        snap_band(100, 100, 0.006, 0, 4)
    with pytest.raises(ValueError):
        snap_band(100, 100, 0.006, 5, 4)


def test_snapping_moves_the_boundary_onto_the_edge() -> None:
    image, truth, guess = _disk_scene(shift=2)
    before = iou(guess > 0.5, truth)
    alpha = snap_to_edges(image, guess, band=4)
    after = iou(alpha > 0.5, truth)
    assert before < 0.93
    assert after > 0.99


def test_outside_the_band_the_mask_is_kept_and_alpha_is_a_probability() -> None:
    image, _, guess = _disk_scene(shift=3)
    alpha = snap_to_edges(image, guess, band=3)
    assert alpha.dtype == np.float32 and alpha.shape == guess.shape
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    trimap = make_trimap(guess > 0.5, 3)
    np.testing.assert_array_equal(alpha[trimap == 1.0], 1.0)
    np.testing.assert_array_equal(alpha[trimap == 0.0], 0.0)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_empty_or_full_mask_is_returned(fill: float) -> None:
    image, _, _ = _disk_scene()
    prob = np.full(image.shape[:2], fill, np.float32)
    np.testing.assert_array_equal(snap_to_edges(image, prob, band=4), prob)


def test_object_thinner_than_the_band_is_returned() -> None:
    image, _, _ = _disk_scene()
    prob = np.zeros(image.shape[:2], np.float32)
    prob[40:43, 10:100] = 0.9  # a 3-px line: no definite foreground survives a 4-px band
    np.testing.assert_array_equal(snap_to_edges(image, prob, band=4), prob)


def test_tiles_match_the_single_solve() -> None:
    """Solving in small tiles with margins gives the alpha of one solve over the whole image."""
    image, _, guess = _disk_scene(shift=2)
    whole = snap_to_edges(image, guess, band=3, tile=4096)
    tiled = snap_to_edges(image, guess, band=3, tile=32)
    assert np.abs(whole - tiled).max() < 0.02
    np.testing.assert_array_equal(whole > 0.5, tiled > 0.5)
