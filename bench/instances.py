"""Many instances: refining each in its box plus a margin against refining each full-frame.

    .venv/bin/python bench/instances.py                     # CamVid test, 480x360, 10 images
    .venv/bin/python bench/instances.py --scale 2           # the same frames at 960x720
    .venv/bin/python bench/instances.py --dataset ecssd     # 2x2 mosaics of ECSSD 801-840

Two sets of frames with several instances each:

* ``camvid``: street scenes; the instances are the connected components (at least
  ``--min-area`` pixels) of the CamVid test labels of cars, pedestrians, cyclists, signs and
  poles: many small objects per frame.
* ``ecssd``: 2x2 mosaics of ECSSD 801-1000 images (never trained on), each resized to 400x300,
  so 800x600 frames with four large salient objects, the kind of object the shipped refiner
  was trained on.

Each instance gets a coarse mask synthesised from its ground truth with a fixed seed
(``finecut.refine.perturb.perturb_mask``: boundary perturbation to a target IoU in U(0.8, 1.0)
plus degradations). Every method gets the same (N, H, W) stack and resolves overlaps the same
way (``Refiner.refine_instances``):

* ``full``: every instance refined on the full frame, one after the other (the reference);
* ``crop``: every instance in its box plus a margin (default: 25% of the box's longer side, at
  least 16 px), with the full frame's scales and snapping band (finecut's default);
* ``crop-own``: the same crops, each choosing its scales and snapping band from its own size.

Reported per method: total wall and process CPU seconds over all images (model loaded once,
one warm-up call not counted), the speed-up over ``full``, the IoU of each refined instance
against the ``full`` result (pooled over instances, sum(I) / sum(U); median and minimum over
instances; the share of instances above 0.95), and the pooled IoU against the ground truth of
the coarse input and of the result.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
#: CamVid classes whose connected components are instances: Pole, SignSymbol, Car, Pedestrian,
#: Bicyclist.
THING_CLASSES = (2, 6, 8, 9, 10)


def instances_of(labels: np.ndarray, min_area: int) -> np.ndarray:
    """(N, H, W) bool: connected components of the thing classes with at least min_area px."""
    import cv2

    found = []
    for cls in THING_CLASSES:
        n, comp = cv2.connectedComponents((labels == cls).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            mask = comp == k
            if mask.sum() >= min_area:
                found.append(mask)
    return np.stack(found) if found else np.zeros((0, *labels.shape), bool)


def camvid_frames(root: Path, min_area: int):
    """(name, image, (N, H, W) instances) of the CamVid test images, in list order."""
    from finecut.data.io import read_image, read_labels

    for stem in (root / "test.txt").read_text().split():
        labels = read_labels(root / "test" / "labels" / f"{stem}.png")
        image = read_image(root / "test" / "images" / f"{stem}.jpg")
        yield stem, image, instances_of(labels, min_area)


def ecssd_frames(root: Path):
    """(name, image, (4, 600, 800) instances): 2x2 mosaics of ECSSD 0801, 0802, ..."""
    import cv2

    from finecut.data.io import read_image, read_mask

    for first in range(801, 1001 - 3, 4):
        stems = [f"{first + k:04d}" for k in range(4)]
        tiles = [
            (
                cv2.resize(read_image(root / "images" / f"{s}.jpg"), (400, 300)),
                cv2.resize(read_mask(root / "masks" / f"{s}.png"), (400, 300)) > 127,
            )
            for s in stems
        ]
        image = np.zeros((600, 800, 3), np.uint8)
        masks = np.zeros((4, 600, 800), bool)
        for k, (tile, mask) in enumerate(tiles):
            y, x = 300 * (k // 2), 400 * (k % 2)
            image[y : y + 300, x : x + 400] = tile
            masks[k, y : y + 300, x : x + 400] = mask
        yield "+".join(stems), image, masks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("camvid", "ecssd"), default="camvid")
    p.add_argument("--images", type=int, default=10, help="first N test images with instances")
    p.add_argument("--min-instances", type=int, default=2)
    p.add_argument("--min-area", type=int, default=400)
    p.add_argument("--scale", type=float, default=1.0, help="resize the frames by this factor")
    p.add_argument("--methods", default="full,crop,crop-own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a machine whose cores are busy, 2 threads made every time "
        "several times longer and erratic)",
    )
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    root = SHARED / args.dataset
    if not root.is_dir():
        raise SystemExit(f"{args.dataset} not found at {root}")

    import cv2
    import torch

    from finecut.refine.api import Refiner
    from finecut.refine.instances import InstanceConfig
    from finecut.refine.perturb import perturb_mask

    torch.set_num_threads(args.threads)
    configs = {
        "full": InstanceConfig(crop=False),
        "crop": InstanceConfig(),
        "crop-own": InstanceConfig(frame_scales=False),
    }
    methods = args.methods.split(",")
    refiner = Refiner(args.device)

    if args.dataset == "camvid":
        frames = camvid_frames(root, round(args.min_area))
    else:
        frames = ecssd_frames(root)
    cases = []
    for name, image, gt in frames:
        if len(gt) < args.min_instances:
            continue
        if args.scale != 1.0:
            h, w = image.shape[:2]
            size = (round(w * args.scale), round(h * args.scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)
            gt = np.stack(
                [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) for m in gt]
            )
            gt = gt > 0
        rng = np.random.default_rng([args.seed, len(cases)])
        coarse = np.stack([perturb_mask(m, rng) for m in gt])
        cases.append((name, image, gt, coarse))
        if len(cases) == args.images:
            break

    refiner.refine_instances(cases[0][1], cases[0][3][:1])  # warm-up, not timed
    results: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for method in methods:
        results[method], seconds[method], cpu[method] = [], 0.0, 0.0
        for _, image, _, coarse in cases:
            t0, c0 = time.perf_counter(), time.process_time()
            results[method].append(refiner.refine_instances(image, coarse, config=configs[method]))
            seconds[method] += time.perf_counter() - t0
            cpu[method] += time.process_time() - c0

    n_inst = sum(len(c[2]) for c in cases)
    h, w = cases[0][1].shape[:2]
    print(
        f"{len(cases)} {args.dataset} frames at {w}x{h}, {n_inst} instances "
        f"({n_inst / len(cases):.1f} per image), {args.threads} threads, {platform.processor()}"
        f" / {os.cpu_count()} CPUs, torch {torch.__version__}\n"
    )
    print(
        "| method | s total | CPU s | s / instance | speed-up | IoU vs full: pooled | median "
        "| min | > 0.95 | IoU vs gt: coarse | result |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in methods:
        reference = results.get("full", results[method])
        agree, pooled = _ious(reference, results[method])
        _, coarse_iou = _ious([c[2] for c in cases], [c[3] for c in cases])
        _, result_iou = _ious([c[2] for c in cases], results[method])
        speed = seconds["full"] / seconds[method] if "full" in seconds else float("nan")
        print(
            f"| {method} | {seconds[method]:.1f} | {cpu[method]:.1f}"
            f" | {seconds[method] / n_inst:.3f} | {speed:.1f}x"
            f" | {100 * pooled:.2f} | {100 * np.median(agree):.2f} | {100 * agree.min():.2f}"
            f" | {np.mean(agree > 0.95) * 100:.0f}% | {100 * coarse_iou:.2f}"
            f" | {100 * result_iou:.2f} |"
        )


def _ious(refs: list[np.ndarray], gots: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Per-instance IoUs (1 when both empty) and the pooled IoU, sum(I) / sum(U)."""
    from finecut.metrics import iou_counts

    per, total_i, total_u = [], 0, 0
    for ref, got in zip(refs, gots, strict=True):
        for a, b in zip(ref, got, strict=True):
            i, u = iou_counts(a, b)
            per.append(1.0 if u == 0 else i / u)
            total_i, total_u = total_i + i, total_u + u
    return np.array(per), total_i / max(total_u, 1)


if __name__ == "__main__":
    main()
