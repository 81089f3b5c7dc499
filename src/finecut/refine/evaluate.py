"""Evaluate mask refinement against ground truth: IoU and mBA of the coarse input and each method.

Used by ``finecut eval refine`` and ``bench/refine_quality.py``. Coarse masks are read from a folder
or synthesised from the ground truth with ``finecut.refine.perturb`` and a fixed seed per image, so
every method sees the same inputs and reruns give the same table.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from finecut.data.folders import find_pairs
from finecut.data.io import read_image, read_mask
from finecut.data.masks import binary_mask
from finecut.errors import ConfigError, ImageError
from finecut.metrics import iou_counts, mba

log = logging.getLogger(__name__)

__all__ = ["METHODS", "MethodResult", "evaluate_refine", "format_table", "synth_coarse"]

#: finecut: band inference + edge snapping (the default); finecut-nosnap: band inference alone;
#: finecut-full: CRM's own inference (every pixel queried at every scale, no snapping).
METHODS = ("finecut", "finecut-nosnap", "finecut-full", "guided", "matting")


@dataclass
class MethodResult:
    method: str
    intersection: int = 0
    union: int = 0
    mba_values: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 1.0

    @property
    def mba(self) -> float:
        return float(np.mean(self.mba_values)) if self.mba_values else float("nan")

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, len(self.mba_values))

    def add(self, pred: np.ndarray, gt: np.ndarray, seconds: float = 0.0) -> None:
        i, u = iou_counts(pred, gt)
        self.intersection += int(i)
        self.union += int(u)
        self.mba_values.append(float(mba(pred, gt)))
        self.seconds += seconds


def synth_coarse(gt: np.ndarray, stem: str, seed: int) -> np.ndarray:
    """The fixed coarse mask of one ground truth: perturbed with a seed derived from its stem."""
    from finecut.refine.perturb import perturb_mask

    key = int(stem) if stem.isdigit() else zlib.crc32(stem.encode())
    return perturb_mask(gt, np.random.default_rng([seed, key]))


def _method_fn(
    name: str, device, weights, threads
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if name in ("finecut", "finecut-nosnap", "finecut-full"):
        from finecut.refine.api import Refiner

        refiner = Refiner(device, weights=weights, threads=threads)
        full, snap = name == "finecut-full", name == "finecut"
        return lambda img, coarse: refiner.refine(img, coarse, full_query=full, snap=snap) > 127
    if name == "guided":
        from finecut.refine.baselines import guided_filter_refine

        return lambda img, coarse: guided_filter_refine(img, coarse)
    if name == "matting":
        # pymatting runs numba-parallel code; numba's worker pool defaults to every CPU and its
        # idle threads then slow torch down (measured: finecut 0.9 -> 7 s per ECSSD image when
        # interleaved with matting). Size the pool like torch's, before numba is first imported.
        if "numba" not in sys.modules:
            import torch

            os.environ.setdefault("NUMBA_NUM_THREADS", str(threads or torch.get_num_threads()))
        from finecut.refine.baselines import matting_refine

        return lambda img, coarse: matting_refine(img, coarse)
    raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def _resize(x: np.ndarray, factor: float, interp: int) -> np.ndarray:
    h, w = x.shape[:2]
    return cv2.resize(x, (round(w * factor), round(h * factor)), interpolation=interp)


def evaluate_refine(
    data: Path,
    *,
    methods: Sequence[str] = ("finecut",),
    coarse_dir: Path | None = None,
    stems: Sequence[str] | None = None,
    seed: int = 0,
    upscale: float = 1.0,
    device=None,
    weights=None,
    threads: int | None = None,
    progress: bool = False,
) -> list[MethodResult]:
    """IoU (dataset-level: sum of intersections over sum of unions) and mean mBA per method.

    Returns one :class:`MethodResult` for the coarse input first, then one per method.
    """
    pairs = find_pairs(Path(data), list(stems) if stems else None)
    fns = {m: _method_fn(m, device, weights, threads) for m in methods}
    results = {"coarse": MethodResult("coarse"), **{m: MethodResult(m) for m in methods}}
    iterator = pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(pairs, unit="img")
    for img_path, gt_path in iterator:
        image = read_image(img_path)
        gt = binary_mask(
            read_mask(gt_path, shape=image.shape[:2], image_path=img_path), name=str(gt_path)
        )
        if coarse_dir is not None:
            cpath = next(iter(sorted(Path(coarse_dir).glob(f"{img_path.stem}.*"))), None)
            if cpath is None:
                raise ImageError(f"no coarse mask for {img_path.name} in {str(coarse_dir)!r}")
            coarse = binary_mask(
                read_mask(cpath, shape=image.shape[:2], image_path=img_path), name=str(cpath)
            )
        else:
            coarse = synth_coarse(gt, img_path.stem, seed)
        if upscale != 1.0:
            image = _resize(image, upscale, cv2.INTER_LANCZOS4)
            gt = _resize(gt.astype(np.float32), upscale, cv2.INTER_LANCZOS4) >= 0.5
            coarse = _resize(coarse.astype(np.float32), upscale, cv2.INTER_LINEAR) >= 0.5
        results["coarse"].add(coarse, gt)
        for name, fn in fns.items():
            t0 = time.perf_counter()
            pred = fn(image, coarse)
            results[name].add(pred, gt, time.perf_counter() - t0)
    return list(results.values())


def format_table(rows: Sequence[MethodResult]) -> str:
    """A markdown table: method, IoU %, mBA %, seconds per image."""
    lines = ["| method | IoU % | mBA % | s / image |", "|---|---:|---:|---:|"]
    for r in rows:
        secs = f"{r.seconds_per_image:.3f}" if r.method != "coarse" else "-"
        lines.append(f"| {r.method} | {100 * r.iou:.2f} | {100 * r.mba:.2f} | {secs} |")
    n = len(rows[0].mba_values) if rows else 0
    lines.append(f"\n{n} images")
    return "\n".join(lines)
