from __future__ import annotations

import numpy as np
import pytest

from finecut.soft.affinities import (
    Superpixels,
    color_affinity,
    compute_superpixels,
    matting_affinity,
    semantic_affinity,
)
from finecut.soft.basis import colour_linear_basis
from finecut.soft.laplacian import basis_laplacian, laplacian, superpixel_laplacian
from tests.soft._synthetic import blocks


def _textured(h: int = 24, w: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([yy, xx, 0.5 * (yy + xx)], axis=2)
    return np.clip(0.2 + 0.6 * base + 0.05 * rng.standard_normal((h, w, 3)), 0.0, 1.0)


def test_columns_are_orthogonal_with_the_superpixel_size_as_mass() -> None:
    image = _textured()
    spx = compute_superpixels(image, n_segments=20)
    basis = colour_linear_basis(image, spx, min_std=0.0)
    gram = (basis.matrix.T @ basis.matrix).toarray()
    np.testing.assert_allclose(gram, np.diag(basis.mass), atol=1e-8 * basis.mass.max())
    assert basis.count == spx.count
    np.testing.assert_array_equal(basis.mass[: spx.count], spx.sizes)
    np.testing.assert_array_equal(basis.mass, spx.sizes[basis.owner])
    assert basis.is_value.sum() == spx.count and basis.is_value[: spx.count].all()
    # a textured image keeps all three colour directions of (almost) every superpixel
    assert basis.size > 3.5 * spx.count


def test_a_constant_coefficient_is_the_superpixel_mean_of_the_function() -> None:
    image = _textured(seed=3)
    spx = compute_superpixels(image, n_segments=15)
    basis = colour_linear_basis(image, spx, min_std=0.0)
    coeffs = np.random.default_rng(1).standard_normal((basis.size, 2))
    pixels = basis.to_pixels(coeffs)
    np.testing.assert_allclose(spx.means(pixels), coeffs[: spx.count], atol=1e-10)
    np.testing.assert_allclose(basis.to_pixels(basis.constant()[:, None]), 1.0)


def test_any_function_affine_in_colour_per_superpixel_is_in_the_span() -> None:
    image = _textured(seed=4)
    spx = compute_superpixels(image, n_segments=10)
    basis = colour_linear_basis(image, spx, min_std=0.0)
    rng = np.random.default_rng(5)
    slopes = rng.standard_normal((spx.count, 3))
    offsets = rng.standard_normal(spx.count)
    lab = spx.labels.ravel()
    target = (image.reshape(-1, 3) * slopes[lab]).sum(1) + offsets[lab]
    # orthogonal columns: the least-squares coefficients are P^T t / mass
    coeffs = (basis.matrix.T @ target) / basis.mass
    np.testing.assert_allclose(basis.to_pixels(coeffs), target, atol=1e-9)


def test_flat_superpixels_get_no_colour_function() -> None:
    image, _, labels = blocks(16, 16, noise=0.0)
    spx = Superpixels.from_labels(labels)
    assert colour_linear_basis(image, spx).size == spx.count  # four flat blocks: constants only
    noisy, _, _ = blocks(16, 16, noise=0.005, seed=2)
    assert colour_linear_basis(noisy, spx, min_std=0.02).size == spx.count  # noise is below
    assert colour_linear_basis(noisy, spx, min_std=0.0).size == 4 * spx.count


def test_basis_laplacian_is_the_galerkin_projection_and_extends_the_superpixel_one() -> None:
    image = _textured(16, 20, seed=6)
    feats = blocks(16, 20)[1]
    yy, xx = np.mgrid[0:16, 0:20]
    spx = Superpixels.from_labels((yy // 4) * 5 + xx // 4)
    w_m, w_s, w_c = (
        matting_affinity(image),
        semantic_affinity(spx, feats),
        color_affinity(spx, image),
    )
    basis = colour_linear_basis(image, spx, min_std=0.0)
    lap = basis_laplacian(w_m, w_s, w_c, basis)
    assert lap.shape == (basis.size, basis.size)
    assert abs(lap - lap.T).max() < 1e-9
    lap_sp = superpixel_laplacian(w_m, w_s, w_c, spx)
    coarse = laplacian(0.01 * w_s + 0.01 * w_c)
    matting = laplacian(w_m)
    rng = np.random.default_rng(7)
    for _ in range(3):
        x = rng.standard_normal(basis.size)
        pixels = basis.to_pixels(x)
        expected = pixels @ matting @ pixels + x[: spx.count] @ coarse @ x[: spx.count]
        np.testing.assert_allclose(x @ lap @ x, expected, rtol=1e-9)
        x[spx.count :] = 0.0  # constants only: the superpixel graph's energy
        np.testing.assert_allclose(x @ lap @ x, x[: spx.count] @ lap_sp @ x[: spx.count], rtol=1e-9)
    np.testing.assert_allclose(lap @ basis.constant(), 0.0, atol=1e-9)


def test_a_soft_edge_inside_a_superpixel_costs_little_on_the_basis() -> None:
    """Why the basis exists: a ramp that follows the colour is cheap for the matting Laplacian
    and the basis holds it exactly, where superpixel constants can only step."""
    h, w = 12, 24
    ramp = np.clip((np.arange(w) - 8) / 8.0, 0.0, 1.0)  # soft edge over 8 px
    alpha = np.broadcast_to(ramp, (h, w))
    fg, bg = np.array([0.9, 0.3, 0.2]), np.array([0.1, 0.4, 0.8])
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    spx = Superpixels.from_labels(np.broadcast_to(np.arange(w) // 12, (h, w)))  # two halves
    basis = colour_linear_basis(image, spx)
    coeffs = (basis.matrix.T @ alpha.ravel()) / basis.mass
    np.testing.assert_allclose(basis.to_pixels(coeffs).reshape(h, w), alpha, atol=1e-9)
    matting = laplacian(matting_affinity(image, eps=1e-7))
    steps = spx.assignment() @ np.array([0.0, 1.0])  # the best superpixel-constant cut
    assert alpha.ravel() @ matting @ alpha.ravel() < 1e-3 * (steps @ matting @ steps)


def test_mismatched_sizes_are_refused() -> None:
    image = _textured()
    spx = compute_superpixels(image[:10], n_segments=5)
    with pytest.raises(ValueError, match="differ in size"):
        colour_linear_basis(image, spx)
