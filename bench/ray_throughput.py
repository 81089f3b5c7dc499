"""Throughput of ``finecut refine-dataset`` on Ray Data with 1 and 2 workers on the same files.

    .venv/bin/python bench/ray_throughput.py                      # 16 ECSSD images (801-816)
    .venv/bin/python bench/ray_throughput.py --count 32 --workers 1,2,4 --batch-size 2
    .venv/bin/python bench/ray_throughput.py --images DIR --masks DIR

The default set is ECSSD 801-816 at native size (about 400x300) with low-resolution coarse masks
(the truth at 1/8 size, upsampled); ``--images``/``--masks`` take any folders paired by stem.
Each worker count runs as ``finecut refine-dataset`` runs: a fresh local Ray with
``workers x threads`` CPUs started for the job, one refiner per worker (``--threads`` torch
threads each), a fresh output folder. A first row refines the same items in this process with
one ``Refiner`` and no Ray (the model loaded before the clock starts), for Ray's overhead.

Columns: the whole job's wall time (Ray start, worker start and model load included) and its
items/s; the steady rate, items/s between the first and the last item to finish (start-up
excluded; from the workers' ``finished`` timestamps); the mean seconds one item takes on a
worker; the ratio of each job's items/s to the one-worker job's. Printed as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ECSSD = ROOT.parent / "shared" / "data" / "ecssd"


def _make_set(args, folder: Path) -> tuple[str, str]:
    """The images and masks folders to refine (ECSSD with coarse masks unless given)."""
    if args.images:
        return str(args.images), str(args.masks or args.images)
    import cv2
    from PIL import Image

    if not ECSSD.is_dir():
        sys.exit(f"bench: {ECSSD} not found; pass --images DIR --masks DIR")
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    for k in range(args.count):
        stem = f"{801 + k:04d}"
        (folder / "images" / f"{stem}.jpg").write_bytes(
            (ECSSD / "images" / f"{stem}.jpg").read_bytes()
        )
        truth = np.asarray(Image.open(ECSSD / "masks" / f"{stem}.png").convert("L"))
        h, w = truth.shape
        small = cv2.resize(truth, (w // 8, h // 8), interpolation=cv2.INTER_AREA)
        coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 127
        Image.fromarray(coarse.astype(np.uint8) * 255).save(folder / "masks" / f"{stem}.png")
    return str(folder / "images"), str(folder / "masks")


def _summary(rows: dict, wall: float) -> dict:
    """Wall time, steady items/s (between the first and the last item to finish, so start-up
    is left out), mean seconds per item on a worker, failures."""
    finished = np.sort(rows["finished"])
    span = finished[-1] - finished[0]
    steady = (len(finished) - 1) / span if span > 0 else float("nan")
    return {
        "wall": wall,
        "steady": steady,
        "item_s": float(rows["seconds"].mean()),
        "failed": int((~rows["ok"]).sum()),
    }


def _no_ray(items, options) -> dict:
    """One Refiner in this process, the same per-item work, no Ray."""
    from finecut.cluster.work import RefineBatch

    batch = RefineBatch(**options.to_dict())
    columns = {
        c: np.array([getattr(i, c) for i in items], dtype=object)
        for c in ("image", "mask", "output")
    }
    start = time.perf_counter()
    rows = batch(columns)
    return _summary(rows, time.perf_counter() - start)


def _on_ray(items, options, workers: int, args) -> dict:
    from finecut.cluster.ray_job import RayConfig, run_on_ray

    config = RayConfig(workers=workers, batch_size=args.batch_size, threads=args.threads)
    start = time.perf_counter()
    rows = run_on_ray(items, options, config)
    return _summary(rows, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--masks", type=Path, default=None)
    parser.add_argument("--count", type=int, default=16, help="ECSSD images (default 16)")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-Ray row")
    args = parser.parse_args()
    logging_quiet()

    from finecut.cluster.items import list_folder
    from finecut.cluster.work import RefineOptions

    options = RefineOptions(device="cpu", threads=args.threads)
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        images, masks = _make_set(args, Path(tmp))
        runs = [("no Ray, 1 Refiner in-process", 0)] if not args.no_baseline else []
        runs += [
            (f"Ray Data, {w} worker{'s' if w > 1 else ''}", w)
            for w in map(int, args.workers.split(","))
        ]
        for label, workers in runs:
            out = Path(tmp) / f"out-{workers}"
            items = list_folder(images, str(out), masks_url=masks).items
            r = _no_ray(items, options) if workers == 0 else _on_ray(items, options, workers, args)
            results.append((label, workers, len(items), r))
            print(f"{label}: {r}", file=sys.stderr, flush=True)
    print(
        f"\n{platform.node()} | {os.cpu_count()} CPUs | python {platform.python_version()} | "
        f"batch size {args.batch_size}, {args.threads} torch thread(s) per worker | load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    print(
        "| run | items | wall, s | items/s | steady items/s | s/item on a worker "
        "| items/s vs 1 worker | steady vs 1 worker |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    one = next((r for _, w, _, r in results if w == 1), None)
    for label, workers, n, r in results:
        ratio = f"{one['wall'] / r['wall']:.2f}x" if one and workers else ""
        steady = f"{r['steady'] / one['steady']:.2f}x" if one and workers else ""
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        print(
            f"| {label} | {n}{failed} | {r['wall']:.1f} | {n / r['wall']:.2f} | "
            f"{r['steady']:.2f} | {r['item_s']:.2f} | {ratio} | {steady} |"
        )


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


if __name__ == "__main__":
    main()
