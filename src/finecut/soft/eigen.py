"""The spectral step of semantic soft segmentation (Aksoy et al., SIGGRAPH 2018, section 3.4):
the eigenvectors of the Laplacian with the smallest eigenvalues (the official code:
``eigs(L, 100, 'SM')``).

Large sparse problems use ARPACK in shift-invert mode around a small negative shift (L is
singular, its constant vector has eigenvalue 0, so the shift cannot be 0; METHODS.md measured
``sigma=-1e-5``). The sparse LU factorisation inside dominates: about 19 s for 320x240 pixels and
k = 100 on 2 cores, which is why finecut's fast mode solves this step on superpixels. Small
problems (N <= ``dense_max``) use LAPACK on the dense matrix.

With a mass matrix M (superpixel sizes) the generalised problem ``L v = lambda M v`` is solved
through ``M^-1/2 L M^-1/2``; the returned vectors are M-orthonormal, ``V^T M V = I``, so that
``V^T L V = diag(lambda)`` as in the pixel case.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

log = logging.getLogger(__name__)

__all__ = ["EIGEN_SHIFT", "smallest_eigenvectors"]

#: Shift of the shift-invert Lanczos iteration.
EIGEN_SHIFT = -1e-5


def smallest_eigenvectors(
    lap: sp.spmatrix,
    k: int,
    *,
    mass: np.ndarray | None = None,
    sigma: float = EIGEN_SHIFT,
    dense_max: int = 3000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` eigenpairs of a symmetric Laplacian nearest zero (smallest eigenvalues).

    Shape:
        - lap: (N, N) sparse symmetric.
        - mass: (N,) positive, or None for the identity.
        - output: eigenvalues (k,) ascending, eigenvectors (N, k) float64.

    Args:
        lap: the Laplacian.
        k: how many; clamped to ``N - 2`` on the sparse path and to ``N`` on the dense one.
        mass: diagonal of the mass matrix M of a generalised problem ``L v = lambda M v``.
        sigma: shift of the shift-invert iteration (sparse path).
        dense_max: solve densely when N is at most this.
        seed: seeds ARPACK's start vector (results are then reproducible).

    Returns:
        ``(eigenvalues, eigenvectors)``.
    """
    n = lap.shape[0]
    if lap.shape != (n, n):
        raise ValueError(f"lap must be square, got {lap.shape}")
    lap = sp.csr_matrix(lap, dtype=np.float64)
    scale = None
    if mass is not None:
        mass = np.asarray(mass, dtype=np.float64)
        if mass.shape != (n,) or not np.all(mass > 0):
            raise ValueError(f"mass must be ({n},) and positive")
        scale = 1.0 / np.sqrt(mass)
        lap = (sp.diags(scale) @ lap @ sp.diags(scale)).tocsr()
    lap = ((lap + lap.T) * 0.5).tocsr()  # exact symmetry for the symmetric solvers
    if n <= dense_max:
        k = max(1, min(k, n))
        values, vectors = scipy.linalg.eigh(lap.toarray(), subset_by_index=[0, k - 1])
    else:
        k = max(1, min(k, n - 2))
        v0 = np.random.default_rng(seed).standard_normal(n)
        values, vectors = spla.eigsh(lap, k=k, sigma=sigma, which="LM", v0=v0)
    order = np.argsort(values)
    values, vectors = values[order], vectors[:, order]
    if scale is not None:
        vectors = vectors * scale[:, None]
    log.debug("eigen: N=%d k=%d, eigenvalues %.3g..%.3g", n, k, values[0], values[-1])
    return values, vectors
