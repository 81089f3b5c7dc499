"""The mask rule of finecut.data.masks: 0/1 masks are binary, small-valued label maps refused."""

from __future__ import annotations

import numpy as np
import pytest

from finecut.data.masks import LABEL_MAX, binary_mask, is_label_map
from finecut.errors import ImageError


@pytest.mark.parametrize(
    ("values", "label_map"),
    [
        ([0, 1], False),
        ([0], False),
        ([1], False),
        ([0, 255], False),
        ([0, 128, 255], False),  # trimap
        (list(range(256)), False),  # anti-aliased 8-bit mask
        ([0, 1, 2, 3], True),
        ([0, 2], True),
        ([0, 5, LABEL_MAX], True),
        ([0, 5, LABEL_MAX + 1], False),
    ],
)
def test_is_label_map(values, label_map):
    assert is_label_map(np.array(values, np.uint8)) is label_map


def test_bool_and_float_are_never_label_maps():
    assert not is_label_map(np.array([0.0, 2.0, 3.0]))
    assert not is_label_map(np.array([True, False]))


def test_every_uint8_mask_the_rule_changes_was_empty_before():
    # the rule is safe: any uint8 mask read as 0/1 or refused had no value above 127
    for hi in range(0, LABEL_MAX + 1):
        mask = np.array([0, hi], np.uint8)
        assert not (mask > 127).any()


def test_binary_mask_reads_zero_one_and_refuses_labels():
    np.testing.assert_array_equal(binary_mask(np.array([0, 1], np.uint8)), [False, True])
    np.testing.assert_array_equal(binary_mask(np.array([0, 200], np.uint8)), [False, True])
    with pytest.raises(ImageError, match=r"m.png holds 3 values \(0, 1, 2\).*use --instances"):
        binary_mask(np.array([0, 1, 2], np.uint8), name="m.png", hint="use --instances")


def test_label_map_message_is_one_line_and_short_for_many_labels():
    labels = np.arange(40, dtype=np.uint8)
    with pytest.raises(ImageError) as info:
        binary_mask(labels)
    message = str(info.value)
    assert "\n" not in message and "40 values (0, 1, 2, 3, 4, 5, 6, 7, ...)" in message
