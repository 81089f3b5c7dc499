"""A colour-linear superpixel basis for the fast mode (finecut; not a step of the paper).

Why: the fast mode used to solve the paper's energy on superpixel-constant functions (the
Galerkin projection ``P^T L P`` with P the superpixel indicators). The matting Laplacian is
cheap on functions that are *affine in colour* inside every small window (Levin et al., TPAMI
2008), and an object's soft edge inside a superpixel is such a function, not a constant one.
Restricted to constants, the cheapest functions are the ones that change least between touching
superpixels, smooth spatial waves, and the eigenvectors, hence the layers, followed position
instead of objects (``bench/soft_eigenvectors.py``, ``docs/img/soft_eigenvectors.png``).

The basis here adds, in every superpixel s, its colour-linear functions: with ``x_p`` the colour
of pixel p minus the superpixel's mean colour, and ``C_s = U diag(l) U^T`` the superpixel's colour
covariance, the functions ``z_pj = (x_p . u_j) / sqrt(l_j)`` for each principal direction j with
standard deviation ``sqrt(l_j)`` at least ``min_std``. Flat superpixels get no such function
(there a colour-linear function would follow noise), textured ones up to three. Every column has
the squared norm of its superpixel's pixel count and all columns are orthogonal (the z's have zero
mean and identity covariance in their superpixel), so the mass matrix ``P^T P`` is diagonal: the
same interface as the superpixel graph (:func:`finecut.soft.eigen.smallest_eigenvectors`'s
``mass``). A function's value averaged over superpixel s is its coefficient on column s.

No library builds this (scikit-image and scipy give the superpixels and sparse matrices; the
basis is specific to the matting Laplacian's colour-line model), hence written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from finecut.soft.affinities import Superpixels

__all__ = ["ColourLinearBasis", "colour_linear_basis"]

#: Colour standard deviation (image in [0, 1]) below which a direction gets no function.
MIN_STD = 0.02


@dataclass(frozen=True)
class ColourLinearBasis:
    """Per-superpixel constant and colour-linear functions.

    Attributes:
        matrix: (N, C) sparse CSR, N pixels; columns 0..S-1 are the superpixels' indicators,
            columns S..C-1 the colour-linear functions.
        count: S, the number of superpixels.
        owner: (C,) int64, the superpixel of every column.
        mass: (C,) float64, every column's squared norm (its superpixel's pixel count);
            ``matrix.T @ matrix == diag(mass)``.
    """

    matrix: sp.csr_matrix
    count: int
    owner: np.ndarray
    mass: np.ndarray

    @property
    def size(self) -> int:
        """C, the number of basis functions."""
        return int(self.owner.shape[0])

    @property
    def is_value(self) -> np.ndarray:
        """(C,) bool: True on the constant columns (a coefficient there is a mean alpha)."""
        out = np.zeros(self.size, bool)
        out[: self.count] = True
        return out

    def constant(self) -> np.ndarray:
        """(C,) the coefficients of the function 1."""
        return self.is_value.astype(np.float64)

    def to_pixels(self, coefficients: np.ndarray) -> np.ndarray:
        """Coefficients (C, K) -> pixel values (N, K)."""
        return np.asarray(self.matrix @ coefficients)

    def project(self, operator: sp.spmatrix) -> sp.csr_matrix:
        """``P^T A P`` of a pixel operator A (N, N) -> (C, C)."""
        p = self.matrix
        return (p.T @ sp.csr_matrix(operator) @ p).tocsr()

    def embed(self, operator: sp.spmatrix) -> sp.csr_matrix:
        """A superpixel operator (S, S) acting on the constant columns only -> (C, C)."""
        coo = sp.coo_matrix(operator)
        return sp.csr_matrix((coo.data, (coo.row, coo.col)), shape=(self.size, self.size))


def colour_linear_basis(
    image: np.ndarray, superpixels: Superpixels, min_std: float = MIN_STD
) -> ColourLinearBasis:
    """The constant and colour-linear functions of every superpixel.

    Shape:
        - image: (H, W, 3) float in [0, 1], the image the superpixels were cut from.
        - output: a basis of C = S + (directions kept) functions.

    Args:
        image: the image.
        superpixels: its superpixels.
        min_std: directions whose colour standard deviation is below this get no function
            (0: keep every direction with non-zero variance).
    """
    h, w = superpixels.labels.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and superpixels {(h, w)} differ in size")
    n, s = h * w, superpixels.count
    lab = superpixels.labels.ravel()
    sizes = superpixels.sizes
    colour = np.asarray(image, dtype=np.float64).reshape(n, -1)
    centred = colour - superpixels.means(colour)[lab]
    d = centred.shape[1]
    cov = np.empty((s, d, d))
    for i in range(d):
        for j in range(i, d):
            cov[:, i, j] = cov[:, j, i] = np.bincount(lab, centred[:, i] * centred[:, j], s)
    cov /= sizes[:, None, None]
    variance, directions = np.linalg.eigh(cov)  # (S, d), (S, d, d) columns
    keep = variance > max(min_std, 1e-6) ** 2
    index = np.full((s, d), -1, np.int64)
    index[keep] = s + np.arange(int(keep.sum()))
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, variance, 1.0)), 0.0)
    z = np.einsum("pc,pcj->pj", centred, directions[lab]) * scale[lab]  # (N, d)

    pixel_keep = keep[lab]  # (N, d)
    rows = [np.arange(n)]
    cols = [lab]
    vals = [np.ones(n)]
    for j in range(d):
        where = np.flatnonzero(pixel_keep[:, j])
        rows.append(where)
        cols.append(index[lab[where], j])
        vals.append(z[where, j])
    size = s + int(keep.sum())
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, size)
    )
    owner = np.concatenate([np.arange(s), np.nonzero(keep)[0]])
    # np.nonzero walks (superpixel, direction) in row-major order, as index[keep] was filled.
    return ColourLinearBasis(matrix, s, owner.astype(np.int64), sizes[owner].astype(np.float64))
