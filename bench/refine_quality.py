"""Refinement quality per kind of coarse mask and scale, against the non-learned baselines.

    # DAVIS (never trained on, never used to pick settings), native, 2x and 4x, every family:
    .venv/bin/python bench/refine_quality.py --data ../shared/data/davis --scales 1,2,4
    # in shards over disjoint frames (one per core), then one table:
    .venv/bin/python bench/refine_quality.py --stems @even.txt --save even.json ...
    .venv/bin/python bench/refine_quality.py --merge even.json,odd.json
    # a subset (every 5th frame) and two families:
    .venv/bin/python bench/refine_quality.py --every 5 --families lowres,sam
    # the do-no-harm gate's settings are chosen on training-side images (DUTS-TR hold-out):
    .venv/bin/python bench/refine_quality.py --data ../data/duts \\
        --stems @configs/refine/duts_holdout.txt --methods snap,crm,finecut:keep_reach=0.01

Coarse masks are made at each image's native size by ``finecut.train.coarse.sample_coarse`` with
a fixed seed per (family, image), then upsampled with the photo (``upsample_case``: Lanczos photo,
ground truth blurred by 0.7 px, bicubic, thresholded), so every method sees the same inputs.
Methods: ``guided`` (a guided filter of the coarse mask, He et al.), ``snap`` (finecut's edge
snapping of the coarse mask alone, no CRM), ``crm`` (the CRM alone), ``finecut`` (the default
pipeline; ``finecut:key=value`` overrides an ``InferenceConfig`` field for that row).

IoU is dataset-level (sum of intersections over sum of unions); mBA is CascadePSP's, averaged over
images; "harmed" is the share of images whose IoU falls more than 1 point below the coarse input's.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

ROOT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "davis")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.normpath(ROOT_DATA))
    p.add_argument("--stems", default=None, help="'1-800', 'a,b' or '@file' (default: all)")
    p.add_argument("--every", type=int, default=1, help="take every Nth image of the stems")
    p.add_argument("--families", default="all")
    p.add_argument("--scales", default="1,2,4")
    p.add_argument("--methods", default="guided,snap,crm,finecut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None)
    p.add_argument(
        "--precision",
        default=None,
        choices=("auto", "fp32", "bf16"),
        help="the CRM encoder's arithmetic (default: the Refiner's)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="folder caching the CRM probabilities (a subfolder per weights file and seed is "
        "made): later runs with other finecut finishing rows skip the CRM",
    )
    p.add_argument(
        "--keep-model",
        default=None,
        help="the keep step's model of the finecut rows (a file of finecut train keep; default: "
        "the embedded default keep model)",
    )
    p.add_argument("--save", default=None, help="also write the per-image numbers as JSON")
    p.add_argument(
        "--merge",
        default=None,
        help="print the table of saved runs over disjoint images (a,b,...) and exit",
    )
    args = p.parse_args()
    if args.merge:
        import json
        from pathlib import Path

        from finecut.refine.evaluate import format_family_table, merge_family_results

        try:
            parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
            merged = merge_family_results(parts)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"cannot merge {args.merge}: {exc}") from None
        print(f"merged {args.merge}")
        print()
        print(format_family_table(merged))
        return
    if not os.path.isdir(args.data):
        raise SystemExit(f"no data at {args.data}")

    import torch

    from finecut.data.folders import find_pairs, parse_stems
    from finecut.refine.evaluate import evaluate_families, format_family_table
    from finecut.train.coarse import FAMILIES, seeded_coarse

    torch.set_num_threads(args.threads)
    families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
    stems = parse_stems(args.stems) if args.stems else [a.stem for a, _ in find_pairs(args.data)]
    stems = stems[:: args.every]

    def coarse_fn(gt, stem: str, family: str):
        return seeded_coarse(gt, stem, family, args.seed)

    t0 = time.perf_counter()
    results = evaluate_families(
        args.data,
        coarse_fn,
        families=families,
        scales=[float(s) for s in args.scales.split(",")],
        methods=args.methods.split(","),
        stems=stems,
        device=args.device,
        weights=args.weights,
        threads=args.threads,
        progress=True,
        cache=_cache_dir(args),
        precision=args.precision,
        keep_model=args.keep_model,
    )
    print(
        f"{args.data}: {len(stems)} images (every {args.every}), seed {args.seed}, weights "
        f"{args.weights or 'embedded'}, keep model {args.keep_model or 'embedded'}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}, "
        f"device {args.device}, precision {args.precision or 'default'}; "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    print()
    print(format_family_table(results))
    if args.save:
        import json

        from finecut.refine.evaluate import family_results_to_json

        with open(args.save, "w") as fh:
            json.dump(family_results_to_json(results), fh)


def _cache_dir(args):
    if not args.cache:
        return None
    import hashlib
    from pathlib import Path

    from finecut.weights import WEIGHTS_DIR, sha256_file

    weights = Path(args.weights) if args.weights else WEIGHTS_DIR / "crm_lite0.safetensors"
    data = hashlib.sha256(os.path.abspath(args.data).encode()).hexdigest()[:6]
    # the CRM's outputs depend on its arithmetic (what "auto" or the default resolve to on this
    # machine): bf16 runs get their own folder
    from finecut.devices import resolve_device, resolve_precision
    from finecut.refine.api import DEFAULT_PRECISION

    precision = resolve_precision(args.precision or DEFAULT_PRECISION, resolve_device(args.device))
    suffix = "" if precision == "fp32" else f"_{precision}"
    return Path(args.cache) / f"{sha256_file(weights)[:10]}_seed{args.seed}_{data}{suffix}"


if __name__ == "__main__":
    from finecut.errors import FinecutError

    try:
        main()
    except FinecutError as exc:  # unreadable weights or keep model
        raise SystemExit(f"error: {exc}") from None
