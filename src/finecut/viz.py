"""Pictures a person would rather look at than read: mask overlays and side-by-side panels."""

from __future__ import annotations

import cv2
import numpy as np

from finecut.data.masks import binary_mask

__all__ = [
    "LAYER_COLORS",
    "layer_colors",
    "overlay_labels",
    "overlay_mask",
    "side_by_side",
    "soft_composite",
]

#: Colours of the first soft layers (RGB), as in the figures of semantic soft segmentation.
LAYER_COLORS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (145, 30, 180),
    (245, 130, 48),
    (70, 240, 240),
    (240, 50, 230),
    (128, 128, 0),
    (0, 0, 128),
)


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    color: tuple[int, int, int] = (0, 170, 255),
    alpha: float = 0.35,
    outline: tuple[int, int, int] = (255, 255, 0),
    thickness: int | None = None,
) -> np.ndarray:
    """Tint the foreground of ``mask`` over ``image`` and draw its outline.

    Shape:
        image: (H, W, 3) uint8; mask: (H, W) bool, 0/1, uint8 > 127 or float >= 0.5 is
        foreground (:mod:`finecut.data.masks`) -> (H, W, 3) uint8.
    """
    image = np.asarray(image)
    fg = binary_mask(np.asarray(mask))
    if fg.shape != image.shape[:2]:
        raise ValueError(f"mask shape {fg.shape} does not match image shape {image.shape[:2]}")
    out = image.astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * np.asarray(color, np.float32)
    out = out.round().astype(np.uint8)
    if thickness is None:
        thickness = max(2, round(max(image.shape[:2]) / 400))
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, outline, thickness, lineType=cv2.LINE_AA)
    return out


def overlay_labels(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.45,
    thickness: int | None = None,
) -> np.ndarray:
    """Tint each instance of a label map (0 is background) in its own colour and outline it.

    Colours are :func:`layer_colors` in the order of the labels' values.

    Shape:
        image: (H, W, 3) uint8; labels: (H, W) integer -> (H, W, 3) uint8.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image {image.shape[:2]}")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    out = image.astype(np.float32)
    if thickness is None:
        thickness = max(1, round(max(image.shape[:2]) / 600))
    outlines = []
    for label, color in zip(ids, layer_colors(len(ids)), strict=True):
        fg = labels == label
        out[fg] = (1 - alpha) * out[fg] + alpha * color.astype(np.float32)
        contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        outlines.append((contours, tuple(int(c) for c in color)))
    out = out.round().astype(np.uint8)
    for contours, color in outlines:
        cv2.drawContours(out, contours, -1, color, thickness, lineType=cv2.LINE_AA)
    return out


def side_by_side(panels: list[np.ndarray], *, height: int = 360, gap: int = 6) -> np.ndarray:
    """Resize panels to one height and put them in a row on a white background.

    Panels are uint8 RGB, or (H, W) uint8 / bool / float in [0, 1] shown in grey.
    """
    rows = []
    for p in panels:
        p = np.asarray(p)
        if p.dtype == bool:
            p = p.astype(np.uint8) * 255
        elif p.dtype.kind == "f":  # an alpha or probability in [0, 1]
            p = np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)
        if p.ndim == 2:
            p = np.repeat(p[..., None], 3, axis=2)
        w = max(1, round(p.shape[1] * height / p.shape[0]))
        rows.append(cv2.resize(p, (w, height), interpolation=cv2.INTER_AREA))
        rows.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=1)


def layer_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours: :data:`LAYER_COLORS` first, then evenly spaced hues.

    Shape: -> (n, 3) uint8.
    """
    colors = [tuple(c) for c in LAYER_COLORS[:n]]
    for i in range(len(colors), n):
        hue = np.uint8(round(180 * ((i * 0.618034) % 1.0)))
        hsv = np.array([[[hue, 200, 230]]], np.uint8)
        colors.append(tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]))
    return np.asarray(colors, np.uint8).reshape(n, 3)


def soft_composite(alphas: np.ndarray) -> np.ndarray:
    """Colour-code soft layers: each pixel is the alpha-weighted mix of its layers' colours.

    Shape:
        alphas: (H, W, K) float in [0, 1] (summing to 1) -> (H, W, 3) uint8.
    """
    alphas = np.asarray(alphas, dtype=np.float32)
    if alphas.ndim != 3:
        raise ValueError(f"alphas must be (H, W, K), got shape {alphas.shape}")
    colors = layer_colors(alphas.shape[2]).astype(np.float32)
    mixed = alphas.reshape(-1, alphas.shape[2]) @ colors
    return np.clip(mixed, 0, 255).round().astype(np.uint8).reshape(*alphas.shape[:2], 3)
