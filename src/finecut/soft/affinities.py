"""The three affinities of semantic soft segmentation (Aksoy et al., SIGGRAPH 2018, section 3;
METHODS.md section 5).

- :func:`matting_affinity`: Levin et al.'s closed-form matting affinity ("A Closed-Form Solution
  to Natural Image Matting", TPAMI 2008), window radius 1, eps 1e-7, taken from pymatting's
  ``cf_laplacian`` (``W = -L`` off the diagonal; pymatting divides eps by the window area exactly
  like the official ``mattingAffinity.m``).
- :func:`semantic_affinity`: between adjacent SLIC superpixels, ``erf(20 (1 - |df| - 0.85))`` of
  the distance between their mean features (in [-1, 1], negative for different objects).
- :func:`color_affinity`: nonlocal, between superpixels whose centroids are closer than 0.2 of
  the image size (rows divided by H, columns by W), ``(erf(50 (1 - |dc| - 0.95)) + 1) / 2`` of the
  distance between their mean colours (in [0, 1]).

Superpixel affinities live on the superpixel graph (S x S). How they reach pixels: the official
code (``Superpixels.m``) writes each superpixel pair's affinity between the two superpixels'
*centroid pixels* only, ``W(centroid_i, centroid_j) = a_ij`` (no other pixel of either superpixel
is connected; the matting affinity carries the link to the rest of the superpixel).
:func:`lift_to_centroids` does exactly that for the faithful pixel graph. The fast pipeline keeps
them on the superpixel graph and projects the matting Laplacian onto the superpixels instead
(:func:`finecut.soft.laplacian.superpixel_laplacian`).

Superpixels: ``skimage.segmentation.slic`` with about 2500 segments. The official code calls
MATLAB's ``superpixels(im, 2500, 'Compactness', 1e-20)``; scikit-image's SLIC with a compactness
that small merges most segments away when it enforces connectivity (984 instead of ~2500 at
640x480), so finecut uses SLIC's usual compactness 10 (2357 segments at 640x480).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from scipy.special import erf

log = logging.getLogger(__name__)

__all__ = [
    "Superpixels",
    "color_affinity",
    "compute_superpixels",
    "lift_to_centroids",
    "matting_affinity",
    "semantic_affinity",
]


@dataclass(frozen=True, eq=False)
class Superpixels:
    """A superpixel partition and the facts the affinities need.

    Attributes:
        labels: (H, W) int64 superpixel index of every pixel, 0..count-1, every index used.
        count: number of superpixels S.
        edges: (E, 2) int64 pairs ``i < j`` of 8-connected adjacent superpixels, each once.
        centroids: (S, 2) float64 mean (row, column) of each superpixel's pixels.
        sizes: (S,) float64 pixel count of each superpixel.
    """

    labels: np.ndarray
    count: int
    edges: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> Superpixels:
        """Build from any (H, W) integer label map (labels are renumbered 0..S-1)."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be (H, W), got {labels.shape}")
        _, flat = np.unique(labels, return_inverse=True)
        labels = flat.reshape(labels.shape).astype(np.int64)
        count = int(labels.max()) + 1
        sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        rows, cols = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
        centroids = np.stack(
            [
                np.bincount(labels.ravel(), rows.ravel(), count) / sizes,
                np.bincount(labels.ravel(), cols.ravel(), count) / sizes,
            ],
            axis=1,
        )
        # 8-connected neighbours: right, down, down-right, down-left.
        pairs = [
            (labels[:, :-1], labels[:, 1:]),
            (labels[:-1, :], labels[1:, :]),
            (labels[:-1, :-1], labels[1:, 1:]),
            (labels[:-1, 1:], labels[1:, :-1]),
        ]
        a = np.concatenate([p[0].ravel() for p in pairs])
        b = np.concatenate([p[1].ravel() for p in pairs])
        keep = a != b
        lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        edges = np.unique(np.stack([lo, hi], axis=1), axis=0).reshape(-1, 2).astype(np.int64)
        return cls(labels, count, edges, centroids, sizes)

    def means(self, values: np.ndarray) -> np.ndarray:
        """Mean of per-pixel ``values`` over each superpixel.

        Shape:
            - values: (H, W, C) or (H * W, C).
            - output: (S, C) float64.
        """
        flat = np.asarray(values, dtype=np.float64).reshape(self.labels.size, -1)
        sums = self.assignment().T @ flat
        return sums / self.sizes[:, None]

    def assignment(self) -> sp.csr_matrix:
        """The pixel-to-superpixel indicator P, ``P[p, i] = 1`` when pixel p is in superpixel i.

        Shape:
            - output: (H * W, S) sparse CSR, one 1 per row.
        """
        n = self.labels.size
        return sp.csr_matrix(
            (np.ones(n), self.labels.ravel(), np.arange(n + 1)), shape=(n, self.count)
        )

    def centroid_pixels(self) -> np.ndarray:
        """Flat (row-major) index of each superpixel's rounded centroid (``Superpixels.m``).

        Shape:
            - output: (S,) int64.
        """
        h, w = self.labels.shape
        rc = np.rint(self.centroids).astype(np.int64)
        rows, cols = np.clip(rc[:, 0], 0, h - 1), np.clip(rc[:, 1], 0, w - 1)
        return rows * w + cols


def compute_superpixels(
    image: np.ndarray, n_segments: int = 2500, compactness: float = 10.0
) -> Superpixels:
    """SLIC superpixels of an image (scikit-image), about ``n_segments`` of them.

    Shape:
        - image: (H, W, 3) float in [0, 1].
    """
    from skimage.segmentation import slic

    n_segments = max(1, min(int(n_segments), image.shape[0] * image.shape[1]))
    labels = slic(
        image, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1
    )
    superpixels = Superpixels.from_labels(labels)
    log.debug("SLIC: %d superpixels (asked %d)", superpixels.count, n_segments)
    return superpixels


def matting_affinity(image: np.ndarray, radius: int = 1, eps: float = 1e-7) -> sp.csr_matrix:
    """Levin et al.'s matting affinity W (TPAMI 2008), from pymatting's matting Laplacian.

    ``W_ij = -L_ij`` for ``i != j`` and 0 on the diagonal (a self-affinity cancels in
    ``D - W``), so ``laplacian(W)`` gives pymatting's ``L`` back. Pixels are numbered row-major.

    Shape:
        - image: (H, W, 3) float in [0, 1].
        - output: (H * W, H * W) sparse CSR float64, symmetric.

    Args:
        image: the image.
        radius: window radius (1: 3x3 windows).
        eps: regulariser of the window colour covariance.
    """
    from pymatting import cf_laplacian

    lap = cf_laplacian(np.ascontiguousarray(image, dtype=np.float64), epsilon=eps, radius=radius)
    w = -lap.tocsr()
    w.setdiag(0.0)
    w.eliminate_zeros()
    return w


def _erf_affinity(
    means: np.ndarray, pairs: np.ndarray, steepness: float, center: float
) -> np.ndarray:
    dist = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1)
    return erf(steepness * (1.0 - dist - center))


def _symmetric(pairs: np.ndarray, values: np.ndarray, n: int) -> sp.csr_matrix:
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    w = sp.csr_matrix((np.concatenate([values, values]), (rows, cols)), shape=(n, n))
    w.eliminate_zeros()
    return w


def semantic_affinity(
    superpixels: Superpixels,
    features: np.ndarray,
    steepness: float = 20.0,
    center: float = 0.85,
) -> sp.csr_matrix:
    """Semantic affinity between adjacent superpixels: ``erf(s (1 - |f_i - f_j| - c))``.

    ``f_i`` is the mean preprocessed feature of superpixel i. Values are in [-1, 1]: close to 1
    for similar features, negative (repulsive) once the feature distance exceeds ``1 - c``.

    Shape:
        - features: (H, W, F) preprocessed features in [0, 1].
        - output: (S, S) sparse CSR, symmetric, nonzero only between adjacent superpixels.
    """
    means = superpixels.means(features)
    values = _erf_affinity(means, superpixels.edges, steepness, center)
    return _symmetric(superpixels.edges, values, superpixels.count)


def color_affinity(
    superpixels: Superpixels,
    image: np.ndarray,
    steepness: float = 50.0,
    center: float = 0.95,
    max_distance: float = 0.2,
    min_affinity: float = 0.0,
) -> sp.csr_matrix:
    """Nonlocal colour affinity: ``(erf(s (1 - |c_i - c_j| - c)) + 1) / 2`` between every pair of
    superpixels whose centroids are closer than ``max_distance`` (rows / H, columns / W).

    Shape:
        - image: (H, W, 3) float in [0, 1].
        - output: (S, S) sparse CSR, symmetric, values in [0, 1].

    Args:
        superpixels: the superpixels.
        image: the image; ``c_i`` is superpixel i's mean colour.
        steepness: erf steepness.
        center: erf centre.
        max_distance: centroid distance limit, a fraction of the image size.
        min_affinity: affinities below this are dropped. The official code keeps every pair (0);
            above about 0.12 colour distance the affinity is below 1e-4 anyway.
    """
    h, w = superpixels.labels.shape
    normalised = superpixels.centroids / np.array([h, w], dtype=np.float64)
    pairs = cKDTree(normalised).query_pairs(max_distance, output_type="ndarray").astype(np.int64)
    pairs = pairs.reshape(-1, 2)
    means = superpixels.means(image)
    values = (_erf_affinity(means, pairs, steepness, center) + 1.0) / 2.0
    keep = values >= min_affinity if min_affinity > 0 else np.ones(len(values), bool)
    return _symmetric(pairs[keep], values[keep], superpixels.count)


def lift_to_centroids(affinity: sp.spmatrix, superpixels: Superpixels) -> sp.csr_matrix:
    """Put a superpixel affinity on the pixel graph the way the official code does: the affinity
    of superpixels i and j connects their rounded centroid pixels and nothing else.

    Shape:
        - affinity: (S, S) sparse.
        - output: (H * W, H * W) sparse CSR.
    """
    coo = sp.coo_matrix(affinity)
    centroid = superpixels.centroid_pixels()
    n = superpixels.labels.size
    lifted = sp.csr_matrix((coo.data, (centroid[coo.row], centroid[coo.col])), shape=(n, n))
    lifted.eliminate_zeros()
    return lifted
