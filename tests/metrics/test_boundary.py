from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from finecut.metrics import boundary, boundary_f, mask_boundary, mba, mba_radii
from finecut.metrics.boundary import (
    _ellipse_kernel,
    _gradient_band,
    _shares_by_distance_transform,
    _shares_by_kdtree,
)
from tests.metrics.cascadepsp_reference import reference_band, reference_mba


def _square(shape: tuple[int, int], y: int, x: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y : y + side, x : x + side] = True
    return mask


def _blob(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth random mask: thresholded bilinear upsampling of a coarse noise grid."""
    coarse = rng.random((max(2, shape[0] // cells), max(2, shape[1] // cells)))
    return cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_LINEAR) > 0.5


def _masks(seed: int) -> list[np.ndarray]:
    """Hand-made and random gt masks: blobs, noise, lines, single pixels, border-touching."""
    rng = np.random.default_rng(seed)
    out = [
        _blob(rng, (int(rng.integers(8, 160)), int(rng.integers(8, 160))), c) for c in (4, 9, 30)
    ]
    out.append(rng.random((41, 67)) < 0.5)  # every pixel near an edge
    line = np.zeros((60, 50), bool)
    line[:, 17] = True  # thin vertical line touching top and bottom borders
    line[30, :] = True
    out.append(line)
    dots = np.zeros((50, 70), bool)
    dots[[0, 0, 25, 49], [0, 69, 35, 10]] = True  # single pixels in corners, middle, border
    out.append(dots)
    out.append(~dots)
    half = np.zeros((40, 90), bool)
    half[:, :45] = True  # a straight edge reaching the border on both ends
    out.append(half)
    return out


# --- radii -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "radii"),
    [
        (4096, 4096, (1, 6, 11, 16, 22)),  # r_max 27.3
        (600, 600, (1, 1, 2, 2, 3)),  # r_max 4: int(0.6 * i)
        (100, 120, (1, 1, 1, 1, 1)),  # r_max < 1: int truncates toward zero
        (1, 1, (1, 1, 1, 1, 1)),
        # CascadePSP computes (r_max - 1) / 5 * i: at H + W = 3800 that gives 7 for i = 3 where
        # (r_max - 1) * i / 5 (the formula as usually written) would give 8.
        (1900, 1900, (1, 3, 5, 7, 10)),
    ],
)
def test_mba_radii(height: int, width: int, radii: tuple[int, ...]) -> None:
    assert mba_radii(height, width) == radii


# --- the exact speed trick ---------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1, 2, 3, 6, 11, 16, 22, 35, 60])
def test_kernel_shell_bounds_hold_for_the_cv2_ellipse(radius: int) -> None:
    k = _ellipse_kernel(radius)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2).astype(bool)
    span = radius + 2
    dy, dx = np.mgrid[-span : span + 1, -span : span + 1]
    length_sq = dy * dy + dx * dx
    member = np.zeros_like(length_sq, dtype=bool)
    member[2:-2, 2:-2] = kernel
    assert member[length_sq <= k.inner_sq].all()  # everything this short is in the kernel
    assert (length_sq[member] <= k.outer_sq).all()  # nothing in the kernel is longer
    assert k.inner_sq == radius * radius and k.outer_sq <= radius * radius + radius
    shell = member & (length_sq > k.inner_sq)
    assert sorted(map(tuple, k.shell.tolist())) == sorted(
        zip(dy[shell].tolist(), dx[shell].tolist(), strict=True)
    )


def test_cv2_precise_distance_transform_is_exact_euclidean() -> None:
    # The fast path relies on cv2.DIST_MASK_PRECISE giving exact distances (rounded squares).
    rng = np.random.default_rng(3)
    for mask in [_blob(rng, (90, 130), 7), rng.random((64, 80)) < 0.97]:
        cv_dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        exact_sq = ndimage.distance_transform_edt(mask) ** 2
        np.testing.assert_array_equal(np.rint(cv_dist.astype(np.float64) ** 2), np.rint(exact_sq))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_band_equals_cv2_morphological_gradient(seed: int) -> None:
    for gt in _masks(seed):
        for radius in (1, 2, 3, 5, 8, 13):
            expected = reference_band(gt.astype(np.uint8), radius)
            np.testing.assert_array_equal(
                _gradient_band(gt, radius), expected, err_msg=f"r={radius}"
            )


# --- mBA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mba_equals_cascadepsp_reference_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for gt in _masks(seed):
        for pred in (gt ^ (rng.random(gt.shape) < 0.2), _blob(rng, gt.shape, 6), ~gt):
            expected = reference_mba(pred, gt)
            assert mba(pred, gt) == expected  # same counts, same float operations


@pytest.mark.parametrize("shape", [(700, 500), (1000, 900)])  # radii up to 3 and 5
def test_mba_equals_reference_with_larger_radii(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    gt = _blob(rng, shape, 60)
    gt[:5, :] = True  # a region touching the border
    pred = cv2.dilate(gt.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    pred ^= rng.random(shape) < 0.05
    assert mba(pred, gt) == reference_mba(pred, gt)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 2), (2, 400)])
def test_mba_equals_reference_on_degenerate_shapes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(10):
        gt, pred = rng.random(shape) < 0.5, rng.random(shape) < 0.5
        fast, expected = mba(pred, gt), reference_mba(pred, gt)
        assert fast == expected or (math.isnan(fast) and math.isnan(expected))


def test_mba_perfect_prediction_is_one() -> None:
    gt = _blob(np.random.default_rng(5), (300, 400), 40)
    assert mba(gt, gt) == 1.0
    assert mba(gt.astype(np.uint8) * 255, gt.astype(np.float32)) == 1.0


def test_mba_all_background_against_a_square_by_hand() -> None:
    # 600x600 image: r_max = 4, radii (1, 1, 2, 2, 3). A 10x10 square (n = 10) far from the
    # border; predicting all background is right exactly on the band's background pixels.
    #   r = 1 (cross): fg ring of width 1 (4n - 4 = 36), bg: 4n = 40 side pixels -> 40 / 76.
    #   r = 2 (rows |dy| <= 1 span |dx| <= 2, dy = +-2 spans dx = 0): fg ring of width 2
    #     (n^2 - (n-4)^2 = 64); bg: 2 rows on each side (8n = 80) plus 2 per corner, the ones
    #     at offset (1, 1) and (1, 2) from the corner (8) -> 88 / 152.
    #   r = 3 (|dx| <= 3 for |dy| <= 1, <= 2 for |dy| = 2, 0 for |dy| = 3): fg ring width 3
    #     (n^2 - (n-6)^2 = 84); bg: 12n = 120 plus per corner 3 + 2 = 5 (20) -> 140 / 224.
    n = 10
    gt = _square((600, 600), 200, 300, n)
    pred = np.zeros_like(gt)
    by_hand = (2 * 40 / 76 + 2 * 88 / 152 + 140 / 224) / 5
    assert mba(pred, gt) == pytest.approx(by_hand, abs=1e-12)
    assert reference_mba(pred, gt) == pytest.approx(by_hand, abs=1e-12)
    assert mba(~gt, gt) == 0.0


def test_mba_small_image_uses_radius_one_everywhere() -> None:
    gt = _square((50, 60), 10, 10, 20)
    pred = _square((50, 60), 11, 10, 20)  # shifted down by one row
    band = reference_band(gt.astype(np.uint8), 1)
    expected = np.count_nonzero((pred == gt) & band) / np.count_nonzero(band)
    assert mba(pred, gt) == pytest.approx(expected, abs=1e-15)


def test_mba_is_nan_when_gt_has_one_class() -> None:
    empty = np.zeros((30, 40), bool)
    assert math.isnan(mba(empty, empty))
    assert math.isnan(mba(empty, ~empty))
    assert math.isnan(reference_mba(empty, empty))


def test_mba_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"got pred \(30, 40\) and gt \(40, 30\)"):
        mba(np.zeros((30, 40), bool), np.zeros((40, 30), bool))
    with pytest.raises(ValueError, match=r"shape \(H, W\), got pred and gt of shape \(2, 3, 4\)"):
        mba(np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool))


# --- boundary F --------------------------------------------------------------------------------


def test_mask_boundary_is_the_inner_four_connected_edge() -> None:
    square = _square((12, 12), 3, 3, 5)
    edge = mask_boundary(square)
    assert edge.sum() == 4 * 5 - 4
    assert not edge[4:7, 4:7].any() and edge[3, 3:8].all()
    # The image border is not a boundary.
    assert not mask_boundary(np.ones((5, 5), bool)).any()
    top = np.zeros((6, 6), bool)
    top[:2] = True
    np.testing.assert_array_equal(
        mask_boundary(top), np.pad(np.ones((1, 6), bool), ((1, 4), (0, 0)))
    )


def _brute_force_f(pred: np.ndarray, gt: np.ndarray, tolerance: float) -> float:
    p = np.argwhere(mask_boundary(pred)).astype(float)
    g = np.argwhere(mask_boundary(gt)).astype(float)
    dist = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    precision = (dist.min(1) <= tolerance + 1e-9).mean()
    recall = (dist.min(0) <= tolerance + 1e-9).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_boundary_f_of_a_square_shifted_by_one_pixel() -> None:
    # Both edges have 4n - 4 pixels; at tolerance 0 they share the top and bottom rows minus one
    # pixel each (2n - 2), so P = R = 1/2. Every edge pixel is 1 px from the other edge.
    n = 12
    gt = _square((40, 40), 10, 10, n)
    pred = _square((40, 40), 10, 11, n)
    assert boundary_f(pred, gt, tolerance=0) == pytest.approx(0.5)
    assert boundary_f(pred, gt, tolerance=1) == 1.0
    diagonal = _square((40, 40), 11, 11, n)
    assert boundary_f(diagonal, gt, tolerance=1) < 1.0  # the corner is sqrt(2) away
    assert boundary_f(diagonal, gt, tolerance=math.sqrt(2)) == 1.0  # inclusive


def test_boundary_f_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    for cells in (3, 6, 12):
        gt = _blob(rng, (48, 56), cells)
        pred = _blob(rng, (48, 56), cells) | gt & (rng.random(gt.shape) < 0.9)
        assert mask_boundary(gt).any() and mask_boundary(pred).any()
        for tolerance in (0, 1, math.sqrt(2), 2.5, 4):
            expected = _brute_force_f(pred, gt, tolerance)
            assert boundary_f(pred, gt, tolerance) == pytest.approx(expected, abs=1e-12)
            # Both exact matchers (boundary_f picks one by edge density) give the same shares.
            pred_edge, gt_edge = mask_boundary(pred), mask_boundary(gt)
            by_dt = _shares_by_distance_transform(pred_edge, gt_edge, tolerance)
            assert _shares_by_kdtree(pred_edge, gt_edge, tolerance) == by_dt


def test_boundary_f_sparse_edges_on_a_large_image() -> None:
    # 2000x2000, a 1200 px square shifted down by 3 rows: few edge pixels, so boundary_f takes
    # the k-d tree path. Each edge has 4 * 1199 = 4796 pixels. At tolerance 2, of the shifted
    # edge: top row 3 pixels at each end (0, 1, 2 px from gt's side columns; the rest is 3 px
    # from gt's top row), bottom row none (3 px below gt's bottom row, sqrt(10) from its
    # corners), side columns all 2 * 1198 (on gt's side columns, the last two rows 1 and 2 px
    # past gt's corner): P = 2402 / 4796. By symmetry R is the same. At tolerance 3 all match.
    gt = _square((2000, 2000), 300, 400, 1200)
    pred = _square((2000, 2000), 303, 400, 1200)
    assert 2 * 4796 < 2000 * 2000 * boundary._KDTREE_MAX_EDGE_SHARE
    pred_edge, gt_edge = mask_boundary(pred), mask_boundary(gt)
    share = 2402 / 4796
    assert _shares_by_kdtree(pred_edge, gt_edge, 2) == (share, share)
    assert _shares_by_distance_transform(pred_edge, gt_edge, 2) == (share, share)
    assert boundary_f(pred, gt, tolerance=2) == pytest.approx(share)
    assert boundary_f(pred, gt, tolerance=3) == 1.0


def test_boundary_f_empty_cases_and_default_tolerance() -> None:
    empty = np.zeros((20, 20), bool)
    square = _square((20, 20), 5, 5, 6)
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(~empty, ~empty) == 1.0  # full masks have no boundary either
    assert boundary_f(empty, square) == 0.0
    assert boundary_f(square, empty) == 0.0
    # DAVIS default: ceil(0.008 * hypot(480, 854)) = ceil(7.84) = 8 px; an 8 px shift matches.
    gt = _square((480, 854), 100, 100, 200)
    shifted = _square((480, 854), 100, 108, 200)
    assert boundary_f(shifted, gt) == boundary_f(shifted, gt, tolerance=8) == 1.0
    assert boundary_f(shifted, gt, tolerance=7) < 1.0
    assert boundary_f(_square((480, 854), 100, 109, 200), gt) < 1.0


def test_boundary_f_checks_arguments() -> None:
    square = _square((20, 20), 5, 5, 6)
    with pytest.raises(ValueError, match="tolerance must be a finite number of pixels >= 0"):
        boundary_f(square, square, tolerance=-1)
    with pytest.raises(ValueError, match=r"got pred \(20, 20\) and gt \(20, 21\)"):
        boundary_f(square, np.zeros((20, 21), bool))
