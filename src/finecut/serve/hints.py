"""A rough mask from a box or brush strokes: OpenCV's GrabCut seeded by them.

finecut refines a coarse mask; a person in front of a page gives a box or a few strokes, not a
mask. :func:`coarse_mask_from_hints` turns those into the coarse mask by GrabCut (Rother,
Kolmogorov and Blake, SIGGRAPH 2004: colour GMMs for object and background, a graph cut, a few
rounds), run on a copy of the photo whose longer side is ``work_side`` (512) and upsampled to
full size (the refiner then puts the boundary on the pixel). The seeds:

================================  ==============================================================
hints given                       GrabCut's starting labels
================================  ==============================================================
box                               outside the box: background; inside: probably object
object strokes, no box            everything else: probably background (GrabCut grows the
                                  strokes to the object's edges wherever its colours say so)
object strokes (any case)         object (certain): what is painted stays in
background strokes (any case)     background (certain), over any other mark
================================  ==============================================================

The result keeps only the parts connected to an object stroke (when there are strokes), so a
patch of the object's colour elsewhere in the photo is not taken.

Strokes are certain because GrabCut's colour models alone often give a saucer the colour of the
table to the table: with "probably object" strokes, a brush over a red saucer on red wood lost
half the saucer, with certain strokes none of it. Paint over background by mistake and it stays
in; the background brush takes it out.

``method="direct"`` skips GrabCut: the mask is the object strokes (or the filled box) minus
the background strokes, as painted.
"""

from __future__ import annotations

import cv2
import numpy as np

from finecut.errors import ImageError

__all__ = ["coarse_mask_from_hints", "parse_box"]


def parse_box(text: str, width: int, height: int) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` (image pixels, any order, clipped to the image) -> ints, x1 > x0.

    Raises:
        ImageError: not four numbers, or no area left inside the image.
    """
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ImageError(f"box must be 'x0,y0,x1,y1' in image pixels, got {text[:60]!r}")
    xa, ya, xb, yb = values
    x0, x1 = sorted((xa, xb))
    y0, y1 = sorted((ya, yb))
    x0, x1 = int(np.clip(np.floor(x0), 0, width)), int(np.clip(np.ceil(x1), 0, width))
    y0, y1 = int(np.clip(np.floor(y0), 0, height)), int(np.clip(np.ceil(y1), 0, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ImageError(
            f"box {text[:60]!r} leaves less than 2x2 pixels inside the {width}x{height} image"
        )
    return x0, y0, x1, y1


def _fit(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """A stroke mask of any size -> bool at ``size`` = (w, h) (nearest neighbour)."""
    if mask is None:
        return None
    marked = np.asarray(mask) > 127
    if marked.shape[::-1] != size:
        marked = cv2.resize(marked.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return marked


def coarse_mask_from_hints(
    image: np.ndarray,
    *,
    box: tuple[int, int, int, int] | None = None,
    fg: np.ndarray | None = None,
    bg: np.ndarray | None = None,
    method: str = "grabcut",
    work_side: int = 512,
    iterations: int = 5,
) -> np.ndarray:
    """A coarse object mask from a box and/or brush strokes (see the module docstring).

    Args:
        image: (H, W, 3) uint8 RGB.
        box: (x0, y0, x1, y1) in image pixels (from :func:`parse_box`).
        fg: strokes over the object, (h, w) uint8 of any size (> 127 marked; resized nearest).
        bg: strokes over the background, as ``fg``.
        method: ``grabcut`` or ``direct`` (the strokes / box as painted).
        work_side: GrabCut runs on the photo resized to this longer side (at most).
        iterations: GrabCut rounds.

    Returns:
        (H, W) uint8 mask, 0 or 255.

    Raises:
        ImageError: no box and no object strokes, strokes that leave no background, or an
            empty result.

    Shape:
        image (H, W, 3) -> (H, W).
    """
    if method not in ("grabcut", "direct"):
        raise ImageError(f"method must be 'grabcut' or 'direct', got {method!r}")
    h, w = image.shape[:2]
    if method == "direct":
        return _direct(h, w, box, _fit(fg, (w, h)), _fit(bg, (w, h)))
    scale = min(1.0, work_side / max(h, w))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else image
    obj, back = _fit(fg, (sw, sh)), _fit(bg, (sw, sh))
    has_obj = obj is not None and bool(obj.any())
    if box is None and not has_obj:
        raise ImageError("mark the object: give a box or brush strokes over it")
    labels = np.full((sh, sw), cv2.GC_BGD, np.uint8)
    if box is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
        if has_obj:
            labels[obj] = cv2.GC_FGD
    else:
        labels[:] = cv2.GC_PR_BGD
        labels[obj] = cv2.GC_FGD
    if back is not None:
        labels[back] = cv2.GC_BGD
    is_fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if not is_fg.any():
        raise ImageError("the background strokes cover the whole box or object strokes")
    if is_fg.all():
        raise ImageError("the box or strokes cover the whole photo: leave some background")
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    rgb = np.ascontiguousarray(small[:, :, ::-1])  # GrabCut's colour models do not care; BGR
    cv2.grabCut(rgb, labels, None, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
    found = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if has_obj:
        found = _touching(found, obj)
    if not found.any():
        raise ImageError("GrabCut found no object in the box or strokes; mark it more fully")
    if (sw, sh) != (w, h):
        soft = cv2.resize(found.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        found = soft >= 0.5
    return np.where(found, np.uint8(255), np.uint8(0))


def _touching(found: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """The connected parts (8-neighbours) of ``found`` that contain a stroke pixel."""
    count, parts = cv2.connectedComponents(found.astype(np.uint8), connectivity=8)
    if count <= 2:
        return found
    keep = np.unique(parts[strokes & found])
    return np.isin(parts, keep[keep > 0])


def _direct(
    h: int,
    w: int,
    box: tuple[int, int, int, int] | None,
    obj: np.ndarray | None,
    back: np.ndarray | None,
) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = True
    if obj is not None:
        mask |= obj
    if back is not None:
        mask &= ~back
    if not mask.any():
        raise ImageError("mark the object: give a box or brush strokes over it")
    return np.where(mask, np.uint8(255), np.uint8(0))
