"""``finecut demo`` / ``make demo``: refine a deliberately coarse mask of a photo that ships with
scikit-image, and write pictures of every step.

The photo is scikit-image's ``coffee`` (600x400, a cup on a saucer with a spoon; it is installed
with scikit-image, so nothing is downloaded). The coarse mask is a 9-sided polygon around the
saucer joined to a pentagon around the cup, the kind of mask a quick brush stroke or a box prompt
gives: it cuts through the rim of the saucer and the cup and misses the spoon's shape.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["coarse_polygon_mask", "demo_inputs", "run_demo"]


def _ngon(cx: float, cy: float, rx: float, ry: float, n: int, phase: float) -> np.ndarray:
    t = phase + 2.0 * math.pi * np.arange(n) / n
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def coarse_polygon_mask(shape: tuple[int, int]) -> np.ndarray:
    """The demo's coarse mask for the 400x600 coffee photo (bool, (H, W))."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    saucer = _ngon(280, 228, 206, 160, 9, 0.2)  # the saucer's ellipse, cut by 9 straight edges
    cup = _ngon(290, 110, 126, 102, 5, -0.3)  # the cup's rim, cut by a pentagon
    for poly in (saucer, cup):
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    return mask.astype(bool)


def demo_inputs() -> tuple[np.ndarray, np.ndarray]:
    """The demo photo (uint8 RGB) and its coarse mask (bool)."""
    from skimage import data

    image = np.ascontiguousarray(data.coffee())
    return image, coarse_polygon_mask(image.shape[:2])


def run_demo(out: str | Path, device: str | None = None) -> dict[str, Path]:
    """Refine the demo's coarse mask and write the pictures into ``out``.

    Returns:
        name -> path of each file written (input, coarse, refined, alpha, overlay, compare).
    """
    from finecut.data.io import write_image, write_mask
    from finecut.refine.api import Refiner
    from finecut.viz import overlay_mask, side_by_side

    out = Path(out)
    image, coarse = demo_inputs()
    refiner = Refiner(device)
    t0 = time.perf_counter()
    prob = refiner.refine(image, coarse, soft=True)
    seconds = time.perf_counter() - t0
    refined = prob > 0.5
    over_coarse = overlay_mask(image, coarse)
    over_refined = overlay_mask(image, refined)
    paths = {
        "input": write_image(out / "input.png", image),
        "coarse": write_mask(out / "coarse.png", coarse),
        "refined": write_mask(out / "refined.png", refined),
        "alpha": write_mask(out / "alpha.png", prob),
        "overlay": write_image(out / "overlay.png", over_refined),
        "compare": write_image(
            out / "compare.png", side_by_side([over_coarse, over_refined, prob], height=400)
        ),
    }
    changed = float((refined != coarse).mean())
    log.info(
        "refined %dx%d in %.2f s on %s; %.1f%% of the pixels changed",
        image.shape[1],
        image.shape[0],
        seconds,
        refiner.device,
        100.0 * changed,
    )
    return paths
