"""finecut.metrics: evaluation metrics as pure numpy functions (no model code, no torch).

- Binary masks (:mod:`finecut.metrics.binary`): :func:`binarize` (CascadePSP's thresholds),
  :func:`iou`, :func:`iou_counts`, dataset-level IoU with :func:`dataset_iou` or
  :class:`IoUAccumulator`.
- Label maps (:mod:`finecut.metrics.semantic`): :func:`confusion_matrix`, :func:`miou`.
- Boundaries (:mod:`finecut.metrics.boundary`): CascadePSP's :func:`mba` with :func:`mba_radii`,
  and the boundary F-measure :func:`boundary_f` on :func:`mask_boundary`.

Every function takes numpy arrays or anything ``np.asarray`` accepts (CPU torch tensors too). A
uint8 mask of 0s and 1s is a binary mask; a uint8 label map (other values, none above 64) is
refused as a binary mask (:func:`binarize`, :mod:`finecut.data.masks`).
"""

from __future__ import annotations

from finecut.metrics.binary import IoUAccumulator, binarize, dataset_iou, iou, iou_counts
from finecut.metrics.boundary import boundary_f, mask_boundary, mba, mba_radii
from finecut.metrics.semantic import confusion_matrix, miou

__all__ = [
    "IoUAccumulator",
    "binarize",
    "boundary_f",
    "confusion_matrix",
    "dataset_iou",
    "iou",
    "iou_counts",
    "mask_boundary",
    "mba",
    "mba_radii",
    "miou",
]
