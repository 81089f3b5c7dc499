"""Weighted k-means (Lloyd's iterations, k-means++ seeding, several restarts).

Hand-written because scipy's ``kmeans2`` takes no sample weights and finecut does not depend on
scikit-learn: the fast pipeline clusters superpixels, each standing for its pixel count, and the
grouping clusters soft segments, each weighted by its total alpha. Every cluster is kept
non-empty (an emptied cluster is re-seeded at the point farthest from its centre).
"""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_kmeans"]


def _sq_dist(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _plus_plus(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [x[rng.choice(len(x), p=w / w.sum())]]
    closest = _sq_dist(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        p = w * closest
        idx = rng.choice(len(x), p=p / p.sum()) if p.sum() > 0 else rng.integers(len(x))
        centers.append(x[idx])
        closest = np.minimum(closest, _sq_dist(x, x[idx][None])[:, 0])
    return np.array(centers)


def _lloyd(
    x: np.ndarray, w: np.ndarray, centers: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray, float]:
    k = len(centers)
    labels = np.zeros(len(x), np.int64)
    for it in range(max_iter):
        dist = _sq_dist(x, centers)
        new = dist.argmin(1)
        counts = np.bincount(new, weights=w, minlength=k)
        for empty in np.flatnonzero(counts <= 0):
            # Re-seed an empty cluster at the point worst served by its current centre.
            far = int(dist[np.arange(len(x)), new].argmax())
            new[far] = empty
            dist[far] = 0.0
            counts = np.bincount(new, weights=w, minlength=k)
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        sums = np.stack([np.bincount(labels, w * x[:, j], k) for j in range(x.shape[1])], 1)
        centers = sums / np.maximum(counts, 1e-300)[:, None]
    inertia = float((w * _sq_dist(x, centers)[np.arange(len(x)), labels]).sum())
    return labels, centers, inertia


def weighted_kmeans(
    x: np.ndarray,
    k: int,
    *,
    weights: np.ndarray | None = None,
    n_init: int = 3,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster points into ``min(k, number of distinct points)`` non-empty clusters.

    Shape:
        - x: (N, F).
        - weights: (N,) non-negative with a positive sum, or None (all 1).
        - output: labels (N,) int64 in 0..k'-1 with every label used, centres (k', F).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be (N, F) with N >= 1, got {x.shape}")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.maximum(w, 0.0)
    if w.sum() <= 0:
        w = np.ones(len(x))
    distinct = len(np.unique(x, axis=0))
    k = max(1, min(int(k), distinct))
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, n_init)):
        labels, centers, inertia = _lloyd(x, w, _plus_plus(x, w, k, rng), max_iter)
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia)
    labels, centers, _ = best
    # Renumber so that every label in 0..k'-1 is used (duplicate points can empty a cluster).
    used, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64), centers[used]
