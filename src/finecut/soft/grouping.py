"""Grouping of soft segments into layers (Aksoy et al., SIGGRAPH 2018, section 3.4;
official ``groupSegments.m``): k-means on each segment's alpha-weighted mean feature, then the
segments of one cluster are added up.

Every segment counts alike in the k-means by default, as in the official code (MATLAB's
unweighted ``kmeans``); ``weighting="mass"`` weights each by its total alpha mass instead, so that
a large segment is not outvoted by many small ones. Measured on DUTS-TR hold-out images
(``docs/benchmarks.md``), the unweighted grouping gives small objects a layer of their own more
often and was better. finecut takes the best of several seeded restarts (the official code: one
replicate), so runs are reproducible.
"""

from __future__ import annotations

import logging

import numpy as np

from finecut.soft._kmeans import weighted_kmeans

log = logging.getLogger(__name__)

__all__ = ["WEIGHTINGS", "group_segments", "segment_features"]

#: Segment weightings of the grouping k-means (see :func:`group_segments`).
WEIGHTINGS = ("mass", "sqrt", "uniform")


def segment_features(
    segments: np.ndarray, features: np.ndarray, mass: np.ndarray | None = None
) -> np.ndarray:
    """Alpha-weighted mean feature of every segment: ``sum_p a_pk f_p / sum_p a_pk``.

    Negative alphas (the constrained step can overshoot) count as 0 here.

    Shape:
        - segments: (N, K).
        - features: (N, F).
        - mass: (N,) or None.
        - output: (K, F).
    """
    weights = np.maximum(segments, 0.0)
    if mass is not None:
        weights = weights * mass[:, None]
    totals = weights.sum(0)
    return (weights.T @ features) / np.maximum(totals, 1e-12)[:, None]


def _layers(segments: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    return np.stack([segments[:, groups == g].sum(1) for g in range(n_groups)], axis=1)


def _fix_weak(
    segments: np.ndarray,
    seg_features: np.ndarray,
    seg_weights: np.ndarray,
    groups: np.ndarray,
    min_peak: float,
    seed: int,
) -> np.ndarray:
    """Replace layers whose max alpha is below ``min_peak`` (they would empty out in the relaxed
    step): the weakest layer's segments join the layer of the nearest mean feature, and the
    heaviest layer of two or more segments is split in two (2-means on its segments' features)
    to take the freed place. Kept only while the weakest peak improves; at most one round per
    layer."""
    n_groups = int(groups.max()) + 1
    for _ in range(n_groups):
        peaks = np.clip(_layers(segments, groups, n_groups), 0.0, 1.0).max(0)
        weak = int(peaks.argmin())
        if peaks[weak] >= min_peak:
            break
        weak_members = groups == weak
        centres = np.stack([seg_features[groups == g].mean(0) for g in range(n_groups)])
        dist = np.linalg.norm(centres - centres[weak], axis=1)
        dist[weak] = np.inf
        receiver = int(dist.argmin())
        counts = np.bincount(groups, minlength=n_groups)
        mass = np.bincount(groups, weights=seg_weights, minlength=n_groups)
        mass[(counts < 2) | (np.arange(n_groups) == weak)] = -1.0
        target = int(mass.argmax())
        if mass[target] < 0:
            break
        members = np.flatnonzero(groups == target)
        halves, half_centres = weighted_kmeans(
            seg_features[members], 2, weights=seg_weights[members], seed=seed
        )
        if halves.max() < 1:
            break
        new = groups.copy()
        new[members[halves == 1]] = weak
        if receiver == target:  # the weak segments join the nearer half
            nearer = np.linalg.norm(half_centres - centres[weak], axis=1).argmin()
            receiver = weak if nearer == 1 else target
        new[weak_members] = receiver
        new_peaks = np.clip(_layers(segments, new, n_groups), 0.0, 1.0).max(0)
        if new_peaks.min() <= peaks[weak]:
            break
        log.debug(
            "grouping: weak layer (peak %.2f) re-split, now %.2f", peaks[weak], new_peaks.min()
        )
        groups = new
    return groups


def group_segments(
    segments: np.ndarray,
    features: np.ndarray,
    n_layers: int = 5,
    *,
    mass: np.ndarray | None = None,
    n_init: int = 10,
    min_peak: float = 0.5,
    seed: int = 0,
    weighting: str = "uniform",
) -> tuple[np.ndarray, np.ndarray]:
    """Merge K soft segments into ``n_layers`` layers by k-means on their mean features.

    A layer whose max alpha is below ``min_peak`` would vanish in the relaxed sparsification
    (alphas below 0.1 are zeroed first); such a layer is merged into its nearest neighbour and the
    heaviest remaining group is split in two instead, so the count stays ``n_layers`` when the
    segments allow it. Fewer layers come back when there are fewer segments (or fewer distinct
    mean features) than ``n_layers``; every returned layer holds at least one segment.

    Shape:
        - segments: (N, K) soft segments (rows sum to one).
        - features: (N, F) features of the nodes.
        - mass: (N,) node masses or None.
        - output: layers (N, L) with L = min(n_layers, K'), the layer of every segment (K,).

    Args:
        segments: the segments.
        features: the features.
        n_layers: number of layers wanted.
        mass: node masses (superpixel sizes) or None.
        n_init: k-means restarts.
        min_peak: layers whose max alpha is below this are re-split (0 disables).
        seed: k-means seed.
        weighting: each segment's weight in the k-means: ``"uniform"`` (every segment alike, the
            official code and the default: small segments, such as those of a small object, pull
            a centre as hard as large ones), ``"mass"`` (its alpha mass) or ``"sqrt"`` (the
            square root of it). The re-split of weak layers uses the same weights.

    Returns:
        ``(layers, segment_group)``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    segments = np.asarray(segments, dtype=np.float64)
    seg_features = segment_features(segments, np.asarray(features, dtype=np.float64), mass)
    weights = np.maximum(segments, 0.0)
    if mass is not None:
        weights = weights * mass[:, None]
    seg_weights = weights.sum(0)
    if weighting == "sqrt":
        seg_weights = np.sqrt(seg_weights)
    elif weighting == "uniform":
        seg_weights = np.ones_like(seg_weights)
    groups, _ = weighted_kmeans(
        seg_features, n_layers, weights=seg_weights, n_init=n_init, seed=seed
    )
    if min_peak > 0 and groups.max() > 0:
        groups = _fix_weak(segments, seg_features, seg_weights, groups, min_peak, seed)
    n_groups = int(groups.max()) + 1
    if n_groups < n_layers:
        log.info("grouping: %d segments make only %d layers", segments.shape[1], n_groups)
    return _layers(segments, groups, n_groups), groups
