"""Semantic feature preprocessing for semantic soft segmentation (Aksoy et al., SIGGRAPH 2018,
supplementary section 1.1; METHODS.md section 5).

Raw per-pixel features (the paper's network gives 128-D) become the 3-D features the affinities
use: clip to [-5, 5], guided-filter every channel with the image as guide, PCA to 3 dimensions,
then normalise each dimension to [0, 1].

Guided-filter window: the official MATLAB code calls ``imguidedfilter(..., 'NeighborhoodSize',
10)``, a 10x10 window (radius ~5) with MATLAB's default smoothing 0.01 for a [0, 1] guide;
METHODS.md writes "radius ~10". finecut follows the official code (``radius=5``, ``eps=0.01``);
pass ``radius=10`` for the other reading.

When a user brings no features, :func:`fallback_features` gives colour + position features: the
pipeline still runs (it becomes a spectral-matting-like colour segmentation) but layers follow
colour, not objects.

Plain numpy/OpenCV.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_CLIP",
    "GUIDE_EPS",
    "GUIDE_RADIUS",
    "fallback_features",
    "guided_filter_channels",
    "pca_features",
    "preprocess_features",
]

#: Raw features are clipped to [-FEATURE_CLIP, FEATURE_CLIP] (official code: network instability).
FEATURE_CLIP = 5.0
#: Guided-filter radius (official code: 10x10 window).
GUIDE_RADIUS = 5
#: Guided-filter regulariser for a [0, 1] guide (MATLAB's imguidedfilter default).
GUIDE_EPS = 0.01
# Channels filtered per OpenCV box-filter call: bounds the temporary memory to a few (H, W, 64).
_CHUNK = 16


def _box_sum(x: np.ndarray, radius: int) -> np.ndarray:
    k = 2 * radius + 1
    return cv2.boxFilter(x, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)


def guided_filter_channels(
    guide: np.ndarray, src: np.ndarray, radius: int = GUIDE_RADIUS, eps: float = GUIDE_EPS
) -> np.ndarray:
    """He et al.'s colour guided filter (TPAMI 2013) applied to every channel of ``src``.

    Same filter as :func:`finecut.refine.baselines.guided_filter` (windows clipped at the border,
    full 3x3 guide covariance), batched: the guide's window statistics and the inverse of
    ``Sigma_k + eps U`` are computed once and shared by all channels, so filtering 128 feature
    channels costs about as much as a few single-channel filters (the single-channel function
    would recompute the 3x3 inverses 128 times).

    Shape:
        - guide: (H, W, 3), float in [0, 1].
        - src: (H, W, D), any D >= 1.
        - output: (H, W, D) float64.

    Args:
        guide: guidance image I.
        src: channels p to filter.
        radius: window radius r >= 0 (side 2r + 1).
        eps: regulariser > 0 in units of guide variance.

    Returns:
        The filtered channels.
    """
    guide = np.ascontiguousarray(guide, dtype=np.float64)
    src = np.asarray(src, dtype=np.float64)
    if guide.ndim != 3 or guide.shape[2] != 3:
        raise ValueError(f"guide must be (H, W, 3), got {guide.shape}")
    if src.ndim != 3 or src.shape[:2] != guide.shape[:2]:
        raise ValueError(f"src must be (H, W, D) with (H, W) = {guide.shape[:2]}, got {src.shape}")
    h, w, _ = guide.shape
    count = _box_sum(np.ones((h, w)), radius)[..., None]

    def mean(x: np.ndarray) -> np.ndarray:
        return _box_sum(x, radius) / count

    r, g, b = guide[..., 0], guide[..., 1], guide[..., 2]
    m = mean(np.dstack([r, g, b, r * r, r * g, r * b, g * g, g * b, b * b]))
    mean_i = m[..., :3]
    s_rr = m[..., 3] - mean_i[..., 0] ** 2 + eps
    s_rg = m[..., 4] - mean_i[..., 0] * mean_i[..., 1]
    s_rb = m[..., 5] - mean_i[..., 0] * mean_i[..., 2]
    s_gg = m[..., 6] - mean_i[..., 1] ** 2 + eps
    s_gb = m[..., 7] - mean_i[..., 1] * mean_i[..., 2]
    s_bb = m[..., 8] - mean_i[..., 2] ** 2 + eps
    # Inverse of the symmetric positive definite Sigma + eps U through its adjugate.
    adj = np.stack(
        [
            s_gg * s_bb - s_gb * s_gb,
            s_rb * s_gb - s_rg * s_bb,
            s_rg * s_gb - s_rb * s_gg,
            s_rr * s_bb - s_rb * s_rb,
            s_rg * s_rb - s_rr * s_gb,
            s_rr * s_gg - s_rg * s_rg,
        ],
        axis=-1,
    )
    det = s_rr * adj[..., 0] + s_rg * adj[..., 1] + s_rb * adj[..., 2]
    inv = adj / det[..., None]  # rr, rg, rb, gg, gb, bb
    inv_rows = [inv[..., [0, 1, 2]], inv[..., [1, 3, 4]], inv[..., [2, 4, 5]]]

    out = np.empty(src.shape, np.float64)
    for start in range(0, src.shape[2], _CHUNK):
        p = np.ascontiguousarray(src[..., start : start + _CHUNK])
        mean_p = mean(p)
        # cov[c] = E[I_c p] - E[I_c] E[p], per channel of p: (H, W, 3, d)
        cov = np.stack([mean(guide[..., c, None] * p) - mean_i[..., c, None] * mean_p for c in range(3)], axis=2)
        a = np.stack([np.einsum("hwc,hwcd->hwd", row, cov) for row in inv_rows], axis=2)
        bias = mean_p - np.einsum("hwc,hwcd->hwd", mean_i, a)
        mean_a = [mean(np.ascontiguousarray(a[:, :, c])) for c in range(3)]
        out[..., start : start + _CHUNK] = (
            mean_a[0] * r[..., None] + mean_a[1] * g[..., None] + mean_a[2] * b[..., None]
        ) + mean(bias)
    return out


def pca_features(features: np.ndarray, n_components: int = 3) -> np.ndarray:
    """Project per-pixel features on their ``n_components`` principal axes, then scale each
    projected dimension to [0, 1] (min-max over the image; a constant dimension becomes 0).

    Fewer input channels than ``n_components`` are kept as they are (centred, scaled) and the
    missing dimensions filled with zeros.

    Shape:
        - features: (H, W, D).
        - output: (H, W, n_components) float64 in [0, 1].
    """
    h, w, d = features.shape
    flat = features.reshape(-1, d).astype(np.float64)
    flat = flat - flat.mean(axis=0)
    if d > n_components:
        _, vecs = np.linalg.eigh(flat.T @ flat)
        flat = flat @ vecs[:, ::-1][:, :n_components]
    out = np.zeros((h * w, n_components))
    out[:, : flat.shape[1]] = flat
    lo, hi = out.min(axis=0), out.max(axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, np.inf)
    return ((out - lo) / span).reshape(h, w, n_components)


def preprocess_features(
    features: np.ndarray,
    image: np.ndarray,
    *,
    clip: float = FEATURE_CLIP,
    radius: int = GUIDE_RADIUS,
    eps: float = GUIDE_EPS,
    n_components: int = 3,
) -> np.ndarray:
    """Raw semantic features -> the 3-D features of the paper (supplementary section 1.1).

    Clip to ``[-clip, clip]``, guided-filter every channel with the image as guide, PCA to
    ``n_components`` dimensions, normalise each to [0, 1].

    Shape:
        - features: (H, W, D), any D >= 1, float.
        - image: (H, W, 3) float in [0, 1].
        - output: (H, W, n_components) float64 in [0, 1].

    Args:
        features: raw per-pixel features (e.g. the 128-D embedding).
        image: the image they belong to, the guide.
        clip: clipping bound.
        radius: guided-filter radius; 0 skips the filter.
        eps: guided-filter regulariser.
        n_components: output dimensions.

    Returns:
        The preprocessed features.
    """
    clipped = np.clip(np.asarray(features, dtype=np.float64), -clip, clip)
    if radius > 0:
        clipped = guided_filter_channels(image, clipped, radius, eps)
    return pca_features(clipped, n_components)


def fallback_features(image: np.ndarray, position_weight: float = 0.5) -> np.ndarray:
    """Colour + position features for when no semantic features are available.

    CIE Lab colour (L / 100, a / 128, b / 128) next to the pixel coordinates divided by the
    longer side and multiplied by ``position_weight``, so that far-apart regions of one colour
    tend to fall in different segments. Feed the result to :func:`preprocess_features`.

    Shape:
        - image: (H, W, 3) float in [0, 1].
        - output: (H, W, 5) float64.
    """
    h, w, _ = image.shape
    lab = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2Lab).astype(np.float64)
    lab /= np.array([100.0, 128.0, 128.0])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) * (position_weight / max(h, w))
    return np.dstack([lab, xx, yy])
