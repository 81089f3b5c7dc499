from __future__ import annotations

import numpy as np
import pytest

from finecut.soft._kmeans import weighted_kmeans
from finecut.soft.grouping import group_segments, segment_features


def _segments(n_pixels: int, n_segments: int, seed: int = 0):
    """Hard segments over n_pixels with features clustered around n_segments // 2 centres."""
    rng = np.random.default_rng(seed)
    owner = np.arange(n_pixels) % n_segments
    segments = np.eye(n_segments)[owner]
    centres = rng.random((n_segments, 3))
    features = centres[owner] + 0.001 * rng.standard_normal((n_pixels, 3))
    return segments, features, centres


def test_kmeans_finds_separated_clusters_and_uses_weights() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centres])
    labels, found = weighted_kmeans(x, 3, seed=1)
    assert sorted(np.bincount(labels).tolist()) == [50, 50, 50]
    assert np.abs(np.sort(found, axis=0) - np.sort(centres, axis=0)).max() < 0.1
    # a weighted mean: two points, the heavy one pulls the single centre
    _, centre = weighted_kmeans(np.array([[0.0], [1.0]]), 1, weights=np.array([3.0, 1.0]))
    assert centre[0, 0] == pytest.approx(0.25)


def test_kmeans_never_returns_empty_clusters() -> None:
    x = np.array([[0.0], [0.0], [0.0], [1.0]])
    labels, centres = weighted_kmeans(x, 4)
    assert labels.max() == 1 and len(centres) == 2  # only two distinct points
    assert set(labels.tolist()) == {0, 1}
    labels, _ = weighted_kmeans(np.random.default_rng(1).random((30, 2)), 7, n_init=2)
    assert sorted(set(labels.tolist())) == list(range(7))


def test_segment_features_are_alpha_weighted_means() -> None:
    segments = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    feats = np.array([[0.0], [1.0], [2.0]])
    np.testing.assert_allclose(segment_features(segments, feats), [[1 / 3], [5 / 3]])
    mass = np.array([1.0, 1.0, 3.0])
    np.testing.assert_allclose(segment_features(segments, feats, mass)[1], [(0.5 + 6) / 3.5])


@pytest.mark.parametrize("n_layers", [1, 3, 5])
def test_group_count_and_sum(n_layers: int) -> None:
    segments, features, _ = _segments(400, 12)
    layers, groups = group_segments(segments, features, n_layers)
    assert layers.shape == (400, n_layers)
    assert groups.shape == (12,) and set(groups.tolist()) == set(range(n_layers))
    np.testing.assert_allclose(layers.sum(1), 1.0)
    assert layers.max(0).min() == 1.0  # no empty layer


def test_fewer_segments_than_layers_gives_fewer_layers() -> None:
    segments, features, _ = _segments(100, 3)
    layers, _ = group_segments(segments, features, 5)
    assert layers.shape == (100, 3)


def test_segments_with_close_features_are_grouped() -> None:
    segments, features, _ = _segments(300, 6)
    features[segments[:, 3] == 1] = features[segments[:, 0] == 1][0]
    features[segments[:, 4] == 1] = features[segments[:, 1] == 1][0]
    features[segments[:, 5] == 1] = features[segments[:, 2] == 1][0]
    _, groups = group_segments(segments, features, 3)
    assert groups[0] == groups[3] and groups[1] == groups[4] and groups[2] == groups[5]


def test_weak_layer_is_resplit() -> None:
    # 4 strong segments in two feature clusters, one faint segment far away in feature space:
    # plain k-means with 3 clusters gives the faint one its own (weak) layer.
    n = 500
    segments = np.zeros((n, 5))
    owner = np.arange(n) % 4
    segments[np.arange(n), owner] = 0.9
    segments[:, 4] = 0.1
    seg_feats = np.array([[0, 0], [0.02, 0], [1, 0], [1.02, 0], [5, 5]], float)
    node_features = segments @ seg_feats / segments.sum(1, keepdims=True)
    plain, _ = group_segments(segments, node_features, 3, min_peak=0.0)
    assert plain.max(0).min() < 0.5
    fixed, groups = group_segments(segments, node_features, 3)
    assert fixed.shape == (n, 3)
    assert fixed.max(0).min() >= 0.5
    assert groups[4] in groups[:4]  # the faint segment joined a layer
    assert (
        len(set(groups[:4].tolist())) == 3
    )  # one of the pairs was split    np.testing.assert_allclose(fixed.sum(1), 1.0)


def test_weighting_decides_whether_a_small_distinct_segment_keeps_its_layer() -> None:
    # Two large segments (features 0 and 1) and a small one far from both (feature 5). Weighted
    # by mass, the cheapest 2-means puts the small one with its nearer large one (cost ~159 vs
    # 500); every segment alike, it gets a layer of its own (cost 0.5 vs 8).
    segments = np.eye(3)
    features = np.array([[0.0], [1.0], [5.0]])
    mass = np.array([1000.0, 1000.0, 10.0])
    _, by_mass = group_segments(segments, features, 2, mass=mass, min_peak=0, weighting="mass")
    _, uniform = group_segments(segments, features, 2, mass=mass, min_peak=0)  # the default
    assert by_mass[1] == by_mass[2] != by_mass[0]
    assert uniform[0] == uniform[1] != uniform[2]
    with pytest.raises(ValueError, match="weighting"):
        group_segments(segments, features, 2, mass=mass, weighting="area")
