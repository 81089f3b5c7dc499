"""The two sparsification steps of semantic soft segmentation (Aksoy et al., SIGGRAPH 2018,
section 3.4; METHODS.md section 5).

- :func:`constrained_sparsification`: soft segments as linear combinations of the Laplacian's
  eigenvectors, ``alpha_k = V y_k`` with the last one ``1 - sum(others)`` (so they sum to one),
  pushed towards 0 or 1 by iteratively reweighted least squares on the sparsity penalty
  ``|alpha|^p + |1 - alpha|^p`` (p = 0.8, weights 0.3^p), eigenvalues as the smoothness
  regulariser (spectral matting, Levin et al. TPAMI 2008, eq. 9), 40 iterations from k-means
  segments; segments whose max |alpha| falls below 0.1 are pruned every quarter of the run.
- :func:`relaxed_sparsification`: from grouped segments, alpha < 0.1 -> 0 and > 0.9 -> 1 and
  renormalised, then ``E = sum_k a_k^T L a_k + sparsity + fidelity |a - a0|^2 + 100 |sum a - 1|^2``
  with a per-pixel sparsity exponent ``0.9 + min(|grad I|, 0.1)``; 20 outer reweighting steps of
  100 conjugate-gradient iterations, then one 1000-iteration solve without the sparsity term.

Both take an optional ``mass`` (N,): the pixel count of each node when the graph is made of
superpixels (finecut's fast mode), so sums over pixels become mass-weighted sums over nodes.

The constrained step's linear system has (K - 1) E unknowns (39 x 100 = 3900 in the paper) and a
block structure: block-diagonal plus the same E x E matrix in every block (the last segment
depends on all others). The official code solves it densely; finecut solves it exactly through
that structure (:func:`_solve_coupled`), K small E x E systems instead of one (K E)^3 solve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg.blas import dsyrk

log = logging.getLogger(__name__)

__all__ = [
    "constrained_sparsification",
    "image_gradient",
    "relaxed_sparsification",
    "sparsity_power",
]

# Farid & Simoncelli's 13-tap derivative / prefilter pair ("Differentiation of discrete
# multidimensional signals", TIP 2004), the taps of the official ``imageGradient(image, false, 6)``.
_DERIVATIVE = np.array(
    [0.0001, 0.0019, 0.0142, 0.0509, 0.0963, 0.0878, 0.0, -0.0878, -0.0963, -0.0509, -0.0142,
     -0.0019, -0.0001]
)  # fmt: skip
_PREFILTER = np.array(
    [0.0, 0.0007, 0.0071, 0.0374, 0.1126, 0.2119, 0.2605, 0.2119, 0.1126, 0.0374, 0.0071, 0.0007,
     0.0]
)  # fmt: skip


def image_gradient(image: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude ``sqrt(sum_c (dI_c/dx)^2 + (dI_c/dy)^2)``, border replicated.

    Shape:
        - image: (H, W, 3) float in [0, 1].
        - output: (H, W) float64.
    """
    img = np.ascontiguousarray(image, dtype=np.float64)
    gx = cv2.sepFilter2D(img, -1, _DERIVATIVE, _PREFILTER, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(img, -1, _PREFILTER, _DERIVATIVE, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt((gx * gx + gy * gy).reshape(*img.shape[:2], -1).sum(-1))


def sparsity_power(image: np.ndarray, base: float = 0.9, cap: float = 0.1) -> np.ndarray:
    """Per-pixel sparsity exponent of the relaxed step, ``base + min(|grad I|, cap)``: softer
    (closer to 1) on edges, sparser in flat regions.

    Shape:
        - image: (H, W, 3).
        - output: (H, W) float64 in [base, base + cap].
    """
    return base + np.minimum(image_gradient(image), cap)


# --------------------------------------------------------------------------------------------
# constrained sparsification
# --------------------------------------------------------------------------------------------


def _gram(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``V^T diag(w) V`` for every column of ``w >= 0``: (N, E), (N, K) -> (K, E, E).

    The cost of the constrained step at pixel level (N E^2 per segment and iteration). BLAS
    ``syrk`` on ``sqrt(w) V`` computes one triangle only, 2-3x faster than a general product.
    """
    out = np.empty((weights.shape[1], vectors.shape[1], vectors.shape[1]))
    roots = np.sqrt(weights)
    for k in range(weights.shape[1]):
        upper = dsyrk(1.0, (vectors * roots[:, k, None]).T)  # F-ordered (E, N): a a^T
        out[k] = np.triu(upper) + np.triu(upper, 1).T
    return out


def _solve_coupled(
    blocks: np.ndarray, shared: np.ndarray, rhs: np.ndarray, shared_rhs: np.ndarray
) -> np.ndarray:
    """Solve ``A_k y_k + S sum_j y_j = b_k + c`` for k = 1..K-1, exactly.

    With ``s = sum_j y_j``: ``y_k = A_k^-1 (b_k + c - S s)`` and, summing over k,
    ``(I + G S) s = sum_k A_k^-1 (b_k + c)`` with ``G = sum_k A_k^-1``.

    Shape: blocks (K-1, E, E), shared (E, E), rhs (K-1, E), shared_rhs (E,) -> (K-1, E).
    """
    n, e = rhs.shape
    eye = np.broadcast_to(np.eye(e), (n, e, e))
    stacked = np.concatenate([eye, (rhs + shared_rhs)[:, :, None]], axis=2)
    solved = np.linalg.solve(blocks, stacked)  # [A_k^-1 | A_k^-1 (b_k + c)]
    inv, base = solved[:, :, :e], solved[:, :, e]
    total = np.linalg.solve(np.eye(e) + inv.sum(0) @ shared, base.sum(0))
    return base - inv @ (shared @ total)


def constrained_sparsification(
    eigenvectors: np.ndarray,
    eigenvalues: np.ndarray,
    initial_labels: np.ndarray,
    *,
    mass: np.ndarray | None = None,
    n_iter: int = 40,
    power: float = 0.8,
    prune_threshold: float = 0.1,
    penalty_weight: float = 0.3,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sparse soft segments in the span of the eigenvectors (spectral matting's IRLS).

    Shape:
        - eigenvectors: (N, E), orthonormal (M-orthonormal with a mass).
        - eigenvalues: (E,).
        - initial_labels: (N,) int, the initial hard segments 0..K-1 (k-means on features).
        - mass: (N,) positive node weights, or None (pixels).
        - output: (N, K') float64, K' <= K after pruning; every row sums to 1.

    Args:
        eigenvectors: the smallest eigenvectors of the Laplacian.
        eigenvalues: their eigenvalues, the regulariser (negative round-off clipped to 0).
        initial_labels: initial segmentation.
        mass: node masses.
        n_iter: IRLS iterations (40).
        power: sparsity exponent p (0.8).
        prune_threshold: segments with ``max |alpha| <= prune_threshold`` are dropped after
            iterations ceil(n/4) + 1, 2 ceil(n/4) + 1, ... (the official code's schedule; never
            after the last iteration, so that the rows still sum to one).
        penalty_weight: weight w of the penalty ``w^p (|a|^p + |1 - a|^p)`` (0.3).
        progress: called as ``progress(iteration, n_iter)``.

    Returns:
        The soft segments.
    """
    vectors = np.asarray(eigenvectors, dtype=np.float64)
    n, e = vectors.shape
    labels = np.asarray(initial_labels).ravel()
    if labels.shape != (n,):
        raise ValueError(f"initial_labels must be ({n},), got {labels.shape}")
    m = np.ones(n) if mass is None else np.asarray(mass, dtype=np.float64)
    reg = np.diag(np.maximum(np.asarray(eigenvalues, dtype=np.float64)[:e], 0.0))
    _, labels = np.unique(labels, return_inverse=True)
    alpha = np.eye(labels.max() + 1)[labels]
    scale = penalty_weight**power
    floor = 1e-10  # the official code's thr_e: keeps |a|^(p-2) finite at exact 0 / 1
    cycle = int(np.ceil(n_iter / 4))
    next_prune = cycle
    for it in range(1, n_iter + 1):
        k = alpha.shape[1]
        if k < 2:  # one segment left: it is everything
            alpha = np.ones((n, 1))
            break
        e1 = scale * np.maximum(np.abs(alpha - 1.0), floor) ** (power - 2.0)
        e0 = scale * np.maximum(np.abs(alpha), floor) ** (power - 2.0)
        grams = _gram(vectors, m[:, None] * (e1 + e0)) + reg
        rhs = vectors.T @ (m[:, None] * e1[:, : k - 1])
        shared_rhs = vectors.T @ (m * e0[:, k - 1])
        coeffs = _solve_coupled(grams[: k - 1], grams[k - 1], rhs.T, shared_rhs)
        alpha = np.empty((n, k))
        alpha[:, : k - 1] = vectors @ coeffs.T
        alpha[:, k - 1] = 1.0 - alpha[:, : k - 1].sum(1)
        if next_prune < it < n_iter:  # never on the last iteration: rows must sum to one
            keep = np.abs(alpha).max(0) > prune_threshold
            if not keep.all():
                log.debug("constrained: iteration %d prunes %d segments", it, (~keep).sum())
                alpha = alpha[:, keep]
                # The official code keeps the rest as they are (they no longer sum to one until
                # the next solve re-derives the last segment).
            next_prune += cycle
        if progress is not None:
            progress(it, n_iter)
    return alpha


# --------------------------------------------------------------------------------------------
# relaxed sparsification
# --------------------------------------------------------------------------------------------


def _operator(
    lap: sp.csr_matrix, n: int, k: int, node_diag: np.ndarray, coupling: np.ndarray
) -> spla.LinearOperator:
    """``X -> L X + node_diag * X + coupling * sum_k X`` on flattened (N, K) arrays."""

    def matvec(x: np.ndarray) -> np.ndarray:
        xs = x.reshape(n, k)
        out = lap @ xs + node_diag * xs + coupling[:, None] * xs.sum(1, keepdims=True)
        return out.ravel()

    return spla.LinearOperator((n * k, n * k), matvec=matvec, dtype=np.float64)


def _block_jacobi(
    lap_diag: np.ndarray, n: int, k: int, node_diag: np.ndarray, coupling: np.ndarray
) -> spla.LinearOperator:
    """Inverse of each node's K x K block ``diag(d) + c 1 1^T`` (Sherman-Morrison)."""
    d = lap_diag[:, None] + node_diag
    inv_d = 1.0 / d
    factor = coupling / (1.0 + coupling * inv_d.sum(1))

    def matvec(r: np.ndarray) -> np.ndarray:
        rs = r.reshape(n, k) * inv_d
        return (rs - factor[:, None] * inv_d * rs.sum(1, keepdims=True)).ravel()

    return spla.LinearOperator((n * k, n * k), matvec=matvec, dtype=np.float64)


def _cg(
    lap: sp.csr_matrix,
    x: np.ndarray,
    node_diag: np.ndarray,
    coupling: np.ndarray,
    rhs: np.ndarray,
    maxiter: int,
    rtol: float,
    precondition: bool,
) -> np.ndarray:
    n, k = x.shape
    op = _operator(lap, n, k, node_diag, coupling)
    pre = _block_jacobi(lap.diagonal(), n, k, node_diag, coupling) if precondition else None
    out, _ = spla.cg(op, rhs.ravel(), x0=x.ravel(), rtol=rtol, maxiter=maxiter, M=pre)
    return out.reshape(n, k)


def relaxed_sparsification(
    alphas: np.ndarray,
    lap: sp.spmatrix,
    *,
    power: float | np.ndarray = 0.9,
    mass: np.ndarray | None = None,
    n_outer: int = 20,
    cg_iter: int = 100,
    final_cg_iter: int = 1000,
    sparsity_weight: float = 1.0,
    fidelity_weight: float = 1.0,
    sum_weight: float = 100.0,
    low: float = 0.1,
    high: float = 0.9,
    rtol: float = 1e-6,
    precondition: bool = False,
    values: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Refine grouped soft segments: sparser, smooth under L, summing to one.

    Each outer step linearises the sparsity penalty ``|a|^p + |1 - a|^p`` at the current alphas
    (``u = max(|a|, 0.01)^(p-2)``, ``v = max(|1 - a|, 0.01)^(p-2)``) and runs ``cg_iter``
    conjugate-gradient iterations on

        ``(L + M (sigma_s diag(u + v) + sigma_f I + delta 1 1^T)) a = M (sigma_s v + sigma_f a0
        + delta)``

    warm-started from the current alphas (``a0`` the thresholded input, ``1 1^T`` couples the
    K layers of one node). A last solve drops the sparsity term and uses the current alphas as
    ``a0``. The official code runs MATLAB's ``pcg`` without a preconditioner (tolerance 1e-6);
    ``precondition=True`` adds the exact inverse of each node's K x K diagonal block.

    With ``values`` the unknowns are coefficients of a basis (:mod:`finecut.soft.basis`): rows
    where ``values`` is True hold a superpixel's mean alpha and take the sparsity, the
    thresholds and the sum-to-one target as above; the other rows are coefficients of zero-mean
    functions: they keep the fidelity and the coupling, their sum over layers is held at 0 and
    they take no sparsity term (the sparsity is measured on the means).

    Shape:
        - alphas: (N, K) soft segments.
        - lap: (N, N) sparse Laplacian.
        - power: scalar or (N,) sparsity exponents.
        - mass: (N,) node masses or None.
        - output: (N, K) float64 (not clipped; rows sum to about one).

    Args:
        alphas: the grouped segments.
        lap: the Laplacian.
        power: sparsity exponent(s) p.
        mass: node masses.
        n_outer: reweighting steps (20).
        cg_iter: CG iterations per step (100).
        final_cg_iter: CG iterations of the last solve (1000).
        sparsity_weight: sigma_s (1).
        fidelity_weight: sigma_f (1).
        sum_weight: delta, the sum-to-one penalty (100).
        low: alphas below become 0 before the start (0.1).
        high: alphas above become 1 before the start (0.9).
        rtol: CG relative residual tolerance.
        precondition: use the block-Jacobi preconditioner.
        values: (N,) bool, the rows that hold alpha values (None: all of them).
        progress: called as ``progress(step, n_outer + 1)``.

    Returns:
        The refined segments.
    """
    lap = sp.csr_matrix(lap, dtype=np.float64)
    a = np.array(alphas, dtype=np.float64)
    n, k = a.shape
    if lap.shape != (n, n):
        raise ValueError(f"lap must be ({n}, {n}) for alphas of shape {a.shape}, got {lap.shape}")
    m = np.ones(n) if mass is None else np.asarray(mass, dtype=np.float64)
    p = np.broadcast_to(np.asarray(power, dtype=np.float64).reshape(-1), (n,))[:, None]
    is_value = np.ones(n, bool) if values is None else np.asarray(values, bool).reshape(-1)
    if is_value.shape != (n,):
        raise ValueError(f"values must be ({n},), got {is_value.shape}")
    target = is_value.astype(np.float64)[:, None]  # the layers' sum: 1 on values, 0 elsewhere

    v_rows = a[is_value]
    v_rows[v_rows < low] = 0.0
    v_rows[v_rows > high] = 1.0
    total = v_rows.sum(1, keepdims=True)
    a[is_value] = np.where(total > 0, v_rows / np.where(total > 0, total, 1.0), 1.0 / k)
    a0 = a.copy()
    coupling = sum_weight * m
    for step in range(1, n_outer + 1):
        u = np.maximum(np.abs(a), 1e-2) ** (p - 2.0)
        v = np.maximum(np.abs(1.0 - a), 1e-2) ** (p - 2.0)
        node_diag = m[:, None] * (sparsity_weight * (u + v) * target + fidelity_weight)
        rhs = m[:, None] * (
            sparsity_weight * v * target + fidelity_weight * a0 + sum_weight * target
        )
        a = _cg(lap, a, node_diag, coupling, rhs, cg_iter, rtol, precondition)
        if progress is not None:
            progress(step, n_outer + 1)
    if final_cg_iter > 0:
        node_diag = np.broadcast_to(m[:, None] * fidelity_weight, (n, k))
        rhs = m[:, None] * (fidelity_weight * a + sum_weight * target)
        a = _cg(lap, a, node_diag, coupling, rhs, final_cg_iter, rtol, precondition)
    if progress is not None:
        progress(n_outer + 1, n_outer + 1)
    return a
