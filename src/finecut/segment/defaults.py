"""Inference defaults of the segmenter, in a module without torch so that the CLI's parser can
show them without loading it.

``DEFAULT_SCALES`` / ``DEFAULT_FLIP``: the test-time augmentation of ``finecut segment``,
``finecut eval segment`` and :func:`finecut.segment.predict.segment_image` when none is given
(:func:`finecut.models.segmenter.multiscale_probs`).
"""

from __future__ import annotations

__all__ = ["DEFAULT_FLIP", "DEFAULT_SCALES"]

DEFAULT_SCALES: tuple[float, ...] = (1.0,)
DEFAULT_FLIP: bool = False
