"""Inference defaults of the segmenter, in a module without torch so that the CLI's parser can
show them without loading it.

``DEFAULT_SCALES`` / ``DEFAULT_FLIP``: the test-time augmentation of ``finecut segment``,
``finecut eval segment`` and :func:`finecut.segment.predict.segment_image` when none is given
(:func:`finecut.models.segmenter.multiscale_probs`).
"""

from __future__ import annotations

__all__ = ["DEFAULT_FLIP", "DEFAULT_SCALES"]

# Chosen on CamVid val with stage 4's weights (bench/segment_tta.py; docs/benchmarks.md
# "Test-time augmentation"): the cheapest candidate within 0.2 mIoU of the best, 64.86% against
# 60.72% for one plain pass; read once on test: 56.67% against 55.13% (the second cycle's weights,
# 56.73% against 55.39%; the third's: 57.06% against 55.82%; the fourth's, shipped since: 57.88%
# against 56.18%), at about 3x the whole-process time of `finecut segment`.
DEFAULT_SCALES: tuple[float, ...] = (1.75, 2.0)
DEFAULT_FLIP: bool = True
