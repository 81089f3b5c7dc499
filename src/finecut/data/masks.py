"""What a mask array means: the one rule by which finecut reads binary masks and label maps.

Masks reach finecut as 0/255 PNGs, anti-aliased 8-bit mattes, 0/1 arrays from numpy, or label
maps with one value per object. The CLI (``finecut refine --mask``), the Python API
(:func:`finecut.refine.api.as_mask`, ``Refiner.refine``) and the metrics
(:func:`finecut.metrics.binarize`) all decide from the values of an integer mask:

==============================================  ===============================================
an integer mask whose values are                is read as
==============================================  ===============================================
all 0 or 1 (``min >= 0`` and ``max <= 1``)      a binary mask: 1 is foreground (all 0: empty,
                                                all 1: full)
otherwise, all <= :data:`LABEL_MAX` (64)        a label map (class or instance ids), refused
                                                as a binary mask: refine it with
                                                ``--instances`` / ``Refiner.refine_instances``
otherwise (some value > 64)                     by its dtype's threshold: uint8 ``> 127``
                                                (metrics: ``> 128``), uint16 ``> 32767``
==============================================  ===============================================

Why the rule is safe. Only ``min`` and ``max`` decide. Every uint8 or uint16 mask that the
first two rows take has no value above 64, so under the plain threshold it had no foreground
at all and finecut used to warn "the mask is empty" (or the metrics returned NaN): reading it as
0/1 or refusing it changes the result only where the old result was an empty mask. A soft
8-bit matte (anti-aliased edges, 0..255 with many grey levels), a 0/255 mask or a trimap
(0/128/255) has values above 64 and is thresholded at 127 as before. A 64-label limit is ample
for the label maps users hand over (SAM-style instance maps, VOC's 20 or CamVid's 11 classes);
a label map with a label above 64 (e.g. VOC's 255 "void") is not recognised and falls to the
threshold row.

Floats are foreground at ``>= 0.5`` (``> 0.5`` in the metrics, as CascadePSP evaluates) and bool
is used as is; neither is ever a label map.
"""

from __future__ import annotations

import numpy as np

from finecut.errors import ImageError

__all__ = ["LABEL_MAX", "binary_mask", "is_label_map", "label_map_message"]

#: An integer mask holding a value other than 0 and 1, and none above this, is a label map.
LABEL_MAX = 64

#: What to do with a label map, said after the refusal (the CLI passes its own words).
DEFAULT_LABEL_HINT = "refine each label on its own with Refiner.refine_instances(image, labels)"


def is_label_map(mask: np.ndarray) -> bool:
    """True when an integer ``mask`` is a label map by the module's rule (never for bool/float).

    Shape:
        mask: any shape.
    """
    mask = np.asarray(mask)
    if mask.dtype == np.bool_ or mask.dtype.kind not in "iu" or mask.size == 0:
        return False
    lo, hi = int(mask.min()), int(mask.max())
    return not (lo >= 0 and hi <= 1) and hi <= LABEL_MAX


def label_map_message(mask: np.ndarray, name: str = "mask", hint: str = DEFAULT_LABEL_HINT) -> str:
    """The one-line refusal of a label map given as a binary mask, naming its values."""
    values = np.unique(np.asarray(mask))
    shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    return (
        f"{name} holds {len(values)} values ({shown}), none above {LABEL_MAX}: a label map, not "
        f"a binary mask; {hint} (a binary mask holds 0/1 or 0/255)"
    )


def binary_mask(
    mask: np.ndarray,
    *,
    name: str = "mask",
    hint: str = DEFAULT_LABEL_HINT,
    uint8_threshold: int = 127,
    float_threshold: float = 0.5,
    float_inclusive: bool = True,
) -> np.ndarray:
    """Binarise a mask of any shape by the module's rule.

    Args:
        mask: bool, integer or float array.
        name: how error messages call it.
        hint: what the label-map refusal suggests instead.
        uint8_threshold: uint8 foreground is ``> uint8_threshold`` (127; the metrics use 128).
        float_threshold: float foreground threshold (0.5).
        float_inclusive: float foreground is ``>= float_threshold`` (True) or ``>`` (False).

    Returns:
        bool array of the same shape (``mask`` itself when it is a bool ndarray).

    Raises:
        ImageError: a label map, a float mask with NaN, or an unsupported dtype.

    Shape:
        any shape in, the same shape out.
    """
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind == "f":
        if np.isnan(mask).any():
            raise ImageError(f"{name} contains NaN")
        return mask >= float_threshold if float_inclusive else mask > float_threshold
    if mask.dtype.kind not in "iu":
        raise ImageError(f"{name} dtype {mask.dtype} is not supported (use bool, integer, float)")
    if mask.size == 0:
        return mask.astype(bool)
    lo, hi = int(mask.min()), int(mask.max())
    if lo >= 0 and hi <= 1:
        return mask.astype(bool)
    if hi <= LABEL_MAX:
        raise ImageError(label_map_message(mask, name, hint))
    if mask.dtype == np.uint8:
        return mask > uint8_threshold
    if mask.dtype == np.uint16:
        return mask > 32767
    return mask > 0
