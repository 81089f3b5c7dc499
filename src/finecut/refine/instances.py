"""Refine many instances of one image: ``Refiner.refine_instances(image, masks)``.

Each instance is cut out with its bounding box grown by a margin, refined there on its own
(:meth:`finecut.refine.api.Refiner.refine` with ``soft=True``), and the refined probabilities are
pasted back; where instances overlap, a pixel goes to the instance of highest probability if that
probability is above 0.5, else to the background. The input is either an ``(N, H, W)`` stack of
binary masks (what SAM and COCO give) or an ``(H, W)`` integer label map (0 is background); the
output has the same form.

Cropping is what makes many instances affordable: refinement cost grows with the pixels it
touches, and an instance's box is usually a small part of the frame. A crop is not the same
computation as the full frame, so by default (``frame_scales=True``) each crop runs the
coarse-to-fine scales and the edge-snapping band the full image would run: the scale whose
resized short side of the *full image* is below ``InferenceConfig.min_side`` is skipped in the
crop too, and the snapping band is computed from the full image's H + W. ``docs/benchmarks.md``
records the time saved and the IoU between cropped and full-frame refinement
(``bench/instances.py``).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from finecut.data.masks import binary_mask
from finecut.errors import ConfigError, ImageError
from finecut.refine.snap import snap_band

if TYPE_CHECKING:  # pragma: no cover
    from finecut.refine.api import Refiner

log = logging.getLogger(__name__)

__all__ = ["InstanceConfig", "crop_box", "refine_instances"]


@dataclass(frozen=True)
class InstanceConfig:
    """How :func:`refine_instances` crops.

    Attributes:
        crop: refine each instance in its box plus a margin (True), or on the full frame (False:
            N full-frame refinements, the slow reference the benchmark compares against).
        margin_fraction: margin on each side of the box, as a fraction of the box's longer side.
        min_margin: smallest margin in pixels.
        frame_scales: crops run the scales and snapping band of the full image (see the module
            docstring); False lets each crop choose them from its own size.
    """

    crop: bool = True
    margin_fraction: float = 0.25
    min_margin: int = 16
    frame_scales: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin_fraction) and self.margin_fraction >= 0):
            raise ConfigError(f"margin_fraction must be >= 0, got {self.margin_fraction}")
        if self.min_margin < 0:
            raise ConfigError(f"min_margin must be >= 0, got {self.min_margin}")


def crop_box(
    rows: slice, cols: slice, shape: tuple[int, int], config: InstanceConfig
) -> tuple[slice, slice]:
    """The box ``(rows, cols)`` grown by the margin of ``config`` and clipped to ``shape``."""
    h, w = shape
    side = max(rows.stop - rows.start, cols.stop - cols.start)
    margin = max(config.min_margin, math.ceil(config.margin_fraction * side))
    return (
        slice(max(0, rows.start - margin), min(h, rows.stop + margin)),
        slice(max(0, cols.start - margin), min(w, cols.stop + margin)),
    )


def _instances_of_labels(labels: np.ndarray) -> Iterator[tuple[int, tuple[slice, slice]]]:
    """(label, bounding box) of every label > 0 present in an integer label map."""
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is not None:
            yield index + 1, box


def _box_of(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _check_labels(masks: np.ndarray) -> np.ndarray:
    if masks.dtype == np.bool_:
        return masks.astype(np.uint8)
    if masks.dtype.kind not in "iu":
        raise ImageError(
            f"a label map must hold integers (0 is background), got dtype {masks.dtype}; pass "
            "an (N, H, W) stack for binary masks"
        )
    if masks.size and int(masks.min()) < 0:
        raise ImageError(f"a label map must not hold negative labels (min {int(masks.min())})")
    return masks


def _frame_config(refiner: Refiner, shape: tuple[int, int]):
    """The refiner's config with the snapping band the full image of ``shape`` gets."""
    cfg = refiner.config
    band = snap_band(*shape, cfg.snap_fraction, cfg.snap_min_band, cfg.snap_max_band)
    return replace(cfg, snap_min_band=band, snap_max_band=band)


def _crop_config(frame_cfg, crop_shape: tuple[int, int], shape: tuple[int, int]):
    """``frame_cfg`` with ``min_side`` scaled so the crop runs the scales the full image runs.

    The inference runs scale s when ``s * min(size) >= min_side``; with ``min_side`` multiplied
    by ``min(crop) / min(image)`` that is the full image's test, ``s * min(image) >= min_side``.
    """
    return replace(frame_cfg, min_side=frame_cfg.min_side * min(crop_shape) / min(shape))


def _with_config(refiner: Refiner, config) -> Refiner:
    """A shallow copy of ``refiner`` (the same loaded model) that runs with ``config``."""
    other = copy.copy(refiner)
    other.config = config
    return other


def refine_instances(
    refiner: Refiner,
    image: np.ndarray,
    masks: np.ndarray,
    *,
    config: InstanceConfig | None = None,
    full_query: bool | None = None,
    snap: bool | None = None,
) -> np.ndarray:
    """Refine every instance of ``masks`` and resolve their overlaps; see the module docstring.

    Args:
        refiner: a loaded :class:`finecut.refine.api.Refiner`.
        image: (H, W, 3) RGB, any form :meth:`Refiner.refine` takes.
        masks: (N, H, W) stack of binary masks (bool, 0/1, 0/255 or float, each read by
            :func:`finecut.data.masks.binary_mask`), or an (H, W) integer label map whose values
            > 0 are instances (bool is one instance).
        config: cropping settings (:class:`InstanceConfig`).
        full_query: passed to :meth:`Refiner.refine`.
        snap: passed to :meth:`Refiner.refine`.

    Returns:
        For a stack, (N, H, W) bool, no pixel in two instances; for a label map, (H, W) of its
        dtype with each refined instance under its own label.

    Raises:
        ImageError: wrong shapes, a float label map, negative labels.

    Shape:
        image (H, W, 3); masks (N, H, W) or (H, W); output the shape of ``masks``.
    """
    from finecut.refine.api import as_rgb

    config = config or InstanceConfig()
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    masks = np.asarray(masks)
    if masks.ndim not in (2, 3) or masks.shape[-2:] != (h, w):
        raise ImageError(
            f"masks must be (N, H, W) or an (H, W) label map with (H, W) = ({h}, {w}) like the "
            f"image, got shape {masks.shape}"
        )
    stack = masks.ndim == 3
    if stack:
        instances = list(_stack_instances(masks))
        n_out = masks.shape[0]
    else:
        labels = _check_labels(masks)
        instances = [(label, box, None) for label, box in _instances_of_labels(labels)]
        n_out = 0
    best = np.zeros((h, w), np.float32)
    owner = np.zeros((h, w), np.int32)  # index into instances, valid where best > 0
    frame_cfg = _frame_config(refiner, (h, w)) if config.frame_scales else refiner.config
    for k, (label, box, binary) in enumerate(instances):
        rows, cols = crop_box(*box, (h, w), config) if config.crop else (slice(0, h), slice(0, w))
        coarse = labels[rows, cols] == label if binary is None else binary[rows, cols]
        this = refiner
        if config.crop and config.frame_scales:
            this = _with_config(refiner, _crop_config(frame_cfg, coarse.shape, (h, w)))
        prob = this.refine(rgb[rows, cols], coarse, soft=True, full_query=full_query, snap=snap)
        region = best[rows, cols]
        take = prob > region
        region[take] = prob[take]
        owner[rows, cols][take] = k
    foreground = best > 0.5
    if stack:
        out = np.zeros((n_out, h, w), bool)
        for k, (index, _, _) in enumerate(instances):
            out[index] = foreground & (owner == k)
        return out
    out = np.zeros((h, w), masks.dtype)
    if instances:
        ids = np.array([label for label, _, _ in instances], dtype=masks.dtype)
        out[foreground] = ids[owner[foreground]]
    return out


def _stack_instances(
    masks: np.ndarray,
) -> Iterator[tuple[int, tuple[slice, slice], np.ndarray]]:
    """(index, bounding box, bool mask) of every non-empty mask of an (N, H, W) stack."""
    for index in range(masks.shape[0]):
        binary = binary_mask(masks[index], name=f"masks[{index}]")
        box = _box_of(binary)
        if box is None:
            log.info("masks[%d] is empty: left empty", index)
            continue
        yield index, box, binary
