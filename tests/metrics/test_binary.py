from __future__ import annotations

import numpy as np
import pytest

from finecut.metrics import IoUAccumulator, binarize, dataset_iou, iou, iou_counts


def _square(shape: tuple[int, int], y: int, x: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y : y + side, x : x + side] = True
    return mask


# --- binarisation rule -------------------------------------------------------------------------


def test_binarize_uint8_uses_cascadepsp_threshold_128() -> None:
    values = np.array([0, 1, 127, 128, 129, 255], dtype=np.uint8)
    np.testing.assert_array_equal(binarize(values), [False, False, False, False, True, True])


def test_binarize_float_threshold_is_strictly_above_half() -> None:
    values = np.array([0.0, 0.4999, 0.5, np.nextafter(0.5, 1.0), 1.0], dtype=np.float64)
    np.testing.assert_array_equal(binarize(values), [False, False, False, True, True])
    values32 = np.array([0.5, np.nextafter(np.float32(0.5), np.float32(1))], dtype=np.float32)
    assert binarize(values32).tolist() == [False, True]


def test_binarize_bool_is_returned_as_is() -> None:
    mask = np.array([[True, False]])
    assert binarize(mask) is mask


def test_binarize_other_integer_dtypes_must_be_zero_one() -> None:
    np.testing.assert_array_equal(binarize(np.array([0, 1, 1], dtype=np.int64)), [0, 1, 1])
    with pytest.raises(ValueError, match=r"int32 and values outside \{0, 1\}.*max 255"):
        binarize(np.array([0, 255], dtype=np.int32))
    with pytest.raises(ValueError, match="min -1"):
        binarize(np.array([-1, 0], dtype=np.int16), "pred")


def test_binarize_rejects_nan_and_odd_dtypes() -> None:
    with pytest.raises(ValueError, match="gt contains NaN"):
        binarize(np.array([0.0, np.nan]), "gt")
    with pytest.raises(TypeError, match="bool, integer or float dtype, got complex128"):
        binarize(np.array([1 + 1j]))


def test_binarize_uint8_zero_one_mask_is_binary() -> None:
    out = binarize(np.array([0, 1, 1, 0], dtype=np.uint8), "gt")
    np.testing.assert_array_equal(out, [False, True, True, False])
    assert binarize(np.ones(3, np.uint8)).all()  # all 1: full, not nearly black
    assert not binarize(np.zeros(3, np.uint8)).any()


def test_binarize_uint8_label_map_is_refused() -> None:
    with pytest.raises(ValueError, match=r"gt holds 4 values \(0, 1, 2, 3\).*label map.*mask == k"):
        binarize(np.array([0, 1, 2, 3], dtype=np.uint8), "gt")


def test_binarize_uint8_soft_mask_keeps_threshold_128() -> None:
    soft = np.arange(256, dtype=np.uint8)  # anti-aliased grey levels: not a label map
    np.testing.assert_array_equal(binarize(soft), soft > 128)
    trimap = np.array([0, 128, 255], np.uint8)
    np.testing.assert_array_equal(binarize(trimap), [False, False, True])


def test_metrics_read_a_zero_one_uint8_mask_like_bool() -> None:
    from finecut.metrics import boundary_f, mba

    gt = _square((40, 50), 5, 8, 20)
    pred = _square((40, 50), 6, 9, 20)
    gt01, pred01 = gt.astype(np.uint8), pred.astype(np.uint8)
    assert iou(pred01, gt01) == iou(pred, gt) < 1.0
    assert mba(pred01, gt01) == mba(pred, gt)
    assert not np.isnan(mba(pred01, gt01))
    assert boundary_f(pred01, gt01) == boundary_f(pred, gt)


def test_binarize_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    probs = torch.tensor([[0.2, 0.7]])
    np.testing.assert_array_equal(binarize(probs), [[False, True]])
    np.testing.assert_array_equal(binarize(torch.tensor([[0, 255]], dtype=torch.uint8)), [[0, 1]])


# --- IoU ---------------------------------------------------------------------------------------


def test_iou_two_squares_known_overlap() -> None:
    # 10x10 squares shifted by (2, 3): overlap 8x7 = 56, union 100 + 100 - 56 = 144.
    a = _square((32, 32), 5, 5, 10)
    b = _square((32, 32), 7, 8, 10)
    assert iou_counts(a, b) == (56, 144)
    assert iou(a, b) == pytest.approx(56 / 144)
    assert iou(b, a) == iou(a, b)


def test_iou_dtypes_give_the_same_answer() -> None:
    a = _square((16, 16), 2, 2, 6)
    b = _square((16, 16), 4, 4, 6)
    expected = iou(a, b)
    assert iou(a.astype(np.uint8) * 255, b.astype(np.uint8) * 255) == expected
    assert iou(a.astype(np.float32) * 0.9, b.astype(np.float64)) == expected
    assert iou(a.astype(np.int64), b.astype(np.int8)) == expected


def test_iou_empty_cases() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    assert iou(empty, empty) == 1.0
    assert iou(empty, _square((8, 8), 1, 1, 3)) == 0.0
    assert iou(_square((8, 8), 1, 1, 3), empty) == 0.0


def test_iou_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"got pred \(4, 5\) and gt \(5, 4\)"):
        iou(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_dataset_iou_pools_counts_not_means() -> None:
    # Image 1: I=56, U=144 (0.389); image 2: I=1, U=1 (1.0). Pooled 57/145, mean of IoUs 0.69.
    big_a, big_b = _square((32, 32), 5, 5, 10), _square((32, 32), 7, 8, 10)
    tiny = _square((4, 4), 0, 0, 1)
    pairs = [(big_a, big_b), (tiny, tiny)]
    assert dataset_iou(pairs) == pytest.approx(57 / 145)
    acc = IoUAccumulator()
    for pred, gt in pairs:
        acc.update(pred, gt)
    assert (acc.intersection, acc.union, acc.count) == (57, 145, 2)
    assert acc.value() == dataset_iou(pairs)
    acc.reset()
    assert (acc.intersection, acc.union, acc.count, acc.value()) == (0, 0, 0, 1.0)
    assert dataset_iou([]) == 1.0
