"""Closed-form matting in a thin band: only the rows of the matting Laplacian that the band needs.

Closed-form matting (Levin, Lischinski and Weiss, CVPR 2006) solves ``L_UU a_U = -L_UK a_K`` for
the unknown pixels U of a trimap, where ``L`` is the matting Laplacian of 3x3 windows. pymatting's
``cf_laplacian`` (which :func:`finecut.refine.baselines.solve_alpha` uses) fills the index
structure of every pixel of its input, 25 entries each, and ``estimate_alpha_cf`` then slices the
unknown rows out of it. That suits a trimap whose unknown region is a large part of the image. Edge
snapping's unknown region is a band a few pixels wide around a boundary: on the 3492x2328 aeroplane
the 8-px band holds 105k of 8.1M pixels (1.3%). A whole-image pymatting Laplacian would hold 200M
entries, and solving in tiles (what snapping did before) still built 20x more than the band needs,
duplicated the band in every tile's margin and solved many small systems. So this module builds,
written by hand for that reason, only the windows that touch an unknown pixel and only the rows of
unknown pixels, with numpy, in chunks of windows (bounded memory at 8K), and solves the one
system for the whole band with Jacobi-preconditioned conjugate gradients from scipy.

The system is pymatting's to rounding (``tests/refine/test_band_matting.py`` checks the alpha
against ``pymatting.estimate_alpha_cf``). Each band component (pixels coupled through windows)
that touches only one known side, or none, has a constant solution (constants span the Laplacian's
null space): the known side's value, or 0.5 with no known neighbour; ``fallback`` replaces that
by a caller's value (snapping keeps the CRM probability there, so a part thinner than the band is
not erased).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import cg

__all__ = ["BandSystem", "band_system", "solve_band_alpha"]

# 3x3 window offsets (row-major) and the 5x5 stencil of pixel pairs that share a window
_WIN = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
_STENCIL = np.array([(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)])
# stencil slot of the pair (window pixel a, window pixel b): offset b - a, shifted to 0..4
_PAIR_SLOT = (_WIN[None, :, 0] - _WIN[:, None, 0] + 2) * 5 + (
    _WIN[None, :, 1] - _WIN[:, None, 1] + 2
)


@dataclass(frozen=True)
class BandSystem:
    """The matting system of a trimap's unknown pixels.

    Attributes:
        matrix: ``L_UU``, (N, N) CSR, symmetric positive semi-definite.
        rhs: ``-L_UK a_K`` (N,), with a = 1 on known foreground, 0 on known background.
        unknown: flat indices (into H * W) of the N unknown pixels, row-major.
        touches_fg: (N,) whether the row couples to a known foreground pixel.
        touches_bg: (N,) whether the row couples to a known background pixel.
    """

    matrix: sp.csr_matrix
    rhs: np.ndarray
    unknown: np.ndarray
    touches_fg: np.ndarray
    touches_bg: np.ndarray


def band_system(
    image: np.ndarray, trimap: np.ndarray, epsilon: float, *, chunk: int = 1 << 15
) -> BandSystem:
    """Rows of the closed-form matting Laplacian (3x3 windows) for the unknown pixels of a trimap.

    Windows are those of pymatting's ``cf_laplacian``: centred at least 1 px inside the image, and
    only those that contain an unknown pixel (the others add nothing to unknown rows). Each window
    k with colours ``I`` adds ``delta_ij - (1 + (I_i - mu_k)^T (Sigma_k + eps/9 I3)^-1 (I_j - mu_k))
    / 9`` to ``L_ij``; row i of an unknown pixel is held as a 5x5 stencil of its neighbours.

    Args:
        image: colours, uint8 or float in [0, 1].
        trimap: 1 known foreground, 0 known background, 0.5 unknown.
        epsilon: the Laplacian's regulariser (pymatting's ``epsilon``).
        chunk: windows per vectorised step (bounds the working memory: about 2 kB per window).

    Shape:
        image: (H, W, 3) uint8 or float; trimap: (H, W) -> a system over the N unknown pixels.
    """
    h, w = trimap.shape
    if image.shape != (h, w, 3):
        raise ValueError(f"image must be (H, W, 3) = {(h, w, 3)}, got {image.shape}")
    unknown = trimap == 0.5
    flat_unknown = np.flatnonzero(unknown)
    n = len(flat_unknown)
    row_of = np.full(h * w, n, np.int64)  # n: not an unknown pixel (a discarded row)
    row_of[flat_unknown] = np.arange(n)
    centres = cv2.dilate(unknown.astype(np.uint8), np.ones((3, 3), np.uint8))
    centres[[0, -1], :] = 0
    centres[:, [0, -1]] = 0
    centre_flat = np.flatnonzero(centres)
    win_flat = _WIN[:, 0] * w + _WIN[:, 1]
    colours = image.reshape(-1, 3)
    scale = 1.0 / 255.0 if colours.dtype == np.uint8 else 1.0
    stencil = np.zeros((n + 1) * 25)
    for start in range(0, len(centre_flat), chunk):
        pix = centre_flat[start : start + chunk, None] + win_flat[None, :]  # (m, 9)
        c = colours[pix].astype(np.float64).transpose(0, 2, 1)  # (m, 3, 9)
        c *= scale
        c -= c.mean(axis=2, keepdims=True)  # centred window colours
        cov = c @ c.transpose(0, 2, 1)
        cov[:, [0, 1, 2], [0, 1, 2]] += epsilon
        cov /= 9.0
        # (Sigma + eps/9 I)^-1 by the adjugate of the symmetric 3x3 (np.linalg.solve on the
        # stack took a quarter of the build)
        s00, s01, s02 = cov[:, 0, 0], cov[:, 0, 1], cov[:, 0, 2]
        s11, s12, s22 = cov[:, 1, 1], cov[:, 1, 2], cov[:, 2, 2]
        i00, i01, i02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
        i11, i12, i22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
        det = s00 * i00 + s01 * i01 + s02 * i02
        inv = np.stack([i00, i01, i02, i01, i11, i12, i02, i12, i22], axis=1).reshape(-1, 3, 3)
        inv /= det[:, None, None]
        # L_ij of the window: delta_ij - (1 + c_i^T Sigma^-1 c_j) / 9
        pair = c.transpose(0, 2, 1) @ (inv @ c)  # (m, 9, 9)
        pair += 1.0
        pair *= -1.0 / 9.0
        pair.reshape(len(pix), 81)[:, ::10] += 1.0  # the diagonal
        slots = row_of[pix][:, :, None] * 25 + _PAIR_SLOT[None]
        stencil += np.bincount(slots.ravel(), weights=pair.ravel(), minlength=(n + 1) * 25)
    stencil = stencil[: n * 25].reshape(n, 25)
    # the neighbour of each stencil slot; a slot off the image has a zero weight (no window holds
    # the pair), so clipping its index only keeps the gather in range
    neighbour = flat_unknown[:, None] + (_STENCIL[:, 0] * w + _STENCIL[:, 1])[None, :]
    np.clip(neighbour, 0, h * w - 1, out=neighbour)
    coupled = stencil != 0.0
    fg = (trimap == 1.0).ravel()[neighbour] & coupled
    bg = (trimap == 0.0).ravel()[neighbour] & coupled
    rhs = -np.where(fg, stencil, 0.0).sum(axis=1)
    cols = row_of[neighbour]
    inside = coupled & (cols < n)
    matrix = sp.csr_matrix(
        (stencil[inside], cols[inside], np.concatenate([[0], np.cumsum(inside.sum(axis=1))])),
        shape=(n, n),
    )
    return BandSystem(matrix, rhs, flat_unknown, fg.any(axis=1), bg.any(axis=1))


def solve_band_alpha(
    image: np.ndarray,
    trimap: np.ndarray,
    epsilon: float,
    *,
    x0: np.ndarray | None = None,
    fallback: np.ndarray | None = None,
    rtol: float = 1e-5,
) -> np.ndarray:
    """Alpha of closed-form matting for a trimap whose unknown region is a thin band.

    Args:
        image: colours, uint8 or float in [0, 1].
        trimap: 1 known foreground, 0 known background, 0.5 unknown.
        epsilon: the Laplacian's regulariser.
        x0: a starting guess for the unknown pixels (e.g. a probability the band was drawn from);
            conjugate gradients start from it.
        fallback: values for band components that touch only one known side or none (default:
            their constant solution, the known side's value or 0.5).
        rtol: conjugate gradients stop at ``|r| <= rtol |b|`` (1e-5: on the aeroplane's 8-px band
            within 0.003 of the 1e-12 solution, 1 pixel of 8.1M on the other side of 0.5).

    Shape:
        image: (H, W, 3) uint8, or float in [0, 1]; trimap, x0, fallback: (H, W) -> (H, W)
        float32 in [0, 1] (float32 bounds the memory of 8K images).
    """
    system = band_system(image, trimap, epsilon)
    alpha = np.asarray(trimap, dtype=np.float32).copy()
    n = len(system.unknown)
    if n == 0:
        return alpha
    # Components of the band (coupled through windows): one that touches a single known side (or
    # none) has no boundary to solve for, only a constant.
    _, label = connected_components(system.matrix, directed=False)
    has_fg = np.bincount(label, weights=system.touches_fg) > 0
    has_bg = np.bincount(label, weights=system.touches_bg) > 0
    solvable = (has_fg & has_bg)[label]
    values = np.where(has_fg[label], 1.0, np.where(has_bg[label], 0.0, 0.5))
    if fallback is not None:
        values = np.asarray(fallback, dtype=np.float64).ravel()[system.unknown]
    if solvable.any():
        a = system.matrix[solvable][:, solvable] if not solvable.all() else system.matrix
        b = system.rhs[solvable]
        start = None if x0 is None else np.asarray(x0, np.float64).ravel()[system.unknown][solvable]
        jacobi = sp.diags(1.0 / a.diagonal())
        x, _ = cg(a, b, x0=start, rtol=rtol, atol=0.0, maxiter=10 * len(b), M=jacobi)
        values[solvable] = x
    alpha.ravel()[system.unknown] = values
    return np.clip(alpha, 0.0, 1.0)
