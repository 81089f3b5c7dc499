"""GrabCut rough masks from a box or strokes (finecut.serve.hints), on a synthetic photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from finecut.errors import ImageError
from finecut.serve.hints import coarse_mask_from_hints, parse_box


@pytest.fixture(scope="module")
def disc():
    """A textured orange disc on a textured blue-grey background, 240x320, and its mask."""
    rng = np.random.default_rng(0)
    h, w = 240, 320
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - 120) ** 2 + (xx - 170) ** 2 < 70**2
    image = np.empty((h, w, 3), np.float32)
    image[...] = (70, 90, 110)
    image[inside] = (230, 140, 40)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), inside


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_box(disc):
    image, truth = disc
    mask = coarse_mask_from_hints(image, box=(90, 40, 250, 200))
    assert mask.dtype == np.uint8 and mask.shape == truth.shape
    assert set(np.unique(mask)) <= {0, 255}
    assert _iou(mask > 0, truth) > 0.95


def test_strokes_over_the_object_like_a_highlighter(disc):
    image, truth = disc
    fg = np.zeros((120, 160), np.uint8)  # drawn at half size, spilling over the edge
    fg[50:70, 40:130] = 255
    fg[30:90, 75:95] = 255
    mask = coarse_mask_from_hints(image, fg=fg)
    assert _iou(mask > 0, truth) > 0.85  # the spill (about 1600 px) stays in
    spill = (cv2.resize(fg, (320, 240), interpolation=cv2.INTER_NEAREST) > 0) & ~truth
    assert (mask[spill] > 0).all()
    assert (mask[~truth & ~spill] > 0).mean() < 0.005  # and hardly anything else


def test_strokes_inside_grow_to_the_edges(disc):
    image, truth = disc
    fg = np.zeros(truth.shape, np.uint8)
    fg[110:130, 130:210] = 255  # one stroke across the middle
    mask = coarse_mask_from_hints(image, fg=fg)
    assert _iou(mask > 0, truth) > 0.95


def test_background_strokes_are_background(disc):
    image, truth = disc
    bg = np.zeros(truth.shape, np.uint8)
    bg[100:140, 150:190] = 255  # a hole the person wants out
    mask = coarse_mask_from_hints(image, box=(90, 40, 250, 200), bg=bg)
    assert not (mask[100:140, 150:190] > 0).any()


def test_work_side_bounds_the_grabcut_size(disc):
    image, truth = disc
    mask = coarse_mask_from_hints(image, box=(90, 40, 250, 200), work_side=96)
    assert mask.shape == truth.shape and _iou(mask > 0, truth) > 0.85


def test_direct_is_the_marks_as_painted(disc):
    image, _ = disc
    fg = np.zeros((240, 320), np.uint8)
    fg[10:20, 10:30] = 255
    bg = np.zeros((240, 320), np.uint8)
    bg[10:20, 25:30] = 255
    mask = coarse_mask_from_hints(image, box=(100, 100, 110, 120), fg=fg, bg=bg, method="direct")
    assert (mask > 0).sum() == 10 * 15 + 10 * 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "mark the object"),
        ({"fg": np.zeros((10, 10), np.uint8)}, "mark the object"),
        ({"fg": np.full((10, 10), 255, np.uint8)}, "leave some background"),
        ({"box": (0, 0, 320, 240)}, "leave some background"),
        ({"box": (10, 10, 50, 50), "bg": np.full((240, 320), 255, np.uint8)}, "background"),
        ({"box": (10, 10, 50, 50), "method": "magic"}, "method"),
    ],
)
def test_unusable_hints_are_one_clear_error(disc, kwargs, message):
    with pytest.raises(ImageError, match=message):
        coarse_mask_from_hints(disc[0], **kwargs)


def test_parse_box():
    assert parse_box("10,20,110,220", 300, 200) == (10, 20, 110, 200)
    assert parse_box(" 110.6, 220, 10.2 ,20", 300, 200) == (10, 20, 111, 200)
    for bad in ("1,2,3", "a,b,c,d", "nan,0,10,10", "0,0,1,1", "400,10,500,20"):
        with pytest.raises(ImageError, match="box"):
            parse_box(bad, 300, 200)
