from __future__ import annotations

import numpy as np
import pytest

from finecut.soft.compare import match_layers, matting_energy, opacity


def _layers(seed: int = 0, k: int = 4) -> np.ndarray:
    a = np.random.default_rng(seed).random((10, 12, k)) ** 4
    return a / a.sum(2, keepdims=True)


def test_match_layers_finds_the_permutation() -> None:
    a = _layers()
    mae, pairs = match_layers(a, a[..., [2, 0, 3, 1]])
    assert mae == pytest.approx(0.0)
    assert sorted(pairs) == [(0, 1), (1, 3), (2, 0), (3, 2)]


def test_match_layers_counts_unmatched_layers() -> None:
    a = _layers(k=2)
    three = np.concatenate([a * 0.5, a[..., :1] * 0.0 + 0.5], axis=2)  # an extra layer
    mae, pairs = match_layers(a, three)
    # matched: |a - a/2| = a/2 summed -> 0.5 per pixel; unmatched extra layer: 0.5 per pixel
    assert mae == pytest.approx((0.5 + 0.5) / 3)
    assert len(pairs) == 2
    with pytest.raises(ValueError, match="differ in size"):
        match_layers(a, a[:5])


def test_opacity_and_energy() -> None:
    hard = np.eye(3)[np.random.default_rng(1).integers(0, 3, (8, 9))]
    assert opacity(hard) == 1.0
    assert opacity(np.full((8, 9, 4), 0.25)) == 0.25
    image = np.random.default_rng(2).random((8, 9, 3))
    assert matting_energy(np.ones((8, 9, 1)), image) == pytest.approx(0.0, abs=1e-9)
    assert matting_energy(hard, image) > 0
