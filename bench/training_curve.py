"""Summarise a training log (``<run>/log.jsonl``) as a markdown table and a PNG curve.

    .venv/bin/python bench/training_curve.py runs/refine_lite0/log.jsonl --every 250 \
        --png docs/img/refine_training_curve.png

Each table row averages the logged steps of one window: loss, the batch IoU of the model's output
and of its coarse input (both at threshold 0.5 on the training crops), and throughput.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def _windows(records: list[dict], every: int) -> list[dict]:
    out, bucket = [], []
    for r in records:
        bucket.append(r)
        if r["step"] % every == 0 or r is records[-1]:
            out.append(
                {
                    "step": r["step"],
                    "lr": r["lr"],
                    "loss": float(np.mean([b["loss"] for b in bucket])),
                    "iou": float(np.mean([b["iou"] for b in bucket])),
                    "coarse_iou": float(np.mean([b["coarse_iou"] for b in bucket])),
                    "samples_per_s": r["samples_per_s"],
                }
            )
            bucket = []
    return out


def _plot(rows: list[dict], path: Path) -> None:
    """Loss (blue) and IoU gain over the coarse input in points (red) against the step."""
    w, h, pad = 720, 360, 48
    img = np.full((h, w, 3), 255, np.uint8)
    steps = np.array([r["step"] for r in rows], float)
    loss = np.array([r["loss"] for r in rows])
    gain = np.array([100 * (r["iou"] - r["coarse_iou"]) for r in rows])

    def xy(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
        x = pad + (steps - steps.min()) / max(np.ptp(steps), 1) * (w - 2 * pad)
        y = h - pad - (values - lo) / max(hi - lo, 1e-9) * (h - 2 * pad)
        return np.stack([x, y], 1).round().astype(np.int32)

    cv2.rectangle(img, (pad, pad), (w - pad, h - pad), (0, 0, 0), 1)
    gain_lo, gain_hi = min(0.0, gain.min()), max(gain.max(), 1.0)
    zero = round(h - pad - (0.0 - gain_lo) / max(gain_hi - gain_lo, 1e-9) * (h - 2 * pad))
    cv2.line(img, (pad, zero), (w - pad, zero), (200, 200, 200), 1)
    cv2.polylines(img, [xy(loss, 0.0, loss.max())], False, (200, 80, 0), 2, cv2.LINE_AA)
    cv2.polylines(img, [xy(gain, gain_lo, gain_hi)], False, (0, 0, 220), 2, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, f"loss (blue, 0..{loss.max():.2f})", (pad, 20), font, 0.5, (200, 80, 0), 1)
    cv2.putText(
        img,
        f"IoU - coarse IoU, points (red, {gain_lo:.1f}..{gain_hi:.1f})",
        (pad + 260, 20),
        font,
        0.5,
        (0, 0, 220),
        1,
    )
    cv2.putText(img, f"step 0..{int(steps.max())}", (w // 2 - 40, h - 15), font, 0.5, (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args()
    records = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    rows = _windows(records, args.every)
    print("| step | lr | loss | IoU % (output) | IoU % (coarse input) | gain, points | samples/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['step']} | {r['lr']:.2e} | {r['loss']:.4f} | {100 * r['iou']:.2f} | "
            f"{100 * r['coarse_iou']:.2f} | {100 * (r['iou'] - r['coarse_iou']):+.2f} | "
            f"{r['samples_per_s']:.2f} |"
        )
    if args.png:
        _plot(rows, args.png)


if __name__ == "__main__":
    main()
