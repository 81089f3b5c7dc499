from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pymatting import cf_laplacian
from scipy.special import erf

from finecut.soft.affinities import (
    Superpixels,
    color_affinity,
    compute_superpixels,
    lift_to_centroids,
    matting_affinity,
    semantic_affinity,
)
from finecut.soft.laplacian import laplacian
from tests.soft._synthetic import blocks


def _quadrants(h: int = 8, w: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy >= h // 2) * 2 + (xx >= w // 2)


def test_superpixels_from_labels_facts() -> None:
    labels = _quadrants() * 7 + 3  # any integers: renumbered 0..3
    spx = Superpixels.from_labels(labels)
    assert spx.count == 4
    assert set(np.unique(spx.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(spx.sizes, [20, 20, 20, 20])
    np.testing.assert_allclose(spx.centroids[0], [1.5, 2.0])
    np.testing.assert_allclose(spx.centroids[3], [5.5, 7.0])
    # 8-connected: the two diagonal quadrant pairs touch at the centre
    assert spx.edges.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    p = spx.assignment()
    assert p.shape == (80, 4) and np.all(np.asarray(p.sum(1)) == 1)
    means = spx.means(np.dstack([spx.labels.astype(float)]))
    np.testing.assert_allclose(means[:, 0], [0, 1, 2, 3])
    centre = spx.centroid_pixels()
    assert spx.labels.ravel()[centre].tolist() == [0, 1, 2, 3]


def test_compute_superpixels_follows_colour_blocks() -> None:
    image, _, labels = blocks(32, 48, noise=0.0)
    spx = compute_superpixels(image, n_segments=16)
    assert 4 <= spx.count <= 40
    # every superpixel lies inside one block
    for i in range(spx.count):
        assert len(np.unique(labels[spx.labels == i])) == 1


def test_matting_affinity_is_pymatting_laplacian() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((9, 11, 3))
    w = matting_affinity(image)
    assert w.shape == (99, 99)
    assert abs(w - w.T).max() < 1e-9
    assert np.all(w.diagonal() == 0)
    ref = cf_laplacian(image, epsilon=1e-7, radius=1)
    assert abs(laplacian(w) - ref).max() < 1e-8
    # 5x5 neighbourhood support: pixels two apart share a window, three apart do not
    assert w[0, 2] != 0 and w[0, 3] == 0


def test_semantic_affinity_sign() -> None:
    labels = _quadrants()
    spx = Superpixels.from_labels(labels)
    feats = np.zeros((8, 10, 3))
    feats[labels == 1] = (0.05, 0.0, 0.0)  # close to quadrant 0
    feats[labels == 2] = (1.0, 0.0, 0.0)  # far
    feats[labels == 3] = (0.0, 0.15, 0.0)  # exactly at the erf centre: 1 - 0.15 - 0.85 = 0
    w = semantic_affinity(spx, feats).toarray()
    assert w[0, 1] == pytest.approx(erf(20 * 0.1)) and w[0, 1] > 0.99
    assert w[0, 2] == pytest.approx(erf(20 * (1 - 1 - 0.85))) and w[0, 2] < -0.99
    assert w[0, 3] == pytest.approx(0.0, abs=1e-12)
    assert np.array_equal(w, w.T) and np.all(np.diag(w) == 0)


def test_semantic_affinity_only_between_neighbours() -> None:
    labels = np.repeat(np.arange(4)[None, :], 3, axis=0).repeat(3, axis=1)  # 4 vertical strips
    spx = Superpixels.from_labels(labels)
    w = semantic_affinity(spx, np.zeros((3, 12, 3)))
    assert sp.triu(w).nnz == 3  # strips 0-1, 1-2, 2-3


def test_color_affinity_distance_limit_and_range() -> None:
    h, w = 20, 100
    labels = np.repeat(np.arange(10)[None, :], h, axis=0).repeat(10, axis=1)  # strips 0.1 apart
    spx = Superpixels.from_labels(labels)
    image = np.full((h, w, 3), 0.5)
    image[:, 50:] = (0.5, 0.5, 0.56)  # colour distance 0.06 between the halves
    aff = color_affinity(spx, image).toarray()
    assert np.all((aff >= 0) & (aff <= 1))
    assert aff[0, 1] == pytest.approx((erf(50 * 0.05) + 1) / 2)  # same colour, 0.1 apart
    assert aff[0, 2] > 0.99  # 0.2 apart: at the limit, kept
    assert aff[0, 3] == 0  # 0.3 apart: too far
    assert aff[4, 5] == pytest.approx((erf(50 * (1 - 0.06 - 0.95)) + 1) / 2)
    assert aff[4, 5] < 0.5
    pruned = color_affinity(spx, image, min_affinity=0.5).toarray()
    assert pruned[4, 5] == 0 and pruned[0, 1] == aff[0, 1]


def test_lift_to_centroids_puts_affinity_on_centroid_pixels() -> None:
    spx = Superpixels.from_labels(_quadrants())
    w_sp = sp.csr_matrix(np.array([[0, 0.5, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    lifted = lift_to_centroids(w_sp, spx)
    c = spx.centroid_pixels()
    assert lifted.shape == (80, 80) and lifted.nnz == 2
    assert lifted[c[0], c[1]] == 0.5 and lifted[c[1], c[0]] == 0.5
