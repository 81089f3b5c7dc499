"""The graph Laplacian of semantic soft segmentation (Aksoy et al., SIGGRAPH 2018, eq. 6):
``L = D - W`` with ``W = W_matting + 0.01 W_semantic + 0.01 W_color`` (METHODS.md section 5).

- :func:`laplacian`: ``D - W`` of any symmetric affinity (``affinityMatrixToLaplacian.m``).
- :func:`pixel_laplacian`: the paper's full-resolution Laplacian; superpixel affinities reach the
  pixels at the superpixels' centroid pixels, as in the official code.
- :func:`superpixel_laplacian`: the same graph seen from the superpixels (finecut's fast mode):
  the matting part projected onto piecewise-constant superpixel indicators (Galerkin projection
  ``P^T L_matting P``, which sums the matting affinities across each pair of touching
  superpixels), the superpixel affinities added as they are. A vector that is constant on every
  superpixel has the same energy under both: ``(P x)^T L_pixel (P x) = x^T L_sp x`` whenever each
  centroid pixel lies inside its own superpixel.
- :func:`basis_laplacian`: the same on a colour-linear superpixel basis
  (:mod:`finecut.soft.basis`): the matting part projected onto every superpixel's constant and
  colour-linear functions, the superpixel affinities acting on the constants.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from finecut.soft.affinities import Superpixels, lift_to_centroids
from finecut.soft.basis import ColourLinearBasis

__all__ = [
    "COLOR_WEIGHT",
    "SEMANTIC_WEIGHT",
    "basis_laplacian",
    "laplacian",
    "pixel_laplacian",
    "superpixel_laplacian",
]

#: Weight of the semantic affinity in W (eq. 6).
SEMANTIC_WEIGHT = 0.01
#: Weight of the nonlocal colour affinity in W (eq. 6).
COLOR_WEIGHT = 0.01


def laplacian(affinity: sp.spmatrix) -> sp.csr_matrix:
    """Unnormalised graph Laplacian ``D - W`` with ``D = diag(W 1)``.

    Rows sum to zero; symmetric when W is. Positive semidefinite when W >= 0 (the semantic
    affinity can be negative, so the full L of the paper need not be).

    Shape:
        - affinity: (N, N) sparse.
        - output: (N, N) sparse CSR float64.
    """
    w = sp.csr_matrix(affinity, dtype=np.float64)
    degree = np.asarray(w.sum(axis=1)).ravel()
    return (sp.diags(degree, format="csr") - w).tocsr()


def pixel_laplacian(
    matting: sp.spmatrix,
    semantic: sp.spmatrix,
    color: sp.spmatrix,
    superpixels: Superpixels,
    *,
    semantic_weight: float = SEMANTIC_WEIGHT,
    color_weight: float = COLOR_WEIGHT,
) -> sp.csr_matrix:
    """The paper's pixel-level Laplacian, superpixel affinities at centroid pixels.

    Shape:
        - matting: (N, N) pixel affinity, N = H * W.
        - semantic, color: (S, S) superpixel affinities.
        - output: (N, N) sparse CSR.
    """
    lifted = semantic_weight * semantic + color_weight * color
    return laplacian(matting + lift_to_centroids(lifted, superpixels))


def superpixel_laplacian(
    matting: sp.spmatrix,
    semantic: sp.spmatrix,
    color: sp.spmatrix,
    superpixels: Superpixels,
    *,
    semantic_weight: float = SEMANTIC_WEIGHT,
    color_weight: float = COLOR_WEIGHT,
) -> sp.csr_matrix:
    """The paper's Laplacian restricted to superpixel-constant vectors (Galerkin projection).

    Shape:
        - matting: (N, N) pixel affinity.
        - semantic, color: (S, S) superpixel affinities.
        - output: (S, S) sparse CSR; its mass matrix is ``diag(superpixels.sizes)``.
    """
    assignment = superpixels.assignment()
    projected = (assignment.T @ laplacian(matting) @ assignment).tocsr()
    return (projected + laplacian(semantic_weight * semantic + color_weight * color)).tocsr()


def basis_laplacian(
    matting: sp.spmatrix,
    semantic: sp.spmatrix,
    color: sp.spmatrix,
    basis: ColourLinearBasis,
    *,
    semantic_weight: float = SEMANTIC_WEIGHT,
    color_weight: float = COLOR_WEIGHT,
) -> sp.csr_matrix:
    """The paper's Laplacian on a colour-linear superpixel basis (Galerkin projection).

    ``x^T L x`` is the pixel matting energy of the function ``basis.matrix @ x`` plus the
    superpixel affinities' energy of its superpixel means, so on constant coefficients it equals
    :func:`superpixel_laplacian`.

    Shape:
        - matting: (N, N) pixel affinity.
        - semantic, color: (S, S) superpixel affinities.
        - output: (C, C) sparse CSR; its mass matrix is ``diag(basis.mass)``.
    """
    projected = basis.project(laplacian(matting))
    coarse = laplacian(semantic_weight * semantic + color_weight * color)
    return (projected + basis.embed(coarse)).tocsr()
