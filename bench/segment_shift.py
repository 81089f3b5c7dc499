"""CamVid mIoU under fixed changes of light: how a segmenter holds up beyond its training scenes.

    .venv/bin/python bench/segment_shift.py --weights shipped --weights runs/x/last.pt

CamVid's validation sequence (0016E5) also gives 204 of the 367 training frames, while test holds
a sequence (Seq05VD) that no training frame comes from, so plain validation mIoU says little about
how a model copes with other light and cameras. This script scores the validation split (never
test) plain and under three fixed, deterministic changes that lie at or beyond the edge of the
training augmentation's ranges (``finecut.train.segment_data.photometric`` at strength 1: gamma
0.7-1.43, gains 0.9-1.1):

* ``dark``:   gamma 1.6 (darker mid-tones, as at dusk),
* ``bright``: gamma 0.6 (washed-out mid-tones, as in hazy sun),
* ``warm``:   channel gains (1.10, 1.00, 0.80) and brightness x0.85 (a warm, dim white balance).

One plain pass per image (no test-time augmentation), the whole 360x480 frame, void ignored, one
confusion matrix per row as ``finecut eval segment``. ``shipped`` names the embedded model; any
other value is a training ``last.pt`` or an exported ``.safetensors``.

What it is not: a predictor of test. In the seventeenth session a cycle trained with photometric
augmentation rose 1.1 points on plain val and 2.4 under these changes while its test mIoU fell
0.4 (plain) and 1.4 (default inference); see docs/training_segment.md, "The fifth cycle".
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from finecut.metrics import semantic
from finecut.segment.predict import load_segmenter
from finecut.train.segment_data import CAMVID_VOID, SegmentDataset, segment_items

SHIFTS = ("plain", "dark", "bright", "warm")


def shift(image: np.ndarray, name: str) -> np.ndarray:
    """One of :data:`SHIFTS` applied to an ``(H, W, 3)`` float image in [0, 1]."""
    if name == "plain":
        return image
    if name == "dark":
        return image**1.6
    if name == "bright":
        return image**0.6
    if name == "warm":
        return np.clip(image * np.array([1.10, 1.00, 0.80], np.float32) * 0.85, 0.0, 1.0)
    raise ValueError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")


def _load(spec: str):
    return load_segmenter(None if spec == "shipped" else Path(spec), device="cpu")


@torch.no_grad()
def score(model, data: Path, split: str, limit: int | None) -> dict[str, float]:
    model.eval()
    num_classes = int(model.config.num_classes)
    items = segment_items(data, split)[:limit]
    dataset = SegmentDataset(items, num_classes=num_classes, crop=None, cache=False)
    confusion = {name: np.zeros((num_classes, num_classes), np.int64) for name in SHIFTS}
    for index in range(len(dataset)):
        image, labels = dataset[index]
        base, truth = image.numpy().transpose(1, 2, 0), labels.numpy()
        for name in SHIFTS:
            x = torch.from_numpy(np.ascontiguousarray(shift(base, name).transpose(2, 0, 1)))
            pred = model(x.float().unsqueeze(0)).argmax(1)[0].numpy()
            confusion[name] += semantic.confusion_matrix(pred, truth, num_classes, CAMVID_VOID)
    return {name: float(semantic.miou(c)[0]) for name, c in confusion.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    ap.add_argument("--split", default="val", help="val (choose on it); never test")
    ap.add_argument("--weights", action="append", default=None, help="repeatable; default shipped")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.split == "test":
        sys.exit("segment_shift: error: choose on val; test is read once per shipped model")
    torch.set_num_threads(args.threads)
    rows = {}
    print(f"# {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"split {args.split}")
    print("| weights | " + " | ".join(SHIFTS) + " | mean of shifts | seconds |")
    print("|---|" + "---:|" * (len(SHIFTS) + 2))
    for spec in args.weights or ["shipped"]:
        start = time.perf_counter()
        result = score(_load(spec), args.data, args.split, args.limit)
        shifted = float(np.mean([result[n] for n in SHIFTS[1:]]))
        rows[spec] = {**result, "mean_shifts": shifted}
        cells = " | ".join(f"{100 * result[n]:.2f}" for n in SHIFTS)
        print(f"| {spec} | {cells} | {100 * shifted:.2f} | {time.perf_counter() - start:.0f} |")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
