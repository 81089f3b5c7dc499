"""Losses of ``finecut train segment``: cross-entropy, class-balanced (median frequency), OHEM.

* ``ce``: cross-entropy averaged over the pixels that are not void.
* ``mfb``: the same with per-class weights by median frequency balancing (Eigen & Fergus 2015, as
  SegNet, Badrinarayanan et al. 2017, trains CamVid): ``w_c = median(freq) / freq_c`` with
  ``freq_c`` = pixels of class ``c`` / pixels of the images where ``c`` is present. Rare, thin
  classes (poles, signs, cyclists) weigh more than sky and road.
* ``ohem``: online hard example mining as in PSPNet / OCNet's ``OhemCrossEntropy``: only the
  pixels whose predicted probability of their true class is at most ``thresh`` count, and at least
  the ``min_kept`` hardest ones (:func:`ohem_keep`, passed to :func:`segment_loss` as ``keep``).

Void pixels never count. All losses are plain functions of logits and labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from finecut.train.segment_data import CAMVID_VOID

__all__ = [
    "LOSSES",
    "median_frequency_weights",
    "ohem_keep",
    "segment_loss",
]

LOSSES = ("ce", "mfb", "ohem")


def median_frequency_weights(
    class_pixels: np.ndarray | list[int], present_pixels: np.ndarray | list[int]
) -> np.ndarray:
    """SegNet's median frequency balancing: ``w_c = median(freq) / freq_c``.

    Args:
        class_pixels: ``(K,)`` pixels of each class over the training images.
        present_pixels: ``(K,)`` pixels (not void) of the images in which the class is present.

    Returns:
        ``(K,)`` float64 weights; a class with no pixel gets weight 0 and is left out of the
        median.

    Shape:
        - class_pixels, present_pixels, output: (K,)
    """
    class_pixels = np.asarray(class_pixels, dtype=np.float64)
    present_pixels = np.asarray(present_pixels, dtype=np.float64)
    if class_pixels.shape != present_pixels.shape or class_pixels.ndim != 1:
        raise ValueError(
            f"class_pixels {class_pixels.shape} and present_pixels {present_pixels.shape} must "
            "both be (K,)"
        )
    seen = class_pixels > 0
    if not seen.any():
        raise ValueError("no class has any pixel: cannot balance the classes")
    freq = np.zeros_like(class_pixels)
    freq[seen] = class_pixels[seen] / present_pixels[seen]
    weights = np.zeros_like(freq)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights


def segment_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    void: int = CAMVID_VOID,
    weight: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the pixels that are not void (0 with a gradient when all are void).

    With ``weight`` (``(K,)``, e.g. :func:`median_frequency_weights`) each pixel's loss is scaled
    by its class's weight and the sum divided by the summed weights of the pixels (PyTorch's
    weighted mean). With ``keep`` (e.g. :func:`ohem_keep`) only those pixels count.

    Shape:
        - logits: (B, K, H, W)
        - labels: (B, H, W) int64
        - weight: (K,)
        - keep: (B, H, W) bool
        - output: ()
    """
    if keep is not None:
        labels = torch.where(keep, labels, torch.full_like(labels, void))
    valid = labels != void
    if weight is None:
        norm = valid.sum().clamp_min(1)
    else:
        weight = weight.to(logits.device, torch.float32)
        norm = weight[labels[valid]].sum().clamp_min(1e-12)
    total = F.cross_entropy(
        logits.float(), labels, weight=weight, ignore_index=void, reduction="sum"
    )
    return total / norm


def ohem_keep(
    logits: torch.Tensor,
    labels: torch.Tensor,
    void: int = CAMVID_VOID,
    thresh: float = 0.7,
    min_kept: int = 100_000,
) -> torch.Tensor:
    """Which pixels OHEM keeps: true-class probability <= ``thresh``, at least ``min_kept``.

    When fewer than ``min_kept`` pixels are not void, all of them are kept. Otherwise the
    threshold is raised to the ``min_kept``-th smallest true-class probability when that is
    above ``thresh`` (ties at the threshold are all kept).

    Shape:
        - logits: (B, K, H, W)
        - labels: (B, H, W) int64
        - output: (B, H, W) bool
    """
    with torch.no_grad():
        valid = labels != void
        n_valid = int(valid.sum())
        if n_valid == 0 or n_valid <= min_kept:
            return valid
        prob = F.softmax(logits.detach().float(), dim=1)
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        true_prob = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        threshold = thresh
        if min_kept > 0:
            kth = torch.kthvalue(true_prob[valid], min_kept).values.item()
            threshold = max(threshold, kth)
        return valid & (true_prob <= threshold)
