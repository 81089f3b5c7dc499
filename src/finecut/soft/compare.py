"""Comparing and scoring soft segmentations (finecut's own measures, not the paper's).

- :func:`match_layers`: pair the layers of two segmentations of one image (Hungarian assignment
  on soft IoU) and give the mean absolute alpha difference of the pairs. Layer order is
  arbitrary in semantic soft segmentation (k-means decides it), so any comparison of two runs
  (fast vs faithful, two versions) has to match layers first.
- :func:`matting_energy`: ``sum_k a_k^T L a_k / N`` under Levin's matting Laplacian of the image,
  how much the layers cut across colour structure (lower is better; 0 for a single layer).
- :func:`opacity`: mean over pixels of the largest alpha, 1 for hard layers, 1 / K for layers
  that are uniformly mixed.
- :func:`object_layers`: how well the layers cover one object: the best single layer and the best
  union of at most two layers against a binary object mask (IoU of the layer cut at 0.5), and,
  given a ground-truth alpha, the mean absolute alpha error of that layer (union) and of its own
  binary cut. ``bench/soft_quality.py`` reports it on DAVIS (issue 14).

Why IoU of the cut and not soft IoU for choosing: the object masks are binary, and the question
the issue asks is whether a user who takes a layer (or two) and cuts it gets the object; that is
the thresholded IoU, on the same rule as :mod:`finecut.metrics` (float alpha > 0.5) and so
comparable to the refinement benchmarks. Soft IoU (``sum min(a, m) / sum max(a, m)``) would also
charge a layer for the soft edge the mask does not have. It is reported next to it, so a layer
that reaches its IoU while half transparent inside the object shows up; whether the soft values
are *right* is what the alpha error against a true alpha measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.optimize import linear_sum_assignment

from finecut.metrics.binary import FLOAT_THRESHOLD, binarize

__all__ = [
    "LayerChoice",
    "ObjectLayers",
    "match_layers",
    "matting_energy",
    "object_layers",
    "opacity",
]


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


@dataclass(frozen=True)
class LayerChoice:
    """One layer, or the union (sum) of two, chosen to cover an object.

    Attributes:
        indices: the layer indices (one, or two in increasing order).
        iou: IoU of the object mask with the layers' alpha cut at 0.5 (``alpha > 0.5``).
        soft_iou: ``sum min(alpha, mask) / sum max(alpha, mask)``.
        alpha_error: mean absolute difference between the alpha and the ground-truth alpha
            (None without one).
        cut_error: the same for the alpha's binary cut, the ``alpha > 0.5`` mask as 0/1 (None
            without a ground-truth alpha). ``alpha_error < cut_error``: the soft values beat
            cutting the layer.
    """

    indices: tuple[int, ...]
    iou: float
    soft_iou: float
    alpha_error: float | None = None
    cut_error: float | None = None


@dataclass(frozen=True)
class ObjectLayers:
    """The result of :func:`object_layers`.

    Attributes:
        layer: the best single layer.
        pair: the best union of at most two layers: the best single layer again when no union
            of two has a higher IoU, so ``pair.iou >= layer.iou`` always (the issue's "best
            layer or union of two layers").
    """

    layer: LayerChoice
    pair: LayerChoice


def _unit_alpha(alpha: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.shape != shape:
        raise ValueError(f"alpha must be (H, W) = {shape} like the layers, got {alpha.shape}")
    if alpha.dtype == np.uint8:
        return alpha.astype(np.float64) / 255.0
    if alpha.dtype == np.uint16:
        return alpha.astype(np.float64) / 65535.0
    if alpha.dtype.kind != "f":
        raise ValueError(f"alpha must be uint8, uint16 or float in [0, 1], got {alpha.dtype}")
    out = alpha.astype(np.float64)
    if not np.isfinite(out).all() or out.min() < -1e-6 or out.max() > 1 + 1e-6:
        raise ValueError("a float alpha must be finite and in [0, 1]")
    return np.clip(out, 0.0, 1.0)


def object_layers(
    alphas: np.ndarray,
    mask: np.ndarray,
    alpha: np.ndarray | None = None,
    region: np.ndarray | None = None,
) -> ObjectLayers:
    """The layer and the union of at most two layers that best cover an object.

    Each candidate (every layer, every sum of two layers) is cut at 0.5 (``> 0.5``, the float
    rule of :func:`finecut.metrics.binarize`) and scored by IoU with ``mask``; ties go to the
    higher soft IoU, then to fewer layers and lower indices. With ``alpha`` (the object's true
    alpha), the chosen layer and union also get their mean absolute alpha error and that of their
    own binary cut, over ``region`` when given (e.g. a trimap's unknown band) else every pixel.

    Shape:
        - alphas: (H, W, K) soft layers in [0, 1] (as :func:`finecut.soft.soft_segment` gives).
        - mask: (H, W) binary object mask (bool, 0/1, 0/255 or float; read by
          :func:`finecut.metrics.binarize`), not empty.
        - alpha: (H, W) float in [0, 1], uint8 or uint16, or None.
        - region: (H, W) bool, or None.

    Raises:
        ValueError: shapes that do not fit, an empty mask or region, an alpha out of range.
    """
    layers = _flat(alphas)
    h, w = np.asarray(alphas).shape[:2]
    if layers.shape[1] < 1:
        raise ValueError("alphas must hold at least one layer")
    target = binarize(mask, "mask")
    if target.shape != (h, w):
        raise ValueError(f"mask must be (H, W) = {(h, w)} like the layers, got {target.shape}")
    target = target.ravel()
    if not target.any():
        raise ValueError("the object mask is empty")
    truth = None if alpha is None else _unit_alpha(alpha, (h, w)).ravel()
    keep = None
    if region is not None:
        keep = np.asarray(region, dtype=bool)
        if keep.shape != (h, w):
            raise ValueError(f"region must be (H, W) = {(h, w)}, got {keep.shape}")
        keep = keep.ravel()
        if not keep.any():
            raise ValueError("the region is empty")

    n_object = float(target.sum())
    inside = layers[target].sum(0)  # (K,) alpha mass inside the object
    outside = layers[~target].sum(0)

    def choose(candidates: list[tuple[int, ...]]) -> LayerChoice:
        best, best_key = None, None
        for indices in candidates:
            soft = layers[:, list(indices)].sum(1)
            cut = soft > FLOAT_THRESHOLD
            inter = np.count_nonzero(cut & target)
            iou = inter / np.count_nonzero(cut | target)
            mass_in = inside[list(indices)].sum()
            soft_iou = mass_in / (n_object + outside[list(indices)].sum())
            key = (iou, soft_iou, -len(indices))
            if best_key is None or key > best_key:
                best, best_key = (indices, soft, cut), key
        indices, soft, cut = best
        iou, soft_iou, _ = best_key
        errors: tuple[float | None, float | None] = (None, None)
        if truth is not None:
            sel = slice(None) if keep is None else keep
            errors = (
                float(np.abs(soft[sel] - truth[sel]).mean()),
                float(np.abs(cut[sel] - truth[sel]).mean()),
            )
        return LayerChoice(tuple(int(i) for i in indices), float(iou), float(soft_iou), *errors)

    k = layers.shape[1]
    singles = [(i,) for i in range(k)]
    layer = choose(singles)
    pair = choose([layer.indices, *combinations(range(k), 2)])
    return ObjectLayers(layer=layer, pair=pair)
