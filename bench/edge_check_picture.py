"""Picture of the do-no-harm keep step (edge check, keep model) on one training-side photo.

    .venv/bin/python bench/edge_check_picture.py --stem ILSVRC2012_test_00000305 \\
        --family sam --png docs/img/edge_check.png

Panels: the coarse mask, finecut without a keep step (gate + snapping), with the edge check (the
default of the second session), with the learned keep model (today's default), each as the photo
darkened outside the mask with the ground truth's outline in
green, the mask's in red, and its IoU / mBA. The photo is a DUTS-TR hold-out image (never trained
on; the keep step was chosen on such images), so this picture is an illustration, not evidence.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from coarse_families import _panel  # noqa: E402  (bench/ is the script's folder)

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent / ".." / "data" / "duts"))
    p.add_argument("--stem", default="ILSVRC2012_test_00000305")
    p.add_argument("--family", default="sam")
    p.add_argument("--png", default=str(HERE.parent / "docs" / "img" / "edge_check.png"))
    p.add_argument("--height", type=int, default=300)
    p.add_argument("--zoom", default=None, help="y0,y1,x0,x1: show only this part of the photo")
    args = p.parse_args()
    if not os.path.isdir(args.data):
        raise SystemExit(f"no data at {args.data}")

    from finecut.data.folders import find_pairs
    from finecut.data.io import read_image, read_mask, write_image
    from finecut.metrics import iou, mba
    from finecut.refine.api import Refiner, finish_probability
    from finecut.train.coarse import seeded_coarse
    from finecut.viz import side_by_side

    ((img_path, gt_path),) = find_pairs(Path(args.data), [args.stem])
    image = read_image(img_path)
    gt = read_mask(gt_path, shape=image.shape[:2], image_path=img_path) > 127
    coarse = seeded_coarse(gt, args.stem, args.family, 0)
    refiner = Refiner("cpu", threads=1)
    crm = refiner._crm_probability(image, coarse, refiner.config)
    titles = [f"input  {100 * iou(coarse, gt):.1f} / {100 * mba(coarse, gt):.1f}"]
    panels = [_panel(image, gt, coarse, titles[0])]
    variants = (
        ("no keep step", replace(refiner.config, keep_edges=False, keep_learned=False)),
        ("edge check", replace(refiner.config, keep_edges=True, keep_learned=False)),
        ("keep model", replace(refiner.config, keep_learned=True)),
    )
    for title, cfg in variants:
        pred = finish_probability(image, coarse, crm, cfg) > 0.5
        titles.append(f"{title}  {100 * iou(pred, gt):.1f} / {100 * mba(pred, gt):.1f}")
        panels.append(_panel(image, gt, pred, titles[-1]))
    if args.zoom:
        y0, y1, x0, x1 = (int(v) for v in args.zoom.split(","))
        masks = [coarse] + [
            finish_probability(image, coarse, crm, c) > 0.5
            for _, c in variants
        ]
        panels = [
            _panel(image[y0:y1, x0:x1], gt[y0:y1, x0:x1], m[y0:y1, x0:x1], p_title)
            for m, p_title in zip(masks, titles, strict=True)
        ]
    picture = side_by_side(panels, height=args.height)
    write_image(args.png, picture, overwrite=True)
    print(f"wrote {args.png} ({picture.shape[1]}x{picture.shape[0]})")


if __name__ == "__main__":
    main()
