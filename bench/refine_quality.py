"""Refinement quality against baselines in one run: ECSSD 801-1000 (never trained on).

    .venv/bin/python bench/refine_quality.py                              # native resolution
    .venv/bin/python bench/refine_quality.py --upscale 4 --stems 801-850  # 4x Lanczos upsampled

Coarse masks are synthesised from the ground truth with a fixed seed per image
(``finecut.refine.evaluate.synth_coarse``: CRM/CascadePSP boundary perturbation to a target IoU in
U(0.8, 1.0) plus segmenter-like degradations), so every method sees the same inputs. Methods:

* ``guided``: a guided filter of the coarse mask by the image, thresholded (He et al.).
* ``matting``: closed-form matting (pymatting) on a trimap made by eroding/dilating the coarse mask.
* ``finecut-full``: the embedded CRM model queried at every pixel (CRM's own inference).
* ``finecut-nosnap``: the same model with finecut's band inference, no edge snapping.
* ``finecut``: band inference + edge snapping (``finecut.refine.snap``), the default.

IoU is dataset-level (sum of intersections over sum of unions); mBA is CascadePSP's, averaged over
images. Dense CRF was the other candidate baseline: no maintained wheel installs for Python 3.11
(pydensecrf, pydensecrf2 and SimpleCRF are source-only and do not build here).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

ROOT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ecssd")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.normpath(ROOT_DATA))
    p.add_argument("--stems", default="801-1000")
    p.add_argument("--methods", default="guided,matting,finecut-full,finecut-nosnap,finecut")
    p.add_argument("--upscale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None)
    args = p.parse_args()
    if not os.path.isdir(args.data):
        raise SystemExit(f"ECSSD not found at {args.data}")

    import torch

    from finecut.cli import _stems_arg
    from finecut.refine.evaluate import evaluate_refine, format_table

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = evaluate_refine(
        args.data,
        methods=args.methods.split(","),
        stems=_stems_arg(args.stems),
        seed=args.seed,
        upscale=args.upscale,
        device=args.device,
        weights=args.weights,
        threads=args.threads,
        progress=True,
    )
    print(
        f"ECSSD {args.stems}, upscale {args.upscale:g}x (Lanczos), seed {args.seed}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}, "
        f"device {args.device}; total {time.perf_counter() - t0:.0f} s"
    )
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
