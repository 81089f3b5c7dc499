"""Resizing an image batch by a factor, the way finecut's networks see an image at another scale.

One rule shared by the segmenter's test-time augmentation (:func:`finecut.models.segmenter.
multiscale_probs`), its ``max_side`` bound (:func:`finecut.segment.predict.segment_image`) and the
embedding network's ``scale`` / ``max_side`` (:meth:`finecut.models.embedding.SemanticEmbedding.
embed`): area averaging when shrinking (no aliasing of thin structures), bilinear when enlarging.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_by"]


def resize_by(x: Tensor, factor: float) -> Tensor:
    """``x`` resized by ``factor`` (each side rounded, at least 1 px): area when shrinking,
    bilinear (``align_corners=False``) when enlarging; ``x`` itself when the size is unchanged.

    Shape:
        x: (B, C, H, W). Output: (B, C, round(H * factor), round(W * factor)).
    """
    h, w = x.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    if size == (h, w):
        return x
    if factor < 1:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
