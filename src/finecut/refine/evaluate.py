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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from finecut.data.folders import find_pairs
from finecut.data.io import read_image, read_mask
from finecut.data.masks import binary_mask
from finecut.errors import ConfigError, ImageError
from finecut.metrics import iou_counts, mba

log = logging.getLogger(__name__)

__all__ = [
    "FAMILY_METHODS",
    "METHODS",
    "FamilyResult",
    "MethodResult",
    "evaluate_families",
    "evaluate_refine",
    "format_family_table",
    "cached_float16",
    "format_table",
    "family_results_to_json",
    "merge_family_results",
    "snap_alone",
    "synth_coarse",
    "upsample_case",
]

#: finecut: band inference + edge snapping (the default); finecut-nosnap: band inference alone;
#: finecut-full: CRM's own inference (every pixel queried at every scale, no snapping).
METHODS = ("finecut", "finecut-nosnap", "finecut-full", "guided", "matting")


@dataclass
class MethodResult:
    method: str
    intersection: int = 0
    union: int = 0
    mba_values: list[float] = field(default_factory=list)
    iou_values: list[float] = field(default_factory=list)
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
        self.iou_values.append(float(i) / float(u) if u else 1.0)
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


# ------------------------------------------------------------------------------------------------
# Per coarse-mask family and scale, with the share of images made worse (issue 13)
# ------------------------------------------------------------------------------------------------

#: methods of :func:`evaluate_families`: ``snap`` is edge snapping of the coarse mask alone (no
#: CRM), ``crm`` the CRM output alone, ``finecut`` the default pipeline; ``finecut:key=value...``
#: overrides fields of :class:`~finecut.refine.inference.InferenceConfig` (e.g. the gate's
#: ``keep_reach`` or ``keep_confidence``) for that row.
FAMILY_METHODS = ("guided", "snap", "crm", "finecut")

#: an image is harmed when its IoU falls more than this below the coarse input's
HARM_MARGIN = 0.01


@dataclass
class FamilyResult(MethodResult):
    """A :class:`MethodResult` with the harm share against the coarse input's row."""

    def harm_share(self, coarse: FamilyResult) -> float:
        """Share of images whose IoU is more than ``HARM_MARGIN`` below the coarse input's."""
        a, b = np.asarray(self.iou_values), np.asarray(coarse.iou_values)
        return float(np.mean(a < b - HARM_MARGIN)) if len(a) else float("nan")


def _parse_method(spec: str):
    from dataclasses import fields as dc_fields

    from finecut.refine.inference import InferenceConfig

    name, *opts = spec.split(":")
    if name not in FAMILY_METHODS or (opts and name != "finecut"):
        raise ConfigError(f"unknown method {spec!r}; choose from {', '.join(FAMILY_METHODS)}")
    types = {f.name: f.type for f in dc_fields(InferenceConfig)}
    overrides = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key not in types:
            raise ConfigError(f"{spec!r}: {key!r} is not an InferenceConfig field")
        kind = str(types[key])
        if kind.startswith("tuple"):  # scales=0.25/0.5/1
            overrides[key] = tuple(float(v) for v in value.split("/"))
        else:
            overrides[key] = {"int": int, "bool": lambda v: v == "1"}.get(kind, float)(value)
    return name, overrides


def snap_alone(image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The snapping-alone baseline: finecut's default snapping applied to the coarse mask itself,
    no CRM (the gate then changes nothing) and no keep step, learned or by edges (it would judge
    the snapping's changes; the baseline is snapping as it is).

    Shape: (H, W, 3) uint8, (H, W) bool -> bool.
    """
    from finecut.refine.api import snap_alone_probability
    from finecut.refine.inference import InferenceConfig

    return snap_alone_probability(image, coarse, InferenceConfig()) > 0.5


def upsample_case(
    image: np.ndarray, gt: np.ndarray, coarse: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo, ground truth and coarse mask at ``factor`` times their size.

    The photo is upsampled with Lanczos; the ground truth is blurred by 0.7 px, upsampled
    bicubically and thresholded at 0.5 (a smooth edge, not a staircase); the coarse mask,
    made at the native size, is upsampled bilinearly and thresholded (its errors grow with the
    photo, as those of a mask made on a smaller copy do).
    """
    if factor == 1:
        return image, gt, coarse
    h, w = gt.shape
    size = (round(w * factor), round(h * factor))
    img = cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)
    g = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 0.7)
    g = cv2.resize(g, size, interpolation=cv2.INTER_CUBIC) >= 0.5
    c = cv2.resize(coarse.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
    return img, g, c


def evaluate_families(
    data: Path,
    coarse_fn: Callable[[np.ndarray, str, str], np.ndarray],
    *,
    families: Sequence[str],
    scales: Sequence[float] = (1.0,),
    methods: Sequence[str] = FAMILY_METHODS,
    stems: Sequence[str] | None = None,
    device=None,
    weights=None,
    threads: int | None = None,
    progress: bool = False,
    cache: Path | None = None,
    precision: str | None = None,
    keep_model=None,
) -> dict[tuple[float, str], list[FamilyResult]]:
    """IoU, mBA and harm share per (scale, family): the coarse input first, then each method.

    ``coarse_fn(gt, stem, family)`` makes the coarse mask of one image at its native size (a
    deterministic function: every method sees the same input); it is upsampled with the photo
    (:func:`upsample_case`). The CRM runs once per case; ``crm`` and every ``finecut`` row share
    that run (their seconds include it). With ``cache`` (a folder, one per weights file and
    coarse-mask seed: the caller's to choose), each CRM probability is stored there as float16
    and read back on a later run, so finishing variants can be added without the CRM's cost;
    the float16 values are used on the first run too, so a rerun gives the same table (the
    seconds of a cached row leave out the CRM). ``precision``: the Refiner's (None: its default).
    ``keep_model``: the keep step's model of the ``finecut`` rows (a model or its file; None: the
    embedded default, :data:`finecut.refine.keep.DEFAULT_KEEP_MODEL`).
    """
    from dataclasses import replace

    from finecut.refine.api import (
        Refiner,
        gate_and_snap,
        keep_step,
        wants_second_opinion,
        without_keep,
    )
    from finecut.refine.baselines import guided_filter_refine
    from finecut.refine.inference import InferenceConfig

    parsed = [(m, *_parse_method(m)) for m in methods]
    refiner = None
    if any(name in ("crm", "finecut") for _, name, _ in parsed):
        refiner = Refiner(
            device, weights=weights, threads=threads, precision=precision, keep_model=keep_model
        )
    pairs = find_pairs(Path(data), list(stems) if stems else None)
    out: dict[tuple[float, str], list[FamilyResult]] = {}
    for s in scales:
        for fam in families:
            out[(s, fam)] = [FamilyResult("coarse"), *(FamilyResult(m) for m, _, _ in parsed)]
    iterator = pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(pairs, unit="img")
    for img_path, gt_path in iterator:
        image0 = read_image(img_path)
        gt0 = read_mask(gt_path, shape=image0.shape[:2], image_path=img_path) > 127
        for fam in families:
            coarse0 = coarse_fn(gt0, img_path.stem, fam)
            for s in scales:
                image, gt, coarse = upsample_case(image0, gt0, coarse0, s)
                rows = out[(s, fam)]
                rows[0].add(coarse, gt)
                crms: dict[tuple, tuple[np.ndarray, float]] = {}
                snapped: dict = {}
                alone: dict = {}  # snapping alone of this case, per snapping setting
                for row, (_, name, overrides) in zip(rows[1:], parsed, strict=True):
                    t0, extra = time.perf_counter(), 0.0
                    if name == "guided":
                        pred = guided_filter_refine(image, coarse)
                    elif name == "snap":
                        prob, extra, t0 = _snap_alone_once(alone, image, coarse, InferenceConfig())
                        pred = prob > 0.5
                    else:
                        # rows that differ only in the gate or the snapping share one CRM run
                        cfg = replace(refiner.config, **overrides)
                        key = tuple(
                            sorted(
                                (k, v)
                                for k, v in overrides.items()
                                if not k.startswith(("keep_", "snap"))
                            )
                        )
                        if key not in crms:
                            path = None
                            if cache is not None:
                                tag = f"_{zlib.crc32(repr(key).encode()):08x}" if key else ""
                                path = Path(cache) / f"{img_path.stem}_{fam}_{s:g}{tag}.npy"
                            crm = cached_float16(path, refiner._crm_probability, image, coarse, cfg)
                            crms[key] = (crm, time.perf_counter() - t0)
                            t0 = time.perf_counter()
                        crm, extra = crms[key]
                        if name == "crm":
                            pred = crm > 0.5
                        else:
                            # rows that differ only in the keep step share the gate and snapping
                            plain = without_keep(cfg)
                            if plain not in snapped:
                                t1 = time.perf_counter()
                                prob = gate_and_snap(image, coarse, crm, plain)
                                snapped[plain] = (prob, time.perf_counter() - t1)
                                t0 = time.perf_counter()
                            prob, snap_s = snapped[plain]
                            extra += snap_s
                            own = None  # snapping alone, shared with the snap row
                            if wants_second_opinion(cfg):
                                own, own_s, t0 = _snap_alone_once(alone, image, coarse, cfg)
                                extra += own_s
                            pred = keep_step(
                                image, coarse, prob, crm, cfg, refiner.keep_model, own
                            )  # fmt: skip
                            pred = pred > 0.5
                    row.add(pred, gt, time.perf_counter() - t0 + extra)
    return out


def _snap_alone_once(
    alone: dict, image: np.ndarray, coarse: np.ndarray, cfg
) -> tuple[np.ndarray, float, float]:
    """Snapping alone of one case with ``cfg``'s snapping, computed once per setting and kept in
    ``alone``: the ``snap`` row and the rows with a second opinion share it. Returns the
    probability, the seconds it took (each row counts them) and a fresh start time for the
    row's own clock (so a row that computed it does not count it twice)."""
    from finecut.refine.api import snap_alone_probability

    key = (cfg.snap_fraction, cfg.snap_min_band, cfg.snap_max_band, cfg.snap_epsilon,
           cfg.snap_passes)  # fmt: skip
    if key not in alone:
        t = time.perf_counter()
        alone[key] = (snap_alone_probability(image, coarse, cfg), time.perf_counter() - t)
    return (*alone[key], time.perf_counter())


def cached_float16(path: Path | None, compute: Callable[..., np.ndarray], *args) -> np.ndarray:
    """``compute(*args)`` stored at ``path`` as float16, or read back from there when it exists.

    The float16 values are returned (as float32) on the first call too, so a run that fills the
    cache and one that reads it give the same results. ``path`` None: ``compute(*args)`` as it
    is.
    Used for the slow parts of the refiner's studies (CRM probabilities, snapping).
    """
    if path is None:
        return compute(*args)
    path = Path(path)
    if path.is_file():
        return np.load(path).astype(np.float32)
    value = np.asarray(compute(*args)).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value.astype(np.float32)


def family_results_to_json(results: dict[tuple[float, str], list[FamilyResult]]) -> list[dict]:
    """The per-image numbers of :func:`evaluate_families`' results, as JSON-ready rows."""
    return [
        {"scale": s, "family": fam, "rows": [asdict(r) for r in rows]}
        for (s, fam), rows in results.items()
    ]


def merge_family_results(
    parts: Sequence[list[dict]],
) -> dict[tuple[float, str], list[FamilyResult]]:
    """One result from :func:`family_results_to_json` parts of disjoint image sets (shards of one
    run): counts and seconds add up, per-image values concatenate, so the table is that of one
    run over all the images. Every part must have the same (scale, family) cells and methods."""
    out: dict[tuple[float, str], list[FamilyResult]] = {}
    for part in parts:
        for cell in part:
            key = (float(cell["scale"]), str(cell["family"]))
            rows = [FamilyResult(**r) for r in cell["rows"]]
            if key not in out:
                out[key] = rows
                continue
            have = out[key]
            if [r.method for r in have] != [r.method for r in rows]:
                raise ValueError(f"parts differ in their methods at {key}")
            for a, b in zip(have, rows, strict=True):
                a.intersection += b.intersection
                a.union += b.union
                a.mba_values += b.mba_values
                a.iou_values += b.iou_values
                a.seconds += b.seconds
    cells = {frozenset((float(c["scale"]), str(c["family"])) for c in part) for part in parts}
    if len(cells) > 1:
        raise ValueError("parts differ in their (scale, family) cells")
    return out


def format_family_table(results: dict[tuple[float, str], list[FamilyResult]]) -> str:
    """Markdown: one row per (scale, family, method) with IoU, mBA, harm share, seconds."""
    lines = [
        "| scale | family | method | IoU % | mBA % | harmed % | s / image |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for (s, fam), rows in results.items():
        coarse = rows[0]
        for r in rows:
            harm = "-" if r is coarse else f"{100 * r.harm_share(coarse):.1f}"
            secs = "-" if r is coarse else f"{r.seconds_per_image:.2f}"
            lines.append(
                f"| {s:g}x | {fam} | {r.method} | {100 * r.iou:.2f} | {100 * r.mba:.2f} | "
                f"{harm} | {secs} |"
            )
    n = len(next(iter(results.values()))[0].mba_values) if results else 0
    lines.append(f"\n{n} images per row")
    return "\n".join(lines)
