from __future__ import annotations

import cv2
import numpy as np
import pytest

from finecut.errors import ConfigError
from finecut.refine import perturb as P
from finecut.refine.perturb import (
    PerturbConfig,
    add_false_blobs,
    blur_threshold,
    jitter_polygon,
    lowres_upsample,
    perturb_mask,
    punch_holes,
    random_local_morphology,
    random_morphology,
    random_structure,
    remove_thin_parts,
)

TOL = PerturbConfig().iou_tolerance


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / (a | b).sum())


def disk(size: int = 160, radius: int = 50, center: tuple[int, int] | None = None) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, center or (size // 2, size // 2), radius, 1, -1)
    return m.astype(bool)


def star(size: int = 160, points: int = 7) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    r = np.where(np.arange(2 * points) % 2 == 0, 0.45 * size, 0.18 * size)
    poly = np.stack([size / 2 + r * np.cos(t), size / 2 + r * np.sin(t)], 1).astype(np.int32)
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [poly], 1)
    return m.astype(bool)


def comb(size: int = 160) -> np.ndarray:
    """Thin structures: 3-px teeth on a 4-px spine."""
    m = np.zeros((size, size), bool)
    for x in range(20, size - 20, 16):
        m[20 : size - 20, x : x + 3] = True
    m[70:74, 20 : size - 20] = True
    return m


def disk_with_line() -> np.ndarray:
    m = disk(160, 40, (60, 80))
    m[79:81, 100:150] = True  # 2-px-wide line attached to the disk
    return m


def ecssd_mask(shared_data, stem: str = "0001") -> np.ndarray:
    m = cv2.imread(str(shared_data / "ecssd" / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
    assert m is not None
    return m > 127


# ---------------------------------------------------------------------------- perturb_mask


def test_deterministic_given_seed_and_generator():
    m = star()
    a = perturb_mask(m, 7)
    assert np.array_equal(a, perturb_mask(m, 7))
    assert np.array_equal(a, perturb_mask(m, np.random.default_rng(7)))
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(3):  # a generator's state advances, identically for identical generators
        assert np.array_equal(perturb_mask(m, g1), perturb_mask(m, g2))


def test_different_seeds_give_different_masks():
    m = star()
    outs = [perturb_mask(m, seed) for seed in range(8)]
    assert all(o.dtype == np.bool_ and o.shape == m.shape for o in outs)
    assert len({o.tobytes() for o in outs}) == 8


@pytest.mark.parametrize("shape_fn", [disk, star, comb], ids=["disk", "star", "thin"])
def test_reaches_given_target_iou(shape_fn):
    m = shape_fn()
    targets = np.random.default_rng(0).uniform(0.8, 1.0, 40)
    errors = [abs(iou(perturb_mask(m, i, target_iou=t), m) - t) for i, t in enumerate(targets)]
    assert max(errors) <= TOL + 1e-12


def test_reaches_target_on_real_mask(shared_data):
    m = ecssd_mask(shared_data, "0001")
    for i, t in enumerate(np.linspace(0.8, 0.999, 25)):
        out = perturb_mask(m, i, target_iou=float(t))
        assert abs(iou(out, m) - t) <= TOL + 1e-12
        assert out.shape == m.shape


def test_tighter_tolerance_is_honoured(shared_data):
    m = ecssd_mask(shared_data, "0002")
    cfg = PerturbConfig(iou_tolerance=0.002)
    for i, t in enumerate(np.linspace(0.8, 0.99, 10)):
        assert abs(iou(perturb_mask(m, i, cfg, target_iou=float(t)), m) - t) <= 0.002


def test_drawn_targets_cover_the_iou_range():
    m = disk()
    ious = np.array([iou(perturb_mask(m, seed), m) for seed in range(120)])
    assert ious.min() >= 0.8 - TOL and ious.max() <= 1.0
    counts, _ = np.histogram(ious, bins=4, range=(0.8, 1.0))
    assert counts.min() >= 15  # about 30 expected per quarter of U(0.8, 1.0)
    # Each draw is the target the seed's generator produces first, up to the tolerance.
    targets = np.array([np.random.default_rng(seed).uniform(0.8, 1.0) for seed in range(120)])
    assert np.abs(ious - targets).max() <= TOL + 1e-12


def test_custom_iou_range():
    m = star()
    cfg = PerturbConfig(iou_range=(0.6, 0.7))
    ious = [iou(perturb_mask(m, seed, cfg), m) for seed in range(15)]
    assert min(ious) >= 0.6 - TOL and max(ious) <= 0.7 + TOL


def test_tiny_objects_do_not_crash_and_get_the_closest_iou():
    one = np.zeros((32, 32), bool)
    one[5, 5] = True
    out = perturb_mask(one, 0, target_iou=0.9)  # reachable IoUs: 1, 1/2, 0, ...: 1 is closest
    assert np.array_equal(out, one)
    small = disk(40, 3)  # 29 px: one pixel moves the IoU by ~0.03
    for seed in range(10):
        assert abs(iou(perturb_mask(small, seed, target_iou=0.85), small) - 0.85) <= 0.04
    line = np.zeros((64, 64), bool)
    line[30, 4:60] = True  # 1-px line of 56 px
    for seed in range(10):
        assert abs(iou(perturb_mask(line, seed, target_iou=0.9), line) - 0.9) <= 0.02


def test_object_touching_the_border():
    m = np.zeros((100, 100), bool)
    m[:, :45] = True
    m[:, 45:60] = disk(100, 30, (45, 50))[:, 45:60]
    for seed in range(10):
        assert abs(iou(perturb_mask(m, seed, target_iou=0.85), m) - 0.85) <= TOL


def test_work_follows_the_object_not_the_image():
    m = disk(300, 12)
    padded = np.pad(m, 60)
    for seed in range(5):
        out, out_padded = perturb_mask(m, seed), perturb_mask(padded, seed)
        assert np.array_equal(out_padded[60:-60, 60:-60], out)
        assert not out_padded[:60].any() and not out_padded[-60:].any()


@pytest.mark.parametrize("value", [False, True])
def test_empty_and_full_masks_are_returned_unchanged(value):
    m = np.full((30, 40), value)
    out = perturb_mask(m, 0)
    assert out.dtype == np.bool_ and np.array_equal(out, m)
    assert np.array_equal(perturb_mask(m.astype(np.uint8) * 255, 1, target_iou=0.8), m)


def test_target_one_returns_the_ground_truth():
    m = star()
    assert np.array_equal(perturb_mask(m, 0, target_iou=1.0), m)


def test_uint8_input_equals_bool_input():
    m = star()
    out = perturb_mask(m, 11)
    assert np.array_equal(perturb_mask(m.astype(np.uint8) * 255, 11), out)
    assert np.array_equal(perturb_mask(m.astype(np.uint8), 11), out)
    assert perturb_mask(m.astype(np.uint8) * 255, 11).dtype == np.bool_


def test_non_contiguous_input():
    m = star(161)
    flipped = m[:, ::-1]
    assert not flipped.flags.c_contiguous
    assert np.array_equal(perturb_mask(flipped, 4), perturb_mask(flipped.copy(), 4))
    strided = np.repeat(np.repeat(m, 2, 0), 2, 1)[::2, ::2]
    assert np.array_equal(perturb_mask(strided, 4), perturb_mask(m, 4))
    fortran = np.asfortranarray(m)
    assert np.array_equal(perturb_mask(fortran, 4), perturb_mask(m, 4))


def test_input_is_not_modified():
    m = star().astype(np.uint8) * 255
    before = m.copy()
    perturb_mask(m, 0)
    assert np.array_equal(m, before)


@pytest.mark.parametrize("shape", [(10,), (4, 10, 10), (1, 1, 10, 10)])
def test_wrong_ndim_is_a_clear_error(shape):
    with pytest.raises(ValueError, match=r"2-D \(H, W\) array, got shape"):
        perturb_mask(np.zeros(shape, bool), 0)


def test_float_mask_and_bad_target_are_errors():
    with pytest.raises(ValueError, match="bool or integer"):
        perturb_mask(np.zeros((8, 8), np.float32), 0)
    with pytest.raises(ValueError, match=r"target_iou must be in \(0, 1\]"):
        perturb_mask(star(), 0, target_iou=1.5)
    with pytest.raises(ValueError, match=r"target_iou must be in \(0, 1\]"):
        perturb_mask(star(), 0, target_iou=0.0)
    with pytest.raises(TypeError, match="numpy Generator or an int seed"):
        perturb_mask(star(), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iou_range": (0.9, 0.8)}, "iou_range"),
        ({"iou_range": (0.0, 0.8)}, "iou_range"),
        ({"iou_tolerance": 0.0}, "iou_tolerance"),
        ({"max_tries": 0}, "max_tries"),
        ({"p_blur": 1.5}, "p_blur must be a probability"),
        ({"blob_count": (4, 1)}, "blob_count must be a range"),
        ({"morph_radius": -1.0}, "morph_radius must be >= 0"),
        ({"lowres_factor": (0.5, 4.0)}, "lowres_factor must be >= 1"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PerturbConfig(**kwargs)


def test_each_degradation_alone_reaches_the_target():
    m = star()
    only = {f"p_{n}": 0.0 for n in ("polygon", "morph", "local_morph", "lowres", "blur",
                                     "thin", "blobs", "holes")}  # fmt: skip
    for name in only:
        cfg = PerturbConfig(**{**only, name: 1.0})
        for seed in range(4):
            t = 0.8 + 0.05 * seed
            assert abs(iou(perturb_mask(m, seed, cfg, target_iou=t), m) - t) <= TOL, name


# ---------------------------------------------------------------------------- degradations


def test_opening_removes_thin_line_and_keeps_disk():
    m = disk_with_line()
    base = disk(160, 40, (60, 80))
    out = remove_thin_parts(m, 5)
    assert not out[:, 102:].any()  # the line (x >= 100) is gone beyond the disk's edge
    assert iou(out, base) > 0.99
    assert not (out & ~m).any()  # an opening only removes
    assert np.array_equal(remove_thin_parts(m, 1), m)  # a 1-px disk removes nothing
    large = remove_thin_parts(m, 25)  # downsampled path for large kernels
    assert not large[:, 102:].any() and iou(large, base) > 0.98


def test_false_blobs_only_add_pixels_near_the_object():
    m = disk(200, 40)
    out = add_false_blobs(m, 0, count=4, radius=5.0, distance=20.0)
    added = out & ~m
    assert added.any()
    assert np.array_equal(out & m, m)  # nothing of the object is removed
    dist = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, 5)
    assert dist[added].max() <= 20.0 + 5.0 + 1.5  # centre distance + radius
    n_components = cv2.connectedComponents(out.astype(np.uint8))[0] - 1  # minus background
    assert 1 < n_components <= 5
    assert np.array_equal(add_false_blobs(np.zeros((9, 9), bool), 0), np.zeros((9, 9), bool))


def test_holes_only_remove_pixels_inside_the_object():
    m = disk(200, 60)
    out = punch_holes(m, 1, count=3, radius=6.0)
    assert not (out & ~m).any()
    assert 0 < (m & ~out).sum() <= 3 * np.pi * 6.5**2


def test_lowres_loses_more_detail_with_larger_factor():
    m = star(200)
    errors = [int((lowres_upsample(m, f) ^ m).sum()) for f in (1, 2, 4, 8, 16)]
    assert errors[0] == 0
    assert errors[1] < errors[2] < errors[3] < errors[4]
    assert iou(lowres_upsample(m, 16), m) > 0.5  # still the same object
    with pytest.raises(ValueError, match="factor must be >= 1"):
        lowres_upsample(m, 0.5)


def test_blur_rounds_corners_and_removes_thin_details():
    m = np.zeros((100, 100), bool)
    m[20:80, 20:80] = True
    m[50, 80:95] = True  # 1-px whisker
    out = blur_threshold(m, 4.0)
    assert not out[20, 20] and out[50, 50]  # corner rounded, inside kept
    assert not out[50, 85:].any()  # whisker gone
    assert iou(out, m) > 0.9
    assert np.array_equal(blur_threshold(m, 0.0), m)


def test_blur_fast_path_matches_plain_gaussian():
    m = disk(200, 60)
    for sigma in (4.0, 8.0, 15.0):
        ref = cv2.GaussianBlur(m.astype(np.float64), (0, 0), sigma) > 0.4
        assert iou(blur_threshold(m, sigma, 0.4), ref) > 0.99


@pytest.mark.parametrize("size", [17, 25, 41])
def test_large_morphology_fast_path_matches_opencv(size):
    m = disk(200, 50).astype(np.uint8)
    for shape_id in range(4):
        kernel = P._structure(shape_id, size)
        assert iou(P._morph(m, shape_id, size, True), cv2.dilate(m, kernel)) > 0.95
        assert iou(P._morph(m, shape_id, size, False), cv2.erode(m, kernel)) > 0.94


def test_random_morphology_direction_and_structure():
    m = star()
    grown = random_morphology(m, 0, radius=3, dilate=True)
    shrunk = random_morphology(m, 0, radius=3, dilate=False)
    assert np.array_equal(grown & m, m) and grown.sum() > m.sum()
    assert not (shrunk & ~m).any() and shrunk.sum() < m.sum()
    assert np.array_equal(random_morphology(m, 5, radius=0.0), m)
    shapes = {random_structure(9, seed).shape for seed in range(40)}
    assert shapes == {(9, 9), (4, 9), (9, 4)}
    assert random_structure(9, 0).dtype == np.uint8


def test_local_morphology_changes_only_near_the_boundary():
    m = disk(200, 60)
    out = random_local_morphology(m, 0, n_regions=5, half_size=15.0, radius=4.0)
    changed = out ^ m
    assert changed.any()
    dist_in = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 5)
    dist_out = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, 5)
    assert np.maximum(dist_in, dist_out)[changed].max() <= 4.0 + 1.5


def test_polygon_jitter_keeps_the_mask_in_place(shared_data):
    for m in (star(), disk(), ecssd_mask(shared_data, "0003")):
        for seed in range(3):
            out = jitter_polygon(m, seed, jitter=3.0)
            assert iou(out, m) > 0.5
            ys, xs = np.nonzero(out)
            yg, xg = np.nonzero(m)
            shift = np.hypot(ys.mean() - yg.mean(), xs.mean() - xg.mean())
            assert shift < 0.05 * max(m.shape)  # the centroid barely moves


def test_polygon_without_simplification_redraws_the_mask():
    ring = disk(100, 40) & ~disk(100, 20)  # holes stay holes
    for m in (star(), ring):
        assert np.array_equal(jitter_polygon(m, 0, jitter=0.0, keep_rate=1.0, cut_prob=0.0), m)
    simplified = jitter_polygon(star(), 0, jitter=0.0, keep_rate=0.1, cut_prob=0.0)
    assert 0.8 < iou(simplified, star()) < 1.0
