"""``finecut eval segment``: per-class IoU and mIoU of a segmenter on a CamVid-layout split.

The protocol of CamVid / VOC: one confusion matrix summed over every pixel of every image of the
split (void pixels skipped), per-class IoU = TP / (TP + FP + FN), mIoU their mean
(:mod:`finecut.metrics.semantic`). Every image is segmented whole, at its own resolution.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finecut.devices import resolve_device
from finecut.metrics import semantic
from finecut.models.segmenter import CAMVID_CLASSES
from finecut.train.segment_data import CAMVID_VOID, SegmentDataset, segment_items

log = logging.getLogger(__name__)

__all__ = ["SegmentEvalResult", "evaluate_model", "evaluate_segment", "format_segment_table"]


@dataclass(frozen=True)
class SegmentEvalResult:
    """What :func:`evaluate_segment` measures.

    Attributes:
        miou: mean IoU over the classes present in the ground truth or the prediction.
        per_class: IoU of every class (NaN where a class is in neither).
        confusion: ``(K, K)`` pixel counts, rows ground truth, columns prediction.
        class_names: names of the K classes.
        images: number of images.
        images_per_s: throughput of the model's forward pass (data loading excluded).
    """

    miou: float
    per_class: tuple[float, ...]
    confusion: np.ndarray
    class_names: tuple[str, ...]
    images: int
    images_per_s: float

    def to_dict(self) -> dict:
        return {
            "miou": self.miou,
            "per_class": dict(zip(self.class_names, self.per_class, strict=True)),
            "images": self.images,
            "images_per_s": self.images_per_s,
        }


def _class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes == len(CAMVID_CLASSES):
        return CAMVID_CLASSES
    return tuple(f"class {k}" for k in range(num_classes))


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data_dir: str | Path,
    split: str = "test",
    *,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    void: int = CAMVID_VOID,
    amp: bool = False,
    progress: bool = False,
) -> SegmentEvalResult:
    """Evaluate a model (any module mapping (B, 3, H, W) in [0, 1] to (B, K, H, W) logits).

    The model is put in eval mode (and left there) on ``device`` (default: the model's own).

    Raises:
        ImageError: the split is missing or holds unusable files.
    """
    if num_classes is None:
        num_classes = int(
            getattr(getattr(model, "config", None), "num_classes", len(CAMVID_CLASSES))
        )
    if device is None:
        dev = next(iter(model.parameters()), torch.empty(0)).device
    else:
        dev = resolve_device(device)
        model = model.to(dev)
    model.eval()
    dataset = SegmentDataset(
        segment_items(data_dir, split), num_classes=num_classes, crop=None, void=void, cache=False
    )
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    seconds = 0.0
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, unit="img", dynamic_ncols=True)
    for index in indices:
        image, labels = dataset[index]
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            logits = model(image.unsqueeze(0).to(dev))
        pred = logits.argmax(1)[0].cpu().numpy()
        seconds += time.perf_counter() - start
        confusion += semantic.confusion_matrix(pred, labels.numpy(), num_classes, void)
    mean, per_class = semantic.miou(confusion)
    n = len(dataset)
    result = SegmentEvalResult(
        miou=mean,
        per_class=tuple(float(v) for v in per_class),
        confusion=confusion,
        class_names=_class_names(num_classes),
        images=n,
        images_per_s=n / seconds if seconds > 0 else math.inf,
    )
    log.info("%s/%s: mIoU %.4f over %d images", data_dir, split, mean, n)
    return result


def evaluate_segment(
    data_dir: str | Path,
    split: str = "test",
    *,
    weights: str | Path | None = None,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    progress: bool = False,
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
    return evaluate_model(model, data_dir, split, device=device, progress=progress)


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
