"""Comparing and scoring soft segmentations (finecut's own measures, not the paper's).

- :func:`match_layers`: pair the layers of two segmentations of one image (Hungarian assignment
  on soft IoU) and give the mean absolute alpha difference of the pairs. Layer order is
  arbitrary in semantic soft segmentation (k-means decides it), so any comparison of two runs
  (fast vs faithful, two versions) has to match layers first.
- :func:`matting_energy`: ``sum_k a_k^T L a_k / N`` under Levin's matting Laplacian of the image,
  how much the layers cut across colour structure (lower is better; 0 for a single layer).
- :func:`opacity`: mean over pixels of the largest alpha, 1 for hard layers, 1 / K for layers
  that are uniformly mixed.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["match_layers", "matting_energy", "opacity"]


def _flat(alphas: np.ndarray) -> np.ndarray:
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 3:
        raise ValueError(f"alphas must be (H, W, K), got {alphas.shape}")
    return alphas.reshape(-1, alphas.shape[2])


def match_layers(reference: np.ndarray, other: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Match layers by soft IoU (Hungarian) and measure the matched difference.

    With different layer counts, the missing layers count as all-zero layers, so a layer left
    without a partner adds its whole alpha to the error.

    Shape:
        - reference, other: (H, W, K1) and (H, W, K2), same H, W.

    Returns:
        ``(mae, pairs)``: the mean absolute alpha difference over all pixels and
        ``max(K1, K2)`` layer pairs, and the ``(reference layer, other layer)`` pairs matched.
    """
    a, b = _flat(reference), _flat(other)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"segmentations differ in size: {reference.shape} vs {other.shape}")
    inter = a.T @ b
    union = a.sum(0)[:, None] + b.sum(0)[None, :] - inter
    rows, cols = linear_sum_assignment(-inter / np.maximum(union, 1e-12))
    k = max(a.shape[1], b.shape[1])
    matched = np.abs(a[:, rows] - b[:, cols]).sum()
    unmatched = a[:, np.setdiff1d(np.arange(a.shape[1]), rows)].sum()
    unmatched += b[:, np.setdiff1d(np.arange(b.shape[1]), cols)].sum()
    mae = float((matched + unmatched) / (a.shape[0] * k))
    return mae, [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def matting_energy(alphas: np.ndarray, image: np.ndarray, eps: float = 1e-7) -> float:
    """``sum_k a_k^T L a_k / (H W)`` with L the closed-form matting Laplacian (radius 1).

    Shape:
        - alphas: (H, W, K).
        - image: (H, W, 3) float in [0, 1].
    """
    from pymatting import cf_laplacian

    lap = cf_laplacian(np.ascontiguousarray(image, dtype=np.float64), epsilon=eps, radius=1)
    a = _flat(alphas)
    return float(np.einsum("nk,nk->", a, lap @ a) / a.shape[0])


def opacity(alphas: np.ndarray) -> float:
    """Mean over pixels of the largest alpha.

    Shape:
        - alphas: (H, W, K).
    """
    return float(_flat(alphas).max(1).mean())
