"""Semantic soft segmentation speed and memory: finecut's fast mode vs the paper's pipeline.

    .venv/bin/python bench/soft_speed.py                   # fast and faithful, 640x480
    .venv/bin/python bench/soft_speed.py --modes fast      # fast only (seconds, not minutes)
    .venv/bin/python bench/soft_speed.py --size 320x240 --threads 1

Input: the authors' demo image ``../shared/data/sss/docia_with_features.png`` (640x640 image and
its preprocessed 3-channel features side by side), both resized to ``--size`` (INTER_AREA), the
features passed with ``preprocessed=True``. Each mode runs in its own subprocess with
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` = ``--threads`` and OpenCV
limited to the same count, so peak RSS (``ru_maxrss``) belongs to that mode alone; the peak is
read after every step (the column shows which step raised it). Printed as a markdown table with
the faithful / fast ratio, each mode's matting-Laplacian energy and opacity, and, when both modes
ran, how far apart their layers are (Hungarian matching on soft IoU, mean absolute alpha
difference); see ``finecut.soft.compare``. The pipeline itself holds BLAS to one thread
(``SoftConfig.blas_threads``), so ``--threads`` reaches OpenCV and anything else that reads the
variables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCIA = ROOT.parent / "shared" / "data" / "sss" / "docia_with_features.png"


def _load(size: tuple[int, int]):
    import cv2
    import numpy as np

    from finecut.data.io import read_image

    both = read_image(DOCIA)
    half = both.shape[1] // 2
    image, features = both[:, :half], both[:, half:]
    resize = (size[0], size[1])
    image = cv2.resize(image, resize, interpolation=cv2.INTER_AREA)
    features = cv2.resize(features, resize, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image), np.ascontiguousarray(features)


def _child(args: argparse.Namespace) -> None:
    import resource
    import time

    import cv2
    import numpy as np

    from finecut.soft import soft_segment

    cv2.setNumThreads(args.threads)
    image, features = _load(args.size)
    peaks: dict[str, float] = {}

    def progress(step: str, done: int, total: int) -> None:
        peaks[step] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    start = time.perf_counter()
    result = soft_segment(image, features, mode=args.child, preprocessed=True, progress=progress)
    wall = time.perf_counter() - start
    np.save(args.out, result.alphas)
    from finecut.soft.compare import matting_energy, opacity

    print(
        json.dumps(
            {
                "timings": result.timings,
                "peak_mb": peaks,
                "wall": wall,
                "layers": result.n_layers,
                "segments": result.n_segments,
                "energy": matting_energy(result.alphas, image / 255.0),
                "opacity": opacity(result.alphas),
            }
        )
    )


def _run(mode: str, args: argparse.Namespace, out: Path) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(args.threads)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--size",
        f"{args.size[0]}x{args.size[1]}",
        "--threads",
        str(args.threads),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{mode} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="fast,faithful", help="comma list of fast, faithful")
    parser.add_argument("--size", type=_size, default=(640, 480), help="WxH (640x480)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenCV threads (2)")
    parser.add_argument("--save", type=Path, help="also write each mode's alphas to DIR/MODE.npy")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if not DOCIA.is_file():
        raise SystemExit(f"{DOCIA} not found (the project's shared data)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("fast", "faithful"):
            raise SystemExit(f"unknown mode {mode!r} (fast, faithful)")

    results, alphas = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        import numpy as np

        for mode in modes:
            path = Path(tmp) / f"{mode}.npy"
            results[mode] = _run(mode, args, path)
            alphas[mode] = np.load(path)
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                np.save(args.save / f"{mode}.npy", alphas[mode])
            print(f"{mode}: {results[mode]['wall']:.1f} s", file=sys.stderr)

    w, h = args.size
    print(
        f"Semantic soft segmentation, docia {w}x{h}, preprocessed features, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}\n"
    )
    steps: list[str] = []
    for mode in modes:
        steps += [s for s in results[mode]["timings"] if s not in steps]
    header = "| step |"
    rule = "|---|"
    for mode in modes:
        header += f" {mode} s | {mode} peak RSS MB |"
        rule += "---:|---:|"
    both = len(modes) == 2
    if both:
        header += " faithful / fast |"
        rule += "---:|"
    print(header)
    print(rule)
    for step in [*steps, "total"]:
        row = f"| {step} |"
        secs = {}
        for mode in modes:
            timings = results[mode]["timings"]
            if step == "total":
                secs[mode] = sum(timings.values())
                peak = max(results[mode]["peak_mb"].values())
            else:
                secs[mode] = timings.get(step)
                peak = results[mode]["peak_mb"].get(step)
            row += " - |" if secs[mode] is None else f" {secs[mode]:.2f} |"
            row += " - |" if peak is None else f" {peak:.0f} |"
        if both:
            fast, faithful = secs.get("fast"), secs.get("faithful")
            ratio = f"{faithful / fast:.1f}x" if fast and faithful else "-"
            row += f" {ratio} |"
        print(row)
    for mode in modes:
        r = results[mode]
        print(
            f"\n{mode}: {r['layers']} layers from {r['segments']} segments, matting energy "
            f"{r['energy']:.3g}, opacity {r['opacity']:.3f} (finecut.soft.compare)",
            end="",
        )
    print()
    if both:
        from finecut.soft.compare import match_layers

        mae, pairs = match_layers(alphas["faithful"], alphas["fast"])
        print(f"\nfast vs faithful: mean |alpha difference| {mae:.4f} (layers matched {pairs})")


if __name__ == "__main__":
    main()
