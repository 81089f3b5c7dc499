from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from finecut.errors import ConfigError, ImageError
from finecut.metrics import iou
from finecut.refine.api import Refiner
from finecut.refine.inference import InferenceConfig
from finecut.refine.instances import InstanceConfig, crop_box

H, W = 96, 128


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """An image with three discs and a label map of rough boxes around them (2 overlap)."""
    rng = np.random.default_rng(0)
    image = (rng.random((H, W, 3)) * 40).astype(np.uint8)
    labels = np.zeros((H, W), np.uint8)
    discs = ((1, 30, 30, 18), (2, 56, 40, 16), (7, 100, 70, 14))
    for label, cx, cy, r in discs:
        cv2.circle(image, (cx, cy), r, (200 + 10 * label % 50, 180, 160), -1)
        labels[cy - r - 2 : cy + r + 2, cx - r - 2 : cx + r + 2] = label
    return image, labels


@pytest.fixture(scope="module")
def refiner(tiny_crm_weights: Path) -> Refiner:
    # untrained weights without snapping: each mask comes back as given (probabilities in the
    # band are sigmoid(+-3)), so the overlap rule is what these tests see
    return Refiner(weights=tiny_crm_weights, device="cpu", config=InferenceConfig(snap=False))


def test_label_map_in_label_map_out(refiner: Refiner) -> None:
    image, labels = _scene()
    out = refiner.refine_instances(image, labels)
    assert out.dtype == labels.dtype and out.shape == labels.shape
    assert set(np.unique(out)) == {0, 1, 2, 7}
    np.testing.assert_array_equal(out > 0, labels > 0)  # the union is kept (all p > 0.5)
    np.testing.assert_array_equal(out[labels == 7], 7)  # the lone instance is untouched


def test_stack_in_stack_out_without_overlaps(refiner: Refiner) -> None:
    image, labels = _scene()
    first = labels == 1
    second = (labels == 2) | np.roll(first, 6, axis=1)  # overlaps instance 0
    stack = np.stack([first, second, np.zeros_like(first), labels == 7])
    out = refiner.refine_instances(image, stack)
    assert out.dtype == bool and out.shape == stack.shape
    assert out.sum(0).max() == 1  # no pixel in two instances
    assert not out[2].any()  # an empty mask stays empty
    np.testing.assert_array_equal(out.any(0), stack.any(0))


def test_overlaps_go_to_the_highest_probability(refiner: Refiner) -> None:
    image, labels = _scene()
    stack = np.stack([labels == 1, (labels == 2) | (labels == 1)])
    out = refiner.refine_instances(image, stack, config=InstanceConfig(crop=False))
    probs = np.stack([refiner.refine(image, m, soft=True) for m in stack])
    winner = probs.argmax(0)  # ties go to the first, as in refine_instances
    expected = np.stack([(winner == k) & (probs.max(0) > 0.5) for k in range(2)])
    np.testing.assert_array_equal(out, expected)


def test_crops_match_full_frame_refinement(refiner: Refiner) -> None:
    image, labels = _scene()
    cropped = refiner.refine_instances(image, labels)
    full = refiner.refine_instances(image, labels, config=InstanceConfig(crop=False))
    np.testing.assert_array_equal(cropped, full)


def test_zero_one_stack_and_uint16_labels(refiner: Refiner) -> None:
    image, labels = _scene()
    wide = labels.astype(np.uint16) * 300  # labels 300, 600, 2100
    out = refiner.refine_instances(image, wide)
    assert out.dtype == np.uint16 and set(np.unique(out)) == {0, 300, 600, 2100}
    stack01 = np.stack([(labels == k).astype(np.uint8) for k in (1, 2, 7)])
    np.testing.assert_array_equal(
        refiner.refine_instances(image, stack01), refiner.refine_instances(image, stack01 > 0)
    )


def test_no_instance_gives_background(refiner: Refiner) -> None:
    image, labels = _scene()
    np.testing.assert_array_equal(refiner.refine_instances(image, np.zeros_like(labels)), 0)
    assert refiner.refine_instances(image, np.zeros((0, H, W), bool)).shape == (0, H, W)


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        (np.zeros((H, W), np.float32), "must hold integers"),
        (np.full((H, W), -1, np.int32), "negative"),
        (np.zeros((H, W - 1), np.uint8), r"masks must be \(N, H, W\)"),
        (np.zeros((2, H, W, 1), bool), r"masks must be \(N, H, W\)"),
        (np.full((1, H, W), 3, np.uint8), "label map"),
    ],
)
def test_bad_masks_are_refused(refiner: Refiner, masks, match) -> None:
    image, _ = _scene()
    with pytest.raises(ImageError, match=match):
        refiner.refine_instances(image, masks)


def test_crop_box_margin_and_clipping() -> None:
    config = InstanceConfig(margin_fraction=0.25, min_margin=4)
    rows, cols = crop_box(slice(10, 50), slice(20, 30), (100, 100), config)
    assert (rows, cols) == (slice(0, 60), slice(10, 40))  # margin ceil(0.25 * 40) = 10
    rows, cols = crop_box(slice(90, 92), slice(1, 3), (100, 100), config)
    assert (rows, cols) == (slice(86, 96), slice(0, 7))  # min_margin 4, clipped at 0
    with pytest.raises(ConfigError, match="margin_fraction"):
        InstanceConfig(margin_fraction=-1)


def test_real_image_crops_agree_with_full_frame(shared_data: Path) -> None:
    """Embedded weights on a real photo: two instances (the object's halves, roughened)."""
    from finecut.data.io import read_image, read_mask
    from finecut.refine.perturb import perturb_mask

    image = read_image(shared_data / "ecssd" / "images" / "0801.jpg")
    gt = read_mask(shared_data / "ecssd" / "masks" / "0801.png") > 127
    scale = 200 / max(gt.shape)
    size = (round(gt.shape[1] * scale), round(gt.shape[0] * scale))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    gt = cv2.resize(gt.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    xs = np.flatnonzero(gt.any(0))
    half = (xs[0] + xs[-1]) // 2
    labels = np.zeros(gt.shape, np.uint8)
    labels[:, :half][gt[:, :half]] = 1
    labels[:, half:][gt[:, half:]] = 2
    rng = np.random.default_rng(0)
    coarse = np.zeros_like(labels)
    for k in (1, 2):
        coarse[perturb_mask(labels == k, rng) & (coarse == 0)] = k
    refiner = Refiner(device="cpu")
    cropped = refiner.refine_instances(image, coarse)
    full = refiner.refine_instances(image, coarse, config=InstanceConfig(crop=False))
    for k in (1, 2):
        assert iou(cropped == k, full == k) > 0.97
