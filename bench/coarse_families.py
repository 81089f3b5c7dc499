"""Picture of the coarse-mask families (finecut.train.coarse) on one photo, for docs/.

    .venv/bin/python bench/coarse_families.py --stem 0042 --zoom 10,210,20,290 \
        --png docs/img/coarse_families.png

Each panel: the photo darkened outside the coarse mask, the ground-truth outline in green, the
coarse mask's outline in red, and the family's IoU with the ground truth.
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def _panel(image: np.ndarray, gt: np.ndarray, coarse: np.ndarray, title: str) -> np.ndarray:
    out = (image * np.where(coarse[..., None], 1.0, 0.35)).astype(np.uint8)
    for m, colour in ((gt, (0, 255, 0)), (coarse, (255, 40, 40))):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    bar = np.full((22, out.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, out], axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(ROOT, "ecssd"))
    p.add_argument("--stem", default="0042")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--png", default="docs/img/coarse_families.png")
    p.add_argument("--zoom", default=None, help="y0,y1,x0,x1: show only this part, 2x larger")
    args = p.parse_args()

    from finecut.data.io import read_image, read_mask, write_image
    from finecut.metrics import iou
    from finecut.train.coarse import FAMILIES, sample_coarse

    image = read_image(os.path.join(args.data, "images", f"{args.stem}.jpg"))
    gt = read_mask(os.path.join(args.data, "masks", f"{args.stem}.png")) > 127
    if args.scale != 1:
        image = cv2.resize(image, None, fx=args.scale, fy=args.scale,
                           interpolation=cv2.INTER_LANCZOS4)
        gt = cv2.resize(gt.astype(np.uint8), None, fx=args.scale, fy=args.scale,
                        interpolation=cv2.INTER_NEAREST) > 0
    panels = []
    for k, family in enumerate(FAMILIES):
        coarse, _ = sample_coarse(gt, np.random.default_rng([args.seed, k]), scale=args.scale,
                                  family=family)
        title = f"{family}: IoU {100 * iou(coarse, gt):.1f}"
        img, g, c = image, gt, coarse
        if args.zoom:
            y0, y1, x0, x1 = (int(v) for v in args.zoom.split(","))
            img, g, c = (
                cv2.resize(np.ascontiguousarray(a[y0:y1, x0:x1]).astype(np.uint8), None, fx=2, fy=2,
                           interpolation=cv2.INTER_NEAREST)
                for a in (image, gt, coarse)
            )
            g, c = g > 0, c > 0
        panels.append(_panel(img, g, c, title))
    rows = [np.concatenate(panels[i : i + 3], axis=1) for i in range(0, len(panels), 3)]
    write_image(args.png, np.concatenate(rows, axis=0))
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
