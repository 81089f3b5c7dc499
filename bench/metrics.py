"""Time finecut.metrics on large masks against the plain full-image mBA of CascadePSP.

Run from the repository root:  .venv/bin/python bench/metrics.py [--size 4096] [--repeats 5]

Prints a markdown table: best-of-N wall time of ``mba`` (fast path), the reference mBA (five
full-image ``cv2.morphologyEx`` gradients, tests/metrics/cascadepsp_reference.py), ``iou`` and
``boundary_f`` (DAVIS default tolerance), for a large blob with an irregular boundary and for a
small object.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from finecut.metrics import boundary_f, iou, mba

ROOT = Path(__file__).resolve().parents[1]


def _load_reference() -> Callable[[np.ndarray, np.ndarray], float]:
    path = ROOT / "tests" / "metrics" / "cascadepsp_reference.py"
    spec = importlib.util.spec_from_file_location("cascadepsp_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_mba


def _irregular_blob(
    size: int, center: tuple[float, float], radius: float, rng: np.random.Generator
) -> np.ndarray:
    """A star-shaped blob whose radius has 60 random harmonics, plus pixel-scale boundary noise."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    angle = np.arctan2(yy - center[0], xx - center[1])
    r = np.full_like(angle, radius)
    for k in range(1, 60):
        r += radius * 0.15 / k * rng.normal() * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    mask = np.hypot(yy - center[0], xx - center[1]) < r
    noise = cv2.resize(rng.random((size // 8, size // 8)).astype(np.float32), (size, size))
    edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((9, 9), np.uint8))
    return np.where(edge > 0, noise > 0.5, mask)


def _prediction(gt: np.ndarray) -> np.ndarray:
    """A plausible refined mask: smoothed (detail lost), slightly grown, shifted by (2, -1) px."""
    soft = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 6)
    return np.roll(soft > 0.45, (2, -1), axis=(0, 1))


def _best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="square image side in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing (best is kept)")
    args = parser.parse_args()
    reference_mba = _load_reference()
    rng = np.random.default_rng(0)
    s = args.size
    cases = {
        "large irregular blob": _irregular_blob(s, (0.48 * s, 0.52 * s), 0.36 * s, rng),
        "small object": _irregular_blob(s, (0.7 * s, 0.3 * s), 0.02 * s, rng),
    }
    print(
        f"{s}x{s} masks, best of {args.repeats}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)\n"
    )
    print(
        "| case | gt fg share | mba (ms) | reference mba (ms) | speed-up | same value "
        "| iou (ms) | boundary_f (ms) | mBA | boundary F | boundary F (2 px) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, gt in cases.items():
        pred = _prediction(gt)
        t_fast, v_fast = _best_time(lambda p=pred, g=gt: mba(p, g), args.repeats)
        t_ref, v_ref = _best_time(lambda p=pred, g=gt: reference_mba(p, g), args.repeats)
        t_iou, _ = _best_time(lambda p=pred, g=gt: iou(p, g), args.repeats)
        t_bf, v_bf = _best_time(lambda p=pred, g=gt: boundary_f(p, g), args.repeats)
        print(
            f"| {name} | {gt.mean():.3f} | {1e3 * t_fast:.0f} | {1e3 * t_ref:.0f} "
            f"| {t_ref / t_fast:.1f}x | {'yes' if v_fast == v_ref else 'NO'} | {1e3 * t_iou:.1f} "
            f"| {1e3 * t_bf:.0f} | {v_fast:.4f} | {v_bf:.4f} | {boundary_f(pred, gt, 2):.4f} |"
        )


if __name__ == "__main__":
    main()
