"""Tiny synthetic images shared by the soft-segmentation tests."""

from __future__ import annotations

import numpy as np

COLOURS = np.array([(0.9, 0.2, 0.1), (0.1, 0.6, 0.9), (0.2, 0.8, 0.2), (0.9, 0.9, 0.2)])
FEATURES = np.array([(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])


def blocks(h: int = 32, w: int = 48, noise: float = 0.02, seed: int = 0):
    """Four coloured quadrants with one-hot-like features: (image, features, labels).

    Shape: image (h, w, 3) float in [0, 1], features (h, w, 3) in [0, 1], labels (h, w) 0..3.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = (yy >= h // 2) * 2 + (xx >= w // 2)
    image = np.clip(COLOURS[labels] + noise * rng.standard_normal((h, w, 3)), 0.0, 1.0)
    return image, FEATURES[labels].astype(np.float64), labels
