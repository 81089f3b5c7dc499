"""Edge snapping: matting in a thin band moves a nearly-right boundary onto the image edge."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from finecut.metrics import iou
from finecut.refine.baselines import make_trimap
from finecut.refine.snap import snap_band, snap_schedule, snap_to_edges


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


def test_snapping_solves_pymattings_system_in_the_band() -> None:
    """One pass is closed-form matting of the band's trimap, as pymatting solves it."""
    pymatting = pytest.importorskip("pymatting")
    image, _, guess = _disk_scene(shift=2)
    trimap = make_trimap(guess > 0.5, 3)
    reference = pymatting.estimate_alpha_cf(
        image / 255.0, trimap, laplacian_kwargs={"epsilon": 1e-3}, cg_kwargs={"rtol": 1e-10}
    )
    alpha = snap_to_edges(image, guess, band=3, epsilon=1e-3)
    assert np.abs(alpha - reference).max() < 0.01
    np.testing.assert_array_equal(alpha > 0.5, reference > 0.5)


@pytest.mark.parametrize(
    ("band", "passes", "expected"),
    [(8, 3, (8, 4, 1)), (4, 3, (4, 2, 1)), (2, 3, (2, 1, 1)), (5, 1, (5,)), (16, 2, (16, 1))],
)
def test_snap_schedule_halves_to_one_pixel(band: int, passes: int, expected: tuple) -> None:
    assert snap_schedule(band, passes) == expected


@pytest.mark.parametrize(("band", "passes"), [(0, 3), (4, 0)])
def test_snap_schedule_rejects_bad_values(band: int, passes: int) -> None:
    with pytest.raises(ValueError):
        snap_schedule(band, passes)


def test_passes_threshold_to_the_last_pass_and_keep_the_first_matte() -> None:
    """Several passes: the mask is the last pass's, the soft values the first's where they agree."""
    image, truth, guess = _disk_scene(shift=3)
    one = snap_to_edges(image, guess, band=4)
    last = snap_to_edges(image, snap_to_edges(image, one, band=2), band=1)
    three = snap_to_edges(image, guess, band=4, passes=3)
    np.testing.assert_array_equal(three > 0.5, last > 0.5)
    same_side = (one > 0.5) == (last > 0.5)
    np.testing.assert_array_equal(three[same_side], one[same_side])
    assert iou(three > 0.5, truth) > 0.99
    assert three.dtype == np.float32 and 0.0 <= three.min() and three.max() <= 1.0


def test_a_band_part_with_one_known_side_keeps_the_probability() -> None:
    """A thin part away from the rest (its band touches no foreground) is kept, not erased."""
    image, truth, guess = _disk_scene(shift=2)
    image = np.pad(image, ((0, 0), (0, 160), (0, 0)), mode="edge")
    prob = np.pad(guess, ((0, 0), (0, 160)))
    prob[40:43, 200:280] = 0.8  # a 3-px line far from the disk: all unknown at band 3
    alpha = snap_to_edges(image, prob, band=3)
    np.testing.assert_allclose(alpha[40:43, 200:280], 0.8, rtol=1e-6)
    assert iou(alpha[:, :128] > 0.5, truth) > 0.99
