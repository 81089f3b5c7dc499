from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from finecut.errors import ImageError
from finecut.refine.baselines import (
    default_band,
    default_radius,
    guided_filter,
    guided_filter_refine,
    make_trimap,
    matting_refine,
)

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _slow_guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s definition pixel by pixel: per-window ridge regression, then averaged."""
    if guide.ndim == 2:
        guide = guide[..., None]
    h, w, c = guide.shape
    a = np.zeros((h, w, c))
    b = np.zeros((h, w))

    def window(y: int, x: int) -> tuple[slice, slice]:
        return slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1)

    for y in range(h):
        for x in range(w):
            win = window(y, x)
            g = guide[win].reshape(-1, c)
            p = src[win].ravel()
            mu = g.mean(axis=0)
            sigma = (g - mu).T @ (g - mu) / len(g)
            cov = ((g - mu) * (p - p.mean())[:, None]).mean(axis=0)
            a[y, x] = np.linalg.solve(sigma + eps * np.eye(c), cov)
            b[y, x] = p.mean() - a[y, x] @ mu
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            win = window(y, x)
            out[y, x] = a[win].reshape(-1, c).mean(axis=0) @ guide[y, x] + b[win].mean()
    return out


def _clipped_box_mean(x: np.ndarray, r: int) -> np.ndarray:
    size = 2 * r + 1
    ones = np.ones_like(x)
    return uniform_filter(x, size, mode="constant") / uniform_filter(ones, size, mode="constant")


def _smooth(x: np.ndarray) -> np.ndarray:
    """Low-pass random noise so the guide has structure at several scales."""
    return uniform_filter(x, (5, 5, 1), mode="nearest")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def _disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A blue disk on an orange background (slight noise), its truth, and a coarse mask that
    overshoots the disk's edge by 4 px all round."""
    shape = (72, 80)
    truth = _disk(shape, (36, 40), 20)
    rng = np.random.default_rng(0)
    image = np.where(truth[..., None], [0.15, 0.25, 0.8], [0.9, 0.55, 0.1])
    image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)
    coarse = _disk(shape, (36, 40), 24)
    return (image * 255).round().astype(np.uint8), truth, coarse


# ------------------------------------------------------------------------------------------------
# guided_filter
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("radius", "eps"), [(1, 1e-3), (2, 0.1), (4, 1e-2)])
def test_guided_filter_matches_direct_definition(channels: int, radius: int, eps: float) -> None:
    rng = np.random.default_rng(channels * 10 + radius)
    guide = rng.random((7, 9, channels))
    src = rng.random((7, 9))
    expected = _slow_guided_filter(guide, src, radius, eps)
    np.testing.assert_allclose(guided_filter(guide, src, radius, eps), expected, atol=1e-12)


def test_guided_filter_float32_path_matches_float64() -> None:
    rng = np.random.default_rng(5)
    guide = _smooth(rng.random((60, 70, 3)))
    src = (guide[..., 0] > 0.5).astype(np.float64)
    ref = guided_filter(guide, src, 6, 3e-4)
    out = guided_filter(guide.astype(np.float32), src.astype(np.float32), 6, 3e-4)
    assert ref.dtype == np.float64 and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_guided_filter_constant_src_stays_constant() -> None:
    rng = np.random.default_rng(1)
    src = np.full((20, 30), 0.7)
    for guide in (rng.random((20, 30, 3)), rng.random((20, 30))):
        np.testing.assert_allclose(guided_filter(guide, src, 3, 1e-4), 0.7, atol=1e-10)


def test_guided_filter_large_eps_is_twice_box_blurred() -> None:
    # a -> 0 and b -> the window mean of src, so q = box(box(src)) with clipped windows.
    rng = np.random.default_rng(2)
    guide, src, r = rng.random((16, 19, 3)), rng.random((16, 19)), 2
    expected = _clipped_box_mean(_clipped_box_mean(src, r), r)
    np.testing.assert_allclose(guided_filter(guide, src, r, 1e10), expected, atol=1e-9)
    assert np.abs(guided_filter(guide, src, r, 1e-3) - expected).max() > 0.05


def test_guided_filter_self_guided_tiny_eps_preserves_edges() -> None:
    rng = np.random.default_rng(3)
    src = 0.1 * rng.random((24, 24))
    src[:, 12:] += 0.8  # a sharp step the filter must not blur
    out = guided_filter(src, src, 4, 1e-8)
    np.testing.assert_allclose(out, src, atol=1e-3)
    blurred = guided_filter(src, src, 4, 10.0)
    assert np.abs(blurred - src)[:, 10:14].min() > 0.05  # a large eps does blur the step


def test_guided_filter_argument_errors() -> None:
    guide, src = np.zeros((5, 6, 3)), np.zeros((5, 6))
    with pytest.raises(ValueError, match=r"guide must be \(H, W\), \(H, W, 1\) or \(H, W, 3\)"):
        guided_filter(np.zeros((5, 6, 2)), src, 1, 0.1)
    with pytest.raises(ValueError, match=r"src must be \(H, W\) = \(5, 6\)"):
        guided_filter(guide, np.zeros((6, 5)), 1, 0.1)
    with pytest.raises(ValueError, match="radius must be an integer >= 0"):
        guided_filter(guide, src, -1, 0.1)
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        guided_filter(guide, src, 1, 0.0)


# ------------------------------------------------------------------------------------------------
# refinements on a synthetic scene
# ------------------------------------------------------------------------------------------------


def test_guided_filter_refine_moves_boundary_onto_edge(scene) -> None:
    image, truth, coarse = scene
    before = _iou(coarse, truth)
    refined = guided_filter_refine(image, coarse, radius=8)
    assert refined.dtype == bool and refined.shape == truth.shape
    assert before < 0.75
    assert _iou(refined, truth) > 0.97, (before, _iou(refined, truth))


def test_guided_filter_refine_defaults(scene) -> None:
    image, truth, coarse = scene
    radius = default_radius(*truth.shape)
    refined = guided_filter_refine(image, coarse)
    np.testing.assert_array_equal(refined, guided_filter_refine(image, coarse, radius=radius))
    assert _iou(refined, truth) > _iou(coarse, truth) + 0.05


@pytest.mark.parametrize("method", ["cf", "knn", "lkm"])
def test_matting_refine_moves_boundary_onto_edge(scene, method: str) -> None:
    image, truth, coarse = scene
    refined = matting_refine(image, coarse, band=7, method=method)
    assert refined.dtype == bool and refined.shape == truth.shape
    assert _iou(refined, truth) > 0.97, (method, _iou(coarse, truth), _iou(refined, truth))


def test_matting_refine_default_band_scales_with_image(scene) -> None:
    image, _, coarse = scene
    band = default_band(*coarse.shape)
    np.testing.assert_array_equal(
        matting_refine(image, coarse, return_soft=True),
        matting_refine(image, coarse, band=band, return_soft=True),
    )


def test_matting_refine_crop_equals_full_closed_form(scene) -> None:
    import pymatting

    image, truth, coarse = scene
    trimap = make_trimap(coarse, 7)
    assert (trimap[:, :8] == 0).all()  # so the solver does get a cropped image
    for eps in (1e-7, 1e-4):
        full = pymatting.estimate_alpha_cf(image / 255.0, trimap, laplacian_kwargs={"epsilon": eps})
        soft = matting_refine(image, coarse, band=7, cf_epsilon=eps, return_soft=True)
        assert soft.dtype == np.float32
        np.testing.assert_allclose(soft, full, atol=1e-4)


def test_make_trimap_regions() -> None:
    coarse = np.zeros((30, 30), bool)
    coarse[10:20, 10:20] = True
    trimap = make_trimap(coarse, 2)
    assert set(np.unique(trimap)) == {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(trimap == 1.0, np.pad(np.ones((6, 6), bool), 12))
    # dilated by 2 px with a disk: the square grows by 2 px along its sides (corners round off)
    assert (trimap[8:22, 10:20] > 0).all() and (trimap[10:20, 8:22] > 0).all()
    assert (trimap[:8] == 0).all() and (trimap[22:] == 0).all() and (trimap[:, 22:] == 0).all()
    assert trimap[8, 8] == 0.0
    with pytest.raises(ValueError, match="band must be an integer >= 1"):
        make_trimap(coarse, 0)


@pytest.mark.parametrize(
    "kind", ["empty", "full", "thinner_than_band"], ids=["no fg", "no bg", "thin object"]
)
def test_matting_degenerate_trimap_returns_coarse(kind: str, caplog) -> None:
    rng = np.random.default_rng(4)
    image = rng.random((32, 32, 3))
    coarse = np.zeros((32, 32), bool)
    if kind == "full":
        coarse[:] = True
    elif kind == "thinner_than_band":
        coarse[10:13, 5:25] = True
    with caplog.at_level(logging.WARNING, logger="finecut.refine.baselines"):
        out = matting_refine(image, coarse, band=3)
    np.testing.assert_array_equal(out, coarse)
    assert out.dtype == bool
    assert "returning the coarse mask unchanged" in caplog.text
    soft = matting_refine(image, coarse.astype(np.float32) * 0.9, band=3, return_soft=True)
    np.testing.assert_array_equal(soft, coarse * np.float32(0.9))


# ------------------------------------------------------------------------------------------------
# input conventions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("refine", [guided_filter_refine, matting_refine])
def test_uint8_float_and_bool_inputs_agree(scene, refine) -> None:
    image, _, coarse = scene
    reference = refine(image, coarse)
    variants = [
        (image.astype(np.float32) / 255, coarse),
        (image.astype(np.float64) / 255, coarse.astype(np.uint8) * 255),
        (image, coarse.astype(np.float32)),
        (image, coarse[..., None]),
    ]
    for img, msk in variants:
        np.testing.assert_array_equal(refine(img, msk), reference)


@pytest.mark.parametrize("refine", [guided_filter_refine, matting_refine])
def test_soft_output_thresholds_to_hard(scene, refine) -> None:
    image, _, coarse = scene
    soft = refine(image, coarse, return_soft=True)
    assert soft.dtype == np.float32 and soft.shape == coarse.shape
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    np.testing.assert_array_equal(refine(image, coarse, threshold=0.3), soft >= 0.3)


@pytest.mark.parametrize("refine", [guided_filter_refine, matting_refine])
def test_grayscale_image_accepted(scene, refine) -> None:
    image, truth, coarse = scene
    grey = image.mean(axis=2).astype(np.uint8)
    out = refine(grey, coarse)
    assert out.shape == truth.shape and out.dtype == bool


@pytest.mark.parametrize("refine", [guided_filter_refine, matting_refine])
def test_input_errors(refine) -> None:
    image, coarse = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), bool)
    with pytest.raises(ImageError, match=r"image must be \(H, W\), \(H, W, 1\) or \(H, W, 3\)"):
        refine(np.zeros((32, 32, 4), np.uint8), coarse)
    with pytest.raises(ImageError, match=r"coarse mask must be \(H, W\) = \(32, 32\)"):
        refine(image, np.zeros((32, 31), bool))
    with pytest.raises(ImageError, match="coarse mask dtype int64 is not supported"):
        refine(image, np.zeros((32, 32), np.int64))
    with pytest.raises(ImageError, match="image dtype int32 is not supported"):
        refine(np.zeros((32, 32, 3), np.int32), coarse)
    with pytest.raises(ImageError, match="image contains NaN"):
        refine(np.full((32, 32, 3), np.nan), coarse)
    with pytest.raises(ImageError, match="coarse mask contains NaN"):
        refine(image, np.full((32, 32), np.nan))
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        refine(image, coarse, threshold=1.0)


def test_matting_argument_errors() -> None:
    image, coarse = np.zeros((16, 16, 3)), _disk((16, 16), (8, 8), 5)
    with pytest.raises(ValueError, match="method must be one of"):
        matting_refine(image, coarse, method="closed-form")
    with pytest.raises(ValueError, match="cf_epsilon must be finite and > 0"):
        matting_refine(image, coarse, cf_epsilon=0.0)
    with pytest.raises(ValueError, match="method 'lkm' needs an image of at least 21x21"):
        matting_refine(image, coarse, band=1, method="lkm")


def test_uint8_zero_one_mask_is_binary_and_label_maps_are_refused() -> None:
    image, coarse = np.zeros((16, 16, 3)), _disk((16, 16), (8, 8), 5)
    np.testing.assert_array_equal(
        guided_filter_refine(image, coarse.astype(np.uint8)),
        guided_filter_refine(image, coarse.astype(np.uint8) * 255),
    )
    with pytest.raises(ImageError, match="label map"):
        guided_filter_refine(image, coarse.astype(np.uint8) * 2 + coarse.T)


def test_default_sizes_scale_with_image() -> None:
    assert default_radius(10, 10) == 2 and default_band(10, 10) == 2
    assert default_radius(2000, 2000) > default_radius(400, 300) > 2
    assert default_band(2000, 2000) > default_band(400, 300) > 2
