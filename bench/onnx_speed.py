"""Refinement speed with torch vs ONNX Runtime, side by side in one run.

    .venv/bin/python bench/onnx_speed.py                       # aeroplane 3492x2328, 2 threads
    .venv/bin/python bench/onnx_speed.py --onnx crm_onnx/ --rounds 3 --repeats 2
    .venv/bin/python bench/onnx_speed.py --images motorbike,aeroplane --threads 1

Without ``--onnx DIR`` the shipped refiner is first exported to a temporary folder
(``finecut export onnx``, a minute or two). Then, for each of ``--rounds`` rounds, each backend
runs in its own subprocess (the order alternates between rounds, so a drift of the machine's
speed hits both alike): the process imports finecut and loads the refiner (``startup s``: import
+ load, torch is never imported on the onnxruntime side), then refines the image ``--repeats``
times without snapping (``crm s``: the part the backend runs) and ``--repeats`` times with
finecut's default edge snapping (``refine s``, the same numpy work on both sides). Times are the
best over all runs, the ratio is torch / onnxruntime of those bests, and ``per round`` gives the
ratio of each round's bests (how much the comparison itself moves). ``IoU %`` compares the
onnxruntime mask with the torch mask (snapped). Peak RSS is the child's ``ru_maxrss``.
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
BACKENDS = ("torch", "onnxruntime")


def _child(args) -> None:
    t0 = time.perf_counter()
    import numpy as np

    from finecut.data.io import read_image, read_mask
    from finecut.refine import Refiner

    if args.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
        refiner = Refiner("cpu")
    else:
        refiner = Refiner(onnx=args.onnx, threads=args.threads)
    startup = time.perf_counter() - t0
    image_file, mask_file = IMAGES[args.image]
    image = read_image(HIGHRES / image_file)
    mask = read_mask(HIGHRES / mask_file, shape=image.shape[:2]) > 127
    times: dict[str, list[float]] = {"crm": [], "refine": []}
    for mode in times:
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = refiner.refine(image, mask, snap=mode == "refine")
            times[mode].append(time.perf_counter() - t)
    np.save(args.save, out > 127)
    print(
        json.dumps(
            {
                "times": times,
                "startup_s": startup,
                "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "torch_imported": "torch" in sys.modules,
                "size": [image.shape[1], image.shape[0]],
            }
        )
    )


def _run_child(backend: str, image: str, args, save: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--backend", backend, "--image", image]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats), "--save", str(save)]
    cmd += ["--onnx", str(args.onnx)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(runs: list[dict], mode: str) -> float:
    """The fastest ``mode`` time over ``runs`` (children's results)."""
    return min(t for run in runs for t in run["times"][mode])


def _export(directory: Path) -> float:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "finecut", "export", "onnx", "-o", str(directory)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="aeroplane", help=f"comma list of {list(IMAGES)}")
    p.add_argument("--onnx", type=Path, default=None, help="folder of finecut export onnx")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--image", default="aeroplane", help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    if not HIGHRES.is_dir():
        sys.exit(f"high-resolution samples not found at {HIGHRES}")
    import numpy as np
    import onnxruntime
    import torch

    from finecut.metrics import iou

    with tempfile.TemporaryDirectory() as tmp:
        if args.onnx is None:
            args.onnx = Path(tmp) / "onnx"
            print(f"exported the shipped refiner in {_export(args.onnx):.0f} s")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, load average "
            f"{os.getloadavg()[0]:.1f}; threads {args.threads}; torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}; {args.rounds} rounds x {args.repeats} "
            "repeats per backend (best shown)"
        )
        print()
        print(
            "| image | size | backend | crm s | refine s | startup s | peak RSS GB | torch / ort "
            "(crm) | per round | torch / ort (refine) | IoU % |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
        for name in args.images.split(","):
            runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
            masks = {}
            for r in range(args.rounds):
                for backend in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
                    save = Path(tmp) / f"{name}_{backend}.npy"
                    runs[backend].append(_run_child(backend, name, args, save))
                    masks[backend] = np.load(save)
            per_round = ", ".join(
                f"{_best([t], 'crm') / _best([o], 'crm'):.2f}"
                for t, o in zip(runs["torch"], runs["onnxruntime"], strict=True)
            )
            agree = 100 * iou(masks["onnxruntime"], masks["torch"])
            for backend in BACKENDS:
                first = runs[backend][0]
                size = "x".join(map(str, first["size"]))
                startup = min(run["startup_s"] for run in runs[backend])
                rss = max(run["rss_gb"] for run in runs[backend])
                if backend == "torch":
                    ratios = "- | - | - | -"
                else:
                    assert not any(run["torch_imported"] for run in runs[backend])
                    crm = _best(runs["torch"], "crm") / _best(runs[backend], "crm")
                    full = _best(runs["torch"], "refine") / _best(runs[backend], "refine")
                    ratios = f"{crm:.2f}x | {per_round} | {full:.2f}x | {agree:.3f}"
                print(
                    f"| {name} | {size} | {backend} | {_best(runs[backend], 'crm'):.2f} | "
                    f"{_best(runs[backend], 'refine'):.2f} | {startup:.2f} | {rss:.2f} | {ratios} |"
                )


if __name__ == "__main__":
    main()
