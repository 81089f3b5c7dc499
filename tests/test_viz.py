"""Pictures of masks and label maps (finecut.viz)."""

from __future__ import annotations

import numpy as np
import pytest

from finecut.viz import layer_colors, overlay_labels, overlay_mask


def test_overlay_mask_reads_a_zero_one_mask_like_0_255() -> None:
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 1
    np.testing.assert_array_equal(overlay_mask(image, mask), overlay_mask(image, mask * 255))
    assert (overlay_mask(image, mask) != image).any()


def test_overlay_labels_tints_each_label_in_its_colour() -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    labels = np.zeros((40, 60), np.uint16)
    labels[5:25, 5:25] = 3
    labels[10:35, 35:55] = 900
    out = overlay_labels(image, labels, alpha=0.5, thickness=1)
    colours = layer_colors(2).astype(np.float32)
    np.testing.assert_array_equal(out[15, 15], np.round(0.5 * 100 + 0.5 * colours[0]))
    np.testing.assert_array_equal(out[20, 45], np.round(0.5 * 100 + 0.5 * colours[1]))
    np.testing.assert_array_equal(out[38, 2], image[38, 2])  # background untouched
    with pytest.raises(ValueError, match="does not match"):
        overlay_labels(image, labels[:10])
