from __future__ import annotations

import numpy as np

from finecut.soft.affinities import Superpixels, matting_affinity
from finecut.soft.laplacian import laplacian
from finecut.soft.lift import known_mask, lift_to_pixels


def _two_halves(h: int = 20, w: int = 30, edge: int = 13):
    """Dark left / bright right image with the colour edge at column ``edge``; superpixels are
    6-column strips, so the strip holding the edge straddles it."""
    rng = np.random.default_rng(0)
    image = np.where(np.arange(w)[None, :, None] < edge, 0.2, 0.8) * np.ones((h, w, 3))
    image = np.clip(image + 0.01 * rng.standard_normal(image.shape), 0, 1)
    labels = np.broadcast_to(np.arange(w)[None, :] // 6, (h, w))
    return image, Superpixels.from_labels(labels)


def test_known_mask_band_and_confidence() -> None:
    _, spx = _two_halves()
    nodes = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0.6, 0.4]], float)
    known, layer = known_mask(nodes, spx, band=2, confidence=0.8)
    assert np.array_equal(layer[0], [0] * 12 + [1] * 12 + [0] * 6)
    assert known[:, :10].all() and not known[:, 10:14].any()  # band of 2 each side of col 12
    assert not known[:, 24:].any()  # low-confidence strip
    assert known[:, 14:22].all()


def test_lift_follows_the_colour_edge_and_sums_to_one() -> None:
    image, spx = _two_halves()
    # superpixel result: strips 0-1 dark layer, strip 2 (cols 12-17, edge at 13) wrongly bright
    nodes = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], float)
    lap = laplacian(matting_affinity(image))
    out = lift_to_pixels(nodes, spx, lap, band=3, confidence=0.8, rtol=1e-10, maxiter=1000)
    assert out.shape == (600, 2)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-6)
    alpha = out[:, 0].reshape(20, 30)
    assert (alpha[:, 12] > 0.9).all()  # dark pixels of the straddling strip go back to layer 0
    assert (alpha[:, 14] < 0.1).all()
    assert (alpha[:, :9] > 0.99).all() and (alpha[:, 17:] < 0.01).all()
