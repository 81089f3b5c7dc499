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
# Channels filtered per chunk (4 x 32 = 128 channels per OpenCV box-filter call).
_CHUNK = 32


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
        - output: (H, W, D) float64 (the per-channel arithmetic runs in float32).

    Args:
        guide: guidance image I.
        src: channels p to filter.
        radius: window radius r >= 0 (side 2r + 1).
        eps: regulariser > 0 in units of guide variance.

    Returns:
        The filtered channels.
    """
    guide = np.ascontiguousarray(guide, dtype=np.float64)
    src = np.asarray(src)
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

    inv = [x.astype(np.float32)[..., None] for x in np.moveaxis(inv, -1, 0)]
    inv_rr, inv_rg, inv_rb, inv_gg, inv_gb, inv_bb = inv
    mean_i32 = [mean_i[..., c, None].astype(np.float32) for c in range(3)]
    guide32 = [guide[..., c, None].astype(np.float32) for c in range(3)]
    count32 = count.astype(np.float32)

    def mean32(x: np.ndarray) -> np.ndarray:
        return _box_sum(x, radius) / count32

    # Per channel p (float32, memory-bound: each chunk is boxed twice, 4 stacked moments each).
    out = np.empty(src.shape, np.float64)
    for start in range(0, src.shape[2], _CHUNK):
        p = src[..., start : start + _CHUNK].astype(np.float32)
        d = p.shape[2]
        m = mean32(np.concatenate([p, guide32[0] * p, guide32[1] * p, guide32[2] * p], axis=2))
        mean_p = m[..., :d]
        cov_r = m[..., d : 2 * d] - mean_i32[0] * mean_p
        cov_g = m[..., 2 * d : 3 * d] - mean_i32[1] * mean_p
        cov_b = m[..., 3 * d :] - mean_i32[2] * mean_p
        a_r = inv_rr * cov_r + inv_rg * cov_g + inv_rb * cov_b
        a_g = inv_rg * cov_r + inv_gg * cov_g + inv_gb * cov_b
        a_b = inv_rb * cov_r + inv_gb * cov_g + inv_bb * cov_b
        bias = mean_p - a_r * mean_i32[0] - a_g * mean_i32[1] - a_b * mean_i32[2]
        ab = mean32(np.concatenate([a_r, a_g, a_b, bias], axis=2))
        out[..., start : start + d] = (
            ab[..., :d] * guide32[0]
            + ab[..., d : 2 * d] * guide32[1]
            + ab[..., 2 * d : 3 * d] * guide32[2]
            + ab[..., 3 * d :]
        )
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
    filter_dims: int | None = None,
) -> np.ndarray:
    """Raw semantic features -> the 3-D features of the paper (supplementary section 1.1).

    Clip to ``[-clip, clip]``, guided-filter every channel with the image as guide, PCA to
    ``n_components`` dimensions, normalise each to [0, 1].

    ``filter_dims`` (finecut's fast mode) first projects the clipped features on their
    ``filter_dims`` principal axes and filters only those. The guided filter is linear in the
    filtered signal for a fixed guide, so this equals filtering all channels and then projecting;
    the result differs from the paper's only by what the discarded raw directions would have
    added to the top filtered components (128 -> 16 channels: 8x less filtering).

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
        filter_dims: project to this many dimensions before filtering (None: filter all, as
            the paper).

    Returns:
        The preprocessed features.
    """
    clipped = np.clip(np.asarray(features, dtype=np.float32), -clip, clip)
    h, w, d = clipped.shape
    if filter_dims is not None and d > filter_dims:
        flat = clipped.reshape(-1, d).astype(np.float64)
        flat -= flat.mean(axis=0)
        _, vecs = np.linalg.eigh(flat.T @ flat)
        clipped = (flat @ vecs[:, ::-1][:, :filter_dims]).reshape(h, w, filter_dims)
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
