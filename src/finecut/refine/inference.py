"""Coarse-to-fine CRM inference at any resolution, querying the implicit head only where it matters.

CRM (METHODS.md section 4) refines at scales 0.125, 0.25, 0.5, 1.0 of the full resolution: at each
scale it encodes the resized image and the current mask once and queries every full-resolution
pixel. finecut keeps the schedule and the model but does far less work:

* **Band queries.** At each scale only full-resolution pixels in a band around the current boundary
  are queried; the band is ``band_cells`` latent cells wide (so it is wide at coarse scales, where a
  step can move the boundary far, and narrow at full resolution) and is widened where the previous
  scale was uncertain. Every other pixel keeps the value of the previous scale. ``full_query=True``
  queries every pixel, as CRM does (the reference the benchmark compares against).
* **Sentinels.** A change far from the boundary (a hole between thin parts, a missed part) would
  be lost to that copy, so every tile that is encoded anyway is also queried at one pixel per
  ``sentinel_cells`` latent cells; where a sentinel lands on the other side of 0.5, its
  neighbourhood is queried too. On the aeroplane this took the band mask from 98.73% to 99.98%
  mBA of the full-query mask for about 2% more time.
* **Tiles.** A scale whose resized image is larger than ``tile_area`` is encoded in tiles with a
  ``margin`` of context, and only tiles that contain band pixels are encoded at all.
* **Per-cell first layer.** The feature term of the first MLP layer is computed once per latent cell
  (see ``finecut.models.crm``).
* **Chunks.** Queries go through the head in chunks of ``chunk`` points, so memory stays bounded
  for 8K images.

The network itself runs behind a :class:`~finecut.refine.runner.Runner` (torch, or ONNX Runtime on
the networks of ``finecut export onnx``): this module works on numpy arrays and imports no torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from finecut.refine.runner import Runner

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from finecut.models.crm import CRM

log = logging.getLogger(__name__)

__all__ = ["InferenceConfig", "gate_changes", "refine_probability"]


@dataclass(frozen=True)
class InferenceConfig:
    """How to run the coarse-to-fine refinement.

    Attributes:
        scales: fractions of the full resolution, coarse to fine (CRM: 0.125, 0.25, 0.5, 1.0).
        min_side: a scale whose resized short side is below this is skipped (never the last).
        full_query: query every pixel at every scale (CRM's own inference; slow).
        band_cells: half-width of the query band, in latent cells of the current scale (6: on
            the 3492x2328 aeroplane, with sentinels and the shipped weights, the band mask is
            99.998% IoU / 99.98% mBA of the full-query mask, against 99.93 / 99.41 at 4 cells;
            without sentinels 99.79 / 98.73 at 6 cells).
        min_band: lower bound of the band half-width in full-resolution pixels.
        uncertainty: pixels with |p - 0.5| below this are always queried.
        sentinel_cells: outside the band, every encoded tile is also queried at one pixel per
            this many latent cells; where such a sentinel flips, its neighbourhood is queried
            too (catches holes and parts away from the boundary that the full query finds).
            0 turns sentinels off.
        tile_area: largest resized image encoded in one piece (pixels).
        tile: interior side of a tile, in pixels of the resized image.
        margin: context around each tile, in pixels of the resized image.
        chunk: queries per call of the implicit head (16384: its (chunk, 32) activations stay
            in the CPU's cache; 0.61 us per query against 0.84 at 32768 and 0.72 at 4096).
        min_object: objects whose bounding box is smaller than this (both sides) are copied through.
        snap: finish with edge snapping (closed-form matting in a thin band around the refined
            boundary, :mod:`finecut.refine.snap`); False gives the CRM output alone.
        snap_fraction: snapping band half-width as a fraction of H + W (0.006: 4 px at 400x300).
        snap_min_band: lower bound of the snapping band, pixels.
        snap_max_band: upper bound of the snapping band, pixels (8: bounds the cost at 4K-8K; on
            ECSSD at 4x, 1600x1200, a 16 px band gave 0.6 mBA more at twice the cost).
        snap_epsilon: matting regulariser of the snapping (see ``finecut.refine.snap``).
        snap_passes: snapping passes in bands halving to 1 px (``finecut.refine.snap.SNAP_PASSES``).
        keep_reach: do-no-harm gate (:func:`gate_changes`): the CRM may change the input only
            within this distance of the input's boundary, as a fraction of H + W (0: no bound).
        keep_confidence: do-no-harm gate: a pixel the CRM moves to the other side of 0.5 keeps
            its input value unless ``|p - 0.5|`` is at least this (0: every change is kept).
            Both chosen on training-side images (DUTS-TR hold-out, 5 images at 1x and 4x,
            low-resolution, SAM-like and already-right masks; docs/training_refine.md): with the
            stage-1 weights, reach 0.01 and confidence 0.3 gave the best IoU in 5 of 6 rows
            (e.g. 4x low-resolution 96.23 / 67.89 IoU / mBA against 95.10 / 68.15 ungated, and
            no image harmed instead of 40%); 0.005 was not tried.
        keep_edges: do-no-harm by edge support (:func:`finecut.refine.support.revert_unsupported`),
            after the snapping: each connected region the output changed keeps the input's value
            unless the output's boundary next to it lies on stronger image edges than the
            input's there, by the factor ``1 + keep_edge_margin``. Chosen on training-side images
            (20 DUTS-TR hold-out images, clean and video-like photos, 1x and 2x, five coarse
            families; ``bench/refine_finish_study.py``, docs/benchmarks.md): margin 1.0 gave the
            largest mean gain over the coarse input (IoU +0.99, mBA +1.43 against +0.40 / -4.87
            without the check) and cut the share of harmed images from 44% to 15.5%; margin 2.0
            harms 5% but gives up more of the gain on low-resolution masks.
        keep_edge_margin: see ``keep_edges``.
        keep_learned: do-no-harm by the learned keep model (:mod:`finecut.refine.keep`) instead
            of the edge check: each changed region is kept when the model's probability that
            the change is right is at least ``keep_threshold``.
        keep_threshold: see ``keep_learned``; negative (the default) takes the model's own
            threshold: 0.75 for the embedded keep model (``refine_keep_trees`` since the
            fourteenth session, checked for it on unused hold-out images, docs/training_refine.md,
            "A judge of another form"). For the logistic ``refine_keep`` before it (0.75 since
            the eleventh session, 0.7 from the ninth) 0.75 was chosen on two training-side sets
            by a rule written down beforehand
            (docs/benchmarks.md, "The keep threshold on both training-side sets"): the DUTS-TR
            hold-out and 139 objects of CamVid's val split (video frames); among the settings
            harming at most 5% of images in every row of both, the largest mean mBA gain:
            +1.52 IoU / +2.78 mBA on DUTS-TR (worst row 3%), +1.10 / +0.85 on CamVid (worst row
            4%). 0.7 harmed up to 7% of the CamVid objects in a row, 9% with the second opinion.
        keep_snap_threshold: a second opinion after the keep step (with ``keep_learned`` and
            ``snap`` only): where the kept mask still equals the input, the changes of snapping
            alone (the snapping applied to the input mask itself, no CRM) are judged by a keep
            model fitted on such changes (the embedded ``refine_keep_snap``) and taken where its
            probability is at least this. Negative (the default): off. 0.7 was chosen on
            training-side images (60 DUTS-TR hold-out images, six families, clean and video-like,
            1x and 2x; docs/benchmarks.md): mean gain over the input +1.60 IoU / +3.08 mBA
            against +1.55 / +2.86 without it, worst row 5% harmed for both (with the encoder in
            bfloat16: +1.61 / +3.11 against +1.57 / +2.89), and it was the default for part of
            the eleventh session; on CamVid val objects (video frames) it harms more (up to 9%
            of objects in a row with the keep threshold at 0.7), so the joint choice above
            leaves it off. It costs about 1.5-1.9 s on a 3492x2328 photo.
    """

    scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    min_side: int = 128
    full_query: bool = False
    band_cells: float = 6.0
    min_band: int = 3
    uncertainty: float = 0.4
    sentinel_cells: float = 2.0
    tile_area: int = 1024 * 1024
    tile: int = 256
    margin: int = 32
    chunk: int = 1 << 14
    min_object: int = 32
    snap: bool = True
    snap_fraction: float = 0.006
    snap_min_band: int = 2
    snap_max_band: int = 8
    snap_epsilon: float = 1e-3
    snap_passes: int = 3
    keep_reach: float = 0.01
    keep_confidence: float = 0.3
    keep_edges: bool = True
    keep_edge_margin: float = 1.0
    keep_learned: bool = True
    keep_threshold: float = -1.0
    keep_snap_threshold: float = -1.0


def _pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad the bottom and right of an (H, W, ...) array to multiples of ``multiple`` (reflect, or
    edge when the array is too small to reflect)."""
    h, w = x.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "edge"
        x = np.pad(x, [(0, ph), (0, pw)] + [(0, 0)] * (x.ndim - 2), mode=mode)
    return x


def _encode_region(
    runner: Runner,
    image_s: np.ndarray,
    mask_s: np.ndarray,
    region: tuple[int, int, int, int],
) -> tuple[Any, tuple[int, int]]:
    """Encode one region of the resized image: (what the runner encoded, padded size)."""
    y0, y1, x0, x1 = region
    img, msk = _pad_to(image_s[y0:y1, x0:x1], 32), _pad_to(mask_s[y0:y1, x0:x1], 32)
    return runner.encode(img, msk), msk.shape


def _query_points(
    runner: Runner,
    encoded,
    region: tuple[int, int, int, int],
    ys: np.ndarray,
    xs: np.ndarray,
    scale: tuple[float, float],
    cfg: InferenceConfig,
) -> np.ndarray:
    """Probabilities at full-res pixels ``(ys, xs)`` from an encoded region."""
    features, (ph, pw) = encoded
    y0, _, x0, _ = region
    sy, sx = scale
    out = np.empty(len(ys), dtype=np.float32)
    cell = np.array([2.0 * sy / ph, 2.0 * sx / pw], dtype=np.float32)
    for start in range(0, len(ys), cfg.chunk):
        sl = slice(start, start + cfg.chunk)
        # full-res pixel centre -> resized-image coordinate -> [-1, 1] in the padded region
        cy = ((ys[sl] + 0.5) * sy - y0) * (2.0 / ph) - 1.0
        cx = ((xs[sl] + 0.5) * sx - x0) * (2.0 / pw) - 1.0
        coords = np.stack([cy, cx], axis=-1).astype(np.float32)
        out[sl] = runner.query(features, coords, cell)
    return out


def _resized_coords(ys, xs, sy: float, sx: float, hs: int, ws: int):
    """The resized-image pixel that each full-res pixel centre ``(ys, xs)`` falls in."""
    ty = np.minimum(((ys + 0.5) * sy).astype(np.int64), hs - 1)
    tx = np.minimum(((xs + 0.5) * sx).astype(np.int64), ws - 1)
    return ty, tx


def _by_tile(at, hs: int, ws: int, cfg: InferenceConfig) -> list[np.ndarray]:
    """Indices of the resized-image pixels ``at = (ty, tx)`` in each tile of :func:`_tiles`.

    One sort instead of a test of every pixel against every tile; indices stay ascending within
    a tile, so a tile's pixels come in the order a boolean selection would give.
    """
    ty, tx = at
    if hs * ws <= cfg.tile_area:
        return [np.arange(len(ty))]
    across = -(-ws // cfg.tile)
    tile = (ty // cfg.tile) * across + tx // cfg.tile
    order = np.argsort(tile, kind="stable")
    bounds = np.searchsorted(tile[order], np.arange(-(-hs // cfg.tile) * across + 1))
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _sentinel_grid(h: int, w: int, step: int, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-res pixels every ``step`` px (cell centres), outside ``band``."""
    gy, gx = np.meshgrid(
        np.arange(step // 2, h, step), np.arange(step // 2, w, step), indexing="ij"
    )
    gy, gx = gy.ravel(), gx.ravel()
    keep = ~band[gy, gx]
    return gy[keep], gx[keep]


def _around(
    ys: np.ndarray, xs: np.ndarray, step: int, box: tuple[int, int, int, int], skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``box`` (full-res y0, y1, x0, x1) within ``step`` of a point, not in ``skip``."""
    y0, y1, x0, x1 = box
    near = np.zeros((y1 - y0, x1 - x0), np.uint8)
    near[ys - y0, xs - x0] = 1
    near = cv2.dilate(near, np.ones((2 * step + 1, 2 * step + 1), np.uint8)).astype(bool)
    near &= ~skip[y0:y1, x0:x1]
    ny, nx = np.nonzero(near)
    return ny + y0, nx + x0


def _band_mask(prob: np.ndarray, radius: int, uncertainty: float) -> np.ndarray:
    """Pixels within ``radius`` of the 0.5 boundary of ``prob``, or uncertain ones."""
    hard = prob > 0.5
    band = np.zeros(prob.shape, dtype=bool)
    rows, cols = np.flatnonzero(hard.any(axis=1)), np.flatnonzero(hard.any(axis=0))
    if len(rows):
        # OpenCV's 3x3 chamfer distance is at least 0.955 of the Euclidean one (its axial step),
        # so every band pixel, and the pixel of the other class that puts it in the band, lies
        # within ``reach`` of the foreground's bounding box: the distance transforms of that box
        # (clipped to the image) give the whole image's band, at a fraction of the cost.
        h, w = hard.shape
        reach = math.ceil(radius / 0.955) + 2
        box = np.s_[
            max(0, rows[0] - reach) : min(h, rows[-1] + reach + 1),
            max(0, cols[0] - reach) : min(w, cols[-1] + reach + 1),
        ]
        crop = hard[box].view(np.uint8)
        # distance of every pixel to the nearest pixel of the other class
        d_in = cv2.distanceTransform(crop, cv2.DIST_L2, 3)
        d_out = cv2.distanceTransform(1 - crop, cv2.DIST_L2, 3)
        band[box] = np.maximum(d_in, d_out) <= radius
    if uncertainty > 0:
        band |= np.abs(prob - 0.5) < uncertainty
    return band


def _tiles(hs: int, ws: int, cfg: InferenceConfig):
    """Interior boxes and context regions of the resized image, row-major."""
    if hs * ws <= cfg.tile_area:
        yield (0, hs, 0, ws), (0, hs, 0, ws)
        return
    t, m = cfg.tile, cfg.margin
    for ty in range(0, hs, t):
        for tx in range(0, ws, t):
            inner = (ty, min(ty + t, hs), tx, min(tx + t, ws))
            outer = (max(0, ty - m), min(hs, ty + t + m), max(0, tx - m), min(ws, tx + t + m))
            yield inner, outer


def refine_probability(
    model: CRM | Runner,
    image: np.ndarray,
    coarse: np.ndarray,
    cfg: InferenceConfig = InferenceConfig(),  # noqa: B008 - frozen dataclass
    *,
    device: torch.device | None = None,
    progress=None,
) -> np.ndarray:
    """Refine a coarse mask with CRM at the image's full resolution.

    Args:
        model: a CRM network (eval mode is set here), or a :class:`~finecut.refine.runner.Runner`
            (e.g. the ONNX Runtime one, which needs no torch).
        image: (H, W, 3) uint8 RGB.
        coarse: (H, W) bool coarse mask.
        cfg: scales, band, tiling and chunking.
        device: where a CRM network runs (defaults to the model's device).
        progress: optional callable(step_name) for progress reporting.

    Returns:
        (H, W) float32 foreground probability.
    """
    runner = model
    if not isinstance(runner, Runner):
        from finecut.refine.torch_runner import TorchRunner

        runner = TorchRunner(model, device)
    h, w = coarse.shape
    prob = coarse.astype(np.float32)
    scales: Sequence[float] = [
        s
        for i, s in enumerate(cfg.scales)
        if i == len(cfg.scales) - 1 or min(h, w) * s >= cfg.min_side
    ]
    for s in scales:
        hs, ws = max(1, round(h * s)), max(1, round(w * s))
        sy, sx = hs / h, ws / w
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        image_s = image if (hs, ws) == (h, w) else cv2.resize(image, (ws, hs), interpolation=interp)
        mask_s = prob if (hs, ws) == (h, w) else cv2.resize(prob, (ws, hs), interpolation=interp)
        mask_s = (mask_s > 0.5).astype(np.float32)
        if cfg.full_query:
            band = np.ones((h, w), dtype=bool)
        else:
            radius = max(cfg.min_band, math.ceil(cfg.band_cells * 2.0 / s))
            band = _band_mask(prob, radius, cfg.uncertainty)
        new_prob = prob.copy()
        by, bx = np.nonzero(band)
        # which tile each band pixel falls in (resized-image coordinates)
        band_at = _resized_coords(by, bx, sy, sx, hs, ws)
        step = max(1, round(cfg.sentinel_cells * 2.0 / s)) if cfg.sentinel_cells > 0 else 0
        sentinels = step > 0 and not cfg.full_query
        if sentinels:
            gy, gx = _sentinel_grid(h, w, step, band)
            grid_at = _resized_coords(gy, gx, sy, sx, hs, ws)
        band_tiles = _by_tile(band_at, hs, ws, cfg)
        grid_tiles = _by_tile(grid_at, hs, ws, cfg) if sentinels else []
        n_tiles = n_extra = 0
        for k, (inner, outer) in enumerate(_tiles(hs, ws, cfg)):
            iy0, iy1, ix0, ix1 = inner
            sel = band_tiles[k]
            if not len(sel):
                continue
            n_tiles += 1
            encoded = _encode_region(runner, image_s, mask_s, outer)
            ys, xs = by[sel], bx[sel]
            new_prob[ys, xs] = _query_points(runner, encoded, outer, ys, xs, (sy, sx), cfg)
            if not sentinels:
                continue
            # Sentinels: one query per ``sentinel_cells`` latent cells of this (already encoded)
            # tile outside the band. Where one lands on the other side of 0.5 from the copied
            # value (a hole or a part the model finds away from the boundary), its neighbourhood
            # is queried too, so such changes are not lost to the copy.
            sy_, sx_ = gy[grid_tiles[k]], gx[grid_tiles[k]]
            if not len(sy_):
                continue
            g = _query_points(runner, encoded, outer, sy_, sx_, (sy, sx), cfg)
            flip = (g > 0.5) != (prob[sy_, sx_] > 0.5)
            if not flip.any():
                continue
            box = (
                max(0, math.ceil(iy0 / sy - 0.5)),
                min(h, math.ceil(iy1 / sy - 0.5)),
                max(0, math.ceil(ix0 / sx - 0.5)),
                min(w, math.ceil(ix1 / sx - 0.5)),
            )
            ey, ex = _around(sy_[flip], sx_[flip], step, box, band)
            n_extra += len(ey)
            new_prob[ey, ex] = _query_points(runner, encoded, outer, ey, ex, (sy, sx), cfg)
        log.debug(
            "scale %.3f: %dx%d, %d band queries, %d around sentinels, %d tiles",
            s, ws, hs, len(by), n_extra, n_tiles,
        )
        prob = new_prob
        if progress is not None:
            progress(f"scale {s:g}")
    return prob


def gate_changes(
    prob: np.ndarray, coarse: np.ndarray, reach: float, confidence: float
) -> np.ndarray:
    """Keep the input where the refiner's change cannot be trusted (do no harm).

    A pixel whose side of 0.5 the refiner changed keeps the input's value (0 or 1) when it lies
    farther than ``reach`` px from the input's boundary (``reach`` <= 0: no bound), or when the
    refiner is unsure of it, ``|prob - 0.5| < confidence``. Unchanged pixels keep ``prob``.

    Shape:
        prob: (H, W) float in [0, 1]; coarse: (H, W) bool -> (H, W) float32.
    """
    changed = (prob > 0.5) != coarse
    if not changed.any():
        return prob.astype(np.float32, copy=False)
    revert = np.zeros_like(changed)
    if confidence > 0:
        revert |= changed & (np.abs(prob - 0.5) < confidence)
    if reach > 0:
        near = _band_mask(coarse.astype(np.float32), math.ceil(reach), 0.0)
        revert |= changed & ~near
    if not revert.any():
        return prob.astype(np.float32, copy=False)
    return np.where(revert, coarse.astype(np.float32), prob).astype(np.float32)
