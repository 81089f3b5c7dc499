"""Band-restricted closed-form matting: pymatting's system, built for the unknown rows only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from finecut.refine.band_matting import band_system, solve_band_alpha
from finecut.refine.baselines import make_trimap

pymatting = pytest.importorskip("pymatting")


def _scene(h: int = 60, w: int = 80, band: int = 4, seed: int = 0):
    """A noisy two-colour disk (touching the right border) and the trimap of a shifted guess."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    cv2.circle(truth, (w - 20, h // 2), h // 3, 1, -1)
    cv2.rectangle(truth, (w - 6, 5), (w - 1, 20), 1, -1)  # a part cut by the image border
    image = np.where(truth[..., None] > 0, (200, 170, 70), (40, 60, 100)).astype(np.float64)
    image = np.clip(image + rng.normal(0, 18, image.shape), 0, 255).astype(np.uint8)
    trimap = make_trimap(np.roll(truth, 2, axis=1) > 0, band)
    return image, trimap


@pytest.mark.parametrize(("epsilon", "band", "seed"), [(1e-3, 4, 0), (1e-5, 3, 1), (1e-7, 6, 2)])
def test_alpha_equals_pymatting(epsilon: float, band: int, seed: int) -> None:
    image, trimap = _scene(band=band, seed=seed)
    reference = pymatting.estimate_alpha_cf(
        image / 255.0, trimap, laplacian_kwargs={"epsilon": epsilon}, cg_kwargs={"rtol": 1e-12}
    )
    alpha = solve_band_alpha(image, trimap, epsilon, rtol=1e-12)
    assert alpha.dtype == np.float32 and alpha.shape == trimap.shape
    np.testing.assert_allclose(alpha, reference, atol=1e-5)


def test_system_is_pymattings_laplacian_rows() -> None:
    """L_UU and -L_UK a_K equal the rows pymatting's whole-image Laplacian has for U."""
    image, trimap = _scene()
    laplacian = pymatting.cf_laplacian(image / 255.0, epsilon=1e-4)
    unknown = (trimap == 0.5).ravel()
    fg = (trimap == 1.0).ravel().astype(np.float64)
    system = band_system(image, trimap, 1e-4)
    np.testing.assert_array_equal(system.unknown, np.flatnonzero(unknown))
    rows = laplacian[unknown]
    np.testing.assert_allclose(
        system.matrix.toarray(), rows[:, unknown].toarray(), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(system.rhs, -(rows @ fg), rtol=1e-9, atol=1e-9)
    assert abs(system.matrix - system.matrix.T).max() < 1e-12


def test_float_image_and_chunking_give_the_same_system() -> None:
    image, trimap = _scene()
    whole = band_system(image, trimap, 1e-3)
    chunked = band_system(image.astype(np.float64) / 255.0, trimap, 1e-3, chunk=7)
    np.testing.assert_allclose(chunked.matrix.toarray(), whole.matrix.toarray(), atol=1e-12)
    np.testing.assert_allclose(chunked.rhs, whole.rhs, atol=1e-12)


def test_one_sided_components_get_a_constant_or_the_fallback() -> None:
    """A band part that touches only background solves to 0, only foreground to 1, none to 0.5."""
    image = np.full((40, 60, 3), 128, np.uint8)
    trimap = np.zeros((40, 60))
    trimap[5:8, 5:25] = 0.5  # unknown strip in background
    trimap[20:40, 30:60] = 1.0
    trimap[28:31, 40:55] = 0.5  # unknown strip inside foreground
    alpha = solve_band_alpha(image, trimap, 1e-3)
    np.testing.assert_array_equal(alpha[5:8, 5:25], 0.0)
    np.testing.assert_array_equal(alpha[28:31, 40:55], 1.0)
    fallback = np.full(trimap.shape, 0.7, np.float32)
    kept = solve_band_alpha(image, trimap, 1e-3, fallback=fallback)
    np.testing.assert_allclose(kept[5:8, 5:25], 0.7)
    np.testing.assert_allclose(kept[28:31, 40:55], 0.7)
    everything = solve_band_alpha(image[:10, :10], np.full((10, 10), 0.5), 1e-3)
    np.testing.assert_array_equal(everything, 0.5)


def test_no_unknown_pixels_returns_the_trimap() -> None:
    trimap = np.zeros((10, 12))
    trimap[:, 6:] = 1.0
    np.testing.assert_array_equal(solve_band_alpha(np.zeros((10, 12, 3)), trimap, 1e-3), trimap)


def test_start_guess_changes_iterations_not_the_answer() -> None:
    image, trimap = _scene(seed=3)
    cold = solve_band_alpha(image, trimap, 1e-3, rtol=1e-10)
    warm = solve_band_alpha(image, trimap, 1e-3, rtol=1e-10, x0=np.full(trimap.shape, 0.5))
    np.testing.assert_allclose(warm, cold, atol=1e-6)


def test_image_of_another_size_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        band_system(np.zeros((5, 5, 3)), np.full((6, 5), 0.5), 1e-3)
