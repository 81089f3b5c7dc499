"""Write a folder of (frame, object mask) pairs from CamVid's val split, for the refiner studies.

The refiner trains on CamVid *train* objects only (``configs/refine/mix.yaml``), so the val
split's objects are a second training-side check besides the DUTS-TR hold-out: video frames
(360x480, compressed, motion blur) with cars, pedestrians and cyclists, closer to DAVIS than
DUTS-TR's photos. Each 8-connected component of Car, Pedestrian or Bicyclist of at least
``--min-area`` px is one pair; ``--count`` of them are taken evenly in file order. The frames
are symbolic links to the shared data (nothing is copied); the masks are 0/255 PNGs.

    .venv/bin/python bench/camvid_objects.py --out ../data/camvid_val_obj
    .venv/bin/python bench/refine_finish_study.py --data ../data/camvid_val_obj \\
        --stems @../data/camvid_val_obj/stems.txt --every 1 --conditions clean \\
        --variants snap,default
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
#: Car, Pedestrian, Bicyclist (``../shared/data/README.md`` has the class ids)
CLASSES = (8, 9, 10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camvid", default=str(HERE.parent.parent / "shared" / "data" / "camvid"))
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--out", required=True)
    p.add_argument("--min-area", type=int, default=3000)
    p.add_argument("--count", type=int, default=60)
    args = p.parse_args()
    root, out = Path(args.camvid), Path(args.out)
    if not (root / f"{args.split}.txt").is_file():
        raise SystemExit(f"no CamVid {args.split} split at {root}")
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder")
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    items = []
    for stem in (root / f"{args.split}.txt").read_text().split():
        labels = cv2.imread(str(root / args.split / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        for cls in CLASSES:
            n, comp, stats, _ = cv2.connectedComponentsWithStats(
                (labels == cls).astype(np.uint8), connectivity=8
            )
            for k in range(1, n):
                if stats[k, cv2.CC_STAT_AREA] >= args.min_area:
                    items.append((stem, cls, k, comp == k))
    chosen = items[:: max(1, len(items) // args.count)][: args.count]
    names = []
    for stem, cls, k, mask in chosen:
        name = f"{stem}_c{cls}_{k}"
        frame = (root / args.split / "images" / f"{stem}.jpg").resolve()
        os.symlink(frame, out / "images" / f"{name}.jpg")
        cv2.imwrite(str(out / "masks" / f"{name}.png"), mask.astype(np.uint8) * 255)
        names.append(name)
    (out / "stems.txt").write_text("\n".join(names) + "\n")
    print(f"{len(items)} objects of at least {args.min_area} px; {len(names)} written to {out}")


if __name__ == "__main__":
    main()
