from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from finecut.models.crm import CRM, CRMConfig
from finecut.refine.inference import InferenceConfig, refine_probability

# Random-init models on tiny images: these tests run beside a training job on 2 cores.


@pytest.fixture(scope="module")
def model() -> CRM:
    """A random CRM whose head is not the identity: its last layer is random, not zero.

    (An untrained ``coarse_skip`` model returns the coarse mask exactly, which would make every
    comparison below trivially true.)
    """
    torch.manual_seed(0)
    net = CRM(CRMConfig(), pretrained=False)
    with torch.no_grad():
        net.mlp[-1].weight.normal_(0.0, 1.0)
    return net.eval()


def _scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured image with a bright ellipse, and a coarse (shifted, polygonal) mask of it."""
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    centre, axes = (w // 2, h // 2), (w // 4, h // 4)
    cv2.ellipse(image, centre, axes, 0, 0, 360, (220, 200, 180), -1)
    coarse = np.zeros((h, w), np.uint8)
    box = np.array(
        [
            [w // 4 + 2, h // 4 - 3],
            [3 * w // 4, h // 4 + 1],
            [3 * w // 4 + 3, 3 * h // 4],
            [w // 4 - 2, 3 * h // 4 + 2],
        ],
        np.int32,
    )
    cv2.fillPoly(coarse, [box], 1)
    return image, coarse.astype(bool)


def test_output_is_a_probability_of_the_image_size(model: CRM) -> None:
    image, coarse = _scene(77, 101)
    prob = refine_probability(model, image, coarse, InferenceConfig(min_side=8))
    assert prob.shape == (77, 101)
    assert prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0
    # the random head really moves the boundary (otherwise the comparisons below prove little)
    assert ((prob > 0.5) != coarse).any()


@pytest.mark.parametrize("size", [(77, 101), (33, 95), (96, 40)])
def test_odd_sizes_keep_their_shape(model: CRM, size) -> None:
    image, coarse = _scene(*size, seed=1)
    cfg = InferenceConfig(scales=(0.5, 1.0), min_side=8)
    prob = refine_probability(model, image, coarse, cfg)
    assert prob.shape == size and prob.dtype == np.float32


def test_chunk_size_does_not_change_the_result(model: CRM) -> None:
    image, coarse = _scene(64, 80)
    cfg = InferenceConfig(scales=(0.5, 1.0), min_side=16)
    ref = refine_probability(model, image, coarse, cfg)
    chunked = refine_probability(
        model, image, coarse, InferenceConfig(scales=(0.5, 1.0), min_side=16, chunk=37)
    )
    np.testing.assert_allclose(chunked, ref, atol=1e-5, rtol=0)


def test_band_covering_everything_equals_full_query(model: CRM) -> None:
    image, coarse = _scene(64, 80, seed=2)
    base = {"scales": (0.25, 0.5, 1.0), "min_side": 8}
    full = refine_probability(model, image, coarse, InferenceConfig(**base, full_query=True))
    band = refine_probability(
        model, image, coarse, InferenceConfig(**base, band_cells=1e6, uncertainty=1.0)
    )
    np.testing.assert_allclose(band, full, atol=1e-6, rtol=0)


def test_band_without_sentinels_leaves_far_pixels_alone(model: CRM) -> None:
    image, coarse = _scene(64, 80, seed=3)
    cfg = InferenceConfig(scales=(1.0,), sentinel_cells=0)
    prob = refine_probability(model, image, coarse, cfg)
    full = refine_probability(model, image, coarse, InferenceConfig(scales=(1.0,), full_query=True))
    far = _far_from_boundary(coarse, radius=cfg.band_cells * 2 + 1)
    assert far.any()
    np.testing.assert_array_equal(prob[far], coarse[far].astype(np.float32))
    # pixels in the band are the network's answer, the same one full_query gives there
    near = ~far & (np.abs(prob - coarse) > 0)
    assert near.any()
    np.testing.assert_allclose(prob[near], full[near], atol=1e-5)


def test_sentinels_find_a_change_far_from_the_band(model: CRM) -> None:
    """Where the full query flips a region away from the boundary, the sentinels catch it."""
    import copy

    # a head biased to background: the full query empties the whole object, interior included
    biased = copy.deepcopy(model)
    with torch.no_grad():
        biased.mlp[-1].bias.fill_(-50.0)
    image, coarse = _scene(64, 80, seed=3)
    base = InferenceConfig(scales=(1.0,), sentinel_cells=0)
    full_cfg = InferenceConfig(scales=(1.0,), full_query=True)
    full = refine_probability(biased, image, coarse, full_cfg)
    far = _far_from_boundary(coarse, radius=base.band_cells * 2 + 1)
    flipped_far = far & ((full > 0.5) != coarse)
    assert flipped_far.sum() > 20  # something far from the band to catch
    plain = refine_probability(biased, image, coarse, base)
    with_sentinels = refine_probability(
        biased, image, coarse, InferenceConfig(scales=(1.0,), sentinel_cells=1.0)
    )
    # without sentinels none of those pixels change; with them all do, to the full query's value
    assert ((plain > 0.5) == coarse)[flipped_far].all()
    assert ((with_sentinels > 0.5) == (full > 0.5))[flipped_far].all()
    # every value the sentinels add is the network's answer there, as full_query gives it
    changed = with_sentinels != plain
    assert changed.any()
    np.testing.assert_allclose(with_sentinels[changed], full[changed], atol=1e-5)
    # and a model that changes nothing far away gets no extra queries: the output is the same
    same = refine_probability(model, image, coarse, InferenceConfig(scales=(1.0,)))
    far_flip = far & ((refine_probability(model, image, coarse, base) > 0.5) != (same > 0.5))
    assert not far_flip.any()


def _far_from_boundary(mask: np.ndarray, radius: float) -> np.ndarray:
    m = mask.astype(np.uint8)
    dist = np.maximum(
        cv2.distanceTransform(m, cv2.DIST_L2, 3), cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    )
    return dist > radius


def test_tiling(model: CRM) -> None:
    h, w = 96, 128
    image, coarse = _scene(h, w, seed=4)
    coarse[:] = False
    coarse[30:62, 36:70] = True  # an object that touches a few of the 3 x 4 tiles only
    cfg = InferenceConfig(scales=(1.0,), tile_area=64, tile=32, margin=16, sentinel_cells=0)
    encoded: list[tuple[int, int]] = []
    encode = model.encode

    def counting_encode(img, msk):
        encoded.append(tuple(img.shape[-2:]))
        return encode(img, msk)

    model.encode = counting_encode  # instance attribute: shadows the method for this test only
    try:
        prob = refine_probability(model, image, coarse, cfg)
    finally:
        del model.encode
    assert prob.shape == (h, w) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    # one encode per tile holding band pixels; never the whole image; each tile is at most
    # tile + 2 * margin (padded to a multiple of 32)
    assert 1 < len(encoded) < (h // 32) * (w // 32)
    assert all(eh <= 64 and ew <= 64 for eh, ew in encoded)
    far = _far_from_boundary(coarse, radius=cfg.band_cells * 2 + 1)
    np.testing.assert_array_equal(prob[far], coarse[far].astype(np.float32))
    # tiles see less context than the whole image, but the answer stays close to it
    whole = refine_probability(
        model, image, coarse, InferenceConfig(scales=(1.0,), sentinel_cells=0)
    )
    assert np.abs(prob - whole).max() < 0.05


@pytest.mark.parametrize(
    ("min_side", "expected"),
    [
        (48, ["scale 0.5", "scale 1"]),  # short side 96: 12 and 24 px are below 48
        (12, ["scale 0.125", "scale 0.25", "scale 0.5", "scale 1"]),
        (1000, ["scale 1"]),  # the last scale always runs
    ],
)
def test_min_side_skips_small_scales(model: CRM, min_side: int, expected: list[str]) -> None:
    image, coarse = _scene(96, 128, seed=5)
    names: list[str] = []
    cfg = InferenceConfig(min_side=min_side)
    prob = refine_probability(model, image, coarse, cfg, progress=names.append)
    assert names == expected
    assert prob.shape == (96, 128)


def test_model_is_put_in_eval_mode() -> None:
    torch.manual_seed(0)
    net = CRM(CRMConfig(), pretrained=False).train()
    image, coarse = _scene(32, 40)
    prob = refine_probability(net, image, coarse, InferenceConfig(scales=(1.0,)))
    assert not net.training
    # untrained coarse_skip model: the coarse mask comes back
    np.testing.assert_array_equal(prob > 0.5, coarse)


def _band_reference(prob: np.ndarray, radius: int, uncertainty: float) -> np.ndarray:
    """The band by whole-image distance transforms (what the cropped version must equal)."""
    hard = (prob > 0.5).astype(np.uint8)
    d_in = cv2.distanceTransform(hard, cv2.DIST_L2, 3)
    d_out = cv2.distanceTransform(1 - hard, cv2.DIST_L2, 3)
    return (np.maximum(d_in, d_out) <= radius) | (np.abs(prob - 0.5) < uncertainty)


@pytest.mark.parametrize("radius", [1, 3, 12, 40, 96, 200])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_band_mask_equals_the_whole_image_distance_transform(radius: int, seed: int) -> None:
    from finecut.refine.inference import _band_mask

    rng = np.random.default_rng(seed)
    h, w = 420, 330
    prob = np.zeros((h, w), np.float32)
    # a box with long straight sides (the chamfer distance runs 4.5% short along an axis), an
    # ellipse, a blob touching the border, soft values, a lone pixel
    prob[300:340, 120:240] = 1.0
    cv2.ellipse(prob, (120, 250), (40, 25), 15, 0, 360, 0.9, -1)
    cv2.circle(prob, (int(rng.integers(0, w)), 0), int(rng.integers(5, 30)), 0.7, -1)
    prob[rng.integers(0, h), rng.integers(0, w)] = 1.0
    prob[rng.random((h, w)) < 0.01] = 0.45
    np.testing.assert_array_equal(_band_mask(prob, radius, 0.4), _band_reference(prob, radius, 0.4))
    box = np.zeros((h, w), np.float32)
    box[300:340, 100:240] = 1.0  # alone: its straight top side is the bounding box's
    np.testing.assert_array_equal(_band_mask(box, radius, 0.4), _band_reference(box, radius, 0.4))
    empty = np.zeros((h, w), np.float32)
    np.testing.assert_array_equal(
        _band_mask(empty, radius, 0.4), _band_reference(empty, radius, 0.4)
    )
    full = np.ones((h, w), np.float32)
    np.testing.assert_array_equal(_band_mask(full, radius, 0.4), _band_reference(full, radius, 0.4))


def test_points_are_grouped_by_tile_in_order() -> None:
    from finecut.refine.inference import _by_tile, _tiles

    rng = np.random.default_rng(0)
    hs, ws = 300, 500
    cfg = InferenceConfig(tile_area=1000, tile=64)
    ty, tx = rng.integers(0, hs, 5000), rng.integers(0, ws, 5000)
    groups = _by_tile((ty, tx), hs, ws, cfg)
    tiles = list(_tiles(hs, ws, cfg))
    assert len(groups) == len(tiles)
    for group, ((y0, y1, x0, x1), _) in zip(groups, tiles, strict=True):
        inside = np.flatnonzero((ty >= y0) & (ty < y1) & (tx >= x0) & (tx < x1))
        np.testing.assert_array_equal(group, inside)
    whole = _by_tile((ty, tx), hs, ws, InferenceConfig())
    assert len(whole) == 1
    np.testing.assert_array_equal(whole[0], np.arange(5000))
