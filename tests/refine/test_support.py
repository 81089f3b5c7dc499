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


def _split_reference(labels: np.ndarray, origin: tuple[int, int], tile: int) -> np.ndarray:
    # the plain definition: two pixels share a piece when they share a region and a grid cell
    h, w = labels.shape
    key = {}
    out = np.zeros_like(labels)
    for y in range(h):
        for x in range(w):
            if labels[y, x]:
                k = (labels[y, x], (y + origin[0]) // tile, (x + origin[1]) // tile)
                out[y, x] = key.setdefault(k, len(key) + 1)
    return out


def test_split_by_tiles_matches_a_plain_loop() -> None:
    import cv2

    from finecut.refine.support import split_by_tiles

    rng = np.random.default_rng(0)
    for origin, tile in [((0, 0), 7), ((13, 5), 10), ((3, 29), 4), ((0, 0), 100)]:
        blobs = cv2.GaussianBlur(rng.random((37, 53)).astype(np.float32), (0, 0), 2) > 0.5
        _, labels = cv2.connectedComponents(blobs.view(np.uint8), connectivity=8)
        n, out = split_by_tiles(labels, origin, tile)
        ref = _split_reference(labels, origin, tile)
        assert n == ref.max() + 1 and out.max() == n - 1
        assert np.array_equal(out > 0, labels > 0)
        # the same partition (numbering may differ): a one-to-one map between the two labels
        pairs = set(zip(out[labels > 0].tolist(), ref[labels > 0].tolist(), strict=True))
        assert len(pairs) == n - 1 == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    # no tile: the map as it is
    n, same = split_by_tiles(labels, (0, 0), 0)
    assert n == labels.max() + 1 and same is labels


def test_changed_regions_cut_along_a_grid_of_the_whole_image() -> None:
    from finecut.refine.support import changed_regions

    coarse = np.zeros((60, 80), bool)
    new = coarse.copy()
    new[30:33, 5:75] = True  # one strip, 70 px long
    box, n, labels = changed_regions(coarse, new, reach=2)
    assert n == 2
    box, n, labels = changed_regions(coarse, new, reach=2, tile=20)
    # cells of columns 0-19, 20-39, 40-59, 60-79: four pieces, cut at the image's columns 20,
    # 40 and 60 whatever the box
    assert n == 5
    cols = np.arange(box[1].start, box[1].stop)
    row = labels[30 - box[0].start]
    for cut in (20, 40, 60):
        i = int(np.flatnonzero(cols == cut)[0])
        assert row[i - 1] != row[i] and row[i - 1] > 0 and row[i] > 0
