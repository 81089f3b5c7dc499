"""Refinement speed and memory at high resolution: CRM's full-query inference vs finecut's.

    .venv/bin/python bench/refine_speed.py                 # aeroplane 3492x2328, 2 threads
    .venv/bin/python bench/refine_speed.py --images all --repeats 2
    .venv/bin/python bench/refine_speed.py --images aeroplane@2.2 --modes band   # 7682x5122
    git worktree add /tmp/before <commit>      # an earlier finecut, timed in the same run:
    .venv/bin/python bench/refine_speed.py --compare /tmp/before/src --repeats 2

Each (image, mode) runs in its own subprocess so peak RSS (``ru_maxrss``) belongs to that mode
alone. All modes use the same model, scales and tiles; ``full`` queries every full-resolution
pixel at every scale (CRM's own inference), ``band`` is finecut's inference (band queries + tiles
that contain band pixels only), ``snap`` is ``band`` followed by edge snapping (finecut's default,
``finecut.refine.snap``). A mode may name the CRM encoder's arithmetic, ``band:bf16`` or
``snap:fp32`` (no suffix: the Refiner's default; ``full``, the reference, always runs in float32):

    .venv/bin/python bench/refine_speed.py --modes full,snap:fp32,snap:bf16 --repeats 3

The table gives wall time of the refine call (model already
loaded), peak RSS of the process, and how far finecut's mask is from the full-query mask: IoU and
mBA measured with the full-query mask as the reference. Printed as a markdown table.

``--compare SRC`` also runs the ``--compare-modes`` with the finecut package under ``SRC`` (the
``src`` folder of another checkout, e.g. a git worktree of an earlier commit), each right after
the same mode of this checkout, so a change is timed against its baseline on the same machine in
the same minutes (this machine's speed varies by 1.5x from day to day).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIGHRES = ROOT.parent / "shared" / "data" / "highres"
IMAGES = {
    "aeroplane": ("aeroplane.jpg", "aeroplane_coarse.png"),
    "h36m": ("h36m.jpg", "h36m_coarse.jpg"),
    "motorbike": ("motorbike.jpg", "motorbike_coarse.png"),
}


def _child(args) -> None:
    import numpy as np
    import torch

    from finecut.data.io import read_image, read_mask
    from finecut.refine.api import Refiner

    torch.set_num_threads(args.threads)
    name, _, factor = args.image.partition("@")
    image_file, mask_file = IMAGES[name]
    image = read_image(HIGHRES / image_file)
    mask = read_mask(HIGHRES / mask_file, shape=image.shape[:2]) > 127
    if factor:  # e.g. aeroplane@2.2: an 8K-class input made by Lanczos upsampling
        import cv2

        f = float(factor)
        size = (round(image.shape[1] * f), round(image.shape[0] * f))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)
        mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
    mode, _, precision = args.mode.partition(":")
    if mode == "full":
        precision = "fp32"  # the reference: CRM's own inference, as it was always measured
    # only when named: a --compare checkout from before precision existed takes no such argument
    given = {"precision": precision} if precision else {}
    t0 = time.perf_counter()
    refiner = Refiner(args.device, weights=args.weights, **given)
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        if refiner.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prob = refiner.refine(
            image, mask, soft=True, full_query=mode == "full", snap=mode == "snap"
        )
        if refiner.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    np.save(args.save, prob > 0.5)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "times": times,
                "load_s": load_s,
                "rss_gb": rss_gb,
                "size": [image.shape[1], image.shape[0]],
                "precision": refiner.precision,
            }
        )
    )


def _run_child(image: str, mode: str, args, save: Path, src: str | None = None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--image",
        image,
        "--mode",
        mode,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--save",
        str(save),
    ]
    if args.device:
        cmd += ["--device", args.device]
    if args.weights:
        cmd += ["--weights", args.weights]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if src:
        env["PYTHONPATH"] = os.path.abspath(src)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--images", default="aeroplane",
        help=f"comma list of {list(IMAGES)} (name@F upsamples by F), or all",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None)
    p.add_argument("--modes", default="full,band,snap")
    p.add_argument("--compare", default=None, help="src folder of another finecut checkout")
    p.add_argument("--compare-modes", default="band,snap")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--image", default="aeroplane", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="band", help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    if not HIGHRES.is_dir():
        sys.exit(f"high-resolution samples not found at {HIGHRES}")
    import numpy as np

    from finecut.metrics import iou, mba

    names = list(IMAGES) if args.images == "all" else args.images.split(",")
    modes = args.modes.split(",")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads "
        f"{args.threads}, device {args.device}, repeats {args.repeats} (best time shown)"
    )
    print()
    print(
        "| image | size | mode | refine s | load s | peak RSS GB | speed-up | IoU vs full % "
        "| mBA vs full % |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    label = Path(args.compare).resolve().parent.name if args.compare else ""
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            res, masks = {}, {}
            for mode in modes:
                runs = [(mode, None)]
                if args.compare and mode in args.compare_modes.split(","):
                    runs.append((f"{mode} ({label})", args.compare))  # its own default
                for key, src in runs:
                    save = Path(tmp) / f"{name}_{len(res)}.npy"
                    res[key] = _run_child(name, mode, args, save, src)
                    masks[key] = np.load(save)
            base = res.get("full")
            for key, r in res.items():
                t = min(r["times"])
                shown = key  # with what a default arithmetic resolved to
                if ":" not in key and "precision" in r:
                    shown = f"{key}, {r['precision']}"
                size = "x".join(map(str, r["size"]))
                if base is not None:
                    speed = f"{min(base['times']) / t:.2f}x"
                    ref = masks["full"]
                    q = f"{100 * iou(masks[key], ref):.3f} | {100 * mba(masks[key], ref):.2f}"
                else:
                    speed, q = "-", "- | -"
                print(
                    f"| {name} | {size} | {shown} | {t:.2f} | {r['load_s']:.2f} | "
                    f"{r['rss_gb']:.2f} | {speed} | {q} |"
                )


if __name__ == "__main__":
    main()
