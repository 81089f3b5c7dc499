"""Semantic segmentation with the detail-sensitive segmenter: evaluate, predict, prune.

``finecut.segment.predict``: :func:`segment_image` on a uint8 photo, colours, overlays, loading;
``finecut.segment.evaluate``: per-class IoU / mIoU on a CamVid-layout split;
``finecut.segment.prune``: the pruned-decoder config of a SparseMask search run;
``finecut.segment.commands``: the ``train segment``, ``eval segment``, ``segment`` and ``prune``
subcommands of the CLI.
"""

from __future__ import annotations

from finecut.segment.evaluate import SegmentEvalResult, evaluate_segment, format_segment_table
from finecut.segment.predict import colorize, load_segmenter, overlay, segment_image

__all__ = [
    "SegmentEvalResult",
    "colorize",
    "evaluate_segment",
    "format_segment_table",
    "load_segmenter",
    "overlay",
    "segment_image",
]
