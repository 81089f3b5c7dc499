"""How much does the refiner's keep step leave on the table? An oracle judge, training-side.

The keep step (:mod:`finecut.refine.keep`) judges each connected region where the finished mask
differs from the input and sets the regions it does not trust back to the input. This script
asks how good the finished mask would be with a perfect judge: the **oracle** keeps a changed
region exactly when the change adds correct pixels (measured against the ground truth, so it is
an upper bound, not a method). If the oracle gains much more than the learned keep step, the
judge is the limit; if it gains little more, the CRM's changes are.

Rows per (photo condition, scale, coarse family), IoU / mBA (harmed %): the coarse input,
snapping alone, the CRM alone, the finish without the keep step (gate and snapping), the default
(learned keep step at the default threshold), the oracle keep, and the oracle keep followed by an
oracle second opinion (snapping alone's changes where the kept mask is still the input, judged by
the same oracle). The cases and the cache are ``bench/refine_finish_study.py``'s (its CRM
outputs, finishes and snapping are read back when present, computed and cached otherwise):

    .venv/bin/python bench/refine_keep_oracle.py --every 15 --precision bf16 \\
        --cache ../data/finish_cache --json ../data/keep_oracle.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NAMES = ("coarse", "snap", "crm", "no keep", "default", "oracle", "oracle + snap")


def oracle_keep(prob: np.ndarray, coarse: np.ndarray, gt: np.ndarray, tile: int) -> np.ndarray:
    """``prob`` with each changed region (as the keep step cuts them) set back to the input's
    value unless the change adds correct pixels against ``gt``.

    Shape: (H, W) float, (H, W) bool, (H, W) bool -> (H, W) float32.
    """
    from finecut.refine.support import changed_regions, set_to_input

    box, n, labels = changed_regions(coarse, prob > 0.5, 2, tile)
    prob = prob.astype(np.float32, copy=False)
    if n == 1:
        return prob
    g = gt[box]
    gain = (prob[box] > 0.5) == g
    gain = gain.astype(np.int64) - (coarse[box] == g)
    per_region = np.bincount(labels.ravel(), weights=gain.ravel(), minlength=n)
    undo = per_region <= 0
    undo[0] = False
    return set_to_input(prob, coarse, box, labels, undo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent / ".." / "data" / "duts"))
    p.add_argument("--stems", default="@" + str(HERE.parent / "configs/refine/duts_holdout.txt"))
    p.add_argument("--every", type=int, default=15)
    p.add_argument("--families", default="lowres,sam,polygon,brush,perturb,identity")
    p.add_argument("--scales", default="1,2")
    p.add_argument("--conditions", default="clean,video")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--cache", default=str(HERE.parent / ".." / "data" / "finish_cache"))
    p.add_argument("--json", default=None, help="write every case's IoU and mBA here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    from finecut.data.folders import find_pairs, parse_stems
    from finecut.data.io import read_image, read_mask
    from finecut.metrics import iou, mba
    from finecut.refine.api import Refiner, gate_and_snap, without_keep
    from finecut.refine.evaluate import HARM_MARGIN, cached_float16, snap_alone, upsample_case
    from finecut.refine.keep import (
        default_keep_model,
        keep_probabilities,
        left_to_input,
        tile_pixels,
        undo_regions,
    )
    from finecut.train.coarse import seeded_coarse
    from finecut.train.keep import degrade_photo

    torch.set_num_threads(args.threads)
    pairs = find_pairs(Path(args.data), parse_stems(args.stems)[:: args.every])
    scales = [float(s) for s in args.scales.split(",")]
    # the finish study's cache folder for the embedded CRM
    tag = hashlib.sha256(b"embedded").hexdigest()[:10]
    cache = Path(args.cache) / (tag if args.precision == "fp32" else f"{tag}_{args.precision}")
    cache.mkdir(parents=True, exist_ok=True)
    refiner = Refiner("cpu", threads=args.threads, precision=args.precision)
    cfg = refiner.config
    plain = without_keep(cfg)
    key = hashlib.sha256(repr(plain).encode()).hexdigest()[:8]
    model = default_keep_model()
    threshold = cfg.keep_threshold if cfg.keep_threshold >= 0 else model.threshold

    rows: dict[str, dict[str, list]] = {}
    t0 = time.perf_counter()
    for n, (img_path, gt_path) in enumerate(pairs):
        image0 = read_image(img_path)
        gt0 = read_mask(gt_path, shape=image0.shape[:2], image_path=img_path) > 127
        for cond in args.conditions.split(","):
            photo0 = degrade_photo(image0, cond)
            for fam in args.families.split(","):
                coarse0 = seeded_coarse(gt0, img_path.stem, fam, args.seed)
                for s in scales:
                    image, gt, coarse = upsample_case(photo0, gt0, coarse0, s)
                    case = cache / f"{img_path.stem}_{cond}_{fam}_{s:g}"
                    crm = cached_float16(
                        case.with_name(case.name + ".npy"), refiner._crm_probability, image,
                        coarse, cfg,
                    )  # fmt: skip
                    finish = cached_float16(
                        case.with_name(f"{case.name}_finish{key}.npy"), gate_and_snap, image,
                        coarse, crm, plain,
                    )  # fmt: skip
                    snap = cached_float16(
                        case.with_name(case.name + "_snap.npy"), snap_alone, image, coarse
                    )
                    box, labels, pk = keep_probabilities(image, coarse, finish, crm, model)
                    default = undo_regions(finish, coarse, box, labels, pk, threshold)
                    tile = tile_pixels(model.tile, coarse.shape)
                    oracle = oracle_keep(finish, coarse, gt, tile)
                    residual = oracle_keep(left_to_input(oracle, coarse, snap), coarse, gt, tile)
                    second = np.where((oracle > 0.5) == coarse, residual, oracle)
                    preds = (coarse, snap, crm, finish, default, oracle, second)
                    cell = rows.setdefault(f"{cond}|{s:g}|{fam}", {k: [] for k in NAMES})
                    for name, pred in zip(NAMES, preds, strict=True):
                        pred = pred if pred.dtype == bool else pred > 0.5
                        cell[name].append((iou(pred, gt), mba(pred, gt)))
        print(
            f"[{n + 1}/{len(pairs)}] {img_path.stem} {time.perf_counter() - t0:.0f} s", flush=True
        )

    if args.json:
        Path(args.json).write_text(json.dumps(rows) + "\n")
    print(f"\n{len(pairs)} images of {args.data} (every {args.every} of {args.stems}), encoder "
          f"{args.precision}, keep threshold {threshold}")  # fmt: skip
    print("| condition | scale | family | " + " | ".join(NAMES) + " |")
    print("|---|---|---|" + "---:|" * len(NAMES))
    summary: dict[str, list] = {k: [] for k in NAMES}
    for k, cell in rows.items():
        base = np.array(cell["coarse"])
        out = []
        for name in NAMES:
            v = np.array(cell[name])
            harm = float(np.mean(v[:, 0] < base[:, 0] - HARM_MARGIN))
            gain = v.mean(axis=0) - base.mean(axis=0)
            summary[name].append((gain[0], gain[1], harm))
            out.append(
                f"{100 * v[:, 0].mean():.2f} / {100 * v[:, 1].mean():.2f} ({100 * harm:.0f})"
            )
        cond, s, fam = k.split("|")
        print(f"| {cond} | {s}x | {fam} | " + " | ".join(out) + " |")
    print()
    for name in NAMES:
        a = np.array(summary[name])
        print(
            f"{name}: mean IoU gain {100 * a[:, 0].mean():+.2f}, mBA gain "
            f"{100 * a[:, 1].mean():+.2f}, worst harm {100 * a[:, 2].max():.0f}%"
        )


if __name__ == "__main__":
    main()
