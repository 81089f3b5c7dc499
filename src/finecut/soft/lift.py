"""Lifting superpixel soft segments to pixels (finecut's fast mode; not a step of the paper).

The fast pipeline solves the paper's spectral and sparsification steps on the superpixel graph,
where every segment is constant on each superpixel. Superpixel-constant layers cannot hold the
soft, pixel-accurate transitions the paper's pixel-level solve gives (hair, blur), and their
transitions are a superpixel or two too wide. :func:`lift_to_pixels` re-solves the transitions at
full resolution with Levin et al.'s closed-form matting (TPAMI 2008), layer by layer, the way a
trimap is solved:

1. every pixel takes its superpixel's alphas; its layer is the argmax;
2. a pixel is *known* when it lies deeper than ``band`` pixels inside its layer's region and its
   superpixel's top alpha is at least ``confidence``; the rest is the unknown band;
3. each layer solves ``(L + lambda D + mu I) a_k = lambda D t_k + mu a0_k`` with L the pixel
   matting Laplacian, D the known indicator, t_k the known layer's indicator and a0_k the lifted
   superpixel alphas as a weak prior (``mu`` small) for wide unknown areas.

The K systems share one matrix; pymatting's incomplete Cholesky factorisation preconditions the
conjugate gradient (the same solver as ``pymatting.estimate_alpha_cf``). Because ``L 1 = 0`` and
both targets sum to one over the layers, the solutions sum to one at every pixel up to the solver
tolerance, with no coupling term. Matting solutions can overshoot [0, 1] by a little; the caller
clips and renormalises.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import scipy.sparse as sp

from finecut.soft.affinities import Superpixels

log = logging.getLogger(__name__)

__all__ = ["known_mask", "lift_to_pixels"]


def known_mask(
    node_alphas: np.ndarray, superpixels: Superpixels, band: int, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which pixels are certain enough to fix, and the layer each belongs to.

    Shape:
        - node_alphas: (S, K) superpixel alphas.
        - output: known (H, W) bool, layer (H, W) int64.
    """
    labels = superpixels.labels
    layer = node_alphas.argmax(1)[labels]
    known = np.zeros(labels.shape, bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    for k in range(node_alphas.shape[1]):
        region = (layer == k).astype(np.uint8)
        if band > 0:
            region = cv2.erode(region, kernel, borderType=cv2.BORDER_REPLICATE)
        known |= region.astype(bool)
    known &= node_alphas.max(1)[labels] >= confidence
    return known, layer


def lift_to_pixels(
    node_alphas: np.ndarray,
    superpixels: Superpixels,
    matting_laplacian: sp.spmatrix,
    *,
    band: int = 4,
    confidence: float = 0.8,
    known_weight: float = 100.0,
    prior_weight: float = 1e-4,
    rtol: float = 1e-5,
    maxiter: int = 200,
) -> np.ndarray:
    """Superpixel soft segments -> pixel soft segments by trimap-style closed-form matting.

    Shape:
        - node_alphas: (S, K), rows summing to one.
        - matting_laplacian: (H * W, H * W) sparse, the pixel matting Laplacian.
        - output: (H * W, K) float64, rows summing to one up to ``rtol`` (not clipped).

    Args:
        node_alphas: the superpixel segments.
        superpixels: the superpixels they live on.
        matting_laplacian: L of the pixels.
        band: half-width in pixels of the unknown band around layer boundaries.
        confidence: superpixels whose top alpha is lower are unknown as a whole.
        known_weight: lambda, how hard known pixels are held (pymatting's default 100).
        prior_weight: mu, pull of every pixel towards its superpixel's alphas.
        rtol: conjugate-gradient relative tolerance.
        maxiter: conjugate-gradient iteration limit per layer.

    Returns:
        The pixel segments.
    """
    from pymatting import cg, ichol

    node_alphas = np.asarray(node_alphas, dtype=np.float64)
    known, layer = known_mask(node_alphas, superpixels, band, confidence)
    known_flat = known.ravel().astype(np.float64)
    lifted = node_alphas[superpixels.labels.ravel()]
    matrix = (
        sp.csr_matrix(matting_laplacian) + sp.diags(known_weight * known_flat + prior_weight)
    ).tocsr()
    log.debug("lift: %.1f%% of the pixels known", 100.0 * known.mean())
    preconditioner = ichol(matrix)
    out = np.empty_like(lifted)
    layer_flat = layer.ravel()
    for k in range(node_alphas.shape[1]):
        target = known_weight * known_flat * (layer_flat == k) + prior_weight * lifted[:, k]
        out[:, k] = cg(
            matrix, target, x0=lifted[:, k], M=preconditioner, rtol=rtol, maxiter=maxiter
        )
    return out
