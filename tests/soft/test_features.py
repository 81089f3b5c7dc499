from __future__ import annotations

import numpy as np
import pytest

from finecut.refine.baselines import guided_filter
from finecut.soft.features import (
    fallback_features,
    guided_filter_channels,
    pca_features,
    preprocess_features,
)


def _smooth_field(rng: np.random.Generator, h: int, w: int, d: int) -> np.ndarray:
    import cv2

    coarse = rng.standard_normal((max(2, h // 8), max(2, w // 8), d)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, d)


def test_guided_filter_channels_equals_single_channel_filter() -> None:
    rng = np.random.default_rng(0)
    guide = rng.random((23, 31, 3))
    src = 3.0 * rng.standard_normal((23, 31, 37))  # more channels than one chunk
    out = guided_filter_channels(guide, src, radius=3, eps=0.01)
    ref = np.dstack([guided_filter(guide, src[..., i], 3, 0.01) for i in range(37)])
    assert out.shape == src.shape
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_guided_filter_channels_keeps_constants_and_checks_shapes() -> None:
    rng = np.random.default_rng(1)
    guide = rng.random((16, 16, 3))
    out = guided_filter_channels(guide, np.full((16, 16, 2), 2.5), radius=2, eps=0.01)
    np.testing.assert_allclose(out, 2.5, atol=1e-5)
    with pytest.raises(ValueError, match=r"guide must be \(H, W, 3\)"):
        guided_filter_channels(guide[..., :2], np.zeros((16, 16, 1)))
    with pytest.raises(ValueError, match=r"src must be \(H, W, D\)"):
        guided_filter_channels(guide, np.zeros((15, 16, 1)))


def test_pca_features_range_and_first_axis() -> None:
    rng = np.random.default_rng(2)
    h, w = 20, 30
    t = np.linspace(0.0, 1.0, h * w).reshape(h, w)
    # one dominant direction (1, 1, 0, 0, 0) carrying a ramp, small noise elsewhere
    feats = np.zeros((h, w, 5))
    feats[..., 0] = feats[..., 1] = 10.0 * t
    feats += 0.01 * rng.standard_normal(feats.shape)
    out = pca_features(feats, 3)
    assert out.shape == (h, w, 3)
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    assert abs(np.corrcoef(out[..., 0].ravel(), t.ravel())[0, 1]) > 0.999


def test_pca_features_fewer_channels_and_constant() -> None:
    ramp = np.linspace(0, 1, 12).reshape(3, 4, 1)
    out = pca_features(ramp, 3)
    assert out.shape == (3, 4, 3)
    np.testing.assert_allclose(out[..., 0], ramp[..., 0])
    assert np.all(out[..., 1:] == 0)
    assert np.all(pca_features(np.ones((4, 4, 6)), 3) == 0)  # constant: no NaN


def test_preprocess_clips_before_filtering() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((16, 16, 3))
    spiked = rng.standard_normal((16, 16, 4))
    spiked[3, 3, 0] = 1e6  # a network blow-up: clipped to 5 before anything else
    out = preprocess_features(spiked, image)
    np.testing.assert_allclose(out, preprocess_features(np.minimum(spiked, 5.0), image))
    assert out.shape == (16, 16, 3) and out.min() >= 0.0 and out.max() <= 1.0


def test_filter_dims_projection_matches_full_filtering() -> None:
    rng = np.random.default_rng(4)
    h, w = 40, 48
    image = rng.random((h, w, 3))
    low = _smooth_field(rng, h, w, 6)
    raw = low @ rng.standard_normal((6, 64)) + 0.05 * rng.standard_normal((h, w, 64))
    full = preprocess_features(raw, image)
    projected = preprocess_features(raw, image, filter_dims=12)
    for c in range(3):  # PCA signs are arbitrary
        if np.corrcoef(full[..., c].ravel(), projected[..., c].ravel())[0, 1] < 0:
            projected[..., c] = 1.0 - projected[..., c]
    assert np.abs(full - projected).max() < 1e-3


def test_fallback_features_shape() -> None:
    image = np.random.default_rng(5).random((10, 14, 3))
    feats = fallback_features(image)
    assert feats.shape == (10, 14, 5)
    assert np.isfinite(feats).all()
    assert feats[..., 3].max() == pytest.approx(0.5 * 13 / 14)
