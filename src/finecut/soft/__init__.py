"""Semantic soft segmentation (Aksoy et al., SIGGRAPH 2018; METHODS.md section 5).

``soft_segment(image, features)`` returns soft layers that sum to one at every pixel. The steps
are plain functions, one per module, usable on their own:

===================  ==========================================================================
module               step
===================  ==========================================================================
``features``         clip, guided filter, PCA to 3, normalise (supplementary section 1.1)
``affinities``       SLIC superpixels; matting, semantic and nonlocal colour affinities
``basis``            per superpixel a constant and its colour-linear functions (fast mode)
``laplacian``        ``L = D - W``, pixel graph (the paper), superpixel graph or basis (fast)
``eigen``            the eigenvectors with the smallest eigenvalues
``sparsify``         constrained (IRLS in the eigenvector span) and relaxed sparsification
``grouping``         k-means on the segments' mean features
``lift``             superpixel layers -> pixel layers by closed-form matting (fast mode)
``pipeline``         :func:`soft_segment`, :class:`SoftConfig`, ``FAST`` and ``FAITHFUL``
===================  ==========================================================================

numpy / scipy / scikit-image / OpenCV / pymatting only: no torch, no model code.
"""

from __future__ import annotations

from finecut.soft.pipeline import FAITHFUL, FAST, SoftConfig, SoftSegmentation, soft_segment

__all__ = ["FAITHFUL", "FAST", "SoftConfig", "SoftSegmentation", "soft_segment"]
