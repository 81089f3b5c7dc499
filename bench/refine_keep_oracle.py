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
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_finish_study import add_case_arguments, print_rows, study_cases  # noqa: E402

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
    add_case_arguments(p, "lowres,sam,polygon,brush,perturb,identity", "bf16")
    p.add_argument("--json", default=None, help="write every case's IoU and mBA here")
    args = p.parse_args()

    import torch

    from finecut.metrics import iou, mba
    from finecut.refine.api import Refiner, gate_and_snap, keep_step, without_keep
    from finecut.refine.evaluate import cached_float16, snap_alone
    from finecut.refine.keep import default_keep_model, left_to_input, tile_pixels

    torch.set_num_threads(args.threads)
    refiner = Refiner("cpu", weights=args.weights, threads=args.threads, precision=args.precision)
    cfg = refiner.config
    plain = without_keep(cfg)
    key = hashlib.sha256(repr(plain).encode()).hexdigest()[:8]
    model = default_keep_model()
    threshold = cfg.keep_threshold if cfg.keep_threshold >= 0 else model.threshold

    rows: dict[tuple, dict[str, list]] = {}
    for _, cond, fam, s, image, gt, coarse, case, crm in study_cases(args, refiner):
        finish = cached_float16(
            case.with_name(f"{case.name}_finish{key}.npy"), gate_and_snap, image, coarse, crm,
            plain,
        )  # fmt: skip
        snap = cached_float16(case.with_name(case.name + "_snap.npy"), snap_alone, image, coarse)
        default = keep_step(image, coarse, finish, crm, cfg, model)  # the default's own keep step
        tile = tile_pixels(model.tile, coarse.shape)
        oracle = oracle_keep(finish, coarse, gt, tile)
        residual = oracle_keep(left_to_input(oracle, coarse, snap), coarse, gt, tile)
        second = np.where((oracle > 0.5) == coarse, residual, oracle)
        preds = (coarse, snap, crm, finish, default, oracle, second)
        cell = rows.setdefault((cond, s, fam), {k: [] for k in NAMES})
        for name, pred in zip(NAMES, preds, strict=True):
            pred = pred if pred.dtype == bool else pred > 0.5
            cell[name].append((iou(pred, gt), mba(pred, gt)))
    if args.json:
        out = {f"{c}|{s:g}|{f}": cell for (c, s, f), cell in rows.items()}
        Path(args.json).write_text(json.dumps(out) + "\n")
    print(f"keep threshold {threshold}")
    print_rows(rows, list(NAMES))


if __name__ == "__main__":
    from finecut.errors import FinecutError

    try:
        main()
    except FinecutError as exc:  # a data folder without images/ and masks/, unreadable weights
        raise SystemExit(f"error: {exc}") from None
