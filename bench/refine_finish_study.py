"""Choose the refiner's finishing (do-no-harm gate, snapping) on training-side images.

The CRM probability of every case is computed once and cached (``--cache``); each finishing
variant is then a cheap function of (photo, coarse mask, CRM probability), so many variants can
be compared on many images. Cases: held-out DUTS-TR images (``configs/refine/duts_holdout.txt``,
never trained on), each coarse family, each scale, and each photo condition: ``clean`` (the photo
as it is) or ``video`` (Gaussian blur of sigma 1.2 px and JPEG at quality 40 at the native size,
before upsampling: the soft, compressed edges of video frames; the ground truth is unchanged).

    .venv/bin/python bench/refine_finish_study.py --every 15 --scales 1,2 \\
        --families lowres,sam,polygon,perturb,identity --variants default,nosnap,crm \\
        --cache ../data/finish_cache

Variants are ``name`` or ``name:key=value:...`` with InferenceConfig fields (like
bench/refine_quality.py's ``finecut:`` rows); ``coarse``, ``snap`` (snapping of the coarse mask
alone) and ``crm`` (the CRM alone) are the references. The table: IoU / mBA (harmed %) per
(condition, scale, family), and a summary line per variant: mean IoU and mBA gain over the
coarse input and the worst harm share.

Several keep models in one run: ``--keep-model trees=A.safetensors,lin=B.safetensors`` and
variants labelled by them (``trees:keep_threshold=0.8``); the region features of a case are
computed once for all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def add_case_arguments(p: argparse.ArgumentParser, families: str, precision: str) -> None:
    """The options that pick the cases, the CRM and its cache (shared with
    ``bench/refine_keep_oracle.py``)."""
    p.add_argument("--data", default=str(HERE.parent / ".." / "data" / "duts"))
    p.add_argument("--stems", default="@" + str(HERE.parent / "configs/refine/duts_holdout.txt"))
    p.add_argument("--every", type=int, default=15)
    p.add_argument(
        "--offset", type=int, default=0,
        help="start at this index of the stems (then every --every-th): another sample",
    )  # fmt: skip
    p.add_argument("--families", default=families)
    p.add_argument("--scales", default="1,2")
    p.add_argument("--conditions", default="clean,video")
    p.add_argument("--weights", default=None)
    p.add_argument(
        "--precision", default=precision, choices=("fp32", "bf16"),
        help="the CRM encoder's arithmetic (its CRM outputs are cached apart)",
    )  # fmt: skip
    p.add_argument("--cache", default=str(HERE.parent / ".." / "data" / "finish_cache"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def study_cases(args: argparse.Namespace, refiner):
    """Every case of ``args``: yields ``(stem, condition, family, scale, image, gt, coarse, case,
    crm)``, ``case`` the path stem of its cache files, ``crm`` its cached CRM probability. A
    line of progress is printed after each image."""
    from finecut.data.folders import find_pairs, parse_stems
    from finecut.data.io import read_image, read_mask
    from finecut.refine.evaluate import cached_float16, upsample_case
    from finecut.train.coarse import seeded_coarse
    from finecut.train.keep import degrade_photo

    if not 0 <= args.offset < args.every:
        raise SystemExit(f"error: --offset must be in [0, --every), not {args.offset}")
    pairs = find_pairs(Path(args.data), parse_stems(args.stems)[args.offset :: args.every])
    scales = [float(s) for s in args.scales.split(",")]
    tag = hashlib.sha256(
        Path(args.weights).read_bytes() if args.weights else b"embedded"
    ).hexdigest()[:10]
    cache = Path(args.cache) / (tag if args.precision == "fp32" else f"{tag}_{args.precision}")
    cache.mkdir(parents=True, exist_ok=True)
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
                    # the CRM and the snapping are the slow parts: both cached as float16
                    case = cache / f"{img_path.stem}_{cond}_{fam}_{s:g}"
                    crm = cached_float16(
                        case.with_name(case.name + ".npy"), refiner._crm_probability, image, coarse,
                        refiner.config,
                    )  # fmt: skip
                    yield img_path.stem, cond, fam, s, image, gt, coarse, case, crm
        print(
            f"[{n + 1}/{len(pairs)}] {img_path.stem} {time.perf_counter() - t0:.0f} s", flush=True
        )
    print()
    print(
        f"{len(pairs)} images of {args.data} (every {args.every} of {args.stems} from index "
        f"{args.offset}); weights "
        f"{args.weights or 'embedded'}, encoder {args.precision}"
    )


def print_rows(rows: dict, names: list[str]) -> None:
    """The table of ``rows`` ((condition, scale, family) -> name -> [(iou, mba)], ``names[0]``
    the coarse input): IoU / mBA (harmed %) per row, then each name's mean gains over the input
    and its worst and mean harmed shares."""
    from finecut.refine.evaluate import HARM_MARGIN

    print("| condition | scale | family | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---:|" * len(names))
    summary = {k: [] for k in names}
    for (cond, s, fam), cell in rows.items():
        base = np.array(cell[names[0]])
        out = []
        for name in names:
            v = np.array(cell[name])
            harm = float(np.mean(v[:, 0] < base[:, 0] - HARM_MARGIN))
            gain = v.mean(axis=0) - base.mean(axis=0)
            summary[name].append((gain[0], gain[1], harm))
            out.append(
                f"{100 * v[:, 0].mean():.2f} / {100 * v[:, 1].mean():.2f} ({100 * harm:.0f})"
            )
        print(f"| {cond} | {s:g}x | {fam} | " + " | ".join(out) + " |")
    print()
    for name in names:
        a = np.array(summary[name])
        print(
            f"{name}: mean IoU gain {100 * a[:, 0].mean():+.2f}, mBA gain "
            f"{100 * a[:, 1].mean():+.2f}, worst harm {100 * a[:, 2].max():.0f}%, "
            f"mean harm {100 * a[:, 2].mean():.1f}%"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(p, "lowres,sam,polygon,perturb,identity", "fp32")
    p.add_argument("--variants", default="default")
    p.add_argument(
        "--keep-model",
        default=None,
        help="the keep model of keep_learned variants (default: the embedded default); or "
        "NAME=FILE,NAME2=FILE2,...: variants labelled NAME (NAME or NAME:key=value:...) use "
        "FILE's model, the others the embedded one",
    )
    p.add_argument(
        "--snap-keep-model", default=None,
        help="the keep model judging snapping alone's changes (keep_snap_threshold variants; "
        "default: the embedded refine_keep_snap)",
    )  # fmt: skip
    args = p.parse_args()

    import torch

    from finecut.metrics import iou, mba
    from finecut.refine.api import Refiner, gate_and_snap, keep_step, without_keep
    from finecut.refine.evaluate import _parse_method, cached_float16, snap_alone
    from finecut.refine.keep import (
        default_keep_model,
        default_snap_keep_model,
        keep_probabilities,
        left_to_input,
        load_keep_model,
        region_features,
        second_opinion,
        undo_regions,
    )

    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    refiner = Refiner("cpu", weights=args.weights, threads=args.threads, precision=args.precision)
    keep_models = {}  # variant label -> its keep model; "" for every other variant
    if args.keep_model and "=" in args.keep_model:
        for entry in args.keep_model.split(","):
            label, _, path = entry.partition("=")
            keep_models[label] = load_keep_model(path)
        keep_models[""] = default_keep_model()
    else:
        keep_models[""] = (
            load_keep_model(args.keep_model) if args.keep_model else default_keep_model()
        )
    snap_model = (
        load_keep_model(args.snap_keep_model) if args.snap_keep_model else default_snap_keep_model()
    )

    def case_snap(finished: dict, case: Path, image, coarse) -> np.ndarray:
        # snapping alone of a case: cached on disk, read once per case
        if "snap" not in finished:
            path = case.with_name(case.name + "_snap.npy")
            finished["snap"] = cached_float16(path, snap_alone, image, coarse)
        return finished["snap"]

    names = ["coarse", *variants]
    methods = {}  # name -> (crm | snap | finecut, its InferenceConfig, its keep model's label)
    for name in variants:
        label, _, opts = name.partition(":")
        base = label if label in ("crm", "snap", "finecut") else "finecut"
        base, overrides = _parse_method(f"{base}:{opts}" if opts else base)
        model_label = label if label in keep_models else ""
        methods[name] = (base, replace(refiner.config, **overrides), model_label)
    rows = {}  # (cond, scale, fam) -> name -> list of (iou, mba)
    for _, cond, fam, s, image, gt, coarse, case, crm in study_cases(args, refiner):
        cell = rows.setdefault((cond, s, fam), {k: [] for k in names})
        finished = {}
        for name in names:
            if name == "coarse":
                pred = coarse
            else:
                base, cfg, model_label = methods[name]
                keep_model = keep_models[model_label]
                if base == "crm":
                    pred = crm > 0.5
                elif base == "snap":
                    pred = case_snap(finished, case, image, coarse) > 0.5
                else:
                    # variants that differ only in the keep step share the rest
                    plain = without_keep(cfg)
                    if plain not in finished:
                        key = hashlib.sha256(repr(plain).encode()).hexdigest()[:8]
                        path = case.with_name(f"{case.name}_finish{key}.npy")
                        finished[plain] = cached_float16(
                            path, gate_and_snap, image, coarse, crm, plain
                        )
                    prob = finished[plain]
                    if cfg.keep_learned:
                        # models share the region features (per tile), and thresholds of one
                        # model its region probabilities
                        fkey = ("features", plain, keep_model.tile)
                        if fkey not in finished:
                            finished[fkey] = region_features(
                                image, coarse, prob, crm, tile=keep_model.tile
                            )
                        if ("keep", plain, model_label) not in finished:
                            box, labels, feats = finished[fkey]
                            pk = keep_model.probability(feats) if len(feats) else np.zeros(0)
                            finished[("keep", plain, model_label)] = (box, labels, pk)
                        box, labels, pk = finished[("keep", plain, model_label)]
                        t = cfg.keep_threshold
                        t = t if t >= 0 else keep_model.threshold
                        prob = undo_regions(prob, coarse, box, labels, pk, t)
                        if cfg.keep_snap_threshold >= 0:
                            # snapping alone's changes where the kept mask left the input,
                            # judged once per kept mask
                            snapped = case_snap(finished, case, image, coarse)
                            key = ("snapkeep", plain, t, model_label)
                            if key not in finished:
                                residual = left_to_input(prob, coarse, snapped)
                                finished[key] = keep_probabilities(
                                    image, coarse, residual, crm, snap_model
                                )
                            prob = second_opinion(
                                prob, coarse, snapped, *finished[key], cfg.keep_snap_threshold
                            )
                    else:
                        prob = keep_step(image, coarse, prob, crm, cfg)
                    pred = prob > 0.5
            cell[name].append((iou(pred, gt), mba(pred, gt)))
    print_rows(rows, names)


if __name__ == "__main__":
    from finecut.errors import FinecutError

    try:
        main()
    except FinecutError as exc:  # a data folder without images/ and masks/, unreadable weights
        raise SystemExit(f"error: {exc}") from None
