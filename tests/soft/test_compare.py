from __future__ import annotations

import numpy as np
import pytest

from finecut.soft.compare import match_layers, matting_energy, object_layers, opacity


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


# ------------------------------------------------------------------------------ object_layers


def _stripes(h: int = 10, w: int = 10, k: int = 2) -> np.ndarray:
    """k hard layers, vertical stripes of equal width (the last takes the remainder)."""
    cols = np.minimum(np.arange(w) // (w // k), k - 1)
    return np.eye(k)[np.broadcast_to(cols, (h, w))]


def test_object_layers_known_iou() -> None:
    layers = _stripes()  # layer 0: columns 0-4, layer 1: columns 5-9
    mask = np.zeros((10, 10), bool)
    mask[:, :7] = True
    found = object_layers(layers, mask)
    assert found.layer.indices == (0,)
    assert found.layer.iou == pytest.approx(50 / 70)
    assert found.layer.soft_iou == pytest.approx(50 / 70)
    # both layers together cover everything: 70 / 100 < 50 / 70, so the "pair" stays one layer
    assert found.pair == found.layer
    assert found.layer.alpha_error is None and found.layer.cut_error is None
    # the mask read as 0/255 uint8 is the same mask
    assert object_layers(layers, mask.astype(np.uint8) * 255) == found


def test_object_layers_pair_finds_a_split_object() -> None:
    layers = np.zeros((8, 12, 4))
    layers[:4, :6, 2] = 1.0  # the object's top half
    layers[4:, :6, 0] = 1.0  # its bottom half
    layers[:, 6:9, 1] = 1.0
    layers[:, 9:, 3] = 1.0
    mask = np.zeros((8, 12), bool)
    mask[:, :6] = True
    found = object_layers(layers, mask)
    assert found.layer.iou == pytest.approx(0.5)
    assert found.layer.indices in ((0,), (2,))
    assert found.pair.indices == (0, 2)
    assert found.pair.iou == pytest.approx(1.0)
    assert found.pair.soft_iou == pytest.approx(1.0)


def test_object_layers_union_reaches_past_one_half() -> None:
    # three layers share the object at 1/3 each: no single layer cuts it, two together do
    layers = np.zeros((6, 6, 4))
    layers[:, :3, :3] = 1.0 / 3.0
    layers[:, 3:, 3] = 1.0
    mask = np.zeros((6, 6), bool)
    mask[:, :3] = True
    found = object_layers(layers, mask)
    assert found.layer.iou == 0.0
    assert found.layer.soft_iou == pytest.approx(1.0 / 3.0)
    assert found.pair.indices == (0, 1)
    assert found.pair.iou == pytest.approx(1.0)
    assert found.pair.soft_iou == pytest.approx(2.0 / 3.0)


def test_object_layers_alpha_errors_of_a_soft_edge() -> None:
    ramp = np.array([1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0])
    layer0 = np.broadcast_to(ramp, (2, 10))
    layers = np.dstack([layer0, 1.0 - layer0])
    truth = layer0.copy()
    found = object_layers(layers, truth > 0.5, alpha=truth)
    assert found.layer.indices == (0,)
    assert found.layer.iou == pytest.approx(1.0)
    assert found.layer.soft_iou == pytest.approx(4.4 / (5.0 + 0.6))
    assert found.layer.alpha_error == pytest.approx(0.0)
    # the cut (columns 0-4) is off by 0.2, 0.4, 0.4, 0.2 in columns 3-6
    assert found.layer.cut_error == pytest.approx(1.2 / 10)
    band = np.zeros((2, 10), bool)
    band[:, 3:7] = True
    in_band = object_layers(
        layers, truth > 0.5, alpha=(truth * 255).round().astype(np.uint8), region=band
    )
    assert in_band.layer.alpha_error == pytest.approx(0.0, abs=1e-3)
    assert in_band.layer.cut_error == pytest.approx(1.2 / 4, abs=1e-3)
    # an alpha that is too soft loses to its own cut
    blurred = object_layers(
        np.dstack([layer0 * 0.5 + 0.25, 0.75 - layer0 * 0.5]), truth > 0.5, alpha=truth
    )
    assert blurred.layer.alpha_error > blurred.layer.cut_error


def test_object_layers_pair_never_below_layer() -> None:
    rng = np.random.default_rng(3)
    for seed in range(5):
        layers = _layers(seed, k=5)
        mask = rng.random((10, 12)) > 0.6
        found = object_layers(layers, mask)
        assert found.pair.iou >= found.layer.iou
        assert 1 <= len(found.pair.indices) <= 2


def test_object_layers_bad_input() -> None:
    layers = _stripes()
    mask = np.ones((10, 10), bool)
    with pytest.raises(ValueError, match="empty"):
        object_layers(layers, ~mask)
    with pytest.raises(ValueError, match=r"mask must be \(H, W\)"):
        object_layers(layers, mask[:5])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        object_layers(layers, mask, alpha=np.full((10, 10), 1.5))
    with pytest.raises(ValueError, match=r"alpha must be \(H, W\)"):
        object_layers(layers, mask, alpha=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="region is empty"):
        object_layers(layers, mask, alpha=np.zeros((10, 10)), region=np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        object_layers(layers[..., 0], mask)
