"""Evaluation of a segmenter on a CamVid-layout split: one confusion matrix over every pixel.

The protocol of CamVid / VOC: the confusion matrix is summed over every pixel of every image of the
split (void pixels skipped), per-class IoU = TP / (TP + FP + FN), mIoU their mean
(:mod:`finecut.metrics.semantic`). Every image is segmented whole, at its own resolution.

Lives beside the training loop, which validates with it; ``finecut.segment.evaluate`` (``finecut
eval segment``) builds on it, so imports run one way: segment -> train.
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
from finecut.models.segmenter import CAMVID_CLASSES, multiscale_probs
from finecut.train.segment_data import CAMVID_VOID, SegmentDataset, segment_items

log = logging.getLogger(__name__)

__all__ = ["SegmentEvalResult", "evaluate_model"]


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
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
) -> SegmentEvalResult:
    """Evaluate a model (any module mapping (B, 3, H, W) in [0, 1] to (B, K, H, W) logits).

    The model is put in eval mode (and left there) on ``device`` (default: the model's own).
    ``scales`` / ``flip``: test-time augmentation (:func:`multiscale_probs`); the default is one
    plain pass.

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
            if tuple(scales) == (1.0,) and not flip:
                logits = model(image.unsqueeze(0).to(dev))
            else:
                logits = multiscale_probs(model, image.unsqueeze(0).to(dev), tuple(scales), flip)
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
