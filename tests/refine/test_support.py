"""Do no harm by edge support: changes that move the boundary off the image's edges are undone."""

from __future__ import annotations

import numpy as np

from finecut.refine.support import edge_strength, revert_unsupported


def _square(shift_rows: int = 0, size: int = 80) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[20 + shift_rows : 50 + shift_rows, 20:50] = True
    return m


def _photo(size: int = 80) -> np.ndarray:
    rgb = np.full((size, size, 3), 40, np.uint8)
    rgb[_square(size=size)] = (200, 120, 60)
    return rgb


def test_edge_strength_peaks_on_the_step() -> None:
    g = edge_strength(_photo())
    assert g.shape == (80, 80) and g.dtype == np.float32
    # the strongest response of a row across the left edge is at the step (columns 19-20)
    assert int(np.argmax(g[35, :35])) in (19, 20)
    assert g[35, 5] == 0 and g[35, 35] == 0


def test_a_right_mask_moved_off_the_edge_is_restored() -> None:
    coarse = _square()
    prob = _square(shift_rows=3).astype(np.float32)
    out = revert_unsupported(_photo(), coarse, prob, margin=0.0)
    assert np.array_equal(out > 0.5, coarse)


def test_a_mask_moved_onto_the_edge_is_kept() -> None:
    coarse = _square(shift_rows=3)
    prob = _square().astype(np.float32) * 0.9
    out = revert_unsupported(_photo(), coarse, prob, margin=0.0)
    assert np.array_equal(out, prob)


def test_changes_of_topology_are_kept_and_soft_values_survive() -> None:
    coarse = _square()
    coarse[3:6, 70:73] = True  # a speck far from the object: removing it leaves no new boundary
    coarse[30:34, 30:34] = False  # a hole: filling it leaves no new boundary there
    prob = _square().astype(np.float32)
    prob[60, 60] = 0.3  # an unchanged soft pixel
    out = revert_unsupported(_photo(), coarse, prob, margin=0.0)
    assert np.array_equal(out, prob)


def test_margin_demands_more_support() -> None:
    # the output moves the boundary from a weak edge onto a slightly stronger one
    rgb = np.full((80, 80, 3), 40, np.uint8)
    rgb[20:50, 20:50] = 100
    rgb[23:50, 20:50] = 110  # weak step at row 23 ... and a stronger step at row 20 (60 vs 10)
    coarse = _square(shift_rows=3)  # boundary at the weak step
    prob = _square().astype(np.float32)  # boundary at the strong step
    assert np.array_equal(revert_unsupported(rgb, coarse, prob, margin=0.0) > 0.5, prob > 0.5)
    # asking for far more support than the strong step gives: undone
    assert np.array_equal(revert_unsupported(rgb, coarse, prob, margin=20.0) > 0.5, coarse)


def test_no_change_returns_the_probability() -> None:
    coarse = _square()
    prob = coarse.astype(np.float32) * 0.8
    assert revert_unsupported(_photo(), coarse, prob, 0.0) is not None
    assert np.array_equal(revert_unsupported(_photo(), coarse, prob, 0.0), prob)
