from __future__ import annotations

import numpy as np
import pytest

from finecut.soft._kmeans import weighted_kmeans
from finecut.soft.affinities import (
    color_affinity,
    compute_superpixels,
    matting_affinity,
    semantic_affinity,
)
from finecut.soft.compare import opacity
from finecut.soft.eigen import smallest_eigenvectors
from finecut.soft.laplacian import pixel_laplacian
from finecut.soft.sparsify import (
    _solve_coupled,
    constrained_sparsification,
    image_gradient,
    relaxed_sparsification,
    sparsity_power,
)
from tests.soft._synthetic import blocks

H, W = 16, 20


@pytest.fixture(scope="module")
def problem():
    image, feats, labels = blocks(H, W, noise=0.03, seed=2)
    spx = compute_superpixels(image, n_segments=20)
    lap = pixel_laplacian(
        matting_affinity(image), semantic_affinity(spx, feats), color_affinity(spx, image), spx
    )
    values, vectors = smallest_eigenvectors(lap, 12)
    return image, feats, labels, lap, values, vectors


def test_solve_coupled_matches_dense_solve() -> None:
    rng = np.random.default_rng(0)
    k, e = 4, 5

    def spd() -> np.ndarray:
        a = rng.standard_normal((e, e))
        return a @ a.T + e * np.eye(e)

    blocks_ = np.stack([spd() for _ in range(k)])
    shared = spd()
    rhs, shared_rhs = rng.standard_normal((k, e)), rng.standard_normal(e)
    full = np.kron(np.ones((k, k)), shared)
    for i in range(k):
        full[i * e : (i + 1) * e, i * e : (i + 1) * e] += blocks_[i]
    expected = np.linalg.solve(full, (rhs + shared_rhs).ravel()).reshape(k, e)
    np.testing.assert_allclose(_solve_coupled(blocks_, shared, rhs, shared_rhs), expected)


def test_constrained_sums_to_one_and_finds_the_blocks(problem) -> None:
    _, feats, labels, _, values, vectors = problem
    init, _ = weighted_kmeans(feats.reshape(-1, 3), 4, seed=0)
    segments = constrained_sparsification(vectors, values, init, n_iter=20)
    assert segments.shape[0] == H * W and 1 <= segments.shape[1] <= 4
    np.testing.assert_allclose(segments.sum(1), 1.0, atol=1e-8)
    assert opacity(segments.reshape(H, W, -1)) > 0.9
    for k in range(segments.shape[1]):  # every segment sits in one block
        per_block = [segments[labels.ravel() == b, k].clip(0).sum() for b in range(4)]
        assert max(per_block) > 0.9 * sum(per_block)


def test_constrained_prunes_and_handles_one_segment(problem) -> None:
    _, _, _, _, values, vectors = problem
    rng = np.random.default_rng(1)
    init = rng.integers(0, 30, H * W)  # 30 random salt-and-pepper segments: most vanish
    segments = constrained_sparsification(vectors, values, init, n_iter=20)
    assert segments.shape[1] < 30
    np.testing.assert_allclose(segments.sum(1), 1.0, atol=1e-8)
    ones = constrained_sparsification(vectors, values, np.zeros(H * W, int), n_iter=5)
    assert np.array_equal(ones, np.ones((H * W, 1)))


def test_constrained_with_unit_mass_equals_no_mass(problem) -> None:
    _, feats, _, _, values, vectors = problem
    init, _ = weighted_kmeans(feats.reshape(-1, 3), 4, seed=0)
    a = constrained_sparsification(vectors, values, init, n_iter=6)
    b = constrained_sparsification(vectors, values, init, n_iter=6, mass=np.ones(H * W))
    np.testing.assert_allclose(a, b)


def _blurred_layers(labels: np.ndarray, amount: float) -> np.ndarray:
    import cv2

    hard = np.eye(4)[labels].astype(np.float32)
    soft = cv2.GaussianBlur(hard, (0, 0), amount).reshape(-1, 4).astype(np.float64)
    return soft / soft.sum(1, keepdims=True)


def test_relaxed_thresholds_and_renormalises() -> None:
    alphas = np.array([[0.05, 0.45, 0.5], [0.95, 0.05, 0.0], [0.3, 0.3, 0.4], [0.0, 0.0, 0.0]])
    lap = np.zeros((4, 4))
    out = relaxed_sparsification(alphas, lap, n_outer=0, final_cg_iter=0)
    expected = np.array(
        [[0, 0.45 / 0.95, 0.5 / 0.95], [1, 0, 0], [0.3, 0.3, 0.4], [1 / 3, 1 / 3, 1 / 3]]
    )
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize("precondition", [False, True])
def test_relaxed_keeps_sum_to_one_and_sparsifies(problem, precondition: bool) -> None:
    image, _, labels, lap, _, _ = problem
    start = _blurred_layers(labels, 2.0)
    out = relaxed_sparsification(
        start, lap, power=sparsity_power(image).ravel(), precondition=precondition
    )
    assert out.shape == start.shape
    assert np.abs(out.sum(1) - 1.0).max() < 1e-3
    assert opacity(out.clip(0, 1).reshape(H, W, 4)) > opacity(start.reshape(H, W, 4))
    hard = out.argmax(1) == labels.ravel()
    assert hard.mean() > 0.95


def test_relaxed_preconditioning_reaches_the_same_solution(problem) -> None:
    _, _, labels, lap, _, _ = problem
    start = _blurred_layers(labels, 1.5)
    kwargs = dict(n_outer=3, cg_iter=2000, final_cg_iter=2000, rtol=1e-10)
    plain = relaxed_sparsification(start, lap, **kwargs)
    pre = relaxed_sparsification(start, lap, precondition=True, **kwargs)
    np.testing.assert_allclose(plain, pre, atol=1e-5)


def test_relaxed_on_basis_coefficients_keeps_means_summing_to_one_and_the_rest_to_zero() -> None:
    from finecut.soft.basis import colour_linear_basis
    from finecut.soft.laplacian import basis_laplacian

    image, feats, labels = blocks(H, W, noise=0.05, seed=4)
    spx = compute_superpixels(image, n_segments=20)
    basis = colour_linear_basis(image, spx, min_std=0.0)
    lap = basis_laplacian(
        matting_affinity(image), semantic_affinity(spx, feats), color_affinity(spx, image), basis
    )
    start = (basis.matrix.T @ _blurred_layers(labels, 2.0)) / basis.mass[:, None]
    values = basis.is_value
    # no steps: only the value rows are thresholded and renormalised
    untouched = relaxed_sparsification(start, lap, n_outer=0, final_cg_iter=0, values=values)
    np.testing.assert_array_equal(untouched[~values], start[~values])
    np.testing.assert_allclose(untouched[values].sum(1), 1.0)
    out = relaxed_sparsification(start, lap, mass=basis.mass, precondition=True, values=values)
    assert np.abs(out[values].sum(1) - 1.0).max() < 1e-3
    assert np.abs(out[~values].sum(1)).max() < 1e-3
    pixels = basis.to_pixels(out)
    assert np.abs(pixels.sum(1) - 1.0).max() < 1e-2
    assert (pixels.argmax(1) == labels.ravel()).mean() > 0.95
    with pytest.raises(ValueError, match="values must be"):
        relaxed_sparsification(start, lap, values=values[:-1])


def test_relaxed_with_mass_checks_shapes() -> None:
    with pytest.raises(ValueError, match="lap must be"):
        relaxed_sparsification(np.ones((5, 2)) / 2, np.eye(4))


def test_image_gradient_of_a_ramp() -> None:
    slope = 0.01
    ramp = np.tile(slope * np.arange(40.0)[None, :, None], (30, 1, 3))
    grad = image_gradient(ramp)
    assert grad.shape == (30, 40)
    # Farid-Simoncelli taps differentiate a ramp exactly away from the border
    np.testing.assert_allclose(grad[:, 8:-8], np.sqrt(3) * slope, rtol=1e-3)
    assert image_gradient(np.full((10, 10, 3), 0.3)).max() < 1e-12
    power = sparsity_power(ramp * 50)
    assert power.min() >= 0.9 and power.max() <= 1.0 + 1e-12
    np.testing.assert_allclose(power[:, 8:-8], 1.0)
