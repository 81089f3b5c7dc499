"""``finecut eval segment``: per-class IoU and mIoU of a segmenter on a CamVid-layout split.

The protocol of CamVid / VOC: one confusion matrix summed over every pixel of every image of the
split (void pixels skipped), per-class IoU = TP / (TP + FP + FN), mIoU their mean
(:mod:`finecut.metrics.semantic`). Every image is segmented whole, at its own resolution.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from finecut.segment.defaults import DEFAULT_FLIP, DEFAULT_SCALES
from finecut.train.segment_eval import SegmentEvalResult, evaluate_model

log = logging.getLogger(__name__)

__all__ = ["SegmentEvalResult", "evaluate_model", "evaluate_segment", "format_segment_table"]


def evaluate_segment(
    data_dir: str | Path,
    split: str = "test",
    *,
    weights: str | Path | None = None,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    progress: bool = False,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    flip: bool = DEFAULT_FLIP,
) -> SegmentEvalResult:
    """Per-class IoU and mIoU of a segmenter on ``data_dir/split``.

    Args:
        data_dir: CamVid-layout folder.
        split: ``train``, ``val`` or ``test``.
        weights: checkpoint or exported weights (:func:`~finecut.segment.predict.load_segmenter`);
            None with no ``model``: the embedded default.
        model: a model to evaluate instead of loading ``weights``.
        device: where to run (default: CUDA when available).
        threads: CPU threads (``torch.set_num_threads``).
        progress: show a progress bar.
        scales: input scales whose class probabilities are averaged (test-time augmentation;
            default :data:`~finecut.segment.defaults.DEFAULT_SCALES`, ``(1.0,)`` for one pass).
        flip: also average the mirrored pass of every scale.

    Raises:
        WeightsError: the weights cannot be loaded.
        ImageError: the split is missing or holds unusable files.
    """
    if threads:
        torch.set_num_threads(threads)
    if model is None:
        from finecut.segment.predict import load_segmenter

        model = load_segmenter(weights, device=device)
        device = None  # load_segmenter placed it
    return evaluate_model(
        model, data_dir, split, device=device, progress=progress, scales=scales, flip=flip
    )


def format_segment_table(result: SegmentEvalResult) -> str:
    """Per-class IoU lines and the mIoU, in percent."""
    width = max(len(name) for name in result.class_names)
    lines = [f"{'class':<{width}}  IoU %"]
    for name, iou in zip(result.class_names, result.per_class, strict=True):
        value = "  n/a" if math.isnan(iou) else f"{100 * iou:5.1f}"
        lines.append(f"{name:<{width}}  {value}")
    lines.append(f"{'mIoU':<{width}}  {100 * result.miou:5.1f}")
    lines.append(f"({result.images} images, {result.images_per_s:.2f} images/s)")
    return "\n".join(lines)
