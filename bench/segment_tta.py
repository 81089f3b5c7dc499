"""CamVid mIoU of a segmenter with test-time augmentation: input scales and a horizontal flip.

    .venv/bin/python bench/segment_tta.py --split val                     # choose on val
    .venv/bin/python bench/segment_tta.py --split test --only "1|1f|0.75,1,1.25,1.5f"

Every image of the split is segmented whole (void ignored, one confusion matrix over all pixels,
as ``finecut eval segment``). Each image's class probabilities are computed once per scale and
mirror (:func:`finecut.models.segmenter.multiscale_probs` with one scale) and every candidate
combination is scored from those passes, so all rows come from one run; a candidate is written
as its scales joined by commas, ``f`` at the end for the flip (``1`` is the plain model).
Columns: mIoU, the thin classes of issue 17 (pole, sign, pedestrian, cyclist), and the number of
forward passes and their cost relative to one pass at scale 1 (the sum of the squared scales,
times two with the flip). Choose on ``val``; read ``test`` once for the chosen candidate.
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
from finecut.models.segmenter import CAMVID_CLASSES, multiscale_probs
from finecut.segment.predict import load_segmenter
from finecut.train.segment_data import CAMVID_VOID, SegmentDataset, segment_items

DEFAULT_CANDIDATES = (
    "1|1f|1.25f|1.5f|0.75,1,1.25f|1,1.25,1.5f|0.75,1,1.25,1.5f|1,1.5,2f|0.75,1,1.25,1.5,1.75f|"
    "0.5,0.75,1,1.25,1.5,1.75,2f"
)
THIN = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")


def parse_candidate(text: str) -> tuple[tuple[float, ...], bool]:
    """``"0.75,1,1.25f"`` -> ((0.75, 1.0, 1.25), True)."""
    flip = text.endswith("f")
    body = text[:-1] if flip else text
    try:
        scales = tuple(float(s) for s in body.split(","))
    except ValueError:
        raise SystemExit(f"segment_tta: error: bad candidate {text!r}") from None
    if not scales or any(not s > 0 for s in scales):
        raise SystemExit(f"segment_tta: error: bad candidate {text!r}")
    return scales, flip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--weights", default=None, help="default: the shipped CamVid model")
    ap.add_argument("--only", default=DEFAULT_CANDIDATES, help="candidates separated by |")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    ap.add_argument("--json", type=Path, default=None, help="also write every class's IoU here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    candidates = [(c, *parse_candidate(c)) for c in args.only.split("|")]
    scales = sorted({s for _, sc, _ in candidates for s in sc})
    model = load_segmenter(args.weights, device="cpu")
    model.eval()
    k = len(CAMVID_CLASSES)
    data = SegmentDataset(
        segment_items(args.data, args.split), num_classes=k, crop=None, void=CAMVID_VOID,
        cache=False,
    )  # fmt: skip
    n = len(data) if args.limit is None else min(args.limit, len(data))
    confusion = {c: np.zeros((k, k), np.int64) for c, _, _ in candidates}
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(n):
            image, labels = data[i]
            x = image.unsqueeze(0)
            plain = {s: multiscale_probs(model, x, (s,)) for s in scales}
            mirrored = {s: multiscale_probs(model, x.flip(-1), (s,)).flip(-1) for s in scales}
            for name, sc, flip in candidates:
                passes = [plain[s] for s in sc] + ([mirrored[s] for s in sc] if flip else [])
                pred = torch.stack(passes).mean(0).argmax(1)[0].numpy()
                confusion[name] += semantic.confusion_matrix(pred, labels.numpy(), k, CAMVID_VOID)
            print(f"{i + 1}/{n}", file=sys.stderr, end="\r", flush=True)
    seconds = time.perf_counter() - start
    print(f"CamVid {args.split}, {n} images, weights {args.weights or 'segmenter_camvid'}, "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{seconds:.0f} s for all passes\n")  # fmt: skip
    print("| candidate | mIoU | " + " | ".join(THIN) + " | passes | cost |")
    print("|---|---:|" + "---:|" * len(THIN) + "---:|---:|")
    for name, sc, flip in candidates:
        miou, per = semantic.miou(confusion[name])
        thin = " | ".join(f"{100 * per[CAMVID_CLASSES.index(t)]:.2f}" for t in THIN)
        cost = sum(s * s for s in sc) * (2 if flip else 1)
        passes = len(sc) * (2 if flip else 1)
        print(f"| {name} | {100 * miou:.2f} | {thin} | {passes} | {cost:.2f} |")
    if args.json is not None:
        rows = {}
        for name, _, _ in candidates:
            miou, per = semantic.miou(confusion[name])
            per_class = dict(zip(CAMVID_CLASSES, map(float, per), strict=True))
            rows[name] = {"miou": miou, "per_class": per_class}
        body = {"split": args.split, "images": n, "weights": args.weights, "candidates": rows}
        args.json.write_text(json.dumps(body, indent=2) + "\n")


if __name__ == "__main__":
    main()
