"""A picture of the shipped CamVid segmenter on test frames: photo | finecut segment | ground truth.

    .venv/bin/python bench/segment_picture.py --out docs/img/segment_camvid.jpg

Each row is one CamVid test frame (never trained on), segmented as ``finecut segment`` does by
default (:func:`finecut.segment.predict.segment_image`: 1.75x and 2x, each mirrored); classes in
SegNet's CamVid colours (void, which the metric ignores, in black), a legend under the rows, and
the frame's own mIoU (its classes present in the prediction or the ground truth) in the corner.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "camvid"
# SegNet's CamVid 11-class colours (Brostow et al.'s palette), in CAMVID_CLASSES order
PALETTE = np.array(
    [
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ],
    dtype=np.uint8,
)  # fmt: skip


def _fail(message: str) -> None:
    print(f"segment_picture: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def colour(labels: np.ndarray) -> np.ndarray:
    """Class ids -> RGB in the CamVid palette; any id past it (void) is black."""
    out = np.zeros((*labels.shape, 3), np.uint8)
    known = labels < len(PALETTE)
    out[known] = PALETTE[labels[known]]
    return out


def _label(panel: np.ndarray, text: str) -> None:
    for colour_, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(panel, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour_, width)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="CamVid with test/images, test/labels")
    p.add_argument(
        "--frames",
        help="comma list of test stems (default: every 80th test frame from the first, so that "
        "the frames are not picked by how well they come out)",
    )
    p.add_argument("--out", type=Path, required=True, help="the picture (.jpg or .png)")
    args = p.parse_args()
    import torch

    from finecut.data.io import write_image
    from finecut.errors import FinecutError
    from finecut.metrics import semantic
    from finecut.models.segmenter import CAMVID_CLASSES
    from finecut.segment.predict import load_segmenter, segment_image
    from finecut.train.segment_data import CAMVID_VOID, load_pair, segment_items
    from finecut.viz import side_by_side

    try:
        items = segment_items(args.data, "test")  # checked: the folders, the pairs
    except FinecutError as exc:
        _fail(str(exc))
    if args.frames is None:
        items = items[::80]
    else:
        by_stem = {item.stem: item for item in items}
        wanted = [s.strip() for s in args.frames.split(",") if s.strip()]
        missing = [s for s in wanted if s not in by_stem]
        if missing:
            _fail(f"no test frame {missing[0]!r} in {args.data / 'test'}")
        items = [by_stem[s] for s in wanted]
    torch.set_num_threads(1)
    model = load_segmenter(None, device="cpu")
    n = len(CAMVID_CLASSES)
    rows = []
    for item in items:
        try:
            image, truth = load_pair(item, n)
        except FinecutError as exc:
            _fail(str(exc))
        pred = segment_image(model, image)
        # the frame's mIoU over the classes in its prediction or ground truth, void ignored
        score, _ = semantic.miou(semantic.confusion_matrix(pred, truth, n, CAMVID_VOID))
        panels = [image.copy(), colour(pred), colour(truth)]
        _label(panels[0], item.stem)
        _label(panels[1], f"finecut segment (frame mIoU {100 * score:.1f}%)")
        _label(panels[2], "ground truth (void black)")
        rows.append(side_by_side(panels, height=270, gap=4))
        print(f"{item.stem}: frame mIoU {score:.4f}", flush=True)
    width = max(r.shape[1] for r in rows)
    legend = np.full((34, width, 3), 255, np.uint8)
    x = 6
    for name, rgb in zip(CAMVID_CLASSES, PALETTE, strict=True):
        cv2.rectangle(legend, (x, 9), (x + 16, 25), tuple(int(c) for c in rgb), -1)
        cv2.putText(legend, name, (x + 20, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        x += 24 + cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 12
    gap = np.full((4, width, 3), 255, np.uint8)
    body = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    out = np.vstack([x for r in body for x in (r, gap)] + [legend])
    write_image(args.out, out, overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
