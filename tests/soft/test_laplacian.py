from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from finecut.soft.affinities import (
    Superpixels,
    color_affinity,
    compute_superpixels,
    matting_affinity,
    semantic_affinity,
)
from finecut.soft.laplacian import laplacian, pixel_laplacian, superpixel_laplacian
from tests.soft._synthetic import blocks


def _graph(h: int = 16, w: int = 20):
    image, feats, _ = blocks(h, w, noise=0.05, seed=1)
    spx = compute_superpixels(image, n_segments=12)
    return (
        image,
        spx,
        matting_affinity(image),
        semantic_affinity(spx, feats),
        color_affinity(spx, image),
    )


def test_laplacian_of_random_affinity() -> None:
    rng = np.random.default_rng(0)
    a = sp.random(30, 30, density=0.2, random_state=1)
    w = a + a.T
    lap = laplacian(w)
    np.testing.assert_allclose(np.asarray(lap.sum(1)).ravel(), 0, atol=1e-12)
    assert abs(lap - lap.T).max() == 0
    x = rng.standard_normal(30)
    # x^T L x = 1/2 sum_ij w_ij (x_i - x_j)^2
    dense = w.toarray()
    expected = 0.5 * (dense * (x[:, None] - x[None, :]) ** 2).sum()
    np.testing.assert_allclose(x @ lap @ x, expected)


def test_pixel_laplacian_rows_symmetry_and_psd() -> None:
    _, spx, w_m, w_s, w_c = _graph()
    lap = pixel_laplacian(w_m, w_s, w_c, spx)
    n = spx.labels.size
    assert lap.shape == (n, n)
    np.testing.assert_allclose(np.asarray(lap.sum(1)).ravel(), 0, atol=1e-8)
    assert abs(lap - lap.T).max() < 1e-9
    # matting + nonnegative colour affinity: positive semidefinite
    psd = pixel_laplacian(w_m, 0 * w_s, w_c, spx).toarray()
    assert np.linalg.eigvalsh(psd).min() > -1e-8
    # the constant vector is in the null space of the full L
    assert abs(lap @ np.ones(n)).max() < 1e-8


def test_negative_semantic_affinity_lowers_the_energy_of_a_cut() -> None:
    image, spx, w_m, w_s, w_c = _graph()
    assert w_s.min() < 0  # the blocks have different features
    with_sem = pixel_laplacian(w_m, w_s, w_c, spx)
    without = pixel_laplacian(w_m, 0 * w_s, w_c, spx)
    cut = np.isin(spx.labels, np.unique(spx.labels[:, : image.shape[1] // 2])).ravel() * 1.0
    assert cut @ with_sem @ cut < cut @ without @ cut


def test_superpixel_laplacian_is_the_galerkin_projection() -> None:
    image, feats, _ = blocks(16, 20, noise=0.05, seed=1)
    yy, xx = np.mgrid[0:16, 0:20]
    spx = Superpixels.from_labels((yy // 4) * 5 + xx // 4)  # 4x4 tiles: centroids inside
    w_m, w_s, w_c = (
        matting_affinity(image),
        semantic_affinity(spx, feats),
        color_affinity(spx, image),
    )
    lap_sp = superpixel_laplacian(w_m, w_s, w_c, spx)
    lap_px = pixel_laplacian(w_m, w_s, w_c, spx)
    assert lap_sp.shape == (20, 20)
    np.testing.assert_allclose(np.asarray(lap_sp.sum(1)).ravel(), 0, atol=1e-8)
    assert abs(lap_sp - lap_sp.T).max() < 1e-9
    rng = np.random.default_rng(2)
    p = spx.assignment()
    for _ in range(3):
        x = rng.standard_normal(spx.count)
        np.testing.assert_allclose((p @ x) @ lap_px @ (p @ x), x @ lap_sp @ x, rtol=1e-9)
