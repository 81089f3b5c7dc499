"""Do no harm by edge support: undo a change that puts the boundary on weaker image edges.

A refiner trusted everywhere re-cuts masks that were already right: on a near-perfect input
(a SAM mask, a careful polygon) every change is a sliver of a few pixels along the boundary, and
most of them move it off the object's edge, not onto it. The evidence for a change is in the
image: a right boundary lies on an edge (a step in colour), so each connected region where the
output differs from the input is kept only if the output's boundary next to it lies on stronger
edges than the input's boundary there, by a factor ``1 + margin``. A region with no output
boundary next to it (a speck removed, a hole filled) or no input boundary (a part the input
lost) is a change of topology that edge strength cannot judge, and is kept.

Written here because no library judges a mask edit by the edges it follows; the pieces are
OpenCV's (Gaussian, Sobel, connected components, dilation).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "boundary_support",
    "changed_regions",
    "edge_strength",
    "revert_unsupported",
    "set_to_input",
    "split_by_tiles",
]


def edge_strength(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Colour gradient magnitude: Sobel of each Gaussian-smoothed channel, the largest of the three.

    Shape:
        rgb: (H, W, 3) uint8 -> (H, W) float32.
    """
    img = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    return mag.max(axis=2) if mag.ndim == 3 else mag


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of either side that have a 4-neighbour of the other side."""
    m = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(m, cross) != cv2.erode(m, cross)


def changed_regions(
    coarse: np.ndarray, new: np.ndarray, reach: int = 2, tile: int = 0
) -> tuple[tuple[slice, slice], int, np.ndarray]:
    """The connected regions (8-neighbours) where ``new`` differs from ``coarse``.

    Returns ``(box, n, labels)``: the changed pixels' bounding box, widened so every boundary
    pixel within ``reach`` of a region and every 3x3 Sobel window around it see the image as in
    the whole frame; the number of labels (0 = unchanged); the (h, w) label map of the box.
    Nothing changed: an empty box, n = 1 and an empty map. ``tile`` > 0 cuts every region along
    a grid of ``tile``-px cells (:func:`split_by_tiles`).
    """
    changed = new != coarse
    if not changed.any():
        return np.s_[0:0, 0:0], 1, np.zeros((0, 0), np.int32)
    h, w = coarse.shape
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    pad = reach + 8
    box = np.s_[
        max(0, rows[0] - pad) : min(h, rows[-1] + pad + 1),
        max(0, cols[0] - pad) : min(w, cols[-1] + pad + 1),
    ]
    n, labels = cv2.connectedComponents(changed[box].view(np.uint8), connectivity=8)
    if tile > 0:
        n, labels = split_by_tiles(labels, (box[0].start, box[1].start), tile)
    return box, n, labels


def split_by_tiles(
    labels: np.ndarray, origin: tuple[int, int], tile: int
) -> tuple[int, np.ndarray]:
    """Cut every region of ``labels`` along a grid of ``tile``-px square cells.

    A long sliver along a low-resolution mask's boundary is right in some places and wrong in
    others; cut into pieces, each piece can be judged (and undone) on its own. The grid is
    aligned to the whole image (``origin`` is the label map's top-left pixel in it), so the cut
    does not depend on the box. Returns ``(n, labels)`` as :func:`changed_regions`: 0 stays
    unchanged and the pieces are numbered 1..n-1 in the order of (region, cell).
    """
    h, w = labels.shape
    if tile <= 0 or h == 0 or w == 0:
        return int(labels.max(initial=0)) + 1, labels
    rows = (np.arange(h) + origin[0]) // tile
    cols = (np.arange(w) + origin[1]) // tile
    rows, cols = rows - rows[0], cols - cols[0]
    n_cols = int(cols[-1]) + 1
    n_cells = (int(rows[-1]) + 1) * n_cols
    idx = np.flatnonzero(labels)
    r, c = np.divmod(idx, w)
    key = (labels.ravel()[idx].astype(np.int64) - 1) * n_cells + rows[r] * n_cols + cols[c]
    uniq, inverse = np.unique(key, return_inverse=True)
    out = np.zeros(h * w, np.int32)
    out[idx] = inverse.astype(np.int32) + 1
    return len(uniq) + 1, out.reshape(h, w)


def boundary_support(
    g: np.ndarray, coarse: np.ndarray, new: np.ndarray, labels: np.ndarray, n: int, reach: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per region of ``labels``: how many boundary pixels of the input (``c0``) and the output
    (``c1``) lie within ``reach`` px of it, and their mean edge strength ``g`` (``s0``, ``s1``).

    Shape: g, coarse, new, labels: (h, w) of the box -> four (n,) arrays (index 0: unchanged).
    """
    # each pixel within reach of a region gets its label (the larger where regions meet)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    near = cv2.dilate(labels.astype(np.float32), kernel).astype(np.int64)
    out = []
    for mask in (coarse, new):
        b = _boundary(mask) & (near > 0)
        count = np.bincount(near[b], minlength=n)
        total = np.bincount(near[b], weights=g[b], minlength=n)
        out += [count, total / np.maximum(count, 1)]
    c0, s0, c1, s1 = out
    return c0, s0, c1, s1


def set_to_input(
    prob: np.ndarray, coarse: np.ndarray, box, labels: np.ndarray, undo: np.ndarray
) -> np.ndarray:
    """``prob`` with the regions ``k`` where ``undo[k]`` set to the input's value (0 or 1)."""
    if not undo.any():
        return prob
    out = prob.copy()
    region = undo[labels]
    out[box][region] = coarse[box][region].astype(np.float32)
    return out


def revert_unsupported(
    rgb: np.ndarray, coarse: np.ndarray, prob: np.ndarray, margin: float, reach: int = 2
) -> np.ndarray:
    """``prob`` with each changed region whose new boundary is not better supported undone.

    A changed region is a connected component (8-neighbours) of ``(prob > 0.5) != coarse``. Its
    support is the mean :func:`edge_strength` of the boundary pixels (:func:`_boundary`) within
    ``reach`` px of the region, for the input's boundary (s0) and the output's (s1). The region
    takes the input's value (0 or 1) when both exist and ``s1 < (1 + margin) * s0``.

    Shape:
        rgb: (H, W, 3) uint8; coarse: (H, W) bool; prob: (H, W) float -> (H, W) float32.
    """
    prob = prob.astype(np.float32, copy=False)
    new = prob > 0.5
    box, n, labels = changed_regions(coarse, new, reach)
    if n == 1:
        return prob
    g = edge_strength(rgb[box])
    c0, s0, c1, s1 = boundary_support(g, coarse[box], new[box], labels, n, reach)
    undo = (c0 > 0) & (c1 > 0) & (s1 < (1.0 + margin) * s0)
    undo[0] = False
    return set_to_input(prob, coarse, box, labels, undo)
